//! Masquerading: outbound connections by policy, port and id allocation.
use masq_common::{BoundPort, BoundPortKey};
use masq_user::bindings::BindingTables;

use super::*;

#[test]
fn outbound_connections_are_masqueraded_by_policy_and_replies_reach_the_lan() {
    example(|gw| {
        // tristan: policy "dsl".
        let run = tristan_syn(gw, 50000);
        let want = Ip::new(GW_ISP_A, CLIENT).ttl(63).tcp(50000, 443, TCP_SYN);
        assert_left_by(&run, DSL, &want);
        gw.assert_pair(
            tcp_key((TRISTAN, 50000), (CLIENT, 443)),
            tcp_key((GW_ISP_A, 50000), (CLIENT, 443)),
            DSL,
            false,
        );

        // isolde: the default policy, ISP B.
        let run = lan_syn(gw, (ISOLDE, ISOLDE_MAC), 50001);
        let want = Ip::new(GW_ISP_B, CLIENT).ttl(63).tcp(50001, 443, TCP_SYN);
        assert_left_by(&run, ISPB, &want);
        gw.assert_pair(
            tcp_key((ISOLDE, 50001), (CLIENT, 443)),
            tcp_key((GW_ISP_B, 50001), (CLIENT, 443)),
            ISPB,
            false,
        );

        // The client's answer to tristan arrives on eth4.
        let synack = Ip::new(CLIENT, GW_ISP_A).tcp(443, 50000, TCP_SYN | TCP_ACK);
        let run = gw.xdp("eth4", &from_dsl(&synack));
        let want = Ip::new(CLIENT, TRISTAN).ttl(63).tcp(443, 50000, TCP_SYN | TCP_ACK);
        assert_run(&run, XDP_REDIRECT, &to_lan(TRISTAN_MAC, &want));
        gw.assert_counters_no_drops(&[
            (Counter::OutboundNew, 2),
            (Counter::ToUplinkTranslated, 2),
            (Counter::ToLanTranslated, 1),
            (Counter::FastPathRedirect, 3),
        ]);
    });
}

#[test]
fn same_source_port_from_two_lan_hosts_gets_a_second_port() {
    example(|gw| {
        let run = lan_syn(gw, (ISOLDE, ISOLDE_MAC), 40000);
        let want = Ip::new(GW_ISP_B, CLIENT).ttl(63).tcp(40000, 443, TCP_SYN);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));

        let run = lan_syn(gw, (MARKE, MARKE_MAC), 40000);
        let port = IpView::of_frame(&run.out).sport();
        assert_ne!(port, 40000);
        assert!(port >= 1024, "port {port} outside the SNAT range");
        let want = Ip::new(GW_ISP_B, CLIENT).ttl(63).tcp(port, 443, TCP_SYN);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));

        gw.assert_pair(
            tcp_key((ISOLDE, 40000), (CLIENT, 443)),
            tcp_key((GW_ISP_B, 40000), (CLIENT, 443)),
            ISPB,
            false,
        );
        gw.assert_pair(
            tcp_key((MARKE, 40000), (CLIENT, 443)),
            tcp_key((GW_ISP_B, port), (CLIENT, 443)),
            ISPB,
            false,
        );
        assert_eq!(gw.conns().len(), 4);

        // Each reply finds its own host.
        for (p, host, mac) in [(40000, ISOLDE, ISOLDE_MAC), (port, MARKE, MARKE_MAC)] {
            let synack = Ip::new(CLIENT, GW_ISP_B).tcp(443, p, TCP_SYN | TCP_ACK);
            let run = gw.xdp("eth1", &from_ispb(&synack));
            let want = Ip::new(CLIENT, host).ttl(63).tcp(443, 40000, TCP_SYN | TCP_ACK);
            assert_run(&run, XDP_REDIRECT, &to_lan(mac, &want));
        }
        gw.assert_no_drops();
    });
}

#[test]
fn snat_never_picks_the_gateways_own_ephemeral_ports() {
    example(|gw| {
        // A LAN port inside the gateway's ephemeral range (61000-61999) is moved out of it, so a
        // reply to one of the gateway's own sockets can never match a masq connection.
        let run = lan_syn(gw, (ISOLDE, ISOLDE_MAC), 61500);
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        let port = IpView::of_frame(&run.out).sport();
        assert!(!(61000..=61999).contains(&port), "SNAT picked the gateway's port {port}");
        assert!(port >= 1024);
        assert_checksums(&run.out);
        gw.assert_no_drops();
    });
}

