//! The gateway's configuration: TOML parsing, defaults and validation.
//!
//! [`Config::from_toml`] parses the file into raw structs, then resolves defaults and checks
//! everything that needs no host access; [`Config::check_host`] checks the result against this
//! host's interfaces. Every error is one line naming the key involved, for example
//! `uplink[1].name: duplicate uplink name "dsl"`. See `examples/masq-gw.toml` for the format.

use std::{fmt, net::Ipv4Addr, path::Path, time::Duration};

use ipnet::Ipv4Net;
use masq_common::{
    DEFAULT_CONN_CAPACITY, MAX_CHOICES, MAX_LAN_PREFIXES, MAX_POLICIES, MAX_PUBLISH, MAX_UPLINKS,
};
use serde::{Deserialize, Serialize, Serializer, de};

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
    /// `(uplink index, weight)`, weights all non-zero; one connection picks one by weight.
    pub choices: Vec<(usize, u32)>,
    /// All connections of one source keep one uplink.
    pub sticky: bool,
}

impl Policy {
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
    /// fwmark bits masq owns; the others are left alone.
    pub mark_mask: u32,
    pub conn_capacity: u32,
    /// SNAT source port range, inclusive.
    pub port_min: u16,
    pub port_max: u16,
    pub timeouts: Timeouts,
}

