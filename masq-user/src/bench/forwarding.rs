//! Forwarding in the seed lab: masq, the classic recipe and plain routing (the ceiling) built
//! one after the other, round after round, and measured the same way.
//!
//! - UDP end to end: trafgen on the client floods 64-byte datagrams to the published address
//!   (isolde's own address for plain routing); an XDP program on isolde's eth0 counts and drops
//!   them. Every hop runs in the generator's softirq (veth), so this is the whole path's figure.
//! - UDP through gw alone: trafgen injects the same datagrams straight into gw's eth4 from the
//!   ISP A namespace (no router in between) and the counting sink sits on the switch port facing
//!   gw, so the path is generator → gw → sink. CPU time per packet of the generator's CPU
//!   (/proc/stat) compares the gateways; masq's programs also report their own run time
//!   (`BPF_ENABLE_STATS`, run_time_ns/run_cnt from the daemon's program fds) in a second window,
//!   so that the accounting's own cost does not weigh on masq's packet rate.
//! - TCP: iperf3, several streams, client → published address.
//! - New TCP connections per second: Rust clients in the client namespace connect, read until the
//!   server closes, close; the server on isolde accepts and closes at once. Through gw alone the
//!   ISP A router is the client; there the busy time of all CPUs per connection (/proc/stat)
//!   compares the gateways' work, and masq's programs report their run time per connection in a
//!   second window, as for the UDP flood.
use std::{
    fs,
    io::Read as _,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use serde::Serialize;

use super::{
    Stat,
    bpf::{self, Hook},
    frames::{self, Endpoint},
    prog::fdinfo_field,
};
use crate::lab::{GatewayMode, Host, Lab, LabChild, LabOptions};
use crate::seed::{CLIENT, ISOLDE, PUBLIC_ISP_A};

const SINK_PORT: u16 = 9;
const IPERF_PORT: u16 = 5201;
const CONN_PORT: u16 = 8080;
const UDP_PAYLOAD: usize = 64;

#[derive(Clone, Debug, Serialize)]
pub struct LabBenchOptions {
    pub rounds: usize,
    /// Measurement window of each UDP flood (after `warmup`).
    pub window_s: f64,
    pub warmup_s: f64,
    pub iperf_seconds: u32,
    pub iperf_streams: u32,
    pub conn_seconds: f64,
    pub conn_clients: usize,
    /// The XDP-friendly lab variant (`LabOptions::xdp_friendly`) with masq at `xdp = "required"`;
    /// else the lab at the kernel's defaults, where masq runs TC.
    pub xdp_friendly: bool,
    #[serde(skip)]
    pub masq_bin: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Gateway {
    /// masq (`masq run` with examples/masq-gw.toml) on a bare gw.
    Masq,
    /// The classic recipe: per-uplink tables, CONNMARK, DNAT, MASQUERADE.
    Classic,
    /// Plain routing, no NAT and no conntrack: the ceiling. The client addresses isolde itself.
    Forward,
}

impl Gateway {
    pub const ALL: [Gateway; 3] = [Gateway::Masq, Gateway::Classic, Gateway::Forward];

    pub fn name(self) -> &'static str {
        match self {
            Gateway::Masq => "masq",
            Gateway::Classic => "classic",
            Gateway::Forward => "forward",
        }
    }

    fn mode(self) -> GatewayMode {
        match self {
            Gateway::Masq => GatewayMode::Bare,
            Gateway::Classic => GatewayMode::Classic,
            Gateway::Forward => GatewayMode::Forward,
        }
    }

    /// Where the client sends its traffic.
    fn target(self) -> Ipv4Addr {
        match self {
            Gateway::Forward => ISOLDE,
            _ => PUBLIC_ISP_A,
        }
    }
}

/// One gateway, one round.
#[derive(Clone, Debug, Serialize)]
pub struct Sample {
    pub round: usize,
    pub gateway: Gateway,
    pub udp_e2e: Flood,
    pub udp_gw: Flood,
    pub tcp_gbps: f64,
    pub conns_per_s: f64,
    pub conn_failures: u64,
    /// New connections/s through gw alone: the ISP A router is the client.
    pub conns_gw_per_s: f64,
    pub conn_gw_failures: u64,
    /// user + system + irq + softirq time of all CPUs per connection through gw alone: the
    /// clients', the server's and the gateway's work together.
    pub conns_gw_busy_ns_per_conn: f64,
    /// masq's programs during a second window of half the length with `BPF_ENABLE_STATS` on
    /// (masq only): runs and run time.
    pub conns_gw_masq_programs: Vec<ProgRunTime>,
    /// Connections made in that window.
    pub conns_gw_stats_connections: u64,
    /// The masq daemon's own user + system time per connection through gw alone (its expiry
    /// sweeps read and delete every connection; masq only).
    pub conns_gw_daemon_ns_per_conn: Option<f64>,
}

/// One UDP flood's measurement window.
#[derive(Clone, Debug, Serialize)]
pub struct Flood {
    /// Datagrams counted by the sink per second.
    pub delivered_pps: f64,
    /// Received by the generator's first hop per second.
    pub offered_pps: f64,
    /// The CPU the generator ran on (its forwarding softirqs run there too), `None` = all CPUs.
    pub cpu: Option<usize>,
    /// Busy share of that CPU during the window.
    pub cpu_busy: f64,
    /// softirq time of that CPU per delivered datagram.
    pub softirq_ns_per_packet: f64,
    /// user + system + irq + softirq time of that CPU per delivered datagram.
    pub busy_ns_per_packet: f64,
    /// masq's programs during a second window of half the length with `BPF_ENABLE_STATS` on
    /// (masq, gw-alone flood only).
    pub masq_programs: Vec<ProgRunTime>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProgRunTime {
    pub program: String,
    pub runs: u64,
    pub ns_per_run: f64,
}

impl ProgRunTime {
    /// The program's whole run time in the window.
    pub fn total_ns(&self) -> f64 {
        self.ns_per_run * self.runs as f64
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct GatewaySummary {
    pub gateway: Gateway,
    pub udp_e2e_pps: Stat,
    pub udp_gw_pps: Stat,
    pub udp_gw_softirq_ns_per_packet: Stat,
    pub udp_gw_busy_ns_per_packet: Stat,
    pub tcp_gbps: Stat,
    pub conns_per_s: Stat,
    pub conns_gw_per_s: Stat,
    pub conns_gw_busy_ns_per_conn: Stat,
    /// Run time of all masq's programs per connection through gw alone (masq only).
    pub conns_gw_masq_ns_per_conn: Option<Stat>,
    /// The daemon's CPU time per connection through gw alone (masq only).
    pub conns_gw_daemon_ns_per_conn: Option<Stat>,
    /// masq's uplink ingress program's own ns per run during the gw-only flood (masq only).
    pub masq_uplink_in_ns: Option<Stat>,
    /// Which program that is (`masq_uplink_in`, or `masq_uplink_in_xdp` in the XDP variant).
    pub masq_uplink_in_program: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LabResults {
    pub options: LabBenchOptions,
    pub samples: Vec<Sample>,
    pub summary: Vec<GatewaySummary>,
}

/// Builds the lab `rounds × 3` times (the gateways' order rotates each round) and measures.
pub fn run(opts: &LabBenchOptions, work_dir: &Path) -> Result<LabResults> {
    let sink = SinkProgram::load()?;
    let mut samples = Vec::new();
    for round in 0..opts.rounds {
        for i in 0..Gateway::ALL.len() {
            let gateway = Gateway::ALL[(i + round) % Gateway::ALL.len()];
            let started = Instant::now();
            let sample = measure(gateway, round, opts, &sink, work_dir)
                .with_context(|| format!("round {round}, {}", gateway.name()))?;
            eprintln!(
                "masq bench: lab: round {round} {:<8} udp e2e {:>5.3} Mpps  udp gw {:>5.3} Mpps \
                 ({:>5.0} ns softirq/pkt)  tcp {:>5.1} Gbit/s  {:>6.0} conn/s  gw {:>6.0} conn/s  \
                 ({:.0} s)",
                gateway.name(),
                sample.udp_e2e.delivered_pps / 1e6,
                sample.udp_gw.delivered_pps / 1e6,
                sample.udp_gw.softirq_ns_per_packet,
                sample.tcp_gbps,
                sample.conns_per_s,
                sample.conns_gw_per_s,
                started.elapsed().as_secs_f64()
            );
            samples.push(sample);
        }
    }
    let summary = Gateway::ALL.iter().map(|&gateway| summarize(gateway, &samples)).collect();
    Ok(LabResults { options: opts.clone(), samples, summary })
}

fn summarize(gateway: Gateway, samples: &[Sample]) -> GatewaySummary {
    let of = |f: &dyn Fn(&Sample) -> f64| {
        Stat::of(&samples.iter().filter(|s| s.gateway == gateway).map(f).collect::<Vec<_>>())
    };
    let ingress = [
        masq_common::program_names::UPLINK_INGRESS,
        masq_common::program_names::UPLINK_INGRESS_XDP,
    ];
    // The kernel keeps 15 characters of a program's name.
    let kernel_name = |name: &'static str| &name[..name.len().min(15)];
    let runs: Vec<(&'static str, f64)> = samples
        .iter()
        .filter(|s| s.gateway == gateway)
        .filter_map(|s| {
            s.udp_gw.masq_programs.iter().filter(|p| p.runs > 0).find_map(|p| {
                let name = ingress.into_iter().find(|n| kernel_name(n) == p.program)?;
                Some((name, p.ns_per_run))
            })
        })
        .collect();
    let uplink_in: Vec<f64> = runs.iter().map(|r| r.1).collect();
    GatewaySummary {
        gateway,
        udp_e2e_pps: of(&|s| s.udp_e2e.delivered_pps),
        udp_gw_pps: of(&|s| s.udp_gw.delivered_pps),
        udp_gw_softirq_ns_per_packet: of(&|s| s.udp_gw.softirq_ns_per_packet),
        udp_gw_busy_ns_per_packet: of(&|s| s.udp_gw.busy_ns_per_packet),
        tcp_gbps: of(&|s| s.tcp_gbps),
        conns_per_s: of(&|s| s.conns_per_s),
        conns_gw_per_s: of(&|s| s.conns_gw_per_s),
        conns_gw_busy_ns_per_conn: of(&|s| s.conns_gw_busy_ns_per_conn),
        conns_gw_masq_ns_per_conn: (gateway == Gateway::Masq).then(|| {
            of(&|s| {
                let total: f64 = s.conns_gw_masq_programs.iter().map(ProgRunTime::total_ns).sum();
                total / s.conns_gw_stats_connections.max(1) as f64
            })
        }),
        conns_gw_daemon_ns_per_conn: (gateway == Gateway::Masq)
            .then(|| of(&|s| s.conns_gw_daemon_ns_per_conn.unwrap_or(0.0))),
        masq_uplink_in_ns: (!uplink_in.is_empty()).then(|| Stat::of(&uplink_in)),
        masq_uplink_in_program: runs.first().map(|r| r.0.to_string()),
    }
}

fn measure(
    gateway: Gateway,
    round: usize,
    opts: &LabBenchOptions,
    sink: &SinkProgram,
    work_dir: &Path,
) -> Result<Sample> {
    let lab = Lab::build(LabOptions {
        gateway: gateway.mode(),
        xdp_friendly: opts.xdp_friendly,
        ..LabOptions::default()
    })?;
    let masq = match gateway {
        Gateway::Masq => {
            let config = lab.run_dir().join("masq-gw.toml");
            let xdp = if opts.xdp_friendly { "\n[dataplane]\nxdp = \"required\"\n" } else { "" };
            fs::write(&config, format!("{}{xdp}", super::EXAMPLE_CONFIG))?;
            Some(lab.start_masq(&opts.masq_bin, &config, &lab.pin_dir(), &[])?)
        }
        _ => None,
    };
    let masq_pid = masq.as_ref().map(LabChild::pid);
    let target = gateway.target();
    wait_reachable(&lab, target)?;
    let flood_file = work_dir.join(format!("trafgen-{}.cfg", gateway.name()));

    // End to end: client → core → ISP A → gw → switch → isolde.
    let frame = frames::udp(
        lab.mac(Host::Core, "to-client")?,
        lab.mac(Host::Client, "eth0")?,
        Endpoint::new(CLIENT, 4000),
        Endpoint::new(target, SINK_PORT),
        UDP_PAYLOAD,
    );
    let udp_e2e = {
        let attached = sink.attach(&lab, Host::Isolde, "eth0")?;
        flood(
            &lab,
            (Host::Client, "eth0"),
            (Host::Core, "to-client"),
            &frame,
            &flood_file,
            &attached,
            opts,
            masq_pid,
            false,
        )?
    };

    let tcp_gbps = iperf(&lab, target, opts)?;
    let duration = Duration::from_secs_f64(opts.conn_seconds);
    let conns = conn_rate(&lab, Host::Client, target, duration, opts.conn_clients)?;
    // gw alone: the ISP A router connects, two routers fewer on the way than from the client.
    let daemon0 = masq_pid.map(process_cpu_ns).transpose()?;
    let conns_gw = conn_rate(&lab, Host::IspA, target, duration, opts.conn_clients)?;
    let conns_gw_daemon_ns_per_conn = match (masq_pid, daemon0) {
        (Some(pid), Some(t0)) => {
            Some((process_cpu_ns(pid)? - t0) as f64 / conns_gw.connections.max(1) as f64)
        }
        _ => None,
    };
    // masq's programs per connection, in a second window: the accounting's clock reads must not
    // weigh on the rate above.
    let (conns_gw_masq_programs, conns_gw_stats_connections) = match masq_pid {
        Some(pid) => {
            let _stats = bpf::enable_run_time_stats()?;
            let before = prog_stats(pid)?;
            let window = conn_rate(&lab, Host::IspA, target, duration / 2, opts.conn_clients)?;
            (run_times(&before, &prog_stats(pid)?), window.connections)
        }
        None => Default::default(),
    };

    // gw alone: generator in place of the ISP A router, sink on the switch port facing gw.
    let frame = frames::udp(
        lab.mac(Host::Gw, "eth4")?,
        lab.mac(Host::IspA, "to-gw")?,
        Endpoint::new(CLIENT, 4001),
        Endpoint::new(target, SINK_PORT),
        UDP_PAYLOAD,
    );
    // Last: in the XDP-friendly variant the sink takes the place of the switch port's
    // pass-through program (a veth peer holds one XDP program), which nothing needs after.
    let udp_gw = {
        if opts.xdp_friendly {
            lab.detach_peer_xdp(Host::Switch, "gw")?;
        }
        let attached = sink.attach(&lab, Host::Switch, "gw")?;
        flood(
            &lab,
            (Host::IspA, "to-gw"),
            (Host::Gw, "eth4"),
            &frame,
            &flood_file,
            &attached,
            opts,
            masq_pid,
            true,
        )?
    };

    drop(masq);
    Ok(Sample {
        round,
        gateway,
        udp_e2e,
        udp_gw,
        tcp_gbps,
        conns_per_s: conns.per_s,
        conn_failures: conns.failures,
        conns_gw_per_s: conns_gw.per_s,
        conn_gw_failures: conns_gw.failures,
        conns_gw_busy_ns_per_conn: conns_gw.busy_ns_per_conn,
        conns_gw_masq_programs,
        conns_gw_stats_connections,
        conns_gw_daemon_ns_per_conn,
    })
}

fn read_sys(lab: &Lab, host: Host, path: &str) -> Result<u64> {
    let text = lab.ns(host).run_ok(&format!("cat {path}"))?;
    text.trim().parse().with_context(|| format!("{host}: {path}: {text:?}"))
}

/// Pings from the client until the target answers (ARP, masq's first connection): up to 10 s.
pub(super) fn wait_reachable(lab: &Lab, target: Ipv4Addr) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !lab.ping(Host::Client, target, Duration::from_secs(1))? {
        ensure!(Instant::now() < deadline, "{target} not reachable from the client");
    }
    Ok(())
}

/// `{ 0x.., ... }` for trafgen: one static frame, sent over and over.
fn trafgen_config(frame: &[u8]) -> String {
    let bytes: Vec<String> = frame.iter().map(|b| format!("0x{b:02x}")).collect();
    format!("{{ {} }}\n", bytes.join(", "))
}

/// Per-CPU jiffies from /proc/stat: (user+nice+system+irq+softirq, softirq, total).
fn cpu_times(cpu: Option<usize>) -> Result<(u64, u64, u64)> {
    let text = fs::read_to_string("/proc/stat")?;
    let label = cpu.map_or("cpu".to_string(), |c| format!("cpu{c}"));
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(label.as_str()))
        .ok_or_else(|| anyhow!("no {label} in /proc/stat"))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0)).collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let (user, nice, system, idle, iowait, irq, softirq, steal) =
        (get(0), get(1), get(2), get(3), get(4), get(5), get(6), get(7));
    let busy = user + nice + system + irq + softirq;
    Ok((busy, softirq, busy + idle + iowait + steal))
}

/// The single CPU trafgen's sending process is bound to (it binds its workers itself).
fn generator_cpu(parent: u32) -> Option<usize> {
    let children = fs::read_to_string(format!("/proc/{parent}/task/{parent}/children")).ok()?;
    let pid = children.split_whitespace().next().unwrap_or("").to_string();
    let pid = if pid.is_empty() { parent.to_string() } else { pid };
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?.trim();
    list.parse().ok()
}

/// run_time_ns and run_cnt of every BPF program the process holds, by program name.
fn prog_stats(pid: u32) -> Result<Vec<(String, u64, u64)>> {
    let mut out = Vec::new();
    let names: Vec<(u32, String)> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| (p.id(), p.name_as_str().unwrap_or("").to_string()))
        .collect();
    for entry in fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(link) = fs::read_link(entry.path()) else {
            continue;
        };
        if link.to_string_lossy() != "anon_inode:bpf-prog" {
            continue;
        }
        let fd = entry.file_name().to_string_lossy().into_owned();
        let Ok(info) = fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}")) else {
            continue;
        };
        let (Some(id), Some(time), Some(count)) = (
            fdinfo_field(&info, "prog_id"),
            fdinfo_field(&info, "run_time_ns"),
            fdinfo_field(&info, "run_cnt"),
        ) else {
            continue;
        };
        let name = names
            .iter()
            .find(|(i, _)| u64::from(*i) == id)
            .map_or_else(|| format!("prog {id}"), |(_, n)| n.clone());
        if !out.iter().any(|(n, _, _)| *n == name) {
            out.push((name, time, count));
        }
    }
    Ok(out)
}

