//! `[uplink.health]`, the uplinks' `on_down`/`on_up`, and `[on_transition]`: what makes an
//! uplink up or down beyond its carrier, and what happens then.
use std::{net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{ConfigError, Result, resolve::parse_addr};

/// Probe timing defaults: failover within about 2.5 s of a dead ISP (3 probes 0.5 s apart
/// each timing out after 1 s), failback after 5 answered rounds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_FAILURE_INTERVAL: Duration = Duration::from_millis(250);
pub const DEFAULT_RECOVERY_INTERVAL: Duration = Duration::from_millis(500);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
pub const DEFAULT_DOWN: u32 = 3;
pub const DEFAULT_UP: u32 = 5;
/// Probes per target that loss and latency are judged over.
pub const DEFAULT_WINDOW: u32 = 20;
/// Loss levels (percent), as dpinger's defaults: above 20 % an uplink fails, it recovers at 10 %.
pub const DEFAULT_FAILURE_LOSS: u8 = 20;
pub const DEFAULT_RECOVERY_LOSS: u8 = 10;
pub const MAX_TARGETS: usize = 8;
const INTERVAL_MS: std::ops::RangeInclusive<u64> = 50..=60_000;
const COUNT: std::ops::RangeInclusive<u32> = 1..=100;
const DEFAULT_HOOK_TIMEOUT: Duration = Duration::from_secs(10);

/// How a probe asks whether the internet answers through an uplink.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum ProbeMethod {
    /// ICMP echo request, answered by an echo reply.
    Icmp,
    /// A TCP connection to `port` that completes.
    Tcp { port: u16 },
    /// A DNS query for `query` (type A) over UDP, answered by any response.
    Dns { port: u16, query: String },
}

impl ProbeMethod {
    pub fn name(&self) -> &'static str {
        match self {
            ProbeMethod::Icmp => "icmp",
            ProbeMethod::Tcp { .. } => "tcp",
            ProbeMethod::Dns { .. } => "dns",
        }
    }
}

/// A failure level and the (lower or equal) level a failed uplink must get back under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Levels<T> {
    pub failure: T,
    pub recovery: T,
}

impl<T: Copy> Levels<T> {
    /// The level that counts while up (failure) or down (recovery).
    pub fn level(&self, up: bool) -> T {
        if up { self.failure } else { self.recovery }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Initial {
    /// Takes connections from the start; probes may take it down.
    #[default]
    Up,
    /// Takes none until `up` rounds have answered.
    Down,
}

/// `[uplink.health]`, resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Health {
    #[serde(flatten)]
    pub method: ProbeMethod,
    pub targets: Vec<Ipv4Addr>,
    /// Targets that must answer for a round to pass (mwan3's `reliability`).
    pub quorum: usize,
    /// Between rounds while the uplink is up and passing.
    #[serde(serialize_with = "millis")]
    pub interval: Duration,
    /// Between rounds while up but failing (a round failed, or its SYNs go unanswered).
    #[serde(serialize_with = "millis")]
    pub failure_interval: Duration,
    /// Between rounds while down.
    #[serde(serialize_with = "millis")]
    pub recovery_interval: Duration,
    /// A probe not answered within this is lost.
    #[serde(serialize_with = "millis")]
    pub timeout: Duration,
    /// Failed rounds in a row that take the uplink down.
    pub down: u32,
    /// Passed rounds in a row that bring it back.
    pub up: u32,
    /// Probes per target over which loss and latency are judged.
    pub window: u32,
    /// Average round-trip time; `None`: not judged.
    pub latency: Option<Levels<Duration>>,
    /// Lost probes, percent; `None`: not judged.
    pub loss: Option<Levels<u8>>,
    pub initial: Initial,
    /// Unanswered SYNs seen by the dataplane make the uplink suspect (probed at the failure
    /// interval at once).
    pub passive: bool,
}

/// What happens to a failed uplink's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDown {
    /// They stay (and time out if the uplink does not come back).
    #[default]
    Keep,
    /// Its masqueraded connections are removed at once, so clients reconnect by a working
    /// uplink; inbound ones and other uplinks' are left alone.
    Flush,
}

/// What happens when an uplink comes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUp {
    #[default]
    Keep,
    /// Masqueraded connections that a policy now steers to it but that went by another uplink
    /// meanwhile are removed, so they reconnect by it.
    Reclaim,
}

