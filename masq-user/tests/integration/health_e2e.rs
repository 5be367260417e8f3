//! Uplink health end to end in the seed lab: ISP A's router stops forwarding while its link
//! and address stay up, drops a share of what it forwards, answers slowly, or drops only TCP;
//! masq's probes (leaving by dsl whatever main's default route says) and the dataplane's SYN
//! counters take dsl down and back, and new connections follow. Needs root; run serially.
use std::{
    fs,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use masq_user::lab::{GatewayMode, Host, ISP_GW_SIDE_IFACE, Lab, example_with_dsl};
use masq_user::seed::{CLIENT, GW_ISP_A, GW_ISP_B, ISOLDE, ISP_B_ROUTER, PUBLIC_ISP_B, TRISTAN};
use serde_json::Value;

use crate::common;

const TIMEOUT: Duration = Duration::from_secs(5);
/// The client's peer-address server (TCP and UDP).
const PEER_PORT: u16 = 8080;
/// An address on the client's LAN that nobody has: probes to it are never answered.
const NOBODY: Ipv4Addr = Ipv4Addr::new(64, 70, 12, 99);

/// The example config with `dsl` added to dsl's `[[uplink]]` (its keys, then
/// `[uplink.health]`) and `extra` at the end.
fn config(lab: &Lab, dsl: &str, extra: &str) -> PathBuf {
    let path = lab.run_dir().join("health.toml");
    fs::write(&path, format!("{}\n{extra}\n", example_with_dsl(dsl))).unwrap();
    path
}

/// `masq uplinks --json`, the entry of `name`.
fn uplink(lab: &Lab, name: &str) -> Value {
    let out = common::masq_cli(lab, &["uplinks", "--json"]);
    assert!(out.status.success(), "masq uplinks: {}", String::from_utf8_lossy(&out.stderr));
    let all: Vec<Value> = serde_json::from_slice(&out.stdout).expect("masq uplinks --json");
    all.into_iter().find(|u| u["name"] == name).unwrap_or_else(|| panic!("no uplink {name}"))
}

/// Poll `masq uplinks --json` until `ok` holds for `name`; the entry then, or a panic naming
/// what it was last.
#[track_caller]
fn wait_uplink(
    lab: &Lab,
    name: &str,
    within: Duration,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let u = uplink(lab, name);
        if ok(&u) {
            return u;
        }
        if Instant::now() > deadline {
            panic!("{name}: {what} not within {within:?}; last: {u:#}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn is_up(u: &Value) -> bool {
    u["health"]["up"] == true
}

/// Down as health tracking judged it: not merely without a report yet (the daemon's first
/// status, written before any probe round completes, has none).
fn is_down(u: &Value) -> bool {
    u["health"]["up"] == false
}

/// The address the client saw for a new TCP connection from tristan: which uplink it took.
fn tristan_leaves_from(lab: &Lab) -> Option<Ipv4Addr> {
    let reply = lab.tcp_request(Host::Tristan, CLIENT, PEER_PORT, TIMEOUT).unwrap()?;
    Some(*reply.parse::<SocketAddrV4>().ok()?.ip())
}

fn isp_a(lab: &Lab, rule: &str) {
    let out = lab.exec(Host::IspA, &["sh", "-c", &format!("iptables {rule}")]).unwrap();
    assert!(out.status.success(), "iptables {rule}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A TCP connection from `host` to `addr:port` (served in `server`'s namespace) that stays
/// open: both ends, after one byte each way.
fn long_connection(
    lab: &Lab,
    host: Host,
    server: Host,
    addr: Ipv4Addr,
    port: u16,
) -> (TcpStream, TcpStream) {
    let listener = lab.ns(server).enter(move || TcpListener::bind(("0.0.0.0", port))).unwrap();
    let mut client = lab
        .ns(host)
        .enter(move || TcpStream::connect_timeout(&(addr, port).into(), TIMEOUT))
        .unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    client.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    accepted.read_exact(&mut byte).unwrap();
    accepted.write_all(b"y").unwrap();
    client.read_exact(&mut byte).unwrap();
    (client, accepted)
}

/// Connections of `masq conns --json` that `want` picks.
fn conns(lab: &Lab, want: impl Fn(&Value) -> bool) -> usize {
    common::masq_conns(lab).iter().filter(|c| want(c)).count()
}

fn tcp_to(c: &Value, src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> bool {
    c["proto"] == "tcp"
        && c["original"]["src"] == src.to_string()
        && c["original"]["dst"] == dst.to_string()
        && c["original"]["dst_port"] == port
}

#[test]
fn dsl_fails_over_when_isp_a_stops_forwarding_and_fails_back_when_it_forwards_again() {
    let lab = common::lab(GatewayMode::Bare);
    let hook_log = lab.run_dir().join("transitions.log");
    let cfg = config(
        &lab,
        &format!("on_down = \"flush\"\n[uplink.health]\ntargets = [\"{CLIENT}\"]\n"),
        &format!(
            "[on_transition]\ncommand = [\"/bin/sh\", \"-c\", \
             \"echo $MASQ_UPLINK $MASQ_INTERFACE $MASQ_STATE $MASQ_PREVIOUS_STATE >> {}\"]\n",
            hook_log.display()
        ),
    );
    // Probes are captured at ISP A's router while main's default route points at isp-b.
    let at_isp_a = lab.capture(Host::IspA, ISP_GW_SIDE_IFACE, "icmp").unwrap();
    let at_isp_b = lab.capture(Host::IspB, ISP_GW_SIDE_IFACE, "icmp").unwrap();
    let masq = common::start_masq(&lab, &cfg);
    let _peer = common::serve_peer_addr(lab.ns(Host::Client), PEER_PORT);
    let up = wait_uplink(&lab, "dsl", TIMEOUT, "probes answered", |u| {
        is_up(u) && u["health"]["probes"]["rounds_passed"].as_u64() >= Some(3)
    });
    assert_eq!(up["health"]["probes"]["targets"][0]["answering"], true, "{up:#}");
    assert!(up["health"]["probes"]["targets"][0]["avg_rtt_ms"].as_f64().is_some(), "{up:#}");
    let main_default = lab.exec(Host::Gw, &["ip", "route", "show", "default"]).unwrap();
    assert!(String::from_utf8_lossy(&main_default.stdout).contains(&ISP_B_ROUTER.to_string()));
    let lines = at_isp_a.stop().unwrap();
    let probes = common::sent_from(&lines, &GW_ISP_A.to_string(), "ICMP echo request");
    assert!(probes >= 3, "dsl's probes at ISP A, from {GW_ISP_A}:\n{}", lines.join("\n"));
    let lines = at_isp_b.stop().unwrap();
    let astray = common::sent_from(&lines, &GW_ISP_A.to_string(), "ICMP echo request");
    assert_eq!(astray, 0, "dsl's probes by ISP B:\n{}", lines.join("\n"));

    assert_eq!(tristan_leaves_from(&lab), Some(GW_ISP_A));
    // Live connections: tristan's by dsl, isolde's own by isp-b, the client's to isolde by isp-b.
    let _tristan = long_connection(&lab, Host::Tristan, Host::Client, CLIENT, 9001);
    let _isolde = long_connection(&lab, Host::Isolde, Host::Client, CLIENT, 9002);
    let (mut inbound, mut served) =
        long_connection(&lab, Host::Client, Host::Isolde, PUBLIC_ISP_B, 9003);
    let tristan_dsl = |c: &Value| tcp_to(c, TRISTAN, CLIENT, 9001) && c["uplink_name"] == "dsl";
    assert_eq!(conns(&lab, tristan_dsl), 1);

    // ISP A's router stops forwarding; its link and address stay up.
    isp_a(&lab, "-I FORWARD -j DROP");
    let stopped = Instant::now();
    let down = wait_uplink(&lab, "dsl", Duration::from_secs(10), "down", is_down);
    let took = stopped.elapsed();
    let reason = down["health"]["reason"].as_str().unwrap();
    assert!(reason.contains("rounds in a row failed") && reason.contains("no answer"), "{reason}");
    assert_eq!(down["health"]["carrier"], true);
    eprintln!("dsl down {took:?} after ISP A stopped forwarding (cargo xtask bench measures it)");

    assert_eq!(tristan_leaves_from(&lab), Some(GW_ISP_B), "new connections leave by isp-b");
    assert_eq!(conns(&lab, tristan_dsl), 0, "flushed: {:#?}", common::masq_conns(&lab));
    assert_eq!(conns(&lab, |c| tcp_to(c, ISOLDE, CLIENT, 9002)), 1, "isp-b's outbound kept");
    assert_eq!(conns(&lab, |c| tcp_to(c, CLIENT, PUBLIC_ISP_B, 9003)), 1, "inbound kept");
    // Inbound through isp-b is unaffected: the live connection and a new one.
    inbound.write_all(b"z").unwrap();
    let mut byte = [0u8; 1];
    served.read_exact(&mut byte).unwrap();
    long_connection(&lab, Host::Client, Host::Isolde, PUBLIC_ISP_B, 9004);

    // ISP A forwards again: back after `up` answered rounds.
    isp_a(&lab, "-D FORWARD -j DROP");
    let back = wait_uplink(&lab, "dsl", Duration::from_secs(10), "up again", is_up);
    assert!(back["health"]["reason"].as_str().unwrap().contains("5 rounds in a row passed"));
    assert_eq!(back["health"]["transitions"], 2);
    assert_eq!(tristan_leaves_from(&lab), Some(GW_ISP_A), "new connections return to dsl");

    let deadline = Instant::now() + TIMEOUT;
    let log = loop {
        let log = fs::read_to_string(&hook_log).unwrap_or_default();
        if log.lines().count() >= 2 || Instant::now() > deadline {
            break log;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(log.lines().collect::<Vec<_>>(), ["dsl eth4 down up", "dsl eth4 up down"], "{log}");
    drop(masq);
}

#[test]
fn a_lossy_isp_a_crosses_the_loss_level_and_one_silent_target_of_two_does_not() {
    let lab = common::lab(GatewayMode::Bare);
    let cfg = config(
        &lab,
        &format!("[uplink.health]\ntargets = [\"{CLIENT}\", \"{NOBODY}\"]\nwindow = 10\n"),
        "",
    );
    let masq = common::start_masq(&lab, &cfg);
    // With a quorum of one, the silent target does not take dsl down.
    let steady = wait_uplink(&lab, "dsl", TIMEOUT * 5, "20 rounds", |u| {
        u["health"]["probes"]["rounds"].as_u64() >= Some(20)
    });
    let targets = &steady["health"]["probes"]["targets"];
    assert!(is_up(&steady) && steady["health"]["transitions"] == 0, "{steady:#}");
    assert_eq!(
        (&targets[0]["answering"], &targets[1]["answering"]),
        (&Value::Bool(true), &Value::Bool(false))
    );
    assert_eq!(targets[1]["loss_percent"], 100.0);

    // A fifth of what ISP A forwards is lost each way (a third of the probes): more than the
    // 20 % failure level over the 10-probe window.
    isp_a(&lab, "-I FORWARD -m statistic --mode random --probability 0.2 -j DROP");
    let down = wait_uplink(&lab, "dsl", Duration::from_secs(60), "down by loss", is_down);
    let reason = down["health"]["reason"].as_str().unwrap();
    let client_note = reason.split(", ").find(|n| n.contains(&CLIENT.to_string()));
    assert!(client_note.is_some_and(|n| n.contains("loss")), "{reason}");
    drop(masq);
}

/// A DNS server in `ns` that answers every query after `delay` (the query back with QR set):
/// a slow path as the probes measure it. Stops on drop.
struct SlowDns {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl SlowDns {
    fn start(lab: &Lab, host: Host, delay: Duration) -> Self {
        let socket = lab.ns(host).enter(|| UdpSocket::bind(("0.0.0.0", 53))).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let mut buf = [0u8; 512];
            while !stopped.load(Ordering::Relaxed) {
                let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
                if n < 12 {
                    continue;
                }
                let mut answer = buf[..n].to_vec();
                answer[2] |= 0x80;
                let Ok(out) = socket.try_clone() else { continue };
                // Each answer on its own: a slow path, not a slow server.
                thread::spawn(move || {
                    thread::sleep(delay);
                    let _ = out.send_to(&answer, peer);
                });
            }
        });
        SlowDns { stop, thread: Some(thread) }
    }
}

impl Drop for SlowDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn a_slow_path_crosses_the_latency_level_with_dns_probes() {
    let lab = common::lab(GatewayMode::Bare);
    let _dns = SlowDns::start(&lab, Host::Client, Duration::from_millis(300));
    let cfg = config(
        &lab,
        &format!(
            "[uplink.health]\nmethod = \"dns\"\nquery = \"example.com\"\ntargets = [\"{CLIENT}\"]\n\
             failure_latency_ms = 150\nrecovery_latency_ms = 100\n"
        ),
        "",
    );
    let masq = common::start_masq(&lab, &cfg);
    let down = wait_uplink(&lab, "dsl", Duration::from_secs(15), "down by latency", is_down);
    let reason = down["health"]["reason"].as_str().unwrap();
    assert!(reason.contains("latency") && reason.contains("above 150 ms"), "{reason}");
    let rtt = down["health"]["probes"]["targets"][0]["avg_rtt_ms"].as_f64().unwrap();
    assert!(rtt >= 300.0, "the answers took 300 ms: {rtt}");
    assert_eq!(down["health"]["probes"]["method"], "dns");
    assert_eq!(tristan_leaves_from_any(&lab), Some(GW_ISP_B));
    drop(masq);
}

/// As [`tristan_leaves_from`], with its own peer-address server.
fn tristan_leaves_from_any(lab: &Lab) -> Option<Ipv4Addr> {
    let _peer = common::serve_peer_addr(lab.ns(Host::Client), PEER_PORT);
    tristan_leaves_from(lab)
}

#[test]
fn unanswered_syns_through_dsl_make_it_suspect_before_any_probe_fails() {
    let lab = common::lab(GatewayMode::Bare);
    let cfg = config(
        &lab,
        &format!("[uplink.health]\ntargets = [\"{CLIENT}\"]\ninterval_ms = 2000\n"),
        "",
    );
    let masq = common::start_masq(&lab, &cfg);
    wait_uplink(&lab, "dsl", TIMEOUT, "probes answered", |u| {
        is_up(u) && u["health"]["probes"]["interval_ms"] == 2000
    });
    // ISP A drops TCP only: pings pass, tristan's connections do not.
    isp_a(&lab, "-I FORWARD -p tcp -j DROP");
    let _peer = common::serve_peer_addr(lab.ns(Host::Client), PEER_PORT);
    let deadline = Instant::now() + Duration::from_secs(15);
    let suspect = loop {
        assert_eq!(
            lab.tcp_request(Host::Tristan, CLIENT, PEER_PORT, Duration::from_millis(300)).unwrap(),
            None
        );
        let u = uplink(&lab, "dsl");
        if u["health"]["passive"]["suspect"].is_string() {
            break u;
        }
        assert!(Instant::now() < deadline, "never suspect: {u:#}");
    };
    assert!(suspect["syn_sent"].as_u64() > suspect["syn_answered"].as_u64(), "{suspect:#}");
    assert!(suspect["health"]["passive"]["unanswered"].as_u64() >= Some(3), "{suspect:#}");
    // Probed at the failure interval at once; the probes still pass, so dsl stays up.
    assert_eq!(suspect["health"]["probes"]["interval_ms"], 250, "{suspect:#}");
    assert!(is_up(&suspect));
    drop(masq);
}

#[test]
fn a_tiered_policy_fails_over_and_reclaims_its_connections_when_dsl_returns() {
    let lab = common::lab(GatewayMode::Bare);
    let text = example_with_dsl(&format!(
        "on_up = \"reclaim\"\n[uplink.health]\ntargets = [\"{CLIENT}\"]\n"
    ));
    let policies = text.find("[[policy]]").expect("the example's policies");
    let text = format!(
        "{}[[policy]]\nfrom = \"{TRISTAN}/32\"\ntiers = [[\"dsl\"], [\"isp-b\"]]\n\n\
         [[policy]]\nuplink = \"isp-b\"\n",
        &text[..policies]
    );
    let cfg = lab.run_dir().join("tiers.toml");
    fs::write(&cfg, text).unwrap();
    let masq = common::start_masq(&lab, &cfg);
    let _peer = common::serve_peer_addr(lab.ns(Host::Client), PEER_PORT);
    wait_uplink(&lab, "dsl", TIMEOUT, "up", is_up);
    assert_eq!(tristan_leaves_from(&lab), Some(GW_ISP_A), "tier 0");

    isp_a(&lab, "-I FORWARD -j DROP");
    wait_uplink(&lab, "dsl", Duration::from_secs(10), "down", is_down);
    assert_eq!(tristan_leaves_from(&lab), Some(GW_ISP_B), "tier 1 while dsl is down");
    let _tristan = long_connection(&lab, Host::Tristan, Host::Client, CLIENT, 9005);
    let _isolde = long_connection(&lab, Host::Isolde, Host::Client, CLIENT, 9006);
    let tristan_on_isp_b =
        |c: &Value| tcp_to(c, TRISTAN, CLIENT, 9005) && c["uplink_name"] == "isp-b";
    assert_eq!(conns(&lab, tristan_on_isp_b), 1);

    isp_a(&lab, "-D FORWARD -j DROP");
    wait_uplink(&lab, "dsl", Duration::from_secs(10), "up again", is_up);
    // Reclaimed: tristan's connection by the backup is removed (it reconnects by dsl);
    // isolde's, which its policy keeps on isp-b, stays.
    assert_eq!(conns(&lab, tristan_on_isp_b), 0, "{:#?}", common::masq_conns(&lab));
    assert_eq!(conns(&lab, |c| tcp_to(c, ISOLDE, CLIENT, 9006)), 1);
    assert_eq!(tristan_leaves_from(&lab), Some(GW_ISP_A), "back on tier 0");
    drop(masq);
}
