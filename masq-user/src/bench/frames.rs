//! The benchmark's flows and frames, built with the program tests' builder (`crate::frames`).
use std::net::Ipv4Addr;

use crate::frames::{DEFAULT_TTL, Ip, eth_ip};
pub use crate::frames::{Mac, TCP_ACK, TCP_SYN};

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

/// A TCP segment without data, padded to the 64-byte harness frame (Ethernet's minimum is 60).
pub fn tcp(dst_mac: Mac, src_mac: Mac, from: Endpoint, to: Endpoint, flags: u8) -> Vec<u8> {
    tcp_ttl(dst_mac, src_mac, from, to, flags, DEFAULT_TTL)
}

/// As [`tcp`], leaving with `ttl` (a segment the kernel forwarded: one below the sender's).
pub fn tcp_ttl(
    dst_mac: Mac,
    src_mac: Mac,
    from: Endpoint,
    to: Endpoint,
    flags: u8,
    ttl: u8,
) -> Vec<u8> {
    let packet = Ip::new(from.addr, to.addr).ttl(ttl).tcp(from.port, to.port, flags);
    let mut f = eth_ip(dst_mac, src_mac, &packet);
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
    let payload: Vec<u8> = (0..payload_len).map(|i| b'a' + (i % 26) as u8).collect();
    eth_ip(dst_mac, src_mac, &Ip::new(from.addr, to.addr).udp(from.port, to.port, &payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        frames::internet_checksum,
        seed::{CLIENT, ISOLDE, PUBLIC_ISP_A},
    };

    #[test]
    fn ip_header_checksum_verifies_to_zero() {
        let f = tcp(
            [1; 6],
            [2; 6],
            Endpoint::new(CLIENT, 40000),
            Endpoint::new(PUBLIC_ISP_A, 80),
            TCP_ACK,
        );
        assert_eq!(f.len(), 64);
        assert_eq!(internet_checksum(&f[14..34]), 0);
    }

    #[test]
    fn udp_checksum_verifies_over_pseudo_header() {
        let from = Endpoint::new(CLIENT, 4000);
        let to = Endpoint::new(ISOLDE, 9);
        let f = udp([1; 6], [2; 6], from, to, 64);
        assert_eq!(f.len(), 14 + 20 + 8 + 64);
        let seg = &f[34..];
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&from.addr.octets());
        pseudo.extend_from_slice(&to.addr.octets());
        pseudo.extend_from_slice(&[0, 17]);
        pseudo.extend_from_slice(&(seg.len() as u16).to_be_bytes());
        pseudo.extend_from_slice(seg);
        assert_eq!(internet_checksum(&pseudo), 0);
    }
}
