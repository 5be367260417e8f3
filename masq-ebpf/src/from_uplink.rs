//! XDP on each uplink: ARP for published addresses, new connections to published services,
//! replies of masqueraded connections, ICMP errors; all sent to the LAN translated.
use aya_ebpf::{bindings::xdp_action::XDP_PASS, helpers::bpf_redirect, programs::XdpContext};
use masq_common::{CFG_F_FAST_PATH, CONN_F_INBOUND, Counter, DataplaneConfig, FlowKey};

use crate::{
    arp, conntrack,
    forward::{decrement_ttl, set_macs},
    maps::PUBLIC_ADDRS,
    nat::published,
    packet::{Frag, Ipv4, L4, Packet, Parsed, TCP_ACK, TCP_SYN, parse},
    stats::{count, uplink_new_conn, uplink_rx},
    steer::{RT_TABLE_MAIN, Route, config, is_uplink_address, route, uplink_by_ifindex},
    translate::{Translation, icmp_error, later_fragment, record_first_fragment},
};

pub fn run(mut ctx: XdpContext) -> Result<u32, Counter> {
    let ifindex = ctx.ingress_ifindex() as u32;
    let Some((uplink_index, uplink)) = uplink_by_ifindex(ifindex) else {
        return Ok(XDP_PASS);
    };
    let len = ctx.len();
    uplink_rx(uplink_index, len);
    let ip = match parse(&ctx)? {
        Parsed::Ipv4(ip) => ip,
        Parsed::Arp => return arp::answer(&mut ctx, uplink_index, uplink),
        Parsed::Other | Parsed::Ipv4Options { .. } => return Ok(XDP_PASS),
    };
    count(Counter::Ipv4Seen);
    let Some(cfg) = config() else {
        return Ok(XDP_PASS);
    };

    let translation = if ip.frag == Frag::Later {
        match later_fragment(&ip) {
            Some((translation, _)) => translation,
            // SAFETY: read-only lookup.
            None if unsafe { PUBLIC_ADDRS.get(ip.key.dst_addr) }.is_some() => {
                return Err(Counter::DropFragment);
            }
            None => {
                count(Counter::PassedUntouched);
                return Ok(XDP_PASS);
            }
        }
    } else if ip.l4 == L4::IcmpError {
        let Some((translation, entry, conn_key)) = icmp_error(&ctx, &ip, true) else {
            count(Counter::PassedUntouched);
            return Ok(XDP_PASS);
        };
        conntrack::touch(&conn_key, entry, &ip, len);
        count(Counter::IcmpErrorTranslated);
        translation
    } else if let Some(entry) = conntrack::lookup(&ip.key) {
        if !entry.toward_lan() {
            count(Counter::PassedUntouched);
            return Ok(XDP_PASS);
        }
        conntrack::touch(&ip.key, entry, &ip, len);
        Translation::Flow(entry.xlate.key(ip.key.proto))
    } else {
        let Some(target) = published(&ip.key) else {
            count(Counter::PassedUntouched);
            return Ok(XDP_PASS);
        };
        if target.uplink != uplink_index {
            return Err(Counter::DropWrongUplink);
        }
        if ip.l4 == L4::Tcp && ip.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return Err(Counter::DropTcpNoConn);
        }
        if ip.ttl <= 1 {
            count(Counter::TtlExpiring);
            return Ok(XDP_PASS);
        }
        let mut xlate = ip.key;
        xlate.dst_addr = target.to_addr;
        if target.to_port != 0 {
            xlate.dst_port = target.to_port;
        }
        let xlate = conntrack::create(
            &ip.key,
            xlate,
            uplink_index,
            CONN_F_INBOUND,
            crate::port_range(cfg, &ip, false),
            &ip,
            len,
        )?;
        count(Counter::InboundNew);
        uplink_new_conn(uplink_index);
        Translation::Flow(xlate.key(ip.key.proto))
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
        return Ok(XDP_PASS);
    }
    translation.apply(&mut ctx, &ip)?;
    count(Counter::ToLanTranslated);
    to_lan(&mut ctx, cfg, &ip, &translation.result(&ip), ifindex)
}

/// Redirect straight to the LAN device when the FIB knows the next hop; else let the kernel
/// forward the (already translated) packet.
#[inline(always)]
fn to_lan(
    ctx: &mut XdpContext,
    cfg: &DataplaneConfig,
    ip: &Ipv4,
    key: &FlowKey,
    ifindex: u32,
) -> Result<u32, Counter> {
    if cfg.flags & CFG_F_FAST_PATH == 0 {
        count(Counter::KernelPath);
        return Ok(XDP_PASS);
    }
    // The LAN lives in main.
    let Route::Resolved { ifindex, smac, dmac } =
        route(ctx, ifindex, key, ip.tot_len, RT_TABLE_MAIN)
    else {
        count(Counter::KernelPath);
        return Ok(XDP_PASS);
    };
    decrement_ttl(ctx)?;
    set_macs(ctx, &smac, &dmac)?;
    count(Counter::FastPathRedirect);
    // SAFETY: plain helper call; returns XDP_REDIRECT or XDP_ABORTED.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as u32)
}
