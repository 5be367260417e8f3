//! The gateway's own ephemeral ports (`net.ipv4.ip_local_port_range` of its namespace), which
//! SNAT never keeps or picks, so a reply to one of the gateway's sockets never matches a masq
//! connection. While masq runs it narrows them to `[dataplane] gateway_ports`, so clients keep
//! every port outside it (their own ephemeral ranges included), and `masq down` restores the
//! range the system had.
use std::{fs, path::Path};

use anyhow::Context as _;
use tracing::info;

use crate::config::GatewayPorts;

const SYSCTL: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The range as the kernel has it now.
pub fn current() -> Option<(u16, u16)> {
    let text = fs::read_to_string(SYSCTL).ok()?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    Some((ports.next()?.ok()?, ports.next()?.ok()?))
}

fn write(range: (u16, u16)) -> anyhow::Result<()> {
    fs::write(SYSCTL, format!("{} {}", range.0, range.1))
        .with_context(|| format!("setting net.ipv4.ip_local_port_range to {} {}", range.0, range.1))
}

/// Apply `setting`: narrow the range to it (saving the system's first in `saved`, where a
/// restarted daemon finds it and keeps it), or, for `System`, give back what an earlier run
/// changed.
pub fn claim(setting: GatewayPorts, saved: &Path) -> anyhow::Result<()> {
    let GatewayPorts::Range(min, max) = setting else {
        return restore(saved);
    };
    let now = current().context("reading net.ipv4.ip_local_port_range")?;
    if !saved.exists() {
        fs::create_dir_all(saved.parent().expect("under /run/masq"))?;
        fs::write(saved, format!("{} {}", now.0, now.1))
            .with_context(|| format!("saving the port range in {}", saved.display()))?;
    }
    if now != (min, max) {
        write((min, max))?;
        info!(
            "the gateway's own ephemeral ports: {min}-{max} (were {}-{}); clients keep theirs",
            now.0, now.1
        );
    }
    Ok(())
}

/// Put back the range the system had before masq changed it, if it did.
pub fn restore(saved: &Path) -> anyhow::Result<()> {
    let Ok(text) = fs::read_to_string(saved) else { return Ok(()) };
    let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    let (Some(Some(min)), Some(Some(max))) = (ports.next(), ports.next()) else {
        anyhow::bail!(
            "{} does not hold a port range ({text:?}): net.ipv4.ip_local_port_range left as it is",
            saved.display()
        );
    };
    write((min, max))?;
    info!("the gateway's own ephemeral ports restored to {min}-{max}");
    fs::remove_file(saved)?;
    Ok(())
}
