//! The local scheduler: one task owns all of the raylet's state and handles events in
//! order, so no state is shared or locked.
//!
//! A submitted task waits until every object-ID argument is local (sealed in the store,
//! learned from its event stream, or a small result held here), then until its resources
//! are free and a worker is idle, then runs.
//!
//! Small results (at most `INLINE_RESULT_MAX`) come in the worker's `TaskDone` and never
//! touch plasma on the way to the driver that submitted the task: the raylet keeps them in
//! memory, sends them to that driver, and inlines them into the tasks that take them as
//! arguments. Workers that need one (nested tasks, fetches) get it put into plasma, as do
//! the oldest when the memory they take passes `INLINE_STORE_BYTES`. A worker that blocks in `ray.get` lends its CPUs to others
//! and more workers start, so nested tasks never deadlock the node. A worker that dies
//! mid-task has its task retried (up to `max_retries`) or its results replaced by error
//! objects, so `ray.get` never hangs on it.

mod actors;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use rayd_common::framing;
use rayd_common::id::{ActorId, FunctionId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use rayd_common::inline::InlineCache;
use rayd_common::proto::common::v1 as common_pb;
use rayd_common::proto::raylet::v1 as pb;
use rayd_common::value;
use rayd_gcs::TaskEntry;
use rayd_plasma_client::PlasmaClient;
use std::sync::Arc;
use tokio::sync::mpsc;

use crate::connection::ConnId;
use crate::gcs::GcsWrite;
use crate::resources::{Amounts, Held, Resources};
use crate::workers::spawn_worker;

/// Something the scheduler reacts to.
// Events move once through a channel; boxing the task-carrying variant would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    Connected {
        conn: ConnId,
        tx: mpsc::UnboundedSender<Vec<u8>>,
    },
    Message {
        conn: ConnId,
        message: pb::client_message::Kind,
    },
    Disconnected {
        conn: ConnId,
    },
    ObjectSealed(ObjectId),
    ObjectDeleted(ObjectId),
    WorkerExited {
        pid: u32,
        status: String,
    },
    WorkerOutput {
        pid: u32,
        line: String,
        stderr: bool,
    },
}

/// Workers started beyond the CPU slots for tasks that need no CPU.
const MAX_CPU_FREE_WORKERS: usize = 32;

/// Bytes of small results kept in memory; beyond this the oldest are put into plasma.
const INLINE_STORE_BYTES: usize = 64 << 20;

/// The resources a task asks for, as a sortable key.
type Shape = Vec<(String, u64)>;

/// A task known to this raylet.
#[derive(Debug, Clone)]
struct Task {
    id: TaskId,
    job: JobId,
    function: FunctionId,
    spec: common_pb::TaskSpec,
    resources: Amounts,
    /// The connection that submitted it: where its small results go.
    submitter: Option<ConnId>,
}

impl Task {
    fn from_spec(spec: common_pb::TaskSpec) -> Result<Self, String> {
        let id = TaskId::from_slice(&spec.task_id).map_err(|e| e.to_string())?;
        let job = JobId::from_slice(&spec.job_id).map_err(|e| e.to_string())?;
        let function = FunctionId::from_slice(&spec.function_id).map_err(|e| e.to_string())?;
        let mut resources: Amounts = spec
            .resources
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        resources.retain(|_, v| *v > 0.0);
        if let Some((name, amount)) = resources.iter().find(|(_, v)| !v.is_finite() || **v < 0.0) {
            return Err(format!(
                "resource {name} = {amount} is not a non-negative amount"
            ));
        }
        Ok(Self {
            id,
            job,
            function,
            spec,
            resources,
            submitter: None,
        })
    }

    fn shape(&self) -> Shape {
        self.resources
            .iter()
            .map(|(k, v)| (k.clone(), v.to_bits()))
            .collect()
    }

    fn dependencies(&self) -> Vec<ObjectId> {
        self.spec
            .args
            .iter()
            .filter_map(|arg| match &arg.value {
                Some(common_pb::task_arg::Value::ObjectId(bytes)) => {
                    ObjectId::from_slice(bytes).ok()
                }
                _ => None,
            })
            .collect()
    }

    fn return_ids(&self) -> impl Iterator<Item = ObjectId> + '_ {
        (1..=self.spec.num_returns).map(|i| ObjectId::for_return(self.id, i))
    }
}

// One per worker; the running task lives inline rather than behind another allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum WorkerState {
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
struct Worker {
    id: WorkerId,
    pid: u32,
    /// The actor this worker is dedicated to, once its creation task was dispatched here.
    actor: Option<ActorId>,
    state: WorkerState,
    calls: HashMap<FunctionId, u32>,
    /// The job of the task it runs or ran last, for its output.
    job: Option<JobId>,
    /// A task sent to run after the current one (same resources, which it takes over);
    /// taken back when the worker blocks, so it never waits behind a blocked task.
    ahead: Option<Task>,
    /// When the current task started.
    started: std::time::Instant,
}

