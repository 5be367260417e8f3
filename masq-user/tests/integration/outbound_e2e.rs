//! The outbound path end to end, through the real loader in the seed lab: masquerade behind the
//! uplink a policy picks, per-port policies, weighted and sticky balancing, the gateway's own
//! traffic, inbound and outbound together, and the policy tables following main's routes.
//! Needs root; run serially (`--test-threads=1`).

use std::{
    fs,
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::PathBuf,
    process::Command,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use masq_user::lab::{GatewayMode, Host, ISP_GW_SIDE_IFACE, Lab, LabChild, packet_sources};
use masq_user::seed::{CLIENT, GW_ISP_A, GW_ISP_B, ISOLDE, PUBLIC_ISP_A, TRISTAN};

use crate::common;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Where the client's peer-address server listens (TCP and UDP).
const PORT: u16 = 8080;
/// The example's policies: tristan by DSL, everything else by ISP B.
fn example_policies() -> String {
    format!(
        "[[policy]]\nfrom = \"{TRISTAN}/32\"\nuplink = \"dsl\"\n\n[[policy]]\nuplink = \"isp-b\"\n"
    )
}

/// The example config with its `[[policy]]` blocks replaced by `policies`, written to the run dir.
fn config_with_policies(lab: &Lab, policies: &str) -> PathBuf {
    let example = fs::read_to_string(common::example_config()).unwrap();
    let mut text = String::new();
    let mut in_policy = false;
    for line in example.lines() {
        if line.trim_start().starts_with('[') {
            in_policy = line.trim() == "[[policy]]";
        }
        if !in_policy {
            text += line;
            text.push('\n');
        }
    }
    text += "\n";
    text += policies;
    let path = lab.run_dir().join("outbound.toml");
    fs::write(&path, text).unwrap();
    path
}

/// A lab with masq on gw running the example config, its policies replaced when `policies` is
/// given. Declare servers after it, so that they stop before the lab goes.
fn lab_with_policies(policies: Option<&str>) -> (Lab, LabChild) {
    let lab = common::lab(GatewayMode::Bare);
    let config = match policies {
        Some(policies) => config_with_policies(&lab, policies),
        None => common::example_config(),
    };
    let masq =
        lab.start_masq(&common::masq_bin(), &config, &lab.pin_dir(), &[]).expect("masq starts");
    (lab, masq)
}

fn peer(reply: Option<String>) -> Option<Ipv4Addr> {
    Some(*reply?.parse::<SocketAddrV4>().ok()?.ip())
}

/// The source address the client saw for a TCP connection from `host` to `port`.
fn tcp_seen(lab: &Lab, host: Host, port: u16) -> Option<Ipv4Addr> {
    peer(lab.tcp_request(host, CLIENT, port, TIMEOUT).unwrap())
}

/// The source address the client saw for a UDP datagram from `host` to `port`.
fn udp_seen(lab: &Lab, host: Host, port: u16) -> Option<Ipv4Addr> {
    peer(lab.udp_request(host, CLIENT, port, "hi", TIMEOUT).unwrap())
}

/// `masq stats` and `masq conns` output, for failure messages.
fn dataplane_state(lab: &Lab) -> String {
    let pin_dir = lab.pin_dir();
    ["stats", "conns"]
        .map(|what| {
            let out = Command::new(common::masq_bin())
                .args([what, "--pin-dir"])
                .arg(&pin_dir)
                .output()
                .unwrap();
            format!("## masq {what}\n{}", String::from_utf8_lossy(&out.stdout))
        })
        .join("\n")
}

/// Packets in `lines` from `src` whose line contains `what`.
fn sent(lines: &[String], src: Ipv4Addr, what: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.contains(what))
        .filter(|l| packet_sources(std::slice::from_ref(l)).first().map(|s| s.0) == Some(src))
        .count()
}

/// Captures `filter` on both ISP routers' gw-facing side while `f` runs: (ISP A's, ISP B's) lines.
fn captured_at_isps(lab: &Lab, filter: &str, f: impl FnOnce()) -> (Vec<String>, Vec<String>) {
    let a = lab.capture(Host::IspA, ISP_GW_SIDE_IFACE, filter).unwrap();
    let b = lab.capture(Host::IspB, ISP_GW_SIDE_IFACE, filter).unwrap();
    f();
    (a.stop().unwrap(), b.stop().unwrap())
}

