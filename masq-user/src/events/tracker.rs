//! Which connections ended between two looks at the tables, beyond those the daemon removes
//! itself: the pending table evicts without telling, and `masq conns flush` runs in another
//! process. Every connection known alive (from a dump, or from its creation event) that the
//! next dump lacks has ended.
use std::collections::{HashMap, HashSet};

use masq_common::{ConnEvent, FlowKey, tick};

use super::{EndReason, conn_of_event, orig_key};
use crate::conntrack::Conn;

/// How long after a dump began a connection may have been created and still be missing from
/// it (the coarse clock's step, with room).
const DUMP_MARGIN_NS: u64 = 50_000_000;

struct Known {
    conn: Conn,
    created_tick: u32,
    /// Its creation event's exact time, when masq saw the event.
    created_ns: Option<u64>,
    /// `conn` is as a dump showed it (else as its creation event told).
    counted: bool,
    /// When masq learnt of it.
    learnt_ns: u64,
}

/// A connection that ended.
pub struct Ended {
    /// As last known.
    pub conn: Conn,
    pub reason: EndReason,
    /// `conn` is as a dump showed it (its totals are known).
    pub counted: bool,
    /// Its creation event's time, when known (the entries keep it to a tick only).
    pub created_ns: Option<u64>,
}

#[derive(Default)]
pub struct Tracker {
    known: HashMap<FlowKey, Known>,
    /// Connections reported ended at the last look, so that a late creation event cannot bring
    /// them back.
    recently_ended: HashSet<(FlowKey, u32)>,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Connections known alive.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.known.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// A creation event: the connection is alive (a connection it replaces on the same tuple
    /// has ended).
    pub fn created(&mut self, ev: &ConnEvent) -> Option<Ended> {
        let created_tick = tick(ev.time_ns);
        if self.recently_ended.contains(&(ev.key, created_tick)) {
            return None;
        }
        let known = Known {
            conn: conn_of_event(ev),
            created_tick,
            created_ns: Some(ev.time_ns),
            counted: false,
            learnt_ns: ev.time_ns,
        };
        match self.known.get_mut(&ev.key) {
            Some(old) if old.created_tick == created_tick => {
                // Seen in a dump first: the event still gives the exact time.
                old.created_ns.get_or_insert(ev.time_ns);
                None
            }
            Some(_) => {
                let old = self.known.insert(ev.key, known).expect("just found");
                Some(ended(old))
            }
            None => {
                self.known.insert(ev.key, known);
                None
            }
        }
    }

    /// After a dump begun at `dumped_ns` (CLOCK_MONOTONIC_COARSE): `alive`, what it held and
    /// the daemon kept, and `expired`, what the daemon then removed as idle. Returns every
    /// connection that ended since the last look.
    pub fn observe(&mut self, alive: Vec<Conn>, expired: &[Conn], dumped_ns: u64) -> Vec<Ended> {
        let mut gone: Vec<Ended> = Vec::new();
        // The daemon may have removed some of them itself while the pass ran (an uplink's
        // flush), and reported them then.
        let reported = |conn: &Conn| {
            self.recently_ended.contains(&(orig_key(conn), conn.any().1.created_tick))
        };
        for conn in expired.iter().filter(|c| !reported(c)) {
            let created_ns = self.known.remove(&orig_key(conn)).and_then(|k| k.created_ns);
            gone.push(Ended {
                conn: conn.clone(),
                reason: EndReason::Expired,
                counted: true,
                created_ns,
            });
        }
        let mut next = HashMap::with_capacity(alive.len());
        for conn in alive.into_iter().filter(|c| !reported(c)) {
            let key = orig_key(&conn);
            let created_tick = conn.any().1.created_tick;
            let mut created_ns = None;
            if let Some(old) = self.known.remove(&key) {
                if old.created_tick == created_tick {
                    created_ns = old.created_ns;
                } else {
                    gone.push(ended(old));
                }
            }
            let known =
                Known { conn, created_tick, created_ns, counted: true, learnt_ns: dumped_ns };
            next.insert(key, known);
        }
        for (key, old) in self.known.drain() {
            if old.learnt_ns + DUMP_MARGIN_NS >= dumped_ns {
                next.insert(key, old);
            } else {
                gone.push(ended(old));
            }
        }
        self.known = next;
        self.recently_ended =
            gone.iter().map(|e| (orig_key(&e.conn), e.conn.any().1.created_tick)).collect();
        gone
    }

    /// Connections the daemon removed itself, for `reason`.
    pub fn removed(&mut self, gone: &[Conn], reason: EndReason) -> Vec<Ended> {
        gone.iter()
            .map(|conn| {
                let key = orig_key(conn);
                self.recently_ended.insert((key, conn.any().1.created_tick));
                let created_ns = self.known.remove(&key).and_then(|k| k.created_ns);
                Ended { conn: conn.clone(), reason, counted: true, created_ns }
            })
            .collect()
    }
}

fn ended(old: Known) -> Ended {
    let reason = if old.conn.pending() { EndReason::Evicted } else { EndReason::Removed };
    Ended { conn: old.conn, reason, counted: old.counted, created_ns: old.created_ns }
}

