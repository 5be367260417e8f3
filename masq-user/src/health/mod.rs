//! Uplink health beyond the carrier: rounds of probes that leave by the uplink itself
//! ([`probe`]), judged with hysteresis, loss and latency levels and a quorum of targets
//! ([`Tracker`]), and the dataplane's own view of its SYNs ([`passive`]). The daemon marks an
//! uplink up for new connections only while its interface is up with a carrier, it has its
//! address, and its tracker (when it has `[uplink.health]`) says up.
pub mod monitor;
pub mod passive;
pub mod probe;
pub mod transition;

use std::{
    collections::VecDeque,
    net::Ipv4Addr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use crate::config::{Health, Initial};

/// Up or down for new connections, as the probes judge it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeState {
    Up,
    Down,
}

impl ProbeState {
    pub fn name(self) -> &'static str {
        match self {
            ProbeState::Up => "up",
            ProbeState::Down => "down",
        }
    }
}

/// A change of state and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub to: ProbeState,
    pub reason: String,
}

/// One target's recent probes.
#[derive(Clone, Debug)]
struct Target {
    addr: Ipv4Addr,
    /// The last `window` probes: their round-trip time, `None` when lost.
    window: VecDeque<Option<Duration>>,
    sent: u64,
    answered: u64,
    last_rtt: Option<Duration>,
}

impl Target {
    fn loss_percent(&self) -> f64 {
        if self.window.is_empty() {
            return 0.0;
        }
        let lost = self.window.iter().filter(|p| p.is_none()).count();
        lost as f64 * 100.0 / self.window.len() as f64
    }

    fn avg_rtt(&self) -> Option<Duration> {
        let (sum, n) =
            self.window.iter().flatten().fold((Duration::ZERO, 0u32), |(s, n), r| (s + *r, n + 1));
        (n > 0).then(|| sum / n)
    }
}

/// The probe state machine of one uplink. Rounds are judged as they complete: a round passes
/// when at least `quorum` targets answered it with their recent loss and latency within the
/// levels (the failure levels while up, the recovery levels while down); `down` failed rounds
/// in a row take the uplink down, `up` passed rounds in a row bring it back. The first answer
/// after a sustained silence (`down` rounds without a single answer) clears the loss and
/// latency windows: an outage says nothing about the line's quality once it returns.
#[derive(Clone, Debug)]
pub struct Tracker {
    cfg: Health,
    state: ProbeState,
    /// Rounds in a row that argue for the other state.
    streak: u32,
    /// Rounds in a row without any answer.
    silent: u32,
    /// Up, but the last round failed.
    failing: bool,
    /// Why the passive check suspects the uplink, if it does.
    suspect: Option<String>,
    targets: Vec<Target>,
    since_unix_ms: u64,
    reason: String,
    rounds: u64,
    rounds_passed: u64,
    transitions: u64,
    /// The latest round judged (`record_round`).
    last_seq: u64,
}

impl Tracker {
    pub fn new(cfg: &Health) -> Self {
        let state = match cfg.initial {
            Initial::Up => ProbeState::Up,
            Initial::Down => ProbeState::Down,
        };
        let targets = cfg
            .targets
            .iter()
            .map(|&addr| Target {
                addr,
                window: VecDeque::with_capacity(cfg.window as usize),
                sent: 0,
                answered: 0,
                last_rtt: None,
            })
            .collect();
        Tracker {
            cfg: cfg.clone(),
            state,
            streak: 0,
            silent: 0,
            failing: false,
            suspect: None,
            targets,
            since_unix_ms: unix_ms(),
            reason: format!("initial state {}", state.name()),
            rounds: 0,
            rounds_passed: 0,
            transitions: 0,
            last_seq: 0,
        }
    }

    /// Start from `state` instead of the configured initial one (a restart adopting it).
    pub fn assume(&mut self, state: ProbeState) {
        if state != self.state {
            self.state = state;
            self.reason = format!("adopted as {}", state.name());
        }
    }

    pub fn config(&self) -> &Health {
        &self.cfg
    }

    pub fn state(&self) -> ProbeState {
        self.state
    }

    /// How long until the next round: faster while failing or suspect, the recovery interval
    /// while down.
    pub fn interval(&self) -> Duration {
        match self.state {
            ProbeState::Down => self.cfg.recovery_interval,
            ProbeState::Up if self.failing || self.suspect.is_some() => self.cfg.failure_interval,
            ProbeState::Up => self.cfg.interval,
        }
    }

    /// What the passive check says (`Some(why)`: the dataplane's SYNs go unanswered).
    pub fn set_suspect(&mut self, suspect: Option<String>) {
        self.suspect = suspect;
    }

    /// Judge round `seq` (rounds are numbered as sent). Rounds overlap when the timeout exceeds
    /// the interval, so one may complete after a later one: such a stale round counts in the
    /// targets' totals only, never against what the later one showed (a line back from an
    /// outage answers the new round before the old one times out).
    pub fn record_round(&mut self, seq: u64, round: &[Option<Duration>]) -> Option<Change> {
        if seq < self.last_seq {
            for (target, result) in self.targets.iter_mut().zip(round) {
                target.sent += 1;
                target.answered += u64::from(result.is_some());
            }
            return None;
        }
        self.last_seq = seq;
        self.record(round)
    }

