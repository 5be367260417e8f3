//! The benchmark's floor programs (`masq-ebpf/src/floor.rs`) and cost programs (`cost.rs`): what
//! they do must be the job they stand for, else a ratio or a cost means nothing.
use aya::maps::Array;
use masq_common::{FLOOR_TO_LAN, FLOOR_TO_UPLINK, FloorRoute, eth_addrs};

use super::*;

const FLOORS: [&str; 4] = [
    program_names::FLOOR_UPLINK_INGRESS_XDP,
    program_names::FLOOR_UPLINK_INGRESS,
    program_names::FLOOR_LAN_INGRESS,
    program_names::FLOOR_UPLINK_EGRESS,
];

/// Loads the floor programs, their outputs as masq's would be: to isolde, and to ISP A from
/// the DSL address.
fn with_floors(gw: &mut Gw) {
    for name in FLOORS {
        match gw.dp.ebpf_mut().program_mut(name).unwrap() {
            aya::programs::Program::Xdp(p) => p.load().unwrap(),
            aya::programs::Program::SchedClassifier(p) => p.load().unwrap(),
            _ => panic!("{name}: unexpected program type"),
        }
    }
    let (eth0, eth4) = (gw.ifindex("eth0"), gw.ifindex("eth4"));
    let map = gw.dp.ebpf_mut().map_mut(map_names::FLOOR_ROUTES).unwrap();
    let mut routes: Array<_, FloorRoute> = Array::try_from(map).unwrap();
    let to_lan = FloorRoute {
        ifindex: eth0,
        new_addr: wire_addr(ISOLDE),
        eth: eth_addrs(ISOLDE_MAC, ETH0_MAC),
    };
    let to_dsl = FloorRoute {
        ifindex: eth4,
        new_addr: wire_addr(GW_ISP_A),
        eth: eth_addrs(ISP_A_ROUTER_MAC, ETH4_MAC),
    };
    routes.set(FLOOR_TO_LAN, to_lan, 0).unwrap();
    routes.set(FLOOR_TO_UPLINK, to_dsl, 0).unwrap();
}

fn floor_xdp(gw: &Gw, frame: &[u8]) -> Run {
    gw.xdp_prog(program_names::FLOOR_UPLINK_INGRESS_XDP, "eth4", frame)
}

/// A confirmed connection as masq keeps it: `fwd` becomes `xlate`, and its reply back.
fn confirmed(gw: &mut Gw, fwd: FlowKey, xlate: FlowKey) {
    let mut conns = gw.confirmed_map();
    let entry = |xlate: FlowKey, flags| ConnEntry {
        xlate: Tuple4::of(&xlate),
        flags,
        ..ConnEntry::default()
    };
    conns.insert(fwd, entry(xlate, CONN_F_INBOUND), 0).unwrap();
    conns
        .insert(xlate.reversed(), entry(fwd.reversed(), CONN_F_INBOUND | CONN_F_REPLY), 0)
        .unwrap();
}

/// How many entries `map` (keys `K`, values `V`) holds.
fn entries<K: aya::Pod, V: aya::Pod>(gw: &Gw, map: &str) -> usize {
    let map: HashMap<_, K, V> = HashMap::try_from(gw.dp.ebpf().map(map).unwrap()).unwrap();
    map.keys().count()
}

fn pending(gw: &Gw) -> usize {
    entries::<FlowKey, ConnEntry>(gw, map_names::PENDING_CONNS)
}

#[test]
fn floors_translate_an_established_connection_as_masq_does_both_ways() {
    example(|gw| {
        with_floors(gw);
        let (client, public, isolde) = ((CLIENT, 40000), (PUBLIC_ISP_A, 80), (ISOLDE, 80));
        confirmed(gw, tcp_key(client, public), tcp_key(client, isolde));
        let ack = Ip::new(CLIENT, PUBLIC_ISP_A).tcp(40000, 80, TCP_ACK);
        let want = to_lan(ISOLDE_MAC, &Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40000, 80, TCP_ACK));
        assert_run(&floor_xdp(gw, &from_dsl(&ack)), XDP_REDIRECT, &want);
        let eth4 = gw.ifindex("eth4");
        let run = gw.tc(program_names::FLOOR_UPLINK_INGRESS, eth4, eth4, &from_dsl(&ack));
        assert_run(&run, TC_ACT_REDIRECT, &want);
        // And masq itself sends the same bytes.
        assert_run(&gw.xdp("eth4", &from_dsl(&ack)), XDP_REDIRECT, &want);

        let reply = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_ACK);
        let eth0 = gw.ifindex("eth0");
        let run =
            gw.tc(program_names::FLOOR_LAN_INGRESS, eth0, eth0, &from_lan(ISOLDE_MAC, &reply));
        let want = to_dsl(&Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).tcp(80, 40000, TCP_ACK));
        assert_run(&run, TC_ACT_REDIRECT, &want);
        // The floors only read the table.
        assert_eq!(pending(gw), 0);
    });
}

