//! What the NAT RFCs ask of masq, end to end in the seed lab: endpoint-independent mapping
//! (RFC 4787 REQ-1), an unsolicited SYN to an uplink address gets no RST (RFC 5382 REQ-4), the
//! gateway's own services still answer. Needs root; run serially.
use std::{
    io::ErrorKind,
    net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use masq_user::lab::{GatewayMode, Host, ISP_GW_SIDE_IFACE, Lab};
use masq_user::seed::{CLIENT, CLIENT_PREFIX_LEN, GW_ISP_A, GW_ISP_B, PUBLIC_ISP_A, PUBLIC_ISP_B};

use crate::common;

#[test]
fn an_unsolicited_syn_to_an_uplink_address_gets_no_reset_but_the_gateways_own_service_answers() {
    let lab = common::lab(GatewayMode::Bare);
    let masq = common::start_masq(&lab, &common::example_config());
    let at_isp_a = lab.capture(Host::IspA, ISP_GW_SIDE_IFACE, "tcp").unwrap();
    let refused = lab
        .ns(Host::Client)
        .enter(|| TcpStream::connect_timeout(&(GW_ISP_A, 12345).into(), Duration::from_secs(2)))
        .map(|_| ErrorKind::Other)
        .unwrap_or_else(|e| e.kind());
    assert_eq!(refused, ErrorKind::TimedOut, "silence, not a reset");
    let _service = lab.ns(Host::Gw).enter(|| TcpListener::bind(("0.0.0.0", 2222))).unwrap();
    let reached = lab
        .ns(Host::Client)
        .enter(|| TcpStream::connect_timeout(&(GW_ISP_A, 2222).into(), Duration::from_secs(2)));
    assert!(reached.is_ok(), "the gateway's own service: {reached:?}");
    let lines = at_isp_a.stop().unwrap();
    let resets = lines
        .iter()
        .filter(|l| l.contains(&format!("{GW_ISP_A}.12345 > {CLIENT}")) && l.contains("[R"))
        .count();
    assert_eq!(resets, 0, "{}", lines.join("\n"));
    assert!(common::counter(&lab, "drop_unsolicited_syn") >= 1);
    drop(masq);
}

/// The client's second address: a second destination on "the internet".
const CLIENT_2: Ipv4Addr = Ipv4Addr::new(64, 70, 12, 211);
const ECHO_PORT: u16 = 3478;

/// Gives the client [`CLIENT_2`] beside its own address.
fn add_client_2(lab: &Lab) {
    let addr = format!("{CLIENT_2}/{CLIENT_PREFIX_LEN}");
    let add = lab.exec(Host::Client, &["ip", "addr", "add", &addr, "dev", "eth0"]).unwrap();
    assert!(add.status.success());
}

/// UDP servers on the client bound to each of `addrs` (so each answers from its own address),
/// answering every datagram with the `address:port` they saw it from. Stop on drop.
struct PeerEcho(Arc<AtomicBool>, Vec<thread::JoinHandle<()>>);

impl PeerEcho {
    fn start(lab: &masq_user::lab::Lab, addrs: &[Ipv4Addr]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = addrs
            .iter()
            .map(|&addr| {
                let socket =
                    lab.ns(Host::Client).enter(move || UdpSocket::bind((addr, ECHO_PORT))).unwrap();
                socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
                let stop = stop.clone();
                thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                            let _ = socket.send_to(peer.to_string().as_bytes(), peer);
                        }
                    }
                })
            })
            .collect();
        PeerEcho(stop, threads)
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for t in self.1.drain(..) {
            let _ = t.join();
        }
    }
}

/// From one UDP socket of tristan's bound to `port`: what each destination saw it come from.
fn seen_from(lab: &masq_user::lab::Lab, port: u16, dsts: &[Ipv4Addr]) -> Vec<SocketAddrV4> {
    let dsts = dsts.to_vec();
    lab.ns(Host::Tristan).enter(move || {
        let socket = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        dsts.iter()
            .map(|&dst| {
                let mut buf = [0u8; 64];
                for _ in 0..6 {
                    socket.send_to(b"binding?", (dst, ECHO_PORT)).unwrap();
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        assert_eq!(from, (dst, ECHO_PORT).into(), "answered from its address");
                        return std::str::from_utf8(&buf[..n]).unwrap().parse().unwrap();
                    }
                }
                panic!("no answer from {dst}");
            })
            .collect()
    })
}