    /// Judge a completed round, the latest; returns the change it causes, if any.
    pub fn record(&mut self, round: &[Option<Duration>]) -> Option<Change> {
        self.rounds += 1;
        let window = self.cfg.window as usize;
        let answered = round.iter().filter(|r| r.is_some()).count();
        if answered > 0 && self.silent >= self.cfg.down {
            // The first answer after a sustained silence: the outage is no measure of the line.
            for t in &mut self.targets {
                t.window.clear();
            }
        }
        for (target, result) in self.targets.iter_mut().zip(round) {
            target.sent += 1;
            if let Some(rtt) = result {
                target.answered += 1;
                target.last_rtt = Some(*rtt);
            }
            if target.window.len() == window {
                target.window.pop_front();
            }
            target.window.push_back(*result);
        }
        self.silent = if answered == 0 { self.silent + 1 } else { 0 };
        let (passed, why) = self.judge(round);
        if passed {
            self.rounds_passed += 1;
        }
        let change = match (self.state, passed) {
            (ProbeState::Up, true) => {
                self.streak = 0;
                self.failing = false;
                None
            }
            (ProbeState::Up, false) => {
                self.failing = true;
                self.streak += 1;
                (self.streak >= self.cfg.down).then(|| Change {
                    to: ProbeState::Down,
                    reason: format!("{} rounds in a row failed: {why}", self.streak),
                })
            }
            (ProbeState::Down, true) => {
                self.streak += 1;
                (self.streak >= self.cfg.up).then(|| Change {
                    to: ProbeState::Up,
                    reason: format!("{} rounds in a row passed: {why}", self.streak),
                })
            }
            (ProbeState::Down, false) => {
                self.streak = 0;
                None
            }
        };
        if let Some(change) = &change {
            self.state = change.to;
            self.streak = 0;
            self.failing = false;
            self.since_unix_ms = unix_ms();
            self.reason = change.reason.clone();
            self.transitions += 1;
        }
        change
    }

    /// Whether this round passes, and a description of the targets' answers.
    fn judge(&self, round: &[Option<Duration>]) -> (bool, String) {
        let up = self.state == ProbeState::Up;
        let mut good = 0;
        let mut notes = Vec::new();
        for (target, result) in self.targets.iter().zip(round) {
            let loss = target.loss_percent();
            let rtt = target.avg_rtt().unwrap_or_default();
            // Loss and latency are judged over half a window at least (not a first probe), and
            // while down over the `up` rounds that would bring it back at least.
            let half = (self.cfg.window as usize).div_ceil(2);
            let least = if up { half } else { half.min(self.cfg.up as usize) };
            let judged = target.window.len() >= least;
            let loss_level = self.cfg.loss.filter(|_| judged).map(|l| l.level(up));
            let rtt_level = self.cfg.latency.filter(|_| judged).map(|l| l.level(up));
            let lossy = loss_level.filter(|&l| loss > f64::from(l));
            if result.is_none() {
                notes.push(match lossy {
                    Some(level) => {
                        format!("{} no answer; loss {loss:.0}% above {level}%", target.addr)
                    }
                    None => format!("{} no answer", target.addr),
                });
                continue;
            }
            if let Some(level) = lossy {
                notes.push(format!("{} loss {loss:.0}% above {level}%", target.addr));
            } else if let Some(level) = rtt_level.filter(|&l| rtt > l) {
                notes.push(format!(
                    "{} latency {} ms above {} ms",
                    target.addr,
                    rtt.as_millis(),
                    level.as_millis()
                ));
            } else {
                good += 1;
                notes.push(format!("{} answered in {:.1} ms", target.addr, ms(rtt)));
            }
        }
        let passed = good >= self.cfg.quorum;
        let quorum = format!("{good} of {} targets good, quorum {}", round.len(), self.cfg.quorum);
        (passed, format!("{quorum} ({})", notes.join(", ")))
    }

    /// What `masq uplinks` and the metrics show.
    pub fn view(&self) -> HealthView {
        HealthView {
            method: self.cfg.method.name().to_owned(),
            state: self.state,
            failing: self.failing,
            suspect: self.suspect.clone(),
            since_unix_ms: self.since_unix_ms,
            reason: self.reason.clone(),
            interval_ms: self.interval().as_millis() as u64,
            rounds: self.rounds,
            rounds_passed: self.rounds_passed,
            transitions: self.transitions,
            targets: self
                .targets
                .iter()
                .map(|t| TargetView {
                    address: t.addr,
                    sent: t.sent,
                    answered: t.answered,
                    answering: t.window.back().is_some_and(Option::is_some),
                    last_rtt_ms: t.last_rtt.map(ms),
                    avg_rtt_ms: t.avg_rtt().map(ms),
                    loss_percent: t.loss_percent(),
                })
                .collect(),
        }
    }
}

/// An uplink's probe health, as the daemon records it for the CLI and metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    pub method: String,
    pub state: ProbeState,
    /// Up, but the last round failed.
    pub failing: bool,
    /// Why the dataplane's SYNs make it suspect, if they do.
    pub suspect: Option<String>,
    /// When the state last changed (or the daemon started), Unix milliseconds.
    pub since_unix_ms: u64,
    /// Why it is in this state.
    pub reason: String,
    /// Until the next round.
    pub interval_ms: u64,
    pub rounds: u64,
    pub rounds_passed: u64,
    pub transitions: u64,
    pub targets: Vec<TargetView>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetView {
    pub address: Ipv4Addr,
    pub sent: u64,
    pub answered: u64,
    /// Its last probe was answered.
    pub answering: bool,
    pub last_rtt_ms: Option<f64>,
    /// Over the window.
    pub avg_rtt_ms: Option<f64>,
    pub loss_percent: f64,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests;
