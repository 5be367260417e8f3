//! The record of every connection, as carrier-grade NAT operators must keep and as
//! `conntrack -E` gives: one `new` event when a connection is created (reported by the programs
//! through the `EVENTS` ring buffer) and one `destroy` event when it ends (the daemon expires
//! and removes connections itself, and sees evictions between two dumps). The daemon streams
//! them to `masq conns --watch` over a unix socket and, when `[events] log` is set, to a
//! rotating log of JSON lines. Nothing is lost silently: a full ring counts `events_lost`, a
//! watcher too slow or a failing log `events_undelivered`, and a watcher is told how many it
//! missed.
mod hub;
mod log;
mod tracker;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use masq_common::{ConnEntry, ConnEvent, FlowKey, tick};
use serde::{Deserialize, Serialize};

pub use self::{
    hub::Hub,
    log::EventLog,
    tracker::{Ended, Tracker},
};
pub use crate::conntrack::EndReason;
use crate::{
    config::Config,
    conntrack::{self, Conn},
    inspect::{ConnFilter, Tuple, conn_view, direction_name, proto_name},
    state::{Names, pid_file},
};

/// The unix socket the daemon streams events on, beside its pid file.
pub fn socket_path(pin_dir: &Path) -> PathBuf {
    pid_file(pin_dir).with_extension("events")
}

/// One connection as an event shows it (`docs/cli-json.md`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ConnRecord {
    /// RFC 3339, UTC: when it was created (`new`) or found ended (`destroy`).
    pub time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    pub proto: String,
    /// `outbound`, `inbound` or `hairpin`.
    pub direction: String,
    pub uplink: u8,
    pub uplink_name: String,
    /// The rule that made it: `policy[i]` (outbound) or `publish[i]` (inbound, hairpin), as
    /// the running config numbers them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The initiator's packets as they arrived, and as masq sent them on.
    pub original: Tuple,
    pub translated: Tuple,
    /// The uplink's address and port the connection uses on the internet.
    pub public: Endpoint,
    pub created: String,
    /// `destroy` only: what the connection carried until masq last saw it (absent when it
    /// ended before the daemon's first look at it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub totals: Option<Totals>,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: Ipv4Addr,
    pub port: u16,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Totals {
    pub last_seen: String,
    pub duration_s: f64,
    pub state: String,
    pub packets_original: u64,
    pub bytes_original: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
}

/// One line of the stream.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    New(ConnRecord),
    Destroy(ConnRecord),
    /// This watcher missed `count` events (it read too slowly).
    Lost {
        time: String,
        count: u64,
    },
    /// The first line to each watcher: events from now on reach it.
    Watching {
        time: String,
    },
}

/// What turns connections into records: the running config's names and rules.
pub struct Recorder<'a> {
    pub cfg: &'a Config,
    pub names: &'a Names,
}

impl Recorder<'_> {
    pub fn created(&self, ev: &ConnEvent) -> Event {
        Event::New(self.record(&conn_of_event(ev), ev.time_ns, Some(ev.time_ns), None))
    }

    pub fn ended(&self, ended: &Ended) -> Event {
        let totals = ended.counted.then_some(&ended.conn);
        let now = conntrack::clock_ns();
        Event::Destroy(self.record(
            &ended.conn,
            now,
            ended.created_ns,
            Some((ended.reason, totals)),
        ))
    }

    /// `created_ns`: the exact creation time when known (the entries keep only its tick);
    /// `end`: why it ended, and the connection as last counted if it was.
    fn record(
        &self,
        conn: &Conn,
        time_ns: u64,
        created_ns: Option<u64>,
        end: Option<(EndReason, Option<&Conn>)>,
    ) -> ConnRecord {
        let view = conn_view(conn, conntrack::clock_ns(), self.names);
        let direction = direction_name(conn);
        let public = if direction == "inbound" {
            Endpoint { addr: view.original.dst, port: view.original.dst_port }
        } else {
            Endpoint { addr: view.translated.src, port: view.translated.src_port }
        };
        let created_ns = created_ns.unwrap_or(conn.created_ns());
        let totals = end.and_then(|(_, counted)| counted).map(|_| Totals {
            last_seen: rfc3339(conn.last_seen_ns().max(created_ns)),
            duration_s: conn.last_seen_ns().saturating_sub(created_ns) as f64 / 1e9,
            state: view.state.to_string(),
            packets_original: view.packets_original,
            bytes_original: view.bytes_original,
            packets_reply: view.packets_reply,
            bytes_reply: view.bytes_reply,
        });
        ConnRecord {
            time: rfc3339(time_ns),
            reason: end.map(|(reason, _)| reason),
            proto: proto_name(conn.proto()).to_string(),
            direction: direction.to_string(),
            uplink: view.uplink,
            uplink_name: view.uplink_name,
            rule: rule_of(self.cfg, conn, &view.original),
            original: view.original,
            translated: view.translated,
            public,
            created: rfc3339(created_ns),
            totals,
        }
    }
}