#[test]
fn same_echo_id_from_two_lan_hosts_gets_a_second_id() {
    example(|gw| {
        let id = colliding_pings(gw, 0x0101);
        // The answers find their hosts with their own ids.
        for (seen, host, mac) in [(0x0101, ISOLDE, ISOLDE_MAC), (id, MARKE, MARKE_MAC)] {
            let pong = Ip::new(CLIENT, GW_ISP_B).echo(false, seen, 1);
            let run = gw.xdp("eth1", &from_ispb(&pong));
            let want = Ip::new(CLIENT, host).ttl(63).echo(false, 0x0101, 1);
            assert_run(&run, XDP_REDIRECT, &to_lan(mac, &want));
        }
        assert_eq!(gw.conns().len(), 4);
        gw.assert_no_drops();
    });
}

#[test]
fn exhausted_port_range_drops_the_new_connection_and_leaves_no_half_entry() {
    with_config("[dataplane]\nport_min = 2000\nport_max = 2001\n", |gw| {
        for sport in [2000, 2001] {
            let run = lan_syn(gw, (ISOLDE, ISOLDE_MAC), sport);
            let want = Ip::new(GW_ISP_B, CLIENT).ttl(63).tcp(sport, 443, TCP_SYN);
            assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
        }
        assert_eq!(gw.conns().len(), 4);

        let run = lan_syn(gw, (MARKE, MARKE_MAC), 2000);
        assert_eq!(run.ret, TC_ACT_SHOT, "both ports of the range are taken");
        assert_eq!(gw.conns().len(), 4, "no half entry left:\n{}", gw.table());
        gw.assert_counters(&[(Counter::DropNatPortExhausted, 1), (Counter::OutboundNew, 2)]);
    });
}

/// The source port a masqueraded datagram left with.
fn udp_out(gw: &Gw, host: (Ipv4Addr, Mac), sport: u16, dst: Ipv4Addr) -> (Ipv4Addr, u16) {
    let q = Ip::new(host.0, dst).udp(sport, 53, b"q");
    let run = gw.lan_in(&from_lan(host.1, &q));
    assert_eq!(run.ret, TC_ACT_REDIRECT, "{:?}", gw.counters());
    let out = IpView::of_frame(&run.out);
    (out.src(), out.sport())
}

const OTHER_SERVER: Ipv4Addr = Ipv4Addr::new(64, 70, 12, 211);

#[test]
fn one_internal_endpoint_keeps_one_public_port_for_every_destination() {
    example(|gw| {
        let (tristan, marke, isolde) =
            ((TRISTAN, TRISTAN_MAC), (MARKE, MARKE_MAC), (ISOLDE, ISOLDE_MAC));
        // A port outside the gateway's own range is kept, toward every destination.
        assert_eq!(udp_out(gw, tristan, 20000, CLIENT), (GW_ISP_A, 20000));
        assert_eq!(udp_out(gw, tristan, 20000, OTHER_SERVER), (GW_ISP_A, 20000));
        // One inside it (61000-61999 here) is replaced, by one port for every destination (endpoint-independent).
        let (_, p) = udp_out(gw, tristan, 61400, CLIENT);
        assert_ne!(p, 61400);
        assert_eq!(udp_out(gw, tristan, 61400, OTHER_SERVER), (GW_ISP_A, p));
        // Two hosts with the same port behind one uplink: the first keeps it, the second gets
        // another, the same for all its destinations.
        assert_eq!(udp_out(gw, isolde, 21000, CLIENT), (GW_ISP_B, 21000));
        let (_, q) = udp_out(gw, marke, 21000, CLIENT);
        assert_ne!(q, 21000);
        assert_eq!(udp_out(gw, marke, 21000, OTHER_SERVER), (GW_ISP_B, q));
        assert_eq!(udp_out(gw, isolde, 21000, OTHER_SERVER), (GW_ISP_B, 21000));

        // TCP and ping alike.
        let syn = |dst| Ip::new(TRISTAN, dst).tcp_seq(40500, 443, TCP_SYN, (1, 0), b"");
        let ports: Vec<u16> = [CLIENT, OTHER_SERVER]
            .map(|dst| IpView::of_frame(&gw.lan_in(&from_lan(TRISTAN_MAC, &syn(dst))).out).sport())
            .to_vec();
        assert_eq!(ports[0], ports[1]);
        let ids: Vec<u16> = [CLIENT, OTHER_SERVER]
            .map(|dst| {
                let ping = Ip::new(MARKE, dst).echo(true, 21000, 1);
                IpView::of_frame(&gw.lan_in(&from_lan(MARKE_MAC, &ping)).out).icmp_id()
            })
            .to_vec();
        assert_eq!(ids[0], ids[1], "one echo id for every destination");
        gw.assert_counters(&[(Counter::NatMappingFallback, 0)]);

        // A reply from either destination reaches the endpoint.
        let answer = Ip::new(OTHER_SERVER, GW_ISP_A).udp(53, p, b"a");
        let run = gw.xdp("eth4", &from_dsl(&answer));
        assert_eq!(run.ret, XDP_REDIRECT);
        assert_eq!(IpView::of_frame(&run.out).dport(), 61400);
        gw.assert_no_drops();
    });
}

