//! Program cost: masq's XDP and TC programs under `BPF_PROG_TEST_RUN`, with the connection table
//! filled to several sizes, in a namespace that has gw's interfaces, addresses, routing tables and
//! (permanent) neighbours, so that every FIB lookup resolves as on the real gateway.
//!
//! Each path is measured two ways, both through the harness of [`super::bpf`]:
//! - *hot*: one flow, the same frame every repeat (what a single flow costs; everything cached);
//! - *spread*: a different flow on every repeat, cycling through up to `spread_max` flows sampled
//!   from the whole table (what many flows cost: the table's cache misses are part of it).
//!
//! Reported `ns` = harness with masq's program − harness with a trivial program, each the kernel's
//! mean per repeat, alternated run by run; median over runs.
use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{Program, ProgramFd},
};
use masq_common::{
    CFG_F_NO_VALIDATE, CONN_F_INBOUND, CONN_F_REPLY, ConnEntry, Counter, FLOOR_TO_LAN,
    FLOOR_TO_UPLINK, FloorRoute, FlowKey, TCP_SEEN_ACK, TCP_SEEN_SYN, Tuple4, eth_addrs, map_names,
    program_names,
};
use serde::Serialize;

use super::{
    Rng, Stat,
    bpf::{self, FRAME_LEN, Hook, STATE_LEN},
    frames::{self, Endpoint, Mac, TCP_ACK, TCP_SYN},
};
use crate::{
    config::{Config, DEFAULT_MARK_MASK},
    conntrack::{ConnTable, IPPROTO_TCP, clock_ns},
    dataplane::{Dataplane, remove_pins},
    expiry::KernelExpiry,
    host::HostInterfaces,
    map_values::wire_addr,
    netns::NetNs,
    pinned,
    policy_tables::{RULE_PRIORITY_FROM, RULE_PRIORITY_FWMARK},
    progkit::{self, Ctx, Run, TC_ACT_OK, TC_ACT_REDIRECT, XDP_PASS, XDP_REDIRECT},
    seed::{
        CLIENT, DSL_MARK, DSL_TABLE, ETH0_MAC, ETH0_PEER_MAC, ETH4_MAC, GW_ISP_A, GW_ISP_B, GW_LAN,
        ISOLDE, ISP_A_ROUTER_MAC, ISPB_MARK, ISPB_TABLE, PUBLIC_ISP_A, TRISTAN, lan_host,
    },
};

/// Source port of the new-connection SYNs (their source address changes every repeat).
const NEW_CONN_PORT: u16 = 40000;

#[derive(Clone, Debug)]
pub struct ProgOptions {
    /// Repeats per timed run (established and untouched paths).
    pub repeat: u32,
    /// Timed runs per measurement (median reported).
    pub runs: usize,
    /// Table sizes, in connections (two entries each).
    pub levels: Vec<usize>,
    /// `dataplane.conn_capacity` of the loaded dataplane.
    pub conn_capacity: u32,
    /// Most distinct flows a spread run cycles through (a power of two).
    pub spread_max: usize,
    /// Repeats per new-connection run (each inserts a connection; removed after the run).
    pub new_conn_repeat: u32,
    /// Single-repeat new-connection samples for the cross-check.
    pub repeat1_samples: usize,
    /// Pairs of single runs (with, without) where a feature's cost is measured (the RFC 1812
    /// checks, connection events).
    pub pairs: usize,
    /// Only profile this path hot (`<path>:spread`: spread over `PROFILE_SPREAD_CONNS`
    /// connections), masq then its floor, `PROFILE_SECONDS` each under `perf record`
    /// (`profile.rs`), and print where each one's time goes.
    pub profile: Option<String>,
}

/// How long `ProgOptions::profile` runs each program.
const PROFILE_SECONDS: f64 = 5.0;

/// Connections in the table for a spread profile (`--profile <path>:spread`).
const PROFILE_SPREAD_CONNS: usize = 100_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PathKind {
    InboundEstablished,
    InboundReply,
    OutboundEstablished,
    OutboundReply,
    NewConnection,
    OutboundNew,
    PassedUntouched,
    InboundEstablishedTc,
    OutboundReplyTc,
    NewConnectionTc,
    EgressTranslated,
}

