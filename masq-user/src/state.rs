//! The daemon's files beside its pins: the pid file (`masq down`, `masq reload`) and the state
//! file the CLI takes names from, plus the reload signal and the names themselves.
//!
//! Names (uplink names, interfaces) are not in the maps. The daemon writes a small state file
//! next to its pid file (`/run/masq/<pin dir with / as _>.json`): the resolved config, its path,
//! its pid and the outcome of the last reload. The CLI takes names from, in this order: an
//! explicit `--config`, that state file (when it belongs to the dataplane pinned now), the
//! default config `/etc/masq/masq.toml`; failing all, it shows uplink indexes (`#0`, `#1`, …).
use std::{
    fs,
    io::{self, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, anyhow, bail};
use masq_common::{MAX_UPLINKS, map_names};
use serde::{Deserialize, Serialize};

use crate::{config::Config, hooks::HookChoice, pinned::read_table_size};

/// The config the CLI reads for names when neither `--config` nor a daemon state file names one.
pub const DEFAULT_CONFIG: &str = "/etc/masq/masq.toml";

/// Where `masq run` records its pid for `masq down` and `masq reload`, one file per pin
/// directory; its state for the CLI sits beside it ([`state_file`]).
pub fn pid_file(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.to_string_lossy().replace('/', "_");
    PathBuf::from("/run/masq").join(format!("{name}.pid"))
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
    /// Per uplink index: up or down for new connections, why, and what the probes and the
    /// dataplane's SYNs say (rewritten every second).
    #[serde(default)]
    pub health: Vec<crate::health::monitor::UplinkHealthReport>,
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

/// Where the system's own ephemeral port range is kept while masq has changed it
/// (`local_ports::claim`), beside the pid file.
pub fn ports_file(pin_dir: &Path) -> PathBuf {
    pid_file(pin_dir).with_extension("ports")
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
            health: Vec::new(),
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
            // The system's port range saved for that dataplane (`local_ports`) stays: the
            // range is still narrowed until `masq down` gives it back.
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
