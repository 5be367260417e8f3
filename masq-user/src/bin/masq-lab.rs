//! `masq-lab`: the seed lab demonstration and the benchmarks, run by `cargo xtask lab` and
//! `cargo xtask bench`. Not part of what a gateway runs: built only with feature `lab`, it drives
//! the `masq` binary beside it as the gateway.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "masq-lab", version, about = "masq's lab demonstration and benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build the seed lab in network namespaces and demonstrate masq (`cargo xtask lab`).
    Lab {
        /// Leave the lab up until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Benchmarks: masq, the classic recipe and plain routing side by side (`cargo xtask bench`).
    Bench {
        /// Fewer rounds and repeats, smaller tables (under 1.5 minutes).
        #[arg(long)]
        quick: bool,
        /// Length of the failover part's clean run, counting false failovers (default 30 s,
        /// quick 3 s; 300 for the five-minute check).
        #[arg(long)]
        clean_seconds: Option<f64>,
        /// Profile one established path hot (masq, then its floor) with perf: time per packet by
        /// source line, printed; nothing else is measured. `<path>:spread` profiles it spread
        /// over a 100k-connection table.
        #[arg(long)]
        profile: Option<String>,
        /// Directory for the results (JSON, SVG chart, Markdown summary).
        #[arg(long, default_value = "bench-results")]
        out: PathBuf,
        /// Run one part only.
        #[arg(long, value_enum)]
        only: Option<masq_user::bench::Part>,
    },
}

/// The `masq` binary built beside this one.
fn masq_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating masq-lab")?;
    let masq = exe.parent().unwrap_or(Path::new(".")).join("masq");
    anyhow::ensure!(masq.exists(), "no masq binary beside {} (cargo xtask build)", exe.display());
    Ok(masq)
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Lab { keep } => masq_bin().and_then(|masq| masq_user::lab::run_demo(&masq, keep)),
        Command::Bench { quick, out, only, clean_seconds, profile } => {
            masq_bin().and_then(|masq_bin| {
                let opts = masq_user::bench::BenchOptions {
                    quick,
                    out,
                    masq_bin,
                    only,
                    clean_seconds,
                    profile,
                };
                masq_user::bench::run(&opts).map(drop)
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("masq-lab: {e:#}");
            ExitCode::FAILURE
        }
    }
}
