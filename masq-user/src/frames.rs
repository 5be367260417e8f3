//! A small builder and parser for the frames the program tests and the benchmarks feed to the
//! programs:
//! Ethernet + IPv4 + TCP/UDP/ICMP (ICMP errors quoting an inner packet) and ARP.
//!
//! Every checksum here is computed from scratch over the whole covered data, so a test never
//! trusts the incremental updates it checks.
use std::net::Ipv4Addr;

pub type Mac = [u8; 6];

pub use masq_common::{
    ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY,
    ICMP_ECHO_REQUEST, ICMP_TIME_EXCEEDED, IP_DF, IP_MF, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP,
    TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

/// The Internet checksum (RFC 1071) of `data`: one's complement of the one's complement sum of
/// its 16-bit big-endian words, an odd last byte padded with zero.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    let mut words = data.chunks_exact(2);
    for w in &mut words {
        sum += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        sum += u64::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// TCP/UDP checksum over the IPv4 pseudo header and `segment` (its checksum field zeroed).
/// UDP transmits a computed 0 as 0xffff.
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let mut data = Vec::with_capacity(12 + segment.len());
    data.extend_from_slice(&src.octets());
    data.extend_from_slice(&dst.octets());
    data.extend_from_slice(&[0, proto]);
    data.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    data.extend_from_slice(segment);
    let sum = internet_checksum(&data);
    if proto == IPPROTO_UDP && sum == 0 { 0xffff } else { sum }
}

/// IPv4 header fields of a packet to build. `frag` holds the flags and the fragment offset.
#[derive(Clone, Copy, Debug)]
pub struct Ip {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub id: u16,
    pub frag: u16,
}

/// The TTL [`Ip::new`] sends with, as Linux does.
pub const DEFAULT_TTL: u8 = 64;

impl Ip {
    pub fn new(src: Ipv4Addr, dst: Ipv4Addr) -> Self {
        Self { src, dst, ttl: DEFAULT_TTL, id: 0x1c46, frag: IP_DF }
    }

    pub fn ttl(self, ttl: u8) -> Self {
        Self { ttl, ..self }
    }

    pub fn frag(self, frag: u16) -> Self {
        Self { frag, ..self }
    }

    /// An IPv4 packet (no options) carrying `payload`.
    pub fn packet(&self, proto: u8, payload: &[u8]) -> Vec<u8> {
        self.packet_with_options(proto, &[], payload)
    }

    /// An IPv4 packet with header `options` (a multiple of 4 bytes).
    pub fn packet_with_options(&self, proto: u8, options: &[u8], payload: &[u8]) -> Vec<u8> {
        assert_eq!(options.len() % 4, 0);
        let hlen = 20 + options.len();
        let mut p = vec![0u8; 20];
        p.extend_from_slice(options);
        p[0] = 0x40 | (hlen / 4) as u8;
        p[2..4].copy_from_slice(&((hlen + payload.len()) as u16).to_be_bytes());
        p[4..6].copy_from_slice(&self.id.to_be_bytes());
        p[6..8].copy_from_slice(&self.frag.to_be_bytes());
        p[8] = self.ttl;
        p[9] = proto;
        p[12..16].copy_from_slice(&self.src.octets());
        p[16..20].copy_from_slice(&self.dst.octets());
        let sum = internet_checksum(&p);
        p[10..12].copy_from_slice(&sum.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    /// A TCP segment with a 20-byte header and `data` (fixed sequence numbers).
    pub fn tcp_data(&self, sport: u16, dport: u16, flags: u8, data: &[u8]) -> Vec<u8> {
        self.tcp_seq(sport, dport, flags, (0x1000_0001, 0x2000_0001), data)
    }

    /// A TCP segment with a 20-byte header, sequence and acknowledgment numbers (`seq_ack`;
    /// the acknowledgment is sent only with ACK) and `data`.
    pub fn tcp_seq(
        &self,
        sport: u16,
        dport: u16,
        flags: u8,
        seq_ack: (u32, u32),
        data: &[u8],
    ) -> Vec<u8> {
        let mut s = vec![0u8; 20];
        s[0..2].copy_from_slice(&sport.to_be_bytes());
        s[2..4].copy_from_slice(&dport.to_be_bytes());
        s[4..8].copy_from_slice(&seq_ack.0.to_be_bytes());
        if flags & TCP_ACK != 0 {
            s[8..12].copy_from_slice(&seq_ack.1.to_be_bytes());
        }
        s[12] = 5 << 4;
        s[13] = flags;
        s[14..16].copy_from_slice(&64240u16.to_be_bytes());
        s.extend_from_slice(data);
        let sum = l4_checksum(self.src, self.dst, IPPROTO_TCP, &s);
        s[16..18].copy_from_slice(&sum.to_be_bytes());
        self.packet(IPPROTO_TCP, &s)
    }

    pub fn tcp(&self, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
        self.tcp_data(sport, dport, flags, &[])
    }

    /// A UDP datagram; `csum: false` sends checksum 0 ("none").
    pub fn udp_with(&self, sport: u16, dport: u16, data: &[u8], csum: bool) -> Vec<u8> {
        let mut s = vec![0u8; 8];
        s[0..2].copy_from_slice(&sport.to_be_bytes());
        s[2..4].copy_from_slice(&dport.to_be_bytes());
        s[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        s.extend_from_slice(data);
        if csum {
            let sum = l4_checksum(self.src, self.dst, IPPROTO_UDP, &s);
            s[6..8].copy_from_slice(&sum.to_be_bytes());
        }
        self.packet(IPPROTO_UDP, &s)
    }

    pub fn udp(&self, sport: u16, dport: u16, data: &[u8]) -> Vec<u8> {
        self.udp_with(sport, dport, data, true)
    }

    /// An ICMP message: type, code, the 4 "rest of header" bytes and a body.
    pub fn icmp(&self, typ: u8, code: u8, rest: [u8; 4], body: &[u8]) -> Vec<u8> {
        let mut m = vec![typ, code, 0, 0];
        m.extend_from_slice(&rest);
        m.extend_from_slice(body);
        let sum = internet_checksum(&m);
        m[2..4].copy_from_slice(&sum.to_be_bytes());
        self.packet(IPPROTO_ICMP, &m)
    }

    /// An echo request (`request`) or reply with a small payload.
    pub fn echo(&self, request: bool, id: u16, seq: u16) -> Vec<u8> {
        let typ = if request { ICMP_ECHO_REQUEST } else { ICMP_ECHO_REPLY };
        let [i0, i1] = id.to_be_bytes();
        let [s0, s1] = seq.to_be_bytes();
        self.icmp(typ, 0, [i0, i1, s0, s1], b"masq-ping")
    }

    /// An ICMP error quoting `quoted` (an IPv4 packet, whole or truncated). `rest` carries e.g.
    /// the next-hop MTU of frag-needed.
    pub fn icmp_error(&self, typ: u8, code: u8, rest: [u8; 4], quoted: &[u8]) -> Vec<u8> {
        self.icmp(typ, code, rest, quoted)
    }
}

/// An Ethernet frame.
pub fn eth(dst: Mac, src: Mac, ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(ETH_HLEN + payload.len());
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An IPv4 packet in an Ethernet frame.
pub fn eth_ip(dst: Mac, src: Mac, ip_packet: &[u8]) -> Vec<u8> {
    eth(dst, src, ETH_P_IP, ip_packet)
}

/// A broadcast ARP request: who has `target`? tell `sender_ip` (at `sender_mac`).
pub fn arp_request(sender_mac: Mac, sender_ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&sender_mac);
    a.extend_from_slice(&sender_ip.octets());
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&target.octets());
    eth([0xff; 6], sender_mac, ETH_P_ARP, &a)
}

/// The ARP reply to [`arp_request`], as the owner of `target` at `owner_mac` sends it.
pub fn arp_reply(owner_mac: Mac, target: Ipv4Addr, asker_mac: Mac, asker_ip: Ipv4Addr) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 2];
    a.extend_from_slice(&owner_mac);
    a.extend_from_slice(&target.octets());
    a.extend_from_slice(&asker_mac);
    a.extend_from_slice(&asker_ip.octets());
    eth(asker_mac, owner_mac, ETH_P_ARP, &a)
}

/// Read access to an IPv4 packet (an outer one, or the one quoted in an ICMP error, possibly
/// truncated).
#[derive(Clone, Copy)]
pub struct IpView<'a>(pub &'a [u8]);

