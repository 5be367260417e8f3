//! Published services: inbound connections, their replies, port forwards.
use super::*;

#[test]
fn inbound_syn_to_dsl_address_is_dnated_and_tracked_on_dsl() {
    example(|gw| {
        let run = client_syn_via_dsl(gw);
        assert_client_syn_reached_isolde(gw, &run, XDP_REDIRECT);
        let reply = gw.conn(&tcp_key((ISOLDE, 80), (CLIENT, 40000))).unwrap();
        assert_eq!(reply.xlate.src_addr, wire_addr(PUBLIC_ISP_A));
        assert_eq!(gw.conns().len(), 2);
        gw.assert_counters_no_drops(&[
            (Counter::InboundNew, 1),
            (Counter::FastPathRedirect, 1),
            (Counter::XdpRedirect, 1),
            (Counter::ToLanTranslated, 1),
        ]);
    });
}

#[test]
fn tc_uplink_ingress_dnats_like_xdp_and_counts_no_xdp_redirect() {
    example(|gw| {
        let run = gw.uplink_in("eth4", &from_dsl(&client_syn()));
        assert_client_syn_reached_isolde(gw, &run, TC_ACT_REDIRECT);
        gw.assert_counters_no_drops(&[
            (Counter::InboundNew, 1),
            (Counter::FastPathRedirect, 1),
            (Counter::XdpRedirect, 0),
        ]);
    });
}

/// The L3 variant (PPP, raw-ip, WireGuard, tun: the IPv4 header at offset 0). test_run always
/// hands a TC program the bytes given, so the raw packet is what the program sees.
#[test]
fn l3_uplink_ingress_dnats_a_packet_without_ethernet_and_adds_the_lan_header() {
    example(|gw| {
        let eth4 = gw.ifindex("eth4");
        let run = gw.tc(program_names::UPLINK_INGRESS_L3, eth4, eth4, &client_syn());
        assert_client_syn_reached_isolde(gw, &run, TC_ACT_REDIRECT);
        gw.assert_counters_no_drops(&[(Counter::InboundNew, 1), (Counter::FastPathRedirect, 1)]);
    });
}

#[test]
fn l3_uplink_egress_translates_a_packet_without_ethernet() {
    example(|gw| {
        tristan_syn(gw, 50000);
        let ack = Ip::new(TRISTAN, CLIENT).ttl(63).tcp(50000, 443, TCP_ACK);
        let (eth0, eth4) = (gw.ifindex("eth0"), gw.ifindex("eth4"));
        let run = gw.tc(program_names::UPLINK_EGRESS_L3, eth0, eth4, &ack);
        let want = Ip::new(GW_ISP_A, CLIENT).ttl(63).tcp(50000, 443, TCP_ACK);
        assert_eq!(run.ret, TC_ACT_OK, "output:\n{}", hex(&run.out));
        assert_eq!(hex(&run.out), hex(&want), "no Ethernet header added");
        assert_checksums(&eth_ip([0; 6], [0; 6], &run.out));
        gw.assert_counters_no_drops(&[(Counter::EgressTranslated, 1)]);
    });
}

#[test]
fn reply_to_dsl_connection_leaves_by_dsl_not_by_main_default() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));

        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_left_by(&run, DSL, &want);
        gw.assert_counters(&[
            (Counter::ToUplinkTranslated, 1),
            (Counter::FastPathRedirect, 2),
            (Counter::OutboundNew, 0),
        ]);
        let reply = gw.conn(&tcp_key((ISOLDE, 80), (CLIENT, 40000))).unwrap();
        assert_eq!(reply.packets, 1);
        gw.assert_no_drops();
    });
}

#[test]
fn inbound_connection_to_isp_b_address_is_served_and_answered_via_isp_b() {
    example(|gw| {
        assert_inbound_handshake(gw, ISPB, 40001, (PUBLIC_ISP_B, 443), (ISOLDE, ISOLDE_MAC, 443));
        gw.assert_no_drops();
    });
}

#[test]
fn published_address_arriving_on_the_other_uplink_is_dropped() {
    example(|gw| {
        let run = gw.xdp("eth1", &from_ispb(&client_syn()));
        assert_eq!(run.ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropWrongUplink, 1), (Counter::InboundNew, 0)]);
        assert!(gw.conns().is_empty());
    });
}

