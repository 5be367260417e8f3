//! Types shared by the eBPF programs and the userspace loader.
//!
//! Every type that crosses the kernel boundary is `#[repr(C)]`, padding-free (explicit `_pad`
//! fields) and has a compile-time size check. Addresses and ports are kept in network byte order,
//! exactly as they appear on the wire, so the dataplane never swaps bytes on the fast path.
#![no_std]

// Wire constants, one definition for every crate (programs, loader, tests, benchmarks).
pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_IPV6: u16 = 0x86dd;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// IPv4 "don't fragment" and "more fragments" bits, and the offset, of the flags/offset word.
pub const IP_DF: u16 = 0x4000;
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;

/// Most uplinks one gateway can have.
pub const MAX_UPLINKS: usize = 8;
/// Most LAN prefixes (`[lan] prefixes`).
pub const MAX_LAN_PREFIXES: usize = 8;
/// Most `[[policy]]` rules.
pub const MAX_POLICIES: usize = 32;
/// Most uplinks in one weighted policy choice.
pub const MAX_CHOICES: usize = 8;
/// Most `[[publish]]` entries.
pub const MAX_PUBLISH: u32 = 1024;
/// Default connection capacity (each connection uses two map entries).
pub const DEFAULT_CONN_CAPACITY: u32 = 262_144;
/// Default room for connections not yet confirmed (`PENDING_CONNS`), a share of the confirmed
/// table's.
pub const fn default_pending_capacity(conn_capacity: u32) -> u32 {
    conn_capacity / 4
}
/// Source ports tried by the NAT port search before giving up with `NatPortExhausted`.
pub const NAT_PORT_TRIES: u32 = 32;
/// "No uplink" in a `u8` uplink slot.
pub const NO_UPLINK: u8 = 0xff;

/// Names of the pinned / loaded maps, shared so both sides agree.
pub mod map_names {
    pub const CONNS: &str = "CONNS";
    pub const PENDING_CONNS: &str = "PENDING_CONNS";
    pub const BINDINGS: &str = "BINDINGS";
    pub const BOUND_PORTS: &str = "BOUND_PORTS";
    pub const CONFIG: &str = "CONFIG";
    pub const UPLINKS: &str = "UPLINKS";
    pub const POLICIES: &str = "POLICIES";
    pub const PUBLISH: &str = "PUBLISH";
    pub const PUBLIC_ADDRS: &str = "PUBLIC_ADDRS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const UPLINK_STATS: &str = "UPLINK_STATS";
    pub const FRAGS: &str = "FRAGS";
    pub const NEXTHOPS: &str = "NEXTHOPS";
    pub const XDP_PROG_IDS: &str = "XDP_PROG_IDS";
    pub const EVENTS: &str = "EVENTS";
    pub const TAIL_CALLS: &str = "TAIL_CALLS";
    /// The in-kernel expiry's request and result (the daemon's own; never pinned).
    pub const EXPIRY: &str = "EXPIRY";
    /// The floor programs' output (benchmark only; never pinned).
    pub const FLOOR_ROUTES: &str = "FLOOR_ROUTES";
}

/// Record offsets of `xdp:xdp_redirect_err` and `xdp:xdp_devmap_xmit` (their `format` files);
/// the loader checks them on the running kernel before attaching.
pub const XDP_REDIRECT_ERR_PROG_ID: usize = 8;
pub const XDP_DEVMAP_XMIT_FROM_IFINDEX: usize = 8;
pub const XDP_DEVMAP_XMIT_TO_IFINDEX: usize = 16;
pub const XDP_DEVMAP_XMIT_DROPS: usize = 20;

/// Names of the programs in the eBPF object.
pub mod program_names {
    /// TC, uplink ingress: ARP for published addresses, DNAT / reverse SNAT, on to the LAN.
    pub const UPLINK_INGRESS: &str = "masq_uplink_in";
    /// The same on an L3 uplink (no Ethernet header: PPP, raw-ip LTE, WireGuard, tun).
    pub const UPLINK_INGRESS_L3: &str = "masq_uplink_in_l3";
    /// The same in XDP, where the loader found it safe.
    pub const UPLINK_INGRESS_XDP: &str = "masq_uplink_in_xdp";
    /// XDP pass-through on the devices `UPLINK_INGRESS_XDP` redirects to.
    pub const XDP_PASS: &str = "masq_xdp_pass";
    /// TC, LAN ingress: new outbound connections, reverse DNAT, SNAT, steering by origin uplink.
    pub const LAN_INGRESS: &str = "masq_lan_in";
    /// Tail-called by `masq_lan_in` for a packet that opens a connection (never attached).
    pub const LAN_INGRESS_NEW: &str = "masq_lan_in_new";
    /// Tail-called by `masq_lan_in` for a LAN host's new connection to a public address of the
    /// gateway: a published service or another endpoint's mapping (never attached).
    pub const LAN_INGRESS_HAIRPIN: &str = "masq_lan_in_hairpin";
    /// TC, uplink egress: translates what the kernel forwarded untranslated (slow path).
    pub const UPLINK_EGRESS: &str = "masq_uplink_out";
    /// The same on an L3 uplink.
    pub const UPLINK_EGRESS_L3: &str = "masq_uplink_out_l3";
    /// Tracepoint `xdp:xdp_redirect_err`: redirects by `UPLINK_INGRESS_XDP` that failed.
    pub const XDP_REDIRECT_ERR: &str = "masq_xdp_redirect_err";
    /// Tracepoint `xdp:xdp_devmap_xmit`: redirected frames the LAN device's driver dropped.
    pub const XDP_XMIT: &str = "masq_xdp_xmit";
    /// Floor programs (`floor.rs`): the cheapest program that could do each hook's job, which
    /// the benchmark measures masq against. Never attached by `masq run`.
    pub const FLOOR_UPLINK_INGRESS_XDP: &str = "masq_floor_uplink_in_xdp";
    pub const FLOOR_UPLINK_INGRESS: &str = "masq_floor_uplink_in";
    pub const FLOOR_LAN_INGRESS: &str = "masq_floor_lan_in";
    pub const FLOOR_UPLINK_EGRESS: &str = "masq_floor_uplink_out";
    /// Cost programs (`cost.rs`, benchmark only): the RFC 1812 checks 16 times, and none.
    pub const COST_VALIDATE_16: &str = "masq_cost_validate_16";
    pub const COST_VALIDATE_0: &str = "masq_cost_validate_0";
    /// The daemon's expiry pass (`expire.rs`), run by BPF_PROG_TEST_RUN; never attached.
    pub const EXPIRE: &str = "masq_expire";
}

