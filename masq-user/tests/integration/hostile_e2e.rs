//! Hostile input end to end, through the real loader in the lab: a blind RST leaves an idle
//! connection alive, a SYN flood of ten times the table's capacity evicts no established
//! connection, and forged ICMP errors never reach a LAN host's socket.
use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    thread,
    time::Duration,
};

use masq_common::{ICMP_DEST_UNREACH, TCP_RST, TCP_SYN};
use masq_user::{
    frames::{Ip, eth_ip},
    lab::{GatewayMode, Host, Lab},
    seed::{CLIENT, GW_ISP_A, GW_ISP_B, PUBLIC_ISP_A, TRISTAN},
};

use crate::common;

/// How long a counter may take to show the packets a test sent.
const SETTLE: Duration = Duration::from_secs(10);

/// Send a whole Ethernet frame out of `host`'s `iface` (an attacker on the ISP's link).
fn send_frame(lab: &Lab, host: Host, iface: &'static str, frame: Vec<u8>) {
    lab.ns(host).enter(move || {
        // SAFETY: plain socket(2) and sendto(2) on valid buffers; the fd is closed below.
        unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
            let name = std::ffi::CString::new(iface).unwrap();
            let mut addr: libc::sockaddr_ll = std::mem::zeroed();
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(sent, frame.len() as isize, "{}", std::io::Error::last_os_error());
            libc::close(fd);
        }
    });
}

/// A TCP connection from the client to isolde's `port` published on ISP A: (client side,
/// server side).
fn inbound_connection(lab: &Lab, port: u16) -> (TcpStream, TcpStream) {
    let listener =
        lab.ns(Host::Isolde).enter(move || TcpListener::bind(("0.0.0.0", port)).unwrap());
    let server = thread::spawn(move || listener.accept().unwrap().0);
    let client = lab.ns(Host::Client).enter(move || {
        TcpStream::connect_timeout(&SocketAddr::from((PUBLIC_ISP_A, port)), Duration::from_secs(3))
            .unwrap()
    });
    let server = server.join().unwrap();
    for s in [&client, &server] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    (client, server)
}

/// Bytes written on one side arrive on the other, both ways.
#[track_caller]
fn assert_alive(a: &TcpStream, b: &TcpStream, what: &str) {
    for (mut from, mut to) in [(a, b), (b, a)] {
        from.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        to.read_exact(&mut buf).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(&buf, b"ping", "{what}");
    }
}

#[test]
fn a_blind_rst_leaves_an_idle_connection_alive_past_the_closing_timeout() {
    let lab = common::lab(GatewayMode::Bare);
    let config = common::config_with(&lab, "[dataplane.timeouts]\ntcp_closing = 2\n");
    let _masq = common::start_masq(&lab, &config);
    let (client, server) = inbound_connection(&lab, 8081);
    assert_alive(&client, &server, "before");
    let port = client.local_addr().unwrap().port();

    // Sequence number 0, and one half the sequence space away: neither is in the window.
    let raw = lab.raw_ip_socket(Host::Client).unwrap();
    for seq in [0, 0x8000_0000] {
        let rst = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(port, 8081, TCP_RST, (seq, 0), b"");
        raw.send(&rst).unwrap();
    }
    assert!(common::counter_reaching(&lab, "drop_tcp_out_of_window", 2, SETTLE) >= 2);
    // Longer than the closing timeout plus an expiry round.
    thread::sleep(Duration::from_secs(5));
    assert_alive(&client, &server, "after the blind RSTs and the closing timeout");
}