#[test]
fn inbound_udp_and_reply_are_translated_and_a_zero_checksum_stays_zero() {
    example(|gw| {
        let query = Ip::new(CLIENT, PUBLIC_ISP_A).udp(5353, 53, b"query");
        let run = gw.xdp("eth4", &from_dsl(&query));
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).udp(5353, 53, b"query");
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        let udp = |s, d| key(IPPROTO_UDP, s, d);
        gw.assert_pair(
            udp((CLIENT, 5353), (PUBLIC_ISP_A, 53)),
            udp((CLIENT, 5353), (ISOLDE, 53)),
            DSL,
            true,
        );

        let answer = Ip::new(ISOLDE, CLIENT).udp(53, 5353, b"answer");
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &answer));
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).udp(53, 5353, b"answer");
        assert_left_by(&run, DSL, &want);

        // Checksum 0 ("none") in both directions: XDP and TC keep it 0.
        let query = Ip::new(CLIENT, PUBLIC_ISP_A).udp_with(6000, 69, b"q0", false);
        let run = gw.xdp("eth4", &from_dsl(&query));
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).udp_with(6000, 69, b"q0", false);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        assert_eq!(IpView::of_frame(&run.out).l4_csum(), 0);

        let answer = Ip::new(ISOLDE, CLIENT).udp_with(69, 6000, b"a0", false);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &answer));
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).udp_with(69, 6000, b"a0", false);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        assert_eq!(IpView::of_frame(&run.out).l4_csum(), 0);
        gw.assert_counters_no_drops(&[(Counter::InboundNew, 2), (Counter::ToUplinkTranslated, 2)]);
    });
}

#[test]
fn inbound_icmp_echo_to_whole_published_address_and_reply_are_translated() {
    example(|gw| {
        let ping = Ip::new(CLIENT, PUBLIC_ISP_A).echo(true, 0x1234, 1);
        let run = gw.xdp("eth4", &from_dsl(&ping));
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).echo(true, 0x1234, 1);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_pair(
            key(IPPROTO_ICMP, (CLIENT, 0x1234), (PUBLIC_ISP_A, 0)),
            key(IPPROTO_ICMP, (CLIENT, 0x1234), (ISOLDE, 0)),
            DSL,
            true,
        );

        let pong = Ip::new(ISOLDE, CLIENT).echo(false, 0x1234, 1);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &pong));
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).echo(false, 0x1234, 1);
        assert_left_by(&run, DSL, &want);
        gw.assert_no_drops();
    });
}

#[test]
fn same_client_port_to_both_public_addresses_gets_a_second_port_toward_the_server() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let syn = Ip::new(CLIENT, PUBLIC_ISP_B).tcp(40000, 80, TCP_SYN);
        let run = gw.xdp("eth1", &from_ispb(&syn));
        assert_eq!(run.ret, XDP_REDIRECT);
        let seen = IpView::of_frame(&run.out);
        let port = seen.sport();
        assert_ne!(port, 40000, "isolde already has client:40000 via DSL");
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(port, 80, TCP_SYN);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_pair(
            tcp_key((CLIENT, 40000), (PUBLIC_ISP_B, 80)),
            tcp_key((CLIENT, port), (ISOLDE, 80)),
            ISPB,
            true,
        );

        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, port, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        let want = Ip::new(PUBLIC_ISP_B, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
        assert_eq!(gw.conns().len(), 4);
        gw.assert_no_drops();
    });
}

/// A port forward on ISP B to tristan, whose own outbound policy is DSL.
const PORT_FORWARD: &str = r#"
[[publish]]
uplink = "isp-b"
address = "205.254.211.20"
proto = "tcp"
port = 2222
to = "192.168.100.32"
to_port = 22
"#;
const FWD_PUB: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 20);

#[test]
fn port_forward_translates_the_port_and_its_reply_follows_the_connection_not_the_policy() {
    with_config(PORT_FORWARD, |gw| {
        assert_inbound_handshake(gw, ISPB, 41000, (FWD_PUB, 2222), (TRISTAN, TRISTAN_MAC, 22));

        // Other ports and protocols of that address are not published.
        for p in [
            Ip::new(CLIENT, FWD_PUB).tcp(41000, 22, TCP_SYN),
            Ip::new(CLIENT, FWD_PUB).udp(41000, 2222, b"x"),
        ] {
            let frame = from_ispb(&p);
            assert_run(&gw.xdp("eth1", &frame), XDP_PASS, &frame);
        }
        gw.assert_counters_no_drops(&[(Counter::InboundNew, 1), (Counter::PassedUntouched, 2)]);
    });
}

#[test]
fn a_lan_host_reaching_a_published_address_is_hairpinned_to_the_server_and_back() {
    example(|gw| {
        // tristan to isolde's DSL address: to isolde, from the uplink's address, back into
        // the LAN (not out of an uplink, not to the kernel).
        let syn = Ip::new(TRISTAN, PUBLIC_ISP_A).tcp_seq(45000, 80, TCP_SYN, (1, 0), b"");
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &syn));
        assert_eq!(run.ret, TC_ACT_REDIRECT, "{:?}", gw.counters());
        let out = IpView::of_frame(&run.out);
        assert_eq!((out.src(), out.dst(), out.dport()), (GW_ISP_A, ISOLDE, 80));
        assert_eq!(&run.out[..6], &ISOLDE_MAC, "to isolde's MAC");
        assert_checksums(&run.out);
        let port = out.sport();
        // isolde's answer to the uplink's address comes back to tristan from the public one.
        let synack = Ip::new(ISOLDE, GW_ISP_A).tcp_seq(80, port, TCP_SYN | TCP_ACK, (9, 2), b"");
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        let back = IpView::of_frame(&run.out);
        assert_eq!(
            (back.src(), back.sport(), back.dst(), back.dport()),
            (PUBLIC_ISP_A, 80, TRISTAN, 45000)
        );
        assert_eq!(&run.out[..6], &TRISTAN_MAC);
        assert_checksums(&run.out);
        let ack = Ip::new(TRISTAN, PUBLIC_ISP_A).tcp_seq(45000, 80, TCP_ACK, (2, 10), b"");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &ack)).ret, TC_ACT_REDIRECT);
        // Ping to the whole published address alike.
        let ping = Ip::new(TRISTAN, PUBLIC_ISP_B).echo(true, 77, 1);
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &ping));
        let out = IpView::of_frame(&run.out);
        assert_eq!((run.ret, out.src(), out.dst()), (TC_ACT_REDIRECT, GW_ISP_B, ISOLDE));
        gw.assert_counters_no_drops(&[(Counter::HairpinNew, 2), (Counter::HairpinTranslated, 4)]);
        // A non-SYN opens no hairpin connection.
        let stray = Ip::new(TRISTAN, PUBLIC_ISP_A).tcp_seq(45001, 80, TCP_ACK, (2, 10), b"");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &stray)).ret, TC_ACT_SHOT);
    });
}

