//! TC egress on each uplink: counts the uplink's traffic, translates what the kernel forwarded
//! untranslated (masq's slow path, incl. the fragments the kernel made), and stops LAN addresses
//! from leaking un-NATed.
use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};
use masq_common::Counter;

use crate::{
    conntrack,
    packet::{Frag, L4, Parsed},
    stats::{count, uplink_tx},
    steer::{config, in_lan, uplink_by_ifindex},
    translate::{Translation, icmp_error, later_fragment, record_first_fragment},
};

pub fn run(mut ctx: TcContext) -> Result<i32, Counter> {
    // SAFETY: `skb` is the program's context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let this_uplink = uplink_by_ifindex(ifindex).map(|(index, _)| index);
    if let Some(index) = this_uplink {
        uplink_tx(index, u64::from(ctx.len()));
    }
    let Some(cfg) = config() else { return Ok(TC_ACT_OK) };
    let ip = match crate::parse_tc(&ctx)? {
        Parsed::Ipv4(ip) => ip,
        Parsed::Ipv4Options { src_addr } if in_lan(cfg, src_addr) => {
            return Err(Counter::DropIpOptions);
        }
        _ => return Ok(TC_ACT_OK),
    };
    if !in_lan(cfg, ip.key.src_addr) {
        return Ok(TC_ACT_OK);
    }
    let (translation, uplink) = if ip.frag == Frag::Later {
        later_fragment(&ip).ok_or(Counter::DropFragment)?
    } else if ip.l4 == L4::IcmpError {
        // Accounted at LAN ingress, like every packet: only translate here.
        let (translation, entry, _) =
            icmp_error(&ctx, &ip, false).ok_or(Counter::DropUntranslatedLeak)?;
        (translation, entry.uplink)
    } else {
        // Already accounted at LAN ingress; only translate here.
        let entry = conntrack::lookup(&ip.key).ok_or(Counter::DropUntranslatedLeak)?;
        if entry.toward_lan() {
            return Err(Counter::DropUntranslatedLeak);
        }
        (Translation::Flow(entry.xlate.key(ip.key.proto)), entry.uplink)
    };
    record_first_fragment(&ip, &translation, uplink);
    translation.apply(&mut ctx, &ip)?;
    count(Counter::EgressTranslated);
    Ok(TC_ACT_OK)
}
