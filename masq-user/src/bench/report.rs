//! The results for people: ratios, targets, a Markdown summary and an SVG chart.
use std::fmt::Write as _;

use super::{
    Ratio, Results, Stat, Target,
    forwarding::{Gateway, GatewaySummary, LabResults},
    prog::{MemoryResult, PathKind, ProgResults},
};

/// masq against the classic recipe and against plain routing, metric by metric (medians).
pub fn ratios(lab: &LabResults) -> Vec<Ratio> {
    let of = |gateway: Gateway| lab.summary.iter().find(|s| s.gateway == gateway);
    let (Some(masq), Some(classic), Some(forward)) =
        (of(Gateway::Masq), of(Gateway::Classic), of(Gateway::Forward))
    else {
        return Vec::new();
    };
    type Pick = fn(&GatewaySummary) -> &Stat;
    let metrics: [(&str, &str, &str, Pick); 8] = [
        ("udp_e2e_pps", "packets/s", "higher", |s| &s.udp_e2e_pps),
        ("udp_gw_pps", "packets/s", "higher", |s| &s.udp_gw_pps),
        ("udp_gw_softirq_ns_per_packet", "ns", "lower", |s| &s.udp_gw_softirq_ns_per_packet),
        ("udp_gw_busy_ns_per_packet", "ns", "lower", |s| &s.udp_gw_busy_ns_per_packet),
        ("tcp_gbps", "Gbit/s", "higher", |s| &s.tcp_gbps),
        ("conns_per_s", "connections/s", "higher", |s| &s.conns_per_s),
        ("conns_gw_per_s", "connections/s", "higher", |s| &s.conns_gw_per_s),
        ("conns_gw_busy_ns_per_conn", "ns", "lower", |s| &s.conns_gw_busy_ns_per_conn),
    ];
    metrics
        .into_iter()
        .map(|(metric, unit, better, pick)| {
            let (m, c, f) = (pick(masq).median, pick(classic).median, pick(forward).median);
            Ratio {
                metric,
                unit,
                better,
                masq: m,
                classic: c,
                forward: f,
                masq_over_classic: m / c,
                masq_over_forward: m / f,
            }
        })
        .collect()
}

/// Established paths: their targets are against the floor, hot and spread.
const ESTABLISHED: [PathKind; 7] = [
    PathKind::InboundEstablished,
    PathKind::InboundReply,
    PathKind::OutboundEstablished,
    PathKind::OutboundReply,
    PathKind::InboundEstablishedTc,
    PathKind::OutboundReplyTc,
    PathKind::EgressTranslated,
];

/// Established paths ≤ 1.3× their floor (hot and spread), new connections ≤ 1.5× the floor's
/// bare inserts, at every table size; in the lab, XDP mode gateway-dominated UDP ≥ 3× the
/// classic recipe and ≥ 1× plain forwarding, TC mode TCP ≥ 1×, 64-byte UDP ≥ 1.3× and new
/// connections/s ≥ 1.2× the classic recipe, each ≥ 1× plain forwarding; the RFC 1812 checks
/// timed alone ≤ 10 ns per packet. UDP and new connections are taken through gw alone, where
/// the gateway's cost dominates (end to end, the endpoints' stacks and two more routers bound
/// them: plain forwarding itself is within a few percent of the recipe there).
pub fn targets(prog: Option<&ProgResults>, tc: &[Ratio], xdp: &[Ratio]) -> Vec<Target> {
    let mut out = Vec::new();
    let at_most = |what: String, target: f64, measured: f64| Target {
        what,
        over: "floor",
        relation: "<=",
        target,
        measured,
        met: measured <= target,
    };
    for level in prog.iter().flat_map(|p| &p.levels) {
        for path in &level.paths {
            let Some(floor) = &path.floor else { continue };
            let at = format!("{} at {}", path.path.name(), count(level.conns));
            if ESTABLISHED.contains(&path.path) {
                out.push(at_most(format!("{at}, hot"), 1.3, floor.hot_ratio.median));
                out.push(at_most(format!("{at}, spread"), 1.3, floor.spread_ratio.median));
            } else if path.path.opens() {
                out.push(at_most(at, 1.5, floor.hot_ratio.median));
            }
        }
    }
    if let Some(alone) = prog.map(|p| &p.validation_alone) {
        let measured = alone.per_packet_ns.median;
        out.push(Target {
            what: format!("RFC 1812 checks on {}, timed alone", alone.path.name()),
            over: "ns",
            relation: "<=",
            target: 10.0,
            measured,
            met: measured <= 10.0,
        });
    }
    let at_least = |mode: &str, ratios: &[Ratio], metric: &str, over_classic: f64| {
        let ratio = ratios.iter().find(|r| r.metric == metric)?;
        let target = |over, target: f64, measured: f64| Target {
            what: format!("{mode} mode {metric}"),
            over,
            relation: ">=",
            target,
            measured,
            met: measured >= target,
        };
        Some([
            target("classic", over_classic, ratio.masq_over_classic),
            target("forward", 1.0, ratio.masq_over_forward),
        ])
    };
    for (mode, ratios, metric, over_classic) in [
        ("XDP", xdp, "udp_gw_pps", 3.0),
        ("TC", tc, "tcp_gbps", 1.0),
        ("TC", tc, "udp_gw_pps", 1.3),
        ("TC", tc, "conns_gw_per_s", 1.2),
    ] {
        out.extend(at_least(mode, ratios, metric, over_classic).into_iter().flatten());
    }
    out
}

