//! `masq_lan_in`: TC ingress of the LAN device (Ethernet: a NIC, VLAN subinterface or bridge).
//! Replies of published services and known masqueraded connections, each steered to its
//! connection's uplink. A packet that opens a connection goes on, by tail call, to
//! `masq_lan_in_new` (a new masqueraded connection) or `masq_lan_in_hairpin` (a LAN host
//! reaching a public address of the gateway: a published service or another endpoint's
//! mapping, hairpinned back into the LAN). Three programs, so that each verifies well within
//! the kernel's limit.
use aya_ebpf::{macros::classifier, programs::TcContext};
use masq_common::{
    CFG_F_FAST_PATH, CFG_F_NO_HAIRPIN, CFG_F_NO_STEER, CONN_F_HAIRPIN, ConnRoute, Counter,
    DataplaneConfig, FlowKey, Outcome, PublishTarget, TAIL_LAN_HAIRPIN, TAIL_LAN_NEW, tick,
};

use crate::{
    binding, conntrack,
    forward::decrement_ttl,
    hook::{Hook, Verdict, local_tcp_socket, local_udp_socket, tc_run},
    maps::{PUBLIC_ADDRS, TAIL_CALLS},
    nat::published,
    packet::{ETH_HLEN, EthSkb, Frag, Ipv4, L4, Packet, Parsed, TCP_ACK, TCP_SYN, parse},
    stats::{count, count_outcome, uplink_new_conn},
    steer::{
        Egress, RT_TABLE_MAIN, Route, choose_uplink, config, in_lan, is_uplink_address, route,
        route_kept, uplink, uplink_by_address, uplink_by_ifindex, with_mark,
    },
    translate::{Found, Translation, account_icmp_error, find, record_first_fragment},
    validate::{self, is_multicast_or_broadcast},
};

const PACKET_HOST: u32 = 0;

#[classifier]
#[inline(always)]
pub fn masq_lan_in(ctx: TcContext) -> i32 {
    tc_run::<ETH_HLEN>(ctx, run)
}

/// Never attached: `masq_lan_in` hands it the packets that open a masqueraded connection.
#[classifier]
pub fn masq_lan_in_new(ctx: TcContext) -> i32 {
    tc_run::<ETH_HLEN>(ctx, run_new::<false>)
}

/// Never attached: `masq_lan_in` hands it the packets that open a connection to one of the
/// gateway's public addresses (hairpin).
#[classifier]
pub fn masq_lan_in_hairpin(ctx: TcContext) -> i32 {
    tc_run::<ETH_HLEN>(ctx, run_new::<true>)
}

#[inline(always)]
fn run(ctx: &mut EthSkb) -> Result<Verdict, Counter> {
    let mut ip = Ipv4::EMPTY;
    if !matches!(parse(ctx, &mut ip)?, Parsed::Ipv4) {
        return Ok(Verdict::Pass);
    }
    count(Counter::Ipv4Seen);
    let Some(cfg) = config() else {
        return Ok(Verdict::Pass);
    };
    let pkt_type = ctx.skb().pkt_type;
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

    // A hairpin connection's packets go back into the LAN; all others to an uplink.
    let mut hairpinned = false;
    // The clock is read once, on the paths that account or route the packet. A connection's
    // own packets come with the route its entry keeps.
    let (translation, uplink_index, now, kept) = match find(ctx, &ip, None)? {
        Found::Fragment(translation, uplink) => (translation, uplink, conntrack::now_tick(), None),
        // First fragment not seen: the kernel forwards it, uplink egress drops it.
        Found::FragmentUnknown | Found::IcmpErrorUnknown => {
            count(Counter::PassedUntouched);
            return Ok(Verdict::Pass);
        }
        Found::IcmpError(translation, entry, conn_key) => {
            let now = account_icmp_error(&conn_key, entry, &ip, len);
            (translation, entry.uplink, now, None)
        }
        Found::Flow(entry) if entry.is_hairpin() => {
            let now = conntrack::now_tick();
            let translation = Translation::Flow(entry.xlate.key(ip.key.proto));
            let uplink_index = entry.uplink;
            conntrack::account(&ip.key, entry, &ip, len, now)?;
            hairpinned = true;
            (translation, uplink_index, now, None)
        }
        Found::Flow(entry) => {
            if entry.toward_lan() {
                count(Counter::PassedUntouched);
                return Ok(Verdict::Pass);
            }
            let now = conntrack::now_tick();
            let translation = Translation::Flow(entry.xlate.key(ip.key.proto));
            let uplink_index = entry.uplink;
            conntrack::account(&ip.key, entry, &ip, len, now)?;
            (translation, uplink_index, now, conntrack::kept_route(entry))
        }
        Found::New => {
            let slot = if hairpin_bound(cfg, &ip.key) { TAIL_LAN_HAIRPIN } else { TAIL_LAN_NEW };
            // SAFETY: the program's own context; on success this does not return.
            unsafe { TAIL_CALLS.tail_call(&ctx.0, slot) };
            return Err(Counter::DropTailCall);
        }
    };
    finish(ctx, cfg, &ip, &translation, uplink_index, hairpinned, now, kept)
}

