//! masq userspace: config, loader, kernel policy tables, inspection, and the network-namespace lab.

pub mod bench;
pub mod config;
pub mod conntrack;
pub mod daemon;
pub mod dataplane;
pub mod follow;
pub mod health;
pub mod hooks;
pub mod host;
pub mod inspect;
pub mod lab;
pub mod metrics;
pub mod netns;
pub mod policy_tables;
pub mod tun_relay;