fn count(conns: usize) -> String {
    match conns {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}k", n / 1_000),
        n => n.to_string(),
    }
}

fn si(value: f64, unit: &str) -> String {
    match unit {
        "packets/s" => format!("{:.3} Mpps", value / 1e6),
        "Gbit/s" => format!("{value:.1} Gbit/s"),
        "connections/s" => format!("{:.0}/s", value),
        "ns" => format!("{value:.0} ns"),
        _ => format!("{value}"),
    }
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let mode = if r.quick { "quick" } else { "full" };
    let m = &r.machine;
    let parts: Vec<String> =
        r.parts.iter().map(|p| format!("{} {:.0} s", p.part, p.seconds)).collect();
    let _ = writeln!(
        s,
        "## Run {} ({mode}, {:.0} s: {})\n",
        r.started_utc,
        r.seconds,
        parts.join(", ")
    );
    let _ = writeln!(
        s,
        "{} × {} ({:.0} GiB), kernel {}. Load average before {}, after {} \
         (the machine was shared: other work ran meanwhile).\n",
        m.cpus, m.cpu_model, m.memory_gib, m.kernel, m.load_before, m.load_after
    );
    if let Some(prog) = &r.prog {
        prog_section(&mut s, prog);
    }
    if let Some(lab) = &r.lab {
        lab_section(&mut s, lab, &r.ratios, m.cpus);
    }
    if let Some(lab) = &r.lab_xdp {
        lab_section(&mut s, lab, &r.ratios_xdp, m.cpus);
    }
    if let Some(flood) = &r.flood {
        flood_section(&mut s, flood);
    }
    if let Some(failover) = &r.failover {
        failover_section(&mut s, failover);
    }
    if let Some(memory) = &r.memory {
        memory_section(&mut s, memory);
    }
    if !r.targets.is_empty() {
        targets_section(&mut s, &r.targets);
    }
    s
}

fn failover_section(s: &mut String, f: &super::failover::FailoverResult) {
    let _ = writeln!(
        s,
        "### Uplink failover (lab, default settings)\n\n\
         masq with dsl's `[uplink.health]` at its defaults (ICMP to the client every 0.5 s, \
         1 s timeout, down after 3, up after 5). ISP A's router stops forwarding, its link and \
         address up: time to tristan's first new connection through isp-b (a connect attempt \
         every 0.25 s); then it forwards again: time to the first one by dsl again. {} \
         failures. The classic recipe has no health tracking: its connections by dsl fail until \
         the routes are changed by hand (mwan3's defaults take about 50 s).\n",
        f.failover_s.runs.len()
    );
    let _ = writeln!(s, "| | median | min | max |\n|---|---:|---:|---:|");
    for (what, st) in
        [("failover to isp-b (s)", &f.failover_s), ("failback to dsl (s)", &f.failback_s)]
    {
        let _ = writeln!(s, "| {what} | {:.2} | {:.2} | {:.2} |", st.median, st.min, st.max);
    }
    let met = |ok: bool| if ok { "met" } else { "**missed**" };
    let _ = writeln!(
        s,
        "\nTransitions over a clean {:.0} s run afterwards: {} (false failovers).\n\n\
         Targets: failover median ≤ 3 s: {}; no false failover: {}.\n",
        f.clean_seconds,
        f.clean_transitions,
        met(f.failover_s.median <= 3.0),
        met(f.clean_transitions == 0)
    );
}

