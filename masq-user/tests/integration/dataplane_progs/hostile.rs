//! Hostile input: what an attacker on the internet or an odd LAN host sends. Every malformed,
//! martian or spoofed packet is a named drop that creates nothing; RST, FIN and ICMP errors
//! must match their connection; mutated packets never leave with bad checksums or a LAN
//! source.
use super::*;

const GW_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);

/// Recompute an IPv4 header checksum after a test changed a field.
fn fix_ip_csum(ip: &mut [u8]) {
    let hlen = usize::from(ip[0] & 0x0f) * 4;
    ip[10..12].copy_from_slice(&[0, 0]);
    let sum = internet_checksum(&ip[..hlen]);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
}

/// `packet` with `edit` applied and its IP header checksum made right again.
fn edited(packet: &[u8], edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut p = packet.to_vec();
    edit(&mut p);
    fix_ip_csum(&mut p);
    p
}

fn syn_to_dsl(src: Ipv4Addr) -> Vec<u8> {
    Ip::new(src, PUBLIC_ISP_A).tcp(40000, 80, TCP_SYN)
}

#[track_caller]
fn assert_dropped_creating_nothing(gw: &Gw, what: &str, run: &Run, drop: u32, counter: Counter) {
    assert_eq!(run.ret, drop, "{what}: action");
    assert!(gw.counter(counter) > 0, "{what}: counter {}: {:?}", counter.name(), gw.counters());
    assert!(gw.conns().is_empty(), "{what}: entries created:\n{}", gw.table());
}

#[test]
fn malformed_martian_and_spoofed_packets_from_an_uplink_are_named_drops_creating_nothing() {
    let syn = syn_to_dsl(CLIENT);
    let udp = Ip::new(CLIENT, PUBLIC_ISP_A).udp(5353, 53, b"query");
    let flags = |f: u8| Ip::new(CLIENT, PUBLIC_ISP_A).tcp(40000, 80, f);
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        (
            "bad IP header checksum",
            {
                let mut p = syn.clone();
                p[10] ^= 0x5a;
                p
            },
            Counter::DropIpChecksum,
        ),
        ("tot_len beyond the frame", edited(&syn, |p| p[3] += 10), Counter::DropBadLength),
        (
            "tot_len cutting the TCP header",
            edited(&syn, |p| p[2..4].copy_from_slice(&30u16.to_be_bytes())),
            Counter::DropBadLength,
        ),
        (
            "tot_len shorter than an IP header",
            edited(&syn, |p| p[2..4].copy_from_slice(&16u16.to_be_bytes())),
            Counter::DropBadLength,
        ),
        ("source 127.0.0.1", syn_to_dsl(Ipv4Addr::LOCALHOST), Counter::DropMartianSource),
        ("source 0.0.0.0", syn_to_dsl(Ipv4Addr::UNSPECIFIED), Counter::DropMartianSource),
        ("source 224.0.0.5", syn_to_dsl(Ipv4Addr::new(224, 0, 0, 5)), Counter::DropMartianSource),
        ("source 255.255.255.255", syn_to_dsl(Ipv4Addr::BROADCAST), Counter::DropMartianSource),
        ("source 240.1.2.3", syn_to_dsl(Ipv4Addr::new(240, 1, 2, 3)), Counter::DropMartianSource),
        (
            "destination 127.0.0.1",
            Ip::new(CLIENT, Ipv4Addr::LOCALHOST).tcp(40000, 80, TCP_SYN),
            Counter::DropMartianDestination,
        ),
        ("source: the gateway's LAN address", syn_to_dsl(GW_LAN), Counter::DropSpoofedSource),
        ("source: a LAN host", syn_to_dsl(ISOLDE), Counter::DropSpoofedSource),
        ("source: the gateway's uplink address", syn_to_dsl(GW_ISP_A), Counter::DropSpoofedSource),
        ("source: a published address", syn_to_dsl(PUBLIC_ISP_B), Counter::DropSpoofedSource),
        ("SYN+FIN", flags(TCP_SYN | TCP_FIN), Counter::DropTcpFlags),
        ("SYN+RST", flags(TCP_SYN | TCP_RST), Counter::DropTcpFlags),
        ("no TCP flags", flags(0), Counter::DropTcpFlags),
        ("FIN without ACK", flags(TCP_FIN), Counter::DropTcpFlags),
        ("TCP data offset 2", edited(&syn, |p| p[32] = 2 << 4), Counter::DropBadLength),
        ("TCP data offset 15", edited(&syn, |p| p[32] = 15 << 4), Counter::DropBadLength),
        ("wrong TCP checksum", edited(&syn, |p| p[36] ^= 0x11), Counter::DropL4Checksum),
        ("wrong UDP checksum", edited(&udp, |p| p[26] ^= 0x11), Counter::DropL4Checksum),
        ("UDP length beyond the packet", edited(&udp, |p| p[25] += 40), Counter::DropBadLength),
    ];
    for (what, packet, counter) in cases {
        // Each case on a fresh gateway: nothing else may explain the counter or an entry.
        example(move |gw| {
            let run = gw.xdp("eth4", &from_dsl(&packet));
            assert_dropped_creating_nothing(gw, what, &run, XDP_DROP, counter);
            let run = gw.uplink_in("eth4", &from_dsl(&packet));
            assert_dropped_creating_nothing(gw, what, &run, TC_ACT_SHOT, counter);
            assert_eq!(gw.counter(counter), 2, "{what}: counted once per program");
        });
    }
}