/// A connection's 5-tuple as seen on the wire (network byte order).
///
/// ICMP echo: `src_port` holds the identifier of a request and `dst_port` is 0; a reply holds the
/// identifier in `dst_port`. Reversing a request key thus yields its reply key.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<FlowKey>() == 16);

impl FlowKey {
    pub const fn new(
        src_addr: u32,
        dst_addr: u32,
        src_port: u16,
        dst_port: u16,
        proto: u8,
    ) -> Self {
        FlowKey { src_addr, dst_addr, src_port, dst_port, proto, _pad: [0; 3] }
    }

    /// The key of packets flowing the other way.
    pub const fn reversed(&self) -> Self {
        Self::new(self.dst_addr, self.src_addr, self.dst_port, self.src_port, self.proto)
    }
}

/// `ConnEntry::flags`: this key is the direction that answers the initiator.
pub const CONN_F_REPLY: u8 = 1 << 0;
/// `ConnEntry::flags`: the connection was opened from an uplink (a published service).
pub const CONN_F_INBOUND: u8 = 1 << 1;
/// `ConnEntry::flags`: not confirmed yet (TCP handshake incomplete, no reply to UDP or ICMP):
/// the entry lives in `PENDING_CONNS`, where a flood may evict it, not in `CONNS`.
pub const CONN_F_PENDING: u8 = 1 << 2;
/// `ConnEntry::flags`, on the reply entry of a masqueraded TCP connection until its first
/// answer: `tcp_next_seq` holds the SYN's time (passive health), not a sequence number.
pub const CONN_F_SYN_TIMED: u8 = 1 << 3;
/// `ConnEntry::flags`: a LAN host reaching a published address of the gateway (hairpin, RFC
/// 4787 REQ-9): both directions go from the LAN to the LAN, masqueraded behind the uplink's
/// address so the server's replies come back through the gateway.
pub const CONN_F_HAIRPIN: u8 = 1 << 4;

/// `ConnEntry::tcp_seen`: TCP flags seen in this direction (accumulated).
pub const TCP_SEEN_SYN: u8 = 1 << 0;
pub const TCP_SEEN_FIN: u8 = 1 << 1;
pub const TCP_SEEN_RST: u8 = 1 << 2;
pub const TCP_SEEN_ACK: u8 = 1 << 3;
/// `ConnEntry::tcp_next_seq` holds this direction's next sequence number (unset on an entry
/// rebuilt after an eviction, until its next packet).
pub const TCP_SEEN_SEQ: u8 = 1 << 4;
/// `ConnEntry::tcp_seen`: this direction sent a SYN on a tuple whose sequence state is known (a
/// new connection reusing it, or a forgery): the state is renewed only when the other side
/// answers with a SYN-ACK.
pub const TCP_SEEN_RESYN: u8 = 1 << 5;
/// `ConnEntry::tcp_seen`: the other direction holds `TCP_SEEN_RESYN`, so this direction's SYN-ACK
/// looks it up (no other SYN-ACK does: a new connection's answer costs no second lookup).
pub const TCP_SEEN_PEER_RESYN: u8 = 1 << 6;

/// Connection times count ticks of 2^30 ns (about 1.07 s) of CLOCK_MONOTONIC_COARSE
/// (`bpf_ktime_get_coarse_ns` in the programs): a shift instead of a division, and a clock
/// read that costs almost nothing. Idle timeouts need no finer resolution.
pub const TICK_SHIFT: u32 = 30;

/// Ticks from nanoseconds of CLOCK_MONOTONIC_COARSE.
pub const fn tick(ns: u64) -> u32 {
    (ns >> TICK_SHIFT) as u32
}

/// Nanoseconds from ticks.
pub const fn tick_ns(tick: u32) -> u64 {
    (tick as u64) << TICK_SHIFT
}

/// Addresses and ports without the protocol: what a connection's packets are rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Tuple4 {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
}
const _: () = assert!(core::mem::size_of::<Tuple4>() == 12);

impl Tuple4 {
    pub const fn of(key: &FlowKey) -> Self {
        Self {
            src_addr: key.src_addr,
            dst_addr: key.dst_addr,
            src_port: key.src_port,
            dst_port: key.dst_port,
        }
    }

    pub const fn key(&self, proto: u8) -> FlowKey {
        FlowKey::new(self.src_addr, self.dst_addr, self.src_port, self.dst_port, proto)
    }
}

