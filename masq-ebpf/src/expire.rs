//! `masq_expire`: the daemon's expiry pass, in the kernel. Never attached: the daemon runs it by
//! BPF_PROG_TEST_RUN with the pass's clock and timeouts in `EXPIRY`. It walks both connection
//! tables (`bpf_for_each_map_elem`, pending first, as connections move that way), removes each
//! connection idle past its state's timeout, both entries, and counts it in `EXPIRY`; stamps
//! the bindings of those it keeps; then removes the bindings no connection stamped for two
//! ticks. Copying every entry out to the daemon costs it 470–810 ns per entry, the walk 130–260;
//! but the walk visits every bucket (~18 ns each here, full or not), where the batched read
//! skips empty ones: the daemon picks the cheaper (`masq-user/src/expiry.rs`).
use core::ffi::c_void;

use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_PASS},
    helpers::generated::{bpf_for_each_map_elem, bpf_map_delete_elem, bpf_map_lookup_elem},
    macros::xdp,
    programs::XdpContext,
};
use masq_common::{
    Binding, BindingKey, BoundPort, BoundPortKey, CONN_STATES, ConnEntry, ConnState,
    EXPIRY_F_SWEEP_BINDINGS, EXPIRY_F_SWEEP_MAPPINGS, ExpiryFound, FlowKey, last_seen_tick, tick,
    tick_ns,
};

use crate::maps::{BINDINGS, BOUND_PORTS, CONNS, EXPIRY, PENDING_CONNS};

/// The pass as the callbacks see it (on the program's stack: a callback's context must be).
/// It never changes during the walk: the verifier checks a callback as a loop body until the
/// state it starts from repeats, so counts kept here would make it walk each path again per
/// count. They go to `EXPIRY`'s slot instead.
#[repr(C)]
struct Walk {
    now_ns: u64,
    timeout_ns: [u64; CONN_STATES],
    /// The shortest of the timeouts.
    min_timeout_ns: u64,
    tick: u32,
    _pad: u32,
    found: *mut ExpiryFound,
}

impl Walk {
    #[inline(always)]
    fn found(&mut self) -> &mut ExpiryFound {
        // SAFETY: `EXPIRY`'s slot, which only this pass uses.
        unsafe { &mut *self.found }
    }

    /// Idle past its state's timeout.
    #[inline(always)]
    fn due(&self, proto: u8, orig: Option<&ConnEntry>, reply: Option<&ConnEntry>) -> bool {
        // A match, not an index: a variable offset into the stack costs the verifier more.
        let timeout = match ConnState::of(proto, orig, reply) {
            ConnState::TcpSynSent => self.timeout_ns[ConnState::TcpSynSent as usize],
            ConnState::TcpEstablished => self.timeout_ns[ConnState::TcpEstablished as usize],
            ConnState::TcpClosing => self.timeout_ns[ConnState::TcpClosing as usize],
            ConnState::Unreplied => self.timeout_ns[ConnState::Unreplied as usize],
            ConnState::Replied => self.timeout_ns[ConnState::Replied as usize],
            ConnState::Icmp => self.timeout_ns[ConnState::Icmp as usize],
        };
        self.now_ns.saturating_sub(tick_ns(last_seen_tick(orig, reply))) > timeout
    }
}

