//! Resolution and validation: defaults filled in, every rule checked, each error naming its key.
use std::{net::Ipv4Addr, time::Duration};

use ipnet::Ipv4Net;
use masq_common::{MAX_CHOICES, MAX_LAN_PREFIXES, MAX_POLICIES, MAX_PUBLISH, MAX_UPLINKS};

use super::{raw::*, *};

pub(super) fn resolve_lan(raw: Option<RawLan>) -> Result<Lan> {
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

pub(super) fn resolve_dataplane(raw: RawDataplane) -> Result<DataplaneSettings> {
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
    let pending_capacity = raw
        .pending_capacity
        .unwrap_or(masq_common::default_pending_capacity(conn_capacity).max(MIN_PENDING_CAPACITY));
    if !(MIN_PENDING_CAPACITY..=MAX_CONN_CAPACITY).contains(&pending_capacity) {
        return Err(ConfigError::new(
            "dataplane.pending_capacity",
            format!(
                "{pending_capacity} is out of range, expected \
                 {MIN_PENDING_CAPACITY}..={MAX_CONN_CAPACITY}"
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
    let gateway_ports = match raw.gateway_ports.as_deref() {
        None => default.gateway_ports,
        Some(text) => gateway_ports(text)?,
    };
    if let GatewayPorts::Range(min, max) = gateway_ports
        && min <= port_min
        && max >= port_max
    {
        return Err(ConfigError::new(
            "dataplane.gateway_ports",
            format!(
                "{min}-{max} covers all of port_min..=port_max ({port_min}-{port_max}): SNAT would have no port left"
            ),
        ));
    }
    let trace = match raw.trace.as_deref() {
        None => default.trace,
        Some("off") => TraceLevel::Off,
        Some("error") => TraceLevel::Error,
        Some("warn") => TraceLevel::Warn,
        Some("info") => TraceLevel::Info,
        Some("debug") => TraceLevel::Debug,
        Some(other) => {
            return Err(ConfigError::new(
                "dataplane.trace",
                format!(
                    "\"{other}\" is not one of \"off\", \"error\", \"warn\", \"info\", \"debug\""
                ),
            ));
        }
    };
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
        validate: raw.validate.unwrap_or(default.validate),
        mark_mask,
        conn_capacity,
        pending_capacity,
        port_min,
        port_max,
        gateway_ports,
        trace,
        hairpin: raw.hairpin.unwrap_or(default.hairpin),
        timeouts,
    })
}

/// `"system"`, or `"MIN-MAX"` inside 1024..=65535.
fn gateway_ports(text: &str) -> Result<GatewayPorts> {
    const KEY: &str = "dataplane.gateway_ports";
    if text == "system" {
        return Ok(GatewayPorts::System);
    }
    let bad = || {
        ConfigError::new(
            KEY,
            format!("\"{text}\" is not \"system\" nor a range like \"28672-32767\""),
        )
    };
    let (min, max) = text.split_once('-').ok_or_else(bad)?;
    let (min, max): (u16, u16) =
        (min.trim().parse().map_err(|_| bad())?, max.trim().parse().map_err(|_| bad())?);
    if min < 1024 || min > max {
        return Err(ConfigError::new(KEY, format!("{min}-{max}: expected 1024 <= MIN <= MAX")));
    }
    Ok(GatewayPorts::Range(min, max))
}

pub(super) fn timeout(secs: Option<u64>, default: Duration, name: &str) -> Result<Duration> {
    let Some(secs) = secs else { return Ok(default) };
    if !(1..=MAX_TIMEOUT_SECS).contains(&secs) {
        return Err(ConfigError::new(
            format!("dataplane.timeouts.{name}"),
            format!("{secs} is out of range, expected 1..={MAX_TIMEOUT_SECS} seconds"),
        ));
    }
    Ok(Duration::from_secs(secs))
}

pub(super) fn resolve_uplinks(
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
        let health =
            u.health.map(|h| super::health::resolve_health(h, &key("health"))).transpose()?;
        let on_down = super::health::resolve_on_down(u.on_down, &key("on_down"))?;
        let on_up = super::health::resolve_on_up(u.on_up, &key("on_up"))?;
        let udp_open_filtering = match u.udp_filtering.as_deref() {
            None | Some("address-and-port-dependent") => false,
            Some("endpoint-independent") => true,
            Some(other) => {
                return Err(ConfigError::new(
                    key("udp_filtering"),
                    format!(
                        "\"{other}\" is not one of \"address-and-port-dependent\", \
                         \"endpoint-independent\""
                    ),
                ));
            }
        };
        uplinks.push(Uplink {
            name,
            interface,
            address,
            gateway,
            table,
            mark,
            weight,
            health,
            on_down,
            on_up,
            udp_open_filtering,
        });
    }
    Ok(uplinks)
}

pub(super) fn resolve_publish(
    raw: Vec<RawPublish>,
    lan: &Lan,
    uplinks: &[Uplink],
) -> Result<Vec<Publish>> {
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

pub(super) fn resolve_policies(raw: Vec<RawPolicy>, uplinks: &[Uplink]) -> Result<Vec<Policy>> {
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

        let choices = match (p.uplink, p.uplinks, p.tiers) {
            (None, None, None) => {
                return Err(ConfigError::new(
                    key("uplink"),
                    "missing: set uplink = \"<name>\", uplinks = { <name> = <weight>, ... } \
                     or tiers = [[\"<name>\", ...], ...]",
                ));
            }
            (Some(name), None, None) => {
                let uplink = find_uplink(uplinks, &name, &key("uplink"))?;
                vec![Choice { uplink, weight: 1, tier: 0 }]
            }
            (None, Some(Weights(weights)), None) => {
                resolve_weights(weights, uplinks, &key("uplinks"), 0)?
            }
            (None, None, Some(tiers)) => resolve_tiers(tiers, uplinks, &key("tiers"))?,
            (_, uplinks, _) => {
                return Err(ConfigError::new(
                    key(if uplinks.is_some() { "uplinks" } else { "tiers" }),
                    "set one of uplink, uplinks and tiers, not several",
                ));
            }
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
            choices: vec![Choice { uplink: 0, weight: 1, tier: 0 }],
            sticky: false,
        });
    }
    Ok(policies)
}

/// `tiers = [...]`: each tier's uplinks, tier 0 first; an uplink in one tier only.
pub(super) fn resolve_tiers(
    tiers: Vec<Tier>,
    uplinks: &[Uplink],
    key: &str,
) -> Result<Vec<Choice>> {
    if tiers.is_empty() {
        return Err(ConfigError::new(key, "at least one tier is needed"));
    }
    let mut choices: Vec<Choice> = Vec::new();
    for (t, tier) in tiers.into_iter().enumerate() {
        let tier_key = format!("{key}[{t}]");
        let weights = match tier {
            Tier::Names(names) => names.into_iter().map(|n| (n, 1)).collect(),
            Tier::Weights(Weights(weights)) => weights,
        };
        for c in resolve_weights(weights, uplinks, &tier_key, t as u8)? {
            if choices.iter().any(|o| o.uplink == c.uplink) {
                return Err(ConfigError::new(
                    tier_key,
                    format!("uplink \"{}\" is already in an earlier tier", uplinks[c.uplink].name),
                ));
            }
            choices.push(c);
        }
    }
    if choices.len() > MAX_CHOICES {
        return Err(ConfigError::new(
            key,
            format!("{} uplinks, at most {MAX_CHOICES} are supported", choices.len()),
        ));
    }
    Ok(choices)
}

pub(super) fn resolve_weights(
    weights: Vec<(String, u32)>,
    uplinks: &[Uplink],
    key: &str,
    tier: u8,
) -> Result<Vec<Choice>> {
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
        if choices.iter().any(|c: &Choice| c.uplink == index) {
            return Err(ConfigError::new(key, format!("uplink \"{name}\" is listed twice")));
        }
        choices.push(Choice { uplink: index, weight, tier });
    }
    Ok(choices)
}

