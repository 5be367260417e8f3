//! The real eBPF programs run on crafted frames with BPF_PROG_TEST_RUN: each test builds the
//! seed topology's interfaces, routes and neighbours in a namespace, loads the dataplane with the
//! example config (not attached), and checks the returned action, the output bytes (checksums
//! recomputed from scratch), the counters and the connection table; one module per scenario.
//! Needs root; run serially: `cargo xtask test -- -p masq-user --test integration --
//! dataplane_progs::`.
use std::net::Ipv4Addr;

use aya::{
    maps::{Array, HashMap, MapData, PerCpuArray},
    programs::{SchedClassifier, Xdp},
};
use masq_common::{
    BindingKey, CONN_F_INBOUND, CONN_F_PENDING, CONN_F_REPLY, CONN_F_SYN_TIMED, ConnEntry,
    ConnRoute, Counter, DataplaneConfig, FlowKey, Tuple4, map_names, program_names,
};
use masq_user::{
    bindings::BindingTables,
    config::{Config, DEFAULT_MARK_MASK},
    conntrack,
    dataplane::{Dataplane, remove_pins},
    host::HostInterfaces,
    map_values::{wire_addr, wire_port},
    netns::{NetNs, require_root},
    pinned,
    progkit::{
        self, Ctx, ROUTERS, Run, TC_ACT_OK, TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_DROP, XDP_PASS,
        XDP_REDIRECT, build_seed_gateway,
    },
    seed::*,
};

use crate::common::packet::*;

mod events;
mod flood;
mod floor;
mod health;
mod hostile;
mod icmp_errors;
mod inbound;
mod limits;
mod next_hop;
mod outbound;
mod review;
mod upkeep;
mod uplink_egress;

const EXAMPLE: &str = include_str!("../../../../examples/masq-gw.toml");

// ---- Setup ----

