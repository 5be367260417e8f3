//! masq's eBPF programs, one file per program: `uplink_in` (`masq_uplink_in`, `_l3`, `_xdp`),
//! `lan_in` (`masq_lan_in`), `uplink_out` (`masq_uplink_out`, `_l3`), `xdp_pass`
//! (`masq_xdp_pass`), `xdp_errors` (tracepoints counting lost redirects); `expire`
//! (`masq_expire`, the daemon's expiry pass, which it runs), `floor` (the benchmark's floor
//! programs) and `cost` (pieces timed alone), never attached. Each entry
//! point is a thin hook layer (`hook`) over one body that returns a `Verdict` or a named drop
//! reason; `validate` checks every packet before anything is looked up or created. The attached
//! entry points are `#[inline(always)]`: aya's macros wrap each in the program's own function,
//! and the BPF-to-BPF call between the two cost 10–17 ns a packet on an AMD EPYC host.
#![no_std]
#![no_main]
// BPF load and store instructions in `packet.rs`.
#![feature(asm_experimental_arch)]

mod arp;
mod binding;
mod conntrack;
mod cost;
mod csum;
mod events;
mod expire;
mod floor;
mod forward;
mod hook;
mod lan_in;
mod maps;
mod nat;
mod packet;
mod stats;
mod steer;
mod trace;
mod translate;
mod uplink_in;
mod uplink_out;
mod validate;
mod xdp_errors;
mod xdp_pass;

use masq_common::DataplaneConfig;

use crate::{
    conntrack::PortRange,
    packet::{Ipv4, L4},
};

/// The source ports a new connection's translated tuple may take when its own is taken.
/// Masqueraded ones (`snat`) stay out of the gateway's own ephemeral ports: a reply to the
/// gateway's sockets must never match a masq connection.
#[inline(always)]
fn port_range(cfg: &DataplaneConfig, ip: &Ipv4, snat: bool) -> Option<PortRange> {
    let (skip_min, skip_max) = if snat { (cfg.port_skip_min, cfg.port_skip_max) } else { (1, 0) };
    // Like Linux NAT: a TCP/UDP port is kept only inside the range; an echo id whenever free.
    let range = |strict| {
        let (min, max) = (cfg.port_min, cfg.port_max);
        Some(PortRange { min, max, skip_min, skip_max, strict, bound: false })
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
