//! The kit of the integration tests: the lab, masq, the CLI, traffic and captures.
use std::{
    fs::{self, File},
    io::Read as _,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::{Duration, Instant},
};

pub use masq_user::{frames as packet, netns::require_root};
use masq_user::{
    lab::{GatewayMode, Host, Lab, LabChild, LabOptions},
    pinned::read_counters,
};

/// A lab with gw configured as `mode`; needs root.
pub fn lab(mode: GatewayMode) -> Lab {
    require_root();
    Lab::build(LabOptions { gateway: mode, ..LabOptions::default() }).expect("building the lab")
}

/// The XDP-friendly variant of the lab ([`LabOptions::xdp_friendly`]), gw bare; needs root.
pub fn xdp_friendly_lab() -> Lab {
    require_root();
    Lab::build(LabOptions { xdp_friendly: true, ..LabOptions::default() })
        .expect("building the XDP-friendly lab")
}

/// `masq status --json` of the lab's dataplane.
pub fn masq_status(lab: &Lab) -> serde_json::Value {
    let out = masq_cli(lab, &["status", "--json"]);
    assert!(out.status.success(), "masq status: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("masq status --json")
}

/// `masq ARGS` run inside the gateway's namespace (`nsenter --net`: `ip netns exec` would hide
/// /sys/fs/bpf behind a fresh sysfs).
pub fn masq_on_gw(lab: &Lab, args: &[&str]) -> std::process::Output {
    std::process::Command::new("nsenter")
        .arg(format!("--net={}", lab.ns(masq_user::lab::Host::Gw).path().display()))
        .arg("--")
        .arg(masq_bin())
        .args(args)
        .output()
        .expect("running masq")
}

/// `masq ARGS --pin-dir <the lab's>` inside the gateway's namespace.
pub fn masq_cli(lab: &Lab, args: &[&str]) -> std::process::Output {
    let pin_dir = lab.pin_dir();
    masq_on_gw(lab, &[args, &["--pin-dir", pin_dir.to_str().expect("UTF-8 path")]].concat())
}

/// The masq binary built for these tests.
pub fn masq_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_masq"))
}

/// The default config, `examples/masq-gw.toml`.
pub fn example_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/masq-gw.toml")
}

/// A TCP and UDP server on `port` (both protocols) in a namespace that answers every connection
/// and every datagram with the peer address it sees, `a.b.c.d:port` and a newline: the source
/// address after any NAT on the way. Stops, and lets go of the namespace, on drop.
pub struct PeerAddrServer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Starts a [`PeerAddrServer`] in `ns`; returns once it listens. Panics when it cannot.
pub fn serve_peer_addr(ns: &masq_user::netns::NetNs, port: u16) -> PeerAddrServer {
    use std::{
        io::Write as _,
        net::{Ipv4Addr, TcpListener, UdpSocket},
        os::fd::AsRawFd as _,
        sync::{Arc, atomic::AtomicBool, atomic::Ordering},
    };
    let path = ns.path();
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let stopped = stop.clone();
    let thread = std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("opening the namespace");
        // SAFETY: setns only changes this thread's network namespace; the fd is valid.
        assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        drop(file);
        let bound = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).and_then(|tcp| {
            let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))?;
            tcp.set_nonblocking(true)?;
            udp.set_nonblocking(true)?;
            Ok((tcp, udp))
        });
        let (tcp, udp) = match bound {
            Ok(sockets) => sockets,
            Err(err) => return ready_tx.send(Err(err)).unwrap(),
        };
        ready_tx.send(Ok(())).unwrap();
        let mut buf = [0u8; 2048];
        while !stopped.load(Ordering::Relaxed) {
            let mut fds = [tcp.as_raw_fd(), udp.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: two valid pollfds; a timeout so that the stop flag is seen.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) };
            while let Ok((mut stream, peer)) = tcp.accept() {
                let _ = stream.set_nonblocking(false);
                let _ = writeln!(stream, "{peer}");
            }
            while let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(format!("{peer}\n").as_bytes(), peer);
            }
        }
    });
    match ready_rx.recv() {
        Ok(Ok(())) => PeerAddrServer { stop, thread: Some(thread) },
        Ok(Err(err)) => panic!("peer address server on port {port}: {err}"),
        Err(_) => panic!("peer address server on port {port} did not start"),
    }
}

impl Drop for PeerAddrServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts `masq run` on gw with `config`, pinning under the lab's pin dir.
pub fn start_masq(lab: &Lab, config: &Path) -> LabChild {
    lab.start_masq(&masq_bin(), config, &lab.pin_dir(), &[]).expect("starting masq")
}

