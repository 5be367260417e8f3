//! Uplink failover in the seed lab at the kernel's defaults, masq with dsl's `[uplink.health]`
//! at its defaults (one ICMP target, the client): ISP A's router stops forwarding (its link and
//! address stay up) and starts again, several times. Measured: from the moment it stops to the
//! first new connection of tristan's (whose policy prefers dsl) that succeeds through isp-b, and
//! from the moment it forwards again to the first that leaves by dsl again; then a clean run
//! with nothing wrong, counting transitions (false failovers). The classic recipe has no health
//! tracking: its new connections by dsl fail until someone changes the routes.
use std::{
    net::Ipv4Addr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use serde::Serialize;

use super::Stat;
use crate::{
    lab::{GatewayMode, Host, Lab, LabOptions, example_with_dsl},
    seed::{CLIENT, GW_ISP_A, GW_ISP_B},
    state::DaemonState,
};

const PORT: u16 = 8080;
/// One connection attempt of tristan's: its timeout, and the pause between attempts.
const ATTEMPT: Duration = Duration::from_millis(200);
const PAUSE: Duration = Duration::from_millis(50);
/// Longest wait for a failover or failback before the run counts as failed.
const GIVE_UP: Duration = Duration::from_secs(60);
/// Steady time before each failure (dsl up) and before each restore (dsl down): the health
/// monitor counts rounds from the change, so a longer wait changes nothing measured.
const STEADY_UP: Duration = Duration::from_millis(1500);
const STEADY_DOWN: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, Serialize)]
pub struct FailoverOptions {
    pub failures: usize,
    pub clean_seconds: f64,
    #[serde(skip)]
    pub masq_bin: std::path::PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct FailoverResult {
    /// Seconds from ISP A stopping to tristan's first new connection through isp-b.
    pub failover_s: Stat,
    /// Seconds from ISP A forwarding again to tristan's first new connection through dsl.
    pub failback_s: Stat,
    pub clean_seconds: f64,
    /// Transitions of any uplink during the clean run (false failovers).
    pub clean_transitions: u64,
}

/// Which uplink a new connection of tristan's took (by the source the client saw), if any.
fn tristan_via(lab: &Lab) -> Result<Option<Ipv4Addr>> {
    let reply = lab.tcp_request(Host::Tristan, CLIENT, PORT, ATTEMPT)?;
    Ok(reply.and_then(|r| r.trim().parse::<Ipv4Addr>().ok()))
}

/// Seconds until a new connection of tristan's succeeds from `via`.
fn until_via(lab: &Lab, via: Ipv4Addr, since: Instant) -> Result<f64> {
    loop {
        if tristan_via(lab)? == Some(via) {
            return Ok(since.elapsed().as_secs_f64());
        }
        if since.elapsed() > GIVE_UP {
            bail!("no connection of tristan's through {via} within {GIVE_UP:?}");
        }
        thread::sleep(PAUSE);
    }
}

fn isp_a_forwarding(lab: &Lab, on: bool) -> Result<()> {
    let rule = if on { "-D" } else { "-I" };
    let out = lab.exec(Host::IspA, &["iptables", rule, "FORWARD", "-j", "DROP"])?;
    ensure!(out.status.success(), "iptables {rule}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn transitions(lab: &Lab) -> u64 {
    DaemonState::load(&lab.pin_dir())
        .map(|s| s.health.iter().map(|h| h.transitions).sum())
        .unwrap_or(0)
}

pub fn run(opts: &FailoverOptions) -> Result<FailoverResult> {
    let lab = Lab::build(LabOptions { gateway: GatewayMode::Bare, ..LabOptions::default() })?;
    let config = lab.run_dir().join("masq-gw.toml");
    std::fs::write(
        &config,
        example_with_dsl(&format!("[uplink.health]\ntargets = [\"{CLIENT}\"]")),
    )?;
    let _masq = lab.start_masq(&opts.masq_bin, &config, &lab.pin_dir(), &[])?;
    let _server = lab.serve_tcp_peer_address(Host::Client, PORT)?;
    until_via(&lab, GW_ISP_A, Instant::now()).context("tristan's connections by dsl at start")?;

    let (mut failover, mut failback) = (Vec::new(), Vec::new());
    for i in 0..opts.failures {
        // Steady before each failure, so the probes run at their healthy interval.
        thread::sleep(STEADY_UP);
        let stopped = Instant::now();
        isp_a_forwarding(&lab, false)?;
        failover.push(until_via(&lab, GW_ISP_B, stopped)?);
        thread::sleep(STEADY_DOWN);
        let restored = Instant::now();
        isp_a_forwarding(&lab, true)?;
        failback.push(until_via(&lab, GW_ISP_A, restored)?);
        eprintln!(
            "masq bench: failover {}: {:.2} s to isp-b, {:.2} s back to dsl",
            i + 1,
            failover[i],
            failback[i]
        );
    }
    thread::sleep(Duration::from_secs(2));
    let before = transitions(&lab);
    eprintln!("masq bench: failover: {:.0} s with nothing wrong", opts.clean_seconds);
    let end = Instant::now() + Duration::from_secs_f64(opts.clean_seconds);
    while Instant::now() < end {
        // Light traffic through both uplinks meanwhile.
        let _ = tristan_via(&lab)?;
        thread::sleep(Duration::from_secs(1));
    }
    let clean_transitions = transitions(&lab) - before;
    Ok(FailoverResult {
        failover_s: Stat::of(&failover),
        failback_s: Stat::of(&failback),
        clean_seconds: opts.clean_seconds,
        clean_transitions,
    })
}