fn flood_section(s: &mut String, results: &[super::flood::FloodResult]) {
    let _ = writeln!(
        s,
        "### New connections under a SYN flood (lab, default settings)\n\n\
         masq at `conn_capacity = 4096` (pending 1024); a random-source SYN flood to \
         67.17.28.10:80 from the client's side, cycling ten times the capacity in sources, \
         isolde answering each; 120 keep-alive connections (100 inbound, 20 outbound) held \
         through it. The classic recipe's conntrack keeps the kernel's default size.\n"
    );
    let _ = writeln!(
        s,
        "| gateway | flood SYN/s | new conn/s quiet | new conn/s flooded | failed | keep-alive lost |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in results {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {} | {} of {} |",
            r.gateway,
            r.flood_pps,
            r.conns_per_s_quiet,
            r.conns_per_s_flood,
            r.conn_failures_flood,
            r.keepalive_lost,
            r.keepalive
        );
    }
    let by = |name: &str| results.iter().find(|r| r.gateway == name);
    if let (Some(m), Some(c)) = (by("masq"), by("classic")) {
        let _ = writeln!(
            s,
            "\nmasq / classic, new connections/s under the flood: {:.2}×; masq's confirmed table \
             full {} times, {} new connections refused.\n",
            m.conns_per_s_flood / c.conns_per_s_flood,
            m.confirmed_table_full.unwrap_or(0),
            m.refused.unwrap_or(0)
        );
    }
}

