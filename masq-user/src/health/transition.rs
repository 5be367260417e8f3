//! `[on_transition]`: the operator's command, run on every uplink transition with the uplink
//! and its state in the environment, killed when it overruns its timeout (a hook that hangs
//! must not hold anything up: it runs beside the daemon, never in its way).
use std::{
    process::{Command, Stdio},
    sync::{OnceLock, mpsc},
    time::{Duration, Instant},
};

use tracing::{info, warn};

use crate::config::TransitionHook;

/// What the command is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionEvent {
    pub uplink: String,
    pub interface: String,
    /// `up` or `down`.
    pub state: &'static str,
    pub previous: &'static str,
    pub reason: String,
}

impl TransitionEvent {
    pub fn env(&self) -> [(&'static str, String); 5] {
        [
            ("MASQ_UPLINK", self.uplink.clone()),
            ("MASQ_INTERFACE", self.interface.clone()),
            ("MASQ_STATE", self.state.to_owned()),
            ("MASQ_PREVIOUS_STATE", self.previous.to_owned()),
            ("MASQ_REASON", self.reason.clone()),
        ]
    }
}

type Job = (TransitionHook, TransitionEvent);

/// Queue `hook` for `event`: one worker runs the commands in the order of the transitions (a
/// quick down then up must not end with the down command); each outcome is logged.
pub fn spawn(hook: &TransitionHook, event: TransitionEvent) {
    static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    let queue = QUEUE.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let worker = std::thread::Builder::new()
            .name("masq-on-transition".into())
            .spawn(move || rx.into_iter().for_each(|(hook, event)| run(&hook, &event)));
        if let Err(e) = &worker {
            warn!("on_transition: cannot start its thread: {e}");
        }
        worker.ok().map(|_| tx)
    });
    let sent = queue.as_ref().is_some_and(|tx| tx.send((hook.clone(), event)).is_ok());
    if !sent {
        warn!("on_transition: not run, its thread is gone");
    }
}

fn run(hook: &TransitionHook, event: &TransitionEvent) {
    let program = &hook.command[0];
    let mut child = match Command::new(program)
        .args(&hook.command[1..])
        .envs(event.env())
        .stdin(Stdio::null())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            warn!("on_transition: cannot run {program}: {e}");
            return;
        }
    };
    let deadline = Instant::now() + hook.timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => {
                info!("on_transition: {program} for {} {}: done", event.uplink, event.state);
                return;
            }
            Ok(Some(status)) => {
                warn!("on_transition: {program} for {} {}: {status}", event.uplink, event.state);
                return;
            }
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                warn!(
                    "on_transition: {program} for {} {} overran its {} s timeout: killed",
                    event.uplink,
                    event.state,
                    hook.timeout.as_secs()
                );
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                warn!("on_transition: waiting for {program}: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> TransitionEvent {
        TransitionEvent {
            uplink: "dsl".into(),
            interface: "eth4".into(),
            state: "down",
            previous: "up",
            reason: "3 rounds in a row failed".into(),
        }
    }

    #[test]
    fn the_command_sees_the_transition_in_its_environment() {
        let dir = std::env::temp_dir().join(format!("masq-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("env");
        let hook = TransitionHook {
            command: vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "echo \"$MASQ_UPLINK $MASQ_INTERFACE $MASQ_STATE $MASQ_PREVIOUS_STATE $MASQ_REASON\" > {}",
                    out.display()
                ),
            ],
            timeout: Duration::from_secs(5),
        };
        run(&hook, &event());
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.trim(), "dsl eth4 down up 3 rounds in a row failed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_command_that_hangs_is_killed_at_its_timeout() {
        let hook = TransitionHook {
            command: vec!["/bin/sleep".into(), "30".into()],
            timeout: Duration::from_secs(1),
        };
        let start = Instant::now();
        run(&hook, &event());
        assert!(start.elapsed() < Duration::from_secs(10), "{:?}", start.elapsed());
    }
}
