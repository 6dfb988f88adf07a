//! The worker pool: worker processes from their start to their exit, which are idle, what
//! each runs, the task sent ahead to it, whether it is blocked, and how long each
//! function's tasks typically run.
//!
//! A worker is asked for (the scheduler emits a start), spawned (its pid known), then
//! registers on its connection. One that exits before registering counts as a failed
//! start, and starts back off exponentially: a broken worker setup must not turn into a
//! fork loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use rayd_common::id::{ActorId, FunctionId, JobId, WorkerId};

use super::task::{Shape, Task};
use super::ConnId;
use rayd_common::resources::Held;

// One per worker; the running task lives inline rather than behind another allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum WorkerState {
    /// Connected, waiting for a task.
    Idle,
    /// Running a task, holding its resources; while `blocked` in `ray.get` its CPUs are
    /// lent to other tasks.
    Busy {
        task: Task,
        held: Held,
        blocked: bool,
    },
    /// Told to exit (max_calls); its process is on its way out.
    Retiring,
}

#[derive(Debug)]
pub struct Worker {
    pub id: WorkerId,
    pub pid: u32,
    /// The actor this worker is dedicated to, once its creation task was dispatched here.
    pub actor: Option<ActorId>,
    pub state: WorkerState,
    /// Tasks run per function, for `max_calls`.
    pub calls: HashMap<FunctionId, u32>,
    /// The job of the task it runs or ran last: where its output goes, and whether an
    /// assignment must carry the job's environment.
    pub job: Option<JobId>,
    /// A task sent to run after the current one (same resources, which it takes over);
    /// taken back when the worker blocks, so it never waits behind a blocked task.
    pub ahead: Option<Task>,
    /// When the current task started.
    pub started: Instant,
    /// When it last became idle.
    idle_since: Instant,
}

impl Worker {
    pub fn running(&self) -> Option<&Task> {
        match &self.state {
            WorkerState::Busy { task, .. } => Some(task),
            _ => None,
        }
    }
}

/// What the end of a worker process means.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// It never registered: a failed start; the next start waits this long.
    BeforeRegistering(Duration),
    /// A registered worker (its connection's end is handled as a disconnect).
    Registered(ConnId),
    /// Gone already (its connection closed first).
    Unknown,
}

#[derive(Debug)]
pub struct Pool {
    workers: HashMap<ConnId, Worker>,
    idle: VecDeque<ConnId>,
    /// Worker pid -> its connection, once registered.
    pids: HashMap<u32, ConnId>,
    /// Starts asked for whose pid is not known yet.
    launching: usize,
    /// Started, not registered yet.
    starting: HashSet<u32>,
    /// Workers that exited before registering, in a row.
    failed_starts: u32,
    next_start: Instant,
    /// How long each function's tasks typically run (a moving average).
    durations: HashMap<FunctionId, Duration>,
}

impl Pool {
    pub fn new(now: Instant) -> Self {
        Self {
            workers: HashMap::new(),
            idle: VecDeque::new(),
            pids: HashMap::new(),
            launching: 0,
            starting: HashSet::new(),
            failed_starts: 0,
            next_start: now,
            durations: HashMap::new(),
        }
    }

    /// Whether a start may be asked for now (not backing off); counts it if so.
    pub fn request_start(&mut self, now: Instant) -> bool {
        if now < self.next_start {
            return false;
        }
        self.launching += 1;
        true
    }

    /// A start asked for has a process.
    pub fn spawned(&mut self, pid: u32) {
        self.launching = self.launching.saturating_sub(1);
        if !self.pids.contains_key(&pid) {
            self.starting.insert(pid);
        }
    }

    /// A start asked for could not fork.
    pub fn spawn_failed(&mut self) {
        self.launching = self.launching.saturating_sub(1);
    }

    /// Workers on their way: asked for or started, not registered.
    pub fn in_flight(&self) -> usize {
        self.launching + self.starting.len()
    }

    /// Registered workers and those on their way.
    pub fn live(&self) -> usize {
        self.pids.len() + self.in_flight()
    }

    /// A worker registered on `conn`: it is idle.
    pub fn register(&mut self, conn: ConnId, id: WorkerId, pid: u32, now: Instant) {
        if !self.starting.remove(&pid) {
            // Registered before its spawn was reported.
            self.launching = self.launching.saturating_sub(1);
        }
        self.failed_starts = 0;
        self.pids.insert(pid, conn);
        self.workers.insert(
            conn,
            Worker {
                id,
                pid,
                actor: None,
                state: WorkerState::Idle,
                calls: HashMap::new(),
                job: None,
                ahead: None,
                started: now,
                idle_since: now,
            },
        );
        self.idle.push_back(conn);
    }

    /// The process `pid` ended.
    pub fn exited(&mut self, pid: u32, now: Instant) -> Exit {
        if self.starting.remove(&pid) {
            self.failed_starts += 1;
            let backoff = Duration::from_millis(50u64 << self.failed_starts.min(8));
            self.next_start = now + backoff;
            return Exit::BeforeRegistering(backoff);
        }
        match self.pids.remove(&pid) {
            Some(conn) => Exit::Registered(conn),
            None => Exit::Unknown,
        }
    }

    /// Consecutive failed starts.
    pub fn failed_starts(&self) -> u32 {
        self.failed_starts
    }

    pub fn get(&self, conn: ConnId) -> Option<&Worker> {
        self.workers.get(&conn)
    }

