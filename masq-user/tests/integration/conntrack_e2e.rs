//! The connection table at work: idle connections expire by their state's timeout, in a table
//! sized for a million connections.
use std::{
    thread,
    time::{Duration, Instant},
};

use masq_user::lab::{GatewayMode, Host};
use masq_user::seed::{PUBLIC_ISP_A, PUBLIC_ISP_B};

use crate::common;

#[test]
fn idle_connections_expire_by_their_state_timeout() {
    let lab = common::lab(GatewayMode::Bare);
    let extra = "[dataplane]\nconn_capacity = 1048576\n[dataplane.timeouts]\nicmp = 3\nudp = 3\n";
    let config = common::config_with(&lab, extra);
    let masq = common::start_masq(&lab, &config);

    assert!(lab.ping(Host::Client, PUBLIC_ISP_A, Duration::from_secs(3)).unwrap());
    let protos = |conns: &[serde_json::Value]| {
        let mut p: Vec<String> = conns.iter().map(|c| c["proto"].to_string()).collect();
        p.sort();
        p
    };
    let conns = common::masq_conns(&lab);
    assert!(protos(&conns).contains(&"\"icmp\"".to_string()), "{conns:?}");

    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let conns = common::masq_conns(&lab);
        if !protos(&conns).contains(&"\"icmp\"".to_string()) {
            break;
        }
        assert!(Instant::now() < deadline, "the idle ping was not expired: {conns:?}");
        thread::sleep(Duration::from_millis(250));
    }
    // A million-connection table this empty is read out: a walk in the kernel would cost
    // every one of its buckets.
    let log = masq.log_text();
    assert!(log.contains("idle connections (read out)"), "{log}");
    // The pins live on the host's bpffs: the CLI reads them from any namespace.
    let status = std::process::Command::new(common::masq_bin())
        .args(["status", "--json", "--pin-dir"])
        .arg(lab.pin_dir())
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(status["connections"]["capacity"], 1_048_576, "{status}");
    // The big table forwards like the default one.
    assert!(lab.ping(Host::Client, PUBLIC_ISP_B, Duration::from_secs(3)).unwrap());
}

/// In a table small enough that its walk costs nothing, the daemon's pass runs in the kernel
/// (`masq_expire`).
#[test]
fn idle_connections_expire_in_the_kernel_and_the_others_stay() {
    let lab = common::lab(GatewayMode::Bare);
    let extra = "[dataplane]\nconn_capacity = 4096\n[dataplane.timeouts]\nicmp = 3\n";
    let config = common::config_with(&lab, extra);
    let masq = common::start_masq(&lab, &config);
    assert!(lab.ping(Host::Client, PUBLIC_ISP_A, Duration::from_secs(3)).unwrap());
    let conns = common::masq_conns(&lab);
    assert_eq!(conns.len(), 1, "{conns:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !common::masq_conns(&lab).is_empty() {
        assert!(Instant::now() < deadline, "the idle ping was not expired");
        thread::sleep(Duration::from_millis(250));
    }
    let log = masq.log_text();
    assert!(log.contains("expired 1 idle connections (in the kernel)"), "{log}");
}

/// Over the daemon's passes in the kernel, an outbound flow that stays busy keeps its public
/// port (the walk stamps its binding), and one that went idle is removed with its binding.
#[test]
fn a_busy_flow_keeps_its_binding_over_the_kernel_passes_and_an_idle_one_loses_it() {
    use std::net::{Ipv4Addr, UdpSocket};

    use masq_user::seed::CLIENT;

    let lab = common::lab(GatewayMode::Bare);
    let extra =
        "[dataplane]\nconn_capacity = 4096\n[dataplane.timeouts]\nudp = 3\nudp_stream = 3\n";
    let config = common::config_with(&lab, extra);
    let masq = common::start_masq(&lab, &config);
    let _server = lab.serve_udp(Host::Client, 3478, "seen").unwrap();
    // isolde sends once and goes quiet.
    let once = lab.udp_request(Host::Isolde, CLIENT, 3478, "once", Duration::from_secs(3));
    assert_eq!(once.unwrap().as_deref(), Some("seen"));
    // tristan sends every 300 ms for 14 s (passes come every 3 s, the shortest timeout).
    let busy = Duration::from_secs(14);
    thread::scope(|s| {
        s.spawn(|| {
            lab.ns(Host::Tristan).enter(move || {
                let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 40100)).unwrap();
                let deadline = Instant::now() + busy;
                while Instant::now() < deadline {
                    socket.send_to(b"busy", (CLIENT, 3478)).unwrap();
                    thread::sleep(Duration::from_millis(300));
                }
            })
        });
        thread::sleep(busy - Duration::from_secs(2));
        let conns = common::masq_conns(&lab);
        assert_eq!(conns.len(), 1, "isolde's flow expired, tristan's kept: {conns:#?}");
        let tables = masq_user::pinned::binding_tables(&lab.pin_dir()).unwrap();
        let held = tables.held_ports();
        assert_eq!(held.len(), 1, "{held:?}");
        assert_eq!(
            (held[0].1.owner.int_addr, u16::from_be(held[0].1.owner.int_port)),
            (masq_user::map_values::wire_addr(masq_user::seed::TRISTAN), 40100)
        );
    });
    let log = masq.log_text();
    assert!(log.contains("idle connections (in the kernel)"), "{log}");
}
