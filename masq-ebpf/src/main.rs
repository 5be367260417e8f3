//! masq's eBPF programs. Entry points only: each maps its flow's error (a named drop reason) to
//! one counted drop.
#![no_std]
#![no_main]

mod arp;
mod conntrack;
mod csum;
mod forward;
mod from_lan;
mod from_uplink;
mod maps;
mod nat;
mod packet;
mod stats;
mod steer;
mod to_uplink;
mod translate;

use aya_ebpf::{
    bindings::{TC_ACT_SHOT, xdp_action::XDP_DROP},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use masq_common::{Counter, DataplaneConfig};

use crate::{
    conntrack::PortRange,
    packet::{Ipv4, L4, L4_OFF, Parsed},
    stats::count,
};

#[xdp]
pub fn masq_uplink_in(ctx: XdpContext) -> u32 {
    from_uplink::run(ctx).unwrap_or_else(|reason| {
        count(reason);
        XDP_DROP
    })
}

#[classifier]
pub fn masq_lan_in(ctx: TcContext) -> i32 {
    from_lan::run(ctx).unwrap_or_else(|reason| {
        count(reason);
        TC_ACT_SHOT
    })
}

#[classifier]
pub fn masq_uplink_out(ctx: TcContext) -> i32 {
    to_uplink::run(ctx).unwrap_or_else(|reason| {
        count(reason);
        TC_ACT_SHOT
    })
}

/// Parse in TC, pulling the headers into the linear area first when they are not there.
#[inline(always)]
fn parse_tc(ctx: &TcContext) -> Result<Parsed, Counter> {
    const WANT: usize = L4_OFF + 48;
    let linear = ctx.data_end() - ctx.data();
    if linear < WANT && (ctx.len() as usize) > linear {
        let _ = ctx.pull_data(WANT.min(ctx.len() as usize) as u32);
    }
    packet::parse(ctx)
}

/// The source ports a new connection's translated tuple may take when its own is taken.
/// Masqueraded ones (`snat`) stay out of the gateway's own ephemeral ports: a reply to the
/// gateway's sockets must never match a masq connection.
#[inline(always)]
fn port_range(cfg: &DataplaneConfig, ip: &Ipv4, snat: bool) -> Option<PortRange> {
    let (skip_min, skip_max) = if snat { (cfg.port_skip_min, cfg.port_skip_max) } else { (1, 0) };
    // Like Linux NAT: a TCP/UDP port is kept only inside the range; an echo id whenever free.
    let range = |strict| {
        Some(PortRange { min: cfg.port_min, max: cfg.port_max, skip_min, skip_max, strict })
    };
    match ip.l4 {
        L4::Tcp | L4::Udp => range(snat),
        L4::IcmpEcho => range(false),
        _ => None,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