// ---- Small parsers ----

pub(super) fn required<T>(value: Option<T>, key: &str) -> Result<T> {
    value.ok_or_else(|| ConfigError::new(key, "missing (required)"))
}

pub(super) fn find_uplink(uplinks: &[Uplink], name: &str, key: &str) -> Result<usize> {
    uplinks.iter().position(|u| u.name == name).ok_or_else(|| {
        let known: Vec<String> = uplinks.iter().map(|u| format!("\"{}\"", u.name)).collect();
        ConfigError::new(key, format!("unknown uplink \"{name}\" (known: {})", known.join(", ")))
    })
}

pub(super) fn valid_uplink_name(name: &str) -> bool {
    (1..=MAX_UPLINK_NAME_LEN).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Rejects names the kernel would refuse (`dev_valid_name`).
pub(super) fn check_ifname(name: &str, key: &str) -> Result<()> {
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

pub(super) fn parse_addr(s: &str, key: &str) -> Result<Ipv4Addr> {
    s.parse().map_err(|_| ConfigError::new(key, format!("\"{s}\" is not an IPv4 address")))
}

/// `a.b.c.d/len`, or a bare address meaning `/32`. Host bits must be zero.
pub(super) fn parse_prefix(s: &str, key: &str) -> Result<Ipv4Net> {
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
pub(super) fn parse_port_range(value: &toml::Value, key: &str) -> Result<(u16, u16)> {
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

pub(super) fn list(nets: &[Ipv4Net]) -> String {
    nets.iter().map(Ipv4Net::to_string).collect::<Vec<_>>().join(", ")
}
