//! The inbound path end to end: the client reaches isolde on both public addresses through `masq run`
//! in the seed lab, and every reply (TCP, UDP, ICMP echo, ICMP errors) leaves masq-gw by the uplink
//! its request came in on. Needs root; run serially (`--test-threads=1`).

use std::{net::Ipv4Addr, time::Duration};

use masq_user::lab::{GatewayMode, Host, ISP_GW_SIDE_IFACE, Lab, LabChild, count_from};
use masq_user::seed::{CLIENT, GW_ISP_A, GW_LAN, ISOLDE, PUBLIC_ISP_A, PUBLIC_ISP_B};
use serde_json::Value;

use crate::common;

const HTTP_PORT: u16 = 8080;
const UDP_PORT: u16 = 7777;
const REPLY: &str = "hello from isolde";
const TIMEOUT: Duration = Duration::from_secs(3);
const BIG: usize = 8 << 20;
const BIG_TIMEOUT: Duration = Duration::from_secs(30);
// Routers on the way (see lab.rs): core's and the ISP routers' link addresses.
const CORE_CLIENT_SIDE: Ipv4Addr = Ipv4Addr::new(64, 70, 12, 1);
const CORE_TO_ISP_A: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const CORE_TO_ISP_B: Ipv4Addr = Ipv4Addr::new(198, 18, 2, 1);
const ISP_A_CORE_SIDE: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const ISP_A_ROUTER: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 14);
const ISP_B_ROUTER: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 254);

/// A public address of isolde and the uplink that publishes it.
#[derive(Clone, Copy)]
struct Uplink {
    public: Ipv4Addr,
    /// Index in the config (`masq conns` "uplink").
    index: u64,
    isp: Host,
    other_isp: Host,
}

const DSL: Uplink =
    Uplink { public: PUBLIC_ISP_A, index: 0, isp: Host::IspA, other_isp: Host::IspB };
const ISP_B: Uplink =
    Uplink { public: PUBLIC_ISP_B, index: 1, isp: Host::IspB, other_isp: Host::IspA };

/// Captures every IPv4 packet on both ISP routers' gw-facing interfaces while `f` runs; returns
/// `f`'s result and the `tcpdump -n` lines seen at ISP A and at ISP B.
fn captured<T>(lab: &Lab, f: impl FnOnce() -> T) -> (T, [Vec<String>; 2]) {
    let captures = [Host::IspA, Host::IspB]
        .map(|isp| lab.capture(isp, ISP_GW_SIDE_IFACE, "ip").expect("tcpdump"));
    let result = f();
    (result, captures.map(|c| c.stop().expect("stopping tcpdump")))
}

/// The lines captured at `isp` out of [`captured`]'s pair.
fn at(lines: &[Vec<String>; 2], isp: Host) -> &[String] {
    &lines[usize::from(isp == Host::IspB)]
}

/// TCP (curl), UDP and ping from the client to `up.public`, each answered or not.
fn tcp_udp_ping(lab: &Lab, up: Uplink) -> [bool; 3] {
    let url = format!("http://{}:{HTTP_PORT}/", up.public);
    let tcp = common::curl(lab, Host::Client, &url, TIMEOUT);
    let udp = lab.udp_request(Host::Client, up.public, UDP_PORT, "ping?", TIMEOUT).unwrap();
    let ping = lab.ping(Host::Client, up.public, TIMEOUT).unwrap();
    if let Some(body) = &tcp {
        assert_eq!(body, REPLY.as_bytes(), "TCP answer from {}", up.public);
    }
    if let Some(text) = &udp {
        assert_eq!(text, REPLY, "UDP answer from {}", up.public);
    }
    [tcp.is_some(), udp.is_some(), ping]
}

/// Replies from `up.public` (TCP, UDP, echo reply) in capture `lines`, by kind.
fn replies_from(lines: &[String], up: Uplink) -> [usize; 3] {
    [
        common::sent_from(lines, &format!("{}.{HTTP_PORT}", up.public), "Flags ["),
        common::sent_from(lines, &format!("{}.{UDP_PORT}", up.public), "UDP"),
        common::sent_from(lines, &up.public.to_string(), "ICMP echo reply"),
    ]
}

