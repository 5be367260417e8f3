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
    maps::{Array, HashMap, MapData, MapType, PerCpuArray, PerCpuValues},
    programs::{
        SchedClassifier, TcAttachType, TracePoint, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use ipnet::Ipv4Net;
use masq_common::{
    Binding, BindingKey, BoundPortKey, CFG_F_EVENTS, CFG_F_FAST_PATH, CFG_F_NO_HAIRPIN,
    CFG_F_NO_STEER, CFG_F_NO_VALIDATE, ConnEntry, Counter, DataplaneConfig, FlowKey, FragKey,
    FragXlate, MAX_CHOICES, MAX_LAN_PREFIXES, MAX_POLICIES, MAX_UPLINKS, NextHop, POLICY_F_STICKY,
    PUBLIC_F_PORTS, PUBLIC_F_WHOLE, PolicyRule, Prefix4, PublicAddr, PublishKey, PublishTarget,
    UPLINK_F_ENABLED, UPLINK_F_UDP_OPEN_FILTER, UPLINK_F_UP, UplinkInfo, UplinkStats,
    XDP_DEVMAP_XMIT_DROPS, XDP_DEVMAP_XMIT_FROM_IFINDEX, XDP_DEVMAP_XMIT_TO_IFINDEX,
    XDP_REDIRECT_ERR_PROG_ID, map_names, program_names,
};
use tracing::warn;

use crate::{
    config::{Config, Policy, Uplink},
    conntrack::{Conn, ConnTable, ConnTables, EndReason},
    follow::UplinkState,
    hooks::{self, DeviceFacts, HookChoice, HookPoint},
    host::HostInterfaces,
    links::{self, link_pin_name, parse_link_pin},
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
    Prefix4 { addr: wire_addr(net.network()), mask: wire_addr(net.netmask()) }
}

/// `CONFIG[0]`. `local_ports`: the gateway's own ephemeral ports, never used for SNAT.
pub fn dataplane_config(
    cfg: &Config,
    lan_ifindex: u32,
    local_ports: Option<(u16, u16)>,
) -> anyhow::Result<DataplaneConfig> {
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
            | if dp.steer { 0 } else { CFG_F_NO_STEER }
            | if dp.validate { 0 } else { CFG_F_NO_VALIDATE }
            | if dp.hairpin { 0 } else { CFG_F_NO_HAIRPIN },
        port_min: dp.port_min,
        port_max: dp.port_max,
        lan_prefixes,
        lan_prefix_count: cfg.lan.prefixes.len() as u32,
        policy_count: cfg.policies.len() as u32,
        port_skip_min: local_ports.map_or(1, |(min, _)| min),
        port_skip_max: local_ports.map_or(0, |(_, max)| max),
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
    for (i, choice) in policy.choices.iter().take(MAX_CHOICES).enumerate() {
        rule.uplinks[i] = choice.uplink as u8;
        rule.weights[i] = choice.weight;
        rule.tiers[i] = choice.tier;
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
                proto: if p.port.is_some() { p.proto.map_or(0, |x| x.number()) } else { 0 },
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

/// `UPLINKS[i]`: a live uplink takes connections unless `up[i]` is false (its health says
/// down); one that is absent or waiting is only enabled (policies skip it, its connections
/// wait). An empty `up` holds nothing down.
pub fn uplink_infos(cfg: &Config, states: &[UplinkState], up: &[bool]) -> Vec<UplinkInfo> {
    cfg.uplinks
        .iter()
        .zip(states)
        .enumerate()
        .map(|(i, (u, state))| {
            let up = if up.get(i).copied().unwrap_or(true) { UPLINK_F_UP } else { 0 };
            let open = if u.udp_open_filtering { UPLINK_F_UDP_OPEN_FILTER } else { 0 };
            let base = UplinkInfo {
                mark: u.mark,
                table: u.table,
                flags: UPLINK_F_ENABLED | open,
                ..UplinkInfo::default()
            };
            match state.live() {
                // An L3 device has no MAC; its programs never use it.
                Some(live) => UplinkInfo {
                    ifindex: live.ifindex,
                    address: wire_addr(live.address),
                    gateway: live.gateway.map_or(0, wire_addr),
                    mac: live.mac,
                    flags: UPLINK_F_ENABLED | up | open,
                    ..base
                },
                None => base,
            }
        })
        .collect()
}

type BindingMap<'a> = HashMap<&'a mut MapData, BindingKey, Binding>;
type BoundPortMap<'a> = HashMap<&'a mut MapData, BoundPortKey, BindingKey>;

/// The loaded programs and maps. Dropping it detaches the programs.
pub struct Dataplane {
    ebpf: Ebpf,
    pin_dir: PathBuf,
    /// This process attached the lost-redirect tracepoints (a re-attach keeps them).
    lost_redirects_counted: bool,
    /// Connections removed by `remove_conns` and not yet reported (`take_removed`).
    removed: Vec<(Conn, EndReason)>,
}

const BPFFS: &str = "/sys/fs/bpf";
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into `buf`, which outlives the call.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c_path.as_ptr(), &mut buf) } == 0) && buf.f_type as i64 == BPF_FS_MAGIC
}