#[test]
fn an_endpoint_mapped_elsewhere_keeps_that_port_once_its_own_is_freed() {
    example(|gw| {
        assert_eq!(udp_out(gw, (MARKE, MARKE_MAC), 40000, CLIENT), (GW_ISP_B, 40000));
        let (_, mapped) = udp_out(gw, (ISOLDE, ISOLDE_MAC), 40000, CLIENT);
        assert_ne!(mapped, 40000);
        // marke's binding goes (her connections ended): port 40000 is free again.
        let port = BoundPortKey { ext_port: wire_port(40000), proto: IPPROTO_UDP, uplink: ISPB };
        gw.binding_tables().ports.remove(&port).unwrap();
        // isolde's connections, old and new, keep the one public port she has.
        assert_eq!(udp_out(gw, (ISOLDE, ISOLDE_MAC), 40000, OTHER_SERVER), (GW_ISP_B, mapped));
        assert_eq!(gw.bindings(), (1, 1));
        gw.assert_counters(&[(Counter::NatMappingFallback, 0)]);
    });
}

#[test]
fn bindings_without_connections_are_swept_and_their_ports_freed() {
    example(|gw| {
        assert_eq!(udp_out(gw, (MARKE, MARKE_MAC), 40000, CLIENT), (GW_ISP_B, 40000));
        let (addr, isolde_port) = udp_out(gw, (ISOLDE, ISOLDE_MAC), 40000, CLIENT);
        assert_eq!(addr, GW_ISP_B);
        assert_ne!(isolde_port, 40000);
        // marke kept her own port (no `BINDINGS` entry); isolde, behind the same uplink, could not.
        assert_eq!(gw.bindings(), (2, 1));
        assert_eq!(gw.binding_port((MARKE, 40000), IPPROTO_UDP, ISPB), Some(40000));
        assert_eq!(gw.binding_port((ISOLDE, 40000), IPPROTO_UDP, ISPB), Some(isolde_port));
        let tables = gw.binding_tables();
        let created = tables.held_ports().iter().map(|(_, held)| held.used_tick).max().unwrap();
        // Read in batches, as the daemon does, the tables hold what reading entry by entry finds.
        let by_entry = BindingTables { fds: None, ..gw.binding_tables() };
        let sorted = |mut v: Vec<(BoundPortKey, BoundPort)>| {
            v.sort_by_key(|(k, _)| (k.uplink, k.proto, k.ext_port));
            v
        };
        assert_eq!(sorted(tables.held_ports()), sorted(by_entry.held_ports()));
        assert_eq!(tables.mapped_elsewhere(), by_entry.mapped_elsewhere());
        // Too young to sweep even without connections; swept two ticks later.
        let sweep = |gw: &Gw, now: u32, keep_conns: bool| {
            let conns = if keep_conns {
                pinned::conn_tables(gw.dp.pin_dir()).unwrap().dump()
            } else {
                Vec::new()
            };
            gw.binding_tables().sweep(&conns, now)
        };
        assert_eq!(sweep(gw, created + 5, true), 0, "their connections live");
        assert_eq!(sweep(gw, created + 1, false), 0, "too young");
        assert_eq!(
            sweep(gw, created.wrapping_sub(3), false),
            0,
            "used after the connections were read"
        );

        // An old binding is stamped again by each new connection that uses it, whether the
        // endpoint kept its port (marke) or was mapped elsewhere (isolde): a sweep judging by
        // connections read before that keeps it.
        age_bindings(gw, created.wrapping_sub(10));
        assert_eq!(udp_out(gw, (MARKE, MARKE_MAC), 40000, OTHER_SERVER), (GW_ISP_B, 40000));
        assert_eq!(udp_out(gw, (ISOLDE, ISOLDE_MAC), 40000, OTHER_SERVER), (GW_ISP_B, isolde_port));
        let used = gw.binding_tables().held_ports();
        assert!(used.iter().all(|(_, held)| held.used_tick >= created), "{used:?}");
        let used = used.iter().map(|(_, held)| held.used_tick).min().unwrap();
        assert_eq!(sweep(gw, used.wrapping_sub(1), false), 0, "read before their last use");
        assert_eq!(sweep(gw, used + 2, false), 2);
        assert_eq!(gw.bindings(), (0, 0));
        assert_eq!(gw.binding_port((MARKE, 40000), IPPROTO_UDP, ISPB), None);
    });
}

