//! Floods: a connection confirmed by its handshake (or a reply) is never pushed out by ones
//! that never complete; pending ones churn in their own table.
use super::*;

const SMALL_TABLES: &str = "[dataplane]\nconn_capacity = 1024\npending_capacity = 256\n";

fn pending(gw: &Gw) -> Vec<(FlowKey, ConnEntry)> {
    gw.conns().into_iter().filter(|(_, e)| e.is_pending()).collect()
}

fn confirmed(gw: &Gw) -> Vec<(FlowKey, ConnEntry)> {
    gw.conns().into_iter().filter(|(_, e)| !e.is_pending()).collect()
}

#[test]
fn the_handshakes_last_ack_moves_a_connection_to_the_confirmed_table() {
    example(|gw| {
        let syn = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_SYN, (100, 0), b"");
        gw.xdp("eth4", &from_dsl(&syn));
        assert_eq!((pending(gw).len(), confirmed(gw).len()), (2, 0), "after the SYN");
        let synack = Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_SYN | TCP_ACK, (500, 101), b"");
        gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        assert_eq!((pending(gw).len(), confirmed(gw).len()), (2, 0), "after the SYN-ACK");
        let ack = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_ACK, (101, 501), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&ack)).ret, XDP_REDIRECT);
        assert_eq!(
            (pending(gw).len(), confirmed(gw).len()),
            (0, 2),
            "after the ACK:\n{}",
            gw.table()
        );
        gw.assert_pair(
            tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80)),
            tcp_key((CLIENT, 40000), (ISOLDE, 80)),
            DSL,
            true,
        );
        let entry = gw.conn(&tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80))).unwrap();
        assert_eq!(entry.packets, 2, "accounting carried over");
        gw.assert_counters(&[(Counter::ConnsConfirmed, 1)]);

        // A reply confirms UDP at once.
        let q = Ip::new(TRISTAN, CLIENT).udp(50000, 53, b"q");
        let sent = gw.lan_in(&from_lan(TRISTAN_MAC, &q)).out;
        assert_eq!(pending(gw).len(), 2);
        let src = IpView::of_frame(&sent).src();
        let answer = Ip::new(CLIENT, src).udp(53, 50000, b"a");
        assert_eq!(gw.xdp("eth4", &from_dsl(&answer)).ret, XDP_REDIRECT);
        assert_eq!((pending(gw).len(), confirmed(gw).len()), (0, 4));
        gw.assert_counters_no_drops(&[(Counter::ConnsConfirmed, 2)]);
    });
}

/// A random-source SYN flood of ten times the table's capacity, the server answering each SYN:
/// the confirmed connections (one inbound, one outbound) keep their entries and still pass.
#[test]
fn a_syn_flood_of_ten_times_capacity_evicts_no_confirmed_connection() {
    with_config(SMALL_TABLES, |gw| {
        handshake(gw, CLIENT, 40000);
        let q = Ip::new(TRISTAN, CLIENT).udp(50000, 53, b"q");
        let src = IpView::of_frame(&gw.lan_in(&from_lan(TRISTAN_MAC, &q)).out).src();
        gw.xdp("eth4", &from_dsl(&Ip::new(CLIENT, src).udp(53, 50000, b"a")));
        let kept = confirmed(gw);
        assert_eq!(kept.len(), 4);

        for i in 0..10 * 1024u32 {
            let spoofed = Ipv4Addr::from(0x0b00_0000 + i * 7);
            let port = 1024 + (i % 60000) as u16;
            let syn = Ip::new(spoofed, PUBLIC_ISP_A).tcp_seq(port, 80, TCP_SYN, (i, 0), b"");
            assert_eq!(gw.xdp("eth4", &from_dsl(&syn)).ret, XDP_REDIRECT, "flood SYN {i}");
            let synack =
                Ip::new(ISOLDE, spoofed).tcp_seq(80, port, TCP_SYN | TCP_ACK, (9, i + 1), b"");
            assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &synack)).ret, TC_ACT_REDIRECT);
        }
        assert_eq!(confirmed(gw), kept, "no confirmed connection lost or changed");
        assert!(pending(gw).len() <= 512, "the pending table holds at most its capacity");
        gw.assert_counters(&[(Counter::InboundNew, 1 + 10 * 1024), (Counter::ConnsConfirmed, 2)]);

        // Both connections still pass both ways.
        let data = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_ACK, (101, 501), b"still");
        assert_eq!(gw.xdp("eth4", &from_dsl(&data)).ret, XDP_REDIRECT);
        let again = Ip::new(TRISTAN, CLIENT).udp(50000, 53, b"q2");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &again)).ret, TC_ACT_REDIRECT);
        gw.assert_counters_no_drops(&[(Counter::OutboundNew, 1)]);
    });
}

/// With the confirmed table full, a new connection still works from the pending table; the
/// refused move is counted.
#[test]
fn a_full_confirmed_table_leaves_new_connections_pending_and_counts_it() {
    with_config(SMALL_TABLES, |gw| {
        for i in 0..1024u32 {
            handshake(gw, Ipv4Addr::from(0x0b00_0000 + i), 40000);
        }
        assert_eq!(confirmed(gw).len(), 2048);
        gw.assert_counters(&[(Counter::ConfirmedTableFull, 0)]);
        handshake(gw, CLIENT, 40000);
        gw.assert_counters(&[(Counter::ConnsConfirmed, 1024), (Counter::ConfirmedTableFull, 1)]);
        assert_eq!(pending(gw).len(), 2);
        let data = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_ACK, (101, 501), b"x");
        assert_eq!(gw.xdp("eth4", &from_dsl(&data)).ret, XDP_REDIRECT);
        gw.assert_no_drops();
    });
}