/// `[on_transition]`: a command run on every uplink transition, its environment naming it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TransitionHook {
    /// Program and arguments (no shell).
    pub command: Vec<String>,
    #[serde(serialize_with = "super::secs")]
    pub timeout: Duration,
}

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealth {
    method: Option<String>,
    targets: Option<Vec<String>>,
    port: Option<u16>,
    query: Option<String>,
    quorum: Option<usize>,
    interval_ms: Option<u64>,
    failure_interval_ms: Option<u64>,
    recovery_interval_ms: Option<u64>,
    timeout_ms: Option<u64>,
    down: Option<u32>,
    up: Option<u32>,
    window: Option<u32>,
    failure_latency_ms: Option<u64>,
    recovery_latency_ms: Option<u64>,
    failure_loss: Option<u8>,
    recovery_loss: Option<u8>,
    initial: Option<String>,
    passive: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransitionHook {
    command: Option<toml::Value>,
    timeout: Option<u64>,
}

pub(super) fn resolve_health(raw: RawHealth, prefix: &str) -> Result<Health> {
    let key = |field: &str| format!("{prefix}.{field}");
    let err = |field: &str, message: String| ConfigError::new(key(field), message);

    let raw_targets = raw.targets.ok_or_else(|| err("targets", "missing (required)".into()))?;
    if raw_targets.is_empty() || raw_targets.len() > MAX_TARGETS {
        return Err(err(
            "targets",
            format!("{} targets, expected 1 to {MAX_TARGETS}", raw_targets.len()),
        ));
    }
    let mut targets: Vec<Ipv4Addr> = Vec::with_capacity(raw_targets.len());
    for (i, t) in raw_targets.iter().enumerate() {
        let k = key(&format!("targets[{i}]"));
        let addr = parse_addr(t, &k)?;
        if addr.is_unspecified()
            || addr.is_loopback()
            || addr.is_multicast()
            || addr.is_broadcast()
            || addr.octets()[0] == 0
        {
            return Err(ConfigError::new(k, format!("{addr} is not a unicast host address")));
        }
        if targets.contains(&addr) {
            return Err(ConfigError::new(k, format!("duplicate target {addr}")));
        }
        targets.push(addr);
    }

    let method = match raw.method.as_deref().unwrap_or("icmp") {
        "icmp" => {
            for (field, set) in [("port", raw.port.is_some()), ("query", raw.query.is_some())] {
                if set {
                    return Err(err(field, "only for method \"tcp\" or \"dns\"".into()));
                }
            }
            ProbeMethod::Icmp
        }
        "tcp" => {
            if raw.query.is_some() {
                return Err(err("query", "only for method \"dns\"".into()));
            }
            let port = raw.port.ok_or_else(|| err("port", "method \"tcp\" needs a port".into()))?;
            ProbeMethod::Tcp { port: nonzero_port(port, &key("port"))? }
        }
        "dns" => {
            let query = raw.query.unwrap_or_else(|| ".".into());
            check_dns_name(&query, &key("query"))?;
            ProbeMethod::Dns { port: nonzero_port(raw.port.unwrap_or(53), &key("port"))?, query }
        }
        other => {
            return Err(err(
                "method",
                format!("\"{other}\" is not one of \"icmp\", \"tcp\", \"dns\""),
            ));
        }
    };

    let quorum = raw.quorum.unwrap_or(1);
    if !(1..=targets.len()).contains(&quorum) {
        return Err(err(
            "quorum",
            format!("{quorum} is out of range, expected 1..={} (the targets)", targets.len()),
        ));
    }
    let ms = |value: Option<u64>, default: Duration, field: &str| -> Result<Duration> {
        let Some(v) = value else { return Ok(default) };
        if !INTERVAL_MS.contains(&v) {
            return Err(err(
                field,
                format!(
                    "{v} is out of range, expected {}..={} ms",
                    INTERVAL_MS.start(),
                    INTERVAL_MS.end()
                ),
            ));
        }
        Ok(Duration::from_millis(v))
    };
    let count = |value: Option<u32>, default: u32, field: &str| -> Result<u32> {
        let v = value.unwrap_or(default);
        if !COUNT.contains(&v) {
            return Err(err(
                field,
                format!("{v} is out of range, expected {}..={}", COUNT.start(), COUNT.end()),
            ));
        }
        Ok(v)
    };
    let interval = ms(raw.interval_ms, DEFAULT_INTERVAL, "interval_ms")?;
    let failure_interval =
        ms(raw.failure_interval_ms, DEFAULT_FAILURE_INTERVAL.min(interval), "failure_interval_ms")?;
    if failure_interval > interval {
        return Err(err(
            "failure_interval_ms",
            format!(
                "{} ms is longer than interval_ms {}: it is the faster pace of a failing uplink",
                failure_interval.as_millis(),
                interval.as_millis()
            ),
        ));
    }
    let recovery_interval =
        ms(raw.recovery_interval_ms, DEFAULT_RECOVERY_INTERVAL, "recovery_interval_ms")?;
    let timeout = ms(raw.timeout_ms, DEFAULT_TIMEOUT, "timeout_ms")?;

    let latency = match (raw.failure_latency_ms, raw.recovery_latency_ms) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(err("recovery_latency_ms", "needs failure_latency_ms".into()));
        }
        (Some(f), r) => {
            let failure = ms(Some(f), Duration::ZERO, "failure_latency_ms")?;
            let recovery = ms(r, failure, "recovery_latency_ms")?;
            if recovery > failure {
                return Err(err(
                    "recovery_latency_ms",
                    format!("{} ms is above failure_latency_ms {f}", recovery.as_millis()),
                ));
            }
            if failure >= timeout {
                return Err(err(
                    "failure_latency_ms",
                    format!("{f} ms is not below timeout_ms {}", timeout.as_millis()),
                ));
            }
            Some(Levels { failure, recovery })
        }
    };
    let percent = |v: u8, field: &str| -> Result<u8> {
        if v > 100 {
            return Err(err(field, format!("{v} is out of range, expected 0..=100 (percent)")));
        }
        Ok(v)
    };
    let failure = percent(raw.failure_loss.unwrap_or(DEFAULT_FAILURE_LOSS), "failure_loss")?;
    if failure == 0 {
        return Err(err("failure_loss", "must be at least 1 (100 disables it)".into()));
    }
    let recovery =
        percent(raw.recovery_loss.unwrap_or(DEFAULT_RECOVERY_LOSS.min(failure)), "recovery_loss")?;
    if recovery > failure {
        return Err(err("recovery_loss", format!("{recovery} is above failure_loss {failure}")));
    }
    let loss = (failure < 100).then_some(Levels { failure, recovery });
    let initial = match raw.initial.as_deref() {
        None | Some("up") => Initial::Up,
        Some("down") => Initial::Down,
        Some(other) => {
            return Err(err("initial", format!("\"{other}\" is not one of \"up\", \"down\"")));
        }
    };
    Ok(Health {
        method,
        targets,
        quorum,
        interval,
        failure_interval,
        recovery_interval,
        timeout,
        down: count(raw.down, DEFAULT_DOWN, "down")?,
        up: count(raw.up, DEFAULT_UP, "up")?,
        window: count(raw.window, DEFAULT_WINDOW, "window")?,
        latency,
        loss,
        initial,
        passive: raw.passive.unwrap_or(true),
    })
}

