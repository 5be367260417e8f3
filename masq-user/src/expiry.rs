//! The expiry pass: idle connections removed from both tables, bindings left without connections
//! freed. In the kernel (`masq_expire`, which the daemon runs by BPF_PROG_TEST_RUN) where that
//! program loads; else by reading both tables out and deleting in batches.
use std::{
    os::fd::AsFd as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::{
    maps::{Array, MapData},
    programs::{ProgramFd, Xdp},
};
use masq_common::{
    CONN_STATES, ConnState, EXPIRY_F_SWEEP_BINDINGS, EXPIRY_F_SWEEP_MAPPINGS, ExpiryFound,
    ExpiryPass as PassSlot, program_names,
};
use tracing::{info, warn};

use crate::{
    bpf_sys,
    config::Timeouts,
    conntrack::{self, Conn},
    dataplane::Dataplane,
    pinned,
};

/// The in-kernel pass: its program and its private map, taken out of the dataplane's object
/// (they outlive a reload of the programs).
pub struct KernelExpiry {
    program: ProgramFd,
    slot: Array<MapData, PassSlot>,
    /// Passes run, and whether the last one removed connections (its bindings may have been
    /// too young to free then).
    passes: u64,
    expired_last: bool,
    mappings_checked: bool,
    /// Buckets a pass walks: both connection tables' and the binding table's.
    buckets: u64,
    /// Entries the last pass found, either way (none yet: read out first).
    entries: Option<u64>,
}

/// What the two ways cost here (BENCHMARKS.md, `cargo xtask bench --only prog`): the walk in the
/// kernel ~18 ns for every bucket, full or empty, and 130–260 ns per entry; reading out ~1 ns
/// per bucket (it skips empty ones) and 470–810 ns per entry. So the walk is cheaper once the
/// tables hold more than one entry per 20 buckets, and either costs under a millisecond below
/// 64k buckets.
const WALK_NS_PER_BUCKET: u64 = 17;
const READ_OUT_NS_PER_ENTRY_MORE: u64 = 350;
const WALK_ALWAYS_BELOW_BUCKETS: u64 = 1 << 16;

/// Whether a walk over `buckets` costs less than reading out `entries` (unknown: read out).
fn walk_is_cheaper(buckets: u64, entries: Option<u64>) -> bool {
    buckets < WALK_ALWAYS_BELOW_BUCKETS
        || entries.is_some_and(|e| {
            e.saturating_mul(READ_OUT_NS_PER_ENTRY_MORE) > buckets * WALK_NS_PER_BUCKET
        })
}

/// The daemon's passes sweep the bindings after removing connections (the program does), after
/// a pass that did, and every this many passes (for connections removed otherwise: evicted,
/// flushed). Walking the binding tables costs their buckets, empty or not.
const BINDING_SWEEP_EVERY: u64 = 6;

/// What one pass did.
pub struct ExpiryPass {
    /// The connections removed, when read out (the walk in the kernel only counts them).
    pub gone: Vec<Conn>,
    /// The connections left, when the pass was asked to read them (`read_left`).
    pub left: Option<Vec<Conn>>,
    /// Connections kept.
    pub kept: usize,
    /// Connections removed.
    pub expired: u64,
    /// The clock the pass judged idleness by.
    pub now_ns: u64,
    pub took: Duration,
    /// Made by `masq_expire`, not by reading the tables out.
    pub in_kernel: bool,
}

impl KernelExpiry {
    /// Load `masq_expire` (the verifier checks it here) and take its map.
    pub fn load(dataplane: &mut Dataplane) -> anyhow::Result<Self> {
        let ebpf = dataplane.ebpf_mut();
        let xdp: &mut Xdp = ebpf
            .program_mut(program_names::EXPIRE)
            .context("program masq_expire missing")?
            .try_into()?;
        if xdp.fd().is_err() {
            xdp.load().context("loading masq_expire (verifier)")?;
        }
        let program = xdp.fd()?.try_clone()?;
        let slot = pinned::take_expiry_slot(ebpf)?;
        let size = pinned::read_table_size(dataplane.pin_dir())?;
        // A hash map has a power of two of buckets, at least one per entry it may hold.
        let buckets = |entries: u32| u64::from(entries.max(1)).next_power_of_two();
        let bindings = (size.max_entries + size.pending_max_entries) / 2;
        let buckets =
            buckets(size.max_entries) + buckets(size.pending_max_entries) + buckets(bindings);
        Ok(Self {
            program,
            slot,
            passes: 0,
            expired_last: false,
            mappings_checked: false,
            buckets,
            entries: None,
        })
    }

    /// Whether walking the tables costs less than reading them out, at the last pass's count.
    pub fn walk_is_cheaper(&self) -> bool {
        walk_is_cheaper(self.buckets, self.entries)
    }

    /// The daemon's pass: `run` with the bindings swept when due (the mappings checked on the
    /// first).
    pub fn pass(&mut self, timeouts: &Timeouts, now_ns: u64) -> anyhow::Result<ExpiryFound> {
        let sweep = self.expired_last || self.passes.is_multiple_of(BINDING_SWEEP_EVERY);
        let found = self.run(timeouts, now_ns, sweep)?;
        self.passes += 1;
        self.expired_last = found.expired > 0;
        self.entries = Some(found.entries.saturating_sub(2 * found.expired));
        Ok(found)
    }

    /// One walk at `now_ns` by `timeouts`; bindings swept when `sweep_bindings` or connections
    /// were removed (and the mappings, on the first sweep). Returns what the walk found.
    pub fn run(
        &mut self,
        timeouts: &Timeouts,
        now_ns: u64,
        sweep_bindings: bool,
    ) -> anyhow::Result<ExpiryFound> {
        let mut timeout_ns = [0u64; CONN_STATES];
        for state in STATES {
            timeout_ns[state as usize] = timeouts.of(state).as_nanos().min(u64::MAX as u128) as u64;
        }
        let flags = if sweep_bindings { EXPIRY_F_SWEEP_BINDINGS } else { 0 }
            | if sweep_bindings && !self.mappings_checked { EXPIRY_F_SWEEP_MAPPINGS } else { 0 };
        let pass = PassSlot { now_ns, timeout_ns, flags, found: ExpiryFound::default() };
        self.slot.set(0, pass, 0).context("writing EXPIRY")?;
        // XDP's test run wants a frame: a blank one.
        let (ret, _) = bpf_sys::test_run(self.program.as_fd(), &[0u8; 64], &[], 1)
            .context("BPF_PROG_TEST_RUN masq_expire")?;
        if ret != XDP_PASS {
            bail!("masq_expire returned {ret}");
        }
        let found = self.slot.get(&0, 0).context("reading EXPIRY")?.found;
        self.mappings_checked |= sweep_bindings;
        Ok(found)
    }
}

/// Every `ConnState`, in `ExpiryPass::timeout_ns`'s order.
const STATES: [ConnState; CONN_STATES] = [
    ConnState::TcpSynSent,
    ConnState::TcpEstablished,
    ConnState::TcpClosing,
    ConnState::Unreplied,
    ConnState::Replied,
    ConnState::Icmp,
];

const XDP_PASS: u32 = 2;
/// One expiry pass: in the kernel when `kernel` is there and the walk is the cheaper way, else
/// by reading the tables out. With `read_left` the connections left are read too (the event
/// record follows them), so the pass reads the tables out: that read is the pass.
pub fn expire(
    pin_dir: &Path,
    timeouts: &Timeouts,
    kernel: Option<&mut KernelExpiry>,
    read_left: bool,
) -> anyhow::Result<ExpiryPass> {
    let started = Instant::now();
    let now_ns = conntrack::clock_ns();
    let pass = match kernel {
        Some(kernel) if !read_left && kernel.walk_is_cheaper() => {
            let found = kernel.pass(timeouts, now_ns)?;
            ExpiryPass {
                gone: Vec::new(),
                left: None,
                kept: found.kept as usize,
                expired: found.expired,
                now_ns,
                took: started.elapsed(),
                in_kernel: true,
            }
        }
        kernel => {
            let (gone, left) = pinned::conn_tables(pin_dir)?.expire_keeping(timeouts, now_ns);
            if let Err(e) = pinned::sweep_bindings(pin_dir, &left, now_ns) {
                warn!("removing unused NAT bindings: {e:#}");
            }
            if let Some(kernel) = kernel {
                kernel.entries = Some(left.iter().map(|c| c.keys().count() as u64).sum());
            }
            ExpiryPass {
                expired: gone.len() as u64,
                gone,
                kept: left.len(),
                left: Some(left),
                now_ns,
                took: started.elapsed(),
                in_kernel: false,
            }
        }
    };
    if pass.expired > 0 {
        let how = if pass.in_kernel { "in the kernel" } else { "read out" };
        info!("expired {} idle connections ({how})", pass.expired);
    }
    Ok(pass)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_is_chosen_where_the_tables_are_full_enough_for_it_to_cost_less() {
        // The default capacity (262,144 connections): 512k + 128k + 512k buckets.
        let default = (1 << 19) + (1 << 17) + (1 << 19);
        assert!(!walk_is_cheaper(default, None), "read out first, to count");
        assert!(!walk_is_cheaper(default, Some(2_000)));
        assert!(walk_is_cheaper(default, Some(200_000)));
        // Tiny tables: either way costs nothing.
        assert!(walk_is_cheaper(18_432, None));
    }
}
