//! Developer tasks for masq: `cargo xtask <task>` (the alias lives in `.cargo/config.toml`).
//!
//! Builds on stable Rust alone and does not depend on masq-user, so `cargo xtask setup` works on a
//! fresh machine before the eBPF toolchain is there. Every task except `setup` runs `setup` first.

mod setup;

use std::{
    env,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about = "masq developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Make this Debian machine ready to build and test masq (idempotent; needs root).
    Setup,
    /// Build masq in release mode (target/release/masq).
    Build,
    /// Build masq and run the seed-topology demo in network namespaces.
    Lab {
        /// Leave the lab up until Ctrl-C, printing how to enter each host.
        #[arg(long)]
        keep: bool,
    },
    /// Run the workspace tests serially (they share kernel state).
    ///
    /// Extra arguments go to `cargo test`; arguments after a second `--` go to the test harness,
    /// e.g. `cargo xtask test -- -p masq-user --test integration -- lab_baseline::`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build masq and run `masq run <args>`.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build masq and benchmark it against the classic iptables recipe and plain routing
    /// (program cost, lab forwarding, memory); results in bench-results/ (see BENCHMARKS.md).
    Bench {
        /// Fewer rounds and repeats, smaller tables: under 3 minutes, for development.
        #[arg(long)]
        quick: bool,
        /// Results directory (default: bench-results/ at the workspace root).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<ExitCode> {
    setup::run()?;
    match task {
        Task::Setup => Ok(ExitCode::SUCCESS),
        Task::Build => {
            build()?;
            Ok(ExitCode::SUCCESS)
        }
        Task::Lab { keep } => {
            build_lab()?;
            let mut args = vec!["lab".to_string()];
            if keep {
                args.push("--keep".into());
            }
            exec_release("masq-lab", &args)
        }
        Task::Test { args } => test(&args),
        Task::Run { args } => {
            build()?;
            let mut masq_args = vec!["run".to_string()];
            masq_args.extend(args);
            exec_release("masq", &masq_args)
        }
        Task::Bench { quick, out } => {
            build_lab()?;
            exec_release("masq-lab", &bench_args(quick, out))
        }
    }
}

/// `masq-lab bench [--quick] --out <dir>`, the directory absolute so the caller's cwd does not matter.
fn bench_args(quick: bool, out: Option<PathBuf>) -> Vec<String> {
    let out = out.unwrap_or_else(|| workspace_root().join("bench-results"));
    let out = if out.is_absolute() {
        out
    } else {
        env::current_dir().map(|cwd| cwd.join(&out)).unwrap_or(out)
    };
    let mut args = vec!["bench".to_string()];
    if quick {
        args.push("--quick".into());
    }
    args.extend(["--out".to_string(), out.to_string_lossy().into_owned()]);
    args
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The cargo that runs us (set by `cargo run`), else the one on PATH.
fn cargo() -> Command {
    let mut cmd = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

/// The product: `target/release/masq`, without the lab.
fn build() -> Result<()> {
    cargo_build(&["build", "--release", "-p", "masq-user", "--bin", "masq"])
}

/// `masq` and, beside it, `masq-lab` (the lab and the benchmarks; feature `lab`).
fn build_lab() -> Result<()> {
    cargo_build(&["build", "--release", "-p", "masq-user", "--features", "lab", "--bins"])
}

fn cargo_build(args: &[&str]) -> Result<()> {
    println!("xtask: cargo {}", args.join(" "));
    let status = cargo().args(args).status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Replaces this process with `target/release/<binary> <args>`, so Ctrl-C and the exit status
/// are the binary's.
fn exec_release(binary: &str, args: &[String]) -> Result<ExitCode> {
    let path = target_dir().join("release").join(binary);
    println!("xtask: {} {}", path.display(), args.join(" "));
    let err = Command::new(&path).args(args).exec();
    bail!("cannot run {}: {err}", path.display())
}

fn test(args: &[String]) -> Result<ExitCode> {
    let mut cmd = test_command(args);
    println!("xtask: {}", describe(&cmd));
    let status = cmd.status().context("running cargo test")?;
    Ok(match status.code() {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::FAILURE,
    })
}

/// `cargo test --workspace --exclude masq-ebpf <cargo args> -- --test-threads=1 <harness args>`;
/// with `-p`/`--package` among the cargo args, those packages replace the whole workspace.
fn test_command(args: &[String]) -> Command {
    let (cargo_args, harness_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (&args[..i], &args[i + 1..]),
        None => (args, &[][..]),
    };
    let picks_packages =
        cargo_args.iter().any(|a| a.starts_with("-p") || a.starts_with("--package"));
    let mut cmd = cargo();
    cmd.arg("test");
    if !picks_packages {
        cmd.args(["--workspace", "--exclude", "masq-ebpf"]);
    }
    cmd.args(cargo_args).args(["--", "--test-threads=1"]).args(harness_args);
    cmd
}

fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_args(cli: &[&str]) -> String {
        let cli = Cli::try_parse_from(cli).unwrap();
        let Task::Test { args } = cli.task else { panic!("not the test task") };
        let cmd = test_command(&args);
        describe(&cmd).split_once(' ').unwrap().1.to_string()
    }

    #[test]
    fn test_task_splits_cargo_and_harness_args() {
        assert_eq!(
            test_args(&["xtask", "test"]),
            "test --workspace --exclude masq-ebpf -- --test-threads=1"
        );
        assert_eq!(
            test_args(&["xtask", "test", "--", "--release", "--", "classic"]),
            "test --workspace --exclude masq-ebpf --release -- --test-threads=1 classic"
        );
        assert_eq!(
            test_args(&["xtask", "test", "--", "-p", "masq-user", "--test", "integration"]),
            "test -p masq-user --test integration -- --test-threads=1"
        );
    }

    #[test]
    fn bench_task_runs_masq_bench_with_an_absolute_out_dir() {
        let cli = Cli::try_parse_from(["xtask", "bench", "--quick"]).unwrap();
        let Task::Bench { quick, out } = cli.task else { panic!("not the bench task") };
        let args = bench_args(quick, out);
        assert_eq!(args[..3], ["bench", "--quick", "--out"]);
        assert_eq!(PathBuf::from(&args[3]), workspace_root().join("bench-results"));
        let args = bench_args(false, Some(PathBuf::from("/tmp/b")));
        assert_eq!(args, ["bench", "--out", "/tmp/b"]);
    }

    #[test]
    fn run_task_passes_masq_args_through() {
        let cli = Cli::try_parse_from(["xtask", "run", "--", "-c", "x.toml", "--pin-dir", "/p"]);
        let Task::Run { args } = cli.unwrap().task else { panic!("not the run task") };
        assert_eq!(args, ["-c", "x.toml", "--pin-dir", "/p"]);
    }
}
