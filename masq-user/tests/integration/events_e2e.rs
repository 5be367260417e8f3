//! The record of every connection, end to end: `masq conns --watch` shows each connection
//! created and ended with its tuples, the event log holds the same lines, and events the
//! programs report while no daemon runs reach the next one's log. Needs root.
use std::{
    net::{Ipv4Addr, UdpSocket},
    path::Path,
    time::{Duration, Instant},
};

use masq_user::lab::{GatewayMode, Host};
use masq_user::seed::{CLIENT, GW_ISP_A, PUBLIC_ISP_A, TRISTAN};
use serde_json::Value;

use crate::common;

const ECHO_PORT: u16 = 3479;

/// The JSON lines of `path` so far.
fn json_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Wait (up to `secs`) until `path` holds a line `pick` accepts; returns it.
fn wait_for_line(path: &Path, secs: u64, pick: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = json_lines(path).into_iter().find(&pick) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "no such line in {}:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One datagram from tristan's `port` to the client's echo, and its answer.
fn udp_exchange(lab: &masq_user::lab::Lab, port: u16) {
    lab.ns(Host::Tristan).enter(move || {
        let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        let mut buf = [0u8; 64];
        for _ in 0..10 {
            socket.send_to(b"record me", (CLIENT, ECHO_PORT)).unwrap();
            if socket.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!("no answer from the client's echo");
    });
}

fn is(v: &Value, event: &str, proto: &str, src: Ipv4Addr, src_port: u16) -> bool {
    v["event"] == event
        && v["proto"] == proto
        && v["original"]["src"] == src.to_string()
        && v["original"]["src_port"] == src_port
}

#[test]
fn conns_watch_shows_each_connection_created_and_ended_with_its_tuples_and_the_log_keeps_them() {
    let lab = common::lab(GatewayMode::Bare);
    let log = lab.run_dir().join("events/conns.log");
    let config = common::config_with(
        &lab,
        &format!(
            "[events]\nlog = \"{}\"\n[dataplane.timeouts]\nudp = 2\nudp_stream = 2\n",
            log.display()
        ),
    );
    let masq = common::start_masq(&lab, &config);
    let pin_dir = lab.pin_dir();
    let watch = lab
        .spawn(
            Host::Gw,
            &[
                common::masq_bin().to_str().unwrap(),
                "conns",
                "--watch",
                "--json",
                "--pin-dir",
                pin_dir.to_str().unwrap(),
            ],
        )
        .unwrap();
    wait_for_line(watch.log_path(), 20, |v| v["event"] == "watching");
    let _echo = common::serve_peer_addr(lab.ns(Host::Client), ECHO_PORT);
    udp_exchange(&lab, 40100);
    let _http = common::serve_http(&lab, Host::Isolde, 80, b"hello");
    let body = common::curl(
        &lab,
        Host::Client,
        &format!("http://{PUBLIC_ISP_A}/"),
        Duration::from_secs(10),
    );
    assert_eq!(body.as_deref(), Some(&b"hello"[..]));

    // Outbound UDP: created with its public port (the client's own), ended by expiry with
    // what it carried.
    let new = wait_for_line(watch.log_path(), 10, |v| is(v, "new", "udp", TRISTAN, 40100));
    assert_eq!(new["direction"], "outbound");
    assert_eq!(new["original"]["dst"], CLIENT.to_string());
    assert_eq!(new["translated"]["src"], GW_ISP_A.to_string());
    assert_eq!(new["public"], serde_json::json!({"addr": GW_ISP_A.to_string(), "port": 40100}));
    assert_eq!(new["uplink_name"], "dsl");
    assert!(new["rule"].as_str().unwrap().starts_with("policy["), "{new}");
    let end = wait_for_line(watch.log_path(), 20, |v| is(v, "destroy", "udp", TRISTAN, 40100));
    assert_eq!(end["reason"], "expired");
    assert_eq!(end["created"], new["created"]);
    assert!(end["totals"]["packets_original"].as_u64().unwrap() >= 1, "{end}");
    assert!(end["totals"]["packets_reply"].as_u64().unwrap() >= 1, "{end}");

    // Inbound TCP to the published server, by its publish rule.
    let inbound = wait_for_line(watch.log_path(), 10, |v| {
        v["event"] == "new" && v["proto"] == "tcp" && v["direction"] == "inbound"
    });
    assert_eq!(inbound["original"]["src"], CLIENT.to_string());
    assert_eq!(inbound["original"]["dst"], PUBLIC_ISP_A.to_string());
    assert_eq!(inbound["translated"]["dst"], masq_user::seed::ISOLDE.to_string());
    assert!(inbound["rule"].as_str().unwrap().starts_with("publish["), "{inbound}");

    // The log has the same records.
    let logged = json_lines(&log);
    for want in [&new, &end, &inbound] {
        assert!(logged.contains(want), "{want} missing from the log");
    }
    assert_eq!(common::counter(&lab, "events_lost"), 0);
    drop(watch);
    drop(masq);
}

#[test]
fn connections_made_while_no_daemon_runs_reach_the_next_ones_log() {
    let lab = common::lab(GatewayMode::Bare);
    let log = lab.run_dir().join("conns.log");
    let config = common::config_with(&lab, &format!("[events]\nlog = \"{}\"\n", log.display()));
    let masq = common::start_masq(&lab, &config);
    let _echo = common::serve_peer_addr(lab.ns(Host::Client), ECHO_PORT);
    udp_exchange(&lab, 40200);
    wait_for_line(&log, 10, |v| is(v, "new", "udp", TRISTAN, 40200));
    masq.stop().unwrap();
    // The dataplane forwards on and keeps reporting into its pinned ring.
    udp_exchange(&lab, 40201);
    let masq = common::start_masq(&lab, &config);
    let new = wait_for_line(&log, 10, |v| is(v, "new", "udp", TRISTAN, 40201));
    assert_eq!(new["public"]["port"], 40201);
    drop(masq);
}
