//! New connections under a SYN flood, in the seed lab at the kernel's defaults: keep-alive
//! connections held through the gateway (inbound to isolde, outbound from tristan), then a
//! random-source SYN flood toward the published address from the client's side, ten times
//! masq's connection capacity in distinct sources, cycled for the whole window. Measured: new
//! connections/s the clients complete with and without the flood, and how many of the
//! keep-alive connections still carry data afterwards. masq and the classic recipe alike (the
//! classic's conntrack keeps the kernel's default size: its flood is the same packets).
use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, ensure};
use serde::Serialize;

use super::forwarding::{Gateway, conn_rate, spawn_in, wait_reachable};
use crate::{
    frames::{Ip, TCP_SYN},
    lab::{GatewayMode, Host, Lab, LabOptions},
    pinned::read_counters,
    seed::{CLIENT, PUBLIC_ISP_A},
};

const KEEPALIVE_PORT: u16 = 8081;
const OUTBOUND_PORT: u16 = 9001;
const FLOOD_PORT: u16 = 80;

#[derive(Clone, Debug, Serialize)]
pub struct FloodOptions {
    /// masq's `conn_capacity` (its pending table: a quarter); the flood is `factor` times it.
    pub conn_capacity: u32,
    pub factor: u32,
    pub keepalive_inbound: usize,
    pub keepalive_outbound: usize,
    pub conn_seconds: f64,
    pub conn_clients: usize,
    #[serde(skip)]
    pub masq_bin: std::path::PathBuf,
}

#[derive(Clone, Debug, Serialize)]
pub struct FloodResult {
    pub gateway: &'static str,
    /// Distinct spoofed sources of the flood.
    pub flood_sources: u32,
    /// SYNs sent, and per second, during the flood window.
    pub flood_syns: u64,
    pub flood_pps: f64,
    pub conns_per_s_quiet: f64,
    pub conns_per_s_flood: f64,
    pub conn_failures_flood: u64,
    /// Keep-alive connections, and how many no longer carried data after the flood.
    pub keepalive: usize,
    pub keepalive_lost: usize,
    /// masq only: confirmed table full and new connections refused, as counted.
    pub confirmed_table_full: Option<u64>,
    pub refused: Option<u64>,
}

pub fn run(opts: &FloodOptions) -> Result<Vec<FloodResult>> {
    [Gateway::Masq, Gateway::Classic].into_iter().map(|g| measure(g, opts)).collect()
}

/// `f`'s result, run on a thread in `host`'s namespace.
fn in_ns<T: Send + 'static>(
    lab: &Lab,
    host: Host,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T> {
    spawn_in(lab.ns(host).path(), f).join().map_err(|_| anyhow!("a thread in {host} panicked"))?
}

/// `n` connections from `from` to `to:port`, accepted by a listener in `server`'s namespace:
/// (client ends, server ends).
fn hold(
    lab: &Lab,
    from: Host,
    server: Host,
    to: Ipv4Addr,
    port: u16,
    n: usize,
) -> Result<Vec<(TcpStream, TcpStream)>> {
    let listener = in_ns(lab, server, move || TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))??;
    let accepted = thread::spawn(move || -> Result<Vec<TcpStream>> {
        (0..n).map(|_| Ok(listener.accept()?.0)).collect()
    });
    let clients = in_ns(lab, from, move || -> Result<Vec<TcpStream>> {
        let addr = SocketAddr::from((to, port));
        (0..n).map(|_| Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(3))?)).collect()
    })??;
    let servers = accepted.join().map_err(|_| anyhow!("accept thread panicked"))??;
    for s in clients.iter().chain(&servers) {
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
    }
    Ok(clients.into_iter().zip(servers).collect())
}

/// Whether a held connection still carries a few bytes each way.
fn alive((a, b): &(TcpStream, TcpStream)) -> bool {
    let mut buf = [0u8; 4];
    let mut one_way = |mut from: &TcpStream, mut to: &TcpStream| {
        from.write_all(b"ping").is_ok() && to.read_exact(&mut buf).is_ok() && &buf == b"ping"
    };
    one_way(a, b) && one_way(b, a)
}