/// The martian source ranges end where they should: the last addresses below 224/3 and above
/// 127/8 and 0/8 open connections like any other.
#[test]
fn sources_next_to_the_martian_ranges_open_connections() {
    for src in [
        Ipv4Addr::new(223, 255, 255, 254),
        Ipv4Addr::new(128, 0, 0, 1),
        Ipv4Addr::new(126, 255, 255, 254),
        Ipv4Addr::new(1, 0, 0, 1),
    ] {
        example(move |gw| {
            let run = gw.xdp("eth4", &from_dsl(&syn_to_dsl(src)));
            let want = Ip::new(src, ISOLDE).ttl(63).tcp(40000, 80, TCP_SYN);
            assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
            assert_eq!(gw.counter(Counter::DropMartianSource), 0, "{src}");
        });
    }
}

#[test]
fn malformed_packets_from_the_lan_are_dropped_and_never_masqueraded() {
    let syn = Ip::new(TRISTAN, CLIENT).tcp(50000, 443, TCP_SYN);
    let cases: Vec<(&str, Vec<u8>, Counter)> = vec![
        (
            "bad IP header checksum",
            {
                let mut p = syn.clone();
                p[11] ^= 0x01;
                p
            },
            Counter::DropIpChecksum,
        ),
        ("tot_len beyond the frame", edited(&syn, |p| p[3] += 4), Counter::DropBadLength),
        (
            "source 127.0.0.1",
            Ip::new(Ipv4Addr::LOCALHOST, CLIENT).tcp(50000, 443, TCP_SYN),
            Counter::DropMartianSource,
        ),
        ("wrong TCP checksum", edited(&syn, |p| p[36] ^= 0x80), Counter::DropL4Checksum),
        (
            "SYN+FIN",
            Ip::new(TRISTAN, CLIENT).tcp(50000, 443, TCP_SYN | TCP_FIN),
            Counter::DropTcpFlags,
        ),
    ];
    for (what, packet, counter) in cases {
        example(move |gw| {
            let run = gw.lan_in(&from_lan(TRISTAN_MAC, &packet));
            assert_dropped_creating_nothing(gw, what, &run, TC_ACT_SHOT, counter);
        });
    }
}