#[xdp]
pub fn masq_expire(_ctx: XdpContext) -> u32 {
    let Some(pass) = EXPIRY.get_ptr_mut(0) else { return XDP_ABORTED };
    // SAFETY: the one slot; only the daemon's pass, one at a time, uses it. From here on only
    // through `found` and the callbacks.
    let (flags, found) = unsafe {
        (*pass).found = ExpiryFound::default();
        ((*pass).flags, &raw mut (*pass).found)
    };
    // SAFETY: as above.
    let (now_ns, timeout_ns) = unsafe { ((*pass).now_ns, (*pass).timeout_ns) };
    let mut walk = Walk {
        now_ns,
        timeout_ns,
        min_timeout_ns: timeout_ns.iter().fold(u64::MAX, |m, t| m.min(*t)),
        tick: tick(now_ns),
        _pad: 0,
        found,
    };
    let walk = (&raw mut walk).cast::<c_void>();
    // SAFETY: each callback takes the map's own key and value types and `walk`; `found` is
    // read between the walks.
    unsafe {
        for_each(map_ptr(&PENDING_CONNS), visit_conn as *mut c_void, walk);
        for_each(map_ptr(&CONNS), visit_conn as *mut c_void, walk);
        // After connections went, or when asked (for those removed otherwise): a walk over
        // an empty table still costs its buckets.
        if flags & EXPIRY_F_SWEEP_BINDINGS != 0 || (*found).expired > 0 {
            for_each(map_ptr(&BOUND_PORTS), visit_port as *mut c_void, walk);
        }
        if flags & EXPIRY_F_SWEEP_MAPPINGS != 0 {
            for_each(map_ptr(&BINDINGS), visit_binding as *mut c_void, walk);
        }
    }
    XDP_PASS
}

/// The kernel's map pointer of a map static (aya-ebpf's maps are their definition).
fn map_ptr<M>(map: &'static M) -> *mut c_void {
    (map as *const M).cast_mut().cast()
}

/// # Safety
/// `callback` takes `map`'s key and value and a `Walk`.
#[inline(always)]
unsafe fn for_each(map: *mut c_void, callback: *mut c_void, walk: *mut c_void) {
    // SAFETY: as the caller says.
    unsafe { bpf_for_each_map_elem(map, callback, walk, 0) };
}

/// # Safety
/// `key` is of `map`'s key type, whose values are `V`.
#[inline(always)]
unsafe fn lookup<K, V>(map: *mut c_void, key: &K) -> Option<&'static mut V> {
    // SAFETY: as the caller says; a hit is a map value of type `V`.
    unsafe { bpf_map_lookup_elem(map, (key as *const K).cast()).cast::<V>().as_mut() }
}

/// # Safety
/// `key` is of `map`'s key type.
#[inline(always)]
unsafe fn delete<K>(map: *mut c_void, key: *const K) {
    // SAFETY: as the caller says.
    unsafe { bpf_map_delete_elem(map, key.cast()) };
}

/// One entry of a connection table. A connection is judged at its initiator's entry, with its
/// reply entry; a reply entry only when its initiator's is gone (an LRU eviction), alone.
unsafe extern "C" fn visit_conn(
    map: *mut c_void,
    key: *const FlowKey,
    entry: *const ConnEntry,
    walk: *mut Walk,
) -> i64 {
    // SAFETY: the kernel hands the visited key and value, and `walk` as passed.
    let (key, entry, walk) = unsafe { (&*key, &*entry, &mut *walk) };
    walk.found().entries += 1;
    let is_reply = entry.is_reply();
    // Seen within the shortest timeout: not due whatever its state, as the connection was
    // seen as late or later. Most are: no look at the other entry. A reply entry is kept
    // with its initiator's; a pending one stamps too, as the LRU may have evicted that one.
    if walk.now_ns.saturating_sub(tick_ns(entry.last_seen_tick)) <= walk.min_timeout_ns {
        if !is_reply {
            walk.found().kept += 1;
        }
        if !is_reply || entry.is_pending() {
            stamp_bindings(walk.tick, key, entry);
        }
        return 0;
    }
    let twin_key = entry.twin_key(key);
    // SAFETY: a key of this table.
    let twin = unsafe { lookup::<FlowKey, ConnEntry>(map, &twin_key) }.map(|t| &*t);
    // A reply entry is judged with its initiator's, at that one, unless it has none.
    if is_reply && twin.is_some() {
        return 0;
    }
    // One path from here for both cases: the verifier walks each path of a callback.
    let (orig, reply) = if is_reply { (None, Some(entry)) } else { (Some(entry), twin) };
    if !walk.due(key.proto, orig, reply) {
        walk.found().kept += 1;
        stamp_bindings(walk.tick, key, entry);
        return 0;
    }
    walk.found().expired += 1;
    // The visited entry last. SAFETY: keys of this table.
    unsafe {
        if twin.is_some() {
            delete(map, &twin_key);
        }
        delete(map, key);
    }
    0
}