fn mount_ns(pid: u32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which ends with the last ')'.
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The nearest ancestor in another mount namespace than ours (`ip netns exec`, a container,
/// systemd sandboxing make one), if any.
fn ancestor_outside_mount_ns() -> Option<u32> {
    let own = mount_ns(std::process::id())?;
    let mut pid = parent_of(std::process::id())?;
    for _ in 0..64 {
        if pid == 0 {
            return None;
        }
        if mount_ns(pid).is_some_and(|ns| ns != own) {
            return Some(pid);
        }
        pid = parent_of(pid)?;
    }
    None
}

/// Make /sys/fs/bpf a bpffs that outlives this process, so every masq command sees the same
/// dataplane wherever it runs. A bpffs there already is used. In a private mount namespace
/// without one (`ip netns exec` mounts a fresh /sys, where a new bpffs would be private and die
/// with the process) masq joins the mount namespace it was started from, when that has one,
/// and refuses otherwise. On the host, one is mounted.
pub fn ensure_bpffs() -> anyhow::Result<()> {
    let here = Path::new(BPFFS);
    if is_bpffs(here) {
        return Ok(());
    }
    let Some(pid) = ancestor_outside_mount_ns() else {
        let status = std::process::Command::new("mount")
            .args(["-t", "bpf", "bpf", BPFFS])
            .status()
            .context("running mount -t bpf")?;
        if !status.success() {
            bail!("could not mount bpffs at {BPFFS}");
        }
        return Ok(());
    };
    let outside = PathBuf::from(format!("/proc/{pid}/root{BPFFS}"));
    if !is_bpffs(&outside) {
        bail!(
            "masq runs in a private mount namespace (such as `ip netns exec` makes) and the \
             namespace it was started from has no bpffs at {BPFFS}, so its pins would die with \
             the process: mount it there first (`mount -t bpf bpf {BPFFS}`), or start masq \
             with `nsenter --net=/run/netns/NAME` instead"
        );
    }
    // A bind mount cannot cross mount namespaces: join that namespace instead (only possible
    // while single-threaded, which is why `main` calls this first). The working directory
    // follows by path.
    let cwd = std::env::current_dir().ok();
    let ns =
        fs::File::open(format!("/proc/{pid}/ns/mnt")).context("opening its mount namespace")?;
    // SAFETY: setns(2) on a valid fd; it changes only this (single-threaded) process.
    if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNS) } != 0 {
        bail!(
            "joining the mount namespace of pid {pid}, which has the host's bpffs: {}",
            std::io::Error::last_os_error()
        );
    }
    if let Some(cwd) = cwd {
        let _ = std::env::set_current_dir(cwd);
    }
    Ok(())
}

