//! `masq_xdp_pass`: loaded on each device masq's XDP program redirects to. Some drivers (Intel
//! ixgbe, i40e; veth for its peer) transmit redirected frames only while a program is attached.
use aya_ebpf::{bindings::xdp_action::XDP_PASS, macros::xdp, programs::XdpContext};

#[xdp]
pub fn masq_xdp_pass(_ctx: XdpContext) -> u32 {
    XDP_PASS
}