#[derive(Debug)]
enum Peer {
    Unregistered,
    Driver(JobId),
    Worker(Box<Worker>),
}

#[derive(Debug)]
struct Connection {
    tx: mpsc::UnboundedSender<Vec<u8>>,
    peer: Peer,
}

/// Where the node stands, for heartbeats and `rayd status`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub available: Amounts,
    pub queued: u64,
    pub running: u64,
}

/// What the scheduler needs to know about its node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub node_id: NodeId,
    pub node_ip_address: String,
    pub plasma_socket: String,
    pub redis_address: String,
    pub redis_password: String,
    pub raylet_socket: PathBuf,
    pub worker_path: PathBuf,
    pub log_level: String,
    /// Workers kept alive even when idle.
    pub min_workers: usize,
    /// Tasks are sent ahead only behind tasks shorter than this (see `send_tasks_ahead`).
    pub task_ahead_max: std::time::Duration,
}

/// The raylet's state.
#[derive(Debug)]
pub struct Scheduler {
    settings: NodeSettings,
    events: mpsc::UnboundedSender<Event>,
    gcs: mpsc::UnboundedSender<GcsWrite>,
    plasma: PlasmaClient,
    resources: Resources,
    conns: HashMap<ConnId, Connection>,
    idle: VecDeque<ConnId>,
    /// Worker processes started and not yet registered.
    starting: HashSet<u32>,
    /// Worker pid -> its connection, once registered.
    pids: HashMap<u32, ConnId>,
    jobs: HashMap<JobId, (pb::JobConfig, ConnId)>,
    /// Tasks whose arguments are local, by resource shape: the tasks of one shape either
    /// all fit or the first does not, so scheduling looks at one task per shape.
    ready: BTreeMap<Shape, VecDeque<Task>>,
    waiting: HashMap<TaskId, (Task, usize)>,
    waiters: HashMap<ObjectId, Vec<TaskId>>,
    local: HashSet<ObjectId>,
    /// Small results not in plasma.
    memory: InlineCache,
    /// How long each function's tasks typically run (a moving average).
    durations: HashMap<FunctionId, std::time::Duration>,
    /// Objects that connections fetched before they were local.
    interest: HashMap<ObjectId, Vec<ConnId>>,
    warned: HashSet<String>,
    retries: HashMap<TaskId, u32>,
    actors: HashMap<ActorId, actors::Actor>,
    /// Workers that exited before registering, in a row: a broken worker setup must not
    /// turn into a fork loop.
    failed_starts: u32,
    next_start: std::time::Instant,
}

impl Scheduler {
    pub fn new(
        settings: NodeSettings,
        total: Amounts,
        plasma: PlasmaClient,
        events: mpsc::UnboundedSender<Event>,
        gcs: mpsc::UnboundedSender<GcsWrite>,
    ) -> Self {
        Self {
            settings,
            events,
            gcs,
            plasma,
            resources: Resources::new(total),
            conns: HashMap::new(),
            idle: VecDeque::new(),
            starting: HashSet::new(),
            pids: HashMap::new(),
            jobs: HashMap::new(),
            ready: BTreeMap::new(),
            waiting: HashMap::new(),
            waiters: HashMap::new(),
            local: HashSet::new(),
            memory: InlineCache::new(INLINE_STORE_BYTES),
            durations: HashMap::new(),
            interest: HashMap::new(),
            warned: HashSet::new(),
            retries: HashMap::new(),
            actors: HashMap::new(),
            failed_starts: 0,
            next_start: std::time::Instant::now(),
        }
    }

    /// The node's figures now.
    pub fn snapshot(&self) -> Snapshot {
        let running = self
            .conns
            .values()
            .filter(|c| matches!(&c.peer, Peer::Worker(w) if matches!(w.state, WorkerState::Busy { .. })))
            .count() as u64;
        Snapshot {
            available: self.resources.available().clone(),
            queued: (self.ready.values().map(VecDeque::len).sum::<usize>() + self.waiting.len())
                as u64,
            running,
        }
    }

    /// Periodic work: retries worker starts that were backed off.
    pub fn tick(&mut self) {
        self.schedule();
    }

    /// Starts the workers kept ahead of demand.
    pub fn prestart(&mut self) {
        for _ in 0..self.settings.min_workers {
            self.start_worker();
        }
    }