fn prog_section(s: &mut String, p: &ProgResults) {
    let _ = writeln!(
        s,
        "### Program cost, ns per packet (BPF_PROG_TEST_RUN, repeat {}, median of {} runs)\n",
        p.repeat, p.runs
    );
    let _ = writeln!(
        s,
        "`hot`: one flow; `spread`: a different flow each repeat (up to {} flows sampled uniformly \
         from the table); `zipf`: as many frames, flows drawn Zipf-distributed (s = 1: a few heavy \
         flows, many light ones). Harness cost subtracted. Table capacity {} connections. A new \
         connection's floor is the bare inserts it needs.\n",
        p.spread_max, p.conn_capacity
    );
    let cell = |m: Option<&super::prog::Measured>| {
        m.map_or("–".into(), |m| format!("{:.0}", m.ns.median))
    };
    let ratio = |r: Option<&Stat>| r.map_or("–".into(), |r| format!("{:.2}", r.median));
    for level in &p.levels {
        let _ = writeln!(
            s,
            "{} connections: masq, its floor (`floor.rs`, same frames and table), masq/floor per \
             run pair (median).\n\n\
             | path | program | hot | floor | × | spread | floor | × | zipf | floor | × |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            count(level.conns)
        );
        for x in &level.paths {
            let f = x.floor.as_ref();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                x.path.name(),
                x.program,
                cell(Some(&x.hot)),
                cell(f.map(|f| &f.hot)),
                ratio(f.map(|f| &f.hot_ratio)),
                cell(Some(&x.spread)),
                cell(f.map(|f| &f.spread)),
                ratio(f.map(|f| &f.spread_ratio)),
                cell(x.zipf.as_ref()),
                cell(f.and_then(|f| f.zipf.as_ref())),
                ratio(f.and_then(|f| f.zipf_ratio.as_ref())),
            );
        }
        let _ = writeln!(s);
    }
    for level in &p.levels {
        let sweep = level.sweep_seconds.map_or(String::new(), |seconds| {
            let pass = std::time::Duration::from_secs_f64(seconds);
            let interval = crate::daemon::EXPIRY_INTERVAL;
            let pause = crate::daemon::expiry_pause(interval, pass);
            // Paced, the pause follows the pass; else passes start one interval apart.
            let period = if pause > interval { pass + pause } else { interval.max(pass) };
            let readout = level.readout_sweep_seconds.map_or(String::new(), |r| {
                format!(
                    " (read out to the daemon instead: {:.1} ms, {:.0} ns per connection, {:.1}x)",
                    r * 1e3,
                    r * 1e9 / level.conns.max(1) as f64,
                    r / seconds.max(1e-9)
                )
            });
            format!(
                "; the daemon's expiry pass over it (nothing due), in the kernel {:.1} ms, {:.0} ns \
                 per connection{readout}, one pass per {:.1} s: {:.2}% of a CPU",
                seconds * 1e3,
                seconds * 1e9 / level.conns.max(1) as f64,
                period.as_secs_f64(),
                100.0 * seconds / period.as_secs_f64(),
            )
        });
        let _ = writeln!(
            s,
            "- {} connections: new connection by repeat=1 samples {:.0} ns (median, minus an empty \
             program's); untouched by plain repeat {:.0} ns; table filled in {:.1} s{sweep}.",
            count(level.conns),
            level.new_conn_repeat1_ns.median,
            level.untouched_plain_ns.median,
            level.fill_seconds,
        );
    }
    let rules = &p.policy_rules;
    let _ = writeln!(
        s,
        "- {} hot with masq's ip rules (from-address, fwmark) in place: {:.0} ns; without them: \
         {:.0} ns (the lookups use BPF_FIB_LOOKUP_DIRECT, so the rules should not matter).",
        rules.path.name(),
        rules.with_rules_ns.median,
        rules.without_rules_ns.median
    );
    for v in &p.validation {
        let _ = writeln!(
            s,
            "- RFC 1812 checks on {} (hot, median of {} paired single runs): {:+.1} ns (pairs from \
             {:+.0} to {:+.0}; {:.0} ns with, {:.0} ns without; target on established paths \
             ≤ 10 ns).",
            v.path.name(),
            v.cost_ns.runs.len(),
            v.cost_ns.median,
            v.cost_ns.min,
            v.cost_ns.max,
            v.with_ns.median,
            v.without_ns.median
        );
    }
    let alone = &p.validation_alone;
    let _ = writeln!(
        s,
        "- RFC 1812 checks timed alone on {}'s frame (`cost.rs`: {} checks per packet against \
         none, median of {} paired runs): {:.1} ns per packet (pairs from {:.1} to {:.1}; {:.0} \
         ns with, {:.0} ns without; target ≤ 10 ns).",
        alone.path.name(),
        alone.times,
        alone.per_packet_ns.runs.len(),
        alone.per_packet_ns.median,
        alone.per_packet_ns.min,
        alone.per_packet_ns.max,
        alone.with_ns.median,
        alone.without_ns.median
    );
    let e = &p.events;
    let _ = writeln!(
        s,
        "- Connection events (`[events]`, `masq conns --watch`): the daemon's recording path \
         (record, JSON, log write) takes {:.0} ns per event, so one reader sustains about {:.0} \
         events/s; made back to back at {:.0} new connections/s for {:.1} s, {} of {} events were recorded and {} lost. Bursts \
         of {} new connections at the program's full speed ({:.0}/s): {:.0} lost (median; the \
         {} KiB ring holds {} events, what the reader drains meanwhile is kept). Reporting costs a \
         new connection {:+.1} ns (median of {} paired single runs; {:.0} ns with, {:.0} without).",
        e.record_ns.median,
        1e9 / e.record_ns.median.max(1.0),
        e.paced_rate,
        e.paced_seconds,
        e.paced_recorded,
        e.paced_events,
        e.paced_lost,
        e.burst,
        e.burst_created_per_s.median,
        e.burst_lost.median,
        e.ring_bytes >> 10,
        e.ring_records,
        e.cost.cost_ns.median,
        e.cost.cost_ns.runs.len(),
        e.cost.with_ns.median,
        e.cost.without_ns.median
    );
    let _ = writeln!(
        s,
        "- One dependent random read in {} MiB (userspace pointer chase, for scale): {:.0} ns.",
        p.random_read_buffer_mib, p.random_read_ns
    );
    for size in &p.programs {
        let _ = writeln!(
            s,
            "- {}: {} bytes of JITed code, {} verified instructions.",
            size.program,
            size.jited_bytes,
            size.verified_insns.map_or("?".to_string(), |n| n.to_string())
        );
    }
    let _ = writeln!(s);
}

fn targets_section(s: &mut String, targets: &[Target]) {
    let met = targets.iter().filter(|t| t.met).count();
    let _ = writeln!(
        s,
        "### Targets ({met} of {} met)\n\n| target | measured | |\n|---|---:|---|",
        targets.len()
    );
    for t in targets {
        let rel = if t.relation == "<=" { "≤" } else { "≥" };
        // A ratio over something, or an absolute figure in ns.
        let (target, measured) = if t.over == "ns" {
            (format!("{:.0} ns", t.target), format!("{:.1} ns", t.measured))
        } else {
            (format!("{:.2}× {}", t.target, t.over), format!("{:.2}×", t.measured))
        };
        let _ = writeln!(
            s,
            "| {} {rel} {target} | {measured} | {} |",
            t.what,
            if t.met { "met" } else { "**missed**" }
        );
    }
    let _ = writeln!(s);
}

