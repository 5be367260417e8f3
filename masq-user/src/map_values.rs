//! What the config puts in each of the dataplane's maps, in the maps' own layout (network byte
//! order, fixed-size slots). Pure: `pinned` writes these values.
use std::net::Ipv4Addr;

use anyhow::{anyhow, bail};
use ipnet::Ipv4Net;
use masq_common::{
    CFG_F_FAST_PATH, CFG_F_NO_HAIRPIN, CFG_F_NO_STEER, CFG_F_NO_VALIDATE, DataplaneConfig,
    MAX_CHOICES, MAX_LAN_PREFIXES, MAX_POLICIES, MAX_UPLINKS, POLICY_F_STICKY, PUBLIC_F_PORTS,
    PUBLIC_F_WHOLE, PolicyRule, Prefix4, PublicAddr, PublishKey, PublishTarget, UPLINK_F_ENABLED,
    UPLINK_F_UDP_OPEN_FILTER, UPLINK_F_UP, UplinkInfo,
};

use crate::{
    config::{Config, Policy},
    follow::UplinkState,
    host::HostInterfaces,
};

/// Everything a config puts in the maps: `CONFIG[0]`, every `UPLINKS` and `POLICIES` slot, and
/// the whole of `PUBLISH` and `PUBLIC_ADDRS`.
#[derive(Debug, Clone)]
pub struct MapValues {
    pub config: DataplaneConfig,
    pub uplinks: [UplinkInfo; MAX_UPLINKS],
    pub policies: [PolicyRule; MAX_POLICIES],
    pub publish: Vec<(PublishKey, PublishTarget)>,
    pub public_addrs: Vec<(u32, PublicAddr)>,
}

impl MapValues {
    /// `states`: each uplink as [`crate::follow::resolve_all`] found it; `up`: the health
    /// verdicts (empty holds nothing down); `local_ports`: the gateway's own ephemeral ports.
    pub fn new(
        cfg: &Config,
        host: &HostInterfaces,
        states: &[UplinkState],
        up: &[bool],
        local_ports: Option<(u16, u16)>,
    ) -> anyhow::Result<Self> {
        let lan = host
            .get(&cfg.lan.interface)
            .ok_or_else(|| anyhow!("lan.interface: {} not found", cfg.lan.interface))?;
        let mut uplinks = [UplinkInfo::default(); MAX_UPLINKS];
        for (slot, info) in uplinks.iter_mut().zip(uplink_infos(cfg, states, up)) {
            *slot = info;
        }
        let mut policies = [PolicyRule::default(); MAX_POLICIES];
        for (slot, policy) in policies.iter_mut().zip(&cfg.policies) {
            *slot = policy_rule(policy);
        }
        Ok(Self {
            config: dataplane_config(cfg, lan.index, lan.mac.unwrap_or_default(), local_ports)?,
            uplinks,
            policies,
            publish: publish_entries(cfg),
            public_addrs: public_addrs(cfg),
        })
    }
}

/// `PUBLIC_ADDRS`: each published address, its uplink and whether whole or by port.
pub fn public_addrs(cfg: &Config) -> Vec<(u32, PublicAddr)> {
    let mut addrs: Vec<(u32, PublicAddr)> = Vec::new();
    for p in &cfg.publish {
        let addr = wire_addr(p.address);
        let flags = if p.port.is_some() { PUBLIC_F_PORTS } else { PUBLIC_F_WHOLE };
        let owner = PublicAddr { uplink: p.uplink as u8, flags, _pad: [0; 2] };
        match addrs.iter_mut().find(|(a, _)| *a == addr) {
            // The last entry names the uplink, as the map's last insert did.
            Some((_, old)) => *old = PublicAddr { flags: old.flags | flags, ..owner },
            None => addrs.push((addr, owner)),
        }
    }
    addrs
}

/// An IPv4 address as the dataplane stores it: network byte order in memory.
pub fn wire_addr(addr: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(addr.octets())
}

/// A port as the dataplane stores it: network byte order in memory.
pub fn wire_port(port: u16) -> u16 {
    port.to_be()
}

pub fn wire_prefix(net: Ipv4Net) -> Prefix4 {
    Prefix4 { addr: wire_addr(net.network()), mask: wire_addr(net.netmask()) }
}