impl Default for DataplaneSettings {
    fn default() -> Self {
        Self {
            fast_path: true,
            xdp: XdpMode::Auto,
            steer: true,
            mark_mask: DEFAULT_MARK_MASK,
            conn_capacity: DEFAULT_CONN_CAPACITY,
            port_min: 1024,
            port_max: 65535,
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
            tcp_syn: Duration::from_secs(30),
            tcp_established: Duration::from_secs(7440),
            tcp_closing: Duration::from_secs(30),
            udp: Duration::from_secs(30),
            udp_stream: Duration::from_secs(180),
            icmp: Duration::from_secs(30),
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
        Ok(Config { lan, uplinks, publish, policies, dataplane })
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
}

// ---- The file as written ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    lan: Option<RawLan>,
    #[serde(default)]
    uplink: Vec<RawUplink>,
    #[serde(default)]
    publish: Vec<RawPublish>,
    #[serde(default)]
    policy: Vec<RawPolicy>,
    #[serde(default)]
    dataplane: RawDataplane,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLan {
    interface: Option<String>,
    prefixes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    name: Option<String>,
    interface: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
    table: Option<u32>,
    mark: Option<u32>,
    weight: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    uplink: Option<String>,
    address: Option<String>,
    to: Option<String>,
    proto: Option<String>,
    port: Option<u16>,
    to_port: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    from: Option<String>,
    to: Option<String>,
    proto: Option<String>,
    /// `443` or `"8000-8100"`.
    port: Option<toml::Value>,
    uplink: Option<String>,
    uplinks: Option<Weights>,
    #[serde(default)]
    sticky: bool,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    fast_path: Option<bool>,
    xdp: Option<String>,
    steer: Option<bool>,
    mark_mask: Option<u32>,
    conn_capacity: Option<u32>,
    port_min: Option<u16>,
    port_max: Option<u16>,
    #[serde(default)]
    timeouts: RawTimeouts,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    tcp_syn: Option<u64>,
    tcp_established: Option<u64>,
    tcp_closing: Option<u64>,
    udp: Option<u64>,
    udp_stream: Option<u64>,
    icmp: Option<u64>,
}

/// `uplinks = { dsl = 1, isp-b = 3 }`, kept in file order.
struct Weights(Vec<(String, u32)>);

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

// ---- Resolution and validation ----

fn resolve_lan(raw: Option<RawLan>) -> Result<Lan> {
    let raw = raw.ok_or_else(|| ConfigError::new("lan", "missing section [lan]"))?;
    let interface = required(raw.interface, "lan.interface")?;
    check_ifname(&interface, "lan.interface")?;
    let raw_prefixes = required(raw.prefixes, "lan.prefixes")?;
    if raw_prefixes.is_empty() {
        return Err(ConfigError::new("lan.prefixes", "at least one prefix is needed"));
    }
    if raw_prefixes.len() > MAX_LAN_PREFIXES {
        return Err(ConfigError::new(
            "lan.prefixes",
            format!("{} prefixes, at most {MAX_LAN_PREFIXES} are supported", raw_prefixes.len()),
        ));
    }
    let prefixes = raw_prefixes
        .iter()
        .enumerate()
        .map(|(i, s)| parse_prefix(s, &format!("lan.prefixes[{i}]")))
        .collect::<Result<_>>()?;
    Ok(Lan { interface, prefixes })
}

fn resolve_dataplane(raw: RawDataplane) -> Result<DataplaneSettings> {
    let default = DataplaneSettings::default();
    let mark_mask = raw.mark_mask.unwrap_or(default.mark_mask);
    if mark_mask == 0 {
        return Err(ConfigError::new(
            "dataplane.mark_mask",
            "must not be 0: masq needs at least one fwmark bit",
        ));
    }
    let conn_capacity = raw.conn_capacity.unwrap_or(default.conn_capacity);
    if !(MIN_CONN_CAPACITY..=MAX_CONN_CAPACITY).contains(&conn_capacity) {
        return Err(ConfigError::new(
            "dataplane.conn_capacity",
            format!(
                "{conn_capacity} is out of range, expected {MIN_CONN_CAPACITY}..={MAX_CONN_CAPACITY}"
            ),
        ));
    }
    let port_min = raw.port_min.unwrap_or(default.port_min);
    let port_max = raw.port_max.unwrap_or(default.port_max);
    if port_min == 0 {
        return Err(ConfigError::new("dataplane.port_min", "must be at least 1"));
    }
    if port_min > port_max {
        return Err(ConfigError::new(
            "dataplane.port_min",
            format!("port_min {port_min} is greater than port_max {port_max}"),
        ));
    }
    let t = raw.timeouts;
    let d = default.timeouts;
    let timeouts = Timeouts {
        tcp_syn: timeout(t.tcp_syn, d.tcp_syn, "tcp_syn")?,
        tcp_established: timeout(t.tcp_established, d.tcp_established, "tcp_established")?,
        tcp_closing: timeout(t.tcp_closing, d.tcp_closing, "tcp_closing")?,
        udp: timeout(t.udp, d.udp, "udp")?,
        udp_stream: timeout(t.udp_stream, d.udp_stream, "udp_stream")?,
        icmp: timeout(t.icmp, d.icmp, "icmp")?,
    };
    let xdp = match raw.xdp.as_deref() {
        None => default.xdp,
        Some("auto") => XdpMode::Auto,
        Some("off") => XdpMode::Off,
        Some("required") => XdpMode::Required,
        Some(other) => {
            return Err(ConfigError::new(
                "dataplane.xdp",
                format!("\"{other}\" is not one of \"auto\", \"off\", \"required\""),
            ));
        }
    };
    Ok(DataplaneSettings {
        fast_path: raw.fast_path.unwrap_or(default.fast_path),
        xdp,
        steer: raw.steer.unwrap_or(default.steer),
        mark_mask,
        conn_capacity,
        port_min,
        port_max,
        timeouts,
    })
}

fn timeout(secs: Option<u64>, default: Duration, name: &str) -> Result<Duration> {
    let Some(secs) = secs else { return Ok(default) };
    if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(ConfigError::new(
            format!("dataplane.timeouts.{name}"),
            format!("{secs} is out of range, expected 1..={MAX_TIMEOUT_SECS} seconds"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

fn resolve_uplinks(
    raw: Vec<RawUplink>,
    lan: &Lan,
    dataplane: &DataplaneSettings,
) -> Result<Vec<Uplink>> {
    if raw.is_empty() {
        return Err(ConfigError::new(
            "uplink",
            "no uplinks configured, at least one [[uplink]] is needed",
        ));
    }
    if raw.len() > MAX_UPLINKS {
        return Err(ConfigError::new(
            "uplink",
            format!("{} uplinks configured, at most {MAX_UPLINKS} are supported", raw.len()),
        ));
    }
    let mask = dataplane.mark_mask;
    let mut uplinks: Vec<Uplink> = Vec::with_capacity(raw.len());
    for (i, u) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("uplink[{i}].{field}");

        let name = required(u.name, &key("name"))?;
        if !valid_uplink_name(&name) {
            return Err(ConfigError::new(
                key("name"),
                format!(
                    "invalid uplink name \"{name}\", use 1 to {MAX_UPLINK_NAME_LEN} characters of a-z, 0-9 and -"
                ),
            ));
        }
        if uplinks.iter().any(|other| other.name == name) {
            return Err(ConfigError::new(key("name"), format!("duplicate uplink name \"{name}\"")));
        }

        let interface = required(u.interface, &key("interface"))?;
        check_ifname(&interface, &key("interface"))?;
        if interface == lan.interface {
            return Err(ConfigError::new(
                key("interface"),
                format!("\"{interface}\" is the LAN interface"),
            ));
        }
        if let Some(other) = uplinks.iter().find(|o| o.interface == interface) {
            return Err(ConfigError::new(
                key("interface"),
                format!("interface \"{interface}\" is already used by uplink \"{}\"", other.name),
            ));
        }

        let address = u.address.map(|a| parse_addr(&a, &key("address"))).transpose()?;
        if let Some(address) = address
            && let Some(other) = uplinks.iter().find(|o| o.address == Some(address))
        {
            return Err(ConfigError::new(
                key("address"),
                format!("address {address} is already used by uplink \"{}\"", other.name),
            ));
        }
        let gateway = u.gateway.map(|g| parse_addr(&g, &key("gateway"))).transpose()?;
        if let Some(gateway) = gateway
            && address == Some(gateway)
        {
            return Err(ConfigError::new(
                key("gateway"),
                format!("gateway {gateway} is the uplink's own address"),
            ));
        }

        let table = u.table.unwrap_or(FIRST_TABLE + i as u32);
        let how = if u.table.is_some() { "" } else { " (default; set table to choose another)" };
        if RESERVED_TABLES.contains(&table) {
            return Err(ConfigError::new(
                key("table"),
                format!(
                    "table {table} is reserved by the kernel (0 unspec, 253 default, 254 main, 255 local)"
                ),
            ));
        }
        if let Some(other) = uplinks.iter().find(|o| o.table == table) {
            return Err(ConfigError::new(
                key("table"),
                format!("table {table}{how} is already used by uplink \"{}\"", other.name),
            ));
        }

        // Default: index + 1 in the lowest bits of the mask.
        let mark = u.mark.map_or_else(|| (i as u64 + 1) << mask.trailing_zeros(), u64::from);
        let how = if u.mark.is_some() { "" } else { " (default; set mark to choose another)" };
        if mark == 0 {
            return Err(ConfigError::new(key("mark"), "mark must not be 0"));
        }
        if mark & !u64::from(mask) != 0 {
            return Err(ConfigError::new(
                key("mark"),
                format!("mark {mark:#010x}{how} lies outside dataplane.mark_mask {mask:#010x}"),
            ));
        }
        let mark = mark as u32;
        if let Some(other) = uplinks.iter().find(|o| o.mark == mark) {
            return Err(ConfigError::new(
                key("mark"),
                format!("mark {mark:#010x}{how} is already used by uplink \"{}\"", other.name),
            ));
        }

        let weight = u.weight.unwrap_or(1);
        if weight == 0 {
            return Err(ConfigError::new(key("weight"), "weight must be at least 1"));
        }
        uplinks.push(Uplink { name, interface, address, gateway, table, mark, weight });
    }
    Ok(uplinks)
}

fn resolve_publish(raw: Vec<RawPublish>, lan: &Lan, uplinks: &[Uplink]) -> Result<Vec<Publish>> {
    if raw.len() > MAX_PUBLISH as usize {
        return Err(ConfigError::new(
            "publish",
            format!("{} publish entries, at most {MAX_PUBLISH} are supported", raw.len()),
        ));
    }
    let mut publish: Vec<Publish> = Vec::with_capacity(raw.len());
    for (i, p) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("publish[{i}].{field}");

        let uplink_name = required(p.uplink, &key("uplink"))?;
        let uplink = find_uplink(uplinks, &uplink_name, &key("uplink"))?;

        let address = parse_addr(&required(p.address, &key("address"))?, &key("address"))?;
        if let Some(own) = uplinks.iter().find(|u| u.address == Some(address)) {
            return Err(ConfigError::new(
                key("address"),
                format!("{address} is the address of uplink \"{}\" (the gateway's own)", own.name),
            ));
        }
        let to = parse_addr(&required(p.to, &key("to"))?, &key("to"))?;
        if !lan.prefixes.iter().any(|net| net.contains(&to)) {
            return Err(ConfigError::new(
                key("to"),
                format!("{to} is not inside a LAN prefix ({})", list(&lan.prefixes)),
            ));
        }

        let proto = match p.proto.as_deref() {
            None => None,
            Some("tcp") => Some(Proto::Tcp),
            Some("udp") => Some(Proto::Udp),
            Some("icmp") => {
                return Err(ConfigError::new(
                    key("proto"),
                    "\"icmp\" has no ports, publish the whole address instead (no proto, no port)",
                ));
            }
            Some(other) => {
                return Err(ConfigError::new(
                    key("proto"),
                    format!("unknown protocol \"{other}\", expected \"tcp\" or \"udp\""),
                ));
            }
        };
        match (proto, p.port, p.to_port) {
            (_, Some(0), _) => {
                return Err(ConfigError::new(key("port"), "port 0 is not a valid port"));
            }
            (_, _, Some(0)) => {
                return Err(ConfigError::new(key("to_port"), "port 0 is not a valid port"));
            }
            (None, Some(port), _) => {
                return Err(ConfigError::new(
                    key("port"),
                    format!("port {port} needs proto (\"tcp\" or \"udp\")"),
                ));
            }
            (_, None, Some(to_port)) => {
                return Err(ConfigError::new(
                    key("to_port"),
                    format!("to_port {to_port} needs port (the public port it is published on)"),
                ));
            }
            (Some(proto), None, None) => {
                return Err(ConfigError::new(
                    key("proto"),
                    format!(
                        "proto \"{proto}\" needs port (without proto and port the whole address is published)"
                    ),
                ));
            }
            _ => {}
        }
        let entry = Publish { uplink, address, to, proto, port: p.port, to_port: p.to_port };

        for (j, other) in publish.iter().enumerate().filter(|(_, o)| o.address == address) {
            let message = if other.uplink != uplink {
                format!(
                    "{address} is already published on uplink \"{}\" by publish[{j}]",
                    uplinks[other.uplink].name
                )
            } else if other.is_whole_address() {
                format!("{address} is already published as a whole address by publish[{j}]")
            } else if entry.is_whole_address() {
                format!(
                    "{address} cannot be published as a whole address, publish[{j}] publishes a port of it"
                )
            } else if other.proto == proto && other.port == p.port {
                format!(
                    "{address} port {}/{} is already published by publish[{j}]",
                    p.port.unwrap_or_default(),
                    proto.map_or("", Proto::name)
                )
            } else {
                continue;
            };
            return Err(ConfigError::new(key("address"), message));
        }
        publish.push(entry);
    }
    Ok(publish)
}

fn resolve_policies(raw: Vec<RawPolicy>, uplinks: &[Uplink]) -> Result<Vec<Policy>> {
    if raw.len() > MAX_POLICIES {
        return Err(ConfigError::new(
            "policy",
            format!("{} policies, at most {MAX_POLICIES} are supported", raw.len()),
        ));
    }
    let mut policies = Vec::with_capacity(raw.len() + 1);
    for (i, p) in raw.into_iter().enumerate() {
        let key = |field: &str| format!("policy[{i}].{field}");

        let from = p.from.map(|s| parse_prefix(&s, &key("from"))).transpose()?;
        let to = p.to.map(|s| parse_prefix(&s, &key("to"))).transpose()?;
        let proto = match p.proto {
            None => None,
            Some(s) => Some(Proto::parse(&s).ok_or_else(|| {
                ConfigError::new(
                    key("proto"),
                    format!("unknown protocol \"{s}\", expected \"tcp\", \"udp\" or \"icmp\""),
                )
            })?),
        };
        let ports = p.port.map(|v| parse_port_range(&v, &key("port"))).transpose()?;
        if ports.is_some() && !matches!(proto, Some(Proto::Tcp | Proto::Udp)) {
            let message = match proto {
                Some(proto) => format!(
                    "port cannot be used with proto \"{proto}\", only with \"tcp\" or \"udp\""
                ),
                None => "port needs proto \"tcp\" or \"udp\"".to_owned(),
            };
            return Err(ConfigError::new(key("port"), message));
        }

        let choices = match (p.uplink, p.uplinks) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    key("uplinks"),
                    "set either uplink or uplinks, not both",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    key("uplink"),
                    "missing: set uplink = \"<name>\" or uplinks = { <name> = <weight>, ... }",
                ));
            }
            (Some(name), None) => vec![(find_uplink(uplinks, &name, &key("uplink"))?, 1)],
            (None, Some(Weights(weights))) => resolve_weights(weights, uplinks, &key("uplinks"))?,
        };
        policies.push(Policy { from, to, proto, ports, choices, sticky: p.sticky });
    }
    // Without a default rule, what matches nothing leaves by the first uplink.
    if !policies.iter().any(Policy::is_default) {
        if policies.len() == MAX_POLICIES {
            return Err(ConfigError::new(
                "policy",
                format!(
                    "{MAX_POLICIES} policies and none is a default (no from, to, proto or port): \
                     make the last one a default, the implicit default needs a slot"
                ),
            ));
        }
        policies.push(Policy {
            from: None,
            to: None,
            proto: None,
            ports: None,
            choices: vec![(0, 1)],
            sticky: false,
        });
    }
    Ok(policies)
}