fn lab_section(s: &mut String, lab: &LabResults, ratios: &[Ratio], cpus: usize) {
    let o = &lab.options;
    let variant = if o.xdp_friendly {
        "XDP-friendly variant: senders toward the uplinks without tx offload, XDP on gw's veth \
         peers, masq at xdp = \"required\""
    } else {
        "kernel's default interface settings (offloads on), masq on TC"
    };
    let _ = writeln!(
        s,
        "### Forwarding in the lab, {variant} (median of {} rounds, gateways built alternately)\n",
        o.rounds
    );
    let _ = writeln!(
        s,
        "UDP: 64-byte payload, one flow, one generator CPU, {:.0} s windows. TCP: iperf3 -P {} -t {}. \
         Connections: {} clients for {:.0} s.\n",
        o.window_s, o.iperf_streams, o.iperf_seconds, o.conn_clients, o.conn_seconds
    );
    let _ = writeln!(
        s,
        "| metric | masq | classic | forward (ceiling) | masq/classic | masq/forward |\n\
         |---|---:|---:|---:|---:|---:|"
    );
    let labels = [
        ("udp_e2e_pps", "UDP end to end"),
        ("udp_gw_pps", "UDP through gw alone"),
        ("udp_gw_softirq_ns_per_packet", "gw alone: softirq CPU per packet"),
        ("udp_gw_busy_ns_per_packet", "gw alone: busy CPU per packet (incl. generator)"),
        ("tcp_gbps", "TCP throughput"),
        ("conns_per_s", "new TCP connections"),
        ("conns_gw_per_s", "new TCP connections through gw alone"),
        ("conns_gw_busy_ns_per_conn", "gw alone: busy CPU per connection (all CPUs)"),
    ];
    for ratio in ratios {
        let label = labels.iter().find(|(m, _)| *m == ratio.metric).map_or(ratio.metric, |l| l.1);
        let _ = writeln!(
            s,
            "| {label} | {} | {} | {} | {:.2} | {:.2} |",
            si(ratio.masq, ratio.unit),
            si(ratio.classic, ratio.unit),
            si(ratio.forward, ratio.unit),
            ratio.masq_over_classic,
            ratio.masq_over_forward
        );
    }
    let busy: Vec<String> = lab
        .summary
        .iter()
        .map(|x| {
            let share = x.conns_gw_per_s.median * x.conns_gw_busy_ns_per_conn.median
                / 1e9
                / cpus.max(1) as f64;
            format!("{} {:.0}%", x.gateway.name(), 100.0 * share)
        })
        .collect();
    let _ = writeln!(
        s,
        "\nCPUs busy during the gw-alone connections (rate × CPU per connection, of {} CPUs): {}.",
        cpus,
        busy.join(", ")
    );
    let masq = lab.summary.iter().find(|x| x.gateway == Gateway::Masq);
    if let Some((ns, program)) =
        masq.and_then(|x| Some((x.masq_uplink_in_ns.as_ref()?, x.masq_uplink_in_program.as_ref()?)))
    {
        let _ = writeln!(
            s,
            "\n{program}'s own run time during the gw-alone flood (BPF_ENABLE_STATS in a \
             separate window, run_time_ns/run_cnt, includes the accounting's clock reads): {:.0} ns \
             per packet.",
            ns.median
        );
    }
    if let Some(ns) = masq.and_then(|x| x.conns_gw_masq_ns_per_conn.as_ref()) {
        let _ = writeln!(
            s,
            "\nmasq's programs during the gw-alone connections (the same, a window of half the \
             length): {:.0} ns per connection ({}); the daemon's own CPU time (its expiry sweeps every \
             5 s, so the mean of the rounds): {:.0} ns per connection; of the {:.0} ns of CPU a connection costs the machine.",
            ns.median,
            programs_per_connection(lab),
            masq.and_then(|x| x.conns_gw_daemon_ns_per_conn.as_ref()).map_or(0.0, mean),
            masq.map_or(0.0, |x| x.conns_gw_busy_ns_per_conn.median)
        );
    }
    let _ = writeln!(s);
}

fn mean(stat: &Stat) -> f64 {
    stat.runs.iter().sum::<f64>() / stat.runs.len().max(1) as f64
}

