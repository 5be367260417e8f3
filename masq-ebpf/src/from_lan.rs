//! TC on the LAN device: replies of published services and new or known masqueraded
//! connections, each steered to its connection's uplink.
use aya_ebpf::{
    bindings::{TC_ACT_OK, bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use masq_common::{CFG_F_FAST_PATH, CFG_F_NO_STEER, Counter, DataplaneConfig, FlowKey};

use crate::{
    conntrack,
    forward::{decrement_ttl, set_macs},
    maps::PUBLIC_ADDRS,
    packet::{Frag, Ipv4, L4, Parsed, TCP_ACK, TCP_SYN},
    stats::{count, uplink_new_conn},
    steer::{
        Route, choose_uplink, config, in_lan, is_uplink_address, route, uplink, uplink_by_ifindex,
        with_mark,
    },
    translate::{Translation, icmp_error, later_fragment, record_first_fragment},
};

const AF_INET: u32 = 2;

const PACKET_HOST: u32 = 0;

pub fn run(mut ctx: TcContext) -> Result<i32, Counter> {
    let ip = match crate::parse_tc(&ctx)? {
        Parsed::Ipv4(ip) => ip,
        _ => return Ok(TC_ACT_OK),
    };
    count(Counter::Ipv4Seen);
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK);
    };
    // SAFETY: `skb` is the program's context.
    let skb = unsafe { &*ctx.skb.skb };
    // What the FIB's MTU checks are asked about, the same for every lookup of this packet, so
    // the next-hop cache entry a new connection's route probe leaves serves its redirect too.
    let route_len = mtu_check_len(skb, &ip);
    // Broadcast, multicast and frames for another MAC are the gateway's own business.
    if skb.pkt_type != PACKET_HOST || is_multicast_or_broadcast(ip.key.dst_addr) {
        count(Counter::PassedUntouched);
        return Ok(TC_ACT_OK);
    }
    if ip.ttl <= 1 {
        // Untranslated, so the kernel's time-exceeded quotes what the LAN host sent.
        count(Counter::TtlExpiring);
        return Ok(TC_ACT_OK);
    }
    let len = u64::from(ctx.len());

    let (translation, uplink_index) = if ip.frag == Frag::Later {
        let Some(found) = later_fragment(&ip) else {
            // First fragment not seen: the kernel forwards it, uplink egress drops it.
            count(Counter::PassedUntouched);
            return Ok(TC_ACT_OK);
        };
        found
    } else if ip.l4 == L4::IcmpError {
        let Some((translation, entry, conn_key)) = icmp_error(&ctx, &ip, false) else {
            count(Counter::PassedUntouched);
            return Ok(TC_ACT_OK);
        };
        conntrack::touch(&conn_key, entry, &ip, len);
        count(Counter::IcmpErrorTranslated);
        (translation, entry.uplink)
    } else if let Some(entry) = conntrack::lookup(&ip.key) {
        if entry.toward_lan() {
            count(Counter::PassedUntouched);
            return Ok(TC_ACT_OK);
        }
        conntrack::touch(&ip.key, entry, &ip, len);
        (Translation::Flow(entry.xlate.key(ip.key.proto)), entry.uplink)
    } else {
        let k = &ip.key;
        let not_ours = !in_lan(cfg, k.src_addr)
            || in_lan(cfg, k.dst_addr)
            || is_uplink_address(k.dst_addr)
            // SAFETY: read-only lookup.
            || unsafe { PUBLIC_ADDRS.get(k.dst_addr) }.is_some();
        if not_ours {
            count(Counter::PassedUntouched);
            return Ok(TC_ACT_OK);
        }
        if ip.l4 == L4::Tcp && ip.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
            return Err(Counter::DropTcpNoConn);
        }
        let mut chosen = choose_uplink(cfg, k);
        let mut up = uplink(chosen).ok_or(Counter::DropNoUplink)?;
        // As MASQUERADE does: the source is the address of the interface the policy's table
        // routes to. Another uplink's interface (its connected subnet) means that uplink; an
        // interface that is no uplink (a VPN, another internal network) means no NAT at all.
        if cfg.flags & CFG_F_NO_STEER == 0 {
            let probe = FlowKey { src_addr: up.address, ..*k };
            let egress = match route(&ctx, skb.ingress_ifindex, &probe, route_len, up.table) {
                Route::Resolved { ifindex, .. } | Route::NoNeigh { ifindex, .. } => ifindex,
                Route::Kernel => up.ifindex,
            };
            if egress != up.ifindex {
                let Some((index, other)) = uplink_by_ifindex(egress) else {
                    count(Counter::PassedUntouched);
                    return Ok(TC_ACT_OK);
                };
                (chosen, up) = (index, other);
            }
        }
        let mut xlate = *k;
        xlate.src_addr = up.address;
        let ports = crate::port_range(cfg, &ip, true);
        let xlate = conntrack::create(k, xlate, chosen, 0, ports, &ip, len)?;
        count(Counter::OutboundNew);
        uplink_new_conn(chosen);
        (Translation::Flow(xlate.key(ip.key.proto)), chosen)
    };
    record_first_fragment(&ip, &translation, uplink_index);
    to_uplink(&mut ctx, cfg, &ip, &translation, uplink_index, route_len)
}

