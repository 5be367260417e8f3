//! The daemon's end of the event stream: reads the programs' ring buffer, tracks which
//! connections end, writes the log and feeds every `masq conns --watch`.
use std::{
    io,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use masq_common::{ConnEvent, Counter};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, unix::AsyncFd},
    net::{UnixListener, UnixStream},
    sync::mpsc,
};
use tracing::{info, warn};

use super::{EndReason, Event, Recorder, Tracker, log::EventLog, rfc3339, socket_path};
use crate::{conntrack::Conn, dataplane::Dataplane, pinned};

/// Lines queued for one watcher before it misses some.
const WATCHER_QUEUE: usize = 65_536;

struct Watcher {
    lines: mpsc::Sender<String>,
    /// Events it missed and has not been told of yet.
    missed: u64,
}

pub struct Hub {
    ring: AsyncFd<RingBuf<MapData>>,
    listener: UnixListener,
    socket: PathBuf,
    watchers: Vec<Watcher>,
    log: Option<EventLog>,
    tracker: Tracker,
    /// The programs report new connections (someone consumes them).
    on: bool,
    /// Not yet added to `events_undelivered`.
    undelivered: u64,
    log_failing: bool,
}

impl Hub {
    /// Take the ring buffer, listen for watchers, open the log; events are on while the log is
    /// set or a watcher listens.
    pub fn start(
        dataplane: &mut Dataplane,
        cfg: &crate::config::Config,
        pin_dir: &Path,
    ) -> anyhow::Result<Self> {
        let ring = pinned::event_ring(dataplane.pin_dir())?;
        // SAFETY: the ring owns its map's fd, which stays open and the same while the AsyncFd
        // owns the ring. Readable only: a ring buffer is never written by its consumer.
        let ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("polling the EVENTS ring: {e}"))?;
        let socket = socket_path(pin_dir);
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("listening for watchers on {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
        let mut hub = Hub {
            ring,
            listener,
            socket,
            watchers: Vec::new(),
            log: None,
            tracker: Tracker::new(),
            on: false,
            undelivered: 0,
            log_failing: false,
        };
        hub.reconfigure(dataplane, cfg)?;
        // Whatever a previous daemon left: on exactly while this one consumes events.
        pinned::set_events(dataplane.pin_dir(), hub.on)?;
        if let Ok(bytes) = pinned::event_ring_bytes(pin_dir)
            && bytes != cfg.events.ring_bytes
        {
            warn!(
                "events.ring_kib: the pinned ring holds {} KiB (set when the dataplane was \
                 created); `masq down` and `masq run` again to resize it",
                bytes >> 10
            );
        }
        Ok(hub)
    }

    /// Follow `[events]` of a (re)loaded config: open, reopen or close the log.
    pub fn reconfigure(
        &mut self,
        dataplane: &mut Dataplane,
        cfg: &crate::config::Config,
    ) -> anyhow::Result<()> {
        let e = &cfg.events;
        match &e.log {
            Some(path) if self.log.as_ref().is_none_or(|l| l.path() != path) => {
                self.log = Some(EventLog::open(path, e.log_max_bytes, e.log_keep)?);
                info!("recording every connection in {}", path.display());
            }
            Some(path) => {
                self.log = Some(EventLog::open(path, e.log_max_bytes, e.log_keep)?);
            }
            None => self.log = None,
        }
        self.switch(dataplane)
    }

    /// Events on exactly while someone consumes them.
    fn switch(&mut self, dataplane: &mut Dataplane) -> anyhow::Result<()> {
        self.switch_with(dataplane, false)
    }

    /// `joining`: a watcher is about to be added.
    fn switch_with(&mut self, dataplane: &mut Dataplane, joining: bool) -> anyhow::Result<()> {
        let wanted = joining || self.log.is_some() || !self.watchers.is_empty();
        if wanted != self.on {
            pinned::set_events(dataplane.pin_dir(), wanted)?;
            self.on = wanted;
            if !wanted {
                self.tracker = Tracker::new();
            }
        }
        Ok(())
    }

    pub async fn readable(
        &self,
    ) -> io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, RingBuf<MapData>>> {
        self.ring.readable().await
    }

    pub async fn accept(&self) -> io::Result<UnixStream> {
        Ok(self.listener.accept().await?.0)
    }

    /// Everything the ring holds, as `new` events (and `destroy` for a connection a new one
    /// replaced on its tuple).
    pub fn drain(&mut self, rec: &Recorder) {
        let mut events = Vec::new();
        while let Some(item) = self.ring.get_mut().next() {
            if item.len() >= size_of::<ConnEvent>() {
                events.push(bytemuck::pod_read_unaligned::<ConnEvent>(
                    &item[..size_of::<ConnEvent>()],
                ));
            }
        }
        if !self.on {
            return;
        }
        for ev in &events {
            if let Some(ended) = self.tracker.created(ev) {
                self.emit(&rec.ended(&ended));
            }
            self.emit(&rec.created(ev));
        }
        self.flush_log();
    }