impl Dataplane {
    /// Load the programs. Maps are pinned under `pin_dir` as they are created; maps already
    /// pinned there (a previous run) are adopted, connection table included, after checking that
    /// their layout is the one this build expects.
    pub fn load(cfg: &Config, pin_dir: &Path) -> anyhow::Result<Self> {
        if EBPF_OBJECT.is_empty() {
            bail!("this masq binary was built without its eBPF programs (AYA_BUILD_SKIP)");
        }
        ensure_bpffs()?;
        fs::create_dir_all(pin_dir)
            .with_context(|| format!("creating pin directory {}", pin_dir.display()))?;
        fs::set_permissions(pin_dir, fs::Permissions::from_mode(0o700))?;
        check_pinned_layout(pin_dir)?;
        let pin_paths: Vec<(&str, PathBuf)> =
            MAP_LAYOUTS.iter().map(|m| (m.name, pin_dir.join(m.name))).collect();
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_names::CONNS, cfg.dataplane.conn_capacity.saturating_mul(2));
        loader.map_max_entries(
            map_names::PENDING_CONNS,
            cfg.dataplane.pending_capacity.saturating_mul(2),
        );
        // A binding per internal endpoint with connections: never more than the connections.
        let bindings = cfg.dataplane.conn_capacity.saturating_add(cfg.dataplane.pending_capacity);
        loader.map_max_entries(map_names::BINDINGS, bindings);
        loader.map_max_entries(map_names::BOUND_PORTS, bindings);
        loader.map_max_entries(map_names::EVENTS, cfg.events.ring_bytes);
        // Below this level the programs' tracing calls are dead code the verifier removes.
        let trace_level = cfg.dataplane.trace.aya_level();
        loader.override_global(aya_log::LEVEL, &trace_level, true);
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let ebpf = loader
            .load(EBPF_OBJECT)
            .context("loading the eBPF object (is this kernel built with BPF and BTF?)")?;
        Ok(Self {
            ebpf,
            pin_dir: pin_dir.to_path_buf(),
            lost_redirects_counted: false,
            removed: Vec::new(),
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn ebpf(&self) -> &Ebpf {
        &self.ebpf
    }

    pub fn ebpf_mut(&mut self) -> &mut Ebpf {
        &mut self.ebpf
    }

    /// Write the config into the maps, replacing what a previous config (or run) left there.
    /// `states`: each uplink as [`crate::follow::resolve_all`] found it.
    pub fn fill_maps(
        &mut self,
        cfg: &Config,
        host: &HostInterfaces,
        states: &[UplinkState],
        up: &[bool],
    ) -> anyhow::Result<()> {
        let lan = host
            .get(&cfg.lan.interface)
            .ok_or_else(|| anyhow!("lan.interface: {} not found", cfg.lan.interface))?;
        let global = dataplane_config(cfg, lan.index, crate::local_ports::current())?;
        let uplinks = uplink_infos(cfg, states, up);

        let mut map: Array<_, UplinkInfo> = Array::try_from(self.map_mut(map_names::UPLINKS)?)?;
        for i in 0..MAX_UPLINKS {
            let info = uplinks.get(i).copied().unwrap_or_default();
            map.set(i as u32, info, 0).with_context(|| format!("UPLINKS[{i}]"))?;
        }
        let mut map: Array<_, PolicyRule> = Array::try_from(self.map_mut(map_names::POLICIES)?)?;
        for i in 0..MAX_POLICIES {
            let rule = cfg.policies.get(i).map(policy_rule).unwrap_or_default();
            map.set(i as u32, rule, 0).with_context(|| format!("POLICIES[{i}]"))?;
        }
        let entries = publish_entries(cfg);
        let mut map: HashMap<_, PublishKey, PublishTarget> =
            HashMap::try_from(self.map_mut(map_names::PUBLISH)?)?;
        for (key, target) in &entries {
            map.insert(key, target, 0).context("PUBLISH")?;
        }
        let stale: Vec<PublishKey> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !entries.iter().any(|(key, _)| key == k))
            .collect();
        for key in stale {
            map.remove(&key).context("PUBLISH")?;
        }
        let mut map: HashMap<_, u32, PublicAddr> =
            HashMap::try_from(self.map_mut(map_names::PUBLIC_ADDRS)?)?;
        for p in &cfg.publish {
            let flags =
                cfg.publish.iter().filter(|q| q.address == p.address).fold(0, |f, q| {
                    f | if q.port.is_some() { PUBLIC_F_PORTS } else { PUBLIC_F_WHOLE }
                });
            let owner = PublicAddr { uplink: p.uplink as u8, flags, _pad: [0; 2] };
            map.insert(wire_addr(p.address), owner, 0).context("PUBLIC_ADDRS")?;
        }
        let stale: Vec<u32> = map
            .keys()
            .filter_map(Result::ok)
            .filter(|a| !cfg.publish.iter().any(|p| wire_addr(p.address) == *a))
            .collect();
        for addr in stale {
            map.remove(&addr).context("PUBLIC_ADDRS")?;
        }
        // Last: the programs act only once CONFIG is set. Whether events are reported is the
        // daemon's to say (`set_events`), and stays as it was.
        let mut map: Array<_, DataplaneConfig> = Array::try_from(self.map_mut(map_names::CONFIG)?)?;
        let events = map.get(&0, 0).map_or(0, |old| old.flags & CFG_F_EVENTS);
        let global = DataplaneConfig { flags: global.flags | events, ..global };
        map.set(0, global, 0).context("CONFIG")?;
        Ok(())
    }

    /// Load the programs the attached ones tail-call and put them in `TAIL_CALLS`
    /// (`masq_lan_in_new` and `masq_lan_in_hairpin`, which open LAN hosts' connections). Before
    /// `masq_lan_in` runs.
    pub fn link_tail_calls(&mut self) -> anyhow::Result<()> {
        for (slot, name) in [
            (masq_common::TAIL_LAN_NEW, program_names::LAN_INGRESS_NEW),
            (masq_common::TAIL_LAN_HAIRPIN, program_names::LAN_INGRESS_HAIRPIN),
        ] {
            let tc: &mut SchedClassifier = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("program {name} missing"))?
                .try_into()?;
            if tc.fd().is_err() {
                tc.load().with_context(|| format!("loading {name} (verifier)"))?;
            }
            let fd = tc.fd()?.try_clone()?;
            let mut slots: aya::maps::ProgramArray<_> =
                aya::maps::ProgramArray::try_from(self.map_mut(map_names::TAIL_CALLS)?)?;
            slots.set(slot, &fd, 0).context("TAIL_CALLS")?;
        }
        Ok(())
    }

