//! The dataplane's pinned maps as the daemon, the CLI and the metrics read them: counters,
//! per-uplink traffic, the uplink table and the connection table (read, and flushed). Works whether or not the
//! daemon runs, from any network namespace (bpffs is shared by all of them).
use std::path::Path;

use aya::maps::{Array, Map, MapData, PerCpuArray};
use masq_common::{Counter, MAX_UPLINKS, UPLINK_F_ENABLED, UplinkInfo, UplinkStats, map_names};
use serde::{Deserialize, Serialize};

use crate::{
    conntrack::{Conn, ConnTable, ConnTables},
    dataplane::open_pinned,
};

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
    let map = Map::from_map_data(open_pinned(pin_dir, map_names::COUNTERS)?)?;
    let array: PerCpuArray<_, u64> = PerCpuArray::try_from(map)?;
    Counter::ALL
        .iter()
        .map(|c| {
            let values = array.get(&(*c as u32), 0)?;
            Ok(CounterValue { name: c.name(), drop: c.is_drop(), value: values.iter().sum() })
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
            Ok(per_cpu.iter().fold(UplinkStats::default(), |acc, s| acc.plus(s)))
        })
        .collect()
}

/// The configured slots of `UPLINKS` (index, info), in index order.
pub fn read_uplink_infos(pin_dir: &Path) -> anyhow::Result<Vec<(u8, UplinkInfo)>> {
    let map = Map::from_map_data(open_pinned(pin_dir, map_names::UPLINKS)?)?;
    let array: Array<_, UplinkInfo> = Array::try_from(map)?;
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
    let open = |name| -> anyhow::Result<ConnTable<MapData>> {
        Ok(ConnTable::try_from(Map::from_map_data(open_pinned(pin_dir, name)?)?)?)
    };
    Ok(ConnTables { confirmed: open(map_names::CONNS)?, pending: open(map_names::PENDING_CONNS)? })
}

pub fn read_conns(pin_dir: &Path) -> anyhow::Result<Vec<Conn>> {
    Ok(conn_tables(pin_dir)?.dump())
}

/// Remove the pinned connections `doomed` picks, both directions; returns how many.
pub fn remove_conns(pin_dir: &Path, doomed: impl Fn(&Conn) -> bool) -> anyhow::Result<usize> {
    Ok(conn_tables(pin_dir)?.remove_where(doomed).len())
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
