//! The real eBPF programs run on crafted frames with BPF_PROG_TEST_RUN: each test builds the
//! seed topology's interfaces, routes and neighbours in a namespace, loads the dataplane with the
//! example config (not attached), and checks the returned action, the output bytes (checksums
//! recomputed from scratch), the counters and the connection table. Needs root; run serially:
//! `cargo test -p masq-user --test dataplane_progs -- --test-threads=1`.

use crate::common;

use std::net::Ipv4Addr;

use aya::{
    maps::{HashMap, PerCpuArray},
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use common::packet::*;
use masq_common::{
    CONN_F_INBOUND, CONN_F_REPLY, ConnEntry, Counter, FlowKey, Tuple4, map_names, program_names,
};
use masq_user::{
    config::Config,
    conntrack,
    dataplane::{Dataplane, remove_pins, wire_addr, wire_port},
    host::HostInterfaces,
    netns::{NetNs, require_root},
    progkit::build_seed_gateway,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(64, 70, 12, 210);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const DSL_PUB: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 10);
const ISPB_PUB: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 17);
const DSL_ADDR: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 12);
const ISPB_ADDR: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 179);
const DSL_GW: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 14);
const ISPB_GW: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 254);
const ISOLDE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 17);
const TRISTAN: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 32);
/// A third LAN host, for collisions with isolde (both leave by ISP B).
const MARKE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 50);

const ETH0_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x00];
const ETH1_MAC: Mac = [0x02, 0, 0, 0, 0xe1, 0x00];
const ETH4_MAC: Mac = [0x02, 0, 0, 0, 0xe4, 0x00];
const DSL_GW_MAC: Mac = [0x02, 0, 0, 0, 0, 0x0e];
const ISPB_GW_MAC: Mac = [0x02, 0, 0, 0, 0, 0xfe];
const ISOLDE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
const TRISTAN_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];
const MARKE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x50];

const DSL: u8 = 0;
const ISPB: u8 = 1;
const DSL_MARK: u32 = 0x0100_0000;
const ISPB_MARK: u32 = 0x0200_0000;
const MARK_MASK: u32 = 0x0f00_0000;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;

const EXAMPLE: &str = include_str!("../../../examples/masq-gw.toml");

// ---- Setup ----

/// The seed gateway (`masq_user::progkit`); `neighbours`: next hops resolved (permanent
/// entries). SNAT stays out of the gateway's own ephemeral ports: the tests' LAN ports lie
/// outside the range set here.
fn build_topology(ns: &NetNs, neighbours: bool) {
    let devices = [
        ("eth0", ETH0_MAC, [0x02, 0, 0, 0, 0xe0, 0x01]),
        ("eth1", ETH1_MAC, [0x02, 0, 0, 0, 0xe1, 0x01]),
        ("eth4", ETH4_MAC, [0x02, 0, 0, 0, 0xe4, 0x01]),
    ];
    let next_hops = [
        (DSL_GW, DSL_GW_MAC, "eth4"),
        (ISPB_GW, ISPB_GW_MAC, "eth1"),
        (ISOLDE, ISOLDE_MAC, "eth0"),
        (TRISTAN, TRISTAN_MAC, "eth0"),
        (MARKE, MARKE_MAC, "eth0"),
    ];
    let neighbours: &[_] = if neighbours { &next_hops } else { &[] };
    build_seed_gateway(ns, devices, neighbours, &std::env::temp_dir()).expect("the seed gateway");
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=61000 61999"]).unwrap();
}

/// The loaded (not attached) dataplane inside the test's namespace.
struct Gw {
    dp: Dataplane,
    host: HostInterfaces,
}

/// Removes the test's map pins (bpffs is shared by all namespaces), also after a panic.
struct Unpin(std::path::PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        if let Err(e) = remove_pins(&self.0) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// How a test's gateway differs from the seed one.
#[derive(Clone, Copy)]
struct Opts {
    /// Appended to the example config.
    toml: &'static str,
    /// Permanent neighbour entries for the next hops.
    neighbours: bool,
    /// Run in the namespace after the topology is built.
    cmds: &'static [&'static str],
}

const SEED: Opts = Opts { toml: "", neighbours: true, cmds: &[] };

/// Run `test` against a fresh gateway set up as `opts` says.
fn gateway(opts: Opts, test: impl FnOnce(&mut Gw) + Send + 'static) {
    require_root();
    let ns = NetNs::create("masq-progs").expect("creating the namespace");
    build_topology(&ns, opts.neighbours);
    for cmd in opts.cmds {
        ns.run_ok(cmd).unwrap_or_else(|e| panic!("{cmd}: {e:#}"));
    }
    let toml = format!("{EXAMPLE}\n{}", opts.toml);
    let pin_dir = std::path::PathBuf::from("/sys/fs/bpf").join(ns.name());
    ns.enter(move || {
        let host = HostInterfaces::read().expect("reading interfaces");
        let cfg = Config::from_toml(&toml).expect("config");
        cfg.check_host(&host).expect("config fits the namespace");
        let _unpin = Unpin(pin_dir.clone());
        let mut dp = Dataplane::load(&cfg, &pin_dir).expect("loading the eBPF object");
        let states = masq_user::follow::resolve_all(&cfg.uplinks, &host, &[]);
        dp.fill_maps(&cfg, &host, &states).expect("filling the maps");
        let ebpf = dp.ebpf_mut();
        let xdp: &mut Xdp =
            ebpf.program_mut(program_names::UPLINK_INGRESS_XDP).unwrap().try_into().unwrap();
        xdp.load().expect("verifier: masq_uplink_in_xdp");
        for name in [
            program_names::UPLINK_INGRESS,
            program_names::UPLINK_INGRESS_L3,
            program_names::LAN_INGRESS,
            program_names::UPLINK_EGRESS,
            program_names::UPLINK_EGRESS_L3,
        ] {
            let tc: &mut SchedClassifier = ebpf.program_mut(name).unwrap().try_into().unwrap();
            tc.load().unwrap_or_else(|e| panic!("verifier: {name}: {e:#}"));
        }
        let mut gw = Gw { dp, host };
        assert_eq!(gw.mac("eth0"), ETH0_MAC);
        test(&mut gw);
    });
}

/// The example config as it is.
fn example(test: impl FnOnce(&mut Gw) + Send + 'static) {
    gateway(SEED, test);
}

/// The example config with `toml` appended.
fn with_config(toml: &'static str, test: impl FnOnce(&mut Gw) + Send + 'static) {
    gateway(Opts { toml, ..SEED }, test);
}

/// What a program run returned.
struct Run {
    ret: u32,
    out: Vec<u8>,
    /// `skb->mark` after the run (TC only).
    mark: u32,
}

/// Offsets in `struct __sk_buff` (192 bytes) of the fields test_run takes and gives back.
const SKB_LEN: usize = 192;
const SKB_MARK: usize = 8;
const SKB_INGRESS_IFINDEX: usize = 36;
const SKB_IFINDEX: usize = 40;

impl Gw {
    fn ifindex(&self, dev: &str) -> u32 {
        self.host.get(dev).unwrap().index
    }

    fn mac(&self, dev: &str) -> Mac {
        self.host.get(dev).unwrap().mac.unwrap()
    }