/// A local sender leaves the TCP checksum to offload (CHECKSUM_PARTIAL): the field holds the
/// pseudo-header sum only. masq takes it, as the kernel completes it on the way out.
#[test]
fn offloaded_checksum_of_a_local_sender_opens_the_connection() {
    example(|gw| {
        let mut syn = Ip::new(TRISTAN, CLIENT).tcp(50000, 443, TCP_SYN);
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&TRISTAN.octets());
        pseudo.extend_from_slice(&CLIENT.octets());
        pseudo.extend_from_slice(&[0, IPPROTO_TCP, 0, 20]);
        let partial = !internet_checksum(&pseudo);
        syn[36..38].copy_from_slice(&partial.to_be_bytes());
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &syn));
        assert_eq!(run.ret, TC_ACT_REDIRECT, "counters {:?}", gw.counters());
        gw.assert_counters_no_drops(&[(Counter::OutboundNew, 1)]);
    });
}

#[test]
fn a_vlan_tagged_frame_from_the_lan_is_not_masqueraded() {
    example(|gw| {
        let syn = Ip::new(TRISTAN, CLIENT).tcp(50000, 443, TCP_SYN);
        // The tag in the frame (as XDP or a device without VLAN offload shows it).
        let mut frame = from_lan(TRISTAN_MAC, &syn);
        frame.splice(12..12, [0x81, 0x00, 0x00, 0x64]);
        let run = gw.lan_in(&frame);
        assert_eq!(run.ret, TC_ACT_OK);
        assert_eq!(run.out, frame, "left untouched");
        assert!(gw.conns().is_empty());
    });
}

// ---- TCP sequence space ----

const CLIENT_ISN: u32 = 0x4000_0000;
const SERVER_ISN: u32 = 0x9000_0000;

/// A connection from the client to isolde's web server on ISP A, handshake done and 100 bytes
/// each way; returns the sequence numbers each side sends next.
fn established_inbound(gw: &Gw) -> (u32, u32) {
    let from_client = |flags, seq_ack, data: &[u8]| {
        let p = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, flags, seq_ack, data);
        let run = gw.xdp("eth4", &from_dsl(&p));
        assert_eq!(run.ret, XDP_REDIRECT, "client packet: {:?}", gw.counters());
    };
    let from_server = |flags, seq_ack, data: &[u8]| {
        let p = Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, flags, seq_ack, data);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &p));
        assert_eq!(run.ret, TC_ACT_REDIRECT, "server packet: {:?}", gw.counters());
    };
    let (c, s) = (CLIENT_ISN, SERVER_ISN);
    from_client(TCP_SYN, (c, 0), b"");
    from_server(TCP_SYN | TCP_ACK, (s, c + 1), b"");
    from_client(TCP_ACK, (c + 1, s + 1), b"");
    from_client(TCP_ACK, (c + 1, s + 1), &[b'q'; 100]);
    from_server(TCP_ACK, (s + 1, c + 101), &[b'r'; 100]);
    from_client(TCP_ACK, (c + 101, s + 101), b"");
    (c + 101, s + 101)
}

fn client_entry(gw: &Gw) -> ConnEntry {
    gw.conn(&tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80))).unwrap()
}

#[test]
fn blind_rst_or_fin_out_of_window_changes_nothing_and_an_exact_rst_closes() {
    example(|gw| {
        let (client_next, _) = established_inbound(gw);
        let before = client_entry(gw);
        for (flags, seq) in [
            (TCP_RST, 0),
            (TCP_RST | TCP_ACK, client_next + 70_000),
            (TCP_RST, client_next.wrapping_sub(70_000)),
            (TCP_FIN | TCP_ACK, client_next + 1_000_000),
        ] {
            let p = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(
                40000,
                80,
                flags,
                (seq, SERVER_ISN + 101),
                b"",
            );
            let run = gw.xdp("eth4", &from_dsl(&p));
            assert_eq!(run.ret, XDP_DROP, "flags {flags:#x} seq {seq:#x}");
            let run = gw.uplink_in("eth4", &from_dsl(&p));
            assert_eq!(run.ret, TC_ACT_SHOT, "flags {flags:#x} seq {seq:#x} (TC)");
        }
        gw.assert_counters(&[(Counter::DropTcpOutOfWindow, 8)]);
        assert_eq!(client_entry(gw), before, "the connection is as it was");

        // The same from the server's side.
        let p = Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_RST, (7, 0), b"");
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &p)).ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropTcpOutOfWindow, 9)]);

        // The reset the host would take: its sequence number is the next one expected.
        let p = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_RST, (client_next, 0), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&p)).ret, XDP_REDIRECT);
        assert_ne!(client_entry(gw).tcp_seen & masq_common::TCP_SEEN_RST, 0, "closing");
    });
}

