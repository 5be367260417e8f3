//! Limits and other traffic: fragments, TCP without SYN, TTL, non-IPv4, ARP.
use super::*;

#[test]
fn truncated_tcp_header_is_dropped_as_malformed() {
    example(|gw| {
        let syn = client_syn();
        let cut = Ip::new(CLIENT, PUBLIC_ISP_A).packet(IPPROTO_TCP, &syn[20..30]);
        assert_eq!(gw.xdp("eth4", &from_dsl(&cut)).ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropMalformed, 1)]);
        assert!(gw.conns().is_empty());
    });
}

#[test]
fn fragments_to_a_published_address_follow_their_first_fragment() {
    example(|gw| {
        let first = Ip::new(CLIENT, PUBLIC_ISP_A).frag(IP_MF).udp(5353, 53, &[7; 64]);
        let run = gw.xdp("eth4", &from_dsl(&first));
        assert_eq!(run.ret, XDP_REDIRECT);
        assert_eq!(IpView::of_frame(&run.out).dst(), ISOLDE);
        assert_checksums(&run.out);
        let later = Ip::new(CLIENT, PUBLIC_ISP_A).frag(9).packet(IPPROTO_UDP, &[7; 16]);
        let run = gw.xdp("eth4", &from_dsl(&later));
        assert_eq!(run.ret, XDP_REDIRECT);
        let view = IpView::of_frame(&run.out);
        assert_eq!((view.src(), view.dst()), (CLIENT, ISOLDE));
        gw.assert_no_drops();
    });
}

#[test]
fn later_fragment_without_its_first_is_dropped() {
    example(|gw| {
        let later = Ip::new(CLIENT, PUBLIC_ISP_A).frag(9).packet(IPPROTO_UDP, &[7; 16]);
        assert_eq!(gw.xdp("eth4", &from_dsl(&later)).ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropFragment, 1)]);
        assert!(gw.conns().is_empty());
    });
}

#[test]
fn tcp_without_syn_and_without_connection_is_dropped() {
    example(|gw| {
        for flags in [TCP_ACK, TCP_SYN | TCP_ACK, TCP_RST, TCP_FIN | TCP_ACK] {
            let p = Ip::new(CLIENT, PUBLIC_ISP_A).tcp(40000, 80, flags);
            assert_eq!(gw.xdp("eth4", &from_dsl(&p)).ret, XDP_DROP, "flags {flags:#x}");
        }
        let ack = Ip::new(TRISTAN, CLIENT).tcp(50000, 443, TCP_ACK);
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &ack)).ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropTcpNoConn, 5)]);
        assert!(gw.conns().is_empty());
    });
}

#[test]
fn ttl_1_to_a_published_address_is_left_untouched_to_the_kernel() {
    example(|gw| {
        let frame = from_dsl(&Ip::new(CLIENT, PUBLIC_ISP_A).ttl(1).tcp(40000, 80, TCP_SYN));
        assert_run(&gw.xdp("eth4", &frame), XDP_PASS, &frame);
        gw.assert_counters(&[(Counter::TtlExpiring, 1), (Counter::InboundNew, 0)]);
        assert!(gw.conns().is_empty());

        // The same for a known connection: untranslated, so the kernel's error quotes it.
        client_syn_via_dsl(gw);
        let frame = from_dsl(&Ip::new(CLIENT, PUBLIC_ISP_A).ttl(1).tcp(40000, 80, TCP_ACK));
        assert_run(&gw.xdp("eth4", &frame), XDP_PASS, &frame);
        let frame = from_lan(ISOLDE_MAC, &Ip::new(ISOLDE, CLIENT).ttl(1).tcp(80, 40000, TCP_ACK));
        let run = gw.lan_in(&frame);
        assert_run(&run, TC_ACT_OK, &frame);
        gw.assert_counters_no_drops(&[(Counter::TtlExpiring, 3)]);
    });
}

