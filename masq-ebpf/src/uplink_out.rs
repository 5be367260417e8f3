//! `masq_uplink_out`: TC egress of each uplink (`_l3` on an L3 device). Counts the uplink's
//! traffic, translates what the kernel forwarded untranslated (masq's slow path, incl. the
//! fragments the kernel made), stops LAN addresses from leaking un-NATed, and sends the
//! gateway's own ICMP errors back by the uplink their offending packet came in on.
use aya_ebpf::{macros::classifier, programs::TcContext};
use masq_common::{Counter, FlowKey, IPPROTO_ICMP, MAX_UPLINKS};

use crate::{
    hook::{Hook, Verdict, tc_run},
    maps::PUBLIC_ADDRS,
    packet::{
        ETH_HLEN, IP_CSUM, IP_SRC, Ipv4, L4, Packet, Parsed, Skb, ipv4_source_and_proto, parse,
        parse_icmp_error,
    },
    stats::{count, uplink_tx},
    steer::{Route, config, in_lan, route, uplink, uplink_by_ifindex},
    translate::{Found, Translation, find, record_first_fragment},
};

#[classifier]
#[inline(always)]
pub fn masq_uplink_out(ctx: TcContext) -> i32 {
    tc_run::<ETH_HLEN>(ctx, run)
}

#[classifier]
#[inline(always)]
pub fn masq_uplink_out_l3(ctx: TcContext) -> i32 {
    tc_run::<0>(ctx, run)
}

#[inline(always)]
fn run<const IP: usize>(ctx: &mut Skb<IP>) -> Result<Verdict, Counter> {
    let this_uplink = uplink_by_ifindex(ctx.ifindex()).map(|(index, _)| index);
    if let Some(index) = this_uplink {
        uplink_tx(index, ctx.len());
    }
    let Some(cfg) = config() else { return Ok(Verdict::Pass) };
    // Most of what leaves an uplink was translated at LAN ingress already, or is the gateway's
    // own: neither from the LAN nor an ICMP error, nothing to do but count it.
    if let Some((src_addr, proto)) = ipv4_source_and_proto(ctx)
        && proto != IPPROTO_ICMP
        && !in_lan(cfg, src_addr)
    {
        return Ok(Verdict::Pass);
    }
    let mut ip = Ipv4::EMPTY;
    match parse(ctx, &mut ip)? {
        Parsed::Ipv4 => {}
        Parsed::Ipv4Options { src_addr } if in_lan(cfg, src_addr) => {
            return Err(Counter::DropIpOptions);
        }
        _ => return Ok(Verdict::Pass),
    };
    if !in_lan(cfg, ip.key.src_addr) {
        if ip.l4 == L4::IcmpError
            && let Some(index) = this_uplink
        {
            return own_icmp_error(ctx, &ip, index);
        }
        return Ok(Verdict::Pass);
    }
    // Already accounted at LAN ingress, like every packet: only translate here.
    let (translation, uplink) = match find(ctx, &ip, None)? {
        Found::Fragment(translation, uplink) => (translation, uplink),
        Found::FragmentUnknown => return Err(Counter::DropFragment),
        Found::IcmpError(translation, entry, _) => (translation, entry.uplink),
        Found::Flow(entry) if !entry.toward_lan() => {
            (Translation::Flow(entry.xlate.key(ip.key.proto)), entry.uplink)
        }
        Found::IcmpErrorUnknown | Found::Flow(_) | Found::New => {
            return Err(Counter::DropUntranslatedLeak);
        }
    };
    record_first_fragment(&ip, &translation, uplink);
    translation.apply(ctx, &ip)?;
    count(Counter::EgressTranslated);
    Ok(Verdict::Pass)
}

/// The uplink whose address, or one of whose published addresses, `addr` is.
#[inline(always)]
fn uplink_of_address(addr: u32) -> Option<u8> {
    // SAFETY: read-only lookup.
    if let Some(public) = unsafe { PUBLIC_ADDRS.get(addr) } {
        return Some(public.uplink);
    }
    (0..MAX_UPLINKS as u8).find(|&i| uplink(i).is_some_and(|u| u.address == addr))
}

/// An ICMP error the gateway itself sends, as the main table routed it. About a packet masq
/// translated toward the LAN (fragmentation needed on the LAN link) it quotes the LAN-side
/// tuple: translated back as a LAN host's error would be. About a packet that came in by another
/// uplink (time exceeded for a published address) it goes back by that uplink, from that
/// uplink's address, as the sender expects (an ISP drops the other's source). Else (or while
/// that uplink's next hop is not resolved yet) it leaves as it is.
#[inline(always)]
fn own_icmp_error<const IP: usize>(
    ctx: &mut Skb<IP>,
    ip: &Ipv4,
    this: u8,
) -> Result<Verdict, Counter> {
    let Some(here) = uplink(this) else { return Ok(Verdict::Pass) };
    if ip.key.src_addr != here.address {
        return Ok(Verdict::Pass);
    }
    if let Found::IcmpError(Translation::IcmpError { inner, new_inner, outer }, entry, _) =
        find(ctx, ip, None)?
    {
        let sent = FlowKey { src_addr: outer.0, dst_addr: outer.1, ..ip.key };
        let back = send_back(ctx, ip, &sent, entry.uplink, this)?;
        // Leaving by this uplink after all, it keeps this uplink's source.
        let outer = if back.is_some() { outer } else { (ip.key.src_addr, outer.1) };
        Translation::IcmpError { inner, new_inner, outer }.apply(ctx, ip)?;
        count(Counter::EgressTranslated);
        return Ok(back.unwrap_or(Verdict::Pass));
    }
    let Ok(inner) = parse_icmp_error(ctx) else { return Ok(Verdict::Pass) };
    let Some(origin) = uplink_of_address(inner.key.dst_addr) else {
        return Ok(Verdict::Pass);
    };
    let Some(back) = uplink(origin) else { return Ok(Verdict::Pass) };
    let sent = FlowKey { src_addr: back.address, ..ip.key };
    match send_back(ctx, ip, &sent, origin, this)? {
        Some(verdict) => {
            ctx.fix_csum4(IP_CSUM, ip.key.src_addr, back.address)?;
            ctx.store_u32(IP_SRC, back.address)?;
            Ok(verdict)
        }
        None => Ok(Verdict::Pass),
    }
}

/// The redirect that sends `sent` (the packet's addresses as it will leave) out of uplink
/// `origin` instead of `this`, when that uplink is another Ethernet one whose next hop is
/// resolved: `bpf_redirect_neigh` at egress would keep the Ethernet header the kernel already
/// wrote for this uplink.
#[inline(always)]
fn send_back<const IP: usize>(
    ctx: &Skb<IP>,
    ip: &Ipv4,
    sent: &FlowKey,
    origin: u8,
    this: u8,
) -> Result<Option<Verdict>, Counter> {
    if origin == this {
        return Ok(None);
    }
    let Some(back) = uplink(origin).filter(|u| u.mac != [0; 6]) else { return Ok(None) };
    let Route::Resolved { ifindex, eth } =
        route(ctx, back.ifindex, sent, ip.tot_len, back.table, crate::conntrack::now_tick())
    else {
        return Ok(None);
    };
    if ifindex != back.ifindex {
        return Ok(None);
    }
    count(Counter::OwnIcmpErrorReturned);
    Ok(Some(Verdict::Forward { ifindex, eth }))
}