/// A LAN host's packet to one of the gateway's public addresses (published, or an uplink's):
/// a hairpin if anything is there.
#[inline(always)]
fn hairpin_bound(cfg: &DataplaneConfig, k: &FlowKey) -> bool {
    if cfg.flags & CFG_F_NO_HAIRPIN != 0 {
        return false;
    }
    // SAFETY: read-only lookup.
    let public = unsafe { PUBLIC_ADDRS.get(k.dst_addr) }.is_some() || is_uplink_address(k.dst_addr);
    public && in_lan(cfg, k.src_addr)
}

/// A packet `run` found opening a connection (its connection still unknown): the connection
/// made, the packet translated and steered. `HAIRPIN`: to a public address of the gateway
/// (`hairpin_bound`), else masqueraded. Two programs, each verified on its own.
#[inline(always)]
fn run_new<const HAIRPIN: bool>(ctx: &mut EthSkb) -> Result<Verdict, Counter> {
    let mut ip = Ipv4::EMPTY;
    if !matches!(parse(ctx, &mut ip)?, Parsed::Ipv4) {
        return Ok(Verdict::Pass);
    }
    let Some(cfg) = config() else {
        return Ok(Verdict::Pass);
    };
    let ingress_ifindex = ctx.skb().ingress_ifindex;
    let time_ns = conntrack::now_ns();
    let now = tick(time_ns);
    // What the FIB's MTU checks are asked about, the same for every lookup of this packet, so
    // the next-hop cache entry the route probe leaves serves its redirect too.
    let route_len = ctx.mtu_len(ip.tot_len, ip.l4_header_len());
    // `run` checked the packet (RFC 1812, what is the kernel's) before handing it over; what it
    // handles itself never opens a connection.
    let validate = validate::enabled(cfg);
    if ip.ttl <= 1 || ip.frag == Frag::Later || ip.l4 == L4::IcmpError {
        count(Counter::PassedUntouched);
        return Ok(Verdict::Pass);
    }
    let len = ctx.len();
    let mut hairpinned = false;
    let (translation, uplink_index) = {
        let k = &ip.key;
        let mut mapping = false;
        let (xlate, chosen, flags, ports) = if HAIRPIN {
            if !in_lan(cfg, k.src_addr) {
                count(Counter::PassedUntouched);
                return Ok(Verdict::Pass);
            }
            if validate && matches!(ip.l4, L4::Tcp | L4::Udp) {
                validate::l4_checksum(ctx, &ip)?;
            }
            match (published(k), ip.l4) {
                (Some(target), _) => hairpin_xlate(cfg, &ip, target)?,
                (None, L4::Tcp | L4::Udp) => {
                    // Another endpoint's mapping, unless the gateway itself has a socket
                    // there (its own services come first) or the mapping is the sender's own.
                    let local = if ip.l4 == L4::Tcp {
                        local_tcp_socket(ctx, k)
                    } else {
                        local_udp_socket(ctx, k)
                    };
                    let owner = if local { None } else { mapping_owner(k) };
                    let Some((index, owner)) =
                        owner.filter(|(_, o)| *o != (k.src_addr, k.src_port))
                    else {
                        count(Counter::PassedUntouched);
                        return Ok(Verdict::Pass);
                    };
                    mapping = true;
                    mapping_hairpin_xlate(cfg, &ip, index, owner)?
                }
                _ => {
                    count(Counter::PassedUntouched);
                    return Ok(Verdict::Pass);
                }
            }
        } else {
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
            // As MASQUERADE does: the source is the address of the interface the
            // policy's table routes to. Another uplink's interface (its connected
            // subnet) means that uplink; an interface that is no uplink (a VPN,
            // another internal network) means no NAT at all.
            if cfg.flags & CFG_F_NO_STEER == 0 {
                let probe = FlowKey { src_addr: up.address, ..*k };
                let egress = match route(ctx, ingress_ifindex, &probe, route_len, up.table, now) {
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
            (xlate, chosen, 0, crate::port_range(cfg, &ip, true))
        };
        let (mut xlate, mut ports) = (xlate, ports);
        // The endpoint's public port behind this uplink, for every destination: masqueraded
        // and hairpinned to a mapping alike (one call, so the verifier follows one).
        if !HAIRPIN || mapping {
            let bound = ports.and_then(|r| binding::public_port(k, chosen, &r));
            match bound {
                Some(port) => xlate.src_port = port,
                None if ports.is_some() => count(Counter::NatMappingFallback),
                None => {}
            }
            ports = ports.map(|r| conntrack::PortRange { bound: bound.is_some(), ..r });
        }
        let xlate = conntrack::create(k, xlate, chosen, flags, ports, &ip, len, time_ns)?;
        if flags & CONN_F_HAIRPIN != 0 {
            count(Counter::HairpinNew);
            hairpinned = true;
        } else {
            count(Counter::OutboundNew);
            uplink_new_conn(chosen);
        }
        (Translation::Flow(xlate.key(ip.key.proto)), chosen)
    };
    finish(ctx, cfg, &ip, &translation, uplink_index, hairpinned, now, None)
}

/// The end of both programs: a first fragment's translation recorded for the fragments that
/// follow, the packet steered (`kept`: the route its connection's entry keeps).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn finish(
    ctx: &mut EthSkb,
    cfg: &DataplaneConfig,
    ip: &Ipv4,
    translation: &Translation,
    uplink_index: u8,
    hairpinned: bool,
    now: u32,
    kept: Option<&mut ConnRoute>,
) -> Result<Verdict, Counter> {
    record_first_fragment(ip, translation, uplink_index);
    // A hairpin connection's packets go back into the LAN by main, unmarked.
    let egress = match uplink(uplink_index) {
        Some(up) if !hairpinned => Egress::uplink(cfg, up),
        _ => Egress::HAIRPIN,
    };
    to_uplink(ctx, cfg, ip, translation, &egress, kept, now)
}

/// A LAN host's new connection to a published address (hairpin, RFC 4787 REQ-9, RFC 5382):
/// to the server behind it, masqueraded behind that uplink's address so the server's replies
/// come back through the gateway (sent straight back into the LAN by `to_uplink`).
#[inline(always)]
fn hairpin_xlate(
    cfg: &DataplaneConfig,
    ip: &Ipv4,
    target: &PublishTarget,
) -> Result<(FlowKey, u8, u8, Option<conntrack::PortRange>), Counter> {
    if ip.l4 == L4::Tcp && ip.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Err(Counter::DropTcpNoConn);
    }
    let up = uplink(target.uplink).ok_or(Counter::DropNoUplink)?;
    let mut xlate = ip.key;
    xlate.src_addr = up.address;
    xlate.dst_addr = target.to_addr;
    if target.to_port != 0 {
        xlate.dst_port = target.to_port;
    }
    Ok((xlate, target.uplink, CONN_F_HAIRPIN, crate::port_range(cfg, ip, true)))
}