#[test]
fn a_refused_syn_is_reset_by_a_rst_acknowledging_it_not_by_a_blind_one() {
    example(|gw| {
        let syn = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_SYN, (CLIENT_ISN, 0), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&syn)).ret, XDP_REDIRECT);
        let rst =
            |ack| Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_RST | TCP_ACK, (0, ack), b"");
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &rst(CLIENT_ISN + 5)));
        assert_eq!(run.ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropTcpOutOfWindow, 1)]);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &rst(CLIENT_ISN + 1)));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
    });
}

// ---- ICMP errors ----

/// tristan's UDP flow out of ISP A (DSL) and the packet the internet saw.
fn tristan_udp_via_dsl(gw: &Gw) -> Vec<u8> {
    let p = Ip::new(TRISTAN, CLIENT).udp(50000, 53, b"q");
    let run = gw.lan_in(&from_lan(TRISTAN_MAC, &p));
    assert_eq!(run.ret, TC_ACT_REDIRECT);
    run.out[ETH_HLEN..].to_vec()
}

#[test]
fn port_unreachable_reaches_the_lan_host_only_when_it_matches_the_connection() {
    example(|gw| {
        let sent = tristan_udp_via_dsl(gw);
        assert_eq!(IpView(&sent).src(), GW_ISP_A);
        let unreachable = |to: Ipv4Addr, quoted: &[u8]| {
            Ip::new(CLIENT, to).icmp_error(ICMP_DEST_UNREACH, 3, [0; 4], quoted)
        };
        // Outer destination not the connection's address; the right error on the other
        // uplink; one addressed straight to the LAN host quoting its untranslated packet.
        let untranslated = Ip::new(TRISTAN, CLIENT).ttl(63).udp(50000, 53, b"q");
        for (what, frame, xdp) in [
            ("wrong outer destination", from_dsl(&unreachable(ISP_A_ROUTER, &sent)), Some("eth4")),
            ("wrong uplink", from_ispb(&unreachable(GW_ISP_A, &sent)), Some("eth1")),
            (
                "straight to the LAN host",
                from_dsl(&unreachable(TRISTAN, &untranslated)),
                Some("eth4"),
            ),
        ] {
            let dev = xdp.unwrap();
            let run = gw.xdp(dev, &frame);
            assert_eq!(run.ret, XDP_DROP, "{what}: {:?}", gw.counters());
            let run = gw.uplink_in(dev, &frame);
            assert_eq!(run.ret, TC_ACT_SHOT, "{what} (TC)");
        }
        gw.assert_counters(&[
            (Counter::DropIcmpErrorMismatch, 6),
            (Counter::IcmpErrorTranslated, 0),
        ]);

        let run = gw.xdp("eth4", &from_dsl(&unreachable(GW_ISP_A, &sent)));
        assert_eq!(run.ret, XDP_REDIRECT);
        let view = IpView::of_frame(&run.out);
        assert_eq!((view.dst(), view.inner().src()), (TRISTAN, TRISTAN));
        gw.assert_counters(&[(Counter::IcmpErrorTranslated, 1)]);
    });
}

