//! Answering ARP on an uplink for the published addresses that live there (the gateway does not
//! own them as local addresses, so the kernel would not answer).
use masq_common::{Counter, UplinkInfo};

use crate::{hook::Verdict, maps::PUBLIC_ADDRS, packet::Packet, stats::count};

const ARP_OFF: usize = 14;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

/// Send a reply back out of the uplink when `ctx` is a request for an address published there.
/// A redirect to the ingress device rather than XDP_TX: a veth peer only picks up XDP_TX frames
/// when it runs XDP itself.
#[inline(always)]
pub fn answer<P: Packet>(
    ctx: &mut P,
    uplink_index: u8,
    uplink: &UplinkInfo,
) -> Result<Verdict, Counter> {
    // htype 1, ptype IPv4, hlen 6, plen 4: 8 fixed bytes, then sha/spa/tha/tpa.
    let header: [u8; 8] = ctx.frame_load(ARP_OFF)?;
    if header != [0, 1, 8, 0, 6, 4, 0, ARPOP_REQUEST as u8] {
        return Ok(Verdict::Pass);
    }
    let sender_mac: [u8; 6] = ctx.frame_load(ARP_OFF + 8)?;
    let sender_ip: u32 = ctx.frame_load(ARP_OFF + 14)?;
    let target_ip: u32 = ctx.frame_load(ARP_OFF + 24)?;
    // SAFETY: read-only use of a map value.
    match unsafe { PUBLIC_ADDRS.get(target_ip) } {
        Some(owner) if owner.uplink == uplink_index => {}
        _ => return Ok(Verdict::Pass),
    }
    let mac = uplink.mac;
    let eth = ctx.frame_ptr::<[u8; 12]>(0).ok_or(Counter::DropMalformed)?;
    let arp = ctx.frame_ptr::<[u8; 28]>(ARP_OFF).ok_or(Counter::DropMalformed)?;
    // SAFETY: both ranges were bounds-checked by `ptr`.
    unsafe {
        let eth = &mut *eth;
        eth[..6].copy_from_slice(&sender_mac);
        eth[6..].copy_from_slice(&mac);
        let arp = &mut *arp;
        arp[7] = ARPOP_REPLY as u8;
        arp[8..14].copy_from_slice(&mac);
        arp[14..18].copy_from_slice(&target_ip.to_ne_bytes());
        arp[18..24].copy_from_slice(&sender_mac);
        arp[24..28].copy_from_slice(&sender_ip.to_ne_bytes());
    }
    count(Counter::ArpReplied);
    Ok(Verdict::Send(uplink.ifindex))
}