/// The example config plus `extra` TOML, written to the lab's run dir.
pub fn config_with(lab: &Lab, extra: &str) -> PathBuf {
    let text = fs::read_to_string(example_config()).expect("reading the example config");
    let path = lab.run_dir().join("masq-gw.toml");
    fs::write(&path, format!("{text}\n{extra}\n")).expect("writing the config");
    path
}

/// A minimal HTTP server on `host`: answers every connection to `port` with `body`
/// (HTTP/1.0, Content-Length, then close), served by socat from a file in the run dir.
pub fn serve_http(lab: &Lab, host: Host, port: u16, body: &[u8]) -> LabChild {
    let file = lab.run_dir().join(format!("http-{host}-{port}.response"));
    let mut response =
        format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
            .into_bytes();
    response.extend_from_slice(body);
    fs::write(&file, response).expect("writing the HTTP response");
    let listen = format!("TCP-LISTEN:{port},fork,reuseaddr");
    let answer = format!("SYSTEM:cat {}", file.display());
    let server = lab.spawn(host, &["socat", &listen, &answer]).expect("starting socat");
    let filter = format!("sport = :{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.exec(host, &["ss", "-Hltn", &filter]).expect("running ss").stdout.is_empty() {
        assert!(Instant::now() < deadline, "socat on {host} not listening");
        thread::sleep(Duration::from_millis(50));
    }
    server
}

/// `curl` from `host`: the body, or None when it fails or takes longer than `timeout`.
pub fn curl(lab: &Lab, host: Host, url: &str, timeout: Duration) -> Option<Vec<u8>> {
    let max_time = format!("{:.1}", timeout.as_secs_f64());
    let out = lab
        .exec(host, &["curl", "-sS", "--fail", "--max-time", &max_time, url])
        .expect("running curl");
    if !out.status.success() {
        // Shown with the test's output when it fails.
        eprintln!(
            "curl {url} from {host}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out.status.success().then_some(out.stdout)
}

/// `masq stats` for the lab's pin dir, as text: what a failed check prints beside its message.
pub fn masq_stats(lab: &Lab) -> String {
    let out = masq_cli(lab, &["stats"]);
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `len` random bytes.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("reading /dev/urandom");
    bytes
}

/// UDP traceroute from `host` (one probe per hop, fixed port 33434, up to 6 hops): the address
/// that answered each hop, None for `*`.
pub fn traceroute(lab: &Lab, host: Host, target: Ipv4Addr) -> Vec<Option<Ipv4Addr>> {
    let target = target.to_string();
    let args = ["traceroute", "-n", "-q1", "-w3", "-m6", "-U", "-p", "33434"];
    let out = lab.exec(host, &[&args[..], &[&target]].concat()).expect("running traceroute");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words.next()?.parse::<u8>().ok()?;
            Some(words.next()?.parse().ok())
        })
        .collect()
}

/// A dataplane counter (`masq stats` name) read from the lab's pinned maps.
pub fn counter(lab: &Lab, name: &str) -> u64 {
    read_counters(&lab.pin_dir())
        .expect("reading masq's counters")
        .into_iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .value
}

/// Counter `name` once it reaches `at_least`, or its value after `within` (packets the tests send
/// are handled asynchronously, by softirq, which a loaded machine may defer).
pub fn counter_reaching(lab: &Lab, name: &str, at_least: u64, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    loop {
        let value = counter(lab, name);
        if value >= at_least || Instant::now() > deadline {
            return value;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `masq conns --json` for the lab's pin dir.
pub fn masq_conns(lab: &Lab) -> Vec<serde_json::Value> {
    let out = Command::new(masq_bin())
        .args(["conns", "--json", "--pin-dir"])
        .arg(lab.pin_dir())
        .output()
        .expect("running masq conns");
    assert!(out.status.success(), "masq conns failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("parsing masq conns --json")
}

/// Packets in `tcpdump -n` lines whose source is exactly `src` ("addr" for ICMP, "addr.port"
/// otherwise) and whose line contains `marker` (e.g. "Flags [", "UDP", "ICMP echo reply").
pub fn sent_from(lines: &[String], src: &str, marker: &str) -> usize {
    lines
        .iter()
        .filter(|line| {
            let mut words = line.split_whitespace();
            words.any(|w| w == "IP") && words.next() == Some(src) && line.contains(marker)
        })
        .count()
}