    pub fn get_mut(&mut self, conn: ConnId) -> Option<&mut Worker> {
        self.workers.get_mut(&conn)
    }

    pub fn conn_of(&self, pid: u32) -> Option<ConnId> {
        self.pids.get(&pid).copied()
    }

    /// Forgets the worker on `conn` (its connection closed).
    pub fn remove(&mut self, conn: ConnId) -> Option<Worker> {
        let worker = self.workers.remove(&conn)?;
        self.pids.remove(&worker.pid);
        Some(worker)
    }

    /// The next idle worker, skipping entries that are no longer idle.
    pub fn next_idle(&mut self) -> Option<ConnId> {
        while let Some(conn) = self.idle.pop_front() {
            if matches!(self.workers.get(&conn), Some(w) if matches!(w.state, WorkerState::Idle)) {
                return Some(conn);
            }
        }
        None
    }

    /// Puts a worker back as idle (last, or first when it was taken for nothing).
    pub fn make_idle(&mut self, conn: ConnId, first: bool, now: Instant) {
        if first {
            self.idle.push_front(conn);
        } else {
            if let Some(worker) = self.workers.get_mut(&conn) {
                worker.idle_since = now;
            }
            self.idle.push_back(conn);
        }
    }

    /// Marks as retiring the pool workers beyond `keep` that have been idle for `after`
    /// (those idle longest first) and returns them: a burst of nested tasks must not leave
    /// its workers behind for the node's life.
    pub fn retire_idle(&mut self, now: Instant, keep: usize, after: Duration) -> Vec<ConnId> {
        let pool = self
            .workers
            .values()
            .filter(|w| w.actor.is_none() && !matches!(w.state, WorkerState::Retiring))
            .count();
        let mut idle: Vec<(Instant, ConnId)> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                w.actor.is_none()
                    && matches!(w.state, WorkerState::Idle)
                    && now.saturating_duration_since(w.idle_since) >= after
            })
            .map(|(conn, w)| (w.idle_since, *conn))
            .collect();
        idle.sort_unstable();
        idle.truncate(pool.saturating_sub(keep));
        for (_, conn) in &idle {
            if let Some(worker) = self.workers.get_mut(conn) {
                worker.state = WorkerState::Retiring;
            }
        }
        idle.into_iter().map(|(_, conn)| conn).collect()
    }

    /// Whether a worker runs the task `id` or has it sent ahead.
    pub fn runs(&self, id: &rayd_common::id::TaskId) -> bool {
        self.workers.values().any(|w| {
            w.running().is_some_and(|t| t.id == *id)
                || w.ahead.as_ref().is_some_and(|t| t.id == *id)
        })
    }

    /// The pool workers (not an actor's) that run a task of `job`, or have one sent
    /// ahead.
    pub fn working_for(&self, job: JobId) -> Vec<u32> {
        self.workers
            .values()
            .filter(|w| {
                w.actor.is_none()
                    && (w.running().is_some_and(|t| t.job == job)
                        || w.ahead.as_ref().is_some_and(|t| t.job == job))
            })
            .map(|w| w.pid)
            .collect()
    }

    /// Pool workers that are idle or running without being blocked (an actor's worker is
    /// not in the pool: its methods take their CPU when they run).
    pub fn active(&self) -> usize {
        self.workers
            .values()
            .filter(|w| {
                w.actor.is_none()
                    && match &w.state {
                        WorkerState::Idle => true,
                        WorkerState::Busy { blocked, .. } => !blocked,
                        WorkerState::Retiring => false,
                    }
            })
            .count()
    }

    /// Registered workers, and those of them idle.
    pub fn counts(&self) -> (usize, usize) {
        let idle = self
            .workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Idle))
            .count();
        (self.workers.len(), idle)
    }

    /// Workers running a task.
    pub fn running(&self) -> usize {
        self.workers
            .values()
            .filter(|w| matches!(w.state, WorkerState::Busy { .. }))
            .count()
    }

    /// Notes how long a task of `function` took.
    pub fn record_duration(&mut self, function: FunctionId, took: Duration) {
        let typical = self.durations.entry(function).or_insert(took);
        *typical = (*typical * 7 + took) / 8;
    }

    /// Busy pool workers that may get a task sent ahead: running a short task (of a
    /// function that typically runs under `max`, started less than `max` ago), not
    /// blocked, nothing sent ahead yet, no `max_calls`. With the running task's shape and
    /// job, which the task sent ahead must share.
    pub fn ahead_candidates(&self, now: Instant, max: Duration) -> Vec<(ConnId, Shape, JobId)> {
        self.workers
            .iter()
            .filter_map(|(conn, w)| {
                if w.actor.is_some() || w.ahead.is_some() {
                    return None;
                }
                let WorkerState::Busy {
                    task,
                    blocked: false,
                    ..
                } = &w.state
                else {
                    return None;
                };
                let short = now.saturating_duration_since(w.started) < max
                    && self.durations.get(&task.function).is_some_and(|d| *d < max);
                (short && task.spec.max_calls == 0 && !task.is_actor_creation())
                    .then(|| (*conn, task.shape(), task.job))
            })
            .collect()
    }

    /// Every worker process, registered or starting, for shutdown.
    pub fn pids(&self) -> Vec<u32> {
        self.pids
            .keys()
            .chain(self.starting.iter())
            .copied()
            .collect()
    }
}
