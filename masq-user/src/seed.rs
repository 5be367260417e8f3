//! The seed topology's numbers, one definition each, for the lab (`lab.rs`), the program tests'
//! and the benchmark's gateway namespace (`progkit.rs`) alike: the addresses of TOPOLOGY.md, the
//! uplinks of `examples/masq-gw.toml` as the dataplane numbers them, and the MACs of the program
//! namespace's devices and neighbours. (The lab's own veths keep the kernel's random MACs.)
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use crate::frames::Mac;

// ---- Addresses ----

/// The client on the internet.
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(64, 70, 12, 210);
/// The client's router (the lab's core, on its link to the client): the client's default route.
pub const CLIENT_ROUTER: Ipv4Addr = Ipv4Addr::new(64, 70, 12, 1);
/// The core router, on its link to ISP A: a router on the way that answers with ICMP errors.
pub const CORE_ROUTER: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const ISOLDE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 17);
pub const TRISTAN: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 32);
/// A third LAN host (program tests: collisions with isolde, both leave by ISP B).
pub const MARKE: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 50);
/// isolde's public address through ISP A (gw eth4).
pub const PUBLIC_ISP_A: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 10);
/// isolde's public address through ISP B (gw eth1).
pub const PUBLIC_ISP_B: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 17);
/// gw's address on eth4 (ISP A): the `dsl` uplink's masquerade source.
pub const GW_ISP_A: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 12);
/// gw's address on eth1 (ISP B): the `isp-b` uplink's masquerade source.
pub const GW_ISP_B: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 179);
/// gw's address on eth0, the LAN's default gateway.
pub const GW_LAN: Ipv4Addr = Ipv4Addr::new(192, 168, 100, 254);
/// ISP A's router: gw's next hop on eth4.
pub const ISP_A_ROUTER: Ipv4Addr = Ipv4Addr::new(67, 17, 28, 14);
/// ISP B's router: gw's next hop on eth1 (main's default).
pub const ISP_B_ROUTER: Ipv4Addr = Ipv4Addr::new(205, 254, 211, 254);
/// Prefix lengths of the LAN (eth0), of ISP A's (eth4) and ISP B's (eth1) subnets, and of the
/// client's.
pub const LAN_PREFIX_LEN: u8 = 24;
pub const ISP_A_PREFIX_LEN: u8 = 28;
pub const ISP_B_PREFIX_LEN: u8 = 24;
pub const CLIENT_PREFIX_LEN: u8 = 24;

/// The subnets, as routes and filters name them (`67.17.28.0/28`).
pub const LAN_NET: Ipv4Net = subnet(GW_LAN, LAN_PREFIX_LEN);
pub const ISP_A_NET: Ipv4Net = subnet(GW_ISP_A, ISP_A_PREFIX_LEN);
pub const ISP_B_NET: Ipv4Net = subnet(GW_ISP_B, ISP_B_PREFIX_LEN);
pub const CLIENT_NET: Ipv4Net = subnet(CLIENT, CLIENT_PREFIX_LEN);

/// The subnet of `len` bits that `addr` is in (`67.17.28.12` and 28: `67.17.28.0/28`).
const fn subnet(addr: Ipv4Addr, len: u8) -> Ipv4Net {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Ipv4Net::new_assert(Ipv4Addr::from_bits(addr.to_bits() & mask), len)
}

/// The LAN's address `host` (192.168.100.`host`).
pub const fn lan_host(host: u8) -> Ipv4Addr {
    let [a, b, c, _] = GW_LAN.octets();
    Ipv4Addr::new(a, b, c, host)
}

// ---- The example config's uplinks, as the dataplane numbers them ----

/// Uplink `dsl` (ISP A, eth4): its index in `UPLINKS`, routing table and fwmark.
pub const DSL: u8 = 0;
pub const DSL_TABLE: u32 = 201;
pub const DSL_MARK: u32 = 0x0100_0000;
/// Uplink `isp-b` (eth1): its index in `UPLINKS`, routing table and fwmark.
pub const ISPB: u8 = 1;
pub const ISPB_TABLE: u32 = 202;
pub const ISPB_MARK: u32 = 0x0200_0000;

// ---- MACs of the program namespace (`progkit`) ----

/// gw's devices.
pub const ETH0_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x00];
pub const ETH1_MAC: Mac = [0x02, 0, 0, 0, 0xe1, 0x00];
pub const ETH4_MAC: Mac = [0x02, 0, 0, 0, 0xe4, 0x00];
/// Their veth peers (`<dev>p`); the benchmark puts every LAN host at eth0's.
pub const ETH0_PEER_MAC: Mac = [0x02, 0, 0, 0, 0xe0, 0x01];
pub const ETH1_PEER_MAC: Mac = [0x02, 0, 0, 0, 0xe1, 0x01];
pub const ETH4_PEER_MAC: Mac = [0x02, 0, 0, 0, 0xe4, 0x01];
/// The neighbours: both ISP routers and the LAN hosts the program tests talk to.
pub const ISP_A_ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0x0e];
pub const ISP_B_ROUTER_MAC: Mac = [0x02, 0, 0, 0, 0, 0xfe];
pub const ISOLDE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x11];
pub const TRISTAN_MAC: Mac = [0x02, 0, 0, 0, 0, 0x20];
pub const MARKE_MAC: Mac = [0x02, 0, 0, 0, 0, 0x50];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_subnet_is_its_address_truncated_and_holds_its_hosts() {
        for (net, addr, len, hosts) in [
            (LAN_NET, GW_LAN, LAN_PREFIX_LEN, &[ISOLDE, TRISTAN, MARKE][..]),
            (ISP_A_NET, GW_ISP_A, ISP_A_PREFIX_LEN, &[ISP_A_ROUTER, PUBLIC_ISP_A]),
            (ISP_B_NET, GW_ISP_B, ISP_B_PREFIX_LEN, &[ISP_B_ROUTER, PUBLIC_ISP_B]),
            (CLIENT_NET, CLIENT, CLIENT_PREFIX_LEN, &[CLIENT_ROUTER]),
        ] {
            assert_eq!(net, Ipv4Net::new_assert(addr, len).trunc(), "{addr}/{len}");
            for host in hosts {
                assert!(net.contains(host), "{host} outside {net}");
            }
        }
        assert_eq!(ISP_A_NET.to_string(), "67.17.28.0/28");
    }
}
