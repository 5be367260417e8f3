//! The seed gateway's side of the topology in one namespace, for the BPF_PROG_TEST_RUN program
//! tests and the program benchmark: eth0/eth1/eth4 as veth pairs (peers `<dev>p` in the same
//! namespace, so the links have carrier), the seed addresses, main's default via ISP B, tables
//! 201/202 as masq builds them, and optionally permanent neighbours, so that every
//! `bpf_fib_lookup` resolves as on the real gateway.
use std::{net::Ipv4Addr, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::{frames::Mac, netns::NetNs};

/// One of gw's devices: name, its MAC, its peer's MAC.
pub type Device<'a> = (&'a str, Mac, Mac);

/// A permanent neighbour: address, MAC, device.
pub type Neighbour<'a> = (Ipv4Addr, Mac, &'a str);

fn mac_text(mac: Mac) -> String {
    mac.map(|b| format!("{b:02x}")).join(":")
}

/// Builds the seed gateway in `ns` (one `ip -batch`, written under `work_dir`).
pub fn build_seed_gateway(
    ns: &NetNs,
    devices: [Device; 3],
    neighbours: &[Neighbour],
    work_dir: &Path,
) -> Result<()> {
    let mut lines = Vec::new();
    for (dev, mac, peer_mac) in devices {
        lines.push(format!(
            "link add {dev} address {} type veth peer name {dev}p address {}",
            mac_text(mac),
            mac_text(peer_mac)
        ));
        lines.push(format!("link set {dev} up"));
        lines.push(format!("link set {dev}p up"));
    }
    lines.extend(
        [
            "addr add 192.168.100.254/24 dev eth0",
            "addr add 205.254.211.179/24 dev eth1",
            "addr add 67.17.28.12/28 dev eth4",
            "route add default via 205.254.211.254",
        ]
        .map(String::from),
    );
    for (table, default) in
        [(201, "via 67.17.28.14 dev eth4"), (202, "via 205.254.211.254 dev eth1")]
    {
        for connected in [
            "192.168.100.0/24 dev eth0 src 192.168.100.254",
            "205.254.211.0/24 dev eth1 src 205.254.211.179",
            "67.17.28.0/28 dev eth4 src 67.17.28.12",
        ] {
            lines.push(format!("route add {connected} table {table}"));
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