/// The latest tick any binding was used at.
fn last_binding_use(gw: &Gw) -> u32 {
    gw.binding_tables().held_ports().iter().map(|(_, held)| held.used_tick).max().unwrap()
}

/// Every binding stamped as last used at `tick`.
fn age_bindings(gw: &Gw, tick: u32) {
    let mut tables = gw.binding_tables();
    for (port, mut held) in tables.held_ports() {
        held.used_tick = tick;
        tables.ports.insert(port, held, 0).unwrap();
    }
}

/// The in-kernel expiry pass (`masq_expire`) keeps the bindings of the connections it keeps,
/// stamping them, whether the endpoint kept its port or was mapped elsewhere; frees those
/// without connections, with their mapping, and mappings to ports nobody holds; and frees a
/// binding in the same pass that expires its last connection.
#[test]
fn the_kernel_expiry_keeps_the_bindings_its_connections_use_and_frees_the_others() {
    example(|gw| {
        assert_eq!(udp_out(gw, (MARKE, MARKE_MAC), 40000, CLIENT), (GW_ISP_B, 40000));
        let (_, isolde_port) = udp_out(gw, (ISOLDE, ISOLDE_MAC), 40000, CLIENT);
        assert_ne!(isolde_port, 40000);
        assert_eq!(udp_out(gw, (TRISTAN, TRISTAN_MAC), 20000, CLIENT).1, 20000);
        assert_eq!(gw.bindings(), (3, 1));
        // Every binding last used ten ticks ago; tristan's connection gone; a mapping to a port
        // nobody holds.
        let created = last_binding_use(gw);
        age_bindings(gw, created.wrapping_sub(10));
        let stray = BindingKey {
            int_addr: wire_addr(OTHER_SERVER),
            int_port: wire_port(7),
            proto: IPPROTO_UDP,
            uplink: ISPB,
        };
        gw.binding_tables()
            .bindings
            .insert(stray, masq_common::Binding { ext_port: wire_port(33333), _pad: 0 }, 0)
            .unwrap();
        let from_tristan =
            |c: &conntrack::Conn| c.orig.is_some_and(|(k, _)| k.src_addr == wire_addr(TRISTAN));
        assert_eq!(pinned::remove_conns(gw.dp.pin_dir(), from_tristan).unwrap().len(), 1);

        let timeouts = masq_user::config::Timeouts::default();
        let mut expiry = masq_user::expiry::KernelExpiry::load(&mut gw.dp).unwrap();
        let now = masq_common::tick_ns(created) + 1;
        let found = expiry.run(&timeouts, now, true).unwrap();
        assert_eq!((found.expired, found.kept), (0, 2), "{found:?}");
        assert_eq!(found.bindings_removed, 1);
        assert_eq!(gw.bindings(), (2, 1), "marke's and isolde's, the stray mapping gone");
        assert_eq!(gw.binding_port((TRISTAN, 20000), IPPROTO_UDP, DSL), None);
        assert_eq!(gw.binding_port((MARKE, 40000), IPPROTO_UDP, ISPB), Some(40000));
        assert_eq!(gw.binding_port((ISOLDE, 40000), IPPROTO_UDP, ISPB), Some(isolde_port));
        let held = gw.binding_tables().held_ports();
        assert!(held.iter().all(|(_, h)| h.used_tick == masq_common::tick(now)), "{held:?}");

        // Past the UDP timeout: both connections and their bindings go in one pass.
        let later = now + timeouts.udp.as_nanos() as u64 + 5_000_000_000;
        let found = expiry.run(&timeouts, later, false).unwrap();
        assert_eq!((found.expired, found.bindings_removed), (2, 2), "{found:?}");
        assert_eq!(gw.bindings(), (0, 0));
        assert!(gw.conns().is_empty());
        gw.assert_no_drops();
    });
}

