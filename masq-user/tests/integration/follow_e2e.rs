//! Uplinks that change under a running masq, end to end: an uplink renumbered (as DHCP or PPP
//! IPCP does) with its address and gateway left to follow the interface, an uplink interface
//! deleted and created again (a PPPoE redial), and `masq run` over pins whose devices vanished.
use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use masq_user::lab::{GatewayMode, Host, Lab};
use masq_user::seed::{
    CLIENT, GW_ISP_A, GW_ISP_B, GW_LAN, ISP_A_PREFIX_LEN, ISP_A_ROUTER, LAN_PREFIX_LEN,
    PUBLIC_ISP_A,
};
use serde_json::Value;

use crate::common;

const PORT: u16 = 7100;
const HTTP_PORT: u16 = 80;
const TIMEOUT: Duration = Duration::from_secs(5);
const REPLY: &str = "isolde says hello";
/// ISP A's line after the renumbering.
const NEW_GW_ISP_A: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 11);
const NEW_ISP_A_ROUTER: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 13);

fn peer(reply: Option<String>) -> Option<Ipv4Addr> {
    Some(*reply?.parse::<SocketAddrV4>().ok()?.ip())
}

/// The source address the client saw for a TCP connection from `host`.
fn tcp_seen(lab: &Lab, host: Host) -> Option<Ipv4Addr> {
    peer(lab.tcp_request(host, CLIENT, PORT, TIMEOUT).unwrap())
}

/// The source address the client saw for a UDP datagram from `host`.
fn udp_seen(lab: &Lab, host: Host) -> Option<Ipv4Addr> {
    peer(lab.udp_request(host, CLIENT, PORT, "hi", TIMEOUT).unwrap())
}

/// Polls `f` until it returns `Some`, for up to 10 s.
fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(200));
    }
}

/// `masq status --json`'s view of uplink `index`.
fn uplink_status(lab: &Lab, index: usize) -> Value {
    common::masq_status(lab)["uplinks"][index].clone()
}

