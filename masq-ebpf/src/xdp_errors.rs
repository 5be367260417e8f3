//! `masq_xdp_redirect_err` and `masq_xdp_xmit`: tracepoints that count the frames masq's XDP
//! program redirected and the kernel then lost (no silent black hole). A redirect can fail at
//! once (`xdp:xdp_redirect_err`, e.g. a target without `ndo_xdp_xmit`) or when the target's
//! driver drops the bulk it was handed (`xdp:xdp_devmap_xmit`, e.g. a full ring, or a veth whose
//! peer cannot receive). The loader checks the record offsets against the tracepoints' format.
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use masq_common::{
    Counter, XDP_DEVMAP_XMIT_DROPS, XDP_DEVMAP_XMIT_FROM_IFINDEX, XDP_DEVMAP_XMIT_TO_IFINDEX,
    XDP_REDIRECT_ERR_PROG_ID,
};

use crate::{
    maps::{COUNTERS, XDP_PROG_IDS},
    stats::count,
    steer::{config, uplink_by_ifindex},
};

#[tracepoint]
pub fn masq_xdp_redirect_err(ctx: TracePointContext) -> u32 {
    // SAFETY: the offset lies inside the record (checked by the loader against its format).
    let Ok(prog_id) = (unsafe { ctx.read_at::<u32>(XDP_REDIRECT_ERR_PROG_ID) }) else { return 0 };
    if XDP_PROG_IDS.get(0).is_some_and(|id| *id != 0 && *id == prog_id) {
        count(Counter::DropXdpRedirect);
    }
    0
}

#[tracepoint]
pub fn masq_xdp_xmit(ctx: TracePointContext) -> u32 {
    // SAFETY: as above.
    let read = |offset| unsafe { ctx.read_at::<i32>(offset) }.unwrap_or(0);
    let drops = read(XDP_DEVMAP_XMIT_DROPS);
    if drops <= 0 {
        return 0;
    }
    let (from, to) = (read(XDP_DEVMAP_XMIT_FROM_IFINDEX), read(XDP_DEVMAP_XMIT_TO_IFINDEX));
    // masq redirects from an uplink to the LAN device only.
    let ours = config().is_some_and(|c| c.lan_ifindex == to as u32)
        && uplink_by_ifindex(from as u32).is_some();
    if ours && let Some(slot) = COUNTERS.get_ptr_mut(Counter::DropXdpRedirect as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *slot += drops as u64 };
    }
    0
}
