//! Which program runs where, and why. TC runs everywhere; XDP is an acceleration of uplink
//! ingress, used only where it is safe:
//! - native (driver) mode only: generic XDP linearises every packet, skips GRO and sees the same
//!   partial checksums as below, so it is never used;
//! - an Ethernet uplink behind a bus (PCI, USB, virtio): virtual devices (veth, tun, bridges,
//!   VLANs) carry packets of local senders whose checksums are CHECKSUM_PARTIAL, a state XDP
//!   cannot see and a redirect drops, so an incremental update would deliver a wrong checksum;
//! - every device it redirects to can transmit redirected frames (`xdp_features` has
//!   `NDO_XMIT`) with masq's pass-through program loaded on it, as Intel drivers need.
//!
//! `xdp = "required"` drops the bus condition (the operator vouches for complete checksums) and
//! refuses to start where the rest does not hold.
use std::{ffi::CString, io, mem, os::fd::AsRawFd as _};

use anyhow::{Context as _, bail};
use masq_common::program_names;
use serde::{Deserialize, Serialize};

use crate::{config::XdpMode, host::HostInterface};

/// `enum netdev_xdp_act` (include/uapi/linux/netdev.h).
pub const XDP_ACT_BASIC: u64 = 1 << 0;
pub const XDP_ACT_REDIRECT: u64 = 1 << 1;
pub const XDP_ACT_NDO_XMIT: u64 = 1 << 2;

/// Where a program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookPoint {
    Xdp,
    TcIngress,
    TcEgress,
}

impl HookPoint {
    pub fn name(self) -> &'static str {
        match self {
            HookPoint::Xdp => "xdp",
            HookPoint::TcIngress => "tc_ingress",
            HookPoint::TcEgress => "tc_egress",
        }
    }
}

/// The hook of every program masq knows.
pub fn hook_of(program: &str) -> Option<HookPoint> {
    Some(match program {
        program_names::UPLINK_INGRESS_XDP | program_names::XDP_PASS => HookPoint::Xdp,
        program_names::UPLINK_INGRESS
        | program_names::UPLINK_INGRESS_L3
        | program_names::LAN_INGRESS => HookPoint::TcIngress,
        program_names::UPLINK_EGRESS | program_names::UPLINK_EGRESS_L3 => HookPoint::TcEgress,
        _ => return None,
    })
}

/// Every program masq attaches, for reading pins back.
pub const PROGRAMS: [&str; 7] = [
    program_names::UPLINK_INGRESS,
    program_names::UPLINK_INGRESS_L3,
    program_names::UPLINK_INGRESS_XDP,
    program_names::LAN_INGRESS,
    program_names::UPLINK_EGRESS,
    program_names::UPLINK_EGRESS_L3,
    program_names::XDP_PASS,
];

/// One program on one interface, with the reason it was chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookChoice {
    pub interface: String,
    pub program: String,
    pub hook: HookPoint,
    pub reason: String,
}

impl HookChoice {
    pub fn new(interface: &str, program: &str, reason: impl Into<String>) -> Self {
        Self {
            interface: interface.to_string(),
            program: program.to_string(),
            hook: hook_of(program).expect("a masq program"),
            reason: reason.into(),
        }
    }
}

/// What the loader knows of a device, to decide on XDP.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceFacts {
    /// No Ethernet header (PPP, raw-ip, WireGuard, tun).
    pub l3: bool,
    /// Driver name (`ethtool -i`), e.g. "veth", "ixgbe".
    pub driver: String,
    /// Bus address (`ethtool -i`); empty for virtual devices.
    pub bus_info: String,
    /// `xdp_features`, when the kernel reports them.
    pub xdp_features: Option<u64>,
}

impl DeviceFacts {
    pub fn read(iface: &HostInterface) -> Self {
        let (driver, bus_info) = driver_info(&iface.name).unwrap_or_default();
        Self { l3: iface.l3, driver, bus_info, xdp_features: xdp_features(iface.index).ok() }
    }
}

/// Why XDP cannot run as uplink ingress on a device with `facts`, if it cannot. `lan`: the
/// device it would redirect to, with masq's pass-through program already loaded there.
pub fn xdp_refusal(
    mode: XdpMode,
    uplink: &DeviceFacts,
    lan: &DeviceFacts,
    lan_name: &str,
) -> Option<String> {
    uplink_refusal(mode, uplink).or_else(|| target_refusal(lan, lan_name))
}

