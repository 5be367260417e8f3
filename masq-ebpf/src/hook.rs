//! The hooks' thin layer: each program body decides a `Verdict` the same way whichever hook runs
//! it; this module turns it into the hook's action (XDP or TC, Ethernet or L3).
use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_F_CURRENT_NETNS, TC_ACT_OK, TC_ACT_SHOT, bpf_redir_neigh,
        bpf_redir_neigh__bindgen_ty_1, bpf_sock_tuple, bpf_sock_tuple__bindgen_ty_1,
        bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1,
        xdp_action::{XDP_DROP, XDP_PASS},
    },
    helpers::{
        bpf_redirect, bpf_redirect_neigh, bpf_sk_lookup_udp, bpf_sk_release, bpf_skb_change_head,
        bpf_skc_lookup_tcp,
    },
    programs::{TcContext, XdpContext},
};
use masq_common::{Counter, EthAddrs, FlowKey, Outcome};

use crate::{
    forward::set_macs,
    packet::{ETH_HLEN, ETH_P_IP, ETH_TYPE, Packet, Skb},
    stats::count,
    trace,
};

const AF_INET: u32 = 2;

/// What a program body decided for a packet (a drop is its `Err(Counter)`).
pub enum Verdict {
    /// Up the kernel's stack as it now is (XDP_PASS, TC_ACT_OK).
    Pass,
    /// Out of this device as it is (an ARP reply).
    Send(u32),
    /// Out of this device to these Ethernet addresses.
    Forward { ifindex: u32, eth: EthAddrs },
    /// Out of this device, the kernel resolving the next hop's MAC (TC only).
    ForwardNeigh { ifindex: u32, next_hop: u32 },
}

/// The gateway itself has a TCP socket (listening, connected or in TIME_WAIT) for this
/// packet's tuple in the device's network namespace.
#[inline(always)]
pub fn local_tcp_socket<P: Hook>(ctx: &P, key: &FlowKey) -> bool {
    local_socket(ctx, key, true)
}

/// The gateway itself has a UDP socket bound to this packet's destination.
#[inline(always)]
pub fn local_udp_socket<P: Hook>(ctx: &P, key: &FlowKey) -> bool {
    local_socket(ctx, key, false)
}

#[inline(always)]
fn local_socket<P: Hook>(ctx: &P, key: &FlowKey, tcp: bool) -> bool {
    let mut tuple = bpf_sock_tuple {
        __bindgen_anon_1: bpf_sock_tuple__bindgen_ty_1 {
            ipv4: bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1 {
                saddr: key.src_addr,
                daddr: key.dst_addr,
                sport: key.src_port,
                dport: key.dst_port,
            },
        },
    };
    let size = core::mem::size_of::<bpf_sock_tuple__bindgen_ty_1__bindgen_ty_1>() as u32;
    let netns = BPF_F_CURRENT_NETNS as u64;
    // SAFETY: a valid context and tuple; a socket found is released at once.
    let sk = unsafe {
        if tcp {
            bpf_skc_lookup_tcp(ctx.ctx_ptr(), &mut tuple, size, netns, 0).cast()
        } else {
            bpf_sk_lookup_udp(ctx.ctx_ptr(), &mut tuple, size, netns, 0)
        }
    };
    if sk.is_null() {
        return false;
    }
    // SAFETY: the reference the lookup took.
    unsafe { bpf_sk_release(sk.cast()) };
    true
}

/// What a hook can do beyond the common `Packet` access.
pub trait Hook: Packet {
    /// `bpf_redirect_neigh` exists here (TC).
    const NEIGH: bool;
    /// What a translated packet redirected to the LAN counts as.
    const TO_LAN_REDIRECTED: Outcome;
    /// The program's context, for helpers that take it.
    fn ctx_ptr(&self) -> *mut c_void;
    /// The device the packet arrived on (ingress) or leaves by (TC egress).
    fn ifindex(&self) -> u32;
    /// The packet size a route's MTU check must pass: for an aggregated (GSO) packet, the size
    /// of the segments it will leave as.
    fn mtu_len(&self, tot_len: u16, headers: u32) -> u16;
    /// The frame carried a VLAN tag the device took off into metadata (TC); XDP sees the tag in
    /// the frame, which then is no IPv4.
    fn vlan_tagged(&self) -> bool;
}

impl Hook for XdpContext {
    const NEIGH: bool = false;
    const TO_LAN_REDIRECTED: Outcome = Outcome::ToLanXdpRedirected;

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut c_void {
        self.as_ptr()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ingress_ifindex() as u32
    }

    #[inline(always)]
    fn mtu_len(&self, tot_len: u16, _headers: u32) -> u16 {
        tot_len
    }

    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        false
    }
}

