//! Endpoint-independent mapping (RFC 4787 REQ-1, RFC 5382 REQ-1): one internal endpoint (LAN
//! address and port, or echo identifier) keeps one public port behind an uplink for every
//! destination while it has connections, and no two endpoints share one. `BINDINGS` holds the
//! endpoint's port, `BOUND_PORTS` who took each port; the daemon removes bindings left without
//! connections.
use aya_ebpf::bindings::BPF_NOEXIST;
use masq_common::{Binding, BindingKey, BoundPortKey, FlowKey, NAT_PORT_TRIES, tick};

const EEXIST: i32 = 17;

use crate::{
    conntrack::{PortRange, hash, now_ns},
    maps::{BINDINGS, BOUND_PORTS},
};

/// The public port (network byte order) of `key`'s source endpoint behind `uplink`: its
/// binding's, or a new binding's — the endpoint's own port when `range` keeps it and it is
/// free, else a free one chosen by a hash of the endpoint alone (not of the destination).
/// `None` when no binding can be made (no free port, tables full).
#[inline(always)]
pub fn public_port(key: &FlowKey, uplink: u8, range: &PortRange) -> Option<u16> {
    let bkey =
        BindingKey { int_addr: key.src_addr, int_port: key.src_port, proto: key.proto, uplink };
    // SAFETY: read-only lookup of a plain value.
    if let Some(b) = unsafe { BINDINGS.get(bkey) } {
        return Some(b.ext_port);
    }
    let own = u16::from_be(key.src_port);
    let seed = hash(&FlowKey::new(key.src_addr, 0, key.src_port, 0, key.proto));
    for i in 0..NAT_PORT_TRIES {
        let port = if i == 0 && range.keeps(own) { own } else { range.candidate(seed, i)? };
        let pkey = BoundPortKey { ext_port: port.to_be(), proto: key.proto, uplink };
        match BOUND_PORTS.insert(pkey, bkey, BPF_NOEXIST as u64) {
            Ok(()) => {}
            Err(err) if err == -EEXIST => continue,
            // Full: no binding now.
            Err(_) => return None,
        }
        let binding = Binding { ext_port: pkey.ext_port, _pad: 0, created_tick: tick(now_ns()) };
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

/// The LAN endpoint (address, port: network byte order) holding public port `port` of `proto`
/// behind `uplink`, if any.
#[inline(always)]
pub fn owner(port: u16, proto: u8, uplink: u8) -> Option<(u32, u16)> {
    // SAFETY: read-only lookup of a plain value.
    let owner = unsafe { BOUND_PORTS.get(BoundPortKey { ext_port: port, proto, uplink }) }?;
    Some((owner.int_addr, owner.int_port))
}
