//! What a router checks before it forwards (RFC 1812) and conntrack before it tracks: header
//! checksum and lengths, martian addresses, TCP flags, and the transport checksum of a packet
//! that would open a connection. Each failure is a named drop.
use aya_ebpf::helpers::bpf_csum_diff;
use masq_common::{CFG_F_NO_VALIDATE, Counter, DataplaneConfig};

use crate::{
    csum::fold,
    maps::{CSUM_SCRATCH, PUBLIC_ADDRS},
    packet::{
        Frag, ICMP_CSUM, IPPROTO_ICMP, Ipv4, L4, L4_OFF, Packet, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
    steer::{in_lan, is_uplink_address},
};

const TCP_URG: u8 = 0x20;

/// The TCP flag combinations a stack sends (PSH, ECE and CWR aside), as Linux conntrack's
/// `tcp_valid_flags`: one bit per combination of FIN, SYN, RST, ACK and URG.
const VALID_TCP_FLAGS: u64 = 1 << TCP_SYN
    | 1 << (TCP_SYN | TCP_URG)
    | 1 << (TCP_SYN | TCP_ACK)
    | 1 << TCP_RST
    | 1 << (TCP_RST | TCP_ACK)
    | 1 << (TCP_FIN | TCP_ACK)
    | 1 << (TCP_FIN | TCP_ACK | TCP_URG)
    | 1 << TCP_ACK
    | 1 << (TCP_ACK | TCP_URG);

/// Transport checksums are verified over segments up to this many 256-byte chunks (a full
/// 1500-byte packet); longer ones (jumbo frames, aggregated packets) are taken as they are.
const CSUM_CHUNK: u32 = 256;
const CSUM_MAX_CHUNKS: u32 = 6;

#[inline(always)]
fn add32(sum: u32, word: u32) -> u32 {
    sum + (word & 0xffff) + (word >> 16)
}

/// The first octet of an address as the dataplane holds it (network byte order in memory):
/// one mask, no byte swap.
#[inline(always)]
fn first_octet(addr: u32) -> u8 {
    addr.to_ne_bytes()[0]
}

/// 224.0.0.0/4 or 255.255.255.255.
#[inline(always)]
pub fn is_multicast_or_broadcast(addr: u32) -> bool {
    first_octet(addr) >> 4 == 0xe || addr == u32::MAX
}

/// 0.0.0.0/8 or 127.0.0.0/8: never on a wire.
#[inline(always)]
fn is_zero_or_loopback(addr: u32) -> bool {
    let top = first_octet(addr);
    top == 0 || top == 127
}

/// A source no host may send from (RFC 1812 5.3.7, RFC 6890): 0/8, 127/8 and 224/3 (multicast,
/// the reserved 240/4 and the limited broadcast). One subtraction folds 0 and 224..=255 into
/// one comparison.
#[inline(always)]
fn is_martian_source(addr: u32) -> bool {
    let top = first_octet(addr);
    top.wrapping_sub(1) >= 223 || top == 127
}

/// The checks run (off only to measure what they cost).
#[inline(always)]
pub fn enabled(cfg: &DataplaneConfig) -> bool {
    cfg.flags & CFG_F_NO_VALIDATE == 0
}

#[inline(always)]
pub fn tcp_flags_valid(flags: u8) -> bool {
    VALID_TCP_FLAGS & 1 << (flags & (TCP_FIN | TCP_SYN | TCP_RST | TCP_ACK | TCP_URG)) != 0
}

/// Every unicast IPv4 packet a program handles, before it is looked up: the header checksum,
/// lengths that agree with each other and the frame, a source and destination a host may use,
/// TCP flags a stack sends. Multicast and broadcast are left to the kernel by the caller.
#[inline(always)]
pub fn packet<P: Packet>(p: &P, ip: &Ipv4) -> Result<(), Counter> {
    if fold(ip.header_sum) != 0xffff {
        return Err(Counter::DropIpChecksum);
    }
    if ip.tot_len < 20 || u64::from(ip.tot_len) + P::IP as u64 > p.len() {
        return Err(Counter::DropBadLength);
    }
    if is_martian_source(ip.key.src_addr) {
        return Err(Counter::DropMartianSource);
    }
    if is_zero_or_loopback(ip.key.dst_addr) {
        return Err(Counter::DropMartianDestination);
    }
    if ip.frag == Frag::Later {
        return Ok(());
    }
    match ip.l4 {
        L4::Tcp => {
            let hlen = u16::from(ip.tcp_header_len);
            if hlen < 20 || 20 + hlen > ip.tot_len {
                return Err(Counter::DropBadLength);
            }
            if !tcp_flags_valid(ip.tcp_flags) {
                return Err(Counter::DropTcpFlags);
            }
        }
        L4::Udp => {
            let udp_len = u16::from_be(p.load(L4_OFF + 4)?);
            // A first fragment's UDP length covers the whole datagram.
            let too_long = ip.frag == Frag::Whole && udp_len > ip.tot_len - 20;
            if ip.tot_len < 28 || udp_len < 8 || too_long {
                return Err(Counter::DropBadLength);
            }
        }
        L4::IcmpEcho | L4::IcmpError if ip.tot_len < 28 => return Err(Counter::DropBadLength),
        _ => {}
    }
    Ok(())
}

/// A new connection from an uplink claiming a source that lives on this side of the gateway:
/// a LAN address, an uplink address or a published one.
#[inline(always)]
pub fn uplink_source(cfg: &DataplaneConfig, ip: &Ipv4) -> Result<(), Counter> {
    let src = ip.key.src_addr;
    // SAFETY: read-only lookup.
    let published = unsafe { PUBLIC_ADDRS.get(src) }.is_some();
    if in_lan(cfg, src) || is_uplink_address(src) || published {
        return Err(Counter::DropSpoofedSource);
    }
    Ok(())
}

/// The transport checksum of a packet that would open a connection (TCP, UDP, ICMP echo), so
/// no entry is made for what its receiver would discard. A packet from a local sender whose
/// checksum is left to offload (CHECKSUM_PARTIAL: the field holds only the pseudo-header sum)
/// passes: its checksum is computed on the way out.
#[inline(always)]
pub fn l4_checksum<P: Packet>(p: &P, ip: &Ipv4) -> Result<(), Counter> {
    let csum_off = match ip.l4.pseudo_csum_off() {
        Some(off) => off,
        None if ip.key.proto == IPPROTO_ICMP => ICMP_CSUM,
        None => return Ok(()),
    };
    // A first fragment's checksum covers the whole datagram.
    if ip.frag != Frag::Whole {
        return Ok(());
    }
    // UDP: what its length field covers (bytes past it, which Linux trims, are not summed).
    let seg_len = if ip.l4 == L4::Udp {
        u32::from(u16::from_be(p.load::<u16>(L4_OFF + 4)?))
    } else {
        u32::from(ip.tot_len) - 20
    };
    if seg_len > CSUM_CHUNK * CSUM_MAX_CHUNKS {
        return Ok(());
    }
    let stored: u16 = p.load(csum_off)?;
    if ip.l4 == L4::Udp && stored == 0 {
        return Ok(());
    }
    // The pseudo header, as raw words like everything else summed here.
    let pseudo = if ip.key.proto == IPPROTO_ICMP {
        0
    } else {
        let tail = u32::from(ip.key.proto) << 8 | u32::from((seg_len as u16).to_be()) << 16;
        add32(add32(add32(0, ip.key.src_addr), ip.key.dst_addr), tail)
    };
    let buf = CSUM_SCRATCH.get_ptr_mut(0).ok_or(Counter::DropMalformed)?;
    // SAFETY: this CPU's scratch value, used by nothing else while the program runs.
    let buf = unsafe { &mut *buf };
    let mut sum = pseudo;
    // Whole chunks, then the rest: a length the verifier sees bounded by its mask.
    let (whole, rest) = (seg_len / CSUM_CHUNK, seg_len & (CSUM_CHUNK - 1));
    let mut done = 0;
    for i in 0..CSUM_MAX_CHUNKS {
        let n = if i < whole { CSUM_CHUNK } else { rest };
        if n == 0 {
            break;
        }
        // The last word is zero beyond the data (the checksum pads an odd byte with zero).
        let tail = ((n - 1) & (CSUM_CHUNK - 4)) as usize;
        buf[tail..tail + 4].copy_from_slice(&[0; 4]);
        if !p.copy_out((P::IP + L4_OFF) as u32 + done, buf.as_mut_ptr(), n) {
            return Err(Counter::DropBadLength);
        }
        let words = ((n + 3) & !3).min(CSUM_CHUNK);
        // SAFETY: `buf` holds `words` bytes.
        let s =
            unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, buf.as_mut_ptr().cast(), words, sum) };
        if s < 0 {
            return Err(Counter::DropMalformed);
        }
        sum = u32::from(fold(s as u32));
        if n < CSUM_CHUNK {
            break;
        }
        done += n;
    }
    if fold(sum) == 0xffff || (pseudo != 0 && stored == fold(pseudo)) {
        Ok(())
    } else {
        Err(Counter::DropL4Checksum)
    }
}
