//! `masq check`: the example passes, every bad example is rejected with one line naming its key.
use std::{fs, process::Command};

use masq_user::lab::{GatewayMode, Lab};

use crate::common;

/// `masq check`, offline, or against the interfaces of the lab's gateway.
fn check_on(lab: Option<&Lab>, path: &std::path::Path) -> std::process::Output {
    let path = path.to_str().expect("UTF-8 path");
    match lab {
        Some(lab) => common::masq_on_gw(lab, &["check", "-c", path]),
        None => Command::new(common::masq_bin())
            .args(["check", "--offline", "-c", path])
            .output()
            .expect("running masq check"),
    }
}

fn check(path: &std::path::Path) -> std::process::Output {
    check_on(None, path)
}

#[test]
fn example_config_passes_check() {
    let out = check(&common::example_config());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn example_config_passes_check_on_the_seed_gateway() {
    let lab = common::lab(GatewayMode::Bare);
    let out = check_on(Some(&lab), &common::example_config());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn every_bad_example_exits_2_with_its_expected_line() {
    let lab = common::lab(GatewayMode::Bare);
    let dir = common::example_config().parent().unwrap().join("bad");
    let mut checked = 0;
    for entry in fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let text = fs::read_to_string(&path).unwrap();
        let expected = text.lines().next().unwrap().trim_start_matches("# Rejected: ").to_string();
        // Host checks run against the seed gateway's interfaces.
        let host_check = text.contains("by check_host");
        // The lab's interfaces are listed in another order than the seed host's.
        let expected = expected.split(" (it has").next().unwrap();
        let out = check_on(host_check.then_some(&lab), &path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{}: {stderr}", path.display());
        assert_eq!(stderr.trim().lines().count(), 1, "{}: one line: {stderr}", path.display());
        assert!(stderr.contains(expected), "{}: {stderr} lacks {expected}", path.display());
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} bad examples checked");
}