fn resolve_weights(
    weights: Vec<(String, u32)>,
    uplinks: &[Uplink],
    key: &str,
) -> Result<Vec<(usize, u32)>> {
    if weights.is_empty() {
        return Err(ConfigError::new(key, "at least one uplink is needed"));
    }
    if weights.len() > MAX_CHOICES {
        return Err(ConfigError::new(
            key,
            format!("{} uplinks, at most {MAX_CHOICES} are supported", weights.len()),
        ));
    }
    let mut total: u32 = 0;
    let mut choices = Vec::with_capacity(weights.len());
    for (name, weight) in weights {
        let key = format!("{key}.{name}");
        let index = find_uplink(uplinks, &name, &key)?;
        if weight == 0 {
            return Err(ConfigError::new(
                key,
                format!("weight of uplink \"{name}\" is 0, it must be at least 1"),
            ));
        }
        total = total.checked_add(weight).ok_or_else(|| {
            ConfigError::new(key.clone(), format!("the weights add up to more than {}", u32::MAX))
        })?;
        choices.push((index, weight));
    }
    Ok(choices)
}

// ---- Small parsers ----

fn required<T>(value: Option<T>, key: &str) -> Result<T> {
    value.ok_or_else(|| ConfigError::new(key, "missing (required)"))
}

fn find_uplink(uplinks: &[Uplink], name: &str, key: &str) -> Result<usize> {
    uplinks.iter().position(|u| u.name == name).ok_or_else(|| {
        let known: Vec<String> = uplinks.iter().map(|u| format!("\"{}\"", u.name)).collect();
        ConfigError::new(key, format!("unknown uplink \"{name}\" (known: {})", known.join(", ")))
    })
}

fn valid_uplink_name(name: &str) -> bool {
    (1..=MAX_UPLINK_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Rejects names the kernel would refuse (`dev_valid_name`).
fn check_ifname(name: &str, key: &str) -> Result<()> {
    let ok = (1..=MAX_IFNAME_LEN).contains(&name.len())
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            key,
            format!(
                "invalid interface name \"{name}\" (1 to {MAX_IFNAME_LEN} bytes, no '/', ':' or spaces)"
            ),
        ))
    }
}

fn parse_addr(s: &str, key: &str) -> Result<Ipv4Addr> {
    s.parse().map_err(|_| ConfigError::new(key, format!("\"{s}\" is not an IPv4 address")))
}

/// `a.b.c.d/len`, or a bare address meaning `/32`. Host bits must be zero.
fn parse_prefix(s: &str, key: &str) -> Result<Ipv4Net> {
    let net = s
        .parse::<Ipv4Net>()
        .or_else(|_| s.parse::<Ipv4Addr>().map(Ipv4Net::from))
        .map_err(|_| ConfigError::new(key, format!("\"{s}\" is not an IPv4 prefix")))?;
    if net.trunc() != net {
        return Err(ConfigError::new(
            key,
            format!("\"{s}\" has host bits set, did you mean \"{}\"?", net.trunc()),
        ));
    }
    Ok(net)
}

/// `443`, `"443"` or `"8000-8100"`.
fn parse_port_range(value: &toml::Value, key: &str) -> Result<(u16, u16)> {
    let bad = || {
        ConfigError::new(
            key,
            format!("{value} is not a port (1..=65535) or a port range like \"8000-8100\""),
        )
    };
    let port = |n: i64| u16::try_from(n).ok().filter(|&p| p != 0);
    let text_port = |s: &str| s.trim().parse::<i64>().ok().and_then(port);
    let (min, max) = match value {
        toml::Value::Integer(n) => {
            let p = port(*n).ok_or_else(bad)?;
            (p, p)
        }
        toml::Value::String(s) => match s.split_once('-') {
            Some((a, b)) => (text_port(a).ok_or_else(bad)?, text_port(b).ok_or_else(bad)?),
            None => {
                let p = text_port(s).ok_or_else(bad)?;
                (p, p)
            }
        },
        _ => return Err(bad()),
    };
    if min > max {
        return Err(ConfigError::new(
            key,
            format!("port range {min}-{max} is empty (start > end)"),
        ));
    }
    Ok((min, max))
}