    /// Report new connections in `EVENTS` (`CFG_F_EVENTS`), or stop.
    pub fn set_events(&mut self, on: bool) -> anyhow::Result<()> {
        let mut map: Array<_, DataplaneConfig> = Array::try_from(self.map_mut(map_names::CONFIG)?)?;
        let mut cfg = map.get(&0, 0).context("CONFIG")?;
        cfg.flags = if on { cfg.flags | CFG_F_EVENTS } else { cfg.flags & !CFG_F_EVENTS };
        map.set(0, cfg, 0).context("CONFIG")?;
        Ok(())
    }

    /// The ring buffer the programs report new connections in, taken out for its one reader.
    pub fn take_events(&mut self) -> anyhow::Result<aya::maps::RingBuf<MapData>> {
        let map = self.ebpf.take_map(map_names::EVENTS).context("no EVENTS map")?;
        Ok(aya::maps::RingBuf::try_from(map)?)
    }

    fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf.map_mut(name).ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))
    }

    /// Attach every program where `hooks.rs` says, all as pinned links: TC on the LAN device
    /// (ingress), on each uplink (egress, and ingress unless XDP runs there), XDP where it is
    /// safe with the pass-through program on the LAN device it redirects to. A link pinned by a
    /// previous run is kept and its program replaced atomically, so traffic never sees a gap;
    /// one whose device is gone is replaced. Returns what runs where and why.
    pub fn attach(
        &mut self,
        cfg: &Config,
        host: &HostInterfaces,
    ) -> anyhow::Result<Vec<HookChoice>> {
        self.link_tail_calls()?;
        let mode = cfg.dataplane.xdp;
        let lan_name = cfg.lan.interface.as_str();
        let lan =
            host.get(lan_name).with_context(|| format!("lan.interface: {lan_name} not found"))?;
        let mut plan = vec![HookChoice::new(lan_name, program_names::LAN_INGRESS, "LAN ingress")];
        // An uplink whose interface is gone gets its programs when it comes back.
        let (present, uplink_facts): (Vec<&Uplink>, Vec<DeviceFacts>) = cfg
            .uplinks
            .iter()
            .filter_map(|u| Some((u, DeviceFacts::read(host.get(&u.interface)?))))
            .unzip();
        // The LAN device gets the pass-through program first, so that redirects into it work
        // from the first packet and its xdp_features tell whether it can take them.
        let any_xdp = uplink_facts.iter().any(|f| hooks::uplink_refusal(mode, f).is_none());
        let mut lan_facts = DeviceFacts::read(lan);
        let mut lan_refusal = None;
        if any_xdp {
            let pass =
                HookChoice::new(lan_name, program_names::XDP_PASS, "target of XDP redirects");
            match self.attach_one(&pass) {
                Ok(()) => {
                    lan_facts = DeviceFacts::read(lan);
                    plan.push(pass);
                }
                Err(e) => lan_refusal = Some(format!("{lan_name} refused native XDP: {e:#}")),
            }
        }
        let mut xdp_used = false;
        for (u, facts) in present.into_iter().zip(&uplink_facts) {
            let mut refusal = lan_refusal
                .clone()
                .or_else(|| hooks::xdp_refusal(mode, facts, &lan_facts, lan_name));
            hooks::require_xdp(mode, &u.name, refusal.as_deref())?;
            let (tc_in, tc_out) = hooks::uplink_tc(facts.l3);
            if refusal.is_none() {
                let reason = format!("native XDP ({}, xdp = {mode:?})", facts.driver);
                let choice =
                    HookChoice::new(&u.interface, program_names::UPLINK_INGRESS_XDP, reason);
                match self.attach_one(&choice) {
                    Ok(()) => {
                        plan.push(choice);
                        xdp_used = true;
                    }
                    Err(e) => {
                        let why = format!("native XDP attach failed: {e:#}");
                        hooks::require_xdp(mode, &u.name, Some(&why))?;
                        refusal = Some(why);
                    }
                }
            }
            if let Some(why) = refusal {
                plan.push(HookChoice::new(&u.interface, tc_in, format!("TC: {why}")));
            }
            plan.push(HookChoice::new(&u.interface, tc_out, "uplink egress"));
        }
        if !xdp_used {
            plan.retain(|c| c.program != program_names::XDP_PASS);
        }
        if let Err(e) = self.count_lost_redirects(xdp_used) {
            warn!("failed XDP redirects will not be counted: {e:#}");
        }
        for choice in &plan {
            if choice.hook != HookPoint::Xdp {
                self.attach_one(choice)?;
            }
        }
        self.detach_others(&plan)?;
        Ok(plan)
    }

    /// While XDP runs, attach the tracepoints that count redirects the kernel lost
    /// (`drop_xdp_redirect`), pinned so they outlive the daemon as the XDP link does.
    fn count_lost_redirects(&mut self, xdp_used: bool) -> anyhow::Result<()> {
        let prog_id = match self.ebpf.program(program_names::UPLINK_INGRESS_XDP) {
            Some(aya::programs::Program::Xdp(xdp)) if xdp_used => xdp.info()?.id(),
            _ => 0,
        };
        let mut ids: Array<_, u32> = Array::try_from(self.map_mut(map_names::XDP_PROG_IDS)?)?;
        ids.set(0, prog_id, 0).context("XDP_PROG_IDS")?;
        if xdp_used && self.lost_redirects_counted {
            return Ok(());
        }
        let tracepoints: [(&str, &str, TraceFields); 2] = [
            (
                program_names::XDP_REDIRECT_ERR,
                "xdp_redirect_err",
                &[("prog_id", XDP_REDIRECT_ERR_PROG_ID)],
            ),
            (
                program_names::XDP_XMIT,
                "xdp_devmap_xmit",
                &[
                    ("from_ifindex", XDP_DEVMAP_XMIT_FROM_IFINDEX),
                    ("to_ifindex", XDP_DEVMAP_XMIT_TO_IFINDEX),
                    ("drops", XDP_DEVMAP_XMIT_DROPS),
                ],
            ),
        ];
        for (program, event, fields) in tracepoints {
            let pin = self.pin_dir.join(format!("tracepoint-{program}"));
            // A pinned one from an earlier run may be an older build: attach anew.
            let _ = fs::remove_file(&pin);
            if !xdp_used {
                continue;
            }
            check_trace_format(event, fields)?;
            let tp: &mut TracePoint = self
                .ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} missing"))?
                .try_into()?;
            if tp.fd().is_err() {
                tp.load().with_context(|| format!("loading {program} (verifier)"))?;
            }
            let id =
                tp.attach("xdp", event).with_context(|| format!("attaching to xdp:{event}"))?;
            pin_link(FdLink::try_from(tp.take_link(id)?)?, &pin)?;
        }
        self.lost_redirects_counted = xdp_used;
        Ok(())
    }

    /// Attach one program (loading it first), adopting the link a previous run pinned for it.
    fn attach_one(&mut self, choice: &HookChoice) -> anyhow::Result<()> {
        let pin = self.pin_dir.join(link_pin_name(&choice.program, &choice.interface));
        let iface = choice.interface.as_str();
        let program = self
            .ebpf
            .program_mut(&choice.program)
            .with_context(|| format!("program {} missing", choice.program))?;
        let loading = || format!("loading {} (verifier)", choice.program);
        let link: FdLink = if choice.hook == HookPoint::Xdp {
            let xdp: &mut Xdp = program.try_into()?;
            if xdp.fd().is_err() {
                xdp.load().with_context(loading)?;
            }
            let id = adopt_or_attach(
                xdp,
                &pin,
                |xdp, old| Ok(xdp.attach_to_link(XdpLink::try_from(old)?)?),
                |xdp| {
                    xdp.attach(iface, XdpMode::Driver).with_context(|| {
                        format!("attaching {} to {iface} (native XDP)", choice.program)
                    })
                },
            )?;
            FdLink::try_from(xdp.take_link(id)?)?
        } else {
            let attach_type = if choice.hook == HookPoint::TcIngress {
                TcAttachType::Ingress
            } else {
                TcAttachType::Egress
            };
            let tc: &mut SchedClassifier = program.try_into()?;
            if tc.fd().is_err() {
                tc.load().with_context(loading)?;
            }
            let id = adopt_or_attach(
                tc,
                &pin,
                |tc, old| Ok(tc.attach_to_link(SchedClassifierLink::try_from(old)?)?),
                |tc| {
                    tc.attach(iface, attach_type)
                        .with_context(|| format!("attaching {} to {iface}", choice.program))
                },
            )?;
            FdLink::try_from(tc.take_link(id)?)?
        };
        pin_link(link, &pin)
    }

    /// Remove the pinned links of programs `plan` no longer runs (a hook that changed, an
    /// interface no longer configured): unpinned, they detach.
    fn detach_others(&self, plan: &[HookChoice]) -> anyhow::Result<()> {
        let Ok(entries) = fs::read_dir(&self.pin_dir) else { return Ok(()) };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((program, iface)) = parse_link_pin(&name) else { continue };
            if !plan.iter().any(|c| c.program == program && c.interface == iface) {
                links::detach_and_unpin(&entry.path())
                    .with_context(|| format!("detaching {}", entry.path().display()))?;
            }
        }
        Ok(())
    }

    /// Mark uplink `index` up or down for new connections (failover); returns whether it changed.
    pub fn set_uplink_up(&mut self, index: usize, up: bool) -> anyhow::Result<bool> {
        let mut map: Array<_, UplinkInfo> = Array::try_from(self.map_mut(map_names::UPLINKS)?)?;
        let mut info = map.get(&(index as u32), 0).with_context(|| format!("UPLINKS[{index}]"))?;
        let was_up = info.flags & UPLINK_F_UP != 0;
        if was_up == up {
            return Ok(false);
        }
        info.flags ^= UPLINK_F_UP;
        map.set(index as u32, info, 0).with_context(|| format!("UPLINKS[{index}]"))?;
        Ok(true)
    }

    /// Add `n` to a counter the daemon keeps (the programs never touch its slot).
    pub fn count(&mut self, counter: Counter, n: u64) -> anyhow::Result<()> {
        let mut map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.map_mut(map_names::COUNTERS)?)?;
        let mut values: Vec<u64> = map.get(&(counter as u32), 0)?.iter().copied().collect();
        if let Some(first) = values.first_mut() {
            *first += n;
        }
        map.set(counter as u32, PerCpuValues::try_from(values)?, 0)?;
        Ok(())
    }

    /// Remove the connections `doomed` picks, both directions, for `reason`; returns how
    /// many. They wait in `take_removed` for the event record.
    pub fn remove_conns(
        &mut self,
        reason: EndReason,
        doomed: impl Fn(&Conn) -> bool,
    ) -> anyhow::Result<usize> {
        let gone = self.conn_tables()?.remove_where(doomed);
        let n = gone.len();
        self.removed.extend(gone.into_iter().map(|c| (c, reason)));
        Ok(n)
    }

    /// Give back what `take_removed` took (to a new object of the same dataplane).
    pub fn requeue_removed(&mut self, removed: Vec<(Conn, EndReason)>) {
        self.removed.extend(removed);
    }

    /// Remove the bindings whose public port lies in the gateway's own ephemeral range (after
    /// that range changed): their endpoints' next connections get a port outside it; the
    /// connections that use them keep theirs until they end.
    pub fn sweep_gateway_range(&mut self) -> anyhow::Result<usize> {
        let Some((lo, hi)) = crate::local_ports::current() else { return Ok(0) };
        let (mut bindings, mut ports) = self.binding_maps()?;
        Ok(crate::conntrack::remove_bindings_where(&mut bindings, &mut ports, |_, b| {
            (lo..=hi).contains(&u16::from_be(b.ext_port))
        }))
    }

    /// The connections `remove_conns` removed since the last call.
    pub fn take_removed(&mut self) -> Vec<(Conn, EndReason)> {
        std::mem::take(&mut self.removed)
    }

    /// The CONNS map, for expiry.
    pub fn conns(&mut self) -> anyhow::Result<&mut aya::maps::Map> {
        self.map_mut(map_names::CONNS)
    }

    /// Remove the bindings (endpoint-independent mappings) whose endpoint has no connection
    /// among `conns` (the tables as just dumped); returns how many.
    pub fn sweep_bindings(&mut self, conns: &[crate::conntrack::Conn]) -> anyhow::Result<usize> {
        let (mut bindings, mut ports) = self.binding_maps()?;
        let now = masq_common::tick(crate::conntrack::clock_ns());
        Ok(crate::conntrack::sweep_bindings(&mut bindings, &mut ports, conns, now))
    }

    /// `BINDINGS` and `BOUND_PORTS` of the loaded dataplane.
    fn binding_maps(&mut self) -> anyhow::Result<(BindingMap<'_>, BoundPortMap<'_>)> {
        let (mut bindings, mut ports) = (None, None);
        for (name, map) in self.ebpf.maps_mut() {
            match name {
                map_names::BINDINGS => bindings = Some(HashMap::try_from(map)?),
                map_names::BOUND_PORTS => ports = Some(HashMap::try_from(map)?),
                _ => {}
            }
        }
        Ok((bindings.context("no BINDINGS map")?, ports.context("no BOUND_PORTS map")?))
    }

    /// Both connection tables of the loaded dataplane.
    pub fn conn_tables(&mut self) -> anyhow::Result<ConnTables<&mut MapData>> {
        let (mut confirmed, mut pending) = (None, None);
        for (name, map) in self.ebpf.maps_mut() {
            match name {
                map_names::CONNS => confirmed = Some(ConnTable::try_from(map)?),
                map_names::PENDING_CONNS => pending = Some(ConnTable::try_from(map)?),
                _ => {}
            }
        }
        Ok(ConnTables {
            confirmed: confirmed.context("no CONNS map")?,
            pending: pending.context("no PENDING_CONNS map")?,
        })
    }
}