/// `CONFIG[0]`. `local_ports`: the gateway's own ephemeral ports, never used for SNAT.
pub fn dataplane_config(
    cfg: &Config,
    lan_ifindex: u32,
    lan_mac: [u8; 6],
    local_ports: Option<(u16, u16)>,
) -> anyhow::Result<DataplaneConfig> {
    if cfg.lan.prefixes.len() > MAX_LAN_PREFIXES {
        bail!("lan.prefixes: at most {MAX_LAN_PREFIXES} prefixes");
    }
    let mut lan_prefixes = [Prefix4::default(); MAX_LAN_PREFIXES];
    for (slot, net) in lan_prefixes.iter_mut().zip(&cfg.lan.prefixes) {
        *slot = wire_prefix(*net);
    }
    let dp = &cfg.dataplane;
    Ok(DataplaneConfig {
        lan_ifindex,
        mark_mask: dp.mark_mask,
        flags: if dp.fast_path { CFG_F_FAST_PATH } else { 0 }
            | if dp.steer { 0 } else { CFG_F_NO_STEER }
            | if dp.validate { 0 } else { CFG_F_NO_VALIDATE }
            | if dp.hairpin { 0 } else { CFG_F_NO_HAIRPIN },
        port_min: dp.port_min,
        port_max: dp.port_max,
        lan_prefixes,
        lan_prefix_count: cfg.lan.prefixes.len() as u32,
        policy_count: cfg.policies.len() as u32,
        port_skip_min: local_ports.map_or(1, |(min, _)| min),
        port_skip_max: local_ports.map_or(0, |(_, max)| max),
        // The dataplane's own (`pinned::write_values`).
        route_epoch: 0,
        lan_mac,
        _pad: 0,
    })
}

/// `POLICIES[i]`.
pub fn policy_rule(policy: &Policy) -> PolicyRule {
    let any = Ipv4Net::default();
    let (port_min, port_max) = policy.ports.unwrap_or((0, u16::MAX));
    let mut rule = PolicyRule {
        from: wire_prefix(policy.from.unwrap_or(any)),
        to: wire_prefix(policy.to.unwrap_or(any)),
        port_min,
        port_max,
        proto: policy.proto.map_or(0, |p| p.number()),
        choice_count: policy.choices.len().min(MAX_CHOICES) as u8,
        flags: if policy.sticky { POLICY_F_STICKY } else { 0 },
        ..PolicyRule::default()
    };
    for (i, choice) in policy.choices.iter().take(MAX_CHOICES).enumerate() {
        rule.uplinks[i] = choice.uplink as u8;
        rule.weights[i] = choice.weight;
        rule.tiers[i] = choice.tier;
    }
    rule
}

/// `PUBLISH` entries.
pub fn publish_entries(cfg: &Config) -> Vec<(PublishKey, PublishTarget)> {
    cfg.publish
        .iter()
        .map(|p| {
            let key = PublishKey {
                addr: wire_addr(p.address),
                port: p.port.map_or(0, wire_port),
                proto: if p.port.is_some() { p.proto.map_or(0, |x| x.number()) } else { 0 },
                _pad: 0,
            };
            let target = PublishTarget {
                to_addr: wire_addr(p.to),
                to_port: p.to_port.map_or(0, wire_port),
                uplink: p.uplink as u8,
                _pad: 0,
            };
            (key, target)
        })
        .collect()
}

/// `UPLINKS[i]`: a live uplink takes connections unless `up[i]` is false (its health says
/// down); one that is absent or waiting is only enabled (policies skip it, its connections
/// wait). An empty `up` holds nothing down.
pub fn uplink_infos(cfg: &Config, states: &[UplinkState], up: &[bool]) -> Vec<UplinkInfo> {
    cfg.uplinks
        .iter()
        .zip(states)
        .enumerate()
        .map(|(i, (u, state))| {
            let up = if up.get(i).copied().unwrap_or(true) { UPLINK_F_UP } else { 0 };
            let open = if u.udp_open_filtering { UPLINK_F_UDP_OPEN_FILTER } else { 0 };
            let base = UplinkInfo {
                mark: u.mark,
                table: u.table,
                flags: UPLINK_F_ENABLED | open,
                ..UplinkInfo::default()
            };
            match state.live() {
                // An L3 device has no MAC; its programs never use it.
                Some(live) => UplinkInfo {
                    ifindex: live.ifindex,
                    address: wire_addr(live.address),
                    gateway: live.gateway.map_or(0, wire_addr),
                    mac: live.mac,
                    flags: UPLINK_F_ENABLED | up | open,
                    ..base
                },
                None => base,
            }
        })
        .collect()
}
