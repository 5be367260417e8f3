//! Fast path off, unresolved next hops, MTU and the next-hop cache.
use super::*;

#[test]
fn without_fast_path_packets_go_to_the_kernel_and_egress_translates() {
    with_config("[dataplane]\nfast_path = false\n", |gw| {
        let run = client_syn_via_dsl(gw);
        // Translated, but TTL and MACs left to the kernel.
        let want = from_dsl(&Ip::new(CLIENT, ISOLDE).tcp(40000, 80, TCP_SYN));
        assert_run(&run, XDP_PASS, &want);

        let synack =
            from_lan(ISOLDE_MAC, &Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK));
        let run = gw.lan_in(&synack);
        assert_run(&run, TC_ACT_OK, &synack);
        assert_eq!(run.mark & DEFAULT_MARK_MASK, DSL_MARK, "mark {:#x}", run.mark);

        // The kernel routes it by the mark out of eth4; egress translates.
        let forwarded = Ip::new(ISOLDE, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        let run = gw.uplink_out("eth4", &to_dsl(&forwarded));
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_OK, &to_dsl(&want));
        gw.assert_counters_no_drops(&[
            (Counter::KernelPath, 2),
            (Counter::FastPathRedirect, 0),
            (Counter::EgressTranslated, 1),
        ]);
    });
}

#[test]
fn unresolved_next_hop_uses_redirect_neigh_or_the_kernel() {
    gateway(Opts { neighbours: false, ..SEED }, |gw| {
        // XDP cannot resolve: the kernel forwards the translated packet.
        let run = client_syn_via_dsl(gw);
        let want = from_dsl(&Ip::new(CLIENT, ISOLDE).tcp(40000, 80, TCP_SYN));
        assert_run(&run, XDP_PASS, &want);

        // TC: translated, TTL decremented, MACs left to bpf_redirect_neigh.
        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &from_lan(ISOLDE_MAC, &want));
        assert_eq!(run.mark & DEFAULT_MARK_MASK, DSL_MARK);
        gw.assert_counters_no_drops(&[(Counter::KernelPath, 1), (Counter::FastPathNeigh, 1)]);
    });
}

#[test]
fn without_fast_path_icmp_error_from_lan_is_translated_at_egress() {
    with_config("[dataplane]\nfast_path = false\n", |gw| {
        let query = Ip::new(CLIENT, PUBLIC_ISP_A).udp(5353, 53, b"query");
        let delivered = gw.xdp("eth4", &from_dsl(&query)).out;
        let err = Ip::new(ISOLDE, CLIENT).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &delivered[ETH_HLEN..],
        );
        let frame = from_lan(ISOLDE_MAC, &err);
        let run = gw.lan_in(&frame);
        assert_run(&run, TC_ACT_OK, &frame);
        assert_eq!(run.mark & DEFAULT_MARK_MASK, DSL_MARK);

        let forwarded = Ip::new(ISOLDE, CLIENT).ttl(63).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &delivered[ETH_HLEN..],
        );
        let run = gw.uplink_out("eth4", &to_dsl(&forwarded));
        let quoted_want = Ip::new(CLIENT, PUBLIC_ISP_A).udp(5353, 53, b"query");
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &quoted_want,
        );
        assert_run(&run, TC_ACT_OK, &to_dsl(&want));
        gw.assert_counters_no_drops(&[(Counter::EgressTranslated, 1)]);
    });
}

/// eth4 with a smaller MTU than the LAN's.
const SMALL_DSL_MTU: Opts = Opts { cmds: &["ip link set eth4 mtu 1400"], ..SEED };

#[test]
fn oversized_df_packet_from_lan_goes_to_the_kernel_untranslated_and_marked() {
    gateway(SMALL_DSL_MTU, |gw| {
        // The kernel then answers tristan with frag-needed quoting his own packet.
        let big = Ip::new(TRISTAN, CLIENT).udp(40000, 4500, &[0x5a; 1452]);
        let frame = from_lan(TRISTAN_MAC, &big);
        let run = gw.lan_in(&frame);
        assert_run(&run, TC_ACT_OK, &frame);
        assert_eq!(run.mark & DEFAULT_MARK_MASK, DSL_MARK);
        gw.assert_counters(&[(Counter::OutboundNew, 1), (Counter::KernelPath, 1)]);
    });
}