/// Pin a link at `path`, replacing the pin of the link it took over.
fn pin_link(link: FdLink, path: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    link.pin(path).with_context(|| format!("pinning link at {}", path.display()))?;
    Ok(())
}

/// The shape of each map as this build defines it.
struct MapLayout {
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
}

const fn layout<K, V>(name: &'static str, map_type: MapType) -> MapLayout {
    MapLayout {
        name,
        map_type,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
    }
}

const MAP_LAYOUTS: &[MapLayout] = &[
    layout::<FlowKey, ConnEntry>(map_names::CONNS, MapType::Hash),
    layout::<FlowKey, ConnEntry>(map_names::PENDING_CONNS, MapType::LruHash),
    layout::<BindingKey, Binding>(map_names::BINDINGS, MapType::Hash),
    layout::<BoundPortKey, BindingKey>(map_names::BOUND_PORTS, MapType::Hash),
    layout::<u32, DataplaneConfig>(map_names::CONFIG, MapType::Array),
    layout::<u32, UplinkInfo>(map_names::UPLINKS, MapType::Array),
    layout::<u32, PolicyRule>(map_names::POLICIES, MapType::Array),
    layout::<PublishKey, PublishTarget>(map_names::PUBLISH, MapType::Hash),
    layout::<u32, PublicAddr>(map_names::PUBLIC_ADDRS, MapType::Hash),
    layout::<u32, u64>(map_names::COUNTERS, MapType::PerCpuArray),
    layout::<u32, UplinkStats>(map_names::UPLINK_STATS, MapType::PerCpuArray),
    layout::<FragKey, FragXlate>(map_names::FRAGS, MapType::LruHash),
    layout::<u32, NextHop>(map_names::NEXTHOPS, MapType::PerCpuArray),
    layout::<u32, u32>(map_names::XDP_PROG_IDS, MapType::Array),
    layout::<(), ()>(map_names::EVENTS, MapType::RingBuf),
    layout::<u32, u32>(map_names::TAIL_CALLS, MapType::ProgramArray),
];

