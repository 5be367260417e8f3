//! masq's integration tests in one crate: BPF_PROG_TEST_RUN tests of the real programs
//! (`dataplane_progs`) and end-to-end tests through the real loader in network namespaces, one
//! module per scenario; `common` is their kit. Filter by module: `cargo xtask test -- -p
//! masq-user --test integration -- follow_e2e::`.
mod common;

mod cli_check;
mod cli_e2e;
mod conntrack_e2e;
mod continuity_e2e;
mod dataplane_progs;
mod events_e2e;
mod follow_e2e;
mod health_e2e;
mod hooks_e2e;
mod hostile_e2e;
mod inbound_e2e;
mod l3_uplink_e2e;
mod lab_baseline;
mod lan_devices_e2e;
mod module_graph;
mod nat_rfc_e2e;
mod object_code;
mod outbound_e2e;
mod policy_tables;
mod run_down;
mod stun_e2e;
