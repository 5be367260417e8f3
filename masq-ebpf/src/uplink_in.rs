//! `masq_uplink_in`: ingress of each uplink. ARP for published addresses, new connections to
//! published services, replies of masqueraded connections, ICMP errors; all sent to the LAN
//! translated. One body for three hooks: TC behind Ethernet (the default), TC on an L3 device
//! (PPP, raw-ip LTE, WireGuard, tun), and XDP where the loader found it safe.
use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use masq_common::{
    CFG_F_FAST_PATH, CONN_F_INBOUND, ConnRoute, Counter, DataplaneConfig, FlowKey, Outcome,
    PublishTarget, UPLINK_F_UDP_OPEN_FILTER, tick,
};

use crate::{
    arp, binding, conntrack,
    forward::decrement_ttl,
    hook::{Hook, Verdict, local_tcp_socket, tc_run, xdp_action},
    maps::PUBLIC_ADDRS,
    nat::published,
    packet::{ETH_HLEN, Ipv4, L4, Parsed, TCP_ACK, TCP_SYN, parse},
    stats::{count, count_outcome, uplink_new_conn, uplink_rx},
    steer::{Egress, Route, config, in_lan, is_uplink_address, route_kept, uplink_by_ifindex},
    translate::{Found, Translation, account_icmp_error, find, record_first_fragment},
    validate::{self, is_multicast_or_broadcast},
};

#[classifier]
#[inline(always)]
pub fn masq_uplink_in(ctx: TcContext) -> i32 {
    tc_run::<ETH_HLEN>(ctx, run)
}

#[classifier]
#[inline(always)]
pub fn masq_uplink_in_l3(ctx: TcContext) -> i32 {
    tc_run::<0>(ctx, run)
}

#[xdp]
#[inline(always)]
pub fn masq_uplink_in_xdp(mut ctx: XdpContext) -> u32 {
    let verdict = run(&mut ctx);
    xdp_action(&mut ctx, verdict)
}