impl<const IP: usize> Hook for Skb<IP> {
    const NEIGH: bool = true;
    const TO_LAN_REDIRECTED: Outcome = Outcome::ToLanRedirected;

    #[inline(always)]
    fn ctx_ptr(&self) -> *mut c_void {
        self.0.as_ptr()
    }

    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.skb().ifindex
    }

    #[inline(always)]
    fn mtu_len(&self, tot_len: u16, headers: u32) -> u16 {
        let gso_size = self.skb().gso_size;
        if gso_size == 0 {
            return tot_len;
        }
        (gso_size + headers).min(u32::from(tot_len)) as u16
    }

    #[inline(always)]
    fn vlan_tagged(&self) -> bool {
        self.skb().vlan_present != 0
    }
}

/// The XDP action for a body's result.
#[inline(always)]
pub fn xdp_action(ctx: &mut XdpContext, verdict: Result<Verdict, Counter>) -> u32 {
    let ifindex = match verdict {
        Ok(Verdict::Pass) => return XDP_PASS,
        Ok(Verdict::Send(ifindex)) => ifindex,
        Ok(Verdict::Forward { ifindex, eth }) => {
            // Counted by the body (`Outcome::ToLanXdpRedirected`, which `XdpRedirect` is part of).
            if let Err(reason) = set_macs(ctx, &eth) {
                count(reason);
                return XDP_DROP;
            }
            ifindex
        }
        // Bodies never choose it under XDP (`Hook::NEIGH`).
        Ok(Verdict::ForwardNeigh { .. }) => return XDP_PASS,
        Err(reason) => {
            count(reason);
            trace::dropped(ctx, reason);
            return XDP_DROP;
        }
    };
    // SAFETY: plain helper call; returns XDP_REDIRECT or XDP_ABORTED.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

/// Run a TC program's body on `ctx` (headers pulled into the linear area first) and return its
/// action. `body` is a plain function, called directly once this is inlined, so it is inlined
/// into the program too (behind `FnOnce`, LLVM may keep it as a BPF-to-BPF call, and a tail call
/// is only allowed in a function that returns an int).
#[inline(always)]
pub fn tc_run<const IP: usize>(
    ctx: TcContext,
    body: fn(&mut Skb<IP>) -> Result<Verdict, Counter>,
) -> i32 {
    let mut skb = Skb::<IP>(ctx);
    skb.pull_headers();
    let verdict = body(&mut skb);
    tc_action(&mut skb, verdict)
}

/// The TC action for a body's result. On an L3 device (`IP == 0`) a forwarded packet gets an
/// Ethernet header first: every device masq forwards to from one is the LAN's.
#[inline(always)]
pub fn tc_action<const IP: usize>(skb: &mut Skb<IP>, verdict: Result<Verdict, Counter>) -> i32 {
    match tc_send(skb, verdict) {
        Ok(action) => action,
        Err(reason) => {
            count(reason);
            trace::dropped(&skb.0, reason);
            TC_ACT_SHOT
        }
    }
}

#[inline(always)]
fn tc_send<const IP: usize>(
    skb: &mut Skb<IP>,
    verdict: Result<Verdict, Counter>,
) -> Result<i32, Counter> {
    match verdict? {
        Verdict::Pass => Ok(TC_ACT_OK),
        // SAFETY: plain helper call.
        Verdict::Send(ifindex) => Ok(unsafe { bpf_redirect(ifindex, 0) } as i32),
        Verdict::Forward { ifindex, eth } => {
            push_ethernet(skb)?;
            set_macs(skb, &eth)?;
            // SAFETY: plain helper call.
            Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
        }
        Verdict::ForwardNeigh { ifindex, next_hop } => {
            push_ethernet(skb)?;
            let mut nh = bpf_redir_neigh {
                nh_family: AF_INET,
                __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv6_nh: [next_hop, 0, 0, 0] },
            };
            let size = core::mem::size_of::<bpf_redir_neigh>() as i32;
            // SAFETY: nh is initialised and its size is passed.
            Ok(unsafe { bpf_redirect_neigh(ifindex, &mut nh, size, 0) } as i32)
        }
    }
}

/// On an L3 device, room for an Ethernet header in front of the IP header (IPv4 ethertype,
/// addresses set by the caller); nothing behind Ethernet.
#[inline(always)]
fn push_ethernet<const IP: usize>(skb: &mut Skb<IP>) -> Result<(), Counter> {
    if IP != 0 {
        return Ok(());
    }
    // SAFETY: plain helper call on the program's context.
    if unsafe { bpf_skb_change_head(skb.0.skb.skb, ETH_HLEN as u32, 0) } != 0 {
        return Err(Counter::DropMalformed);
    }
    skb.frame_write(ETH_TYPE, ETH_P_IP.to_be())
}
