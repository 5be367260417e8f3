//! Incremental Internet checksum updates (RFC 1624), on raw words as loaded from the packet, so
//! byte order never matters.

/// Fold a 32-bit one's complement sum into 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// The first step of folding a 64-bit sum of at most five 32-bit words (an IPv4 header):
/// below 2^20, the same sum modulo 0xffff (2^16 ≡ 1), for [`fold`] to finish.
#[inline(always)]
pub fn fold_once(sum: u64) -> u32 {
    ((sum & 0xffff) + (sum >> 16)) as u32
}

/// New checksum after a 16-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace2(csum: u16, old: u16, new: u16) -> u16 {
    !fold(u32::from(!csum) + u32::from(!old) + u32::from(new))
}

/// New checksum after a 32-bit word of the covered data changed from `old` to `new`.
#[inline(always)]
pub fn replace4(csum: u16, old: u32, new: u32) -> u16 {
    let old = !old;
    !fold(u32::from(!csum) + (old & 0xffff) + (old >> 16) + (new & 0xffff) + (new >> 16))
}
