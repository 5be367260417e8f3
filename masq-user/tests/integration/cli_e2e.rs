//! The operator's view, end to end in the seed lab: known traffic, then `masq conns`, `uplinks`,
//! `stats`, `status` and the `--metrics` endpoint must report exactly it; `masq conns flush`
//! removes one uplink's connections; `masq reload` publishes a new address while an existing
//! flow keeps working; the CLI keeps working once the daemon is gone.
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::Path,
    process::Output,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use masq_common::DEFAULT_CONN_CAPACITY;
use masq_user::lab::{GatewayMode, Host, Lab};
use masq_user::seed::{
    CLIENT, GW_ISP_A, ISOLDE, ISP_A_ROUTER, PUBLIC_ISP_A, PUBLIC_ISP_B, TRISTAN,
};
use serde_json::Value;

use crate::common;

const TIMEOUT: Duration = Duration::from_secs(3);
const UDP_PORT: u16 = 7000;
const ECHO_PORT: u16 = 7007;
const METRICS_PORT: u16 = 9100;
/// Nothing expires while the test looks (the defaults for ICMP, UDP and closing TCP are 30 s).
const LONG_TIMEOUTS: &str = "[dataplane.timeouts]
tcp_closing = 600
udp = 600
udp_stream = 600
icmp = 600";
/// tristan's own public address on ISP A, added by the reload.
const PUBLIC_TRISTAN: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 11);

/// The reload's new `[[publish]]`: [`PUBLIC_TRISTAN`] to tristan.
fn extra_publish() -> String {
    format!("[[publish]]\nuplink = \"dsl\"\naddress = \"{PUBLIC_TRISTAN}\"\nto = \"{TRISTAN}\"")
}

/// `masq <args> --pin-dir <the lab's>` inside gw's network namespace.
fn masq(lab: &Lab, args: &[&str]) -> Output {
    common::masq_cli(lab, args)
}

/// Its stdout; panics with its stderr unless it succeeded.
fn masq_ok(lab: &Lab, args: &[&str]) -> String {
    let out = masq(lab, args);
    assert!(
        out.status.success(),
        "masq {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Its stderr; panics unless it failed.
fn masq_err(lab: &Lab, args: &[&str]) -> String {
    let out = masq(lab, args);
    assert!(
        !out.status.success(),
        "masq {} should fail but printed {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn masq_json(lab: &Lab, args: &[&str]) -> Value {
    let mut args = args.to_vec();
    args.push("--json");
    let text = masq_ok(lab, &args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("masq {args:?}: {e}\n{text}"))
}

fn conns(lab: &Lab, filter: &[&str]) -> Vec<Value> {
    let args = [&["conns"], filter].concat();
    match masq_json(lab, &args) {
        Value::Array(conns) => conns,
        other => panic!("masq conns --json: not an array: {other:#}"),
    }
}

fn addr(v: &Value) -> Ipv4Addr {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("not an address: {v}"))
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The only connection of `proto` in `conns`.
fn only<'a>(conns: &'a [Value], proto: &str) -> &'a Value {
    let found: Vec<&Value> = conns.iter().filter(|c| c["proto"] == proto).collect();
    assert_eq!(found.len(), 1, "one {proto} connection in {conns:#?}");
    found[0]
}

/// `GET path` on the metrics listener inside gw: (status line and headers, body).
fn http_get(lab: &Lab, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    lab.ns(Host::Gw).enter(move || {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT));
        let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connecting to metrics");
        stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        stream.write_all(request.as_bytes()).unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("reading");
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        (head.to_string(), body.to_string())
    })
}

/// The value of `series` (name and labels exactly as written) in an exposition.
fn sample(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|line| {
        line.strip_prefix(series)?.strip_prefix(' ')?.split(' ').next()?.parse().ok()
    })
}

fn expect_sample(body: &str, series: &str) -> f64 {
    sample(body, series).unwrap_or_else(|| panic!("no {series} in\n{body}"))
}