/// `program runs × ns` per connection, every masq sample's windows together.
fn programs_per_connection(lab: &LabResults) -> String {
    let samples: Vec<_> = lab.samples.iter().filter(|x| x.gateway == Gateway::Masq).collect();
    let connections: u64 = samples.iter().map(|x| x.conns_gw_stats_connections).sum();
    let mut programs: Vec<(&str, u64, f64)> = Vec::new();
    for p in samples.iter().flat_map(|x| &x.conns_gw_masq_programs) {
        let time = p.total_ns();
        match programs.iter_mut().find(|(name, _, _)| *name == p.program) {
            Some(entry) => (entry.1, entry.2) = (entry.1 + p.runs, entry.2 + time),
            None => programs.push((&p.program, p.runs, time)),
        }
    }
    let parts: Vec<String> = programs
        .iter()
        .filter(|(_, runs, _)| *runs > 0)
        .map(|(name, runs, time)| {
            let per_conn = *runs as f64 / connections.max(1) as f64;
            format!("{name} {per_conn:.1} runs × {:.0} ns", time / *runs as f64)
        })
        .collect();
    parts.join(", ")
}

fn memory_section(s: &mut String, memory: &MemoryResult) {
    let _ = writeln!(
        s,
        "### Memory per connection (fdinfo memlock of every table that grows with connections)\n\n\
         `CONNS` holds both directions of a connection, TCP window state included; \
         `PENDING_CONNS` the unconfirmed ones (default pending capacity); `BINDINGS` and \
         `BOUND_PORTS` the endpoint-independent mappings. All are preallocated at capacity.\n"
    );
    let _ = writeln!(
        s,
        "| capacity | CONNS | PENDING_CONNS | BINDINGS + BOUND_PORTS | total | per connection |\n\
         |---:|---:|---:|---:|---:|---:|"
    );
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / 1024.0 / 1024.0);
    for point in &memory.capacities {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} B |",
            count(point.conns as usize),
            mib(point.conns_bytes),
            mib(point.pending_bytes),
            mib(point.bindings_bytes + point.bound_ports_bytes),
            mib(point.memlock_bytes),
            point.bytes_per_conn
        );
    }
    if let Some(bytes) = memory.nf_conntrack_object_bytes {
        let _ = writeln!(
            s,
            "\nFor comparison, the classic recipe's conntrack: {bytes} B per `nf_conntrack` slab \
             object, before its extensions (NAT, mark) and hash bucket, allocated per connection \
             (a lower bound)."
        );
    }
    let _ = writeln!(s);
}

// ---------------------------------------------------------------------------------------------
// SVG

const WIDTH: f64 = 900.0;

fn esc(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Horizontal bars: one group per label, one bar per series; `reference` draws a vertical line.
fn bar_chart(
    svg: &mut String,
    top: f64,
    title: &str,
    series: &[(&str, &str)],
    groups: &[(String, Vec<f64>)],
    reference: Option<f64>,
    unit: &str,
) -> f64 {
    let (left, right) = (300.0, WIDTH - 80.0);
    let bar = 14.0;
    let group_h = bar * series.len() as f64 + 10.0;
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .chain(reference)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let x = |v: f64| left + (right - left) * (v.max(0.0) / max);
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="16" font-weight="bold">{}</text>"#,
        top + 18.0,
        esc(title)
    );
    let mut legend_x = left;
    for (name, color) in series {
        let _ = writeln!(
            svg,
            r#"<rect x="{legend_x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            top + 28.0,
            legend_x + 16.0,
            top + 38.0,
            esc(name)
        );
        legend_x += 30.0 + 7.0 * name.len() as f64;
    }
    let mut y = top + 50.0;
    for (label, values) in groups {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" font-size="12" text-anchor="end">{}</text>"#,
            left - 8.0,
            y + group_h / 2.0,
            esc(label)
        );
        for (i, ((_, color), v)) in series.iter().zip(values).enumerate() {
            let by = y + bar * i as f64;
            if v.is_finite() {
                let _ = writeln!(
                    svg,
                    r#"<rect x="{left}" y="{by}" width="{:.1}" height="{}" fill="{color}"/><text x="{:.1}" y="{}" font-size="11">{}</text>"#,
                    x(*v) - left,
                    bar - 2.0,
                    x(*v) + 4.0,
                    by + bar - 4.0,
                    format_value(*v, unit)
                );
            }
        }
        y += group_h;
    }
    if let Some(r) = reference {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#333" stroke-dasharray="4 3"/>"##,
            x(r),
            top + 46.0,
            y
        );
    }
    y + 20.0
}

/// One line of a [`line_chart`]: name, colour, (x, y) points.
type Line<'a> = (String, &'a str, Vec<(f64, f64)>);