#[test]
fn lan_hosts_reach_the_client_masqueraded_behind_the_uplink_policy_picks() {
    let (lab, _masq) = lab_with_policies(None);
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);

    for (host, expected) in [(Host::Tristan, GW_ISP_A), (Host::Isolde, GW_ISP_B)] {
        let (at_a, at_b) = captured_at_isps(&lab, &format!("host {CLIENT}"), || {
            assert_eq!(tcp_seen(&lab, host, PORT), Some(expected), "{host} TCP");
            assert_eq!(udp_seen(&lab, host, PORT), Some(expected), "{host} UDP");
            assert!(lab.ping(host, CLIENT, TIMEOUT).unwrap(), "{host} ping");
        });
        let (carrier, other) = if expected == GW_ISP_A { (&at_a, &at_b) } else { (&at_b, &at_a) };
        let both = format!("ISP A saw:\n{}\nISP B saw:\n{}", at_a.join("\n"), at_b.join("\n"));
        for what in ["Flags [S]", "UDP,", "ICMP echo request"] {
            assert!(
                sent(carrier, expected, what) > 0,
                "{host}: no {what:?} from {expected} on its uplink\n{both}"
            );
        }
        assert_eq!(sent(other, expected, ""), 0, "{host}: {expected} on the other uplink\n{both}");
        for lan in [ISOLDE, TRISTAN] {
            assert_eq!(
                sent(&at_a, lan, "") + sent(&at_b, lan, ""),
                0,
                "{host}: {lan} leaked\n{both}"
            );
        }
    }
    assert!(common::counter(&lab, "outbound_new") >= 6, "outbound_new\n{}", dataplane_state(&lab));
    for isp in [Host::IspA, Host::IspB] {
        assert_eq!(lab.spoof_drops(isp), 0, "{isp} dropped something as spoofed");
    }
}

#[test]
fn per_destination_port_policy_overrides_the_default() {
    let policies = format!(
        "[[policy]]\nproto = \"tcp\"\nport = 8443\nuplink = \"dsl\"\n\n{}",
        example_policies()
    );
    let (lab, _masq) = lab_with_policies(Some(&policies));
    let _https = common::serve_peer_addr(lab.ns(Host::Client), 8443);
    let _http = common::serve_peer_addr(lab.ns(Host::Client), PORT);

    assert_eq!(tcp_seen(&lab, Host::Isolde, 8443), Some(GW_ISP_A), "tcp/8443 by dsl");
    assert_eq!(tcp_seen(&lab, Host::Isolde, PORT), Some(GW_ISP_B), "tcp/8080 by default");
    // The rule is TCP only: UDP to 8443 takes the default.
    assert_eq!(udp_seen(&lab, Host::Isolde, 8443), Some(GW_ISP_B), "udp/8443 by default");
}

#[test]
fn weighted_policy_splits_connections_by_weight() {
    let (lab, _masq) = lab_with_policies(Some("[[policy]]\nuplinks = { dsl = 1, isp-b = 3 }\n"));
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);

    const PER_HOST: usize = 200;
    let (mut dsl, mut isp_b) = (0usize, 0usize);
    for host in [Host::Isolde, Host::Tristan] {
        for i in 0..PER_HOST {
            match tcp_seen(&lab, host, PORT) {
                Some(GW_ISP_A) => dsl += 1,
                Some(GW_ISP_B) => isp_b += 1,
                seen => {
                    panic!("{host} connection {i}: client saw {seen:?}\n{}", dataplane_state(&lab))
                }
            }
        }
    }
    // Each connection picks dsl with p = 1/4 (weights 1:3), independently as their tuples differ:
    // dsl ~ Binomial(n = 400, p = 0.25), mean 100, sigma = sqrt(n p (1-p)) ≈ 8.66. Four sigma
    // (±34.6 connections, ±8.7 percentage points: share within 16.3%..33.7%) fails a correct
    // dataplane about once in 16,000 runs.
    let n = (dsl + isp_b) as f64;
    let (p, sigma) = (0.25, (n * 0.25 * 0.75).sqrt());
    eprintln!("weighted: dsl {dsl}, isp-b {isp_b} (dsl share {:.1}%)", 100.0 * dsl as f64 / n);
    assert!(
        (dsl as f64 - n * p).abs() <= 4.0 * sigma,
        "dsl got {dsl} of {n} connections, expected {} ± {:.1} (4 sigma)",
        n * p,
        4.0 * sigma
    );
}