/// One direction of a tracked connection. Two entries share a connection: the key as the
/// initiator's packets show it, and the key of the replies; each holds what its packets become
/// (`xlate`), so either entry is enough to rebuild the other. 64 bytes: with the kernel's
/// 48-byte element header and the key, each entry takes two cache lines (128 bytes); a million
/// connections (two million entries, and their hash buckets) take 288 MiB.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ConnEntry {
    /// The tuple packets of this key are rewritten to.
    pub xlate: Tuple4,
    /// Index of the connection's uplink in `UPLINKS`.
    pub uplink: u8,
    /// `CONN_F_*`.
    pub flags: u8,
    /// `TCP_SEEN_*` in this direction.
    pub tcp_seen: u8,
    pub _pad: u8,
    /// Tick (`TICK_SHIFT`) of creation.
    pub created_tick: u32,
    /// Tick of the last packet in this direction. While pending, the first packet of each
    /// new tick also looks up the other direction's entry (rebuilt if the LRU evicted it).
    pub last_seen_tick: u32,
    /// TCP: the sequence number after the last one this direction sent (host byte order;
    /// valid with `TCP_SEEN_SEQ`). With `CONN_F_SYN_TIMED`, the initiator's SYN time instead
    /// (microseconds).
    pub tcp_next_seq: u32,
    /// TCP: the highest acknowledgment this direction sent (host byte order; valid with
    /// `TCP_SEEN_ACK`).
    pub tcp_max_ack: u32,
    pub packets: u64,
    pub bytes: u64,
    /// Where this direction's packets last went (not kept for a hairpin connection).
    pub route: ConnRoute,
}
const _: () = assert!(core::mem::size_of::<ConnEntry>() == 64);

/// The route a direction's packets took, kept in its entry so that a packet needs neither a
/// FIB lookup nor a next-hop cache read (one line more, missed, among many destinations).
/// Egress device and source MAC are the uplink's (`UplinkInfo`), or toward the LAN the LAN
/// device's (`DataplaneConfig`): the route is kept only when the FIB said so. Trusted in the
/// tick it was resolved in, while `DataplaneConfig::route_epoch` stays as it was then, for
/// packets up to `ok_len`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ConnRoute {
    pub dst_mac: [u8; 6],
    /// The largest packet (IP total length) the FIB passed the MTU check for; 0: nothing
    /// cached.
    pub ok_len: u16,
    pub tick: u32,
    pub epoch: u32,
}
const _: () = assert!(core::mem::size_of::<ConnRoute>() == 16);

impl ConnEntry {
    pub const fn is_reply(&self) -> bool {
        self.flags & CONN_F_REPLY != 0
    }
    pub const fn is_pending(&self) -> bool {
        self.flags & CONN_F_PENDING != 0
    }
    pub const fn is_inbound(&self) -> bool {
        self.flags & CONN_F_INBOUND != 0
    }
    pub const fn is_hairpin(&self) -> bool {
        self.flags & CONN_F_HAIRPIN != 0
    }
    /// Packets of this key travel from an uplink toward the LAN.
    pub const fn toward_lan(&self) -> bool {
        self.is_inbound() != self.is_reply()
    }
    /// The key of the other direction's entry (`key` is this entry's key).
    pub const fn twin_key(&self, key: &FlowKey) -> FlowKey {
        self.xlate.key(key.proto).reversed()
    }
}

/// What a connection's entries say of it; each state has its idle timeout.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnState {
    TcpSynSent,
    TcpEstablished,
    TcpClosing,
    /// UDP or another protocol, no reply seen yet.
    Unreplied,
    /// UDP or another protocol with traffic both ways.
    Replied,
    Icmp,
}

/// How many `ConnState`s there are (`ExpiryPass::timeout_ns` holds one timeout each, at the
/// state's number).
pub const CONN_STATES: usize = 6;
const _: () = assert!(ConnState::Icmp as usize == CONN_STATES - 1);

impl ConnState {
    /// The state of a connection of `proto` from its initiator's entry and its reply entry
    /// (either may be missing: evicted, not rebuilt yet). The daemon and the in-kernel expiry
    /// judge by this one function.
    #[inline(always)]
    pub fn of(proto: u8, orig: Option<&ConnEntry>, reply: Option<&ConnEntry>) -> Self {
        let replied = reply.is_some_and(|e| e.packets > 0);
        match proto {
            IPPROTO_TCP => {
                let orig = orig.map_or(0, |e| e.tcp_seen);
                let reply = reply.map_or(0, |e| e.tcp_seen);
                let seen = orig | reply;
                // Closing once both sides said FIN, or on a reset: a half-closed connection
                // may still carry data the other way for a long time.
                if seen & TCP_SEEN_RST != 0 || orig & reply & TCP_SEEN_FIN != 0 {
                    ConnState::TcpClosing
                } else if replied && seen & TCP_SEEN_ACK != 0 {
                    ConnState::TcpEstablished
                } else {
                    ConnState::TcpSynSent
                }
            }
            IPPROTO_ICMP => ConnState::Icmp,
            _ if replied => ConnState::Replied,
            _ => ConnState::Unreplied,
        }
    }
}

/// The last packet's tick of a connection, either direction (0 for a missing entry).
#[inline(always)]
pub fn last_seen_tick(orig: Option<&ConnEntry>, reply: Option<&ConnEntry>) -> u32 {
    let a = orig.map_or(0, |e| e.last_seen_tick);
    let b = reply.map_or(0, |e| e.last_seen_tick);
    if a > b { a } else { b }
}