/// The connection a creation event describes: its initiator's entry as inserted.
pub fn conn_of_event(ev: &ConnEvent) -> Conn {
    let t = tick(ev.time_ns);
    let entry = ConnEntry {
        xlate: ev.xlate,
        uplink: ev.uplink,
        flags: ev.flags,
        created_tick: t,
        last_seen_tick: t,
        packets: 1,
        ..ConnEntry::default()
    };
    Conn { orig: Some((ev.key, entry)), reply: None }
}

/// The initiator's key of a connection (rebuilt from the reply entry when it alone is left).
pub fn orig_key(conn: &Conn) -> FlowKey {
    match (&conn.orig, &conn.reply) {
        (Some((key, _)), _) => *key,
        (None, Some((_, e))) => e.xlate.key(conn.proto()).reversed(),
        (None, None) => unreachable!("a connection has an entry"),
    }
}

/// `publish[i]` for a connection to a published address, else the first `policy[i]` that
/// matches it (as the programs choose).
fn rule_of(cfg: &Config, conn: &Conn, original: &Tuple) -> Option<String> {
    let proto = conn.proto();
    if direction_name(conn) != "outbound" {
        let hit = cfg.publish.iter().position(|p| {
            p.address == original.dst
                && (p.port.is_none()
                    || (p.port == Some(original.dst_port)
                        && p.proto.is_none_or(|x| x.number() == proto)))
        })?;
        return Some(format!("publish[{hit}]"));
    }
    let hit = cfg.policies.iter().position(|p| {
        p.from.is_none_or(|n| n.contains(&original.src))
            && p.to.is_none_or(|n| n.contains(&original.dst))
            && p.proto.is_none_or(|x| x.number() == proto)
            && p.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&original.dst_port))
    })?;
    Some(format!("policy[{hit}]"))
}

impl ConnFilter {
    /// The same filter over an event's connection.
    pub fn matches_record(&self, r: &ConnRecord) -> bool {
        self.uplink.is_none_or(|u| r.uplink == u)
            && self.proto.is_none_or(|p| proto_name(p) == r.proto)
            && self.host.is_none_or(|h| {
                [&r.original, &r.translated].iter().any(|t| t.src == h || t.dst == h)
            })
    }
}

/// `masq conns --watch`: stream the daemon's events (those `filter` picks) until it stops or
/// the output goes away; `json`: the daemon's JSON lines as they come.
pub fn watch(pin_dir: &Path, filter: &ConnFilter, json: bool) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader, Write as _};
    let path = socket_path(pin_dir);
    let stream = std::os::unix::net::UnixStream::connect(&path).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => {
            anyhow::anyhow!("{}: {e}: watching connections needs root", path.display())
        }
        _ => anyhow::anyhow!(
            "no masq daemon streams events for {} ({}: {e}): is `masq run` running?",
            pin_dir.display(),
            path.display()
        ),
    })?;
    let mut out = std::io::stdout().lock();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let event: Event = serde_json::from_str(&line)
            .map_err(|e| anyhow::anyhow!("an event the daemon sent: {e}: {line}"))?;
        let picked = match &event {
            Event::New(r) | Event::Destroy(r) => filter.matches_record(r),
            Event::Lost { .. } => true,
            Event::Watching { .. } => {
                eprintln!("masq: watching the connections of {} (Ctrl-C stops)", pin_dir.display());
                json
            }
        };
        if !picked {
            continue;
        }
        let shown =
            if json { writeln!(out, "{line}") } else { writeln!(out, "{}", text_line(&event)) };
        if shown.and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
    }
    eprintln!("masq: the daemon stopped streaming events");
    Ok(())
}

