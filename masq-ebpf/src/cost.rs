//! Cost programs: one piece of masq's dataplane timed alone, for the benchmark. Never attached
//! by `masq run`.
//!
//! `masq_cost_validate_16` runs the RFC 1812 checks (`validate::packet`) sixteen times over the
//! same frame, `masq_cost_validate_0` everything else the same with none: the bench times both
//! on one frame and reports (t16 − t0) / 16, the checks' cost per packet, sixteen times above
//! the machine's noise.
use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};

use crate::{
    packet::{Parsed, parse},
    validate,
};

#[xdp]
pub fn masq_cost_validate_16(ctx: XdpContext) -> u32 {
    validate_times::<16>(&ctx)
}

#[xdp]
pub fn masq_cost_validate_0(ctx: XdpContext) -> u32 {
    validate_times::<0>(&ctx)
}

/// Parse the frame, then check it `N` times; each time the packet and its parse are hidden from
/// the compiler, so nothing is computed once for all. XDP_PASS when every check passed, XDP_DROP
/// at the first that failed (no state carried from one check to the next, which the verifier
/// would have to follow through every combination).
#[inline(always)]
fn validate_times<const N: u32>(ctx: &XdpContext) -> u32 {
    let Ok(Parsed::Ipv4(ip)) = parse(ctx) else { return XDP_ABORTED };
    for _ in 0..N {
        let (ctx, ip) = core::hint::black_box((ctx, &ip));
        if validate::packet(ctx, ip).is_err() {
            return XDP_DROP;
        }
    }
    XDP_PASS
}
