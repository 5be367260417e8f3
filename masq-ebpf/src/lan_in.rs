//! `masq_lan_in`: TC ingress of the LAN device (Ethernet: a NIC, VLAN subinterface or bridge).
//! Replies of published services and new or known masqueraded connections, each steered to its
//! connection's uplink.
use aya_ebpf::{macros::classifier, programs::TcContext};
use masq_common::{CFG_F_FAST_PATH, CFG_F_NO_STEER, Counter, DataplaneConfig, FlowKey};

use crate::{
    binding, conntrack,
    forward::decrement_ttl,
    hook::{Hook, Verdict, tc_run},
    maps::PUBLIC_ADDRS,
    packet::{ETH_HLEN, EthSkb, Ipv4, L4, Packet, Parsed, TCP_ACK, TCP_SYN, parse},
    stats::{count, uplink_new_conn},
    steer::{
        Route, choose_uplink, config, in_lan, is_uplink_address, route, uplink, uplink_by_ifindex,
        with_mark,
    },
    translate::{Found, Translation, find, record_first_fragment},
    validate::{self, is_multicast_or_broadcast},
};

const PACKET_HOST: u32 = 0;

#[classifier]
pub fn masq_lan_in(ctx: TcContext) -> i32 {
    tc_run::<ETH_HLEN>(ctx, run)
}

#[inline(always)]
fn run(ctx: &mut EthSkb) -> Result<Verdict, Counter> {
    let ip = match parse(ctx)? {
        Parsed::Ipv4(ip) => ip,
        _ => return Ok(Verdict::Pass),
    };
    count(Counter::Ipv4Seen);
    let Some(cfg) = config() else {
        return Ok(Verdict::Pass);
    };
    let skb = ctx.skb();
    let (pkt_type, ingress_ifindex) = (skb.pkt_type, skb.ingress_ifindex);
    // What the FIB's MTU checks are asked about, the same for every lookup of this packet, so
    // the next-hop cache entry a new connection's route probe leaves serves its redirect too.
    let route_len = ctx.mtu_len(ip.tot_len, ip.l4_header_len());
    // Broadcast, multicast, frames for another MAC and VLANs masq is not attached to are the
    // kernel's business.
    let for_kernel = pkt_type != PACKET_HOST || ctx.vlan_tagged();
    if for_kernel || is_multicast_or_broadcast(ip.key.dst_addr) {
        count(Counter::PassedUntouched);
        return Ok(Verdict::Pass);
    }
    let validate = validate::enabled(cfg);
    if validate {
        validate::packet(ctx, &ip)?;
    }
    if ip.ttl <= 1 {
        // Untranslated, so the kernel's time-exceeded quotes what the LAN host sent.
        count(Counter::TtlExpiring);
        return Ok(Verdict::Pass);
    }
    let len = ctx.len();

    let (translation, uplink_index) = match find(ctx, &ip, None)? {
        Found::Fragment(translation, uplink) => (translation, uplink),
        // First fragment not seen: the kernel forwards it, uplink egress drops it.
        Found::FragmentUnknown | Found::IcmpErrorUnknown => {
            count(Counter::PassedUntouched);
            return Ok(Verdict::Pass);
        }
        Found::IcmpError(translation, entry, conn_key) => {
            conntrack::touch(&conn_key, entry, &ip, len);
            count(Counter::IcmpErrorTranslated);
            (translation, entry.uplink)
        }
        Found::Flow(entry) => {
            if entry.toward_lan() {
                count(Counter::PassedUntouched);
                return Ok(Verdict::Pass);
            }
            let found = (Translation::Flow(entry.xlate.key(ip.key.proto)), entry.uplink);
            conntrack::account(&ip.key, entry, &ip, len)?;
            found
        }
        Found::New => {
            let k = &ip.key;
            let not_ours = !in_lan(cfg, k.src_addr)
            || in_lan(cfg, k.dst_addr)
            || is_uplink_address(k.dst_addr)
            // SAFETY: read-only lookup.
            || unsafe { PUBLIC_ADDRS.get(k.dst_addr) }.is_some();
            if not_ours {
                count(Counter::PassedUntouched);
                return Ok(Verdict::Pass);
            }
            if ip.l4 == L4::Tcp && ip.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
                return Err(Counter::DropTcpNoConn);
            }
            if validate {
                validate::l4_checksum(ctx, &ip)?;
            }
            let mut chosen = choose_uplink(cfg, k);
            let mut up = uplink(chosen).ok_or(Counter::DropNoUplink)?;
            // As MASQUERADE does: the source is the address of the interface the policy's table
            // routes to. Another uplink's interface (its connected subnet) means that uplink; an
            // interface that is no uplink (a VPN, another internal network) means no NAT at all.
            if cfg.flags & CFG_F_NO_STEER == 0 {
                let probe = FlowKey { src_addr: up.address, ..*k };
                let egress = match route(ctx, ingress_ifindex, &probe, route_len, up.table) {
                    Route::Resolved { ifindex, .. } | Route::NoNeigh { ifindex, .. } => ifindex,
                    Route::Kernel => up.ifindex,
                };
                if egress != up.ifindex {
                    let Some((index, other)) = uplink_by_ifindex(egress) else {
                        count(Counter::PassedUntouched);
                        return Ok(Verdict::Pass);
                    };
                    (chosen, up) = (index, other);
                }
            }
            let mut xlate = *k;
            xlate.src_addr = up.address;
            let ports = crate::port_range(cfg, &ip, true);
            // The endpoint's public port behind this uplink, the same for every destination.
            let bound = ports.and_then(|r| binding::public_port(k, chosen, &r));
            match bound {
                Some(port) => xlate.src_port = port,
                None if ports.is_some() => count(Counter::NatMappingFallback),
                None => {}
            }
            let ports = ports.map(|r| conntrack::PortRange { bound: bound.is_some(), ..r });
            let xlate = conntrack::create(k, xlate, chosen, 0, ports, &ip, len)?;
            count(Counter::OutboundNew);
            uplink_new_conn(chosen);
            (Translation::Flow(xlate.key(ip.key.proto)), chosen)
        }
    };
    record_first_fragment(&ip, &translation, uplink_index);
    to_uplink(ctx, cfg, &ip, &translation, uplink_index, route_len)
}

