//! `masq run` and `masq down`: the operator's checklist, each step undone on failure and exit.
use std::{
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context as _, bail};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    conntrack::{self, ConnTable},
    dataplane::{Dataplane, remove_pins},
    hooks::HookChoice,
    host::HostInterfaces,
    inspect::{self, DaemonState, Names, NamesSource},
    lab::MASQ_READY_LINE,
    metrics,
    policy_tables::{self, PolicySpec, PolicyTables, UplinkTable},
};

/// Default pin directory of the maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/masq";
/// How often idle connections are expired, at most.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(5);

/// How often uplink links are checked for failover.
const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// Failover: mark each uplink up or down for new connections by its link state.
fn check_uplinks(dataplane: &mut Dataplane, cfg: &Config) {
    for (index, uplink) in cfg.uplinks.iter().enumerate() {
        let up = match crate::health::link_is_up(&uplink.interface) {
            Ok(up) => up,
            Err(e) => {
                debug!("uplink {}: reading the state of {}: {e}", uplink.name, uplink.interface);
                false
            }
        };
        match dataplane.set_uplink_up(index, up) {
            Ok(true) if up => info!(
                "uplink {} ({}) is up: it takes new connections again",
                uplink.name, uplink.interface
            ),
            Ok(true) => warn!(
                "uplink {} ({}) is down: new connections go to the next uplink of their policy",
                uplink.name, uplink.interface
            ),
            Ok(false) => {}
            Err(e) => warn!("uplink {}: updating its state: {e:#}", uplink.name),
        }
    }
}

/// Expire at least as often as the shortest timeout, so none overstays by more than itself.
fn expiry_interval(t: &crate::config::Timeouts) -> Duration {
    [t.tcp_syn, t.tcp_established, t.tcp_closing, t.udp, t.udp_stream, t.icmp]
        .into_iter()
        .fold(EXPIRY_INTERVAL, Duration::min)
}

/// Fail with one clear line unless running as root.
pub fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("masq needs root (CAP_BPF, CAP_NET_ADMIN): run it as root");
    }
    Ok(())
}

/// Where `masq run` records its pid for `masq down` and `masq reload`, one file per pin
/// directory; its state for the CLI sits beside it ([`inspect::state_file`]).
pub fn pid_file(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.to_string_lossy().replace('/', "_");
    PathBuf::from("/run/masq").join(format!("{name}.pid"))
}

