//! Cost programs: one piece of masq's dataplane timed alone, for the benchmark. Never attached
//! by `masq run`.
//!
//! `masq_cost_validate_16` runs the RFC 1812 checks (`validate::packet`) sixteen times over the
//! same frame, `masq_cost_validate_0` the same sixteen rounds with the checks left out (the
//! loop and the values hidden from the compiler cost the same in both): the bench times both on
//! one frame and reports (t16 − t0) / 16, the checks' cost per packet, sixteen times above the
//! machine's noise.
use aya_ebpf::{
    bindings::xdp_action::{XDP_ABORTED, XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};

use crate::{
    packet::{Ipv4, Parsed, parse},
    validate,
};

#[xdp]
pub fn masq_cost_validate_16(ctx: XdpContext) -> u32 {
    validate_rounds::<true>(&ctx)
}

#[xdp]
pub fn masq_cost_validate_0(ctx: XdpContext) -> u32 {
    validate_rounds::<false>(&ctx)
}

/// Parse the frame, then sixteen rounds, each checking it when `CHECK`; each round the packet
/// and its parse are hidden from the compiler, so nothing is computed once for all. XDP_PASS
/// when every check passed, XDP_DROP at the first that failed (no state carried from one check
/// to the next, which the verifier would have to follow through every combination).
#[inline(always)]
fn validate_rounds<const CHECK: bool>(ctx: &XdpContext) -> u32 {
    let mut ip = Ipv4::EMPTY;
    let Ok(Parsed::Ipv4) = parse(ctx, &mut ip) else { return XDP_ABORTED };
    for _ in 0..16 {
        let (ctx, ip) = core::hint::black_box((ctx, &ip));
        if CHECK && validate::packet(ctx, ip).is_err() {
            return XDP_DROP;
        }
    }
    XDP_PASS
}