pub(super) fn resolve_on_down(raw: Option<String>, key: &str) -> Result<OnDown> {
    one_of(raw, key, &[("keep", OnDown::Keep), ("flush", OnDown::Flush)])
}

pub(super) fn resolve_on_up(raw: Option<String>, key: &str) -> Result<OnUp> {
    one_of(raw, key, &[("keep", OnUp::Keep), ("reclaim", OnUp::Reclaim)])
}

/// The value `raw` names among `choices` (the first when absent), or an error listing them.
fn one_of<T: Copy>(raw: Option<String>, key: &str, choices: &[(&str, T)]) -> Result<T> {
    let Some(raw) = raw else { return Ok(choices[0].1) };
    choices.iter().find(|(name, _)| *name == raw).map(|(_, v)| *v).ok_or_else(|| {
        let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
        ConfigError::new(key, format!("\"{raw}\" is not one of {}", names.join(", ")))
    })
}

pub(super) fn resolve_transition_hook(raw: RawTransitionHook) -> Result<TransitionHook> {
    let key = "on_transition.command";
    let bad = || ConfigError::new(key, "expected a program path or an array of strings");
    let command: Vec<String> = match raw.command {
        None => return Err(ConfigError::new(key, "missing (required)")),
        Some(toml::Value::String(s)) => vec![s],
        Some(toml::Value::Array(items)) => items
            .into_iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(bad))
            .collect::<Result<_>>()?,
        Some(_) => return Err(bad()),
    };
    if command.first().is_none_or(|p| p.is_empty()) {
        return Err(ConfigError::new(key, "the program is empty"));
    }
    let timeout = match raw.timeout {
        None => DEFAULT_HOOK_TIMEOUT,
        Some(s @ 1..=3600) => Duration::from_secs(s),
        Some(s) => {
            return Err(ConfigError::new(
                "on_transition.timeout",
                format!("{s} is out of range, expected 1..=3600 seconds"),
            ));
        }
    };
    Ok(TransitionHook { command, timeout })
}

fn nonzero_port(port: u16, key: &str) -> Result<u16> {
    if port == 0 {
        return Err(ConfigError::new(key, "port 0 is not a valid port"));
    }
    Ok(port)
}

/// A DNS name as a query carries it: labels of 1 to 63 letters, digits, `-` or `_`, at most
/// 253 characters; `.` is the root.
fn check_dns_name(name: &str, key: &str) -> Result<()> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let ok = name == "."
        || (!trimmed.is_empty()
            && trimmed.len() <= 253
            && trimmed.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            }));
    if ok { Ok(()) } else { Err(ConfigError::new(key, format!("\"{name}\" is not a DNS name"))) }
}
