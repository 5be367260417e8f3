//! `masq_uplink_out`: TC egress of each uplink (`_l3` on an L3 device). Counts the uplink's
//! traffic, translates what the kernel forwarded untranslated (masq's slow path, incl. the
//! fragments the kernel made), and stops LAN addresses from leaking un-NATed.
use aya_ebpf::{macros::classifier, programs::TcContext};
use masq_common::Counter;

use crate::{
    hook::{Hook, Verdict, tc_run},
    packet::{ETH_HLEN, Packet, Parsed, Skb, parse},
    stats::{count, uplink_tx},
    steer::{config, in_lan, uplink_by_ifindex},
    translate::{Found, Translation, find, record_first_fragment},
};

#[classifier]
pub fn masq_uplink_out(ctx: TcContext) -> i32 {
    tc_run::<ETH_HLEN>(ctx, run)
}

#[classifier]
pub fn masq_uplink_out_l3(ctx: TcContext) -> i32 {
    tc_run::<0>(ctx, run)
}

#[inline(always)]
fn run<const IP: usize>(ctx: &mut Skb<IP>) -> Result<Verdict, Counter> {
    let this_uplink = uplink_by_ifindex(ctx.ifindex()).map(|(index, _)| index);
    if let Some(index) = this_uplink {
        uplink_tx(index, ctx.len());
    }
    let Some(cfg) = config() else { return Ok(Verdict::Pass) };
    let ip = match parse(ctx)? {
        Parsed::Ipv4(ip) => ip,
        Parsed::Ipv4Options { src_addr } if in_lan(cfg, src_addr) => {
            return Err(Counter::DropIpOptions);
        }
        _ => return Ok(Verdict::Pass),
    };
    if !in_lan(cfg, ip.key.src_addr) {
        return Ok(Verdict::Pass);
    }
    // Already accounted at LAN ingress, like every packet: only translate here.
    let (translation, uplink) = match find(ctx, &ip, None)? {
        Found::Fragment(translation, uplink) => (translation, uplink),
        Found::FragmentUnknown => return Err(Counter::DropFragment),
        Found::IcmpError(translation, entry, _) => (translation, entry.uplink),
        Found::Flow(entry) if !entry.toward_lan() => {
            (Translation::Flow(entry.xlate.key(ip.key.proto)), entry.uplink)
        }
        Found::IcmpErrorUnknown | Found::Flow(_) | Found::New => {
            return Err(Counter::DropUntranslatedLeak);
        }
    };
    record_first_fragment(&ip, &translation, uplink);
    translation.apply(ctx, &ip)?;
    count(Counter::EgressTranslated);
    Ok(Verdict::Pass)
}
