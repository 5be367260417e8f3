//! TC egress on each uplink: counts the uplink's traffic, translates what the kernel forwarded
//! untranslated (masq's slow path), and stops LAN addresses from leaking un-NATed.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use masq_common::Counter;

use crate::{
    conntrack,
    packet::{L4, Parsed},
    stats::{count, uplink_tx},
    steer::{config, in_lan, uplink_by_ifindex},
    translate::{Translation, icmp_error},
};

pub fn run(mut ctx: TcContext) -> Result<i32, Counter> {
    // SAFETY: `skb` is the program's context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if let Some((uplink_index, _)) = uplink_by_ifindex(ifindex) {
        uplink_tx(uplink_index, u64::from(ctx.len()));
    }
    let ip = match crate::parse_tc(&ctx)? {
        Parsed::Ipv4(ip) => ip,
        _ => return Ok(TC_ACT_OK as i32),
    };
    let Some(cfg) = config() else {
        return Ok(TC_ACT_OK as i32);
    };
    if !in_lan(cfg, ip.key.src_addr) {
        return Ok(TC_ACT_OK as i32);
    }
    if ip.fragment {
        return Err(Counter::DropFragment);
    }
    let len = u64::from(ctx.len());
    let translation = if ip.l4 == L4::IcmpError {
        let (translation, entry) =
            icmp_error(&ctx, &ip, false).ok_or(Counter::DropUntranslatedLeak)?;
        conntrack::touch(&ip.key, entry, &ip, len);
        translation
    } else {
        // Already accounted at LAN ingress; only translate here.
        let entry = conntrack::lookup(&ip.key).ok_or(Counter::DropUntranslatedLeak)?;
        if entry.toward_lan() {
            return Err(Counter::DropUntranslatedLeak);
        }
        Translation::Flow(entry.xlate.key(ip.key.proto))
    };
    translation.apply(&mut ctx, &ip)?;
    count(Counter::EgressTranslated);
    Ok(TC_ACT_OK as i32)
}