#[test]
fn non_ipv4_frames_pass_untouched() {
    example(|gw| {
        let v6 = eth(ETH4_MAC, ISP_A_ROUTER_MAC, ETH_P_IPV6, &[0x60; 48]);
        let arp_other = arp_request(ISP_A_ROUTER_MAC, ISP_A_ROUTER, Ipv4Addr::new(67, 17, 28, 5));
        let arp_gw = arp_request(ISP_A_ROUTER_MAC, ISP_A_ROUTER, GW_ISP_A);
        for frame in [&v6, &arp_other, &arp_gw] {
            assert_run(&gw.xdp("eth4", frame), XDP_PASS, frame);
        }
        let v6_lan = eth(ETH0_MAC, ISOLDE_MAC, ETH_P_IPV6, &[0x60; 48]);
        assert_run(&gw.lan_in(&v6_lan), TC_ACT_OK, &v6_lan);
        // IPv4 with options is not masq's either (see the egress test for the LAN side).
        let opts =
            Ip::new(CLIENT, PUBLIC_ISP_A).packet_with_options(IPPROTO_UDP, &[1, 1, 1, 0], &[0; 8]);
        let frame = from_dsl(&opts);
        assert_run(&gw.xdp("eth4", &frame), XDP_PASS, &frame);
        assert!(gw.conns().is_empty());
        gw.assert_no_drops();
    });
}

#[test]
fn arp_for_a_published_address_is_answered_on_its_own_uplink_only() {
    example(|gw| {
        let req = arp_request(ISP_A_ROUTER_MAC, ISP_A_ROUTER, PUBLIC_ISP_A);
        let run = gw.xdp("eth4", &req);
        assert_run(
            &run,
            XDP_REDIRECT,
            &arp_reply(gw.mac("eth4"), PUBLIC_ISP_A, ISP_A_ROUTER_MAC, ISP_A_ROUTER),
        );

        let req = arp_request(ISP_B_ROUTER_MAC, ISP_B_ROUTER, PUBLIC_ISP_B);
        let run = gw.xdp("eth1", &req);
        assert_run(
            &run,
            XDP_REDIRECT,
            &arp_reply(ETH1_MAC, PUBLIC_ISP_B, ISP_B_ROUTER_MAC, ISP_B_ROUTER),
        );

        // The DSL address asked for on ISP B's link: not ours to answer there.
        let req = arp_request(ISP_B_ROUTER_MAC, ISP_B_ROUTER, PUBLIC_ISP_A);
        assert_run(&gw.xdp("eth1", &req), XDP_PASS, &req);
        gw.assert_counters(&[(Counter::ArpReplied, 2)]);
    });
}

#[test]
fn an_unsolicited_syn_to_an_uplink_address_is_dropped_silently_unless_the_gateway_listens() {
    example(|gw| {
        // Nobody listens on 12345: the kernel would answer a RST at once; masq stays silent.
        let syn = Ip::new(CLIENT, GW_ISP_A).tcp_seq(40000, 12345, TCP_SYN, (1, 0), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&syn)).ret, XDP_DROP);
        assert_eq!(gw.uplink_in("eth4", &from_dsl(&syn)).ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropUnsolicitedSyn, 2)]);
        // The gateway's own service is reached as before.
        let listener = std::net::TcpListener::bind(("0.0.0.0", 2222)).unwrap();
        let syn = Ip::new(CLIENT, GW_ISP_A).tcp_seq(40000, 2222, TCP_SYN, (1, 0), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&syn)).ret, XDP_PASS);
        assert_eq!(gw.uplink_in("eth4", &from_dsl(&syn)).ret, TC_ACT_OK);
        drop(listener);
        // Not a SYN, or not to the uplink's address: left to the kernel as before.
        let ack = Ip::new(CLIENT, GW_ISP_A).tcp_seq(40000, 12345, TCP_ACK, (1, 1), b"");
        assert_eq!(gw.uplink_in("eth4", &from_dsl(&ack)).ret, TC_ACT_OK);
        gw.assert_counters(&[(Counter::DropUnsolicitedSyn, 2)]);
    });
}

#[test]
fn a_new_lan_connection_without_its_program_is_a_counted_drop_and_makes_nothing() {
    example(|gw| {
        let mut slots: aya::maps::ProgramArray<_> = aya::maps::ProgramArray::try_from(
            gw.dp.ebpf_mut().map_mut(map_names::TAIL_CALLS).unwrap(),
        )
        .unwrap();
        slots.clear_index(&masq_common::TAIL_LAN_NEW).unwrap();
        let syn = Ip::new(TRISTAN, CLIENT).tcp(50000, 443, TCP_SYN);
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &syn)).ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropTailCall, 1), (Counter::OutboundNew, 0)]);
        assert!(gw.conns().is_empty());
        gw.dp.link_tail_calls().unwrap();
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &syn)).ret, TC_ACT_REDIRECT);
        gw.assert_counters(&[(Counter::DropTailCall, 1), (Counter::OutboundNew, 1)]);
    });
}