/// Stamp the bindings a connection that stays uses with the pass's tick (`now`).
#[inline(always)]
fn stamp_bindings(now: u32, key: &FlowKey, entry: &ConnEntry) {
    if entry.is_inbound() {
        return;
    }
    let (proto, uplink) = (key.proto, entry.uplink);
    let endpoint = |addr, port| BindingKey { int_addr: addr, int_port: port, proto, uplink };
    // The internal endpoint that opened it, and the public port its translation shows; for a
    // hairpin also the endpoint it reaches, whose public port the initiator addressed.
    let (opener, opener_port, reached, reached_port) = if entry.is_reply() {
        let x = &entry.xlate;
        (
            endpoint(x.dst_addr, x.dst_port),
            key.dst_port,
            endpoint(key.src_addr, key.src_port),
            x.src_port,
        )
    } else {
        let x = &entry.xlate;
        (
            endpoint(key.src_addr, key.src_port),
            x.src_port,
            endpoint(x.dst_addr, x.dst_port),
            key.dst_port,
        )
    };
    stamp(&opener, opener_port, now);
    if entry.is_hairpin() {
        stamp(&reached, reached_port, now);
    }
}

/// Stamp `owner`'s binding with `now`, found at `port`: the public port its connection shows,
/// which the binding gave it.
#[inline(always)]
fn stamp(owner: &BindingKey, port: u16, now: u32) {
    let at = BoundPortKey { ext_port: port, proto: owner.proto, uplink: owner.uplink };
    // SAFETY: a plain value; the one write is a whole aligned word.
    if let Some(held) = unsafe { BOUND_PORTS.get_ptr_mut(at).map(|p| &mut *p) }
        && held.owner == *owner
        // Never backwards: a new connection may have stamped a later tick.
        && (now.wrapping_sub(held.used_tick) as i32) > 0
    {
        held.used_tick = now;
    }
}

/// One held port: removed, with its owner's `BINDINGS` entry, once no connection stamped it for
/// two ticks (a new one stamps it as it is created, the walk as it keeps one).
unsafe extern "C" fn visit_port(
    map: *mut c_void,
    port: *const BoundPortKey,
    held: *const BoundPort,
    walk: *mut Walk,
) -> i64 {
    // SAFETY: the kernel hands the visited key and value, and `walk` as passed.
    let (port, held, walk) = unsafe { (&*port, &*held, &mut *walk) };
    // Signed: a binding stamped after the pass began is younger than it.
    if (walk.tick.wrapping_sub(held.used_tick) as i32) < 2 {
        return 0;
    }
    let owner = held.owner;
    // The mapping goes before its port, so no other endpoint takes a port still mapped to.
    // SAFETY: plain values; keys of their maps.
    unsafe {
        if BINDINGS.get(owner).is_some_and(|b| b.ext_port == port.ext_port) {
            let _ = BINDINGS.remove(owner);
        }
        delete(map, port);
    }
    walk.found().bindings_removed += 1;
    0
}

/// One `BINDINGS` entry: removed when its port is not held by its endpoint (a sweep cut short,
/// or by the userspace one of an older masq).
unsafe extern "C" fn visit_binding(
    map: *mut c_void,
    owner: *const BindingKey,
    binding: *const Binding,
    _walk: *mut Walk,
) -> i64 {
    // SAFETY: the kernel hands the visited key and value.
    let (owner, binding) = unsafe { (&*owner, &*binding) };
    let port =
        BoundPortKey { ext_port: binding.ext_port, proto: owner.proto, uplink: owner.uplink };
    // SAFETY: a plain value; the key of this map.
    unsafe {
        if BOUND_PORTS.get(port).is_none_or(|h| h.owner != *owner) {
            delete(map, owner);
        }
    }
    0
}
