//! Choosing and reaching an uplink: policy rules, marks, and FIB lookups in an uplink's table.
use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_DIRECT,
        BPF_FIB_LOOKUP_TBID, bpf_fib_lookup as FibParams, bpf_fib_lookup__bindgen_ty_1,
        bpf_fib_lookup__bindgen_ty_2, bpf_fib_lookup__bindgen_ty_3, bpf_fib_lookup__bindgen_ty_4,
        bpf_fib_lookup__bindgen_ty_5,
    },
    helpers::bpf_fib_lookup,
};
use masq_common::{
    ConnRoute, DataplaneConfig, EthAddrs, FlowKey, MAX_CHOICES, MAX_POLICIES, MAX_UPLINKS,
    NEXTHOP_SLOTS, NO_UPLINK, NextHop, POLICY_F_STICKY, PolicyRule, UPLINK_F_ENABLED, UPLINK_F_UP,
    UplinkInfo, eth_addrs,
};

use crate::{
    conntrack::hash,
    hook::Hook,
    maps::{CONFIG, NEXTHOPS, POLICIES, UPLINKS},
};

const AF_INET: u8 = 2;

#[inline(always)]
pub fn config() -> Option<&'static DataplaneConfig> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn uplink(index: u8) -> Option<&'static UplinkInfo> {
    UPLINKS.get(u32::from(index)).filter(|u| u.flags & UPLINK_F_ENABLED != 0)
}

/// The uplink attached at `ifindex`.
#[inline(always)]
pub fn uplink_by_ifindex(ifindex: u32) -> Option<(u8, &'static UplinkInfo)> {
    for i in 0..MAX_UPLINKS as u8 {
        if let Some(u) = uplink(i)
            && u.ifindex == ifindex
        {
            return Some((i, u));
        }
    }
    None
}

/// True when `addr` is one of the gateway's own uplink addresses.
#[inline(always)]
pub fn is_uplink_address(addr: u32) -> bool {
    uplink_by_address(addr).is_some()
}

/// The uplink whose address `addr` is.
#[inline(always)]
pub fn uplink_by_address(addr: u32) -> Option<u8> {
    (0..MAX_UPLINKS as u8).find(|&i| uplink(i).is_some_and(|u| u.address == addr))
}

#[inline(always)]
pub fn in_lan(cfg: &DataplaneConfig, addr: u32) -> bool {
    for i in 0..cfg.lan_prefixes.len() {
        if i as u32 >= cfg.lan_prefix_count {
            break;
        }
        if cfg.lan_prefixes[i].contains(addr) {
            return true;
        }
    }
    false
}

#[inline(always)]
fn rule_matches(rule: &PolicyRule, key: &FlowKey) -> bool {
    if !rule.from.contains(key.src_addr) || !rule.to.contains(key.dst_addr) {
        return false;
    }
    if rule.proto != 0 && rule.proto != key.proto {
        return false;
    }
    let port = u16::from_be(key.dst_port);
    port >= rule.port_min && port <= rule.port_max
}

/// Weighted pick among the rule's uplinks that are up in its lowest tier with one up, or
/// `NO_UPLINK`.
#[inline(always)]
fn pick(rule: &PolicyRule, key: &FlowKey) -> u8 {
    let up = |i: usize| uplink(rule.uplinks[i]).is_some_and(|u| u.flags & UPLINK_F_UP != 0);
    let mut tier = u8::MAX;
    let mut total: u32 = 0;
    for i in 0..MAX_CHOICES {
        if i >= rule.choice_count as usize {
            break;
        }
        if up(i) {
            if rule.tiers[i] < tier {
                tier = rule.tiers[i];
                total = 0;
            }
            if rule.tiers[i] == tier {
                total += rule.weights[i];
            }
        }
    }
    if total == 0 {
        return NO_UPLINK;
    }
    let h = if rule.flags & POLICY_F_STICKY != 0 {
        hash(&FlowKey::new(key.src_addr, 0, 0, 0, 0))
    } else {
        hash(key)
    };
    let mut point = h % total;
    for i in 0..MAX_CHOICES {
        if i >= rule.choice_count as usize {
            break;
        }
        if rule.tiers[i] == tier && up(i) {
            if point < rule.weights[i] {
                return rule.uplinks[i];
            }
            point -= rule.weights[i];
        }
    }
    NO_UPLINK
}