#[test]
fn a_syn_flood_of_ten_times_capacity_keeps_established_connections() {
    let lab = common::lab(GatewayMode::Bare);
    let config =
        common::config_with(&lab, "[dataplane]\nconn_capacity = 1024\npending_capacity = 256\n");
    let _masq = common::start_masq(&lab, &config);
    // The flood's target answers every SYN (syncookies once its backlog is full).
    let web = lab.ns(Host::Isolde).enter(|| TcpListener::bind(("0.0.0.0", 80)).unwrap());
    let (inbound_c, inbound_s) = inbound_connection(&lab, 8082);
    let outbound_l = lab.ns(Host::Client).enter(|| TcpListener::bind(("0.0.0.0", 9000)).unwrap());
    let accepted = thread::spawn(move || outbound_l.accept().unwrap().0);
    let outbound_t = lab.ns(Host::Tristan).enter(|| {
        TcpStream::connect_timeout(&SocketAddr::from((CLIENT, 9000)), Duration::from_secs(3))
            .unwrap()
    });
    let outbound_c = accepted.join().unwrap();
    for s in [&outbound_t, &outbound_c] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    assert_alive(&inbound_c, &inbound_s, "inbound before");
    assert_alive(&outbound_t, &outbound_c, "outbound before");

    let raw = lab.raw_ip_socket(Host::Client).unwrap();
    for i in 0..10 * 1024u32 {
        let spoofed = Ipv4Addr::from(0x0b00_0000 + i * 13);
        let syn = Ip::new(spoofed, PUBLIC_ISP_A).tcp_seq(
            1024 + (i % 60000) as u16,
            80,
            TCP_SYN,
            (i, 0),
            b"",
        );
        raw.send(&syn).unwrap();
        // Paced so that no veth's backlog (1000 packets by default) overflows on the way.
        if i % 256 == 255 {
            thread::sleep(Duration::from_millis(2));
        }
    }
    let inbound_new = common::counter_reaching(&lab, "inbound_new", 10 * 1024, SETTLE);
    let status = common::masq_status(&lab);
    let conns = &status["connections"];
    assert!(inbound_new >= 10 * 1024, "{inbound_new}: {status}");
    assert!(conns["pending"]["count"].as_u64().unwrap() <= 256, "{status}");
    assert!(conns["count"].as_u64().unwrap() >= 2, "{status}");

    assert_alive(&inbound_c, &inbound_s, "inbound after the flood");
    assert_alive(&outbound_t, &outbound_c, "outbound after the flood");
    drop(web);
}

/// tristan's connected UDP socket toward the client (masqueraded behind ISP A) and the source
/// the client sees.
fn tristan_flow(lab: &Lab) -> (UdpSocket, UdpSocket, SocketAddr) {
    let server = lab.ns(Host::Client).enter(|| UdpSocket::bind(("0.0.0.0", 5300)).unwrap());
    let tristan = lab.ns(Host::Tristan).enter(|| {
        let s = UdpSocket::bind(("0.0.0.0", 0)).unwrap();
        s.connect((CLIENT, 5300)).unwrap();
        s
    });
    tristan.send(b"hi").unwrap();
    server.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut buf = [0u8; 16];
    let (_, seen) = server.recv_from(&mut buf).unwrap();
    tristan.set_nonblocking(true).unwrap();
    (tristan, server, seen)
}

/// The error a connected UDP socket reports now, if any.
fn pending_error(socket: &UdpSocket) -> Option<ErrorKind> {
    thread::sleep(Duration::from_millis(400));
    let mut buf = [0u8; 16];
    match socket.recv(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => None,
        Err(e) => Some(e.kind()),
        Ok(n) => panic!("unexpected datagram of {n} bytes"),
    }
}

#[test]
fn forged_port_unreachables_never_reach_the_lan_host_and_the_real_one_does() {
    let lab = common::lab(GatewayMode::Bare);
    let config = common::example_config();
    let _masq = common::start_masq(&lab, &config);
    let (tristan, _server, seen) = tristan_flow(&lab);
    let SocketAddr::V4(seen) = seen else { panic!("{seen}") };
    assert_eq!(*seen.ip(), GW_ISP_A, "tristan leaves by ISP A");
    let sent = Ip::new(GW_ISP_A, CLIENT).ttl(62).udp(seen.port(), 5300, b"hi");
    let unreachable = |to: Ipv4Addr, quoted: &[u8]| {
        Ip::new(CLIENT, to).icmp_error(ICMP_DEST_UNREACH, 3, [0; 4], quoted)
    };
    let raw = lab.raw_ip_socket(Host::Client).unwrap();

    // To the gateway's ISP B address (arrives on ISP B).
    raw.send(&unreachable(GW_ISP_B, &sent)).unwrap();
    assert_eq!(pending_error(&tristan), None, "wrong outer destination");
    // Correctly addressed, but injected on ISP B's line.
    let gw_eth1 = lab.mac(Host::Gw, "eth1").unwrap();
    let ispb = lab.mac(Host::IspB, "to-gw").unwrap();
    send_frame(&lab, Host::IspB, "to-gw", eth_ip(gw_eth1, ispb, &unreachable(GW_ISP_A, &sent)));
    assert_eq!(pending_error(&tristan), None, "wrong uplink");
    // Straight to tristan's LAN address over ISP A's line, quoting its untranslated packet.
    let gw_eth4 = lab.mac(Host::Gw, "eth4").unwrap();
    let ispa = lab.mac(Host::IspA, "to-gw").unwrap();
    let untranslated =
        Ip::new(TRISTAN, CLIENT).udp(tristan.local_addr().unwrap().port(), 5300, b"hi");
    send_frame(
        &lab,
        Host::IspA,
        "to-gw",
        eth_ip(gw_eth4, ispa, &unreachable(TRISTAN, &untranslated)),
    );
    assert_eq!(pending_error(&tristan), None, "straight to the LAN host");
    assert!(common::counter_reaching(&lab, "drop_icmp_error_mismatch", 3, SETTLE) >= 3);

    raw.send(&unreachable(GW_ISP_A, &sent)).unwrap();
    let error = (0..25).find_map(|_| pending_error(&tristan));
    assert_eq!(error, Some(ErrorKind::ConnectionRefused), "the real error");
}

