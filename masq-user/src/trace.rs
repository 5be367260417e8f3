//! The programs' own tracing (aya-log) in the daemon's log, at the level `[dataplane] trace`
//! gives them when they are loaded (a reload that changes it loads them again, in place, with
//! every connection kept). Off, the verifier removes the calls: it costs nothing.
use std::io;

use aya_log::EbpfLogger;
use masq_common::Counter;
use tokio::io::unix::AsyncFd;
use tracing::info;

use crate::{config::TraceLevel, dataplane::Dataplane};

/// Forwards the programs' records to the daemon's log, drop reasons by name.
struct ToDaemonLog;

impl log::Log for ToDaemonLog {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }

    fn log(&self, record: &log::Record) {
        let text = record.args().to_string();
        let text = match text.strip_prefix("drop:").and_then(|n| n.parse::<u32>().ok()) {
            Some(n) => match Counter::ALL.iter().find(|c| **c as u32 == n) {
                Some(c) => format!("dropped a packet: {}", c.name()),
                None => format!("dropped a packet: reason #{n}"),
            },
            None => text,
        };
        info!("program {}: {text}", record.level().as_str().to_ascii_lowercase());
    }

    fn flush(&self) {}
}

pub struct ProgramTrace {
    logger: AsyncFd<EbpfLogger<ToDaemonLog>>,
}

impl ProgramTrace {
    /// Read the records of `dataplane`'s programs, when `level` is not off.
    pub fn start(dataplane: &mut Dataplane, level: TraceLevel) -> anyhow::Result<Option<Self>> {
        if level == TraceLevel::Off {
            return Ok(None);
        }
        let logger = EbpfLogger::init_with_logger(dataplane.ebpf_mut(), ToDaemonLog)?;
        // SAFETY: the logger owns its ring's fd, open and the same while the AsyncFd owns it.
        let logger =
            unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
                .map_err(|e| anyhow::anyhow!("polling the programs' trace ring: {e}"))?;
        info!("the programs trace at level {level:?} into this log");
        Ok(Some(Self { logger }))
    }

    pub fn flush(&mut self) {
        self.logger.get_mut().flush();
    }
}

/// Ready when `trace` has records (never, without one).
pub async fn readable(trace: &Option<ProgramTrace>) -> io::Result<()> {
    match trace {
        Some(t) => t.logger.readable().await.map(|mut guard| guard.clear_ready()),
        None => std::future::pending().await,
    }
}
