//! What each uplink is right now: its interface's index and address and its gateway, from the
//! config where it fixes them and from the host where it leaves them out (DHCP, PPP). The
//! daemon resolves again on every link, address or route change (told by the route monitor of
//! `policy_tables`) and applies the difference.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use crate::policy_tables::DefaultRoute;
use crate::{config::Uplink, host::HostInterfaces};

/// An uplink whose interface exists and has its address: it can carry connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveUplink {
    pub ifindex: u32,
    pub address: Ipv4Addr,
    /// `None`: a point-to-point link, whose default route names only the device.
    pub gateway: Option<Ipv4Addr>,
    /// The interface's MAC; zero on an L3 device.
    pub mac: [u8; 6],
    pub l3: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UplinkState {
    Live(LiveUplink),
    /// Its interface does not exist (a PPP link between redials, a modem re-enumerating).
    Absent,
    /// The interface exists but is not usable yet, and why (no address, no gateway known).
    Waiting(String),
}

impl UplinkState {
    pub fn live(&self) -> Option<&LiveUplink> {
        match self {
            UplinkState::Live(live) => Some(live),
            UplinkState::Absent | UplinkState::Waiting(_) => None,
        }
    }

    /// Why the uplink carries nothing; `None` when it is live.
    pub fn why_not(&self, interface: &str) -> Option<String> {
        match self {
            UplinkState::Live(_) => None,
            UplinkState::Absent => Some(format!("interface {interface} does not exist")),
            UplinkState::Waiting(why) => Some(why.clone()),
        }
    }
}

/// Resolve one uplink against the host and main's default routes.
pub fn resolve(uplink: &Uplink, host: &HostInterfaces, defaults: &[DefaultRoute]) -> UplinkState {
    let waiting = UplinkState::Waiting;
    let Some(ifc) = host.get(&uplink.interface) else {
        return UplinkState::Absent;
    };
    let address = match uplink.address {
        Some(fixed) if ifc.addrs.iter().any(|net| net.addr() == fixed) => fixed,
        Some(fixed) => return waiting(format!("{fixed} is not configured on {}", ifc.name)),
        None => match ifc.addrs.first() {
            Some(net) => net.addr(),
            None => return waiting(format!("{} has no IPv4 address yet", ifc.name)),
        },
    };
    let point_to_point = ifc.l3 || ifc.subnet_of(address).is_some_and(|net| net.prefix_len() == 32);
    let gateway = match uplink.gateway {
        Some(fixed) => Some(fixed),
        None => {
            let learned = defaults
                .iter()
                .filter(|r| r.oif == ifc.index && r.gateway.is_some())
                .min_by_key(|r| r.metric)
                .and_then(|r| r.gateway);
            match learned {
                Some(gateway) => Some(gateway),
                None if point_to_point => None,
                None => {
                    return waiting(format!(
                        "no gateway: set one, or add a default route via {} to learn it from",
                        ifc.name
                    ));
                }
            }
        }
    };
    let mac = ifc.mac.unwrap_or_default();
    UplinkState::Live(LiveUplink { ifindex: ifc.index, address, gateway, mac, l3: ifc.l3 })
}

/// Resolve every uplink of the config, in its order.
pub fn resolve_all(
    uplinks: &[Uplink],
    host: &HostInterfaces,
    defaults: &[DefaultRoute],
) -> Vec<UplinkState> {
    uplinks.iter().map(|u| resolve(u, host, defaults)).collect()
}

/// The address uplink connections were masqueraded to before, when it is no longer theirs.
pub fn lost_address(old: &UplinkState, new: &UplinkState) -> Option<Ipv4Addr> {
    let old = old.live()?.address;
    match new.live() {
        Some(new) if new.address == old => None,
        // Gone with its interface: the same address may come back (a redial keeps it).
        None if *new == UplinkState::Absent => None,
        _ => Some(old),
    }
}

#[cfg(test)]
mod tests {
    use ipnet::Ipv4Net;

