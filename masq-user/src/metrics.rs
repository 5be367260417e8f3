//! `masq run --metrics ADDR`: Prometheus metrics over a minimal HTTP/1.1 responder on tokio.
//!
//! `GET /metrics` answers with the OpenMetrics text format (which Prometheus scrapes natively),
//! encoded by `prometheus-client` from the pinned maps read afresh on each scrape: uplink
//! traffic, connections, table fill, path and drop counters, program attachments.
//! `docs/cli-json.md` lists every series.
use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use masq_common::UplinkStats;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeGaugeValue, EncodeMetric as _, text::encode},
    metrics::{MetricType, counter::ConstCounter},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    task::JoinHandle,
};
use tracing::{info, warn};

use crate::{
    conntrack::Conn,
    health::monitor::UplinkHealthReport,
    inspect::{self, direction_name, proto_name},
    links::{Attachment, read_attachments},
    pinned::{CounterValue, read_conns, read_counters, read_table_size, read_uplink_stats},
    state::{DaemonState, Names},
};

/// What Prometheus is told the body is.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Scrapes served at once; more wait (each reads the whole connection table).
const MAX_CONCURRENT_SCRAPES: usize = 2;
/// A client has this long to send its request head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted.
const MAX_REQUEST: usize = 8192;

/// Everything one scrape reports, read from the pinned maps.
#[derive(Debug)]
pub struct Snapshot {
    counters: Vec<CounterValue>,
    /// (name, interface, traffic, active connections).
    uplinks: Vec<(String, String, UplinkStats, u64)>,
    /// (uplink, direction, proto, state) → connections.
    conns: std::collections::BTreeMap<(String, &'static str, &'static str, &'static str), u64>,
    connections: inspect::ConnectionsStatus,
    programs: Vec<Attachment>,
    /// Per uplink, from the daemon's state file.
    health: Vec<UplinkHealthReport>,
}

impl Snapshot {
    pub fn read(pin_dir: &Path, names: &Names) -> anyhow::Result<Snapshot> {
        let counters = read_counters(pin_dir)?;
        let size = read_table_size(pin_dir)?;
        let conns: Vec<Conn> = read_conns(pin_dir)?;
        let stats = read_uplink_stats(pin_dir, names.uplinks.len())?;
        let uplinks = stats
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let i = i as u8;
                let active = conns.iter().filter(|c| c.uplink() == i).count() as u64;
                let iface = names.interface(i).unwrap_or_default().to_string();
                (names.uplink(i), iface, s, active)
            })
            .collect();
        let mut by_labels = std::collections::BTreeMap::new();
        for c in &conns {
            let key = (
                names.uplink(c.uplink()),
                direction_name(c),
                proto_name(c.proto()),
                crate::conntrack::state_name(c.state()),
            );
            *by_labels.entry(key).or_default() += 1;
        }
        let status = inspect::connections_status(&conns, size, &counters);
        Ok(Snapshot {
            counters,
            uplinks,
            conns: by_labels,
            connections: status,
            programs: read_attachments(pin_dir, names),
            health: DaemonState::load(pin_dir).map(|s| s.health).unwrap_or_default(),
        })
    }

    /// The OpenMetrics text of this snapshot, `# EOF` included.
    pub fn encode(self) -> Result<String, fmt::Error> {
        let mut registry = Registry::with_prefix("masq");
        registry.register_collector(Box::new(self));
        let mut body = String::new();
        encode(&mut body, &registry)?;
        Ok(body)
    }
}

/// Read the maps under `pin_dir` and encode them.
pub fn render(pin_dir: &Path, names: &Names) -> anyhow::Result<String> {
    Snapshot::read(pin_dir, names)?.encode().context("encoding the metrics")
}

fn counter_family(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_family<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Vec<(&'static str, String)>, V)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        family.encode_family(&labels)?.encode_gauge(&value)?;
    }
    Ok(())
}

fn gauge<V: EncodeGaugeValue>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> fmt::Result {
    encoder.encode_descriptor(name, help, None, MetricType::Gauge)?.encode_gauge(&value)
}

