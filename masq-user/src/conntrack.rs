//! The connection tables seen from userspace: pairing both directions, connection state,
//! expiry of idle connections (confirmed ones are never evicted; pending ones may be).
use std::{
    borrow::{Borrow, BorrowMut},
    io,
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, OwnedFd},
    time::Duration,
};

use aya::maps::{HashMap as BpfHashMap, MapData};
pub use masq_common::ConnState;
use masq_common::{ConnEntry, FlowKey, last_seen_tick, tick_ns};
pub use masq_common::{IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP};

use crate::{bpf_sys::sys_bpf, config::Timeouts};

/// Now on the clock the programs write (`bpf_ktime_get_coarse_ns`: CLOCK_MONOTONIC_COARSE).
pub fn clock_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A state's name, as `masq conns` shows it.
pub fn state_name(state: ConnState) -> &'static str {
    match state {
        ConnState::TcpSynSent => "syn_sent",
        ConnState::TcpEstablished => "established",
        ConnState::TcpClosing => "closing",
        ConnState::Unreplied => "unreplied",
        ConnState::Replied => "replied",
        ConnState::Icmp => "icmp",
    }
}

/// One connection: the initiator's entry and the reply entry (either may be missing when the
/// LRU evicted it and no packet has rebuilt it yet).
#[derive(Clone, Debug)]
pub struct Conn {
    pub orig: Option<(FlowKey, ConnEntry)>,
    pub reply: Option<(FlowKey, ConnEntry)>,
}

impl Conn {
    pub fn any(&self) -> &(FlowKey, ConnEntry) {
        self.orig.as_ref().or(self.reply.as_ref()).expect("a connection has an entry")
    }

    pub fn proto(&self) -> u8 {
        self.any().0.proto
    }

    pub fn uplink(&self) -> u8 {
        self.any().1.uplink
    }

    pub fn last_seen_ns(&self) -> u64 {
        let (orig, reply) = (self.orig.as_ref().map(|o| &o.1), self.reply.as_ref().map(|r| &r.1));
        tick_ns(last_seen_tick(orig, reply))
    }

    pub fn created_ns(&self) -> u64 {
        tick_ns(self.any().1.created_tick)
    }

    pub fn state(&self) -> ConnState {
        ConnState::of(
            self.proto(),
            self.orig.as_ref().map(|o| &o.1),
            self.reply.as_ref().map(|r| &r.1),
        )
    }

    /// Still pending: its handshake not completed or no reply seen yet.
    pub fn pending(&self) -> bool {
        self.any().1.is_pending()
    }

    pub fn keys(&self) -> impl Iterator<Item = FlowKey> + '_ {
        self.orig.iter().chain(self.reply.iter()).map(|(k, _)| *k)
    }
}

/// Pair the entries of a dump into connections, by sorting: each entry goes under its
/// connection's initiator key, so both directions land side by side. (A hash map of the entries
/// missed the cache on almost every probe once it held hundreds of thousands.) A key dumped
/// twice, once per table while its connection moved to the confirmed one, counts once, as its
/// later copy.
pub fn pair(entries: Vec<(FlowKey, ConnEntry)>) -> Vec<Conn> {
    let mut order: Vec<(u128, u128, u32)> = entries
        .iter()
        .enumerate()
        .map(|(i, (key, entry))| {
            let orig = if entry.is_reply() { entry.twin_key(key) } else { *key };
            (key_bits(&orig), key_bits(key), i as u32)
        })
        .collect();
    order.sort_unstable();
    order.dedup_by(|later, kept| {
        let same = later.1 == kept.1;
        if same {
            *kept = *later;
        }
        same
    });
    let mut conns = Vec::with_capacity(order.len() / 2 + 1);
    for group in order.chunk_by(|a, b| a.0 == b.0) {
        let at = |x: &(u128, u128, u32)| entries[x.2 as usize];
        let orig = group.iter().find(|x| x.1 == x.0 && !at(x).1.is_reply());
        let reply = orig.and_then(|o| {
            let (key, entry) = at(o);
            let twin = key_bits(&entry.twin_key(&key));
            group.iter().find(|x| x.1 == twin && at(x).1.is_reply())
        });
        if let Some(o) = orig {
            conns.push(Conn { orig: Some(at(o)), reply: reply.map(at) });
        }
        for x in group {
            if Some(x) != orig && Some(x) != reply {
                let e = at(x);
                conns.push(if e.1.is_reply() {
                    Conn { orig: None, reply: Some(e) }
                } else {
                    Conn { orig: Some(e), reply: None }
                });
            }
        }
    }
    conns
}

/// A key as one number, to sort by.
fn key_bits(k: &FlowKey) -> u128 {
    bytemuck::cast(*k)
}