#[test]
fn sticky_policy_keeps_one_source_on_one_uplink() {
    let (lab, _masq) =
        lab_with_policies(Some("[[policy]]\nuplinks = { dsl = 1, isp-b = 1 }\nsticky = true\n"));
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);

    for host in [Host::Isolde, Host::Tristan] {
        let seen: Vec<_> = (0..30).map(|_| tcp_seen(&lab, host, PORT)).collect();
        let first = seen[0];
        assert!(matches!(first, Some(GW_ISP_A | GW_ISP_B)), "{host}: client saw {first:?}");
        assert!(seen.iter().all(|s| *s == first), "{host} changed uplink: {seen:?}");
        eprintln!("sticky: {host} always seen as {}", first.unwrap());
    }
}

#[test]
fn gateway_own_traffic_leaves_by_the_uplink_of_its_source_address() {
    let lab = common::lab(GatewayMode::Bare);
    let ping_from = |src: Ipv4Addr, dst: Ipv4Addr| {
        let (src, dst) = (src.to_string(), dst.to_string());
        let args = ["ping", "-n", "-q", "-c", "1", "-W", "3", "-I", &src, &dst];
        lab.exec(Host::Gw, &args).unwrap().status.success()
    };

    // Without masq, main's default route sends 67.17.28.12 out of eth1 and ISP B drops it.
    let drops = lab.spoof_drops(Host::IspB);
    assert!(!ping_from(GW_ISP_A, CLIENT), "without masq, from {GW_ISP_A}");
    assert!(lab.spoof_drops(Host::IspB) > drops, "ISP B spoof drops");

    let _masq = lab
        .start_masq(&common::masq_bin(), &common::example_config(), &lab.pin_dir(), &[])
        .expect("masq starts");
    let (at_a, at_b) = captured_at_isps(&lab, "icmp", || {
        assert!(ping_from(GW_ISP_A, CLIENT), "from {GW_ISP_A}");
        assert!(ping_from(GW_ISP_B, CLIENT), "from {GW_ISP_B}");
    });
    let both = format!("ISP A saw:\n{}\nISP B saw:\n{}", at_a.join("\n"), at_b.join("\n"));
    let request = "ICMP echo request";
    assert!(sent(&at_a, GW_ISP_A, request) > 0, "{both}");
    assert!(sent(&at_b, GW_ISP_B, request) > 0, "{both}");
    assert_eq!(sent(&at_a, GW_ISP_B, request), 0, "{both}");
    assert_eq!(sent(&at_b, GW_ISP_A, request), 0, "{both}");

    for isp_gateway in [Ipv4Addr::new(67, 17, 28, 14), Ipv4Addr::new(205, 254, 211, 254)] {
        assert!(lab.ping(Host::Gw, isp_gateway, TIMEOUT).unwrap(), "gw -> {isp_gateway}");
    }
}

