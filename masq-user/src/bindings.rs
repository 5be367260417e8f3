//! Endpoint-independent mappings seen from userspace: which bindings the connections use, the
//! port an endpoint holds, and the sweep of bindings left without connections. Every binding
//! holds a port in `BOUND_PORTS`; an endpoint mapped to a port other than its own also has a
//! `BINDINGS` entry naming it (the programs' side is `masq-ebpf/src/binding.rs`).
use std::{
    borrow::{Borrow, BorrowMut},
    collections::HashMap,
    os::fd::OwnedFd,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use masq_common::{Binding, BindingKey, BoundPort, BoundPortKey};

use crate::conntrack::{Conn, read_all};

/// Both binding tables, typed, and their fds to read them in batches (without them, entry by
/// entry).
pub struct BindingTables<T> {
    pub bindings: BpfHashMap<T, BindingKey, Binding>,
    pub ports: BpfHashMap<T, BoundPortKey, BoundPort>,
    /// (bindings, ports).
    pub fds: Option<[OwnedFd; 2]>,
}

impl<T: Borrow<MapData>> BindingTables<T> {
    /// The public port (network byte order) `key`'s binding holds, if it has one: its
    /// `BINDINGS` entry's, or its own port when it holds that one.
    pub fn port_of(&self, key: &BindingKey) -> Option<u16> {
        if let Ok(binding) = self.bindings.get(key, 0) {
            return Some(binding.ext_port);
        }
        let own = BoundPortKey { ext_port: key.int_port, proto: key.proto, uplink: key.uplink };
        self.ports.get(&own, 0).ok().filter(|p| p.owner == *key).map(|_| key.int_port)
    }

    /// Every held port, in batches when the kernel can.
    pub fn held_ports(&self) -> Vec<(BoundPortKey, BoundPort)> {
        read_all(&self.ports, self.fds.as_ref().map(|[_, ports]| ports))
    }

    /// Every `BINDINGS` entry (endpoints mapped elsewhere), in batches when the kernel can.
    pub fn mapped_elsewhere(&self) -> Vec<(BindingKey, Binding)> {
        read_all(&self.bindings, self.fds.as_ref().map(|[bindings, _]| bindings))
    }
}

impl<T: BorrowMut<MapData>> BindingTables<T> {
    /// Remove the bindings no connection of `conns` uses, last used two ticks or more before
    /// `read_tick`, when `conns` was read (one used later may have connections `conns` misses,
    /// or be waiting for its first connection's insert). Returns how many.
    pub fn sweep(&mut self, conns: &[Conn], read_tick: u32) -> usize {
        // Sorted, not hashed: a set of a million endpoints missed the cache on every insert.
        let mut live: Vec<u64> = conns.iter().flat_map(bindings_of).map(endpoint_bits).collect();
        live.sort_unstable();
        live.dedup();
        self.remove_where(|_, held| {
            // Signed: a binding used after the read is younger than it, never "old".
            read_tick.wrapping_sub(held.used_tick) as i32 >= 2
                && live.binary_search(&endpoint_bits(held.owner)).is_err()
        })
    }

    /// Remove the bindings `doomed` picks by their port, each with its `BINDINGS` entry when it
    /// has one, and `BINDINGS` entries whose port is not theirs (left by a sweep cut short).
    /// The entry goes before its port, so no other endpoint takes a port still mapped to. Each
    /// table is read once; only an entry that looks orphaned is checked again (its port may
    /// have been bound since the read). Returns the bindings removed.
    pub fn remove_where(&mut self, doomed: impl Fn(&BoundPortKey, &BoundPort) -> bool) -> usize {
        let held = self.held_ports();
        let mapped: HashMap<BindingKey, Binding> = self.mapped_elsewhere().into_iter().collect();
        let holders: HashMap<BoundPortKey, BindingKey> =
            held.iter().map(|(port, h)| (*port, h.owner)).collect();
        let mut removed = 0;
        for (port, h) in held.iter().filter(|(port, h)| doomed(port, h)) {
            if mapped.get(&h.owner).is_some_and(|b| b.ext_port == port.ext_port) {
                let _ = self.bindings.remove(&h.owner);
            }
            let _ = self.ports.remove(port);
            removed += 1;
        }
        for (key, b) in &mapped {
            let port = BoundPortKey { ext_port: b.ext_port, proto: key.proto, uplink: key.uplink };
            if holders.get(&port) != Some(key)
                && self.ports.get(&port, 0).map_or(true, |h| h.owner != *key)
            {
                let _ = self.bindings.remove(key);
            }
        }
        removed
    }
}

/// An endpoint as one number, to sort by.
fn endpoint_bits(key: BindingKey) -> u64 {
    bytemuck::cast(key)
}

/// The bindings a connection uses: its initiator's (masqueraded or hairpinned), and for a
/// hairpin the endpoint it reaches (another's mapping); none for an inbound one.
pub fn bindings_of(conn: &Conn) -> impl Iterator<Item = BindingKey> {
    let hairpin_target = conn.any().1.is_hairpin().then(|| {
        let (key, entry) = conn.any();
        // The initiator's translation leads to the endpoint reached; a reply comes from it.
        let (addr, port) = if entry.is_reply() {
            (key.src_addr, key.src_port)
        } else {
            (entry.xlate.dst_addr, entry.xlate.dst_port)
        };
        BindingKey { int_addr: addr, int_port: port, proto: key.proto, uplink: entry.uplink }
    });
    binding_of(conn).into_iter().chain(hairpin_target)
}

/// The binding of a masqueraded (or hairpinned) connection's internal endpoint, the one that
/// opened it (`None` for an inbound one).
pub fn binding_of(conn: &Conn) -> Option<BindingKey> {
    let (key, entry) = conn.any();
    if entry.is_inbound() {
        return None;
    }
    // The initiator's key is the internal endpoint; a reply entry's translation leads to it.
    let (int_addr, int_port) = if entry.is_reply() {
        (entry.xlate.dst_addr, entry.xlate.dst_port)
    } else {
        (key.src_addr, key.src_port)
    };
    Some(BindingKey { int_addr, int_port, proto: key.proto, uplink: entry.uplink })
}