pub fn policy_spec(cfg: &Config, host: &HostInterfaces) -> anyhow::Result<PolicySpec> {
    let uplinks = cfg
        .uplinks
        .iter()
        .map(|u| {
            let iface = host.get(&u.interface).with_context(|| {
                format!("uplink {}: interface {} not found", u.name, u.interface)
            })?;
            Ok(UplinkTable {
                name: u.name.clone(),
                ifindex: iface.index,
                address: u.address,
                gateway: u.gateway,
                table: u.table,
                mark: u.mark,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(PolicySpec { uplinks, mark_mask: cfg.dataplane.mark_mask })
}

/// Validate, load (adopting a running dataplane's pinned state), fill the maps, install the
/// policy tables, attach, then serve until SIGINT or SIGTERM; SIGHUP reloads the config. On exit
/// the dataplane stays: it keeps forwarding until `masq down`. With `metrics`, serves Prometheus
/// metrics there (`GET /metrics`).
pub fn run(config_path: &Path, pin_dir: &Path, metrics: Option<SocketAddr>) -> anyhow::Result<()> {
    require_root()?;
    let cfg = Config::load(config_path)?;
    let host = HostInterfaces::read()?;
    cfg.check_host(&host)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(config_path, cfg, host, pin_dir, metrics))
}

/// Bring the dataplane up. A fresh start that fails removes everything it made; a restart
/// that fails leaves the running dataplane as it was.
async fn start(
    cfg: &Config,
    host: &HostInterfaces,
    pin_dir: &Path,
) -> anyhow::Result<(Dataplane, PolicyTables, Vec<HookChoice>)> {
    let fresh = !pin_dir.join(masq_common::map_names::CONNS).exists();
    let undo = |tables: Option<PolicyTables>| async move {
        if fresh {
            let _ = remove_pins(pin_dir);
            if let Some(tables) = tables {
                let _ = tables.remove().await;
            }
        }
    };
    let mut dataplane = match Dataplane::load(cfg, pin_dir) {
        Ok(dataplane) => dataplane,
        Err(e) => {
            undo(None).await;
            return Err(e);
        }
    };
    if let Err(e) = dataplane.fill_maps(cfg, host) {
        drop(dataplane);
        undo(None).await;
        return Err(e);
    }
    let tables = match PolicyTables::install(policy_spec(cfg, host)?).await {
        Ok(tables) => tables,
        Err(e) => {
            drop(dataplane);
            undo(None).await;
            return Err(e.context("installing the policy tables"));
        }
    };
    let hooks = match dataplane.attach(cfg, host) {
        Ok(hooks) => hooks,
        Err(e) => {
            drop(dataplane);
            undo(Some(tables)).await;
            return Err(e);
        }
    };
    for h in &hooks {
        info!("{} on {} ({}): {}", h.program, h.interface, h.hook.name(), h.reason);
    }
    if !fresh {
        info!("adopted the pinned dataplane under {}", pin_dir.display());
    }
    Ok((dataplane, tables, hooks))
}

async fn serve(
    config_path: &Path,
    mut cfg: Config,
    host: HostInterfaces,
    pin_dir: &Path,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let listener = match metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let (mut dataplane, tables, hooks) = start(&cfg, &host, pin_dir).await?;
    let tables = Arc::new(tables);
    let monitor = policy_tables::spawn_route_monitor(tables.clone())?;
    let pid_path = pid_file(pin_dir);
    let _ = fs::create_dir_all("/run/masq");
    let _ = fs::write(&pid_path, std::process::id().to_string());
    let mut state = DaemonState::new(pin_dir, config_path, &cfg);
    state.hooks = hooks;
    if let Err(e) = state.save(pin_dir) {
        warn!("writing the state file for the CLI: {e:#}");
    }
    let metrics = listener.map(|l| {
        metrics::spawn(l, pin_dir.to_path_buf(), Names::from_config(&cfg, NamesSource::Daemon))
    });
    info!(
        "serving {} uplinks under {}, config {}",
        cfg.uplinks.len(),
        pin_dir.display(),
        config_path.display()
    );
    println!("{MASQ_READY_LINE}");

    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut expiry = tokio::time::interval(expiry_interval(&cfg.dataplane.timeouts));
    let mut health = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        tokio::select! {
            _ = health.tick() => check_uplinks(&mut dataplane, &cfg),
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                match reload(&mut dataplane, &cfg, config_path) {
                    Ok(new) => {
                        cfg = new;
                        state.reloaded(Ok(&cfg));
                        info!("reloaded {}", config_path.display());
                    }
                    Err(e) => {
                        state.reloaded(Err(format!("{e:#}")));
                        warn!("reload rejected, keeping the running config: {e:#}");
                    }
                }
                if let Err(e) = state.save(pin_dir) {
                    warn!("writing the state file for the CLI: {e:#}");
                }
            }
            _ = expiry.tick() => {
                let now = conntrack::clock_ns();
                let expired = dataplane.conns().and_then(|map| {
                    conntrack::expire(&mut ConnTable::try_from(map)?, &cfg.dataplane.timeouts, now)
                });
                match expired {
                    Ok(0) => {}
                    Ok(n) => info!("expired {n} idle connections"),
                    Err(e) => warn!("expiry failed: {e:#}"),
                }
            }
        }
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    monitor.stop().await;
    let _ = fs::remove_file(&pid_path);
    info!("daemon exiting; the dataplane keeps forwarding (`masq down` removes it)");
    Ok(())
}

/// Apply a changed config in place: published services, policies and weights. Uplinks
/// themselves (interfaces, addresses, tables, marks) need a restart. Inbound connections
/// whose published service is gone are removed; all others keep flowing.
fn reload(dataplane: &mut Dataplane, current: &Config, path: &Path) -> anyhow::Result<Config> {
    let new = Config::load(path)?;
    let host = HostInterfaces::read()?;
    new.check_host(&host)?;
    let identity = |c: &Config| {
        c.uplinks
            .iter()
            .map(|u| (u.name.clone(), u.interface.clone(), u.address, u.gateway, u.table, u.mark))
            .collect::<Vec<_>>()
    };
    if identity(&new) != identity(current) || new.lan != current.lan {
        bail!("uplinks or the LAN changed: that needs `masq run` again, not a reload");
    }
    dataplane.fill_maps(&new, &host)?;
    let published = crate::dataplane::publish_entries(&new);
    let mut table = ConnTable::try_from(dataplane.conns()?)?;
    let removed = conntrack::remove_where(&mut table, |conn| {
        conn.orig.as_ref().is_some_and(|(key, entry)| {
            entry.is_inbound()
                && !published.iter().any(|(k, target)| {
                    k.addr == key.dst_addr
                        && (k.port == 0 || (k.port == key.dst_port && k.proto == key.proto))
                        && target.to_addr == entry.xlate.dst_addr
                })
        })
    })?;
    if removed > 0 {
        info!("removed {removed} connections to services no longer published");
    }
    Ok(new)
}

/// Stop a running daemon and remove whatever masq left: policy rules and routes, pins.
pub fn down(cfg: Option<&Config>, pin_dir: &Path) -> anyhow::Result<()> {
    require_root()?;
    crate::dataplane::ensure_bpffs()?;
    let pid_path = pid_file(pin_dir);
    if let Ok(pid) = fs::read_to_string(&pid_path) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            // SAFETY: plain kill(2).
            if unsafe { libc::kill(pid, libc::SIGTERM) } == 0 {
                for _ in 0..100 {
                    // SAFETY: signal 0 only probes.
                    if unsafe { libc::kill(pid, 0) } != 0 {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        let _ = fs::remove_file(&pid_path);
    }
    let _ = fs::remove_file(inspect::state_file(pin_dir));
    let tables: Vec<u32> =
        cfg.map(|c| c.uplinks.iter().map(|u| u.table).collect()).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let removed = runtime.block_on(policy_tables::remove_all(&tables))?;
    remove_pins(pin_dir)?;
    info!("down: {removed} rules and routes removed, pins under {} removed", pin_dir.display());
    Ok(())
}