fn list(nets: &[Ipv4Net]) -> String {
    nets.iter().map(Ipv4Net::to_string).collect::<Vec<_>>().join(", ")
}

// ---- TOML errors as one line ----

/// Turns a TOML syntax / unknown key / type error into one line naming the key and position.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace('`', "\"");
    let Some(span) = e.span() else {
        return ConfigError::new("config", message);
    };
    let (line, column) = line_col(text, span.start);
    let key = key_path_at(text, span.start);
    let key = if key.is_empty() { "config".to_owned() } else { key };
    ConfigError::new(key, format!("{message} (line {line}, column {column})"))
}

/// 1-based line and column (in characters) of byte `offset`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The key path (`uplink[1].address`) of the line holding byte `offset`, found by following the
/// table headers before it. Good enough for masq's flat config; it does not parse TOML.
fn key_path_at(text: &str, offset: usize) -> String {
    let mut table = String::new();
    let mut array_counts: Vec<(String, usize)> = Vec::new();
    let mut last_key: Option<String> = None;
    let mut end = 0;
    for line in text.split_inclusive('\n') {
        end += line.len();
        let at_offset = offset < end;
        let trimmed = line.trim();
        if let Some((name, is_array)) = table_header(trimmed) {
            table = if is_array {
                let index = match array_counts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => {
                        *count += 1;
                        *count - 1
                    }
                    None => {
                        array_counts.push((name.clone(), 1));
                        0
                    }
                };
                format!("{name}[{index}]")
            } else {
                name
            };
            last_key = None;
            if at_offset {
                return table;
            }
            continue;
        }
        if let Some(key) = line_key(trimmed) {
            last_key = Some(key);
        }
        if at_offset {
            break;
        }
    }
    match last_key {
        Some(key) if table.is_empty() => key,
        Some(key) => format!("{table}.{key}"),
        None => table,
    }
}

/// `[name]` → `(name, false)`, `[[name]]` → `(name, true)`.
fn table_header(line: &str) -> Option<(String, bool)> {
    let line = strip_comment(line);
    let (inner, is_array) = if let Some(rest) = line.strip_prefix("[[") {
        (rest.strip_suffix("]]")?, true)
    } else {
        (line.strip_prefix('[')?.strip_suffix(']')?, false)
    };
    let name = normalize_key(inner)?;
    Some((name, is_array))
}

/// The key of a `key = value` line.
fn line_key(line: &str) -> Option<String> {
    let (key, _) = line.split_once('=')?;
    normalize_key(key)
}

/// `a . "b"` → `a.b`; `None` if this cannot be a key.
fn normalize_key(raw: &str) -> Option<String> {
    let key: String =
        raw.chars().filter(|c| !c.is_whitespace() && *c != '"' && *c != '\'').collect();
    let ok = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    ok.then_some(key)
}

