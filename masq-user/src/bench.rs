//! `masq-lab bench` (`cargo xtask bench`): masq side by side with the classic iptables recipe
//! and with plain routing, in one run. BENCHMARKS.md describes the method and the latest figures.
//!
//! Three parts, each in its own module:
//! - [`prog`]: the cost of masq's programs per packet under `BPF_PROG_TEST_RUN`, with the
//!   connection table filled to several sizes;
//! - [`forwarding`]: packets/s, TCP throughput and new connections/s through the seed lab, with
//!   masq, the classic recipe and plain routing built alternately, plus the gateway's own cost;
//! - memory of the connection table per connection ([`prog::memory`]);
//! - new connections/s under a SYN flood of ten times the table's capacity, and the keep-alive
//!   connections it must not cost ([`flood`]), masq and the classic recipe;
//! - uplink failover and failback times, and transitions over a clean run ([`failover`]).
//!
//! Results go to `<out>/<timestamp>.{json,svg,md}` and `<out>/latest.{json,svg,md}`.
pub mod bpf;
mod failover;
mod flood;
mod forwarding;
mod frames;
mod profile;
mod prog;
mod report;

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::dataplane::{ensure_bpffs, remove_pins};

/// The seed scenario's config, which every gateway under test is built from.
pub(crate) const EXAMPLE_CONFIG: &str = include_str!("../../examples/masq-gw.toml");

#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Fewer rounds, fewer repeats, smaller tables: for development (< 1.5 minutes).
    pub quick: bool,
    /// Where results are written.
    pub out: PathBuf,
    /// The masq binary the lab runs as the gateway (normally this one).
    pub masq_bin: PathBuf,
    /// Run one part only (development, profiling); all of them by default.
    pub only: Option<Part>,
    /// The failover part's clean run, seconds (default: 30, quick 3).
    pub clean_seconds: Option<f64>,
    /// Profile one established path (see `prog::ProgOptions::profile`) and stop.
    pub profile: Option<String>,
}

/// The three parts of a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Program cost under BPF_PROG_TEST_RUN.
    Prog,
    /// Memory of the connection table.
    Memory,
    /// Forwarding in the lab.
    Lab,
    /// New connections under a SYN flood.
    Flood,
    /// Uplink failover when an ISP stops forwarding.
    Failover,
}

#[derive(Clone, Debug, Serialize)]
pub struct Results {
    pub version: u32,
    pub started_utc: String,
    pub quick: bool,
    pub seconds: f64,
    /// Each part's wall time.
    pub parts: Vec<PartTime>,
    pub machine: Machine,
    pub prog: Option<prog::ProgResults>,
    pub memory: Option<prog::MemoryResult>,
    /// The lab at the kernel's default interface settings (masq on TC).
    pub lab: Option<forwarding::LabResults>,
    pub ratios: Vec<Ratio>,
    /// The XDP-friendly lab variant (masq on XDP).
    pub lab_xdp: Option<forwarding::LabResults>,
    pub ratios_xdp: Vec<Ratio>,
    /// The SYN flood part (masq, classic).
    pub flood: Option<Vec<flood::FloodResult>>,
    /// The uplink failover part (masq; the classic recipe has no health tracking).
    pub failover: Option<failover::FailoverResult>,
    pub targets: Vec<Target>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PartTime {
    pub part: &'static str,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub memory_gib: f64,
    /// /proc/loadavg before and after: other work on the machine shows up here.
    pub load_before: String,
    pub load_after: String,
}

/// masq's figure over another gateway's for one metric.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub metric: &'static str,
    pub unit: &'static str,
    /// "higher" or "lower" is better.
    pub better: &'static str,
    pub masq: f64,
    pub classic: f64,
    pub forward: f64,
    pub masq_over_classic: f64,
    pub masq_over_forward: f64,
}

/// One of the issues' targets: `measured` against `target` by `relation`.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub what: String,
    /// What the ratio is over: "floor", "classic" or "forward"; or "ns", an absolute figure.
    pub over: &'static str,
    /// "<=" or ">=".
    pub relation: &'static str,
    pub target: f64,
    pub measured: f64,
    pub met: bool,
}

/// Median, extremes and every run of one measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<f64>,
}

impl Stat {
    pub fn of(values: &[f64]) -> Stat {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Stat {
            median,
            min: sorted.first().copied().unwrap_or(f64::NAN),
            max: sorted.last().copied().unwrap_or(f64::NAN),
            runs: values.to_vec(),
        }
    }
}

