//! The connection tables: both directions of a connection, inserted together, kept together.
//! A new connection starts pending (`PENDING_CONNS`, an LRU a flood may churn) and moves to the
//! confirmed table (`CONNS`, never evicted) once its TCP handshake completes or a reply to it
//! arrives, so no connection that never completes can push out one that did.
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
};
use masq_common::{
    CONN_F_INBOUND, CONN_F_PENDING, CONN_F_REPLY, CONN_F_SYN_TIMED, ConnEntry, ConnRoute, Counter,
    FlowKey, NAT_PORT_TRIES, TCP_SEEN_ACK, TCP_SEEN_FIN, TCP_SEEN_PEER_RESYN, TCP_SEEN_RESYN,
    TCP_SEEN_RST, TCP_SEEN_SEQ, TCP_SEEN_SYN, Tuple4, tick,
};

use crate::{
    events,
    maps::{CLOCK, CONNS, PENDING_CONNS},
    packet::{Ipv4, L4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    stats::{count, uplink_syn_answered, uplink_syn_sent},
};

const EEXIST: i32 = 17;

/// CLOCK_MONOTONIC_COARSE, as userspace's expiry reads it. That clock moves only at the
/// kernel's ticks, as `jiffies` does: its value is kept per CPU for the jiffy it was read in, and
/// read again only in a new one. `bpf_jiffies64` is one load (the verifier inlines it), where
/// the clock's helper call cost ~10 ns a packet on an AMD EPYC host (its return mitigations).
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: plain helper call, inlined.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cached) = CLOCK.get_ptr_mut(0) else {
        // SAFETY: plain helper call.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot; programs do not preempt each other on a CPU.
    let cached = unsafe { &mut *cached };
    if cached.jiffies != jiffies {
        // SAFETY: plain helper call.
        cached.ns = unsafe { bpf_ktime_get_coarse_ns() };
        cached.jiffies = jiffies;
    }
    cached.ns
}

/// `CLOCK`'s slot: the coarse clock as read in one jiffy.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ClockCache {
    jiffies: u64,
    ns: u64,
}

/// The clock in ticks: read once per packet, and handed to what needs it (a clock read costs as
/// much as a map lookup).
#[inline(always)]
pub fn now_tick() -> u32 {
    tick(now_ns())
}

/// A connection's entry for `key`, confirmed or pending (`ConnEntry::is_pending` says which).
#[inline(always)]
pub fn lookup(key: &FlowKey) -> Option<&'static mut ConnEntry> {
    // SAFETY: map values live until deleted; concurrent writers only touch counters (plain adds)
    // and monotonic fields.
    let p = CONNS.get_ptr_mut(key).or_else(|| PENDING_CONNS.get_ptr_mut(key))?;
    Some(unsafe { &mut *p })
}

/// Insert an entry into the table its flags name, unless the key exists in either.
#[inline(always)]
fn insert_new(key: &FlowKey, entry: &ConnEntry) -> Result<(), i32> {
    if entry.is_pending() {
        if CONNS.get_ptr(key).is_some() {
            return Err(-EEXIST);
        }
        insert_pending(key, entry)
    } else {
        CONNS.insert(key, entry, BPF_NOEXIST as u64)
    }
}

/// Insert into the pending table, by reference (a copy of the entry would not fit the stack).
#[inline(always)]
fn insert_pending(key: &FlowKey, entry: &ConnEntry) -> Result<(), i32> {
    PENDING_CONNS.insert(key, entry, BPF_NOEXIST as u64)
}

#[inline(always)]
fn remove(key: &FlowKey, entry: &ConnEntry) {
    let _ = if entry.is_pending() { PENDING_CONNS.remove(key) } else { CONNS.remove(key) };
}