    /// `masq_uplink_in_xdp` on a frame received by `dev`.
    fn xdp(&self, dev: &str, frame: &[u8]) -> Run {
        let prog: &Xdp =
            self.dp.ebpf().program(program_names::UPLINK_INGRESS_XDP).unwrap().try_into().unwrap();
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
        let md: [u32; 6] = [0, frame.len() as u32, 0, self.ifindex(dev), 0, 0];
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(bytemuck::cast_slice(&md)),
                ..TestRunOptions::new()
            })
            .expect("XDP test run");
        out.truncate(r.data_size_out as usize);
        Run { ret: r.return_value, out, mark: 0 }
    }

    fn tc(&self, prog: &str, ingress_ifindex: u32, ifindex: u32, frame: &[u8]) -> Run {
        let prog: &SchedClassifier = self.dp.ebpf().program(prog).unwrap().try_into().unwrap();
        let mut skb = [0u8; SKB_LEN];
        skb[SKB_INGRESS_IFINDEX..][..4].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        skb[SKB_IFINDEX..][..4].copy_from_slice(&ifindex.to_ne_bytes());
        let mut skb_out = [0u8; SKB_LEN];
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                ctx_in: Some(&skb),
                ctx_out: Some(&mut skb_out),
                ..TestRunOptions::new()
            })
            .expect("TC test run");
        out.truncate(r.data_size_out as usize);
        let mark = u32::from_ne_bytes(skb_out[SKB_MARK..][..4].try_into().unwrap());
        Run { ret: r.return_value, out, mark }
    }

    /// `masq_uplink_in` (TC) on a frame received by `dev`.
    fn uplink_in(&self, dev: &str, frame: &[u8]) -> Run {
        let dev = self.ifindex(dev);
        self.tc(program_names::UPLINK_INGRESS, dev, dev, frame)
    }

    /// `masq_lan_in` on a frame received by eth0.
    fn lan_in(&self, frame: &[u8]) -> Run {
        let eth0 = self.ifindex("eth0");
        self.tc(program_names::LAN_INGRESS, eth0, eth0, frame)
    }

    /// `masq_uplink_out` on a frame the kernel forwarded from eth0 out of `dev`.
    fn uplink_out(&self, dev: &str, frame: &[u8]) -> Run {
        let (eth0, out) = (self.ifindex("eth0"), self.ifindex(dev));
        self.tc(program_names::UPLINK_EGRESS, eth0, out, frame)
    }

    fn counter(&self, c: Counter) -> u64 {
        let map: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.dp.ebpf().map(map_names::COUNTERS).unwrap()).unwrap();
        map.get(&(c as u32), 0).unwrap().iter().sum()
    }

    /// Every non-zero counter, by name.
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Counter::ALL.iter().map(|&c| (c.name(), self.counter(c))).filter(|&(_, n)| n != 0).collect()
    }

    #[track_caller]
    fn assert_counters(&self, expected: &[(Counter, u64)]) {
        for &(c, n) in expected {
            assert_eq!(self.counter(c), n, "counter {}; all: {:?}", c.name(), self.counters());
        }
    }

    #[track_caller]
    fn assert_no_drops(&self) {
        let drops: Vec<_> = Counter::ALL
            .iter()
            .filter(|c| c.is_drop() && self.counter(**c) != 0)
            .map(|c| c.name())
            .collect();
        assert!(drops.is_empty(), "drops counted: {:?}", self.counters());
    }

    fn conns(&self) -> Vec<(FlowKey, ConnEntry)> {
        let map: HashMap<_, FlowKey, ConnEntry> =
            HashMap::try_from(self.dp.ebpf().map(map_names::CONNS).unwrap()).unwrap();
        map.iter().map(Result::unwrap).collect()
    }

    /// The connection table, one readable line per entry.
    fn table(&self) -> String {
        let addr = |a: u32| Ipv4Addr::from(a.to_ne_bytes());
        let port = u16::from_be;
        self.conns()
            .iter()
            .map(|(k, e)| {
                let x = &e.xlate;
                format!(
                    "proto {} {}:{} -> {}:{} => {}:{} -> {}:{} uplink {} flags {:#x}",
                    k.proto,
                    addr(k.src_addr),
                    port(k.src_port),
                    addr(k.dst_addr),
                    port(k.dst_port),
                    addr(x.src_addr),
                    port(x.src_port),
                    addr(x.dst_addr),
                    port(x.dst_port),
                    e.uplink,
                    e.flags
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn conn(&self, key: &FlowKey) -> Option<ConnEntry> {
        self.conns().into_iter().find(|(k, _)| k == key).map(|(_, e)| e)
    }

    /// Both directions' entries of a connection.
    #[track_caller]
    fn assert_pair(&self, orig: FlowKey, xlate: FlowKey, uplink: u8, inbound: bool) {
        let flags = if inbound { CONN_F_INBOUND } else { 0 };
        let fwd = self
            .conn(&orig)
            .unwrap_or_else(|| panic!("no entry for {orig:?}; table:\n{}", self.table()));
        assert_eq!(fwd.xlate, Tuple4::of(&xlate), "translation of {orig:?}");
        assert_eq!((fwd.uplink, fwd.flags), (uplink, flags), "entry {orig:?}");
        let reply_key = xlate.reversed();
        let rev = self
            .conn(&reply_key)
            .unwrap_or_else(|| panic!("no reply entry {reply_key:?}; table:\n{}", self.table()));
        assert_eq!(rev.xlate, Tuple4::of(&orig.reversed()), "translation of {reply_key:?}");
        assert_eq!((rev.uplink, rev.flags), (uplink, flags | CONN_F_REPLY), "entry {reply_key:?}");
        let conns = {
            let map: HashMap<_, FlowKey, ConnEntry> =
                HashMap::try_from(self.dp.ebpf().map(map_names::CONNS).unwrap()).unwrap();
            conntrack::dump(&map).unwrap()
        };
        assert!(
            conns.iter().any(|c| c.orig.is_some_and(|(k, _)| k == orig) && c.reply.is_some()),
            "userspace pairs {orig:?} with its reply"
        );
    }

    fn conns_map(&mut self) -> HashMap<&mut aya::maps::MapData, FlowKey, ConnEntry> {
        HashMap::try_from(self.dp.ebpf_mut().map_mut(map_names::CONNS).unwrap()).unwrap()
    }
}

/// A connection key as the dataplane stores it.
fn key(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> FlowKey {
    FlowKey::new(wire_addr(src.0), wire_addr(dst.0), wire_port(src.1), wire_port(dst.1), proto)
}

fn tcp_key(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16)) -> FlowKey {
    key(IPPROTO_TCP, src, dst)
}

/// Frames as they arrive from each neighbour, and as masq should send them on.
fn from_dsl(p: &[u8]) -> Vec<u8> {
    eth_ip(ETH4_MAC, DSL_GW_MAC, p)
}
fn from_ispb(p: &[u8]) -> Vec<u8> {
    eth_ip(ETH1_MAC, ISPB_GW_MAC, p)
}
fn from_lan(host_mac: Mac, p: &[u8]) -> Vec<u8> {
    eth_ip(ETH0_MAC, host_mac, p)
}
fn to_lan(host_mac: Mac, p: &[u8]) -> Vec<u8> {
    eth_ip(host_mac, ETH0_MAC, p)
}
fn to_dsl(p: &[u8]) -> Vec<u8> {
    eth_ip(DSL_GW_MAC, ETH4_MAC, p)
}
fn to_ispb(p: &[u8]) -> Vec<u8> {
    eth_ip(ISPB_GW_MAC, ETH1_MAC, p)
}

/// Asserts action and bytes, and recomputes every checksum of the output.
#[track_caller]
fn assert_run(run: &Run, ret: u32, expected: &[u8]) {
    assert_eq!(run.ret, ret, "action; output:\n{}", hex(&run.out));
    assert_frame_eq(&run.out, expected);
    if u16::from_be_bytes([expected[12], expected[13]]) == ETH_P_IP {
        assert_checksums(&run.out);
    }
}

/// The client's SYN to isolde's DSL address, as XDP on eth4 sends it to isolde.
fn client_syn_via_dsl(gw: &Gw) -> Run {
    let syn = Ip::new(CLIENT, DSL_PUB).tcp(40000, 80, TCP_SYN);
    gw.xdp("eth4", &from_dsl(&syn))
}

// ---- Published services (inbound) ----

#[test]
fn inbound_syn_to_dsl_address_is_dnated_and_tracked_on_dsl() {
    example(|gw| {
        let run = client_syn_via_dsl(gw);
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40000, 80, TCP_SYN);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));

        gw.assert_pair(
            tcp_key((CLIENT, 40000), (DSL_PUB, 80)),
            tcp_key((CLIENT, 40000), (ISOLDE, 80)),
            DSL,
            true,
        );
        let reply = gw.conn(&tcp_key((ISOLDE, 80), (CLIENT, 40000))).unwrap();
        assert_eq!(reply.xlate.src_addr, wire_addr(DSL_PUB));
        assert_eq!(gw.conns().len(), 2);
        gw.assert_counters(&[
            (Counter::InboundNew, 1),
            (Counter::FastPathRedirect, 1),
            (Counter::XdpRedirect, 1),
            (Counter::ToLanTranslated, 1),
        ]);
        gw.assert_no_drops();
    });
}