/// Lines over a log-scaled x axis (connections).
fn line_chart(svg: &mut String, top: f64, title: &str, series: &[Line], unit: &str) -> f64 {
    let (left, right, height) = (80.0, WIDTH - 200.0, 220.0);
    let (y0, y1) = (top + 40.0, top + 40.0 + height);
    let points =
        || series.iter().flat_map(|(_, _, p)| p.iter()).filter(|(x, y)| *x > 0.0 && y.is_finite());
    let (min_x, max_x) =
        points().fold((f64::MAX, 0.0_f64), |(lo, hi), (x, _)| (lo.min(*x), hi.max(*x)));
    let max_y = points().fold(0.0_f64, |m, (_, y)| m.max(*y)).max(1e-9) * 1.1;
    if max_x <= min_x {
        return top;
    }
    let x = |v: f64| {
        left + (right - left) * (v.log10() - min_x.log10()) / (max_x.log10() - min_x.log10())
    };
    let y = |v: f64| y1 - height * v / max_y;
    let _ = writeln!(
        svg,
        r#"<text x="10" y="{}" font-size="16" font-weight="bold">{}</text>"#,
        top + 18.0,
        esc(title)
    );
    let _ = writeln!(
        svg,
        r##"<line x1="{left}" y1="{y1}" x2="{right}" y2="{y1}" stroke="#333"/><line x1="{left}" y1="{y0}" x2="{left}" y2="{y1}" stroke="#333"/>"##
    );
    for tick in [0.0, 0.5, 1.0] {
        let v = max_y * tick / 1.1;
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"#,
            left - 6.0,
            y(v) + 4.0,
            format_value(v, unit)
        );
    }
    let mut xs: Vec<f64> = points().map(|(x, _)| *x).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for v in xs {
        let _ = writeln!(
            svg,
            r#"<text x="{:.1}" y="{}" font-size="11" text-anchor="middle">{}</text>"#,
            x(v),
            y1 + 16.0,
            count(v as usize)
        );
    }
    for (i, (name, color, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .filter(|(_, v)| v.is_finite())
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for (a, b) in pts.iter().filter(|(_, v)| v.is_finite()) {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                x(*a),
                y(*b)
            );
        }
        let ly = y0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<rect x="{}" y="{}" width="12" height="3" fill="{color}"/><text x="{}" y="{}" font-size="12">{}</text>"#,
            right + 14.0,
            ly,
            right + 30.0,
            ly + 5.0,
            esc(name)
        );
    }
    y1 + 40.0
}

fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "ratio" => format!("{v:.2}×"),
        _ => format!("{v:.0} {unit}"),
    }
}

