//! Passive health from the dataplane: per uplink, the masqueraded TCP connections it opened
//! (`syn_sent`), those answered by a SYN-ACK or RST (`syn_answered`) and the time the answers
//! took, counted in BPF (`UPLINK_STATS`). An uplink whose SYNs of a few seconds ago have all
//! gone unanswered since is suspect before any probe fails.
use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use masq_common::UplinkStats;
use serde::{Deserialize, Serialize};

/// A SYN unanswered this long counts as lost (Linux resends at 1 s and 3 s).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(3);
/// SYNs sent over this long, that long ago, are judged together.
const SPAN: Duration = Duration::from_secs(2);
/// Fewer SYNs than this prove nothing.
const MIN_SYNS: u64 = 3;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sample {
    sent: u64,
    answered: u64,
    answer_us: u64,
}

/// One uplink's recent counters, sampled about once a second.
#[derive(Clone, Debug, Default)]
pub struct Passive {
    samples: VecDeque<(Instant, Sample)>,
}

/// What the passive check sees now (`masq uplinks --json`: `health.passive`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PassiveView {
    /// Masqueraded TCP connections opened on the uplink (the dataplane's count) ...
    pub syn_sent: u64,
    /// ... and those answered by a SYN-ACK or RST.
    pub syn_answered: u64,
    /// SYNs sent `ANSWER_WITHIN` ago (over `SPAN`) without any answer since.
    pub unanswered: u64,
    /// Average SYN to answer time of the answers over the last `ANSWER_WITHIN + SPAN`.
    pub answer_ms: Option<f64>,
    /// Why the uplink is suspect, if it is.
    pub suspect: Option<String>,
}

impl Passive {
    /// Add the counters as they are at `now`.
    pub fn sample(&mut self, now: Instant, stats: &UplinkStats) {
        let sample = Sample {
            sent: stats.syn_sent,
            answered: stats.syn_answered,
            answer_us: stats.syn_answer_us,
        };
        self.samples.push_back((now, sample));
        let keep = ANSWER_WITHIN + SPAN + Duration::from_secs(2);
        while self.samples.front().is_some_and(|(t, _)| now.duration_since(*t) > keep) {
            self.samples.pop_front();
        }
    }

    /// The latest sample at or before `at`.
    fn at(&self, at: Instant) -> Option<Sample> {
        self.samples.iter().rev().find(|(t, _)| *t <= at).map(|(_, s)| *s)
    }

    pub fn view(&self) -> PassiveView {
        let Some(&(now, last)) = self.samples.back() else { return PassiveView::default() };
        let judged_end = now.checked_sub(ANSWER_WITHIN);
        let judged_start = judged_end.and_then(|t| t.checked_sub(SPAN));
        let (Some(start), Some(end)) =
            (judged_start.and_then(|t| self.at(t)), judged_end.and_then(|t| self.at(t)))
        else {
            return PassiveView {
                syn_sent: last.sent,
                syn_answered: last.answered,
                ..Default::default()
            };
        };
        let sent = end.sent.saturating_sub(start.sent);
        let answered = last.answered.saturating_sub(start.answered);
        let answer_ms = (answered > 0).then(|| {
            last.answer_us.saturating_sub(start.answer_us) as f64 / answered as f64 / 1000.0
        });
        let unanswered = if answered == 0 { sent } else { 0 };
        let suspect = (unanswered >= MIN_SYNS).then(|| {
            format!(
                "{unanswered} new TCP connections got no SYN-ACK within {} s",
                ANSWER_WITHIN.as_secs()
            )
        });
        PassiveView {
            syn_sent: last.sent,
            syn_answered: last.answered,
            unanswered,
            answer_ms,
            suspect,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(sent: u64, answered: u64) -> UplinkStats {
        UplinkStats {
            syn_sent: sent,
            syn_answered: answered,
            syn_answer_us: answered * 2000,
            ..Default::default()
        }
    }

    #[test]
    fn unanswered_syns_make_an_uplink_suspect_and_answers_clear_it() {
        let t0 = Instant::now();
        let mut p = Passive::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Healthy: every SYN answered.
        for s in 0..8 {
            p.sample(at(s), &stats(s * 10, s * 10));
        }
        let v = p.view();
        assert_eq!(v.suspect, None);
        assert_eq!(v.answer_ms, Some(2.0));
        // From second 8 on, 5 SYNs a second and no answers: suspect once they are 3 s old.
        for s in 8..=12 {
            p.sample(at(s), &stats(70 + (s - 7) * 5, 70));
            if s <= 10 {
                assert_eq!(p.view().suspect, None, "second {s}");
            }
        }
        let v = p.view();
        assert!(v.suspect.is_some(), "{v:?}");
        assert!(v.unanswered >= MIN_SYNS);
        // One answer: the path works.
        p.sample(at(13), &stats(100, 71));
        assert_eq!(p.view().suspect, None);
    }

    #[test]
    fn a_few_lost_syns_or_no_traffic_prove_nothing() {
        let t0 = Instant::now();
        let mut p = Passive::default();
        for s in 0..10 {
            p.sample(t0 + Duration::from_secs(s), &stats(2, 0));
        }
        assert_eq!(p.view().suspect, None);
        assert_eq!(Passive::default().view(), PassiveView::default());
    }
}
