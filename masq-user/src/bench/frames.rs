//! Ethernet/IPv4/TCP/UDP frames for the benchmark, with every checksum computed in full.
use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;
use masq_common::{IPPROTO_TCP, IPPROTO_UDP};

/// One end of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
}

impl Endpoint {
    pub const fn new(addr: Ipv4Addr, port: u16) -> Self {
        Self { addr, port }
    }
}

/// RFC 1071 checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = data
        .chunks(2)
        .map(|w| u64::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(12 + segment.len());
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&[0, proto]);
    data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    data.extend_from_slice(segment);
    match checksum(&data) {
        0 if proto == IPPROTO_UDP => 0xffff,
        sum => sum,
    }
}

fn frame(
    dst_mac: Mac,
    src_mac: Mac,
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    l4: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(34 + l4.len());
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&0x1c46u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(l4);
    f
}

/// A TCP segment without data, padded to the 64-byte harness frame (Ethernet's minimum is 60).
pub fn tcp(dst_mac: Mac, src_mac: Mac, from: Endpoint, to: Endpoint, flags: u8) -> Vec<u8> {
    let mut s = [0u8; 20];
    s[0..2].copy_from_slice(&from.port.to_be_bytes());
    s[2..4].copy_from_slice(&to.port.to_be_bytes());
    s[4..8].copy_from_slice(&0x1000_0001u32.to_be_bytes());
    if flags & TCP_ACK != 0 {
        s[8..12].copy_from_slice(&0x2000_0001u32.to_be_bytes());
    }
    s[12] = 5 << 4;
    s[13] = flags;
    s[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let sum = l4_checksum(from.addr, to.addr, IPPROTO_TCP, &s);
    s[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut f = frame(dst_mac, src_mac, from.addr, to.addr, IPPROTO_TCP, &s);
    f.resize(super::bpf::FRAME_LEN, 0);
    f
}

/// A UDP datagram carrying `payload_len` bytes.
pub fn udp(
    dst_mac: Mac,
    src_mac: Mac,
    from: Endpoint,
    to: Endpoint,
    payload_len: usize,
) -> Vec<u8> {
    let mut s = vec![0u8; 8 + payload_len];
    s[0..2].copy_from_slice(&from.port.to_be_bytes());
    s[2..4].copy_from_slice(&to.port.to_be_bytes());
    s[4..6].copy_from_slice(&((8 + payload_len) as u16).to_be_bytes());
    for (i, b) in s[8..].iter_mut().enumerate() {
        *b = b'a' + (i % 26) as u8;
    }
    let sum = l4_checksum(from.addr, to.addr, IPPROTO_UDP, &s);
    s[6..8].copy_from_slice(&sum.to_be_bytes());
    frame(dst_mac, src_mac, from.addr, to.addr, IPPROTO_UDP, &s)
}

/// A MAC address from `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = text.trim().split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_header_checksum_verifies_to_zero() {
        let f = tcp(
            [1; 6],
            [2; 6],
            Endpoint::new(Ipv4Addr::new(64, 70, 12, 210), 40000),
            Endpoint::new(Ipv4Addr::new(67, 17, 28, 10), 80),
            TCP_ACK,
        );
        assert_eq!(f.len(), 64);
        assert_eq!(checksum(&f[14..34]), 0);
    }

    #[test]
    fn udp_checksum_verifies_over_pseudo_header() {
        let from = Endpoint::new(Ipv4Addr::new(64, 70, 12, 210), 4000);
        let to = Endpoint::new(Ipv4Addr::new(192, 168, 100, 17), 9);
        let f = udp([1; 6], [2; 6], from, to, 64);
        assert_eq!(f.len(), 14 + 20 + 8 + 64);
        let seg = &f[34..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&from.addr.octets());
        pseudo.extend_from_slice(&to.addr.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(seg);
        assert_eq!(checksum(&pseudo), 0);
    }

    #[test]
    fn mac_parses() {
        assert_eq!(parse_mac("02:00:0a:ff:10:01\n"), Some([2, 0, 10, 255, 16, 1]));
        assert_eq!(parse_mac("02:00"), None);
    }
}
