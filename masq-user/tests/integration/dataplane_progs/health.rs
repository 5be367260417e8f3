//! What uplink health needs from the programs: SYNs and their answers counted per uplink
//! (passive health), and policies that fail over by tier.
use masq_common::UplinkStats;

use super::*;

fn uplink_stats(gw: &Gw, uplink: u8) -> UplinkStats {
    let map: PerCpuArray<_, UplinkStats> =
        PerCpuArray::try_from(gw.dp.ebpf().map(map_names::UPLINK_STATS).unwrap()).unwrap();
    map.get(&u32::from(uplink), 0).unwrap().iter().fold(UplinkStats::default(), |a, s| a.plus(s))
}

#[test]
fn masqueraded_syns_and_their_first_answer_are_counted_per_uplink() {
    example(|gw| {
        for port in [50000, 50001, 50002] {
            let syn = Ip::new(TRISTAN, CLIENT).tcp_seq(port, 443, TCP_SYN, (1000, 0), b"");
            assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &syn)).ret, TC_ACT_REDIRECT);
        }
        // A retransmitted SYN is the same connection.
        let again = Ip::new(TRISTAN, CLIENT).tcp_seq(50000, 443, TCP_SYN, (1000, 0), b"");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &again)).ret, TC_ACT_REDIRECT);
        let s = uplink_stats(gw, DSL);
        assert_eq!((s.syn_sent, s.syn_answered), (3, 0));
        let reply_key = |port| tcp_key((CLIENT, 443), (GW_ISP_A, port));
        let timed =
            |gw: &Gw, port| gw.conn(&reply_key(port)).unwrap().flags & CONN_F_SYN_TIMED != 0;
        assert!(timed(gw, 50000), "the reply entry holds the SYN's time");

        // 50000 answered by a SYN-ACK (twice: counted once), 50001 refused by a RST that
        // acknowledges its SYN, 50002 never.
        let synack =
            Ip::new(CLIENT, GW_ISP_A).tcp_seq(443, 50000, TCP_SYN | TCP_ACK, (7, 1001), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&synack)).ret, XDP_REDIRECT);
        assert_eq!(gw.xdp("eth4", &from_dsl(&synack)).ret, XDP_REDIRECT);
        let rst = Ip::new(CLIENT, GW_ISP_A).tcp_seq(443, 50001, TCP_RST | TCP_ACK, (0, 1001), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&rst)).ret, XDP_REDIRECT, "{:?}", gw.counters());
        let s = uplink_stats(gw, DSL);
        assert_eq!((s.syn_sent, s.syn_answered), (3, 2), "{s:?}");
        assert!(!timed(gw, 50000) && !timed(gw, 50001) && timed(gw, 50002));
        let seq = gw.conn(&reply_key(50000)).unwrap();
        assert_eq!(seq.tcp_next_seq, 8, "a sequence number again once answered");

        // The tuple closed and reused: no SYN time, so its answer is not counted again.
        let fin = Ip::new(TRISTAN, CLIENT).tcp_seq(50001, 443, TCP_SYN, (5000, 0), b"");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &fin)).ret, TC_ACT_REDIRECT);
        let synack =
            Ip::new(CLIENT, GW_ISP_A).tcp_seq(443, 50001, TCP_SYN | TCP_ACK, (9, 5001), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&synack)).ret, XDP_REDIRECT);
        let s = uplink_stats(gw, DSL);
        assert_eq!((s.syn_sent, s.syn_answered), (3, 2), "{s:?}");
        // Test runs take microseconds: the answer times add up to little, but they are times.
        assert!(s.syn_answer_us < 5_000_000, "{s:?}");

        // Inbound connections and other protocols are not the uplink's SYNs.
        let syn = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_SYN, (100, 0), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&syn)).ret, XDP_REDIRECT);
        let synack = Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_SYN | TCP_ACK, (500, 101), b"");
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &synack)).ret, TC_ACT_REDIRECT);
        let q = Ip::new(TRISTAN, CLIENT).udp(50003, 53, b"q");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &q)).ret, TC_ACT_REDIRECT);
        let s = uplink_stats(gw, DSL);
        assert_eq!((s.syn_sent, s.syn_answered, s.new_conns), (3, 2, 5), "{s:?}");
        assert_eq!(uplink_stats(gw, ISPB).syn_sent, 0);
        gw.assert_no_drops();
    });
}

const TIERS: &str = r#"
[[policy]]
from = "192.168.100.50/32"
tiers = [["isp-b"], ["dsl"]]
"#;

#[test]
fn a_tiered_policy_takes_the_next_tier_only_when_its_first_is_down() {
    with_config(TIERS, |gw| {
        // The example's first policy sends tristan by dsl; marke (the new one) takes isp-b.
        let syn = |port| Ip::new(MARKE, CLIENT).tcp_seq(port, 443, TCP_SYN, (1, 0), b"");
        let run = gw.lan_in(&from_lan(MARKE_MAC, &syn(51000)));
        assert_eq!(IpView::of_frame(&run.out).src(), GW_ISP_B);
        pinned::set_uplink_up(gw.dp.pin_dir(), usize::from(ISPB), false).unwrap();
        let run = gw.lan_in(&from_lan(MARKE_MAC, &syn(51001)));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        assert_eq!(IpView::of_frame(&run.out).src(), GW_ISP_A, "tier 1 while tier 0 is down");
        pinned::set_uplink_up(gw.dp.pin_dir(), usize::from(ISPB), true).unwrap();
        let run = gw.lan_in(&from_lan(MARKE_MAC, &syn(51002)));
        assert_eq!(IpView::of_frame(&run.out).src(), GW_ISP_B, "back to tier 0");
        // Nothing up: the connection is dropped and counted, as for any policy.
        pinned::set_uplink_up(gw.dp.pin_dir(), usize::from(ISPB), false).unwrap();
        pinned::set_uplink_up(gw.dp.pin_dir(), usize::from(DSL), false).unwrap();
        let run = gw.lan_in(&from_lan(MARKE_MAC, &syn(51003)));
        assert_eq!(run.ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropNoUplink, 1)]);
    });
}
