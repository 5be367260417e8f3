//! Packet layout, parsing and access to a packet for every hook (XDP, TC behind Ethernet, TC on
//! an L3 device).
//!
//! masq translates only plain IPv4 headers (IHL 5) behind an untagged Ethernet header or none, so
//! every field sits at a constant offset per hook; anything else is passed or dropped with a
//! named reason.
use core::arch::asm;

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    helpers::{bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use masq_common::{Counter, FlowKey};
pub use masq_common::{
    ETH_HLEN, ETH_P_ARP, ETH_P_IP, ICMP_DEST_UNREACH, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST,
    ICMP_PARAMETER_PROBLEM, ICMP_TIME_EXCEEDED, IP_MF, IP_OFFSET, IPPROTO_ICMP, IPPROTO_TCP,
    IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};

use crate::csum;

/// Offset of the ethertype in an Ethernet header.
pub const ETH_TYPE: usize = 12;

// Offsets from the start of the IPv4 header (`Packet::IP` bytes into the frame). `parse` reads
// the header as five 32-bit words: version/IHL, TOS, total length | identification, fragment |
// TTL, protocol, checksum | source | destination.
pub const IP_FRAG: usize = 6;
pub const IP_TTL: usize = 8;
pub const IP_PROTO: usize = 9;
pub const IP_CSUM: usize = 10;
pub const IP_SRC: usize = 12;
pub const IP_DST: usize = 16;
pub const L4_OFF: usize = 20;

pub const ICMP_CSUM: usize = L4_OFF + 2;
pub const ICMP_ID: usize = L4_OFF + 4;
/// The offending packet quoted by an ICMP error.
pub const INNER_IP: usize = L4_OFF + 8;
pub const INNER_L4: usize = INNER_IP + 20;

/// What kind of transport header a packet carries.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
    /// Echo request (identifier in `key.src_port`) or reply (in `key.dst_port`).
    IcmpEcho,
    /// Destination unreachable, time exceeded, parameter problem: see `parse_icmp_error`.
    IcmpError,
    /// Another ICMP type or another protocol: addresses only.
    Other,
}

impl L4 {
    /// Offset of the checksum that covers the pseudo header (TCP/UDP).
    #[inline(always)]
    pub fn pseudo_csum_off(self) -> Option<usize> {
        match self {
            L4::Tcp => Some(L4_OFF + 16),
            L4::Udp => Some(L4_OFF + 6),
            _ => None,
        }
    }
}

/// An IPv4 packet's headers, as far as masq cares.
#[derive(Clone, Copy)]
pub struct Ipv4 {
    pub key: FlowKey,
    pub l4: L4,
    pub tcp_flags: u8,
    /// TCP header length in bytes (data offset).
    pub tcp_header_len: u8,
    /// TCP sequence and acknowledgment numbers, host byte order.
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    /// ICMP echo: a request (identifier in `key.src_port`), not a reply.
    pub echo_request: bool,
    pub ttl: u8,
    /// Total length, host byte order.
    pub tot_len: u16,
    pub frag: Frag,
    /// IP identification, network byte order.
    pub id: u16,
    /// One's complement sum of the 20-byte header, folded once (`csum::fold` makes it 0xffff
    /// when the header checksum is right).
    pub header_sum: u32,
}

impl Ipv4 {
    /// What [`parse`] fills in; the transport's fields as it finds no transport header.
    pub const EMPTY: Self = Self {
        key: FlowKey::new(0, 0, 0, 0, 0),
        l4: L4::Other,
        tcp_flags: 0,
        tcp_header_len: 0,
        tcp_seq: 0,
        tcp_ack: 0,
        echo_request: false,
        ttl: 0,
        tot_len: 0,
        frag: Frag::Whole,
        id: 0,
        header_sum: 0,
    };

    /// TCP: the sequence number after this segment (SYN and FIN count one each).
    #[inline(always)]
    pub fn tcp_end_seq(&self) -> u32 {
        let payload = u32::from(self.tot_len).saturating_sub(20 + u32::from(self.tcp_header_len));
        let syn_fin =
            u32::from(self.tcp_flags & TCP_SYN != 0) + u32::from(self.tcp_flags & TCP_FIN != 0);
        self.tcp_seq.wrapping_add(payload + syn_fin)
    }