#[cfg(test)]
mod tests {
    use masq_common::{CONN_F_PENDING, ConnEntry, Tuple4, tick_ns};

    use super::*;
    use crate::conntrack::IPPROTO_UDP;

    const SEC: u64 = 1_000_000_000;

    fn event(port: u16, time_ns: u64) -> ConnEvent {
        let key = FlowKey::new(1, 2, port.to_be(), 53u16.to_be(), IPPROTO_UDP);
        ConnEvent {
            time_ns,
            key,
            xlate: Tuple4::of(&key),
            flags: CONN_F_PENDING,
            ..ConnEvent::default()
        }
    }

    fn dumped(ev: &ConnEvent, flags: u8) -> Conn {
        let t = tick(ev.time_ns);
        let entry = ConnEntry {
            xlate: ev.xlate,
            flags,
            created_tick: t,
            last_seen_tick: t,
            packets: 3,
            ..ConnEntry::default()
        };
        Conn { orig: Some((ev.key, entry)), reply: None }
    }

    #[test]
    fn a_connection_missing_from_the_next_dump_ended_once() {
        let mut t = Tracker::new();
        let (a, b) = (event(1000, 10 * SEC), event(1001, 10 * SEC));
        assert!(t.created(&a).is_none() && t.created(&b).is_none());
        // a is in the dump (confirmed); b was evicted before it.
        let gone = t.observe(vec![dumped(&a, 0)], &[], 12 * SEC);
        assert_eq!(gone.len(), 1);
        let e = &gone[0];
        assert_eq!((orig_key(&e.conn), e.reason, e.counted), (b.key, EndReason::Evicted, false));
        assert_eq!(e.created_ns, Some(b.time_ns));
        // a late copy of b's event does not bring it back.
        assert!(t.created(&b).is_none());
        // a flushed by another process: removed, with its totals.
        let gone = t.observe(vec![], &[], 14 * SEC);
        assert_eq!(gone.len(), 1);
        assert_eq!((gone[0].reason, gone[0].counted), (EndReason::Removed, true));
        assert_eq!(gone[0].created_ns, Some(a.time_ns), "the exact creation time is kept");
        assert!(t.is_empty());
    }

    #[test]
    fn a_connection_created_as_the_dump_began_is_not_ended() {
        let mut t = Tracker::new();
        let a = event(1000, 20 * SEC);
        t.created(&a);
        assert!(t.observe(vec![], &[], 20 * SEC + 10_000_000).is_empty());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn expired_and_forgotten_connections_are_not_reported_twice() {
        let mut t = Tracker::new();
        let (a, b) = (event(1000, 10 * SEC), event(1001, 10 * SEC));
        t.created(&a);
        t.created(&b);
        let gone = t.observe(vec![dumped(&b, 0)], &[dumped(&a, 0)], 12 * SEC);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].reason, EndReason::Expired);
        assert_eq!(t.removed(&[dumped(&b, 0)], EndReason::UplinkDown).len(), 1);
        assert!(t.observe(vec![], &[], 14 * SEC).is_empty());
    }

    /// An uplink's flush removes connections while an expiry pass is reading or deleting them:
    /// each is reported once, by the flush.
    #[test]
    fn a_connection_flushed_during_an_expiry_pass_is_reported_once() {
        let mut t = Tracker::new();
        let (a, b, c) = (event(1000, 10 * SEC), event(1001, 10 * SEC), event(1002, 10 * SEC));
        for ev in [&a, &b, &c] {
            t.created(ev);
        }
        // The pass read all three and found a idle; meanwhile the flush removed a and b.
        let flushed = t.removed(&[dumped(&a, 0), dumped(&b, 0)], EndReason::UplinkDown);
        assert_eq!(flushed.len(), 2);
        let gone = t.observe(vec![dumped(&b, 0), dumped(&c, 0)], &[dumped(&a, 0)], 12 * SEC);
        assert!(gone.is_empty(), "{:?}", gone.iter().map(|e| e.reason).collect::<Vec<_>>());
        assert_eq!(t.len(), 1, "b is not taken back as alive");
        assert!(t.observe(vec![dumped(&c, 0)], &[], 14 * SEC).is_empty());
    }

    #[test]
    fn a_connection_dumped_before_its_event_keeps_the_events_exact_time() {
        let mut t = Tracker::new();
        let a = event(1000, 10 * SEC + 123);
        t.observe(vec![dumped(&a, 0)], &[], 11 * SEC);
        assert!(t.created(&a).is_none());
        let gone = t.observe(vec![], &[], 13 * SEC);
        assert_eq!(gone[0].created_ns, Some(a.time_ns));
    }

    #[test]
    fn a_new_connection_on_a_known_tuple_ends_the_old_one() {
        let mut t = Tracker::new();
        let old = event(1000, 10 * SEC);
        t.created(&old);
        t.observe(vec![dumped(&old, 0)], &[], 11 * SEC);
        let new = event(1000, 10 * SEC + tick_ns(3));
        let ended = t.created(&new).expect("the old one ended");
        assert_eq!(ended.reason, EndReason::Removed);
    }
}