/// `EXPIRY`'s one slot: what the daemon asks of an in-kernel expiry pass (`masq_expire`), and
/// what the pass found.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ExpiryPass {
    /// The clock idleness is judged by (CLOCK_MONOTONIC_COARSE, ns).
    pub now_ns: u64,
    /// Idle timeouts (ns), by `ConnState`.
    pub timeout_ns: [u64; CONN_STATES],
    /// `EXPIRY_F_*`.
    pub flags: u64,
    pub found: ExpiryFound,
}

/// `ExpiryPass::flags`: then remove the bindings no connection kept stamped (done anyway after a
/// pass that removed connections).
pub const EXPIRY_F_SWEEP_BINDINGS: u64 = 1 << 0;
/// `ExpiryPass::flags`: and the mappings (`BINDINGS`) to ports their endpoint does not hold,
/// which only a sweep cut short leaves (the userspace one).
pub const EXPIRY_F_SWEEP_MAPPINGS: u64 = 1 << 1;

/// What an expiry pass did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ExpiryFound {
    /// Entries walked, both tables.
    pub entries: u64,
    /// Connections kept (judged by their initiator's entry, or by a reply entry left alone).
    pub kept: u64,
    /// Connections removed, both entries.
    pub expired: u64,
    /// Bindings removed, their public port freed.
    pub bindings_removed: u64,
}

/// An internal endpoint (LAN address and port, or echo identifier) behind one uplink: who holds
/// a `BOUND_PORTS` entry, and the `BINDINGS` key. Endpoint-independent mapping (RFC 4787 REQ-1,
/// RFC 5382 REQ-1): all its connections, whatever their destination, leave with one public port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BindingKey {
    /// Network byte order, as in `FlowKey`.
    pub int_addr: u32,
    pub int_port: u16,
    pub proto: u8,
    pub uplink: u8,
}
const _: () = assert!(core::mem::size_of::<BindingKey>() == 8);

/// `BINDINGS` value: the public port of an endpoint that could not keep its own (another
/// endpoint held it). An endpoint holding its own port has no `BINDINGS` entry, only its
/// `BOUND_PORTS` one: one insert per new endpoint in the common case.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Binding {
    /// The public port (network byte order).
    pub ext_port: u16,
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<Binding>() == 4);

/// `BOUND_PORTS` key: a public port of one uplink, held by one endpoint: two internal
/// endpoints never share a public port.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BoundPortKey {
    /// Network byte order.
    pub ext_port: u16,
    pub proto: u8,
    pub uplink: u8,
}
const _: () = assert!(core::mem::size_of::<BoundPortKey>() == 4);

/// `BOUND_PORTS` value: every binding has one. The endpoint's public port is this key's port
/// when the endpoint is `owner` and has no `BINDINGS` entry (it kept its own port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct BoundPort {
    pub owner: BindingKey,
    /// Tick of creation or of the last new connection that used it: the daemon removes a
    /// binding without connections once this is two ticks older than its read of the
    /// connections (never one a connection is being inserted with meanwhile).
    pub used_tick: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<BoundPort>() == 16);

/// `UplinkInfo::flags`: the slot is configured.
pub const UPLINK_F_ENABLED: u8 = 1 << 0;
/// `UplinkInfo::flags`: the uplink is usable for new connections.
pub const UPLINK_F_UP: u8 = 1 << 1;
/// `UplinkInfo::flags`: endpoint-independent filtering for UDP (RFC 4787 REQ-8's "full cone"):
/// any remote host may reach a public port bound to a LAN endpoint, not only those it sent to.
pub const UPLINK_F_UDP_OPEN_FILTER: u8 = 1 << 2;

/// One uplink, indexed by its position in the config.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct UplinkInfo {
    pub ifindex: u32,
    /// Masquerade source (network byte order).
    pub address: u32,
    pub gateway: u32,
    /// fwmark bits of this uplink (inside `DataplaneConfig::mark_mask`).
    pub mark: u32,
    /// Routing table id used by `bpf_fib_lookup` (TBID).
    pub table: u32,
    pub mac: [u8; 6],
    pub flags: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<UplinkInfo>() == 28);

/// An IPv4 prefix as address and mask, both in network byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct Prefix4 {
    pub addr: u32,
    pub mask: u32,
}
const _: () = assert!(core::mem::size_of::<Prefix4>() == 8);

impl Prefix4 {
    pub const fn contains(&self, addr: u32) -> bool {
        addr & self.mask == self.addr
    }
}

/// `DataplaneConfig::flags`: redirect straight to the egress device after a FIB lookup.
pub const CFG_F_FAST_PATH: u32 = 1 << 0;
/// `DataplaneConfig::flags`: diagnosis only, leave replies to the main table (no mark, no
/// uplink table): what happens without masq's steering.
pub const CFG_F_NO_STEER: u32 = 1 << 1;
/// `DataplaneConfig::flags`: for measuring only, skip the RFC 1812 checks (`validate`).
pub const CFG_F_NO_VALIDATE: u32 = 1 << 2;
/// Report every new connection in `EVENTS` (set while the daemon has a consumer for them).
pub const CFG_F_EVENTS: u32 = 1 << 3;
/// `[dataplane] hairpin = false`: LAN hosts' packets to the gateway's public addresses are left
/// to the kernel, as without masq.
pub const CFG_F_NO_HAIRPIN: u32 = 1 << 4;

/// `FLOOR_ROUTES` slots: where a floor program sends what it translated.
pub const FLOOR_TO_LAN: u32 = 0;
pub const FLOOR_TO_UPLINK: u32 = 1;

/// An Ethernet header's addresses (destination, then source) as three 32-bit words in memory
/// order: put into a frame with three stores.
pub type EthAddrs = [u32; 3];