/// Why the uplink itself cannot run XDP, whatever it would redirect to.
pub fn uplink_refusal(mode: XdpMode, uplink: &DeviceFacts) -> Option<String> {
    if mode == XdpMode::Off {
        return Some("xdp = \"off\"".into());
    }
    if uplink.l3 {
        return Some("L3 device (no Ethernet header): no native XDP".into());
    }
    if mode == XdpMode::Auto && uplink.bus_info.is_empty() {
        let driver = if uplink.driver.is_empty() { "virtual" } else { &uplink.driver };
        return Some(format!(
            "{driver} device: its packets may carry partial checksums that XDP cannot see \
             (xdp = \"required\" to use XDP anyway)"
        ));
    }
    match uplink.xdp_features {
        Some(f) if f & XDP_ACT_BASIC != 0 && f & XDP_ACT_REDIRECT != 0 => None,
        Some(_) => Some("the driver has no native XDP with redirect".into()),
        None => Some("the kernel does not report the device's xdp_features".into()),
    }
}

/// Why XDP-redirected frames would not leave by `target`, if they would not.
pub fn target_refusal(target: &DeviceFacts, name: &str) -> Option<String> {
    match target.xdp_features {
        Some(f) if f & XDP_ACT_NDO_XMIT != 0 => None,
        _ => Some(format!(
            "{name} cannot transmit XDP-redirected frames (no ndo_xdp_xmit{})",
            if target.driver == "veth" { "; its veth peer runs no XDP program" } else { "" }
        )),
    }
}

/// The TC programs of an uplink, by its link type.
pub fn uplink_tc(l3: bool) -> (&'static str, &'static str) {
    if l3 {
        (program_names::UPLINK_INGRESS_L3, program_names::UPLINK_EGRESS_L3)
    } else {
        (program_names::UPLINK_INGRESS, program_names::UPLINK_EGRESS)
    }
}

/// Fail when `mode` is `required` and `refusal` says XDP cannot run.
pub fn require_xdp(mode: XdpMode, uplink: &str, refusal: Option<&str>) -> anyhow::Result<()> {
    if let (XdpMode::Required, Some(why)) = (mode, refusal) {
        bail!("dataplane.xdp = \"required\" but XDP cannot run on uplink {uplink}: {why}");
    }
    Ok(())
}

/// Driver and bus address of `iface` in this network namespace (`SIOCETHTOOL`, ETHTOOL_GDRVINFO).
pub fn driver_info(iface: &str) -> io::Result<(String, String)> {
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    let name = CString::new(iface).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > libc::IFNAMSIZ {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY: all-zero is a valid DrvInfo.
    let mut info: DrvInfo = unsafe { mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], data: &mut info, _pad: [0; 16] };
    req.name[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: a plain socket, owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads the ifreq and writes the DrvInfo it points to; both outlive it.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        String::from_utf8_lossy(&b[..end]).into_owned()
    };
    Ok((text(&info.driver), text(&info.bus_info)))
}

/// `xdp_features` of a device, from the `netdev` generic netlink family.
pub fn xdp_features(ifindex: u32) -> anyhow::Result<u64> {
    let sock = GenlSocket::open()?;
    let family = sock.family_id("netdev").context("resolving genetlink family netdev")?;
    const NETDEV_CMD_DEV_GET: u8 = 1;
    const NETDEV_A_DEV_IFINDEX: u16 = 1;
    const NETDEV_A_DEV_XDP_FEATURES: u16 = 3;
    let reply = sock.request(
        family,
        NETDEV_CMD_DEV_GET,
        &nla(NETDEV_A_DEV_IFINDEX, &ifindex.to_ne_bytes()),
    )?;
    let value = find_nla(&reply, NETDEV_A_DEV_XDP_FEATURES)
        .with_context(|| format!("no xdp-features for ifindex {ifindex}"))?;
    let mut bytes = [0u8; 8];
    bytes[..value.len().min(8)].copy_from_slice(&value[..value.len().min(8)]);
    Ok(u64::from_ne_bytes(bytes))
}

/// One netlink attribute, padded to 4 bytes.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let len = 4 + value.len();
    let mut out = Vec::with_capacity(len.next_multiple_of(4));
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(len.next_multiple_of(4), 0);
    out
}

/// The value of the first attribute `kind` in `attrs`.
fn find_nla(mut attrs: &[u8], kind: u16) -> Option<&[u8]> {
    while attrs.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
        let this = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x3fff;
        if len < 4 || len > attrs.len() {
            return None;
        }
        if this == kind {
            return Some(&attrs[4..len]);
        }
        attrs = &attrs[len.next_multiple_of(4).min(attrs.len())..];
    }
    None
}

/// A generic netlink socket for one request at a time.
struct GenlSocket(std::os::fd::OwnedFd);

const NLMSG_ERROR: u16 = 2;
const GENL_ID_CTRL: u16 = 0x10;
const NLM_F_REQUEST: u16 = 1;

impl GenlSocket {
    fn open() -> io::Result<Self> {
        // SAFETY: a plain socket, owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_GENERIC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        Ok(Self(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }))
    }

