//! Reading the pinned maps for the CLI (works whether or not the daemon runs).
use std::{net::Ipv4Addr, path::Path};

use aya::maps::{Map, PerCpuArray};
use masq_common::{Counter, FlowKey, UplinkStats, map_names};
use serde::Serialize;

use crate::{
    conntrack::{self, Conn, ConnTable},
    dataplane::open_pinned,
};

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
            Ok(CounterValue {
                name: c.name(),
                drop: c.is_drop(),
                value: values.iter().sum(),
            })
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

pub fn read_conns(pin_dir: &Path) -> anyhow::Result<Vec<Conn>> {
    let map = Map::from_map_data(open_pinned(pin_dir, map_names::CONNS)?)?;
    let table: ConnTable<_> = ConnTable::try_from(map)?;
    conntrack::dump(&table)
}

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

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{} -> {}:{}",
            self.src, self.src_port, self.dst, self.dst_port
        )
    }
}

/// One connection as `masq conns --json` prints it.
#[derive(Serialize, Debug, Clone)]
pub struct ConnView {
    pub proto: &'static str,
    pub direction: &'static str,
    /// The initiator's packets as they arrived, and as masq sent them on.
    pub original: Option<Tuple>,
    pub translated: Option<Tuple>,
    /// Replies as they arrived, and as masq sent them on.
    pub reply: Option<Tuple>,
    pub reply_translated: Option<Tuple>,
    pub uplink: u8,
    pub state: &'static str,
    pub age_s: f64,
    pub idle_s: f64,
    pub packets_original: u64,
    pub bytes_original: u64,
    pub packets_reply: u64,
    pub bytes_reply: u64,
}

pub fn proto_name(proto: u8) -> &'static str {
    match proto {
        conntrack::IPPROTO_TCP => "tcp",
        conntrack::IPPROTO_UDP => "udp",
        conntrack::IPPROTO_ICMP => "icmp",
        _ => "other",
    }
}

pub fn conn_view(conn: &Conn, now_ns: u64) -> ConnView {
    let secs = |ns: u64| now_ns.saturating_sub(ns) as f64 / 1e9;
    ConnView {
        proto: proto_name(conn.proto()),
        direction: if conn.any().1.is_inbound() {
            "inbound"
        } else {
            "outbound"
        },
        original: conn.orig.as_ref().map(|(k, _)| k.into()),
        translated: conn.orig.as_ref().map(|(_, e)| (&e.xlate).into()),
        reply: conn.reply.as_ref().map(|(k, _)| k.into()),
        reply_translated: conn.reply.as_ref().map(|(_, e)| (&e.xlate).into()),
        uplink: conn.uplink(),
        state: conn.state().name(),
        age_s: secs(conn.created_ns()),
        idle_s: secs(conn.last_seen_ns()),
        packets_original: conn.orig.map_or(0, |(_, e)| e.packets),
        bytes_original: conn.orig.map_or(0, |(_, e)| e.bytes),
        packets_reply: conn.reply.map_or(0, |(_, e)| e.packets),
        bytes_reply: conn.reply.map_or(0, |(_, e)| e.bytes),
    }
}

pub fn stats(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let counters = read_counters(pin_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&counters)?);
        return Ok(());
    }
    let width = counters.iter().map(|c| c.name.len()).max().unwrap_or(0);
    for c in &counters {
        println!("{:<width$}  {:>12}", c.name, c.value);
    }
    Ok(())
}

pub fn conns(pin_dir: &Path, json: bool) -> anyhow::Result<()> {
    let now = conntrack::boottime_ns();
    let views: Vec<ConnView> = read_conns(pin_dir)?
        .iter()
        .map(|c| conn_view(c, now))
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&views)?);
        return Ok(());
    }
    let show = |t: &Option<Tuple>| t.as_ref().map_or("-".to_string(), ToString::to_string);
    println!(
        "{:<5} {:<8} {:<44} {:<44} {:>6} {:<11} {:>8} {:>10}",
        "PROTO", "DIR", "ORIGINAL", "TRANSLATED", "UPLINK", "STATE", "IDLE_S", "PACKETS"
    );
    for v in &views {
        println!(
            "{:<5} {:<8} {:<44} {:<44} {:>6} {:<11} {:>8.1} {:>10}",
            v.proto,
            v.direction,
            show(&v.original),
            show(&v.translated),
            v.uplink,
            v.state,
            v.idle_s,
            v.packets_original + v.packets_reply
        );
    }
    Ok(())
}
