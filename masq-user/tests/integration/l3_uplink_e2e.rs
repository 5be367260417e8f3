//! An L3 uplink end to end: ISP A's line as a point-to-point link without Ethernet headers
//! (tun devices joined by a relay, as PPPoE, LTE raw-ip or WireGuard are), `gateway` left out.
//! Inbound publishing, outbound masquerade and reply steering work across it as on Ethernet.
use std::{net::SocketAddrV4, time::Duration};

use masq_user::lab::{Host, Lab, LabOptions};
use masq_user::seed::{CLIENT, GW_ISP_A, GW_ISP_B, ISP_A_ROUTER, PUBLIC_ISP_A, PUBLIC_ISP_B};
use serde_json::Value;

use crate::common;

const HTTP_PORT: u16 = 80;
const UDP_PORT: u16 = 5353;
const PEER_PORT: u16 = 7100;
const REPLY: &str = "isolde says hello";
const TIMEOUT: Duration = Duration::from_secs(5);

fn l3_lab() -> Lab {
    common::require_root();
    Lab::build(LabOptions { l3_isp_a: true, ..LabOptions::default() }).expect("building the lab")
}

/// The example config with dsl's gateway left out: a point-to-point link needs none.
fn point_to_point_config(lab: &Lab) -> std::path::PathBuf {
    let text = std::fs::read_to_string(common::example_config()).unwrap();
    let gateway = format!("gateway = \"{ISP_A_ROUTER}\"");
    let text = text.replace(&format!("{gateway}\n"), "");
    assert!(!text.contains(&gateway), "the example changed");
    let path = lab.run_dir().join("masq-gw-l3.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn l3_uplink_publishes_masquerades_and_steers_replies() {
    let lab = l3_lab();
    let link = lab.ns(Host::Gw).run_ok("ip -d link show eth4").unwrap();
    assert!(link.contains("link/none") && link.contains("tun"), "eth4 is a tun: {link}");
    let masq = common::start_masq(&lab, &point_to_point_config(&lab));

    let status = common::masq_status(&lab);
    let on_eth4: Vec<(&Value, &Value)> = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["interface"] == "eth4" && a["attached"] == true)
        .map(|a| (&a["program"], &a["hook"]))
        .collect();
    assert!(on_eth4.contains(&(&"masq_uplink_in_l3".into(), &"tc_ingress".into())), "{on_eth4:?}");
    assert!(on_eth4.contains(&(&"masq_uplink_out_l3".into(), &"tc_egress".into())), "{on_eth4:?}");
    let dsl = &status["uplinks"][0];
    assert_eq!((&dsl["up"], &dsl["gateway"]), (&true.into(), &"0.0.0.0".into()), "{dsl:#}");
    let table = lab.ns(Host::Gw).run_ok("ip route show table 201").unwrap();
    assert!(table.contains("default dev eth4"), "point-to-point default route: {table}");

    // Inbound on both ISPs: TCP, UDP, ping. The replies of ISP A's connections must go back
    // over the L3 link (ISP B drops them as spoofed otherwise).
    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes());
    let _udp = lab.serve_udp(Host::Isolde, UDP_PORT, REPLY).unwrap();
    for public in [PUBLIC_ISP_A, PUBLIC_ISP_B] {
        let url = format!("http://{public}:{HTTP_PORT}/");
        let body = common::curl(&lab, Host::Client, &url, TIMEOUT);
        let why = || format!("{}\n{}", masq.log_text(), common::masq_stats(&lab));
        assert_eq!(body.as_deref(), Some(REPLY.as_bytes()), "TCP to {public}\n{}", why());
        let udp = lab.udp_request(Host::Client, public, UDP_PORT, "ping?", TIMEOUT).unwrap();
        assert_eq!(udp.as_deref(), Some(REPLY), "UDP to {public}");
        assert!(lab.ping(Host::Client, public, TIMEOUT).unwrap(), "ping {public}");
    }
    assert_eq!(lab.spoof_drops(Host::IspB), 0, "no reply leaked to ISP B");

    // Outbound: tristan's policy is dsl, isolde's isp-b.
    let _peer = common::serve_peer_addr(lab.ns(Host::Client), PEER_PORT);
    let seen = |host: Host, udp: bool| {
        let reply = if udp {
            lab.udp_request(host, CLIENT, PEER_PORT, "hi", TIMEOUT).unwrap()
        } else {
            lab.tcp_request(host, CLIENT, PEER_PORT, TIMEOUT).unwrap()
        };
        reply.and_then(|r| r.parse::<SocketAddrV4>().ok()).map(|a| *a.ip())
    };
    assert_eq!(seen(Host::Tristan, false), Some(GW_ISP_A), "tristan TCP over the L3 link");
    assert_eq!(seen(Host::Tristan, true), Some(GW_ISP_A), "tristan UDP over the L3 link");
    assert_eq!(seen(Host::Isolde, false), Some(GW_ISP_B), "isolde TCP via isp-b");
    assert!(common::counter(&lab, "inbound_new") >= 3);
    assert!(common::counter(&lab, "outbound_new") >= 2);
    assert_eq!(common::counter(&lab, "drop_malformed"), 0);
}
