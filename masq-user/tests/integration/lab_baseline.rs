//! The lab without masq: the textbook DNAT setup fails the way TOPOLOGY.md says, and the classic
//! recipe works. This proves the lab reproduces the problem masq solves. Needs root; run serially.

use std::time::Duration;

use masq_user::lab::{GatewayMode, Host, ISP_GW_SIDE_IFACE, count_from};
use masq_user::seed::{ISOLDE, PUBLIC_ISP_A, PUBLIC_ISP_B};

use crate::common;

const REPLY: &str = "hello from isolde";
const TIMEOUT: Duration = Duration::from_secs(3);

#[test]
fn plain_dnat_reply_for_isp_a_address_is_dropped_by_isp_b() {
    let lab = common::lab(GatewayMode::PlainDnat);
    let _server = lab.serve_tcp(Host::Isolde, 80, REPLY).unwrap();

    let via_b = lab.tcp_request(Host::Client, PUBLIC_ISP_B, 80, TIMEOUT).unwrap();
    assert_eq!(via_b.as_deref(), Some(REPLY), "request to {PUBLIC_ISP_B}:80");

    let drops_before = lab.spoof_drops(Host::IspB);
    let via_a = lab.tcp_request(Host::Client, PUBLIC_ISP_A, 80, TIMEOUT).unwrap();
    assert_eq!(via_a, None, "the reply for {PUBLIC_ISP_A} should not reach the client");
    let drops_after = lab.spoof_drops(Host::IspB);
    assert!(
        drops_after > drops_before,
        "ISP B should have dropped the reply sourced from {PUBLIC_ISP_A} as spoofed \
         (counter {drops_before} -> {drops_after})"
    );
    assert_eq!(lab.spoof_drops(Host::IspA), 0, "ISP A dropped something as spoofed");
}

#[test]
fn classic_recipe_answers_on_both_public_addresses() {
    let lab = common::lab(GatewayMode::Classic);
    let _server = lab.serve_tcp(Host::Isolde, 80, REPLY).unwrap();
    let at_isp_a = lab.capture(Host::IspA, ISP_GW_SIDE_IFACE, "tcp src port 80").unwrap();
    let at_isp_b = lab.capture(Host::IspB, ISP_GW_SIDE_IFACE, "tcp src port 80").unwrap();

    for public in [PUBLIC_ISP_A, PUBLIC_ISP_B] {
        let reply = lab.tcp_request(Host::Client, public, 80, TIMEOUT).unwrap();
        assert_eq!(reply.as_deref(), Some(REPLY), "request to {public}:80");
    }

    let at_isp_a = at_isp_a.stop().unwrap();
    let at_isp_b = at_isp_b.stop().unwrap();
    let port = Some(80);
    assert!(
        count_from(&at_isp_a, PUBLIC_ISP_A, port) > 0,
        "the reply from {PUBLIC_ISP_A} should leave gw by eth4 (ISP A); ISP A saw:\n{}",
        at_isp_a.join("\n")
    );
    assert!(
        count_from(&at_isp_b, PUBLIC_ISP_B, port) > 0,
        "the reply from {PUBLIC_ISP_B} should leave gw by eth1 (ISP B); ISP B saw:\n{}",
        at_isp_b.join("\n")
    );
    assert_eq!(count_from(&at_isp_b, PUBLIC_ISP_A, port), 0, "{PUBLIC_ISP_A} reply at ISP B");
    assert_eq!(count_from(&at_isp_a, PUBLIC_ISP_B, port), 0, "{PUBLIC_ISP_B} reply at ISP A");
    for isp in [Host::IspA, Host::IspB] {
        assert_eq!(count_from(&at_isp_a, ISOLDE, None), 0, "un-NATed source seen at {isp}");
        assert_eq!(lab.spoof_drops(isp), 0, "{isp} dropped something as spoofed");
    }
}
