//! The eBPF side of the loader: load the object, fill the maps from the config, attach the
//! programs, pin the maps for the CLI, and take it all down again.
use std::{
    fs,
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, anyhow, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData},
    programs::{SchedClassifier, TcAttachType, Xdp, XdpMode, tc},
};
use ipnet::Ipv4Net;
use masq_common::{
    CFG_F_FAST_PATH, CFG_F_NO_STEER, DataplaneConfig, MAX_CHOICES, MAX_LAN_PREFIXES,
    POLICY_F_STICKY, PolicyRule, Prefix4, PublicAddr, PublishKey, PublishTarget, UPLINK_F_ENABLED,
    UPLINK_F_UP, UplinkInfo, map_names, program_names,
};

use crate::{
    config::{Config, Policy},
    host::HostInterfaces,
};

/// The compiled eBPF object (built by build.rs from masq-ebpf).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/masq"));

/// An IPv4 address as the dataplane stores it: network byte order in memory.
pub fn wire_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// A port as the dataplane stores it: network byte order in memory.
pub fn wire_port(port: u16) -> u16 {
    port.to_be()
}

pub fn wire_prefix(net: Ipv4Net) -> Prefix4 {
    Prefix4 {
        addr: wire_addr(net.network()),
        mask: wire_addr(net.netmask()),
    }
}

/// `CONFIG[0]`.
pub fn dataplane_config(cfg: &Config, lan_ifindex: u32) -> anyhow::Result<DataplaneConfig> {
    if cfg.lan.prefixes.len() > MAX_LAN_PREFIXES {
        bail!("lan.prefixes: at most {MAX_LAN_PREFIXES} prefixes");
    }
    let mut lan_prefixes = [Prefix4::default(); MAX_LAN_PREFIXES];
    for (slot, net) in lan_prefixes.iter_mut().zip(&cfg.lan.prefixes) {
        *slot = wire_prefix(*net);
    }
    let dp = &cfg.dataplane;
    Ok(DataplaneConfig {
        lan_ifindex,
        mark_mask: dp.mark_mask,
        flags: if dp.fast_path { CFG_F_FAST_PATH } else { 0 }
            | if dp.steer { 0 } else { CFG_F_NO_STEER },
        port_min: dp.port_min,
        port_max: dp.port_max,
        lan_prefixes,
        lan_prefix_count: cfg.lan.prefixes.len() as u32,
        policy_count: cfg.policies.len() as u32,
    })
}

/// `POLICIES[i]`.
pub fn policy_rule(policy: &Policy) -> PolicyRule {
    let any = Ipv4Net::default();
    let (port_min, port_max) = policy.ports.unwrap_or((0, u16::MAX));
    let mut rule = PolicyRule {
        from: wire_prefix(policy.from.unwrap_or(any)),
        to: wire_prefix(policy.to.unwrap_or(any)),
        port_min,
        port_max,
        proto: policy.proto.map_or(0, |p| p.number()),
        choice_count: policy.choices.len().min(MAX_CHOICES) as u8,
        flags: if policy.sticky { POLICY_F_STICKY } else { 0 },
        ..PolicyRule::default()
    };
    for (i, (uplink, weight)) in policy.choices.iter().take(MAX_CHOICES).enumerate() {
        rule.uplinks[i] = *uplink as u8;
        rule.weights[i] = *weight;
    }
    rule
}

/// `PUBLISH` entries.
pub fn publish_entries(cfg: &Config) -> Vec<(PublishKey, PublishTarget)> {
    cfg.publish
        .iter()
        .map(|p| {
            let key = PublishKey {
                addr: wire_addr(p.address),
                port: p.port.map_or(0, wire_port),
                proto: if p.port.is_some() {
                    p.proto.map_or(0, |x| x.number())
                } else {
                    0
                },
                _pad: 0,
            };
            let target = PublishTarget {
                to_addr: wire_addr(p.to),
                to_port: p.to_port.map_or(0, wire_port),
                uplink: p.uplink as u8,
                _pad: 0,
            };
            (key, target)
        })
        .collect()
}

/// `UPLINKS[i]`.
pub fn uplink_infos(cfg: &Config, host: &HostInterfaces) -> anyhow::Result<Vec<UplinkInfo>> {
    cfg.uplinks
        .iter()
        .map(|u| {
            let iface = host
                .get(&u.interface)
                .ok_or_else(|| anyhow!("uplink {}: interface {} not found", u.name, u.interface))?;
            let mac = iface.mac.ok_or_else(|| {
                anyhow!("uplink {}: interface {} has no MAC", u.name, u.interface)
            })?;
            Ok(UplinkInfo {
                ifindex: iface.index,
                address: wire_addr(u.address),
                gateway: wire_addr(u.gateway),
                mark: u.mark,
                table: u.table,
                mac,
                flags: UPLINK_F_ENABLED | UPLINK_F_UP,
                _pad: 0,
            })
        })
        .collect()
}

/// The loaded programs and maps. Dropping it detaches the programs.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
}

/// Mount bpffs at /sys/fs/bpf when it is not mounted yet.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf"))
    {
        return Ok(());
    }
    let status = std::process::Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .context("running mount -t bpf")?;
    if !status.success() {
        bail!("could not mount bpffs at /sys/fs/bpf");
    }
    Ok(())
}

