//! Throw-away network namespaces for tests and the lab.
//!
//! A [`NetNs`] is created with `ip netns add` under a name unique to this run and deleted again when
//! it is dropped, also when a test panics.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A network namespace created for a test or lab run, deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `<prefix>-<pid>-<counter>-<random>` and brings its loopback up.
    pub fn create(prefix: &str) -> Result<NetNs> {
        let random = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos())
            & 0xff_ffff;
        let name = format!(
            "{prefix}-{}-{}-{random:06x}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        run_ip(&["netns", "add", &name])?;
        // From here on, Drop deletes the namespace if a later step fails.
        let ns = NetNs { name };
        run_ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `ip netns exec <name> args...`; fails with its stderr if it exits non-zero.
    pub fn run(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec", &self.name];
        full.extend_from_slice(args);
        run_ip(&full)
    }

    /// Like [`NetNs::run`] with the command split on whitespace; returns its stdout.
    pub fn run_ok(&self, cmd: &str) -> Result<String> {
        let args: Vec<&str> = cmd.split_whitespace().collect();
        let output = self.run(&args)?;
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `f` on a new thread whose network namespace is this one and returns its result.
    /// A panic in `f` is passed on to the caller.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        let thread = std::thread::spawn(move || {
            let ns =
                File::open(&path).unwrap_or_else(|err| panic!("opening {}: {err}", path.display()));
            // SAFETY: setns only changes this thread's network namespace; the fd is valid.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                panic!("setns into {}: {}", path.display(), std::io::Error::last_os_error());
            }
            drop(ns);
            f()
        });
        match thread.join() {
            Ok(value) => value,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(err) = run_ip(&["netns", "del", &self.name]) {
            eprintln!("warning: deleting network namespace {}: {err:#}", self.name);
        }
    }
}

/// For tests: panics unless running as root. Tests that need root fail instead of skipping
/// silently, in CI (`CI=true`) and on a developer's machine alike.
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

fn run_ip(args: &[&str]) -> Result<Output> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !output.status.success() {
        bail!(
            "ip {} failed ({}): {}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn namespace_is_deleted_on_drop() {
        require_root();
        let ns = NetNs::create("masq-netns").unwrap();
        let path = ns.path();
        assert!(path.exists(), "{} missing after create", path.display());
        drop(ns);
        assert!(!path.exists(), "{} still present after drop", path.display());
    }

    #[test]
    fn enter_runs_the_closure_inside_the_namespace() {
        require_root();
        let ns = NetNs::create("masq-netns").unwrap();
        let expected = std::fs::metadata(ns.path()).unwrap().ino();
        let inside = ns.enter(|| std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino());
        assert_eq!(inside, expected);
        let here = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        assert_ne!(here, expected, "the caller's thread must stay where it was");
    }

    #[test]
    fn run_reports_stderr_of_a_failing_command() {
        require_root();
        let ns = NetNs::create("masq-netns").unwrap();
        let err = ns.run_ok("ip link show does-not-exist").unwrap_err();
        assert!(format!("{err:#}").contains("does-not-exist"), "{err:#}");
    }
}