/// 224.0.0.0/4 or 255.255.255.255.
#[inline(always)]
fn is_multicast_or_broadcast(addr: u32) -> bool {
    let addr = u32::from_be(addr);
    addr >> 28 == 0xe || addr == u32::MAX
}

/// The packet size the FIB's MTU check must pass: for an aggregated (GSO) packet, the size of
/// the segments it will leave as, not the aggregate's.
#[inline(always)]
fn mtu_check_len(skb: &aya_ebpf::bindings::__sk_buff, ip: &Ipv4) -> u16 {
    if skb.gso_size == 0 {
        return ip.tot_len;
    }
    let headers = 20 + if ip.l4 == L4::Tcp { u32::from(ip.tcp_header_len) } else { 8 };
    (skb.gso_size + headers).min(u32::from(ip.tot_len)) as u16
}

/// Steer to the connection's uplink: mark the packet for the kernel's policy tables, and when
/// the uplink's table resolves the route, translate and redirect without the kernel stack.
/// Otherwise the kernel routes it by the mark and the uplink's egress program translates.
#[inline(always)]
fn to_uplink(
    ctx: &mut TcContext,
    cfg: &DataplaneConfig,
    ip: &Ipv4,
    translation: &Translation,
    uplink_index: u8,
    route_len: u16,
) -> Result<i32, Counter> {
    let up = uplink(uplink_index).ok_or(Counter::DropNoUplink)?;
    if cfg.flags & CFG_F_NO_STEER != 0 {
        count(Counter::KernelPath);
        return Ok(TC_ACT_OK);
    }
    // SAFETY: `skb` is the program's context.
    let skb = unsafe { &mut *ctx.skb.skb };
    skb.mark = with_mark(cfg, skb.mark, up.mark);
    if cfg.flags & CFG_F_FAST_PATH == 0 {
        count(Counter::KernelPath);
        return Ok(TC_ACT_OK);
    }
    let key: FlowKey = translation.result(ip);
    let next = route(ctx, skb.ingress_ifindex, &key, route_len, up.table);
    if let Route::Kernel = next {
        count(Counter::KernelPath);
        return Ok(TC_ACT_OK);
    }
    translation.apply(ctx, ip)?;
    count(Counter::ToUplinkTranslated);
    decrement_ttl(ctx)?;
    match next {
        Route::Resolved { ifindex, smac, dmac } => {
            set_macs(ctx, &smac, &dmac)?;
            count(Counter::FastPathRedirect);
            // SAFETY: plain helper call.
            Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
        }
        Route::NoNeigh { ifindex, next_hop } => {
            let mut nh = bpf_redir_neigh {
                nh_family: AF_INET,
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: [next_hop, 0, 0, 0] },
            };
            count(Counter::FastPathNeigh);
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: nh is initialised and its size is passed.
            Ok(unsafe { bpf_redirect_neigh(ifindex, &mut nh, size, 0) } as i32)
        }
        Route::Kernel => Ok(TC_ACT_OK),
    }
}