#[test]
fn tc_uplink_ingress_dnats_like_xdp_and_counts_no_xdp_redirect() {
    example(|gw| {
        let syn = Ip::new(CLIENT, DSL_PUB).tcp(40000, 80, TCP_SYN);
        let run = gw.uplink_in("eth4", &from_dsl(&syn));
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40000, 80, TCP_SYN);
        assert_run(&run, TC_ACT_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_pair(
            tcp_key((CLIENT, 40000), (DSL_PUB, 80)),
            tcp_key((CLIENT, 40000), (ISOLDE, 80)),
            DSL,
            true,
        );
        gw.assert_counters(&[
            (Counter::InboundNew, 1),
            (Counter::FastPathRedirect, 1),
            (Counter::XdpRedirect, 0),
        ]);
        gw.assert_no_drops();
    });
}

/// The L3 variant (PPP, raw-ip, WireGuard, tun: the IPv4 header at offset 0). test_run always
/// hands a TC program the bytes given, so the raw packet is what the program sees.
#[test]
fn l3_uplink_ingress_dnats_a_packet_without_ethernet_and_adds_the_lan_header() {
    example(|gw| {
        let syn = Ip::new(CLIENT, DSL_PUB).tcp(40000, 80, TCP_SYN);
        let eth4 = gw.ifindex("eth4");
        let run = gw.tc(program_names::UPLINK_INGRESS_L3, eth4, eth4, &syn);
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40000, 80, TCP_SYN);
        assert_run(&run, TC_ACT_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_pair(
            tcp_key((CLIENT, 40000), (DSL_PUB, 80)),
            tcp_key((CLIENT, 40000), (ISOLDE, 80)),
            DSL,
            true,
        );
        gw.assert_counters(&[(Counter::InboundNew, 1), (Counter::FastPathRedirect, 1)]);
        gw.assert_no_drops();
    });
}

#[test]
fn l3_uplink_egress_translates_a_packet_without_ethernet() {
    example(|gw| {
        tristan_syn(gw, 50000);
        let ack = Ip::new(TRISTAN, CLIENT).ttl(63).tcp(50000, 443, TCP_ACK);
        let (eth0, eth4) = (gw.ifindex("eth0"), gw.ifindex("eth4"));
        let run = gw.tc(program_names::UPLINK_EGRESS_L3, eth0, eth4, &ack);
        let want = Ip::new(DSL_ADDR, CLIENT).ttl(63).tcp(50000, 443, TCP_ACK);
        assert_eq!(run.ret, TC_ACT_OK, "output:\n{}", hex(&run.out));
        assert_eq!(hex(&run.out), hex(&want), "no Ethernet header added");
        assert_checksums(&eth_ip([0; 6], [0; 6], &run.out));
        gw.assert_counters(&[(Counter::EgressTranslated, 1)]);
        gw.assert_no_drops();
    });
}

#[test]
fn reply_to_dsl_connection_leaves_by_dsl_not_by_main_default() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));

        let want = Ip::new(DSL_PUB, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        assert_eq!(run.mark & MARK_MASK, DSL_MARK, "mark {:#x}", run.mark);
        gw.assert_counters(&[
            (Counter::ToUplinkTranslated, 1),
            (Counter::FastPathRedirect, 2),
            (Counter::OutboundNew, 0),
        ]);
        let reply = gw.conn(&tcp_key((ISOLDE, 80), (CLIENT, 40000))).unwrap();
        assert_eq!(reply.packets, 1);
        gw.assert_no_drops();
    });
}

#[test]
fn inbound_connection_to_isp_b_address_is_served_and_answered_via_isp_b() {
    example(|gw| {
        let syn = Ip::new(CLIENT, ISPB_PUB).tcp(40001, 443, TCP_SYN);
        let run = gw.xdp("eth1", &from_ispb(&syn));
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40001, 443, TCP_SYN);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_pair(
            tcp_key((CLIENT, 40001), (ISPB_PUB, 443)),
            tcp_key((CLIENT, 40001), (ISOLDE, 443)),
            ISPB,
            true,
        );

        let synack = Ip::new(ISOLDE, CLIENT).tcp(443, 40001, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        let want = Ip::new(ISPB_PUB, CLIENT).ttl(63).tcp(443, 40001, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
        assert_eq!(run.mark & MARK_MASK, ISPB_MARK, "mark {:#x}", run.mark);
        gw.assert_no_drops();
    });
}

#[test]
fn published_address_arriving_on_the_other_uplink_is_dropped() {
    example(|gw| {
        let syn = Ip::new(CLIENT, DSL_PUB).tcp(40000, 80, TCP_SYN);
        let run = gw.xdp("eth1", &from_ispb(&syn));
        assert_eq!(run.ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropWrongUplink, 1), (Counter::InboundNew, 0)]);
        assert!(gw.conns().is_empty());
    });
}

#[test]
fn inbound_udp_and_reply_are_translated_and_a_zero_checksum_stays_zero() {
    example(|gw| {
        let query = Ip::new(CLIENT, DSL_PUB).udp(5353, 53, b"query");
        let run = gw.xdp("eth4", &from_dsl(&query));
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).udp(5353, 53, b"query");
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        let udp = |s, d| key(IPPROTO_UDP, s, d);
        gw.assert_pair(
            udp((CLIENT, 5353), (DSL_PUB, 53)),
            udp((CLIENT, 5353), (ISOLDE, 53)),
            DSL,
            true,
        );

        let answer = Ip::new(ISOLDE, CLIENT).udp(53, 5353, b"answer");
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &answer));
        let want = Ip::new(DSL_PUB, CLIENT).ttl(63).udp(53, 5353, b"answer");
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        assert_eq!(run.mark & MARK_MASK, DSL_MARK);

        // Checksum 0 ("none") in both directions: XDP and TC keep it 0.
        let query = Ip::new(CLIENT, DSL_PUB).udp_with(6000, 69, b"q0", false);
        let run = gw.xdp("eth4", &from_dsl(&query));
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).udp_with(6000, 69, b"q0", false);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        assert_eq!(IpView::of_frame(&run.out).l4_csum(), 0);

        let answer = Ip::new(ISOLDE, CLIENT).udp_with(69, 6000, b"a0", false);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &answer));
        let want = Ip::new(DSL_PUB, CLIENT).ttl(63).udp_with(69, 6000, b"a0", false);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        assert_eq!(IpView::of_frame(&run.out).l4_csum(), 0);
        gw.assert_counters(&[(Counter::InboundNew, 2), (Counter::ToUplinkTranslated, 2)]);
        gw.assert_no_drops();
    });
}

#[test]
fn inbound_icmp_echo_to_whole_published_address_and_reply_are_translated() {
    example(|gw| {
        let ping = Ip::new(CLIENT, DSL_PUB).echo(true, 0x1234, 1);
        let run = gw.xdp("eth4", &from_dsl(&ping));
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).echo(true, 0x1234, 1);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_pair(
            key(IPPROTO_ICMP, (CLIENT, 0x1234), (DSL_PUB, 0)),
            key(IPPROTO_ICMP, (CLIENT, 0x1234), (ISOLDE, 0)),
            DSL,
            true,
        );

        let pong = Ip::new(ISOLDE, CLIENT).echo(false, 0x1234, 1);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &pong));
        let want = Ip::new(DSL_PUB, CLIENT).ttl(63).echo(false, 0x1234, 1);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        assert_eq!(run.mark & MARK_MASK, DSL_MARK);
        gw.assert_no_drops();
    });
}