    /// Length of the IPv4 and transport headers (TCP: with options).
    #[inline(always)]
    pub fn l4_header_len(&self) -> u32 {
        20 + if self.l4 == L4::Tcp { u32::from(self.tcp_header_len) } else { 8 }
    }
}

/// Where a packet stands among the fragments of its datagram.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Frag {
    Whole,
    /// Offset 0, more to come: carries the transport header.
    First,
    /// No transport header: translated like its first fragment (`FRAGS`).
    Later,
}

pub enum Parsed {
    /// Not IPv4: not masq's business.
    Other,
    /// IPv4 with options: never translated (only its source matters, at uplink egress).
    Ipv4Options { src_addr: u32 },
    /// ARP (uplinks answer requests for published addresses).
    Arp,
    /// IPv4 without options: its headers are in the caller's [`Ipv4`].
    Ipv4,
}

/// Read and write access to a packet, shared by every hook (XDP, TC with and without an
/// Ethernet header). Offsets are from the start of the IPv4 header, `Self::IP` bytes into the
/// packet data; the `frame_*` accessors take offsets from the start of the data.
pub trait Packet {
    /// Offset of the IPv4 header: 14 behind Ethernet, 0 on an L3 device.
    const IP: usize;

    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// Ethertype of the packet (host byte order).
    fn ethertype(&self) -> Result<u16, Counter>;
    /// Update the TCP/UDP checksum at `csum_off` for a 32-bit word of the pseudo header.
    fn l4_csum_addr(
        &mut self,
        csum_off: usize,
        old: u32,
        new: u32,
        udp: bool,
    ) -> Result<(), Counter>;
    /// Update the TCP/UDP checksum at `csum_off` for a changed port.
    fn l4_csum_port(
        &mut self,
        csum_off: usize,
        old: u16,
        new: u16,
        udp: bool,
    ) -> Result<(), Counter>;

    /// Copy `len` bytes (at most 256) from `off` bytes into the packet data, wherever they lie
    /// (TC: also beyond the linear part); false when the packet is shorter.
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool;

    /// Length of the linear packet data (L2 included).
    #[inline(always)]
    fn len(&self) -> u64 {
        (self.data_end() - self.data()) as u64
    }

    #[inline(always)]
    fn frame_ptr<T>(&self, off: usize) -> Option<*mut T> {
        let start = self.data() + off;
        if start + core::mem::size_of::<T>() > self.data_end() {
            return None;
        }
        Some(start as *mut T)
    }

    /// `N` 32-bit words at `off` past the start of the IP header, as they lie in memory, once
    /// `len` bytes (at least the words') are found in bounds: one bounds check, `N` loads.
    #[inline(always)]
    fn words<const N: usize>(&self, off: usize, len: usize) -> Result<[u64; N], Counter> {
        let start = self.data() + Self::IP + off;
        if start + len.max(4 * N) > self.data_end() {
            return Err(Counter::DropMalformed);
        }
        let words = start as *const u32;
        // SAFETY: the words are in bounds (checked just above).
        Ok(core::array::from_fn(|i| unsafe { read_u32_widened(words.add(i)) }))
    }

    #[inline(always)]
    fn frame_load<T: Copy>(&self, off: usize) -> Result<T, Counter> {
        let p = self.frame_ptr::<T>(off).ok_or(Counter::DropMalformed)?;
        // SAFETY: bounds checked just above.
        Ok(unsafe { read_packet(p) })
    }

    /// Direct write (in TC the verifier unclones the skb first). Helpers that change the packet
    /// (the L4 checksum ones) invalidate pointers: every access re-reads `data`/`data_end`.
    #[inline(always)]
    fn frame_write<T: Copy>(&mut self, off: usize, v: T) -> Result<(), Counter> {
        let p = self.frame_ptr::<T>(off).ok_or(Counter::DropMalformed)?;
        // SAFETY: bounds checked by `frame_ptr`.
        unsafe { write_packet(p, v) };
        Ok(())
    }