/// A hairpin connection keeps both bindings it uses: its initiator's and the one it reaches,
/// after the reached endpoint's own connections are gone.
#[test]
fn the_kernel_expiry_keeps_both_bindings_a_hairpin_connection_uses() {
    example(|gw| {
        let out = Ip::new(TRISTAN, CLIENT).udp(20100, 3478, b"stun");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &out)).ret, TC_ACT_REDIRECT);
        let knock = Ip::new(ISOLDE, GW_ISP_A).udp(20200, 20100, b"peer");
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &knock)).ret, TC_ACT_REDIRECT);
        let to_client =
            |c: &conntrack::Conn| c.orig.is_some_and(|(k, _)| k.dst_addr == wire_addr(CLIENT));
        assert_eq!(pinned::remove_conns(gw.dp.pin_dir(), to_client).unwrap().len(), 1);
        let created = last_binding_use(gw);
        age_bindings(gw, created.wrapping_sub(10));
        let timeouts = masq_user::config::Timeouts::default();
        let mut expiry = masq_user::expiry::KernelExpiry::load(&mut gw.dp).unwrap();
        let found = expiry.run(&timeouts, masq_common::tick_ns(created), true).unwrap();
        assert_eq!((found.kept, found.expired, found.bindings_removed), (1, 0, 0), "{found:?}");
        assert_eq!(gw.binding_port((TRISTAN, 20100), IPPROTO_UDP, DSL), Some(20100));
        assert_eq!(gw.binding_port((ISOLDE, 20200), IPPROTO_UDP, DSL), Some(20200));
        let held = gw.binding_tables().held_ports();
        assert!(held.iter().all(|(_, h)| h.used_tick == created), "{held:?}");
    });
}

#[test]
fn with_endpoint_independent_filtering_any_host_reaches_a_udp_mapping_and_only_its_owner() {
    example(|gw| {
        let (_, port) = udp_out(gw, (TRISTAN, TRISTAN_MAC), 20000, CLIENT);
        assert_eq!(port, 20000);
        // Address-and-port-dependent (the default): a host tristan never sent to is not let in.
        let stranger = Ip::new(OTHER_SERVER, GW_ISP_A).udp(5000, 20000, b"hello");
        assert_eq!(gw.xdp("eth4", &from_dsl(&stranger)).ret, XDP_PASS);
        // Endpoint-independent: it reaches tristan's socket, and tristan's answer goes back
        // from the mapping.
        let mut uplinks: aya::maps::Array<_, masq_common::UplinkInfo> =
            aya::maps::Array::try_from(gw.dp.ebpf_mut().map_mut(map_names::UPLINKS).unwrap())
                .unwrap();
        let mut dsl = uplinks.get(&u32::from(DSL), 0).unwrap();
        dsl.flags |= masq_common::UPLINK_F_UDP_OPEN_FILTER;
        uplinks.set(u32::from(DSL), dsl, 0).unwrap();
        let run = gw.xdp("eth4", &from_dsl(&stranger));
        assert_eq!(run.ret, XDP_REDIRECT, "{:?}", gw.counters());
        let inside = IpView::of_frame(&run.out);
        assert_eq!((inside.dst(), inside.dport()), (TRISTAN, 20000));
        let answer = Ip::new(TRISTAN, OTHER_SERVER).udp(20000, 5000, b"hi");
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &answer));
        let out = IpView::of_frame(&run.out);
        assert_eq!((out.src(), out.sport(), out.dst()), (GW_ISP_A, 20000, OTHER_SERVER));
        // A port nobody holds stays closed; TCP is not opened by it.
        let unbound = Ip::new(OTHER_SERVER, GW_ISP_A).udp(5000, 20001, b"x");
        assert_eq!(gw.xdp("eth4", &from_dsl(&unbound)).ret, XDP_PASS);
        gw.assert_counters_no_drops(&[(Counter::MappingInboundNew, 1)]);
    });
}