type UplinkLabels<'a> = &'a dyn Fn(&str, &str) -> Vec<(&'static str, String)>;

impl Snapshot {
    /// The daemon's verdicts and probe results, per uplink and target.
    fn encode_health(&self, e: &mut DescriptorEncoder, uplink: UplinkLabels) -> fmt::Result {
        let named =
            || self.uplinks.iter().zip(&self.health).map(|((n, i, _, _), h)| (uplink(n, i), h));
        let per_target = || {
            named().flat_map(|(labels, h)| {
                h.probes.iter().flat_map(|p| &p.targets).map(move |t| {
                    let mut l = labels.clone();
                    l.push(("target", t.address.to_string()));
                    (l, t)
                })
            })
        };
        gauge_family(
            e,
            "uplink_up",
            "1 while the uplink takes new connections (carrier, address and probes).",
            named().map(|(l, h)| (l, u64::from(h.up))),
        )?;
        counter_family(
            e,
            "uplink_transitions",
            "Up/down transitions of the uplink since the daemon started.",
            named().map(|(l, h)| (l, h.transitions)),
        )?;
        gauge_family(
            e,
            "uplink_suspect",
            "1 while the dataplane's SYNs on the uplink go unanswered.",
            named().map(|(l, h)| (l, u64::from(h.passive.suspect.is_some()))),
        )?;
        gauge_family(
            e,
            "uplink_syn_unanswered",
            "SYNs sent a few seconds ago without any answer since.",
            named().map(|(l, h)| (l, h.passive.unanswered)),
        )?;
        gauge_family(
            e,
            "uplink_syn_answer_seconds",
            "Average SYN to SYN-ACK time over the last seconds.",
            named().filter_map(|(l, h)| Some((l, h.passive.answer_ms? / 1000.0))),
        )?;
        counter_family(
            e,
            "uplink_probes_sent",
            "Health probes sent, by uplink and target.",
            per_target().map(|(l, t)| (l, t.sent)),
        )?;
        counter_family(
            e,
            "uplink_probes_answered",
            "Health probes answered in time, by uplink and target.",
            per_target().map(|(l, t)| (l, t.answered)),
        )?;
        gauge_family(
            e,
            "uplink_probe_rtt_seconds",
            "Average probe round-trip time over the window, by uplink and target.",
            per_target().filter_map(|(l, t)| Some((l, t.avg_rtt_ms? / 1000.0))),
        )?;
        gauge_family(
            e,
            "uplink_probe_loss_ratio",
            "Share of the window's probes lost, by uplink and target.",
            per_target().map(|(l, t)| (l, t.loss_percent / 100.0)),
        )
    }
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let e = &mut encoder;
        e.encode_descriptor("build", "masq version.", None, MetricType::Info)?
            .encode_info(&[("version", env!("CARGO_PKG_VERSION"))])?;

        let uplink = |name: &str, iface: &str| {
            vec![("uplink", name.to_string()), ("interface", iface.to_string())]
        };
        let with_dir = |name: &str, iface: &str, dir: &str| {
            let mut l = uplink(name, iface);
            l.push(("direction", dir.to_string()));
            l
        };
        counter_family(
            e,
            "uplink_packets",
            "Packets masq received from (rx) and sent out of (tx) each uplink.",
            self.uplinks.iter().flat_map(|(n, i, s, _)| {
                [(with_dir(n, i, "rx"), s.rx_packets), (with_dir(n, i, "tx"), s.tx_packets)]
            }),
        )?;
        counter_family(
            e,
            "uplink_bytes",
            "Bytes masq received from (rx) and sent out of (tx) each uplink.",
            self.uplinks.iter().flat_map(|(n, i, s, _)| {
                [(with_dir(n, i, "rx"), s.rx_bytes), (with_dir(n, i, "tx"), s.tx_bytes)]
            }),
        )?;
        counter_family(
            e,
            "uplink_new_connections",
            "Connections opened on each uplink (inbound and outbound).",
            self.uplinks.iter().map(|(n, i, s, _)| (uplink(n, i), s.new_conns)),
        )?;
        counter_family(
            e,
            "uplink_syn_sent",
            "Masqueraded TCP connections opened on each uplink (passive health).",
            self.uplinks.iter().map(|(n, i, s, _)| (uplink(n, i), s.syn_sent)),
        )?;
        counter_family(
            e,
            "uplink_syn_answered",
            "Of those, answered by a SYN-ACK or RST.",
            self.uplinks.iter().map(|(n, i, s, _)| (uplink(n, i), s.syn_answered)),
        )?;
        self.encode_health(e, &uplink)?;
        gauge_family(
            e,
            "uplink_connections",
            "Connections in the table, by uplink.",
            self.uplinks.iter().map(|(n, i, _, active)| (uplink(n, i), *active)),
        )?;
        gauge_family(
            e,
            "connections",
            "Connections in the table, by uplink, direction, protocol and state.",
            self.conns.iter().map(|((u, dir, proto, state), n)| {
                (
                    vec![
                        ("uplink", u.clone()),
                        ("direction", dir.to_string()),
                        ("proto", proto.to_string()),
                        ("state", state.to_string()),
                    ],
                    *n,
                )
            }),
        )?;
        let c = &self.connections;
        gauge(e, "conntrack_connections", "Connections tracked, confirmed and pending.", c.count)?;
        gauge(
            e,
            "conntrack_pending_connections",
            "Connections not confirmed yet (handshake incomplete, no reply).",
            c.pending.count,
        )?;
        gauge(
            e,
            "conntrack_pending_capacity",
            "Pending connections the pending table holds; beyond it the oldest are evicted.",
            u64::from(c.pending.capacity),
        )?;
        gauge(
            e,
            "conntrack_pending_fill_ratio",
            "Entries / max entries of the pending connection map.",
            c.pending.fill,
        )?;
        gauge(
            e,
            "conntrack_capacity",
            "Confirmed connections the table holds (max entries / 2).",
            u64::from(c.capacity),
        )?;
        gauge(
            e,
            "conntrack_entries",
            "Entries in the confirmed connection map (two per connection).",
            c.entries,
        )?;
        gauge(e, "conntrack_max_entries", "Size of the connection map.", u64::from(c.max_entries))?;
        gauge(e, "conntrack_fill_ratio", "Entries / max entries of the connection map.", c.fill)?;
        counter_family(
            e,
            "packets",
            "Packets by the path they took through masq.",
            self.counters
                .iter()
                .filter(|c| !c.drop && !c.name.starts_with("events_"))
                .map(|c| (vec![("path", c.name.to_string())], c.value)),
        )?;
        counter_family(
            e,
            "connection_events_missed",
            "Connection events not recorded: the programs' ring buffer was full (ring_full), or \
             a watcher read too slowly or the event log failed (undelivered).",
            self.counters.iter().filter(|c| c.name.starts_with("events_")).map(|c| {
                let why = if c.name == "events_lost" { "ring_full" } else { "undelivered" };
                (vec![("why", why.to_string())], c.value)
            }),
        )?;
        counter_family(
            e,
            "drops",
            "Packets dropped, by reason (the masq stats name without drop_).",
            self.counters.iter().filter(|c| c.drop).map(|c| {
                let reason = c.name.strip_prefix("drop_").unwrap_or(c.name);
                (vec![("reason", reason.to_string())], c.value)
            }),
        )?;
        gauge_family(
            e,
            "program_attached",
            "1 when the program is attached to the interface (pinned link present and bound).",
            self.programs.iter().map(|a| {
                (
                    vec![
                        ("program", a.program.clone()),
                        ("interface", a.interface.clone()),
                        ("hook", a.hook.to_string()),
                    ],
                    u64::from(a.attached),
                )
            }),
        )?;
        Ok(())
    }
}

