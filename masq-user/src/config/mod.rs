//! The gateway's configuration: TOML parsing, defaults and validation.
//!
//! [`Config::from_toml`] parses the file into raw structs, then resolves defaults and checks
//! everything that needs no host access; [`Config::check_host`] checks the result against this
//! host's interfaces. Every error is one line naming the key involved, for example
//! `uplink[1].name: duplicate uplink name "dsl"`. See `examples/masq-gw.toml` for the format.

use std::{fmt, net::Ipv4Addr, path::Path, time::Duration};

use ipnet::Ipv4Net;
use masq_common::DEFAULT_CONN_CAPACITY;
use serde::{Deserialize, Serialize, Serializer};

use crate::host::HostInterfaces;

/// Routing tables the kernel reserves: unspec, default, main, local.
pub const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
/// fwmark bits masq owns unless `dataplane.mark_mask` says otherwise.
pub const DEFAULT_MARK_MASK: u32 = 0x0f00_0000;
/// Routing table of the first uplink; the others follow (`201 + index`).
pub const FIRST_TABLE: u32 = 201;
/// Bounds of `dataplane.conn_capacity`.
pub const MIN_CONN_CAPACITY: u32 = 1024;
pub const MAX_CONN_CAPACITY: u32 = 4_194_304;
/// Lower bound of `dataplane.pending_capacity`.
pub const MIN_PENDING_CAPACITY: u32 = 256;
/// Longest accepted timeout (one year), so nanoseconds fit easily in a `u64`.
pub const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// Tables the kernel reserves: unspec, default, main, local.
/// Interface names are at most `IFNAMSIZ - 1` bytes.
const MAX_IFNAME_LEN: usize = 15;
const MAX_UPLINK_NAME_LEN: usize = 15;

/// A validated configuration with every default resolved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Config {
    pub lan: Lan,
    pub uplinks: Vec<Uplink>,
    pub publish: Vec<Publish>,
    /// Outbound steering rules, first match wins; always ends in a rule that matches everything.
    pub policies: Vec<Policy>,
    pub dataplane: DataplaneSettings,
    /// Run on every uplink transition.
    pub on_transition: Option<TransitionHook>,
    /// What is recorded of each connection (`[events]`).
    pub events: EventsSettings,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lan {
    pub interface: String,
    pub prefixes: Vec<Ipv4Net>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Uplink {
    pub name: String,
    pub interface: String,
    /// Masquerade source; `None` follows the interface's address (DHCP, PPP IPCP).
    pub address: Option<Ipv4Addr>,
    /// Next hop of the uplink's default route; `None` learns it from main's default route via
    /// the interface, or sends straight out of a point-to-point link.
    pub gateway: Option<Ipv4Addr>,
    /// Routing table id (default `201 + index`).
    pub table: u32,
    /// fwmark bits (default: index + 1 in the lowest bits of the mark mask).
    pub mark: u32,
    pub weight: u32,
    /// Probes beyond the carrier; `None`: carrier (and address) only.
    pub health: Option<Health>,
    pub on_down: OnDown,
    pub on_up: OnUp,
    /// UDP to a LAN endpoint's public port from hosts it never sent to is let in (RFC 4787
    /// endpoint-independent filtering, "full cone"); default: only the hosts it sent to.
    pub udp_open_filtering: bool,
}

/// An inbound service: `address` (optionally one protocol and port of it) leads to `to`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Publish {
    /// Index into `Config::uplinks`.
    pub uplink: usize,
    pub address: Ipv4Addr,
    pub to: Ipv4Addr,
    /// `None` (with `port` `None`): the whole address, ICMP included.
    pub proto: Option<Proto>,
    pub port: Option<u16>,
    /// `None` keeps the port.
    pub to_port: Option<u16>,
}

