//! Reading the pinned dataplane for the CLI and the metrics: works whether or not the daemon
//! runs, from any network namespace (bpffs is shared by all of them).
//!
//! Names (uplink names, interfaces) are not in the maps. The daemon writes a small state file
//! next to its pid file (`/run/masq/<pin dir with / as _>.json`): the resolved config, its path,
//! its pid and the outcome of the last reload. The CLI takes names from, in this order: an
//! explicit `--config`, that state file (when it belongs to the dataplane pinned now), the
//! default config `/etc/masq/masq.toml`; failing all, it shows uplink indexes (`#0`, `#1`, …).
//! `docs/cli-json.md` documents every JSON field.
use std::{
    collections::BTreeMap,
    ffi::CString,
    fs,
    io::{self, Write as _},
    net::Ipv4Addr,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{Array, Map, PerCpuArray};
use masq_common::{
    Counter, FlowKey, MAX_UPLINKS, UPLINK_F_ENABLED, UPLINK_F_UP, UplinkInfo, UplinkStats,
    map_names, program_names,
};
use serde::{Deserialize, Serialize, Serializer};

use crate::{
    config::Config,
    conntrack::{self, Conn, ConnTable},
    daemon::pid_file,
    dataplane::{open_pinned, parse_link_pin},
    hooks::{self, HookChoice, HookPoint},
};

/// The config the CLI reads for names when neither `--config` nor a daemon state file names one.
pub const DEFAULT_CONFIG: &str = "/etc/masq/masq.toml";

// ---------------------------------------------------------------------------------------------
// Raw reads of the maps

/// Counter values summed over CPUs, by name.
#[derive(Serialize, Debug, Clone)]
pub struct CounterValue {
    pub name: &'static str,
    pub drop: bool,
    pub value: u64,
}

pub fn read_counters(pin_dir: &Path) -> anyhow::Result<Vec<CounterValue>> {
    let map = Map::from_map_data(open_pinned(pin_dir, map_names::COUNTERS)?)?;
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    Counter::ALL
        .iter()
        .map(|c| {
            let values = array.get(&(*c as u32), 0)?;
            Ok(CounterValue { name: c.name(), drop: c.is_drop(), value: values.iter().sum() })
        })
        .collect()
}

/// Per-uplink traffic summed over CPUs, indexed like the config's uplinks.
pub fn read_uplink_stats(pin_dir: &Path, uplinks: usize) -> anyhow::Result<Vec<UplinkStats>> {
    let map = Map::from_map_data(open_pinned(pin_dir, map_names::UPLINK_STATS)?)?;
    let array: PerCpuArray<_, UplinkStats> = PerCpuArray::try_from(map)?;
    (0..uplinks as u32)
        .map(|i| {
            let per_cpu = array.get(&i, 0)?;
            Ok(per_cpu.iter().fold(UplinkStats::default(), |mut acc, s| {
                acc.rx_packets += s.rx_packets;
                acc.rx_bytes += s.rx_bytes;
                acc.tx_packets += s.tx_packets;
                acc.tx_bytes += s.tx_bytes;
                acc.new_conns += s.new_conns;
                acc
            }))
        })
        .collect()
}

/// The configured slots of `UPLINKS` (index, info), in index order.
pub fn read_uplink_infos(pin_dir: &Path) -> anyhow::Result<Vec<(u8, UplinkInfo)>> {
    let map = Map::from_map_data(open_pinned(pin_dir, map_names::UPLINKS)?)?;
    let array: Array<_, UplinkInfo> = Array::try_from(map)?;
    let mut infos = Vec::new();
    for i in 0..MAX_UPLINKS as u32 {
        let info = array.get(&i, 0)?;
        if info.flags & UPLINK_F_ENABLED != 0 {
            infos.push((i as u8, info));
        }
    }
    Ok(infos)
}

pub fn read_conns(pin_dir: &Path) -> anyhow::Result<Vec<Conn>> {
    let map = Map::from_map_data(open_pinned(pin_dir, map_names::CONNS)?)?;
    let table: ConnTable<_> = ConnTable::try_from(map)?;
    conntrack::dump(&table)
}

/// Size of the connection table.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct TableSize {
    /// Kernel id of the pinned `CONNS` map (changes when the dataplane is recreated).
    pub map_id: u32,
    /// `CONNS` max_entries: two per connection.
    pub max_entries: u32,
}

impl TableSize {
    /// Connections that fit.
    pub fn capacity(&self) -> u32 {
        self.max_entries / 2
    }
}

pub fn read_table_size(pin_dir: &Path) -> anyhow::Result<TableSize> {
    let info = open_pinned(pin_dir, map_names::CONNS)?.info()?;
    Ok(TableSize { map_id: info.id(), max_entries: info.max_entries() })
}

// ---------------------------------------------------------------------------------------------
// The daemon's state file and names