pub const fn eth_addrs(dmac: [u8; 6], smac: [u8; 6]) -> EthAddrs {
    let (d, s) = (dmac, smac);
    [
        u32::from_ne_bytes([d[0], d[1], d[2], d[3]]),
        u32::from_ne_bytes([d[4], d[5], s[0], s[1]]),
        u32::from_ne_bytes([s[2], s[3], s[4], s[5]]),
    ]
}

/// `FLOOR_ROUTES` value: a fixed output (device and Ethernet addresses), and the address a new
/// connection is translated to (toward the LAN: its destination; toward an uplink: its source).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FloorRoute {
    pub ifindex: u32,
    /// Network byte order.
    pub new_addr: u32,
    pub eth: EthAddrs,
}
const _: () = assert!(core::mem::size_of::<FloorRoute>() == 20);

/// `TAIL_CALLS` slots: programs the attached ones hand packets to.
pub const TAIL_LAN_NEW: u32 = 0;
/// `masq_lan_in_hairpin`: a LAN host's new connection to a public address of the gateway.
pub const TAIL_LAN_HAIRPIN: u32 = 1;
pub const TAIL_CALL_SLOTS: u32 = 2;

/// Default size of `EVENTS`, bytes (a power of two, at least a page).
pub const DEFAULT_EVENT_RING_BYTES: u32 = 1 << 20;

/// A new connection, as the programs report it through `EVENTS`: the initiator's entry as it
/// was inserted. Ends (expiry, eviction, flush) are reported by the daemon, which removes them.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct ConnEvent {
    /// CLOCK_MONOTONIC_COARSE, nanoseconds.
    pub time_ns: u64,
    /// The initiator's tuple as it arrived.
    pub key: FlowKey,
    /// What the initiator's packets are rewritten to.
    pub xlate: Tuple4,
    pub uplink: u8,
    /// `CONN_F_*` of the initiator's entry.
    pub flags: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<ConnEvent>() == 40);

/// Global settings, slot 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct DataplaneConfig {
    pub lan_ifindex: u32,
    /// fwmark bits masq owns; the others are left as they are.
    pub mark_mask: u32,
    /// `CFG_F_*`.
    pub flags: u32,
    /// SNAT source port range, host byte order, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    pub lan_prefixes: [Prefix4; MAX_LAN_PREFIXES],
    pub lan_prefix_count: u32,
    pub policy_count: u32,
    /// Ports SNAT never picks (the gateway's own ephemeral range), inclusive; min > max: none.
    pub port_skip_min: u16,
    pub port_skip_max: u16,
    /// Bumped by the daemon whenever the host's devices, addresses or routes change: routes
    /// connections kept before (`ConnRoute`) are no longer trusted.
    pub route_epoch: u32,
    /// The LAN device's MAC (`lan_ifindex`'s), the source of routes kept toward the LAN.
    pub lan_mac: [u8; 6],
    pub _pad: u16,
}
const _: () = assert!(core::mem::size_of::<DataplaneConfig>() == 24 + 64 + 16);

/// `PolicyRule::flags`: all connections of one source take the same uplink.
pub const POLICY_F_STICKY: u32 = 1 << 0;

/// One outbound steering rule (`[[policy]]`), first match wins.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PolicyRule {
    pub from: Prefix4,
    pub to: Prefix4,
    /// Destination port range in host byte order; `0..=65535` matches all.
    pub port_min: u16,
    pub port_max: u16,
    /// IP protocol, 0 for any.
    pub proto: u8,
    pub choice_count: u8,
    pub _pad: [u8; 2],
    pub flags: u32,
    /// Uplink indexes of the weighted choice.
    pub uplinks: [u8; MAX_CHOICES],
    /// Tier of each choice: new connections take the lowest tier with an uplink up.
    pub tiers: [u8; MAX_CHOICES],
    /// Weight of each choice.
    pub weights: [u32; MAX_CHOICES],
}
const _: () = assert!(core::mem::size_of::<PolicyRule>() == 16 + 12 + 8 + 8 + 32);

/// `FRAGS` key: the fragments of one datagram, as they arrive (before translation).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    /// IP identification, network byte order.
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 12);

/// `FRAGS` value: the addresses the datagram's first fragment was translated to; the later
/// fragments (no transport header) get the same.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct FragXlate {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub uplink: u8,
    pub _pad: [u8; 3],
    /// Tick of the first fragment: later ones are matched for `FRAG_TICKS` only, before the
    /// sender's IP identification can come round again.
    pub tick: u32,
}
const _: () = assert!(core::mem::size_of::<FragXlate>() == 16);

/// How long (ticks) a first fragment's translation applies to the rest of its datagram.
pub const FRAG_TICKS: u32 = 2;

/// A next hop `bpf_fib_lookup` resolved for (table, destination), cached per CPU for the tick
/// it was found in: established flows skip the FIB, and a route or neighbour change is seen
/// within a tick (at once when the daemon empties the cache after a host change).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct NextHop {
    pub table: u32,
    pub dst_addr: u32,
    /// 0: empty slot.
    pub ifindex: u32,
    pub tick: u32,
    /// The largest packet (IP total length) the lookup passed the MTU check for.
    pub ok_len: u16,
    pub _pad: u16,
    pub eth: EthAddrs,
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 32);

/// Slots of the per-CPU next-hop cache (a power of two; direct-mapped by destination).
pub const NEXTHOP_SLOTS: u32 = 4096;

/// Datagrams in flight whose fragments masq tracks.
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 16384;

/// `PUBLISH` key: a public address, optionally narrowed to one protocol and port.
/// Whole-address publishes use `proto == 0` and `port == 0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PublishKey {
    pub addr: u32,
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PublishKey>() == 8);

