//! Probes that leave by their uplink whatever main's routes say: each socket is bound to the
//! uplink's address (so `ip rule from <address>` picks its table), carries its fwmark (the
//! `fwmark` rule) and is bound to its device (SO_BINDTODEVICE), so a probe can neither leave by
//! another uplink nor take an answer that came in by one.
use std::{
    io,
    mem::size_of,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

use tokio::{io::unix::AsyncFd, net::UdpSocket};

use crate::config::ProbeMethod;

/// Where a probe leaves from: the uplink's address, device and mark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSource {
    pub address: Ipv4Addr,
    pub device: String,
    pub mark: u32,
}

/// Send one probe to `target`; its round-trip time, or `None` when nothing answered in time
/// (or the probe could not be sent: no route, the device gone).
pub async fn probe(
    method: &ProbeMethod,
    source: &ProbeSource,
    target: Ipv4Addr,
    timeout: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let answered = match method {
        ProbeMethod::Icmp => tokio::time::timeout(timeout, icmp_echo(source, target)).await,
        ProbeMethod::Tcp { port } => {
            tokio::time::timeout(timeout, tcp_connect(source, target, *port)).await
        }
        ProbeMethod::Dns { port, query } => {
            tokio::time::timeout(timeout, dns_query(source, target, *port, query)).await
        }
    };
    match answered {
        Ok(Ok(())) => Some(start.elapsed()),
        Ok(Err(e)) => {
            tracing::debug!("probe {} to {target} from {}: {e}", method.name(), source.address);
            None
        }
        Err(_) => None,
    }
}