pub fn svg(r: &Results) -> String {
    let mut body = String::new();
    let mut y = 10.0;
    if !r.ratios.is_empty() {
        let groups: Vec<(String, Vec<f64>)> = r
            .ratios
            .iter()
            .map(|x| {
                (
                    format!("{} ({} better)", x.metric, x.better),
                    vec![x.masq_over_classic, x.masq_over_forward],
                )
            })
            .collect();
        y = bar_chart(
            &mut body,
            y,
            "masq / classic and masq / forward (lab medians; 1 = equal)",
            &[("masq / classic", "#2b7bb9"), ("masq / forward (ceiling)", "#9ecae1")],
            &groups,
            Some(1.0),
            "ratio",
        );
    }
    if let Some(prog) = &r.prog {
        let palette = ["#31a354", "#fd8d3c", "#756bb1", "#636363"];
        let levels: Vec<String> =
            prog.levels.iter().map(|l| format!("{} conns (spread)", count(l.conns))).collect();
        let series: Vec<(&str, &str)> =
            levels.iter().zip(palette).map(|(l, c)| (l.as_str(), c)).collect();
        let groups: Vec<(String, Vec<f64>)> = PathKind::ALL
            .iter()
            .map(|kind| {
                let values = prog
                    .levels
                    .iter()
                    .map(|l| {
                        l.paths
                            .iter()
                            .find(|p| p.path == *kind)
                            .map_or(f64::NAN, |p| p.spread.ns.median)
                    })
                    .collect();
                (kind.name().to_string(), values)
            })
            .collect();
        y = bar_chart(
            &mut body,
            y,
            "masq program cost, ns per packet (BPF_PROG_TEST_RUN, harness subtracted)",
            &series,
            &groups,
            None,
            "ns",
        );
        let curve = |kind: PathKind, floor: bool, zipf: bool| -> Vec<(f64, f64)> {
            prog.levels
                .iter()
                .filter_map(|l| {
                    let p = l.paths.iter().find(|p| p.path == kind)?;
                    let m = match (floor, zipf) {
                        (false, false) => &p.spread,
                        (false, true) => p.zipf.as_ref()?,
                        (true, false) => &p.floor.as_ref()?.spread,
                        (true, true) => p.floor.as_ref()?.zipf.as_ref()?,
                    };
                    Some((l.conns as f64, m.ns.median))
                })
                .collect()
        };
        let k = PathKind::InboundEstablished;
        y = line_chart(
            &mut body,
            y,
            "How cost grows: inbound_established (XDP), ns per packet by connections in the table",
            &[
                ("masq, spread".into(), "#2b7bb9", curve(k, false, false)),
                ("floor, spread".into(), "#9ecae1", curve(k, true, false)),
                ("masq, zipf".into(), "#e6550d", curve(k, false, true)),
                ("floor, zipf".into(), "#fdae6b", curve(k, true, true)),
            ],
            "ns",
        );
    }
    if let Some(memory) = &r.memory {
        let masq: Vec<(f64, f64)> =
            memory.capacities.iter().map(|p| (f64::from(p.conns), p.bytes_per_conn)).collect();
        let mut series = vec![("masq (all its tables)".to_string(), "#2b7bb9", masq.clone())];
        if let Some(bytes) = memory.nf_conntrack_object_bytes {
            let ct = masq.iter().map(|(x, _)| (*x, bytes as f64)).collect();
            series.push(("conntrack object (lower bound)".into(), "#636363", ct));
        }
        y = line_chart(&mut body, y, "Memory per connection by capacity", &series, "B");
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{:.0}\" \
         font-family=\"sans-serif\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         {body}<text x=\"10\" y=\"{:.0}\" font-size=\"11\" fill=\"#555\">masq bench {} ({})</text>\n</svg>\n",
        y + 10.0,
        y,
        r.started_utc,
        if r.quick { "quick" } else { "full" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_like_the_issue() {
        assert_eq!(count(1_000), "1k");
        assert_eq!(count(100_000), "100k");
        assert_eq!(count(1_000_000), "1M");
        assert_eq!(count(1_500), "1500");
    }

    #[test]
    fn lab_targets_are_ratios_over_classic_and_forward() {
        let ratio = |metric, over_classic: f64, over_forward: f64| Ratio {
            metric,
            unit: "",
            better: "higher",
            masq: 1.0,
            classic: 1.0,
            forward: 1.0,
            masq_over_classic: over_classic,
            masq_over_forward: over_forward,
        };
        let xdp = [ratio("udp_gw_pps", 3.1, 0.9)];
        let tc = [ratio("tcp_gbps", 1.0, 1.0), ratio("udp_gw_pps", 1.2, 1.1)];
        let targets = targets(None, &tc, &xdp);
        let got: Vec<(String, &str, bool)> =
            targets.iter().map(|t| (t.what.clone(), t.over, t.met)).collect();
        assert_eq!(
            got,
            [
                ("XDP mode udp_gw_pps".to_string(), "classic", true),
                ("XDP mode udp_gw_pps".to_string(), "forward", false),
                ("TC mode tcp_gbps".to_string(), "classic", true),
                ("TC mode tcp_gbps".to_string(), "forward", true),
                ("TC mode udp_gw_pps".to_string(), "classic", false),
                ("TC mode udp_gw_pps".to_string(), "forward", true),
            ]
        );
    }

    #[test]
    fn growth_chart_puts_connections_on_a_log_axis() {
        let mut svg = String::new();
        let series = [("masq".to_string(), "#000", vec![(1e3, 100.0), (1e6, 200.0)])];
        let bottom = line_chart(&mut svg, 0.0, "t", &series, "ns");
        assert!(svg.contains(">1k<") && svg.contains(">1M<"), "{svg}");
        assert!(svg.contains("polyline"));
        assert!(bottom > 200.0);
    }

    #[test]
    fn chart_escapes_labels_and_scales_to_the_largest_value() {
        let mut svg = String::new();
        let bottom = bar_chart(
            &mut svg,
            0.0,
            "a<b",
            &[("s", "#000")],
            &[("x&y".into(), vec![2.0]), ("z".into(), vec![1.0])],
            Some(1.0),
            "ratio",
        );
        assert!(svg.contains("a&lt;b") && svg.contains("x&amp;y"));
        assert!(svg.contains(r#"width="520.0""#), "{svg}");
        assert!(bottom > 50.0);
    }
}
