//! The CLI's views of the pinned dataplane (`status`, `uplinks`, `conns`, `stats`), each a
//! serializable struct rendered as a table or as JSON. `docs/cli-json.md` documents every field.
use std::{
    collections::BTreeMap,
    io::{self, Write as _},
    net::Ipv4Addr,
    path::{Path, PathBuf},
};

use anyhow::anyhow;
use masq_common::{Counter, FlowKey, Tuple4, UPLINK_F_UP};
use serde::{Serialize, Serializer};

use crate::{
    conntrack::{self, Conn},
    health::monitor::UplinkHealthReport,
    links::{Attachment, read_attachments},
    pinned::{
        CounterValue, TableSize, read_conns, read_counters, read_table_size, read_uplink_infos,
        read_uplink_stats,
    },
    state::{DaemonState, DaemonView, Names, NamesSource, ReloadOutcome, daemon_view},
};

// ---------------------------------------------------------------------------------------------
// Connections

/// A tuple for people: addresses and host-order ports.
#[derive(Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
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

impl From<&Tuple4> for Tuple {
    fn from(t: &Tuple4) -> Self {
        (&t.key(0)).into()
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
    /// `inbound` (to a published service), `outbound` (masqueraded from the LAN) or `hairpin`
    /// (a LAN host to a published address).
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
    /// Not confirmed yet (handshake incomplete, no reply): in the pending table, which a flood
    /// may churn.
    pub pending: bool,
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
    let entry = conn.any().1;
    if entry.is_hairpin() {
        "hairpin"
    } else if entry.is_inbound() {
        "inbound"
    } else {
        "outbound"
    }
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
        state: conntrack::state_name(conn.state()),
        pending: conn.pending(),
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

/// Every command's output: `view` as JSON, or the tables `table` prints.
fn render(
    view: &impl Serialize,
    json: bool,
    table: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if json { print_json(view) } else { table() }
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
    render(&view, json, || {
        let rows = |pairs: &[(&str, u64)]| -> Vec<Vec<String>> {
            pairs.iter().map(|(k, v)| vec![k.to_string(), v.to_string()]).collect()
        };
        print_table(&["PATH", "PACKETS"], &rows(&view.paths), &[1]);
        println!();
        let mut drops = rows(&view.drops);
        drops.push(vec!["total".into(), view.drops_total.to_string()]);
        print_table(&["DROP REASON", "PACKETS"], &drops, &[1]);
        Ok(())
    })
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
    render(&views, json, || {
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
    })
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
    Ok(crate::pinned::remove_conns(pin_dir, |c| filter.matches(c))?.len())
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
    /// Masqueraded TCP connections opened on it, and how many got a SYN-ACK or RST.
    pub syn_sent: u64,
    pub syn_answered: u64,
    /// Up or down for new connections, since when, why, and what its probes say: from the
    /// running daemon (`None` without one).
    pub health: Option<UplinkHealthReport>,
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
    let health = DaemonState::load(pin_dir).map(|s| s.health).unwrap_or_default();
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
                syn_sent: s.syn_sent,
                syn_answered: s.syn_answered,
                health: health.get(i).cloned(),
            }
        })
        .collect())
}

