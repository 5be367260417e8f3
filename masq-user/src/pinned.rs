//! The dataplane's pinned maps, read and written by their pins alike by the daemon, the CLI and
//! the metrics: their layout, the config's values, counters, per-uplink traffic, the uplink
//! table, the connection and binding tables. Works whether or not the daemon runs, from any
//! network namespace (bpffs is shared by all of them).
use std::{
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use aya::{
    maps::{
        Array, HashMap, Map, MapData, MapError, MapType, PerCpuArray, PerCpuValues, ProgramArray,
        RingBuf,
    },
    programs::ProgramFd,
};
use masq_common::{
    Binding, BindingKey, BoundPort, BoundPortKey, CFG_F_EVENTS, COUNTER_SLOTS, ConnEntry, Counter,
    DataplaneConfig, FlowKey, FragKey, FragXlate, MAX_UPLINKS, NextHop, PolicyRule, PublicAddr,
    PublishKey, PublishTarget, UPLINK_F_ENABLED, UPLINK_F_UP, UplinkInfo, UplinkStats, map_names,
};
use serde::{Deserialize, Serialize};

use crate::{
    bindings::BindingTables,
    config::Config,
    conntrack::{Conn, ConnTables},
    follow::UplinkState,
    host::HostInterfaces,
    local_ports,
    map_values::MapValues,
};

// ---------------------------------------------------------------------------------------------
// Pins and layouts

/// Open a pinned map by name.
pub fn open_pinned(dir: &Path, name: &str) -> anyhow::Result<MapData> {
    let path = dir.join(name);
    MapData::from_pin(&path).with_context(|| {
        format!("opening {} (is masq running with --pin-dir {}?)", path.display(), dir.display())
    })
}

/// A pinned map as the typed map `M` (an `Array`, a `HashMap`…).
fn open<M: TryFrom<Map, Error = MapError>>(dir: &Path, name: &str) -> anyhow::Result<M> {
    let map = Map::from_map_data(open_pinned(dir, name)?)?;
    M::try_from(map).with_context(|| format!("pinned map {name}"))
}

/// A pinned map as the typed map `M`, and a second fd of it (for batched reads, which aya lacks).
fn open_with_fd<M: TryFrom<Map, Error = MapError>>(
    dir: &Path,
    name: &str,
) -> anyhow::Result<(M, OwnedFd)> {
    let data = open_pinned(dir, name)?;
    let fd = data.fd().as_fd().try_clone_to_owned()?;
    let map =
        M::try_from(Map::from_map_data(data)?).with_context(|| format!("pinned map {name}"))?;
    Ok((map, fd))
}

/// The shape of each map as this build defines it.
struct MapLayout {
    name: &'static str,
    map_type: MapType,
    key_size: u32,
    value_size: u32,
}

const fn layout<K, V>(name: &'static str, map_type: MapType) -> MapLayout {
    MapLayout {
        name,
        map_type,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
    }
}

const MAP_LAYOUTS: &[MapLayout] = &[
    layout::<FlowKey, ConnEntry>(map_names::CONNS, MapType::Hash),
    layout::<FlowKey, ConnEntry>(map_names::PENDING_CONNS, MapType::LruHash),
    layout::<BindingKey, Binding>(map_names::BINDINGS, MapType::Hash),
    layout::<BoundPortKey, BoundPort>(map_names::BOUND_PORTS, MapType::Hash),
    layout::<u32, DataplaneConfig>(map_names::CONFIG, MapType::Array),
    layout::<u32, UplinkInfo>(map_names::UPLINKS, MapType::Array),
    layout::<u32, PolicyRule>(map_names::POLICIES, MapType::Array),
    layout::<PublishKey, PublishTarget>(map_names::PUBLISH, MapType::Hash),
    layout::<u32, PublicAddr>(map_names::PUBLIC_ADDRS, MapType::Hash),
    layout::<u32, u64>(map_names::COUNTERS, MapType::PerCpuArray),
    layout::<u32, UplinkStats>(map_names::UPLINK_STATS, MapType::PerCpuArray),
    layout::<FragKey, FragXlate>(map_names::FRAGS, MapType::LruHash),
    layout::<u32, NextHop>(map_names::NEXTHOPS, MapType::PerCpuArray),
    layout::<u32, u32>(map_names::XDP_PROG_IDS, MapType::Array),
    layout::<(), ()>(map_names::EVENTS, MapType::RingBuf),
    layout::<u32, u32>(map_names::TAIL_CALLS, MapType::ProgramArray),
];

/// Where each map is pinned under `pin_dir`, by name.
pub fn pin_paths(pin_dir: &Path) -> Vec<(&'static str, PathBuf)> {
    MAP_LAYOUTS.iter().map(|m| (m.name, pin_dir.join(m.name))).collect()
}

/// Refuse to adopt pinned maps whose layout differs from this build's: writing through a
/// different layout would corrupt them.
pub fn check_pinned_layout(pin_dir: &Path) -> anyhow::Result<()> {
    for expected in MAP_LAYOUTS {
        let path = pin_dir.join(expected.name);
        if !path.exists() {
            continue;
        }
        let info = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .with_context(|| format!("reading pinned map {}", path.display()))?;
        let found = (info.map_type()?, info.key_size(), info.value_size());
        let wanted = (expected.map_type, expected.key_size, expected.value_size);
        if found != wanted {
            bail!(
                "pinned map {} has layout {found:?} (type, key, value bytes) but this masq expects \
                 {wanted:?}: refusing to adopt it; `masq down --pin-dir {}` removes the old \
                 dataplane (and its connections)",
                path.display(),
                pin_dir.display()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Raw reads of the maps

/// Counter values summed over CPUs, by name.
#[derive(Serialize, Debug, Clone)]
pub struct CounterValue {
    pub name: &'static str,
    pub drop: bool,
    pub value: u64,
}

pub fn read_counters(pin_dir: &Path) -> anyhow::Result<Vec<CounterValue>> {
    let array: PerCpuArray<_, u64> = open(pin_dir, map_names::COUNTERS)?;
    let totals = counter_totals(&array)?;
    Ok(Counter::ALL
        .iter()
        .zip(totals)
        .map(|(c, value)| CounterValue { name: c.name(), drop: c.is_drop(), value })
        .collect())
}

/// Every counter's total (`Counter::total`: its own slot and its outcomes'), summed over CPUs,
/// in the order of `Counter::ALL`.
pub fn counter_totals<T: std::borrow::Borrow<MapData>>(
    array: &PerCpuArray<T, u64>,
) -> anyhow::Result<Vec<u64>> {
    let slots: Vec<u64> = (0..COUNTER_SLOTS)
        .map(|i| Ok(array.get(&i, 0)?.iter().sum()))
        .collect::<anyhow::Result<_>>()?;
    Ok(Counter::ALL.iter().map(|c| c.total(|i| slots[i as usize])).collect())
}

/// Per-uplink traffic summed over CPUs, indexed like the config's uplinks.
pub fn read_uplink_stats(pin_dir: &Path, uplinks: usize) -> anyhow::Result<Vec<UplinkStats>> {
    let array: PerCpuArray<_, UplinkStats> = open(pin_dir, map_names::UPLINK_STATS)?;
    (0..uplinks as u32)
        .map(|i| {
            let per_cpu = array.get(&i, 0)?;
            Ok(per_cpu.iter().fold(UplinkStats::default(), |acc, s| acc.plus(s)))
        })
        .collect()
}

/// The configured slots of `UPLINKS` (index, info), in index order.
pub fn read_uplink_infos(pin_dir: &Path) -> anyhow::Result<Vec<(u8, UplinkInfo)>> {
    let array: Array<_, UplinkInfo> = open(pin_dir, map_names::UPLINKS)?;
    let mut infos = Vec::new();
    for i in 0..MAX_UPLINKS as u32 {
        let info = array.get(&i, 0)?;
        if info.flags & UPLINK_F_ENABLED != 0 {
            infos.push((i as u8, info));
        }
    }
    Ok(infos)
}

/// Both pinned connection tables.
pub fn conn_tables(pin_dir: &Path) -> anyhow::Result<ConnTables<MapData>> {
    let (confirmed, confirmed_fd) = open_with_fd(pin_dir, map_names::CONNS)?;
    let (pending, pending_fd) = open_with_fd(pin_dir, map_names::PENDING_CONNS)?;
    Ok(ConnTables { confirmed, pending, fds: Some([confirmed_fd, pending_fd]) })
}

pub fn read_conns(pin_dir: &Path) -> anyhow::Result<Vec<Conn>> {
    Ok(conn_tables(pin_dir)?.dump())
}

/// Remove the pinned connections `doomed` picks, both directions; returns them.
pub fn remove_conns(pin_dir: &Path, doomed: impl Fn(&Conn) -> bool) -> anyhow::Result<Vec<Conn>> {
    Ok(conn_tables(pin_dir)?.remove_where(doomed))
}

/// Sizes of the connection tables.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq)]
pub struct TableSize {
    /// Kernel id of the pinned `CONNS` map (changes when the dataplane is recreated).
    pub map_id: u32,
    /// `CONNS` max_entries: two per connection.
    pub max_entries: u32,
    /// `PENDING_CONNS` max_entries: two per connection.
    #[serde(default)]
    pub pending_max_entries: u32,
}

impl TableSize {
    /// Confirmed connections that fit.
    pub fn capacity(&self) -> u32 {
        self.max_entries / 2
    }

    /// Pending connections that fit.
    pub fn pending_capacity(&self) -> u32 {
        self.pending_max_entries / 2
    }
}

pub fn read_table_size(pin_dir: &Path) -> anyhow::Result<TableSize> {
    let info = open_pinned(pin_dir, map_names::CONNS)?.info()?;
    let pending = open_pinned(pin_dir, map_names::PENDING_CONNS)?.info()?;
    Ok(TableSize {
        map_id: info.id(),
        max_entries: info.max_entries(),
        pending_max_entries: pending.max_entries(),
    })
}

// ---------------------------------------------------------------------------------------------
// Writes

/// Write `cfg` into the maps (see [`MapValues::new`] for `states` and `up`), with the gateway's
/// own ephemeral ports as the kernel has them now.
pub fn write_config(
    pin_dir: &Path,
    cfg: &Config,
    host: &HostInterfaces,
    states: &[UplinkState],
    up: &[bool],
) -> anyhow::Result<()> {
    write_values(pin_dir, &MapValues::new(cfg, host, states, up, local_ports::current())?)
}

/// Write a config's values, replacing what a previous config (or run) left there. `CONFIG`
/// last: the programs act only once it is set. Whether events are reported is the daemon's to
/// say (`set_events`), and stays as it was.
pub fn write_values(pin_dir: &Path, values: &MapValues) -> anyhow::Result<()> {
    let mut uplinks: Array<_, UplinkInfo> = open(pin_dir, map_names::UPLINKS)?;
    for (i, info) in values.uplinks.iter().enumerate() {
        uplinks.set(i as u32, info, 0).with_context(|| format!("UPLINKS[{i}]"))?;
    }
    let mut policies: Array<_, PolicyRule> = open(pin_dir, map_names::POLICIES)?;
    for (i, rule) in values.policies.iter().enumerate() {
        policies.set(i as u32, rule, 0).with_context(|| format!("POLICIES[{i}]"))?;
    }
    let publish: HashMap<_, PublishKey, PublishTarget> = open(pin_dir, map_names::PUBLISH)?;
    replace_all(publish, &values.publish).context("PUBLISH")?;
    let public: HashMap<_, u32, PublicAddr> = open(pin_dir, map_names::PUBLIC_ADDRS)?;
    replace_all(public, &values.public_addrs).context("PUBLIC_ADDRS")?;
    let mut config: Array<_, DataplaneConfig> = open(pin_dir, map_names::CONFIG)?;
    let old = config.get(&0, 0).ok();
    let global = DataplaneConfig {
        flags: values.config.flags | old.map_or(0, |old| old.flags & CFG_F_EVENTS),
        // Uplinks may have moved: routes cached under the old values are not trusted.
        route_epoch: old.map_or(0, |old| old.route_epoch.wrapping_add(1)),
        ..values.config
    };
    config.set(0, global, 0).context("CONFIG")?;
    Ok(())
}

/// Make `map` hold exactly `entries`.
fn replace_all<K: aya::Pod + PartialEq, V: aya::Pod>(
    mut map: HashMap<MapData, K, V>,
    entries: &[(K, V)],
) -> anyhow::Result<()> {
    for (key, value) in entries {
        map.insert(key, value, 0)?;
    }
    let stale: Vec<K> = map
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !entries.iter().any(|(key, _)| key == k))
        .collect();
    for key in stale {
        map.remove(&key)?;
    }
    Ok(())
}

/// Report new connections in `EVENTS` (`CFG_F_EVENTS`), or stop.
pub fn set_events(pin_dir: &Path, on: bool) -> anyhow::Result<()> {
    set_config_flag(pin_dir, CFG_F_EVENTS, on)
}

/// Set or clear one `CFG_F_*` flag of `CONFIG[0]`, leaving the rest as it is.
pub fn set_config_flag(pin_dir: &Path, flag: u32, on: bool) -> anyhow::Result<()> {
    update_config(pin_dir, |cfg| cfg.flags = if on { cfg.flags | flag } else { cfg.flags & !flag })
}

/// Change `CONFIG[0]` as it is now by `change`.
fn update_config(pin_dir: &Path, change: impl FnOnce(&mut DataplaneConfig)) -> anyhow::Result<()> {
    let mut map: Array<_, DataplaneConfig> = open(pin_dir, map_names::CONFIG)?;
    let mut cfg = map.get(&0, 0).context("CONFIG")?;
    change(&mut cfg);
    map.set(0, cfg, 0).context("CONFIG")?;
    Ok(())
}

/// Mark uplink `index` up or down for new connections (failover); returns whether it changed.
pub fn set_uplink_up(pin_dir: &Path, index: usize, up: bool) -> anyhow::Result<bool> {
    let mut map: Array<_, UplinkInfo> = open(pin_dir, map_names::UPLINKS)?;
    let mut info = map.get(&(index as u32), 0).with_context(|| format!("UPLINKS[{index}]"))?;
    if (info.flags & UPLINK_F_UP != 0) == up {
        return Ok(false);
    }
    info.flags ^= UPLINK_F_UP;
    map.set(index as u32, info, 0).with_context(|| format!("UPLINKS[{index}]"))?;
    Ok(true)
}

/// Add `n` to a counter the daemon keeps (the programs never touch its slot).
pub fn add_to_counter(pin_dir: &Path, counter: Counter, n: u64) -> anyhow::Result<()> {
    let mut map: PerCpuArray<_, u64> = open(pin_dir, map_names::COUNTERS)?;
    let mut values: Vec<u64> = map.get(&(counter as u32), 0)?.iter().copied().collect();
    if let Some(first) = values.first_mut() {
        *first += n;
    }
    map.set(counter as u32, PerCpuValues::try_from(values)?, 0)?;
    Ok(())
}

/// Forget every route the dataplane cached, so that no packet is sent by a route or device the
/// host no longer has (each is otherwise trusted until its tick ends): empty every CPU's
/// next-hop cache (`NEXTHOPS`) and bump the epoch the routes cached in connection entries carry
/// (`DataplaneConfig::route_epoch`). Returns the next-hop slots emptied (non-empty on some CPU).
pub fn forget_routes(pin_dir: &Path) -> anyhow::Result<usize> {
    update_config(pin_dir, |cfg| cfg.route_epoch = cfg.route_epoch.wrapping_add(1))?;
    let mut map: PerCpuArray<_, NextHop> = open(pin_dir, map_names::NEXTHOPS)?;
    let mut cleared = 0;
    for slot in 0..map.len() {
        let values = map.get(&slot, 0)?;
        if values.iter().all(|nh| nh.ifindex == 0) {
            continue;
        }
        let empty = vec![NextHop::default(); values.len()];
        map.set(slot, PerCpuValues::try_from(empty)?, 0)?;
        cleared += 1;
    }
    Ok(cleared)
}

/// Both pinned binding tables (endpoint-independent mappings).
pub fn binding_tables(pin_dir: &Path) -> anyhow::Result<BindingTables<MapData>> {
    let (bindings, bindings_fd) = open_with_fd(pin_dir, map_names::BINDINGS)?;
    let (ports, ports_fd) = open_with_fd(pin_dir, map_names::BOUND_PORTS)?;
    Ok(BindingTables { bindings, ports, fds: Some([bindings_fd, ports_fd]) })
}

/// Remove the bindings whose endpoint has no connection among `conns` (the tables as dumped
/// from `read_ns` on); returns how many.
pub fn sweep_bindings(pin_dir: &Path, conns: &[Conn], read_ns: u64) -> anyhow::Result<usize> {
    Ok(binding_tables(pin_dir)?.sweep(conns, masq_common::tick(read_ns)))
}

/// Remove the bindings whose public port lies in the gateway's own ephemeral range (after that
/// range changed): their endpoints' next connections get a port outside it; the connections
/// that use them keep theirs until they end.
pub fn sweep_gateway_range(pin_dir: &Path) -> anyhow::Result<usize> {
    let Some((lo, hi)) = local_ports::current() else { return Ok(0) };
    Ok(binding_tables(pin_dir)?
        .remove_where(|port, _| (lo..=hi).contains(&u16::from_be(port.ext_port))))
}

/// The in-kernel expiry's own map (`EXPIRY`), taken out of the loaded object: never pinned, it
/// lives as long as the pass that uses it.
pub fn take_expiry_slot(
    ebpf: &mut aya::Ebpf,
) -> anyhow::Result<Array<MapData, masq_common::ExpiryPass>> {
    let slot = ebpf.take_map(map_names::EXPIRY).context("map EXPIRY missing")?;
    Ok(slot.try_into()?)
}

/// Put a loaded program in `TAIL_CALLS[slot]`.
pub fn set_tail_call(pin_dir: &Path, slot: u32, program: &ProgramFd) -> anyhow::Result<()> {
    let mut slots: ProgramArray<_> = open(pin_dir, map_names::TAIL_CALLS)?;
    slots.set(slot, program, 0).with_context(|| format!("TAIL_CALLS[{slot}]"))?;
    Ok(())
}

/// Tell the lost-redirect tracepoints which XDP program is masq's (0: none runs).
pub fn set_xdp_prog_id(pin_dir: &Path, id: u32) -> anyhow::Result<()> {
    let mut ids: Array<_, u32> = open(pin_dir, map_names::XDP_PROG_IDS)?;
    ids.set(0, id, 0).context("XDP_PROG_IDS")?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Events

/// The ring buffer the programs report new connections in, for its one reader.
pub fn event_ring(pin_dir: &Path) -> anyhow::Result<RingBuf<MapData>> {
    open(pin_dir, map_names::EVENTS)
}

/// The pinned ring's size in bytes (fixed when the dataplane was created).
pub fn event_ring_bytes(pin_dir: &Path) -> anyhow::Result<u32> {
    Ok(open_pinned(pin_dir, map_names::EVENTS)?.info()?.max_entries())
}