/// Whether this packet confirms its pending connection: the initiator's ACK that ends the
/// handshake, acknowledging the answer's SYN-ACK (a blind ACK cannot know its sequence number),
/// or any reply of another protocol. An answer entry rebuilt after eviction knows nothing and
/// holds nothing against it.
#[inline(always)]
fn confirms(entry: &ConnEntry, twin: &ConnEntry, ip: &Ipv4) -> bool {
    if ip.l4 != L4::Tcp {
        return entry.is_reply();
    }
    let answered = twin.tcp_seen & TCP_SEEN_SEQ == 0
        || twin.tcp_seen & (TCP_SEEN_SYN | TCP_SEEN_ACK) == TCP_SEEN_SYN | TCP_SEEN_ACK
            && seq_within(ip.tcp_ack, twin.tcp_next_seq.wrapping_sub(SEQ_SLACK), twin.tcp_next_seq);
    !entry.is_reply() && ip.tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) == TCP_ACK && answered
}

/// Move a pending connection confirmed by this packet to the confirmed table: both entries in
/// (the reply first, as at creation), then both out of the pending one. When the confirmed table
/// is full it stays pending, counted.
///
/// The other direction is looked up for every packet, even one that cannot confirm: the lookup
/// marks it referenced in the LRU, so a flood's churn evicts a pending connection's two entries
/// together. Skipped, the SYN-ACK refreshed only its own entry, the initiator's was evicted
/// first, and its handshake-ending ACK found nothing (and the table filled with halves).
#[inline(always)]
fn confirm(key: &FlowKey, entry: &ConnEntry, ip: &Ipv4) {
    let twin_key = entry.twin_key(key);
    // SAFETY: read-only use of a map value.
    let Some(twin) = (unsafe { PENDING_CONNS.get(twin_key) }) else { return };
    if !confirms(entry, twin, ip) {
        return;
    }
    let (mut this, mut other) = (*entry, *twin);
    this.flags &= !CONN_F_PENDING;
    other.flags &= !CONN_F_PENDING;
    if CONNS.insert(twin_key, other, BPF_NOEXIST as u64).is_err() {
        count(Counter::ConfirmedTableFull);
        return;
    }
    if CONNS.insert(key, this, BPF_NOEXIST as u64).is_err() {
        let _ = CONNS.remove(twin_key);
        count(Counter::ConfirmedTableFull);
        return;
    }
    let _ = PENDING_CONNS.remove(key);
    let _ = PENDING_CONNS.remove(twin_key);
    count(Counter::ConnsConfirmed);
}

/// The key and entry of the other direction, rebuilt from this one.
#[inline(always)]
fn twin_of(key: &FlowKey, entry: &ConnEntry, now: u32) -> (FlowKey, ConnEntry) {
    let twin = ConnEntry {
        xlate: Tuple4::of(&key.reversed()),
        uplink: entry.uplink,
        flags: (entry.flags ^ CONN_F_REPLY) & !CONN_F_SYN_TIMED,
        // Rebuilt while this direction's reuse waits for its answer: the answer looks for it.
        tcp_seen: if entry.tcp_seen & TCP_SEEN_RESYN != 0 { TCP_SEEN_PEER_RESYN } else { 0 },
        created_tick: entry.created_tick,
        last_seen_tick: now,
        ..ConnEntry::default()
    };
    (entry.twin_key(key), twin)
}

/// Microseconds of CLOCK_MONOTONIC (wrapping), precise enough for a SYN's answer time.
#[inline(always)]
fn now_us() -> u32 {
    // SAFETY: plain helper call.
    (unsafe { bpf_ktime_get_ns() } / 1000) as u32
}

/// Passive health: the first packet back on a masqueraded TCP connection (a SYN-ACK or RST)
/// answers its SYN, whose time the reply entry holds until then (`CONN_F_SYN_TIMED`).
#[inline(always)]
fn count_syn_answer(entry: &mut ConnEntry, ip: &Ipv4) {
    if entry.flags & CONN_F_SYN_TIMED != 0 && ip.tcp_flags & (TCP_SYN | TCP_RST) != 0 {
        entry.flags &= !CONN_F_SYN_TIMED;
        let waited = now_us().wrapping_sub(entry.tcp_next_seq);
        uplink_syn_answered(entry.uplink, u64::from(waited));
    }
}