/// Refuse to adopt pinned maps whose layout differs from this build's: writing through a
/// different layout would corrupt them.
pub fn check_pinned_layout(pin_dir: &Path) -> anyhow::Result<()> {
    for expected in MAP_LAYOUTS {
        let path = pin_dir.join(expected.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let found = (info.map_type()?, info.key_size(), info.value_size());
        let wanted = (expected.map_type, expected.key_size, expected.value_size);
        if found != wanted {
            bail!(
                "pinned map {} has layout {found:?} (type, key, value bytes) but this masq expects \
                 {wanted:?}: refusing to adopt it; `masq down --pin-dir {}` removes the old \
                 dataplane (and its connections)",
                path.display(),
                pin_dir.display()
            );
        }
    }
    Ok(())
}

/// Delete a pin directory and everything pinned in it.
pub fn remove_pins(dir: &Path) -> anyhow::Result<()> {
    match fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                let path = entry.path();
                if parse_link_pin(&entry.file_name().to_string_lossy()).is_some() {
                    links::detach_and_unpin(&path)
                        .with_context(|| format!("detaching {}", path.display()))?;
                } else {
                    fs::remove_file(&path)
                        .with_context(|| format!("unpinning {}", path.display()))?;
                }
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
        format!("opening {} (is masq running with --pin-dir {}?)", path.display(), dir.display())
    })
}