/// Waits until something listens on TCP `port` of `host`.
fn wait_listening(lab: &Lab, host: Host, port: u16) {
    let filter = format!("sport = :{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.exec(host, &["ss", "-Hltn", &filter]).expect("running ss").stdout.is_empty() {
        assert!(Instant::now() < deadline, "nothing listens on {host}:{port}");
        thread::sleep(Duration::from_millis(50));
    }
}

fn ping_until(lab: &Lab, addr: Ipv4Addr) -> bool {
    (0..3).any(|_| lab.ping(Host::Client, addr, TIMEOUT).expect("ping"))
}

#[test]
fn cli_and_metrics_report_known_traffic_and_flush_removes_one_uplink() {
    let lab = common::lab(GatewayMode::Bare);
    let config = common::config_with(&lab, LONG_TIMEOUTS);
    let metrics = format!("127.0.0.1:{METRICS_PORT}");
    let masq_daemon = lab
        .start_masq(&common::masq_bin(), &config, &lab.pin_dir(), &["--metrics", &metrics])
        .expect("masq starts");
    let _web = lab.serve_tcp(Host::Isolde, 80, "hello").unwrap();
    let _udp = lab.serve_udp(Host::Client, UDP_PORT, "pong").unwrap();

    // Known traffic: 3 echo requests in one ping (one identifier) to isolde through ISP A,
    // one TCP request to isolde through ISP B, one UDP request from tristan to the client
    // (tristan's policy sends it out by dsl).
    let public_a = PUBLIC_ISP_A.to_string();
    let ping = lab
        .exec(Host::Client, &["ping", "-n", "-q", "-c", "3", "-i", "0.2", "-W", "2", &public_a])
        .unwrap();
    assert!(ping.status.success(), "ping: {}", String::from_utf8_lossy(&ping.stdout));
    let reply = lab.tcp_request(Host::Client, PUBLIC_ISP_B, 80, TIMEOUT).unwrap();
    assert_eq!(reply.as_deref(), Some("hello"));
    let reply = lab.udp_request(Host::Tristan, CLIENT, UDP_PORT, "ping", TIMEOUT).unwrap();
    assert_eq!(reply.as_deref(), Some("pong"));

    // masq conns: exactly those three, with their tuples, uplinks and counts.
    let all = conns(&lab, &[]);
    assert_eq!(all.len(), 3, "{all:#?}");

    let icmp = only(&all, "icmp");
    assert_eq!(icmp["direction"], "inbound");
    assert_eq!(icmp["uplink"], 0);
    assert_eq!(icmp["uplink_name"], "dsl");
    assert_eq!(addr(&icmp["original"]["src"]), CLIENT);
    assert_eq!(addr(&icmp["original"]["dst"]), PUBLIC_ISP_A);
    assert_eq!(addr(&icmp["translated"]["src"]), CLIENT);
    assert_eq!(addr(&icmp["translated"]["dst"]), ISOLDE);
    assert_eq!(addr(&icmp["reply"]["src"]), ISOLDE);
    assert_eq!(addr(&icmp["reply_translated"]["src"]), PUBLIC_ISP_A);
    assert_eq!(addr(&icmp["reply_translated"]["dst"]), CLIENT);
    assert_eq!(num(&icmp["packets_original"]), 3, "{icmp:#}");
    assert_eq!(num(&icmp["packets_reply"]), 3, "{icmp:#}");
    assert!(num(&icmp["bytes_original"]) >= 3 * 84, "{icmp:#}");
    assert_eq!(icmp["complete"], true);

    let tcp = only(&all, "tcp");
    assert_eq!(tcp["direction"], "inbound");
    assert_eq!(tcp["uplink"], 1);
    assert_eq!(tcp["uplink_name"], "isp-b");
    assert_eq!(addr(&tcp["original"]["src"]), CLIENT);
    assert_eq!(addr(&tcp["original"]["dst"]), PUBLIC_ISP_B);
    assert_eq!(tcp["original"]["dst_port"], 80);
    assert_eq!(addr(&tcp["translated"]["dst"]), ISOLDE);
    assert_eq!(tcp["translated"]["dst_port"], 80);
    assert_eq!(addr(&tcp["reply_translated"]["src"]), PUBLIC_ISP_B);
    // SYN, ACK, FIN+ACK at least one way; SYN+ACK, data, FIN the other.
    assert!(num(&tcp["packets_original"]) >= 3, "{tcp:#}");
    assert!(num(&tcp["packets_reply"]) >= 2, "{tcp:#}");
    assert!(tcp["state"] == "closing" || tcp["state"] == "established", "{tcp:#}");

    let udp = only(&all, "udp");
    assert_eq!(udp["direction"], "outbound");
    assert_eq!(udp["uplink_name"], "dsl");
    assert_eq!(addr(&udp["original"]["src"]), TRISTAN);
    assert_eq!(addr(&udp["original"]["dst"]), CLIENT);
    assert_eq!(udp["original"]["dst_port"], UDP_PORT);
    assert_eq!(addr(&udp["translated"]["src"]), GW_ISP_A);
    assert_eq!(addr(&udp["translated"]["dst"]), CLIENT);
    assert_eq!(addr(&udp["reply"]["src"]), CLIENT);
    assert_eq!(addr(&udp["reply"]["dst"]), GW_ISP_A);
    assert_eq!(addr(&udp["reply_translated"]["dst"]), TRISTAN);
    // One request and its answer, or more: the client repeats an unanswered request after
    // 500 ms, which a loaded machine may take to answer.
    let (sent, answered) = (num(&udp["packets_original"]), num(&udp["packets_reply"]));
    assert!(sent >= 1 && (1..=sent).contains(&answered), "{udp:#}");
    assert_eq!(udp["state"], "replied");

    // Filters.
    let protos = |filter: &[&str]| {
        let mut p: Vec<String> =
            conns(&lab, filter).iter().map(|c| c["proto"].as_str().unwrap().to_string()).collect();
        p.sort();
        p
    };
    assert_eq!(protos(&["--uplink", "isp-b"]), ["tcp"]);
    assert_eq!(protos(&["--uplink", "dsl"]), ["icmp", "udp"]);
    assert_eq!(protos(&["--uplink", "#1"]), ["tcp"]);
    assert_eq!(protos(&["--proto", "icmp"]), ["icmp"]);
    assert_eq!(protos(&["--proto", "udp"]), ["udp"]);
    assert_eq!(protos(&["--host", &GW_ISP_A.to_string()]), ["udp"]);
    assert_eq!(protos(&["--host", &ISOLDE.to_string()]), ["icmp", "tcp"]);
    assert_eq!(protos(&["--host", &CLIENT.to_string()]), ["icmp", "tcp", "udp"]);
    assert_eq!(protos(&["--uplink", "dsl", "--proto", "tcp"]), Vec::<String>::new());
    let err = masq_err(&lab, &["conns", "--uplink", "cable"]);
    assert!(err.contains("uplinks: dsl, isp-b"), "{err}");
    let table = masq_ok(&lab, &["conns"]);
    assert!(table.starts_with("PROTO"), "{table}");
    assert_eq!(table.lines().count(), 4, "{table}");
    assert!(table.contains("isp-b"), "{table}");

    // masq uplinks: traffic on both, new and active connections per uplink.
    let uplinks = masq_json(&lab, &["uplinks"]);
    let uplinks = uplinks.as_array().expect("an array");
    assert_eq!(uplinks.len(), 2, "{uplinks:#?}");
    let (dsl, isp_b) = (&uplinks[0], &uplinks[1]);
    assert_eq!((&dsl["name"], &dsl["interface"]), (&"dsl".into(), &"eth4".into()));
    assert_eq!((&isp_b["name"], &isp_b["interface"]), (&"isp-b".into(), &"eth1".into()));
    // dsl: 3 echo requests + 1 UDP reply in, 3 echo replies + 1 UDP request out.
    assert!(num(&dsl["rx_packets"]) >= 4, "{dsl:#}");
    assert!(num(&dsl["tx_packets"]) >= 4, "{dsl:#}");
    assert!(num(&isp_b["rx_packets"]) >= 3, "{isp_b:#}");
    assert!(num(&isp_b["tx_packets"]) >= 2, "{isp_b:#}");
    for u in [dsl, isp_b] {
        assert!(num(&u["rx_bytes"]) > num(&u["rx_packets"]) * 20, "{u:#}");
        assert!(num(&u["tx_bytes"]) > num(&u["tx_packets"]) * 20, "{u:#}");
    }
    assert_eq!(num(&dsl["new_connections"]), 2, "{dsl:#}");
    assert_eq!(num(&isp_b["new_connections"]), 1, "{isp_b:#}");
    assert_eq!(num(&dsl["active_connections"]), 2, "{dsl:#}");
    assert_eq!(num(&isp_b["active_connections"]), 1, "{isp_b:#}");

    // masq stats.
    let stats = masq_json(&lab, &["stats"]);
    assert!(num(&stats["paths"]["inbound_new"]) >= 2, "{stats:#}");
    assert!(num(&stats["paths"]["outbound_new"]) >= 1, "{stats:#}");
    let drops = stats["drops"].as_object().expect("drops by reason");
    assert!(drops.len() >= 9 && drops.keys().all(|k| k.starts_with("drop_")));
    assert_eq!(num(&stats["drops_total"]), drops.values().map(num).sum::<u64>());

    // masq status: five attachments, uplinks as the dataplane has them, capacity, daemon.
    let status = masq_json(&lab, &["status"]);
    let programs = status["programs"].as_array().expect("programs");
    let mut attached: Vec<(String, String)> = programs
        .iter()
        .filter(|p| p["attached"] == true)
        .map(|p| {
            (
                p["program"].as_str().unwrap().to_string(),
                p["interface"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    attached.sort();
    let expected = [
        ("masq_lan_in", "eth0"),
        ("masq_uplink_in", "eth1"),
        ("masq_uplink_in", "eth4"),
        ("masq_uplink_out", "eth1"),
        ("masq_uplink_out", "eth4"),
    ]
    .map(|(p, i)| (p.to_string(), i.to_string()));
    assert_eq!(attached, expected, "{status:#}");
    assert_eq!(programs.len(), 5, "{status:#}");
    assert_eq!(num(&status["connections"]["capacity"]), u64::from(DEFAULT_CONN_CAPACITY));
    assert_eq!(num(&status["connections"]["count"]), 3);
    assert_eq!(num(&status["connections"]["entries"]), 6);
    assert_eq!(status["daemon"]["running"], true);
    assert_eq!(num(&status["daemon"]["pid"]), u64::from(masq_daemon.pid()));
    assert_eq!(status["names_from"]["source"], "state");
    let dsl = &status["uplinks"][0];
    assert_eq!(dsl["name"], "dsl");
    assert_eq!(addr(&dsl["address"]), GW_ISP_A);
    assert_eq!(dsl["gateway"], ISP_A_ROUTER.to_string());
    assert_eq!(dsl["table"], 201);
    assert_eq!(dsl["mark"], 0x0100_0000);
    assert_eq!(status["uplinks"][1]["table"], 202);
    let text = masq_ok(&lab, &["status"]);
    assert!(text.contains("running (pid"), "{text}");
    assert!(text.contains("masq_uplink_out"), "{text}");

    // Metrics, scraped inside gw where the daemon listens.
    let (head, body) = http_get(&lab, "/metrics");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("Content-Type: application/openmetrics-text"), "{head}");
    assert!(body.ends_with("# EOF\n"), "{body}");
    let rx = |uplink: &str, iface: &str| {
        expect_sample(
            &body,
            &format!(
                "masq_uplink_packets_total{{uplink=\"{uplink}\",interface=\"{iface}\",direction=\"rx\"}}"
            ),
        )
    };
    assert!(rx("dsl", "eth4") >= 4.0);
    assert!(rx("isp-b", "eth1") >= 3.0);
    assert!(
        expect_sample(
            &body,
            "masq_uplink_bytes_total{uplink=\"isp-b\",interface=\"eth1\",direction=\"tx\"}"
        ) > 0.0
    );
    for (series, value) in [
        ("masq_uplink_new_connections_total{uplink=\"dsl\",interface=\"eth4\"}", 2.0),
        ("masq_uplink_new_connections_total{uplink=\"isp-b\",interface=\"eth1\"}", 1.0),
        ("masq_uplink_connections{uplink=\"isp-b\",interface=\"eth1\"}", 1.0),
        (
            "masq_connections{uplink=\"dsl\",direction=\"outbound\",proto=\"udp\",state=\"replied\"}",
            1.0,
        ),
        (
            "masq_connections{uplink=\"dsl\",direction=\"inbound\",proto=\"icmp\",state=\"icmp\"}",
            1.0,
        ),
        ("masq_conntrack_connections", 3.0),
        ("masq_conntrack_entries", 6.0),
        ("masq_conntrack_capacity", f64::from(DEFAULT_CONN_CAPACITY)),
        ("masq_packets_total{path=\"inbound_new\"}", 2.0),
        ("masq_packets_total{path=\"outbound_new\"}", 1.0),
        (
            "masq_program_attached{program=\"masq_uplink_in\",interface=\"eth4\",hook=\"tc_ingress\"}",
            1.0,
        ),
        (
            "masq_program_attached{program=\"masq_lan_in\",interface=\"eth0\",hook=\"tc_ingress\"}",
            1.0,
        ),
        (
            "masq_program_attached{program=\"masq_uplink_out\",interface=\"eth1\",hook=\"tc_egress\"}",
            1.0,
        ),
    ] {
        assert_eq!(expect_sample(&body, series), value, "{series}");
    }
    let attached = body
        .lines()
        .filter(|l| l.starts_with("masq_program_attached{") && l.ends_with(" 1"))
        .count();
    assert_eq!(attached, 5, "{body}");
    for reason in [
        "malformed",
        "fragment",
        "tcp_no_connection",
        "nat_port_exhausted",
        "untranslated_leak",
        "wrong_uplink",
    ] {
        expect_sample(&body, &format!("masq_drops_total{{reason=\"{reason}\"}}"));
    }
    let (head, _) = http_get(&lab, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");

    // Flush isp-b: its connection goes, dsl's stay; ISP B opens new ones afterwards.
    let out = masq_ok(&lab, &["conns", "flush", "--uplink", "isp-b"]);
    assert!(out.contains("removed 1 connection of uplink isp-b"), "{out}");
    assert_eq!(protos(&[]), ["icmp", "udp"]);
    let err = masq_err(&lab, &["conns", "flush"]);
    assert!(err.contains("--uplink"), "{err}");
    let reply = lab.tcp_request(Host::Client, PUBLIC_ISP_B, 80, TIMEOUT).unwrap();
    assert_eq!(reply.as_deref(), Some("hello"));
    assert_eq!(protos(&["--uplink", "isp-b"]), ["tcp"]);
    drop(masq_daemon);
}

#[test]
fn reload_publishes_a_new_address_while_an_existing_flow_keeps_working() {
    let lab = common::lab(GatewayMode::Bare);
    let config = common::config_with(&lab, LONG_TIMEOUTS);
    let masq_daemon = common::start_masq(&lab, &config);
    let _echo = lab
        .spawn(Host::Isolde, &["socat", &format!("TCP-LISTEN:{ECHO_PORT},fork,reuseaddr"), "PIPE"])
        .unwrap();
    wait_listening(&lab, Host::Isolde, ECHO_PORT);
    assert!(
        !lab.ping(Host::Client, PUBLIC_TRISTAN, Duration::from_secs(1)).unwrap(),
        "{PUBLIC_TRISTAN} answers before it is published"
    );

    // A TCP connection from the client to isolde through ISP A stays open across the reload.
    let echoes = thread::scope(|s| {
        let (go_on, wait) = mpsc::channel::<()>();
        let (opened, is_open) = mpsc::channel::<()>();
        let client = s.spawn(|| {
            lab.ns(Host::Client).enter(move || -> Result<Vec<String>, String> {
                let target = SocketAddr::from((PUBLIC_ISP_A, ECHO_PORT));
                let mut stream =
                    TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| e.to_string())?;
                stream.set_read_timeout(Some(TIMEOUT)).map_err(|e| e.to_string())?;
                let mut exchange = |msg: &str| -> Result<String, String> {
                    stream.write_all(msg.as_bytes()).map_err(|e| e.to_string())?;
                    let mut buf = vec![0; msg.len()];
                    stream.read_exact(&mut buf).map_err(|e| e.to_string())?;
                    String::from_utf8(buf).map_err(|e| e.to_string())
                };
                let before = exchange("before reload\n")?;
                opened.send(()).map_err(|e| e.to_string())?;
                wait.recv().map_err(|e| e.to_string())?;
                Ok(vec![before, exchange("after reload\n")?])
            })
        });
        is_open.recv_timeout(Duration::from_secs(10)).expect("the echo connection opened");
        let before = conns(&lab, &["--proto", "tcp"]);
        assert_eq!(before.len(), 1, "{before:#?}");

        common::config_with(&lab, &format!("{LONG_TIMEOUTS}\n{}", extra_publish()));
        let out = masq_ok(&lab, &["reload"]);
        assert!(out.contains("reloaded"), "{out}");
        assert!(ping_until(&lab, PUBLIC_TRISTAN), "{PUBLIC_TRISTAN} after reload");
        // One connection per ping run (each has its own identifier): the echo request of the
        // probe before the reload may still wait in ISP A's ARP queue and go through too.
        let tristan = conns(&lab, &["--host", &TRISTAN.to_string()]);
        assert!(!tristan.is_empty());
        for conn in &tristan {
            assert_eq!(conn["proto"], "icmp", "{conn:#}");
            assert_eq!(conn["uplink_name"], "dsl", "{conn:#}");
            assert_eq!(addr(&conn["original"]["dst"]), PUBLIC_TRISTAN, "{conn:#}");
            assert_eq!(addr(&conn["translated"]["dst"]), TRISTAN, "{conn:#}");
        }

        let after = conns(&lab, &["--proto", "tcp"]);
        assert_eq!(after.len(), 1, "{after:#?}");
        assert_eq!(after[0]["original"], before[0]["original"]);
        go_on.send(()).unwrap();
        client.join().expect("client thread")
    })
    .expect("the echo connection");
    assert_eq!(echoes, ["before reload\n", "after reload\n"]);

    let status = masq_json(&lab, &["status"]);
    assert_eq!(status["daemon"]["reloads"], 1, "{status:#}");
    assert_eq!(status["daemon"]["last_reload"]["ok"], true, "{status:#}");

    // A config that does not parse is rejected; the running one stays.
    std::fs::write(&config, "[[uplink]\n").unwrap();
    let err = masq_err(&lab, &["reload"]);
    assert!(err.contains("reload rejected"), "{err}");
    assert!(ping_until(&lab, PUBLIC_TRISTAN));
    assert!(masq_daemon.log_text().contains("reload rejected"));

    // Without the daemon: the dataplane and the CLI keep working, reload says there is none.
    let status_code = masq_daemon.stop().unwrap();
    assert!(status_code.success(), "masq exited {status_code}");
    let err = masq_err(&lab, &["reload"]);
    assert!(err.contains("no masq daemon is running"), "{err}");
    let status = masq_json(&lab, &["status"]);
    assert_eq!(status["daemon"]["running"], false, "{status:#}");
    assert_eq!(status["names_from"]["source"], "state", "{status:#}");
    let attached =
        status["programs"].as_array().unwrap().iter().filter(|p| p["attached"] == true).count();
    assert_eq!(attached, 5, "{status:#}");
    assert!(ping_until(&lab, PUBLIC_TRISTAN), "forwarding without the daemon");
    let uplinks = masq_json(&lab, &["uplinks"]);
    assert_eq!(uplinks[1]["name"], "isp-b");

    // masq down removes the state file with the rest.
    let state_file = masq_user::state::state_file(&lab.pin_dir());
    assert!(state_file.exists());
    masq_ok(&lab, &["down"]);
    assert!(!Path::new(&state_file).exists());
    let err = masq_err(&lab, &["status"]);
    assert!(err.contains("is masq running"), "{err}");
}
