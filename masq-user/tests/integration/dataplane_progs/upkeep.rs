//! Connection table upkeep: lost entries rebuilt.
use masq_user::expiry::KernelExpiry;

use super::*;

#[test]
fn lost_reply_entry_is_rebuilt_by_the_next_forward_packet() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let fwd_key = tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80));
        let reply_key = tcp_key((ISOLDE, 80), (CLIENT, 40000));
        let reply_before = gw.conn(&reply_key).unwrap();
        let mut fwd = gw.conn(&fwd_key).unwrap();
        fwd.last_seen_tick = 0;
        let mut map = gw.pending_map();
        map.insert(fwd_key, fwd, 0).unwrap();
        map.remove(&reply_key).unwrap();

        let ack = Ip::new(CLIENT, PUBLIC_ISP_A).tcp(40000, 80, TCP_ACK);
        assert_eq!(gw.xdp("eth4", &from_dsl(&ack)).ret, XDP_REDIRECT);
        let rebuilt = gw.conn(&reply_key).expect("reply entry rebuilt");
        assert_eq!(rebuilt.xlate, reply_before.xlate);
        // The rebuilt answer knows no handshake to hold against the ACK: confirmed at once.
        let unpending = |flags: u8| flags & !CONN_F_PENDING;
        assert_eq!(
            (rebuilt.uplink, unpending(rebuilt.flags)),
            (reply_before.uplink, unpending(reply_before.flags))
        );
        assert_eq!(rebuilt.created_tick, reply_before.created_tick);

        // And the reply direction works again.
        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        let want = Ip::new(PUBLIC_ISP_A, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        gw.assert_no_drops();
    });
}

#[test]
fn lost_forward_entry_is_rebuilt_by_the_next_reply() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let fwd_key = tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80));
        let reply_key = tcp_key((ISOLDE, 80), (CLIENT, 40000));
        let fwd_before = gw.conn(&fwd_key).unwrap();
        let mut reply = gw.conn(&reply_key).unwrap();
        reply.last_seen_tick = 0;
        let mut map = gw.pending_map();
        map.insert(reply_key, reply, 0).unwrap();
        map.remove(&fwd_key).unwrap();

        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &synack)).ret, TC_ACT_REDIRECT);
        let rebuilt = gw.conn(&fwd_key).expect("forward entry rebuilt");
        assert_eq!(rebuilt.xlate, fwd_before.xlate);
        assert_eq!((rebuilt.uplink, rebuilt.flags), (fwd_before.uplink, fwd_before.flags));
    });
}

/// The expiry deletes a confirmed connection's reply entry, then its initiator's. A packet in
/// between is forwarded as before, but does not rebuild the reply entry: that would outlive the
/// connection as an orphan. Only the pending table's LRU loses one direction on its own.
#[test]
fn confirmed_connection_being_deleted_is_not_rebuilt() {
    example(|gw| {
        handshake(gw, CLIENT, 40000);
        let fwd_key = tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80));
        let reply_key = tcp_key((ISOLDE, 80), (CLIENT, 40000));
        let mut conns = gw.confirmed_map();
        let mut fwd = conns.get(&fwd_key, 0).expect("confirmed by the handshake");
        fwd.last_seen_tick = 0;
        conns.insert(fwd_key, fwd, 0).unwrap();
        conns.remove(&reply_key).unwrap();

        let data = Ip::new(CLIENT, PUBLIC_ISP_A).tcp_seq(40000, 80, TCP_ACK, (101, 501), b"x");
        assert_eq!(gw.xdp("eth4", &from_dsl(&data)).ret, XDP_REDIRECT, "{:?}", gw.counters());
        assert_ne!(gw.conn(&fwd_key).unwrap().last_seen_tick, 0, "accounted");
        assert!(gw.conn(&reply_key).is_none(), "reply entry rebuilt:\n{}", gw.table());
        gw.assert_no_drops();
    });
}

/// Inbound connections from `n` clients straight into both tables (every fourth pending), both
/// entries last seen at `seen(i)`; returns their keys, forward then reply, connection by
/// connection.
fn insert_inbound_conns(
    tables: &mut conntrack::ConnTables<MapData>,
    n: u32,
    seen: impl Fn(u32) -> u32,
) -> Vec<FlowKey> {
    let mut keys = Vec::new();
    for i in 0..n {
        let client = (Ipv4Addr::from(0x6440_0000 | i), 40000 + (i % 1000) as u16);
        let fwd = tcp_key(client, (PUBLIC_ISP_A, 80));
        let xlate = tcp_key(client, (ISOLDE, 80));
        let pending = if i % 4 == 0 { CONN_F_PENDING } else { 0 };
        let entry = |xlate: FlowKey, flags| ConnEntry {
            xlate: Tuple4::of(&xlate),
            flags: flags | pending,
            created_tick: seen(i),
            last_seen_tick: seen(i),
            ..ConnEntry::default()
        };
        let table = if pending != 0 { &mut tables.pending } else { &mut tables.confirmed };
        table.insert(fwd, entry(xlate, CONN_F_INBOUND), 0).unwrap();
        table
            .insert(xlate.reversed(), entry(fwd.reversed(), CONN_F_INBOUND | CONN_F_REPLY), 0)
            .unwrap();
        keys.extend([fwd, xlate.reversed()]);
    }
    keys
}