/// Where a published address (and port) leads.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PublishTarget {
    pub to_addr: u32,
    /// Network byte order; 0 keeps the port.
    pub to_port: u16,
    pub uplink: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PublishTarget>() == 8);

/// `PublicAddr::flags`: the whole address is published.
pub const PUBLIC_F_WHOLE: u8 = 1 << 0;
/// `PublicAddr::flags`: some protocol/port of the address is published.
pub const PUBLIC_F_PORTS: u8 = 1 << 1;

/// `PUBLIC_ADDRS` value: the uplink that answers ARP for a published address, and which
/// `PUBLISH` lookups can match (so traffic for other addresses costs one lookup).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct PublicAddr {
    pub uplink: u8,
    /// `PUBLIC_F_*`.
    pub flags: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PublicAddr>() == 4);

/// Per-uplink traffic, a per-CPU array indexed by uplink.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct UplinkStats {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub new_conns: u64,
    /// Passive health: masqueraded TCP connections opened on the uplink (their SYN sent) ...
    pub syn_sent: u64,
    /// ... how many of them were answered (SYN-ACK or RST) ...
    pub syn_answered: u64,
    /// ... and the sum of their SYN to answer times, in microseconds.
    pub syn_answer_us: u64,
}
const _: () = assert!(core::mem::size_of::<UplinkStats>() == 64);

impl UplinkStats {
    /// Sum of two CPUs' counters.
    pub const fn plus(self, o: &UplinkStats) -> UplinkStats {
        UplinkStats {
            rx_packets: self.rx_packets + o.rx_packets,
            rx_bytes: self.rx_bytes + o.rx_bytes,
            tx_packets: self.tx_packets + o.tx_packets,
            tx_bytes: self.tx_bytes + o.tx_bytes,
            new_conns: self.new_conns + o.new_conns,
            syn_sent: self.syn_sent + o.syn_sent,
            syn_answered: self.syn_answered + o.syn_answered,
            syn_answer_us: self.syn_answer_us + o.syn_answer_us,
        }
    }
}

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident = $id:expr, $label:literal, $drop:expr; )*) => {
        /// Every path a packet takes and every reason a packet is dropped, counted in the per-CPU
        /// `COUNTERS` array at the enum's index.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $( $(#[$doc])* $name = $id, )*
        }

        impl Counter {
            pub const ALL: &'static [Counter] = &[$(Counter::$name),*];

            /// Stable snake_case name, used by the CLI and metrics.
            pub const fn name(self) -> &'static str {
                match self { $(Counter::$name => $label,)* }
            }

            /// True when packets counted here were dropped.
            pub const fn is_drop(self) -> bool {
                match self { $(Counter::$name => $drop,)* }
            }
        }
    };
}