impl PathKind {
    pub const ALL: [PathKind; 11] = [
        PathKind::InboundEstablished,
        PathKind::InboundReply,
        PathKind::OutboundEstablished,
        PathKind::OutboundReply,
        PathKind::NewConnection,
        PathKind::OutboundNew,
        PathKind::PassedUntouched,
        PathKind::InboundEstablishedTc,
        PathKind::OutboundReplyTc,
        PathKind::NewConnectionTc,
        PathKind::EgressTranslated,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathKind::InboundEstablished => "inbound_established",
            PathKind::InboundReply => "inbound_reply",
            PathKind::OutboundEstablished => "outbound_established",
            PathKind::OutboundReply => "outbound_reply",
            PathKind::NewConnection => "new_connection",
            PathKind::OutboundNew => "outbound_new_connection",
            PathKind::PassedUntouched => "passed_untouched",
            PathKind::InboundEstablishedTc => "inbound_established_tc",
            PathKind::OutboundReplyTc => "outbound_reply_tc",
            PathKind::NewConnectionTc => "new_connection_tc",
            PathKind::EgressTranslated => "egress_translated",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            PathKind::InboundEstablished => {
                "XDP eth4: client -> 67.17.28.10:80 ACK, DNAT, FIB main, redirect eth0"
            }
            PathKind::InboundReply => {
                "TC eth0: isolde:80 -> client ACK, reverse NAT, FIB table 201, redirect eth4"
            }
            PathKind::OutboundEstablished => {
                "TC eth0: LAN host -> server:443 ACK, SNAT, FIB table 201, redirect eth4"
            }
            PathKind::OutboundReply => {
                "XDP eth4: server:443 -> 67.17.28.12 ACK, reverse SNAT, FIB main, redirect eth0"
            }
            PathKind::NewConnection => {
                "XDP eth4: SYN from a new source to 67.17.28.10:80, both entries inserted, redirect"
            }
            PathKind::OutboundNew => {
                "TC eth0: SYN from a new LAN endpoint, policy, binding made, SNAT, redirect eth4"
            }
            PathKind::PassedUntouched => {
                "XDP eth4: 64.70.12.210:443 -> 67.17.28.12 (gw's own traffic), table miss, XDP_PASS"
            }
            PathKind::InboundEstablishedTc => "TC eth4: as inbound_established (TC mode)",
            PathKind::OutboundReplyTc => "TC eth4: as outbound_reply (TC mode)",
            PathKind::NewConnectionTc => "TC eth4: as new_connection (TC mode)",
            PathKind::EgressTranslated => {
                "TC eth4 egress: LAN host -> server:443 ACK the kernel forwarded, SNAT, TC_ACT_OK"
            }
        }
    }

    fn hook(self) -> Hook {
        match self {
            PathKind::InboundEstablished
            | PathKind::OutboundReply
            | PathKind::NewConnection
            | PathKind::PassedUntouched => Hook::Xdp,
            _ => Hook::Tc,
        }
    }

    pub fn program(self) -> &'static str {
        match self {
            PathKind::InboundReply | PathKind::OutboundEstablished | PathKind::OutboundNew => {
                program_names::LAN_INGRESS
            }
            PathKind::InboundEstablishedTc
            | PathKind::OutboundReplyTc
            | PathKind::NewConnectionTc => program_names::UPLINK_INGRESS,
            PathKind::EgressTranslated => program_names::UPLINK_EGRESS,
            _ => program_names::UPLINK_INGRESS_XDP,
        }
    }

    /// The floor program for this hook (`masq-ebpf/src/floor.rs`); none for a packet masq
    /// leaves alone (the floor would take it for a new connection).
    pub fn floor(self) -> Option<&'static str> {
        Some(match self.program() {
            program_names::LAN_INGRESS => program_names::FLOOR_LAN_INGRESS,
            program_names::UPLINK_INGRESS => program_names::FLOOR_UPLINK_INGRESS,
            program_names::UPLINK_EGRESS => program_names::FLOOR_UPLINK_EGRESS,
            _ if self == PathKind::PassedUntouched => return None,
            _ => program_names::FLOOR_UPLINK_INGRESS_XDP,
        })
    }

    /// A packet that opens a connection (each repeat a new one).
    pub fn opens(self) -> bool {
        matches!(self, PathKind::NewConnection | PathKind::OutboundNew | PathKind::NewConnectionTc)
    }

    /// The same packet through masq's XDP program in XDP mode (the TC-mode paths' twins).
    fn xdp_twin(self) -> PathKind {
        match self {
            PathKind::InboundEstablishedTc => PathKind::InboundEstablished,
            PathKind::OutboundReplyTc => PathKind::OutboundReply,
            PathKind::NewConnectionTc => PathKind::NewConnection,
            other => other,
        }
    }

    fn ingress(self) -> &'static str {
        match self.program() {
            program_names::LAN_INGRESS => "eth0",
            _ => "eth4",
        }
    }

    fn expected_return(self) -> u32 {
        match self {
            PathKind::PassedUntouched => XDP_PASS,
            PathKind::EgressTranslated => TC_ACT_OK,
            _ if self.hook() == Hook::Tc => TC_ACT_REDIRECT,
            _ => XDP_REDIRECT,
        }
    }

    /// Counters that must grow by exactly one per repeat: proof the measured path is this one.
    fn counters(self) -> &'static [Counter] {
        match self.xdp_twin() {
            PathKind::InboundEstablished | PathKind::OutboundReply => {
                &[Counter::ToLanTranslated, Counter::FastPathRedirect]
            }
            PathKind::InboundReply | PathKind::OutboundEstablished => {
                &[Counter::ToUplinkTranslated, Counter::FastPathRedirect]
            }
            PathKind::NewConnection => &[Counter::InboundNew, Counter::FastPathRedirect],
            PathKind::OutboundNew => &[Counter::OutboundNew, Counter::FastPathRedirect],
            PathKind::PassedUntouched => &[Counter::PassedUntouched],
            _ => &[Counter::EgressTranslated],
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgramSize {
    pub program: &'static str,
    /// Bytes of machine code after JIT: what the instruction cache has to hold per packet.
    pub jited_bytes: u32,
    /// BPF instructions after the verifier's rewrites (8 bytes each).
    pub xlated_bytes: Option<u32>,
    pub verified_insns: Option<u32>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgResults {
    pub programs: Vec<ProgramSize>,
    /// One dependent random read in a buffer as large as the 1M-connection table (pointer chase
    /// from userspace, 4 KiB pages): what each cache- and TLB-missing map access costs here.
    pub random_read_ns: f64,
    pub random_read_buffer_mib: usize,
    pub repeat: u32,
    pub runs: usize,
    pub conn_capacity: u32,
    pub spread_max: usize,
    pub new_conn_repeat: u32,
    pub levels: Vec<LevelResult>,
    /// inbound_established, hot, with and without the ip rules masq installs: the FIB lookups
    /// use `BPF_FIB_LOOKUP_DIRECT`, so the rules must not cost anything.
    pub policy_rules: RulesCost,
    /// What the RFC 1812 checks cost (hot, smallest table): each path with and without them.
    pub validation: Vec<PairedCost>,
    /// The same checks timed alone (`cost.rs`), sixteen per packet: their cost per packet.
    pub validation_alone: AloneCost,
    /// Connection events: what the ring and the daemon's recording path sustain.
    pub events: EventThroughput,
}

/// One piece of the dataplane timed alone: a program doing it `times` times per packet against
/// the same program doing it none, in paired runs on one frame.
#[derive(Clone, Debug, Serialize)]
pub struct AloneCost {
    pub path: PathKind,
    pub times: u32,
    /// Per pair: (with − without) / `times`.
    pub per_packet_ns: Stat,
    pub with_ns: Stat,
    pub without_ns: Stat,
}

/// A path's cost with and without a feature (RFC 1812 checks, connection events), from paired
/// single runs.
#[derive(Clone, Debug, Serialize)]
pub struct PairedCost {
    pub path: PathKind,
    pub with_ns: Stat,
    pub without_ns: Stat,
    /// Per pair: with minus without.
    pub cost_ns: Stat,
}

#[derive(Clone, Debug, Serialize)]
pub struct RulesCost {
    pub path: PathKind,
    pub with_rules_ns: Stat,
    pub without_rules_ns: Stat,
}

/// The largest table whose expiry pass the bench times: at 4M connections one pass takes about
/// 14 s here, which the six-minute budget cannot spare.
const SWEEP_TIMED_UP_TO: usize = 1 << 20;

#[derive(Clone, Debug, Serialize)]
pub struct LevelResult {
    /// Connections in the table (two entries each).
    pub conns: usize,
    pub entries: usize,
    pub fill_seconds: f64,
    pub paths: Vec<PathResult>,
    /// New connection, one `BPF_PROG_TEST_RUN` per SYN (repeat=1), median, minus the same for a
    /// trivial program: a cross-check of the harness figure that carries the timer's overhead.
    pub new_conn_repeat1_ns: Stat,
    /// Untouched packet by plain `repeat` (no harness needed: nothing is rewritten) minus a
    /// trivial program's plain `repeat`: a cross-check of the harness.
    pub untouched_plain_ns: Stat,
    /// The daemon's expiry pass over this table, nothing due: in the kernel (`masq_expire`
    /// walking both tables, stamping bindings, then sweeping them), one run: seconds.
    pub sweep_seconds: Option<f64>,
    /// The same pass made by reading the tables out (both read in batches and paired, the
    /// bindings swept against them: the fallback, and what the daemon did before), one run:
    /// seconds. Not above [`SWEEP_TIMED_UP_TO`] connections.
    pub readout_sweep_seconds: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PathResult {
    pub path: PathKind,
    pub program: &'static str,
    pub describe: &'static str,
    pub hot: Measured,
    pub spread: Measured,
    /// Flows drawn from a Zipf distribution (s = 1) over the table: a few heavy flows and many
    /// light ones, as real gateways see (established paths only).
    pub zipf: Option<Measured>,
    /// The floor program on the same frames and table, run by run beside masq.
    pub floor: Option<FloorResult>,
}

/// A floor program's figures for one path, and masq over the floor per run (masq's net time
/// over the floor's, each minus the same trivial run).
#[derive(Clone, Debug, Serialize)]
pub struct FloorResult {
    pub program: &'static str,
    pub hot: Measured,
    pub spread: Measured,
    pub zipf: Option<Measured>,
    pub hot_ratio: Stat,
    pub spread_ratio: Stat,
    pub zipf_ratio: Option<Stat>,
}

/// One pattern's runs: masq, and the floor beside it.
#[derive(Clone)]
struct Paired {
    masq: Measured,
    floor: Option<(Measured, Stat)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Measured {
    /// Distinct flows cycled through.
    pub flows: usize,
    pub repeat: u32,
    /// masq's program alone: `raw_ns - harness_ns`, per run.
    pub ns: Stat,
    /// Harness + masq's program, the kernel's mean per repeat.
    pub raw_ns: Stat,
    /// Harness + a trivial program.
    pub harness_ns: Stat,
}

/// Runs the program benchmarks in a throw-away namespace; `work_dir` holds scratch files and
/// `pin_dir` (on bpffs) the dataplane's pins, both removed at the end.
/// `None` after a profiling run (`ProgOptions::profile`).
pub fn run(opts: &ProgOptions, work_dir: &Path, pin_dir: &Path) -> Result<Option<ProgResults>> {
    let ns = NetNs::create("masq-bench")?;
    setup_namespace(&ns, work_dir)?;
    let (opts, pins, work) = (opts.clone(), pin_dir.to_path_buf(), work_dir.to_path_buf());
    let result = ns.enter(move || in_namespace(&opts, &pins, &work));
    remove_pins(pin_dir)?;
    result
}

/// gw's side of the seed topology with permanent neighbours for both ISP routers and every LAN
/// host; masq's ip rules come later ([`ProgBench::add_rules`]).
fn setup_namespace(ns: &NetNs, work_dir: &Path) -> Result<()> {
    let mut neighbours = progkit::ROUTERS.to_vec();
    neighbours.extend((1..=253).map(|host| (lan_host(host), ETH0_PEER_MAC, "eth0")));
    progkit::build_seed_gateway(ns, &neighbours, work_dir)
}

/// The rules `masq run` installs (policy_tables.rs), as `ip rule <verb>` lines: XDP's lookups in
/// main walk them. Added after the first measurement ([`ProgBench::add_rules`]).
fn policy_rules(verb: &str) -> Vec<String> {
    let uplinks = [(GW_ISP_A, DSL_TABLE, DSL_MARK), (GW_ISP_B, ISPB_TABLE, ISPB_MARK)];
    let mut lines = Vec::new();
    for (i, (address, table, mark)) in uplinks.into_iter().enumerate() {
        let (from, fwmark) = (RULE_PRIORITY_FROM as usize + i, RULE_PRIORITY_FWMARK as usize + i);
        lines.push(format!("rule {verb} from {address} lookup {table} priority {from}"));
        lines.push(format!(
            "rule {verb} fwmark {mark:#x}/{DEFAULT_MARK_MASK:#x} lookup {table} priority {fwmark}"
        ));
    }
    lines
}

/// Runs `ip <line>` for each line in the calling thread's namespace.
fn ip_lines(lines: &[String]) -> Result<()> {
    for line in lines {
        let out = std::process::Command::new("ip").args(line.split_whitespace()).output()?;
        ensure!(out.status.success(), "ip {line}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// The seed config with `conn_capacity` connections.
pub fn bench_config(conn_capacity: u32) -> Result<Config> {
    let text = format!("{}\n[dataplane]\nconn_capacity = {conn_capacity}\n", super::EXAMPLE_CONFIG);
    Config::from_toml(&text).map_err(|e| anyhow!("bench config: {e}"))
}

fn in_namespace(
    opts: &ProgOptions,
    pin_dir: &Path,
    work_dir: &Path,
) -> Result<Option<ProgResults>> {
    let cfg = bench_config(opts.conn_capacity)?;
    let host = HostInterfaces::read()?;
    cfg.check_host(&host)?;
    let mut dp = Dataplane::load(&cfg, pin_dir)?;
    let states = crate::follow::resolve_all(&cfg.uplinks, &host, &[]);
    pinned::write_config(pin_dir, &cfg, &host, &states, &[])?;
    let masq_programs = load_programs(&mut dp, &MEASURED)?;
    let floors = load_programs(&mut dp, &FLOORS)?;
    let costs = load_programs(&mut dp, &COSTS)?;
    dp.link_tail_calls()?;
    let programs = MEASURED
        .into_iter()
        .chain([program_names::LAN_INGRESS_NEW, program_names::LAN_INGRESS_HAIRPIN])
        .chain(FLOORS)
        .chain(COSTS)
        .map(|name| program_size(&dp, name))
        .collect::<Result<_>>()?;
    let ifindex = |name: &str| {
        host.get(name).map(|i| i.index).ok_or_else(|| anyhow!("no {name} in the bench namespace"))
    };
    set_floor_routes(&mut dp, ifindex("eth0")?, ifindex("eth4")?)?;
    let (eth0, eth4) = (ifindex("eth0")?, ifindex("eth4")?);
    let ctx = Contexts {
        eth4: PathCtx::of(Ctx::Xdp { rx: eth4 }),
        eth4_tc: PathCtx::of(Ctx::Tc { ingress: eth4, ifindex: eth4 }),
        eth0: PathCtx::of(Ctx::Tc { ingress: eth0, ifindex: eth0 }),
    };
    let harness = Harness::new(opts.spread_max)?;
    let mut bench = ProgBench {
        opts,
        dp,
        programs: masq_programs,
        floors,
        costs,
        ctx,
        zipf: Zipf::default(),
        harness,
        rng: Rng::new(0x6d61_7371),
        population: Population::default(),
        next_fresh: 0,
        fresh_cap: u32::MAX,
        expiry: None,
    };
    bench.fill_to(opts.levels.first().copied().unwrap_or(1_000))?;
    if let Some(name) = &opts.profile {
        ip_lines(&policy_rules("add"))?;
        return bench.profile(name).map(|()| None);
    }
    let policy_rules = bench.add_rules(PathKind::InboundEstablished)?;
    let validation =
        [PathKind::InboundEstablished, PathKind::InboundReply, PathKind::NewConnection]
            .into_iter()
            .map(|kind| bench.validation_cost(kind))
            .collect::<Result<Vec<_>>>()?;
    for v in &validation {
        eprintln!(
            "masq bench: prog: validation on {:<20} {:+.1} ns ({:.1} with, {:.1} without)",
            v.path.name(),
            v.cost_ns.median,
            v.with_ns.median,
            v.without_ns.median
        );
    }
    let validation_alone = bench.validation_alone(PathKind::InboundEstablished)?;
    eprintln!(
        "masq bench: prog: validation alone on {}: {:.1} ns per packet ({} checks: {:.0} ns, none: \
         {:.0} ns)",
        validation_alone.path.name(),
        validation_alone.per_packet_ns.median,
        validation_alone.times,
        validation_alone.with_ns.median,
        validation_alone.without_ns.median
    );
    let mut levels = Vec::new();
    for &conns in &opts.levels {
        let started = Instant::now();
        bench.fill_to(conns)?;
        let fill_seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "masq bench: prog: table at {conns} connections ({} entries, filled in {fill_seconds:.1} s)",
            2 * conns
        );
        let mut paths = Vec::new();
        for kind in PathKind::ALL {
            let result = bench.measure_path(kind)?;
            let zipf = result.zipf.as_ref().map_or(f64::NAN, |z| z.ns.median);
            let floor = result.floor.as_ref().map_or(String::new(), |f| {
                format!(
                    "  floor {:>5.1} / {:>5.1}: x{:.2} / x{:.2}{}",
                    f.hot.ns.median,
                    f.spread.ns.median,
                    f.hot_ratio.median,
                    f.spread_ratio.median,
                    f.zipf_ratio.as_ref().map_or(String::new(), |z| format!(" / x{:.2}", z.median))
                )
            });
            eprintln!(
                "masq bench: prog:   {:<24} hot {:>6.1} ns  spread({}) {:>6.1} ns  zipf {:>6.1} ns{floor}",
                kind.name(),
                result.hot.ns.median,
                result.spread.flows,
                result.spread.ns.median,
                zipf,
            );
            paths.push(result);
        }
        let new_conn_repeat1_ns = bench.new_conn_repeat1()?;
        let untouched_plain_ns = bench.untouched_plain()?;
        let sweep_seconds = Some(bench.sweep_seconds(&cfg, true)?);
        let readout_sweep_seconds =
            (conns <= SWEEP_TIMED_UP_TO).then(|| bench.sweep_seconds(&cfg, false)).transpose()?;
        let ms = |s: Option<f64>| s.map_or("-".to_string(), |s| format!("{:.1} ms", s * 1e3));
        eprintln!(
            "masq bench: prog:   expiry pass over {conns} connections: in the kernel {}, read out {}",
            ms(sweep_seconds),
            ms(readout_sweep_seconds),
        );
        levels.push(LevelResult {
            conns,
            entries: 2 * conns,
            fill_seconds,
            paths,
            new_conn_repeat1_ns,
            untouched_plain_ns,
            sweep_seconds,
            readout_sweep_seconds,
        });
    }
    let events = bench.event_throughput(&cfg, work_dir)?;
    eprintln!(
        "masq bench: prog: events: {:+.1} ns on new_connection; recording {:.0} ns each; back to back {:.0}/s for {:.1} s: {} of {} \
         recorded, {} lost; bursts of {} at {:.0}/s: {:.0} lost (ring holds {})",
        events.cost.cost_ns.median,
        events.record_ns.median,
        events.paced_rate,
        events.paced_seconds,
        events.paced_recorded,
        events.paced_events,
        events.paced_lost,
        events.burst,
        events.burst_created_per_s.median,
        events.burst_lost.median,
        events.ring_records
    );
    let random_read_buffer_mib = if opts.conn_capacity >= 1_000_000 { 256 } else { 64 };
    let random_read_ns = random_read_ns(random_read_buffer_mib << 20);
    Ok(Some(ProgResults {
        programs,
        random_read_ns,
        random_read_buffer_mib,
        repeat: opts.repeat,
        runs: opts.runs,
        conn_capacity: opts.conn_capacity,
        spread_max: opts.spread_max,
        new_conn_repeat: opts.new_conn_repeat,
        levels,
        policy_rules,
        validation,
        validation_alone,
        events,
    }))
}

/// The floor programs' outputs: toward the LAN as masq sends to isolde (new connections to
/// isolde), toward ISP A as masq sends there (new connections from 67.17.28.12).
fn set_floor_routes(dp: &mut Dataplane, eth0: u32, eth4: u32) -> Result<()> {
    let map = dp.ebpf_mut().map_mut(map_names::FLOOR_ROUTES).context("no FLOOR_ROUTES")?;
    let mut routes: Array<_, FloorRoute> = Array::try_from(map)?;
    let route = |ifindex, addr, smac, dmac| FloorRoute {
        ifindex,
        new_addr: wire_addr(addr),
        eth: eth_addrs(dmac, smac),
    };
    routes.set(FLOOR_TO_LAN, route(eth0, ISOLDE, ETH0_MAC, ETH0_PEER_MAC), 0)?;
    routes.set(FLOOR_TO_UPLINK, route(eth4, GW_ISP_A, ETH4_MAC, ISP_A_ROUTER_MAC), 0)?;
    Ok(())
}

/// masq's programs the paths run (the tail-called ones come with `masq_lan_in`).
const MEASURED: [&str; 4] = [
    program_names::UPLINK_INGRESS_XDP,
    program_names::LAN_INGRESS,
    program_names::UPLINK_INGRESS,
    program_names::UPLINK_EGRESS,
];

/// The RFC 1812 checks timed alone (`cost.rs`): sixteen per packet, and none.
const COSTS: [&str; 2] = [program_names::COST_VALIDATE_16, program_names::COST_VALIDATE_0];
const COST_TIMES: u32 = 16;

/// Their floors (`PathKind::floor`).
const FLOORS: [&str; 4] = [
    program_names::FLOOR_UPLINK_INGRESS_XDP,
    program_names::FLOOR_LAN_INGRESS,
    program_names::FLOOR_UPLINK_INGRESS,
    program_names::FLOOR_UPLINK_EGRESS,
];

fn load_programs(
    dp: &mut Dataplane,
    names: &[&'static str],
) -> Result<HashMap<&'static str, ProgramFd>> {
    names.iter().map(|&name| Ok((name, load_program(dp, name)?))).collect()
}

fn load_program(dp: &mut Dataplane, name: &str) -> Result<ProgramFd> {
    let prog = dp.ebpf_mut().program_mut(name).ok_or_else(|| anyhow!("program {name} missing"))?;
    match prog {
        Program::Xdp(p) => p.load()?,
        Program::SchedClassifier(p) => p.load()?,
        _ => bail!("{name}: unexpected program type"),
    }
    Ok(prog.fd()?.try_clone()?)
}

/// Mean time of one step of a pointer chase through a random single cycle (Sattolo) over
/// `bytes` of memory.
fn random_read_ns(bytes: usize) -> f64 {
    let n = bytes / std::mem::size_of::<usize>();
    let mut next: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(0x6368_6173);
    for i in (1..n).rev() {
        let j = rng.below(i as u64) as usize;
        next.swap(i, j);
    }
    let steps = 4_000_000;
    let mut at = 0;
    let started = Instant::now();
    for _ in 0..steps {
        at = next[at];
    }
    let ns = started.elapsed().as_nanos() as f64 / f64::from(steps);
    std::hint::black_box(at);
    ns
}

fn program_size(dp: &Dataplane, name: &'static str) -> Result<ProgramSize> {
    let info = match dp.ebpf().program(name) {
        Some(Program::Xdp(p)) => p.info()?,
        Some(Program::SchedClassifier(p)) => p.info()?,
        _ => bail!("program {name} missing"),
    };
    Ok(ProgramSize {
        program: name,
        jited_bytes: info.size_jitted(),
        xlated_bytes: info.size_translated(),
        verified_insns: info.verified_instruction_count(),
    })
}

/// A path's context (a frame received on, and processed at, one device): for the kit's runner,
/// and its bytes for the harness's 64-byte frames.
struct PathCtx {
    ctx: Ctx,
    bytes: Vec<u8>,
}

impl PathCtx {
    fn of(ctx: Ctx) -> Self {
        Self { ctx, bytes: ctx.bytes(FRAME_LEN) }
    }
}

struct Contexts {
    eth4: PathCtx,
    eth4_tc: PathCtx,
    eth0: PathCtx,
}

/// How a spread run draws its flows from the table.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pick {
    Uniform,
    /// Zipf with s = 1 over the flows (rank = fill order, which is random).
    Zipf,
}

/// Zipf (s = 1) sampling over `n` ranks by inverse CDF, the CDF kept for the last `n`.
#[derive(Default)]
struct Zipf {
    cdf: Vec<f64>,
}

impl Zipf {
    fn sample(&mut self, rng: &mut Rng, n: usize) -> usize {
        if self.cdf.len() != n {
            let mut sum = 0.0;
            self.cdf = (1..=n)
                .map(|k| {
                    sum += 1.0 / k as f64;
                    sum
                })
                .collect();
        }
        let total = self.cdf.last().copied().unwrap_or(1.0);
        let u = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * total;
        self.cdf.partition_point(|&c| c < u).min(n - 1)
    }
}

/// The harness maps and programs, one per hook.
struct Harness {
    state: OwnedFd,
    frames: OwnedFd,
    max_slots: usize,
    xdp: HookHarness,
    tc: HookHarness,
}

struct HookHarness {
    prog: OwnedFd,
    prog_array: OwnedFd,
    trivial: OwnedFd,
}

impl Harness {
    fn new(max_slots: usize) -> Result<Self> {
        ensure!(max_slots.is_power_of_two(), "spread_max must be a power of two");
        let state =
            bpf::create_map(bpf::BPF_MAP_TYPE_ARRAY, 4, STATE_LEN as u32, 1, "bench_state")?;
        let frames = bpf::create_map(
            bpf::BPF_MAP_TYPE_ARRAY,
            4,
            FRAME_LEN as u32,
            max_slots as u32,
            "bench_frames",
        )?;
        let hook = |hook: Hook, trivial_ret: u32| -> Result<HookHarness> {
            let prog_array = bpf::create_map(bpf::BPF_MAP_TYPE_PROG_ARRAY, 4, 4, 1, "bench_tail")?;
            let prog = bpf::load_program(
                hook,
                &bpf::harness(hook, &state, &frames, &prog_array),
                "bench_harness",
            )?;
            let trivial =
                bpf::load_program(hook, &bpf::trivial(trivial_ret as i32), "bench_trivial")?;
            Ok(HookHarness { prog, prog_array, trivial })
        };
        Ok(Harness {
            xdp: hook(Hook::Xdp, XDP_PASS)?,
            tc: hook(Hook::Tc, TC_ACT_OK)?,
            state,
            frames,
            max_slots,
        })
    }

    fn of(&self, hook: Hook) -> &HookHarness {
        match hook {
            Hook::Xdp => &self.xdp,
            Hook::Tc => &self.tc,
        }
    }

    fn load_frames(&self, frames: &[Vec<u8>]) -> Result<()> {
        ensure!(frames.len() <= self.max_slots, "too many frames");
        for (slot, frame) in frames.iter().enumerate() {
            ensure!(frame.len() == FRAME_LEN, "harness frames are {FRAME_LEN} bytes");
            bpf::map_update(&self.frames, &(slot as u32).to_ne_bytes(), frame)?;
        }
        Ok(())
    }

    /// One timed run: `repeat` times, frame `i % slots` (slots a power of two); `target` in the
    /// tail-call slot. `dst_mac` goes into the run's own buffer: the harness writes every frame
    /// itself, but the kernel classifies the skb (`pkt_type`) by that buffer's destination MAC
    /// before the program runs (masq leaves frames for other hosts alone).
    fn run(
        &self,
        hook: Hook,
        target: &impl std::os::fd::AsFd,
        slots: usize,
        repeat: u32,
        ctx: &[u8],
        dst_mac: Mac,
    ) -> Result<bpf::RunResult> {
        let h = self.of(hook);
        let mut state = [0u8; STATE_LEN];
        state[8..16].copy_from_slice(&(slots as u64 - 1).to_ne_bytes());
        bpf::map_update(&self.state, &0u32.to_ne_bytes(), &state)?;
        let target = target.as_fd().as_raw_fd() as u32;
        bpf::map_update(&h.prog_array, &0u32.to_ne_bytes(), &target.to_ne_bytes())?;
        let mut data = [0u8; FRAME_LEN];
        data[..6].copy_from_slice(&dst_mac);
        let result = bpf::test_run(h.prog.as_fd(), &data, ctx, repeat)?;
        ensure!(
            result.retval != hook.harness_failed(),
            "the harness could not run its program (frame or tail call failed)"
        );
        Ok(result)
    }
}

/// The connections filled in so far: half inbound (clients of the service published on
/// 67.17.28.10), half outbound (LAN hosts to servers, masqueraded behind 67.17.28.12).
#[derive(Default)]
struct Population {
    inbound: Vec<Endpoint>,
    outbound: Vec<(Endpoint, Endpoint)>,
    keys: HashSet<FlowKey>,
}

fn key(from: Endpoint, to: Endpoint) -> FlowKey {
    FlowKey::new(
        wire_addr(from.addr),
        wire_addr(to.addr),
        from.port.to_be(),
        to.port.to_be(),
        IPPROTO_TCP,
    )
}

/// Both entries of a connection `from -> to` that becomes `new_from -> new_to`, as masq's
/// `conntrack::create` writes them after the handshake.
fn connection(
    from: Endpoint,
    to: Endpoint,
    new_from: Endpoint,
    new_to: Endpoint,
    flags: u8,
    now_ns: u64,
) -> [(FlowKey, ConnEntry); 2] {
    let now_tick = masq_common::tick(now_ns);
    let entry = |xlate: FlowKey, flags: u8| ConnEntry {
        xlate: Tuple4::of(&xlate),
        uplink: 0,
        flags,
        tcp_seen: TCP_SEEN_SYN | TCP_SEEN_ACK,
        created_tick: now_tick,
        last_seen_tick: now_tick,
        packets: 3,
        bytes: 180,
        ..ConnEntry::default()
    };
    [
        (key(from, to), entry(key(new_from, new_to), flags)),
        (key(new_to, new_from), entry(key(to, from), flags | CONN_F_REPLY)),
    ]
}

struct ProgBench<'a> {
    opts: &'a ProgOptions,
    dp: Dataplane,
    /// masq's programs and the floor programs, loaded, by name.
    programs: HashMap<&'static str, ProgramFd>,
    floors: HashMap<&'static str, ProgramFd>,
    /// The cost programs (`COSTS`).
    costs: HashMap<&'static str, ProgramFd>,
    ctx: Contexts,
    zipf: Zipf,
    harness: Harness,
    rng: Rng,
    population: Population,
    /// Next counter value for fresh new-connection sources (never reused in one bench).
    next_fresh: u64,
    /// At most this many new connections per timed run (the event cost keeps them within
    /// the ring).
    fresh_cap: u32,
    /// The daemon's in-kernel expiry pass, loaded on first use.
    expiry: Option<KernelExpiry>,
}

impl ProgBench<'_> {
    fn conns(&mut self) -> Result<ConnTable<MapData>> {
        Ok(pinned::conn_tables(self.dp.pin_dir())?.confirmed)
    }

    /// Adds random distinct connections until there are `conns`.
    fn fill_to(&mut self, conns: usize) -> Result<()> {
        let now = clock_ns();
        let public = Endpoint::new(PUBLIC_ISP_A, 80);
        let isolde = Endpoint::new(ISOLDE, 80);
        let mut pending = Vec::new();
        let pop = &mut self.population;
        let rng = &mut self.rng;
        while pop.inbound.len() + pop.outbound.len() < conns {
            let inbound = pop.inbound.len() <= pop.outbound.len();
            let port = rng.port();
            let pair = if inbound {
                // Clients anywhere in 100.64.0.0/10.
                let client = Endpoint::new(Ipv4Addr::from(0x6440_0000 | rng.bits(22)), port);
                connection(client, public, client, isolde, CONN_F_INBOUND, now)
            } else {
                let lan = Endpoint::new(lan_host(1 + rng.below(253) as u8), port);
                // Servers anywhere in 45.0.0.0/8, HTTPS.
                let server = Endpoint::new(Ipv4Addr::from(0x2d00_0000 | rng.bits(24)), 443);
                let masqueraded = Endpoint::new(GW_ISP_A, port);
                connection(lan, server, masqueraded, server, 0, now)
            };
            if pair.iter().any(|(k, _)| pop.keys.contains(k)) {
                continue;
            }
            for (k, _) in &pair {
                pop.keys.insert(*k);
            }
            if inbound {
                pop.inbound.push(endpoint_of(&pair[0].0, true));
            } else {
                pop.outbound.push((endpoint_of(&pair[0].0, true), endpoint_of(&pair[0].0, false)));
            }
            pending.extend(pair);
        }
        let mut table = self.conns()?;
        for (k, v) in &pending {
            table.insert(k, v, 0).context("filling CONNS")?;
        }
        Ok(())
    }

    /// One expiry pass as a busy daemon makes it every interval (`in_kernel`: connections
    /// stamped, then the bindings swept), or by reading the tables out, timed.
    fn sweep_seconds(&mut self, cfg: &Config, in_kernel: bool) -> Result<f64> {
        let timeouts = &cfg.dataplane.timeouts;
        if !in_kernel {
            let pass = crate::expiry::expire(self.dp.pin_dir(), timeouts, None, false)?;
            ensure!(!pass.in_kernel && pass.expired == 0, "the read-out pass removed connections");
            return Ok(pass.took.as_secs_f64());
        }
        if self.expiry.is_none() {
            let mut kernel = KernelExpiry::load(&mut self.dp)?;
            // Its first sweep also checks the mappings, which the daemon does once.
            kernel.run(timeouts, clock_ns(), true)?;
            self.expiry = Some(kernel);
        }
        let kernel = self.expiry.as_mut().expect("loaded");
        let started = Instant::now();
        let found = kernel.run(timeouts, clock_ns(), true)?;
        let took = started.elapsed();
        ensure!(found.expired == 0, "the expiry pass removed {} bench connections", found.expired);
        Ok(took.as_secs_f64())
    }

    fn read_counters(&self) -> Result<Vec<u64>> {
        let map =
            self.dp.ebpf().map(map_names::COUNTERS).ok_or_else(|| anyhow!("COUNTERS missing"))?;
        let array: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(map)?;
        pinned::counter_totals(&array)
    }

    fn counter_delta(before: &[u64], after: &[u64], counter: Counter) -> u64 {
        let i = Counter::ALL.iter().position(|c| *c == counter).expect("listed");
        after[i] - before[i]
    }

    /// Frames of `kind` for `flows` flows sampled from the table (one, for hot runs).
    fn frames(&mut self, kind: PathKind, flows: usize, pick: Pick) -> Vec<Vec<u8>> {
        let public = Endpoint::new(PUBLIC_ISP_A, 80);
        let isolde = Endpoint::new(ISOLDE, 80);
        let from_uplink =
            |from, to, flags| frames::tcp(ETH4_MAC, ISP_A_ROUTER_MAC, from, to, flags);
        let from_lan = |from, to| frames::tcp(ETH0_MAC, ETH0_PEER_MAC, from, to, TCP_ACK);
        let pop = &self.population;
        let (rng, zipf) = (&mut self.rng, &mut self.zipf);
        let mut index = |len: usize| match pick {
            Pick::Uniform => rng.below(len as u64) as usize,
            Pick::Zipf => zipf.sample(rng, len),
        };
        (0..flows)
            .map(|_| match kind.xdp_twin() {
                PathKind::InboundEstablished => {
                    from_uplink(pop.inbound[index(pop.inbound.len())], public, TCP_ACK)
                }
                PathKind::InboundReply => from_lan(isolde, pop.inbound[index(pop.inbound.len())]),
                PathKind::OutboundEstablished => {
                    let (lan, server) = pop.outbound[index(pop.outbound.len())];
                    from_lan(lan, server)
                }
                PathKind::OutboundReply => {
                    let (lan, server) = pop.outbound[index(pop.outbound.len())];
                    from_uplink(server, Endpoint::new(GW_ISP_A, lan.port), TCP_ACK)
                }
                PathKind::NewConnection => from_uplink(new_conn_source(0), public, TCP_SYN),
                PathKind::OutboundNew => new_lan_syn(0),
                PathKind::PassedUntouched => from_uplink(
                    Endpoint::new(CLIENT, 443),
                    Endpoint::new(GW_ISP_A, 1024 + index(64512) as u16),
                    TCP_ACK,
                ),
                // As the kernel forwarded it to eth4: its next hop's MAC, the TTL one lower.
                _ => {
                    let (lan, server) = pop.outbound[index(pop.outbound.len())];
                    frames::tcp_ttl(ISP_A_ROUTER_MAC, ETH4_MAC, lan, server, TCP_ACK, 63)
                }
            })
            .collect()
    }

    fn ctx(&self, kind: PathKind) -> &PathCtx {
        match (kind.ingress(), kind.hook()) {
            ("eth4", Hook::Xdp) => &self.ctx.eth4,
            ("eth4", Hook::Tc) => &self.ctx.eth4_tc,
            _ => &self.ctx.eth0,
        }
    }

    fn masq_fd(&self, kind: PathKind) -> &ProgramFd {
        &self.programs[kind.program()]
    }

    fn xdp_fd(&self) -> &ProgramFd {
        &self.programs[program_names::UPLINK_INGRESS_XDP]
    }

    /// One run through masq's program with `data_out`: the action and the rewrite must be the
    /// ones the path is about (catches a mis-seeded table before anything is timed).
    fn validate(&mut self, kind: PathKind, program: &str, frame: &[u8]) -> Result<()> {
        let prog = self.dp.ebpf().program(program).ok_or_else(|| anyhow!("no {program}"))?;
        let Run { ret, out, .. } = progkit::run(prog, self.ctx(kind).ctx, frame)?;
        ensure!(
            ret == kind.expected_return(),
            "{}: {program} returned {ret} instead of {} (table or namespace not as expected)",
            kind.name(),
            kind.expected_return()
        );
        let addr = |off: usize| Ipv4Addr::new(out[off], out[off + 1], out[off + 2], out[off + 3]);
        let (src, dst, ttl) = (addr(26), addr(30), out[22]);
        let ok = match kind.xdp_twin() {
            PathKind::InboundEstablished | PathKind::NewConnection => dst == ISOLDE && ttl == 63,
            PathKind::InboundReply => src == PUBLIC_ISP_A && ttl == 63,
            PathKind::OutboundEstablished | PathKind::OutboundNew => src == GW_ISP_A && ttl == 63,
            PathKind::OutboundReply => dst.octets()[..3] == GW_LAN.octets()[..3] && ttl == 63,
            PathKind::PassedUntouched => out[..FRAME_LEN] == frame[..],
            _ => src == GW_ISP_A && ttl == 63,
        };
        ensure!(ok, "{}: {program}: unexpected output {src} -> {dst} ttl {ttl}", kind.name());
        if kind.opens() {
            self.forget_fresh(kind, 0, 1)?;
        }
        Ok(())
    }

    /// Remove every pending connection (what new-connection runs left).
    fn forget_pending(&mut self) -> Result<()> {
        let mut tables = pinned::conn_tables(self.dp.pin_dir())?;
        let keys: Vec<FlowKey> = tables.pending.keys().filter_map(Result::ok).collect();
        for key in &keys {
            let _ = tables.pending.remove(key);
        }
        Ok(())
    }

    /// Remove what `OutboundNew` runs made: their (pending) connections and their bindings.
    fn forget_outbound_new(&mut self) -> Result<()> {
        self.forget_pending()?;
        use masq_common::{Binding, BindingKey, BoundPort, BoundPortKey, map_names};
        clear::<BindingKey, Binding>(self.dp.ebpf_mut().map_mut(map_names::BINDINGS))?;
        clear::<BoundPortKey, BoundPort>(self.dp.ebpf_mut().map_mut(map_names::BOUND_PORTS))
    }

    fn forget_new_conn(&mut self, src: Ipv4Addr) -> Result<()> {
        let client = Endpoint::new(src, NEW_CONN_PORT);
        let fwd = key(client, Endpoint::new(PUBLIC_ISP_A, 80));
        let reply = key(Endpoint::new(ISOLDE, 80), client);
        let mut tables = pinned::conn_tables(self.dp.pin_dir())?;
        let _ = tables.pending.remove(&fwd);
        let _ = tables.pending.remove(&reply);
        Ok(())
    }

    /// Flows the spread and Zipf patterns of `kind` cycle through: its side of the table, as a
    /// power of two, at most `spread_max`.
    fn spread_flows(&self, kind: PathKind) -> usize {
        match kind.xdp_twin() {
            _ if kind.opens() => 1,
            PathKind::PassedUntouched => self.opts.spread_max,
            PathKind::InboundEstablished | PathKind::InboundReply => self.population.inbound.len(),
            _ => self.population.outbound.len(),
        }
        .next_power_of_two()
        .min(self.opts.spread_max)
    }

    fn measure_path(&mut self, kind: PathKind) -> Result<PathResult> {
        let spread_flows = self.spread_flows(kind);
        let hot_frames = self.frames(kind, 1, Pick::Uniform);
        self.validate(kind, kind.program(), &hot_frames[0])?;
        if let Some(floor) = kind.floor() {
            self.validate(kind, floor, &hot_frames[0])?;
        }
        let hot = self.measure(kind, &hot_frames)?;
        let (spread, zipf) = if kind.opens() {
            (hot.clone(), None)
        } else {
            let frames = self.frames(kind, spread_flows, Pick::Uniform);
            let spread = self.measure(kind, &frames)?;
            let zipf = if kind == PathKind::PassedUntouched {
                None
            } else {
                let frames = self.frames(kind, spread_flows, Pick::Zipf);
                Some(self.measure(kind, &frames)?)
            };
            (spread, zipf)
        };
        let floor = kind.floor().map(|program| {
            let (hot_f, hot_ratio) = hot.floor.clone().expect("measured with its floor");
            let (spread_f, spread_ratio) = spread.floor.clone().expect("measured with its floor");
            let zipf_pair =
                zipf.as_ref().map(|z| z.floor.clone().expect("measured with its floor"));
            FloorResult {
                program,
                hot: hot_f,
                spread: spread_f,
                zipf: zipf_pair.as_ref().map(|(m, _)| m.clone()),
                hot_ratio,
                spread_ratio,
                zipf_ratio: zipf_pair.map(|(_, r)| r),
            }
        });
        Ok(PathResult {
            path: kind,
            program: kind.program(),
            describe: kind.describe(),
            hot: hot.masq,
            spread: spread.masq,
            zipf: zipf.map(|z| z.masq),
            floor,
        })
    }

    fn measure(&mut self, kind: PathKind, frames: &[Vec<u8>]) -> Result<Paired> {
        self.measure_runs(kind, frames, self.opts.runs, kind.floor())
    }

    /// `runs` timed runs of masq's program for `kind` over `frames`, each followed by the same
    /// run of `floor` (when given) and of a trivial program.
    fn measure_runs(
        &mut self,
        kind: PathKind,
        frames: &[Vec<u8>],
        runs: usize,
        floor: Option<&'static str>,
    ) -> Result<Paired> {
        let fresh = kind.opens();
        let repeat =
            if fresh { self.opts.new_conn_repeat.min(self.fresh_cap) } else { self.opts.repeat };
        let mut frames = frames.to_vec();
        let hook = kind.hook();
        let ctx = self.ctx(kind).bytes.clone();
        let floor_fd = match floor {
            Some(name) => {
                Some(self.floors.get(name).context("floor program not loaded")?.try_clone()?)
            }
            None => None,
        };
        let (mut raw, mut base, mut floor_raw) = (Vec::new(), Vec::new(), Vec::new());
        for run in 0..runs {
            let start = self.next_fresh;
            if fresh {
                frames = fresh_frames(kind, start, repeat);
            }
            if fresh || run == 0 {
                self.harness.load_frames(&frames)?;
            }
            let dst_mac = self.dst_mac(kind);
            let before = self.read_counters()?;
            let masq =
                self.harness.run(hook, self.masq_fd(kind), frames.len(), repeat, &ctx, dst_mac)?;
            let after = self.read_counters()?;
            ensure!(
                masq.retval == kind.expected_return(),
                "{}: returned {} under the harness",
                kind.name(),
                masq.retval
            );
            for &counter in kind.counters() {
                let delta = Self::counter_delta(&before, &after, counter);
                ensure!(
                    delta == u64::from(repeat),
                    "{}: counter {} grew by {delta}, expected {repeat}: another path was measured",
                    kind.name(),
                    counter.name()
                );
            }
            if fresh {
                self.forget_fresh(kind, start, repeat)?;
            }
            if let Some(fd) = &floor_fd {
                let got = self.harness.run(hook, fd, frames.len(), repeat, &ctx, dst_mac)?;
                ensure!(
                    got.retval == kind.expected_return(),
                    "{}: the floor returned {} under the harness",
                    kind.name(),
                    got.retval
                );
                if fresh {
                    self.forget_fresh(kind, start, repeat)?;
                }
                floor_raw.push(f64::from(got.duration_ns));
            }
            if fresh {
                self.next_fresh += u64::from(repeat).next_power_of_two();
            }
            let trivial = match hook {
                Hook::Xdp => &self.harness.xdp.trivial,
                Hook::Tc => &self.harness.tc.trivial,
            };
            let empty = self.harness.run(hook, trivial, frames.len(), repeat, &ctx, dst_mac)?;
            raw.push(f64::from(masq.duration_ns));
            base.push(f64::from(empty.duration_ns));
        }
        let measured = |raw: &[f64]| {
            let net: Vec<f64> = raw.iter().zip(&base).map(|(r, b)| r - b).collect();
            Measured {
                flows: frames.len(),
                repeat,
                ns: Stat::of(&net),
                raw_ns: Stat::of(raw),
                harness_ns: Stat::of(&base),
            }
        };
        let masq = measured(&raw);
        let floor = (!floor_raw.is_empty()).then(|| {
            let ratios: Vec<f64> = raw
                .iter()
                .zip(&floor_raw)
                .zip(&base)
                .map(|((m, f), b)| (m - b) / (f - b))
                .collect();
            (measured(&floor_raw), Stat::of(&ratios))
        });
        Ok(Paired { masq, floor })
    }

    /// Remove what one run of `repeat` new connections from `start` on made.
    fn forget_fresh(&mut self, kind: PathKind, start: u64, repeat: u32) -> Result<()> {
        if kind == PathKind::OutboundNew {
            return self.forget_outbound_new();
        }
        for n in start..start + u64::from(repeat) {
            self.forget_new_conn(new_conn_source(n).addr)?;
        }
        Ok(())
    }

    /// The destination MAC of `kind`'s frames: the kernel classifies the skb (`pkt_type`) by
    /// it before the program runs, and masq leaves frames for other hosts alone.
    fn dst_mac(&self, kind: PathKind) -> Mac {
        match kind.ingress() {
            "eth0" => ETH0_MAC,
            _ if kind == PathKind::EgressTranslated => ISP_A_ROUTER_MAC,
            _ => ETH4_MAC,
        }
    }

    /// `kind`'s hot figure in a namespace that never had an ip rule added, then with masq's.
    /// Once a namespace has a rule, the kernel keeps walking rules and looks local and main up
    /// as separate tables, even after the rules are deleted: so this comes first.
    fn add_rules(&mut self, kind: PathKind) -> Result<RulesCost> {
        let frames = self.frames(kind, 1, Pick::Uniform);
        let without_rules_ns = self.measure_runs(kind, &frames, self.opts.runs, None)?.masq.ns;
        ip_lines(&policy_rules("add"))?;
        let with_rules_ns = self.measure_runs(kind, &frames, self.opts.runs, None)?.masq.ns;
        Ok(RulesCost { path: kind, with_rules_ns, without_rules_ns })
    }

    /// `kind`'s hot figure with the RFC 1812 checks and without (`CFG_F_NO_VALIDATE`): single
    /// runs in pairs, each order as often, so the machine's drift (which moves a path by tens of
    /// ns from one second to the next here) cancels in each pair's difference.
    fn validation_cost(&mut self, kind: PathKind) -> Result<PairedCost> {
        let frames = self.frames(kind, 1, Pick::Uniform);
        let (mut with, mut without, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..self.opts.pairs {
            let mut got = [0.0; 2];
            for on in [pair % 2 == 0, pair % 2 == 1] {
                self.set_validation(on)?;
                let run = self.measure_runs(kind, &frames, 1, None).map(|p| p.masq);
                self.set_validation(true)?;
                got[usize::from(on)] = run?.ns.median;
            }
            without.push(got[0]);
            with.push(got[1]);
            diffs.push(got[1] - got[0]);
        }
        Ok(PairedCost {
            path: kind,
            with_ns: Stat::of(&with),
            without_ns: Stat::of(&without),
            cost_ns: Stat::of(&diffs),
        })
    }

    /// The RFC 1812 checks alone on `kind`'s hot frame: `COST_TIMES` checks per packet against
    /// none, in paired runs (each order as often) straight through BPF_PROG_TEST_RUN (the
    /// programs only read the frame), divided by `COST_TIMES`: the per-packet cost, that many
    /// times above the machine's noise.
    fn validation_alone(&mut self, kind: PathKind) -> Result<AloneCost> {
        ensure!(kind.hook() == Hook::Xdp, "the cost programs are XDP programs");
        let frame = self.frames(kind, 1, Pick::Uniform).remove(0);
        let ctx = self.ctx(kind).bytes.clone();
        let (mut with, mut without, mut per_packet) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..self.opts.pairs {
            let mut got = [0.0; 2];
            for checks in [pair % 2 == 0, pair % 2 == 1] {
                let name = COSTS[usize::from(!checks)];
                let fd = self.costs.get(name).context("cost program not loaded")?;
                let run = bpf::test_run(fd.as_fd(), &frame, &ctx, self.opts.repeat)?;
                ensure!(
                    run.retval == XDP_PASS,
                    "{name}: returned {} on {}",
                    run.retval,
                    kind.name()
                );
                got[usize::from(checks)] = f64::from(run.duration_ns);
            }
            without.push(got[0]);
            with.push(got[1]);
            per_packet.push((got[1] - got[0]) / f64::from(COST_TIMES));
        }
        Ok(AloneCost {
            path: kind,
            times: COST_TIMES,
            per_packet_ns: Stat::of(&per_packet),
            with_ns: Stat::of(&with),
            without_ns: Stat::of(&without),
        })
    }

    fn set_validation(&mut self, on: bool) -> Result<()> {
        pinned::set_config_flag(self.dp.pin_dir(), CFG_F_NO_VALIDATE, !on)
    }

    /// `ProgOptions::profile`: `name`'s hot frame through masq's program, then through its
    /// floor, back to back for `PROFILE_SECONDS` each.
    fn profile(&mut self, name: &str) -> Result<()> {
        let (path, spread) = match name.strip_suffix(":spread") {
            Some(path) => (path, true),
            None => (name, false),
        };
        let kind = PathKind::ALL
            .into_iter()
            .find(|k| k.name() == path)
            .ok_or_else(|| anyhow!("--profile: no path {path}"))?;
        ensure!(!(spread && kind.opens()), "--profile: {path} has no spread pattern");
        if spread {
            self.fill_to(PROFILE_SPREAD_CONNS)?;
        }
        let flows = if spread { self.spread_flows(kind) } else { 1 };
        let frames = self.frames(kind, flows, Pick::Uniform);
        if !kind.opens() {
            self.validate(kind, kind.program(), &frames[0])?;
            self.harness.load_frames(&frames)?;
        }
        let (hook, ctx, mac) = (kind.hook(), self.ctx(kind).bytes.clone(), self.dst_mac(kind));
        let floor = match kind.floor() {
            Some(name) => Some((name, self.floors[name].try_clone()?)),
            None => None,
        };
        let masq = (kind.program(), self.masq_fd(kind).try_clone()?);
        // Samples are attributed to the program's image; a LAN host's new connection runs in
        // the one `masq_lan_in` tail-calls.
        let mut programs = Vec::new();
        for (program, fd) in [Some(masq), floor].into_iter().flatten() {
            let (image, image_fd) = if kind == PathKind::OutboundNew && program == kind.program() {
                let new = program_names::LAN_INGRESS_NEW;
                let prog = self.dp.ebpf().program(new).ok_or_else(|| anyhow!("no {new}"))?;
                (new, prog.fd()?.try_clone()?)
            } else {
                (program, fd.try_clone()?)
            };
            programs.push((image, image_fd, fd));
        }
        let pattern = if kind.opens() {
            "a new connection per packet".to_string()
        } else if spread {
            format!("spread over {} flows of {PROFILE_SPREAD_CONNS} connections", frames.len())
        } else {
            "hot".to_string()
        };
        let mut report =
            format!("### Profile of {name}, {pattern} (`masq-lab bench --profile {name}`)\n\n");
        for (program, image_fd, fd) in programs {
            let repeat = self.opts.repeat;
            let profile =
                super::profile::record(program, image_fd.as_fd(), PROFILE_SECONDS, || {
                    if kind.opens() {
                        return self.fresh_burst(kind, &fd);
                    }
                    self.harness.run(hook, &fd, frames.len(), repeat, &ctx, mac)?;
                    Ok(u64::from(repeat))
                })?;
            eprintln!("masq bench: profile: {program}: {} packets", profile.packets);
            report += &profile.markdown(25, !kind.opens());
        }
        if kind.opens() {
            report += "Kernel symbols are left out: between bursts the bench removes the \
                       connections each made, and those map calls cannot be told from the \
                       program's own.\n";
        }
        println!("{report}");
        Ok(())
    }

    /// `new_conn_repeat` new connections through `fd` (masq's program or its floor), each packet
    /// a fresh source, then forgotten; how many.
    fn fresh_burst(&mut self, kind: PathKind, fd: &ProgramFd) -> Result<u64> {
        let repeat = self.opts.new_conn_repeat.min(self.fresh_cap);
        let start = self.next_fresh;
        let frames = fresh_frames(kind, start, repeat);
        self.harness.load_frames(&frames)?;
        let (ctx, mac) = (self.ctx(kind).bytes.clone(), self.dst_mac(kind));
        let run = self.harness.run(kind.hook(), fd, frames.len(), repeat, &ctx, mac)?;
        ensure!(run.retval == kind.expected_return(), "{}: returned {}", kind.name(), run.retval);
        self.forget_fresh(kind, start, repeat)?;
        self.next_fresh += u64::from(repeat).next_power_of_two();
        Ok(u64::from(repeat))
    }

    /// New connections one `BPF_PROG_TEST_RUN` each (repeat=1, valid checksums, distinct
    /// sources 12.x.y.z), median, minus the median of a trivial program run the same way.
    fn new_conn_repeat1(&mut self) -> Result<Stat> {
        let samples = self.opts.repeat1_samples;
        let ctx = self.ctx.eth4.bytes.clone();
        let public = Endpoint::new(PUBLIC_ISP_A, 80);
        let mut masq = Vec::with_capacity(samples);
        let mut empty = Vec::with_capacity(samples);
        let trivial = self.harness.xdp.trivial.as_fd();
        let base = self.next_fresh;
        for n in 0..samples as u64 {
            let [a, b, c, _] = ((base + n) as u32).to_le_bytes();
            let src = Endpoint::new(Ipv4Addr::new(12, a, b, c), NEW_CONN_PORT);
            let frame = frames::tcp(ETH4_MAC, ISP_A_ROUTER_MAC, src, public, TCP_SYN);
            let run = bpf::test_run(self.xdp_fd().as_fd(), &frame, &ctx, 1)?;
            ensure!(run.retval == XDP_REDIRECT, "new connection (repeat=1) not redirected");
            masq.push(f64::from(run.duration_ns));
            empty.push(f64::from(bpf::test_run(trivial, &frame, &ctx, 1)?.duration_ns));
        }
        for n in 0..samples as u64 {
            let [a, b, c, _] = ((base + n) as u32).to_le_bytes();
            self.forget_new_conn(Ipv4Addr::new(12, a, b, c))?;
        }
        let empty = Stat::of(&empty).median;
        Ok(Stat::of(&masq.iter().map(|m| m - empty).collect::<Vec<_>>()))
    }

    /// The untouched path by plain `repeat` (its frame is not modified, so no harness is needed).
    fn untouched_plain(&mut self) -> Result<Stat> {
        let frame = self.frames(PathKind::PassedUntouched, 1, Pick::Uniform).remove(0);
        let ctx = self.ctx.eth4.bytes.clone();
        let trivial = self.harness.xdp.trivial.as_fd();
        let mut net = Vec::new();
        for _ in 0..self.opts.runs {
            let masq = bpf::test_run(self.xdp_fd().as_fd(), &frame, &ctx, self.opts.repeat)?;
            ensure!(masq.retval == XDP_PASS, "untouched frame not passed");
            let empty = bpf::test_run(trivial, &frame, &ctx, self.opts.repeat)?;
            net.push(f64::from(masq.duration_ns) - f64::from(empty.duration_ns));
        }
        Ok(Stat::of(&net))
    }
}

/// A SYN from a new source per repeat (`start` on), each with valid checksums (masq verifies
/// them on every packet that opens a connection).
fn fresh_frames(kind: PathKind, start: u64, repeat: u32) -> Vec<Vec<u8>> {
    let public = Endpoint::new(PUBLIC_ISP_A, 80);
    (start..start + u64::from(repeat).next_power_of_two())
        .map(|n| match kind {
            PathKind::OutboundNew => new_lan_syn(n),
            _ => frames::tcp(ETH4_MAC, ISP_A_ROUTER_MAC, new_conn_source(n), public, TCP_SYN),
        })
        .collect()
}

/// The `n`th new connection's client: 11.x.y.z from `n`'s low 24 bits.
/// A SYN from tristan's port `n` (from 1024 on; the gateway's own range included, as clients
/// use it) to a server on the internet: a new endpoint each, so each makes a binding.
fn new_lan_syn(n: u64) -> Vec<u8> {
    let lan = Endpoint::new(TRISTAN, 1024 + (n % 64_000) as u16);
    frames::tcp(ETH0_MAC, ETH0_PEER_MAC, lan, Endpoint::new(CLIENT, 443), TCP_SYN)
}

/// Delete every entry of a hash map.
fn clear<K: aya::Pod, V: aya::Pod>(map: Option<&mut aya::maps::Map>) -> Result<()> {
    let map = map.ok_or_else(|| anyhow!("map missing"))?;
    let mut m: aya::maps::HashMap<_, K, V> = aya::maps::HashMap::try_from(map)?;
    let keys: Vec<K> = m.keys().filter_map(Result::ok).collect();
    for k in &keys {
        let _ = m.remove(k);
    }
    Ok(())
}

fn new_conn_source(n: u64) -> Endpoint {
    let [a, b, c, _] = (n as u32).to_le_bytes();
    Endpoint::new(Ipv4Addr::new(11, a, b, c), NEW_CONN_PORT)
}

/// Source (`true`) or destination endpoint of a key.
fn endpoint_of(key: &FlowKey, source: bool) -> Endpoint {
    let (addr, port) =
        if source { (key.src_addr, key.src_port) } else { (key.dst_addr, key.dst_port) };
    Endpoint::new(Ipv4Addr::from(addr.to_ne_bytes()), u16::from_be(port))
}

// ---------------------------------------------------------------------------------------------
// Memory

#[derive(Clone, Debug, Serialize)]
pub struct MemoryResult {
    pub capacities: Vec<MemoryPoint>,
    /// Size of one `nf_conntrack` slab object (the classic recipe's per-connection state, before
    /// its extensions and hash bucket), when /proc/slabinfo lists it.
    pub nf_conntrack_object_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryPoint {
    pub conns: u32,
    /// `dataplane.pending_capacity` that goes with it (the default for `conns`).
    pub pending: u32,
    pub entries: u32,
    /// `memlock:` (fdinfo) of every table that grows with the connections: `CONNS` (both
    /// directions, TCP window state included), `PENDING_CONNS`, and the mapping tables
    /// `BINDINGS` and `BOUND_PORTS`. Each is preallocated at its capacity.
    pub conns_bytes: u64,
    pub pending_bytes: u64,
    pub bindings_bytes: u64,
    pub bound_ports_bytes: u64,
    pub memlock_bytes: u64,
    /// All of them over `conns`.
    pub bytes_per_conn: f64,
}

/// Loads the dataplane (not attached) at each capacity and reads its tables' `memlock`.
pub fn memory(capacities: &[u32], pin_root: &Path) -> Result<MemoryResult> {
    let mut points = Vec::new();
    for &conns in capacities {
        let pin_dir: PathBuf = pin_root.join(format!("mem-{conns}"));
        let cfg = bench_config(conns)?;
        let memlock = (|| -> Result<[u64; 4]> {
            let dp = Dataplane::load(&cfg, &pin_dir)?;
            let bytes = |name: &str| -> Result<u64> {
                let map = dp.ebpf().map(name).ok_or_else(|| anyhow!("no {name}"))?;
                let fd = match map {
                    aya::maps::Map::HashMap(m) | aya::maps::Map::LruHashMap(m) => m.fd(),
                    _ => bail!("{name}: not a hash map"),
                };
                let fdinfo = std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    fd.as_fd().as_raw_fd()
                ))?;
                fdinfo_field(&fdinfo, "memlock").ok_or_else(|| anyhow!("no memlock in fdinfo"))
            };
            Ok([
                bytes(map_names::CONNS)?,
                bytes(map_names::PENDING_CONNS)?,
                bytes(map_names::BINDINGS)?,
                bytes(map_names::BOUND_PORTS)?,
            ])
        })();
        remove_pins(&pin_dir)?;
        let [conns_bytes, pending_bytes, bindings_bytes, bound_ports_bytes] = memlock?;
        let memlock_bytes = conns_bytes + pending_bytes + bindings_bytes + bound_ports_bytes;
        points.push(MemoryPoint {
            conns,
            pending: cfg.dataplane.pending_capacity,
            entries: 2 * conns,
            conns_bytes,
            pending_bytes,
            bindings_bytes,
            bound_ports_bytes,
            memlock_bytes,
            bytes_per_conn: memlock_bytes as f64 / f64::from(conns),
        });
    }
    Ok(MemoryResult {
        capacities: points,
        nf_conntrack_object_bytes: slab_object_size("nf_conntrack"),
    })
}

pub fn fdinfo_field(fdinfo: &str, name: &str) -> Option<u64> {
    fdinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().parse().ok())?
    })
}