    #[inline(always)]
    fn load<T: Copy>(&self, off: usize) -> Result<T, Counter> {
        self.frame_load(Self::IP + off)
    }

    #[inline(always)]
    fn store_u16(&mut self, off: usize, v: u16) -> Result<(), Counter> {
        self.frame_write(Self::IP + off, v)
    }

    #[inline(always)]
    fn store_u32(&mut self, off: usize, v: u32) -> Result<(), Counter> {
        self.frame_write(Self::IP + off, v)
    }

    /// Fix a plain (non-offloaded) checksum at `csum_off` for a changed 16-bit word; returns the
    /// old and new checksum so an enclosing checksum can follow.
    #[inline(always)]
    fn fix_csum2(&mut self, csum_off: usize, old: u16, new: u16) -> Result<(u16, u16), Counter> {
        let sum: u16 = self.load(csum_off)?;
        let updated = csum::replace2(sum, old, new);
        self.store_u16(csum_off, updated)?;
        Ok((sum, updated))
    }

    /// As `fix_csum2`, for a 32-bit word.
    #[inline(always)]
    fn fix_csum4(&mut self, csum_off: usize, old: u32, new: u32) -> Result<(u16, u16), Counter> {
        let sum: u16 = self.load(csum_off)?;
        let updated = csum::replace4(sum, old, new);
        self.store_u16(csum_off, updated)?;
        Ok((sum, updated))
    }
}

impl Packet for XdpContext {
    const IP: usize = ETH_HLEN;

    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self)
    }
    #[inline(always)]
    fn ethertype(&self) -> Result<u16, Counter> {
        Ok(u16::from_be(self.frame_load(ETH_TYPE)?))
    }
    #[inline(always)]
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        let Some(len) = copy_len(len) else { return false };
        // SAFETY: the helper checks the packet's bounds; `dst` holds `len` bytes.
        unsafe { bpf_xdp_load_bytes(self.ctx, off, dst.cast(), len) == 0 }
    }
    // XDP sees no checksum state: it runs only where frames carry complete checksums (see the
    // loader's hook choice), so the pseudo-header words update like any other.
    #[inline(always)]
    fn l4_csum_addr(
        &mut self,
        csum_off: usize,
        old: u32,
        new: u32,
        udp: bool,
    ) -> Result<(), Counter> {
        fix_l4_csum(self, csum_off, udp, |sum| csum::replace4(sum, old, new))
    }
    #[inline(always)]
    fn l4_csum_port(
        &mut self,
        csum_off: usize,
        old: u16,
        new: u16,
        udp: bool,
    ) -> Result<(), Counter> {
        fix_l4_csum(self, csum_off, udp, |sum| csum::replace2(sum, old, new))
    }
}

// Packet fields sit at any alignment (the IPv4 addresses 2 bytes off a word behind Ethernet),
// so Rust reads them unaligned, which LLVM's BPF backend splits into byte loads and shifts (a
// quarter of masq's instructions on the established path, measured). The kernels masq runs on
// (x86-64, arm64) have efficient unaligned access and the verifier allows it on packet memory:
// a 16- or 32-bit field is one load or store here, written in assembly so that no alignment is
// promised to the compiler.

/// Read a `T` of 2 or 4 bytes with one load (others unaligned, as Rust does).
///
/// # Safety
/// `p` points into the packet, `size_of::<T>()` bytes in bounds (checked by `frame_ptr`).
#[inline(always)]
unsafe fn read_packet<T: Copy>(p: *const T) -> T {
    let addr = p as u64;
    let v: u64;
    // SAFETY: the caller's bounds; the instructions only read those bytes.
    unsafe {
        match core::mem::size_of::<T>() {
            2 => {
                asm!("{0} = *(u16 *)({1} + 0)", lateout(reg) v, in(reg) addr,
                     options(pure, readonly, nostack, preserves_flags));
                core::mem::transmute_copy(&(v as u16))
            }
            4 => core::mem::transmute_copy(&(read_u32_widened(p.cast()) as u32)),
            _ => p.read_unaligned(),
        }
    }
}

