use std::time::Duration;

use super::*;
use crate::config::{Levels, ProbeMethod};

fn health(targets: usize) -> Health {
    Health {
        method: ProbeMethod::Icmp,
        targets: (1..=targets as u8).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect(),
        quorum: 1,
        interval: Duration::from_millis(500),
        failure_interval: Duration::from_millis(250),
        recovery_interval: Duration::from_millis(500),
        timeout: Duration::from_secs(1),
        down: 3,
        up: 5,
        window: 20,
        latency: None,
        loss: None,
        initial: Initial::Up,
        passive: true,
    }
}

const RTT: Option<Duration> = Some(Duration::from_millis(10));

/// Feed rounds until one changes the state; the number of rounds it took.
fn rounds_until_change(t: &mut Tracker, round: &[Option<Duration>], max: usize) -> Option<usize> {
    (1..=max).find(|_| t.record(round).is_some())
}

#[test]
fn down_after_down_failed_rounds_and_up_after_up_passed_ones() {
    let mut t = Tracker::new(&health(1));
    assert_eq!(t.state(), ProbeState::Up);
    assert_eq!(t.interval(), Duration::from_millis(500));
    assert_eq!(t.record(&[None]), None);
    assert_eq!(t.interval(), Duration::from_millis(250), "failing: probed faster");
    assert_eq!(t.record(&[RTT]), None, "one answer ends the streak");
    assert_eq!(t.interval(), Duration::from_millis(500));
    assert_eq!(rounds_until_change(&mut t, &[None], 10), Some(3));
    assert_eq!(t.state(), ProbeState::Down);
    assert!(t.view().reason.contains("3 rounds in a row failed"), "{}", t.view().reason);
    assert!(t.view().reason.contains("198.51.100.1 no answer"), "{}", t.view().reason);
    // Hysteresis on the way back: 4 answers, a loss, then 5 answers.
    for _ in 0..4 {
        assert_eq!(t.record(&[RTT]), None);
    }
    assert_eq!(t.record(&[None]), None);
    assert_eq!(rounds_until_change(&mut t, &[RTT], 10), Some(5));
    assert_eq!(t.state(), ProbeState::Up);
    let v = t.view();
    assert_eq!((v.transitions, v.rounds), (2, 15));
    assert_eq!(v.targets[0].sent, 15);
}

#[test]
fn a_quorum_of_one_keeps_an_uplink_up_while_one_target_of_two_answers() {
    let mut t = Tracker::new(&health(2));
    assert_eq!(rounds_until_change(&mut t, &[None, RTT], 50), None);
    assert_eq!(t.state(), ProbeState::Up);
    let v = t.view();
    assert!(!v.targets[0].answering && v.targets[1].answering);
    assert_eq!(v.targets[0].loss_percent, 100.0);

    let mut both = health(2);
    both.quorum = 2;
    let mut t = Tracker::new(&both);
    assert_eq!(rounds_until_change(&mut t, &[None, RTT], 50), Some(3));
    assert!(t.view().reason.contains("1 of 2 targets good, quorum 2"), "{}", t.view().reason);
}

#[test]
fn loss_above_the_failure_level_takes_an_uplink_down_even_when_rounds_are_answered() {
    let mut cfg = health(1);
    cfg.loss = Some(Levels { failure: 20, recovery: 10 });
    let mut t = Tracker::new(&cfg);
    // One probe in three lost: never three failed rounds in a row by silence alone.
    let pattern = [RTT, RTT, None];
    let mut changed = None;
    for i in 0..60 {
        if let Some(c) = t.record(&[pattern[i % 3]]) {
            changed = Some(c);
            break;
        }
    }
    let change = changed.expect("33% loss crosses 20%");
    assert_eq!(change.to, ProbeState::Down);
    assert!(change.reason.contains("loss"), "{}", change.reason);
    // Still lossy: stays down (the recovery level is 10%).
    assert_eq!(rounds_until_change(&mut t, &[RTT], 4), None);
    for i in 0..30 {
        assert_eq!(t.record(&[pattern[i % 3]]), None, "round {i}");
    }
    // Clean again: up once the window's loss is under 10%.
    assert!(rounds_until_change(&mut t, &[RTT], 40).is_some());
    assert!(t.view().targets[0].loss_percent <= 10.0);
}