/// Runs and run time per run of each program between two [`prog_stats`] snapshots.
fn run_times(before: &[(String, u64, u64)], after: &[(String, u64, u64)]) -> Vec<ProgRunTime> {
    after
        .iter()
        .map(|(name, time, count)| {
            let (t0, c0) =
                before.iter().find(|(n, _, _)| n == name).map_or((0, 0), |(_, t, c)| (*t, *c));
            let runs = count - c0;
            ProgRunTime {
                program: name.clone(),
                runs,
                ns_per_run: if runs > 0 { (time - t0) as f64 / runs as f64 } else { 0.0 },
            }
        })
        .collect()
}

/// A process's user + system time so far, in ns (/proc/PID/stat, every thread).
fn process_cpu_ns(pid: u32) -> Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The fields after the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<u64> =
        rest.split_whitespace().skip(11).take(2).map(|x| x.parse().unwrap_or(0)).collect();
    ensure!(fields.len() == 2, "/proc/{pid}/stat: {text:?}");
    Ok(((fields[0] + fields[1]) as f64 * tick_ns()) as u64)
}

/// Processor time in ns per clock tick of /proc/stat.
fn tick_ns() -> f64 {
    // SAFETY: sysconf has no preconditions.
    1e9 / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

#[expect(clippy::too_many_arguments, reason = "one flood, described in full")]
fn flood(
    lab: &Lab,
    (host, iface): (Host, &str),
    (first_hop, first_hop_iface): (Host, &str),
    frame: &[u8],
    config: &Path,
    sink: &AttachedSink<'_>,
    opts: &LabBenchOptions,
    masq_pid: Option<u32>,
    run_time: bool,
) -> Result<Flood> {
    fs::write(config, trafgen_config(frame))?;
    let config = config.to_string_lossy();
    let mut generator = lab.spawn(
        host,
        &[
            "trafgen",
            "--dev",
            iface,
            "--conf",
            &config,
            "--cpus",
            "1",
            "--no-sock-mem",
            "--notouch-irq",
            "--no-cpu-stats",
        ],
    )?;
    thread::sleep(Duration::from_secs_f64(opts.warmup_s));
    if let Some(status) = generator.try_wait()? {
        bail!("trafgen on {host} exited ({status}): {}", generator.log_text().trim());
    }
    let cpu = generator_cpu(generator.pid());
    let rx_path = format!("/sys/class/net/{first_hop_iface}/statistics/rx_packets");
    let snapshot = || -> Result<_> {
        Ok((Instant::now(), sink.count()?, read_sys(lab, first_hop, &rx_path)?, cpu_times(cpu)?))
    };
    let (t0, sunk0, rx0, cpu0) = snapshot()?;
    thread::sleep(Duration::from_secs_f64(opts.window_s));
    let (t1, sunk1, rx1, cpu1) = snapshot()?;
    // masq's own run time in a second, shorter window: the accounting costs two clock reads per
    // run, which must not weigh on masq's packet rate above.
    let (progs0, progs1) = match masq_pid.filter(|_| run_time) {
        Some(pid) => {
            let _stats = bpf::enable_run_time_stats()?;
            let before = prog_stats(pid)?;
            thread::sleep(Duration::from_secs_f64(opts.window_s / 2.0));
            (before, prog_stats(pid)?)
        }
        None => Default::default(),
    };
    generator.stop()?;
    let seconds = (t1 - t0).as_secs_f64();
    let delivered = (sunk1 - sunk0) as f64;
    ensure!(delivered > 0.0, "no datagram reached the sink from {host}");
    let tick_ns = tick_ns();
    let busy = (cpu1.0 - cpu0.0) as f64 * tick_ns;
    let softirq = (cpu1.1 - cpu0.1) as f64 * tick_ns;
    let total = (cpu1.2 - cpu0.2) as f64 * tick_ns;
    let masq_programs = run_times(&progs0, &progs1);
    Ok(Flood {
        delivered_pps: delivered / seconds,
        offered_pps: (rx1 - rx0) as f64 / seconds,
        cpu,
        cpu_busy: if total > 0.0 { busy / total } else { 0.0 },
        softirq_ns_per_packet: softirq / delivered,
        busy_ns_per_packet: busy / delivered,
        masq_programs,
    })
}

/// The counting XDP sink: one program and counter for the whole benchmark, attached per lab.
struct SinkProgram {
    counter: OwnedFd,
    prog: OwnedFd,
}

struct AttachedSink<'a> {
    sink: &'a SinkProgram,
    _link: OwnedFd,
}

