//! The programs' own debug tracing (aya-log), at the level `[dataplane] trace` sets when they
//! are loaded: below it the verifier removes the calls, so tracing off costs nothing.
use aya_ebpf::EbpfContext;
use aya_log_ebpf::debug;
use masq_common::Counter;

/// A packet dropped for `reason` (`masq stats` counts it too); the daemon's log names it.
#[inline(always)]
pub fn dropped<C: EbpfContext>(ctx: &C, reason: Counter) {
    debug!(ctx, "drop:{}", reason as u32);
}
