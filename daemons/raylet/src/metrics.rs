//! The raylet's Prometheus metrics: counted from the effects the scheduler core asks
//! for (the core stays free of I/O and of metrics), gauges set from its snapshot at each
//! heartbeat. Every update is an atomic add or store.

use std::collections::HashMap;

use rayd_common::id::ActorId;
use rayd_common::proto::raylet::v1 as pb;
use rayd_common::value;
use rayd_metrics::prometheus_client::metrics::counter::Counter;
use rayd_metrics::prometheus_client::metrics::gauge::Gauge;
use rayd_metrics::prometheus_client::metrics::histogram::Histogram;
use rayd_metrics::prometheus_client::registry::Registry;

use crate::scheduler::{Effect, GcsWrite, Snapshot, TaskState};

/// The raylet's figures.
#[derive(Debug)]
pub struct RayletMetrics {
    submitted: Counter,
    finished: Counter,
    failed: Counter,
    cancelled: Counter,
    forwarded: Counter,
    spilled: Counter,
    workers_started: Counter,
    queued_waiting: Gauge,
    queued_ready: Gauge,
    running: Gauge,
    workers: Gauge,
    idle_workers: Gauge,
    actors_alive: Gauge,
    actors_pending: Gauge,
    actors_dead: Gauge,
    /// Each actor's last state here, to count actors by state (actors change state rarely).
    actor_states: HashMap<ActorId, String>,
    /// Seconds per heartbeat write to the GCS (a Redis round trip).
    pub gcs_round_trip: Histogram,
}

impl Default for RayletMetrics {
    fn default() -> Self {
        Self {
            submitted: Counter::default(),
            finished: Counter::default(),
            failed: Counter::default(),
            cancelled: Counter::default(),
            forwarded: Counter::default(),
            spilled: Counter::default(),
            workers_started: Counter::default(),
            queued_waiting: Gauge::default(),
            queued_ready: Gauge::default(),
            running: Gauge::default(),
            workers: Gauge::default(),
            idle_workers: Gauge::default(),
            actors_alive: Gauge::default(),
            actors_pending: Gauge::default(),
            actors_dead: Gauge::default(),
            actor_states: HashMap::new(),
            gcs_round_trip: rayd_metrics::round_trip_histogram(),
        }
    }
}

impl RayletMetrics {
    /// A registry (prefix `rayd_raylet`) that reads these metrics.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("rayd_raylet");
        let counters = [
            (
                "tasks_submitted",
                "Tasks queued here (submitted here or forwarded here)",
                &self.submitted,
            ),
            (
                "tasks_finished",
                "Tasks that ran to their end here (raising or not)",
                &self.finished,
            ),
            (
                "tasks_failed",
                "Tasks whose results are errors (raised, or their worker died)",
                &self.failed,
            ),
            (
                "tasks_cancelled",
                "Tasks dropped because their job ended",
                &self.cancelled,
            ),
            (
                "tasks_forwarded",
                "Tasks sent to another node's raylet",
                &self.forwarded,
            ),
            (
                "tasks_spilled",
                "Tasks spilled to the global scheduler",
                &self.spilled,
            ),
            (
                "workers_started",
                "Worker processes asked for",
                &self.workers_started,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        let gauges = [
            (
                "tasks_waiting",
                "Queued tasks waiting for arguments",
                &self.queued_waiting,
            ),
            (
                "tasks_ready",
                "Queued tasks waiting for resources or a worker",
                &self.queued_ready,
            ),
            ("tasks_running", "Tasks running on a worker", &self.running),
            ("workers", "Registered worker processes", &self.workers),
            (
                "workers_idle",
                "Registered worker processes without a task",
                &self.idle_workers,
            ),
            (
                "actors_alive",
                "Actors alive on (or placed from) this node",
                &self.actors_alive,
            ),
            (
                "actors_pending",
                "Actors waiting to be created",
                &self.actors_pending,
            ),
            ("actors_dead", "Actors dead", &self.actors_dead),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        r.register(
            "gcs_round_trip_seconds",
            "Heartbeat writes to the GCS (Redis round trips)",
            self.gcs_round_trip.clone(),
        );
        r
    }

    /// Counts a task whose results are errors (its code raised).
    pub fn task_done(&self, done: &pb::TaskDone) {
        if done
            .results
            .iter()
            .any(|r| r.metadata.starts_with(value::META_ERROR_PREFIX))
        {
            self.failed.inc();
        }
    }

    /// Counts what `effect` says happened.
    pub fn count(&mut self, effect: &Effect) {
        match effect {
            Effect::StartWorker => {
                self.workers_started.inc();
            }
            Effect::Forward { .. } => {
                self.forwarded.inc();
            }
            Effect::Spill { .. } => {
                self.spilled.inc();
            }
            Effect::Gcs(GcsWrite::Task(_)) => {
                self.submitted.inc();
            }
            Effect::Gcs(GcsWrite::State(_, state)) => match state {
                TaskState::Finished => {
                    self.finished.inc();
                }
                TaskState::Failed => {
                    self.failed.inc();
                }
                TaskState::Cancelled => {
                    self.cancelled.inc();
                }
                _ => {}
            },
            Effect::Gcs(GcsWrite::Actor(info)) => {
                let before = self.actor_states.insert(info.actor_id, info.state.clone());
                if let Some(gauge) = before.as_deref().and_then(|s| self.actor_gauge(s)) {
                    gauge.dec();
                }
                if let Some(gauge) = self.actor_gauge(&info.state) {
                    gauge.inc();
                }
            }
            _ => {}
        }
    }

    fn actor_gauge(&self, state: &str) -> Option<&Gauge> {
        match state {
            "alive" => Some(&self.actors_alive),
            "pending" => Some(&self.actors_pending),
            "dead" => Some(&self.actors_dead),
            _ => None,
        }
    }

    /// Sets the gauges from the scheduler's figures.
    pub fn observe(&self, snapshot: &Snapshot) {
        let set = |gauge: &Gauge, value: u64| {
            gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        set(&self.queued_waiting, snapshot.waiting);
        set(&self.queued_ready, snapshot.ready);
        set(&self.running, snapshot.running);
        set(&self.workers, snapshot.workers);
        set(&self.idle_workers, snapshot.idle_workers);
    }
}
