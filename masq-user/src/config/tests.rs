use std::path::PathBuf;

use masq_common::{MAX_POLICIES, MAX_UPLINKS};

use super::{
    key_path::{key_path_at, line_col},
    *,
};
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

fn weights(p: &Policy) -> Vec<(usize, u32)> {
    p.choices.iter().map(|c| (c.uplink, c.weight)).collect()
}

fn iface(name: &str, index: u32, addrs: &[&str]) -> HostInterface {
    HostInterface {
        name: name.into(),
        index,
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        mac: Some([2, 0, 0, 0, 0, index as u8]),
        l3: false,
        carrier: true,
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
    assert_eq!(weights(&c.policies[0]), [(0, 1)]);
    assert!(!c.policies[0].is_default());
    assert!(c.policies[1].is_default());
    assert_eq!(weights(&c.policies[1]), [(1, 1)]);

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
    let block = block.split("\n\n").next().unwrap();
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
    assert_err(&bad("duplicate-uplink-name"), "uplink[1].name", "duplicate uplink name \"dsl\"");
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
    assert_err(&bad("unknown-uplink-in-publish"), "publish[0].uplink", "unknown uplink \"dls\"");
}

#[test]
fn unknown_uplink_in_policy_is_rejected_naming_the_key() {
    let e = bad("unknown-uplink-in-policy");
    assert_err(&e, "policy[0].uplink", "unknown uplink \"dls\" (known: \"dsl\", \"isp-b\")");
}

#[test]
fn unknown_uplink_in_weighted_policy_is_rejected_naming_the_key() {
    assert_err(&bad("unknown-uplink-in-weighted-policy"), "policy[0].uplinks.isp-c", "\"isp-c\"");
}

#[test]
fn address_outside_the_interface_subnet_is_rejected_by_the_host_check() {
    let path = examples().join("bad/address-outside-subnet.toml");
    assert!(Config::load(&path).is_ok(), "only the host check can tell");
    let e = bad("address-outside-subnet");
    assert_err(&e, "uplink[0].address", "67.17.28.20 is not inside a subnet configured on eth4");
}

#[test]
fn gateway_outside_the_interface_subnet_is_rejected_by_the_host_check() {
    let e = bad("gateway-outside-subnet");
    assert_err(&e, "uplink[0].gateway", "67.17.28.17 is not inside a subnet configured on eth4");
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
    assert_err(&e, "publish[0].to", "192.168.1.17 is not inside a LAN prefix (192.168.100.0/24)");
}

#[test]
fn prefix_that_does_not_parse_is_rejected_naming_the_key() {
    assert_err(&bad("bad-prefix"), "lan.prefixes[0]", "\"192.168.100.0/33\" is not an IPv4 prefix");
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
        "set one of uplink, uplinks and tiers, not several",
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
fn gateway_ports_default_to_a_range_below_every_clients_own() {
    use crate::config::GatewayPorts;
    let cfg = parse("").unwrap();
    assert_eq!(cfg.dataplane.gateway_ports, GatewayPorts::Range(28672, 32767));
    let cfg = parse("[dataplane]\ngateway_ports = \"system\"\n").unwrap();
    assert_eq!(cfg.dataplane.gateway_ports, GatewayPorts::System);
    let cfg = parse("[dataplane]\ngateway_ports = \"61000-61999\"\n").unwrap();
    assert_eq!(cfg.dataplane.gateway_ports, GatewayPorts::Range(61000, 61999));
    for (text, why) in [
        ("\"61999-61000\"", "expected 1024 <= MIN <= MAX"),
        ("\"80-1000\"", "expected 1024 <= MIN <= MAX"),
        ("\"lots\"", "is not \"system\" nor a range"),
        ("\"1024-70000\"", "is not \"system\" nor a range"),
        ("\"1024-65535\"", "covers all of port_min..=port_max (1024-65535)"),
    ] {
        let err = parse_err(&format!("[dataplane]\ngateway_ports = {text}\n"));
        assert_err(&err, "dataplane.gateway_ports", why);
    }
}

#[test]
fn events_default_to_no_log_and_a_mebibyte_ring() {
    let cfg = parse("").unwrap();
    assert_eq!(cfg.events, crate::config::EventsSettings::default());
    assert_eq!((cfg.events.log, cfg.events.ring_bytes), (None, 1 << 20));
    let cfg = parse(
        "[events]\nlog = \"/var/log/masq/conns.log\"\nlog_max_mb = 16\nlog_keep = 3\nring_kib = 64\n",
    )
    .unwrap();
    let e = cfg.events;
    assert_eq!(e.log.as_deref(), Some(Path::new("/var/log/masq/conns.log")));
    assert_eq!((e.log_max_bytes, e.log_keep, e.ring_bytes), (16 << 20, 3, 64 << 10));
    for (extra, key, why) in [
        ("log = \"conns.log\"", "events.log", "not an absolute file path"),
        ("ring_kib = 48", "events.ring_kib", "power of two in 4..=1048576"),
        ("ring_kib = 2", "events.ring_kib", "power of two"),
        ("log_max_mb = 0", "events.log_max_mb", "expected 1..=1048576"),
        ("log_keep = 5000", "events.log_keep", "at most 1000"),
    ] {
        assert_err(&parse_err(&format!("[events]\n{extra}\n")), key, why);
    }
    assert_err(&parse_err("[events]\nlogs = \"/x\"\n"), "events.logs", "unknown field");
}

#[test]
fn hairpin_is_on_unless_turned_off() {
    assert!(parse("").unwrap().dataplane.hairpin);
    assert!(!parse("[dataplane]\nhairpin = false\n").unwrap().dataplane.hairpin);
}

#[test]
fn trace_is_off_unless_asked() {
    use crate::config::TraceLevel;
    assert_eq!(parse("").unwrap().dataplane.trace, TraceLevel::Off);
    let cfg = parse("[dataplane]\ntrace = \"debug\"\n").unwrap();
    assert_eq!((cfg.dataplane.trace, cfg.dataplane.trace.aya_level()), (TraceLevel::Debug, 4));
    assert_err(
        &parse_err("[dataplane]\ntrace = \"verbose\"\n"),
        "dataplane.trace",
        "is not one of \"off\", \"error\", \"warn\", \"info\", \"debug\"",
    );
}

#[test]
fn mark_mask_zero_is_rejected() {
    assert_err(&bad("mark-mask-zero"), "dataplane.mark_mask", "must not be 0");
}

#[test]
fn pending_capacity_defaults_to_a_quarter_and_is_bounded() {
    let d = parse("[dataplane]\nconn_capacity = 8192\n").unwrap().dataplane;
    assert_eq!(d.pending_capacity, 2048);
    let d = parse("[dataplane]\nconn_capacity = 1024\n").unwrap().dataplane;
    assert_eq!(d.pending_capacity, MIN_PENDING_CAPACITY, "never below the minimum");
    let d = parse("[dataplane]\npending_capacity = 300\n").unwrap().dataplane;
    assert_eq!(d.pending_capacity, 300);
    assert_err(
        &parse_err("[dataplane]\npending_capacity = 10\n"),
        "dataplane.pending_capacity",
        "10 is out of range",
    );
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
            parse(&format!("[dataplane]\nconn_capacity = {ok}\n")).unwrap().dataplane.conn_capacity,
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
    assert_err(&e, "uplink[1].interface", "interface \"eth4\" is already used by uplink \"dsl\"");
    let e = Config::from_toml(&BASE.replace("\"eth1\"", "\"a/b\"")).unwrap_err();
    assert_err(&e, "uplink[1].interface", "invalid interface name \"a/b\"");
}

#[test]
fn bad_or_shared_uplink_addresses_are_rejected() {
    let e = Config::from_toml(&BASE.replace("\"205.254.211.179\"", "\"205.254.211\"")).unwrap_err();
    assert_err(&e, "uplink[1].address", "\"205.254.211\" is not an IPv4 address");
    let e = Config::from_toml(&BASE.replace("\"205.254.211.179\"", "\"67.17.28.12\"")).unwrap_err();
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
    let waiting: Vec<&str> = c.waiting_interfaces(&host).iter().map(|u| u.name.as_str()).collect();
    assert_eq!(waiting, ["isp-b"]);
    let e = parse("").unwrap().check_host(&host).unwrap_err();
    assert_err(&e, "uplink[1].interface", "interface \"eth1\" does not exist on this host");
}

#[test]
fn missing_required_keys_are_named() {
    let e = Config::from_toml("[[uplink]]\nname = \"dsl\"\n").unwrap_err();
    assert_err(&e, "lan", "missing section [lan]");
    let e = Config::from_toml(&BASE.replace("prefixes = [\"192.168.100.0/24\"]", "prefixes = []"))
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
    let e =
        parse_err("[[policy]]\nuplink = \"dsl\"\n\n[[policy]]\nuplink = \"dsl\"\nstiky = true\n");
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
    assert_eq!(weights(&c.policies[0]), [(0, 1)]);
    assert!(!c.policies[0].sticky);
}

#[test]
fn policies_without_a_default_get_one_to_the_first_uplink_appended() {
    let c = parse("[[policy]]\nproto = \"udp\"\nuplink = \"isp-b\"\n").unwrap();
    assert_eq!(c.policies.len(), 2);
    assert_eq!(weights(&c.policies[1]), [(0, 1)]);
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
    assert_eq!(weights(p), [(1, 3), (0, 1)]);
    assert!(p.sticky);
    assert_eq!(c.policies.len(), 2, "a default is appended");
}

#[test]
fn policy_port_accepts_a_number_or_a_range_and_rejects_the_rest() {
    let port =
        |v: &str| parse(&format!("[[policy]]\nproto = \"udp\"\nport = {v}\nuplink = \"dsl\"\n"));
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
    assert_eq!((p.uplink, p.proto, p.port, p.to_port), (1, Some(Proto::Tcp), Some(80), Some(8080)));
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
    assert_eq!((d.mark_mask, d.conn_capacity, d.port_min, d.port_max), (0xff, 1024, 20000, 20000));
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

// ---- Uplink health, tiers, transitions ----

#[test]
fn health_defaults_fail_over_within_seconds_and_judge_loss_like_dpinger() {
    let text = BASE.replace(
        "gateway = \"67.17.28.14\"\n",
        "gateway = \"67.17.28.14\"\non_down = \"flush\"\non_up = \"reclaim\"\n\
         [uplink.health]\ntargets = [\"64.70.12.210\", \"198.51.100.53\"]\n",
    );
    let c = Config::from_toml(&text).unwrap();
    let dsl = &c.uplinks[0];
    assert_eq!((dsl.on_down, dsl.on_up), (OnDown::Flush, OnUp::Reclaim));
    let h = dsl.health.as_ref().unwrap();
    assert_eq!(h.method, ProbeMethod::Icmp);
    assert_eq!(h.targets.len(), 2);
    assert_eq!((h.quorum, h.down, h.up, h.window), (1, 3, 5, 20));
    assert_eq!(h.interval, Duration::from_millis(500));
    assert_eq!(h.failure_interval, Duration::from_millis(250));
    assert_eq!(h.timeout, Duration::from_secs(1));
    assert_eq!(h.loss, Some(Levels { failure: 20, recovery: 10 }));
    assert_eq!(h.latency, None);
    assert_eq!(h.initial, Initial::Up);
    assert!(h.passive);
    // Worst case to fail over: the last good probe, then `down` failures of one `timeout`
    // each started an interval apart.
    let worst = h.interval + h.timeout + h.interval * (h.down - 1);
    assert!(worst <= Duration::from_secs(3), "{worst:?}");
    assert_eq!(c.uplinks[1].health, None);
    assert_eq!(c.uplinks[1].on_down, OnDown::Keep);
}

#[test]
fn health_methods_levels_and_initial_state_resolve() {
    let with = |health: &str| {
        let text = BASE.replace(
            "gateway = \"67.17.28.14\"\n",
            &format!("gateway = \"67.17.28.14\"\n[uplink.health]\n{health}\n"),
        );
        Config::from_toml(&text).map(|c| c.uplinks[0].health.clone().unwrap())
    };
    let h = with("targets = [\"64.70.12.210\"]\nmethod = \"tcp\"\nport = 443\ninitial = \"down\"")
        .unwrap();
    assert_eq!((h.method, h.initial), (ProbeMethod::Tcp { port: 443 }, Initial::Down));
    let h = with("targets = [\"64.70.12.210\"]\nmethod = \"dns\"").unwrap();
    assert_eq!(h.method, ProbeMethod::Dns { port: 53, query: ".".into() });
    let h = with(
        "targets = [\"64.70.12.210\"]\nfailure_latency_ms = 500\nrecovery_latency_ms = 200\n\
         failure_loss = 100\npassive = false",
    )
    .unwrap();
    let latency = h.latency.unwrap();
    assert_eq!(
        (latency.failure, latency.recovery),
        (Duration::from_millis(500), Duration::from_millis(200))
    );
    assert_eq!(h.loss, None, "failure_loss = 100 judges no loss");
    assert!(!h.passive);
    let e =
        with("targets = [\"64.70.12.210\"]\nmethod = \"dns\"\nquery = \"bad name\"").unwrap_err();
    assert_err(&e, "uplink[0].health.query", "is not a DNS name");
    let e = with("targets = [\"64.70.12.210\"]\nmethod = \"http\"").unwrap_err();
    assert_err(&e, "uplink[0].health.method", "\"http\" is not one of");
    let e = with("targets = [\"64.70.12.210\", \"64.70.12.210\"]").unwrap_err();
    assert_err(&e, "uplink[0].health.targets[1]", "duplicate target");
    let e = with("targets = [\"64.70.12.210\"]\nport = 53").unwrap_err();
    assert_err(&e, "uplink[0].health.port", "only for method");
    let e = with("targets = [\"64.70.12.210\"]\ndown = 0").unwrap_err();
    assert_err(&e, "uplink[0].health.down", "out of range");
}

#[test]
fn tiers_resolve_in_order_and_steering_takes_the_lowest_tier_up() {
    let c = parse(
        "[[policy]]\nfrom = \"192.168.100.32/32\"\ntiers = [[\"dsl\"], { isp-b = 3 }]\n\
         [[policy]]\nuplink = \"isp-b\"\n",
    )
    .unwrap();
    let p = &c.policies[0];
    let tiers: Vec<_> = p.choices.iter().map(|c| (c.uplink, c.weight, c.tier)).collect();
    assert_eq!(tiers, [(0, 1, 0), (1, 3, 1)]);
    let tristan = "192.168.100.32".parse().unwrap();
    let isolde = "192.168.100.17".parse().unwrap();
    let client = "64.70.12.210".parse().unwrap();
    assert_eq!(c.steered_to(tristan, client, 6, 443, |_| true), [0]);
    assert_eq!(c.steered_to(tristan, client, 6, 443, |i| i != 0), [1]);
    assert_eq!(c.steered_to(isolde, client, 6, 443, |_| true), [1]);
    assert!(c.steered_to(isolde, client, 6, 443, |_| false).is_empty());
    let rule = crate::map_values::policy_rule(p);
    assert_eq!((rule.choice_count, rule.tiers[..2].to_vec()), (2, vec![0, 1]));
}

#[test]
fn on_transition_takes_a_program_or_an_argv() {
    let c = parse("[on_transition]\ncommand = \"/etc/masq/uplink-changed\"\n").unwrap();
    let hook = c.on_transition.unwrap();
    assert_eq!(hook.command, ["/etc/masq/uplink-changed"]);
    assert_eq!(hook.timeout, Duration::from_secs(10));
    let c = parse("[on_transition]\ncommand = [\"/bin/logger\", \"-t\", \"masq\"]\ntimeout = 3\n")
        .unwrap();
    assert_eq!(c.on_transition.unwrap().command.len(), 3);
    assert_err(
        &parse_err("[on_transition]\ncommand = \"/bin/true\"\ntimeout = 0\n"),
        "on_transition.timeout",
        "out of range",
    );
}

#[test]
fn default_timeouts_meet_the_nat_rfcs() {
    let t = Timeouts::default();
    // RFC 5382 REQ-5 (TCP transitory 4 min, established 2 h 4 min), RFC 4787 REQ-5 (UDP 2
    // min), RFC 5508 (ICMP 60 s).
    assert!(t.tcp_syn >= Duration::from_secs(240));
    assert!(t.tcp_established >= Duration::from_secs(7440));
    assert!(t.udp >= Duration::from_secs(120) && t.udp_stream >= Duration::from_secs(120));
    assert!(t.icmp >= Duration::from_secs(60));
}

#[test]
fn udp_filtering_is_address_and_port_dependent_unless_opened() {
    let open = BASE.replace(
        "gateway = \"67.17.28.14\"\n",
        "gateway = \"67.17.28.14\"\nudp_filtering = \"endpoint-independent\"\n",
    );
    let c = Config::from_toml(&open).unwrap();
    assert!(c.uplinks[0].udp_open_filtering && !c.uplinks[1].udp_open_filtering);
    let bad = BASE.replace(
        "gateway = \"67.17.28.14\"\n",
        "gateway = \"67.17.28.14\"\nudp_filtering = \"full-cone\"\n",
    );
    assert_err(&Config::from_toml(&bad).unwrap_err(), "uplink[0].udp_filtering", "is not one of");
}