#[test]
fn latency_above_the_failure_level_takes_it_down_and_below_the_recovery_level_back() {
    let mut cfg = health(1);
    cfg.latency =
        Some(Levels { failure: Duration::from_millis(200), recovery: Duration::from_millis(100) });
    let mut t = Tracker::new(&cfg);
    let slow = Some(Duration::from_millis(400));
    let change = (0..40).find_map(|_| t.record(&[slow])).expect("400 ms crosses 200 ms");
    assert!(change.reason.contains("latency"), "{}", change.reason);
    // 150 ms: under the failure level but not the recovery one.
    let medium = Some(Duration::from_millis(150));
    assert_eq!(rounds_until_change(&mut t, &[medium], 60), None);
    assert!(rounds_until_change(&mut t, &[RTT], 60).is_some());
}

#[test]
fn an_outage_does_not_count_as_loss_once_the_line_is_back() {
    let mut cfg = health(1);
    cfg.loss = Some(Levels { failure: 20, recovery: 10 });
    let mut t = Tracker::new(&cfg);
    assert_eq!(rounds_until_change(&mut t, &[None], 10), Some(3));
    for _ in 0..10 {
        t.record(&[None]);
    }
    assert_eq!(t.view().targets[0].loss_percent, 100.0, "shown as it is during the outage");
    // Back: up after exactly `up` answers, not after the lost probes leave the window.
    assert_eq!(rounds_until_change(&mut t, &[RTT], 20), Some(5));
}

#[test]
fn initial_down_needs_up_rounds_and_a_suspect_uplink_is_probed_faster() {
    let mut cfg = health(1);
    cfg.initial = Initial::Down;
    let mut t = Tracker::new(&cfg);
    assert_eq!(t.state(), ProbeState::Down);
    assert_eq!(t.interval(), cfg.recovery_interval);
    assert_eq!(rounds_until_change(&mut t, &[RTT], 10), Some(5));
    t.set_suspect(Some("SYNs unanswered".into()));
    assert_eq!(t.interval(), cfg.failure_interval);
    t.set_suspect(None);
    assert_eq!(t.interval(), cfg.interval);
    t.assume(ProbeState::Down);
    assert_eq!(t.state(), ProbeState::Down);
}

#[test]
fn a_line_back_from_an_outage_has_its_loss_judged_before_it_recovers() {
    let mut cfg = health(1);
    cfg.loss = Some(Levels { failure: 20, recovery: 10 });
    let mut t = Tracker::new(&cfg);
    assert_eq!(rounds_until_change(&mut t, &[None], 10), Some(3));
    for r in [RTT, RTT, RTT, None] {
        assert_eq!(t.record(&[r]), None);
    }
    // Five answers in a row are not enough while the loss since the outage is above 10 %.
    let rounds = rounds_until_change(&mut t, &[RTT], 40).unwrap();
    assert!(rounds > 5, "{rounds}");
    assert!(t.view().targets[0].loss_percent <= 10.0);
}

#[test]
fn a_round_completing_after_a_later_one_counts_in_totals_only() {
    let mut t = Tracker::new(&health(1));
    for seq in 1..=3 {
        t.record_round(seq, &[None]);
    }
    assert_eq!(t.state(), ProbeState::Down);
    // Rounds 4 and 5 were in flight when the line came back: 6 answers first.
    for seq in 6..=10 {
        t.record_round(seq, &[RTT]);
        if seq == 6 {
            assert_eq!(t.record_round(4, &[None]), None);
            assert_eq!(t.record_round(5, &[None]), None);
        }
    }
    assert_eq!(t.state(), ProbeState::Up, "5 answered rounds in a row, as sent");
    let v = t.view();
    assert_eq!((v.rounds, v.targets[0].sent, v.targets[0].answered), (8, 10, 5));
}
