//! Floor programs: for each hook masq uses, the cheapest program that could do its job, which
//! the benchmark measures masq against (masq/floor). Never attached by `masq run`.
//!
//! Each parses the link header (XDP, TC behind Ethernet), IPv4 and TCP/UDP; makes one lookup in
//! masq's own `CONNS`, so both run on the same table contents; rewrites the tuple with
//! incremental checksums (masq's own `nat::rewrite_tuple`; TC: through the checksum helpers, as
//! CHECKSUM_PARTIAL needs) and the TTL; and sends the packet to the fixed output in
//! `FLOOR_ROUTES`. A miss is a new connection: the bare inserts masq needs for one (both
//! `PENDING_CONNS` entries; from the LAN also the binding's port, kept), nothing looked up or checked
//! first.
use aya_ebpf::{
    bindings::{
        TC_ACT_OK, TC_ACT_SHOT,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::bpf_redirect,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use masq_common::{
    BindingKey, BoundPort, BoundPortKey, CONN_F_PENDING, CONN_F_REPLY, ConnEntry, Counter,
    FLOOR_TO_LAN, FLOOR_TO_UPLINK, FlowKey, Tuple4,
};

use crate::{
    forward::{decrement_ttl, set_macs},
    maps::{BOUND_PORTS, CONNS, FLOOR_ROUTES, PENDING_CONNS},
    nat,
    packet::{
        ETH_P_IP, EthSkb, IP_DST, IP_FRAG, IP_MF, IP_OFFSET, IP_PROTO, IP_SRC, IPPROTO_TCP,
        IPPROTO_UDP, L4, L4_OFF, Packet, Skb,
    },
};

/// What a floor program does with a translated packet.
#[derive(Clone, Copy)]
enum Out {
    /// Redirected by `FLOOR_ROUTES[slot]`.
    Redirect(u32),
    /// On as it is (TC egress: the kernel already routed it).
    Pass,
}

#[xdp]
pub fn masq_floor_uplink_in_xdp(mut ctx: XdpContext) -> u32 {
    match floor(&mut ctx, Out::Redirect(FLOOR_TO_LAN), false) {
        // SAFETY: plain helper call.
        Ok(Some(ifindex)) => unsafe { bpf_redirect(ifindex, 0) as u32 },
        Ok(None) => XDP_PASS,
        Err(_) => XDP_DROP,
    }
}

#[classifier]
pub fn masq_floor_uplink_in(ctx: TcContext) -> i32 {
    tc(ctx, Out::Redirect(FLOOR_TO_LAN), false)
}

#[classifier]
pub fn masq_floor_lan_in(ctx: TcContext) -> i32 {
    tc(ctx, Out::Redirect(FLOOR_TO_UPLINK), true)
}

#[classifier]
pub fn masq_floor_uplink_out(ctx: TcContext) -> i32 {
    tc(ctx, Out::Pass, false)
}

#[inline(always)]
fn tc(ctx: TcContext, out: Out, binds: bool) -> i32 {
    let mut skb: EthSkb = Skb(ctx);
    match floor(&mut skb, out, binds) {
        // SAFETY: plain helper call.
        Ok(Some(ifindex)) => unsafe { bpf_redirect(ifindex, 0) as i32 },
        Ok(None) => TC_ACT_OK,
        Err(_) => TC_ACT_SHOT,
    }
}

/// The device to redirect to, or none to pass the packet on. `binds`: a new connection also
/// takes a binding (it comes from the LAN).
#[inline(always)]
fn floor<P: Packet>(p: &mut P, out: Out, binds: bool) -> Result<Option<u32>, Counter> {
    if p.ethertype()? != ETH_P_IP {
        return Ok(None);
    }
    let first: u8 = p.load(0)?;
    let frag: u16 = p.load(IP_FRAG)?;
    let proto: u8 = p.load(IP_PROTO)?;
    let tcp = proto == IPPROTO_TCP;
    if first != 0x45
        || u16::from_be(frag) & (IP_MF | IP_OFFSET) != 0
        || !(tcp || proto == IPPROTO_UDP)
    {
        return Ok(None);
    }
    let key =
        FlowKey::new(p.load(IP_SRC)?, p.load(IP_DST)?, p.load(L4_OFF)?, p.load(L4_OFF + 2)?, proto);
    let slot = match out {
        Out::Redirect(slot) => slot,
        Out::Pass => FLOOR_TO_UPLINK,
    };
    let route = FLOOR_ROUTES.get(slot).ok_or(Counter::DropMalformed)?;
    // SAFETY: read-only lookup; the entry is copied out.
    let to = match unsafe { CONNS.get(key) } {
        Some(entry) => entry.xlate,
        None => insert_new(&key, route.new_addr, slot == FLOOR_TO_LAN, binds)?,
    };
    let l4 = if tcp { L4::Tcp } else { L4::Udp };
    nat::rewrite_tuple(p, l4, false, &key, &to.key(proto))?;
    match out {
        Out::Pass => Ok(None),
        Out::Redirect(_) => {
            decrement_ttl(p)?;
            set_macs(p, &route.eth)?;
            Ok(Some(route.ifindex))
        }
    }
}

/// A new connection's entries (and binding), bare: its tuple with `new_addr` as destination
/// (toward the LAN) or as source (toward an uplink, keeping the port).
#[inline(always)]
fn insert_new(key: &FlowKey, new_addr: u32, to_lan: bool, binds: bool) -> Result<Tuple4, Counter> {
    let mut to = Tuple4::of(key);
    if to_lan {
        to.dst_addr = new_addr;
    } else {
        to.src_addr = new_addr;
    }
    let entry = |xlate: Tuple4, flags: u8| ConnEntry { xlate, flags, ..ConnEntry::default() };
    let reply = to.key(key.proto).reversed();
    PENDING_CONNS
        .insert(key, entry(to, CONN_F_PENDING), 0)
        .map_err(|_| Counter::DropConnInsertFailed)?;
    PENDING_CONNS
        .insert(reply, entry(Tuple4::of(&key.reversed()), CONN_F_PENDING | CONN_F_REPLY), 0)
        .map_err(|_| Counter::DropConnInsertFailed)?;
    if binds {
        let owner = BindingKey {
            int_addr: key.src_addr,
            int_port: key.src_port,
            proto: key.proto,
            uplink: 0,
        };
        let port = BoundPortKey { ext_port: key.src_port, proto: key.proto, uplink: 0 };
        BOUND_PORTS
            .insert(port, BoundPort { owner, ..BoundPort::default() }, 0)
            .map_err(|_| Counter::DropConnInsertFailed)?;
    }
    Ok(to)
}