/// From TCP sockets of tristan's all bound to `port` (SO_REUSEADDR, open at once): what each
/// destination's peer-address server saw each connection come from.
fn tcp_seen_from(lab: &masq_user::lab::Lab, port: u16, dsts: &[Ipv4Addr]) -> Vec<SocketAddrV4> {
    use std::{
        io::{BufRead as _, BufReader},
        os::fd::FromRawFd as _,
    };
    let dsts = dsts.to_vec();
    lab.ns(Host::Tristan).enter(move || {
        let streams: Vec<TcpStream> = dsts
            .iter()
            .map(|&dst| {
                // SAFETY: plain socket calls on a fresh fd, owned by the TcpStream afterwards.
                unsafe {
                    let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                    assert!(fd >= 0);
                    let one: libc::c_int = 1;
                    let len = size_of::<libc::c_int>() as libc::socklen_t;
                    let opt = (&one as *const libc::c_int).cast();
                    assert_eq!(
                        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, opt, len),
                        0
                    );
                    let sockaddr = |addr: Ipv4Addr, port: u16| libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: port.to_be(),
                        sin_addr: libc::in_addr { s_addr: u32::from(addr).to_be() },
                        sin_zero: [0; 8],
                    };
                    let size = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    let local = sockaddr(Ipv4Addr::UNSPECIFIED, port);
                    assert_eq!(
                        libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), size),
                        0
                    );
                    let remote = sockaddr(dst, PEER_PORT);
                    let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), size);
                    assert_eq!(rc, 0, "connect to {dst}: {}", std::io::Error::last_os_error());
                    TcpStream::from_raw_fd(fd)
                }
            })
            .collect();
        streams
            .into_iter()
            .map(|stream| {
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut line = String::new();
                BufReader::new(stream).read_line(&mut line).unwrap();
                line.trim().parse().unwrap()
            })
            .collect()
    })
}

const PEER_PORT: u16 = 8443;

#[test]
fn one_lan_tcp_port_keeps_one_public_port_toward_every_destination() {
    let lab = common::lab(GatewayMode::Bare);
    add_client_2(&lab);
    let masq = common::start_masq(&lab, &common::example_config());
    let _server = common::serve_peer_addr(lab.ns(Host::Client), PEER_PORT);
    let kept = tcp_seen_from(&lab, 40500, &[CLIENT, CLIENT_2]);
    assert_eq!(kept, [SocketAddrV4::new(GW_ISP_A, 40500); 2]);
    let replaced = tcp_seen_from(&lab, 30500, &[CLIENT, CLIENT_2]);
    assert_eq!(replaced[0], replaced[1], "endpoint-independent");
    assert_ne!(replaced[0].port(), 30500, "the gateway's own range is not kept");
    drop(masq);
}

#[test]
fn one_lan_socket_keeps_one_public_port_toward_every_destination() {
    let lab = common::lab(GatewayMode::Bare);
    add_client_2(&lab);
    let range = |lab: &Lab| {
        let out = lab.exec(Host::Gw, &["cat", "/proc/sys/net/ipv4/ip_local_port_range"]).unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().collect::<Vec<_>>().join(" ")
    };
    let system = range(&lab);
    let masq = common::start_masq(&lab, &common::example_config());
    assert_eq!(range(&lab), "28672 32767", "the gateway's own ports narrowed (gateway_ports)");
    let _echo = PeerEcho::start(&lab, &[CLIENT, CLIENT_2]);
    // Ports in every client OS's ephemeral range are the client's own, toward every destination.
    for port in [20100, 40100, 50100, 60999, 61100] {
        let kept = seen_from(&lab, port, &[CLIENT, CLIENT_2]);
        assert_eq!(kept, [SocketAddrV4::new(GW_ISP_A, port); 2], "port {port}");
    }
    // One inside the gateway's own range is replaced, by one port for both destinations.
    let replaced = seen_from(&lab, 30100, &[CLIENT, CLIENT_2]);
    assert_eq!(replaced[0], replaced[1], "endpoint-independent");
    assert_eq!(*replaced[0].ip(), GW_ISP_A);
    assert!(!(28672..=32767).contains(&replaced[0].port()), "{replaced:?}");
    assert_eq!(common::counter(&lab, "nat_mapping_fallback"), 0);
    drop(masq);
    let down = common::masq_cli(&lab, &["down"]);
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    assert_eq!(range(&lab), system, "masq down gives the system its range back");
}

