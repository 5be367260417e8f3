//! `[events]`: the record of every connection's creation and end (`crate::events`).
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ConfigError, Result};

pub const DEFAULT_LOG_MAX_MB: u64 = 64;
pub const DEFAULT_LOG_KEEP: u32 = 8;
const RING_KIB: std::ops::RangeInclusive<u32> = 4..=(1 << 20);

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventsSettings {
    /// JSON lines, one per connection created or ended; `None`: no log.
    pub log: Option<PathBuf>,
    /// Rotate the log once it grows past this many bytes.
    pub log_max_bytes: u64,
    /// Rotated logs kept (`<log>.1` the newest).
    pub log_keep: u32,
    /// Size of the programs' ring buffer (`EVENTS`), bytes.
    pub ring_bytes: u32,
}

impl Default for EventsSettings {
    fn default() -> Self {
        Self {
            log: None,
            log_max_bytes: DEFAULT_LOG_MAX_MB << 20,
            log_keep: DEFAULT_LOG_KEEP,
            ring_bytes: masq_common::DEFAULT_EVENT_RING_BYTES,
        }
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEvents {
    log: Option<PathBuf>,
    log_max_mb: Option<u64>,
    log_keep: Option<u32>,
    ring_kib: Option<u32>,
}

pub(super) fn resolve_events(raw: RawEvents) -> Result<EventsSettings> {
    let default = EventsSettings::default();
    if let Some(log) = &raw.log
        && (!log.is_absolute() || log.file_name().is_none())
    {
        return Err(ConfigError::new(
            "events.log",
            format!("{} is not an absolute file path", log.display()),
        ));
    }
    let log_max_mb = raw.log_max_mb.unwrap_or(DEFAULT_LOG_MAX_MB);
    if !(1..=1 << 20).contains(&log_max_mb) {
        return Err(ConfigError::new(
            "events.log_max_mb",
            format!("{log_max_mb}: expected 1..=1048576"),
        ));
    }
    let log_keep = raw.log_keep.unwrap_or(default.log_keep);
    if log_keep > 1000 {
        return Err(ConfigError::new("events.log_keep", format!("{log_keep}: at most 1000")));
    }
    let ring_bytes = match raw.ring_kib {
        None => default.ring_bytes,
        Some(kib) if RING_KIB.contains(&kib) && kib.is_power_of_two() => kib << 10,
        Some(kib) => {
            return Err(ConfigError::new(
                "events.ring_kib",
                format!("{kib}: expected a power of two in 4..=1048576"),
            ));
        }
    };
    Ok(EventsSettings { log: raw.log, log_max_bytes: log_max_mb << 20, log_keep, ring_bytes })
}
