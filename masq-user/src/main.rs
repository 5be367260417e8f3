//! `masq`: loader, daemon and inspection CLI of the masq dataplane.
//!
//! The inspection commands (`status`, `uplinks`, `conns`, `stats`) read the maps pinned under
//! `--pin-dir`, so they work whether the daemon runs or not and from any network namespace.
//! Every listing has `--json`; `docs/cli-json.md` documents the fields.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};
use masq_user::{
    config::Config,
    daemon::{self, DEFAULT_PIN_DIR},
    host::HostInterfaces,
    inspect::{self, ConnFilter},
    state::{self, Names},
};
use tracing::level_filters::LevelFilter;

#[derive(Parser)]
#[command(name = "masq", version, about = "eBPF dataplane for multi-uplink Linux gateways")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which dataplane to read, and where names come from.
#[derive(Args, Clone)]
struct Target {
    /// Where the daemon pinned the maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR, global = true)]
    pin_dir: PathBuf,
    /// Config for uplink and interface names [default: the running daemon's, else
    /// /etc/masq/masq.toml; without either, uplinks show as #index].
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
}

impl Target {
    fn names(&self) -> Names {
        Names::resolve(&self.pin_dir, self.config.as_deref())
    }
}

/// Which connections.
#[derive(Args, Clone)]
struct FilterArgs {
    /// Only this uplink's connections (name, or index as #N).
    #[arg(long, global = true)]
    uplink: Option<String>,
    /// Only this protocol: tcp, udp, icmp (or a number).
    #[arg(long, global = true, value_parser = inspect::parse_proto)]
    proto: Option<u8>,
    /// Only connections with this address in their original or translated tuple.
    #[arg(long, global = true)]
    host: Option<Ipv4Addr>,
}

impl FilterArgs {
    fn filter(&self, names: &Names) -> anyhow::Result<ConnFilter> {
        Ok(ConnFilter {
            uplink: self.uplink.as_deref().map(|u| names.uplink_index(u)).transpose()?,
            proto: self.proto,
            host: self.host,
        })
    }
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
    /// Load the dataplane and serve until SIGINT/SIGTERM; SIGHUP reloads the config (root).
    Run {
        #[arg(short, long)]
        config: PathBuf,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9100).
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
    },
    /// Stop the daemon and remove everything masq installed (root).
    Down {
        #[arg(short, long)]
        config: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
    },
    /// Make the running daemon re-read its config (SIGHUP) and say whether it applied it.
    Reload {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// How long to wait for the daemon's answer, in seconds.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Programs attached per interface, uplinks, table fill, daemon.
    Status {
        #[command(flatten)]
        target: Target,
        /// JSON output (fields documented in docs/cli-json.md).
        #[arg(long)]
        json: bool,
    },
    /// Traffic and connections per uplink.
    Uplinks {
        #[command(flatten)]
        target: Target,
        /// JSON output (fields documented in docs/cli-json.md).
        #[arg(long)]
        json: bool,
    },
    /// The connection table; `masq conns flush --uplink NAME` removes connections.
    Conns {
        #[command(subcommand)]
        action: Option<ConnsAction>,
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: FilterArgs,
        /// Stream connections as they are created and end, until interrupted (from the
        /// running daemon; `--json`: one JSON object per line).
        #[arg(long)]
        watch: bool,
        /// JSON output (fields documented in docs/cli-json.md).
        #[arg(long, global = true)]
        json: bool,
    },
    /// Counters by path and every drop reason.
    Stats {
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// JSON output (fields documented in docs/cli-json.md).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum ConnsAction {
    /// Remove the connections of one uplink (--uplink required; --proto and --host narrow it
    /// further), both directions; their next packets are dropped or start over (root).
    Flush,
}

fn check(path: &Path, offline: bool) -> ExitCode {
    let result = Config::load(path).and_then(|cfg| {
        if !offline {
            let host = HostInterfaces::read().map_err(|e| masq_user::config::ConfigError {
                key: "host".into(),
                message: format!("{e:#}"),
            })?;
            cfg.check_host(&host)?;
            for u in cfg.waiting_interfaces(&host) {
                println!(
                    "note: uplink {}: interface {} does not exist yet; it waits for it",
                    u.name, u.interface
                );
            }
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

/// Log events, one line each, to stderr (the journal under systemd, which adds its own
/// timestamps). `MASQ_LOG` sets the level: error, warn, info (default), debug, trace, off.
fn init_logging() {
    let level = std::env::var("MASQ_LOG")
        .ok()
        .and_then(|v| v.parse::<LevelFilter>().ok())
        .unwrap_or(LevelFilter::INFO);
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

fn conns(
    action: Option<ConnsAction>,
    target: &Target,
    filter: &FilterArgs,
    json: bool,
) -> anyhow::Result<()> {
    let names = target.names();
    let conn_filter = filter.filter(&names)?;
    match action {
        None => inspect::conns(&target.pin_dir, &names, &conn_filter, json),
        Some(ConnsAction::Flush) => {
            let Some(uplink) = conn_filter.uplink else {
                anyhow::bail!("masq conns flush needs --uplink NAME");
            };
            daemon::require_root()?;
            let removed = inspect::flush(&target.pin_dir, &conn_filter)?;
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "uplink": uplink, "uplink_name": names.uplink(uplink),
                                        "removed": removed })
                );
            } else {
                println!(
                    "masq: removed {removed} connection{} of uplink {}",
                    if removed == 1 { "" } else { "s" },
                    names.uplink(uplink)
                );
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Down { .. }) {
        // Inspection output piped into `head` ends quietly, like other Unix tools.
        // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // The host's bpffs even from a private mount namespace (`ip netns exec`), before any
    // thread starts. `run` and `down` fail on their own if it cannot be had; for the
    // inspection commands, opening the pins says what is missing.
    if !matches!(cli.command, Command::Check { .. })
        && let Err(e) = masq_user::dataplane::ensure_bpffs()
        && matches!(cli.command, Command::Run { .. } | Command::Down { .. })
    {
        eprintln!("masq: {e:#}");
        return ExitCode::from(1);
    }
    let result = match cli.command {
        Command::Check { config, offline } => return check(&config, offline),
        Command::Run { config, pin_dir, metrics } => {
            init_logging();
            daemon::run(&config, &pin_dir, metrics)
        }
        Command::Down { config, pin_dir } => {
            init_logging();
            match config.map(|c| Config::load(&c)).transpose() {
                Ok(cfg) => daemon::down(cfg.as_ref(), &pin_dir),
                Err(e) => Err(e.into()),
            }
        }
        Command::Reload { pin_dir, timeout } => {
            state::reload(&pin_dir, Duration::from_secs(timeout))
        }
        Command::Status { target, json } => inspect::status(&target.pin_dir, &target.names(), json),
        Command::Uplinks { target, json } => {
            inspect::uplinks(&target.pin_dir, &target.names(), json)
        }
        Command::Conns { watch: true, action: Some(_), .. } => {
            Err(anyhow::anyhow!("--watch streams connections; it does not go with flush"))
        }
        Command::Conns { watch: true, target, filter, json, .. } => {
            let names = target.names();
            filter.filter(&names).and_then(|f| masq_user::events::watch(&target.pin_dir, &f, json))
        }
        Command::Conns { action, target, filter, json, .. } => {
            conns(action, &target, &filter, json)
        }
        Command::Stats { pin_dir, json } => inspect::stats(&pin_dir, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("masq: {e:#}");
            ExitCode::FAILURE
        }
    }
}