#[test]
fn cached_next_hop_still_sends_a_too_big_packet_to_the_kernel() {
    gateway(SMALL_DSL_MTU, |gw| {
        // A small packet resolves and caches the next hop; a big one of the same flow right
        // after must still get the MTU check (and the kernel's frag-needed).
        let small = Ip::new(TRISTAN, CLIENT).udp(40000, 4500, &[0x5a; 100]);
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &small)).ret, TC_ACT_REDIRECT);
        let big = Ip::new(TRISTAN, CLIENT).udp(40000, 4500, &[0x5a; 1452]);
        let frame = from_lan(TRISTAN_MAC, &big);
        let run = gw.lan_in(&frame);
        assert_run(&run, TC_ACT_OK, &frame);
        gw.assert_counters(&[(Counter::FastPathRedirect, 1), (Counter::KernelPath, 1)]);
    });
}

/// Found by this suite: without DF the kernel fragments the untranslated packet before the
/// uplink's egress program, which then drops every fragment for its LAN source.
#[test]
fn oversized_packet_without_df_from_lan_leaves_fragmented_and_translated() {
    gateway(SMALL_DSL_MTU, |gw| {
        let big = Ip::new(TRISTAN, CLIENT).frag(0).udp(40000, 4500, &[0x5a; 1452]);
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &big));
        assert_eq!(run.ret, TC_ACT_OK, "only the kernel can fragment it");

        // What the kernel's forwarding makes of it: a first fragment of 1396 bytes.
        let handed = IpView::of_frame(&run.out);
        let first = Ip::new(handed.src(), handed.dst())
            .ttl(63)
            .frag(IP_MF)
            .packet(IPPROTO_UDP, &handed.l4()[..1376]);
        let out = gw.uplink_out("eth4", &to_dsl(&first));
        assert_eq!(
            (out.ret, IpView::of_frame(&out.out).src()),
            (TC_ACT_OK, GW_ISP_A),
            "fragment leaves translated; counters: {:?}",
            gw.counters()
        );
    });
}