#[test]
fn same_client_port_to_both_public_addresses_gets_a_second_port_toward_the_server() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let syn = Ip::new(CLIENT, ISPB_PUB).tcp(40000, 80, TCP_SYN);
        let run = gw.xdp("eth1", &from_ispb(&syn));
        assert_eq!(run.ret, XDP_REDIRECT);
        let seen = IpView::of_frame(&run.out);
        let port = seen.sport();
        assert_ne!(port, 40000, "isolde already has client:40000 via DSL");
        let want = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(port, 80, TCP_SYN);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_pair(
            tcp_key((CLIENT, 40000), (ISPB_PUB, 80)),
            tcp_key((CLIENT, port), (ISOLDE, 80)),
            ISPB,
            true,
        );

        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, port, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        let want = Ip::new(ISPB_PUB, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
        assert_eq!(gw.conns().len(), 4);
        gw.assert_no_drops();
    });
}

/// A port forward on ISP B to tristan, whose own outbound policy is DSL.
const PORT_FORWARD: &str = r#"
[[publish]]
uplink = "isp-b"
address = "205.254.211.20"
proto = "tcp"
port = 2222
to = "192.168.100.32"
to_port = 22
"#;
const FWD_PUB: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 20);

#[test]
fn port_forward_translates_the_port_and_its_reply_follows_the_connection_not_the_policy() {
    with_config(PORT_FORWARD, |gw| {
        let syn = Ip::new(CLIENT, FWD_PUB).tcp(41000, 2222, TCP_SYN);
        let run = gw.xdp("eth1", &from_ispb(&syn));
        let want = Ip::new(CLIENT, TRISTAN).ttl(63).tcp(41000, 22, TCP_SYN);
        assert_run(&run, XDP_REDIRECT, &to_lan(TRISTAN_MAC, &want));
        gw.assert_pair(
            tcp_key((CLIENT, 41000), (FWD_PUB, 2222)),
            tcp_key((CLIENT, 41000), (TRISTAN, 22)),
            ISPB,
            true,
        );

        let synack = Ip::new(TRISTAN, CLIENT).tcp(22, 41000, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &synack));
        let want = Ip::new(FWD_PUB, CLIENT).ttl(63).tcp(2222, 41000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
        assert_eq!(run.mark & MARK_MASK, ISPB_MARK);

        // Other ports and protocols of that address are not published.
        for p in [
            Ip::new(CLIENT, FWD_PUB).tcp(41000, 22, TCP_SYN),
            Ip::new(CLIENT, FWD_PUB).udp(41000, 2222, b"x"),
        ] {
            let frame = from_ispb(&p);
            assert_run(&gw.xdp("eth1", &frame), XDP_PASS, &frame);
        }
        gw.assert_counters(&[(Counter::InboundNew, 1), (Counter::PassedUntouched, 2)]);
        gw.assert_no_drops();
    });
}

// ---- ICMP errors ----

#[test]
fn port_unreachable_from_server_about_dnated_udp_leaves_by_dsl_translated() {
    example(|gw| {
        let query = Ip::new(CLIENT, DSL_PUB).udp(5353, 53, b"query");
        let delivered = gw.xdp("eth4", &from_dsl(&query)).out;
        let quoted = &delivered[ETH_HLEN..];

        let err = Ip::new(ISOLDE, CLIENT).icmp_error(ICMP_DEST_UNREACH, 3, [0; 4], quoted);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &err));

        let quoted_want = Ip::new(CLIENT, DSL_PUB).ttl(63).udp(5353, 53, b"query");
        let want =
            Ip::new(DSL_PUB, CLIENT).ttl(63).icmp_error(ICMP_DEST_UNREACH, 3, [0; 4], &quoted_want);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        let inner = IpView::of_frame(&run.out).inner();
        assert_eq!((inner.src(), inner.dst()), (CLIENT, DSL_PUB));
        assert_eq!((inner.sport(), inner.dport()), (5353, 53));
        assert_eq!(run.mark & MARK_MASK, DSL_MARK);

        // A quoted UDP checksum of 0 stays 0.
        let query = Ip::new(CLIENT, DSL_PUB).udp_with(5354, 53, b"q0", false);
        let delivered = gw.xdp("eth4", &from_dsl(&query)).out;
        let err = Ip::new(ISOLDE, CLIENT).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &delivered[ETH_HLEN..],
        );
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &err));
        let quoted_want = Ip::new(CLIENT, DSL_PUB).ttl(63).udp_with(5354, 53, b"q0", false);
        let want =
            Ip::new(DSL_PUB, CLIENT).ttl(63).icmp_error(ICMP_DEST_UNREACH, 3, [0; 4], &quoted_want);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        gw.assert_counters(&[(Counter::IcmpErrorTranslated, 2)]);
        gw.assert_no_drops();
    });
}

#[test]
fn port_unreachable_from_lan_host_about_a_masqueraded_reply_leaves_translated() {
    example(|gw| {
        let query = Ip::new(TRISTAN, CLIENT).udp(40053, 53, b"query");
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &query)).ret, TC_ACT_REDIRECT);
        let answer = Ip::new(CLIENT, DSL_ADDR).udp(53, 40053, b"late answer");
        let delivered = gw.xdp("eth4", &from_dsl(&answer)).out;
        assert_eq!(IpView::of_frame(&delivered).dst(), TRISTAN);

        let err = Ip::new(TRISTAN, CLIENT).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &delivered[ETH_HLEN..],
        );
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &err));
        let quoted_want = Ip::new(CLIENT, DSL_ADDR).ttl(63).udp(53, 40053, b"late answer");
        let want = Ip::new(DSL_ADDR, CLIENT).ttl(63).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &quoted_want,
        );
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        assert_eq!(run.mark & MARK_MASK, DSL_MARK);
        gw.assert_counters(&[(Counter::IcmpErrorTranslated, 1)]);
        gw.assert_no_drops();
    });
}

#[test]
fn frag_needed_from_internet_router_about_a_reply_reaches_the_server_translated() {
    example(|gw| {
        client_syn_via_dsl(gw);
        // The reply as it left by DSL, quoted whole (so its TCP checksum can be checked too).
        let reply = Ip::new(DSL_PUB, CLIENT).ttl(63).tcp_data(80, 40000, TCP_ACK, &[0xab; 24]);
        let mtu = [0, 0, 0x05, 0x78]; // next-hop MTU 1400
        let err = Ip::new(ROUTER, DSL_PUB).icmp_error(ICMP_DEST_UNREACH, 4, mtu, &reply);
        let run = gw.xdp("eth4", &from_dsl(&err));

        let reply_want = Ip::new(ISOLDE, CLIENT).ttl(63).tcp_data(80, 40000, TCP_ACK, &[0xab; 24]);
        let want =
            Ip::new(ROUTER, ISOLDE).ttl(63).icmp_error(ICMP_DEST_UNREACH, 4, mtu, &reply_want);
        assert_run(&run, XDP_REDIRECT, &to_lan(ISOLDE_MAC, &want));
        gw.assert_counters(&[(Counter::IcmpErrorTranslated, 1)]);
        gw.assert_no_drops();
    });
}

/// Tristan's SYN to the client, SNATed by policy to DSL; returns what left.
fn tristan_syn(gw: &Gw, sport: u16) -> Run {
    let syn = Ip::new(TRISTAN, CLIENT).tcp(sport, 443, TCP_SYN);
    gw.lan_in(&from_lan(TRISTAN_MAC, &syn))
}