impl Publish {
    /// True when the whole address is published (1:1), not one port of it.
    pub fn is_whole_address(&self) -> bool {
        self.port.is_none()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Icmp => 1,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        }
    }

    fn parse(s: &str) -> Option<Proto> {
        [Proto::Tcp, Proto::Udp, Proto::Icmp].into_iter().find(|p| p.name() == s)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One outbound steering rule. `None` match fields match anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Policy {
    pub from: Option<Ipv4Net>,
    pub to: Option<Ipv4Net>,
    pub proto: Option<Proto>,
    /// Destination port range, inclusive.
    pub ports: Option<(u16, u16)>,
    /// The uplinks it may pick: one connection takes one of the lowest tier with one up, by
    /// weight.
    pub choices: Vec<Choice>,
    /// All connections of one source keep one uplink.
    pub sticky: bool,
}

/// One uplink a policy may pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Choice {
    /// Index into `Config::uplinks`.
    pub uplink: usize,
    /// Non-zero.
    pub weight: u32,
    /// 0 is tried first; a higher tier only when no uplink of the lower ones is up.
    pub tier: u8,
}

impl Policy {
    /// True when the policy matches a new connection of this tuple (host byte order port).
    pub fn matches(&self, src: Ipv4Addr, dst: Ipv4Addr, proto: u8, dst_port: u16) -> bool {
        self.from.is_none_or(|net| net.contains(&src))
            && self.to.is_none_or(|net| net.contains(&dst))
            && self.proto.is_none_or(|p| p.number() == proto)
            && self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&dst_port))
    }

    /// The uplinks this policy gives new connections while `up` says which are up (the
    /// lowest tier with one up), as the dataplane picks; empty when none is up.
    pub fn current_choices(&self, up: impl Fn(usize) -> bool) -> Vec<usize> {
        let tier = self.choices.iter().filter(|c| up(c.uplink)).map(|c| c.tier).min();
        self.choices
            .iter()
            .filter(|c| Some(c.tier) == tier && up(c.uplink))
            .map(|c| c.uplink)
            .collect()
    }

    /// True when the rule matches every packet (the default rule).
    pub fn is_default(&self) -> bool {
        self.from.is_none() && self.to.is_none() && self.proto.is_none() && self.ports.is_none()
    }
}

/// Where uplink ingress may run in XDP (`hooks.rs` says when it is safe).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum XdpMode {
    /// XDP where it is safe, TC elsewhere.
    #[default]
    Auto,
    /// TC everywhere.
    Off,
    /// XDP on every uplink, or refuse to start; the operator vouches that the uplinks' packets
    /// carry complete checksums.
    Required,
}

/// `[dataplane]` (the loaded programs and maps are `dataplane::Dataplane`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DataplaneSettings {
    /// Redirect after `bpf_fib_lookup` instead of handing packets to the kernel.
    pub fast_path: bool,
    pub xdp: XdpMode,
    /// Steer replies to their connection's uplink (mark + uplink table). Only for diagnosis:
    /// with `false` replies follow the main table, as without masq.
    pub steer: bool,
    /// Check every packet as a router must (RFC 1812) before translating it. Only for measuring
    /// what the checks cost: `false` lets malformed and spoofed packets through.
    pub validate: bool,
    /// fwmark bits masq owns; the others are left alone.
    pub mark_mask: u32,
    /// Confirmed connections that fit (handshake done or replied): never evicted.
    pub conn_capacity: u32,
    /// Connections not confirmed yet that fit; beyond it the oldest are evicted (a flood
    /// churns these only).
    pub pending_capacity: u32,
    /// SNAT source port range, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    pub gateway_ports: GatewayPorts,
    /// The programs' own tracing (aya-log) into the daemon's log; off costs nothing.
    pub trace: TraceLevel,
    /// LAN hosts reach the gateway's public addresses (published services, others' mappings)
    /// through the gateway (RFC 4787 REQ-9).
    pub hairpin: bool,
    pub timeouts: Timeouts,
}