/// The uplink and LAN endpoint (address, port) of the mapping a packet to an uplink's address
/// is for: the public port some LAN endpoint holds (`binding.rs`).
#[inline(always)]
fn mapping_owner(k: &FlowKey) -> Option<(u8, (u32, u16))> {
    let index = uplink_by_address(k.dst_addr)?;
    Some((index, binding::owner(k.dst_port, k.proto, index)?))
}

/// A LAN host's new connection to another LAN endpoint's public mapping (hairpin, RFC 4787
/// REQ-9): to that endpoint, from the sender's own mapping behind the same uplink, so each sees
/// the other as the internet would. Within the LAN any host may reach any mapping (filtering
/// keeps the internet out; LAN hosts reach each other anyway).
#[inline(always)]
fn mapping_hairpin_xlate(
    cfg: &DataplaneConfig,
    ip: &Ipv4,
    index: u8,
    (owner_addr, owner_port): (u32, u16),
) -> Result<(FlowKey, u8, u8, Option<conntrack::PortRange>), Counter> {
    if ip.l4 == L4::Tcp && ip.tcp_flags & (TCP_SYN | TCP_ACK) != TCP_SYN {
        return Err(Counter::DropTcpNoConn);
    }
    let up = uplink(index).ok_or(Counter::DropNoUplink)?;
    let xlate =
        FlowKey { src_addr: up.address, dst_addr: owner_addr, dst_port: owner_port, ..ip.key };
    // The source port: the sender's binding, made by the caller.
    Ok((xlate, index, CONN_F_HAIRPIN, crate::port_range(cfg, ip, true)))
}

