//! Every map of the dataplane. Capacities come from masq-common so both sides agree; the loader
//! resizes `CONNS`, `PENDING_CONNS` and the binding tables from the config before loading.
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use masq_common::{
    Binding, BindingKey, BoundPort, BoundPortKey, COUNTER_SLOTS, ConnEntry, ConnEvent,
    DEFAULT_CONN_CAPACITY, DEFAULT_EVENT_RING_BYTES, DataplaneConfig, ExpiryPass, FloorRoute,
    FlowKey, FragKey, FragXlate, MAX_FRAGMENTED_DATAGRAMS, MAX_POLICIES, MAX_PUBLISH, MAX_UPLINKS,
    NEXTHOP_SLOTS, NextHop, PolicyRule, PublicAddr, PublishKey, PublishTarget, TAIL_CALL_SLOTS,
    UplinkInfo, UplinkStats, default_pending_capacity,
};

/// Confirmed connections: two entries per connection, one per direction. A plain hash, not an
/// LRU: nothing evicts a confirmed connection; the daemon expires idle ones, and when it is full
/// new connections stay pending.
#[map]
pub static CONNS: HashMap<FlowKey, ConnEntry> =
    HashMap::with_max_entries(2 * DEFAULT_CONN_CAPACITY, 0);

/// Connections not confirmed yet (`CONN_F_PENDING`). An LRU: a flood of connections that never
/// complete churns this table only. One LRU list for all CPUs: per-CPU lists
/// (`BPF_F_NO_COMMON_LRU`) insert a little faster but split the capacity, and a NIC queue
/// served by one CPU could then use only its share.
#[map]
pub static PENDING_CONNS: LruHashMap<FlowKey, ConnEntry> =
    LruHashMap::with_max_entries(2 * default_pending_capacity(DEFAULT_CONN_CAPACITY), 0);

/// Endpoint-independent mapping (`binding.rs`): the public port of each internal endpoint that
/// could not keep its own, and who holds each public port. Plain hashes sized by the loader
/// (connections and pending ones); the daemon removes bindings left without connections.
#[map]
pub static BINDINGS: HashMap<BindingKey, Binding> =
    HashMap::with_max_entries(DEFAULT_CONN_CAPACITY, 0);

#[map]
pub static BOUND_PORTS: HashMap<BoundPortKey, BoundPort> =
    HashMap::with_max_entries(DEFAULT_CONN_CAPACITY, 0);

/// Translations of fragmented datagrams, written by their first fragment.
#[map]
pub static FRAGS: LruHashMap<FragKey, FragXlate> =
    LruHashMap::with_max_entries(MAX_FRAGMENTED_DATAGRAMS, 0);

/// Next hops of recent FIB lookups, per CPU (see `steer::next_hop`).
#[map]
pub static NEXTHOPS: PerCpuArray<NextHop> = PerCpuArray::with_max_entries(NEXTHOP_SLOTS, 0);

#[map]
pub static CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

#[map]
pub static UPLINKS: Array<UplinkInfo> = Array::with_max_entries(MAX_UPLINKS as u32, 0);

#[map]
pub static POLICIES: Array<PolicyRule> = Array::with_max_entries(MAX_POLICIES as u32, 0);

#[map]
pub static PUBLISH: HashMap<PublishKey, PublishTarget> = HashMap::with_max_entries(MAX_PUBLISH, 0);

#[map]
pub static PUBLIC_ADDRS: HashMap<u32, PublicAddr> = HashMap::with_max_entries(MAX_PUBLISH, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_SLOTS, 0);

#[map]
pub static UPLINK_STATS: PerCpuArray<UplinkStats> =
    PerCpuArray::with_max_entries(MAX_UPLINKS as u32, 0);

/// Per-CPU room for the bytes a transport checksum is verified over (`validate::l4_checksum`).
#[map]
pub static CSUM_SCRATCH: PerCpuArray<[u8; 256]> = PerCpuArray::with_max_entries(1, 0);

/// Kernel id of the loaded `masq_uplink_in_xdp` (0 while XDP is not used), for the tracepoint
/// that counts failed redirects.
#[map]
pub static XDP_PROG_IDS: Array<u32> = Array::with_max_entries(1, 0);

/// New connections (`events.rs`), read by the daemon. Sized by the loader (`[events]`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_EVENT_RING_BYTES, 0);

/// Per-CPU room where a new connection's event is built before it is copied into `EVENTS`.
#[map]
pub static EVENT_SCRATCH: PerCpuArray<ConnEvent> = PerCpuArray::with_max_entries(1, 0);

/// Programs the attached ones hand a packet to (`TAIL_LAN_NEW`: `masq_lan_in_new`), filled by
/// the loader. Pinned: the kernel empties a program array when no process holds it.
#[map]
pub static TAIL_CALLS: ProgramArray = ProgramArray::with_max_entries(TAIL_CALL_SLOTS, 0);

/// Per-CPU room for `binding::public_port`'s keys (its stack frame is the programs' deepest).
#[map]
pub static BINDING_SCRATCH: PerCpuArray<crate::binding::BindingScratch> =
    PerCpuArray::with_max_entries(1, 0);

/// The coarse clock per CPU, as read in the current jiffy (`conntrack::now_ns`).
#[map]
pub static CLOCK: PerCpuArray<crate::conntrack::ClockCache> = PerCpuArray::with_max_entries(1, 0);

/// The in-kernel expiry's request and result (`expire.rs`): the daemon's own, never pinned.
#[map]
pub static EXPIRY: Array<ExpiryPass> = Array::with_max_entries(1, 0);

/// The floor programs' fixed outputs (`floor.rs`; benchmark only, never pinned).
#[map]
pub static FLOOR_ROUTES: Array<FloorRoute> = Array::with_max_entries(2, 0);