/// `[dataplane] trace`: the most detailed level of the programs' own tracing that is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceLevel {
    Off,
    Error,
    Warn,
    Info,
    /// Every dropped packet with its reason.
    Debug,
}

impl TraceLevel {
    /// aya-log's level number (`AYA_LOG_LEVEL`): 0 off, 1 error … 4 debug.
    pub fn aya_level(self) -> u8 {
        self as u8
    }
}

/// The gateway's own ephemeral ports (`gateway_ports`), which SNAT never keeps or picks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GatewayPorts {
    /// masq sets `net.ipv4.ip_local_port_range` to this range while it runs (restored by
    /// `masq down`), so clients keep every port outside it.
    Range(u16, u16),
    /// The range is left as the system has it.
    System,
}

/// Below Linux's default ephemeral range (32768-60999) and Windows' and macOS's (49152-65535):
/// clients' own ports are kept.
pub const DEFAULT_GATEWAY_PORTS: GatewayPorts = GatewayPorts::Range(28672, 32767);

impl Default for DataplaneSettings {
    fn default() -> Self {
        Self {
            fast_path: true,
            xdp: XdpMode::Auto,
            steer: true,
            validate: true,
            mark_mask: DEFAULT_MARK_MASK,
            conn_capacity: DEFAULT_CONN_CAPACITY,
            pending_capacity: masq_common::default_pending_capacity(DEFAULT_CONN_CAPACITY),
            port_min: 1024,
            port_max: 65535,
            gateway_ports: DEFAULT_GATEWAY_PORTS,
            trace: TraceLevel::Off,
            hairpin: true,
            timeouts: Timeouts::default(),
        }
    }
}

/// Idle timeouts of connections, by state. Serialized as whole seconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    #[serde(serialize_with = "secs")]
    pub tcp_syn: Duration,
    #[serde(serialize_with = "secs")]
    pub tcp_established: Duration,
    #[serde(serialize_with = "secs")]
    pub tcp_closing: Duration,
    /// UDP without a reply yet.
    #[serde(serialize_with = "secs")]
    pub udp: Duration,
    /// UDP that has seen a reply.
    #[serde(serialize_with = "secs")]
    pub udp_stream: Duration,
    #[serde(serialize_with = "secs")]
    pub icmp: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            // RFC 5382 REQ-5: transitory states at least 4 minutes, established at least
            // 2 h 4 min; a connection closed by a FIN exchange or a RST may go sooner.
            tcp_syn: Duration::from_secs(240),
            tcp_established: Duration::from_secs(7440),
            tcp_closing: Duration::from_secs(30),
            // RFC 4787 REQ-5: a UDP mapping lasts at least 2 minutes.
            udp: Duration::from_secs(120),
            udp_stream: Duration::from_secs(180),
            // RFC 5508: ICMP query mappings at least 60 s.
            icmp: Duration::from_secs(60),
        }
    }
}

impl Timeouts {
    /// The idle timeout of a connection in `state`.
    pub fn of(&self, state: masq_common::ConnState) -> Duration {
        use masq_common::ConnState::*;
        match state {
            TcpSynSent => self.tcp_syn,
            TcpEstablished => self.tcp_established,
            TcpClosing => self.tcp_closing,
            Unreplied => self.udp,
            Replied => self.udp_stream,
            Icmp => self.icmp,
        }
    }
}

fn secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// A config problem: the key involved and what is wrong with it, displayed on one line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Path of the key, e.g. `uplink[1].name`, `lan.prefixes[0]`, `dataplane.timeouts.udp`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self { key: key.into(), message: message.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

type Result<T, E = ConfigError> = std::result::Result<T, E>;