impl<'a> IpView<'a> {
    /// The IPv4 packet of an Ethernet frame.
    pub fn of_frame(frame: &'a [u8]) -> Self {
        assert!(frame.len() >= ETH_HLEN + 20, "frame too short for IPv4");
        assert_eq!(u16::from_be_bytes([frame[12], frame[13]]), ETH_P_IP);
        IpView(&frame[ETH_HLEN..])
    }

    fn u16_at(&self, off: usize) -> u16 {
        u16::from_be_bytes([self.0[off], self.0[off + 1]])
    }

    fn addr_at(&self, off: usize) -> Ipv4Addr {
        Ipv4Addr::new(self.0[off], self.0[off + 1], self.0[off + 2], self.0[off + 3])
    }

    pub fn header_len(&self) -> usize {
        usize::from(self.0[0] & 0x0f) * 4
    }
    pub fn tot_len(&self) -> usize {
        usize::from(self.u16_at(2))
    }
    pub fn proto(&self) -> u8 {
        self.0[9]
    }
    pub fn src(&self) -> Ipv4Addr {
        self.addr_at(12)
    }
    pub fn dst(&self) -> Ipv4Addr {
        self.addr_at(16)
    }
    /// The transport header and payload (as far as present).
    pub fn l4(&self) -> &'a [u8] {
        let end = self.tot_len().min(self.0.len());
        &self.0[self.header_len()..end]
    }
    /// True when the whole packet `tot_len` announces is here.
    pub fn complete(&self) -> bool {
        self.0.len() >= self.tot_len()
    }
    pub fn sport(&self) -> u16 {
        let l4 = self.l4();
        u16::from_be_bytes([l4[0], l4[1]])
    }
    pub fn dport(&self) -> u16 {
        let l4 = self.l4();
        u16::from_be_bytes([l4[2], l4[3]])
    }
    pub fn icmp_type(&self) -> u8 {
        self.l4()[0]
    }
    /// Identifier of an echo request or reply.
    pub fn icmp_id(&self) -> u16 {
        let l4 = self.l4();
        u16::from_be_bytes([l4[4], l4[5]])
    }
    /// The packet an ICMP error quotes.
    pub fn inner(&self) -> IpView<'a> {
        IpView(&self.l4()[8..])
    }
    /// The transport checksum field (TCP or UDP).
    pub fn l4_csum(&self) -> u16 {
        let l4 = self.l4();
        let off = if self.proto() == IPPROTO_TCP { 16 } else { 6 };
        u16::from_be_bytes([l4[off], l4[off + 1]])
    }

    /// Every checksum of this packet recomputed from scratch and compared to the one it carries:
    /// the IP header, TCP/UDP (UDP 0 = none), ICMP over the whole message, and for ICMP errors
    /// the quoted packet's own checksums (its transport checksum only when quoted whole).
    pub fn check_checksums(&self, what: &str) -> Result<(), String> {
        let hdr = &self.0[..self.header_len()];
        let mut zeroed = hdr.to_vec();
        zeroed[10] = 0;
        zeroed[11] = 0;
        let want = internet_checksum(&zeroed);
        let have = self.u16_at(10);
        if want != have {
            return Err(format!("{what} IP header checksum {have:#06x}, want {want:#06x}"));
        }
        match self.proto() {
            IPPROTO_TCP | IPPROTO_UDP if self.complete() => {
                let off = if self.proto() == IPPROTO_TCP { 16 } else { 6 };
                let mut seg = self.l4().to_vec();
                let have = u16::from_be_bytes([seg[off], seg[off + 1]]);
                if self.proto() == IPPROTO_UDP && have == 0 {
                    return Ok(());
                }
                seg[off] = 0;
                seg[off + 1] = 0;
                let want = l4_checksum(self.src(), self.dst(), self.proto(), &seg);
                if want != have {
                    return Err(format!(
                        "{what} L4 (proto {}) checksum {have:#06x}, want {want:#06x}",
                        self.proto()
                    ));
                }
            }
            IPPROTO_ICMP if self.complete() => {
                let mut msg = self.l4().to_vec();
                let have = u16::from_be_bytes([msg[2], msg[3]]);
                msg[2] = 0;
                msg[3] = 0;
                let want = internet_checksum(&msg);
                if want != have {
                    return Err(format!("{what} ICMP checksum {have:#06x}, want {want:#06x}"));
                }
                if matches!(self.icmp_type(), ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED) {
                    self.inner().check_checksums(&format!("{what} quoted"))?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Panics unless every checksum of the IPv4 frame is right (see [`IpView::check_checksums`]).
pub fn assert_checksums(frame: &[u8]) {
    if let Err(e) = IpView::of_frame(frame).check_checksums("packet") {
        panic!("{e}\n{}", hex(frame));
    }
}

/// Hex dump, 16 bytes a line.
pub fn hex(data: &[u8]) -> String {
    data.chunks(16)
        .enumerate()
        .map(|(i, c)| {
            let bytes: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("{:04x}: {}", i * 16, bytes.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Panics with the differing offsets and both dumps unless `actual == expected`.
#[track_caller]
pub fn assert_frame_eq(actual: &[u8], expected: &[u8]) {
    if actual == expected {
        return;
    }
    let diff: Vec<String> = (0..actual.len().max(expected.len()))
        .filter(|&i| actual.get(i) != expected.get(i))
        .map(|i| format!("{i:#x}"))
        .collect();
    panic!(
        "frames differ ({} vs {} bytes) at offsets {}\nactual:\n{}\nexpected:\n{}",
        actual.len(),
        expected.len(),
        diff.join(" "),
        hex(actual),
        hex(expected)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3: the sum of these words is 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(internet_checksum(&data), !0xddf2);
    }

    #[test]
    fn built_packets_verify() {
        let ip = Ip::new(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        let mac = [2, 0, 0, 0, 0, 1];
        let tcp = ip.tcp(1, 2, TCP_SYN);
        for p in [
            tcp.clone(),
            ip.udp(1, 2, b"x"),
            ip.echo(true, 7, 1),
            ip.icmp_error(ICMP_DEST_UNREACH, 3, [0; 4], &tcp),
        ] {
            assert_checksums(&eth_ip(mac, mac, &p));
        }
        let mut bad = eth_ip(mac, mac, &tcp);
        bad[ETH_HLEN + 24] ^= 1;
        assert!(IpView::of_frame(&bad).check_checksums("x").is_err());
    }
}
