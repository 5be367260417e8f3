//! The network interfaces of this host (the current network namespace): names, indexes, IPv4
//! addresses and MACs, read with `getifaddrs(3)`.

use std::{
    ffi::{CStr, CString},
    io,
    net::Ipv4Addr,
};

use anyhow::Context as _;
use ipnet::Ipv4Net;
use serde::Serialize;

/// One interface as `ip addr` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostInterface {
    pub name: String,
    pub index: u32,
    /// Configured addresses with their prefix length (the host address is kept: `67.17.28.12/28`).
    pub addrs: Vec<Ipv4Net>,
    /// Link-layer address, when the link has a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// No Ethernet header (PPP, raw-ip LTE, WireGuard, tun): its link type is not ARPHRD_ETHER.
    pub l3: bool,
    /// Administratively up with a carrier (IFF_UP and IFF_RUNNING): it can pass traffic.
    pub carrier: bool,
}

impl HostInterface {
    /// The configured subnet that contains `addr`, if any.
    pub fn subnet_of(&self, addr: Ipv4Addr) -> Option<Ipv4Net> {
        self.addrs.iter().copied().find(|net| net.contains(&addr))
    }
}

/// All interfaces of this host, in the order the kernel lists them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HostInterfaces {
    pub interfaces: Vec<HostInterface>,
}

/// What one `getifaddrs` entry tells about its interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Inet(Ipv4Net),
    Link { index: u32, mac: Option<[u8; 6]>, l3: bool },
    Other,
}

impl HostInterfaces {
    /// Reads the interfaces of the current network namespace.
    pub fn read() -> anyhow::Result<Self> {
        let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: `head` is a valid out-pointer; on success the list is freed by `IfAddrs`.
        if unsafe { libc::getifaddrs(&mut head) } != 0 {
            return Err(io::Error::last_os_error()).context("getifaddrs");
        }
        let list = IfAddrs(head);
        let mut entries = Vec::new();
        let mut carrier = Vec::new();
        let mut cur = list.0;
        while !cur.is_null() {
            // SAFETY: `cur` is a node of the list returned by getifaddrs, alive until `list` drops.
            let ifa = unsafe { &*cur };
            cur = ifa.ifa_next;
            if ifa.ifa_name.is_null() {
                continue;
            }
            // SAFETY: `ifa_name` is a NUL-terminated string owned by the list.
            let label = unsafe { CStr::from_ptr(ifa.ifa_name) }.to_string_lossy().into_owned();
            // SAFETY: the pointers come from getifaddrs and are null or point to sockaddrs
            // of the family they announce.
            let entry = unsafe { decode(ifa.ifa_addr, ifa.ifa_netmask) };
            let running = (libc::IFF_UP | libc::IFF_RUNNING) as u32;
            if ifa.ifa_flags & running == running {
                carrier.push(label.split(':').next().unwrap_or_default().to_owned());
            }
            entries.push((label, entry));
        }
        let mut host = Self::collect(entries);
        for ifc in &mut host.interfaces {
            ifc.carrier = carrier.contains(&ifc.name);
            if ifc.index == 0 {
                // A link without a link-layer address (tun, PPP, WireGuard): getifaddrs lists
                // no AF_PACKET entry for it, so neither index nor type came from there.
                ifc.index = name_to_index(&ifc.name).unwrap_or(0);
                ifc.l3 = link_type(&ifc.name).is_some_and(is_l3_type);
            }
        }
        host.interfaces.retain(|ifc| ifc.index != 0);
        Ok(host)
    }

    /// The interface called `name`.
    pub fn get(&self, name: &str) -> Option<&HostInterface> {
        self.interfaces.iter().find(|ifc| ifc.name == name)
    }

    /// A fixed list, for tests.
    pub fn from_list(interfaces: Vec<HostInterface>) -> Self {
        Self { interfaces }
    }

    /// Merges `getifaddrs` entries into one `HostInterface` per device. Address labels such as
    /// `eth0:1` belong to the device before the colon (device names cannot contain one).
    fn collect(entries: Vec<(String, Entry)>) -> Self {
        let mut interfaces: Vec<HostInterface> = Vec::new();
        for (label, entry) in entries {
            let name = label.split(':').next().unwrap_or_default();
            let pos = match interfaces.iter().position(|ifc| ifc.name == name) {
                Some(pos) => pos,
                None => {
                    interfaces.push(HostInterface { name: name.to_owned(), ..Default::default() });
                    interfaces.len() - 1
                }
            };
            let ifc = &mut interfaces[pos];
            match entry {
                Entry::Inet(net) => {
                    if !ifc.addrs.contains(&net) {
                        ifc.addrs.push(net);
                    }
                }
                Entry::Link { index, mac, l3 } => {
                    ifc.index = index;
                    ifc.mac = mac;
                    ifc.l3 = l3;
                }
                Entry::Other => {}
            }
        }
        Self { interfaces }
    }
}

/// Frees the `getifaddrs` list on drop.
struct IfAddrs(*mut libc::ifaddrs);

impl Drop for IfAddrs {
    fn drop(&mut self) {
        // SAFETY: the pointer came from a successful getifaddrs and is freed once.
        unsafe { libc::freeifaddrs(self.0) };
    }
}