#[test]
fn time_exceeded_about_masqueraded_connection_reaches_the_lan_host_translated() {
    example(|gw| {
        assert_eq!(tristan_syn(gw, 50000).ret, TC_ACT_REDIRECT);
        // A router quotes the minimum (IP header + 8 bytes) of what left by DSL.
        let sent = Ip::new(DSL_ADDR, CLIENT).ttl(1).tcp(50000, 443, TCP_SYN);
        let err = Ip::new(ROUTER, DSL_ADDR).icmp_error(ICMP_TIME_EXCEEDED, 0, [0; 4], &sent[..28]);
        let run = gw.xdp("eth4", &from_dsl(&err));

        let sent_want = Ip::new(TRISTAN, CLIENT).ttl(1).tcp(50000, 443, TCP_SYN);
        let want = Ip::new(ROUTER, TRISTAN).ttl(63).icmp_error(
            ICMP_TIME_EXCEEDED,
            0,
            [0; 4],
            &sent_want[..28],
        );
        assert_run(&run, XDP_REDIRECT, &to_lan(TRISTAN_MAC, &want));
        let inner = IpView::of_frame(&run.out).inner();
        assert_eq!((inner.src(), inner.sport()), (TRISTAN, 50000));
        gw.assert_counters(&[(Counter::IcmpErrorTranslated, 1)]);
        gw.assert_no_drops();
    });
}

/// isolde's and marke's pings to the client with the same id: both leave by ISP B, the second
/// with another id. Returns marke's id as seen outside.
fn colliding_pings(gw: &Gw, id: u16) -> u16 {
    let run = gw.lan_in(&from_lan(ISOLDE_MAC, &Ip::new(ISOLDE, CLIENT).echo(true, id, 1)));
    let want = Ip::new(ISPB_ADDR, CLIENT).ttl(63).echo(true, id, 1);
    assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));

    let run = gw.lan_in(&from_lan(MARKE_MAC, &Ip::new(MARKE, CLIENT).echo(true, id, 1)));
    let new_id = IpView::of_frame(&run.out).icmp_id();
    assert_ne!(new_id, id, "the id is taken by isolde's ping");
    let want = Ip::new(ISPB_ADDR, CLIENT).ttl(63).echo(true, new_id, 1);
    assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
    let echo = |s, d| key(IPPROTO_ICMP, s, d);
    gw.assert_pair(
        echo((ISOLDE, id), (CLIENT, 0)),
        echo((ISPB_ADDR, id), (CLIENT, 0)),
        ISPB,
        false,
    );
    gw.assert_pair(
        echo((MARKE, id), (CLIENT, 0)),
        echo((ISPB_ADDR, new_id), (CLIENT, 0)),
        ISPB,
        false,
    );
    new_id
}

#[test]
fn host_unreachable_quoting_a_translated_echo_gets_the_original_id_back() {
    example(|gw| {
        let id = colliding_pings(gw, 0x4242);
        let sent = Ip::new(ISPB_ADDR, CLIENT).ttl(63).echo(true, id, 1);
        let err = Ip::new(ROUTER, ISPB_ADDR).icmp_error(ICMP_DEST_UNREACH, 1, [0; 4], &sent);
        let run = gw.xdp("eth1", &from_ispb(&err));

        let sent_want = Ip::new(MARKE, CLIENT).ttl(63).echo(true, 0x4242, 1);
        let want =
            Ip::new(ROUTER, MARKE).ttl(63).icmp_error(ICMP_DEST_UNREACH, 1, [0; 4], &sent_want);
        assert_run(&run, XDP_REDIRECT, &to_lan(MARKE_MAC, &want));
        assert_eq!(IpView::of_frame(&run.out).inner().icmp_id(), 0x4242);
        gw.assert_no_drops();
    });
}

/// Found by this suite: an ICMP error touches its connection's entry with the error's own
/// (ICMP) key, so the once-a-second twin check looks for the wrong twin and inserts a bogus one.
#[test]
fn icmp_error_a_second_later_leaves_no_stray_conn_entry() {
    example(|gw| {
        client_syn_via_dsl(gw);
        // As if the last twin check was more than a second ago.
        let fwd_key = tcp_key((CLIENT, 40000), (DSL_PUB, 80));
        let mut fwd = gw.conn(&fwd_key).unwrap();
        fwd.last_seen_tick = 0;
        gw.conns_map().insert(fwd_key, fwd, 0).unwrap();

        let reply = Ip::new(DSL_PUB, CLIENT).ttl(63).tcp(80, 40000, TCP_ACK);
        let err =
            Ip::new(ROUTER, DSL_PUB).icmp_error(ICMP_DEST_UNREACH, 4, [0, 0, 5, 0x78], &reply);
        assert_eq!(gw.xdp("eth4", &from_dsl(&err)).ret, XDP_REDIRECT);
        let conns = gw.conns();
        assert_eq!(conns.len(), 2, "entries:\n{}", gw.table());
    });
}

// ---- Masquerading (outbound) ----

#[test]
fn outbound_connections_are_masqueraded_by_policy_and_replies_reach_the_lan() {
    example(|gw| {
        // tristan: policy "dsl".
        let run = tristan_syn(gw, 50000);
        let want = Ip::new(DSL_ADDR, CLIENT).ttl(63).tcp(50000, 443, TCP_SYN);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        assert_eq!(run.mark & MARK_MASK, DSL_MARK);
        gw.assert_pair(
            tcp_key((TRISTAN, 50000), (CLIENT, 443)),
            tcp_key((DSL_ADDR, 50000), (CLIENT, 443)),
            DSL,
            false,
        );

        // isolde: the default policy, ISP B.
        let syn = Ip::new(ISOLDE, CLIENT).tcp(50001, 443, TCP_SYN);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &syn));
        let want = Ip::new(ISPB_ADDR, CLIENT).ttl(63).tcp(50001, 443, TCP_SYN);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
        assert_eq!(run.mark & MARK_MASK, ISPB_MARK);
        gw.assert_pair(
            tcp_key((ISOLDE, 50001), (CLIENT, 443)),
            tcp_key((ISPB_ADDR, 50001), (CLIENT, 443)),
            ISPB,
            false,
        );

        // The client's answer to tristan arrives on eth4.
        let synack = Ip::new(CLIENT, DSL_ADDR).tcp(443, 50000, TCP_SYN | TCP_ACK);
        let run = gw.xdp("eth4", &from_dsl(&synack));
        let want = Ip::new(CLIENT, TRISTAN).ttl(63).tcp(443, 50000, TCP_SYN | TCP_ACK);
        assert_run(&run, XDP_REDIRECT, &to_lan(TRISTAN_MAC, &want));
        gw.assert_counters(&[
            (Counter::OutboundNew, 2),
            (Counter::ToUplinkTranslated, 2),
            (Counter::ToLanTranslated, 1),
            (Counter::FastPathRedirect, 3),
        ]);
        gw.assert_no_drops();
    });
}

#[test]
fn same_source_port_from_two_lan_hosts_gets_a_second_port() {
    example(|gw| {
        let syn = Ip::new(ISOLDE, CLIENT).tcp(40000, 443, TCP_SYN);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &syn));
        let want = Ip::new(ISPB_ADDR, CLIENT).ttl(63).tcp(40000, 443, TCP_SYN);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));

        let syn = Ip::new(MARKE, CLIENT).tcp(40000, 443, TCP_SYN);
        let run = gw.lan_in(&from_lan(MARKE_MAC, &syn));
        let port = IpView::of_frame(&run.out).sport();
        assert_ne!(port, 40000);
        assert!(port >= 1024, "port {port} outside the SNAT range");
        let want = Ip::new(ISPB_ADDR, CLIENT).ttl(63).tcp(port, 443, TCP_SYN);
        assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));

        gw.assert_pair(
            tcp_key((ISOLDE, 40000), (CLIENT, 443)),
            tcp_key((ISPB_ADDR, 40000), (CLIENT, 443)),
            ISPB,
            false,
        );
        gw.assert_pair(
            tcp_key((MARKE, 40000), (CLIENT, 443)),
            tcp_key((ISPB_ADDR, port), (CLIENT, 443)),
            ISPB,
            false,
        );
        assert_eq!(gw.conns().len(), 4);

        // Each reply finds its own host.
        for (p, host, mac) in [(40000, ISOLDE, ISOLDE_MAC), (port, MARKE, MARKE_MAC)] {
            let synack = Ip::new(CLIENT, ISPB_ADDR).tcp(443, p, TCP_SYN | TCP_ACK);
            let run = gw.xdp("eth1", &from_ispb(&synack));
            let want = Ip::new(CLIENT, host).ttl(63).tcp(443, 40000, TCP_SYN | TCP_ACK);
            assert_run(&run, XDP_REDIRECT, &to_lan(mac, &want));
        }
        gw.assert_no_drops();
    });
}