/// The link a previous run pinned at `pin`, switched to `program` in place (atomic: traffic
/// sees no gap); when there is none, or it is severed (its device went away), a fresh attach.
fn adopt_or_attach<P, Id>(
    program: &mut P,
    pin: &Path,
    adopt: impl FnOnce(&mut P, FdLink) -> anyhow::Result<Id>,
    attach: impl FnOnce(&mut P) -> anyhow::Result<Id>,
) -> anyhow::Result<Id> {
    if let Some(old) = PinnedLink::from_pin(pin).ok().map(FdLink::from)
        && let Ok(id) = adopt(program, old)
    {
        return Ok(id);
    }
    let _ = fs::remove_file(pin);
    attach(program)
}

/// Fields of a tracepoint record a program reads: name and offset.
type TraceFields = &'static [(&'static str, usize)];

/// Fail unless tracepoint `xdp:<event>` has each field at the offset masq's program reads.
fn check_trace_format(event: &str, fields: &[(&str, usize)]) -> anyhow::Result<()> {
    let path = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .map(|root| PathBuf::from(format!("{root}/events/xdp/{event}/format")))
        .find(|p| p.exists())
        .with_context(|| format!("no tracefs format for xdp:{event}"))?;
    let format = fs::read_to_string(&path)?;
    for (name, offset) in fields {
        let found = format.lines().any(|line| {
            line.contains(&format!(" {name};")) && line.contains(&format!("offset:{offset};"))
        });
        if !found {
            bail!(
                "xdp:{event} has no field {name} at offset {offset} on this kernel ({})",
                path.display()
            );
        }
    }
    Ok(())
}