/// The inbound connection from the client to `up.public` over `proto` in `masq conns --json`.
fn inbound_conn<'a>(conns: &'a [Value], proto: &str, up: Uplink) -> &'a Value {
    conns
        .iter()
        .find(|c| {
            c["proto"] == proto
                && c["direction"] == "inbound"
                && c["original"]["src"] == CLIENT.to_string()
                && c["original"]["dst"] == up.public.to_string()
        })
        .unwrap_or_else(|| {
            panic!("no inbound {proto} connection to {} in masq conns:\n{conns:#?}", up.public)
        })
}

/// masq (the example config, or with steering off), an HTTP server and a UDP echo on isolde.
fn start(lab: &Lab, steer: bool) -> [LabChild; 3] {
    let config = if steer {
        common::example_config()
    } else {
        common::config_with(lab, "[dataplane]\nsteer = false")
    };
    [
        common::start_masq(lab, &config),
        common::serve_http(lab, Host::Isolde, HTTP_PORT, REPLY.as_bytes()),
        lab.serve_udp(Host::Isolde, UDP_PORT, REPLY).unwrap(),
    ]
}

#[test]
fn tcp_udp_and_ping_to_each_public_address_are_answered_by_the_uplink_they_came_in_on() {
    let lab = common::lab(GatewayMode::Bare);
    let _running = start(&lab, true);

    for up in [DSL, ISP_B] {
        let (answered, lines) = captured(&lab, || tcp_udp_ping(&lab, up));
        assert_eq!(answered, [true; 3], "TCP, UDP, ping to {} answered", up.public);
        let (here, other) = (at(&lines, up.isp), at(&lines, up.other_isp));
        let replies = replies_from(here, up);
        assert!(
            replies.iter().all(|&n| n > 0),
            "TCP/UDP/echo replies from {} at {} (its uplink): {replies:?}; seen there:\n{}",
            up.public,
            up.isp,
            here.join("\n")
        );
        assert_eq!(
            count_from(other, up.public, None),
            0,
            "packets from {} left by {}'s link:\n{}",
            up.public,
            up.other_isp,
            other.join("\n")
        );
        for lines in [here, other] {
            assert_eq!(count_from(lines, ISOLDE, None), 0, "un-translated source");
        }
    }
    for isp in [Host::IspA, Host::IspB] {
        assert_eq!(lab.spoof_drops(isp), 0, "{isp} dropped packets as spoofed");
    }

    let conns = common::masq_conns(&lab);
    for up in [DSL, ISP_B] {
        for (proto, port) in [("tcp", Some(HTTP_PORT)), ("udp", Some(UDP_PORT)), ("icmp", None)] {
            let conn = inbound_conn(&conns, proto, up);
            assert_eq!(conn["uplink"], up.index, "uplink of {conn:#}");
            assert_eq!(conn["translated"]["dst"], ISOLDE.to_string(), "{conn:#}");
            if let Some(port) = port {
                assert_eq!(conn["original"]["dst_port"], port, "{conn:#}");
            }
        }
    }
    let inbound_new = common::counter(&lab, "inbound_new");
    assert!(inbound_new >= 6, "inbound_new = {inbound_new}, expected 6 connections");
}

#[test]
fn multi_megabyte_transfer_through_each_public_address_arrives_intact() {
    let lab = common::lab(GatewayMode::Bare);
    let _masq = common::start_masq(&lab, &common::example_config());
    let body = common::random_bytes(BIG);
    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, &body);

    for up in [DSL, ISP_B] {
        let url = format!("http://{}:{HTTP_PORT}/", up.public);
        let got = common::curl(&lab, Host::Client, &url, BIG_TIMEOUT)
            .unwrap_or_else(|| panic!("fetching {BIG} bytes from {url} failed"));
        assert_eq!(got.len(), body.len(), "bytes fetched from {url}");
        assert!(got == body, "the {BIG} bytes from {url} differ from isolde's");
        let conns = common::masq_conns(&lab);
        let conn = inbound_conn(&conns, "tcp", up);
        assert_eq!(conn["uplink"], up.index, "uplink of {conn:#}");
        let reply_bytes = conn["bytes_reply"].as_u64().unwrap_or(0);
        assert!(reply_bytes >= BIG as u64, "reply bytes counted: {conn:#}");
    }
    for isp in [Host::IspA, Host::IspB] {
        assert_eq!(lab.spoof_drops(isp), 0, "{isp} dropped packets as spoofed");
    }
}