#[inline(always)]
fn run<P: Hook>(ctx: &mut P) -> Result<Verdict, Counter> {
    let ifindex = ctx.ifindex();
    let Some((uplink_index, uplink)) = uplink_by_ifindex(ifindex) else {
        return Ok(Verdict::Pass);
    };
    let len = ctx.len();
    uplink_rx(uplink_index, len);
    let mut ip = Ipv4::EMPTY;
    match parse(ctx, &mut ip)? {
        Parsed::Ipv4 => {}
        Parsed::Arp => return arp::answer(ctx, uplink_index, uplink),
        Parsed::Other | Parsed::Ipv4Options { .. } => return Ok(Verdict::Pass),
    };
    count(Counter::Ipv4Seen);
    let Some(cfg) = config() else {
        return Ok(Verdict::Pass);
    };
    // Tagged for a VLAN masq is not attached to, multicast, broadcast: the kernel's business.
    if ctx.vlan_tagged() || is_multicast_or_broadcast(ip.key.dst_addr) {
        count(Counter::PassedUntouched);
        return Ok(Verdict::Pass);
    }
    let validate = validate::enabled(cfg);
    if validate {
        validate::packet(ctx, &ip)?;
    }

    // The clock is read once, on the paths that account or route the packet. A connection's
    // own packets come with the route its entry keeps.
    let (translation, now, kept) = match find(ctx, &ip, Some(uplink_index))? {
        Found::Fragment(translation, _) => (translation, conntrack::now_tick(), None),
        // SAFETY: read-only lookup.
        Found::FragmentUnknown if unsafe { PUBLIC_ADDRS.get(ip.key.dst_addr) }.is_some() => {
            return Err(Counter::DropFragment);
        }
        // A LAN host is reached only through a translation: an error addressed straight to
        // it from outside is forged.
        Found::IcmpErrorUnknown if in_lan(cfg, ip.key.dst_addr) => {
            return Err(Counter::DropIcmpErrorMismatch);
        }
        Found::FragmentUnknown | Found::IcmpErrorUnknown => {
            count(Counter::PassedUntouched);
            return Ok(Verdict::Pass);
        }
        Found::IcmpError(translation, entry, conn_key) => {
            (translation, account_icmp_error(&conn_key, entry, &ip, len), None)
        }
        Found::Flow(entry) => {
            if !entry.toward_lan() {
                count(Counter::PassedUntouched);
                return Ok(Verdict::Pass);
            }
            let translation = Translation::Flow(entry.xlate.key(ip.key.proto));
            let now = conntrack::now_tick();
            conntrack::account(&ip.key, entry, &ip, len, now)?;
            (translation, now, conntrack::kept_route(entry))
        }
        Found::New => {
            let target = match published(&ip.key) {
                Some(target) => *target,
                // With endpoint-independent filtering, a LAN endpoint's public UDP port is
                // open to any remote host, as a published port of its own.
                None if ip.l4 == L4::Udp
                    && uplink.flags & UPLINK_F_UDP_OPEN_FILTER != 0
                    && ip.key.dst_addr == uplink.address =>
                {
                    let Some((to_addr, to_port)) =
                        binding::owner(ip.key.dst_port, ip.key.proto, uplink_index)
                    else {
                        count(Counter::PassedUntouched);
                        return Ok(Verdict::Pass);
                    };
                    count(Counter::MappingInboundNew);
                    PublishTarget { to_addr, to_port, uplink: uplink_index, _pad: 0 }
                }
                None => {
                    // RFC 5382 REQ-4: no RST to an unsolicited SYN (the kernel's answer where
                    // the gateway has no socket), so that a simultaneous open can still work.
                    if ip.l4 == L4::Tcp
                        && ip.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
                        && ip.key.dst_addr == uplink.address
                        && !local_tcp_socket(ctx, &ip.key)
                    {
                        return Err(Counter::DropUnsolicitedSyn);
                    }
                    count(Counter::PassedUntouched);
                    return Ok(Verdict::Pass);
                }
            };
            if target.uplink != uplink_index {
                return Err(Counter::DropWrongUplink);
            }
            if ip.l4 == L4::Tcp && ip.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
                return Err(Counter::DropTcpNoConn);
            }
            if validate {
                validate::uplink_source(cfg, &ip)?;
            }
            if ip.ttl <= 1 {
                count(Counter::TtlExpiring);
                return Ok(Verdict::Pass);
            }
            if validate {
                validate::l4_checksum(ctx, &ip)?;
            }
            let mut xlate = ip.key;
            xlate.dst_addr = target.to_addr;
            if target.to_port != 0 {
                xlate.dst_port = target.to_port;
            }
            let time_ns = conntrack::now_ns();
            let xlate = conntrack::create(
                &ip.key,
                xlate,
                uplink_index,
                CONN_F_INBOUND,
                crate::port_range(cfg, &ip, false),
                &ip,
                len,
                time_ns,
            )?;
            count(Counter::InboundNew);
            uplink_new_conn(uplink_index);
            (Translation::Flow(xlate.key(ip.key.proto)), tick(time_ns), None)
        }
    };

    record_first_fragment(&ip, &translation, uplink_index);
    if ip.ttl <= 1 {
        // A reply to a masqueraded connection would reach the gateway's own stack, which has
        // no socket for it and would reset the connection.
        if is_uplink_address(ip.key.dst_addr) {
            return Err(Counter::DropReplyTtlExpired);
        }
        // Untranslated, so the kernel's time-exceeded quotes what the sender sent.
        count(Counter::TtlExpiring);
        return Ok(Verdict::Pass);
    }
    translation.apply(ctx, &ip)?;
    to_lan(ctx, cfg, &ip, &translation.result(&ip), ifindex, now, kept)
}

/// Forward straight to the LAN device when the FIB knows the next hop (`kept`: the route the
/// connection's entry keeps); else let the kernel forward the (already translated) packet.
#[inline(always)]
fn to_lan<P: Hook>(
    ctx: &mut P,
    cfg: &DataplaneConfig,
    ip: &Ipv4,
    key: &FlowKey,
    ifindex: u32,
    now: u32,
    kept: Option<&mut ConnRoute>,
) -> Result<Verdict, Counter> {
    if cfg.flags & CFG_F_FAST_PATH == 0 {
        count_outcome(Outcome::ToLanByKernel);
        return Ok(Verdict::Pass);
    }
    // The LAN lives in main.
    let mtu_len = ctx.mtu_len(ip.tot_len, ip.l4_header_len());
    let verdict = match route_kept(ctx, ifindex, key, mtu_len, &Egress::lan(cfg), kept, now) {
        Route::Resolved { ifindex, eth } => {
            count_outcome(P::TO_LAN_REDIRECTED);
            Verdict::Forward { ifindex, eth }
        }
        Route::NoNeigh { ifindex, next_hop } if P::NEIGH => {
            count(Counter::ToLanTranslated);
            count(Counter::FastPathNeigh);
            Verdict::ForwardNeigh { ifindex, next_hop }
        }
        _ => {
            count_outcome(Outcome::ToLanByKernel);
            return Ok(Verdict::Pass);
        }
    };
    decrement_ttl(ctx)?;
    Ok(verdict)
}