/// Bind the metrics listener (before the dataplane comes up, so a bad address fails early).
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("--metrics {addr}: cannot listen"))
}

/// Serve `GET /metrics` on `listener` until the task is aborted.
pub fn spawn(listener: TcpListener, pin_dir: PathBuf, names: Names) -> JoinHandle<()> {
    let local = listener.local_addr().ok();
    if let Some(addr) = local {
        info!("metrics on http://{addr}/metrics");
    }
    let shared = Arc::new((pin_dir, names));
    let scrapes = Arc::new(Semaphore::new(MAX_CONCURRENT_SCRAPES));
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    warn!("metrics: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let shared = shared.clone();
            let scrapes = scrapes.clone();
            tokio::spawn(async move {
                if let Err(e) = handle(stream, shared, scrapes).await {
                    warn!("metrics: request from {peer}: {e:#}");
                }
            });
        }
    })
}

/// One request, one response, then close.
async fn handle(
    mut stream: TcpStream,
    shared: Arc<(PathBuf, Names)>,
    scrapes: Arc<Semaphore>,
) -> anyhow::Result<()> {
    let head = match tokio::time::timeout(REQUEST_TIMEOUT, read_head(&mut stream)).await {
        Ok(head) => head?,
        Err(_) => return Ok(()),
    };
    let response = match parse_request(&head) {
        Request::Metrics { head_only } => {
            let _permit = scrapes.acquire().await?;
            let rendered =
                tokio::task::spawn_blocking(move || render(&shared.0, &shared.1)).await?;
            match rendered {
                Ok(body) => response(200, "OK", CONTENT_TYPE, body, head_only),
                Err(e) => {
                    warn!("metrics: reading the pinned maps: {e:#}");
                    let body = format!("reading the pinned maps: {e:#}\n");
                    response(500, "Internal Server Error", "text/plain", body, head_only)
                }
            }
        }
        Request::Root => response(
            200,
            "OK",
            "text/plain; charset=utf-8",
            "masq metrics: GET /metrics\n".into(),
            false,
        ),
        Request::NotFound => {
            response(404, "Not Found", "text/plain", "not found: GET /metrics\n".into(), false)
        }
        Request::BadMethod => {
            response(405, "Method Not Allowed", "text/plain", "GET /metrics\n".into(), false)
        }
        Request::Bad => response(400, "Bad Request", "text/plain", String::new(), false),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Read up to the end of the request head (or `MAX_REQUEST` bytes, or EOF).
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while head.len() < MAX_REQUEST && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    Root,
    NotFound,
    BadMethod,
    Bad,
}

fn parse_request(head: &[u8]) -> Request {
    let text = String::from_utf8_lossy(head);
    let Some(line) = text.lines().next() else {
        return Request::Bad;
    };
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Request::BadMethod,
    };
    match target.split('?').next().unwrap_or_default() {
        "/metrics" => Request::Metrics { head_only },
        "/" => Request::Root,
        _ => Request::NotFound,
    }
}