/// splitmix64: reproducible tuples without a dependency.
pub(crate) struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0; the modulo bias is irrelevant here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// `n` random low bits (n ≤ 32).
    pub fn bits(&mut self, n: u32) -> u32 {
        (self.next() >> (64 - n)) as u32
    }

    /// A client-side port, 1024..=65535.
    pub fn port(&mut self) -> u16 {
        1024 + self.below(64512) as u16
    }
}

/// Scratch directory and bpffs pin root of one run, removed on drop (also on error).
struct Scratch {
    work_dir: PathBuf,
    pin_root: PathBuf,
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.work_dir);
        if let Ok(entries) = fs::read_dir(&self.pin_root) {
            for entry in entries.flatten() {
                let _ = remove_pins(&entry.path());
            }
        }
        let _ = fs::remove_dir(&self.pin_root);
    }
}

/// Runs everything and writes the results; returns the JSON file written.
pub fn run(opts: &BenchOptions) -> Result<PathBuf> {
    crate::daemon::require_root()?;
    ensure_bpffs()?;
    let started = Instant::now();
    let started_utc = utc_timestamp(SystemTime::now());
    let id = format!("masq-bench-{}", std::process::id());
    let scratch = Scratch {
        work_dir: std::env::temp_dir().join(&id),
        pin_root: PathBuf::from("/sys/fs/bpf").join(&id),
    };
    fs::create_dir_all(&scratch.work_dir)?;
    fs::create_dir_all(&scratch.pin_root)?;
    let load_before = loadavg();
    let mode = if opts.quick { "quick" } else { "full" };
    eprintln!("masq bench ({mode}): the machine's other load now: {load_before}");

    let prog_opts = if opts.quick {
        prog::ProgOptions {
            repeat: 30_000,
            runs: 3,
            levels: vec![1_000, 100_000],
            conn_capacity: 262_144,
            spread_max: 32_768,
            new_conn_repeat: 4_096,
            repeat1_samples: 500,
            pairs: 8,
            profile: opts.profile.clone(),
        }
    } else {
        prog::ProgOptions {
            repeat: 60_000,
            runs: 5,
            levels: vec![1_000, 100_000, 1_000_000, 4_000_000],
            conn_capacity: 4_194_304,
            spread_max: 131_072,
            new_conn_repeat: 16_384,
            repeat1_samples: 2_000,
            pairs: 16,
            profile: opts.profile.clone(),
        }
    };
    let wanted = |part: Part| opts.only.is_none_or(|only| only == part);
    let mut parts = Vec::new();
    let mut timed = |part: &'static str, since: Instant| {
        let seconds = since.elapsed().as_secs_f64();
        eprintln!("masq bench: {part} took {seconds:.0} s");
        parts.push(PartTime { part, seconds });
    };
    let t = Instant::now();
    let prog = if wanted(Part::Prog) {
        eprintln!("masq bench: program cost (BPF_PROG_TEST_RUN)");
        prog::run(&prog_opts, &scratch.work_dir, &scratch.pin_root.join("prog"))?
    } else {
        None
    };
    timed("prog", t);
    if opts.profile.is_some() {
        return Ok(PathBuf::new());
    }

    let capacities: &[u32] = if opts.quick {
        &[65_536, 262_144, 1_048_576]
    } else {
        &[65_536, 262_144, 1_048_576, 4_194_304]
    };
    let t = Instant::now();
    let memory = if wanted(Part::Memory) {
        eprintln!("masq bench: memory of the connection table");
        Some(prog::memory(capacities, &scratch.pin_root)?)
    } else {
        None
    };
    timed("memory", t);

    let lab_opts = forwarding::LabBenchOptions {
        rounds: if opts.quick { 1 } else { 3 },
        window_s: if opts.quick { 0.5 } else { 1.0 },
        warmup_s: if opts.quick { 0.2 } else { 0.5 },
        iperf_seconds: if opts.quick { 1 } else { 2 },
        iperf_streams: 4,
        conn_seconds: if opts.quick { 0.75 } else { 1.0 },
        conn_clients: forwarding::CONN_CLIENTS,
        xdp_friendly: false,
        masq_bin: opts.masq_bin.clone(),
    };
    let t = Instant::now();
    let (lab, lab_xdp) = if wanted(Part::Lab) {
        eprintln!(
            "masq bench: forwarding in the lab at default settings (masq, classic, forward; \
             alternately)"
        );
        let default = forwarding::run(&lab_opts, &scratch.work_dir)?;
        eprintln!("masq bench: forwarding in the XDP-friendly lab (masq with xdp = \"required\")");
        let xdp_opts = forwarding::LabBenchOptions { xdp_friendly: true, ..lab_opts };
        (Some(default), Some(forwarding::run(&xdp_opts, &scratch.work_dir)?))
    } else {
        (None, None)
    };
    timed("lab", t);
    let t = Instant::now();
    let flood = if wanted(Part::Flood) {
        eprintln!("masq bench: new connections under a SYN flood (masq, classic)");
        Some(flood::run(&flood::FloodOptions {
            conn_capacity: 4096,
            factor: 10,
            keepalive_inbound: 100,
            keepalive_outbound: 20,
            conn_seconds: if opts.quick { 0.5 } else { 1.0 },
            conn_clients: 2,
            masq_bin: opts.masq_bin.clone(),
        })?)
    } else {
        None
    };
    timed("flood", t);

    let t = Instant::now();
    let failover = if wanted(Part::Failover) {
        eprintln!("masq bench: uplink failover (ISP A stops forwarding)");
        Some(failover::run(&failover::FailoverOptions {
            failures: if opts.quick { 1 } else { 4 },
            clean_seconds: opts.clean_seconds.unwrap_or(if opts.quick { 3.0 } else { 30.0 }),
            masq_bin: opts.masq_bin.clone(),
        })?)
    } else {
        None
    };

    timed("failover", t);
    let ratios = lab.as_ref().map(report::ratios).unwrap_or_default();
    let ratios_xdp = lab_xdp.as_ref().map(report::ratios).unwrap_or_default();
    let targets = report::targets(prog.as_ref(), &ratios, &ratios_xdp);
    let results = Results {
        version: 3,
        started_utc: started_utc.clone(),
        quick: opts.quick,
        seconds: started.elapsed().as_secs_f64(),
        parts,
        machine: machine(load_before),
        ratios,
        ratios_xdp,
        targets,
        lab_xdp,
        flood,
        failover,
        prog,
        memory,
        lab,
    };
    drop(scratch);
    write_results(&results, &opts.out, &started_utc)
}

