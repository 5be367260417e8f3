//! The file as written: what serde reads, before defaults and validation.
use std::fmt;

use serde::{Deserialize, de};

use super::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) lan: Option<RawLan>,
    #[serde(default)]
    pub(super) uplink: Vec<RawUplink>,
    #[serde(default)]
    pub(super) publish: Vec<RawPublish>,
    #[serde(default)]
    pub(super) policy: Vec<RawPolicy>,
    #[serde(default)]
    pub(super) dataplane: RawDataplane,
    pub(super) on_transition: Option<super::health::RawTransitionHook>,
    #[serde(default)]
    pub(super) events: super::events::RawEvents,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLan {
    pub(super) interface: Option<String>,
    pub(super) prefixes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUplink {
    pub(super) name: Option<String>,
    pub(super) interface: Option<String>,
    pub(super) address: Option<String>,
    pub(super) gateway: Option<String>,
    pub(super) table: Option<u32>,
    pub(super) mark: Option<u32>,
    pub(super) weight: Option<u32>,
    pub(super) health: Option<super::health::RawHealth>,
    pub(super) on_down: Option<String>,
    pub(super) on_up: Option<String>,
    /// `"address-and-port-dependent"` (default) or `"endpoint-independent"` (UDP).
    pub(super) udp_filtering: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPublish {
    pub(super) uplink: Option<String>,
    pub(super) address: Option<String>,
    pub(super) to: Option<String>,
    pub(super) proto: Option<String>,
    pub(super) port: Option<u16>,
    pub(super) to_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) from: Option<String>,
    pub(super) to: Option<String>,
    pub(super) proto: Option<String>,
    /// `443` or `"8000-8100"`.
    pub(super) port: Option<toml::Value>,
    pub(super) uplink: Option<String>,
    pub(super) uplinks: Option<Weights>,
    /// `[["dsl"], ["isp-b", "lte"]]` or `[{ dsl = 1 }, { isp-b = 3, lte = 1 }]`.
    pub(super) tiers: Option<Vec<Tier>>,
    #[serde(default)]
    pub(super) sticky: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    pub(super) fast_path: Option<bool>,
    pub(super) xdp: Option<String>,
    pub(super) steer: Option<bool>,
    pub(super) validate: Option<bool>,
    pub(super) mark_mask: Option<u32>,
    pub(super) conn_capacity: Option<u32>,
    pub(super) pending_capacity: Option<u32>,
    pub(super) port_min: Option<u16>,
    pub(super) port_max: Option<u16>,
    pub(super) gateway_ports: Option<String>,
    pub(super) trace: Option<String>,
    pub(super) hairpin: Option<bool>,
    #[serde(default)]
    pub(super) timeouts: RawTimeouts,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) tcp_syn: Option<u64>,
    pub(super) tcp_established: Option<u64>,
    pub(super) tcp_closing: Option<u64>,
    pub(super) udp: Option<u64>,
    pub(super) udp_stream: Option<u64>,
    pub(super) icmp: Option<u64>,
}

/// One tier: uplink names (weight 1 each) or a table of weights.
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum Tier {
    Names(Vec<String>),
    Weights(Weights),
}

/// `uplinks = { dsl = 1, isp-b = 3 }`, kept in file order.
pub(super) struct Weights(pub(super) Vec<(String, u32)>);

impl<'de> Deserialize<'de> for Weights {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Weights;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of uplink weights like { dsl = 1, isp-b = 3 }")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Weights, A::Error> {
                let mut weights = Vec::new();
                while let Some(entry) = map.next_entry::<String, u32>()? {
                    weights.push(entry);
                }
                Ok(Weights(weights))
            }
        }
        d.deserialize_map(Visitor)
    }
}