#[test]
fn a_floor_new_connection_is_its_bare_inserts_and_from_the_lan_a_binding() {
    example(|gw| {
        with_floors(gw);
        let syn = Ip::new(CLIENT, PUBLIC_ISP_A).tcp(40001, 80, TCP_SYN);
        let want = to_lan(ISOLDE_MAC, &Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40001, 80, TCP_SYN));
        assert_run(&floor_xdp(gw, &from_dsl(&syn)), XDP_REDIRECT, &want);
        let fwd = gw.conn(&tcp_key((CLIENT, 40001), (PUBLIC_ISP_A, 80))).expect("forward entry");
        assert_eq!(fwd.xlate, Tuple4::of(&tcp_key((CLIENT, 40001), (ISOLDE, 80))));
        let back = gw.conn(&tcp_key((ISOLDE, 80), (CLIENT, 40001))).expect("reply entry");
        assert_eq!(back.xlate, Tuple4::of(&tcp_key((PUBLIC_ISP_A, 80), (CLIENT, 40001))));
        assert_eq!(pending(gw), 2);
        assert_eq!(gw.bindings(), (0, 0), "inbound: no binding");

        let eth0 = gw.ifindex("eth0");
        let syn = Ip::new(TRISTAN, CLIENT).tcp(5555, 443, TCP_SYN);
        let run = gw.tc(program_names::FLOOR_LAN_INGRESS, eth0, eth0, &from_lan(TRISTAN_MAC, &syn));
        let want = to_dsl(&Ip::new(GW_ISP_A, CLIENT).ttl(63).tcp(5555, 443, TCP_SYN));
        assert_run(&run, TC_ACT_REDIRECT, &want);
        assert_eq!(pending(gw), 4);
        // The port kept: held, no `BINDINGS` entry, as masq binds an endpoint keeping its own.
        assert_eq!(gw.bindings(), (1, 0));
        assert_eq!(gw.binding_port((TRISTAN, 5555), IPPROTO_TCP, 0), Some(5555));
    });
}

#[test]
fn the_egress_floor_translates_in_place_and_passes_what_is_not_tcp_or_udp() {
    example(|gw| {
        with_floors(gw);
        let (tristan, client) = ((TRISTAN, 5000), (CLIENT, 443));
        confirmed(gw, tcp_key(tristan, client), tcp_key((GW_ISP_A, 5000), client));
        let (eth0, eth4) = (gw.ifindex("eth0"), gw.ifindex("eth4"));
        let forwarded = to_dsl(&Ip::new(TRISTAN, CLIENT).ttl(63).tcp(5000, 443, TCP_ACK));
        let run = gw.tc(program_names::FLOOR_UPLINK_EGRESS, eth0, eth4, &forwarded);
        let want = to_dsl(&Ip::new(GW_ISP_A, CLIENT).ttl(63).tcp(5000, 443, TCP_ACK));
        assert_run(&run, TC_ACT_OK, &want);
        let ping = to_dsl(&Ip::new(TRISTAN, CLIENT).ttl(63).echo(true, 7, 1));
        let run = gw.tc(program_names::FLOOR_UPLINK_EGRESS, eth0, eth4, &ping);
        assert_run(&run, TC_ACT_OK, &ping);
    });
}

#[test]
fn masq_run_never_attaches_a_floor_program() {
    for floor in FLOORS {
        assert!(!masq_user::hooks::PROGRAMS.contains(&floor), "{floor} is attachable");
    }
}

/// The cost programs time the RFC 1812 checks alone: sixteen per packet must be the checks
/// (a bad header checksum fails them), none must be everything else.
#[test]
fn the_cost_programs_run_the_checks_sixteen_times_or_not_at_all() {
    example(|gw| {
        for name in [program_names::COST_VALIDATE_16, program_names::COST_VALIDATE_0] {
            let prog: &mut aya::programs::Xdp =
                gw.dp.ebpf_mut().program_mut(name).unwrap().try_into().unwrap();
            prog.load().unwrap();
        }
        let ack = from_dsl(&Ip::new(CLIENT, PUBLIC_ISP_A).tcp(40000, 80, TCP_ACK));
        let mut bad = ack.clone();
        bad[14 + 10] ^= 0xff; // the IPv4 header checksum
        let run = |name, frame: &[u8]| gw.xdp_prog(name, "eth4", frame).ret;
        assert_eq!(run(program_names::COST_VALIDATE_16, &ack), XDP_PASS);
        assert_eq!(run(program_names::COST_VALIDATE_16, &bad), XDP_DROP);
        assert_eq!(run(program_names::COST_VALIDATE_0, &ack), XDP_PASS);
        assert_eq!(run(program_names::COST_VALIDATE_0, &bad), XDP_PASS);
        // Nothing looked up or made.
        assert_eq!(pending(gw), 0);
        assert!(gw.conns().is_empty());
    });
}
