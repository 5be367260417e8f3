//! Operating masq without cutting anyone off: long transfers and steady UDP streams through each
//! uplink keep running across a daemon restart, a reload, and a flush of another uplink.
use std::{
    collections::BTreeSet,
    fs,
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use masq_user::lab::{GatewayMode, Host, Lab, LabChild};
use masq_user::seed::{PUBLIC_ISP_A, PUBLIC_ISP_B, TRISTAN};

use crate::common;

const FILE_LEN: usize = 12 << 20;
/// 12 MiB at 2 MiB/s: about six seconds, long enough to span the events of a test.
const RATE: &str = "2M";
const ECHO_PORT: u16 = 7007;

/// Run `f` on a thread that has entered `host`'s network namespace.
fn spawn_in<T: Send + 'static>(
    lab: &Lab,
    host: Host,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<T> {
    let ns = fs::File::open(lab.ns(host).path()).expect("opening the namespace");
    thread::spawn(move || {
        // SAFETY: setns on this thread only.
        assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        f()
    })
}

/// A UDP echo server on isolde, until `stop`.
fn udp_echo(lab: &Lab, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    spawn_in(lab, Host::Isolde, move || {
        let sock = UdpSocket::bind(("0.0.0.0", ECHO_PORT)).expect("binding the echo port");
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], peer);
            }
        }
    })
}

/// A steady stream of numbered datagrams from the client to `addr` (every 5 ms) until `stop`;
/// returns how many were sent and which sequence numbers came back.
fn udp_stream(
    lab: &Lab,
    addr: Ipv4Addr,
    stop: Arc<AtomicBool>,
) -> JoinHandle<(u32, BTreeSet<u32>)> {
    spawn_in(lab, Host::Client, move || {
        let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
        sock.connect(SocketAddr::from((addr, ECHO_PORT))).unwrap();
        sock.set_nonblocking(true).unwrap();
        let (mut sent, mut echoed) = (0u32, BTreeSet::new());
        let mut buf = [0u8; 4];
        let mut drain = |echoed: &mut BTreeSet<u32>| {
            while let Ok(4) = sock.recv(&mut buf) {
                echoed.insert(u32::from_be_bytes(buf));
            }
        };
        while !stop.load(Ordering::Relaxed) {
            sock.send(&sent.to_be_bytes()).unwrap();
            sent += 1;
            thread::sleep(Duration::from_millis(5));
            drain(&mut echoed);
        }
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && echoed.len() < sent as usize {
            thread::sleep(Duration::from_millis(20));
            drain(&mut echoed);
        }
        (sent, echoed)
    })
}

/// A rate-limited download by curl on the client, running in the background.
struct Download {
    curl: LabChild,
    file: PathBuf,
}

fn start_download(lab: &Lab, addr: Ipv4Addr) -> Download {
    let file = lab.run_dir().join(format!("download-{addr}"));
    let url = format!("http://{addr}/");
    let file_arg = file.to_str().unwrap();
    // --max-time: a flushed connection stalls rather than ends.
    let args =
        ["curl", "-sS", "--fail", "--max-time", "30", "--limit-rate", RATE, "-o", file_arg, &url];
    Download { curl: lab.spawn(Host::Client, &args).expect("starting curl"), file }
}

impl Download {
    /// Wait for curl to finish; the bytes it got, or None when it failed.
    fn finish(mut self) -> Option<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(status) = self.curl.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "download still running after 60 s");
            thread::sleep(Duration::from_millis(100));
        };
        status.success().then(|| fs::read(&self.file).unwrap())
    }
}

fn assert_stream_complete(name: &str, (sent, echoed): (u32, BTreeSet<u32>)) {
    assert!(sent > 100, "{name}: only {sent} datagrams sent");
    let lost: Vec<u32> = (0..sent).filter(|n| !echoed.contains(n)).collect();
    assert!(lost.is_empty(), "{name}: {} of {sent} datagrams lost: {lost:?}", lost.len());
}