counters! {
    /// IPv4 packets parsed by any masq program.
    Ipv4Seen = 0, "ipv4_seen", false;
    /// Left to the kernel untouched (not masq's traffic).
    PassedUntouched = 1, "passed_untouched", false;
    /// ARP requests for published addresses answered (redirected back out of the uplink).
    ArpReplied = 2, "arp_replied", false;
    /// New connection to a published service.
    InboundNew = 3, "inbound_new", false;
    /// New masqueraded connection from the LAN.
    OutboundNew = 4, "outbound_new", false;
    /// Packets of known connections translated toward the LAN.
    ToLanTranslated = 5, "to_lan_translated", false;
    /// Packets of known connections translated toward an uplink.
    ToUplinkTranslated = 6, "to_uplink_translated", false;
    /// ICMP errors about a tracked connection, translated with their inner header.
    IcmpErrorTranslated = 7, "icmp_error_translated", false;
    /// Redirected after a successful FIB lookup (fast path).
    FastPathRedirect = 8, "fast_path_redirect", false;
    /// Redirected with `bpf_redirect_neigh` (next hop not resolved yet).
    FastPathNeigh = 9, "fast_path_neigh", false;
    /// Handed to the kernel with the uplink's mark (slow path).
    KernelPath = 10, "kernel_path", false;
    /// TTL would expire here: left to the kernel so it sends time-exceeded.
    TtlExpiring = 11, "ttl_expiring", false;
    /// Translated at uplink egress after the kernel forwarded it (slow path).
    EgressTranslated = 12, "egress_translated", false;
    /// Redirected by the uplinks' XDP program (a subset of `fast_path_redirect`).
    XdpRedirect = 13, "xdp_redirect", false;
    /// Connections removed by the daemon because their uplink's address changed (renumbered
    /// by DHCP or PPP): they cannot survive it. Counts connections, not packets.
    ConnsRenumbered = 14, "conns_renumbered", false;
    /// Connections confirmed (handshake done, or a reply seen) and moved to the confirmed
    /// table, where no unconfirmed one can push them out.
    ConnsConfirmed = 15, "conns_confirmed", false;
    /// A connection that would be confirmed stayed pending: the confirmed table is full
    /// (counted at each packet that tries).
    ConfirmedTableFull = 16, "confirmed_table_full", false;
    /// The gateway's own ICMP errors about a packet that came in by another uplink, sent back
    /// by that uplink from its address (the main table would have sent them elsewhere).
    OwnIcmpErrorReturned = 17, "own_icmp_error_returned", false;
    /// A masqueraded connection that could not keep its endpoint's public port (the binding
    /// tables full, no free port, or the tuple taken): mapped for this destination only.
    NatMappingFallback = 18, "nat_mapping_fallback", false;
    /// New hairpin connections: a LAN host to a published address, sent to the server behind
    /// it masqueraded behind the uplink's address.
    HairpinNew = 19, "hairpin_new", false;
    /// Packets of hairpin connections translated and sent back into the LAN.
    HairpinTranslated = 20, "hairpin_translated", false;
    /// New inbound UDP connections to a LAN endpoint's public port from a host it had not
    /// sent to (endpoint-independent filtering on the uplink).
    MappingInboundNew = 21, "mapping_inbound_new", false;
    /// Connection events the programs could not write: the ring buffer (`EVENTS`) was full.
    EventsLost = 22, "events_lost", false;
    /// Connection events the daemon could not deliver: a watcher read too slowly (it is told
    /// how many it missed) or the event log could not be written. Written by the daemon.
    EventsUndelivered = 23, "events_undelivered", false;
    /// Dropped: headers shorter than they claim.
    DropMalformed = 32, "drop_malformed", true;
    /// Dropped: a later IP fragment whose first fragment masq has not seen (out of order).
    DropFragment = 33, "drop_fragment", true;
    /// Dropped: TCP packet without SYN and no connection (only SYN opens a connection).
    DropTcpNoConn = 34, "drop_tcp_no_connection", true;
    /// Dropped: no free NAT source port after `NAT_PORT_TRIES` candidates.
    DropNatPortExhausted = 35, "drop_nat_port_exhausted", true;
    /// Dropped: the connection table refused the insert.
    DropConnInsertFailed = 36, "drop_conn_insert_failed", true;
    /// Dropped: a LAN-sourced packet about to leave by an uplink untranslated.
    DropUntranslatedLeak = 37, "drop_untranslated_leak", true;
    /// Dropped: policy chose an uplink that is missing or down.
    DropNoUplink = 38, "drop_no_uplink", true;
    /// Dropped: traffic for a published address arrived on another uplink.
    DropWrongUplink = 39, "drop_wrong_uplink", true;
    /// Dropped: a LAN-sourced packet with IP options about to leave an uplink (not translated).
    DropIpOptions = 41, "drop_ip_options", true;
    /// Dropped: a reply to a masqueraded connection with TTL 1 (the gateway's own stack would
    /// answer it with a reset).
    DropReplyTtlExpired = 43, "drop_reply_ttl_expired", true;
    /// Lost after an XDP redirect: the redirect failed, or the LAN device's driver dropped the
    /// frame (counted by tracepoints).
    DropXdpRedirect = 44, "drop_xdp_redirect", true;
    /// Dropped: IPv4 header checksum wrong (RFC 1812 5.2.2).
    DropIpChecksum = 45, "drop_ip_checksum", true;
    /// Dropped: lengths that contradict each other or the frame (IP total length beyond the
    /// frame or short of the headers, TCP data offset, UDP length).
    DropBadLength = 46, "drop_bad_length", true;
    /// Dropped: a source no host may use (0/8, 127/8, multicast, 255.255.255.255).
    DropMartianSource = 47, "drop_martian_source", true;
    /// Dropped: a spoofed source: the gateway's own or published addresses, or a LAN prefix
    /// arriving from an uplink.
    DropSpoofedSource = 48, "drop_spoofed_source", true;
    /// Dropped: a destination no packet may have (0/8, 127/8).
    DropMartianDestination = 49, "drop_martian_destination", true;
    /// Dropped: a TCP flag combination no stack sends (SYN+FIN, SYN+RST, none, FIN alone…).
    DropTcpFlags = 50, "drop_tcp_flags", true;
    /// Dropped: wrong TCP/UDP/ICMP checksum on a packet that would open a connection.
    DropL4Checksum = 51, "drop_l4_checksum", true;
    /// Dropped: a RST or FIN outside the connection's sequence window (RFC 5961); the
    /// connection is left as it was.
    DropTcpOutOfWindow = 52, "drop_tcp_out_of_window", true;
    /// Dropped: an ICMP error quoting a tracked connection that does not match it fully
    /// (outer destination, uplink, quoted TCP sequence: RFC 5927).
    DropIcmpErrorMismatch = 53, "drop_icmp_error_mismatch", true;
    /// Dropped, silently: a SYN to an uplink's own address where the gateway has no socket.
    /// The kernel would answer it with a RST at once; RFC 5382 REQ-4 wants silence for 6 s, so
    /// that a simultaneous open (a LAN host's SYN crossing the remote one) can still succeed.
    DropUnsolicitedSyn = 54, "drop_unsolicited_syn", true;
    /// Dropped: a LAN packet opening a connection found no program to do it (the tail call to
    /// `masq_lan_in_new` or `masq_lan_in_hairpin` failed: its slot empty).
    DropTailCall = 55, "drop_tail_call", true;
}

/// Size of the `COUNTERS` array.
pub const COUNTER_SLOTS: u32 = 64;

/// A slot counting one common outcome in place of the counters it stands for, so that a packet
/// on an established fast path makes one per-CPU update where it made two or three. Not in
/// `Counter::ALL`: each adds to the totals of its parts (`Counter::total`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// An uplink's packet translated and handed to the kernel to forward to the LAN.
    ToLanByKernel = 60,
    /// A LAN packet translated and redirected to its uplink.
    ToUplinkRedirected = 61,
    /// An uplink's packet translated and redirected to the LAN, by TC.
    ToLanRedirected = 62,
    /// The same by XDP.
    ToLanXdpRedirected = 63,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::ToLanByKernel,
        Outcome::ToUplinkRedirected,
        Outcome::ToLanRedirected,
        Outcome::ToLanXdpRedirected,
    ];

    /// The counters this outcome counts for.
    pub const fn parts(self) -> &'static [Counter] {
        match self {
            Outcome::ToLanByKernel => &[Counter::ToLanTranslated, Counter::KernelPath],
            Outcome::ToUplinkRedirected => {
                &[Counter::ToUplinkTranslated, Counter::FastPathRedirect]
            }
            Outcome::ToLanRedirected => &[Counter::ToLanTranslated, Counter::FastPathRedirect],
            Outcome::ToLanXdpRedirected => {
                &[Counter::ToLanTranslated, Counter::FastPathRedirect, Counter::XdpRedirect]
            }
        }
    }
}