#[test]
fn snat_never_picks_the_gateways_own_ephemeral_ports() {
    example(|gw| {
        // A LAN port inside the gateway's ephemeral range (61000-61999) is moved out of it, so a
        // reply to one of the gateway's own sockets can never match a masq connection.
        let syn = Ip::new(ISOLDE, CLIENT).tcp(61500, 443, TCP_SYN);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &syn));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        let port = IpView::of_frame(&run.out).sport();
        assert!(!(61000..=61999).contains(&port), "SNAT picked the gateway's port {port}");
        assert!(port >= 1024);
        assert_checksums(&run.out);
        gw.assert_no_drops();
    });
}

#[test]
fn same_echo_id_from_two_lan_hosts_gets_a_second_id() {
    example(|gw| {
        let id = colliding_pings(gw, 0x0101);
        // The answers find their hosts with their own ids.
        for (seen, host, mac) in [(0x0101, ISOLDE, ISOLDE_MAC), (id, MARKE, MARKE_MAC)] {
            let pong = Ip::new(CLIENT, ISPB_ADDR).echo(false, seen, 1);
            let run = gw.xdp("eth1", &from_ispb(&pong));
            let want = Ip::new(CLIENT, host).ttl(63).echo(false, 0x0101, 1);
            assert_run(&run, XDP_REDIRECT, &to_lan(mac, &want));
        }
        assert_eq!(gw.conns().len(), 4);
        gw.assert_no_drops();
    });
}

#[test]
fn exhausted_port_range_drops_the_new_connection_and_leaves_no_half_entry() {
    with_config("[dataplane]\nport_min = 2000\nport_max = 2001\n", |gw| {
        for sport in [2000, 2001] {
            let syn = Ip::new(ISOLDE, CLIENT).tcp(sport, 443, TCP_SYN);
            let run = gw.lan_in(&from_lan(ISOLDE_MAC, &syn));
            let want = Ip::new(ISPB_ADDR, CLIENT).ttl(63).tcp(sport, 443, TCP_SYN);
            assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
        }
        assert_eq!(gw.conns().len(), 4);

        let syn = Ip::new(MARKE, CLIENT).tcp(2000, 443, TCP_SYN);
        let run = gw.lan_in(&from_lan(MARKE_MAC, &syn));
        assert_eq!(run.ret, TC_ACT_SHOT, "both ports of the range are taken");
        assert_eq!(gw.conns().len(), 4, "no half entry left:\n{}", gw.table());
        gw.assert_counters(&[(Counter::DropNatPortExhausted, 1), (Counter::OutboundNew, 2)]);
    });
}

// ---- Limits and other traffic ----

#[test]
fn truncated_tcp_header_is_dropped_as_malformed() {
    example(|gw| {
        let syn = Ip::new(CLIENT, DSL_PUB).tcp(40000, 80, TCP_SYN);
        let cut = Ip::new(CLIENT, DSL_PUB).packet(IPPROTO_TCP, &syn[20..30]);
        assert_eq!(gw.xdp("eth4", &from_dsl(&cut)).ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropMalformed, 1)]);
        assert!(gw.conns().is_empty());
    });
}

#[test]
fn fragments_to_a_published_address_follow_their_first_fragment() {
    example(|gw| {
        let first = Ip::new(CLIENT, DSL_PUB).frag(IP_MF).udp(5353, 53, &[7; 64]);
        let run = gw.xdp("eth4", &from_dsl(&first));
        assert_eq!(run.ret, XDP_REDIRECT);
        assert_eq!(IpView::of_frame(&run.out).dst(), ISOLDE);
        assert_checksums(&run.out);
        let later = Ip::new(CLIENT, DSL_PUB).frag(9).packet(IPPROTO_UDP, &[7; 16]);
        let run = gw.xdp("eth4", &from_dsl(&later));
        assert_eq!(run.ret, XDP_REDIRECT);
        let view = IpView::of_frame(&run.out);
        assert_eq!((view.src(), view.dst()), (CLIENT, ISOLDE));
        gw.assert_no_drops();
    });
}

#[test]
fn later_fragment_without_its_first_is_dropped() {
    example(|gw| {
        let later = Ip::new(CLIENT, DSL_PUB).frag(9).packet(IPPROTO_UDP, &[7; 16]);
        assert_eq!(gw.xdp("eth4", &from_dsl(&later)).ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropFragment, 1)]);
        assert!(gw.conns().is_empty());
    });
}

#[test]
fn tcp_without_syn_and_without_connection_is_dropped() {
    example(|gw| {
        for flags in [TCP_ACK, TCP_SYN | TCP_ACK, TCP_RST, TCP_FIN | TCP_ACK] {
            let p = Ip::new(CLIENT, DSL_PUB).tcp(40000, 80, flags);
            assert_eq!(gw.xdp("eth4", &from_dsl(&p)).ret, XDP_DROP, "flags {flags:#x}");
        }
        let ack = Ip::new(TRISTAN, CLIENT).tcp(50000, 443, TCP_ACK);
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &ack)).ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropTcpNoConn, 5)]);
        assert!(gw.conns().is_empty());
    });
}

#[test]
fn ttl_1_to_a_published_address_is_left_untouched_to_the_kernel() {
    example(|gw| {
        let frame = from_dsl(&Ip::new(CLIENT, DSL_PUB).ttl(1).tcp(40000, 80, TCP_SYN));
        assert_run(&gw.xdp("eth4", &frame), XDP_PASS, &frame);
        gw.assert_counters(&[(Counter::TtlExpiring, 1), (Counter::InboundNew, 0)]);
        assert!(gw.conns().is_empty());

        // The same for a known connection: untranslated, so the kernel's error quotes it.
        client_syn_via_dsl(gw);
        let frame = from_dsl(&Ip::new(CLIENT, DSL_PUB).ttl(1).tcp(40000, 80, TCP_ACK));
        assert_run(&gw.xdp("eth4", &frame), XDP_PASS, &frame);
        let frame = from_lan(ISOLDE_MAC, &Ip::new(ISOLDE, CLIENT).ttl(1).tcp(80, 40000, TCP_ACK));
        let run = gw.lan_in(&frame);
        assert_run(&run, TC_ACT_OK, &frame);
        gw.assert_counters(&[(Counter::TtlExpiring, 3)]);
        gw.assert_no_drops();
    });
}

#[test]
fn non_ipv4_frames_pass_untouched() {
    example(|gw| {
        let v6 = eth(ETH4_MAC, DSL_GW_MAC, ETH_P_IPV6, &[0x60; 48]);
        let arp_other = arp_request(DSL_GW_MAC, DSL_GW, Ipv4Addr::new(67, 17, 28, 5));
        let arp_gw = arp_request(DSL_GW_MAC, DSL_GW, DSL_ADDR);
        for frame in [&v6, &arp_other, &arp_gw] {
            assert_run(&gw.xdp("eth4", frame), XDP_PASS, frame);
        }
        let v6_lan = eth(ETH0_MAC, ISOLDE_MAC, ETH_P_IPV6, &[0x60; 48]);
        assert_run(&gw.lan_in(&v6_lan), TC_ACT_OK, &v6_lan);
        // IPv4 with options is not masq's either (see the egress test for the LAN side).
        let opts =
            Ip::new(CLIENT, DSL_PUB).packet_with_options(IPPROTO_UDP, &[1, 1, 1, 0], &[0; 8]);
        let frame = from_dsl(&opts);
        assert_run(&gw.xdp("eth4", &frame), XDP_PASS, &frame);
        assert!(gw.conns().is_empty());
        gw.assert_no_drops();
    });
}