#[test]
fn icmp_error_quoting_a_tcp_sequence_out_of_flight_is_dropped() {
    example(|gw| {
        let (client_next, server_next) = established_inbound(gw);
        // A router past ISP A says the server's segment could not be delivered.
        let quoted = |seq| {
            Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).tcp_seq(
                80,
                40000,
                TCP_ACK,
                (seq, client_next),
                b"",
            )
        };
        let err = |seq| {
            Ip::new(CORE_ROUTER, PUBLIC_ISP_A).icmp_error(
                ICMP_DEST_UNREACH,
                4,
                [0, 0, 5, 0xdc],
                &quoted(seq),
            )
        };
        let run = gw.xdp("eth4", &from_dsl(&err(server_next.wrapping_add(0x4000_0000))));
        assert_eq!(run.ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropIcmpErrorMismatch, 1)]);
        let run = gw.xdp("eth4", &from_dsl(&err(server_next - 100)));
        assert_eq!(run.ret, XDP_REDIRECT, "{:?}", gw.counters());
        gw.assert_counters(&[(Counter::IcmpErrorTranslated, 1)]);
    });
}

// ---- Mutated packets ----

/// xorshift64*: reproducible randomness without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One mutation of a valid frame: a truncation, bit flips anywhere in the headers, random TCP
/// flags, a random length field; the IP checksum made right again half of the time (else
/// nearly every mutant would stop at that check).
fn mutate(rng: &mut Rng, frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let headers = (ETH_HLEN + 60).min(f.len());
    match rng.below(5) {
        0 => f.truncate(ETH_HLEN + rng.below(f.len() - ETH_HLEN + 1)),
        1 | 2 => {
            for _ in 0..=rng.below(3) {
                let at = ETH_HLEN + rng.below(headers - ETH_HLEN);
                f[at] ^= 1 << rng.below(8);
            }
        }
        3 if f.len() > ETH_HLEN + 33 => f[ETH_HLEN + 33] = rng.next() as u8,
        _ => {
            let at = [ETH_HLEN + 2, ETH_HLEN + 24, ETH_HLEN + 32][rng.below(3)].min(f.len() - 2);
            f[at..at + 2].copy_from_slice(&(rng.next() as u16).to_be_bytes());
        }
    }
    if rng.below(2) == 0 && f.len() >= ETH_HLEN + 20 && f[ETH_HLEN] == 0x45 {
        fix_ip_csum(&mut f[ETH_HLEN..]);
    }
    f
}

/// Whether an IPv4 packet is one masq may open a connection for: header and transport
/// checksums right, lengths consistent, a unicast non-martian source, TCP flags a stack sends.
fn openable(ip: &[u8]) -> bool {
    if ip.len() < 28 || ip[0] != 0x45 || internet_checksum(&ip[..20]) != 0 {
        return false;
    }
    let v = IpView(ip);
    let tot = v.tot_len();
    let martian =
        |a: Ipv4Addr| a.octets()[0] == 0 || a.is_loopback() || a.is_multicast() || a.is_broadcast();
    if tot < 28 || tot > ip.len() || martian(v.src()) || martian(v.dst()) {
        return false;
    }
    let l4 = &ip[20..tot];
    // A first fragment's transport checksum and UDP length cover the whole datagram: masq
    // cannot verify them (no reassembly) and takes its headers as they are.
    let first_fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff == 0x2000;
    let checksums_ok = first_fragment || checksums(ip, "").is_ok();
    match v.proto() {
        IPPROTO_TCP => {
            let doff = usize::from(l4.get(12).copied().unwrap_or(0) >> 4) * 4;
            let flags = l4.get(13).copied().unwrap_or(0) & !0x08 & 0x3f;
            let valid = [0x02, 0x22, 0x12, 0x04, 0x14, 0x11, 0x31, 0x10, 0x30];
            doff >= 20 && doff <= l4.len() && valid.contains(&flags) && checksums(ip, "").is_ok()
        }
        IPPROTO_UDP => {
            let ulen = usize::from(u16::from_be_bytes([l4[4], l4[5]]));
            ulen >= 8 && (first_fragment || ulen <= l4.len()) && checksums_ok
        }
        IPPROTO_ICMP => checksums(ip, "").is_ok(),
        _ => true,
    }
}