#[test]
fn a_lan_host_reaching_another_ones_mapping_is_hairpinned_from_its_own_mapping() {
    example(|gw| {
        // tristan's mapping behind dsl: his own port, for every destination.
        let out = Ip::new(TRISTAN, CLIENT).udp(20100, 3478, b"stun");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &out)).ret, TC_ACT_REDIRECT);
        // isolde (whose policy is isp-b) reaches it: to tristan, from isolde's own mapping
        // behind dsl, back into the LAN.
        let knock = Ip::new(ISOLDE, GW_ISP_A).udp(20200, 20100, b"peer");
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &knock));
        assert_eq!(run.ret, TC_ACT_REDIRECT, "{:?}", gw.counters());
        let view = IpView::of_frame(&run.out);
        assert_eq!(
            (view.src(), view.sport(), view.dst(), view.dport()),
            (GW_ISP_A, 20200, TRISTAN, 20100)
        );
        assert_eq!(&run.out[..6], &TRISTAN_MAC);
        assert_checksums(&run.out);
        // isolde's mapping behind dsl is hers from now on: what the internet sees too.
        assert_eq!(gw.binding_port((ISOLDE, 20200), IPPROTO_UDP, DSL), Some(20200));
        // tristan answers her mapping: back to isolde, from his.
        let answer = Ip::new(TRISTAN, GW_ISP_A).udp(20100, 20200, b"hi");
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &answer));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        let back = IpView::of_frame(&run.out);
        assert_eq!(
            (back.src(), back.sport(), back.dst(), back.dport()),
            (GW_ISP_A, 20100, ISOLDE, 20200)
        );
        assert_eq!(&run.out[..6], &ISOLDE_MAC);
        gw.assert_counters_no_drops(&[(Counter::HairpinNew, 1), (Counter::HairpinTranslated, 2)]);
        // A port nobody holds is the gateway's own: left to the kernel.
        let nobody = Ip::new(ISOLDE, GW_ISP_A).udp(20201, 20999, b"?");
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &nobody)).ret, TC_ACT_OK);
        // So is one a LAN endpoint holds where the gateway has a socket of its own.
        let _service = std::net::UdpSocket::bind(("0.0.0.0", 20300)).unwrap();
        let out = Ip::new(TRISTAN, CLIENT).udp(20300, 3478, b"stun");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &out)).ret, TC_ACT_REDIRECT);
        let to_service = Ip::new(ISOLDE, GW_ISP_A).udp(20202, 20300, b"dns?");
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &to_service)).ret, TC_ACT_OK);
        // And a datagram to one's own mapping (no hairpin to oneself).
        let own = Ip::new(TRISTAN, GW_ISP_A).udp(20100, 20100, b"me");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &own)).ret, TC_ACT_OK);
        gw.assert_counters(&[(Counter::HairpinNew, 1)]);
    });
}

#[test]
fn with_hairpin_off_a_lan_host_reaching_a_public_address_is_left_to_the_kernel() {
    with_config("[dataplane]\nhairpin = false\n", |gw| {
        let syn = Ip::new(TRISTAN, PUBLIC_ISP_A).tcp_seq(45000, 80, TCP_SYN, (1, 0), b"");
        let frame = from_lan(TRISTAN_MAC, &syn);
        assert_run(&gw.lan_in(&frame), TC_ACT_OK, &frame);
        let out = Ip::new(TRISTAN, CLIENT).udp(20100, 3478, b"stun");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &out)).ret, TC_ACT_REDIRECT);
        let knock = Ip::new(ISOLDE, GW_ISP_A).udp(20200, 20100, b"peer");
        let frame = from_lan(ISOLDE_MAC, &knock);
        assert_run(&gw.lan_in(&frame), TC_ACT_OK, &frame);
        gw.assert_counters_no_drops(&[(Counter::HairpinNew, 0), (Counter::OutboundNew, 1)]);
    });
}
