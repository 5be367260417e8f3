//! Sending a translated packet on without the kernel stack: TTL, MAC addresses, redirect.
use masq_common::Counter;

use crate::{
    csum,
    packet::{IP_CSUM, IP_TTL, Packet},
};

/// Decrement the TTL as a router does (the caller made sure it is above 1).
#[inline(always)]
pub fn decrement_ttl<P: Packet>(p: &mut P) -> Result<(), Counter> {
    let word: u16 = p.load(IP_TTL)?;
    let mut bytes = word.to_ne_bytes();
    bytes[0] = bytes[0].wrapping_sub(1);
    let new = u16::from_ne_bytes(bytes);
    let sum: u16 = p.load(IP_CSUM)?;
    p.store_u16(IP_CSUM, csum::replace2(sum, word, new))?;
    p.store_u16(IP_TTL, new)
}

/// Set the Ethernet addresses the FIB lookup resolved.
#[inline(always)]
pub fn set_macs<P: Packet>(p: &mut P, smac: &[u8; 6], dmac: &[u8; 6]) -> Result<(), Counter> {
    let (d, s) = (dmac, smac);
    p.frame_write(0, u32::from_ne_bytes([d[0], d[1], d[2], d[3]]))?;
    p.frame_write(4, u32::from_ne_bytes([d[4], d[5], s[0], s[1]]))?;
    p.frame_write(8, u32::from_ne_bytes([s[2], s[3], s[4], s[5]]))
}