/// The daemon's expiry, the CLI and the metrics read the tables in batches; that must find the
/// very connections reading entry by entry does, in both tables, however many.
#[test]
fn the_tables_read_in_batches_hold_what_reading_entry_by_entry_finds() {
    example(|gw| {
        const CONNS: u32 = 20_000;
        let mut tables = pinned::conn_tables(gw.dp.pin_dir()).unwrap();
        insert_inbound_conns(&mut tables, CONNS, |_| 0);
        let started = std::time::Instant::now();
        let batched = tables.dump_batched().expect("BPF_MAP_LOOKUP_BATCH on this kernel");
        let batch_time = started.elapsed();
        let started = std::time::Instant::now();
        let by_entry = tables.dump_by_entry();
        let entry_time = started.elapsed();
        eprintln!(
            "dump of {CONNS} connections: {batch_time:?} in batches, {entry_time:?} by entry"
        );
        let keys = |conns: &[conntrack::Conn]| {
            let mut keys: Vec<String> =
                conns.iter().map(|c| format!("{:?} {:?}", c.orig, c.reply)).collect();
            keys.sort();
            keys
        };
        assert_eq!(batched.len(), CONNS as usize);
        assert!(batched.iter().all(|c| c.orig.is_some() && c.reply.is_some()), "every pair whole");
        assert_eq!(keys(&batched), keys(&by_entry));
    });
}

/// The expiry pass deletes idle connections in batches: every idle one goes from both tables,
/// the others stay, and a key already gone (the program moved it meanwhile) is skipped.
#[test]
fn expiry_deletes_idle_connections_in_batches() {
    use std::os::fd::AsFd as _;

    example(|gw| {
        const CONNS: u32 = 10_000;
        let mut tables = pinned::conn_tables(gw.dp.pin_dir()).unwrap();
        let now = conntrack::clock_ns();
        // The pass runs 300 s from now: past the SYN timeout (240 s) for connections last seen
        // now, not for those stamped 600 s ahead.
        let pass_at = now + 300 * 1_000_000_000;
        let later_tick = masq_common::tick(now + 600 * 1_000_000_000);
        let seen = |i: u32| if i.is_multiple_of(2) { masq_common::tick(now) } else { later_tick };
        let keys = insert_inbound_conns(&mut tables, CONNS, seen);
        // Both keys of every other connection, from the first.
        let idle_keys: Vec<FlowKey> = keys.chunks(2).step_by(2).flatten().copied().collect();
        let timeouts = masq_user::config::Timeouts::default();
        assert_eq!(tables.expire(&timeouts, pass_at), CONNS as usize / 2);
        let left = tables.dump();
        assert_eq!(left.len(), CONNS as usize / 2);
        assert!(left.iter().all(|c| c.last_seen_ns() > pass_at), "{left:?}");
        for key in &idle_keys {
            assert!(tables.confirmed.get(key, 0).is_err() && tables.pending.get(key, 0).is_err());
        }

        // A key missing in the middle of a batch: the ones after it are deleted all the same.
        let [confirmed_fd, _] = tables.fds.as_ref().unwrap();
        let keys: Vec<FlowKey> =
            left.iter().filter(|c| !c.pending()).take(3).map(|c| c.orig.unwrap().0).collect();
        let gone = keys[1];
        tables.confirmed.remove(&gone).unwrap();
        assert_eq!(conntrack::delete_batch(confirmed_fd.as_fd(), &keys).unwrap(), 2);
        assert!(keys.iter().all(|k| tables.confirmed.get(k, 0).is_err()));
    });
}