    /// The daemon stops: record what the programs reported so far. With a log, the programs
    /// go on reporting into the ring for the next daemon; without, they stop.
    pub fn finish(mut self, dataplane: &mut Dataplane, rec: &Recorder) {
        self.drain(rec);
        if self.log.is_none() && self.on {
            let _ = pinned::set_events(dataplane.pin_dir(), false);
        }
    }

    /// A `masq conns --watch` connected.
    pub fn add_watcher(
        &mut self,
        stream: UnixStream,
        dataplane: &mut Dataplane,
    ) -> anyhow::Result<()> {
        let (tx, rx) = mpsc::channel(WATCHER_QUEUE);
        tokio::spawn(serve_watcher(stream, rx));
        self.switch_with(dataplane, true)?;
        let hello = Event::Watching { time: rfc3339(crate::conntrack::clock_ns()) };
        let _ = tx.try_send(serde_json::to_string(&hello).expect("events serialize"));
        self.watchers.push(Watcher { lines: tx, missed: 0 });
        Ok(())
    }

    /// Connection ends are tracked: the expiry pass must read the connections it leaves.
    pub fn tracking(&self) -> bool {
        self.on
    }

    /// After the expiry tick's dump (begun at `dumped_ns`): report what expired and what ended
    /// unseen; let go of watchers that left; add what was undelivered to its counter.
    pub fn observe(
        &mut self,
        dataplane: &mut Dataplane,
        rec: &Recorder,
        alive: Vec<Conn>,
        expired: &[Conn],
        dumped_ns: u64,
    ) {
        // Creations reported so far come first: no end before its start.
        self.drain(rec);
        if self.on {
            for ended in self.tracker.observe(alive, expired, dumped_ns) {
                self.emit(&rec.ended(&ended));
            }
            self.flush_log();
        }
        self.watchers.retain(|w| !w.lines.is_closed());
        if let Err(e) = self.switch(dataplane) {
            warn!("switching connection events: {e:#}");
        }
        if self.undelivered > 0
            && pinned::add_to_counter(
                dataplane.pin_dir(),
                Counter::EventsUndelivered,
                self.undelivered,
            )
            .is_ok()
        {
            self.undelivered = 0;
        }
    }

    /// Connections the daemon removed itself.
    pub fn removed(&mut self, rec: &Recorder, gone: &[Conn], reason: EndReason) {
        if !self.on || gone.is_empty() {
            return;
        }
        self.drain(rec);
        for ended in self.tracker.removed(gone, reason) {
            self.emit(&rec.ended(&ended));
        }
        self.flush_log();
    }

    fn emit(&mut self, event: &Event) {
        let line = serde_json::to_string(event).expect("events serialize");
        if let Some(log) = &mut self.log
            && let Err(e) = log.write_line(&line)
        {
            self.log_failed(e);
        }
        for w in &mut self.watchers {
            if w.missed > 0 {
                let lost =
                    Event::Lost { time: rfc3339(crate::conntrack::clock_ns()), count: w.missed };
                if w.lines.try_send(serde_json::to_string(&lost).expect("events serialize")).is_ok()
                {
                    w.missed = 0;
                }
            }
            match w.lines.try_send(line.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    w.missed += 1;
                    self.undelivered += 1;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
    }

    fn flush_log(&mut self) {
        if let Some(log) = &mut self.log {
            match log.flush() {
                Ok(()) => self.log_failing = false,
                Err(e) => self.log_failed(e),
            }
        }
    }

    fn log_failed(&mut self, e: anyhow::Error) {
        self.undelivered += 1;
        if !self.log_failing {
            warn!("the event log: {e:#}");
            self.log_failing = true;
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        self.flush_log();
    }
}

/// Write one watcher's lines until it goes away.
async fn serve_watcher(stream: UnixStream, mut lines: mpsc::Receiver<String>) {
    let (mut from, mut to) = stream.into_split();
    let mut byte = [0u8; 1];
    let mut batch = String::new();
    loop {
        tokio::select! {
            line = lines.recv() => {
                let Some(line) = line else { break };
                batch.clear();
                batch.push_str(&line);
                batch.push('\n');
                while let Ok(line) = lines.try_recv() {
                    batch.push_str(&line);
                    batch.push('\n');
                    if batch.len() > 1 << 16 {
                        break;
                    }
                }
                if to.write_all(batch.as_bytes()).await.is_err() {
                    break;
                }
            }
            read = from.read(&mut byte) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
            }
        }
    }
}