/// A line of `masq conns --watch`.
pub fn text_line(event: &Event) -> String {
    let (kind, r) = match event {
        Event::New(r) => ("new", r),
        Event::Destroy(r) => ("destroy", r),
        Event::Lost { time, count } => {
            return format!(
                "{}  lost     {count} events (this watcher read too slowly)",
                clock_of(time)
            );
        }
        Event::Watching { time } => return format!("{}  watching", clock_of(time)),
    };
    let tuple = |t: &Tuple| {
        if r.proto == "icmp" {
            format!("{} -> {} id {}", t.src, t.dst, t.src_port.max(t.dst_port))
        } else {
            t.to_string()
        }
    };
    let mut line = format!(
        "{}  {kind:<8} {:<4} {:<8} {:<8} {}  as  {}",
        clock_of(&r.time),
        r.proto,
        r.direction,
        r.uplink_name,
        tuple(&r.original),
        tuple(&r.translated),
    );
    if let Some(rule) = &r.rule {
        line += &format!("  {rule}");
    }
    if let Some(reason) = r.reason {
        line += &format!("  {}", serde_json::to_value(reason).unwrap().as_str().unwrap_or("?"));
    }
    if let Some(t) = &r.totals {
        line += &format!(
            " after {:.1} s, {} {}/{} packets, {}/{} bytes",
            t.duration_s,
            t.state,
            t.packets_original,
            t.packets_reply,
            t.bytes_original,
            t.bytes_reply
        );
    }
    line
}

/// `HH:MM:SS.mmm` of an RFC 3339 time.
fn clock_of(time: &str) -> &str {
    time.get(11..23).unwrap_or(time)
}

/// A CLOCK_MONOTONIC_COARSE time (what the programs and tables record) as RFC 3339 UTC with
/// milliseconds.
pub fn rfc3339(mono_ns: u64) -> String {
    format_unix_ms(mono_ns.saturating_add(unix_minus_monotonic()) / 1_000_000)
}

/// CLOCK_REALTIME minus CLOCK_MONOTONIC, nanoseconds: measured once and kept until the wall
/// clock is stepped (by more than a second), so one instant always prints the same.
fn unix_minus_monotonic() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static OFFSET: AtomicU64 = AtomicU64::new(0);
    let read = |clock| {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid out-pointer.
        unsafe { libc::clock_gettime(clock, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    };
    let now = read(libc::CLOCK_REALTIME).saturating_sub(read(libc::CLOCK_MONOTONIC));
    let kept = OFFSET.load(Ordering::Relaxed);
    if kept == 0 || kept.abs_diff(now) > 1_000_000_000 {
        OFFSET.store(now, Ordering::Relaxed);
        return now;
    }
    kept
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn format_unix_ms(ms: u64) -> String {
    let ((year, month, day), (h, m, sec)) = utc_fields(ms / 1000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{:03}Z", ms % 1000)
}

/// Seconds since the epoch as UTC ((year, month, day), (hour, minute, second)).
pub fn utc_fields(secs: u64) -> ((i64, i64, i64), (u64, u64, u64)) {
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    ((year, month, day), (rem / 3600, rem / 60 % 60, rem % 60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_milliseconds_format_as_rfc3339() {
        assert_eq!(format_unix_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_unix_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_unix_ms(1_796_151_845_006), "2026-12-01T19:04:05.006Z");
    }

    #[test]
    fn events_round_trip_through_json_lines() {
        let record = ConnRecord {
            time: format_unix_ms(0),
            reason: Some(EndReason::Expired),
            proto: "udp".into(),
            direction: "outbound".into(),
            uplink: 1,
            uplink_name: "dsl".into(),
            rule: Some("policy[0]".into()),
            original: Tuple {
                src: Ipv4Addr::new(192, 168, 1, 20),
                src_port: 40100,
                dst: Ipv4Addr::new(64, 70, 12, 210),
                dst_port: 3478,
            },
            translated: Tuple {
                src: Ipv4Addr::new(67, 17, 28, 10),
                src_port: 40100,
                dst: Ipv4Addr::new(64, 70, 12, 210),
                dst_port: 3478,
            },
            public: Endpoint { addr: Ipv4Addr::new(67, 17, 28, 10), port: 40100 },
            created: format_unix_ms(0),
            totals: None,
        };
        let line = serde_json::to_string(&Event::Destroy(record.clone())).unwrap();
        assert!(
            line.starts_with(
                r#"{"event":"destroy","time":"1970-01-01T00:00:00.000Z","reason":"expired""#
            ),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), Event::Destroy(record));
        let text = text_line(&serde_json::from_str(&line).unwrap());
        assert!(
            text.contains("192.168.1.20:40100 -> 64.70.12.210:3478  as  67.17.28.10:40100"),
            "{text}"
        );
    }
}
