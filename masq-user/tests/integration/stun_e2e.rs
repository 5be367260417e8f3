//! RFC 5780 NAT behaviour discovery with a real third-party STUN pair (coturn's `turnserver`
//! on two addresses of the lab's internet host, `turnutils_natdiscovery` on tristan) through
//! masq. Needs root and coturn (`cargo xtask setup` installs it).
use std::{net::Ipv4Addr, time::Duration};

use masq_user::lab::{GatewayMode, Host, Lab, LabChild};
use masq_user::seed::{CLIENT, CLIENT_PREFIX_LEN, GW_ISP_A, TRISTAN};

use crate::common;

/// The STUN server's two addresses: the client's own and a second one added for it.
const STUN_PRIMARY: Ipv4Addr = CLIENT;
const STUN_ALTERNATE: Ipv4Addr = Ipv4Addr::new(64, 70, 12, 211);

/// A STUN server (RFC 5780: two addresses, two ports) on the client.
fn stun_server(lab: &Lab) -> LabChild {
    let alternate = format!("{STUN_ALTERNATE}/{CLIENT_PREFIX_LEN}");
    let add = lab.exec(Host::Client, &["ip", "addr", "add", &alternate, "dev", "eth0"]).unwrap();
    assert!(add.status.success());
    let (primary, alternate) = (STUN_PRIMARY.to_string(), STUN_ALTERNATE.to_string());
    let log = lab.run_dir().join("turnserver.log");
    let server = lab
        .spawn(
            Host::Client,
            &[
                "turnserver",
                "-n",
                "--stun-only",
                "-L",
                &primary,
                "-L",
                &alternate,
                "--no-cli",
                "--no-tls",
                "--no-dtls",
                "--log-file",
                log.to_str().unwrap(),
                "--simple-log",
            ],
        )
        .unwrap();
    // Listening once it answers a plain binding request.
    for _ in 0..50 {
        let probe = lab.exec(Host::Client, &["turnutils_natdiscovery", "-m", &primary]).unwrap();
        if String::from_utf8_lossy(&probe.stdout).contains("Mapping") {
            return server;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("turnserver did not answer: {}", std::fs::read_to_string(&log).unwrap_or_default());
}

/// `turnutils_natdiscovery ARGS` on tristan from local port `port`: its output.
fn discover(lab: &Lab, port: u16, args: &[&str]) -> String {
    let (port, tristan, server) = (port.to_string(), TRISTAN.to_string(), STUN_PRIMARY.to_string());
    let mut cmd = vec!["turnutils_natdiscovery", "-L", &tristan, "-l", &port];
    cmd.extend_from_slice(args);
    cmd.push(&server);
    let out = lab.exec(Host::Tristan, &cmd).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn rfc5780_discovery_finds_endpoint_independent_mapping_and_the_filtering_configured() {
    let lab = common::lab(GatewayMode::Bare);
    let masq = common::start_masq(&lab, &common::example_config());
    let _stun = stun_server(&lab);
    let mapping = discover(&lab, 40300, &["-m"]);
    assert!(mapping.contains("NAT with Endpoint Independent Mapping!"), "{mapping}");
    let filtering = discover(&lab, 40301, &["-f"]);
    assert!(filtering.contains("NAT with Address and Port Dependent Filtering!"), "{filtering}");
    // Hairpinning (RFC 5780 §4.5): tristan's datagram to his own public mapping comes back.
    let hairpin = discover(&lab, 40302, &["-H"]);
    assert!(hairpin.contains("successful hairpinning"), "{hairpin}");
    // The server saw tristan's own port, kept behind dsl's address.
    assert!(hairpin.contains(&format!("UDP reflexive addr: {GW_ISP_A}:40302")), "{hairpin}");
    drop(masq);

    let config = common::config_with(&lab, "");
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "name = \"dsl\"",
        "name = \"dsl\"\nudp_filtering = \"endpoint-independent\"",
        1,
    );
    std::fs::write(&config, text).unwrap();
    let masq = common::start_masq(&lab, &config);
    let filtering = discover(&lab, 40303, &["-f"]);
    assert!(filtering.contains("NAT with Endpoint Independent Filtering!"), "{filtering}");
    let mapping = discover(&lab, 40304, &["-m"]);
    assert!(mapping.contains("NAT with Endpoint Independent Mapping!"), "{mapping}");
    drop(masq);
}
