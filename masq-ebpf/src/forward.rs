//! Sending a translated packet on without the kernel stack: TTL, MAC addresses, redirect.
use masq_common::{Counter, EthAddrs};

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
pub fn set_macs<P: Packet>(p: &mut P, eth: &EthAddrs) -> Result<(), Counter> {
    p.frame_write(0, eth[0])?;
    p.frame_write(4, eth[1])?;
    p.frame_write(8, eth[2])
}
