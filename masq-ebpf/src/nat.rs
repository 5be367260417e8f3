//! Address and port translation: rewriting a packet from one tuple to another, the published
//! services (DNAT) and ICMP errors with their quoted header.
use masq_common::{Counter, FlowKey, PUBLIC_F_PORTS, PUBLIC_F_WHOLE, PublishKey, PublishTarget};

use crate::{
    maps::{PUBLIC_ADDRS, PUBLISH},
    packet::{
        ICMP_CSUM, ICMP_ECHO_REQUEST, ICMP_ID, INNER_IP, INNER_L4, IP_CSUM, IP_DST, IP_SRC, Inner,
        Ipv4, L4, L4_OFF, Packet,
    },
};

/// The published service for a packet arriving from an uplink, if any: first the exact
/// address/protocol/port, then the whole address. `PUBLIC_ADDRS` says which of the two exist.
#[inline(always)]
pub fn published(key: &FlowKey) -> Option<&'static PublishTarget> {
    // SAFETY: read-only use of map values.
    let flags = unsafe { PUBLIC_ADDRS.get(key.dst_addr) }?.flags;
    if flags & PUBLIC_F_PORTS != 0 {
        let exact =
            PublishKey { addr: key.dst_addr, port: key.dst_port, proto: key.proto, _pad: 0 };
        // SAFETY: as above.
        if let Some(target) = unsafe { PUBLISH.get(exact) } {
            return Some(target);
        }
    }
    if flags & PUBLIC_F_WHOLE == 0 {
        return None;
    }
    let whole = PublishKey { addr: key.dst_addr, port: 0, proto: 0, _pad: 0 };
    // SAFETY: as above.
    unsafe { PUBLISH.get(whole) }
}

/// Rewrite the packet's tuple from `from` to `to`, fixing the IP and transport checksums.
#[inline(always)]
pub fn rewrite<P: Packet>(
    p: &mut P,
    ip: &Ipv4,
    from: &FlowKey,
    to: &FlowKey,
) -> Result<(), Counter> {
    rewrite_tuple(p, ip.l4, ip.echo_request, from, to)
}

/// As [`rewrite`], given only what it needs of the parsed packet: the transport and, for an
/// echo, whether it is a request.
#[inline(always)]
pub fn rewrite_tuple<P: Packet>(
    p: &mut P,
    l4: L4,
    echo_request: bool,
    from: &FlowKey,
    to: &FlowKey,
) -> Result<(), Counter> {
    let udp = l4 == L4::Udp;
    let l4_csum = l4.pseudo_csum_off();
    if from.src_addr != to.src_addr {
        if let Some(off) = l4_csum {
            p.l4_csum_addr(off, from.src_addr, to.src_addr, udp)?;
        }
        p.fix_csum4(IP_CSUM, from.src_addr, to.src_addr)?;
        p.store_u32(IP_SRC, to.src_addr)?;
    }
    if from.dst_addr != to.dst_addr {
        if let Some(off) = l4_csum {
            p.l4_csum_addr(off, from.dst_addr, to.dst_addr, udp)?;
        }
        p.fix_csum4(IP_CSUM, from.dst_addr, to.dst_addr)?;
        p.store_u32(IP_DST, to.dst_addr)?;
    }
    match l4 {
        L4::Tcp | L4::Udp => {
            let csum_off = l4_csum.unwrap_or(0);
            if from.src_port != to.src_port {
                p.l4_csum_port(csum_off, from.src_port, to.src_port, udp)?;
                p.store_u16(L4_OFF, to.src_port)?;
            }
            if from.dst_port != to.dst_port {
                p.l4_csum_port(csum_off, from.dst_port, to.dst_port, udp)?;
                p.store_u16(L4_OFF + 2, to.dst_port)?;
            }
        }
        L4::IcmpEcho => {
            // The identifier is the source "port" of a request, the destination one of a reply.
            // (Two calls, not a choice of fields: LLVM would pick a stack address with an OR,
            // which the verifier refuses.)
            if echo_request {
                set_echo_id(p, from.src_port, to.src_port)?;
            } else {
                set_echo_id(p, from.dst_port, to.dst_port)?;
            }
        }
        _ => {}
    }
    Ok(())
}

