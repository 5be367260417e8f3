//! `masq run` and `masq down` leave the gateway exactly as they found it.
mod common;

use std::{path::Path, process::Command};

use masq_user::lab::{GatewayMode, Host, Lab};

/// Everything masq may touch on the gateway: rules, routes of every table, links (XDP shows
/// there), TC attachments, and the pin directory.
fn gateway_state(lab: &Lab) -> String {
    let gw = lab.ns(Host::Gw);
    let mut state = String::new();
    for cmd in [
        "ip -4 rule show",
        "ip -4 route show table all",
        "ip -d link show",
        "tc filter show dev eth0 ingress",
        "tc filter show dev eth1 egress",
        "tc filter show dev eth4 egress",
        "ip neigh show proxy",
    ] {
        let out = gw.run_ok(cmd).unwrap_or_else(|e| format!("{cmd}: {e:#}"));
        state += &format!("## {cmd}\n{out}\n");
    }
    state += &format!("## pins\n{}\n", lab.pin_dir().exists());
    state
}

fn masq_cli(lab: &Lab, args: &[&str]) -> std::process::Output {
    let netns = format!("--net={}", lab.ns(Host::Gw).path().display());
    Command::new("nsenter")
        .arg(netns)
        .arg("--")
        .arg(common::masq_bin())
        .args(args)
        .output()
        .expect("running masq")
}

fn assert_installed(lab: &Lab) {
    let gw = lab.ns(Host::Gw);
    let rules = gw.run_ok("ip -4 rule show").unwrap();
    assert!(rules.contains("from 67.17.28.12 lookup 201"), "{rules}");
    assert!(
        rules.contains("fwmark 0x1000000/0xf000000 lookup 201"),
        "{rules}"
    );
    let table = gw.run_ok("ip -4 route show table 201").unwrap();
    assert!(
        table.contains("default via 67.17.28.14 dev eth4"),
        "{table}"
    );
    let links = gw.run_ok("ip link show eth4").unwrap();
    assert!(links.contains("masq_uplink_in"), "{links}");
    assert!(lab.pin_dir().join("CONNS").exists());
}

#[test]
fn stopping_masq_restores_the_gateway_exactly() {
    let lab = common::lab(GatewayMode::Bare);
    let before = gateway_state(&lab);
    let masq = lab
        .start_masq(
            &common::masq_bin(),
            &common::example_config(),
            &lab.pin_dir(),
            &[],
        )
        .expect("masq starts");
    assert_installed(&lab);
    let status = masq.stop().expect("masq stops");
    assert!(status.success(), "masq exit status {status}");
    assert_eq!(gateway_state(&lab), before);
}

#[test]
fn masq_down_cleans_up_after_a_killed_daemon() {
    let lab = common::lab(GatewayMode::Bare);
    let before = gateway_state(&lab);
    let masq = lab
        .start_masq(
            &common::masq_bin(),
            &common::example_config(),
            &lab.pin_dir(),
            &[],
        )
        .expect("masq starts");
    assert_installed(&lab);
    // SAFETY: plain kill(2) of our own child: a crash leaves rules, routes and pins behind.
    unsafe { libc::kill(masq.pid() as i32, libc::SIGKILL) };
    drop(masq);
    assert_ne!(
        gateway_state(&lab),
        before,
        "a killed daemon leaves state behind"
    );

    let config = common::example_config();
    let pin_dir = lab.pin_dir();
    let out = masq_cli(
        &lab,
        &["down", "-c", path(&config), "--pin-dir", path(&pin_dir)],
    );
    assert!(
        out.status.success(),
        "masq down: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(gateway_state(&lab), before);
}

#[test]
fn run_refuses_a_config_naming_a_missing_interface_and_changes_nothing() {
    let lab = common::lab(GatewayMode::Bare);
    let before = gateway_state(&lab);
    let config = lab.run_dir().join("missing-iface.toml");
    let text = std::fs::read_to_string(common::example_config())
        .unwrap()
        .replace("interface = \"eth4\"", "interface = \"eth9\"");
    std::fs::write(&config, text).unwrap();
    let pin_dir = lab.pin_dir();
    let out = masq_cli(
        &lab,
        &["run", "-c", path(&config), "--pin-dir", path(&pin_dir)],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("eth9"),
        "error names the interface: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_eq!(gateway_state(&lab), before);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
