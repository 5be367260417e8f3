//! What the NAT RFCs ask of masq, end to end in the seed lab: an unsolicited SYN to an uplink
//! address gets no RST (RFC 5382 REQ-4), the gateway's own services still answer. Needs root;
//! run serially.
use std::{
    io::ErrorKind,
    net::{TcpListener, TcpStream},
    time::Duration,
};

use masq_user::lab::{CLIENT, GW_ISP_A, GatewayMode, Host, ISP_GW_SIDE_IFACE};

use crate::common;

#[test]
fn an_unsolicited_syn_to_an_uplink_address_gets_no_reset_but_the_gateways_own_service_answers() {
    let lab = common::lab(GatewayMode::Bare);
    let masq = common::start_masq(&lab, &common::example_config());
    let at_isp_a = lab.capture(Host::IspA, ISP_GW_SIDE_IFACE, "tcp").unwrap();
    let refused = lab
        .ns(Host::Client)
        .enter(|| TcpStream::connect_timeout(&(GW_ISP_A, 12345).into(), Duration::from_secs(2)))
        .map(|_| ErrorKind::Other)
        .unwrap_or_else(|e| e.kind());
    assert_eq!(refused, ErrorKind::TimedOut, "silence, not a reset");
    let _service = lab.ns(Host::Gw).enter(|| TcpListener::bind(("0.0.0.0", 2222))).unwrap();
    let reached = lab
        .ns(Host::Client)
        .enter(|| TcpStream::connect_timeout(&(GW_ISP_A, 2222).into(), Duration::from_secs(2)));
    assert!(reached.is_ok(), "the gateway's own service: {reached:?}");
    let lines = at_isp_a.stop().unwrap();
    let resets = lines
        .iter()
        .filter(|l| l.contains(&format!("{GW_ISP_A}.12345 > {CLIENT}")) && l.contains("[R"))
        .count();
    assert_eq!(resets, 0, "{}", lines.join("\n"));
    assert!(common::counter(&lab, "drop_unsolicited_syn") >= 1);
    drop(masq);
}
