//! The program-test kit of the BPF_PROG_TEST_RUN tests and the program benchmark: the seed
//! gateway's side of the topology in one namespace, and one runner for a single run of an XDP or
//! TC program (its context, action codes and output).
//!
//! The namespace: eth0/eth1/eth4 as veth pairs (peers `<dev>p` in the same namespace, so the links
//! have carrier) with the MACs of [`crate::seed`], the seed addresses, main's default via ISP B,
//! tables 201/202 as masq builds them, and optionally permanent neighbours, so that every
//! `bpf_fib_lookup` resolves as on the real gateway.
use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};
use aya::programs::{Program, TestRun as _, TestRunOptions};
use ipnet::Ipv4Net;

use crate::{
    frames::{Mac, hex},
    netns::NetNs,
    seed::{
        DSL_TABLE, ETH0_MAC, ETH0_PEER_MAC, ETH1_MAC, ETH1_PEER_MAC, ETH4_MAC, ETH4_PEER_MAC,
        GW_ISP_A, GW_ISP_B, GW_LAN, ISP_A_PREFIX_LEN, ISP_A_ROUTER, ISP_A_ROUTER_MAC,
        ISP_B_PREFIX_LEN, ISP_B_ROUTER, ISP_B_ROUTER_MAC, ISPB_TABLE, LAN_PREFIX_LEN,
    },
};

/// Actions an XDP program returns (`enum xdp_action`).
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_REDIRECT: u32 = 4;
/// Actions a TC program returns (`TC_ACT_*`).
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;
pub const TC_ACT_REDIRECT: u32 = 7;

/// A permanent neighbour: address, MAC, device.
pub type Neighbour<'a> = (Ipv4Addr, Mac, &'a str);

/// gw's devices: name, its MAC, its peer's MAC.
const DEVICES: [(&str, Mac, Mac); 3] = [
    ("eth0", ETH0_MAC, ETH0_PEER_MAC),
    ("eth1", ETH1_MAC, ETH1_PEER_MAC),
    ("eth4", ETH4_MAC, ETH4_PEER_MAC),
];

/// gw's addresses and subnets, device by device.
const ADDRESSES: [(&str, Ipv4Net); 3] = [
    ("eth0", Ipv4Net::new_assert(GW_LAN, LAN_PREFIX_LEN)),
    ("eth1", Ipv4Net::new_assert(GW_ISP_B, ISP_B_PREFIX_LEN)),
    ("eth4", Ipv4Net::new_assert(GW_ISP_A, ISP_A_PREFIX_LEN)),
];

/// Both ISP routers, resolved.
pub const ROUTERS: [Neighbour<'static>; 2] =
    [(ISP_A_ROUTER, ISP_A_ROUTER_MAC, "eth4"), (ISP_B_ROUTER, ISP_B_ROUTER_MAC, "eth1")];

/// `aa:bb:cc:dd:ee:ff`, as `ip` takes it.
pub fn mac_text(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Builds the seed gateway in `ns` (one `ip -batch`, written under `work_dir`).
pub fn build_seed_gateway(ns: &NetNs, neighbours: &[Neighbour], work_dir: &Path) -> Result<()> {
    let mut lines = Vec::new();
    for (dev, mac, peer_mac) in DEVICES {
        lines.push(format!(
            "link add {dev} address {} type veth peer name {dev}p address {}",
            mac_text(mac),
            mac_text(peer_mac)
        ));
        lines.push(format!("link set {dev} up"));
        lines.push(format!("link set {dev}p up"));
    }
    for (dev, net) in ADDRESSES {
        lines.push(format!("addr add {net} dev {dev}"));
    }
    lines.push(format!("route add default via {ISP_B_ROUTER}"));
    for (table, default) in [
        (DSL_TABLE, format!("via {ISP_A_ROUTER} dev eth4")),
        (ISPB_TABLE, format!("via {ISP_B_ROUTER} dev eth1")),
    ] {
        for (dev, net) in ADDRESSES {
            lines.push(format!(
                "route add {} dev {dev} src {} table {table}",
                net.trunc(),
                net.addr()
            ));
        }
        lines.push(format!("route add default {default} table {table}"));
    }
    for (addr, mac, dev) in neighbours {
        lines.push(format!(
            "neigh replace {addr} lladdr {} dev {dev} nud permanent",
            mac_text(*mac)
        ));
    }
    let batch = work_dir.join(format!("{}.ip", ns.name()));
    std::fs::write(&batch, lines.join("\n") + "\n")?;
    let out = Command::new("ip")
        .args(["-n", ns.name(), "-batch"])
        .arg(&batch)
        .output()
        .context("running ip -batch")?;
    let _ = std::fs::remove_file(&batch);
    if !out.status.success() {
        bail!("setting up {}: {}", ns.name(), String::from_utf8_lossy(&out.stderr).trim());
    }
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// Offsets in `struct __sk_buff` (192 bytes) of the fields a test run takes and gives back.
const SKB_LEN: usize = 192;
const SKB_MARK: usize = 8;
const SKB_INGRESS_IFINDEX: usize = 36;
const SKB_IFINDEX: usize = 40;

/// Where a program sees a frame: an XDP program's receiving device, or a TC program's
/// `skb->ingress_ifindex` (the device that received it) and `skb->ifindex` (the one it is at).
#[derive(Clone, Copy, Debug)]
pub enum Ctx {
    Xdp { rx: u32 },
    Tc { ingress: u32, ifindex: u32 },
}

impl Ctx {
    /// The context's bytes for a frame of `frame_len` bytes: `struct xdp_md` (data, data_end,
    /// data_meta, ingress_ifindex, rx_queue_index, egress_ifindex) or `struct __sk_buff`.
    pub fn bytes(self, frame_len: usize) -> Vec<u8> {
        match self {
            Ctx::Xdp { rx } => {
                let md: [u32; 6] = [0, frame_len as u32, 0, rx, 0, 0];
                bytemuck::cast_slice(&md).to_vec()
            }
            Ctx::Tc { ingress, ifindex } => {
                let mut skb = vec![0u8; SKB_LEN];
                skb[SKB_INGRESS_IFINDEX..][..4].copy_from_slice(&ingress.to_ne_bytes());
                skb[SKB_IFINDEX..][..4].copy_from_slice(&ifindex.to_ne_bytes());
                skb
            }
        }
    }
}

/// What one program run returned.
pub struct Run {
    pub ret: u32,
    /// The frame as the program left it.
    pub out: Vec<u8>,
    /// `skb->mark` after the run (TC only; 0 for XDP).
    pub mark: u32,
}

/// One run (repeat 1) of the loaded program `prog` on `frame`, seen as `ctx` says.
pub fn run(prog: &Program, ctx: Ctx, frame: &[u8]) -> Result<Run> {
    let ctx_in = ctx.bytes(frame.len());
    let mut skb_out = [0u8; SKB_LEN];
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx_in),
        ..TestRunOptions::new()
    };
    let result = match (prog, ctx) {
        (Program::Xdp(p), Ctx::Xdp { .. }) => p.test_run(opts),
        (Program::SchedClassifier(p), Ctx::Tc { .. }) => {
            opts.ctx_out = Some(&mut skb_out);
            p.test_run(opts)
        }
        _ => bail!("a {ctx:?} context for a {:?} program", prog.prog_type()),
    }
    .with_context(|| format!("test run ({ctx:?}) of:\n{}", hex(frame)))?;
    out.truncate(result.data_size_out as usize);
    let mark = u32::from_ne_bytes(skb_out[SKB_MARK..][..4].try_into().expect("4 bytes"));
    Ok(Run { ret: result.return_value, out, mark })
}