/// What the daemon records for the CLI, `/run/masq/<pin dir with / as _>.json`.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct DaemonState {
    pub pin_dir: PathBuf,
    pub pid: u32,
    pub config_path: PathBuf,
    /// Kernel id of the `CONNS` map the daemon serves: a state file whose id differs from the
    /// pinned map's belongs to an older dataplane and is ignored.
    pub conns_map_id: u32,
    pub started_unix: u64,
    /// SIGHUPs handled so far.
    pub reloads: u64,
    pub last_reload: Option<ReloadOutcome>,
    pub lan_interface: String,
    pub uplinks: Vec<UplinkName>,
    /// The resolved config in force (informational; its shape follows `config.rs`).
    pub config: serde_json::Value,
    /// Which program runs on which interface, and why.
    #[serde(default)]
    pub hooks: Vec<HookChoice>,
    /// Per uplink index: why it carries nothing right now (interface gone, no address yet).
    #[serde(default)]
    pub waiting: Vec<Option<String>>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub ok: bool,
    pub at_unix: u64,
    /// Why it was rejected (the running config stays).
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct UplinkName {
    pub name: String,
    pub interface: String,
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The daemon's state file for `pin_dir`, beside its pid file.
pub fn state_file(pin_dir: &Path) -> PathBuf {
    pid_file(pin_dir).with_extension("json")
}

impl DaemonState {
    /// The state of a daemon that has just brought the dataplane up under `pin_dir`.
    pub fn new(pin_dir: &Path, config_path: &Path, cfg: &Config) -> Self {
        sweep_stale_states();
        DaemonState {
            pin_dir: pin_dir.to_path_buf(),
            pid: std::process::id(),
            config_path: std::path::absolute(config_path)
                .unwrap_or_else(|_| config_path.to_path_buf()),
            conns_map_id: read_table_size(pin_dir).map_or(0, |s| s.map_id),
            started_unix: unix_now(),
            reloads: 0,
            last_reload: None,
            lan_interface: String::new(),
            uplinks: Vec::new(),
            config: serde_json::Value::Null,
            hooks: Vec::new(),
            waiting: Vec::new(),
        }
        .with_config(cfg)
    }

    fn with_config(mut self, cfg: &Config) -> Self {
        self.lan_interface = cfg.lan.interface.clone();
        self.uplinks = uplink_names(cfg);
        self.config = serde_json::to_value(cfg).unwrap_or_default();
        self
    }

    /// Record a handled SIGHUP: the new config when it was applied, or why not.
    pub fn reloaded(&mut self, outcome: Result<&Config, String>) {
        self.reloads += 1;
        let (ok, error) = match outcome {
            Ok(cfg) => {
                *self = self.clone().with_config(cfg);
                (true, None)
            }
            Err(e) => (false, Some(e)),
        };
        self.last_reload = Some(ReloadOutcome { ok, at_unix: unix_now(), error });
    }

    /// Write the state file atomically (a temporary file renamed over it).
    pub fn save(&self, pin_dir: &Path) -> anyhow::Result<()> {
        let path = state_file(pin_dir);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let mut file =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut file, self)?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The state file of the dataplane pinned under `pin_dir` now, if there is one.
    pub fn load(pin_dir: &Path) -> Option<Self> {
        let text = fs::read_to_string(state_file(pin_dir)).ok()?;
        let state: DaemonState = serde_json::from_str(&text).ok()?;
        let pinned = read_table_size(pin_dir).ok()?;
        (state.conns_map_id == pinned.map_id).then_some(state)
    }
}

/// Remove the state files of dataplanes that are gone (pins removed without `masq down`, as a
/// test lab does) and whose daemon is not running.
fn sweep_stale_states() {
    let Some(dir) = state_file(Path::new("/")).parent().map(Path::to_path_buf) else {
        return;
    };
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let Some(state) = fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str::<DaemonState>(&t).ok())
        else {
            continue;
        };
        if !state.pin_dir.join(map_names::CONNS).exists()
            && running_daemon(&state.pin_dir).is_none()
        {
            let _ = fs::remove_file(&path);
        }
    }
}

fn uplink_names(cfg: &Config) -> Vec<UplinkName> {
    cfg.uplinks
        .iter()
        .map(|u| UplinkName { name: u.name.clone(), interface: u.interface.clone() })
        .collect()
}

/// Where the names shown came from: `{"source": "state", "path": …}` in JSON.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "source", content = "path")]
pub enum NamesSource {
    /// The daemon's state file.
    State(PathBuf),
    /// A config file.
    Config(PathBuf),
    /// The daemon itself (metrics).
    Daemon,
    /// Nothing readable: uplinks show as `#<index>`.
    None,
}

/// Uplink and interface names for the indexes in the maps.
#[derive(Debug, Clone)]
pub struct Names {
    pub source: NamesSource,
    pub lan_interface: Option<String>,
    pub uplinks: Vec<UplinkName>,
}

impl Names {
    pub fn from_config(cfg: &Config, source: NamesSource) -> Self {
        Names { source, lan_interface: Some(cfg.lan.interface.clone()), uplinks: uplink_names(cfg) }
    }