#[test]
fn arp_for_a_published_address_is_answered_on_its_own_uplink_only() {
    example(|gw| {
        let req = arp_request(DSL_GW_MAC, DSL_GW, DSL_PUB);
        let run = gw.xdp("eth4", &req);
        assert_run(&run, XDP_REDIRECT, &arp_reply(gw.mac("eth4"), DSL_PUB, DSL_GW_MAC, DSL_GW));

        let req = arp_request(ISPB_GW_MAC, ISPB_GW, ISPB_PUB);
        let run = gw.xdp("eth1", &req);
        assert_run(&run, XDP_REDIRECT, &arp_reply(ETH1_MAC, ISPB_PUB, ISPB_GW_MAC, ISPB_GW));

        // The DSL address asked for on ISP B's link: not ours to answer there.
        let req = arp_request(ISPB_GW_MAC, ISPB_GW, DSL_PUB);
        assert_run(&gw.xdp("eth1", &req), XDP_PASS, &req);
        gw.assert_counters(&[(Counter::ArpReplied, 2)]);
    });
}

// ---- Uplink egress (slow path and leak guard) ----

#[test]
fn egress_translates_a_known_connection_the_kernel_forwarded() {
    example(|gw| {
        tristan_syn(gw, 50000);
        let ack = Ip::new(TRISTAN, CLIENT).ttl(63).tcp(50000, 443, TCP_ACK);
        let run = gw.uplink_out("eth4", &to_dsl(&ack));
        let want = Ip::new(DSL_ADDR, CLIENT).ttl(63).tcp(50000, 443, TCP_ACK);
        assert_run(&run, TC_ACT_OK, &to_dsl(&want));
        gw.assert_counters(&[(Counter::EgressTranslated, 1)]);
        gw.assert_no_drops();
    });
}

#[test]
fn egress_drops_an_untracked_lan_source() {
    example(|gw| {
        let leak = Ip::new(ISOLDE, CLIENT).ttl(63).udp(9999, 9999, b"leak");
        assert_eq!(gw.uplink_out("eth1", &to_ispb(&leak)).ret, TC_ACT_SHOT);
        gw.assert_counters(&[(Counter::DropUntranslatedLeak, 1)]);
    });
}

#[test]
fn egress_passes_the_gateways_own_packets() {
    example(|gw| {
        let own = to_dsl(&Ip::new(DSL_ADDR, CLIENT).tcp(33000, 443, TCP_SYN));
        assert_run(&gw.uplink_out("eth4", &own), TC_ACT_OK, &own);
        let own = to_ispb(&Ip::new(ISPB_ADDR, CLIENT).udp(33000, 53, b"q"));
        assert_run(&gw.uplink_out("eth1", &own), TC_ACT_OK, &own);
        gw.assert_no_drops();
    });
}

/// Found by this suite: IPv4 with options parses as "not masq's" and passes the leak guard.
#[test]
fn egress_drops_a_lan_source_with_ip_options() {
    example(|gw| {
        // `ping -R` from isolde: record-route option, forwarded by the kernel untranslated.
        let mut rr = vec![7, 39, 4];
        rr.resize(40, 0);
        let ping = Ip::new(ISOLDE, CLIENT).ttl(63).packet_with_options(
            IPPROTO_ICMP,
            &rr,
            &[8, 0, 0xf7, 0xff, 0, 0, 0, 0],
        );
        let run = gw.uplink_out("eth1", &to_ispb(&ping));
        assert_eq!(run.ret, TC_ACT_SHOT, "a LAN source left untranslated");
    });
}

// ---- Fast path off, unresolved next hops ----

#[test]
fn without_fast_path_packets_go_to_the_kernel_and_egress_translates() {
    with_config("[dataplane]\nfast_path = false\n", |gw| {
        let syn = from_dsl(&Ip::new(CLIENT, DSL_PUB).tcp(40000, 80, TCP_SYN));
        let run = gw.xdp("eth4", &syn);
        // Translated, but TTL and MACs left to the kernel.
        let want = from_dsl(&Ip::new(CLIENT, ISOLDE).tcp(40000, 80, TCP_SYN));
        assert_run(&run, XDP_PASS, &want);

        let synack =
            from_lan(ISOLDE_MAC, &Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK));
        let run = gw.lan_in(&synack);
        assert_run(&run, TC_ACT_OK, &synack);
        assert_eq!(run.mark & MARK_MASK, DSL_MARK, "mark {:#x}", run.mark);

        // The kernel routes it by the mark out of eth4; egress translates.
        let forwarded = Ip::new(ISOLDE, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        let run = gw.uplink_out("eth4", &to_dsl(&forwarded));
        let want = Ip::new(DSL_PUB, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_OK, &to_dsl(&want));
        gw.assert_counters(&[
            (Counter::KernelPath, 2),
            (Counter::FastPathRedirect, 0),
            (Counter::EgressTranslated, 1),
        ]);
        gw.assert_no_drops();
    });
}

#[test]
fn unresolved_next_hop_uses_redirect_neigh_or_the_kernel() {
    gateway(Opts { neighbours: false, ..SEED }, |gw| {
        // XDP cannot resolve: the kernel forwards the translated packet.
        let run = client_syn_via_dsl(gw);
        let want = from_dsl(&Ip::new(CLIENT, ISOLDE).tcp(40000, 80, TCP_SYN));
        assert_run(&run, XDP_PASS, &want);

        // TC: translated, TTL decremented, MACs left to bpf_redirect_neigh.
        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        let want = Ip::new(DSL_PUB, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &from_lan(ISOLDE_MAC, &want));
        assert_eq!(run.mark & MARK_MASK, DSL_MARK);
        gw.assert_counters(&[(Counter::KernelPath, 1), (Counter::FastPathNeigh, 1)]);
        gw.assert_no_drops();
    });
}

#[test]
fn without_fast_path_icmp_error_from_lan_is_translated_at_egress() {
    with_config("[dataplane]\nfast_path = false\n", |gw| {
        let query = Ip::new(CLIENT, DSL_PUB).udp(5353, 53, b"query");
        let delivered = gw.xdp("eth4", &from_dsl(&query)).out;
        let err = Ip::new(ISOLDE, CLIENT).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &delivered[ETH_HLEN..],
        );
        let frame = from_lan(ISOLDE_MAC, &err);
        let run = gw.lan_in(&frame);
        assert_run(&run, TC_ACT_OK, &frame);
        assert_eq!(run.mark & MARK_MASK, DSL_MARK);

        let forwarded = Ip::new(ISOLDE, CLIENT).ttl(63).icmp_error(
            ICMP_DEST_UNREACH,
            3,
            [0; 4],
            &delivered[ETH_HLEN..],
        );
        let run = gw.uplink_out("eth4", &to_dsl(&forwarded));
        let quoted_want = Ip::new(CLIENT, DSL_PUB).udp(5353, 53, b"query");
        let want =
            Ip::new(DSL_PUB, CLIENT).ttl(63).icmp_error(ICMP_DEST_UNREACH, 3, [0; 4], &quoted_want);
        assert_run(&run, TC_ACT_OK, &to_dsl(&want));
        gw.assert_counters(&[(Counter::EgressTranslated, 1)]);
        gw.assert_no_drops();
    });
}

/// eth4 with a smaller MTU than the LAN's.
const SMALL_DSL_MTU: Opts = Opts { cmds: &["ip link set eth4 mtu 1400"], ..SEED };