fn strip_comment(line: &str) -> &str {
    line.split_once('#').map_or(line, |(before, _)| before).trim()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::host::HostInterface;

    /// `[lan]` and the two seed uplinks; tests append what they need.
    const BASE: &str = r#"
[lan]
interface = "eth0"
prefixes = ["192.168.100.0/24"]

[[uplink]]
name = "dsl"
interface = "eth4"
address = "67.17.28.12"
gateway = "67.17.28.14"

[[uplink]]
name = "isp-b"
interface = "eth1"
address = "205.254.211.179"
gateway = "205.254.211.254"
"#;

    fn parse(extra: &str) -> Result<Config> {
        Config::from_toml(&format!("{BASE}{extra}"))
    }

    fn parse_err(extra: &str) -> ConfigError {
        parse(extra).expect_err("config should be rejected")
    }

    fn examples() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
    }

    fn iface(name: &str, index: u32, addrs: &[&str]) -> HostInterface {
        HostInterface {
            name: name.into(),
            index,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            mac: Some([2, 0, 0, 0, 0, index as u8]),
            l3: false,
        }
    }

    /// masq-gw as in TOPOLOGY.md.
    fn seed_host() -> HostInterfaces {
        HostInterfaces::from_list(vec![
            iface("lo", 1, &["127.0.0.1/8"]),
            iface("eth0", 2, &["192.168.100.254/24"]),
            iface("eth4", 3, &["67.17.28.12/28"]),
            iface("eth1", 4, &["205.254.211.179/24"]),
        ])
    }

    /// Why `examples/bad/<name>.toml` is rejected: statically, or else on the seed host.
    fn bad(name: &str) -> ConfigError {
        let path = examples().join("bad").join(format!("{name}.toml"));
        match Config::load(&path) {
            Ok(config) => config.check_host(&seed_host()).expect_err("should fail the host check"),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn assert_err(e: &ConfigError, key: &str, fragment: &str) {
        assert_eq!(e.key, key, "wrong key in: {e}");
        assert!(e.message.contains(fragment), "{fragment:?} not in: {e}");
        assert!(!e.to_string().contains('\n'), "not one line: {e}");
    }

    // ---- The seed example ----

    #[test]
    fn seed_example_resolves_tables_marks_and_indexes() {
        let c = Config::load(&examples().join("masq-gw.toml")).unwrap();
        assert_eq!(c.lan.interface, "eth0");
        assert_eq!(c.lan.prefixes, ["192.168.100.0/24".parse::<Ipv4Net>().unwrap()]);

        let names: Vec<_> = c.uplinks.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["dsl", "isp-b"]);
        let dsl = &c.uplinks[0];
        assert_eq!(dsl.interface, "eth4");
        assert_eq!(dsl.address, Some(Ipv4Addr::new(67, 17, 28, 12)));
        assert_eq!(dsl.gateway, Some(Ipv4Addr::new(67, 17, 28, 14)));
        assert_eq!((dsl.table, dsl.mark, dsl.weight), (201, 0x0100_0000, 1));
        let isp_b = &c.uplinks[1];
        assert_eq!(isp_b.interface, "eth1");
        assert_eq!(isp_b.address, Some(Ipv4Addr::new(205, 254, 211, 179)));
        assert_eq!(isp_b.gateway, Some(Ipv4Addr::new(205, 254, 211, 254)));
        assert_eq!((isp_b.table, isp_b.mark, isp_b.weight), (202, 0x0200_0000, 1));

        let isolde = Ipv4Addr::new(192, 168, 100, 17);
        let whole = |uplink, address| Publish {
            uplink,
            address,
            to: isolde,
            proto: None,
            port: None,
            to_port: None,
        };
        assert_eq!(
            c.publish,
            [whole(0, Ipv4Addr::new(67, 17, 28, 10)), whole(1, Ipv4Addr::new(205, 254, 211, 17))]
        );
        assert!(c.publish.iter().all(Publish::is_whole_address));

        assert_eq!(c.policies.len(), 2, "the file's default policy, none synthesized");
        assert_eq!(c.policies[0].from, Some("192.168.100.32/32".parse().unwrap()));
        assert_eq!(c.policies[0].choices, [(0, 1)]);
        assert!(!c.policies[0].is_default());
        assert!(c.policies[1].is_default());
        assert_eq!(c.policies[1].choices, [(1, 1)]);

        assert_eq!(c.dataplane, DataplaneSettings::default());
        assert_eq!(c.uplink_index("isp-b"), Some(1));
        assert_eq!(c.uplink_index("isp-c"), None);
    }

    #[test]
    fn seed_example_passes_the_host_check_on_the_seed_host() {
        let c = Config::load(&examples().join("masq-gw.toml")).unwrap();
        c.check_host(&seed_host()).unwrap();
    }

    #[test]
    fn seed_example_commented_dataplane_block_lists_the_defaults() {
        let text = std::fs::read_to_string(examples().join("masq-gw.toml")).unwrap();
        let (_, block) = text.split_once("# Optional tuning, shown with the defaults:\n").unwrap();
        let uncommented: String =
            block.lines().map(|l| format!("{}\n", l.strip_prefix("# ").unwrap_or(l))).collect();
        let c = Config::from_toml(&format!("{text}{uncommented}")).unwrap();
        assert_eq!(c.dataplane, DataplaneSettings::default());
        assert_eq!(c, Config::from_toml(&text).unwrap());
    }

    #[test]
    fn every_bad_example_is_rejected_as_its_first_line_says() {
        let mut count = 0;
        for entry in std::fs::read_dir(examples().join("bad")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let expected = text.lines().next().and_then(|l| l.strip_prefix("# Rejected: "));
            let expected =
                expected.unwrap_or_else(|| panic!("{}: no '# Rejected: ' line", path.display()));
            let name = path.file_stem().unwrap().to_str().unwrap();
            assert_eq!(bad(name).to_string(), expected, "{}", path.display());
            count += 1;
        }
        assert!(count >= 30, "only {count} bad examples");
    }

    // ---- One test per rejection case (each with its file in examples/bad) ----

    #[test]
    fn unknown_key_is_rejected_naming_the_key_and_position() {
        let e = bad("unknown-key");
        assert_err(&e, "uplink[0].adress", "unknown field \"adress\", expected one of");
        assert!(e.message.ends_with("(line 9, column 1)"), "{e}");
    }

    #[test]
    fn duplicate_uplink_name_is_rejected_naming_the_key() {
        assert_err(
            &bad("duplicate-uplink-name"),
            "uplink[1].name",
            "duplicate uplink name \"dsl\"",
        );
    }

    #[test]
    fn invalid_uplink_name_is_rejected_naming_the_key() {
        assert_err(&bad("invalid-uplink-name"), "uplink[0].name", "\"DSL_1\"");
        for name in ["", "sixteen-chars-xx", "dsl.1", "dsl b"] {
            let text = BASE.replace("name = \"isp-b\"", &format!("name = \"{name}\""));
            let e = Config::from_toml(&text).unwrap_err();
            assert_err(&e, "uplink[1].name", &format!("invalid uplink name \"{name}\""));
        }
        let text = BASE.replace("name = \"isp-b\"", "name = \"fifteen-chars-x\"");
        assert_eq!(Config::from_toml(&text).unwrap().uplinks[1].name, "fifteen-chars-x");
    }

    #[test]
    fn unknown_uplink_in_publish_is_rejected_naming_the_key() {
        assert_err(
            &bad("unknown-uplink-in-publish"),
            "publish[0].uplink",
            "unknown uplink \"dls\"",
        );
    }

    #[test]
    fn unknown_uplink_in_policy_is_rejected_naming_the_key() {
        let e = bad("unknown-uplink-in-policy");
        assert_err(&e, "policy[0].uplink", "unknown uplink \"dls\" (known: \"dsl\", \"isp-b\")");
    }

    #[test]
    fn unknown_uplink_in_weighted_policy_is_rejected_naming_the_key() {
        assert_err(
            &bad("unknown-uplink-in-weighted-policy"),
            "policy[0].uplinks.isp-c",
            "\"isp-c\"",
        );
    }

    #[test]
    fn address_outside_the_interface_subnet_is_rejected_by_the_host_check() {
        let path = examples().join("bad/address-outside-subnet.toml");
        assert!(Config::load(&path).is_ok(), "only the host check can tell");
        let e = bad("address-outside-subnet");
        assert_err(
            &e,
            "uplink[0].address",
            "67.17.28.20 is not inside a subnet configured on eth4",
        );
    }

    #[test]
    fn gateway_outside_the_interface_subnet_is_rejected_by_the_host_check() {
        let e = bad("gateway-outside-subnet");
        assert_err(
            &e,
            "uplink[0].gateway",
            "67.17.28.17 is not inside a subnet configured on eth4",
        );
    }

    #[test]
    fn uplink_interface_without_ipv4_address_is_rejected_by_the_host_check() {
        let mut host = seed_host();
        host.interfaces[3].addrs.clear();
        let e = parse("").unwrap().check_host(&host).unwrap_err();
        assert_err(&e, "uplink[1].address", "(it has no IPv4 address)");
    }

    #[test]
    fn clashing_table_ids_are_rejected_naming_the_key() {
        assert_err(
            &bad("clashing-table"),
            "uplink[1].table",
            "table 201 is already used by uplink \"dsl\"",
        );
    }

    #[test]
    fn clashing_marks_are_rejected_naming_the_key() {
        let e = bad("clashing-mark");
        assert_err(
            &e,
            "uplink[1].mark",
            "mark 0x02000000 (default; set mark to choose another) is already used",
        );
        let e = Config::from_toml(&BASE.replace(
            "gateway = \"205.254.211.254\"",
            "gateway = \"205.254.211.254\"\nmark = 0x01000000",
        ))
        .unwrap_err();
        assert_err(&e, "uplink[1].mark", "mark 0x01000000 is already used by uplink \"dsl\"");
    }

    #[test]
    fn mark_outside_the_mask_is_rejected_naming_the_key() {
        assert_err(
            &bad("mark-outside-mask"),
            "uplink[0].mark",
            "mark 0x00000010 lies outside dataplane.mark_mask 0x0f000000",
        );
    }

    #[test]
    fn mark_zero_is_rejected_naming_the_key() {
        assert_err(&bad("mark-zero"), "uplink[0].mark", "must not be 0");
    }

    #[test]
    fn reserved_table_id_is_rejected_naming_the_key() {
        assert_err(&bad("reserved-table"), "uplink[0].table", "table 254 is reserved");
        for table in [0, 253, 255] {
            let text = BASE.replace(
                "gateway = \"67.17.28.14\"",
                &format!("gateway = \"67.17.28.14\"\ntable = {table}"),
            );
            assert_err(
                &Config::from_toml(&text).unwrap_err(),
                "uplink[0].table",
                &format!("table {table} is reserved"),
            );
        }
    }

    #[test]
    fn publishing_the_same_address_proto_and_port_twice_is_rejected() {
        let e = bad("publish-same-port-twice");
        assert_err(
            &e,
            "publish[1].address",
            "67.17.28.10 port 80/tcp is already published by publish[0]",
        );
    }

    #[test]
    fn whole_address_publish_beside_another_publish_of_that_address_is_rejected() {
        let e = bad("publish-whole-address-and-port");
        assert_err(
            &e,
            "publish[1].address",
            "67.17.28.10 is already published as a whole address by publish[0]",
        );
        let e = parse_err(
            r#"
[[publish]]
uplink = "dsl"
address = "67.17.28.10"
to = "192.168.100.17"
proto = "tcp"
port = 80

[[publish]]
uplink = "dsl"
address = "67.17.28.10"
to = "192.168.100.18"
"#,
        );
        assert_err(
            &e,
            "publish[1].address",
            "cannot be published as a whole address, publish[0] publishes a port of it",
        );
    }

    #[test]
    fn the_same_public_address_on_two_uplinks_is_rejected() {
        let e = bad("publish-address-on-two-uplinks");
        assert_err(
            &e,
            "publish[1].address",
            "67.17.28.10 is already published on uplink \"dsl\" by publish[0]",
        );
    }

    #[test]
    fn publishing_an_uplink_address_is_rejected() {
        let e = bad("publish-uplink-address");
        assert_err(&e, "publish[0].address", "67.17.28.12 is the address of uplink \"dsl\"");
    }

    #[test]
    fn publish_to_outside_the_lan_prefixes_is_rejected() {
        let e = bad("publish-to-outside-lan");
        assert_err(
            &e,
            "publish[0].to",
            "192.168.1.17 is not inside a LAN prefix (192.168.100.0/24)",
        );
    }

    #[test]
    fn prefix_that_does_not_parse_is_rejected_naming_the_key() {
        assert_err(
            &bad("bad-prefix"),
            "lan.prefixes[0]",
            "\"192.168.100.0/33\" is not an IPv4 prefix",
        );
        let e = parse_err("[[policy]]\nto = \"10.0.0.0/8x\"\nuplink = \"dsl\"\n");
        assert_err(&e, "policy[0].to", "\"10.0.0.0/8x\" is not an IPv4 prefix");
    }

    #[test]
    fn prefix_with_host_bits_is_rejected_with_the_network_suggested() {
        let text = BASE.replace("192.168.100.0/24", "192.168.100.254/24");
        let e = Config::from_toml(&text).unwrap_err();
        assert_err(&e, "lan.prefixes[0]", "did you mean \"192.168.100.0/24\"?");
    }

    #[test]
    fn interface_missing_on_this_host_is_rejected_by_the_host_check() {
        let e = bad("missing-interface");
        assert_err(&e, "uplink[0].interface", "interface \"eth9\" does not exist on this host");
        let mut host = seed_host();
        host.interfaces.retain(|i| i.name != "eth0");
        let e = parse("").unwrap().check_host(&host).unwrap_err();
        assert_err(
            &e,
            "lan.interface",
            "interface \"eth0\" does not exist on this host (it has: lo, eth4, eth1)",
        );
    }

    #[test]
    fn publish_port_without_proto_is_rejected() {
        assert_err(&bad("publish-port-without-proto"), "publish[0].port", "port 80 needs proto");
    }

    #[test]
    fn publish_to_port_without_port_is_rejected() {
        assert_err(
            &bad("publish-to-port-without-port"),
            "publish[0].to_port",
            "to_port 8080 needs port",
        );
    }

    /// A `[[publish]]` of 67.17.28.10 on dsl to isolde, plus `extra` keys.
    fn dsl_publish(extra: &str) -> String {
        format!(
            r#"
[[publish]]
uplink = "dsl"
address = "67.17.28.10"
to = "192.168.100.17"
{extra}"#
        )
    }

    #[test]
    fn publish_proto_without_port_is_rejected() {
        let e = parse_err(&dsl_publish("proto = \"udp\""));
        assert_err(&e, "publish[0].proto", "proto \"udp\" needs port");
    }

    #[test]
    fn publish_of_icmp_or_unknown_proto_or_port_zero_is_rejected() {
        let publish = |extra: &str| parse_err(&dsl_publish(extra));
        assert_err(
            &publish("proto = \"icmp\"\nport = 1\n"),
            "publish[0].proto",
            "publish the whole address",
        );
        assert_err(
            &publish("proto = \"sctp\"\nport = 1\n"),
            "publish[0].proto",
            "unknown protocol \"sctp\"",
        );
        assert_err(&publish("proto = \"tcp\"\nport = 0\n"), "publish[0].port", "port 0");
        assert_err(
            &publish("proto = \"tcp\"\nport = 80\nto_port = 0\n"),
            "publish[0].to_port",
            "port 0",
        );
        assert_err(&publish("proto = \"tcp\"\nport = 70000\n"), "publish[0].port", "70000");
    }

    #[test]
    fn policy_with_both_uplink_and_uplinks_is_rejected() {
        assert_err(
            &bad("policy-uplink-and-uplinks"),
            "policy[0].uplinks",
            "either uplink or uplinks, not both",
        );
    }

    #[test]
    fn policy_with_neither_uplink_nor_uplinks_is_rejected() {
        assert_err(&bad("policy-without-uplink"), "policy[0].uplink", "missing");
    }

    #[test]
    fn policy_weight_zero_is_rejected_naming_the_uplink() {
        assert_err(
            &bad("policy-weight-zero"),
            "policy[0].uplinks.isp-b",
            "weight of uplink \"isp-b\" is 0",
        );
    }

    #[test]
    fn policy_with_all_weights_zero_is_rejected() {
        assert_err(
            &bad("policy-all-weights-zero"),
            "policy[0].uplinks.dsl",
            "weight of uplink \"dsl\" is 0",
        );
        let e = parse_err("[[policy]]\nuplinks = {}\n");
        assert_err(&e, "policy[0].uplinks", "at least one uplink");
    }

    #[test]
    fn policy_weights_that_overflow_are_rejected() {
        let e = parse_err("[[policy]]\nuplinks = { dsl = 4294967295, isp-b = 1 }\n");
        assert_err(&e, "policy[0].uplinks.isp-b", "add up to more than 4294967295");
    }

    #[test]
    fn policy_port_with_proto_icmp_is_rejected() {
        assert_err(
            &bad("policy-port-with-icmp"),
            "policy[0].port",
            "cannot be used with proto \"icmp\"",
        );
    }

    #[test]
    fn policy_port_without_proto_is_rejected() {
        let e = parse_err("[[policy]]\nport = 443\nuplink = \"dsl\"\n");
        assert_err(&e, "policy[0].port", "needs proto \"tcp\" or \"udp\"");
    }

    #[test]
    fn config_without_uplinks_is_rejected() {
        assert_err(&bad("no-uplinks"), "uplink", "no uplinks configured");
    }

    #[test]
    fn more_than_max_uplinks_is_rejected() {
        assert_err(
            &bad("too-many-uplinks"),
            "uplink",
            &format!("9 uplinks configured, at most {MAX_UPLINKS}"),
        );
    }

    #[test]
    fn more_than_max_policies_is_rejected() {
        assert_err(
            &bad("too-many-policies"),
            "policy",
            &format!("33 policies, at most {MAX_POLICIES}"),
        );
    }

    #[test]
    fn max_policies_without_a_default_leave_no_slot_for_the_implicit_one() {
        let rule = |i: usize| format!("[[policy]]\nfrom = \"10.0.0.{i}\"\nuplink = \"dsl\"\n");
        let mut rules: String = (0..MAX_POLICIES).map(rule).collect();
        assert_err(&parse_err(&rules), "policy", "none is a default");
        let last = rules.rfind("from = ").unwrap();
        let end = last + rules[last..].find('\n').unwrap() + 1;
        rules.replace_range(last..end, "");
        let c = parse(&rules).unwrap();
        assert_eq!(c.policies.len(), MAX_POLICIES);
        assert!(c.policies.last().unwrap().is_default());
    }

    #[test]
    fn port_min_above_port_max_is_rejected() {
        assert_err(
            &bad("port-range-inverted"),
            "dataplane.port_min",
            "port_min 40000 is greater than port_max 30000",
        );
        assert_err(&parse_err("[dataplane]\nport_min = 0\n"), "dataplane.port_min", "at least 1");
    }

    #[test]
    fn mark_mask_zero_is_rejected() {
        assert_err(&bad("mark-mask-zero"), "dataplane.mark_mask", "must not be 0");
    }

    #[test]
    fn conn_capacity_out_of_range_is_rejected() {
        assert_err(
            &bad("conn-capacity-out-of-range"),
            "dataplane.conn_capacity",
            "100 is out of range",
        );
        assert_err(
            &parse_err("[dataplane]\nconn_capacity = 4194305\n"),
            "dataplane.conn_capacity",
            "4194305",
        );
        for ok in [MIN_CONN_CAPACITY, MAX_CONN_CAPACITY] {
            assert_eq!(
                parse(&format!("[dataplane]\nconn_capacity = {ok}\n"))
                    .unwrap()
                    .dataplane
                    .conn_capacity,
                ok
            );
        }
    }

    // ---- Other rejections ----

    #[test]
    fn uplink_on_the_lan_interface_or_sharing_an_interface_is_rejected() {
        let e = Config::from_toml(&BASE.replace("\"eth1\"", "\"eth0\"")).unwrap_err();
        assert_err(&e, "uplink[1].interface", "\"eth0\" is the LAN interface");
        let e = Config::from_toml(&BASE.replace("\"eth1\"", "\"eth4\"")).unwrap_err();
        assert_err(
            &e,
            "uplink[1].interface",
            "interface \"eth4\" is already used by uplink \"dsl\"",
        );
        let e = Config::from_toml(&BASE.replace("\"eth1\"", "\"a/b\"")).unwrap_err();
        assert_err(&e, "uplink[1].interface", "invalid interface name \"a/b\"");
    }

    #[test]
    fn bad_or_shared_uplink_addresses_are_rejected() {
        let e =
            Config::from_toml(&BASE.replace("\"205.254.211.179\"", "\"205.254.211\"")).unwrap_err();
        assert_err(&e, "uplink[1].address", "\"205.254.211\" is not an IPv4 address");
        let e =
            Config::from_toml(&BASE.replace("\"205.254.211.179\"", "\"67.17.28.12\"")).unwrap_err();
        assert_err(&e, "uplink[1].address", "already used by uplink \"dsl\"");
        let e = Config::from_toml(&BASE.replace("\"67.17.28.14\"", "\"67.17.28.12\"")).unwrap_err();
        assert_err(&e, "uplink[0].gateway", "the uplink's own address");
    }

    #[test]
    fn uplink_address_and_gateway_may_be_left_out_to_follow_the_interface() {
        let text = BASE
            .replace("address = \"205.254.211.179\"", "")
            .replace("gateway = \"205.254.211.254\"", "");
        let c = Config::from_toml(&text).unwrap();
        assert_eq!((c.uplinks[1].address, c.uplinks[1].gateway), (None, None));
        let mut host = seed_host();
        host.interfaces[3].addrs.clear();
        c.check_host(&host).expect("nothing fixed to check: the uplink waits for its address");
    }

    #[test]
    fn a_following_uplink_may_wait_for_its_interface_a_fixed_one_may_not() {
        let following = BASE.replace("address = \"205.254.211.179\"", "");
        let c = Config::from_toml(&following).unwrap();
        let mut host = seed_host();
        host.interfaces.retain(|i| i.name != "eth1");
        c.check_host(&host).expect("isp-b waits for eth1");
        let waiting: Vec<&str> =
            c.waiting_interfaces(&host).iter().map(|u| u.name.as_str()).collect();
        assert_eq!(waiting, ["isp-b"]);
        let e = parse("").unwrap().check_host(&host).unwrap_err();
        assert_err(&e, "uplink[1].interface", "interface \"eth1\" does not exist on this host");
    }

    #[test]
    fn missing_required_keys_are_named() {
        let e = Config::from_toml("[[uplink]]\nname = \"dsl\"\n").unwrap_err();
        assert_err(&e, "lan", "missing section [lan]");
        let e =
            Config::from_toml(&BASE.replace("prefixes = [\"192.168.100.0/24\"]", "prefixes = []"))
                .unwrap_err();
        assert_err(&e, "lan.prefixes", "at least one prefix");
    }

    #[test]
    fn zero_or_huge_timeouts_are_rejected() {
        let e = parse_err("[dataplane.timeouts]\nudp = 0\n");
        assert_err(&e, "dataplane.timeouts.udp", "0 is out of range");
        let e = parse_err("[dataplane]\ntimeouts.icmp = 99999999999\n");
        assert_err(&e, "dataplane.timeouts.icmp", "99999999999 is out of range");
    }

    #[test]
    fn default_mark_outside_a_narrow_mask_is_rejected() {
        let e = parse_err("[dataplane]\nmark_mask = 0x1\n");
        assert_err(
            &e,
            "uplink[1].mark",
            "mark 0x00000002 (default; set mark to choose another) lies outside",
        );
        let e = parse_err("[dataplane]\nmark_mask = 0x80000000\n");
        assert_err(&e, "uplink[1].mark", "mark 0x100000000 (default");
    }

    // ---- TOML-level errors ----

    #[test]
    fn wrong_type_is_rejected_naming_the_key_and_position() {
        let text =
            BASE.replace("gateway = \"67.17.28.14\"", "gateway = \"67.17.28.14\"\ntable = \"201\"");
        let e = Config::from_toml(&text).unwrap_err();
        assert_err(
            &e,
            "uplink[0].table",
            "invalid type: string \"201\", expected u32 (line 11, column 9)",
        );
    }

    #[test]
    fn syntax_error_is_one_line_with_its_position() {
        let e = Config::from_toml("[lan]\ninterface = \"eth0\nprefixes = []\n").unwrap_err();
        assert_eq!(e.key, "lan.interface", "{e}");
        assert!(e.message.contains("(line 2, column"), "{e}");
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn unknown_sections_and_nested_keys_are_named() {
        let e = parse_err("[dataplane.timeouts]\ntcp_fin = 30\n");
        assert_err(&e, "dataplane.timeouts.tcp_fin", "unknown field \"tcp_fin\"");
        let e = parse_err("[dataplan]\nfast_path = false\n");
        assert_err(&e, "dataplan", "unknown field \"dataplan\"");
        let e = parse_err(
            "[[policy]]\nuplink = \"dsl\"\n\n[[policy]]\nuplink = \"dsl\"\nstiky = true\n",
        );
        assert_err(&e, "policy[1].stiky", "unknown field \"stiky\"");
    }

    #[test]
    fn key_path_follows_headers_array_indexes_and_continuation_lines() {
        let text = r#"top = 1
[lan]
prefixes = [
  "a",
  "b",
]
[[uplink]]
name = 1
[[uplink]] # two
"name" = 2
[dataplane.timeouts]
udp = 3
"#;
        let at = |needle: &str| key_path_at(text, text.find(needle).unwrap());
        assert_eq!(at("top"), "top");
        assert_eq!(at("[lan]"), "lan");
        assert_eq!(at("\"b\""), "lan.prefixes");
        assert_eq!(at("name = 1"), "uplink[0].name");
        assert_eq!(at("[[uplink]] #"), "uplink[1]");
        assert_eq!(at("\"name\" = 2"), "uplink[1].name");
        assert_eq!(at("udp"), "dataplane.timeouts.udp");
    }

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, text.find('=').unwrap()), (1, 3));
        assert_eq!(line_col(text, text.rfind('=').unwrap()), (2, 4));
        assert_eq!(line_col(text, 999), (3, 1));
    }

    #[test]
    fn error_displays_as_key_colon_message() {
        let e = ConfigError::new("uplink[1].name", "duplicate uplink name \"dsl\"");
        assert_eq!(e.to_string(), "uplink[1].name: duplicate uplink name \"dsl\"");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().starts_with("uplink[1].name: "));
    }

    #[test]
    fn load_names_the_path_of_an_unreadable_file() {
        let path = Path::new("/nonexistent/masq.toml");
        let e = Config::load(path).unwrap_err();
        assert_eq!(e.key, "/nonexistent/masq.toml");
        assert!(e.message.starts_with("cannot read: "), "{e}");
    }

    // ---- Defaults and resolution ----

    #[test]
    fn without_policies_outbound_defaults_to_the_first_uplink() {
        let c = parse("").unwrap();
        assert_eq!(c.policies.len(), 1);
        assert!(c.policies[0].is_default());
        assert_eq!(c.policies[0].choices, [(0, 1)]);
        assert!(!c.policies[0].sticky);
    }

    #[test]
    fn policies_without_a_default_get_one_to_the_first_uplink_appended() {
        let c = parse("[[policy]]\nproto = \"udp\"\nuplink = \"isp-b\"\n").unwrap();
        assert_eq!(c.policies.len(), 2);
        assert_eq!(c.policies[1].choices, [(0, 1)]);
        assert!(c.policies[1].is_default());
    }

    #[test]
    fn weighted_policy_keeps_file_order_and_match_fields() {
        let c = parse(
            r#"
[[policy]]
from = "192.168.100.0/25"
to = "8.8.8.8"
proto = "tcp"
port = "8000-8100"
uplinks = { isp-b = 3, dsl = 1 }
sticky = true
"#,
        )
        .unwrap();
        let p = &c.policies[0];
        assert_eq!(p.from, Some("192.168.100.0/25".parse().unwrap()));
        assert_eq!(p.to, Some("8.8.8.8/32".parse().unwrap()), "a bare address is a /32");
        assert_eq!(p.proto, Some(Proto::Tcp));
        assert_eq!(p.ports, Some((8000, 8100)));
        assert_eq!(p.choices, [(1, 3), (0, 1)]);
        assert!(p.sticky);
        assert_eq!(c.policies.len(), 2, "a default is appended");
    }

    #[test]
    fn policy_port_accepts_a_number_or_a_range_and_rejects_the_rest() {
        let port = |v: &str| {
            parse(&format!("[[policy]]\nproto = \"udp\"\nport = {v}\nuplink = \"dsl\"\n"))
        };
        assert_eq!(port("443").unwrap().policies[0].ports, Some((443, 443)));
        assert_eq!(port("\"53\"").unwrap().policies[0].ports, Some((53, 53)));
        assert_eq!(port("\"1-65535\"").unwrap().policies[0].ports, Some((1, 65535)));
        assert_err(&port("\"8100-8000\"").unwrap_err(), "policy[0].port", "8100-8000 is empty");
        for bad in ["0", "70000", "-1", "\"http\"", "\"1-\"", "true", "[1, 2]"] {
            let e = port(bad).unwrap_err();
            assert_err(&e, "policy[0].port", "is not a port (1..=65535) or a port range");
        }
        let e = parse_err("[[policy]]\nproto = \"sctp\"\nuplink = \"dsl\"\n");
        assert_err(&e, "policy[0].proto", "unknown protocol \"sctp\"");
    }

    #[test]
    fn publish_of_one_port_resolves_proto_and_ports() {
        let c = parse(
            r#"
[[publish]]
uplink = "isp-b"
address = "205.254.211.17"
to = "192.168.100.17"
proto = "tcp"
port = 80
to_port = 8080

[[publish]]
uplink = "isp-b"
address = "205.254.211.17"
to = "192.168.100.18"
proto = "udp"
port = 80
"#,
        )
        .unwrap();
        let p = &c.publish[0];
        assert_eq!(
            (p.uplink, p.proto, p.port, p.to_port),
            (1, Some(Proto::Tcp), Some(80), Some(8080))
        );
        assert!(!p.is_whole_address());
        assert_eq!(c.publish[1].proto, Some(Proto::Udp), "same port, other protocol: no clash");
    }

    #[test]
    fn default_marks_use_the_lowest_bits_of_the_mask() {
        let c = parse("[dataplane]\nmark_mask = 0x3f00\n").unwrap();
        assert_eq!(c.uplinks[0].mark, 0x100);
        assert_eq!(c.uplinks[1].mark, 0x200);
    }

    #[test]
    fn explicit_table_mark_and_weight_are_kept() {
        let text = BASE.replace(
            "gateway = \"205.254.211.254\"",
            "gateway = \"205.254.211.254\"\ntable = 100\nmark = 0x08000000\nweight = 5",
        );
        let u = &Config::from_toml(&text).unwrap().uplinks[1];
        assert_eq!((u.table, u.mark, u.weight), (100, 0x0800_0000, 5));
        let e = Config::from_toml(&text.replace("weight = 5", "weight = 0")).unwrap_err();
        assert_err(&e, "uplink[1].weight", "at least 1");
    }

    #[test]
    fn dataplane_values_override_the_defaults() {
        let c = parse(
            r#"
[dataplane]
fast_path = false
mark_mask = 0xff
conn_capacity = 1024
port_min = 20000
port_max = 20000

[dataplane.timeouts]
tcp_syn = 5
tcp_established = 86400
tcp_closing = 10
udp = 15
udp_stream = 120
icmp = 6
"#,
        )
        .unwrap();
        let d = &c.dataplane;
        assert!(!d.fast_path);
        assert_eq!(
            (d.mark_mask, d.conn_capacity, d.port_min, d.port_max),
            (0xff, 1024, 20000, 20000)
        );
        let secs = |d: Duration| d.as_secs();
        let t = &d.timeouts;
        assert_eq!(
            [t.tcp_syn, t.tcp_established, t.tcp_closing, t.udp, t.udp_stream, t.icmp].map(secs),
            [5, 86400, 10, 15, 120, 6]
        );
        assert_eq!((c.uplinks[0].mark, c.uplinks[1].mark), (1, 2));
    }

    #[test]
    fn proto_numbers_are_the_ip_protocol_numbers() {
        assert_eq!([Proto::Tcp, Proto::Udp, Proto::Icmp].map(Proto::number), [6, 17, 1]);
        assert_eq!(Proto::parse("icmp"), Some(Proto::Icmp));
        assert_eq!(Proto::parse("TCP"), None);
    }

    #[test]
    fn resolved_config_serializes_to_readable_json() {
        let c = parse("[[policy]]\nproto = \"icmp\"\nuplink = \"dsl\"\n").unwrap();
        let json = serde_json::to_value(&c).unwrap();
        assert_eq!(json["uplinks"][0]["address"], "67.17.28.12");
        assert_eq!(json["policies"][0]["proto"], "icmp");
        assert_eq!(json["dataplane"]["timeouts"]["tcp_established"], 7440);
        assert_eq!(json["lan"]["prefixes"][0], "192.168.100.0/24");
    }
}
