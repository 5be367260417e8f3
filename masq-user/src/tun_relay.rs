//! A point-to-point L3 link for the lab, as a PPP, raw-ip LTE or WireGuard uplink is: one tun
//! device (no Ethernet header) in each of two network namespaces, joined by a thread that copies
//! every packet across. The devices vanish with the relay.
use std::{
    fs::File,
    io::{Read as _, Write as _},
    os::fd::{AsRawFd as _, OwnedFd},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::{self, JoinHandle},
};

use anyhow::{Context as _, Result, anyhow, bail};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// One end: a namespace (its `/run/netns` path) and the tun device's name there.
#[derive(Clone, Debug)]
pub struct TunEnd {
    pub netns: PathBuf,
    pub name: String,
}

/// The running relay; dropping it stops the thread and removes both devices.
pub struct TunRelay {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TunRelay {
    /// Creates both devices (down, without addresses) and starts copying.
    pub fn start(a: TunEnd, b: TunEnd) -> Result<TunRelay> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let stopped = stop.clone();
        let thread = thread::spawn(move || {
            let opened = open_tun(&a).and_then(|fa| Ok((fa, open_tun(&b)?)));
            let (fa, fb) = match opened {
                Ok(fds) => fds,
                Err(e) => return ready_tx.send(Err(e)).unwrap_or(()),
            };
            let _ = ready_tx.send(Ok(()));
            relay(File::from(fa), File::from(fb), &stopped);
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(TunRelay { stop, thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow!("the tun relay thread died")),
        }
    }
}

impl Drop for TunRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Open `/dev/net/tun` as `end.name` inside `end.netns` (this thread moves there).
fn open_tun(end: &TunEnd) -> Result<OwnedFd> {
    let ns = File::open(&end.netns).with_context(|| format!("opening {}", end.netns.display()))?;
    // SAFETY: setns changes only this thread's network namespace; the fd is valid.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns into {}: {}", end.netns.display(), std::io::Error::last_os_error());
    }
    let tun =
        File::options().read(true).write(true).open("/dev/net/tun").context("/dev/net/tun")?;
    // SAFETY: ifreq is plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    if end.name.len() >= req.ifr_name.len() {
        bail!("tun name {} too long", end.name);
    }
    for (dst, src) in req.ifr_name.iter_mut().zip(end.name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TUN | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads a valid ifreq.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF, &mut req) } != 0 {
        bail!("creating tun {}: {}", end.name, std::io::Error::last_os_error());
    }
    Ok(tun.into())
}

/// Copy packets both ways until `stop`.
fn relay(mut a: File, mut b: File, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [a.as_raw_fd(), b.as_raw_fd()].map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds; the timeout lets the stop flag be seen.
        if unsafe { libc::poll(fds.as_mut_ptr(), 2, 100) } <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0
            && let Ok(n) = a.read(&mut buf)
        {
            let _ = b.write(&buf[..n]);
        }
        if fds[1].revents & libc::POLLIN != 0
            && let Ok(n) = b.read(&mut buf)
        {
            let _ = a.write(&buf[..n]);
        }
    }
}
