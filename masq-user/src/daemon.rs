//! `masq run` and `masq down`: the operator's checklist, each step undone on failure and exit.
use std::{fs, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use masq_common::Counter;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::{
    config::{Config, OnDown, OnUp, Uplink},
    conntrack::{Conn, EndReason},
    dataplane::{Dataplane, remove_pins},
    events::{Hub, Recorder},
    expiry::{ExpiryPass, KernelExpiry, expire},
    follow::{self, UplinkState},
    health::{
        monitor::{Monitor, Verdict},
        probe::ProbeSource,
        transition::{self, TransitionEvent},
    },
    hooks::HookChoice,
    host::HostInterfaces,
    local_ports, metrics, pinned,
    policy_tables::{self, PolicySpec, PolicyTables, UplinkRoute, UplinkTable},
    state::{self, DaemonState, Names, NamesSource, pid_file, ports_file},
    trace::{self, ProgramTrace},
};

/// The line `masq run` prints on stdout once the dataplane is up (the lab and tests wait for it).
pub const MASQ_READY_LINE: &str = "masq: dataplane ready";

/// Default pin directory of the maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/masq";
/// How often idle connections are expired, at most.
pub(crate) const EXPIRY_INTERVAL: Duration = Duration::from_secs(5);
/// The expiry pass reads every connection; on a large table it waits this many times its own
/// length before the next, so it takes at most a tenth of a CPU (idle connections then stay
/// past their timeout by up to the longer pause).
pub(crate) const EXPIRY_PACE: u32 = 10;

/// How often the dataplane's SYN counters are sampled and the CLI's state file rewritten.
const HEALTH_SAMPLE: Duration = Duration::from_secs(1);
/// Interfaces, addresses and default routes are followed on every netlink change, once this
/// long after the first of a burst, and this often besides (in case events were lost).
const FOLLOW_SETTLE: Duration = Duration::from_millis(100);
const FOLLOW_RESYNC: Duration = Duration::from_secs(10);

/// Tell the health monitor what the host shows of each uplink now (interface, carrier,
/// address); returns the verdicts that changed.
fn follow_links(monitor: &mut Monitor, cfg: &Config, followed: &Followed) -> Vec<Verdict> {
    cfg.uplinks
        .iter()
        .zip(&followed.states)
        .enumerate()
        .filter_map(|(i, (u, state))| {
            let carrier = followed.host.get(&u.interface).is_some_and(|ifc| ifc.carrier);
            let source = state.live().map(|live| ProbeSource {
                address: live.address,
                device: u.interface.clone(),
                mark: u.mark,
            });
            monitor.set_link(i, carrier, source, state.why_not(&u.interface))
        })
        .collect()
}

/// Apply a changed verdict: the uplink's flag for new connections, its log line, what its
/// `on_down`/`on_up` asks for its connections, and the operator's `on_transition` command.
fn apply_verdict(
    dataplane: &mut Dataplane,
    cfg: &Config,
    host: &HostInterfaces,
    monitor: &Monitor,
    v: &Verdict,
) {
    let Some(u) = cfg.uplinks.get(v.uplink) else { return };
    if let Err(e) = pinned::set_uplink_up(dataplane.pin_dir(), v.uplink, v.up) {
        warn!("uplink {}: updating its state: {e:#}", u.name);
    }
    if v.up {
        info!(
            "uplink {} ({}) is up: {}; it takes new connections again",
            u.name, u.interface, v.reason
        );
    } else {
        warn!(
            "uplink {} ({}) is down: {}; new connections go by the next uplink of their policy",
            u.name, u.interface, v.reason
        );
    }
    let removed = match (v.up, u.on_down, u.on_up) {
        (false, OnDown::Flush, _) => dataplane.remove_conns(EndReason::UplinkDown, |c| {
            let entry = c.any().1;
            !entry.is_inbound() && !entry.is_hairpin() && usize::from(c.uplink()) == v.uplink
        }),
        (true, _, OnUp::Reclaim) => dataplane
            .remove_conns(EndReason::Reclaimed, |c| steered_back(cfg, host, monitor, c, v.uplink)),
        _ => Ok(0),
    };
    match removed {
        Ok(0) => {}
        Ok(n) if v.up => info!(
            "uplink {}: {n} masqueraded connections that went by another uplink meanwhile              removed (on_up = \"reclaim\"): they reconnect by it",
            u.name
        ),
        Ok(n) => info!(
            "uplink {}: its {n} masqueraded connections removed (on_down = \"flush\")",
            u.name
        ),
        Err(e) => warn!("uplink {}: removing connections: {e:#}", u.name),
    }
    if let Some(hook) = &cfg.on_transition {
        let state = |up: bool| if up { "up" } else { "down" };
        transition::spawn(
            hook,
            TransitionEvent {
                uplink: u.name.clone(),
                interface: u.interface.clone(),
                state: state(v.up),
                previous: state(!v.up),
                reason: v.reason.clone(),
            },
        );
    }
}

/// A masqueraded connection on another uplink that its policy would now give to `uplink`.
/// One to an uplink's connected subnet is left alone: the dataplane sends it by that uplink,
/// whatever the policy says.
fn steered_back(
    cfg: &Config,
    host: &HostInterfaces,
    monitor: &Monitor,
    conn: &Conn,
    uplink: usize,
) -> bool {
    let Some((key, entry)) = &conn.orig else { return false };
    let on = usize::from(entry.uplink);
    if entry.is_inbound() || entry.is_hairpin() || on == uplink || on >= cfg.uplinks.len() {
        return false;
    }
    let ip = |a: u32| std::net::Ipv4Addr::from(u32::from_be(a));
    let connected = |u: &Uplink| {
        host.get(&u.interface).is_some_and(|i| i.subnet_of(ip(key.dst_addr)).is_some())
    };
    if cfg.uplinks.iter().any(connected) {
        return false;
    }
    let choices = cfg.steered_to(
        ip(key.src_addr),
        ip(key.dst_addr),
        key.proto,
        u16::from_be(key.dst_port),
        |i| monitor.is_up(i),
    );
    choices.contains(&uplink) && !choices.contains(&on)
}

/// Each uplink's verdict, for `fill_maps`.
fn verdicts(monitor: &Monitor, cfg: &Config) -> Vec<bool> {
    (0..cfg.uplinks.len()).map(|i| monitor.is_up(i)).collect()
}

/// The pause before the next expiry pass after one that took `pass`: the interval, or
/// [`EXPIRY_PACE`] times the pass when that is longer.
pub fn expiry_pause(interval: Duration, pass: Duration) -> Duration {
    interval.max(pass * EXPIRY_PACE)
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

/// The policy tables for the uplinks as they are now: a table without routes for one that is
/// absent or waiting.
pub fn policy_spec(cfg: &Config, states: &[UplinkState]) -> PolicySpec {
    let uplinks = cfg
        .uplinks
        .iter()
        .zip(states)
        .map(|(u, state)| UplinkTable {
            name: u.name.clone(),
            table: u.table,
            mark: u.mark,
            route: state.live().map(|live| UplinkRoute {
                ifindex: live.ifindex,
                address: live.address,
                gateway: live.gateway,
            }),
        })
        .collect();
    PolicySpec { uplinks, mark_mask: cfg.dataplane.mark_mask }
}

/// What the daemon follows on the host: its interfaces and each uplink's state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Followed {
    host: HostInterfaces,
    states: Vec<UplinkState>,
}

impl Followed {
    async fn observe(cfg: &Config) -> anyhow::Result<Self> {
        let host = HostInterfaces::read()?;
        let defaults = policy_tables::main_default_routes().await?;
        let states = follow::resolve_all(&cfg.uplinks, &host, &defaults);
        Ok(Followed { host, states })
    }

    /// The devices programs are attached to (LAN first), by index: a change means re-attaching.
    fn devices(&self, cfg: &Config) -> Vec<Option<u32>> {
        let index = |name: &str| self.host.get(name).map(|i| i.index);
        std::iter::once(index(&cfg.lan.interface))
            .chain(cfg.uplinks.iter().map(|u| index(&u.interface)))
            .collect()
    }

    fn waiting(&self, cfg: &Config) -> Vec<Option<String>> {
        cfg.uplinks.iter().zip(&self.states).map(|(u, s)| s.why_not(&u.interface)).collect()
    }
}

/// Validate, load (adopting a running dataplane's pinned state), fill the maps, install the
/// policy tables, attach, then serve until SIGINT or SIGTERM; SIGHUP reloads the config. On exit
/// the dataplane stays: it keeps forwarding until `masq down`. With `metrics`, serves Prometheus
/// metrics there (`GET /metrics`).
pub fn run(config_path: &Path, pin_dir: &Path, metrics: Option<SocketAddr>) -> anyhow::Result<()> {
    require_root()?;
    let cfg = Config::load(config_path)?;
    cfg.check_host(&HostInterfaces::read()?)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(config_path, cfg, pin_dir, metrics))
}