/// The daemon empties the next-hop cache when the host's devices, addresses or routes change:
/// the next packet goes by the host as it is now, not as it was earlier in the tick.
#[test]
fn cleared_next_hop_cache_follows_a_changed_neighbour_at_once() {
    example(|gw| {
        let run = client_syn_via_dsl(gw);
        assert_eq!((run.ret, &run.out[..6]), (XDP_REDIRECT, &ISOLDE_MAC[..]));
        // isolde's NIC replaced: same address, another MAC.
        let new_mac = [0x02, 0x00, 0x00, 0x00, 0x0a, 0x99];
        let out = std::process::Command::new("ip")
            .args(["neigh", "replace", &ISOLDE.to_string(), "lladdr", &progkit::mac_text(new_mac)])
            .args(["dev", "eth0", "nud", "permanent"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        assert_eq!(pinned::forget_routes(gw.dp.pin_dir()).unwrap(), 1, "isolde's slot");
        let ack = Ip::new(CLIENT, PUBLIC_ISP_A).tcp(40000, 80, TCP_ACK);
        let run = gw.xdp("eth4", &from_dsl(&ack));
        assert_eq!((run.ret, &run.out[..6]), (XDP_REDIRECT, &new_mac[..]), "{:?}", gw.counters());
        assert_eq!(pinned::forget_routes(gw.dp.pin_dir()).unwrap(), 1, "cached again");
        assert_eq!(pinned::forget_routes(gw.dp.pin_dir()).unwrap(), 0, "all empty");
    });
}

/// A MAC no neighbour has: a packet sent to it took the route kept in its entry.
const KEPT_MARKER: Mac = [0x02, 0, 0, 0, 0, 0x77];

/// Whether `send` (a packet of `key`'s direction) leaves by the route its entry keeps, set to
/// `KEPT_MARKER` for packets up to `ok_len` in the tick the entry's route holds: tried up to
/// three times, as that tick may end meanwhile (the FIB is then asked again).
fn leaves_by_kept_route(
    gw: &mut Gw,
    key: &FlowKey,
    ok_len: u16,
    send: impl Fn(&Gw) -> Run,
) -> bool {
    (0..3).any(|_| {
        let ConnRoute { tick, epoch, .. } = gw.conn(key).expect("entry").route;
        gw.set_route(key, ConnRoute { dst_mac: KEPT_MARKER, ok_len, tick, epoch });
        let run = send(gw);
        assert!(matches!(run.ret, TC_ACT_REDIRECT | XDP_REDIRECT), "{:?}", gw.counters());
        run.out[..6] == KEPT_MARKER
    })
}

/// A connection's entry keeps the route its packets toward the uplink took: the next packet
/// in the tick leaves by it with no lookup; a host change (the daemon's `forget_routes`) or a
/// packet larger than the kept route was checked for is routed afresh. Only once confirmed: a
/// pending entry's element is freed when the connection moves.
#[test]
fn a_connection_keeps_its_uplink_route_until_the_host_changes() {
    example(|gw| {
        assert_eq!(client_syn_via_dsl(gw).ret, XDP_REDIRECT);
        let reply_key = tcp_key((ISOLDE, 80), (CLIENT, 40000));
        let synack = Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_SYN | TCP_ACK, (500, 101), b"");
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        assert_eq!((run.ret, &run.out[..6]), (TC_ACT_REDIRECT, &ISP_A_ROUTER_MAC[..]));
        let reply = gw.conn(&reply_key).expect("reply entry");
        assert!(reply.is_pending());
        assert_eq!(reply.route, ConnRoute::default(), "pending: nothing kept");

        let ack = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_ACK, (101, 501), b"");
        assert_eq!(gw.xdp("eth4", &from_dsl(&ack)).ret, XDP_REDIRECT, "{:?}", gw.counters());
        let data = |payload: &[u8]| {
            Ip::new(ISOLDE, CLIENT).tcp_seq(80, 40000, TCP_ACK, (501, 101), payload)
        };
        let small = data(b"");
        let small_frame = from_lan(ISOLDE_MAC, &small);
        let run = gw.lan_in(&small_frame);
        assert_eq!((run.ret, &run.out[..6]), (TC_ACT_REDIRECT, &ISP_A_ROUTER_MAC[..]));
        let reply = gw.conn(&reply_key).unwrap();
        assert!(!reply.is_pending(), "confirmed by the client's ACK");
        let epoch = gw.route_epoch();
        let small_len = small.len() as u16;
        assert_eq!(
            (reply.route.dst_mac, reply.route.ok_len, reply.route.epoch),
            (ISP_A_ROUTER_MAC, small_len, epoch),
            "the FIB's route, kept"
        );
        let send_small = |gw: &Gw| gw.lan_in(&small_frame);
        assert!(leaves_by_kept_route(gw, &reply_key, small_len, send_small), "the kept route");

        // Larger than the route was checked for: the FIB (and its MTU check) again, and the
        // kept route then covers the larger size too.
        let big = data(&[0x5a; 1000]);
        let send_big = |gw: &Gw| gw.lan_in(&from_lan(ISOLDE_MAC, &big));
        assert!(!leaves_by_kept_route(gw, &reply_key, small_len, send_big), "a larger packet");
        let route = gw.conn(&reply_key).unwrap().route;
        assert_eq!((route.dst_mac, route.ok_len), (ISP_A_ROUTER_MAC, big.len() as u16));

        // The daemon forgets kept routes when the host changes: routed afresh at once.
        let tick = gw.conn(&reply_key).unwrap().route.tick;
        let marked = ConnRoute { dst_mac: KEPT_MARKER, ok_len: small_len, tick, epoch };
        gw.set_route(&reply_key, marked);
        pinned::forget_routes(gw.dp.pin_dir()).unwrap();
        assert_eq!(gw.route_epoch(), epoch.wrapping_add(1));
        let run = gw.lan_in(&small_frame);
        assert_eq!(&run.out[..6], &ISP_A_ROUTER_MAC[..], "after a host change");
        let route = gw.conn(&reply_key).unwrap().route;
        assert_eq!((route.dst_mac, route.epoch), (ISP_A_ROUTER_MAC, epoch.wrapping_add(1)));
        gw.assert_no_drops();
    });
}

/// Toward the LAN too, by XDP and by TC alike: the client's packets to isolde keep their route
/// (isolde's MAC, out of eth0) in their entry.
#[test]
fn a_connection_keeps_its_lan_route() {
    example(|gw| {
        handshake(gw, CLIENT, 40000);
        let key = tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80));
        assert!(!gw.conn(&key).expect("the client's entry").is_pending());
        let data = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_ACK, (101, 501), b"GET");
        let frame = from_dsl(&data);
        let run = gw.xdp("eth4", &frame);
        assert_eq!((run.ret, &run.out[..6]), (XDP_REDIRECT, &ISOLDE_MAC[..]));
        let route = gw.conn(&key).unwrap().route;
        let len = data.len() as u16;
        assert_eq!(
            (route.dst_mac, route.ok_len, route.epoch),
            (ISOLDE_MAC, len, gw.route_epoch()),
            "the FIB's route, kept"
        );
        assert!(leaves_by_kept_route(gw, &key, len, |gw| gw.xdp("eth4", &frame)), "by XDP");
        let by_tc = |gw: &Gw| gw.uplink_in("eth4", &frame);
        assert!(leaves_by_kept_route(gw, &key, len, by_tc), "by TC");
        gw.assert_no_drops();
    });
}
