//! What a packet of a tracked connection becomes: a plain tuple rewrite, or an ICMP error whose
//! quoted packet is rewritten too.
use aya_ebpf::bindings::BPF_ANY;
use masq_common::{ConnEntry, Counter, FRAG_TICKS, FlowKey, FragKey, FragXlate, tick};

use crate::{
    conntrack::{self, now_ns},
    maps::FRAGS,
    nat::{rewrite, rewrite_icmp_error},
    packet::{Frag, INNER_L4, Inner, Ipv4, L4, Packet, parse_icmp_error},
    stats::count,
};

#[derive(Clone, Copy)]
pub enum Translation {
    Flow(FlowKey),
    IcmpError { inner: Inner, new_inner: FlowKey, outer: (u32, u32) },
}

impl Translation {
    /// The packet's tuple after translation (for the FIB lookup).
    #[inline(always)]
    pub fn result(&self, ip: &Ipv4) -> FlowKey {
        match self {
            Translation::Flow(to) => *to,
            Translation::IcmpError { outer, .. } => {
                FlowKey::new(outer.0, outer.1, 0, 0, ip.key.proto)
            }
        }
    }

    #[inline(always)]
    pub fn apply<P: Packet>(&self, p: &mut P, ip: &Ipv4) -> Result<(), Counter> {
        match self {
            Translation::Flow(to) => rewrite(p, ip, &ip.key, to),
            Translation::IcmpError { inner, new_inner, outer } => {
                rewrite_icmp_error(p, ip, inner, new_inner, *outer)
            }
        }
    }
}

#[inline(always)]
fn frag_key(ip: &Ipv4) -> FragKey {
    FragKey {
        src_addr: ip.key.src_addr,
        dst_addr: ip.key.dst_addr,
        id: ip.id,
        proto: ip.key.proto,
        _pad: 0,
    }
}

/// What masq knows about a packet: the one lookup path of every program.
pub enum Found {
    /// A later fragment, translated as its first fragment was, on that uplink.
    Fragment(Translation, u8),
    /// A later fragment whose first fragment masq has not seen (or no longer remembers).
    FragmentUnknown,
    /// An ICMP error about a tracked connection: its translation, and that connection's entry
    /// (for the error's direction) with its key.
    IcmpError(Translation, &'static mut ConnEntry, FlowKey),
    /// An ICMP error about nothing masq tracks in this direction.
    IcmpErrorUnknown,
    /// A packet of a tracked connection (either direction: the caller checks).
    Flow(&'static mut ConnEntry),
    /// No connection: maybe a new one.
    New,
}

/// An ICMP error about a connection counts as that connection's traffic (last seen, its
/// counters); returns the clock it read.
#[inline(always)]
pub fn account_icmp_error(conn_key: &FlowKey, entry: &mut ConnEntry, ip: &Ipv4, len: u64) -> u32 {
    let now = conntrack::now_tick();
    conntrack::touch(conn_key, entry, ip, len, now);
    count(Counter::IcmpErrorTranslated);
    now
}

/// Find `ip`'s connection: a later fragment by its first fragment's record, an ICMP error by
/// the connection its quoted packet belongs to (`from_uplink`: the uplink it arrived on, none
/// from the LAN), any other packet by its tuple. An ICMP error that quotes a connection without
/// matching it fully is an error.
#[inline(always)]
pub fn find<P: Packet>(p: &P, ip: &Ipv4, from_uplink: Option<u8>) -> Result<Found, Counter> {
    if ip.frag == Frag::Later {
        return Ok(match later_fragment(ip) {
            Some((translation, uplink)) => Found::Fragment(translation, uplink),
            None => Found::FragmentUnknown,
        });
    }
    if ip.l4 == L4::IcmpError {
        return Ok(match icmp_error(p, ip, from_uplink)? {
            Some((translation, entry, key)) => Found::IcmpError(translation, entry, key),
            None => Found::IcmpErrorUnknown,
        });
    }
    Ok(match conntrack::lookup(&ip.key) {
        Some(entry) => Found::Flow(entry),
        None => Found::New,
    })
}

/// A later fragment's translation (addresses only) and uplink, as its first fragment recorded.
#[inline(always)]
fn later_fragment(ip: &Ipv4) -> Option<(Translation, u8)> {
    // SAFETY: read-only use of a map value.
    let x = unsafe { FRAGS.get(frag_key(ip)) }?;
    if tick(now_ns()).wrapping_sub(x.tick) > FRAG_TICKS {
        return None;
    }
    let to = FlowKey::new(x.src_addr, x.dst_addr, 0, 0, ip.key.proto);
    Some((Translation::Flow(to), x.uplink))
}

/// Remember a first fragment's translation for the rest of its datagram.
#[inline(always)]
pub fn record_first_fragment(ip: &Ipv4, translation: &Translation, uplink: u8) {
    if ip.frag != Frag::First {
        return;
    }
    let to = translation.result(ip);
    let x = FragXlate {
        src_addr: to.src_addr,
        dst_addr: to.dst_addr,
        uplink,
        _pad: [0; 3],
        tick: tick(now_ns()),
    };
    let _ = FRAGS.insert(frag_key(ip), x, BPF_ANY as u64);
}

type IcmpErrorMatch = Option<(Translation, &'static mut ConnEntry, FlowKey)>;

/// The translation of an ICMP error about a tracked connection, that connection's entry for
/// the direction the error travels, and the entry's key; none when it quotes no connection of
/// this direction. It must match the connection fully (RFC 5927): sent to the quoted packet's
/// sender, arriving on the connection's uplink, and quoting a TCP segment still in flight.
#[inline(always)]
fn icmp_error<P: Packet>(
    p: &P,
    ip: &Ipv4,
    from_uplink: Option<u8>,
) -> Result<IcmpErrorMatch, Counter> {
    let Ok(inner) = parse_icmp_error(p) else { return Ok(None) };
    // The quoted packet travelled the other way: its reverse is this error's direction.
    let conn_key = inner.key.reversed();
    let Some(entry) = conntrack::lookup(&conn_key) else { return Ok(None) };
    let toward_lan = from_uplink.is_some();
    if entry.toward_lan() != toward_lan {
        return Ok(None);
    }
    let wrong_uplink = from_uplink.is_some_and(|uplink| uplink != entry.uplink);
    if ip.key.dst_addr != inner.key.src_addr || wrong_uplink {
        return Err(Counter::DropIcmpErrorMismatch);
    }
    if inner.l4 == L4::Tcp {
        let seq = u32::from_be(p.load(INNER_L4 + 4)?);
        let sender = conntrack::lookup(&entry.twin_key(&conn_key));
        if sender.is_some_and(|sender| !conntrack::quoted_seq_plausible(seq, sender, entry)) {
            return Err(Counter::DropIcmpErrorMismatch);
        }
    }
    let new_inner = entry.xlate.key(inner.key.proto).reversed();
    // The error goes to the quoted packet's sender; when the quoted packet's destination sent
    // it (or a router on the LAN did), its source becomes that destination's new address.
    let src = if toward_lan && ip.key.src_addr != inner.key.dst_addr {
        ip.key.src_addr
    } else {
        new_inner.dst_addr
    };
    let translation = Translation::IcmpError { inner, new_inner, outer: (src, new_inner.src_addr) };
    Ok(Some((translation, entry, conn_key)))
}