#[inline(always)]
fn tcp_seen_bits(flags: u8) -> u8 {
    let mut seen = 0;
    if flags & TCP_SYN != 0 {
        seen |= TCP_SEEN_SYN;
    }
    if flags & TCP_FIN != 0 {
        seen |= TCP_SEEN_FIN;
    }
    if flags & TCP_RST != 0 {
        seen |= TCP_SEEN_RST;
    }
    if flags & TCP_ACK != 0 {
        seen |= TCP_SEEN_ACK;
    }
    seen
}

/// `a` comes after `b` in sequence space.
#[inline(always)]
fn after(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// `seq` lies in `lo..=hi` of sequence space.
#[inline(always)]
fn seq_within(seq: u32, lo: u32, hi: u32) -> bool {
    seq.wrapping_sub(lo) <= hi.wrapping_sub(lo)
}

/// Follow this direction's sequence space: the next sequence number it will send and the
/// highest acknowledgment it sent.
#[inline(always)]
fn track_seq(entry: &mut ConnEntry, ip: &Ipv4) -> u8 {
    let mut seen = 0;
    let end = ip.tcp_end_seq();
    if entry.tcp_seen & TCP_SEEN_SEQ == 0 || after(end, entry.tcp_next_seq) {
        entry.tcp_next_seq = end;
        seen |= TCP_SEEN_SEQ;
    }
    if ip.tcp_flags & TCP_ACK != 0
        && (entry.tcp_seen & TCP_SEEN_ACK == 0 || after(ip.tcp_ack, entry.tcp_max_ack))
    {
        entry.tcp_max_ack = ip.tcp_ack;
    }
    seen
}

/// Whether a RST or FIN may change its connection (RFC 5961, as a middlebox can check it). A
/// RST's sequence number lies between what the other side acknowledged (less one) and what this
/// side sent: the host accepts no other reset. A FIN's segment reaches into that window: it may
/// start before it (retransmitted with its data) or up to 64 KiB past it (data lost before the
/// gateway). A RST answering a connection's first packet must acknowledge it; one answering a
/// SYN that reuses the tuple is taken. What masq has not seen (an entry rebuilt after eviction)
/// is not held against the packet.
#[inline(always)]
fn tcp_acceptable(key: &FlowKey, entry: &ConnEntry, ip: &Ipv4) -> bool {
    if ip.tcp_flags & (TCP_RST | TCP_FIN) == 0 {
        return true;
    }
    let Some(twin) = lookup(&entry.twin_key(key)) else {
        return true;
    };
    let rst = ip.tcp_flags & TCP_RST != 0;
    if rst && twin.tcp_seen & TCP_SEEN_RESYN != 0 {
        return true;
    }
    if entry.tcp_seen & TCP_SEEN_SEQ == 0 {
        let answers = ip.tcp_flags & TCP_ACK != 0 && ip.tcp_ack == twin.tcp_next_seq;
        return twin.tcp_seen & TCP_SEEN_SEQ == 0 || answers;
    }
    let hi = entry.tcp_next_seq;
    let lo = if twin.tcp_seen & TCP_SEEN_ACK != 0 { twin.tcp_max_ack } else { hi }.wrapping_sub(1);
    if rst {
        seq_within(ip.tcp_seq, lo, hi)
    } else {
        !after(lo, ip.tcp_end_seq()) && !after(ip.tcp_seq, hi.wrapping_add(SEQ_SLACK))
    }
}

/// Whether the TCP segment an ICMP error quotes (`seq`, sent by `sender`) is one its sender
/// may still have in flight (RFC 5927): at most a window behind what the receiver
/// acknowledged, not beyond what was sent.
#[inline(always)]
pub fn quoted_seq_plausible(seq: u32, sender: &ConnEntry, receiver: &ConnEntry) -> bool {
    if sender.tcp_seen & TCP_SEEN_SEQ == 0 {
        return true;
    }
    let hi = sender.tcp_next_seq;
    let lo = if receiver.tcp_seen & TCP_SEEN_ACK != 0 { receiver.tcp_max_ack } else { hi };
    seq_within(seq, lo.wrapping_sub(SEQ_SLACK), hi)
}

/// Slack in sequence space where masq cannot know better (64 KiB): how far behind the
/// receiver's acknowledgment a quoted segment may lie, past what masq saw sent a FIN may lie,
/// and behind the answer's next sequence number the handshake's last ACK may acknowledge.
const SEQ_SLACK: u32 = 1 << 16;

/// A packet of a known connection: checked against the connection's TCP sequence space, then
/// accounted, and a pending connection confirmed when this packet does it. A segment that fails
/// changes nothing. `entry` may be gone afterwards (moved to the confirmed table): read what the
/// caller needs from it first.
#[inline(always)]
pub fn account(
    key: &FlowKey,
    entry: &mut ConnEntry,
    ip: &Ipv4,
    len: u64,
    now: u32,
) -> Result<(), Counter> {
    if ip.l4 == L4::Tcp && !tcp_acceptable(key, entry, ip) {
        return Err(Counter::DropTcpOutOfWindow);
    }
    touch(key, entry, ip, len, now);
    if entry.is_pending() {
        confirm(key, entry, ip);
    }
    Ok(())
}

/// The route `entry` keeps (`steer::route_kept`), once `account` had its packet: a confirmed
/// entry's. A pending one may just have been moved to the confirmed table, and its element
/// freed for another connection.
#[inline(always)]
pub fn kept_route(entry: &mut ConnEntry) -> Option<&mut ConnRoute> {
    if entry.is_pending() { None } else { Some(&mut entry.route) }
}

/// A TCP segment with SYN, FIN or RST: its answer timed, the close and reuse of the tuple
/// followed in both directions, the sequence space tracked.
#[inline(always)]
fn track_control(key: &FlowKey, entry: &mut ConnEntry, ip: &Ipv4) {
    count_syn_answer(entry, ip);
    let mut seen = tcp_seen_bits(ip.tcp_flags);
    let syn = ip.tcp_flags & (TCP_SYN | TCP_ACK);
    let twin_key = entry.twin_key(key);
    if syn == TCP_SYN && entry.tcp_seen & (TCP_SEEN_FIN | TCP_SEEN_RST) != 0 {
        // A new SYN on a closed tuple starts over: forget both directions' close.
        entry.tcp_seen = seen;
        if let Some(twin) = lookup(&twin_key) {
            twin.tcp_seen = 0;
        }
        seen |= track_seq(entry, ip);
    } else if syn == TCP_SYN && entry.tcp_seen & TCP_SEEN_SEQ != 0 {
        // A SYN on a live tuple (reused, or forged): the sequence state stays until the
        // other side answers it.
        seen |= TCP_SEEN_RESYN;
        if let Some(twin) = lookup(&twin_key) {
            twin.tcp_seen |= TCP_SEEN_PEER_RESYN;
        }
    } else {
        // Anything but a SYN from this side ends a reuse it had begun.
        entry.tcp_seen &= !TCP_SEEN_RESYN;
        // Only the SYN-ACK answering a reuse looks at the other direction: neither the
        // established path nor a new connection's answer does a second lookup.
        if syn == TCP_SYN | TCP_ACK && entry.tcp_seen & TCP_SEEN_PEER_RESYN != 0 {
            entry.tcp_seen &= !TCP_SEEN_PEER_RESYN;
            if let Some(twin) = lookup(&twin_key).filter(|t| t.tcp_seen & TCP_SEEN_RESYN != 0) {
                // The answer to a SYN that reused the tuple: both directions start over,
                // the initiator at what this SYN-ACK acknowledges.
                twin.tcp_seen = TCP_SEEN_SYN | TCP_SEEN_SEQ;
                twin.tcp_next_seq = ip.tcp_ack;
                entry.tcp_seen = 0;
            }
        }
        seen |= track_seq(entry, ip);
    }
    if entry.tcp_seen | seen != entry.tcp_seen {
        entry.tcp_seen |= seen;
    }
}

/// Account a packet to its connection: counters, last-seen time, TCP state. Once a tick a
/// pending entry also looks up the other direction's (which refreshes it in the LRU) and
/// rebuilds it if the LRU evicted it, so one direction is never orphaned. A confirmed entry
/// does not: `CONNS` evicts nothing, and its two entries are inserted and deleted together.
#[inline(always)]
pub fn touch(key: &FlowKey, entry: &mut ConnEntry, ip: &Ipv4, len: u64, now: u32) {
    // Plain adds: each direction has its own entry and a flow is handled by one CPU at a time,
    // so a lost update needs two CPUs on one direction at once (BPF has no atomic RMW in core).
    entry.packets += 1;
    entry.bytes += len;
    if ip.l4 == L4::Tcp {
        if ip.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 {
            // Data and acknowledgments: the sequence space moves on, and a reuse this side
            // had begun is over (what `track_control` does for such a segment).
            let mut seen = track_seq(entry, ip);
            if ip.tcp_flags & TCP_ACK != 0 {
                seen |= TCP_SEEN_ACK;
            }
            let tcp_seen = (entry.tcp_seen | seen) & !TCP_SEEN_RESYN;
            if tcp_seen != entry.tcp_seen {
                entry.tcp_seen = tcp_seen;
            }
        } else {
            track_control(key, entry, ip);
        }
    }
    if entry.last_seen_tick != now {
        entry.last_seen_tick = now;
        if !entry.is_pending() {
            return;
        }
        let (twin_key, twin) = twin_of(key, entry, now);
        if lookup(&twin_key).is_none() {
            let _ = insert_new(&twin_key, &twin);
        }
    }
}

/// Mixes a tuple into 32 bits (murmur3 finalizer).
#[inline(always)]
pub fn hash(key: &FlowKey) -> u32 {
    let mut h = key.src_addr ^ key.dst_addr.rotate_left(13);
    h ^= (u32::from(key.src_port) << 16 | u32::from(key.dst_port)).rotate_left(7);
    h ^= u32::from(key.proto);
    mix(h)
}

/// `hash` of a tuple with only its source endpoint (destination address and port 0), from
/// registers alone.
#[inline(always)]
pub fn hash_endpoint(addr: u32, port: u16, proto: u8) -> u32 {
    mix(addr ^ (u32::from(port) << 16).rotate_left(7) ^ u32::from(proto))
}

#[inline(always)]
fn mix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Source ports (host byte order, inclusive) the NAT may pick from when the translated tuple
/// is taken, minus `skip_min..=skip_max` (empty when min > max).
#[derive(Clone, Copy)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
    pub skip_min: u16,
    pub skip_max: u16,
    /// Keep the original port only when it lies in the range (SNAT, as Linux NAT does);
    /// otherwise any free original port is kept.
    pub strict: bool,
    /// The translated source port is the endpoint's binding's (`binding.rs`): tried first,
    /// whatever the range says.
    pub bound: bool,
}

