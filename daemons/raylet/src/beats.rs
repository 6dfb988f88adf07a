//! When the raylet sends its heartbeat: every `heartbeat_interval_ms`, and early when a
//! resource that the last heartbeat reported exhausted is free again.
//!
//! Other nodes spill only to a node whose last heartbeat shows room, so room freed just
//! after a heartbeat stayed unknown for up to an interval (100 ms by default): six 1 s tasks
//! on three 1-CPU nodes took 2.1-2.3 s, the tasks waiting on the submitting node starting
//! only at the next heartbeat of the nodes that had finished. An early heartbeat tells them
//! within a few milliseconds. A task forwarded here that leaves a resource exhausted counts
//! the same: the node that sent it (or the global scheduler) charged this node's view with
//! it until the next heartbeat (a forwarded task that leaves room changes nothing others
//! need to hear early). Early heartbeats are at least a quarter interval apart, so a
//! node whose short tasks free and take its CPUs thousands of times a second sends a few
//! dozen a second, not one per task.

use std::time::{Duration, Instant};

use rayd_common::resources::Amounts;

/// The heartbeat schedule's state (pure: the caller sends, and says when it did).
#[derive(Debug)]
pub struct BeatTimer {
    /// Resources at or below zero in the last heartbeat sent, and those that tasks
    /// forwarded here since exhausted.
    watched: Vec<String>,
    /// Resources asked for by the task forwarded by the event being handled.
    charged: Vec<String>,
    last: Instant,
    min_gap: Duration,
    /// When the early heartbeat now due goes (not before `last + min_gap`).
    early: Option<Instant>,
}

impl BeatTimer {
    /// A schedule whose periodic heartbeats are `interval` apart.
    pub fn new(interval: Duration, now: Instant) -> Self {
        Self {
            watched: Vec::new(),
            charged: Vec::new(),
            last: now,
            min_gap: interval / 4,
            early: None,
        }
    }

    /// Records a heartbeat sent at `now` reporting `available`.
    pub fn sent(&mut self, available: &Amounts, now: Instant) {
        self.watched = available
            .iter()
            .filter(|(_, amount)| **amount <= 0.0)
            .map(|(name, _)| name.clone())
            .collect();
        self.last = now;
        self.early = None;
    }

    /// Records a task forwarded here, asking for `resources`: other views count them taken.
    pub fn forwarded<'a>(&mut self, resources: impl IntoIterator<Item = &'a String>) {
        self.charged.extend(resources.into_iter().cloned());
    }

    /// Looks at the node's free resources after an event: an early heartbeat becomes due
    /// when a watched one is free.
    pub fn observe(&mut self, available: &Amounts, now: Instant) {
        for name in std::mem::take(&mut self.charged) {
            let exhausted = available.get(&name).is_none_or(|amount| *amount <= 0.0);
            if exhausted && !self.watched.contains(&name) {
                self.watched.push(name);
            }
        }
        if self.early.is_some() || self.watched.is_empty() {
            return;
        }
        let freed = self
            .watched
            .iter()
            .any(|name| available.get(name).is_some_and(|amount| *amount > 0.0));
        if freed {
            self.early = Some(now.max(self.last + self.min_gap));
        }
    }

    /// When the early heartbeat due goes, if one is due.
    pub fn early(&self) -> Option<Instant> {
        self.early
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn amounts(cpu: f64, gpu: f64) -> Amounts {
        [("CPU".to_string(), cpu), ("GPU".to_string(), gpu)].into()
    }

    const INTERVAL: Duration = Duration::from_millis(100);

    #[test]
    fn room_freed_after_a_full_heartbeat_is_reported_early() {
        let start = Instant::now();
        let mut timer = BeatTimer::new(INTERVAL, start);
        timer.sent(&amounts(0.0, 1.0), start);
        timer.observe(&amounts(0.0, 0.0), start + Duration::from_millis(40));
        assert_eq!(
            timer.early(),
            None,
            "nothing the last heartbeat called full is free"
        );
        let freed = start + Duration::from_millis(50);
        timer.observe(&amounts(1.0, 0.0), freed);
        assert_eq!(timer.early(), Some(freed));
        timer.sent(&amounts(1.0, 0.0), freed);
        assert_eq!(timer.early(), None);
    }

    #[test]
    fn early_heartbeats_keep_a_quarter_interval_apart() {
        let start = Instant::now();
        let mut timer = BeatTimer::new(INTERVAL, start);
        timer.sent(&amounts(0.0, 1.0), start);
        timer.observe(&amounts(1.0, 1.0), start + Duration::from_millis(3));
        assert_eq!(timer.early(), Some(start + Duration::from_millis(25)));
    }

    #[test]
    fn room_after_a_forwarded_task_is_reported_early() {
        let start = Instant::now();
        let mut timer = BeatTimer::new(INTERVAL, start);
        timer.sent(&amounts(1.0, 1.0), start);
        timer.forwarded(&["CPU".to_string()]);
        timer.observe(&amounts(0.0, 1.0), start + Duration::from_millis(30));
        assert_eq!(timer.early(), None, "the forwarded task holds the CPU");
        let done = start + Duration::from_millis(60);
        timer.observe(&amounts(1.0, 1.0), done);
        assert_eq!(timer.early(), Some(done));
    }

    #[test]
    fn a_forwarded_task_that_leaves_room_brings_no_early_heartbeat() {
        let start = Instant::now();
        let mut timer = BeatTimer::new(INTERVAL, start);
        timer.sent(&amounts(2.0, 1.0), start);
        timer.forwarded(&["CPU".to_string()]);
        timer.observe(&amounts(1.0, 1.0), start + Duration::from_millis(30));
        timer.observe(&amounts(2.0, 1.0), start + Duration::from_millis(60));
        assert_eq!(timer.early(), None);
    }

    #[test]
    fn a_node_that_had_room_sends_only_periodic_heartbeats() {
        let start = Instant::now();
        let mut timer = BeatTimer::new(INTERVAL, start);
        timer.sent(&amounts(2.0, 1.0), start);
        timer.observe(&amounts(0.0, 1.0), start + Duration::from_millis(30));
        timer.observe(&amounts(2.0, 1.0), start + Duration::from_millis(60));
        assert_eq!(timer.early(), None);
    }
}