/// The seed gateway (`masq_user::progkit`); `neighbours`: next hops resolved (permanent
/// entries). SNAT stays out of the gateway's own ephemeral ports: the tests' LAN ports lie
/// outside the range set here.
fn build_topology(ns: &NetNs, neighbours: bool) {
    let lan_hosts =
        [(ISOLDE, ISOLDE_MAC, "eth0"), (TRISTAN, TRISTAN_MAC, "eth0"), (MARKE, MARKE_MAC, "eth0")];
    let next_hops: Vec<_> = ROUTERS.into_iter().chain(lan_hosts).collect();
    let neighbours: &[_] = if neighbours { &next_hops } else { &[] };
    build_seed_gateway(ns, neighbours, &std::env::temp_dir()).expect("the seed gateway");
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
        pinned::write_config(&pin_dir, &cfg, &host, &states, &[]).expect("filling the maps");
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
        dp.link_tail_calls().unwrap_or_else(|e| panic!("{e:#}"));
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

impl Gw {
    fn ifindex(&self, dev: &str) -> u32 {
        self.host.get(dev).unwrap().index
    }

    fn mac(&self, dev: &str) -> Mac {
        self.host.get(dev).unwrap().mac.unwrap()
    }

    /// `masq_uplink_in_xdp` on a frame received by `dev`.
    fn xdp(&self, dev: &str, frame: &[u8]) -> Run {
        self.xdp_prog(program_names::UPLINK_INGRESS_XDP, dev, frame)
    }

    /// The XDP program `prog` on a frame received by `dev`.
    fn xdp_prog(&self, prog: &str, dev: &str, frame: &[u8]) -> Run {
        self.run(prog, Ctx::Xdp { rx: self.ifindex(dev) }, frame)
    }

    fn tc(&self, prog: &str, ingress: u32, ifindex: u32, frame: &[u8]) -> Run {
        self.run(prog, Ctx::Tc { ingress, ifindex }, frame)
    }

    /// The program `prog` on `frame`, once (`masq_user::progkit::run`).
    fn run(&self, prog: &str, ctx: Ctx, frame: &[u8]) -> Run {
        let program = self.dp.ebpf().program(prog).unwrap_or_else(|| panic!("no {prog}"));
        progkit::run(program, ctx, frame).unwrap_or_else(|e| panic!("{prog}: {e:#}"))
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
        let at = Counter::ALL.iter().position(|&x| x == c).expect("listed");
        masq_user::pinned::counter_totals(&map).unwrap()[at]
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

    /// [`Gw::assert_counters`], then [`Gw::assert_no_drops`].
    #[track_caller]
    fn assert_counters_no_drops(&self, expected: &[(Counter, u64)]) {
        self.assert_counters(expected);
        self.assert_no_drops();
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

    /// Every entry of both connection tables (confirmed and pending).
    fn conns(&self) -> Vec<(FlowKey, ConnEntry)> {
        [map_names::CONNS, map_names::PENDING_CONNS]
            .into_iter()
            .flat_map(|name| {
                let map: HashMap<_, FlowKey, ConnEntry> =
                    HashMap::try_from(self.dp.ebpf().map(name).unwrap()).unwrap();
                map.iter().map(Result::unwrap).collect::<Vec<_>>()
            })
            .collect()
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

    fn binding_tables(&self) -> BindingTables<MapData> {
        pinned::binding_tables(self.dp.pin_dir()).unwrap()
    }

    /// The public port (host byte order) of `addr:port`'s binding behind `uplink`, if any.
    fn binding_port(&self, (addr, port): (Ipv4Addr, u16), proto: u8, uplink: u8) -> Option<u16> {
        let key =
            BindingKey { int_addr: wire_addr(addr), int_port: wire_port(port), proto, uplink };
        self.binding_tables().port_of(&key).map(u16::from_be)
    }

    /// How many endpoints have a binding (held ports), and how many of them a port other than
    /// their own (`BINDINGS` entries).
    fn bindings(&self) -> (usize, usize) {
        let tables = self.binding_tables();
        (tables.held_ports().len(), tables.mapped_elsewhere().len())
    }

    /// Both directions' entries of a connection.
    #[track_caller]
    fn assert_pair(&self, orig: FlowKey, xlate: FlowKey, uplink: u8, inbound: bool) {
        let flags = if inbound { CONN_F_INBOUND } else { 0 };
        let fwd = self
            .conn(&orig)
            .unwrap_or_else(|| panic!("no entry for {orig:?}; table:\n{}", self.table()));
        assert_eq!(fwd.xlate, Tuple4::of(&xlate), "translation of {orig:?}");
        let pending = fwd.flags & CONN_F_PENDING;
        assert_eq!((fwd.uplink, fwd.flags & !pending), (uplink, flags), "entry {orig:?}");
        let reply_key = xlate.reversed();
        let rev = self
            .conn(&reply_key)
            .unwrap_or_else(|| panic!("no reply entry {reply_key:?}; table:\n{}", self.table()));
        assert_eq!(rev.xlate, Tuple4::of(&orig.reversed()), "translation of {reply_key:?}");
        let want = (uplink, flags | CONN_F_REPLY | pending);
        let timed = rev.flags & CONN_F_SYN_TIMED;
        assert_eq!((rev.uplink, rev.flags & !timed), want, "entry {reply_key:?} (same table)");
        let conns = conntrack::pair(self.conns());
        assert!(
            conns.iter().any(|c| c.orig.is_some_and(|(k, _)| k == orig) && c.reply.is_some()),
            "userspace pairs {orig:?} with its reply"
        );
    }

    /// Replace the route `key`'s entry caches (in whichever table holds it).
    fn set_route(&mut self, key: &FlowKey, route: ConnRoute) {
        for name in [map_names::CONNS, map_names::PENDING_CONNS] {
            let mut map: HashMap<_, FlowKey, ConnEntry> =
                HashMap::try_from(self.dp.ebpf_mut().map_mut(name).unwrap()).unwrap();
            if let Ok(entry) = map.get(key, 0) {
                map.insert(key, ConnEntry { route, ..entry }, 0).unwrap();
                return;
            }
        }
        panic!("no entry {key:?}; table:\n{}", self.table());
    }

    /// The epoch routes cached now carry (`DataplaneConfig::route_epoch`).
    fn route_epoch(&self) -> u32 {
        let map: Array<_, DataplaneConfig> =
            Array::try_from(self.dp.ebpf().map(map_names::CONFIG).unwrap()).unwrap();
        map.get(&0, 0).unwrap().route_epoch
    }

    /// The pending table, where a new connection's entries are and the LRU may evict one.
    fn pending_map(&mut self) -> HashMap<&mut aya::maps::MapData, FlowKey, ConnEntry> {
        HashMap::try_from(self.dp.ebpf_mut().map_mut(map_names::PENDING_CONNS).unwrap()).unwrap()
    }

    /// The confirmed table, which evicts nothing.
    fn confirmed_map(&mut self) -> HashMap<&mut aya::maps::MapData, FlowKey, ConnEntry> {
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
    eth_ip(ETH4_MAC, ISP_A_ROUTER_MAC, p)
}
fn from_ispb(p: &[u8]) -> Vec<u8> {
    eth_ip(ETH1_MAC, ISP_B_ROUTER_MAC, p)
}
fn from_lan(host_mac: Mac, p: &[u8]) -> Vec<u8> {
    eth_ip(ETH0_MAC, host_mac, p)
}
fn to_lan(host_mac: Mac, p: &[u8]) -> Vec<u8> {
    eth_ip(host_mac, ETH0_MAC, p)
}
fn to_dsl(p: &[u8]) -> Vec<u8> {
    eth_ip(ISP_A_ROUTER_MAC, ETH4_MAC, p)
}
fn to_ispb(p: &[u8]) -> Vec<u8> {
    eth_ip(ISP_B_ROUTER_MAC, ETH1_MAC, p)
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
    gw.xdp("eth4", &from_dsl(&client_syn()))
}

/// The client's handshake with isolde's web server on ISP A from `port`: a confirmed
/// connection.
fn handshake(gw: &Gw, client: Ipv4Addr, port: u16) {
    let syn = Ip::new(client, PUBLIC_ISP_A).tcp_seq(port, 80, TCP_SYN, (100, 0), b"");
    assert_eq!(gw.xdp("eth4", &from_dsl(&syn)).ret, XDP_REDIRECT, "{:?}", gw.counters());
    let synack = Ip::new(ISOLDE, client).tcp_seq(80, port, TCP_SYN | TCP_ACK, (500, 101), b"");
    assert_eq!(gw.lan_in(&from_lan(ISOLDE_MAC, &synack)).ret, TC_ACT_REDIRECT);
    let ack = Ip::new(client, PUBLIC_ISP_A).tcp_seq(port, 80, TCP_ACK, (101, 501), b"");
    assert_eq!(gw.xdp("eth4", &from_dsl(&ack)).ret, XDP_REDIRECT, "{:?}", gw.counters());
}

/// The client's SYN from port 40000 to isolde's DSL address, port 80.
fn client_syn() -> Vec<u8> {
    Ip::new(CLIENT, PUBLIC_ISP_A).tcp(40000, 80, TCP_SYN)
}

/// What an uplink's ingress program (action `ret`) made of [`client_syn`]: the SYN at isolde
/// with the TTL one lower, and both entries of the connection, inbound on DSL.
#[track_caller]
fn assert_client_syn_reached_isolde(gw: &Gw, run: &Run, ret: u32) {
    let want = Ip::new(CLIENT, ISOLDE).ttl(63).tcp(40000, 80, TCP_SYN);
    assert_run(run, ret, &to_lan(ISOLDE_MAC, &want));
    gw.assert_pair(
        tcp_key((CLIENT, 40000), (PUBLIC_ISP_A, 80)),
        tcp_key((CLIENT, 40000), (ISOLDE, 80)),
        DSL,
        true,
    );
}

/// `run` (masq_lan_in) redirected `want` to `uplink`'s router, marked as that uplink's.
#[track_caller]
fn assert_left_by(run: &Run, uplink: u8, want: &[u8]) {
    let (frame, mark) = match uplink {
        DSL => (to_dsl(want), DSL_MARK),
        ISPB => (to_ispb(want), ISPB_MARK),
        _ => unreachable!("uplink {uplink}"),
    };
    assert_run(run, TC_ACT_REDIRECT, &frame);
    assert_eq!(run.mark & DEFAULT_MARK_MASK, mark, "mark {:#x}", run.mark);
}

/// A TCP connection to a published address, its first two segments: the client's SYN from
/// `client_port` to `public` arrives on `uplink` (XDP) and reaches `server` (address, MAC,
/// port) with the TTL one lower, both entries of the connection inbound on `uplink`; the
/// server's SYN-ACK leaves by `uplink` from `public`.
#[track_caller]
fn assert_inbound_handshake(
    gw: &Gw,
    uplink: u8,
    client_port: u16,
    public: (Ipv4Addr, u16),
    (host, mac, port): (Ipv4Addr, Mac, u16),
) {
    let syn = Ip::new(CLIENT, public.0).tcp(client_port, public.1, TCP_SYN);
    let run = match uplink {
        DSL => gw.xdp("eth4", &from_dsl(&syn)),
        ISPB => gw.xdp("eth1", &from_ispb(&syn)),
        _ => unreachable!("uplink {uplink}"),
    };
    let want = Ip::new(CLIENT, host).ttl(63).tcp(client_port, port, TCP_SYN);
    assert_run(&run, XDP_REDIRECT, &to_lan(mac, &want));
    gw.assert_pair(
        tcp_key((CLIENT, client_port), public),
        tcp_key((CLIENT, client_port), (host, port)),
        uplink,
        true,
    );

    let synack = Ip::new(host, CLIENT).tcp(port, client_port, TCP_SYN | TCP_ACK);
    let run = gw.lan_in(&from_lan(mac, &synack));
    let want = Ip::new(public.0, CLIENT).ttl(63).tcp(public.1, client_port, TCP_SYN | TCP_ACK);
    assert_left_by(&run, uplink, &want);
}

/// A LAN host's SYN (`host`: address and MAC) from `sport` to the client's port 443, through
/// masq_lan_in; returns what left.
fn lan_syn(gw: &Gw, (host, mac): (Ipv4Addr, Mac), sport: u16) -> Run {
    let syn = Ip::new(host, CLIENT).tcp(sport, 443, TCP_SYN);
    gw.lan_in(&from_lan(mac, &syn))
}

/// Tristan's SYN to the client, SNATed by policy to DSL; returns what left.
fn tristan_syn(gw: &Gw, sport: u16) -> Run {
    lan_syn(gw, (TRISTAN, TRISTAN_MAC), sport)
}

/// isolde's and marke's pings to the client with the same id: both leave by ISP B, the second
/// with another id. Returns marke's id as seen outside.
fn colliding_pings(gw: &Gw, id: u16) -> u16 {
    let run = gw.lan_in(&from_lan(ISOLDE_MAC, &Ip::new(ISOLDE, CLIENT).echo(true, id, 1)));
    let want = Ip::new(GW_ISP_B, CLIENT).ttl(63).echo(true, id, 1);
    assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));

    let run = gw.lan_in(&from_lan(MARKE_MAC, &Ip::new(MARKE, CLIENT).echo(true, id, 1)));
    let new_id = IpView::of_frame(&run.out).icmp_id();
    assert_ne!(new_id, id, "the id is taken by isolde's ping");
    let want = Ip::new(GW_ISP_B, CLIENT).ttl(63).echo(true, new_id, 1);
    assert_run(&run, TC_ACT_REDIRECT, &to_ispb(&want));
    let echo = |s, d| key(IPPROTO_ICMP, s, d);
    gw.assert_pair(echo((ISOLDE, id), (CLIENT, 0)), echo((GW_ISP_B, id), (CLIENT, 0)), ISPB, false);
    gw.assert_pair(
        echo((MARKE, id), (CLIENT, 0)),
        echo((GW_ISP_B, new_id), (CLIENT, 0)),
        ISPB,
        false,
    );
    new_id
}