pub fn uplinks(pin_dir: &Path, names: &Names, json: bool) -> anyhow::Result<()> {
    let conns = read_conns(pin_dir)?;
    let traffic = uplink_traffic(pin_dir, names, &conns)?;
    render(&traffic, json, || {
        let now = crate::health::unix_ms();
        let rows: Vec<Vec<String>> = traffic
            .iter()
            .map(|u| {
                let (state, since) = match &u.health {
                    Some(h) => (
                        if h.up { "up" } else { "down" }.to_owned(),
                        format!("{}s", now.saturating_sub(h.since_unix_ms) / 1000),
                    ),
                    None => ("-".into(), "-".into()),
                };
                let probes = u.health.as_ref().and_then(|h| h.probes.as_ref());
                let rtt = probes
                    .and_then(|p| {
                        let rtts: Vec<f64> =
                            p.targets.iter().filter_map(|t| t.avg_rtt_ms).collect();
                        (!rtts.is_empty()).then(|| rtts.iter().sum::<f64>() / rtts.len() as f64)
                    })
                    .map_or_else(|| "-".into(), |ms| format!("{ms:.1}ms"));
                let loss = probes
                    .map(|p| {
                        let worst = p.targets.iter().map(|t| t.loss_percent).fold(0.0, f64::max);
                        format!("{worst:.0}%")
                    })
                    .unwrap_or_else(|| "-".into());
                let answering = probes
                    .map(|p| {
                        let up = p.targets.iter().filter(|t| t.answering).count();
                        format!("{up}/{}", p.targets.len())
                    })
                    .unwrap_or_else(|| "-".into());
                vec![
                    u.index.to_string(),
                    u.name.clone(),
                    u.interface.clone().unwrap_or_else(|| "-".into()),
                    state,
                    since,
                    rtt,
                    loss,
                    answering,
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
                "STATE",
                "SINCE",
                "RTT",
                "LOSS",
                "TARGETS",
                "RX_PACKETS",
                "RX_BYTES",
                "TX_PACKETS",
                "TX_BYTES",
                "NEW_CONNS",
                "ACTIVE_CONNS",
            ],
            &rows,
            &[0, 4, 5, 6, 8, 9, 10, 11, 12, 13],
        );
        for u in &traffic {
            let Some(h) = &u.health else { continue };
            println!("{}: {}", u.name, h.reason);
            if let Some(why) = &h.passive.suspect {
                println!("{}: suspect: {why}", u.name);
            }
        }
        Ok(())
    })
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
    /// Connections tracked, confirmed and pending.
    pub count: u64,
    /// Confirmed connections that fit (`CONNS` max_entries / 2).
    pub capacity: u32,
    /// Confirmed map entries (two per complete connection) and the map's max_entries.
    pub entries: u64,
    pub max_entries: u32,
    /// entries / max_entries.
    pub fill: f64,
    /// The table of connections not confirmed yet (`PENDING_CONNS`).
    pub pending: PendingStatus,
    /// Signs of pressure: moves to the confirmed table refused because it was full (per
    /// attempt), and new connections refused (no free NAT port, insert failed).
    pub confirmed_table_full: u64,
    pub refused: u64,
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

/// Connections not confirmed yet: how many, and how full their table is.
#[derive(Serialize, Debug, Clone)]
pub struct PendingStatus {
    pub count: u64,
    pub capacity: u32,
    pub entries: u64,
    pub max_entries: u32,
    pub fill: f64,
}

fn ratio(entries: u64, max_entries: u32) -> f64 {
    if max_entries == 0 { 0.0 } else { entries as f64 / f64::from(max_entries) }
}

pub fn connections_status(
    conns: &[Conn],
    size: TableSize,
    counters: &[CounterValue],
) -> ConnectionsStatus {
    let entries_of = |c: &Conn| u64::from(c.orig.is_some()) + u64::from(c.reply.is_some());
    let entries: u64 = conns.iter().filter(|c| !c.pending()).map(entries_of).sum();
    let pending_entries: u64 = conns.iter().filter(|c| c.pending()).map(entries_of).sum();
    let counter = |c: Counter| counters.iter().find(|v| v.name == c.name()).map_or(0, |v| v.value);
    let mut by_proto = BTreeMap::new();
    let mut by_state = BTreeMap::new();
    let mut by_direction = BTreeMap::new();
    for c in conns {
        *by_proto.entry(proto_name(c.proto())).or_default() += 1;
        *by_state.entry(conntrack::state_name(c.state())).or_default() += 1;
        *by_direction.entry(direction_name(c)).or_default() += 1;
    }
    ConnectionsStatus {
        count: conns.len() as u64,
        capacity: size.capacity(),
        entries,
        max_entries: size.max_entries,
        fill: ratio(entries, size.max_entries),
        pending: PendingStatus {
            count: conns.iter().filter(|c| c.pending()).count() as u64,
            capacity: size.pending_capacity(),
            entries: pending_entries,
            max_entries: size.pending_max_entries,
            fill: ratio(pending_entries, size.pending_max_entries),
        },
        confirmed_table_full: counter(Counter::ConfirmedTableFull),
        refused: counter(Counter::DropConnInsertFailed) + counter(Counter::DropNatPortExhausted),
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
        connections: connections_status(&conns, size, &read_counters(pin_dir)?),
    })
}

pub fn status(pin_dir: &Path, names: &Names, json: bool) -> anyhow::Result<()> {
    let view = status_view(pin_dir, names)?;
    render(&view, json, || {
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
        let p = &c.pending;
        println!(
            "connections:  {} confirmed of {} ({:.1}% of {} map entries), {} pending of {} \
             ({:.1}%)",
            c.count - p.count,
            c.capacity,
            c.fill * 100.0,
            c.max_entries,
            p.count,
            p.capacity,
            p.fill * 100.0,
        );
        println!(
            "pressure:     confirmed table full {} times, {} new connections refused",
            c.confirmed_table_full, c.refused
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