    /// Names for the dataplane under `pin_dir`: `config` when given (a warning on stderr and
    /// indexes when it cannot be read), else the daemon's state file, else [`DEFAULT_CONFIG`].
    pub fn resolve(pin_dir: &Path, config: Option<&Path>) -> Self {
        if let Some(path) = config {
            return match Config::load(path) {
                Ok(cfg) => Names::from_config(&cfg, NamesSource::Config(path.to_path_buf())),
                Err(e) => {
                    eprintln!("masq: {e}; showing uplink indexes instead of names");
                    Names::none()
                }
            };
        }
        if let Some(state) = DaemonState::load(pin_dir) {
            return Names {
                source: NamesSource::State(state_file(pin_dir)),
                lan_interface: Some(state.lan_interface),
                uplinks: state.uplinks,
            };
        }
        let default = Path::new(DEFAULT_CONFIG);
        match Config::load(default) {
            Ok(cfg) => Names::from_config(&cfg, NamesSource::Config(default.to_path_buf())),
            Err(_) => Names::none(),
        }
    }

    pub fn none() -> Self {
        Names { source: NamesSource::None, lan_interface: None, uplinks: Vec::new() }
    }

    /// The uplink's name, `#<index>` when unknown.
    pub fn uplink(&self, index: u8) -> String {
        self.uplinks.get(index as usize).map_or_else(|| format!("#{index}"), |u| u.name.clone())
    }

    pub fn interface(&self, index: u8) -> Option<&str> {
        self.uplinks.get(index as usize).map(|u| u.interface.as_str())
    }

    /// The index of an uplink given by name, or by index (`3` or `#3`).
    pub fn uplink_index(&self, name: &str) -> anyhow::Result<u8> {
        if let Some(i) = self.uplinks.iter().position(|u| u.name == name) {
            return Ok(i as u8);
        }
        if let Ok(i) = name.trim_start_matches('#').parse::<u8>()
            && (i as usize) < MAX_UPLINKS
        {
            return Ok(i);
        }
        if self.uplinks.is_empty() {
            bail!(
                "unknown uplink {name:?}: no names known (no daemon state file and no readable \
                 config; pass -c FILE, or give the uplink's index)"
            );
        }
        let known: Vec<&str> = self.uplinks.iter().map(|u| u.name.as_str()).collect();
        bail!("unknown uplink {name:?} (uplinks: {})", known.join(", "))
    }
}

// ---------------------------------------------------------------------------------------------
// The daemon process

/// The running daemon for `pin_dir`: its pid when the pid file names a live `masq run`.
pub fn running_daemon(pin_dir: &Path) -> Option<u32> {
    let pid: u32 = fs::read_to_string(pid_file(pin_dir)).ok()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_masq_run = cmdline.split(|b| *b == 0).any(|arg| arg == b"run");
    is_masq_run.then_some(pid)
}

#[derive(Serialize, Debug, Clone)]
pub struct DaemonView {
    pub running: bool,
    pub pid: Option<u32>,
    pub pid_file: PathBuf,
    pub state_file: Option<PathBuf>,
    pub config_path: Option<PathBuf>,
    pub started_unix: Option<u64>,
    pub reloads: Option<u64>,
    pub last_reload: Option<ReloadOutcome>,
}

pub fn daemon_view(pin_dir: &Path) -> DaemonView {
    let pid = running_daemon(pin_dir);
    let state = DaemonState::load(pin_dir);
    DaemonView {
        running: pid.is_some(),
        pid,
        pid_file: pid_file(pin_dir),
        state_file: state.as_ref().map(|_| state_file(pin_dir)),
        config_path: state.as_ref().map(|s| s.config_path.clone()),
        started_unix: state.as_ref().map(|s| s.started_unix),
        reloads: state.as_ref().map(|s| s.reloads),
        last_reload: state.and_then(|s| s.last_reload),
    }
}