/// The checksums of an IPv4 packet; of a fragment only its header's (its transport checksum
/// covers the whole datagram).
fn checksums(ip: &[u8], what: &str) -> Result<(), String> {
    let fragment = u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0;
    if fragment {
        let hlen = usize::from(ip[0] & 0x0f) * 4;
        return match internet_checksum(&ip[..hlen]) {
            0 => Ok(()),
            _ => Err(format!("{what}: fragment header checksum")),
        };
    }
    // A mutant's headers may be too short for the checker: that is no valid checksum either.
    std::panic::catch_unwind(|| IpView(ip).check_checksums(what))
        .unwrap_or_else(|_| Err(format!("{what}: headers too short to check")))
}

fn in_lan_prefix(a: Ipv4Addr) -> bool {
    a.octets()[..3] == [192, 168, 100]
}

/// A few hundred thousand mutants of valid frames through every program. Each must be dropped,
/// passed untouched, or translated with its checksums as valid as they arrived (a packet that
/// opens a connection is verified, so valid); a new connection only from a packet that could
/// open one; no LAN source out of an uplink untranslated.
#[test]
fn mutated_packets_are_dropped_passed_or_translated_with_valid_checksums() {
    example(|gw| {
        // Connections for the mutants to hit: published services, masqueraded flows.
        established_inbound(gw);
        tristan_udp_via_dsl(gw);
        let seeds: Vec<(&str, Vec<u8>)> = vec![
            (
                "eth4",
                from_dsl(&Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40001, 80, TCP_SYN, (1, 0), b"")),
            ),
            (
                "eth4",
                from_dsl(&Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(
                    40000,
                    80,
                    TCP_ACK,
                    (CLIENT_ISN + 101, SERVER_ISN + 101),
                    b"data",
                )),
            ),
            ("eth4", from_dsl(&Ip::new(CLIENT, PUBLIC_ISP_A).udp(5353, 53, b"query"))),
            ("eth4", from_dsl(&Ip::new(CLIENT, GW_ISP_A).udp(53, 50000, b"answer"))),
            ("eth1", from_ispb(&Ip::new(CLIENT, PUBLIC_ISP_B).echo(true, 7, 1))),
            ("eth0", from_lan(TRISTAN_MAC, &Ip::new(TRISTAN, CLIENT).tcp(50001, 443, TCP_SYN))),
            ("eth0", from_lan(TRISTAN_MAC, &Ip::new(TRISTAN, CLIENT).udp(50000, 53, b"q2"))),
            (
                "eth0",
                from_lan(
                    ISOLDE_MAC,
                    &Ip::new(ISOLDE, CLIENT).tcp_seq(
                        80,
                        40000,
                        TCP_ACK,
                        (SERVER_ISN + 101, CLIENT_ISN + 101),
                        b"more",
                    ),
                ),
            ),
            ("eth0", from_lan(MARKE_MAC, &Ip::new(MARKE, CLIENT).echo(true, 9, 1))),
        ];
        let iterations: usize =
            std::env::var("MASQ_MUTANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(150_000);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let opened = || gw.counter(Counter::InboundNew) + gw.counter(Counter::OutboundNew);
        let mut runs = 0;
        for i in 0..iterations {
            let (dev, seed) = &seeds[i % seeds.len()];
            let frame = mutate(&mut rng, seed);
            let before = opened();
            let ip = frame.get(ETH_HLEN..).unwrap_or(&[]);
            // test_run refuses TC runs of IPv4 frames shorter than an IP header.
            let tc = frame.len() >= ETH_HLEN + 20;
            let mut results = Vec::new();
            if *dev == "eth0" {
                if tc {
                    results.push(("lan_in", gw.lan_in(&frame), TC_ACT_REDIRECT));
                    // What the kernel would have forwarded out of ISP B.
                    results.push(("uplink_out", gw.uplink_out("eth1", &frame), TC_ACT_OK));
                }
            } else {
                results.push(("xdp", gw.xdp(dev, &frame), XDP_REDIRECT));
                if tc {
                    results.push(("uplink_in", gw.uplink_in(dev, &frame), TC_ACT_REDIRECT));
                }
            }
            runs += results.len();
            for (prog, run, forward) in &results {
                let what = format!("{prog} mutant {i}: {}", hex(&frame));
                let translated = run.out != frame;
                if (run.ret == *forward || run.ret == TC_ACT_OK || run.ret == XDP_PASS)
                    && translated
                {
                    // Translation keeps checksums exactly as right as they arrived: a flow's
                    // later packets are not verified (the receiver does), only updated.
                    let out = IpView::of_frame(&run.out);
                    let (arrived, left) = (checksums(ip, "in"), checksums(out.0, &what));
                    assert_eq!(left.is_ok(), arrived.is_ok(), "{what}: {left:?} / {arrived:?}");
                    if *prog == "lan_in" || *prog == "uplink_out" {
                        assert!(!in_lan_prefix(out.src()), "{what}: LAN source left");
                    }
                }
                if *prog == "uplink_out"
                    && run.ret == TC_ACT_OK
                    && ip.len() >= 20
                    && ip[0] >> 4 == 4
                {
                    let out = IpView(&run.out[ETH_HLEN..]);
                    assert!(!in_lan_prefix(out.src()), "{what}: LAN source left untranslated");
                }
            }
            if opened() > before {
                assert!(openable(ip), "mutant {i} opened a connection: {}", hex(&frame));
            }
        }
        eprintln!("{runs} program runs over {iterations} mutants; counters {:?}", gw.counters());
    });
}