impl SinkProgram {
    fn load() -> Result<Self> {
        let counter = bpf::create_map(bpf::BPF_MAP_TYPE_ARRAY, 4, 8, 1, "bench_sink")?;
        let prog = bpf::load_program(Hook::Xdp, &bpf::udp_sink(&counter, SINK_PORT), "bench_sink")?;
        Ok(Self { counter, prog })
    }

    fn attach(&self, lab: &Lab, host: Host, iface: &str) -> Result<AttachedSink<'_>> {
        let prog: RawFd = self.prog.as_raw_fd();
        let name = iface.to_string();
        let link = lab.ns(host).enter(move || -> Result<OwnedFd> {
            let c_name = std::ffi::CString::new(name.clone())?;
            // SAFETY: valid C string.
            let ifindex = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {name}");
            // SAFETY: the program fd stays open in the caller for the duration of this call.
            let prog = unsafe { std::os::fd::BorrowedFd::borrow_raw(prog) };
            let prog = prog.try_clone_to_owned()?;
            bpf::attach_xdp(&prog, ifindex)
        })?;
        Ok(AttachedSink { sink: self, _link: link })
    }
}

impl AttachedSink<'_> {
    fn count(&self) -> Result<u64> {
        let mut value = [0u8; 8];
        bpf::map_lookup(&self.sink.counter, &0u32.to_ne_bytes(), &mut value)?;
        Ok(u64::from_ne_bytes(value))
    }
}

