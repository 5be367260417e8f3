//! Endpoint-independent mapping (RFC 4787 REQ-1, RFC 5382 REQ-1): one internal endpoint (LAN
//! address and port, or echo identifier) keeps one public port behind an uplink for every
//! destination while it has connections, and no two endpoints share one. `BOUND_PORTS` holds
//! who took each port; an endpoint that could not keep its own port has its public port in
//! `BINDINGS`. The daemon removes bindings left without connections.
use aya_ebpf::bindings::BPF_NOEXIST;
use masq_common::{Binding, BindingKey, BoundPort, BoundPortKey, FlowKey, NAT_PORT_TRIES, tick};

const EEXIST: i32 = 17;

use crate::{
    conntrack::{PortRange, hash_endpoint, now_ns},
    maps::{BINDING_SCRATCH, BINDINGS, BOUND_PORTS},
};

/// The public port (network byte order) of `key`'s source endpoint behind `uplink`: its
/// binding's, or a new binding's — the endpoint's own port when `range` keeps it and it is
/// free (one `BOUND_PORTS` insert), else a free one chosen by a hash of the endpoint alone (not
/// of the destination). `None` when no binding can be made (no free port, tables full).
#[inline(never)]
pub fn public_port(key: &FlowKey, uplink: u8, range: &PortRange) -> Option<u16> {
    // The keys live in a per-CPU slot, not on the stack: called from the programs' deepest
    // frame, this function's own must stay small.
    let s = BINDING_SCRATCH.get_ptr_mut(0)?;
    // SAFETY: per-CPU slot, only this CPU uses it, and only here.
    let s = unsafe { &mut *s };
    s.bkey =
        BindingKey { int_addr: key.src_addr, int_port: key.src_port, proto: key.proto, uplink };
    s.pkey = BoundPortKey { ext_port: key.src_port, proto: key.proto, uplink };
    let (bkey, pkey) = (&s.bkey, &s.pkey);
    let now = tick(now_ns());
    // SAFETY: lookups of plain values; the one write is a whole aligned word.
    let own_holder = unsafe { BOUND_PORTS.get_ptr_mut(pkey).map(|p| &mut *p) };
    let own_holder = match own_holder {
        Some(held) if held.owner == *bkey => {
            mark_used(held, now);
            return Some(key.src_port);
        }
        held => held.map(|h| h.owner),
    };
    // SAFETY: as above.
    if let Some(b) = unsafe { BINDINGS.get(bkey) } {
        s.pkey.ext_port = b.ext_port;
        let pkey = &s.pkey;
        // SAFETY: as above.
        if let Some(held) = unsafe { BOUND_PORTS.get_ptr_mut(pkey).map(|p| &mut *p) } {
            mark_used(held, now);
        }
        return Some(b.ext_port);
    }
    s.port = BoundPort { owner: *bkey, used_tick: now, _pad: 0 };
    let port = &s.port;
    let own = u16::from_be(key.src_port);
    if own_holder.is_none() && range.keeps(own) {
        match BOUND_PORTS.insert(pkey, port, BPF_NOEXIST as u64) {
            Ok(()) => return Some(key.src_port),
            // Taken meanwhile: by this endpoint on another CPU, or by another endpoint.
            // SAFETY: as above.
            Err(err) if err == -EEXIST => {
                if unsafe { BOUND_PORTS.get(pkey) }.is_some_and(|p| p.owner == *bkey) {
                    return Some(key.src_port);
                }
            }
            Err(_) => return None,
        }
    }
    let seed = hash_endpoint(key.src_addr, key.src_port, key.proto);
    for i in 0..NAT_PORT_TRIES {
        s.pkey.ext_port = range.candidate(seed, i)?.to_be();
        let pkey = &s.pkey;
        match BOUND_PORTS.insert(pkey, port, BPF_NOEXIST as u64) {
            Ok(()) => {}
            Err(err) if err == -EEXIST => continue,
            // Full: no binding now.
            Err(_) => return None,
        }
        s.binding = Binding { ext_port: pkey.ext_port, _pad: 0 };
        let binding = &s.binding;
        if BINDINGS.insert(bkey, binding, BPF_NOEXIST as u64).is_ok() {
            return Some(binding.ext_port);
        }
        // Another CPU bound this endpoint first (or the table is full): its port, if any.
        let _ = BOUND_PORTS.remove(pkey);
        // SAFETY: as above.
        return unsafe { BINDINGS.get(bkey) }.map(|b| b.ext_port);
    }
    None
}

/// Stamp a binding with the tick of a new connection that uses it, so the daemon's sweep,
/// which judges by connections it read earlier, keeps it. Written only when the tick moved.
#[inline(always)]
fn mark_used(held: &mut BoundPort, now: u32) {
    if held.used_tick != now {
        held.used_tick = now;
    }
}

/// `public_port`'s keys and values.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BindingScratch {
    bkey: BindingKey,
    port: BoundPort,
    binding: Binding,
    pkey: BoundPortKey,
}

/// The LAN endpoint (address, port: network byte order) holding public port `port` of `proto`
/// behind `uplink`, if any.
#[inline(always)]
pub fn owner(port: u16, proto: u8, uplink: u8) -> Option<(u32, u16)> {
    // SAFETY: read-only lookup of a plain value.
    let held = unsafe { BOUND_PORTS.get(BoundPortKey { ext_port: port, proto, uplink }) }?;
    Some((held.owner.int_addr, held.owner.int_port))
}