/// A frame tristan tags for a VLAN gw has no interface for: the devices on the way keep the tag
/// in metadata, so masq's LAN program sees plain IPv4. It must not masquerade it (it would leave
/// an uplink still tagged); the kernel then drops it.
#[test]
fn a_vlan_tagged_frame_from_the_lan_never_leaves_an_uplink() {
    let lab = common::lab(GatewayMode::Bare);
    let _masq = common::start_masq(&lab, &common::example_config());
    let captures = [Host::IspA, Host::IspB]
        .map(|isp| lab.capture(isp, "to-gw", "tcp port 443 or (vlan and tcp port 443)").unwrap());
    thread::sleep(Duration::from_millis(500));
    let before = common::counter(&lab, "outbound_new");
    let syn = Ip::new(TRISTAN, CLIENT).tcp(50123, 443, TCP_SYN);
    let mut frame =
        eth_ip(lab.mac(Host::Gw, "eth0").unwrap(), lab.mac(Host::Tristan, "eth0").unwrap(), &syn);
    frame.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
    for _ in 0..3 {
        send_frame(&lab, Host::Tristan, "eth0", frame.clone());
    }
    thread::sleep(Duration::from_millis(500));
    assert_eq!(common::counter(&lab, "outbound_new"), before, "no connection opened");
    for (isp, capture) in [Host::IspA, Host::IspB].into_iter().zip(captures) {
        let lines = capture.stop().unwrap();
        assert!(lines.is_empty(), "{isp} saw:\n{}", lines.join("\n"));
    }
    // Untagged, the same SYN is masqueraded.
    send_frame(
        &lab,
        Host::Tristan,
        "eth0",
        eth_ip(lab.mac(Host::Gw, "eth0").unwrap(), lab.mac(Host::Tristan, "eth0").unwrap(), &syn),
    );
    assert_eq!(
        common::counter_reaching(&lab, "outbound_new", before + 1, SETTLE),
        before + 1,
        "the untagged SYN opens one"
    );
}

#[test]
fn with_trace_debug_each_drop_is_logged_by_reason_and_a_reload_turns_it_off_keeping_connections() {
    let lab = common::lab(GatewayMode::Bare);
    let config = common::config_with(&lab, "[dataplane]\ntrace = \"debug\"\n");
    let masq = common::start_masq(&lab, &config);
    let (client, server) = inbound_connection(&lab, 8083);
    assert_alive(&client, &server, "before");
    let port = client.local_addr().unwrap().port();
    let raw = lab.raw_ip_socket(Host::Client).unwrap();
    let blind_rst = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(port, 8083, TCP_RST, (0, 0), b"");
    let traced = |masq: &masq_user::lab::LabChild| {
        masq.log_text()
            .lines()
            .filter(|l| l.contains("program debug: dropped a packet: drop_tcp_out_of_window"))
            .count()
    };
    raw.send(&blind_rst).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while traced(&masq) == 0 {
        assert!(std::time::Instant::now() < deadline, "no trace line:\n{}", masq.log_text());
        thread::sleep(Duration::from_millis(100));
    }

    // Off again by a reload: the programs are replaced in place, the connection lives on.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("trace = \"debug\"", "trace = \"off\"")).unwrap();
    let out = common::masq_cli(&lab, &["reload"]);
    assert!(out.status.success(), "masq reload: {}", String::from_utf8_lossy(&out.stderr));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !masq.log_text().contains("programs reloaded with trace = Off") {
        assert!(std::time::Instant::now() < deadline, "not reloaded:\n{}", masq.log_text());
        thread::sleep(Duration::from_millis(100));
    }
    assert_alive(&client, &server, "after the programs were reloaded");
    let before = (traced(&masq), common::counter(&lab, "drop_tcp_out_of_window"));
    raw.send(&blind_rst).unwrap();
    assert_eq!(
        common::counter_reaching(&lab, "drop_tcp_out_of_window", before.1 + 1, SETTLE),
        before.1 + 1,
        "still counted"
    );
    assert_eq!(traced(&masq), before.0, "no longer traced");
    drop(masq);
}