/// Bring the dataplane up. A fresh start that fails removes everything it made; a restart
/// that fails leaves the running dataplane as it was.
async fn start(
    cfg: &Config,
    followed: &Followed,
    pin_dir: &Path,
    up: &[bool],
) -> anyhow::Result<(Dataplane, PolicyTables, Vec<HookChoice>, Hub)> {
    let (host, states) = (&followed.host, &followed.states);
    let fresh = !pin_dir.join(masq_common::map_names::CONNS).exists();
    let undo = |tables: Option<PolicyTables>| async move {
        if fresh {
            let _ = local_ports::restore(&ports_file(pin_dir));
            let _ = remove_pins(pin_dir);
            if let Some(tables) = tables {
                let _ = tables.remove().await;
            }
        }
    };
    if let Err(e) = local_ports::claim(cfg.dataplane.gateway_ports, &ports_file(pin_dir)) {
        undo(None).await;
        return Err(e.context("dataplane.gateway_ports"));
    }
    let mut dataplane = match Dataplane::load(cfg, pin_dir) {
        Ok(dataplane) => dataplane,
        Err(e) => {
            undo(None).await;
            return Err(e);
        }
    };
    if let Err(e) = pinned::write_config(pin_dir, cfg, host, states, up) {
        drop(dataplane);
        undo(None).await;
        return Err(e);
    }
    match pinned::sweep_gateway_range(dataplane.pin_dir()) {
        Ok(0) => {}
        Ok(n) => info!("{n} NAT bindings inside the gateway's own ports removed"),
        Err(e) => warn!("removing NAT bindings inside the gateway's own ports: {e:#}"),
    }
    let tables = match PolicyTables::install(policy_spec(cfg, states)).await {
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
    let hub = match Hub::start(&mut dataplane, cfg, pin_dir) {
        Ok(hub) => hub,
        Err(e) => {
            drop(dataplane);
            undo(Some(tables)).await;
            return Err(e.context("the connection event stream"));
        }
    };
    log_hooks(&hooks);
    for (u, state) in cfg.uplinks.iter().zip(states) {
        log_uplink(u, None, state);
    }
    if !fresh {
        info!("adopted the pinned dataplane under {}", pin_dir.display());
    }
    Ok((dataplane, tables, hooks, hub))
}

fn log_hooks(hooks: &[HookChoice]) {
    for h in hooks {
        info!("{} on {} ({}): {}", h.program, h.interface, h.hook.name(), h.reason);
    }
}

/// Say what changed about an uplink (`old` is `None` at start).
fn log_uplink(u: &Uplink, old: Option<&UplinkState>, new: &UplinkState) {
    if old == Some(new) {
        return;
    }
    match new {
        UplinkState::Live(live) => {
            let gateway =
                live.gateway.map_or_else(|| "none (point-to-point)".into(), |g| g.to_string());
            info!(
                "uplink {} on {} (ifindex {}): address {}, gateway {gateway}",
                u.name, u.interface, live.ifindex, live.address
            );
        }
        waiting => warn!(
            "uplink {}: {}; it takes no connections until that changes",
            u.name,
            waiting.why_not(&u.interface).unwrap_or_default()
        ),
    }
}

/// Apply what changed on the host since `current`: programs re-attached to devices that
/// (re)appeared, maps, tables and rules following addresses and gateways, connections of an
/// address the uplink lost removed and counted. Returns whether anything changed.
async fn follow_host(
    dataplane: &mut Dataplane,
    tables: &PolicyTables,
    cfg: &Config,
    current: &mut Followed,
    state: &mut DaemonState,
    monitor: &mut Monitor,
) -> anyhow::Result<bool> {
    let new = Followed::observe(cfg).await?;
    if new == *current {
        return Ok(false);
    }
    if new.devices(cfg) != current.devices(cfg) {
        match dataplane.attach(cfg, &new.host) {
            Ok(hooks) => {
                log_hooks(&hooks);
                state.hooks = hooks;
            }
            Err(e) => warn!("attaching to the interfaces as they are now: {e:#}"),
        }
    }
    for ((u, old), now) in cfg.uplinks.iter().zip(&current.states).zip(&new.states) {
        log_uplink(u, Some(old), now);
    }
    let changed = follow_links(monitor, cfg, &new);
    if let Err(e) = pinned::write_config(
        dataplane.pin_dir(),
        cfg,
        &new.host,
        &new.states,
        &verdicts(monitor, cfg),
    ) {
        // Most likely the LAN device is gone; its return brings another change.
        warn!("updating the maps: {e:#}");
    }
    for verdict in &changed {
        apply_verdict(dataplane, cfg, &new.host, monitor, verdict);
    }
    tables.update(policy_spec(cfg, &new.states)).await.context("updating the policy tables")?;
    // Devices, addresses or routes moved: routes cached before are not trusted to the tick's end.
    match pinned::forget_routes(dataplane.pin_dir()) {
        Ok(n) => debug!("cached routes forgotten ({n} next-hop slots cleared)"),
        Err(e) => warn!("forgetting the cached routes: {e:#}"),
    }
    for ((u, old), now) in cfg.uplinks.iter().zip(&current.states).zip(&new.states) {
        let Some(lost) = follow::lost_address(old, now) else { continue };
        let wire = crate::map_values::wire_addr(lost);
        let removed = dataplane.remove_conns(EndReason::Renumbered, |conn| {
            conn.keys().any(|k| k.src_addr == wire || k.dst_addr == wire)
        })?;
        pinned::add_to_counter(dataplane.pin_dir(), Counter::ConnsRenumbered, removed as u64)?;
        info!("uplink {}: {removed} connections of its old address {lost} removed", u.name);
    }
    state.waiting = new.waiting(cfg);
    *current = new;
    Ok(true)
}

/// An expiry pass in flight hands back the in-kernel pass it used.
type ExpiryRun = (Option<KernelExpiry>, anyhow::Result<ExpiryPass>);

async fn serve(
    config_path: &Path,
    mut cfg: Config,
    pin_dir: &Path,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let listener = match metrics_addr {
        Some(addr) => Some(metrics::bind(addr).await?),
        None => None,
    };
    let mut followed = Followed::observe(&cfg).await?;
    // Probes start as the previous daemon of this dataplane left them, or as configured.
    let adopted =
        DaemonState::load(pin_dir).map(|s| Monitor::probe_states(&s.health)).unwrap_or_default();
    let mut monitor = Monitor::start(&cfg, &adopted);
    for v in follow_links(&mut monitor, &cfg, &followed) {
        let name = &cfg.uplinks[v.uplink].name;
        info!("uplink {name} starts {}: {}", if v.up { "up" } else { "down" }, v.reason);
    }
    let up = verdicts(&monitor, &cfg);
    let (mut dataplane, tables, hooks, mut hub) = start(&cfg, &followed, pin_dir, &up).await?;
    let mut names = Names::from_config(&cfg, NamesSource::Daemon);
    let mut program_trace = ProgramTrace::start(&mut dataplane, cfg.dataplane.trace)
        .unwrap_or_else(|e| {
            warn!("the programs' trace: {e:#}");
            None
        });
    monitor.run_probes();
    let tables = Arc::new(tables);
    // Its change notices drive the uplink following; the first follow below (the resync's
    // first tick is immediate) catches what changed since `observe`.
    let mut route_monitor = policy_tables::spawn_route_monitor(tables.clone())?;
    let pid_path = pid_file(pin_dir);
    let _ = fs::create_dir_all("/run/masq");
    let _ = fs::write(&pid_path, std::process::id().to_string());
    let mut state = DaemonState::new(pin_dir, config_path, &cfg);
    state.hooks = hooks;
    state.waiting = followed.waiting(&cfg);
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
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The pass runs on a blocking thread: over a large table it takes a second or more, which
    // would stall the health probes' timing and netlink on this one.
    let mut kernel_expiry = match KernelExpiry::load(&mut dataplane) {
        Ok(k) => {
            info!("idle connections are expired in the kernel (masq_expire)");
            Some(k)
        }
        Err(e) => {
            warn!("expiry in the kernel unavailable, reading the tables out instead: {e:#}");
            None
        }
    };
    let mut expiry_pass: Option<tokio::task::JoinHandle<ExpiryRun>> = None;
    let mut expiry_paced = false;
    let mut health = tokio::time::interval(HEALTH_SAMPLE);
    let mut resync = tokio::time::interval(FOLLOW_RESYNC);
    loop {
        tokio::select! {
            Some(round) = monitor.next_round() => {
                if let Some(v) = monitor.record(&round) {
                    apply_verdict(&mut dataplane, &cfg, &followed.host, &monitor, &v);
                    state.health = monitor.reports();
                    if let Err(e) = state.save(pin_dir) {
                        warn!("writing the state file for the CLI: {e:#}");
                    }
                }
            }
            _ = health.tick() => {
                match pinned::read_uplink_stats(pin_dir, cfg.uplinks.len()) {
                    Ok(stats) => monitor.sample_passive(&stats),
                    Err(e) => debug!("reading the uplinks' counters: {e:#}"),
                }
                state.health = monitor.reports();
                if let Err(e) = state.save(pin_dir) {
                    warn!("writing the state file for the CLI: {e:#}");
                }
            }
            changed = route_monitor.changed(), if !route_monitor.is_finished() => {
                if changed.is_some() {
                    // Let a burst (a device with its addresses and routes) settle.
                    tokio::time::sleep(FOLLOW_SETTLE).await;
                    resync.reset_immediately();
                }
            }
            _ = resync.tick() => {
                let followed_now =
                    follow_host(&mut dataplane, &tables, &cfg, &mut followed, &mut state, &mut monitor);
                match followed_now.await {
                    Ok(true) => {
                        if let Err(e) = state.save(pin_dir) {
                            warn!("writing the state file for the CLI: {e:#}");
                        }
                    }
                    Ok(false) => {}
                    Err(e) => warn!("following the interfaces: {e:#}"),
                }
            }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            _ = sighup.recv() => {
                match reload(&mut dataplane, &cfg, config_path, &followed, &monitor) {
                    Ok(mut new) => {
                        if health_settings(&new) != health_settings(&cfg) {
                            // Probes restart with the new settings, from the states they had.
                            let changed;
                            (monitor, changed) = monitor.reconfigure(&new);
                            for v in &changed {
                                apply_verdict(&mut dataplane, &new, &followed.host, &monitor, v);
                            }
                        }
                        if new.dataplane.trace != cfg.dataplane.trace {
                            match reload_programs(&new, &followed.host, pin_dir) {
                                Ok((fresh, hooks)) => {
                                    // The old programs' trace ring goes with them; what the old
                                    // object still had to report moves to the new one.
                                    drop(program_trace.take());
                                    let queued = dataplane.take_removed();
                                    dataplane = fresh;
                                    dataplane.requeue_removed(queued);
                                    state.hooks = hooks;
                                    info!("programs reloaded with trace = {:?}", new.dataplane.trace);
                                    program_trace =
                                        ProgramTrace::start(&mut dataplane, new.dataplane.trace)
                                            .unwrap_or_else(|e| {
                                                warn!("the programs' trace: {e:#}");
                                                None
                                            });
                                }
                                Err(e) => {
                                    // The programs run as they were loaded: so says the config
                                    // the daemon keeps, and the next reload tries again.
                                    warn!("reloading the programs for [dataplane] trace, which stays {:?}: {e:#}", cfg.dataplane.trace);
                                    new.dataplane.trace = cfg.dataplane.trace;
                                }
                            }
                        }
                        cfg = new;
                        names = Names::from_config(&cfg, NamesSource::Daemon);
                        if let Err(e) = hub.reconfigure(&mut dataplane, &cfg) {
                            warn!("[events]: {e:#}");
                        }
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
            _ = expiry.tick(), if expiry_pass.is_none() => {
                let (pins, timeouts) = (pin_dir.to_path_buf(), cfg.dataplane.timeouts.clone());
                let (mut kernel, read_left) = (kernel_expiry.take(), hub.tracking());
                expiry_pass = Some(tokio::task::spawn_blocking(move || {
                    let pass = expire(&pins, &timeouts, kernel.as_mut(), read_left);
                    (kernel, pass)
                }));
            }
            done = async { expiry_pass.as_mut().expect("a pass in flight").await },
                if expiry_pass.is_some() =>
            {
                expiry_pass = None;
                let done = done.map(|(kernel, pass)| {
                    kernel_expiry = kernel;
                    pass
                });
                match done {
                    Ok(Ok(pass)) => {
                        let held = pass.kept;
                        let rec = Recorder { cfg: &cfg, names: &names };
                        let left = pass.left.unwrap_or_default();
                        hub.observe(&mut dataplane, &rec, left, &pass.gone, pass.now_ns);
                        let interval = expiry_interval(&cfg.dataplane.timeouts);
                        let pause = expiry_pause(interval, pass.took);
                        let paced = pause > interval;
                        if paced {
                            expiry.reset_after(pause);
                        }
                        if paced != expiry_paced {
                            expiry_paced = paced;
                            info!(
                                "expiry pass over {held} connections took {} ms: the next in {:.1} s",
                                pass.took.as_millis(),
                                pause.as_secs_f64()
                            );
                        }
                    }
                    Ok(Err(e)) => warn!("expiry failed: {e:#}"),
                    Err(e) => warn!("expiry pass: {e}"),
                }
            }
            ready = hub.readable() => match ready {
                Ok(mut guard) => {
                    guard.clear_ready();
                    drop(guard);
                    hub.drain(&Recorder { cfg: &cfg, names: &names });
                }
                Err(e) => warn!("reading connection events: {e:#}"),
            },
            _ = trace::readable(&program_trace) => {
                if let Some(t) = program_trace.as_mut() {
                    t.flush();
                }
            }
            watcher = hub.accept() => match watcher {
                Ok(stream) => {
                    if let Err(e) = hub.add_watcher(stream, &mut dataplane) {
                        warn!("a connection watcher: {e:#}");
                    }
                }
                Err(e) => warn!("accepting a connection watcher: {e:#}"),
            },
        }
        let removed = dataplane.take_removed();
        if !removed.is_empty() {
            let rec = Recorder { cfg: &cfg, names: &names };
            for (reason, gone) in group_by_reason(removed) {
                hub.removed(&rec, &gone, reason);
            }
        }
    }
    hub.finish(&mut dataplane, &Recorder { cfg: &cfg, names: &names });
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    monitor.stop();
    route_monitor.stop().await;
    let _ = fs::remove_file(&pid_path);
    info!("daemon exiting; the dataplane keeps forwarding (`masq down` removes it)");
    Ok(())
}

/// Load the programs again (as a restart does: the pinned maps adopted, every pinned link's
/// program replaced atomically), for a setting that is fixed at load (`[dataplane] trace`).
fn reload_programs(
    cfg: &Config,
    host: &HostInterfaces,
    pin_dir: &Path,
) -> anyhow::Result<(Dataplane, Vec<HookChoice>)> {
    let mut fresh = Dataplane::load(cfg, pin_dir)?;
    let hooks = fresh.attach(cfg, host)?;
    Ok((fresh, hooks))
}

/// Removed connections by the reason they were removed for, in order.
fn group_by_reason(removed: Vec<(Conn, EndReason)>) -> Vec<(EndReason, Vec<Conn>)> {
    let mut groups: Vec<(EndReason, Vec<Conn>)> = Vec::new();
    for (conn, reason) in removed {
        match groups.last_mut() {
            Some((r, conns)) if *r == reason => conns.push(conn),
            _ => groups.push((reason, vec![conn])),
        }
    }
    groups
}

/// Apply a changed config in place: published services, policies and weights. Uplinks
/// themselves (interfaces, addresses, tables, marks) need a restart. Inbound connections
/// whose published service is gone are removed; all others keep flowing.
fn reload(
    dataplane: &mut Dataplane,
    current: &Config,
    path: &Path,
    followed: &Followed,
    monitor: &Monitor,
) -> anyhow::Result<Config> {
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
    local_ports::claim(new.dataplane.gateway_ports, &ports_file(dataplane.pin_dir()))?;
    let filled = pinned::write_config(
        dataplane.pin_dir(),
        &new,
        &host,
        &followed.states,
        &verdicts(monitor, current),
    );
    if let Err(e) = filled {
        // Rejected: the running config's port range again.
        let _ =
            local_ports::claim(current.dataplane.gateway_ports, &ports_file(dataplane.pin_dir()));
        return Err(e);
    }
    if let Err(e) = pinned::sweep_gateway_range(dataplane.pin_dir()) {
        warn!("removing NAT bindings inside the gateway's own ports: {e:#}");
    }
    let published = crate::map_values::publish_entries(&new);
    let removed = dataplane.remove_conns(EndReason::Unpublished, |conn| {
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

/// What the health monitor is built from: a reload that changes it restarts the probes.
fn health_settings(cfg: &Config) -> Vec<Option<&crate::config::Health>> {
    cfg.uplinks.iter().map(|u| u.health.as_ref()).collect()
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
    let _ = fs::remove_file(state::state_file(pin_dir));
    let tables: Vec<u32> =
        cfg.map(|c| c.uplinks.iter().map(|u| u.table).collect()).unwrap_or_default();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let removed = runtime.block_on(policy_tables::remove_all(&tables))?;
    remove_pins(pin_dir)?;
    if let Err(e) = local_ports::restore(&ports_file(pin_dir)) {
        warn!("{e:#}");
    }
    info!("down: {removed} rules and routes removed, pins under {} removed", pin_dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_expiry_pass_spaces_out_the_next() {
        let five = Duration::from_secs(5);
        assert_eq!(expiry_pause(five, Duration::from_millis(140)), five);
        assert_eq!(expiry_pause(five, Duration::from_millis(500)), five);
        assert_eq!(expiry_pause(five, Duration::from_millis(1400)), Duration::from_secs(14));
    }
}
