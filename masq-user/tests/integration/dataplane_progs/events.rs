//! Connection events: the programs report each new connection in `EVENTS` while the daemon
//! asks for them, once, with its tuples; a burst larger than the ring is counted, never silent.
use aya::maps::{MapData, RingBuf};
use masq_common::{CONN_F_INBOUND, CONN_F_PENDING, ConnEvent};

use super::*;

fn drain(ring: &mut RingBuf<MapData>) -> Vec<ConnEvent> {
    let mut events = Vec::new();
    while let Some(item) = ring.next() {
        assert_eq!(item.len(), size_of::<ConnEvent>());
        events.push(bytemuck::pod_read_unaligned(&item));
    }
    events
}

fn udp_from_tristan(gw: &Gw, port: u16) {
    let p = Ip::new(TRISTAN, CLIENT).udp(port, 53, b"q");
    assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &p)).ret, TC_ACT_REDIRECT);
}

#[test]
fn each_new_connection_is_reported_once_with_its_tuples_and_none_while_off() {
    with_config("[events]\nring_kib = 4\n", |gw| {
        let mut ring = pinned::event_ring(gw.dp.pin_dir()).unwrap();
        udp_from_tristan(gw, 20100);
        assert!(drain(&mut ring).is_empty(), "off until the daemon asks");
        pinned::set_events(gw.dp.pin_dir(), true).unwrap();
        udp_from_tristan(gw, 20101);
        udp_from_tristan(gw, 20101);
        assert_eq!(client_syn_via_dsl(gw).ret, XDP_REDIRECT);
        let events = drain(&mut ring);
        assert_eq!(events.len(), 2, "{events:?}");
        let out = events[0];
        assert_eq!(out.key, key(IPPROTO_UDP, (TRISTAN, 20101), (CLIENT, 53)));
        assert_eq!(out.xlate.key(IPPROTO_UDP), key(IPPROTO_UDP, (GW_ISP_A, 20101), (CLIENT, 53)));
        assert_eq!((out.uplink, out.flags), (DSL, CONN_F_PENDING));
        let inbound = events[1];
        assert_eq!(inbound.key, tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80)));
        assert_eq!(inbound.xlate.key(IPPROTO_TCP), tcp_key((CLIENT, 40000), (ISOLDE, 80)));
        assert_eq!((inbound.uplink, inbound.flags), (DSL, CONN_F_PENDING | CONN_F_INBOUND));
        assert!(inbound.time_ns >= out.time_ns && out.time_ns > 0);
        gw.assert_counters(&[(Counter::EventsLost, 0)]);
        pinned::set_events(gw.dp.pin_dir(), false).unwrap();
        udp_from_tristan(gw, 20102);
        assert!(drain(&mut ring).is_empty());
    });
}

#[test]
fn a_burst_larger_than_the_ring_counts_every_event_lost_and_loses_no_connection() {
    with_config("[events]\nring_kib = 4\n", |gw| {
        let mut ring = pinned::event_ring(gw.dp.pin_dir()).unwrap();
        pinned::set_events(gw.dp.pin_dir(), true).unwrap();
        const BURST: u16 = 200;
        for port in 0..BURST {
            udp_from_tristan(gw, 20000 + port);
        }
        let read = drain(&mut ring);
        // 4 KiB hold 85 records of 40 bytes and an 8-byte header each.
        assert_eq!(read.len(), 4096 / 48, "what fits is kept");
        let ports: Vec<u16> = read.iter().map(|e| u16::from_be(e.key.src_port)).collect();
        assert_eq!(ports, (20000..20000 + read.len() as u16).collect::<Vec<_>>(), "the oldest");
        assert_eq!(gw.counter(Counter::EventsLost), u64::from(BURST) - read.len() as u64);
        assert_eq!(gw.conns().len(), 2 * usize::from(BURST), "every connection was made");
        udp_from_tristan(gw, 30500);
        assert_eq!(drain(&mut ring).len(), 1, "read, the ring takes events again");
    });
}
