//! Which program is attached where: the pinned links read back with raw bpf(2), for
//! `masq status` and the metrics.
use std::{
    ffi::CString,
    fs,
    io::{self},
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use masq_common::program_names;
use serde::Serialize;

use crate::{
    bpf_sys::sys_bpf,
    hooks::{self, HookPoint},
    state::{DaemonState, Names},
};

// ---------------------------------------------------------------------------------------------
// Program attachments (the pinned links)

/// One program attachment: a pinned link `link-<program>-<interface>`.
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub program: String,
    pub interface: String,
    /// `xdp`, `tc_ingress` or `tc_egress`.
    pub hook: &'static str,
    /// Why this program runs here (the daemon's choice, see `hooks.rs`).
    pub reason: Option<String>,
    /// The link exists and is attached to a device.
    pub attached: bool,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// `xdp` or `tcx`, from the kernel.
    pub link_type: Option<&'static str>,
    /// The device's index in its network namespace (0 once the device is gone).
    pub ifindex: Option<u32>,
    /// Why it is not attached.
    pub error: Option<String>,
}

/// The attachments expected from the names plus every link pinned under `pin_dir`.
pub fn read_attachments(pin_dir: &Path, names: &Names) -> Vec<Attachment> {
    let pinned_links: Vec<(String, String)> = fs::read_dir(pin_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| parse_link_pin(&e.ok()?.file_name().to_string_lossy()))
        .collect();
    // An uplink's ingress and egress programs: whichever variant is pinned, else the default.
    let variant = |iface: &str, variants: &[&str]| {
        variants
            .iter()
            .find(|p| pinned_links.iter().any(|(q, i)| q == *p && i == iface))
            .unwrap_or(&variants[0])
            .to_string()
    };
    let mut wanted: Vec<(String, String)> = Vec::new();
    if let Some(lan) = &names.lan_interface {
        wanted.push((program_names::LAN_INGRESS.into(), lan.clone()));
    }
    for u in &names.uplinks {
        let iface = u.interface.as_str();
        let ingress = [
            program_names::UPLINK_INGRESS,
            program_names::UPLINK_INGRESS_XDP,
            program_names::UPLINK_INGRESS_L3,
        ];
        let egress = [program_names::UPLINK_EGRESS, program_names::UPLINK_EGRESS_L3];
        wanted.push((variant(iface, &ingress), iface.to_string()));
        wanted.push((variant(iface, &egress), iface.to_string()));
    }
    let reasons = DaemonState::load(pin_dir).map(|s| s.hooks).unwrap_or_default();
    let mut pinned: Vec<(String, String)> =
        pinned_links.into_iter().filter(|p| !wanted.contains(p)).collect();
    pinned.sort();
    wanted.extend(pinned);
    wanted
        .into_iter()
        .map(|(program, interface)| {
            let pin = pin_dir.join(format!("link-{program}-{interface}"));
            let hook = hooks::hook_of(&program).map_or("unknown", HookPoint::name);
            let reason = reasons
                .iter()
                .find(|c| c.program == program && c.interface == interface)
                .map(|c| c.reason.clone());
            let mut a = Attachment {
                program,
                interface,
                hook,
                reason,
                attached: false,
                link_id: None,
                program_id: None,
                link_type: None,
                ifindex: None,
                error: None,
            };
            match link_info(&pin) {
                Ok(info) => {
                    a.link_id = Some(info.id);
                    a.program_id = Some(info.prog_id);
                    a.link_type = Some(match info.link_type {
                        LINK_TYPE_XDP => "xdp",
                        LINK_TYPE_TCX => "tcx",
                        _ => "other",
                    });
                    a.ifindex = Some(info.ifindex);
                    a.attached = info.ifindex != 0 && info.prog_id != 0;
                    if !a.attached {
                        a.error = Some("link detached (device gone?)".into());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    a.error = Some(format!("no link pinned at {}", pin.display()));
                }
                Err(e) => a.error = Some(format!("{}: {e}", pin.display())),
            }
            a
        })
        .collect()
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_DETACH: libc::c_long = 34;
const LINK_TYPE_XDP: u32 = 6;
const LINK_TYPE_TCX: u32 = 11;

struct LinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    ifindex: u32,
}

/// An fd for the object pinned at `pin` (BPF_OBJ_GET).
fn open_pin(pin: &Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let path = CString::new(pin.as_os_str().as_bytes())?;
    let mut attr =
        ObjGet { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, _pad: 0 };
    // SAFETY: BPF_OBJ_GET reads `attr` (a NUL-terminated path that outlives the call).
    let fd = unsafe { sys_bpf(BPF_OBJ_GET, &mut attr) }?;
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detach the link pinned at `pin` now, then unpin it. Unpinning alone detaches too, but
/// later: the kernel releases the link from a work queue after an RCU grace period, and
/// packets meanwhile still meet the old program.
pub fn detach_and_unpin(pin: &Path) -> io::Result<()> {
    #[repr(C)]
    struct LinkDetach {
        link_fd: u32,
    }
    let fd = open_pin(pin)?;
    let mut attr = LinkDetach { link_fd: fd.as_raw_fd() as u32 };
    // SAFETY: BPF_LINK_DETACH reads `attr`; the fd is open for the call.
    // ENOLINK: its device is gone, so it is detached already; EOPNOTSUPP: a kind of link
    // (a tracepoint's) that only goes with its last reference.
    if let Err(err) = unsafe { sys_bpf(BPF_LINK_DETACH, &mut attr) }
        && !matches!(err.raw_os_error(), Some(libc::ENOLINK | libc::EOPNOTSUPP))
    {
        return Err(err);
    }
    fs::remove_file(pin)
}

/// `bpf_link_info` of a pinned link: aya's `LinkInfo` does not expose the device, which tells
/// whether the link is still attached.
fn link_info(pin: &Path) -> io::Result<LinkInfo> {
    #[repr(C)]
    struct InfoByFd {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let fd = open_pin(pin)?;
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union (word 4) whose xdp and
    // tcx members both start with the ifindex.
    #[repr(C, align(8))]
    struct InfoBuf([u32; 64]);
    let mut info = InfoBuf([0; 64]);
    let mut attr = InfoByFd {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<InfoBuf>() as u32,
        info: info.0.as_mut_ptr() as u64,
    };
    // SAFETY: the kernel writes at most `info_len` bytes into `info`.
    unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    let word = |i: usize| info.0[i];
    Ok(LinkInfo { link_type: word(0), id: word(1), prog_id: word(2), ifindex: word(4) })
}

pub fn link_pin_name(program: &str, iface: &str) -> String {
    format!("link-{program}-{iface}")
}

/// `link-<program>-<interface>` → (program, interface).
pub fn parse_link_pin(name: &str) -> Option<(String, String)> {
    let rest = name.strip_prefix("link-")?;
    // Longest name first: `masq_uplink_in_xdp` before `masq_uplink_in`.
    let mut programs = hooks::PROGRAMS;
    programs.sort_by_key(|p| std::cmp::Reverse(p.len()));
    programs.iter().find_map(|p| {
        let iface = rest.strip_prefix(p)?.strip_prefix('-')?;
        (!iface.is_empty()).then(|| (p.to_string(), iface.to_string()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pin_names_split_into_program_and_interface() {
        assert_eq!(
            parse_link_pin("link-masq_uplink_in-eth4"),
            Some(("masq_uplink_in".into(), "eth4".into()))
        );
        assert_eq!(
            parse_link_pin("link-masq_lan_in-br-lan"),
            Some(("masq_lan_in".into(), "br-lan".into()))
        );
        assert_eq!(parse_link_pin("CONNS"), None);
        assert_eq!(parse_link_pin("link-masq_lan_in-"), None);
        assert_eq!(parse_link_pin("link-other-eth0"), None);
    }
}