impl Counter {
    /// The counter's total, given each slot's value (`slot(index)`, summed over CPUs): its own
    /// slot and every outcome it is part of.
    pub fn total(self, slot: impl Fn(u32) -> u64) -> u64 {
        let outcomes = Outcome::ALL.iter().filter(|o| o.parts().contains(&self));
        slot(self as u32) + outcomes.map(|&o| slot(o as u32)).sum::<u64>()
    }
}

// Counters and outcomes never share a slot.
const _: () = {
    let mut i = 0;
    while i < Counter::ALL.len() {
        assert!((Counter::ALL[i] as u32) < Outcome::ToLanByKernel as u32);
        i += 1;
    }
    assert!((Outcome::ToLanXdpRedirected as u32) < COUNTER_SLOTS);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are plain `repr(C)` data without padding (sizes asserted above).
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Tuple4 {}
    unsafe impl aya::Pod for ConnEntry {}
    unsafe impl aya::Pod for ConnRoute {}
    unsafe impl aya::Pod for BindingKey {}
    unsafe impl aya::Pod for Binding {}
    unsafe impl aya::Pod for ExpiryPass {}
    unsafe impl aya::Pod for BoundPortKey {}
    unsafe impl aya::Pod for BoundPort {}
    unsafe impl aya::Pod for UplinkInfo {}
    unsafe impl aya::Pod for FloorRoute {}
    unsafe impl aya::Pod for Prefix4 {}
    unsafe impl aya::Pod for DataplaneConfig {}
    unsafe impl aya::Pod for PolicyRule {}
    unsafe impl aya::Pod for PublishKey {}
    unsafe impl aya::Pod for PublishTarget {}
    unsafe impl aya::Pod for PublicAddr {}
    unsafe impl aya::Pod for UplinkStats {}
    unsafe impl aya::Pod for FragKey {}
    unsafe impl aya::Pod for FragXlate {}
    unsafe impl aya::Pod for NextHop {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_counters_total_adds_the_outcomes_it_is_part_of() {
        let mut slots = [0u64; COUNTER_SLOTS as usize];
        slots[Counter::FastPathRedirect as usize] = 1;
        slots[Counter::KernelPath as usize] = 2;
        slots[Outcome::ToUplinkRedirected as usize] = 10;
        slots[Outcome::ToLanRedirected as usize] = 100;
        slots[Outcome::ToLanXdpRedirected as usize] = 1000;
        slots[Outcome::ToLanByKernel as usize] = 10000;
        let total = |c: Counter| c.total(|i| slots[i as usize]);
        assert_eq!(total(Counter::FastPathRedirect), 1111);
        assert_eq!(total(Counter::ToLanTranslated), 11100);
        assert_eq!(total(Counter::ToUplinkTranslated), 10);
        assert_eq!(total(Counter::XdpRedirect), 1000);
        assert_eq!(total(Counter::KernelPath), 10002);
        assert_eq!(total(Counter::Ipv4Seen), 0);
    }

    #[test]
    fn a_flow_key_built_as_words_holds_its_fields_and_a_zero_pad() {
        let key = FlowKey::new(0x0102_0304, 0x0506_0708, 0x1122, 0x3344, IPPROTO_UDP);
        assert_eq!(
            (key.src_addr, key.dst_addr, key.src_port, key.dst_port, key.proto, key._pad),
            (0x0102_0304, 0x0506_0708, 0x1122, 0x3344, IPPROTO_UDP, [0; 3])
        );
        assert_eq!(key.reversed().reversed(), key);
    }

    #[test]
    fn reversed_key_of_echo_request_is_its_reply() {
        let req = FlowKey::new(1, 2, 0x1234, 0, 1);
        assert_eq!(req.reversed(), FlowKey::new(2, 1, 0, 0x1234, 1));
        assert_eq!(req.reversed().reversed(), req);
    }

    #[test]
    fn direction_flags_say_where_packets_go() {
        let mut e = ConnEntry { flags: CONN_F_INBOUND, ..Default::default() };
        assert!(e.toward_lan());
        e.flags |= CONN_F_REPLY;
        assert!(!e.toward_lan());
        e.flags = 0;
        assert!(!e.toward_lan());
        e.flags = CONN_F_REPLY;
        assert!(e.toward_lan());
    }

    #[test]
    fn counter_ids_fit_and_are_unique() {
        for (i, a) in Counter::ALL.iter().enumerate() {
            assert!((*a as u32) < COUNTER_SLOTS);
            for b in &Counter::ALL[i + 1..] {
                assert_ne!(*a as u32, *b as u32);
                assert_ne!(a.name(), b.name());
            }
        }
    }

    #[test]
    fn prefix_contains() {
        let p = Prefix4 {
            addr: u32::from_ne_bytes([192, 168, 100, 0]),
            mask: u32::from_ne_bytes([255, 255, 255, 0]),
        };
        assert!(p.contains(u32::from_ne_bytes([192, 168, 100, 17])));
        assert!(!p.contains(u32::from_ne_bytes([192, 168, 101, 17])));
    }
}
