//! `cargo xtask setup`: makes a fresh Debian machine ready to build and test masq. Idempotent: each
//! step says what it checked and skips what is already there. Each failure is one line saying what
//! failed and how to fix it.

use std::{
    fs,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

/// Debian packages: LLVM for bpf-linker, and the tools the lab, the tests and the benchmarks use.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "iproute2",
    "iptables",
    "iperf3",
    "netcat-openbsd",
    "socat",
    "tcpdump",
    "iputils-ping",
    "iputils-tracepath",
    "traceroute",
    "ethtool",
    "curl",
    "util-linux",  // nsenter
    "netsniff-ng", // trafgen, for benchmarks
    "coturn",      // a real STUN server and client (RFC 5780 discovery) for the NAT tests
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

pub fn run() -> Result<()> {
    require_root()?;
    rust_src()?;
    apt_packages()?;
    bpf_linker()?;
    bpffs()?;
    Ok(())
}

fn step(msg: &str) {
    println!("setup: {msg}");
}

fn require_root() -> Result<()> {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .unwrap_or("");
    if euid != "0" {
        bail!(
            "setup needs root (apt, bpffs, network namespaces): run it as root, e.g. `sudo -E cargo xtask setup`"
        );
    }
    Ok(())
}

/// Runs a command quietly; None when it cannot be started.
fn output(program: &str, args: &[&str]) -> Option<std::process::Output> {
    Command::new(program).args(args).stdin(Stdio::null()).output().ok()
}

fn rust_src() -> Result<()> {
    let Some(toolchains) = output("rustup", &["toolchain", "list"]) else {
        bail!("rustup not found: install rustup and a stable and a nightly toolchain");
    };
    let toolchains = String::from_utf8_lossy(&toolchains.stdout);
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "the nightly Rust toolchain is missing (needed to build the eBPF programs) and cannot be fetched here: install it with `rustup toolchain install nightly --component rust-src` where the network allows"
        );
    }
    let installed =
        output("rustup", &["component", "list", "--toolchain", "nightly", "--installed"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        step("rust-src for nightly: present");
        return Ok(());
    }
    step("rust-src for nightly: rustup component add rust-src --toolchain nightly");
    let ok = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "`rustup component add rust-src --toolchain nightly` failed: the eBPF build needs it; run it by hand and check the error"
        );
    }
    Ok(())
}

fn apt_installed(package: &str) -> bool {
    output("dpkg-query", &["-W", "-f=${Status}", package])
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
}

fn apt_packages() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !apt_installed(p)).collect();
    if missing.is_empty() {
        step(&format!("apt packages: all {} present", APT_PACKAGES.len()));
        return Ok(());
    }
    step(&format!("apt packages missing: {}", missing.join(" ")));
    step("apt-get update");
    let ok = Command::new("apt-get").arg("update").status().is_ok_and(|s| s.success());
    if !ok {
        bail!("`apt-get update` failed: check the Debian sources in /etc/apt and network access");
    }
    step(&format!("apt-get install -y {}", missing.join(" ")));
    let ok = Command::new("apt-get")
        .args(["install", "-y"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "`apt-get install -y {}` failed: see apt's message above (llvm-22-dev needs a Debian release that has LLVM 22)",
            missing.join(" ")
        );
    }
    if missing.contains(&"coturn") {
        quiet_coturn_service();
    }
    Ok(())
}

/// Debian starts coturn's system-wide TURN service on install where systemd runs; the tests
/// only need its programs (each test runs its own server inside a lab namespace).
fn quiet_coturn_service() {
    let active = Command::new("systemctl")
        .args(["is-active", "--quiet", "coturn"])
        .status()
        .is_ok_and(|s| s.success());
    if active {
        step("systemctl disable --now coturn (installed for its programs only)");
        let _ = Command::new("systemctl").args(["disable", "--now", "coturn"]).status();
    }
}

fn bpf_linker() -> Result<()> {
    if output("bpf-linker", &["--version"]).is_some_and(|o| o.status.success()) {
        step("bpf-linker: present");
        return Ok(());
    }
    step(&format!(
        "bpf-linker: cargo install bpf-linker --locked --no-default-features --features llvm-22 (LLVM_PREFIX={LLVM_PREFIX})"
    ));
    let path = format!("{LLVM_PREFIX}/bin:{}", std::env::var("PATH").unwrap_or_default());
    let ok = Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("PATH", path)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "`cargo install bpf-linker` failed: check that llvm-22-dev is installed ({LLVM_PREFIX}) and crates.io is reachable"
        );
    }
    Ok(())
}

fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mounted = mounts.lines().any(|l| {
        let mut fields = l.split_whitespace();
        fields.nth(1) == Some("/sys/fs/bpf") && fields.next() == Some("bpf")
    });
    if mounted {
        step("bpffs at /sys/fs/bpf: mounted");
        return Ok(());
    }
    step("bpffs: mount -t bpf bpf /sys/fs/bpf");
    let ok = Command::new("mount")
        .args(["-t", "bpf", "bpf", "/sys/fs/bpf"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        bail!(
            "`mount -t bpf bpf /sys/fs/bpf` failed: masq pins its maps and links there; mount it by hand (needs root and a kernel with CONFIG_BPF_SYSCALL)"
        );
    }
    Ok(())
}
