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