impl PortRange {
    /// The skipped ports inside the range, as (first, count).
    #[inline(always)]
    fn hole(&self) -> (u32, u32) {
        let lo = self.skip_min.max(self.min) as u32;
        let hi = self.skip_max.min(self.max) as u32;
        if lo <= hi { (lo, hi - lo + 1) } else { (0, 0) }
    }

    #[inline(always)]
    fn skips(&self, port: u16) -> bool {
        let (lo, n) = self.hole();
        n > 0 && port as u32 >= lo && (port as u32) < lo + n
    }

    /// The original port may be kept: not one the gateway uses, and inside a strict range.
    #[inline(always)]
    pub fn keeps(&self, port: u16) -> bool {
        !self.skips(port) && (!self.strict || (self.min..=self.max).contains(&port))
    }

    /// The `i`th replacement port for `seed` (host byte order); `None` when the range is empty.
    #[inline(always)]
    pub fn candidate(&self, seed: u32, i: u32) -> Option<u16> {
        let (hole_start, hole_len) = self.hole();
        let span = (u32::from(self.max - self.min) + 1).saturating_sub(hole_len);
        if span == 0 {
            return None;
        }
        let mut port = self.min as u32 + seed.wrapping_add(i.wrapping_mul(7919)) % span;
        if hole_len > 0 && port >= hole_start {
            port += hole_len;
        }
        Some(port as u16)
    }
}

