//! `masq run` and `masq down` leave the gateway exactly as they found it.
use std::{path::Path, time::Duration};

use masq_user::lab::{GatewayMode, Host, Lab};
use masq_user::seed::{GW_ISP_A, ISP_A_ROUTER, PUBLIC_ISP_A};

use crate::common;

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

fn assert_installed(lab: &Lab) {
    let gw = lab.ns(Host::Gw);
    let rules = gw.run_ok("ip -4 rule show").unwrap();
    assert!(rules.contains(&format!("from {GW_ISP_A} lookup 201")), "{rules}");
    assert!(rules.contains("fwmark 0x1000000/0xf000000 lookup 201"), "{rules}");
    let table = gw.run_ok("ip -4 route show table 201").unwrap();
    assert!(table.contains(&format!("default via {ISP_A_ROUTER} dev eth4")), "{table}");
    let status = common::masq_status(lab);
    let attached = status["programs"].as_array().unwrap().iter().any(|a| {
        a["program"] == "masq_uplink_in" && a["interface"] == "eth4" && a["attached"] == true
    });
    assert!(attached, "masq_uplink_in on eth4: {:#}", status["programs"]);
    assert!(lab.pin_dir().join("CONNS").exists());
}

fn masq_down(lab: &Lab) {
    let config = common::example_config();
    let pin_dir = lab.pin_dir();
    let out = common::masq_on_gw(lab, &["down", "-c", path(&config), "--pin-dir", path(&pin_dir)]);
    assert!(out.status.success(), "masq down: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn daemon_exit_keeps_the_dataplane_and_masq_down_restores_the_gateway() {
    let lab = common::lab(GatewayMode::Bare);
    let _server = lab.serve_tcp(Host::Isolde, 80, "hello").expect("server");
    let before = gateway_state(&lab);
    let masq = lab
        .start_masq(&common::masq_bin(), &common::example_config(), &lab.pin_dir(), &[])
        .expect("masq starts");
    assert_installed(&lab);
    let status = masq.stop().expect("masq stops");
    assert!(status.success(), "masq exit status {status}");
    assert_installed(&lab);
    let reply =
        lab.tcp_request(Host::Client, PUBLIC_ISP_A, 80, Duration::from_secs(5)).expect("request");
    assert_eq!(
        reply.as_deref().map(str::trim),
        Some("hello"),
        "still forwarding without the daemon"
    );
    masq_down(&lab);
    assert_eq!(gateway_state(&lab), before);
}

#[test]
fn restart_adopts_the_pinned_connection_table() {
    let lab = common::lab(GatewayMode::Bare);
    let config = common::example_config();
    let masq = lab.start_masq(&common::masq_bin(), &config, &lab.pin_dir(), &[]).unwrap();
    assert!(lab.ping(Host::Client, PUBLIC_ISP_A, Duration::from_secs(3)).unwrap());
    let conns_before = masq_user::pinned::read_conns(&lab.pin_dir()).unwrap().len();
    assert!(conns_before >= 1);
    masq.stop().unwrap();
    let masq = lab.start_masq(&common::masq_bin(), &config, &lab.pin_dir(), &[]).unwrap();
    assert!(masq.log_text().contains("adopted the pinned dataplane"), "{}", masq.log_text());
    let conns_after = masq_user::pinned::read_conns(&lab.pin_dir()).unwrap().len();
    assert_eq!(conns_after, conns_before, "the connection table survives the restart");
    assert!(lab.ping(Host::Client, PUBLIC_ISP_A, Duration::from_secs(3)).unwrap());
    drop(masq);
    masq_down(&lab);
}

#[test]
fn run_refuses_pinned_maps_of_another_layout() {
    let lab = common::lab(GatewayMode::Bare);
    let pin_dir = lab.pin_dir();
    std::fs::create_dir_all(&pin_dir).unwrap();
    // A CONNS map as an older masq left it: an LRU with 40-byte values.
    pin_lru_map(&pin_dir.join("CONNS"), 16, 40);
    let config = common::example_config();
    let out = common::masq_on_gw(&lab, &["run", "-c", path(&config), "--pin-dir", path(&pin_dir)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to adopt"), "{stderr}");
    assert!(pin_dir.join("CONNS").exists(), "the old map is left alone");
    masq_down(&lab);
}

/// Create and pin an LRU hash map with the raw bpf(2) syscall.
fn pin_lru_map(path: &Path, key_size: u32, value_size: u32) {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
    let mut create = [0u32; 30];
    create[..4].copy_from_slice(&[BPF_MAP_TYPE_LRU_HASH, key_size, value_size, 1024]);
    // SAFETY: a zero-padded bpf_attr for BPF_MAP_CREATE.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            create.as_ptr(),
            std::mem::size_of_val(&create),
        )
    };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    let mut pin = [0u64; 4];
    pin[0] = cpath.as_ptr() as u64;
    pin[1] = fd as u64;
    // SAFETY: a bpf_attr for BPF_OBJ_PIN: pathname, then bpf_fd.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, pin.as_ptr(), std::mem::size_of_val(&pin))
    };
    assert_eq!(ret, 0, "BPF_OBJ_PIN: {}", std::io::Error::last_os_error());
    // SAFETY: our own fd.
    unsafe { libc::close(fd as i32) };
}

#[test]
fn masq_down_cleans_up_after_a_killed_daemon() {
    let lab = common::lab(GatewayMode::Bare);
    let before = gateway_state(&lab);
    let masq = lab
        .start_masq(&common::masq_bin(), &common::example_config(), &lab.pin_dir(), &[])
        .expect("masq starts");
    assert_installed(&lab);
    // SAFETY: plain kill(2) of our own child: a crash leaves rules, routes and pins behind.
    unsafe { libc::kill(masq.pid() as i32, libc::SIGKILL) };
    drop(masq);
    assert_ne!(gateway_state(&lab), before, "a killed daemon leaves state behind");

    let config = common::example_config();
    let pin_dir = lab.pin_dir();
    let out = common::masq_on_gw(&lab, &["down", "-c", path(&config), "--pin-dir", path(&pin_dir)]);
    assert!(out.status.success(), "masq down: {}", String::from_utf8_lossy(&out.stderr));
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
    let out = common::masq_on_gw(&lab, &["run", "-c", path(&config), "--pin-dir", path(&pin_dir)]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("eth9"), "error names the interface: {stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert_eq!(gateway_state(&lab), before);
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