#[test]
fn inbound_and_outbound_run_together_without_interfering() {
    let (lab, _masq) = lab_with_policies(None);
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);
    // 4 MiB of numbered lines, published on isolde (serve_tcp adds a newline).
    let content: String = (0..512 * 1024).map(|i| format!("{i:07}\n")).collect();
    let _published = lab.serve_tcp(Host::Isolde, 9000, &content).unwrap();
    let expected = content + "\n";

    // The client reads the first 64 KiB, then waits while the LAN hosts connect out, then reads
    // the rest: the published connection is mid-transfer, with full buffers, meanwhile.
    let (started_tx, started_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let received = thread::scope(|s| {
        let client = lab.ns(Host::Client);
        let transfer = s.spawn(move || {
            client.enter(move || -> std::io::Result<Vec<u8>> {
                let to = SocketAddr::from((PUBLIC_ISP_A, 9000));
                let mut stream = TcpStream::connect_timeout(&to, TIMEOUT)?;
                stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                let mut data = vec![0; 64 * 1024];
                stream.read_exact(&mut data)?;
                started_tx.send(()).unwrap();
                let _ = go_rx.recv();
                stream.read_to_end(&mut data)?;
                Ok(data)
            })
        });
        if started_rx.recv_timeout(Duration::from_secs(30)).is_ok() {
            for (host, expected) in [(Host::Isolde, GW_ISP_B), (Host::Tristan, GW_ISP_A)] {
                for _ in 0..5 {
                    assert_eq!(tcp_seen(&lab, host, PORT), Some(expected), "{host} TCP");
                    assert_eq!(udp_seen(&lab, host, PORT), Some(expected), "{host} UDP");
                }
            }
        }
        drop(go_tx);
        transfer.join().unwrap()
    });
    let received = received.unwrap_or_else(|err| {
        panic!("transfer from {PUBLIC_ISP_A}:9000: {err}\n{}", dataplane_state(&lab))
    });
    assert_eq!(received.len(), expected.len(), "bytes received");
    assert!(received == expected.as_bytes(), "transfer content differs");
}

#[test]
fn route_added_to_main_follows_into_the_uplink_tables() {
    let (lab, _masq) = lab_with_policies(None);
    let gw = lab.ns(Host::Gw);
    let route = format!("10.99.0.0/24 via {ISOLDE}");
    let in_tables = || {
        [201, 202].map(|t| {
            let table = gw.run_ok(&format!("ip -4 route show table {t}")).unwrap();
            table.lines().any(|l| l.starts_with(&route))
        })
    };
    // Polls up to 10 s (the machine is shared); the monitor syncs within about a second.
    let wait_until = |want: bool| {
        let start = Instant::now();
        while in_tables() != [want; 2] && start.elapsed() < Duration::from_secs(10) {
            thread::sleep(Duration::from_millis(20));
        }
        (in_tables(), start.elapsed())
    };

    assert_eq!(in_tables(), [false; 2]);
    gw.run_ok(&format!("ip route add {route}")).unwrap();
    let (present, took) = wait_until(true);
    eprintln!("route appeared in tables 201/202 after {took:?}");
    assert_eq!(present, [true; 2], "tables 201, 202 after {took:?}");

    gw.run_ok(&format!("ip route del {route}")).unwrap();
    let (present, took) = wait_until(false);
    eprintln!("route left tables 201/202 after {took:?}");
    assert_eq!(present, [false; 2], "tables 201, 202 after {took:?}");
}

#[test]
fn new_connections_fail_over_while_an_uplink_has_no_carrier() {
    let (lab, masq) = lab_with_policies(None);
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PORT);
    assert_eq!(tcp_seen(&lab, Host::Tristan, PORT), Some(GW_ISP_A), "tristan's policy: dsl");

    // ISP A's line fails: gw's eth4 loses its carrier. tristan's policy names dsl alone, so
    // his new connections fall through to the next rule, the default (isp-b).
    lab.ns(Host::IspA).run_ok("ip link set to-gw down").unwrap();
    let seen_until = |want: Ipv4Addr| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = tcp_seen(&lab, Host::Tristan, PORT);
            if seen == Some(want) || Instant::now() > deadline {
                return seen;
            }
            thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(seen_until(GW_ISP_B), Some(GW_ISP_B), "after dsl lost its carrier");
    assert!(masq.log_text().contains("uplink dsl (eth4) is down"), "{}", masq.log_text());

    // The line is back: new connections take dsl again.
    lab.ns(Host::IspA).run_ok("ip link set to-gw up").unwrap();
    assert_eq!(seen_until(GW_ISP_A), Some(GW_ISP_A), "after dsl came back");
    assert!(masq.log_text().contains("uplink dsl (eth4) is up"), "{}", masq.log_text());
}