fn response(code: u16, reason: &str, content_type: &str, body: String, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n",
        body.len()
    );
    if code == 405 {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{NamesSource, UplinkName};

    #[test]
    fn requests_route_by_method_and_path() {
        let req = |s: &str| parse_request(s.as_bytes());
        assert_eq!(
            req("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { head_only: false }
        );
        assert_eq!(req("HEAD /metrics?x=1 HTTP/1.0\r\n\r\n"), Request::Metrics { head_only: true });
        assert_eq!(req("GET / HTTP/1.1\r\n\r\n"), Request::Root);
        assert_eq!(req("GET /other HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(req("POST /metrics HTTP/1.1\r\n\r\n"), Request::BadMethod);
        assert_eq!(req("garbage"), Request::Bad);
        assert_eq!(req(""), Request::Bad);
    }

    #[test]
    fn responses_carry_length_and_close() {
        let r = String::from_utf8(response(200, "OK", "text/plain", "hi\n".into(), false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(r.contains("Content-Length: 3\r\n"));
        assert!(r.contains("Connection: close\r\n"));
        assert!(r.ends_with("\r\n\r\nhi\n"));
        let r = String::from_utf8(response(200, "OK", "text/plain", "hi\n".into(), true)).unwrap();
        assert!(r.ends_with("\r\n\r\n"));
    }

    #[test]
    fn snapshot_encodes_every_family() {
        let names = Names {
            source: NamesSource::Daemon,
            lan_interface: Some("eth0".into()),
            uplinks: vec![UplinkName { name: "dsl".into(), interface: "eth4".into() }],
        };
        let snapshot = Snapshot {
            counters: vec![
                CounterValue { name: "inbound_new", drop: false, value: 2 },
                CounterValue { name: "drop_fragment", drop: true, value: 1 },
                CounterValue { name: "events_lost", drop: false, value: 4 },
                CounterValue { name: "events_undelivered", drop: false, value: 5 },
            ],
            uplinks: vec![(
                "dsl".into(),
                "eth4".into(),
                UplinkStats {
                    rx_packets: 5,
                    rx_bytes: 500,
                    tx_packets: 4,
                    tx_bytes: 400,
                    new_conns: 1,
                    syn_sent: 7,
                    syn_answered: 6,
                    syn_answer_us: 6000,
                },
                1,
            )],
            conns: [(("dsl".to_string(), "inbound", "icmp", "icmp"), 1)].into(),
            connections: crate::inspect::ConnectionsStatus {
                count: 1,
                capacity: 1024,
                entries: 2,
                max_entries: 2048,
                fill: 2.0 / 2048.0,
                pending: crate::inspect::PendingStatus {
                    count: 3,
                    capacity: 256,
                    entries: 6,
                    max_entries: 512,
                    fill: 6.0 / 512.0,
                },
                confirmed_table_full: 0,
                refused: 0,
                by_proto: Default::default(),
                by_state: Default::default(),
                by_direction: Default::default(),
            },
            programs: read_attachments(Path::new("/nonexistent"), &names),
            health: vec![UplinkHealthReport {
                up: false,
                since_unix_ms: 0,
                reason: "3 rounds in a row failed".into(),
                carrier: true,
                transitions: 1,
                probes: Some(crate::health::HealthView {
                    method: "icmp".into(),
                    state: crate::health::ProbeState::Down,
                    failing: false,
                    suspect: None,
                    since_unix_ms: 0,
                    reason: String::new(),
                    interval_ms: 500,
                    rounds: 10,
                    rounds_passed: 7,
                    transitions: 1,
                    targets: vec![crate::health::TargetView {
                        address: "64.70.12.210".parse().unwrap(),
                        sent: 10,
                        answered: 7,
                        answering: false,
                        last_rtt_ms: Some(2.0),
                        avg_rtt_ms: Some(2.0),
                        loss_percent: 30.0,
                    }],
                }),
                passive: crate::health::passive::PassiveView {
                    syn_sent: 7,
                    syn_answered: 6,
                    unanswered: 1,
                    answer_ms: Some(1.0),
                    suspect: None,
                },
            }],
        };
        let text = snapshot.encode().unwrap();
        for line in [
            "masq_build_info{version=\"",
            "masq_uplink_packets_total{uplink=\"dsl\",interface=\"eth4\",direction=\"rx\"} 5",
            "masq_uplink_bytes_total{uplink=\"dsl\",interface=\"eth4\",direction=\"tx\"} 400",
            "masq_uplink_new_connections_total{uplink=\"dsl\",interface=\"eth4\"} 1",
            "masq_uplink_syn_sent_total{uplink=\"dsl\",interface=\"eth4\"} 7",
            "masq_uplink_syn_answered_total{uplink=\"dsl\",interface=\"eth4\"} 6",
            "masq_uplink_up{uplink=\"dsl\",interface=\"eth4\"} 0",
            "masq_uplink_transitions_total{uplink=\"dsl\",interface=\"eth4\"} 1",
            "masq_uplink_suspect{uplink=\"dsl\",interface=\"eth4\"} 0",
            "masq_uplink_syn_unanswered{uplink=\"dsl\",interface=\"eth4\"} 1",
            "masq_uplink_syn_answer_seconds{uplink=\"dsl\",interface=\"eth4\"} 0.001",
            "masq_uplink_probes_sent_total{uplink=\"dsl\",interface=\"eth4\",target=\"64.70.12.210\"} 10",
            "masq_uplink_probes_answered_total{uplink=\"dsl\",interface=\"eth4\",target=\"64.70.12.210\"} 7",
            "masq_uplink_probe_rtt_seconds{uplink=\"dsl\",interface=\"eth4\",target=\"64.70.12.210\"} 0.002",
            "masq_uplink_probe_loss_ratio{uplink=\"dsl\",interface=\"eth4\",target=\"64.70.12.210\"} 0.3",
            "masq_uplink_connections{uplink=\"dsl\",interface=\"eth4\"} 1",
            "masq_connections{uplink=\"dsl\",direction=\"inbound\",proto=\"icmp\",state=\"icmp\"} 1",
            "masq_conntrack_capacity 1024",
            "masq_conntrack_entries 2",
            "masq_conntrack_pending_connections 3",
            "masq_conntrack_pending_capacity 256",
            "masq_packets_total{path=\"inbound_new\"} 2",
            "masq_drops_total{reason=\"fragment\"} 1",
            "masq_connection_events_missed_total{why=\"ring_full\"} 4",
            "masq_connection_events_missed_total{why=\"undelivered\"} 5",
            "masq_program_attached{program=\"masq_lan_in\",interface=\"eth0\",hook=\"tc_ingress\"} 0",
            "masq_program_attached{program=\"masq_uplink_in\",interface=\"eth4\",hook=\"tc_ingress\"} 0",
            "# EOF",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("path=\"events_"), "events are no packets");
    }
}