fn slab_object_size(cache: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/slabinfo").ok()?;
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == cache).then(|| words.nth(2)?.parse().ok())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_picks_few_heavy_flows_and_stays_in_range() {
        let (mut zipf, mut rng) = (Zipf::default(), Rng::new(1));
        let n = 100_000;
        let picks: Vec<usize> = (0..200_000).map(|_| zipf.sample(&mut rng, n)).collect();
        assert!(picks.iter().all(|&i| i < n));
        // s = 1: the first 1% of ranks take H(1000)/H(100000) ≈ 62% of the picks.
        let top = picks.iter().filter(|&&i| i < n / 100).count() as f64 / picks.len() as f64;
        assert!((0.58..0.66).contains(&top), "top 1% share {top}");
        assert_eq!(zipf.sample(&mut rng, 1), 0);
    }

    #[test]
    fn every_path_but_the_untouched_one_has_a_floor_of_its_hook() {
        for kind in PathKind::ALL {
            match kind.floor() {
                None => assert_eq!(kind, PathKind::PassedUntouched),
                Some(floor) => {
                    let xdp = floor == program_names::FLOOR_UPLINK_INGRESS_XDP;
                    assert_eq!(xdp, kind.hook() == Hook::Xdp, "{}", kind.name());
                }
            }
        }
    }

    #[test]
    fn connection_entries_point_at_each_other() {
        let client = Endpoint::new(Ipv4Addr::new(100, 64, 0, 1), 1234);
        let public = Endpoint::new(PUBLIC_ISP_A, 80);
        let isolde = Endpoint::new(ISOLDE, 80);
        let [(fk, fe), (rk, re)] = connection(client, public, client, isolde, CONN_F_INBOUND, 0);
        assert_eq!(fe.twin_key(&fk), rk);
        assert_eq!(re.twin_key(&rk), fk);
        assert!(fe.toward_lan() && !re.toward_lan());
    }

    #[test]
    fn fdinfo_fields_parse() {
        let text = "pos:\t0\nflags:\t02000002\nmemlock:\t123456\nmap_id:\t7\n";
        assert_eq!(fdinfo_field(text, "memlock"), Some(123456));
        assert_eq!(fdinfo_field(text, "run_cnt"), None);
    }
}