/// Read a 32-bit word with one load, as the 64-bit value the load leaves (zero-extended: no
/// instructions to clear the upper half, which LLVM cannot know is clear after assembly).
///
/// # Safety
/// As [`read_packet`].
#[inline(always)]
unsafe fn read_u32_widened(p: *const u32) -> u64 {
    let v: u64;
    // SAFETY: the caller's bounds; the instruction only reads those bytes.
    unsafe {
        asm!("{0} = *(u32 *)({1} + 0)", lateout(reg) v, in(reg) p as u64,
             options(pure, readonly, nostack, preserves_flags));
    }
    v
}

/// Write a `T` of 2 or 4 bytes with one store (others unaligned, as Rust does).
///
/// # Safety
/// As [`read_packet`], and the packet is writable.
#[inline(always)]
unsafe fn write_packet<T: Copy>(p: *mut T, v: T) {
    let addr = p as u64;
    // SAFETY: the caller's bounds; the instructions only write those bytes.
    unsafe {
        match core::mem::size_of::<T>() {
            2 => {
                let v = u64::from(core::mem::transmute_copy::<T, u16>(&v));
                asm!("*(u16 *)({0} + 0) = {1}", in(reg) addr, in(reg) v,
                     options(nostack, preserves_flags));
            }
            4 => {
                let v = u64::from(core::mem::transmute_copy::<T, u32>(&v));
                asm!("*(u32 *)({0} + 0) = {1}", in(reg) addr, in(reg) v,
                     options(nostack, preserves_flags));
            }
            _ => p.write_unaligned(v),
        }
    }
}

/// A `copy_out` length the verifier sees in 1..=256: hidden from LLVM first, so the check is
/// made on the very register the helper gets (else LLVM drops it as implied by the caller's).
#[inline(always)]
fn copy_len(len: u32) -> Option<u32> {
    let len = core::hint::black_box(len);
    (1..=256).contains(&len).then_some(len)
}

/// Update a TCP/UDP checksum by hand; a UDP checksum of 0 means "none" and stays 0, and a
/// computed 0 is sent as 0xffff.
#[inline(always)]
fn fix_l4_csum<P: Packet>(
    p: &mut P,
    csum_off: usize,
    udp: bool,
    update: impl Fn(u16) -> u16,
) -> Result<(), Counter> {
    let sum: u16 = p.load(csum_off)?;
    if udp && sum == 0 {
        return Ok(());
    }
    let updated = update(sum);
    p.store_u16(csum_off, if udp && updated == 0 { 0xffff } else { updated })
}

/// A TC packet whose IPv4 header starts `IP` bytes into the data: 14 behind Ethernet, 0 on an
/// L3 device (PPP, raw-ip LTE, WireGuard, tun), where `skb->protocol` gives the ethertype.
pub struct Skb<const IP: usize>(pub TcContext);

/// TC on an Ethernet device.
pub type EthSkb = Skb<ETH_HLEN>;

impl<const IP: usize> Skb<IP> {
    #[inline(always)]
    pub fn skb(&self) -> &aya_ebpf::bindings::__sk_buff {
        // SAFETY: `skb` is the program's context.
        unsafe { &*self.0.skb.skb }
    }

    #[inline(always)]
    pub fn skb_mut(&mut self) -> &mut aya_ebpf::bindings::__sk_buff {
        // SAFETY: `skb` is the program's context.
        unsafe { &mut *self.0.skb.skb }
    }

    /// Pull the headers masq reads into the linear area when they are not there.
    #[inline(always)]
    pub fn pull_headers(&self) {
        let want = IP + INNER_L4 + 20;
        let linear = self.0.data_end() - self.0.data();
        if linear < want && (self.0.len() as usize) > linear {
            let _ = self.0.pull_data(want.min(self.0.len() as usize) as u32);
        }
    }
}

impl<const IP: usize> Packet for Skb<IP> {
    const IP: usize = IP;