/// Insert a new (pending) connection: `key` becomes `xlate`, replies come back as
/// `xlate.reversed()`.
///
/// The reply entry goes in first with `BPF_NOEXIST` (and only when no confirmed entry has its
/// key): if its tuple is taken, `xlate.src_port` is moved through `ports` (keeping the original
/// port when free, or the endpoint's binding's: `PortRange::bound`), up to `NAT_PORT_TRIES`
/// tries.
/// Then the forward entry (`key`, which the caller looked up and found in neither table); if
/// that fails the reply entry is removed again, so a half connection never stays behind.
/// Returns the forward entry. `time_ns`: the caller's clock (`now_ns`), read once per packet.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn create(
    key: &FlowKey,
    xlate: FlowKey,
    uplink: u8,
    flags: u8,
    ports: Option<PortRange>,
    ip: &Ipv4,
    len: u64,
    time_ns: u64,
) -> Result<Tuple4, Counter> {
    let now = tick(time_ns);
    let mut xlate = Tuple4::of(&xlate);
    let mut entry = ConnEntry {
        xlate,
        uplink,
        flags: flags | CONN_F_PENDING,
        created_tick: now,
        last_seen_tick: now,
        ..ConnEntry::default()
    };
    // A masqueraded TCP connection's reply entry keeps its SYN's time (passive health).
    let syn_us = if ip.l4 == L4::Tcp && flags & CONN_F_INBOUND == 0 { now_us() } else { 0 };
    if ip.l4 == L4::Tcp {
        entry.tcp_seen = tcp_seen_bits(ip.tcp_flags) | track_seq(&mut entry, ip);
    }
    let reply_of = |entry: &ConnEntry| {
        let (key, mut reply) = twin_of(key, entry, now);
        if syn_us != 0 {
            reply.tcp_next_seq = syn_us;
            reply.flags |= CONN_F_SYN_TIMED;
        }
        (key, reply)
    };
    let (mut reply_key, mut reply) = reply_of(&entry);
    // The original port (or the binding's, `bound`) is kept when free, unless it is out of a
    // strict range or one the gateway uses itself.
    let bound = ports.is_some_and(|r| r.bound);
    let keep = bound || ports.is_none_or(|r| r.keeps(u16::from_be(xlate.src_port)));
    if !keep || insert_new(&reply_key, &reply).is_err() {
        let range = ports.ok_or(Counter::DropConnInsertFailed)?;
        if bound {
            // The endpoint's public port is taken toward this destination (a stale entry):
            // mapped for this destination alone.
            count(Counter::NatMappingFallback);
        }
        let seed = hash(key);
        let mut placed = false;
        for i in 0..NAT_PORT_TRIES {
            let candidate = range.candidate(seed, i).ok_or(Counter::DropNatPortExhausted)?;
            xlate.src_port = candidate.to_be();
            entry.xlate = xlate;
            (reply_key, reply) = reply_of(&entry);
            if insert_new(&reply_key, &reply).is_ok() {
                placed = true;
                break;
            }
        }
        if !placed {
            return Err(Counter::DropNatPortExhausted);
        }
    }
    // The first packet is accounted right here, sparing a lookup.
    entry.packets = 1;
    entry.bytes = len;
    // Straight into the pending table: the caller's lookup just missed `key` in both.
    match insert_pending(key, &entry) {
        Ok(()) => {
            if syn_us != 0 {
                uplink_syn_sent(uplink);
            }
            events::conn_created(key, &entry, time_ns);
            Ok(entry.xlate)
        }
        Err(err) => {
            remove(&reply_key, &reply);
            if err == -EEXIST {
                // Another CPU opened the same connection first: follow its entry.
                lookup(key).map(|e| e.xlate).ok_or(Counter::DropConnInsertFailed)
            } else {
                Err(Counter::DropConnInsertFailed)
            }
        }
    }
}