/// One connection table (`CONNS` or `PENDING_CONNS`), typed.
pub type ConnTable<T> = BpfHashMap<T, FlowKey, ConnEntry>;

/// Both connection tables: confirmed connections and pending ones (`CONN_F_PENDING`). Each
/// connection's two entries sit in the same table.
pub struct ConnTables<T> {
    pub confirmed: ConnTable<T>,
    pub pending: ConnTable<T>,
    /// Both maps' fds (confirmed, pending), to read them in batches; without them, `dump`
    /// reads entry by entry.
    pub fds: Option<[OwnedFd; 2]>,
}

impl<T: Borrow<MapData>> ConnTables<T> {
    /// Every connection of both tables. Pending first: connections only move from pending to
    /// confirmed (inserted there before leaving pending), so one confirmed meanwhile is seen.
    /// In batches when the kernel can (`BPF_MAP_LOOKUP_BATCH`: one syscall per few thousand
    /// entries instead of two per entry, which at a million connections took longer than the
    /// expiry interval).
    pub fn dump(&self) -> Vec<Conn> {
        self.dump_batched().unwrap_or_else(|_| self.dump_by_entry())
    }

    /// `dump` in batches only; an error when there are no fds or the kernel cannot.
    pub fn dump_batched(&self) -> io::Result<Vec<Conn>> {
        let Some([confirmed, pending]) = &self.fds else {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        };
        let mut entries = lookup_batch(pending.as_fd())?;
        entries.extend(lookup_batch(confirmed.as_fd())?);
        Ok(pair(entries))
    }

    /// `dump` entry by entry (`bpf_map_get_next_key` and a lookup each).
    pub fn dump_by_entry(&self) -> Vec<Conn> {
        let entries = self.pending.iter().chain(self.confirmed.iter()).filter_map(Result::ok);
        pair(entries.collect())
    }
}

