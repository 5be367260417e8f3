//! Uplink egress: the slow path translated, LAN sources kept from leaking.
use super::*;

#[test]
fn egress_translates_a_known_connection_the_kernel_forwarded() {
    example(|gw| {
        tristan_syn(gw, 50000);
        let ack = Ip::new(TRISTAN, CLIENT).ttl(63).tcp(50000, 443, TCP_ACK);
        let run = gw.uplink_out("eth4", &to_dsl(&ack));
        let want = Ip::new(GW_ISP_A, CLIENT).ttl(63).tcp(50000, 443, TCP_ACK);
        assert_run(&run, TC_ACT_OK, &to_dsl(&want));
        gw.assert_counters_no_drops(&[(Counter::EgressTranslated, 1)]);
    });
}

#[test]
fn egress_drops_an_untracked_lan_source() {
    example(|gw| {
        let leak = Ip::new(ISOLDE, CLIENT).ttl(63).udp(9999, 9999, b"leak");
        assert_eq!(gw.uplink_out("eth1", &to_ispb(&leak)).ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropUntranslatedLeak, 1)]);
    });
}

#[test]
fn egress_passes_the_gateways_own_packets() {
    example(|gw| {
        let own = to_dsl(&Ip::new(GW_ISP_A, CLIENT).tcp(33000, 443, TCP_SYN));
        assert_run(&gw.uplink_out("eth4", &own), TC_ACT_OK, &own);
        let own = to_ispb(&Ip::new(GW_ISP_B, CLIENT).udp(33000, 53, b"q"));
        assert_run(&gw.uplink_out("eth1", &own), TC_ACT_OK, &own);
        gw.assert_no_drops();
    });
}

/// Found by this suite: IPv4 with options parses as "not masq's" and passes the leak guard.
#[test]
fn egress_drops_a_lan_source_with_ip_options() {
    example(|gw| {
        // `ping -R` from isolde: record-route option, forwarded by the kernel untranslated.
        let mut rr = vec![7, 39, 4];
        rr.resize(40, 0);
        let ping = Ip::new(ISOLDE, CLIENT).ttl(63).packet_with_options(
            IPPROTO_ICMP,
            &rr,
            &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
        );
        let run = gw.uplink_out("eth1", &to_ispb(&ping));
        assert_eq!(run.ret, TC_ACT_SHOT, "a LAN source left untranslated");
    });
}

/// The gateway's own time-exceeded about a packet to ISP A's published address, routed by main
/// out of ISP B, goes back by ISP A from ISP A's address; one about ISP B's stays as it is.
#[test]
fn the_gateways_own_icmp_error_leaves_by_the_uplink_its_packet_came_in_on() {
    example(|gw| {
        let offending = Ip::new(CLIENT, PUBLIC_ISP_A).ttl(1).tcp(40000, 80, TCP_SYN);
        let exceeded =
            |src| Ip::new(src, CLIENT).icmp_error(ICMP_TIME_EXCEEDED, 0, [0; 4], &offending);
        let run = gw.uplink_out("eth1", &to_ispb(&exceeded(GW_ISP_B)));
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&exceeded(GW_ISP_A)));
        gw.assert_counters(&[(Counter::OwnIcmpErrorReturned, 1)]);

        let about_ispb = Ip::new(CLIENT, PUBLIC_ISP_B).ttl(1).tcp(40000, 443, TCP_SYN);
        let own = to_ispb(&Ip::new(GW_ISP_B, CLIENT).icmp_error(
            ICMP_TIME_EXCEEDED,
            0,
            [0; 4],
            &about_ispb,
        ));
        assert_run(&gw.uplink_out("eth1", &own), TC_ACT_OK, &own);
        gw.assert_counters_no_drops(&[(Counter::OwnIcmpErrorReturned, 1)]);
    });
}

/// The gateway's own fragmentation-needed about an inbound packet (too big for the LAN link)
/// quotes the packet as masq translated it, to isolde: translated back to the published address
/// and sent by the connection's uplink, so the client's socket matches it.
#[test]
fn the_gateways_frag_needed_about_an_inbound_packet_is_translated_back_and_steered() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let toward_isolde = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40000, 80, TCP_SYN);
        let mtu = [0, 0, 0x05, 0x78];
        let own = Ip::new(GW_ISP_B, CLIENT).icmp_error(ICMP_DEST_UNREACH, 4, mtu, &toward_isolde);
        let run = gw.uplink_out("eth1", &to_ispb(&own));
        let quoted = Ip::new(CLIENT, PUBLIC_ISP_A).ttl(63).tcp(40000, 80, TCP_SYN);
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).icmp_error(ICMP_DEST_UNREACH, 4, mtu, &quoted);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        gw.assert_counters_no_drops(&[
            (Counter::EgressTranslated, 1),
            (Counter::OwnIcmpErrorReturned, 1),
        ]);
    });
}

/// The same error already leaving by the connection's uplink: translated back, and it keeps
/// the source the kernel gave it (this uplink's own address).
#[test]
fn the_gateways_frag_needed_on_the_right_uplink_keeps_its_source() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let toward_isolde = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40000, 80, TCP_SYN);
        let mtu = [0, 0, 0x05, 0x78];
        let own = Ip::new(GW_ISP_A, CLIENT).icmp_error(ICMP_DEST_UNREACH, 4, mtu, &toward_isolde);
        let run = gw.uplink_out("eth4", &to_dsl(&own));
        let quoted = Ip::new(CLIENT, PUBLIC_ISP_A).ttl(63).tcp(40000, 80, TCP_SYN);
        let want = Ip::new(GW_ISP_A, CLIENT).icmp_error(ICMP_DEST_UNREACH, 4, mtu, &quoted);
        assert_run(&run, TC_ACT_OK, &to_dsl(&want));
        gw.assert_counters(&[(Counter::EgressTranslated, 1), (Counter::OwnIcmpErrorReturned, 0)]);
    });
}