fn write_results(results: &Results, out: &Path, stamp: &str) -> Result<PathBuf> {
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = serde_json::to_string_pretty(results)? + "\n";
    let svg = report::svg(results);
    let markdown = report::markdown(results);
    let file = out.join(format!("{stamp}.json"));
    for (name, text) in [
        (format!("{stamp}.json"), &json),
        ("latest.json".to_string(), &json),
        (format!("{stamp}.svg"), &svg),
        ("latest.svg".to_string(), &svg),
        (format!("{stamp}.md"), &markdown),
        ("latest.md".to_string(), &markdown),
    ] {
        let path = out.join(name);
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{markdown}");
    println!("masq bench: results in {} (and latest.json, latest.svg, latest.md)", file.display());
    Ok(file)
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn machine(load_before: String) -> Machine {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_default();
    let memory_kib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    Machine {
        cpus: std::thread::available_parallelism().map_or(0, usize::from),
        cpu_model,
        kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        memory_gib: memory_kib / 1024.0 / 1024.0,
        load_before,
        load_after: loadavg(),
    }
}

/// `YYYY-MM-DDTHH-MM-SSZ` (UTC; no colons, so it is also a file name).
fn utc_timestamp(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let ((year, month, day), (h, m, s)) = crate::events::utc_fields(secs);
    format!("{year:04}-{month:02}-{day:02}T{h:02}-{m:02}-{s:02}Z")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(Stat::of(&[3.0, 1.0, 2.0]).median, 2.0);
        assert_eq!(Stat::of(&[4.0, 1.0, 2.0, 3.0]).median, 2.5);
        assert!(Stat::of(&[]).median.is_nan());
    }

    #[test]
    fn timestamps_are_utc_civil_dates() {
        assert_eq!(utc_timestamp(UNIX_EPOCH), "1970-01-01T00-00-00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 3_723);
        assert_eq!(utc_timestamp(leap), "2000-02-29T01-02-03Z");
    }

    #[test]
    fn rng_is_reproducible_and_in_range() {
        let (mut a, mut b) = (Rng::new(7), Rng::new(7));
        for _ in 0..1000 {
            let p = a.port();
            assert_eq!(p, b.port());
            assert!(p >= 1024);
            assert!(a.bits(22) < 1 << 22);
            b.bits(22);
        }
    }
}
