//! Uplink health for failover: an uplink whose interface has lost its carrier (or is down) is
//! marked down in `UPLINKS`, and the policies send new connections to the next uplink that is
//! up. Connections already on it stay, as they are (`masq conns flush --uplink` drops them).
use std::{ffi::CString, io};

/// True when `iface` is up with a carrier (IFF_UP and IFF_RUNNING), in this network namespace.
pub fn link_is_up(iface: &str) -> io::Result<bool> {
    let name = CString::new(iface).map_err(|_| io::Error::other("interface name with a NUL"))?;
    // SAFETY: a plain socket for the ioctl, closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: ifreq is plain data; the name fits (checked) and stays NUL-terminated.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.as_bytes_with_nul();
    if bytes.len() > req.ifr_name.len() {
        // SAFETY: our own fd.
        unsafe { libc::close(fd) };
        return Err(io::Error::other(format!("interface name {iface} too long")));
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS fills ifr_flags of a valid ifreq.
    let ret = unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) };
    let err = io::Error::last_os_error();
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    if ret < 0 {
        return Err(err);
    }
    // SAFETY: SIOCGIFFLAGS wrote the flags member of the union.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    Ok(flags & libc::IFF_UP != 0 && flags & libc::IFF_RUNNING != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_up_and_a_missing_interface_is_an_error() {
        assert!(link_is_up("lo").unwrap());
        assert!(link_is_up("masq-none0").is_err());
    }
}