impl Config {
    /// Parses and validates a config (no host access).
    pub fn from_toml(text: &str) -> Result<Config> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let lan = resolve_lan(raw.lan)?;
        let dataplane = resolve_dataplane(raw.dataplane)?;
        let uplinks = resolve_uplinks(raw.uplink, &lan, &dataplane)?;
        let publish = resolve_publish(raw.publish, &lan, &uplinks)?;
        let policies = resolve_policies(raw.policy, &uplinks)?;
        let on_transition = raw.on_transition.map(health::resolve_transition_hook).transpose()?;
        let events = events::resolve_events(raw.events)?;
        Ok(Config { lan, uplinks, publish, policies, dataplane, on_transition, events })
    }

    /// Reads `path` and parses it with [`Config::from_toml`].
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(path.display().to_string(), format!("cannot read: {e}"))
        })?;
        Config::from_toml(&text)
    }

    /// Checks the config against this host: the interfaces exist, and each uplink's address and
    /// gateway lie inside a subnet configured on the uplink's interface.
    pub fn check_host(&self, host: &HostInterfaces) -> Result<()> {
        let missing = |key: String, name: &str| {
            let known: Vec<&str> = host.interfaces.iter().map(|i| i.name.as_str()).collect();
            ConfigError::new(
                key,
                format!(
                    "interface \"{name}\" does not exist on this host (it has: {})",
                    known.join(", ")
                ),
            )
        };
        if host.get(&self.lan.interface).is_none() {
            return Err(missing("lan.interface".into(), &self.lan.interface));
        }
        for (i, uplink) in self.uplinks.iter().enumerate() {
            let Some(ifc) = host.get(&uplink.interface) else {
                // An uplink that follows its interface's address may wait for it (`ppp0` exists
                // only once pppd dialled); one with a fixed address names a device that exists.
                if uplink.address.is_none() {
                    continue;
                }
                return Err(missing(format!("uplink[{i}].interface"), &uplink.interface));
            };
            let fixed = [("address", uplink.address), ("gateway", uplink.gateway)];
            for (field, addr) in fixed.into_iter().filter_map(|(f, a)| Some((f, a?))) {
                if ifc.subnet_of(addr).is_none() && !(field == "gateway" && ifc.l3) {
                    let nets: Vec<String> = ifc.addrs.iter().map(Ipv4Net::to_string).collect();
                    let has = if nets.is_empty() {
                        "no IPv4 address".to_owned()
                    } else {
                        nets.join(", ")
                    };
                    return Err(ConfigError::new(
                        format!("uplink[{i}].{field}"),
                        format!(
                            "{addr} is not inside a subnet configured on {} (it has {has})",
                            uplink.interface
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Uplinks whose interface does not exist yet (allowed only when they follow its address).
    pub fn waiting_interfaces<'a>(&'a self, host: &HostInterfaces) -> Vec<&'a Uplink> {
        self.uplinks.iter().filter(|u| host.get(&u.interface).is_none()).collect()
    }

    /// Index of the uplink called `name`.
    pub fn uplink_index(&self, name: &str) -> Option<usize> {
        self.uplinks.iter().position(|u| u.name == name)
    }

    /// The uplinks a new outbound connection of this tuple may take while `up` says which are
    /// up: the first matching policy with one up decides, as in the dataplane.
    pub fn steered_to(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        proto: u8,
        dst_port: u16,
        up: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        self.policies
            .iter()
            .filter(|p| p.matches(src, dst, proto, dst_port))
            .map(|p| p.current_choices(&up))
            .find(|choices| !choices.is_empty())
            .unwrap_or_default()
    }
}

mod events;
mod health;
mod key_path;
mod raw;
mod resolve;
#[cfg(test)]
mod tests;

pub use events::EventsSettings;
pub use health::{
    DEFAULT_TIMEOUT, Health, Initial, Levels, OnDown, OnUp, ProbeMethod, TransitionHook,
};
use key_path::toml_error;
use raw::RawConfig;
use resolve::{resolve_dataplane, resolve_lan, resolve_policies, resolve_publish, resolve_uplinks};