/// Steer to the connection's uplink: mark the packet for the kernel's policy tables, and when
/// the uplink's table resolves the route, translate and redirect without the kernel stack.
/// Otherwise the kernel routes it by the mark and the uplink's egress program translates.
#[inline(always)]
fn to_uplink(
    ctx: &mut EthSkb,
    cfg: &DataplaneConfig,
    ip: &Ipv4,
    translation: &Translation,
    uplink_index: u8,
    route_len: u16,
) -> Result<Verdict, Counter> {
    let up = uplink(uplink_index).ok_or(Counter::DropNoUplink)?;
    if cfg.flags & CFG_F_NO_STEER != 0 {
        count(Counter::KernelPath);
        return Ok(Verdict::Pass);
    }
    let skb = ctx.skb_mut();
    skb.mark = with_mark(cfg, skb.mark, up.mark);
    let ingress_ifindex = skb.ingress_ifindex;
    if cfg.flags & CFG_F_FAST_PATH == 0 {
        count(Counter::KernelPath);
        return Ok(Verdict::Pass);
    }
    let key: FlowKey = translation.result(ip);
    let next = route(ctx, ingress_ifindex, &key, route_len, up.table);
    if let Route::Kernel = next {
        count(Counter::KernelPath);
        return Ok(Verdict::Pass);
    }
    translation.apply(ctx, ip)?;
    count(Counter::ToUplinkTranslated);
    decrement_ttl(ctx)?;
    Ok(match next {
        Route::Resolved { ifindex, smac, dmac } => {
            count(Counter::FastPathRedirect);
            Verdict::Forward { ifindex, smac, dmac }
        }
        Route::NoNeigh { ifindex, next_hop } => {
            count(Counter::FastPathNeigh);
            Verdict::ForwardNeigh { ifindex, next_hop }
        }
        Route::Kernel => Verdict::Pass,
    })
}