// ---- Found by review: legitimate packets the checks must take ----

#[test]
fn a_retransmitted_fin_with_data_is_taken_after_its_ack_passed() {
    example(|gw| {
        let (_, server_next) = established_inbound(gw);
        let fin = Ip::new(ISOLDE, CLIENT).tcp_seq(
            80,
            40000,
            TCP_FIN | TCP_ACK,
            (server_next, CLIENT_ISN + 101),
            &[b'z'; 500],
        );
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &fin)).ret, TC_ACT_REDIRECT);
        // The client's ACK of data and FIN passes masq, then is lost; the server sends again.
        let ack = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(
            40000,
            80,
            TCP_ACK,
            (CLIENT_ISN + 101, server_next + 501),
            b"",
        );
        assert_eq!(gw.xdp("eth4", &from_dsl(&ack)).ret, XDP_REDIRECT);
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &fin)).ret, TC_ACT_REDIRECT, "retransmission");
        gw.assert_no_drops();
    });
}

/// The client comes back from the same port with a new ISN "before" the old one (the old
/// connection died without FIN or RST): the server's SYN-ACK renews both directions' state, so
/// the new connection's FIN is taken; a RST refusing such a SYN is taken too.
#[test]
fn a_tuple_reused_with_an_earlier_isn_starts_its_sequence_state_over() {
    example(|gw| {
        established_inbound(gw);
        let isn = CLIENT_ISN - 0x1000_0000;
        let from_client = |flags, seq_ack| {
            let p = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, flags, seq_ack, b"");
            gw.xdp("eth4", &from_dsl(&p)).ret
        };
        // A RST|ACK refusing the reused tuple's SYN.
        assert_eq!(from_client(TCP_SYN, (isn, 0)), XDP_REDIRECT);
        let refuse =
            Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_RST | TCP_ACK, (0, isn + 1), b"");
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &refuse)).ret, TC_ACT_REDIRECT, "refusal");

        // Again, answered this time.
        let isn = isn - 0x100;
        assert_eq!(from_client(TCP_SYN, (isn, 0)), XDP_REDIRECT);
        let synack =
            Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_SYN | TCP_ACK, (7, isn + 1), b"");
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &synack)).ret, TC_ACT_REDIRECT);
        assert_eq!(from_client(TCP_ACK, (isn + 1, 8)), XDP_REDIRECT);
        assert_eq!(from_client(TCP_FIN | TCP_ACK, (isn + 1, 8)), XDP_REDIRECT, "the new FIN");
        gw.assert_no_drops();
    });
}