/// The example config with dsl's `address` and `gateway` lines left out.
fn following_config(lab: &Lab) -> PathBuf {
    let text = std::fs::read_to_string(common::example_config()).unwrap();
    let (address, gateway) =
        (format!("address = \"{GW_ISP_A}\""), format!("gateway = \"{ISP_A_ROUTER}\""));
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with(&address) && *l != gateway)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(!text.contains(&gateway), "the example changed: {text}");
    let path = lab.run_dir().join("masq-gw-follow.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The original tuples of the connections on `uplink`.
fn originals_on(lab: &Lab, uplink: &str) -> Vec<Value> {
    let conns = common::masq_conns(lab);
    conns
        .into_iter()
        .filter(|c| c["uplink_name"] == uplink)
        .map(|c| c["original"].clone())
        .collect()
}

fn conns_text(lab: &Lab) -> Vec<String> {
    common::masq_conns(lab).iter().map(Value::to_string).collect()
}

#[test]
fn renumbered_uplink_is_followed_live() {
    let lab = common::lab(GatewayMode::Bare);
    // What a DHCP client installs beside the main default route (ISP B's).
    let dsl_default = format!("ip route add default via {ISP_A_ROUTER} dev eth4 metric 100");
    lab.ns(Host::Gw).run_ok(&dsl_default).unwrap();
    let masq = common::start_masq(&lab, &following_config(&lab));
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);

    let dsl = uplink_status(&lab, 0);
    assert_eq!(
        (&dsl["address"], &dsl["gateway"]),
        (&GW_ISP_A.to_string().into(), &ISP_A_ROUTER.to_string().into())
    );
    // tristan's policy is dsl, isolde's the default (isp-b); each leaves a UDP connection.
    assert_eq!(udp_seen(&lab, Host::Tristan), Some(GW_ISP_A));
    assert_eq!(udp_seen(&lab, Host::Isolde), Some(GW_ISP_B));
    let isp_b_conns = originals_on(&lab, "isp-b");
    assert_eq!(isp_b_conns.len(), 1, "{isp_b_conns:?}");
    assert!(conns_text(&lab).iter().any(|c| c.contains(&GW_ISP_A.to_string())));

    // ISP A renumbers the line: a new address for gw, a new router.
    lab.ns(Host::IspA)
        .run_ok(&format!("ip addr add {NEW_ISP_A_ROUTER}/{ISP_A_PREFIX_LEN} dev to-gw"))
        .unwrap();
    for cmd in [
        format!("ip addr del {GW_ISP_A}/{ISP_A_PREFIX_LEN} dev eth4"),
        format!("ip addr add {NEW_GW_ISP_A}/{ISP_A_PREFIX_LEN} dev eth4"),
        format!("ip route replace default via {NEW_ISP_A_ROUTER} dev eth4 metric 100"),
    ] {
        lab.ns(Host::Gw).run_ok(&cmd).unwrap();
    }
    // The daemon logs the old address's connections removed last, after the uplink's map
    // entry and its kernel tables.
    let old_removed = format!("connections of its old address {GW_ISP_A} removed");
    eventually("dsl to follow the new address and gateway", || {
        let dsl = uplink_status(&lab, 0);
        (dsl["address"] == NEW_GW_ISP_A.to_string()
            && dsl["gateway"] == NEW_ISP_A_ROUTER.to_string()
            && masq.log_text().contains(&old_removed))
        .then_some(())
    });
    let log = masq.log_text();
    assert!(log.contains(&format!("address {NEW_GW_ISP_A}, gateway {NEW_ISP_A_ROUTER}")), "{log}");
    assert!(log.contains(&old_removed), "{log}");

    // The old address's connection is gone and counted; isp-b's is untouched.
    let conns = conns_text(&lab);
    assert!(!conns.iter().any(|c| c.contains(&GW_ISP_A.to_string())), "{conns:#?}");
    let isp_b_after = originals_on(&lab, "isp-b");
    for kept in &isp_b_conns {
        assert!(isp_b_after.contains(kept), "isp-b conn {kept} gone: {conns:#?}");
    }
    assert!(common::counter(&lab, "conns_renumbered") >= 1);

    // New connections use the new address, the kernel's tables and rules the new gateway.
    assert_eq!(tcp_seen(&lab, Host::Tristan), Some(NEW_GW_ISP_A));
    assert_eq!(udp_seen(&lab, Host::Tristan), Some(NEW_GW_ISP_A));
    assert_eq!(tcp_seen(&lab, Host::Isolde), Some(GW_ISP_B));
    let rules = lab.ns(Host::Gw).run_ok("ip rule show").unwrap();
    assert!(rules.contains(&format!("from {NEW_GW_ISP_A} lookup 201")), "{rules}");
    assert!(!rules.contains(&format!("from {GW_ISP_A}")), "{rules}");
    let table = lab.ns(Host::Gw).run_ok("ip route show table 201").unwrap();
    assert!(table.contains(&format!("default via {NEW_ISP_A_ROUTER} dev eth4")), "{table}");
    // Inbound publishing on ISP A goes on as before.
    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes());
    let body = common::curl(&lab, Host::Client, &format!("http://{PUBLIC_ISP_A}/"), TIMEOUT);
    assert_eq!(body.as_deref(), Some(REPLY.as_bytes()));

    // The address goes away altogether (the lease ended): dsl waits, tristan fails over.
    lab.ns(Host::Gw).run_ok("ip addr flush dev eth4").unwrap();
    eventually("dsl to wait for an address", || {
        uplink_status(&lab, 0)["waiting"].as_str().map(str::to_owned)
    });
    assert_eq!(tcp_seen(&lab, Host::Tristan), Some(GW_ISP_B), "new connections fail over");
}

/// Delete gw's eth4 (and with it ISP A's end), then create and configure the pair again.
fn redial_isp_a(lab: &Lab, between: impl FnOnce()) {
    unplug_isp_a(lab);
    between();
    plug_isp_a(lab);
}

fn unplug_isp_a(lab: &Lab) {
    lab.ns(Host::Gw).run_ok("ip link del eth4").unwrap();
}