    fn start_worker(&mut self) {
        if std::time::Instant::now() < self.next_start {
            return;
        }
        match spawn_worker(
            &self.settings.worker_path,
            &self.settings.raylet_socket,
            &self.settings.log_level,
            &self.events,
        ) {
            Ok(pid) => {
                log::debug!(pid; "started a worker");
                self.starting.insert(pid);
            }
            Err(e) => {
                log::error!(path:% = self.settings.worker_path.display(); "cannot start a worker: {e}")
            }
        }
    }

    /// Handles one event.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::Connected { conn, tx } => {
                self.conns.insert(
                    conn,
                    Connection {
                        tx,
                        peer: Peer::Unregistered,
                    },
                );
            }
            Event::Message { conn, message } => self.on_message(conn, message),
            Event::Disconnected { conn } => self.on_disconnect(conn),
            Event::ObjectSealed(id) => self.on_sealed(id),
            Event::ObjectDeleted(id) => {
                self.local.remove(&id);
            }
            Event::WorkerExited { pid, status } => {
                if self.starting.remove(&pid) {
                    self.failed_starts += 1;
                    let backoff =
                        std::time::Duration::from_millis(50u64 << self.failed_starts.min(8));
                    self.next_start = std::time::Instant::now() + backoff;
                    log::error!(pid, status = status.as_str(), failures = self.failed_starts;
                        "worker exited before it registered (see its output above); next start in {backoff:?}");
                } else if let Some(conn) = self.pids.remove(&pid) {
                    log::warn!(pid, status = status.as_str(); "worker exited");
                    self.on_disconnect(conn);
                } else {
                    log::debug!(pid, status = status.as_str(); "worker process ended");
                }
                self.schedule();
            }
            Event::WorkerOutput { pid, line, stderr } => self.on_output(pid, line, stderr),
        }
    }

    fn send(&self, conn: ConnId, kind: pb::server_message::Kind) {
        self.send_frame(
            conn,
            framing::encode(&pb::ServerMessage { kind: Some(kind) }),
        );
    }

    /// Sends a message encoded as a frame already.
    fn send_frame(&self, conn: ConnId, frame: Vec<u8>) {
        if let Some(c) = self.conns.get(&conn) {
            let _ = c.tx.send(frame);
        }
    }

    fn on_message(&mut self, conn: ConnId, message: pb::client_message::Kind) {
        use pb::client_message::Kind;
        match message {
            Kind::Register(register) => self.on_register(conn, register),
            Kind::SubmitTask(spec) => match Task::from_spec(spec) {
                Ok(mut task) => {
                    task.submitter = Some(conn);
                    if task.spec.actor_creation {
                        self.create_actor(task)
                    } else if !task.spec.actor_id.is_empty() {
                        self.submit_actor_task(task)
                    } else {
                        self.submit(task)
                    }
                }
                Err(e) => log::warn!(conn; "refusing a malformed task: {e}"),
            },
            Kind::TaskDone(done) => self.on_task_done(conn, done),
            Kind::Fetch(fetch) => self.on_fetch(conn, &fetch.object_ids),
            Kind::Blocked(_) => self.on_blocked(conn, true),
            Kind::Unblocked(_) => self.on_blocked(conn, false),
            Kind::KillActor(kill) => match ActorId::from_slice(&kill.actor_id) {
                Ok(id) => self.kill_actor(id, format!("actor {id} was killed with ray.kill")),
                Err(e) => log::warn!(conn; "refusing to kill a malformed actor id: {e}"),
            },
        }
    }

    fn on_register(&mut self, conn: ConnId, register: pb::Register) {
        let Some(connection) = self.conns.get_mut(&conn) else {
            return;
        };
        if register.is_worker {
            self.starting.remove(&register.pid);
            self.failed_starts = 0;
            self.pids.insert(register.pid, conn);
            connection.peer = Peer::Worker(Box::new(Worker {
                id: WorkerId::from_slice(&register.worker_id)
                    .unwrap_or_else(|_| WorkerId::random()),
                pid: register.pid,
                actor: None,
                state: WorkerState::Idle,
                calls: HashMap::new(),
                job: None,
                ahead: None,
                started: std::time::Instant::now(),
            }));
            self.idle.push_back(conn);
            log::debug!(pid = register.pid; "worker registered");
        } else {
            let job_config = register.job.unwrap_or_default();
            let job = JobId::from_slice(&job_config.job_id).unwrap_or_else(|_| JobId::random());
            connection.peer = Peer::Driver(job);
            log::info!(job:% = job, pid = register.pid; "driver connected");
            self.jobs.insert(job, (job_config, conn));
        }
        self.send(
            conn,
            pb::server_message::Kind::Registered(pb::Registered {
                node_id: self.settings.node_id.as_bytes().to_vec(),
                plasma_socket: self.settings.plasma_socket.clone(),
                redis_address: self.settings.redis_address.clone(),
                node_ip_address: self.settings.node_ip_address.clone(),
                redis_password: self.settings.redis_password.clone(),
            }),
        );
        self.schedule();
    }

    fn submit(&mut self, task: Task) {
        let _ = self.gcs.send(GcsWrite::Task(TaskEntry {
            task_id: task.id,
            spec: prost::Message::encode_to_vec(&task.spec).into(),
            state: "waiting".into(),
            node: Some(self.settings.node_id),
        }));
        let missing: Vec<ObjectId> = task
            .dependencies()
            .into_iter()
            .filter(|id| !self.local.contains(id))
            .collect();
        if missing.is_empty() {
            self.make_ready(task, false);
            self.schedule();
            return;
        }
        let unique: HashSet<ObjectId> = missing.into_iter().collect();
        for id in &unique {
            self.waiters.entry(*id).or_default().push(task.id);
        }
        self.waiting.insert(task.id, (task, unique.len()));
    }

    fn on_sealed(&mut self, id: ObjectId) {
        // Whoever fetched it follows the store too.
        self.interest.remove(&id);
        self.mark_local(id);
        self.schedule();
    }

    /// `id` is local now: the tasks that waited for it may be ready.
    fn mark_local(&mut self, id: ObjectId) {
        self.local.insert(id);
        let Some(tasks) = self.waiters.remove(&id) else {
            return;
        };
        for task_id in tasks {
            if let Some((_, missing)) = self.waiting.get_mut(&task_id) {
                *missing -= 1;
                if *missing == 0 {
                    if let Some((task, _)) = self.waiting.remove(&task_id) {
                        self.make_ready(task, false);
                    }
                }
            }
        }
    }

    fn is_driver(&self, conn: ConnId) -> bool {
        matches!(
            self.conns.get(&conn).map(|c| &c.peer),
            Some(Peer::Driver(_))
        )
    }

    /// Takes the small results of the task running on `conn`: they go to the drivers
    /// waiting for them, into plasma for the workers waiting for them, and stay in memory.
    fn accept_results(&mut self, conn: ConnId, results: Vec<pb::InlineObject>) {
        let running = match self.conns.get(&conn).map(|c| &c.peer) {
            Some(Peer::Worker(worker)) => match &worker.state {
                WorkerState::Busy { task, .. } => {
                    Some((task.id, task.spec.num_returns, task.submitter))
                }
                _ => None,
            },
            _ => None,
        };
        let Some((task, num_returns, submitter)) = running else {
            log::warn!(conn; "results from a worker that runs no task; dropped");
            return;
        };
        let mut to_drivers: HashMap<ConnId, Vec<pb::InlineObject>> = HashMap::new();
        for object in results {
            let id = match ObjectId::from_slice(&object.object_id) {
                Ok(id) if (1..=num_returns).any(|i| ObjectId::for_return(task, i) == id) => id,
                _ => {
                    log::warn!(conn, task:% = task; "dropping a result that is not one of the task's");
                    continue;
                }
            };
            let mut targets = self.interest.remove(&id).unwrap_or_default();
            targets.extend(submitter.filter(|s| !targets.contains(s)));
            let (drivers, workers): (Vec<ConnId>, Vec<ConnId>) =
                targets.into_iter().partition(|c| self.is_driver(*c));
            for driver in drivers {
                to_drivers.entry(driver).or_default().push(object.clone());
            }
            let object = Arc::new(object);
            if workers.is_empty() {
                for (old, forgotten) in self.memory.insert(id, object) {
                    self.promote(old, &forgotten);
                }
            } else {
                self.memory.remove(&id);
                self.promote(id, &object);
            }
            self.mark_local(id);
        }
        for (driver, objects) in to_drivers {
            self.send(
                driver,
                pb::server_message::Kind::ObjectsReady(pb::ObjectsReady { objects }),
            );
        }
    }

    /// Puts a small result into plasma, for readers that do not get it in messages.
    fn promote(&self, id: ObjectId, object: &pb::InlineObject) {
        if let Err(e) = self.plasma.put(id, &object.data, &object.metadata) {
            if !matches!(e, rayd_plasma_client::ClientError::ObjectExists(_)) {
                log::error!(object:% = id; "cannot put a small result into plasma: {e}");
            }
        }
    }

    /// A driver or worker waits for `ids`: small results held here go to it (a driver) or
    /// into plasma (a worker); those not local yet follow when they arrive.
    fn on_fetch(&mut self, conn: ConnId, ids: &[Vec<u8>]) {
        let driver = self.is_driver(conn);
        let mut ready = Vec::new();
        for bytes in ids {
            let Ok(id) = ObjectId::from_slice(bytes) else {
                log::warn!(conn; "ignoring a fetch of a malformed object id");
                continue;
            };
            if driver {
                if let Some(object) = self.memory.get(&id) {
                    ready.push((**object).clone());
                    continue;
                }
            } else if let Some(object) = self.memory.remove(&id) {
                self.promote(id, &object);
                continue;
            }
            if !self.local.contains(&id) {
                let waiting = self.interest.entry(id).or_default();
                if !waiting.contains(&conn) {
                    waiting.push(conn);
                }
            }
        }
        if !ready.is_empty() {
            self.send(
                conn,
                pb::server_message::Kind::ObjectsReady(pb::ObjectsReady { objects: ready }),
            );
        }
    }

    /// Queues a task whose arguments are local (a retry goes first).
    fn make_ready(&mut self, task: Task, first: bool) {
        let queue = self.ready.entry(task.shape()).or_default();
        if first {
            queue.push_front(task);
        } else {
            queue.push_back(task);
        }
    }

    /// Dispatches ready tasks to idle workers while resources allow, and starts workers
    /// where tasks could run but none is idle.
    fn schedule(&mut self) {
        // Tasks that could run now but have no idle worker: those needing CPUs, and not.
        let (mut runnable_cpu, mut runnable_free) = (0usize, 0usize);
        let shapes: Vec<Shape> = self.ready.keys().cloned().collect();
        for shape in shapes {
            let Some(request) = self
                .ready
                .get(&shape)
                .and_then(|q| q.front())
                .map(|t| t.resources.clone())
            else {
                self.ready.remove(&shape);
                continue;
            };
            if !self.resources.feasible(&request) {
                self.warn_infeasible(&shape);
                continue;
            }
            while self.resources.fits(&request) {
                let Some(conn) = self.next_idle() else {
                    let waiting = self.ready.get(&shape).map_or(0, VecDeque::len);
                    if request.get("CPU").is_some_and(|cpus| *cpus > 0.0) {
                        runnable_cpu += waiting;
                    } else {
                        runnable_free += waiting;
                    }
                    break;
                };
                let Some(task) = self.ready.get_mut(&shape).and_then(VecDeque::pop_front) else {
                    self.idle.push_front(conn);
                    break;
                };
                self.dispatch(conn, task);
            }
            if self.ready.get(&shape).is_some_and(VecDeque::is_empty) {
                self.ready.remove(&shape);
            }
        }
        self.send_tasks_ahead();
        // Start workers for tasks that could run now: up to one per CPU not lent out, and
        // beyond that (bounded) for tasks and actors that take no CPU.
        let active = self.active_workers();
        let limit = self.cpu_slots();
        let mut wanted = runnable_cpu.saturating_sub(self.starting.len());
        while wanted > 0 && active + self.starting.len() < limit {
            self.start_worker();
            wanted -= 1;
        }
        let mut wanted = runnable_free.saturating_sub(self.starting.len());
        while wanted > 0 && active + self.starting.len() < limit + MAX_CPU_FREE_WORKERS {
            self.start_worker();
            wanted -= 1;
        }
        self.dispatch_actor_methods();
        // Keep the minimum pool.
        let live = self.pids.len() + self.starting.len();
        for _ in live..self.settings.min_workers {
            self.start_worker();
        }
    }

    /// Gives each busy pool worker whose running task has the shape of a queued one that
    /// task to run next: it goes on without waiting for the raylet in between. Only behind
    /// short tasks (of a function that typically runs under `task_ahead_max`, running for
    /// less than that): a task must not wait behind a long one while a worker frees up.
    fn send_tasks_ahead(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let durations = &self.durations;
        let max = self.settings.task_ahead_max;
        let short = |task: &Task, started: std::time::Instant| {
            started.elapsed() < max && durations.get(&task.function).is_some_and(|d| *d < max)
        };
        let candidates: Vec<(ConnId, Shape, JobId)> = self
            .conns
            .iter()
            .filter_map(|(conn, c)| match &c.peer {
                Peer::Worker(w) if w.actor.is_none() && w.ahead.is_none() => match &w.state {
                    WorkerState::Busy {
                        task,
                        blocked: false,
                        ..
                    } if task.spec.max_calls == 0
                        && !task.spec.actor_creation
                        && short(task, w.started) =>
                    {
                        Some((*conn, task.shape(), task.job))
                    }
                    _ => None,
                },
                _ => None,
            })
            .collect();
        for (conn, shape, job) in candidates {
            let Some(next) = self.ready.get_mut(&shape).and_then(VecDeque::pop_front) else {
                continue;
            };
            // Same job: the worker's output goes to the driver of the task it runs.
            if next.spec.actor_creation || next.spec.max_calls > 0 || next.job != job {
                self.make_ready(next, true);
                continue;
            }
            self.send_ahead(conn, next);
        }
        self.ready.retain(|_, queue| !queue.is_empty());
    }

    /// Sends `task` to the busy worker on `conn`, to run after its current task.
    fn send_ahead(&mut self, conn: ConnId, mut task: Task) {
        // It will run in the resources of the running task.
        let held = match self.conns.get(&conn).map(|c| &c.peer) {
            Some(Peer::Worker(w)) => match &w.state {
                WorkerState::Busy { held, .. } => Some(held.resource_ids()),
                _ => None,
            },
            _ => None,
        };
        let Some(resource_ids) = held else {
            self.make_ready(task, true);
            return;
        };
        let assign = self.assignment(conn, &mut task, resource_ids);
        if let Some(Connection {
            peer: Peer::Worker(worker),
            ..
        }) = self.conns.get_mut(&conn)
        {
            worker.ahead = Some(task);
        }
        self.send_frame(conn, assign);
    }

    /// Workers that are idle or running a task without being blocked.
    fn active_workers(&self) -> usize {
        self.conns
            .values()
            .filter(|c| match &c.peer {
                // An actor's worker is not in the pool (methods take their CPU when they run).
                Peer::Worker(w) if w.actor.is_some() => false,
                Peer::Worker(w) => match &w.state {
                    WorkerState::Idle => true,
                    WorkerState::Busy { blocked, .. } => !blocked,
                    WorkerState::Retiring => false,
                },
                _ => false,
            })
            .count()
    }

    /// How many workers may be active at once: one per whole CPU, at least one.
    fn cpu_slots(&self) -> usize {
        (self
            .resources
            .total()
            .get("CPU")
            .copied()
            .unwrap_or(1.0)
            .ceil() as usize)
            .max(1)
    }

    fn next_idle(&mut self) -> Option<ConnId> {
        while let Some(conn) = self.idle.pop_front() {
            if matches!(self.conns.get(&conn).map(|c| &c.peer), Some(Peer::Worker(w)) if matches!(w.state, WorkerState::Idle))
            {
                return Some(conn);
            }
        }
        None
    }

    fn warn_infeasible(&mut self, shape: &Shape) {
        let Some(task) = self.ready.get(shape).and_then(|q| q.front()) else {
            return;
        };
        let key = format!("{}:{:?}", task.spec.function_name, task.resources);
        if !self.warned.insert(key) {
            return;
        }
        let message = format!(
            "task {} ({}) needs {:?} but this node has {:?}; it stays pending until a node can run it",
            task.spec.function_name,
            task.id,
            task.resources,
            self.resources.total()
        );
        log::warn!("{message}");
        if let Some((_, driver)) = self.jobs.get(&task.job) {
            self.send(
                *driver,
                pb::server_message::Kind::Warning(pb::Warning { message }),
            );
        }
    }

    fn dispatch(&mut self, conn: ConnId, mut task: Task) {
        if task.spec.actor_creation {
            self.bind_actor(conn, &task);
        }
        let held = self.resources.acquire(&task.resources);
        // An actor's methods run with the instances (GPUs) the actor holds for life.
        let resource_ids = self
            .actor_resource_ids(&task)
            .unwrap_or_else(|| held.resource_ids());
        let assign = self.assignment(conn, &mut task, resource_ids);
        let _ = self.gcs.send(GcsWrite::State(task.id, "running"));
        if let Some(Connection {
            peer: Peer::Worker(worker),
            ..
        }) = self.conns.get_mut(&conn)
        {
            worker.job = Some(task.job);
            worker.started = std::time::Instant::now();
            worker.state = WorkerState::Busy {
                task,
                held,
                blocked: false,
            };
        }
        self.send_frame(conn, assign);
    }

    /// The message (a frame, encoded) that gives `task` to the worker on `conn`: with the
    /// arguments held here inlined, its attempt number, and the job's environment when the
    /// worker changes job (a worker keeps the environment of the job it ran last).
    fn assignment(
        &mut self,
        conn: ConnId,
        task: &mut Task,
        resource_ids: HashMap<String, pb::ResourceIds>,
    ) -> Vec<u8> {
        self.inline_arguments(task);
        task.spec.attempt = self.retries.get(&task.id).copied().unwrap_or(0);
        let same_job = matches!(
            self.conns.get(&conn).map(|c| &c.peer),
            Some(Peer::Worker(w)) if w.job == Some(task.job)
        );
        let job = (!same_job)
            .then(|| self.jobs.get(&task.job).map(|(config, _)| config.clone()))
            .flatten();
        // The spec is lent to the message for encoding, not copied.
        let mut message = pb::ServerMessage {
            kind: Some(pb::server_message::Kind::AssignTask(pb::AssignTask {
                spec: Some(std::mem::take(&mut task.spec)),
                job,
                resource_ids,
            })),
        };
        let frame = framing::encode(&message);
        if let Some(pb::server_message::Kind::AssignTask(assign)) = message.kind.take() {
            task.spec = assign.spec.unwrap_or_default();
        }
        frame
    }

    /// Replaces arguments that are small values held here by the values themselves; an
    /// error object goes into plasma instead (the worker raises it from there).
    fn inline_arguments(&mut self, task: &mut Task) {
        for arg in &mut task.spec.args {
            let Some(common_pb::task_arg::Value::ObjectId(bytes)) = &arg.value else {
                continue;
            };
            let Ok(id) = ObjectId::from_slice(bytes) else {
                continue;
            };
            let Some(object) = self.memory.get(&id) else {
                continue;
            };
            if object.metadata == value::META_PICKLE5 {
                arg.value = Some(common_pb::task_arg::Value::Inline(object.data.to_vec()));
            } else if let Some(object) = self.memory.remove(&id) {
                self.promote(id, &object);
            }
        }
    }

    fn on_task_done(&mut self, conn: ConnId, done: pb::TaskDone) {
        if !done.results.is_empty() {
            self.accept_results(conn, done.results);
        }
        let task_id = done.task_id.as_slice();
        let Some(Connection {
            peer: Peer::Worker(worker),
            ..
        }) = self.conns.get_mut(&conn)
        else {
            log::warn!(conn; "task done from a connection that is not a worker");
            return;
        };
        let state = std::mem::replace(&mut worker.state, WorkerState::Idle);
        let WorkerState::Busy {
            task,
            held,
            blocked,
        } = state
        else {
            worker.state = state;
            log::warn!(conn; "task done from a worker that runs no task");
            return;
        };
        if task.id.as_bytes().as_slice() != task_id {
            log::warn!(conn, task:% = task.id; "task done names another task");
        }
        if let Some(actor) = worker.actor {
            let _ = self.gcs.send(GcsWrite::State(task.id, "finished"));
            self.actor_task_done(actor, &task, held, blocked);
            self.schedule();
            return;
        }
        let calls = worker.calls.entry(task.function).or_insert(0);
        *calls += 1;
        let took = worker.started.elapsed();
        let typical = self.durations.entry(task.function).or_insert(took);
        *typical = (*typical * 7 + took) / 8;
        let retire = task.spec.max_calls > 0 && *calls >= task.spec.max_calls;
        let ahead = worker.ahead.take();
        self.retries.remove(&task.id);
        let _ = self.gcs.send(GcsWrite::State(task.id, "finished"));
        // Tasks go ahead only to workers that do not retire (max_calls is 0 for both),
        // and are taken back when the worker blocks: the worker runs this one now, in the
        // resources of the finished task.
        if let Some(next) = ahead {
            if blocked {
                self.resources
                    .adjust("CPU", -held.amounts.get("CPU").copied().unwrap_or(0.0));
            }
            if let Some(Connection {
                peer: Peer::Worker(worker),
                ..
            }) = self.conns.get_mut(&conn)
            {
                worker.started = std::time::Instant::now();
                worker.state = WorkerState::Busy {
                    task: next,
                    held,
                    blocked: false,
                };
            }
            self.schedule();
            return;
        }
        if retire {
            if let Some(Connection {
                peer: Peer::Worker(worker),
                ..
            }) = self.conns.get_mut(&conn)
            {
                worker.state = WorkerState::Retiring;
            }
        }
        self.give_back(&held, blocked);
        if retire {
            self.send(
                conn,
                pb::server_message::Kind::Exit(pb::Exit {
                    reason: "max_calls reached".into(),
                }),
            );
        } else {
            self.idle.push_back(conn);
        }
        self.schedule();
    }

    fn on_blocked(&mut self, conn: ConnId, now_blocked: bool) {
        let Some(Connection {
            peer: Peer::Worker(worker),
            ..
        }) = self.conns.get_mut(&conn)
        else {
            return;
        };
        if now_blocked {
            // The task sent ahead could be what the blocked task waits for: it goes back.
            let ahead = worker.ahead.take();
            let canceled = ahead
                .as_ref()
                .map(|t| t.id.as_bytes().to_vec())
                .into_iter()
                .collect();
            self.send(
                conn,
                pb::server_message::Kind::BlockedAck(pb::BlockedAck { canceled }),
            );
            if let Some(task) = ahead {
                self.make_ready(task, true);
            }
        }
        let Some(Connection {
            peer: Peer::Worker(worker),
            ..
        }) = self.conns.get_mut(&conn)
        else {
            return;
        };
        let WorkerState::Busy { held, blocked, .. } = &mut worker.state else {
            return;
        };
        if *blocked == now_blocked {
            return;
        }
        *blocked = now_blocked;
        let cpus = held.amounts.get("CPU").copied().unwrap_or(0.0);
        self.resources
            .adjust("CPU", if now_blocked { cpus } else { -cpus });
        self.schedule();
    }

    /// Releases what a finished task held; CPUs lent out while blocked were given back
    /// already.
    fn give_back(&mut self, held: &Held, blocked: bool) {
        self.resources.release(held);
        if blocked {
            self.resources
                .adjust("CPU", -held.amounts.get("CPU").copied().unwrap_or(0.0));
        }
    }

    fn on_disconnect(&mut self, conn: ConnId) {
        let Some(connection) = self.conns.remove(&conn) else {
            return;
        };
        // What it fetched and never got is nobody's business any more.
        self.interest.retain(|_, waiting| {
            waiting.retain(|c| *c != conn);
            !waiting.is_empty()
        });
        match connection.peer {
            Peer::Driver(job) => {
                log::info!(job:% = job; "driver disconnected");
                self.jobs.remove(&job);
                self.kill_job_actors(job);
            }
            Peer::Worker(worker) if worker.actor.is_some() => {
                self.pids.remove(&worker.pid);
                let running = match worker.state {
                    WorkerState::Busy {
                        task,
                        held,
                        blocked,
                    } => {
                        self.give_back(&held, blocked);
                        Some(task)
                    }
                    _ => None,
                };
                if let Some(actor) = worker.actor {
                    self.actor_worker_died(actor, running, worker.pid);
                }
                self.schedule();
            }
            Peer::Worker(worker) => {
                self.pids.remove(&worker.pid);
                if let Some(task) = worker.ahead {
                    // Sent ahead, never started.
                    self.make_ready(task, true);
                }
                if let WorkerState::Busy {
                    task,
                    held,
                    blocked,
                } = worker.state
                {
                    self.give_back(&held, blocked);
                    self.on_worker_died(task, worker.pid);
                }
                self.schedule();
            }
            Peer::Unregistered => {}
        }
    }

    /// A worker died running `task`: retry it, or store error objects for its results.
    fn on_worker_died(&mut self, task: Task, pid: u32) {
        let attempts = self.retries.entry(task.id).or_insert(0);
        if *attempts < task.spec.max_retries {
            *attempts += 1;
            log::warn!(task:% = task.id, pid, attempt = *attempts; "worker died running {}; retrying", task.spec.function_name);
            self.make_ready(task, true);
            return;
        }
        self.retries.remove(&task.id);
        let message = format!(
            "the worker (pid {pid}) running task {} ({}) on node {} died",
            task.spec.function_name, task.id, self.settings.node_id
        );
        log::warn!("{message}; its results become errors");
        self.store_errors(&task, value::ERROR_WORKER_DIED, &message);
    }

    /// Stores error objects of `kind` in place of every result of `task`, so that
    /// `ray.get` raises instead of waiting forever.
    fn store_errors(&self, task: &Task, kind: &str, message: &str) {
        let metadata = value::error_metadata(kind);
        for id in task.return_ids() {
            if let Err(e) = self.plasma.put(id, message.as_bytes(), &metadata) {
                if !matches!(e, rayd_plasma_client::ClientError::ObjectExists(_)) {
                    log::error!(object:% = id; "cannot store the error object: {e}");
                }
            }
        }
        let _ = self.gcs.send(GcsWrite::State(task.id, "failed"));
    }

    fn on_output(&self, pid: u32, line: String, stderr: bool) {
        let job = self
            .pids
            .get(&pid)
            .and_then(|c| match &self.conns.get(c)?.peer {
                Peer::Worker(w) => w.job,
                _ => None,
            });
        let target = job.and_then(|job| self.jobs.get(&job));
        match target {
            Some((config, driver)) if !config.redirect_worker_output => {
                self.send(
                    *driver,
                    pb::server_message::Kind::WorkerOutput(pb::WorkerOutput { pid, line, stderr }),
                );
            }
            _ => log::info!(pid, stderr; "worker: {line}"),
        }
    }

    /// Tells every worker to exit (the node stops).
    pub fn stop_workers(&self) {
        let exit = framing::encode(&pb::ServerMessage {
            kind: Some(pb::server_message::Kind::Exit(pb::Exit {
                reason: "the raylet is stopping".into(),
            })),
        });
        for connection in self.conns.values() {
            if matches!(connection.peer, Peer::Worker(_) | Peer::Driver(_)) {
                let _ = connection.tx.send(exit.clone());
            }
        }
    }

    /// The worker pids, for shutdown.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pids
            .keys()
            .chain(self.starting.iter())
            .copied()
            .collect()
    }

    /// Total resources, for the node table.
    pub fn total(&self) -> BTreeMap<String, f64> {
        self.resources.total().clone()
    }
}
