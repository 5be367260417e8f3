//! ICMP errors about tracked connections, translated with their quoted packet.
use super::*;

#[test]
fn port_unreachable_from_server_about_dnated_udp_leaves_by_dsl_translated() {
    example(|gw| {
        let query = Ip::new(CLIENT, PUBLIC_ISP_A).udp(5353, 53, b"query");
        let delivered = gw.xdp("eth4", &from_dsl(&query)).out;
        let quoted = &delivered[ETH_HLEN..];

        let err = Ip::new(ISOLDE, CLIENT).icmp_error(ICMP_DEST_UNREACH, 3, [0; 4], quoted);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &err));

        let quoted_want = Ip::new(CLIENT, PUBLIC_ISP_A).ttl(63).udp(5353, 53, b"query");
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &quoted_want,
        );
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        let inner = IpView::of_frame(&run.out).inner();
        assert_eq!((inner.src(), inner.dst()), (CLIENT, PUBLIC_ISP_A));
        assert_eq!((inner.sport(), inner.dport()), (5353, 53));
        assert_eq!(run.mark & DEFAULT_MARK_MASK, DSL_MARK);

        // A quoted UDP checksum of 0 stays 0.
        let query = Ip::new(CLIENT, PUBLIC_ISP_A).udp_with(5354, 53, b"q0", false);
        let delivered = gw.xdp("eth4", &from_dsl(&query)).out;
        let err = Ip::new(ISOLDE, CLIENT).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &delivered[ETH_HLEN..],
        );
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &err));
        let quoted_want = Ip::new(CLIENT, PUBLIC_ISP_A).ttl(63).udp_with(5354, 53, b"q0", false);
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &quoted_want,
        );
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        gw.assert_counters_no_drops(&[(Counter::IcmpErrorTranslated, 2)]);
    });
}

#[test]
fn port_unreachable_from_lan_host_about_a_masqueraded_reply_leaves_translated() {
    example(|gw| {
        let query = Ip::new(TRISTAN, CLIENT).udp(40053, 53, b"query");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &query)).ret, TC_ACT_REDIRECT);
        let answer = Ip::new(CLIENT, GW_ISP_A).udp(53, 40053, b"late answer");
        let delivered = gw.xdp("eth4", &from_dsl(&answer)).out;
        assert_eq!(IpView::of_frame(&delivered).dst(), TRISTAN);

        let err = Ip::new(TRISTAN, CLIENT).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &delivered[ETH_HLEN..],
        );
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &err));
        let quoted_want = Ip::new(CLIENT, GW_ISP_A).ttl(63).udp(53, 40053, b"late answer");
        let want = Ip::new(GW_ISP_A, CLIENT).ttl(63).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &quoted_want,
        );
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        assert_eq!(run.mark & DEFAULT_MARK_MASK, DSL_MARK);
        gw.assert_counters_no_drops(&[(Counter::IcmpErrorTranslated, 1)]);
    });
}

#[test]
fn frag_needed_from_internet_router_about_a_reply_reaches_the_server_translated() {
    example(|gw| {
        client_syn_via_dsl(gw);
        // The reply as it left by DSL, quoted whole (so its TCP checksum can be checked too).
        let reply = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).tcp_data(80, 40000, TCP_ACK, &[0xab; 24]);
        let mtu = [0, 0, 0x05, 0x78]; // next-hop MTU 1400
        let err = Ip::new(CORE_ROUTER, PUBLIC_ISP_A).icmp_error(ICMP_DEST_UNREACH, 4, mtu, &reply);
        let run = gw.xdp("eth4", &from_dsl(&err));

        let reply_want = Ip::new(ISOLDE, CLIENT).ttl(63).tcp_data(80, 40000, TCP_ACK, &[0xab; 24]);
        let want =
            Ip::new(CORE_ROUTER, ISOLDE).ttl(63).icmp_error(ICMP_DEST_UNREACH, 4, mtu, &reply_want);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_counters_no_drops(&[(Counter::IcmpErrorTranslated, 1)]);
    });
}

#[test]
fn time_exceeded_about_masqueraded_connection_reaches_the_lan_host_translated() {
    example(|gw| {
        assert_eq!(tristan_syn(gw, 50000).ret, TC_ACT_REDIRECT);
        // A router quotes the minimum (IP header + 8 bytes) of what left by DSL.
        let sent = Ip::new(GW_ISP_A, CLIENT).ttl(1).tcp(50000, 443, TCP_SYN);
        let err =
            Ip::new(CORE_ROUTER, GW_ISP_A).icmp_error(ICMP_TIME_EXCEEDED, 0, [0; 4], &sent[..28]);
        let run = gw.xdp("eth4", &from_dsl(&err));

        let sent_want = Ip::new(TRISTAN, CLIENT).ttl(1).tcp(50000, 443, TCP_SYN);
        let want = Ip::new(CORE_ROUTER, TRISTAN).ttl(63).icmp_error(
            ICMP_TIME_EXCEEDED,
            0,
            [0; 4],
            &sent_want[..28],
        );
        assert_run(&run, XDP_REDIRECT, &to_lan(TRISTAN_MAC, &want));
        let inner = IpView::of_frame(&run.out).inner();
        assert_eq!((inner.src(), inner.sport()), (TRISTAN, 50000));
        gw.assert_counters_no_drops(&[(Counter::IcmpErrorTranslated, 1)]);
    });
}

#[test]
fn host_unreachable_quoting_a_translated_echo_gets_the_original_id_back() {
    example(|gw| {
        let id = colliding_pings(gw, 0x4242);
        let sent = Ip::new(GW_ISP_B, CLIENT).ttl(63).echo(true, id, 1);
        let err = Ip::new(CORE_ROUTER, GW_ISP_B).icmp_error(ICMP_DEST_UNREACH, 1, [0; 4], &sent);
        let run = gw.xdp("eth1", &from_ispb(&err));

        let sent_want = Ip::new(MARKE, CLIENT).ttl(63).echo(true, 0x4242, 1);
        let want = Ip::new(CORE_ROUTER, MARKE).ttl(63).icmp_error(
            ICMP_DEST_UNREACH,
            1,
            [0; 4],
            &sent_want,
        );
        assert_run(&run, XDP_REDIRECT, &to_lan(MARKE_MAC, &want));
        assert_eq!(IpView::of_frame(&run.out).inner().icmp_id(), 0x4242);
        gw.assert_no_drops();
    });
}

/// Found by this suite: an ICMP error touches its connection's entry with the error's own
/// (ICMP) key, so the once-a-second twin check looks for the wrong twin and inserts a bogus one.
#[test]
fn icmp_error_a_second_later_leaves_no_stray_conn_entry() {
    example(|gw| {
        client_syn_via_dsl(gw);
        // As if the last twin check was more than a second ago.
        let fwd_key = tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80));
        let mut fwd = gw.conn(&fwd_key).unwrap();
        fwd.last_seen_tick = 0;
        gw.pending_map().insert(fwd_key, fwd, 0).unwrap();

        let reply = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).tcp(80, 40000, TCP_ACK);
        let err = Ip::new(CORE_ROUTER, PUBLIC_ISP_A).icmp_error(
            ICMP_DEST_UNREACH,
            4,
            [0, 0, 5, 0x78],
            &reply,
        );
        assert_eq!(gw.xdp("eth4", &from_dsl(&err)).ret, XDP_REDIRECT);
        let conns = gw.conns();
        assert_eq!(conns.len(), 2, "entries:\n{}", gw.table());
    });
}