/// `masq reload`: SIGHUP to the daemon, then wait (up to `timeout`) for it to record the outcome.
pub fn reload(pin_dir: &Path, timeout: Duration) -> anyhow::Result<()> {
    let pid = running_daemon(pin_dir).ok_or_else(|| {
        anyhow!(
            "no masq daemon is running for --pin-dir {} (pid file {}); start it with `masq run`",
            pin_dir.display(),
            pid_file(pin_dir).display()
        )
    })?;
    let before = DaemonState::load(pin_dir).map(|s| s.reloads);
    // SAFETY: plain kill(2).
    if unsafe { libc::kill(pid as i32, libc::SIGHUP) } != 0 {
        return Err(io::Error::last_os_error()).context(format!("sending SIGHUP to pid {pid}"));
    }
    let Some(before) = before else {
        println!("masq: sent SIGHUP to the daemon (pid {pid}); its log says how the reload went");
        return Ok(());
    };
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(state) = DaemonState::load(pin_dir).filter(|s| s.reloads > before) {
            return match state.last_reload {
                Some(ReloadOutcome { ok: false, error, .. }) => bail!(
                    "reload rejected, the daemon keeps its running config: {}",
                    error.unwrap_or_default()
                ),
                _ => {
                    println!("masq: reloaded {} (daemon pid {pid})", state.config_path.display());
                    Ok(())
                }
            };
        }
        if Instant::now() > deadline {
            bail!(
                "sent SIGHUP to pid {pid} but it recorded no reload within {}s; see its log",
                timeout.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

// ---------------------------------------------------------------------------------------------
// Program attachments (the pinned links)

/// One program attachment: a pinned link `link-<program>-<interface>`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program: String,
    pub interface: String,
    /// `xdp`, `tc_ingress` or `tc_egress`.
    pub hook: &'static str,
    /// Why this program runs here (the daemon's choice, see `hooks.rs`).
    pub reason: Option<String>,
    /// The link exists and is attached to a device.
    pub attached: bool,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// `xdp` or `tcx`, from the kernel.
    pub link_type: Option<&'static str>,
    /// The device's index in its network namespace (0 once the device is gone).
    pub ifindex: Option<u32>,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// The attachments expected from the names plus every link pinned under `pin_dir`.
pub fn read_attachments(pin_dir: &Path, names: &Names) -> Vec<Attachment> {
    let pinned_links: Vec<(String, String)> = fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| parse_link_pin(&e.ok()?.file_name().to_string_lossy()))
        .collect();
    // An uplink's ingress and egress programs: whichever variant is pinned, else the default.
    let variant = |iface: &str, variants: &[&str]| {
        variants
            .iter()
            .find(|p| pinned_links.iter().any(|(q, i)| q == *p && i == iface))
            .unwrap_or(&variants[0])
            .to_string()
    };
    let mut wanted: Vec<(String, String)> = Vec::new();
    if let Some(lan) = &names.lan_interface {
        wanted.push((program_names::LAN_INGRESS.into(), lan.clone()));
    }
    for u in &names.uplinks {
        let iface = u.interface.as_str();
        let ingress = [
            program_names::UPLINK_INGRESS,
            program_names::UPLINK_INGRESS_XDP,
            program_names::UPLINK_INGRESS_L3,
        ];
        let egress = [program_names::UPLINK_EGRESS, program_names::UPLINK_EGRESS_L3];
        wanted.push((variant(iface, &ingress), iface.to_string()));
        wanted.push((variant(iface, &egress), iface.to_string()));
    }
    let reasons = DaemonState::load(pin_dir).map(|s| s.hooks).unwrap_or_default();
    let mut pinned: Vec<(String, String)> =
        pinned_links.into_iter().filter(|p| !wanted.contains(p)).collect();
    pinned.sort();
    wanted.extend(pinned);
    wanted
        .into_iter()
        .map(|(program, interface)| {
            let pin = pin_dir.join(format!("link-{program}-{interface}"));
            let hook = hooks::hook_of(&program).map_or("unknown", HookPoint::name);
            let reason = reasons
                .iter()
                .find(|c| c.program == program && c.interface == interface)
                .map(|c| c.reason.clone());
            let mut a = Attachment {
                program,
                interface,
                hook,
                reason,
                attached: false,
                link_id: None,
                program_id: None,
                link_type: None,
                ifindex: None,
                error: None,
            };
            match link_info(&pin) {
                Ok(info) => {
                    a.link_id = Some(info.id);
                    a.program_id = Some(info.prog_id);
                    a.link_type = Some(match info.link_type {
                        LINK_TYPE_XDP => "xdp",
                        LINK_TYPE_TCX => "tcx",
                        _ => "other",
                    });
                    a.ifindex = Some(info.ifindex);
                    a.attached = info.ifindex != 0 && info.prog_id != 0;
                    if !a.attached {
                        a.error = Some("link detached (device gone?)".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    a.error = Some(format!("no link pinned at {}", pin.display()));
                }
                Err(e) => a.error = Some(format!("{}: {e}", pin.display())),
            }
            a
        })
        .collect()
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const LINK_TYPE_XDP: u32 = 6;
const LINK_TYPE_TCX: u32 = 11;

struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    ifindex: u32,
}

/// `bpf_link_info` of a pinned link: aya's `LinkInfo` does not expose the device, which tells
/// whether the link is still attached.
fn link_info(pin: &Path) -> io::Result<LinkInfo> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let attr =
        ObjGet { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: BPF_OBJ_GET reads `attr` (a NUL-terminated path that outlives the call).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &attr as *const ObjGet,
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union (word 4) whose xdp and
    // tcx members both start with the ifindex.
    #[repr(C, align(8))]
    struct InfoBuf([u32; 64]);
    let mut info = InfoBuf([0; 64]);
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<InfoBuf>() as u32,
        info: info.0.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoByFd,
            std::mem::size_of::<InfoByFd>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let word = |i: usize| info.0[i];
    Ok(LinkInfo { link_type: word(0), id: word(1), prog_id: word(2), ifindex: word(4) })
}

// ---------------------------------------------------------------------------------------------
// Connections

/// A tuple for people: addresses and host-order ports.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub src_port: u16,
    pub dst: Ipv4Addr,
    pub dst_port: u16,
}

impl From<&FlowKey> for Tuple {
    fn from(k: &FlowKey) -> Self {
        Tuple {
            src: Ipv4Addr::from(k.src_addr.to_ne_bytes()),
            src_port: u16::from_be(k.src_port),
            dst: Ipv4Addr::from(k.dst_addr.to_ne_bytes()),
            dst_port: u16::from_be(k.dst_port),
        }
    }
}

impl Tuple {
    pub fn reversed(&self) -> Tuple {
        Tuple { src: self.dst, src_port: self.dst_port, dst: self.src, dst_port: self.src_port }
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{} -> {}:{}", self.src, self.src_port, self.dst, self.dst_port)
    }
}

/// One connection as `masq conns --json` prints it.
#[derive(Serialize, Debug, Clone)]
pub struct ConnView {
    pub proto: &'static str,
    /// `inbound` (to a published service) or `outbound` (masqueraded from the LAN).
    pub direction: &'static str,
    /// The initiator's packets as they arrived, and as masq sent them on.
    pub original: Tuple,
    pub translated: Tuple,
    /// Replies as they arrived, and as masq sent them on.
    pub reply: Tuple,
    pub reply_translated: Tuple,
    /// Index of the uplink in the config (and in `UPLINKS`).
    pub uplink: u8,
    /// Its name (`#<index>` when no name is known).
    pub uplink_name: String,
    pub state: &'static str,
    pub age_s: f64,
    pub idle_s: f64,
    pub packets_original: u64,
    pub bytes_original: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
    /// False when one direction's map entry is missing (evicted; the next packet rebuilds it).
    pub complete: bool,
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        conntrack::IPPROTO_TCP => "tcp",
        conntrack::IPPROTO_UDP => "udp",
        conntrack::IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

pub fn direction_name(conn: &Conn) -> &'static str {
    if conn.any().1.is_inbound() { "inbound" } else { "outbound" }
}

/// The four tuples of a connection (original, translated, reply, reply translated), the
/// missing direction rebuilt from the other one.
fn tuples(conn: &Conn) -> [Tuple; 4] {
    let (original, translated) = match (&conn.orig, &conn.reply) {
        (Some((k, e)), _) => (k.into(), (&e.xlate).into()),
        (None, Some((k, e))) => {
            let reply_translated: Tuple = (&e.xlate).into();
            (reply_translated.reversed(), Tuple::from(k).reversed())
        }
        (None, None) => unreachable!("a connection has an entry"),
    };
    let (reply, reply_translated) = match &conn.reply {
        Some((k, e)) => (k.into(), (&e.xlate).into()),
        None => (translated.reversed(), original.reversed()),
    };
    [original, translated, reply, reply_translated]
}

pub fn conn_view(conn: &Conn, now_ns: u64, names: &Names) -> ConnView {
    let secs = |ns: u64| now_ns.saturating_sub(ns) as f64 / 1e9;
    let [original, translated, reply, reply_translated] = tuples(conn);
    ConnView {
        proto: proto_name(conn.proto()),
        direction: direction_name(conn),
        original,
        translated,
        reply,
        reply_translated,
        uplink: conn.uplink(),
        uplink_name: names.uplink(conn.uplink()),
        state: conn.state().name(),
        age_s: secs(conn.created_ns()),
        idle_s: secs(conn.last_seen_ns()),
        packets_original: conn.orig.map_or(0, |(_, e)| e.packets),
        bytes_original: conn.orig.map_or(0, |(_, e)| e.bytes),
        packets_reply: conn.reply.map_or(0, |(_, e)| e.packets),
        bytes_reply: conn.reply.map_or(0, |(_, e)| e.bytes),
        complete: conn.orig.is_some() && conn.reply.is_some(),
    }
}

/// Which connections `masq conns` lists (and `masq conns flush` removes).
#[derive(Debug, Clone, Default)]
pub struct ConnFilter {
    pub uplink: Option<u8>,
    /// IP protocol number.
    pub proto: Option<u8>,
    /// Any address of the original or translated tuples.
    pub host: Option<Ipv4Addr>,
}

impl ConnFilter {
    pub fn matches(&self, conn: &Conn) -> bool {
        self.uplink.is_none_or(|u| conn.uplink() == u)
            && self.proto.is_none_or(|p| conn.proto() == p)
            && self.host.is_none_or(|h| {
                let [original, translated, ..] = tuples(conn);
                [original, translated].iter().any(|t| t.src == h || t.dst == h)
            })
    }

    pub fn is_empty(&self) -> bool {
        self.uplink.is_none() && self.proto.is_none() && self.host.is_none()
    }
}

/// Parse `tcp`, `udp`, `icmp` or a protocol number.
pub fn parse_proto(s: &str) -> anyhow::Result<u8> {
    match s.to_ascii_lowercase().as_str() {
        "tcp" => Ok(conntrack::IPPROTO_TCP),
        "udp" => Ok(conntrack::IPPROTO_UDP),
        "icmp" => Ok(conntrack::IPPROTO_ICMP),
        other => other
            .parse()
            .map_err(|_| anyhow!("unknown protocol {s:?} (tcp, udp, icmp or a number)")),
    }
}

// ---------------------------------------------------------------------------------------------
// Output helpers

/// Print rows as a table with a header, each column as wide as its widest cell; columns in
/// `right` are right-aligned (numbers).
fn print_table(header: &[&str], rows: &[Vec<String>], right: &[usize]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            if right.contains(&i) {
                out.push_str(&format!("{cell:>w$}"));
            } else if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}"));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value)?;
    writeln!(out)?;
    Ok(())
}

/// Bytes for people: 1.5 KiB, 3.2 MiB.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

// ---------------------------------------------------------------------------------------------
// `masq stats`

/// `masq stats --json`: counters by name, in the dataplane's order.
#[derive(Serialize, Debug, Clone)]
pub struct StatsView {
    /// Every path counter.
    #[serde(serialize_with = "ordered_map")]
    pub paths: Vec<(&'static str, u64)>,
    /// Every drop reason (`drop_*`), zero or not.
    #[serde(serialize_with = "ordered_map")]
    pub drops: Vec<(&'static str, u64)>,
    pub drops_total: u64,
}

fn ordered_map<S: Serializer>(pairs: &[(&'static str, u64)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

pub fn stats_view(pin_dir: &Path) -> anyhow::Result<StatsView> {
    let counters = read_counters(pin_dir)?;
    let pick = |drop: bool| -> Vec<(&'static str, u64)> {
        counters.iter().filter(|c| c.drop == drop).map(|c| (c.name, c.value)).collect()
    };
    let drops = pick(true);
    Ok(StatsView { paths: pick(false), drops_total: drops.iter().map(|(_, v)| v).sum(), drops })
}

pub fn stats(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let view = stats_view(pin_dir)?;
    if json {
        return print_json(&view);
    }
    let rows = |pairs: &[(&str, u64)]| -> Vec<Vec<String>> {
        pairs.iter().map(|(k, v)| vec![k.to_string(), v.to_string()]).collect()
    };
    print_table(&["PATH", "PACKETS"], &rows(&view.paths), &[1]);
    println!();
    let mut drops = rows(&view.drops);
    drops.push(vec!["total".into(), view.drops_total.to_string()]);
    print_table(&["DROP REASON", "PACKETS"], &drops, &[1]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `masq conns`

pub fn conns(pin_dir: &Path, names: &Names, filter: &ConnFilter, json: bool) -> anyhow::Result<()> {
    let now = conntrack::clock_ns();
    let mut views: Vec<ConnView> = read_conns(pin_dir)?
        .iter()
        .filter(|c| filter.matches(c))
        .map(|c| conn_view(c, now, names))
        .collect();
    views.sort_by(|a, b| {
        (a.uplink.cmp(&b.uplink)).then(a.proto.cmp(b.proto)).then(b.age_s.total_cmp(&a.age_s))
    });
    if json {
        return print_json(&views);
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|v| {
            vec![
                v.proto.to_string(),
                v.direction.to_string(),
                v.uplink_name.clone(),
                v.state.to_string(),
                show_tuple(v.proto, &v.original),
                show_tuple(v.proto, &v.translated),
                format!("{}/{}", v.packets_original, v.packets_reply),
                format!("{}/{}", human_bytes(v.bytes_original), human_bytes(v.bytes_reply)),
                format!("{:.0}", v.idle_s),
            ]
        })
        .collect();
    print_table(
        &[
            "PROTO",
            "DIR",
            "UPLINK",
            "STATE",
            "ORIGINAL",
            "TRANSLATED",
            "PACKETS",
            "BYTES",
            "IDLE_S",
        ],
        &rows,
        &[6, 7, 8],
    );
    Ok(())
}

/// A tuple in the table: ICMP echo shows its identifier instead of ports.
fn show_tuple(proto: &str, t: &Tuple) -> String {
    if proto == "icmp" {
        format!("{} -> {} id {}", t.src, t.dst, t.src_port.max(t.dst_port))
    } else {
        t.to_string()
    }
}

/// `masq conns flush`: remove the connections `filter` picks, both directions; how many.
pub fn flush(pin_dir: &Path, filter: &ConnFilter) -> anyhow::Result<usize> {
    let map = Map::from_map_data(open_pinned(pin_dir, map_names::CONNS)?)?;
    let mut table: ConnTable<_> = ConnTable::try_from(map)?;
    conntrack::remove_where(&mut table, |c| filter.matches(c))
}

// ---------------------------------------------------------------------------------------------
// `masq uplinks`

/// One uplink's traffic as `masq uplinks --json` prints it.
#[derive(Serialize, Debug, Clone)]
pub struct UplinkTraffic {
    pub index: u8,
    pub name: String,
    pub interface: Option<String>,
    /// Packets and bytes received on the uplink and handled by masq (XDP).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Packets and bytes masq sent out of the uplink.
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Connections opened on this uplink since the dataplane was created.
    pub new_connections: u64,
    /// Connections in the table now.
    pub active_connections: u64,
}

pub fn uplink_traffic(
    pin_dir: &Path,
    names: &Names,
    conns: &[Conn],
) -> anyhow::Result<Vec<UplinkTraffic>> {
    let infos = read_uplink_infos(pin_dir)?;
    let count =
        infos.iter().map(|(i, _)| *i as usize + 1).max().unwrap_or(0).max(names.uplinks.len());
    let stats = read_uplink_stats(pin_dir, count)?;
    Ok(stats
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let index = i as u8;
            UplinkTraffic {
                index,
                name: names.uplink(index),
                interface: names.interface(index).map(str::to_string),
                rx_packets: s.rx_packets,
                rx_bytes: s.rx_bytes,
                tx_packets: s.tx_packets,
                tx_bytes: s.tx_bytes,
                new_connections: s.new_conns,
                active_connections: conns.iter().filter(|c| c.uplink() == index).count() as u64,
            }
        })
        .collect())
}

pub fn uplinks(pin_dir: &Path, names: &Names, json: bool) -> anyhow::Result<()> {
    let conns = read_conns(pin_dir)?;
    let traffic = uplink_traffic(pin_dir, names, &conns)?;
    if json {
        return print_json(&traffic);
    }
    let rows: Vec<Vec<String>> = traffic
        .iter()
        .map(|u| {
            vec![
                u.index.to_string(),
                u.name.clone(),
                u.interface.clone().unwrap_or_else(|| "-".into()),
                u.rx_packets.to_string(),
                human_bytes(u.rx_bytes),
                u.tx_packets.to_string(),
                human_bytes(u.tx_bytes),
                u.new_connections.to_string(),
                u.active_connections.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "INDEX",
            "UPLINK",
            "INTERFACE",
            "RX_PACKETS",
            "RX_BYTES",
            "TX_PACKETS",
            "TX_BYTES",
            "NEW_CONNS",
            "ACTIVE_CONNS",
        ],
        &rows,
        &[0, 3, 4, 5, 6, 7, 8],
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `masq status`

/// An uplink as the dataplane has it (`UPLINKS`), named.
#[derive(Serialize, Debug, Clone)]
pub struct UplinkStatus {
    pub index: u8,
    pub name: String,
    pub interface: Option<String>,
    pub ifindex: u32,
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub table: u32,
    pub mark: u32,
    /// Usable for new connections.
    pub up: bool,
    /// Why the uplink carries nothing, as the daemon last saw it (interface gone, no address).
    pub waiting: Option<String>,
}

#[derive(Serialize, Debug, Clone)]
pub struct ConnectionsStatus {
    /// Connections in the table.
    pub count: u64,
    /// Connections that fit (`CONNS` max_entries / 2).
    pub capacity: u32,
    /// Map entries (two per complete connection) and the map's max_entries.
    pub entries: u64,
    pub max_entries: u32,
    /// entries / max_entries.
    pub fill: f64,
    /// By protocol, by state, by direction.
    pub by_proto: BTreeMap<&'static str, u64>,
    pub by_state: BTreeMap<&'static str, u64>,
    pub by_direction: BTreeMap<&'static str, u64>,
}

#[derive(Serialize, Debug, Clone)]
pub struct StatusView {
    pub pin_dir: PathBuf,
    pub daemon: DaemonView,
    /// Where uplink and interface names came from.
    pub names_from: NamesSource,
    pub lan_interface: Option<String>,
    pub programs: Vec<Attachment>,
    pub uplinks: Vec<UplinkStatus>,
    pub connections: ConnectionsStatus,
}

pub fn connections_status(conns: &[Conn], size: TableSize) -> ConnectionsStatus {
    let entries: u64 =
        conns.iter().map(|c| u64::from(c.orig.is_some()) + u64::from(c.reply.is_some())).sum();
    let mut by_proto = BTreeMap::new();
    let mut by_state = BTreeMap::new();
    let mut by_direction = BTreeMap::new();
    for c in conns {
        *by_proto.entry(proto_name(c.proto())).or_default() += 1;
        *by_state.entry(c.state().name()).or_default() += 1;
        *by_direction.entry(direction_name(c)).or_default() += 1;
    }
    ConnectionsStatus {
        count: conns.len() as u64,
        capacity: size.capacity(),
        entries,
        max_entries: size.max_entries,
        fill: if size.max_entries == 0 {
            0.0
        } else {
            entries as f64 / f64::from(size.max_entries)
        },
        by_proto,
        by_state,
        by_direction,
    }
}

pub fn status_view(pin_dir: &Path, names: &Names) -> anyhow::Result<StatusView> {
    let size = read_table_size(pin_dir)?;
    let conns = read_conns(pin_dir)?;
    let waiting = DaemonState::load(pin_dir).map(|s| s.waiting).unwrap_or_default();
    let uplinks = read_uplink_infos(pin_dir)?
        .into_iter()
        .map(|(index, info)| UplinkStatus {
            waiting: waiting.get(usize::from(index)).cloned().flatten(),
            index,
            name: names.uplink(index),
            interface: names.interface(index).map(str::to_string),
            ifindex: info.ifindex,
            address: Ipv4Addr::from(info.address.to_ne_bytes()),
            gateway: Ipv4Addr::from(info.gateway.to_ne_bytes()),
            table: info.table,
            mark: info.mark,
            up: info.flags & UPLINK_F_UP != 0,
        })
        .collect();
    Ok(StatusView {
        pin_dir: pin_dir.to_path_buf(),
        daemon: daemon_view(pin_dir),
        names_from: names.source.clone(),
        lan_interface: names.lan_interface.clone(),
        programs: read_attachments(pin_dir, names),
        uplinks,
        connections: connections_status(&conns, size),
    })
}

pub fn status(pin_dir: &Path, names: &Names, json: bool) -> anyhow::Result<()> {
    let view = status_view(pin_dir, names)?;
    if json {
        return print_json(&view);
    }
    let d = &view.daemon;
    let daemon = match d.pid {
        Some(pid) => format!("running (pid {pid})"),
        None => "not running (the dataplane keeps forwarding; `masq down` removes it)".into(),
    };
    println!("daemon:       {daemon}");
    if let Some(config) = &d.config_path {
        let reload = match &d.last_reload {
            Some(ReloadOutcome { ok: true, .. }) => "last reload applied".to_string(),
            Some(ReloadOutcome { ok: false, error, .. }) => {
                format!("last reload rejected: {}", error.as_deref().unwrap_or_default())
            }
            None => "not reloaded".into(),
        };
        println!("config:       {} ({reload})", config.display());
    }
    println!("pin dir:      {}", view.pin_dir.display());
    let names_from = match &view.names_from {
        NamesSource::State(p) => format!("daemon state {}", p.display()),
        NamesSource::Config(p) => format!("config {}", p.display()),
        NamesSource::Daemon => "daemon".into(),
        NamesSource::None => "nothing readable: uplinks shown by index (pass -c FILE)".into(),
    };
    println!("names from:   {names_from}");
    let c = &view.connections;
    println!(
        "connections:  {} of {} ({:.1}% of {} map entries used)",
        c.count,
        c.capacity,
        c.fill * 100.0,
        c.max_entries
    );
    println!();
    let rows: Vec<Vec<String>> = view
        .programs
        .iter()
        .map(|a| {
            let opt = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
            vec![
                a.program.clone(),
                a.hook.to_string(),
                a.interface.clone(),
                if a.attached { "yes" } else { "NO" }.to_string(),
                opt(a.link_id),
                opt(a.program_id),
                a.error.clone().or_else(|| a.reason.clone()).unwrap_or_default(),
            ]
        })
        .collect();
    print_table(
        &["PROGRAM", "HOOK", "INTERFACE", "ATTACHED", "LINK_ID", "PROG_ID", "WHY"],
        &rows,
        &[4, 5],
    );
    println!();
    let rows: Vec<Vec<String>> = view
        .uplinks
        .iter()
        .map(|u| {
            vec![
                u.index.to_string(),
                u.name.clone(),
                u.interface.clone().unwrap_or_else(|| "-".into()),
                u.address.to_string(),
                u.gateway.to_string(),
                u.table.to_string(),
                format!("{:#010x}", u.mark),
                match (&u.waiting, u.up) {
                    (Some(why), _) => format!("waiting: {why}"),
                    (None, true) => "up".into(),
                    (None, false) => "down".into(),
                },
            ]
        })
        .collect();
    print_table(
        &["INDEX", "UPLINK", "INTERFACE", "ADDRESS", "GATEWAY", "TABLE", "MARK", "STATE"],
        &rows,
        &[0, 5],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_split_into_program_and_interface() {
        assert_eq!(
            parse_link_pin("link-masq_uplink_in-eth4"),
            Some(("masq_uplink_in".into(), "eth4".into()))
        );
        assert_eq!(
            parse_link_pin("link-masq_lan_in-br-lan"),
            Some(("masq_lan_in".into(), "br-lan".into()))
        );
        assert_eq!(parse_link_pin("CONNS"), None);
        assert_eq!(parse_link_pin("link-masq_lan_in-"), None);
        assert_eq!(parse_link_pin("link-other-eth0"), None);
    }

    #[test]
    fn uplinks_resolve_by_name_or_index() {
        let names = Names {
            source: NamesSource::Daemon,
            lan_interface: Some("eth0".into()),
            uplinks: vec![
                UplinkName { name: "dsl".into(), interface: "eth4".into() },
                UplinkName { name: "isp-b".into(), interface: "eth1".into() },
            ],
        };
        assert_eq!(names.uplink_index("isp-b").unwrap(), 1);
        assert_eq!(names.uplink_index("#0").unwrap(), 0);
        assert_eq!(names.uplink_index("1").unwrap(), 1);
        assert!(names.uplink_index("cable").is_err());
        assert_eq!(names.uplink(1), "isp-b");
        assert_eq!(names.uplink(5), "#5");
        assert_eq!(Names::none().uplink(0), "#0");
    }

    #[test]
    fn protocols_parse_by_name_or_number() {
        assert_eq!(parse_proto("TCP").unwrap(), 6);
        assert_eq!(parse_proto("icmp").unwrap(), 1);
        assert_eq!(parse_proto("47").unwrap(), 47);
        assert!(parse_proto("sctpx").is_err());
    }

    #[test]
    fn stats_json_keeps_counter_order() {
        let view = StatsView {
            paths: vec![("ipv4_seen", 3), ("arp_replied", 1)],
            drops: vec![("drop_malformed", 2)],
            drops_total: 2,
        };
        assert_eq!(
            serde_json::to_string(&view).unwrap(),
            r#"{"paths":{"ipv4_seen":3,"arp_replied":1},"drops":{"drop_malformed":2},"drops_total":2}"#
        );
    }

    #[test]
    fn human_bytes_scale() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