/// iperf3 from the client to `target`: received Gbit/s.
fn iperf(lab: &Lab, target: Ipv4Addr, opts: &LabBenchOptions) -> Result<f64> {
    let port = IPERF_PORT.to_string();
    let _server = lab.spawn(Host::Isolde, &["iperf3", "-s", "-p", &port])?;
    wait_listening(lab, Host::Isolde, IPERF_PORT)?;
    let (secs, streams) = (opts.iperf_seconds.to_string(), opts.iperf_streams.to_string());
    let limit = (opts.iperf_seconds + 20).to_string();
    let target = target.to_string();
    let out = lab.exec(
        Host::Client,
        &[
            "timeout", &limit, "iperf3", "-c", &target, "-p", &port, "-t", &secs, "-P", &streams,
            "-J",
        ],
    )?;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!("iperf3 output: {}", String::from_utf8_lossy(&out.stderr).trim())
    })?;
    json["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|bps| bps / 1e9)
        .ok_or_else(|| anyhow!("iperf3 failed: {}", json["error"]))
}

fn wait_listening(lab: &Lab, host: Host, port: u16) -> Result<()> {
    let filter = format!("sport = :{port}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while lab.exec(host, &["ss", "-Hltn", &filter])?.stdout.is_empty() {
        ensure!(Instant::now() < deadline, "nothing listening on {host}:{port}");
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs `f` on a new thread inside the namespace at `path`.
pub(super) fn spawn_in<T: Send + 'static>(
    path: PathBuf,
    f: impl FnOnce() -> T + Send + 'static,
) -> thread::JoinHandle<Result<T>> {
    thread::spawn(move || {
        let ns = fs::File::open(&path)?;
        // SAFETY: setns only changes this thread's network namespace; the fd is valid.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            bail!("setns {}: {}", path.display(), std::io::Error::last_os_error());
        }
        Ok(f())
    })
}