#[test]
fn traceroute_through_the_dsl_address_gets_its_icmp_errors_back() {
    let lab = common::lab(GatewayMode::Bare);
    let _masq = common::start_masq(&lab, &common::example_config());
    // A first exchange resolves ISP A's next hop, which masq needs to send gw's own errors back.
    assert!(lab.ping(Host::Client, PUBLIC_ISP_A, Duration::from_secs(3)).unwrap());

    // Inbound: routers on the way, then isolde's port unreachable translated to 67.17.28.10.
    let (hops, lines) = captured(&lab, || common::traceroute(&lab, Host::Client, PUBLIC_ISP_A));
    assert_eq!(hops.len(), 4, "client -> {PUBLIC_ISP_A} hops: {hops:?}");
    assert_eq!(hops[..2], [Some(CORE_CLIENT_SIDE), Some(ISP_A_CORE_SIDE)], "{hops:?}");
    // gw's own time-exceeded: main routes it out of ISP B; masq sends it back by ISP A, from
    // ISP A's address, as the client expects.
    assert_eq!(hops[2], Some(GW_ISP_A), "{hops:?}");
    assert!(common::counter(&lab, "own_icmp_error_returned") > 0);
    assert_eq!(hops[3], Some(PUBLIC_ISP_A), "last hop: {hops:?}");
    let (at_a, at_b) = (at(&lines, Host::IspA), at(&lines, Host::IspB));
    // The outer source and the quoted destination are both the public address.
    let unreachable = format!("ICMP {PUBLIC_ISP_A} udp port 33434 unreachable");
    assert!(
        common::sent_from(at_a, &PUBLIC_ISP_A.to_string(), &unreachable) > 0,
        "port unreachable from {PUBLIC_ISP_A} should leave by eth4; ISP A saw:\n{}",
        at_a.join("\n")
    );
    assert_eq!(count_from(at_b, PUBLIC_ISP_A, None), 0, "ISP B saw:\n{}", at_b.join("\n"));
    for lines in [at_a, at_b] {
        assert_eq!(count_from(lines, ISOLDE, None), 0, "un-translated source");
    }

    // Outbound, masqueraded: time-exceeded from core and the ISP router come back through masq.
    for (host, via) in [
        (Host::Isolde, [ISP_B_ROUTER, CORE_TO_ISP_B]),
        (Host::Tristan, [ISP_A_ROUTER, CORE_TO_ISP_A]),
    ] {
        let before = common::counter(&lab, "icmp_error_translated");
        let hops = common::traceroute(&lab, host, CLIENT);
        let expected = [GW_LAN, via[0], via[1], CLIENT].map(Some);
        assert_eq!(hops, expected, "{host} -> {CLIENT} hops");
        let translated = common::counter(&lab, "icmp_error_translated") - before;
        assert!(translated >= 3, "{host}: {translated} ICMP errors translated");
    }
    for isp in [Host::IspA, Host::IspB] {
        assert_eq!(lab.spoof_drops(isp), 0, "{isp} dropped packets as spoofed");
    }
}

/// A 1280-byte link between core and ISP A, both ends at 1500 (so the client's MSS stays 1460):
/// ISP A answers isolde's full-size segments with frag-needed to 67.17.28.10, and masq must hand
/// them to isolde for the transfer to complete.
#[test]
fn path_mtu_discovery_works_through_masq() {
    let lab = common::lab(GatewayMode::Bare);
    let _masq = common::start_masq(&lab, &common::example_config());
    let body = common::random_bytes(BIG);
    let _http = common::serve_http(&lab, Host::Isolde, HTTP_PORT, &body);
    lab.ns(Host::Core).run_ok("ip link set to-ispa mtu 1280").unwrap();
    lab.ns(Host::IspA).run_ok("ip link set to-core mtu 1280").unwrap();

    let before = common::counter(&lab, "icmp_error_translated");
    let url = format!("http://{PUBLIC_ISP_A}:{HTTP_PORT}/");
    let got = common::curl(&lab, Host::Client, &url, BIG_TIMEOUT)
        .unwrap_or_else(|| panic!("fetching {BIG} bytes from {url} over a 1280 MTU hop failed"));
    assert!(got == body, "the bytes from {url} differ from isolde's");
    let translated = common::counter(&lab, "icmp_error_translated") - before;
    assert!(translated > 0, "no frag-needed translated toward isolde");
    let route = lab.ns(Host::Isolde).run_ok(&format!("ip route get {CLIENT}")).unwrap();
    assert!(route.contains("mtu 1280"), "isolde's route to the client: {route}");
    assert_eq!(lab.spoof_drops(Host::IspB), 0, "ISP B dropped packets as spoofed");
}

