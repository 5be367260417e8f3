//! Cases found in review.
use super::*;

#[test]
fn lan_multicast_and_broadcast_are_left_to_the_gateway() {
    example(|gw| {
        for dst in [Ipv4Addr::new(224, 0, 0, 251), Ipv4Addr::BROADCAST] {
            let frame =
                from_lan(TRISTAN_MAC, &Ip::new(TRISTAN, dst).ttl(255).udp(5353, 5353, &[1; 8]));
            assert_run(&gw.lan_in(&frame), TC_ACT_OK, &frame);
        }
        assert!(gw.conns().is_empty(), "no connection for multicast or broadcast");
        gw.assert_no_drops();
    });
}

#[test]
fn outbound_to_another_uplinks_subnet_is_masqueraded_behind_that_uplink() {
    example(|gw| {
        // tristan's policy says dsl, but dsl's table reaches ISP B's subnet through eth1 (a
        // copy of main's connected route): the source must be eth1's address, as MASQUERADE
        // would make it, or ISP B would drop it as spoofed.
        let syn = Ip::new(TRISTAN, ISP_B_ROUTER).tcp(2000, 80, TCP_SYN);
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &syn));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        let out = IpView::of_frame(&run.out);
        assert_eq!(out.src(), GW_ISP_B);
        assert_eq!(&run.out[..6], &ISP_B_ROUTER_MAC, "sent to ISP B's router");
        assert_eq!(run.mark & DEFAULT_MARK_MASK, ISPB_MARK);
        assert_checksums(&run.out);
    });
}

#[test]
fn reply_with_ttl_1_to_a_masqueraded_connection_is_dropped_not_reset() {
    example(|gw| {
        assert_eq!(tristan_syn(gw, 2000).ret, TC_ACT_REDIRECT);
        let reply = Ip::new(CLIENT, GW_ISP_A).ttl(1).tcp(443, 2000, TCP_SYN | TCP_ACK);
        assert_eq!(gw.xdp("eth4", &from_dsl(&reply)).ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropReplyTtlExpired, 1)]);
    });
}

#[test]
fn snat_moves_a_source_port_below_the_range_into_it() {
    example(|gw| {
        let run = tristan_syn(gw, 500);
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        assert!(IpView::of_frame(&run.out).sport() >= 1024);
        assert_checksums(&run.out);
    });
}