/// Entries read per `BPF_MAP_LOOKUP_BATCH`.
const BATCH: usize = 4096;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// Every entry of the hash map `fd` (keys `K`, values `V`: its layout), `BATCH` per syscall.
/// Errors when the kernel has no batch operations for it (before 5.6) or a bucket holds more
/// than `BATCH` entries.
pub(crate) fn lookup_batch<K: aya::Pod + Default, V: aya::Pod + Default>(
    fd: BorrowedFd<'_>,
) -> io::Result<Vec<(K, V)>> {
    let mut keys = vec![K::default(); BATCH];
    let mut values = vec![V::default(); BATCH];
    let mut entries = Vec::new();
    // The position in the map: a bucket index for hash maps (8 bytes leave room).
    let (mut at, mut next) = (0u64, 0u64);
    let mut first = true;
    loop {
        // union bpf_attr, batch: in_batch, out_batch, keys, values, count, map_fd, elem_flags,
        // flags.
        let mut attr = [0u64; 7];
        attr[0] = if first { 0 } else { &raw const at as u64 };
        attr[1] = &raw mut next as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = values.as_mut_ptr() as u64;
        attr[4] = BATCH as u64 | (fd.as_raw_fd() as u64) << 32;
        // SAFETY: the batch layout; the kernel writes at most BATCH keys and values (of the
        // map's sizes, which `K` and `V` are) into buffers that hold BATCH of each, and 4 bytes
        // into `next`.
        let ret = unsafe { sys_bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let count = ((attr[4] & 0xffff_ffff) as usize).min(BATCH);
        entries.extend(keys[..count].iter().copied().zip(values[..count].iter().copied()));
        match ret {
            Ok(_) => {}
            // The last batch.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(entries),
            Err(e) => return Err(e),
        }
        at = next;
        first = false;
    }
}

const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// Delete `keys` from the hash map `fd`, as many per syscall as there are; a key already gone
/// (the program moved or removed it meanwhile) is skipped. Returns how many were deleted.
pub fn delete_batch<K: aya::Pod>(fd: BorrowedFd<'_>, keys: &[K]) -> io::Result<usize> {
    let (mut at, mut deleted) = (0, 0);
    while at < keys.len() {
        let rest = &keys[at..];
        // union bpf_attr, batch: in_batch, out_batch, keys, values, count, map_fd, elem_flags,
        // flags.
        let mut attr = [0u64; 7];
        attr[2] = rest.as_ptr() as u64;
        attr[4] = rest.len() as u64 | (fd.as_raw_fd() as u64) << 32;
        // SAFETY: the batch layout; the kernel reads `count` keys of the map's key size (`K`)
        // from `rest` and writes the count it deleted.
        let ret = unsafe { sys_bpf(BPF_MAP_DELETE_BATCH, &mut attr) };
        let count = ((attr[4] & 0xffff_ffff) as usize).min(rest.len());
        (at, deleted) = (at + count, deleted + count);
        match ret {
            Ok(_) => {}
            // The key at `at` is gone already: the kernel stops there.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => at += 1,
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Delete `keys` from `map`: in batches through `fd` when there is one and the kernel can, else
/// one by one.
fn remove_all<T: BorrowMut<MapData>>(
    map: &mut ConnTable<T>,
    fd: Option<&OwnedFd>,
    keys: &[FlowKey],
) {
    if keys.is_empty() || fd.is_some_and(|fd| delete_batch(fd.as_fd(), keys).is_ok()) {
        return;
    }
    for key in keys {
        let _ = map.remove(key);
    }
}

/// Every entry of `map`: in batches through `fd` when there is one and the kernel can, else
/// entry by entry.
pub(crate) fn read_all<T: Borrow<MapData>, K: aya::Pod + Default, V: aya::Pod + Default>(
    map: &BpfHashMap<T, K, V>,
    fd: Option<&OwnedFd>,
) -> Vec<(K, V)> {
    match fd.map(|fd| lookup_batch(fd.as_fd())) {
        Some(Ok(entries)) => entries,
        _ => map.iter().filter_map(Result::ok).collect(),
    }
}

impl<T: BorrowMut<MapData>> ConnTables<T> {
    /// Delete every connection idle for longer than its state's timeout; returns how many.
    pub fn expire(&mut self, timeouts: &Timeouts, now_ns: u64) -> usize {
        self.expire_keeping(timeouts, now_ns).0.len()
    }

    /// As `expire`, returning the connections removed and those left (one dump serves the
    /// binding sweep and the event record).
    pub fn expire_keeping(&mut self, timeouts: &Timeouts, now_ns: u64) -> (Vec<Conn>, Vec<Conn>) {
        self.remove_keeping(|conn| {
            let idle = Duration::from_nanos(now_ns.saturating_sub(conn.last_seen_ns()));
            idle > timeouts.of(conn.state())
        })
    }

    /// Delete every connection `doomed` picks, both directions; returns them.
    pub fn remove_where(&mut self, doomed: impl Fn(&Conn) -> bool) -> Vec<Conn> {
        self.remove_keeping(doomed).0
    }

    /// Delete every connection `doomed` picks; returns them, and the others.
    fn remove_keeping(&mut self, doomed: impl Fn(&Conn) -> bool) -> (Vec<Conn>, Vec<Conn>) {
        let (gone, kept): (Vec<Conn>, Vec<Conn>) = self.dump().into_iter().partition(doomed);
        let (mut pending, mut confirmed) = (Vec::new(), Vec::new());
        for (key, entry) in gone.iter().flat_map(|c| c.orig.iter().chain(c.reply.iter())) {
            if entry.is_pending() { &mut pending } else { &mut confirmed }.push(*key);
        }
        let [confirmed_fd, pending_fd] =
            self.fds.as_ref().map(|[c, p]| [Some(c), Some(p)]).unwrap_or_default();
        remove_all(&mut self.pending, pending_fd, &pending);
        remove_all(&mut self.confirmed, confirmed_fd, &confirmed);
        (gone, kept)
    }
}

/// Why a connection ended (its `destroy` event says).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Idle past its state's timeout.
    Expired,
    /// Pushed out of the pending table (never confirmed) before it expired.
    Evicted,
    /// Removed by another process (`masq conns flush`).
    Removed,
    /// Its uplink went down (`on_down = "flush"`).
    UplinkDown,
    /// Moved back to its preferred uplink (`on_up = "reclaim"`).
    Reclaimed,
    /// Its uplink lost the address it was masqueraded behind.
    Renumbered,
    /// Its published service was removed by a reload.
    Unpublished,
}

#[cfg(test)]
mod tests {
    use masq_common::{
        CONN_F_REPLY, TCP_SEEN_ACK, TCP_SEEN_FIN, TCP_SEEN_RST, TCP_SEEN_SYN, Tuple4,
    };

    use super::*;

    /// The pairing as it was, by key lookups: the reference the sorting one is checked against.
    fn pair_hash(entries: Vec<(FlowKey, ConnEntry)>) -> Vec<Conn> {
        let mut by_key: std::collections::HashMap<FlowKey, ConnEntry> =
            entries.into_iter().collect();
        let origs: Vec<FlowKey> =
            by_key.iter().filter(|(_, e)| !e.is_reply()).map(|(k, _)| *k).collect();
        let mut conns = Vec::with_capacity(origs.len());
        for key in origs {
            let Some(entry) = by_key.remove(&key) else {
                continue;
            };
            let twin = entry.twin_key(&key);
            let reply = by_key.remove(&twin).map(|e| (twin, e));
            conns.push(Conn { orig: Some((key, entry)), reply });
        }
        conns.extend(by_key.into_iter().map(|(k, e)| Conn { orig: None, reply: Some((k, e)) }));
        conns
    }

    fn entry(xlate: FlowKey, flags: u8, tcp_seen: u8, packets: u64) -> ConnEntry {
        ConnEntry { xlate: Tuple4::of(&xlate), flags, tcp_seen, packets, ..Default::default() }
    }

    fn inbound_pair(reply_seen: u8, reply_packets: u64) -> Vec<(FlowKey, ConnEntry)> {
        let client_to_public = FlowKey::new(1, 2, 1000, 80, IPPROTO_TCP);
        let client_to_server = FlowKey::new(1, 3, 1000, 80, IPPROTO_TCP);
        let server_to_public_reply = client_to_server.reversed();
        vec![
            (client_to_public, entry(client_to_server, 0, TCP_SEEN_SYN, 1)),
            (
                server_to_public_reply,
                entry(client_to_public.reversed(), CONN_F_REPLY, reply_seen, reply_packets),
            ),
        ]
    }

    /// Random dumps: connections with both entries, with one only, and keys dumped twice; the
    /// pairing finds each connection once with what the dump held.
    fn random_dump(conns: u32, seed: u64) -> Vec<(FlowKey, ConnEntry)> {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut entries = Vec::new();
        for i in 0..conns {
            let r = next();
            let orig = FlowKey::new(r as u32, 7, (r >> 32) as u16, 80, IPPROTO_TCP);
            let xlate = FlowKey::new(r as u32, 9, (r >> 32) as u16, 8080, IPPROTO_TCP);
            let e = entry(xlate, 0, TCP_SEEN_SYN, u64::from(i));
            let reply = (xlate.reversed(), entry(orig.reversed(), CONN_F_REPLY, 0, u64::from(i)));
            match r % 8 {
                0 => entries.push((orig, e)),
                1 => entries.push(reply),
                2 => {
                    // Moved to the confirmed table during the dump: both copies, later one kept.
                    entries.push((orig, e));
                    entries.push(reply);
                    entries.push((orig, ConnEntry { packets: e.packets + 1, ..e }));
                }
                _ => {
                    entries.push((orig, e));
                    entries.push(reply);
                }
            }
        }
        entries
    }

    /// A connection as (initiator entry, reply entry), each as its key and packet count.
    type Seen = (Option<(FlowKey, u64)>, Option<(FlowKey, u64)>);

    fn canonical(mut conns: Vec<Conn>) -> Vec<Seen> {
        let mut v: Vec<_> = conns
            .drain(..)
            .map(|c| (c.orig.map(|(k, e)| (k, e.packets)), c.reply.map(|(k, e)| (k, e.packets))))
            .collect();
        v.sort_by_key(|(o, r)| (o.map(|x| key_bits(&x.0)), r.map(|x| key_bits(&x.0))));
        v
    }

    #[test]
    fn pairing_by_sorting_finds_what_a_lookup_by_key_does() {
        for seed in [1, 2, 3] {
            let dump = random_dump(5000, seed);
            assert_eq!(canonical(pair(dump.clone())), canonical(pair_hash(dump)), "seed {seed}");
        }
    }

    #[test]
    fn both_directions_pair_into_one_connection() {
        let conns = pair(inbound_pair(0, 0));
        assert_eq!(conns.len(), 1);
        assert!(conns[0].orig.is_some() && conns[0].reply.is_some());
    }

    #[test]
    fn tcp_state_follows_flags_of_both_directions() {
        assert_eq!(pair(inbound_pair(0, 0))[0].state(), ConnState::TcpSynSent);
        let synack = TCP_SEEN_SYN | TCP_SEEN_ACK;
        assert_eq!(pair(inbound_pair(synack, 1))[0].state(), ConnState::TcpEstablished);
        let half_closed = synack | TCP_SEEN_FIN;
        assert_eq!(pair(inbound_pair(half_closed, 3))[0].state(), ConnState::TcpEstablished);
        let mut both_closed = inbound_pair(half_closed, 3);
        both_closed[0].1.tcp_seen |= TCP_SEEN_FIN;
        assert_eq!(pair(both_closed)[0].state(), ConnState::TcpClosing);
        assert_eq!(pair(inbound_pair(TCP_SEEN_RST, 1))[0].state(), ConnState::TcpClosing);
    }

    #[test]
    fn orphaned_reply_entry_stays_listed() {
        let mut entries = inbound_pair(0, 0);
        entries.remove(0);
        let conns = pair(entries);
        assert_eq!(conns.len(), 1);
        assert!(conns[0].orig.is_none());
    }
}