    /// Send one request and return the attributes of its answer.
    fn request(&self, family: u16, cmd: u8, attrs: &[u8]) -> anyhow::Result<Vec<u8>> {
        let len = 16 + 4 + attrs.len();
        let mut msg = Vec::with_capacity(len);
        msg.extend_from_slice(&(len as u32).to_ne_bytes());
        msg.extend_from_slice(&family.to_ne_bytes());
        msg.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
        msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
        msg.extend_from_slice(&[cmd, 1, 0, 0]); // genlmsghdr: cmd, version
        msg.extend_from_slice(attrs);
        // SAFETY: sending a buffer we own.
        let sent = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error()).context("sending a genetlink request");
        }
        let mut buf = vec![0u8; 8192];
        // SAFETY: receiving into a buffer we own, at most its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error()).context("reading a genetlink answer");
        }
        let buf = &buf[..n as usize];
        if buf.len() < 20 {
            bail!("short genetlink answer");
        }
        let kind = u16::from_ne_bytes([buf[4], buf[5]]);
        if kind == NLMSG_ERROR {
            let errno = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
            return Err(io::Error::from_raw_os_error(-errno)).context("genetlink request refused");
        }
        let msg_len =
            (u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize).min(buf.len());
        Ok(buf[20..msg_len].to_vec())
    }

    fn family_id(&self, name: &str) -> anyhow::Result<u16> {
        const CTRL_CMD_GETFAMILY: u8 = 3;
        const CTRL_ATTR_FAMILY_ID: u16 = 1;
        const CTRL_ATTR_FAMILY_NAME: u16 = 2;
        let mut value = name.as_bytes().to_vec();
        value.push(0);
        let reply =
            self.request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &nla(CTRL_ATTR_FAMILY_NAME, &value))?;
        let id = find_nla(&reply, CTRL_ATTR_FAMILY_ID).context("no family id")?;
        Ok(u16::from_ne_bytes([id[0], id[1]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(driver: &str, bus: &str, features: Option<u64>) -> DeviceFacts {
        DeviceFacts {
            l3: false,
            driver: driver.into(),
            bus_info: bus.into(),
            xdp_features: features,
        }
    }

    const FULL: u64 = XDP_ACT_BASIC | XDP_ACT_REDIRECT | XDP_ACT_NDO_XMIT;

    #[test]
    fn auto_uses_xdp_on_a_nic_whose_lan_can_receive_redirects() {
        let nic = device("ixgbe", "0000:03:00.0", Some(FULL));
        assert_eq!(xdp_refusal(XdpMode::Auto, &nic, &nic, "eth0"), None);
        assert_eq!(xdp_refusal(XdpMode::Required, &nic, &nic, "eth0"), None);
    }

    #[test]
    fn auto_keeps_veth_and_l3_uplinks_on_tc() {
        let veth = device("veth", "", Some(FULL));
        let nic = device("ixgbe", "0000:03:00.0", Some(FULL));
        let why = xdp_refusal(XdpMode::Auto, &veth, &nic, "eth0").unwrap();
        assert!(why.contains("partial checksums"), "{why}");
        assert_eq!(xdp_refusal(XdpMode::Required, &veth, &nic, "eth0"), None);
        let ppp = DeviceFacts { l3: true, ..device("ppp", "", None) };
        assert!(xdp_refusal(XdpMode::Required, &ppp, &nic, "eth0").unwrap().contains("L3"));
        assert!(xdp_refusal(XdpMode::Off, &nic, &nic, "eth0").is_some());
    }

    #[test]
    fn xdp_needs_a_lan_that_transmits_redirected_frames() {
        let nic = device("ixgbe", "0000:03:00.0", Some(FULL));
        let lan = device("veth", "", Some(XDP_ACT_BASIC | XDP_ACT_REDIRECT));
        let why = xdp_refusal(XdpMode::Required, &nic, &lan, "eth0").unwrap();
        assert!(why.contains("eth0 cannot transmit") && why.contains("veth peer"), "{why}");
        let e = require_xdp(XdpMode::Required, "dsl", Some(&why)).unwrap_err().to_string();
        assert!(e.contains("uplink dsl"), "{e}");
        assert!(require_xdp(XdpMode::Auto, "dsl", Some(&why)).is_ok());
    }

    #[test]
    fn netlink_attributes_round_trip() {
        let mut attrs = nla(1, &7u32.to_ne_bytes());
        attrs.extend(nla(3, &FULL.to_ne_bytes()));
        assert_eq!(find_nla(&attrs, 3), Some(&FULL.to_ne_bytes()[..]));
        assert_eq!(find_nla(&attrs, 9), None);
    }

    #[test]
    fn loopback_reports_its_driver_and_xdp_features() {
        // Needs no privileges: both are plain reads of this namespace's loopback.
        let (_driver, bus) = driver_info("lo").unwrap_or_default();
        assert!(bus.is_empty());
        let features = xdp_features(1).expect("xdp_features of lo");
        assert_eq!(features & XDP_ACT_NDO_XMIT, 0);
    }
}