#[test]
fn oversized_df_packet_from_lan_goes_to_the_kernel_untranslated_and_marked() {
    gateway(SMALL_DSL_MTU, |gw| {
        // The kernel then answers tristan with frag-needed quoting his own packet.
        let big = Ip::new(TRISTAN, CLIENT).udp(40000, 4500, &[0x5a; 1452]);
        let frame = from_lan(TRISTAN_MAC, &big);
        let run = gw.lan_in(&frame);
        assert_run(&run, TC_ACT_OK, &frame);
        assert_eq!(run.mark & MARK_MASK, DSL_MARK);
        gw.assert_counters(&[(Counter::OutboundNew, 1), (Counter::KernelPath, 1)]);
    });
}

#[test]
fn cached_next_hop_still_sends_a_too_big_packet_to_the_kernel() {
    gateway(SMALL_DSL_MTU, |gw| {
        // A small packet resolves and caches the next hop; a big one of the same flow right
        // after must still get the MTU check (and the kernel's frag-needed).
        let small = Ip::new(TRISTAN, CLIENT).udp(40000, 4500, &[0x5a; 100]);
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &small)).ret, TC_ACT_REDIRECT);
        let big = Ip::new(TRISTAN, CLIENT).udp(40000, 4500, &[0x5a; 1452]);
        let frame = from_lan(TRISTAN_MAC, &big);
        let run = gw.lan_in(&frame);
        assert_run(&run, TC_ACT_OK, &frame);
        gw.assert_counters(&[(Counter::FastPathRedirect, 1), (Counter::KernelPath, 1)]);
    });
}

/// Found by this suite: without DF the kernel fragments the untranslated packet before the
/// uplink's egress program, which then drops every fragment for its LAN source.
#[test]
fn oversized_packet_without_df_from_lan_leaves_fragmented_and_translated() {
    gateway(SMALL_DSL_MTU, |gw| {
        let big = Ip::new(TRISTAN, CLIENT).frag(0).udp(40000, 4500, &[0x5a; 1452]);
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &big));
        assert_eq!(run.ret, TC_ACT_OK, "only the kernel can fragment it");

        // What the kernel's forwarding makes of it: a first fragment of 1396 bytes.
        let handed = IpView::of_frame(&run.out);
        let first = Ip::new(handed.src(), handed.dst())
            .ttl(63)
            .frag(IP_MF)
            .packet(IPPROTO_UDP, &handed.l4()[..1376]);
        let out = gw.uplink_out("eth4", &to_dsl(&first));
        assert_eq!(
            (out.ret, IpView::of_frame(&out.out).src()),
            (TC_ACT_OK, DSL_ADDR),
            "fragment leaves translated; counters: {:?}",
            gw.counters()
        );
    });
}

// ---- Connection table upkeep ----

#[test]
fn lost_reply_entry_is_rebuilt_by_the_next_forward_packet() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let fwd_key = tcp_key((CLIENT, 40000), (DSL_PUB, 80));
        let reply_key = tcp_key((ISOLDE, 80), (CLIENT, 40000));
        let reply_before = gw.conn(&reply_key).unwrap();
        let mut fwd = gw.conn(&fwd_key).unwrap();
        fwd.last_seen_tick = 0;
        let mut map = gw.conns_map();
        map.insert(fwd_key, fwd, 0).unwrap();
        map.remove(&reply_key).unwrap();

        let ack = Ip::new(CLIENT, DSL_PUB).tcp(40000, 80, TCP_ACK);
        assert_eq!(gw.xdp("eth4", &from_dsl(&ack)).ret, XDP_REDIRECT);
        let rebuilt = gw.conn(&reply_key).expect("reply entry rebuilt");
        assert_eq!(rebuilt.xlate, reply_before.xlate);
        assert_eq!((rebuilt.uplink, rebuilt.flags), (reply_before.uplink, reply_before.flags));
        assert_eq!(rebuilt.created_tick, reply_before.created_tick);

        // And the reply direction works again.
        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK);
        let run = gw.lan_in(&from_lan(ISOLDE_MAC, &synack));
        let want = Ip::new(DSL_PUB, CLIENT).ttl(63).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_run(&run, TC_ACT_REDIRECT, &to_dsl(&want));
        gw.assert_no_drops();
    });
}

#[test]
fn lost_forward_entry_is_rebuilt_by_the_next_reply() {
    example(|gw| {
        client_syn_via_dsl(gw);
        let fwd_key = tcp_key((CLIENT, 40000), (DSL_PUB, 80));
        let reply_key = tcp_key((ISOLDE, 80), (CLIENT, 40000));
        let fwd_before = gw.conn(&fwd_key).unwrap();
        let mut reply = gw.conn(&reply_key).unwrap();
        reply.last_seen_tick = 0;
        let mut map = gw.conns_map();
        map.insert(reply_key, reply, 0).unwrap();
        map.remove(&fwd_key).unwrap();

        let synack = Ip::new(ISOLDE, CLIENT).tcp(80, 40000, TCP_SYN | TCP_ACK);
        assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &synack)).ret, TC_ACT_REDIRECT);
        let rebuilt = gw.conn(&fwd_key).expect("forward entry rebuilt");
        assert_eq!(rebuilt.xlate, fwd_before.xlate);
        assert_eq!((rebuilt.uplink, rebuilt.flags), (fwd_before.uplink, fwd_before.flags));
    });
}

// ---- Found in review ----

#[test]
fn lan_multicast_and_broadcast_are_left_to_the_gateway() {
    example(|gw| {
        for dst in [Ipv4Addr::new(224, 0, 0, 251), Ipv4Addr::BROADCAST] {
            let frame =
                from_lan(TRISTAN_MAC, &Ip::new(TRISTAN, dst).ttl(255).udp(5353, 5353, &[1; 8]));
            assert_run(&gw.lan_in(&frame), TC_ACT_OK, &frame);
        }
        assert!(gw.conns().is_empty(), "no connection for multicast or broadcast");
        gw.assert_no_drops();
    });
}

#[test]
fn outbound_to_another_uplinks_subnet_is_masqueraded_behind_that_uplink() {
    example(|gw| {
        // tristan's policy says dsl, but dsl's table reaches ISP B's subnet through eth1 (a
        // copy of main's connected route): the source must be eth1's address, as MASQUERADE
        // would make it, or ISP B would drop it as spoofed.
        let syn = Ip::new(TRISTAN, ISPB_GW).tcp(2000, 80, TCP_SYN);
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &syn));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        let out = IpView::of_frame(&run.out);
        assert_eq!(out.src(), ISPB_ADDR);
        assert_eq!(&run.out[..6], &ISPB_GW_MAC, "sent to ISP B's router");
        assert_eq!(run.mark & MARK_MASK, ISPB_MARK);
        assert_checksums(&run.out);
    });
}

#[test]
fn reply_with_ttl_1_to_a_masqueraded_connection_is_dropped_not_reset() {
    example(|gw| {
        let syn = Ip::new(TRISTAN, CLIENT).tcp(2000, 443, TCP_SYN);
        assert_eq!(gw.lan_in(&from_lan(TRISTAN_MAC, &syn)).ret, TC_ACT_REDIRECT);
        let reply = Ip::new(CLIENT, DSL_ADDR).ttl(1).tcp(443, 2000, TCP_SYN | TCP_ACK);
        assert_eq!(gw.xdp("eth4", &from_dsl(&reply)).ret, XDP_DROP);
        gw.assert_counters(&[(Counter::DropReplyTtlExpired, 1)]);
    });
}

#[test]
fn snat_moves_a_source_port_below_the_range_into_it() {
    example(|gw| {
        let syn = Ip::new(TRISTAN, CLIENT).tcp(500, 443, TCP_SYN);
        let run = gw.lan_in(&from_lan(TRISTAN_MAC, &syn));
        assert_eq!(run.ret, TC_ACT_REDIRECT);
        assert!(IpView::of_frame(&run.out).sport() >= 1024);
        assert_checksums(&run.out);
    });
}