#[inline(always)]
fn set_echo_id<P: Packet>(p: &mut P, old: u16, new: u16) -> Result<(), Counter> {
    if old != new {
        p.fix_csum2(ICMP_CSUM, old, new)?;
        p.store_u16(ICMP_ID, new)?;
    }
    Ok(())
}

/// Store a 32-bit word inside an ICMP error's payload, fixing the inner checksums that cover
/// it (`inner_csums`) and the ICMP checksum, which covers everything including those fields.
#[inline(always)]
fn set_quoted4<P: Packet>(
    p: &mut P,
    off: usize,
    old: u32,
    new: u32,
    inner_csums: [Option<usize>; 2],
) -> Result<(), Counter> {
    if old == new {
        return Ok(());
    }
    for csum_off in inner_csums.into_iter().flatten() {
        let (was, now) = p.fix_csum4(csum_off, old, new)?;
        p.fix_csum2(ICMP_CSUM, was, now)?;
    }
    p.fix_csum4(ICMP_CSUM, old, new)?;
    p.store_u32(off, new)
}

/// As `set_quoted4`, for a 16-bit word.
#[inline(always)]
fn set_quoted2<P: Packet>(
    p: &mut P,
    off: usize,
    old: u16,
    new: u16,
    inner_csum: Option<usize>,
) -> Result<(), Counter> {
    if old == new {
        return Ok(());
    }
    if let Some(csum_off) = inner_csum {
        let (was, now) = p.fix_csum2(csum_off, old, new)?;
        p.fix_csum2(ICMP_CSUM, was, now)?;
    }
    p.fix_csum2(ICMP_CSUM, old, new)?;
    p.store_u16(off, new)
}

/// Offset of the quoted transport checksum when the error quotes it and it is in use.
#[inline(always)]
fn quoted_l4_csum<P: Packet>(p: &P, ip: &Ipv4, inner: &Inner) -> Option<usize> {
    let off = match inner.l4 {
        L4::Udp => INNER_L4 + 6,
        L4::Tcp => INNER_L4 + 16,
        _ => return None,
    };
    // Inside the ICMP message, not in trailer bytes after it.
    if off + 2 > usize::from(ip.tot_len) {
        return None;
    }
    match p.load::<u16>(off) {
        Ok(0) if inner.l4 == L4::Udp => None,
        Ok(_) => Some(off),
        Err(_) => None,
    }
}

/// Translate an ICMP error whose quoted packet is `inner` and now becomes `new_inner`; the outer
/// addresses become `outer`.
#[inline(always)]
pub fn rewrite_icmp_error<P: Packet>(
    p: &mut P,
    ip: &Ipv4,
    inner: &Inner,
    new_inner: &FlowKey,
    outer: (u32, u32),
) -> Result<(), Counter> {
    let (src, dst) = outer;
    if ip.key.src_addr != src {
        p.fix_csum4(IP_CSUM, ip.key.src_addr, src)?;
        p.store_u32(IP_SRC, src)?;
    }
    if ip.key.dst_addr != dst {
        p.fix_csum4(IP_CSUM, ip.key.dst_addr, dst)?;
        p.store_u32(IP_DST, dst)?;
    }
    let l4_csum = quoted_l4_csum(p, ip, inner);
    let old = &inner.key;
    let ip_csum = Some(INNER_IP + 10);
    set_quoted4(p, INNER_IP + 12, old.src_addr, new_inner.src_addr, [ip_csum, l4_csum])?;
    set_quoted4(p, INNER_IP + 16, old.dst_addr, new_inner.dst_addr, [ip_csum, l4_csum])?;
    match inner.l4 {
        L4::Tcp | L4::Udp => {
            set_quoted2(p, INNER_L4, old.src_port, new_inner.src_port, l4_csum)?;
            set_quoted2(p, INNER_L4 + 2, old.dst_port, new_inner.dst_port, l4_csum)?;
        }
        L4::IcmpEcho => {
            // Two calls, not a choice of fields (see `rewrite`).
            let id_csum = Some(INNER_L4 + 2);
            if p.load::<u8>(INNER_L4)? == ICMP_ECHO_REQUEST {
                set_quoted2(p, INNER_L4 + 4, old.src_port, new_inner.src_port, id_csum)?;
            } else {
                set_quoted2(p, INNER_L4 + 4, old.dst_port, new_inner.dst_port, id_csum)?;
            }
        }
        _ => {}
    }
    Ok(())
}
