//! Which hook runs where, end to end: TC in the default lab (veth at the kernel's defaults), XDP
//! in the XDP-friendly variant with proof that the XDP path carried the traffic, and a clear
//! refusal when XDP is required where it cannot work.
use std::time::Duration;

use masq_user::lab::{GatewayMode, Host, Lab};
use masq_user::seed::{PUBLIC_ISP_A, PUBLIC_ISP_B};
use serde_json::Value;

use crate::common;

const HTTP_PORT: u16 = 80;
const UDP_PORT: u16 = 5353;
const REPLY: &str = "isolde says hello";
const TIMEOUT: Duration = Duration::from_secs(5);
const SHORT: Duration = Duration::from_millis(500);

/// TCP, UDP and ping to both public addresses, each answered.
fn assert_inbound_works(lab: &Lab) {
    let _http = common::serve_http(lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes());
    let _udp = lab.serve_udp(Host::Isolde, UDP_PORT, REPLY).unwrap();
    for public in [PUBLIC_ISP_A, PUBLIC_ISP_B] {
        let url = format!("http://{public}:{HTTP_PORT}/");
        let body = common::curl(lab, Host::Client, &url, TIMEOUT);
        assert_eq!(body.as_deref(), Some(REPLY.as_bytes()), "TCP to {public}");
        let udp = lab.udp_request(Host::Client, public, UDP_PORT, "ping?", TIMEOUT).unwrap();
        assert_eq!(udp.as_deref(), Some(REPLY), "UDP to {public}");
        assert!(lab.ping(Host::Client, public, TIMEOUT).unwrap(), "ping {public}");
    }
}

/// The attachment of `program` on `interface` in `masq status --json`.
fn attachment<'a>(status: &'a Value, program: &str, interface: &str) -> &'a Value {
    status["programs"]
        .as_array()
        .and_then(|p| p.iter().find(|a| a["program"] == program && a["interface"] == interface))
        .unwrap_or_else(|| panic!("no {program} on {interface} in {:#}", status["programs"]))
}

#[test]
fn default_lab_runs_tc_on_the_uplinks_and_says_why() {
    let lab = common::lab(GatewayMode::Bare);
    let _masq = common::start_masq(&lab, &common::example_config());
    assert_inbound_works(&lab);
    let status = common::masq_status(&lab);
    for iface in ["eth4", "eth1"] {
        let a = attachment(&status, "masq_uplink_in", iface);
        assert_eq!(a["attached"], true, "{a:#}");
        assert_eq!(a["hook"], "tc_ingress", "{a:#}");
        let why = a["reason"].as_str().unwrap_or_default();
        assert!(why.contains("veth") && why.contains("partial checksums"), "{a:#}");
    }
    let programs = status["programs"].as_array().unwrap();
    assert!(
        !programs.iter().any(|a| a["hook"] == "xdp"),
        "no XDP in the default lab: {programs:#?}"
    );
    assert_eq!(common::counter(&lab, "xdp_redirect"), 0);
    assert!(common::counter(&lab, "fast_path_redirect") > 0);
}

#[test]
fn xdp_friendly_lab_forwards_inbound_traffic_by_xdp() {
    let lab = common::xdp_friendly_lab();
    let config = common::config_with(&lab, "[dataplane]\nxdp = \"required\"");
    let _masq = common::start_masq(&lab, &config);
    assert_inbound_works(&lab);
    let status = common::masq_status(&lab);
    for iface in ["eth4", "eth1"] {
        let a = attachment(&status, "masq_uplink_in_xdp", iface);
        assert_eq!(
            (&a["attached"], &a["hook"]),
            (&Value::from(true), &Value::from("xdp")),
            "{a:#}"
        );
    }
    assert_eq!(attachment(&status, "masq_xdp_pass", "eth0")["attached"], true);
    let programs = status["programs"].as_array().unwrap();
    assert!(
        !programs.iter().any(|a| a["program"] == "masq_uplink_in"),
        "TC ingress must not run beside XDP on an uplink: {programs:#?}"
    );
    // The XDP program carried the inbound traffic (TCP, UDP, echo toward isolde).
    let xdp = common::counter(&lab, "xdp_redirect");
    assert!(xdp >= 6, "xdp_redirect = {xdp}");
    assert_eq!(common::counter(&lab, "drop_xdp_redirect"), 0, "no redirect was lost");
}

#[test]
fn xdp_redirects_the_kernel_loses_are_counted_not_silent() {
    let lab = common::xdp_friendly_lab();
    let config = common::config_with(&lab, "[dataplane]\nxdp = \"required\"");
    let _masq = common::start_masq(&lab, &config);
    for program in ["masq_xdp_redirect_err", "masq_xdp_xmit"] {
        let pin = lab.pin_dir().join(format!("tracepoint-{program}"));
        assert!(pin.exists(), "{} pinned", pin.display());
    }
    let _udp = lab.serve_udp(Host::Isolde, UDP_PORT, REPLY).unwrap();
    let udp = lab.udp_request(Host::Client, PUBLIC_ISP_A, UDP_PORT, "ping?", TIMEOUT).unwrap();
    assert_eq!(udp.as_deref(), Some(REPLY));
    // The LAN switch's end of gw's eth0 loses its XDP program: a veth then drops every frame
    // redirected into its peer, as an Intel NIC without one does.
    lab.detach_peer_xdp(Host::Switch, "gw").unwrap();
    let before = common::counter(&lab, "drop_xdp_redirect");
    for _ in 0..5 {
        let lost = lab.udp_request(Host::Client, PUBLIC_ISP_A, UDP_PORT, "lost?", SHORT).unwrap();
        assert_eq!(lost, None, "the frame cannot reach isolde");
    }
    let lost = common::counter(&lab, "drop_xdp_redirect") - before;
    assert!(lost >= 5, "drop_xdp_redirect grew by {lost}");
    let stats = common::masq_cli(&lab, &["stats"]);
    let text = String::from_utf8_lossy(&stats.stdout);
    assert!(text.contains("drop_xdp_redirect"), "{text}");
}

#[test]
fn xdp_required_where_the_lan_cannot_take_redirects_refuses_to_start() {
    let lab = common::lab(GatewayMode::Bare);
    let config = common::config_with(&lab, "[dataplane]\nxdp = \"required\"");
    let err = lab
        .start_masq(&common::masq_bin(), &config, &lab.pin_dir(), &[])
        .err()
        .expect("masq must refuse xdp = \"required\" here");
    let text = format!("{err:#}");
    assert!(text.contains("required") && text.contains("eth0 cannot transmit"), "{text}");
    // Nothing was left attached.
    let pins: Vec<String> = std::fs::read_dir(lab.pin_dir())
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    assert!(pins.iter().all(|p| !p.starts_with("link-")), "links left pinned: {pins:?}");
}
