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
    // By the daemon's pass in the kernel, not by reading the million-entry table out.
    let log = masq.log_text();
    assert!(log.contains("idle connections (in the kernel)"), "{log}");
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