#[test]
fn a_lan_host_reaches_a_published_service_by_either_public_address() {
    let lab = common::lab(GatewayMode::Bare);
    let masq = common::start_masq(&lab, &common::example_config());
    let _peer = common::serve_peer_addr(lab.ns(Host::Isolde), 8080);
    let seen = |reply: Option<String>| -> Option<Ipv4Addr> {
        Some(*reply?.parse::<SocketAddrV4>().ok()?.ip())
    };
    let timeout = Duration::from_secs(5);
    for (public, via) in [(PUBLIC_ISP_A, GW_ISP_A), (PUBLIC_ISP_B, GW_ISP_B)] {
        let tcp = lab.tcp_request(Host::Tristan, public, 8080, timeout).unwrap();
        assert_eq!(seen(tcp), Some(via), "TCP to {public}: isolde sees the uplink's address");
        let udp = lab.udp_request(Host::Tristan, public, 8080, "hi", timeout).unwrap();
        assert_eq!(seen(udp), Some(via), "UDP to {public}");
        assert!(lab.ping(Host::Tristan, public, timeout).unwrap(), "ping {public}");
    }
    assert!(common::counter(&lab, "hairpin_new") >= 6);
    drop(masq);
}

/// Whether a datagram from the client's second address reaches tristan's socket on `port`
/// through its mapping, once tristan has sent to the client's first address.
fn stranger_reaches_mapping(lab: &masq_user::lab::Lab, port: u16) -> bool {
    let tristan = lab.ns(Host::Tristan).enter(move || UdpSocket::bind(("0.0.0.0", port))).unwrap();
    tristan.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    let mut buf = [0u8; 64];
    // The mapping: tristan to the echo server, answered.
    let mut mapped = false;
    for _ in 0..6 {
        tristan.send_to(b"open", (CLIENT, ECHO_PORT)).unwrap();
        if tristan.recv_from(&mut buf).is_ok() {
            mapped = true;
            break;
        }
    }
    assert!(mapped, "no answer from the echo server");
    let stranger = lab.ns(Host::Client).enter(|| UdpSocket::bind((CLIENT_2, 0))).unwrap();
    (0..4).any(|_| {
        stranger.send_to(b"knock", (GW_ISP_A, port)).unwrap();
        matches!(tristan.recv_from(&mut buf), Ok((n, from)) if &buf[..n] == b"knock" && from.ip() == CLIENT_2)
    })
}

#[test]
fn endpoint_independent_filtering_lets_any_host_reach_a_udp_mapping_and_the_default_does_not() {
    for open in [false, true] {
        let lab = common::lab(GatewayMode::Bare);
        add_client_2(&lab);
        let dsl = if open { "udp_filtering = \"endpoint-independent\"" } else { "" };
        let cfg = lab.run_dir().join("filtering.toml");
        std::fs::write(&cfg, masq_user::lab::example_with_dsl(dsl)).unwrap();
        let masq = common::start_masq(&lab, &cfg);
        let _echo = PeerEcho::start(&lab, &[CLIENT]);
        assert_eq!(stranger_reaches_mapping(&lab, 20300), open, "udp_filtering open: {open}");
        assert_eq!(common::counter(&lab, "mapping_inbound_new") > 0, open);
        drop(masq);
    }
}

#[test]
fn a_lan_host_reaches_another_ones_mapping_and_each_sees_the_others_public_endpoint() {
    let lab = common::lab(GatewayMode::Bare);
    let masq = common::start_masq(&lab, &common::example_config());
    let _echo = PeerEcho::start(&lab, &[CLIENT]);
    let tristan = lab.ns(Host::Tristan).enter(|| UdpSocket::bind(("0.0.0.0", 40600))).unwrap();
    tristan.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    // tristan learns his public endpoint from the client (as from a STUN server).
    let mut buf = [0u8; 64];
    let public: SocketAddrV4 = (0..6)
        .find_map(|_| {
            tristan.send_to(b"binding?", (CLIENT, ECHO_PORT)).unwrap();
            let (n, _) = tristan.recv_from(&mut buf).ok()?;
            std::str::from_utf8(&buf[..n]).ok()?.parse().ok()
        })
        .expect("the client's answer");
    assert_eq!(public, SocketAddrV4::new(GW_ISP_A, 40600));
    // isolde (whose own policy is isp-b) reaches it through the gateway...
    let isolde = lab.ns(Host::Isolde).enter(|| UdpSocket::bind(("0.0.0.0", 40700))).unwrap();
    isolde.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    let from = (0..6)
        .find_map(|_| {
            isolde.send_to(b"knock", public).unwrap();
            tristan.recv_from(&mut buf).ok().map(|(_, from)| from)
        })
        .expect("isolde's datagram through tristan's mapping");
    // ...from her own public endpoint behind the same uplink, which tristan can answer.
    assert_eq!(from, (GW_ISP_A, 40700).into());
    tristan.send_to(b"hello", from).unwrap();
    let (n, back) = isolde.recv_from(&mut buf).expect("tristan's answer");
    assert_eq!((&buf[..n], back), (&b"hello"[..], public.into()));
    assert!(common::counter(&lab, "hairpin_new") >= 1);
    drop(masq);
}