/// Connection events through the ring and the daemon's recording path
/// (`ProgBench::event_throughput`).
#[derive(Clone, Debug, Serialize)]
pub struct EventThroughput {
    pub ring_bytes: u32,
    /// Records the ring holds (40-byte events, 8-byte headers).
    pub ring_records: u32,
    /// The daemon's recording path alone, per event: the record built, as JSON, written to a
    /// log file.
    pub record_ns: Stat,
    /// Sustained: new connections made back to back, `paced_rate` per second on average over
    /// `paced_seconds` (runs of 1024 at the program's speed, frames loaded between runs), a
    /// reader recording them as the daemon does on another CPU.
    pub paced_rate: f64,
    pub paced_seconds: f64,
    pub paced_events: u64,
    pub paced_recorded: u64,
    pub paced_lost: u64,
    /// Bursts of `burst` new connections at the program's full speed.
    pub burst: u32,
    pub burst_created_per_s: Stat,
    pub burst_lost: Stat,
    /// new_connection with events on (the ring drained after each run) and off.
    pub cost: PairedCost,
}

/// The most connections one burst makes.
const EVENT_BURST: usize = 65_536;

impl ProgBench<'_> {
    /// How fast connection events can be made and recorded without loss: the recording path's
    /// own cost, a second of new connections made back to back with a reader recording them,
    /// and bursts at the program's full speed (what the ring absorbs, what is lost beyond it).
    /// Every event is accounted for: recorded + lost = made.
    fn event_throughput(&mut self, cfg: &Config, work_dir: &Path) -> Result<EventThroughput> {
        use std::sync::atomic::{AtomicBool, Ordering};

        use crate::{
            events::{EventLog, Recorder},
            state::{Names, NamesSource},
        };
        let names = Names::from_config(cfg, NamesSource::Daemon);
        let rec = Recorder { cfg, names: &names };
        let log_path = work_dir.join("events.log");
        let record = |log: &mut EventLog, ev: &masq_common::ConnEvent| -> Result<()> {
            let line = serde_json::to_string(&rec.created(ev))?;
            log.write_line(&line)
        };
        // The recording path alone.
        let mut record_runs = Vec::new();
        for run in 0..self.opts.runs.max(3) {
            let mut log = EventLog::open(&log_path, u64::MAX, 0)?;
            let n = 20_000u64;
            let started = Instant::now();
            for i in 0..n {
                let key = key(new_conn_source(i + run as u64 * n), Endpoint::new(PUBLIC_ISP_A, 80));
                let ev = masq_common::ConnEvent {
                    time_ns: clock_ns(),
                    key,
                    xlate: Tuple4 { dst_addr: wire_addr(ISOLDE), ..Tuple4::of(&key) },
                    flags: CONN_F_INBOUND,
                    ..Default::default()
                };
                record(&mut log, &ev)?;
            }
            log.flush()?;
            record_runs.push(started.elapsed().as_nanos() as f64 / n as f64);
            std::fs::remove_file(&log_path)?;
        }
        let record_ns = Stat::of(&record_runs);

        let mut ring = pinned::event_ring(self.dp.pin_dir())?;
        let ring_bytes = cfg.events.ring_bytes;
        // What reporting costs a new connection: paired runs, each order as often, each
        // within what the ring holds (a full ring's failed writes would cost less).
        let frames = self.frames(PathKind::NewConnection, 1, Pick::Uniform);
        self.fresh_cap = ring_bytes / 48 / 2;
        let (mut with, mut without, mut diffs) = (Vec::new(), Vec::new(), Vec::new());
        for pair in 0..self.opts.pairs {
            let mut got = [0.0; 2];
            for on in [pair % 2 == 0, pair % 2 == 1] {
                pinned::set_events(self.dp.pin_dir(), on)?;
                got[usize::from(on)] =
                    self.measure_runs(PathKind::NewConnection, &frames, 1, None)?.masq.ns.median;
                while ring.next().is_some() {}
            }
            without.push(got[0]);
            with.push(got[1]);
            diffs.push(got[1] - got[0]);
        }
        self.fresh_cap = u32::MAX;
        let cost = PairedCost {
            path: PathKind::NewConnection,
            with_ns: Stat::of(&with),
            without_ns: Stat::of(&without),
            cost_ns: Stat::of(&diffs),
        };
        pinned::set_events(self.dp.pin_dir(), true)?;
        let ctx = self.ctx.eth4.bytes.clone();
        let public = Endpoint::new(PUBLIC_ISP_A, 80);
        // One harness run of `n` new connections (fresh sources), removed afterwards when
        // `forget` (else left to the pending table's LRU).
        let make = |bench: &mut Self, n: usize, forget: bool| -> Result<(f64, u64)> {
            let start = bench.next_fresh;
            let frames: Vec<Vec<u8>> = (start..start + n as u64)
                .map(|i| {
                    frames::tcp(ETH4_MAC, ISP_A_ROUTER_MAC, new_conn_source(i), public, TCP_SYN)
                })
                .collect();
            bench.harness.load_frames(&frames)?;
            let before = bench.read_counters()?;
            let run = bench.harness.run(Hook::Xdp, bench.xdp_fd(), n, n as u32, &ctx, ETH4_MAC)?;
            let after = bench.read_counters()?;
            ensure!(run.retval == XDP_REDIRECT, "event bench: new connection not redirected");
            bench.next_fresh += n as u64;
            if forget {
                for i in start..start + n as u64 {
                    bench.forget_new_conn(new_conn_source(i).addr)?;
                }
            }
            let lost = Self::counter_delta(&before, &after, Counter::EventsLost);
            Ok((1e9 / f64::from(run.duration_ns.max(1)), lost))
        };
        // A reader as the daemon's: drain, record, flush per batch; until told to stop and idle.
        let stop = AtomicBool::new(false);
        let reader = |ring: &mut aya::maps::RingBuf<MapData>| -> Result<u64> {
            let mut log = EventLog::open(&log_path, u64::MAX, 0)?;
            let mut recorded = 0u64;
            loop {
                let mut batch = 0;
                while let Some(item) = ring.next() {
                    let ev: masq_common::ConnEvent = bytemuck::pod_read_unaligned(&item[..40]);
                    drop(item);
                    record(&mut log, &ev)?;
                    batch += 1;
                }
                log.flush()?;
                recorded += batch;
                if batch == 0 {
                    if stop.load(Ordering::Relaxed) {
                        return Ok(recorded);
                    }
                    let mut fd =
                        libc::pollfd { fd: ring.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut fd, 1, 20) };
                }
            }
        };
        // Sustained: runs of 1024 new connections back to back for a second, as fast as this
        // harness can make them (frames loaded for each run), with the reader recording.
        let chunk = 1024usize.min(self.opts.spread_max);
        let (mut paced_lost, mut paced_events) = (0, 0u64);
        let mut paced_seconds = 0.0;
        let paced_recorded = std::thread::scope(|s| -> Result<u64> {
            let reading = s.spawn(|| reader(&mut ring));
            let started = Instant::now();
            while started.elapsed().as_secs_f64() < 1.0 {
                let (_, lost) = make(self, chunk, false)?;
                paced_lost += lost;
                paced_events += chunk as u64;
            }
            paced_seconds = started.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            reading.join().map_err(|_| anyhow!("event reader panicked"))?
        })?;
        ensure!(
            paced_recorded + paced_lost == paced_events,
            "events: {paced_recorded} recorded + {paced_lost} lost != {paced_events} made"
        );
        let paced_rate = paced_events as f64 / paced_seconds;
        self.forget_pending()?;
        // Bursts at full speed.
        let burst = self.opts.spread_max.min(EVENT_BURST);
        let (mut created, mut lost) = (Vec::new(), Vec::new());
        for _ in 0..self.opts.runs.clamp(1, 5) {
            stop.store(false, Ordering::Relaxed);
            let (rate, l) = std::thread::scope(|s| -> Result<(f64, u64)> {
                let reading = s.spawn(|| reader(&mut ring));
                let made = make(self, burst, true);
                stop.store(true, Ordering::Relaxed);
                let read = reading.join().map_err(|_| anyhow!("event reader panicked"))??;
                let (rate, l) = made?;
                ensure!(read + l == burst as u64, "events: {read} read + {l} lost != {burst}");
                Ok((rate, l))
            })?;
            created.push(rate);
            lost.push(l as f64);
        }
        pinned::set_events(self.dp.pin_dir(), false)?;
        let _ = std::fs::remove_file(&log_path);
        Ok(EventThroughput {
            ring_bytes,
            ring_records: ring_bytes / 48,
            record_ns,
            paced_rate,
            paced_seconds,
            paced_events,
            paced_recorded,
            paced_lost,
            burst: burst as u32,
            burst_created_per_s: Stat::of(&created),
            burst_lost: Stat::of(&lost),
            cost,
        })
    }
}