/// The control: with steering off, replies for the DSL address follow the main table out of eth1
/// and ISP B drops them, so the tests above cannot pass by accident.
#[test]
fn without_masq_steering_the_dsl_address_fails() {
    let lab = common::lab(GatewayMode::Bare);
    let _running = start(&lab, false);

    let drops_before = lab.spoof_drops(Host::IspB);
    let (answered, lines) = captured(&lab, || tcp_udp_ping(&lab, DSL));
    assert_eq!(answered, [false; 3], "TCP, UDP, ping to {PUBLIC_ISP_A} answered");
    let drops = lab.spoof_drops(Host::IspB) - drops_before;
    assert!(drops >= 3, "ISP B dropped {drops} packets as spoofed");
    // masq translated the replies; they just left by the wrong uplink.
    let at_b = at(&lines, Host::IspB);
    assert!(
        replies_from(at_b, DSL).iter().all(|&n| n > 0),
        "replies from {PUBLIC_ISP_A} at ISP B:\n{}",
        at_b.join("\n")
    );
    assert_eq!(count_from(at(&lines, Host::IspA), PUBLIC_ISP_A, None), 0);

    let answered = tcp_udp_ping(&lab, ISP_B);
    assert_eq!(answered, [true; 3], "TCP, UDP, ping to {PUBLIC_ISP_B} answered");
    assert_eq!(lab.spoof_drops(Host::IspA), 0, "ISP A dropped packets as spoofed");
}

/// The other direction: the LAN link is narrower than what isolde announces (gw's eth0 at 1400,
/// isolde at 1500), so gw itself sends the client fragmentation-needed about its upload. masq
/// translates it back to the published address and sends it by ISP A, and the upload completes.
#[test]
fn path_mtu_discovery_works_for_an_upload_through_a_narrower_lan_link() {
    use std::io::{Read as _, Write as _};
    let lab = common::lab(GatewayMode::Bare);
    lab.ns(Host::Gw).run_ok("ip link set eth0 mtu 1400").unwrap();
    let _masq = common::start_masq(&lab, &common::example_config());
    let listener =
        lab.ns(Host::Isolde).enter(|| std::net::TcpListener::bind(("0.0.0.0", 8084)).unwrap());
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        s.write_all(got.len().to_string().as_bytes()).unwrap();
    });
    let body = common::random_bytes(BIG);
    let sent = body.len();
    let reply = lab.ns(Host::Client).enter(move || -> std::io::Result<String> {
        let addr = std::net::SocketAddr::from((PUBLIC_ISP_A, 8084));
        let mut s = std::net::TcpStream::connect_timeout(&addr, TIMEOUT)?;
        s.set_read_timeout(Some(BIG_TIMEOUT))?;
        s.set_write_timeout(Some(BIG_TIMEOUT))?;
        s.write_all(&body)?;
        s.shutdown(std::net::Shutdown::Write)?;
        let mut reply = String::new();
        s.read_to_string(&mut reply)?;
        Ok(reply)
    });
    let reply = reply.unwrap_or_else(|e| panic!("the upload of {sent} bytes stalled: {e}"));
    assert_eq!(reply, sent.to_string(), "isolde received the whole upload");
    server.join().unwrap();
    assert!(common::counter(&lab, "egress_translated") > 0, "gw's frag-needed translated");
    let route = lab.ns(Host::Client).run_ok(&format!("ip route get {PUBLIC_ISP_A}")).unwrap();
    assert!(route.contains("mtu 1400"), "the client's route learned the MTU: {route}");
}
