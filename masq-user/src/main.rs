//! `masq`: loader, daemon and inspection CLI of the masq dataplane.
use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Parser, Subcommand};
use masq_user::{
    config::Config,
    daemon::{self, DEFAULT_PIN_DIR},
    host::HostInterfaces,
    inspect,
};

#[derive(Parser)]
#[command(
    name = "masq",
    version,
    about = "eBPF dataplane for multi-uplink Linux gateways"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a config file without touching the system (exit 2 when invalid).
    Check {
        #[arg(short, long)]
        config: PathBuf,
        /// Skip the checks against this host's interfaces.
        #[arg(long)]
        offline: bool,
    },
    /// Load the dataplane and serve until SIGINT/SIGTERM (root).
    Run {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Stop the daemon and remove everything masq installed (root).
    Down {
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Counters by path and every drop reason.
    Stats {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The connection table.
    Conns {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Build the seed lab in network namespaces and demonstrate masq (used by `cargo xtask lab`).
    #[command(hide = true)]
    Lab {
        #[arg(long)]
        keep: bool,
    },
}

fn check(path: &Path, offline: bool) -> ExitCode {
    let result = Config::load(path).and_then(|cfg| {
        if !offline {
            let host = HostInterfaces::read().map_err(|e| masq_user::config::ConfigError {
                key: "host".into(),
                message: format!("{e:#}"),
            })?;
            cfg.check_host(&host)?;
        }
        Ok(cfg)
    });
    match result {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config, offline } => return check(&config, offline),
        Command::Run { config, pin_dir } => daemon::run(&config, &pin_dir),
        Command::Down { config, pin_dir } => match config.map(|c| Config::load(&c)).transpose() {
            Ok(cfg) => daemon::down(cfg.as_ref(), &pin_dir),
            Err(e) => Err(e.into()),
        },
        Command::Stats { pin_dir, json } => inspect::stats(&pin_dir, json),
        Command::Conns { pin_dir, json } => inspect::conns(&pin_dir, json),
        Command::Lab { keep } => std::env::current_exe()
            .map_err(anyhow::Error::from)
            .and_then(|exe| masq_user::lab::run_demo(&exe, keep)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("masq: {e:#}");
            ExitCode::FAILURE
        }
    }
}
