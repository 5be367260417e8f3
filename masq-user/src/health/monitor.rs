//! The daemon's side of uplink health: one probing task per uplink with `[uplink.health]`,
//! their rounds judged by each uplink's [`Tracker`], the passive counters sampled, and for
//! every uplink the verdict that counts: up for new connections only with its interface up
//! (carrier, from the netlink-driven host view), its address, and its probes passing.
use std::{
    net::Ipv4Addr,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use futures::future::join_all;
use masq_common::UplinkStats;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{
    HealthView, ProbeState, Tracker,
    passive::{Passive, PassiveView},
    probe::{ProbeSource, probe},
    unix_ms,
};
use crate::config::{Config, Health, Uplink};

/// One uplink as the CLI and metrics see it (`masq uplinks`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UplinkHealthReport {
    /// Takes new connections.
    pub up: bool,
    /// When `up` last changed (or the daemon started), Unix milliseconds.
    pub since_unix_ms: u64,
    /// Why it is up or down.
    pub reason: String,
    /// Its interface is up with a carrier.
    pub carrier: bool,
    /// Up/down transitions since the daemon started.
    pub transitions: u64,
    /// The probes' view; `None` without `[uplink.health]`.
    pub probes: Option<HealthView>,
    pub passive: PassiveView,
}

/// A completed round of probes: its uplink, its place in the order rounds were sent, and per
/// target the round-trip time or `None`.
#[derive(Clone, Debug)]
pub struct RoundResult {
    pub uplink: usize,
    pub seq: u64,
    pub rtts: Vec<Option<Duration>>,
}

/// A change of an uplink's verdict, for the daemon to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub uplink: usize,
    pub up: bool,
    pub reason: String,
}

struct UplinkHealth {
    index: usize,
    name: String,
    tracker: Option<Tracker>,
    passive: Passive,
    passive_view: PassiveView,
    carrier: bool,
    /// Why it is not live (no interface, no address), or `None`.
    not_live: Option<String>,
    up: bool,
    since_unix_ms: u64,
    reason: String,
    transitions: u64,
    source: watch::Sender<Option<ProbeSource>>,
    interval: watch::Sender<Duration>,
    /// Its probe loop, until [`Monitor::run_probes`] starts it.
    prober: Option<ProbeLoop>,
}