/// Create and configure ISP A's line (gw's eth4 and ISP A's to-gw).
fn plug_isp_a(lab: &Lab) {
    let (gw, ispa) = (lab.ns(Host::Gw).name().to_owned(), lab.ns(Host::IspA).name().to_owned());
    let out = std::process::Command::new("ip")
        .args(["link", "add", "name", "eth4", "netns", &gw, "type", "veth", "peer", "name"])
        .args(["to-gw", "netns", &ispa])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for cmd in [
        "sysctl -qw net.ipv4.conf.to-gw.rp_filter=0",
        &format!("ip addr add {ISP_A_ROUTER}/{ISP_A_PREFIX_LEN} dev to-gw"),
        "ip link set to-gw up",
    ] {
        lab.ns(Host::IspA).run_ok(cmd).unwrap();
    }
    for cmd in [
        "sysctl -qw net.ipv4.conf.eth4.rp_filter=2",
        &format!("ip addr add {GW_ISP_A}/{ISP_A_PREFIX_LEN} dev eth4"),
        "ip link set eth4 up",
    ] {
        lab.ns(Host::Gw).run_ok(cmd).unwrap();
    }
}

fn ifindex(lab: &Lab, iface: &str) -> u64 {
    let text = lab.ns(Host::Gw).run_ok(&format!("cat /sys/class/net/{iface}/ifindex")).unwrap();
    text.trim().parse().unwrap()
}

fn assert_inbound_on_isp_a(lab: &Lab) {
    let body = common::curl(lab, Host::Client, &format!("http://{PUBLIC_ISP_A}/"), TIMEOUT);
    assert_eq!(
        body.as_deref(),
        Some(REPLY.as_bytes()),
        "TCP to {PUBLIC_ISP_A}\n{}",
        common::masq_stats(lab)
    );
    assert!(lab.ping(Host::Client, PUBLIC_ISP_A, TIMEOUT).unwrap(), "ping {PUBLIC_ISP_A}");
}

#[test]
fn uplink_interface_deleted_and_created_again_is_attached_again() {
    let lab = common::lab(GatewayMode::Bare);
    let masq = common::start_masq(&lab, &common::example_config());
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);
    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes());
    assert_inbound_on_isp_a(&lab);
    assert_eq!(udp_seen(&lab, Host::Isolde), Some(GW_ISP_B));
    let isp_b_before = originals_on(&lab, "isp-b");
    assert!(!isp_b_before.is_empty());
    let old_index = ifindex(&lab, "eth4");

    redial_isp_a(&lab, || {
        let why = eventually("dsl to wait for its interface", || {
            uplink_status(&lab, 0)["waiting"].as_str().map(str::to_owned)
        });
        assert!(why.contains("eth4 does not exist"), "{why}");
        assert_eq!(tcp_seen(&lab, Host::Tristan), Some(GW_ISP_B), "dsl gone: fail over");
        assert_eq!(udp_seen(&lab, Host::Isolde), Some(GW_ISP_B), "isp-b unaffected");
    });
    let new_index = ifindex(&lab, "eth4");
    assert_ne!(old_index, new_index, "a new device");
    eventually("dsl to be up on the new eth4", || {
        let dsl = uplink_status(&lab, 0);
        (dsl["up"] == true
            && dsl["ifindex"] == new_index
            && dsl_table_routes_via(&lab, ISP_A_ROUTER))
        .then_some(())
    });
    let status = common::masq_status(&lab);
    for program in ["masq_uplink_in", "masq_uplink_out"] {
        let a = status["programs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["program"] == program && a["interface"] == "eth4")
            .cloned()
            .unwrap_or_else(|| panic!("{program} on eth4 missing: {status:#}"));
        assert_eq!((&a["attached"], &a["ifindex"]), (&true.into(), &new_index.into()), "{a:#}");
    }
    assert_inbound_on_isp_a(&lab);
    assert_eq!(tcp_seen(&lab, Host::Tristan), Some(GW_ISP_A), "dsl is back for tristan");
    let isp_b_after = originals_on(&lab, "isp-b");
    for kept in &isp_b_before {
        assert!(isp_b_after.contains(kept), "isp-b conn {kept} gone: {isp_b_after:#?}");
    }
    assert!(masq.log_text().contains("masq_uplink_in on eth4"), "{}", masq.log_text());
}

#[test]
fn masq_run_over_pins_whose_devices_vanished_starts_cleanly() {
    let lab = common::lab(GatewayMode::Bare);
    let masq = common::start_masq(&lab, &common::example_config());
    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes());
    assert_inbound_on_isp_a(&lab);
    masq.stop().unwrap();
    // With no daemon running, ISP A's link is redialled: the pinned links on eth4 are severed.
    redial_isp_a(&lab, || {});
    let _masq = common::start_masq(&lab, &common::example_config());
    assert_inbound_on_isp_a(&lab);
    let dsl = uplink_status(&lab, 0);
    assert_eq!((&dsl["up"], &dsl["ifindex"]), (&true.into(), &ifindex(&lab, "eth4").into()));
}