#[test]
fn transfers_and_streams_survive_a_restart_and_a_reload() {
    let lab = common::lab(GatewayMode::Bare);
    let body = common::random_bytes(FILE_LEN);
    let _http = common::serve_http(&lab, Host::Isolde, 80, &body);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = udp_echo(&lab, stop.clone());
    let config = common::config_with(&lab, "");
    let masq = common::start_masq(&lab, &config);

    let downloads = [start_download(&lab, PUBLIC_ISP_A), start_download(&lab, PUBLIC_ISP_B)];
    let streams = [PUBLIC_ISP_A, PUBLIC_ISP_B].map(|a| udp_stream(&lab, a, stop.clone()));
    thread::sleep(Duration::from_secs(1));

    // (a) The daemon restarts: the dataplane forwards meanwhile, the new one adopts it.
    masq.stop().expect("stopping masq");
    thread::sleep(Duration::from_millis(500));
    let masq = common::start_masq(&lab, &config);
    assert!(masq.log_text().contains("adopted"), "{}", masq.log_text());
    thread::sleep(Duration::from_secs(1));

    // (b) A reload adds a published address: it answers, the running flows go on.
    let text = fs::read_to_string(&config).unwrap();
    let new_address = Ipv4Addr::new(67, 17, 28, 11);
    let extra =
        format!("[[publish]]\nuplink = \"dsl\"\naddress = \"{new_address}\"\nto = \"{TRISTAN}\"\n");
    fs::write(&config, format!("{text}\n{extra}")).unwrap();
    let out = common::masq_cli(&lab, &["reload"]);
    assert!(
        out.status.success(),
        "masq reload: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        masq.log_text()
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.ping(Host::Client, new_address, Duration::from_secs(1)).unwrap() {
        assert!(Instant::now() < deadline, "{new_address} not answering after the reload");
    }

    for (download, addr) in downloads.into_iter().zip([PUBLIC_ISP_A, PUBLIC_ISP_B]) {
        let got = download.finish().unwrap_or_else(|| panic!("download via {addr} failed"));
        assert!(got == body, "download via {addr}: {} bytes, content differs", got.len());
    }
    stop.store(true, Ordering::Relaxed);
    for (stream, addr) in streams.into_iter().zip([PUBLIC_ISP_A, PUBLIC_ISP_B]) {
        assert_stream_complete(&format!("UDP via {addr}"), stream.join().unwrap());
    }
    echo.join().unwrap();
    assert!(masq.log_text().contains("reloaded"), "{}", masq.log_text());
    assert_eq!(lab.spoof_drops(Host::IspA) + lab.spoof_drops(Host::IspB), 0);
}

#[test]
fn flushing_one_uplink_leaves_the_other_uplinks_flows_alone() {
    let lab = common::lab(GatewayMode::Bare);
    let body = common::random_bytes(FILE_LEN);
    let _http = common::serve_http(&lab, Host::Isolde, 80, &body);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = udp_echo(&lab, stop.clone());
    let _masq = common::start_masq(&lab, &common::example_config());

    let dsl_download = start_download(&lab, PUBLIC_ISP_A);
    let dsl_stream = udp_stream(&lab, PUBLIC_ISP_A, stop.clone());
    let ispb_download = start_download(&lab, PUBLIC_ISP_B);
    let conns = conns_once(|| common::masq_conns(&lab), |c| c["uplink_name"] == "isp-b");
    let isp_b_before = conns.iter().filter(|c| c["uplink_name"] == "isp-b").count();
    assert!(isp_b_before >= 1, "isp-b's download is tracked: {conns:?}");

    let out = common::masq_cli(&lab, &["conns", "flush", "--uplink", "isp-b"]);
    assert!(out.status.success(), "flush: {}", String::from_utf8_lossy(&out.stderr));
    let isp_b_tcp = |conns: &[serde_json::Value]| {
        conns.iter().filter(|c| c["uplink_name"] == "isp-b" && c["proto"] == "tcp").count()
    };
    assert_eq!(isp_b_tcp(&common::masq_conns(&lab)), 0, "isp-b's TCP connection is gone");

    let got = dsl_download.finish().expect("the download via DSL failed");
    assert!(got == body, "download via DSL: {} bytes, content differs", got.len());
    stop.store(true, Ordering::Relaxed);
    assert_stream_complete("UDP via DSL", dsl_stream.join().unwrap());
    echo.join().unwrap();
    // The flushed TCP connection cannot finish: its packets no longer match a connection.
    drop(ispb_download);
}

/// What `read` (a `masq conns --json`) lists once some connection satisfies `wanted`, or after
/// ten seconds: the transfers just started may not have connected yet.
fn conns_once(
    read: impl Fn() -> Vec<serde_json::Value>,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let conns = read();
        if conns.iter().any(&wanted) || std::time::Instant::now() > deadline {
            return conns;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `ip netns exec <gw> masq ARGS --pin-dir <the lab's>`: a private mount namespace per command.
fn masq_netns_exec(lab: &Lab, args: &[&str]) -> std::process::Output {
    let pin_dir = lab.pin_dir();
    std::process::Command::new("ip")
        .args(["netns", "exec", lab.ns(Host::Gw).name()])
        .arg(common::masq_bin())
        .args(args)
        .args(["--pin-dir", pin_dir.to_str().unwrap()])
        .output()
        .expect("running masq by ip netns exec")
}

#[test]
fn started_by_ip_netns_exec_a_restart_keeps_transfers_and_the_cli_sees_the_dataplane() {
    let lab = common::lab(GatewayMode::Bare);
    let body = common::random_bytes(FILE_LEN);
    let _http = common::serve_http(&lab, Host::Isolde, 80, &body);
    let stop = Arc::new(AtomicBool::new(false));
    let echo = udp_echo(&lab, stop.clone());
    let config = common::example_config();
    let start = || lab.start_masq_netns_exec(&common::masq_bin(), &config, &lab.pin_dir());
    let masq = start().expect("starting masq by ip netns exec");

    let download = start_download(&lab, PUBLIC_ISP_A);
    let stream = udp_stream(&lab, PUBLIC_ISP_A, stop.clone());
    // Another `ip netns exec` sees the same pins: the host's bpffs, not a private one.
    let netns_conns = || {
        let out = masq_netns_exec(&lab, &["conns", "--json"]);
        assert!(out.status.success(), "masq conns: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap()
    };
    let conns = conns_once(netns_conns, |c| c["proto"] == "tcp");
    assert!(conns.iter().any(|c| c["proto"] == "tcp"), "the download is tracked: {conns:?}");

    masq.stop().expect("stopping masq");
    assert!(lab.pin_dir().join("CONNS").exists(), "pins outlive the daemon");
    thread::sleep(Duration::from_millis(500));
    let masq = start().expect("restarting masq by ip netns exec");
    assert!(masq.log_text().contains("adopted"), "{}", masq.log_text());

    let got = download.finish().expect("the download across the restart failed");
    assert!(got == body, "download: {} bytes, content differs", got.len());
    stop.store(true, Ordering::Relaxed);
    assert_stream_complete("UDP via DSL", stream.join().unwrap());
    echo.join().unwrap();

    drop(masq);
    let out = masq_netns_exec(&lab, &["down"]);
    assert!(out.status.success(), "masq down: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!lab.pin_dir().exists(), "masq down left {}", lab.pin_dir().display());
}