type ProbeLoop = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// All uplinks' health.
pub struct Monitor {
    uplinks: Vec<UplinkHealth>,
    rounds: mpsc::Receiver<RoundResult>,
    /// The probe thread, once started: its stop signal and handle.
    prober: Option<(tokio::sync::oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl Monitor {
    /// Set up the probes of every uplink that has `[uplink.health]` ([`Monitor::run_probes`]
    /// starts them; each probes once it has an address). Each tracker starts in the state
    /// `probes` gives (what a previous daemon's had, so a restart keeps it), or its `initial`
    /// one.
    pub fn start(cfg: &Config, probes: &[Option<ProbeState>]) -> Monitor {
        let (results, rounds) = mpsc::channel(64);
        let uplinks = cfg
            .uplinks
            .iter()
            .enumerate()
            .map(|(i, u)| UplinkHealth::start(i, u, probes.get(i).copied().flatten(), &results))
            .collect();
        Monitor { uplinks, rounds, prober: None }
    }

    /// The monitor for a reloaded config: probes restart with the new settings from the states
    /// their trackers had; what the host shows of each uplink and each verdict are kept. Returns
    /// the verdicts that change with the new settings.
    pub fn reconfigure(mut self, cfg: &Config) -> (Monitor, Vec<Verdict>) {
        self.stop();
        let probes: Vec<Option<ProbeState>> =
            self.uplinks.iter().map(|u| u.tracker.as_ref().map(Tracker::state)).collect();
        let mut new = Monitor::start(cfg, &probes);
        for (n, old) in new.uplinks.iter_mut().zip(&self.uplinks) {
            n.carrier = old.carrier;
            n.not_live.clone_from(&old.not_live);
            n.up = old.up;
            n.since_unix_ms = old.since_unix_ms;
            n.reason.clone_from(&old.reason);
            n.transitions = old.transitions;
            n.passive = old.passive.clone();
            n.source.send_replace(old.source.borrow().clone());
        }
        let verdicts = new.uplinks.iter_mut().filter_map(|u| u.reassess(None)).collect();
        new.run_probes();
        (new, verdicts)
    }

    /// Each tracker's state, for a daemon started later (`start`).
    pub fn probe_states(reports: &[UplinkHealthReport]) -> Vec<Option<ProbeState>> {
        reports.iter().map(|r| r.probes.as_ref().map(|p| p.state)).collect()
    }

    /// Start probing (once the dataplane and its tables are in place, so that the first probes
    /// already take their uplink's route), on a thread and runtime of their own: the daemon's
    /// blocking work (a table dump for a flush, a map update) never delays a probe's answer.
    pub fn run_probes(&mut self) {
        let probers: Vec<ProbeLoop> =
            self.uplinks.iter_mut().filter_map(|u| u.prober.take()).collect();
        if probers.is_empty() {
            return;
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new().name("masq-probes".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => return tracing::warn!("health probes: no runtime: {e}"),
            };
            runtime.block_on(async move {
                for prober in probers {
                    tokio::spawn(prober);
                }
                let _ = stopped.await;
            });
        });
        match thread {
            Ok(thread) => self.prober = Some((stop, thread)),
            Err(e) => tracing::warn!("health probes: cannot start their thread: {e}"),
        }
    }

    /// The next completed round of probes: (uplink, per-target round-trip times).
    pub async fn next_round(&mut self) -> Option<RoundResult> {
        self.rounds.recv().await
    }

    /// Judge a round; returns the uplink's new verdict if it changed.
    pub fn record(&mut self, round: &RoundResult) -> Option<Verdict> {
        let u = self.uplinks.get_mut(round.uplink)?;
        let change = u.tracker.as_mut()?.record_round(round.seq, &round.rtts);
        if let Some(change) = &change {
            let level = if change.to == ProbeState::Up { "passing" } else { "failing" };
            tracing::info!("uplink {}: probes {level}: {}", u.name, change.reason);
        }
        u.publish_interval();
        u.reassess(change.map(|c| c.reason))
    }

    /// The interface and address as the daemon follows them: `source` is where probes leave
    /// from (`None` while the uplink has no address), `not_live` why it carries nothing.
    pub fn set_link(
        &mut self,
        uplink: usize,
        carrier: bool,
        source: Option<ProbeSource>,
        not_live: Option<String>,
    ) -> Option<Verdict> {
        let u = self.uplinks.get_mut(uplink)?;
        let interface_change = u.carrier != carrier || u.not_live != not_live;
        u.carrier = carrier;
        u.not_live = not_live;
        u.source.send_if_modified(|s| {
            let changed = *s != source;
            *s = source;
            changed
        });
        if !interface_change {
            return None;
        }
        u.reassess(None)
    }

    /// Sample the dataplane's SYN counters (about once a second).
    pub fn sample_passive(&mut self, stats: &[UplinkStats]) {
        let now = Instant::now();
        for (u, s) in self.uplinks.iter_mut().zip(stats) {
            u.passive.sample(now, s);
            let view = u.passive.view();
            if view.suspect != u.passive_view.suspect {
                match &view.suspect {
                    Some(why) => tracing::warn!("uplink {} is suspect: {why}", u.name),
                    None if u.passive_view.suspect.is_some() => {
                        tracing::info!("uplink {}: its SYNs are answered again", u.name);
                    }
                    None => {}
                }
            }
            if let Some(tracker) = u.tracker.as_mut().filter(|t| t.config().passive) {
                tracker.set_suspect(view.suspect.clone());
            }
            u.passive_view = view;
            u.publish_interval();
        }
    }

    pub fn reports(&self) -> Vec<UplinkHealthReport> {
        self.uplinks
            .iter()
            .map(|u| UplinkHealthReport {
                up: u.up,
                since_unix_ms: u.since_unix_ms,
                reason: u.reason.clone(),
                carrier: u.carrier,
                transitions: u.transitions,
                probes: u.tracker.as_ref().map(Tracker::view),
                passive: u.passive_view.clone(),
            })
            .collect()
    }

    pub fn is_up(&self, uplink: usize) -> bool {
        self.uplinks.get(uplink).is_some_and(|u| u.up)
    }

    /// Stop probing (the probe thread ends with its runtime and every probe in flight).
    pub fn stop(&mut self) {
        if let Some((stop, thread)) = self.prober.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        self.stop();
    }
}

impl UplinkHealth {
    fn start(
        index: usize,
        uplink: &Uplink,
        probes: Option<ProbeState>,
        results: &mpsc::Sender<RoundResult>,
    ) -> Self {
        let mut tracker = uplink.health.as_ref().map(Tracker::new);
        if let (Some(t), Some(state)) = (tracker.as_mut(), probes) {
            t.assume(state);
        }
        let (source, source_rx) = watch::channel(None);
        let interval = tracker.as_ref().map_or(Duration::from_secs(1), Tracker::interval);
        let (interval, interval_rx) = watch::channel(interval);
        let prober = uplink
            .health
            .clone()
            .map(|health| probe_loop(index, health, source_rx, interval_rx, results.clone()));
        UplinkHealth {
            index,
            name: uplink.name.clone(),
            up: tracker.as_ref().is_none_or(|t| t.state() == ProbeState::Up),
            tracker,
            passive: Passive::default(),
            passive_view: PassiveView::default(),
            carrier: false,
            not_live: Some("not seen yet".into()),
            since_unix_ms: unix_ms(),
            reason: "starting".into(),
            transitions: 0,
            source,
            interval,
            prober: prober.map(|p| Box::pin(p) as ProbeLoop),
        }
    }