/// Decodes the address of one `getifaddrs` entry.
///
/// # Safety
/// `addr` and `netmask` must each be null or point to a sockaddr of the family in `sa_family`
/// (as getifaddrs guarantees).
unsafe fn decode(addr: *const libc::sockaddr, netmask: *const libc::sockaddr) -> Entry {
    if addr.is_null() {
        return Entry::Other;
    }
    // SAFETY: `addr` points to at least a `sockaddr` (caller's contract).
    let family = i32::from(unsafe { (*addr).sa_family });
    match family {
        libc::AF_INET => {
            // SAFETY: the family says this is a `sockaddr_in`; read unaligned to be safe.
            let sin = unsafe { addr.cast::<libc::sockaddr_in>().read_unaligned() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            let prefix_len = if netmask.is_null() {
                32
            } else {
                // SAFETY: the netmask of an AF_INET entry is a `sockaddr_in` too.
                let mask = unsafe { netmask.cast::<libc::sockaddr_in>().read_unaligned() };
                u32::from_be(mask.sin_addr.s_addr).leading_ones() as u8
            };
            Ipv4Net::new(ip, prefix_len).map_or(Entry::Other, Entry::Inet)
        }
        libc::AF_PACKET => {
            // SAFETY: the family says this is a `sockaddr_ll`.
            let sll = unsafe { addr.cast::<libc::sockaddr_ll>().read_unaligned() };
            let mac = (sll.sll_halen == 6).then(|| {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&sll.sll_addr[..6]);
                mac
            });
            let l3 = is_l3_type(sll.sll_hatype);
            Entry::Link { index: u32::try_from(sll.sll_ifindex).unwrap_or(0), mac, l3 }
        }
        _ => Entry::Other,
    }
}

/// Ethernet and loopback carry an Ethernet header; every other link type (PPP, none) does not.
fn is_l3_type(hatype: u16) -> bool {
    const ARPHRD_ETHER: u16 = 1;
    const ARPHRD_LOOPBACK: u16 = 772;
    !matches!(hatype, ARPHRD_ETHER | ARPHRD_LOOPBACK)
}

/// The link type (`ARPHRD_*`) of `name`, by SIOCGIFHWADDR in this network namespace.
fn link_type(name: &str) -> Option<u16> {
    let bytes = name.as_bytes();
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if bytes.len() >= req.ifr_name.len() {
        return None;
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: a plain socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: SIOCGIFHWADDR fills ifr_hwaddr of a valid ifreq.
    let ret = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    // SAFETY: the union is plain data (zeroed, or the hwaddr the kernel wrote on success).
    let family = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    (ret == 0).then_some(family)
}

fn name_to_index(name: &str) -> Option<u32> {
    let c_name = CString::new(name).ok()?;
    // SAFETY: `c_name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    (index != 0).then_some(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn read_finds_loopback_with_its_address_and_index() {
        let host = HostInterfaces::read().unwrap();
        let lo = host.get("lo").expect("lo is listed");
        assert_eq!(lo.index, 1);
        assert!(lo.addrs.contains(&net("127.0.0.1/8")), "lo addrs: {:?}", lo.addrs);
        assert_eq!(lo.subnet_of(Ipv4Addr::new(127, 0, 0, 53)), Some(net("127.0.0.1/8")));
    }

    #[test]
    fn read_gives_every_interface_a_kernel_index() {
        let host = HostInterfaces::read().unwrap();
        assert!(!host.interfaces.is_empty());
        for ifc in &host.interfaces {
            assert_eq!(name_to_index(&ifc.name), Some(ifc.index), "{}", ifc.name);
        }
    }

    #[test]
    fn address_labels_are_merged_into_their_device() {
        let mac = Some([2, 0, 0, 0, 0, 1]);
        let host = HostInterfaces::collect(vec![
            ("eth4".into(), Entry::Link { index: 3, mac, l3: false }),
            ("eth4".into(), Entry::Inet(net("67.17.28.12/28"))),
            ("eth4:pub".into(), Entry::Inet(net("67.17.28.10/28"))),
            ("eth4".into(), Entry::Other),
        ]);
        assert_eq!(
            host.interfaces,
            vec![HostInterface {
                name: "eth4".into(),
                index: 3,
                addrs: vec![net("67.17.28.12/28"), net("67.17.28.10/28")],
                mac,
                l3: false,
                carrier: false,
            }]
        );
    }

    #[test]
    fn interfaces_keep_kernel_order_and_addresses_are_not_duplicated() {
        let host = HostInterfaces::collect(vec![
            ("lo".into(), Entry::Link { index: 1, mac: Some([0; 6]), l3: false }),
            ("eth0".into(), Entry::Link { index: 2, mac: None, l3: true }),
            ("lo".into(), Entry::Inet(net("127.0.0.1/8"))),
            ("lo".into(), Entry::Inet(net("127.0.0.1/8"))),
        ]);
        let names: Vec<_> = host.interfaces.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["lo", "eth0"]);
        assert_eq!(host.get("lo").unwrap().addrs, [net("127.0.0.1/8")]);
        assert_eq!(host.get("eth0").unwrap().mac, None);
    }

    #[test]
    fn get_finds_by_exact_name_only() {
        let host = HostInterfaces::from_list(vec![HostInterface {
            name: "eth1".into(),
            index: 7,
            ..Default::default()
        }]);
        assert_eq!(host.get("eth1").map(|i| i.index), Some(7));
        assert!(host.get("eth").is_none());
        assert!(host.get("eth10").is_none());
    }

    #[test]
    fn subnet_of_uses_the_prefix_not_the_host_address() {
        let ifc = HostInterface {
            name: "eth4".into(),
            index: 3,
            addrs: vec![net("10.9.9.1/24"), net("67.17.28.12/28")],
            mac: None,
            l3: false,
            carrier: true,
        };
        assert_eq!(ifc.subnet_of(Ipv4Addr::new(67, 17, 28, 14)), Some(net("67.17.28.12/28")));
        assert_eq!(ifc.subnet_of(Ipv4Addr::new(67, 17, 28, 16)), None);
    }
}
