//! The record of new connections: each one the programs create is reported in `EVENTS` while
//! the daemon consumes them (`CFG_F_EVENTS`); off, it costs one flag test. A full ring is
//! counted (`events_lost`), never silent.
use masq_common::{CFG_F_EVENTS, ConnEntry, ConnEvent, Counter, FlowKey};

use crate::{
    maps::{EVENT_SCRATCH, EVENTS},
    stats::count,
    steer::config,
};

#[inline(always)]
pub fn conn_created(key: &FlowKey, entry: &ConnEntry, time_ns: u64) {
    if config().is_none_or(|cfg| cfg.flags & CFG_F_EVENTS == 0) {
        return;
    }
    // Built in a per-CPU slot, not on the stack (the programs' stack is nearly full).
    let Some(event) = EVENT_SCRATCH.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU slot, only this CPU writes it, and only here.
    let event = unsafe { &mut *event };
    event.time_ns = time_ns;
    event.key = *key;
    event.xlate = entry.xlate;
    event.uplink = entry.uplink;
    event.flags = entry.flags;
    if EVENTS.output::<ConnEvent>(&*event, 0).is_err() {
        count(Counter::EventsLost);
    }
}