/// Connections of every state and age, in both tables, some with one entry only (evicted from
/// the pending table): the in-kernel pass (`masq_expire`) removes exactly the ones the daemon's
/// own rules find idle, both entries, and keeps the rest whole.
#[test]
fn the_kernel_expiry_removes_exactly_the_idle_connections_the_daemon_would() {
    use masq_common::{
        IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, TCP_SEEN_ACK, TCP_SEEN_FIN, TCP_SEEN_RST,
        TCP_SEEN_SYN, tick,
    };

    example(|gw| {
        const CONNS: u32 = 6000;
        let timeouts = masq_user::config::Timeouts::default();
        let pass_at = conntrack::clock_ns() + 10_000 * 1_000_000_000;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut entries: Vec<(FlowKey, ConnEntry)> = Vec::new();
        let seen_bits = [TCP_SEEN_SYN, TCP_SEEN_ACK, TCP_SEEN_FIN, TCP_SEEN_RST];
        for i in 0..CONNS {
            let r = next();
            let proto = [IPPROTO_TCP, IPPROTO_TCP, IPPROTO_UDP, IPPROTO_ICMP][(r % 4) as usize];
            let client = Ipv4Addr::from(0x6440_0000 | i);
            let port = 1024 + (i % 60000) as u16;
            let fwd = key(proto, (client, port), (PUBLIC_ISP_A, 80));
            let xlate = key(proto, (client, port), (ISOLDE, 80));
            let pending = i.is_multiple_of(3);
            let flags = CONN_F_INBOUND | if pending { CONN_F_PENDING } else { 0 };
            // Idle up to ~300 s, around the short timeouts (30 to 240 s), one in eight up to
            // ~8300 s, around the established one (7440 s).
            let idle_ticks =
                |r: u64| if r.is_multiple_of(8) { (r % 7800) as u32 } else { (r % 300) as u32 };
            let entry = |xlate: FlowKey, flags, r: u64| ConnEntry {
                xlate: Tuple4::of(&xlate),
                flags,
                tcp_seen: seen_bits
                    .iter()
                    .enumerate()
                    .fold(0, |s, (b, bit)| if r >> (20 + b) & 1 == 1 { s | bit } else { s }),
                packets: (r >> 30) % 3,
                last_seen_tick: tick(pass_at) - idle_ticks(r >> 8),
                ..ConnEntry::default()
            };
            let orig = (fwd, entry(xlate, flags, next()));
            let reply = (xlate.reversed(), entry(fwd.reversed(), flags | CONN_F_REPLY, next()));
            match (pending, i % 9) {
                (true, 0) => entries.push(reply),
                (true, 3) => entries.push(orig),
                _ => entries.extend([orig, reply]),
            }
        }
        let mut tables = pinned::conn_tables(gw.dp.pin_dir()).unwrap();
        for (k, e) in &entries {
            let table = if e.is_pending() { &mut tables.pending } else { &mut tables.confirmed };
            table.insert(k, e, 0).unwrap();
        }
        let idle = |c: &conntrack::Conn| {
            pass_at.saturating_sub(c.last_seen_ns()) > timeouts.of(c.state()).as_nanos() as u64
        };
        let keys = |conns: &[conntrack::Conn]| {
            let mut keys: Vec<String> =
                conns.iter().flat_map(|c| c.keys()).map(|k| format!("{k:?}")).collect();
            keys.sort();
            keys
        };
        let (due, kept): (Vec<_>, Vec<_>) = conntrack::pair(entries).into_iter().partition(idle);
        assert!(due.len() > 1000 && kept.len() > 1000, "{} due, {} kept", due.len(), kept.len());

        let started = std::time::Instant::now();
        let mut expiry = KernelExpiry::load(&mut gw.dp).unwrap();
        let loaded = started.elapsed();
        let prog: &Xdp = gw.dp.ebpf().program(program_names::EXPIRE).unwrap().try_into().unwrap();
        // A guard on the walk's shape: counts kept on the callbacks' stack once made the
        // verifier walk 650k instructions (1.5 s at every start); it walks ~9k now.
        let verified = prog.info().unwrap().verified_instruction_count().unwrap_or(0);
        assert!(verified < 100_000, "masq_expire took the verifier {verified} instructions");
        let found = expiry.run(&timeouts, pass_at, false).unwrap();
        eprintln!(
            "masq_expire loaded in {loaded:?}, its pass took {:?}",
            started.elapsed() - loaded
        );
        assert_eq!(found.expired as usize, due.len(), "{found:?}");
        let left = tables.dump();
        assert_eq!(keys(&left), keys(&kept), "left");
        // The kept ones are as they were.
        let entries = |conns: &[conntrack::Conn]| {
            let mut v: Vec<String> =
                conns.iter().map(|c| format!("{:?} {:?}", c.orig, c.reply)).collect();
            v.sort();
            v
        };
        assert_eq!(entries(&left), entries(&kept));

        // Nothing more is due at the same instant; the kept are all there.
        let again = expiry.run(&timeouts, pass_at, false).unwrap();
        assert_eq!(again.expired, 0, "{again:?}");
        assert_eq!(again.entries as usize, left.iter().map(|c| c.keys().count()).sum::<usize>());
    });
}
