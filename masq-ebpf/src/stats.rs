//! Per-CPU counters: one per path and per drop reason, and per-uplink traffic.
use masq_common::{Counter, Outcome, UplinkStats};

use crate::maps::{COUNTERS, UPLINK_STATS};

#[inline(always)]
pub fn count(counter: Counter) {
    bump(counter as u32);
}

/// Count an outcome: one update, for all the counters it stands for.
#[inline(always)]
pub fn count_outcome(outcome: Outcome) {
    bump(outcome as u32);
}

#[inline(always)]
fn bump(slot: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn uplink_stats(uplink: u8) -> Option<&'static mut UplinkStats> {
    // SAFETY: per-CPU slot, only this CPU writes it.
    UPLINK_STATS.get_ptr_mut(uplink as u32).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn uplink_rx(uplink: u8, bytes: u64) {
    if let Some(s) = uplink_stats(uplink) {
        s.rx_packets += 1;
        s.rx_bytes += bytes;
    }
}

#[inline(always)]
pub fn uplink_tx(uplink: u8, bytes: u64) {
    if let Some(s) = uplink_stats(uplink) {
        s.tx_packets += 1;
        s.tx_bytes += bytes;
    }
}

#[inline(always)]
pub fn uplink_new_conn(uplink: u8) {
    if let Some(s) = uplink_stats(uplink) {
        s.new_conns += 1;
    }
}

#[inline(always)]
pub fn uplink_syn_sent(uplink: u8) {
    if let Some(s) = uplink_stats(uplink) {
        s.syn_sent += 1;
    }
}

#[inline(always)]
pub fn uplink_syn_answered(uplink: u8, waited_us: u64) {
    if let Some(s) = uplink_stats(uplink) {
        s.syn_answered += 1;
        s.syn_answer_us += waited_us;
    }
}