fn measure(gateway: Gateway, opts: &FloodOptions) -> Result<FloodResult> {
    let mode = match gateway {
        Gateway::Classic => GatewayMode::Classic,
        _ => GatewayMode::Bare,
    };
    let lab = Lab::build(LabOptions { gateway: mode, ..LabOptions::default() })?;
    let pending = masq_common::default_pending_capacity(opts.conn_capacity);
    let _masq = match gateway {
        Gateway::Masq => {
            let config = lab.run_dir().join("masq-gw.toml");
            let extra = format!(
                "\n[dataplane]\nconn_capacity = {}\npending_capacity = {pending}\n",
                opts.conn_capacity
            );
            std::fs::write(&config, format!("{}{extra}", super::EXAMPLE_CONFIG))?;
            Some(lab.start_masq(&opts.masq_bin, &config, &lab.pin_dir(), &[])?)
        }
        _ => None,
    };
    wait_reachable(&lab, PUBLIC_ISP_A)?;
    // The flood's target answers every SYN (syncookies once its backlog is full).
    let _target =
        in_ns(&lab, Host::Isolde, || TcpListener::bind((Ipv4Addr::UNSPECIFIED, FLOOD_PORT)))??;
    let mut held = hold(
        &lab,
        Host::Client,
        Host::Isolde,
        PUBLIC_ISP_A,
        KEEPALIVE_PORT,
        opts.keepalive_inbound,
    )
    .context("inbound keep-alive connections")?;
    held.extend(
        hold(&lab, Host::Tristan, Host::Client, CLIENT, OUTBOUND_PORT, opts.keepalive_outbound)
            .context("outbound keep-alive connections")?,
    );
    ensure!(
        held.iter().all(alive),
        "{}: keep-alive connections dead before the flood",
        gateway.name()
    );

    let duration = Duration::from_secs_f64(opts.conn_seconds);
    let conns_per_s_quiet =
        conn_rate(&lab, Host::Client, PUBLIC_ISP_A, duration, opts.conn_clients)?.per_s;

    let sources = opts.conn_capacity * opts.factor;
    let syns: Vec<Vec<u8>> = (0..sources)
        .map(|i| {
            let src = Ipv4Addr::from(0x0b00_0000 + i);
            let port = 1024 + (i % 64_000) as u16;
            Ip::new(src, PUBLIC_ISP_A).tcp_seq(port, FLOOD_PORT, TCP_SYN, (i, 0), b"")
        })
        .collect();
    let raw = lab.raw_ip_socket(Host::Client)?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let flooder = {
        let (stop, sent) = (stop.clone(), sent.clone());
        thread::spawn(move || {
            for syn in syns.iter().cycle() {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if raw.send(syn).is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // One pass over every source first: the tables see the whole flood before measuring.
    while sent.load(Ordering::Relaxed) < u64::from(sources) {
        thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    let before = sent.load(Ordering::Relaxed);
    let flooded = conn_rate(&lab, Host::Client, PUBLIC_ISP_A, duration, opts.conn_clients)?;
    let (conns_per_s_flood, conn_failures_flood) = (flooded.per_s, flooded.failures);
    let flood_syns = sent.load(Ordering::Relaxed) - before;
    let flood_pps = flood_syns as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    flooder.join().map_err(|_| anyhow!("flood thread panicked"))?;

    let keepalive_lost = held.iter().filter(|c| !alive(c)).count();
    let counter = |name: &str| -> Option<u64> {
        let counters = read_counters(&lab.pin_dir()).ok()?;
        counters.iter().find(|c| c.name == name).map(|c| c.value)
    };
    let masq = gateway == Gateway::Masq;
    let result = FloodResult {
        gateway: gateway.name(),
        flood_sources: sources,
        flood_syns,
        flood_pps,
        conns_per_s_quiet,
        conns_per_s_flood,
        conn_failures_flood,
        keepalive: held.len(),
        keepalive_lost,
        confirmed_table_full: masq.then(|| counter("confirmed_table_full")).flatten(),
        refused: masq
            .then(|| {
                Some(counter("drop_conn_insert_failed")? + counter("drop_nat_port_exhausted")?)
            })
            .flatten(),
    };
    eprintln!(
        "masq bench: flood: {:<7} {:>7.0} SYN/s; new conn/s {:>6.0} quiet, {:>6.0} flooded ({} \
         failed); keep-alive lost {} of {}",
        result.gateway,
        result.flood_pps,
        result.conns_per_s_quiet,
        result.conns_per_s_flood,
        result.conn_failures_flood,
        result.keepalive_lost,
        result.keepalive
    );
    Ok(result)
}
