//! Helpers shared by the integration tests (each test crate uses only some of them).
#![allow(dead_code)]

use std::path::PathBuf;

use masq_user::lab::{GatewayMode, Lab, LabOptions};

/// Panics unless running as root. Tests that need root fail instead of skipping silently, in CI
/// (`CI=true`) and on a developer's machine alike.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI must run the tests as root: they build network namespaces and load eBPF programs"
        );
    }
    panic!(
        "this test needs root (network namespaces, iptables, eBPF): run `sudo -E cargo xtask test`"
    );
}

/// A lab with gw configured as `mode`; needs root.
pub fn lab(mode: GatewayMode) -> Lab {
    require_root();
    Lab::build(LabOptions {
        gateway: mode,
        ..LabOptions::default()
    })
    .expect("building the lab")
}

/// The masq binary built for these tests.
pub fn masq_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_masq"))
}

/// The default config, `examples/masq-gw.toml`.
pub fn example_config() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/masq-gw.toml")
}