    fn publish_interval(&self) {
        if let Some(t) = &self.tracker {
            self.interval.send_if_modified(|i| {
                let changed = *i != t.interval();
                *i = t.interval();
                changed
            });
        }
    }

    /// Work out the verdict again; `probe_reason` is why the probes just changed their mind.
    fn reassess(&mut self, probe_reason: Option<String>) -> Option<Verdict> {
        let probes_up = self.tracker.as_ref().is_none_or(|t| t.state() == ProbeState::Up);
        let (up, reason) = if let Some(why) = &self.not_live {
            (false, why.clone())
        } else if !self.carrier {
            (false, "its interface is down or has no carrier".to_owned())
        } else if let Some(why) = probe_reason {
            (probes_up, why)
        } else if !probes_up {
            (false, self.tracker.as_ref().map(|t| t.view().reason).unwrap_or_default())
        } else if self.tracker.is_some() {
            (true, "interface up, probes passing".to_owned())
        } else {
            (true, "interface up with its address".to_owned())
        };
        if up == self.up {
            return None;
        }
        self.up = up;
        self.since_unix_ms = unix_ms();
        self.reason = reason.clone();
        self.transitions += 1;
        Some(Verdict { uplink: self.index, up, reason })
    }
}

/// Probe rounds for one uplink until aborted: a round every interval (the tracker's current
/// one), each on its own task so a slow round does not delay the next.
async fn probe_loop(
    index: usize,
    health: Health,
    mut source: watch::Receiver<Option<ProbeSource>>,
    interval: watch::Receiver<Duration>,
    results: mpsc::Sender<RoundResult>,
) {
    let health = std::sync::Arc::new(health);
    let in_flight = std::sync::Arc::new(AtomicUsize::new(0));
    let mut interval = interval;
    let mut seq = 0u64;
    loop {
        let Some(from) = source.borrow_and_update().clone() else {
            // No address yet: wait for one.
            if source.changed().await.is_err() {
                return;
            }
            continue;
        };
        let (health, results, in_flight) = (health.clone(), results.clone(), in_flight.clone());
        // Rounds overlap when the timeout exceeds the interval; a bounded number of them.
        if in_flight.fetch_add(1, Ordering::Relaxed) >= MAX_ROUNDS_IN_FLIGHT {
            in_flight.fetch_sub(1, Ordering::Relaxed);
        } else {
            seq += 1;
            spawn_round(index, seq, health, from, results, in_flight);
        }
        // The next round is one interval after this one, the interval as it is then (a
        // failed round or a suspect shortens it at once).
        let sent = tokio::time::Instant::now();
        loop {
            let next = sent + *interval.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep_until(next) => break,
                changed = interval.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// Rounds of one uplink in flight at most (each holds a socket per target).
const MAX_ROUNDS_IN_FLIGHT: usize = 8;

fn spawn_round(
    index: usize,
    seq: u64,
    health: std::sync::Arc<Health>,
    from: ProbeSource,
    results: mpsc::Sender<RoundResult>,
    in_flight: std::sync::Arc<AtomicUsize>,
) {
    tokio::spawn(async move {
        let round = join_all(
            health
                .targets
                .iter()
                .map(|&target: &Ipv4Addr| probe(&health.method, &from, target, health.timeout)),
        )
        .await;
        in_flight.fetch_sub(1, Ordering::Relaxed);
        let _ = results.send(RoundResult { uplink: index, seq, rtts: round }).await;
    });
}