#[test]
fn a_following_uplink_whose_interface_is_not_there_yet_waits_for_it() {
    let lab = common::lab(GatewayMode::Bare);
    let config = following_config(&lab);
    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes());
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);
    // As at boot before pppd dialled: no eth4 when masq starts.
    unplug_isp_a(&lab);
    let _masq = common::start_masq(&lab, &config);
    let why = uplink_status(&lab, 0)["waiting"].as_str().map(str::to_owned);
    assert!(why.as_ref().is_some_and(|w| w.contains("eth4 does not exist")), "{why:?}");
    assert_eq!(tcp_seen(&lab, Host::Tristan), Some(GW_ISP_B), "dsl absent: fail over");
    plug_isp_a(&lab);
    // The line came up; its DHCP client adds the default route dsl learns its gateway from.
    let dsl_default = format!("ip route add default via {ISP_A_ROUTER} dev eth4 metric 100");
    lab.ns(Host::Gw).run_ok(&dsl_default).unwrap();
    eventually("dsl to come up on the new eth4", || {
        let dsl = uplink_status(&lab, 0);
        (dsl["up"] == true
            && dsl["gateway"] == ISP_A_ROUTER.to_string()
            && dsl_table_routes_via(&lab, ISP_A_ROUTER))
        .then_some(())
    });
    assert_inbound_on_isp_a(&lab);
    assert_eq!(tcp_seen(&lab, Host::Tristan), Some(GW_ISP_A));
}

#[test]
fn lan_interface_deleted_and_created_again_is_attached_again() {
    let lab = common::lab(GatewayMode::Bare);
    let _masq = common::start_masq(&lab, &common::example_config());
    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes());
    assert_inbound_on_isp_a(&lab);
    let old_index = ifindex(&lab, "eth0");
    // The same NIC plugged back (same MAC: the LAN hosts' ARP caches stay right).
    let mac = lab.ns(Host::Gw).run_ok("cat /sys/class/net/eth0/address").unwrap();
    lab.ns(Host::Gw).run_ok("ip link del eth0").unwrap();
    let (gw, switch) = (lab.ns(Host::Gw).name().to_owned(), lab.ns(Host::Switch).name().to_owned());
    let out = std::process::Command::new("ip")
        .args(["link", "add", "name", "eth0", "netns", &gw, "address", mac.trim()])
        .args(["type", "veth", "peer", "name", "gw", "netns", &switch])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for cmd in ["ip link set gw master br0", "ip link set gw up"] {
        lab.ns(Host::Switch).run_ok(cmd).unwrap();
    }
    for cmd in [&format!("ip addr add {GW_LAN}/{LAN_PREFIX_LEN} dev eth0"), "ip link set eth0 up"] {
        lab.ns(Host::Gw).run_ok(cmd).unwrap();
    }
    let new_index = ifindex(&lab, "eth0");
    assert_ne!(old_index, new_index);
    eventually("masq_lan_in on the new eth0", || {
        let status = common::masq_status(&lab);
        status["programs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| {
                a["program"] == "masq_lan_in" && a["attached"] == true && a["ifindex"] == new_index
            })
            .then_some(())
    });
    // At once, one echo: no next hop cached for the old eth0 may still be used (without the
    // daemon's clearing of the cache, 2 of 8 runs lost it).
    let pinged = lab.ping(Host::Client, PUBLIC_ISP_A, TIMEOUT).unwrap();
    assert!(pinged, "ping {PUBLIC_ISP_A} right after masq_lan_in is on the new eth0");
    assert_inbound_on_isp_a(&lab);
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);
    assert_eq!(tcp_seen(&lab, Host::Tristan), Some(GW_ISP_A));
    assert_eq!(tcp_seen(&lab, Host::Isolde), Some(GW_ISP_B));
}

/// Whether dsl's table (201) has its default route via `router` again: the daemon writes the
/// uplink's map entry before it restores the table.
fn dsl_table_routes_via(lab: &Lab, router: Ipv4Addr) -> bool {
    let table = lab.ns(Host::Gw).run_ok("ip route show table 201").unwrap();
    table.contains(&format!("default via {router} dev eth4"))
}