/// What [`conn_rate`] measured.
pub(super) struct ConnRate {
    pub per_s: f64,
    /// Connection attempts that failed.
    pub failures: u64,
    pub connections: u64,
    /// Busy time of all CPUs (/proc/stat) per connection made.
    pub busy_ns_per_conn: f64,
}

/// Clients opening connections one after another, each blocking on its handshake. Enough to keep
/// every CPU busy: with one per CPU the machine idled a fifth of the time between round trips, and
/// the rate measured wake-up latency as much as what a gateway spends on a connection.
pub(super) const CONN_CLIENTS: usize = 8;

/// New TCP connections per second from `from` to `target`.
pub(super) fn conn_rate(
    lab: &Lab,
    from: Host,
    target: Ipv4Addr,
    duration: Duration,
    conn_clients: usize,
) -> Result<ConnRate> {
    // TOPOLOGY.md lab notes: isolde closes first and keeps TIME_WAIT; the client reuses ports, so
    // timestamps without per-connection offsets (2) keep PAWS happy, and a wide port range.
    lab.exec(
        from,
        &["sysctl", "-qw", "net.ipv4.tcp_timestamps=2", "net.ipv4.ip_local_port_range=1024 65535"],
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = {
        let stop = stop.clone();
        spawn_in(lab.ns(Host::Isolde).path(), move || -> Result<()> {
            let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, CONN_PORT))?;
            listener.set_nonblocking(true)?;
            let _ = ready_tx.send(());
            while !stop.load(Ordering::Relaxed) {
                let mut fds =
                    [libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
                // SAFETY: one valid pollfd; a timeout so that the stop flag is seen.
                unsafe { libc::poll(fds.as_mut_ptr(), 1, 100) };
                while let Ok((stream, _)) = listener.accept() {
                    drop(stream);
                }
            }
            Ok(())
        })
    };
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| anyhow!("connection server on isolde did not start"))?;
    let started = Instant::now();
    let cpu0 = cpu_times(None)?;
    let clients: Vec<_> = (0..conn_clients)
        .map(|_| {
            spawn_in(lab.ns(from).path(), move || {
                let addr = SocketAddr::from((target, CONN_PORT));
                let deadline = Instant::now() + duration;
                let (mut done, mut failed) = (0u64, 0u64);
                let mut buf = [0u8; 64];
                while Instant::now() < deadline {
                    let ok = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
                        .and_then(|mut s| {
                            s.set_read_timeout(Some(Duration::from_secs(1)))?;
                            while s.read(&mut buf)? > 0 {}
                            Ok(())
                        })
                        .is_ok();
                    if ok {
                        done += 1;
                    } else {
                        failed += 1;
                    }
                }
                (done, failed)
            })
        })
        .collect();
    let (mut done, mut failed) = (0, 0);
    for client in clients {
        let (d, f) = client.join().map_err(|_| anyhow!("client thread panicked"))??;
        done += d;
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu1 = cpu_times(None)?;
    stop.store(true, Ordering::Relaxed);
    server.join().map_err(|_| anyhow!("server thread panicked"))??.context("connection server")?;
    Ok(ConnRate {
        per_s: done as f64 / elapsed,
        failures: failed,
        connections: done,
        busy_ns_per_conn: (cpu1.0 - cpu0.0) as f64 * tick_ns() / done.max(1) as f64,
    })
}