/// The uplink for a new outbound connection: the first matching rule with an uplink up.
#[inline(always)]
pub fn choose_uplink(cfg: &DataplaneConfig, key: &FlowKey) -> u8 {
    for i in 0..MAX_POLICIES as u32 {
        if i >= cfg.policy_count {
            break;
        }
        let Some(rule) = POLICIES.get(i) else { break };
        if rule_matches(rule, key) {
            let chosen = pick(rule, key);
            if chosen != NO_UPLINK {
                return chosen;
            }
        }
    }
    NO_UPLINK
}

/// The packet's mark with masq's bits set to `uplink_mark`.
#[inline(always)]
pub fn with_mark(cfg: &DataplaneConfig, mark: u32, uplink_mark: u32) -> u32 {
    (mark & !cfg.mark_mask) | (uplink_mark & cfg.mark_mask)
}

/// The kernel's main routing table.
pub const RT_TABLE_MAIN: u32 = 254;

/// `bpf_fib_lookup` for IPv4 in one routing table (TBID, DIRECT: the ip rules are not walked;
/// without DIRECT they would be, but with no fwmark in the parameters).
#[inline(always)]
fn fib_lookup<H: Hook>(
    ctx: &H,
    ifindex: u32,
    key: &FlowKey,
    tot_len: u16,
    table: u32,
) -> (i64, FibParams) {
    // Every field set, as the helper reads them all.
    let mut params = FibParams {
        family: AF_INET,
        l4_protocol: key.proto,
        sport: key.src_port,
        dport: key.dst_port,
        __bindgen_anon_1: bpf_fib_lookup__bindgen_ty_1 { tot_len },
        ifindex,
        __bindgen_anon_2: bpf_fib_lookup__bindgen_ty_2 { flowinfo: 0 },
        __bindgen_anon_3: bpf_fib_lookup__bindgen_ty_3 { ipv6_src: [key.src_addr, 0, 0, 0] },
        __bindgen_anon_4: bpf_fib_lookup__bindgen_ty_4 { ipv6_dst: [key.dst_addr, 0, 0, 0] },
        __bindgen_anon_5: bpf_fib_lookup__bindgen_ty_5 { tbid: table },
        smac: [0; 6],
        dmac: [0; 6],
    };
    // SAFETY: params is a valid, fully initialised struct of the size passed.
    let ret = unsafe {
        bpf_fib_lookup(
            ctx.ctx_ptr(),
            &mut params,
            core::mem::size_of::<FibParams>() as i32,
            BPF_FIB_LOOKUP_DIRECT | BPF_FIB_LOOKUP_TBID,
        )
    };
    (ret, params)
}

/// Where a packet goes next, per `table`.
pub enum Route {
    /// Egress device and Ethernet addresses: redirect.
    Resolved { ifindex: u32, eth: EthAddrs },
    /// Egress device and next-hop address whose MAC is not known yet: `bpf_redirect_neigh`.
    NoNeigh { ifindex: u32, next_hop: u32 },
    /// Anything else (unreachable, fragmentation needed, …): the kernel's business.
    Kernel,
}