/// Bind `fd` to the uplink: mark, device, address.
fn bind_to_uplink(fd: RawFd, source: &ProbeSource) -> io::Result<()> {
    setsockopt(fd, libc::SO_MARK, &source.mark.to_ne_bytes())?;
    setsockopt(fd, libc::SO_BINDTODEVICE, source.device.as_bytes())?;
    let addr = sockaddr(SocketAddrV4::new(source.address, 0));
    // SAFETY: a valid sockaddr_in of the size passed.
    let ret = unsafe {
        libc::bind(fd, (&raw const addr).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn setsockopt(fd: RawFd, option: libc::c_int, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` is valid for its length.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if ret < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn sockaddr(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

fn socket(kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(libc::AF_INET, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Identifiers of echo requests and DNS queries: distinct across concurrent probes.
fn next_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let salt = (std::process::id() as u16).rotate_left(7);
    NEXT.fetch_add(1, Ordering::Relaxed) ^ salt
}

/// An ICMP echo request on a raw socket; any echo reply from `target` with its id and sequence
/// answers it. The raw socket sees only packets to the uplink's address on its device.
async fn icmp_echo(source: &ProbeSource, target: Ipv4Addr) -> io::Result<()> {
    let fd = socket(libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    bind_to_uplink(fd.as_raw_fd(), source)?;
    // SAFETY: the AsyncFd owns the fd, open until it drops.
    let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))?;
    // An id from the gateway's own ephemeral range, which masq never gives a masqueraded ping:
    // no LAN host's echo can claim this probe's reply.
    let (lo, hi) = crate::local_ports::current().unwrap_or((32768, 60999));
    let id = lo.wrapping_add(next_id() % (hi.saturating_sub(lo).saturating_add(1)).max(1));
    let seq = next_id();
    let request = echo_request(id, seq);
    let to = sockaddr(SocketAddrV4::new(target, 0));
    // SAFETY: valid buffer and sockaddr; a raw socket send does not block for long.
    let sent = unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            request.as_ptr().cast(),
            request.len(),
            0,
            (&raw const to).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1500];
    loop {
        let mut guard = fd.readable().await?;
        // SAFETY: `buf` is valid for its length.
        let n = match guard.try_io(|fd| {
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
        }) {
            Ok(result) => result?,
            Err(_would_block) => continue,
        };
        if is_echo_reply(&buf[..n], target, id, seq) {
            return Ok(());
        }
    }
}

/// An ICMP echo request with 8 bytes of payload.
pub fn echo_request(id: u16, seq: u16) -> Vec<u8> {
    let mut packet = vec![8, 0, 0, 0];
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(b"masq-hc!");
    let sum = inet_checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// An IPv4 packet (as a raw socket receives it) carrying the echo reply to `id`/`seq` from
/// `from`.
pub fn is_echo_reply(packet: &[u8], from: Ipv4Addr, id: u16, seq: u16) -> bool {
    let Some(&first) = packet.first() else { return false };
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || packet.len() < ihl + 8 {
        return false;
    }
    let src = Ipv4Addr::new(packet[12], packet[13], packet[14], packet[15]);
    let icmp = &packet[ihl..];
    src == from
        && icmp[0] == 0
        && icmp[1] == 0
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

fn inet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A TCP connection that completes (the handshake; closed at once).
async fn tcp_connect(source: &ProbeSource, target: Ipv4Addr, port: u16) -> io::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    bind_to_uplink(socket.as_raw_fd(), source)?;
    let stream = socket.connect(SocketAddr::V4(SocketAddrV4::new(target, port))).await?;
    drop(stream);
    Ok(())
}

/// A DNS query (type A, recursion desired); any response with its id answers it, whatever
/// its rcode: the server answered by this uplink.
async fn dns_query(
    source: &ProbeSource,
    target: Ipv4Addr,
    port: u16,
    name: &str,
) -> io::Result<()> {
    let fd = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
    bind_to_uplink(fd.as_raw_fd(), source)?;
    let socket = UdpSocket::from_std(std::net::UdpSocket::from(fd))?;
    socket.connect(SocketAddrV4::new(target, port)).await?;
    let id = next_id();
    socket.send(&dns_request(id, name)).await?;
    let mut buf = [0u8; 1500];
    loop {
        let n = socket.recv(&mut buf).await?;
        if is_dns_response(&buf[..n], id) {
            return Ok(());
        }
    }
}

/// A DNS query for `name`, type A, class IN.
pub fn dns_request(id: u16, name: &str) -> Vec<u8> {
    let mut packet = id.to_be_bytes().to_vec();
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.').filter(|l| !l.is_empty()) {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.push(0);
    packet.extend_from_slice(&[0, 1, 0, 1]);
    packet
}

/// A DNS response (QR set) to query `id`.
pub fn is_dns_response(packet: &[u8], id: u16) -> bool {
    packet.len() >= 12 && packet[..2] == id.to_be_bytes() && packet[2] & 0x80 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_requests_carry_a_valid_checksum_and_replies_are_matched_exactly() {
        let req = echo_request(0x1234, 7);
        assert_eq!(inet_checksum(&req), 0);
        let mut reply =
            vec![0x45, 0, 0, 36, 0, 0, 0, 0, 64, 1, 0, 0, 64, 70, 12, 210, 67, 17, 28, 12];
        reply.extend_from_slice(&req);
        reply[20] = 0;
        let from = Ipv4Addr::new(64, 70, 12, 210);
        assert!(is_echo_reply(&reply, from, 0x1234, 7));
        assert!(!is_echo_reply(&reply, from, 0x1234, 8));
        assert!(!is_echo_reply(&reply, Ipv4Addr::new(64, 70, 12, 211), 0x1234, 7));
        reply[20] = 8;
        assert!(!is_echo_reply(&reply, from, 0x1234, 7), "a request is no reply");
        assert!(!is_echo_reply(&reply[..24], from, 0x1234, 7));
        assert!(!is_echo_reply(&[], from, 0x1234, 7));
    }

    #[test]
    fn dns_queries_encode_the_name_and_only_responses_to_them_count() {
        let q = dns_request(0xabcd, "example.com");
        assert_eq!(&q[..4], &[0xab, 0xcd, 0x01, 0x00]);
        assert_eq!(&q[12..], b"\x07example\x03com\x00\x00\x01\x00\x01");
        assert_eq!(&dns_request(1, ".")[12..], b"\x00\x00\x01\x00\x01");
        let mut response = q.clone();
        assert!(!is_dns_response(&response, 0xabcd), "a query is no response");
        response[2] |= 0x80;
        assert!(is_dns_response(&response, 0xabcd));
        assert!(!is_dns_response(&response, 0xabce));
        assert!(!is_dns_response(&response[..11], 0xabcd));
    }
}
