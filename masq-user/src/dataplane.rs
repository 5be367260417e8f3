//! The eBPF side of the loader: load the object (its maps pinned as they are made, see
//! `pinned`), attach the programs, and take it all down again.
use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType, TracePoint, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
    },
};
use masq_common::{
    XDP_DEVMAP_XMIT_DROPS, XDP_DEVMAP_XMIT_FROM_IFINDEX, XDP_DEVMAP_XMIT_TO_IFINDEX,
    XDP_REDIRECT_ERR_PROG_ID, map_names, program_names,
};
use tracing::{info, warn};

use crate::{
    config::{Config, Uplink},
    conntrack::{Conn, EndReason},
    hooks::{self, DeviceFacts, HookChoice, HookPoint},
    host::HostInterfaces,
    links::{self, link_pin_name, parse_link_pin},
    pinned,
};

/// The compiled eBPF object (built by build.rs from masq-ebpf).
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/masq"));

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
        return mount("bpf", BPFFS);
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
        pinned::check_pinned_layout(pin_dir)?;
        let pin_paths = pinned::pin_paths(pin_dir);
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
            pinned::set_tail_call(&self.pin_dir, slot, tc.fd()?)?;
        }
        Ok(())
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
        pinned::set_xdp_prog_id(&self.pin_dir, prog_id)?;
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

    /// Remove the connections `doomed` picks, both directions, for `reason`; returns how
    /// many. They wait in `take_removed` for the event record.
    pub fn remove_conns(
        &mut self,
        reason: EndReason,
        doomed: impl Fn(&Conn) -> bool,
    ) -> anyhow::Result<usize> {
        let gone = pinned::remove_conns(&self.pin_dir, doomed)?;
        let n = gone.len();
        self.removed.extend(gone.into_iter().map(|c| (c, reason)));
        Ok(n)
    }

    /// Give back what `take_removed` took (to a new object of the same dataplane).
    pub fn requeue_removed(&mut self, removed: Vec<(Conn, EndReason)>) {
        self.removed.extend(removed);
    }

    /// The connections `remove_conns` removed since the last call.
    pub fn take_removed(&mut self) -> Vec<(Conn, EndReason)> {
        std::mem::take(&mut self.removed)
    }
}

/// Pin a link at `path`, replacing the pin of the link it took over.
fn pin_link(link: FdLink, path: &Path) -> anyhow::Result<()> {
    let _ = fs::remove_file(path);
    link.pin(path).with_context(|| format!("pinning link at {}", path.display()))?;
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

/// Mount a filesystem of type `fstype` (its source named the same) at `target`.
fn mount(fstype: &str, target: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("mount")
        .args(["-t", fstype, fstype, target])
        .status()
        .with_context(|| format!("running mount -t {fstype}"))?;
    if !status.success() {
        bail!("could not mount {fstype} at {target}");
    }
    Ok(())
}

/// Where tracefs is mounted when nothing else mounted it.
const TRACEFS: &str = "/sys/kernel/tracing";

/// Where tracefs is. Tracepoints are found through it (their ids and record formats): systemd
/// mounts it on first access; a minimal host or container may have none, so it is mounted at
/// its usual place.
fn tracefs_root() -> anyhow::Result<&'static Path> {
    let roots = [TRACEFS, "/sys/kernel/debug/tracing"].map(Path::new);
    if let Some(root) = roots.into_iter().find(|root| root.join("events").exists()) {
        return Ok(root);
    }
    mount("tracefs", TRACEFS)?;
    info!("mounted tracefs at {TRACEFS} (the lost-redirect tracepoints are found there)");
    Ok(Path::new(TRACEFS))
}

/// Fields of a tracepoint record a program reads: name and offset.
type TraceFields = &'static [(&'static str, usize)];

/// Fail unless tracepoint `xdp:<event>` has each field at the offset masq's program reads.
fn check_trace_format(event: &str, fields: &[(&str, usize)]) -> anyhow::Result<()> {
    let path = tracefs_root()?.join(format!("events/xdp/{event}/format"));
    if !path.exists() {
        bail!("no tracefs format for xdp:{event} ({})", path.display());
    }
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
