//! The LAN on a bridge (`br-lan`, eth0 its port), as OpenWrt and most home gateways have it.
//! masq's LAN program runs on the bridge; inbound publishing, outbound masquerade and reply
//! steering work as on plain eth0. (A VLAN subinterface cannot be built on this kernel: it has
//! no 802.1Q support.)
use std::{net::SocketAddrV4, time::Duration};

use masq_user::lab::{Host, Lab, LabOptions, LanDevice};
use masq_user::seed::{CLIENT, GW_ISP_A, GW_ISP_B, PUBLIC_ISP_A, PUBLIC_ISP_B};

use crate::common;

const HTTP_PORT: u16 = 80;
const UDP_PORT: u16 = 5353;
const PEER_PORT: u16 = 7100;
const REPLY: &str = "isolde says hello";
const TIMEOUT: Duration = Duration::from_secs(5);

fn check_lan_device(lan: LanDevice) {
    common::require_root();
    let lab = Lab::build(LabOptions { lan, ..LabOptions::default() }).expect("building the lab");
    let text = std::fs::read_to_string(common::example_config()).unwrap();
    let replaced =
        text.replacen("interface = \"eth0\"", &format!("interface = \"{}\"", lan.interface()), 1);
    assert_ne!(text, replaced, "the example's LAN interface changed");
    let config = lab.run_dir().join("masq-gw-lan.toml");
    std::fs::write(&config, replaced).unwrap();
    let _masq = common::start_masq(&lab, &config);

    let status = common::masq_status(&lab);
    let lan_in = status["programs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["program"] == "masq_lan_in")
        .cloned()
        .expect("masq_lan_in listed");
    assert_eq!(
        (&lan_in["interface"], &lan_in["hook"], &lan_in["attached"]),
        (&lan.interface().into(), &"tc_ingress".into(), &true.into()),
        "{lan_in:#}"
    );

    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes());
    let _udp = lab.serve_udp(Host::Isolde, UDP_PORT, REPLY).unwrap();
    for public in [PUBLIC_ISP_A, PUBLIC_ISP_B] {
        let url = format!("http://{public}:{HTTP_PORT}/");
        let body = common::curl(&lab, Host::Client, &url, TIMEOUT);
        assert_eq!(body.as_deref(), Some(REPLY.as_bytes()), "TCP to {public} ({lan:?})");
        let udp = lab.udp_request(Host::Client, public, UDP_PORT, "ping?", TIMEOUT).unwrap();
        assert_eq!(udp.as_deref(), Some(REPLY), "UDP to {public} ({lan:?})");
        assert!(lab.ping(Host::Client, public, TIMEOUT).unwrap(), "ping {public} ({lan:?})");
    }
    let _peer = common::serve_peer_addr(lab.ns(Host::Client), PEER_PORT);
    for (host, want) in [(Host::Tristan, GW_ISP_A), (Host::Isolde, GW_ISP_B)] {
        let reply = lab.tcp_request(host, CLIENT, PEER_PORT, TIMEOUT).unwrap();
        let seen = reply.and_then(|r| r.parse::<SocketAddrV4>().ok()).map(|a| *a.ip());
        assert_eq!(seen, Some(want), "{host} outbound ({lan:?})");
    }
    assert_eq!(lab.spoof_drops(Host::IspB), 0);
    assert_eq!(lab.spoof_drops(Host::IspA), 0);
    assert!(common::counter(&lab, "fast_path_redirect") > 0, "masq forwarded ({lan:?})");
}

#[test]
fn lan_on_a_bridge() {
    check_lan_device(LanDevice::Bridge);
}