    #[inline(always)]
    fn data(&self) -> usize {
        self.0.data()
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        self.0.data_end()
    }
    #[inline(always)]
    fn len(&self) -> u64 {
        u64::from(self.0.len())
    }
    #[inline(always)]
    fn copy_out(&self, off: u32, dst: *mut u8, len: u32) -> bool {
        let Some(len) = copy_len(len) else { return false };
        // SAFETY: the helper checks the packet's bounds; `dst` holds `len` bytes.
        unsafe { bpf_skb_load_bytes(self.0.skb.skb.cast(), off, dst.cast(), len) == 0 }
    }
    #[inline(always)]
    fn ethertype(&self) -> Result<u16, Counter> {
        if IP == 0 {
            // An L3 device's packet says what it is in its first nibble.
            // (A whole minimal header: a 1-byte check compiles to a form the verifier rejects.)
            let version = self.frame_load::<[u8; 20]>(0).map_or(0, |h| h[0] >> 4);
            Ok(if version == 4 { ETH_P_IP } else { 0 })
        } else {
            Ok(u16::from_be(self.frame_load(ETH_TYPE)?))
        }
    }
    // The kernel helper copes with CHECKSUM_PARTIAL (local senders) and GSO packets as well.
    #[inline(always)]
    fn l4_csum_addr(
        &mut self,
        csum_off: usize,
        old: u32,
        new: u32,
        udp: bool,
    ) -> Result<(), Counter> {
        let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        self.0
            .l4_csum_replace(
                IP + csum_off,
                old as u64,
                new as u64,
                BPF_F_PSEUDO_HDR as u64 | mangled | 4,
            )
            .map_err(|_| Counter::DropMalformed)
    }
    #[inline(always)]
    fn l4_csum_port(
        &mut self,
        csum_off: usize,
        old: u16,
        new: u16,
        udp: bool,
    ) -> Result<(), Counter> {
        let mangled = if udp { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
        self.0
            .l4_csum_replace(IP + csum_off, old as u64, new as u64, mangled | 2)
            .map_err(|_| Counter::DropMalformed)
    }
}

/// An IPv4 packet's source address and protocol, read without parsing the rest (`None` for
/// anything else, or a header cut short).
#[inline(always)]
pub fn ipv4_source_and_proto<P: Packet>(p: &P) -> Option<(u32, u8)> {
    if p.ethertype().ok()? != ETH_P_IP {
        return None;
    }
    let w = p.words::<5>(0, 20).ok()?;
    if (w[0] as u8) >> 4 != 4 {
        return None;
    }
    Some((w[3] as u32, (w[2] >> 8) as u8))
}

/// Parse the link header (when there is one), IPv4 and the transport header; an IPv4 packet's
/// headers go to `ip` (written in place: returned, they were copied once more).
#[inline(always)]
pub fn parse<P: Packet>(p: &P, ip: &mut Ipv4) -> Result<Parsed, Counter> {
    let ethertype = p.ethertype()?;
    if ethertype == ETH_P_ARP {
        return Ok(Parsed::Arp);
    }
    if ethertype != ETH_P_IP {
        return Ok(Parsed::Other);
    }
    let ver_ihl: u8 = p.load(0)?;
    if ver_ihl >> 4 != 4 {
        return Ok(Parsed::Other);
    }
    if ver_ihl != 0x45 {
        return Ok(Parsed::Ipv4Options { src_addr: p.load(IP_SRC)? });
    }
    // Every field from the header's five words, which also give its checksum's sum (summed in
    // 64 bits, the same as its ten 16-bit words).
    let w = p.words::<5>(0, 20)?;
    let tot_len = u16::from_be((w[0] >> 16) as u16);
    let id = w[1] as u16;
    let frag_off = u16::from_be((w[1] >> 16) as u16);
    let ttl = w[2] as u8;
    let proto = (w[2] >> 8) as u8;
    let frag = if frag_off & IP_OFFSET != 0 {
        Frag::Later
    } else if frag_off & IP_MF != 0 {
        Frag::First
    } else {
        Frag::Whole
    };
    *ip = Ipv4 {
        key: FlowKey::new(w[3] as u32, w[4] as u32, 0, 0, proto),
        ttl,
        tot_len,
        frag,
        id,
        header_sum: csum::fold_once(w[0] + w[1] + w[2] + w[3] + w[4]),
        ..Ipv4::EMPTY
    };
    if frag == Frag::Later {
        return Ok(Parsed::Ipv4);
    }
    match proto {
        IPPROTO_TCP => {
            // The whole minimal TCP header must be there (the checksum sits at +16); ports,
            // sequence, acknowledgment, offset and flags are its first four words.
            let w = p.words::<4>(L4_OFF, 20)?;
            (ip.key.src_port, ip.key.dst_port) = (w[0] as u16, (w[0] >> 16) as u16);
            ip.tcp_seq = u32::from_be(w[1] as u32);
            ip.tcp_ack = u32::from_be(w[2] as u32);
            ip.tcp_header_len = (w[3] as u8 >> 4) * 4;
            ip.tcp_flags = (w[3] >> 8) as u8;
            ip.l4 = L4::Tcp;
        }
        IPPROTO_UDP => {
            let [ports] = p.words::<1>(L4_OFF, 8)?;
            (ip.key.src_port, ip.key.dst_port) = (ports as u16, (ports >> 16) as u16);
            ip.l4 = L4::Udp;
        }
        IPPROTO_ICMP => {
            let _: [u8; 8] = p.load(L4_OFF)?;
            let icmp_type: u8 = p.load(L4_OFF)?;
            match icmp_type {
                ICMP_ECHO_REQUEST => {
                    ip.key.src_port = p.load(ICMP_ID)?;
                    ip.echo_request = true;
                    ip.l4 = L4::IcmpEcho;
                }
                ICMP_ECHO_REPLY => {
                    ip.key.dst_port = p.load(ICMP_ID)?;
                    ip.l4 = L4::IcmpEcho;
                }
                ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM => {
                    ip.l4 = L4::IcmpError;
                }
                _ => {}
            }
        }
        _ => {}
    }
    Ok(Parsed::Ipv4)
}

/// The packet quoted inside an ICMP error.
#[derive(Clone, Copy)]
pub struct Inner {
    /// Its tuple as it was sent (ICMP echo: as for `Ipv4::key`).
    pub key: FlowKey,
    pub l4: L4,
}

/// Parse the quoted header of an ICMP error (needs the inner IPv4 header and 8 bytes after it).
#[inline(always)]
pub fn parse_icmp_error<P: Packet>(p: &P) -> Result<Inner, Counter> {
    let _: [u8; 28] = p.load(INNER_IP)?;
    let ver_ihl: u8 = p.load(INNER_IP)?;
    // Only a whole packet or a first fragment quotes its ports.
    let frag_off = u16::from_be(p.load::<u16>(INNER_IP + 6)?);
    if ver_ihl != 0x45 || frag_off & IP_OFFSET != 0 {
        return Err(Counter::DropMalformed);
    }
    let proto: u8 = p.load(INNER_IP + 9)?;
    let mut key = FlowKey::new(p.load(INNER_IP + 12)?, p.load(INNER_IP + 16)?, 0, 0, proto);
    let l4 = match proto {
        IPPROTO_TCP => L4::Tcp,
        IPPROTO_UDP => L4::Udp,
        IPPROTO_ICMP => match p.load::<u8>(INNER_L4)? {
            ICMP_ECHO_REQUEST | ICMP_ECHO_REPLY => L4::IcmpEcho,
            _ => L4::Other,
        },
        _ => L4::Other,
    };
    match l4 {
        L4::Tcp | L4::Udp => {
            key.src_port = p.load(INNER_L4)?;
            key.dst_port = p.load(INNER_L4 + 2)?;
        }
        L4::IcmpEcho => {
            if p.load::<u8>(INNER_L4)? == ICMP_ECHO_REQUEST {
                key.src_port = p.load(INNER_L4 + 4)?;
            } else {
                key.dst_port = p.load(INNER_L4 + 4)?;
            }
        }
        _ => {}
    }
    Ok(Inner { key, l4 })
}