impl Dataplane {
    /// Load the programs with the connection table sized from the config.
    pub fn load(cfg: &Config, pin_dir: &Path) -> anyhow::Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!("this masq binary was built without its eBPF programs (AYA_BUILD_SKIP)");
        }
        let ebpf = EbpfLoader::new()
            .map_max_entries(
                map_names::CONNS,
                cfg.dataplane.conn_capacity.saturating_mul(2),
            )
            .load(EBPF_OBJECT)
            .context("loading the eBPF object (is this kernel built with BPF and BTF?)")?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
        })
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Write the config into the maps.
    pub fn fill_maps(&mut self, cfg: &Config, host: &HostInterfaces) -> anyhow::Result<()> {
        let lan = host
            .get(&cfg.lan.interface)
            .ok_or_else(|| anyhow!("lan.interface: {} not found", cfg.lan.interface))?;
        let global = dataplane_config(cfg, lan.index)?;
        let uplinks = uplink_infos(cfg, host)?;

        let mut map: Array<_, UplinkInfo> = Array::try_from(self.map_mut(map_names::UPLINKS)?)?;
        for (i, info) in uplinks.iter().enumerate() {
            map.set(i as u32, info, 0)
                .with_context(|| format!("UPLINKS[{i}]"))?;
        }
        let mut map: Array<_, PolicyRule> = Array::try_from(self.map_mut(map_names::POLICIES)?)?;
        for (i, policy) in cfg.policies.iter().enumerate() {
            map.set(i as u32, policy_rule(policy), 0)
                .with_context(|| format!("POLICIES[{i}]"))?;
        }
        let mut map: HashMap<_, PublishKey, PublishTarget> =
            HashMap::try_from(self.map_mut(map_names::PUBLISH)?)?;
        for (key, target) in publish_entries(cfg) {
            map.insert(key, target, 0).context("PUBLISH")?;
        }
        let mut map: HashMap<_, u32, PublicAddr> =
            HashMap::try_from(self.map_mut(map_names::PUBLIC_ADDRS)?)?;
        for p in &cfg.publish {
            let owner = PublicAddr {
                uplink: p.uplink as u8,
                _pad: [0; 3],
            };
            map.insert(wire_addr(p.address), owner, 0)
                .context("PUBLIC_ADDRS")?;
        }
        // Last: the programs act only once CONFIG is set.
        let mut map: Array<_, DataplaneConfig> = Array::try_from(self.map_mut(map_names::CONFIG)?)?;
        map.set(0, global, 0).context("CONFIG")?;
        Ok(())
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }

    /// Pin every map under the pin directory (root-only), so the CLI can read them.
    pub fn pin_maps(&mut self) -> anyhow::Result<()> {
        ensure_bpffs()?;
        fs::create_dir_all(&self.pin_dir)
            .with_context(|| format!("creating pin directory {}", self.pin_dir.display()))?;
        fs::set_permissions(&self.pin_dir, fs::Permissions::from_mode(0o700))?;
        let dir = self.pin_dir.clone();
        for (name, map) in self.ebpf.maps_mut() {
            let path = dir.join(name);
            let _ = fs::remove_file(&path);
            map.pin(&path)
                .with_context(|| format!("pinning map {name} at {}", path.display()))?;
        }
        Ok(())
    }

    /// Attach: XDP on each uplink (ingress), TC on the LAN device (ingress) and on each uplink
    /// (egress). The links live as long as this value.
    pub fn attach(&mut self, cfg: &Config) -> anyhow::Result<()> {
        let xdp: &mut Xdp = self
            .ebpf
            .program_mut(program_names::UPLINK_INGRESS)
            .context("program missing")?
            .try_into()?;
        xdp.load()
            .context("loading the uplink XDP program (verifier)")?;
        for u in &cfg.uplinks {
            if xdp.attach(&u.interface, XdpMode::Driver).is_err() {
                xdp.attach(&u.interface, XdpMode::Skb).with_context(|| {
                    format!("attaching XDP to uplink {} ({})", u.name, u.interface)
                })?;
            }
        }
        let lan_in: &mut SchedClassifier = self
            .ebpf
            .program_mut(program_names::LAN_INGRESS)
            .context("program missing")?
            .try_into()?;
        lan_in
            .load()
            .context("loading the LAN TC program (verifier)")?;
        let _ = tc::qdisc_add_clsact(&cfg.lan.interface);
        lan_in
            .attach(&cfg.lan.interface, TcAttachType::Ingress)
            .with_context(|| {
                format!(
                    "attaching TC ingress to LAN interface {}",
                    cfg.lan.interface
                )
            })?;
        let out: &mut SchedClassifier = self
            .ebpf
            .program_mut(program_names::UPLINK_EGRESS)
            .context("program missing")?
            .try_into()?;
        out.load()
            .context("loading the uplink egress TC program (verifier)")?;
        for u in &cfg.uplinks {
            let _ = tc::qdisc_add_clsact(&u.interface);
            out.attach(&u.interface, TcAttachType::Egress)
                .with_context(|| {
                    format!("attaching TC egress to uplink {} ({})", u.name, u.interface)
                })?;
        }
        Ok(())
    }

    /// Remove the pins (the programs detach when `self` drops).
    pub fn unpin(&self) -> anyhow::Result<()> {
        remove_pins(&self.pin_dir)
    }

    /// The CONNS map, for expiry.
    pub fn conns(&mut self) -> anyhow::Result<&mut aya::maps::Map> {
        self.map_mut(map_names::CONNS)
    }
}

/// Delete a pin directory and everything pinned in it.
pub fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                fs::remove_file(&path).with_context(|| format!("unpinning {}", path.display()))?;
            }
            fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))?;
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("reading {}", dir.display())),
    }
}

/// Open a pinned map by name, for the CLI.
pub fn open_pinned(dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!(
            "opening {} (is masq running with --pin-dir {}?)",
            path.display(),
            dir.display()
        )
    })
}