/// Route `key` by `table`: from the per-CPU next-hop cache when tick `now` already resolved
/// the destination for a packet at least this large, else by `bpf_fib_lookup`, caching
/// success.
#[inline(always)]
pub fn route<H: Hook>(
    ctx: &H,
    ifindex: u32,
    key: &FlowKey,
    tot_len: u16,
    table: u32,
    now: u32,
) -> Route {
    let slot = (key.dst_addr ^ table.rotate_left(16)).wrapping_mul(0x9e37_79b1) >> 20;
    // SAFETY: a per-CPU slot: only this CPU reads or writes it, and not reentrantly.
    let cached = NEXTHOPS.get_ptr_mut(slot & (NEXTHOP_SLOTS - 1)).map(|p| unsafe { &mut *p });
    if let Some(nh) = cached.as_deref()
        && nh.ifindex != 0
        && nh.tick == now
        && nh.table == table
        && nh.dst_addr == key.dst_addr
        && tot_len <= nh.ok_len
    {
        return Route::Resolved { ifindex: nh.ifindex, eth: nh.eth };
    }
    let (ret, params) = fib_lookup(ctx, ifindex, key, tot_len, table);
    if ret == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        let eth = eth_addrs(params.dmac, params.smac);
        if let Some(nh) = cached {
            let same = nh.tick == now && nh.table == table && nh.dst_addr == key.dst_addr;
            *nh = NextHop {
                table,
                dst_addr: key.dst_addr,
                ifindex: params.ifindex,
                tick: now,
                ok_len: if same { tot_len.max(nh.ok_len) } else { tot_len },
                _pad: 0,
                eth,
            };
        }
        return Route::Resolved { ifindex: params.ifindex, eth };
    }
    if ret == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        // SAFETY: after NO_NEIGH the lookup left the next hop in `ipv4_dst`.
        let next_hop = unsafe { params.__bindgen_anon_4.ipv4_dst };
        return Route::NoNeigh { ifindex: params.ifindex, next_hop };
    }
    Route::Kernel
}

/// Where a connection's packets go: by a routing table, with a mark, and out of a device with
/// its MAC, where the routes kept in the connection's entries leave; `epoch`: the route epoch
/// they are kept under (`DataplaneConfig::route_epoch`).
pub struct Egress {
    pub table: u32,
    pub mark: u32,
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub epoch: u32,
}

impl Egress {
    /// Back into the LAN by main, unmarked (hairpin): no route is kept.
    pub const HAIRPIN: Self =
        Self { table: RT_TABLE_MAIN, mark: 0, ifindex: 0, mac: [0; 6], epoch: 0 };

    /// Out of uplink `up`, by its table and with its mark.
    #[inline(always)]
    pub fn uplink(cfg: &DataplaneConfig, up: &UplinkInfo) -> Self {
        let (table, mark, ifindex, mac) = (up.table, up.mark, up.ifindex, up.mac);
        Self { table, mark, ifindex, mac, epoch: cfg.route_epoch }
    }

    /// Into the LAN, by main.
    #[inline(always)]
    pub fn lan(cfg: &DataplaneConfig) -> Self {
        let (ifindex, mac, epoch) = (cfg.lan_ifindex, cfg.lan_mac, cfg.route_epoch);
        Self { table: RT_TABLE_MAIN, mark: 0, ifindex, mac, epoch }
    }
}

/// `route` by `egress`'s table for a connection's packet: by the route its entry keeps
/// (`kept`) while that is trusted (`ConnRoute`), else as `route` finds it, then kept in the
/// entry when it leaves by `egress`'s device and address. No entry to keep it in: `route`.
#[inline(always)]
pub fn route_kept<H: Hook>(
    ctx: &H,
    ifindex: u32,
    key: &FlowKey,
    tot_len: u16,
    egress: &Egress,
    kept: Option<&mut ConnRoute>,
    now: u32,
) -> Route {
    let Some(kept) = kept else {
        return route(ctx, ifindex, key, tot_len, egress.table, now);
    };
    let fresh = kept.tick == now && kept.epoch == egress.epoch;
    if fresh && tot_len <= kept.ok_len {
        return Route::Resolved {
            ifindex: egress.ifindex,
            eth: eth_addrs(kept.dst_mac, egress.mac),
        };
    }
    let found = route(ctx, ifindex, key, tot_len, egress.table, now);
    if let Route::Resolved { ifindex, eth } = &found {
        let (dst_mac, src_mac) = macs(eth);
        if *ifindex == egress.ifindex && src_mac == egress.mac {
            let ok_len = if fresh { tot_len.max(kept.ok_len) } else { tot_len };
            *kept = ConnRoute { dst_mac, ok_len, tick: now, epoch: egress.epoch };
        }
    }
    found
}

/// The destination and source MACs in `eth` (`eth_addrs` undone).
#[inline(always)]
fn macs(eth: &EthAddrs) -> ([u8; 6], [u8; 6]) {
    let [a, b, c] = [eth[0].to_ne_bytes(), eth[1].to_ne_bytes(), eth[2].to_ne_bytes()];
    ([a[0], a[1], a[2], a[3], b[0], b[1]], [b[2], b[3], c[0], c[1], c[2], c[3]])
}