/// A blind attacker's SYN on a live tuple changes nothing it could use: its RST afterwards is
/// still out of the window.
#[test]
fn a_forged_syn_on_a_live_tuple_does_not_open_its_window() {
    example(|gw| {
        let (client_next, _) = established_inbound(gw);
        let forged =
            Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_SYN, (0x1234_0000, 0), b"");
        gw.xdp("eth4", &from_dsl(&forged));
        for seq in [0x1234_0001, client_next + 0x4000_0000] {
            let rst = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_RST, (seq, 0), b"");
            assert_eq!(gw.xdp("eth4", &from_dsl(&rst)).ret, XDP_DROP, "seq {seq:#x}");
        }
        gw.assert_counters(&[(Counter::DropTcpOutOfWindow, 2)]);
    });
}

/// A SYN that reuses a live tuple is a reuse only until its sender sends anything else: a data
/// segment from the same side ends it, and a late SYN-ACK then starts nothing over.
#[test]
fn a_segment_after_a_reusing_syn_ends_the_reuse() {
    use masq_common::{TCP_SEEN_ACK, TCP_SEEN_RESYN, TCP_SEEN_SEQ};
    example(|gw| {
        let (client_next, server_next) = established_inbound(gw);
        let syn = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_SYN, (0x1234_0000, 0), b"");
        gw.xdp("eth4", &from_dsl(&syn));
        assert_ne!(client_entry(gw).tcp_seen & TCP_SEEN_RESYN, 0, "the SYN begins a reuse");
        let data = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(
            40000,
            80,
            TCP_ACK,
            (client_next, server_next),
            &[b'q'; 10],
        );
        assert_eq!(gw.xdp("eth4", &from_dsl(&data)).ret, XDP_REDIRECT);
        let entry = client_entry(gw);
        assert_eq!(entry.tcp_seen & TCP_SEEN_RESYN, 0, "data from the same side ends it");
        assert_eq!(entry.tcp_seen & (TCP_SEEN_SEQ | TCP_SEEN_ACK), TCP_SEEN_SEQ | TCP_SEEN_ACK);
        assert_eq!(entry.tcp_next_seq, client_next + 10);
        let late = Ip::new(ISOLDE, CLIENT).tcp_seq(
            80,
            40000,
            TCP_SYN | TCP_ACK,
            (0x5555_0000, 0x1234_0001),
            b"",
        );
        gw.lan_in(&from_lan(ISOLDE_MAC, &late));
        assert_eq!(client_entry(gw).tcp_next_seq, client_next + 10, "nothing starts over");
    });
}

#[test]
fn a_blind_ack_does_not_confirm_a_flooded_connection() {
    example(|gw| {
        let syn = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_SYN, (100, 0), b"");
        gw.xdp("eth4", &from_dsl(&syn));
        let synack = Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_SYN | TCP_ACK, (500, 101), b"");
        gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        let blind =
            Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_ACK, (101, 0x7777_0000), b"");
        gw.xdp("eth4", &from_dsl(&blind));
        gw.assert_counters(&[(Counter::ConnsConfirmed, 0)]);
        let right = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_ACK, (101, 501), b"");
        gw.xdp("eth4", &from_dsl(&right));
        gw.assert_counters(&[(Counter::ConnsConfirmed, 1)]);
    });
}

/// Bytes past the UDP length (Linux trims them) are not part of the checksum.
#[test]
fn udp_with_bytes_past_its_length_opens_its_connection() {
    example(|gw| {
        let mut q = Ip::new(TRISTAN, CLIENT).udp(50000, 53, b"query");
        q.extend_from_slice(&[0xaa; 6]);
        let tot = q.len() as u16;
        let q = edited(&q, |p| p[2..4].copy_from_slice(&tot.to_be_bytes()));
        assert_eq!(
            gw.lan_in(&from_lan(TRISTAN_MAC, &q)).ret,
            TC_ACT_REDIRECT,
            "{:?}",
            gw.counters()
        );
        gw.assert_counters(&[(Counter::OutboundNew, 1)]);
    });
}