/// Steer by `egress` to the connection's uplink: mark the packet for the kernel's policy tables,
/// and when the uplink's table resolves the route, translate and redirect without the kernel
/// stack. Otherwise the kernel routes it by the mark and the uplink's egress program
/// translates. A hairpin connection's packets come with `Egress::HAIRPIN`: by main and
/// unmarked, back into the LAN, redirected (the kernel would tell the sender by an ICMP
/// redirect to reach the server directly).
#[inline(always)]
fn to_uplink(
    ctx: &mut EthSkb,
    cfg: &DataplaneConfig,
    ip: &Ipv4,
    translation: &Translation,
    egress: &Egress,
    kept: Option<&mut ConnRoute>,
    now: u32,
) -> Result<Verdict, Counter> {
    let (table, mark) = (egress.table, egress.mark);
    if cfg.flags & CFG_F_NO_STEER != 0 {
        count(Counter::KernelPath);
        return Ok(Verdict::Pass);
    }
    let skb = ctx.skb_mut();
    skb.mark = with_mark(cfg, skb.mark, mark);
    let ingress_ifindex = skb.ingress_ifindex;
    if cfg.flags & CFG_F_FAST_PATH == 0 {
        count(Counter::KernelPath);
        return Ok(Verdict::Pass);
    }
    let key: FlowKey = translation.result(ip);
    let route_len = ctx.mtu_len(ip.tot_len, ip.l4_header_len());
    let next = route_kept(ctx, ingress_ifindex, &key, route_len, egress, kept, now);
    if let Route::Kernel = next {
        count(Counter::KernelPath);
        return Ok(Verdict::Pass);
    }
    translation.apply(ctx, ip)?;
    decrement_ttl(ctx)?;
    let hairpin = table == RT_TABLE_MAIN;
    Ok(match next {
        Route::Resolved { ifindex, eth } if !hairpin => {
            count_outcome(Outcome::ToUplinkRedirected);
            Verdict::Forward { ifindex, eth }
        }
        Route::Resolved { ifindex, eth } => {
            count(Counter::HairpinTranslated);
            count(Counter::FastPathRedirect);
            Verdict::Forward { ifindex, eth }
        }
        Route::NoNeigh { ifindex, next_hop } => {
            count(if hairpin { Counter::HairpinTranslated } else { Counter::ToUplinkTranslated });
            count(Counter::FastPathNeigh);
            Verdict::ForwardNeigh { ifindex, next_hop }
        }
        Route::Kernel => Verdict::Pass,
    })
}
