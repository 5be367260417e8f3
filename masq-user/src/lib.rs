//! masq userspace: config, loader, kernel policy tables, inspection. With feature `lab` (never in
//! the `masq` binary a gateway runs): the network-namespace lab and the benchmarks, for the
//! `masq-lab` binary and the tests.

#[cfg(feature = "lab")]
pub mod bench;
pub mod bindings;
pub mod bpf_sys;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod dataplane;
pub mod events;
pub mod expiry;
pub mod follow;
#[cfg(feature = "lab")]
pub mod frames;
pub mod health;
pub mod hooks;
pub mod host;
pub mod inspect;
#[cfg(feature = "lab")]
pub mod lab;
pub mod links;
pub mod local_ports;
pub mod map_values;
pub mod metrics;
pub mod netns;
pub mod pinned;
pub mod policy_tables;
#[cfg(feature = "lab")]
pub mod progkit;
#[cfg(feature = "lab")]
pub mod seed;
pub mod state;
pub mod trace;
#[cfg(feature = "lab")]
pub mod tun_relay;