    use super::*;
    use crate::host::HostInterface;

    fn uplink(address: Option<&str>, gateway: Option<&str>) -> Uplink {
        Uplink {
            name: "dsl".into(),
            interface: "eth4".into(),
            address: address.map(|a| a.parse().unwrap()),
            gateway: gateway.map(|g| g.parse().unwrap()),
            table: 201,
            mark: 1,
            weight: 1,
            health: None,
            on_down: Default::default(),
            on_up: Default::default(),
            udp_open_filtering: false,
        }
    }

    fn host(addrs: &[&str], l3: bool) -> HostInterfaces {
        HostInterfaces::from_list(vec![HostInterface {
            name: "eth4".into(),
            index: 7,
            addrs: addrs.iter().map(|a| a.parse::<Ipv4Net>().unwrap()).collect(),
            mac: (!l3).then_some([2, 0, 0, 0, 0, 4]),
            l3,
            carrier: true,
        }])
    }

    fn route(gateway: &str, metric: u32) -> DefaultRoute {
        DefaultRoute { oif: 7, gateway: Some(gateway.parse().unwrap()), metric }
    }

    #[test]
    fn fixed_address_and_gateway_are_used_as_configured() {
        let state = resolve(
            &uplink(Some("67.17.28.12"), Some("67.17.28.14")),
            &host(&["67.17.28.12/28"], false),
            &[],
        );
        let live = state.live().expect("live");
        assert_eq!((live.ifindex, live.address), (7, "67.17.28.12".parse().unwrap()));
        assert_eq!(live.gateway, Some("67.17.28.14".parse().unwrap()));
    }

    #[test]
    fn left_out_address_and_gateway_follow_the_interface_and_main() {
        let defaults = [route("10.9.0.1", 200), route("10.9.0.254", 100)];
        let state = resolve(&uplink(None, None), &host(&["10.9.0.7/24"], false), &defaults);
        let live = state.live().expect("live");
        assert_eq!(live.address, "10.9.0.7".parse::<Ipv4Addr>().unwrap());
        assert_eq!(live.gateway, Some("10.9.0.254".parse().unwrap()), "lowest metric wins");
    }

    #[test]
    fn point_to_point_links_need_no_gateway() {
        let state = resolve(&uplink(None, None), &host(&["100.64.0.2/32"], true), &[]);
        assert_eq!(state.live().expect("live").gateway, None);
    }

    #[test]
    fn an_uplink_waits_for_what_is_missing() {
        let why = |s: UplinkState| s.why_not("eth4").expect("not live");
        let none = HostInterfaces::default();
        assert_eq!(resolve(&uplink(None, None), &none, &[]), UplinkState::Absent);
        assert!(why(resolve(&uplink(None, None), &host(&[], false), &[])).contains("no IPv4"));
        let other = host(&["10.9.0.7/24"], false);
        assert!(
            why(resolve(&uplink(Some("10.9.0.8"), None), &other, &[])).contains("not configured")
        );
        assert!(why(resolve(&uplink(None, None), &other, &[])).contains("no gateway"));
    }

    #[test]
    fn a_renumbered_uplink_loses_its_old_address_but_a_vanished_device_does_not() {
        let live = |a: &str| {
            UplinkState::Live(LiveUplink {
                ifindex: 7,
                address: a.parse().unwrap(),
                gateway: None,
                mac: [0; 6],
                l3: true,
            })
        };
        let old = live("10.9.0.7");
        assert_eq!(lost_address(&old, &live("10.9.0.7")), None);
        assert_eq!(lost_address(&old, &live("10.9.0.8")), Some("10.9.0.7".parse().unwrap()));
        assert_eq!(lost_address(&old, &UplinkState::Absent), None);
        let unnumbered = UplinkState::Waiting("eth4 has no IPv4 address yet".into());
        assert_eq!(lost_address(&old, &unnumbered), Some("10.9.0.7".parse().unwrap()));
    }
}
