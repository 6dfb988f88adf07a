//! The local scheduler's core: a state machine that does no I/O. Events come in (a
//! message on a connection, an object sealed or gone, a worker process's start or end,
//! a tick) with the current time; effects go out (send a frame, start or kill a worker,
//! put an object, pull one, write to the GCS), carried out by the raylet's I/O layer
//! (`io.rs`). So every scheduling rule is testable from scripted events, in
//! microseconds (see `tests.rs`).
//!
//! A submitted task waits until every object-ID argument is local ([`deps`]), then in the
//! ready queue of its resource shape ([`ready`]) until its resources are free and a worker
//! is idle ([`pool`]), then runs. A worker that blocks in `ray.get` lends its CPUs to
//! others and more workers start, so nested tasks never deadlock the node. A worker that
//! dies mid-task has its task retried (up to `max_retries`) or its results replaced by
//! error objects, so `ray.get` never hangs on it. Small results stay in memory
//! ([`inline`]); actors have workers of their own ([`actors`]); drivers' jobs are in
//! [`jobs`]. An argument of a queued task that leaves the store sends the task back to
//! waiting and the object is asked for again; one that cannot be had becomes an error
//! object, which the task then raises.

pub mod actors;
pub mod cluster;
pub mod deps;
pub mod inline;
pub mod jobs;
pub mod pool;
pub mod ready;
pub mod task;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rayd_common::framing;
use rayd_common::id::{ActorId, JobId, NodeId, ObjectId, TaskId, WorkerId};
use rayd_common::proto::common::v1 as common_pb;
use rayd_common::proto::raylet::v1 as pb;
use rayd_common::recent::RecentSet;
use rayd_common::value;
use rayd_gcs::{ActorInfo, TaskEntry};

use rayd_common::resources::{Amounts, Held, Resources};

use actors::{actor_id_of, ActorState, Actors, PIPELINE_DEPTH};
use cluster::Cluster;
use deps::Dependencies;
use inline::InlineResults;
use jobs::Jobs;
use pool::{Exit, Pool, WorkerState};
use ready::ReadyQueues;
pub use task::{Task, TaskState};

/// A connection's number, unique for the raylet's life.
pub type ConnId = u64;

/// Workers started beyond the CPU slots for tasks that need no CPU.
const MAX_CPU_FREE_WORKERS: usize = 32;

/// Most raylets a task is forwarded through before it stays where it is.
const MAX_HOPS: u32 = 3;
/// Objects freed everywhere that the scheduler remembers (see `Scheduler::freed`).
const FREED_MAX: usize = 65_536;

/// How long a pool worker beyond the node's usual pool stays idle before it is told to
/// exit.
pub const IDLE_WORKER_EXIT: Duration = Duration::from_secs(10);

/// Something the scheduler reacts to.
// Events move once through a channel; boxing the task-carrying variant would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Event {
    Connected {
        conn: ConnId,
    },
    Message {
        conn: ConnId,
        message: pb::client_message::Kind,
    },
    Disconnected {
        conn: ConnId,
    },
    ObjectSealed(ObjectId),
    /// The object left the store (evicted or deleted).
    ObjectDeleted(ObjectId),
    /// A pull found no copy of the object anywhere, and it cannot be rebuilt (`reason`).
    ObjectLost {
        id: ObjectId,
        reason: String,
    },
    /// A pull found no copy of the object anywhere, and a program had freed it.
    ObjectFreed(ObjectId),
    /// An object needed here was lost, and this node claimed the re-run of the task that
    /// made it (lineage): the task runs again, its results replace the lost copies.
    Rerun {
        spec: common_pb::TaskSpec,
    },
    /// A worker asked for by [`Effect::StartWorker`] runs as `pid`.
    WorkerSpawned {
        pid: u32,
    },
    /// A worker asked for could not be started.
    WorkerSpawnFailed {
        error: String,
    },
    WorkerExited {
        pid: u32,
        status: String,
    },
    WorkerOutput {
        pid: u32,
        line: String,
        stderr: bool,
    },
    /// Periodic: retries what waits for time (worker starts backed off).
    Tick,
    /// Another node joined (or was seen for the first time) with these resources.
    NodeAdded {
        node: NodeId,
        total: Amounts,
    },
    /// Another node's heartbeat.
    NodeHeartbeat {
        node: NodeId,
        available: Amounts,
        queued: u64,
    },
    /// Another node left, or was declared dead: the tasks forwarded there are redone
    /// and the actors created there restarted (when their retries allow).
    NodeRemoved {
        node: NodeId,
    },
    /// A GCS shard restarted empty: the actor entries of this node's actors are written
    /// again (other nodes find the actors through them).
    GcsShardRestarted,
    /// Another raylet forwarded a task to run here; `home` gets its results.
    TaskForwarded {
        spec: common_pb::TaskSpec,
        home: NodeId,
        hops: u32,
        job: Option<pb::JobConfig>,
    },
    /// A task forwarded from here could not be handed to `node`.
    ForwardFailed {
        task: TaskId,
        node: NodeId,
        error: String,
    },
    /// `node` took these tasks forwarded from here (its acknowledgement).
    ForwardsTaken {
        node: NodeId,
        tasks: Vec<TaskId>,
    },
    /// Whether a global scheduler is up (tasks to place elsewhere then go through it).
    GlobalScheduler {
        available: bool,
    },
    /// A global scheduler placed a task spilled from here on `node`.
    Spilled {
        task: TaskId,
        node: NodeId,
    },
    /// No global scheduler took a task spilled from here: it is placed from this
    /// raylet's own view.
    SpillFailed {
        task: TaskId,
        error: String,
    },
    /// A worker on another node printed a line while running a task of `job`.
    RemoteOutput {
        job: JobId,
        pid: u32,
        line: String,
        stderr: bool,
    },
    /// Another raylet asks to kill an actor that lives here.
    KillActor {
        actor: ActorId,
        reason: String,
    },
    /// Where an actor lives, as the GCS says (`None`: nowhere to be found).
    ActorLocated {
        actor: ActorId,
        node: Option<NodeId>,
    },
    /// A task forwarded from here finished on `node`: its small results.
    RemoteTaskFinished {
        task: TaskId,
        node: NodeId,
        results: Vec<pb::InlineObject>,
    },
    /// A task forwarded from here was handed on to `node` by the node it went to.
    TaskMoved {
        task: TaskId,
        node: NodeId,
    },
    /// A program on another node freed these objects: this node's copies go too.
    FreeObjects(Vec<ObjectId>),
}

/// What the scheduler asks the I/O layer to do.
#[derive(Debug)]
pub enum Effect {
    /// Send an encoded frame on a connection.
    Send { conn: ConnId, frame: Vec<u8> },
    /// Start a worker process (answered by `WorkerSpawned` or `WorkerSpawnFailed`).
    StartWorker,
    /// Kill a worker process now (`ray.kill` of its actor).
    KillWorker { pid: u32 },
    /// Put an object into the node's store (a small result for readers of plasma, or an
    /// error object in place of a task's results).
    Put {
        id: ObjectId,
        object: Arc<pb::InlineObject>,
    },
    /// Get the object from another node's store (answered by its seal, or
    /// `ObjectLost`); waits for a copy to exist when none was ever made.
    Pull { id: ObjectId },
    /// The object became local by another way: the pull can stop.
    StopPull { id: ObjectId },
    /// A program here freed these objects: have the other nodes drop them (every node,
    /// or those that the object table lists with a copy).
    FreeElsewhere { ids: Vec<ObjectId>, all_nodes: bool },
    /// Drop these objects from this node's store (a program on another node freed them).
    DeleteHere { ids: Vec<ObjectId> },
    /// Hand a task to another node's raylet (answered by `ForwardFailed` when it cannot).
    Forward {
        node: NodeId,
        spec: Box<common_pb::TaskSpec>,
        home: NodeId,
        hops: u32,
        job: Option<pb::JobConfig>,
    },
    /// Hand a task to a global scheduler, which places and forwards it (answered by
    /// `Spilled` or `SpillFailed`).
    Spill {
        spec: Box<common_pb::TaskSpec>,
        home: NodeId,
        hops: u32,
        job: Option<pb::JobConfig>,
    },
    /// Send a worker's line to the node of its job's driver.
    ForwardOutput {
        home: NodeId,
        job: JobId,
        pid: u32,
        line: String,
        stderr: bool,
    },
    /// Find the node of an actor (answered by `ActorLocated`).
    LocateActor { actor: ActorId },
    /// Ask `node` to kill an actor that lives there.
    KillRemoteActor {
        node: NodeId,
        actor: ActorId,
        reason: String,
    },
    /// Tell a task's home (another node) that it was handed on from here to `node`.
    TaskMoved {
        home: NodeId,
        task: TaskId,
        node: NodeId,
    },
    /// Tell a task's home (another node) that it finished here, with its small results.
    ReturnResults {
        home: NodeId,
        task: TaskId,
        results: Vec<pb::InlineObject>,
    },
    /// Write to the GCS (batched by the writer).
    Gcs(GcsWrite),
}

/// A write for the GCS.
#[derive(Debug)]
pub enum GcsWrite {
    /// A task's spec, when it arrives.
    Task(TaskEntry),
    /// A task's new state.
    State(TaskId, TaskState),
    /// An actor's entry.
    Actor(ActorInfo),
    /// An error for the driver of `job` (`ray.error_info()`): `kind` is machine-readable,
    /// e.g. `worker_died`.
    Error {
        job: JobId,
        kind: &'static str,
        message: String,
    },
}

/// Where the node stands, for heartbeats and `rayd status`.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub available: Amounts,
    pub queued: u64,
    pub running: u64,
    /// Of `queued`: waiting for arguments.
    pub waiting: u64,
    /// Of `queued`: arguments local, waiting for resources or a worker.
    pub ready: u64,
    /// Registered worker processes, and those of them idle.
    pub workers: u64,
    pub idle_workers: u64,
}

/// What the scheduler needs to know about its node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub node_id: NodeId,
    pub node_ip_address: String,
    pub plasma_socket: String,
    pub redis_address: String,
    pub redis_password: String,
    /// Workers kept alive even when idle.
    pub min_workers: usize,
    /// Tasks are sent ahead only behind tasks shorter than this (see `send_tasks_ahead`).
    pub task_ahead_max: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Peer {
    Unregistered,
    Driver(JobId),
    Worker,
}

/// The raylet's scheduling state.
#[derive(Debug)]
pub struct Scheduler {
    settings: NodeSettings,
    resources: Resources,
    peers: HashMap<ConnId, Peer>,
    pool: Pool,
    jobs: Jobs,
    deps: Dependencies,
    ready: ReadyQueues,
    inline: InlineResults,
    actors: Actors,
    /// The other nodes, from their heartbeats.
    cluster: Cluster,
    /// Tasks submitted here that run on another node: where, and the task (its results'
    /// IDs and its submitter).
    /// (The node is unknown while a global scheduler places it.)
    forwarded: HashMap<TaskId, (Option<NodeId>, Task)>,
    /// Tasks of other homes handed on from here (forwarded or spilled), until the next
    /// node or a global scheduler took them: one that was not taken is placed again.
    relayed: HashMap<TaskId, Task>,
    /// Nodes declared dead (IDs are never reused): a task reported handed on to one of
    /// them is redone at once.
    departed: HashSet<NodeId>,
    /// A global scheduler is up.
    global_scheduler: bool,
    /// Actors that live on another node (their creation was forwarded from here, or the
    /// GCS said where they are), with their job: their calls are forwarded there.
    remote_actors: HashMap<ActorId, (NodeId, JobId)>,
    /// The creation tasks of the actors that this node created on another node, with the
    /// restarts they have left: when that node dies, the actor is made again from them.
    remote_creations: HashMap<ActorId, (Task, u32)>,
    /// Calls to actors created from here (with restarts left) that could not reach the
    /// actor's node, with the calls made after them, in order: they go to the actor
    /// again when its node beats, or to the restarted actor when its node is dead.
    suspended: HashMap<ActorId, Vec<Task>>,
    /// Tasks running again to rebuild lost objects: their small results go into the
    /// store too, where other nodes waiting for them find them.
    reruns: std::collections::HashSet<TaskId>,
    /// Calls to actors whose node is being looked up, in order.
    locating: HashMap<ActorId, Vec<Task>>,
    /// Attempts of tasks retried after their worker died.
    retries: HashMap<TaskId, u32>,
    /// Objects a program freed everywhere (`ray.internal.free`), here or on another node:
    /// a pull of one ends as freed at once, instead of finding a copy on a node that has
    /// not dropped its own yet.
    freed: RecentSet<ObjectId>,
    effects: Vec<Effect>,
    /// The time of the event being handled.
    now: Instant,
}

impl Scheduler {
    pub fn new(settings: NodeSettings, total: Amounts, now: Instant) -> Self {
        Self {
            settings,
            resources: Resources::new(total),
            peers: HashMap::new(),
            pool: Pool::new(now),
            jobs: Jobs::default(),
            deps: Dependencies::default(),
            ready: ReadyQueues::default(),
            inline: InlineResults::new(inline::INLINE_STORE_BYTES),
            actors: Actors::default(),
            cluster: Cluster::default(),
            forwarded: HashMap::new(),
            relayed: HashMap::new(),
            departed: HashSet::new(),
            global_scheduler: false,
            remote_actors: HashMap::new(),
            remote_creations: HashMap::new(),
            suspended: HashMap::new(),
            reruns: std::collections::HashSet::new(),
            locating: HashMap::new(),
            retries: HashMap::new(),
            freed: RecentSet::new(FREED_MAX),
            effects: Vec::new(),
            now,
        }
    }

    /// The effects of the events handled since the last call, in order.
    pub fn take_effects(&mut self) -> std::vec::Drain<'_, Effect> {
        self.effects.drain(..)
    }

    /// The node's free resources now.
    pub fn available(&self) -> &Amounts {
        self.resources.available()
    }

    /// The node's figures now.
    pub fn snapshot(&self) -> Snapshot {
        let (workers, idle_workers) = self.pool.counts();
        Snapshot {
            available: self.resources.available().clone(),
            queued: (self.ready.len() + self.deps.parked()) as u64,
            running: self.pool.running() as u64,
            waiting: self.deps.parked() as u64,
            ready: self.ready.len() as u64,
            workers: workers as u64,
            idle_workers: idle_workers as u64,
        }
    }

    /// Starts the workers kept ahead of demand.
    pub fn prestart(&mut self, now: Instant) {
        self.now = now;
        for _ in 0..self.settings.min_workers {
            self.start_worker();
        }
    }

    /// Handles one event that happened at `now`.
    pub fn handle(&mut self, now: Instant, event: Event) {
        self.now = now;
        match event {
            Event::Connected { conn } => {
                self.peers.insert(conn, Peer::Unregistered);
            }
            Event::Message { conn, message } => self.on_message(conn, message),
            Event::Disconnected { conn } => self.on_disconnect(conn),
            Event::ObjectSealed(id) => {
                // Whoever fetched it follows the store too.
                self.inline.take_interest(&id);
                self.mark_local(id);
                self.schedule();
            }
            Event::ObjectDeleted(id) => self.on_deleted(id),
            Event::ObjectLost { id, reason } => self.on_lost(id, &reason),
            Event::ObjectFreed(id) => self.on_freed(id),
            Event::FreeObjects(ids) => {
                self.note_freed(&ids);
                self.effects.push(Effect::DeleteHere { ids });
            }
            Event::Rerun { spec } => self.on_rerun(spec),
            Event::WorkerSpawned { pid } => {
                log::debug!(pid; "started a worker");
                self.pool.spawned(pid);
            }
            Event::WorkerSpawnFailed { error } => {
                log::error!("cannot start a worker: {error}");
                self.pool.spawn_failed();
            }
            Event::WorkerExited { pid, status } => {
                match self.pool.exited(pid, now) {
                    Exit::BeforeRegistering(backoff) => {
                        log::error!(pid, status = status.as_str(), failures = self.pool.failed_starts();
                            "worker exited before it registered (see its output above); next start in {backoff:?}");
                    }
                    Exit::Registered(conn) => {
                        log::warn!(pid, status = status.as_str(); "worker exited");
                        self.on_disconnect(conn);
                    }
                    Exit::Unknown => {
                        log::debug!(pid, status = status.as_str(); "worker process ended")
                    }
                }
                self.schedule();
            }
            Event::WorkerOutput { pid, line, stderr } => self.on_output(pid, line, stderr),
            Event::Tick => {
                self.retire_idle_workers();
                self.schedule();
            }
            Event::NodeAdded { node, total } => {
                log::info!(node:% = node, resources:? = total; "node joined");
                self.cluster.add(node, total);
                self.schedule();
            }
            Event::NodeHeartbeat {
                node,
                available,
                queued,
            } => {
                if self.cluster.heartbeat(node, available, queued) && !self.ready.is_empty() {
                    self.schedule();
                }
                self.resume_calls(node);
            }
            Event::NodeRemoved { node } => self.on_node_dead(node),
            Event::GcsShardRestarted => {
                for id in self.actors.ids() {
                    self.record_actor(id);
                }
            }
            Event::TaskForwarded {
                spec,
                home,
                hops,
                job,
            } => self.on_forwarded(spec, home, hops, job),
            Event::ForwardFailed { task, node, error } => {
                log::warn!(task:% = task, node:% = node; "cannot forward a task: {error}; it stays here");
                self.cluster.refused(&node);
                if let Some(task) = self.take_handed_on(&task) {
                    self.forward_failed(task, node);
                    self.schedule();
                }
            }
            Event::ForwardsTaken { tasks, .. } => {
                for task in tasks {
                    self.relayed.remove(&task);
                }
            }
            Event::RemoteTaskFinished {
                task,
                node,
                results,
            } => self.on_remote_finished(task, node, results),
            Event::TaskMoved { task, node } => self.on_moved(task, node),
            Event::KillActor { actor, reason } => self.kill_actor(actor, reason),
            Event::RemoteOutput {
                job,
                pid,
                line,
                stderr,
            } => self.print_for(Some(job), pid, line, stderr),
            Event::GlobalScheduler { available } => {
                if available != self.global_scheduler {
                    log::info!(available; "global scheduler");
                }
                self.global_scheduler = available;
            }
            Event::Spilled { task, node } => {
                // (The node may have died before this reply came.)
                self.on_moved(task, node);
                if let Some(home) = self.relayed.remove(&task).and_then(|t| t.home) {
                    self.effects.push(Effect::TaskMoved { home, task, node });
                }
            }
            Event::SpillFailed { task, error } => {
                log::warn!(task:% = task; "no global scheduler took a task: {error}; placing it here");
                if let Some(task) = self.take_handed_on(&task) {
                    // A task this node can run waits here unless another node has room
                    // now (a heartbeat spills it again when one has); one it can never run
                    // goes to a node that can.
                    let wait_here = self.resources.feasible(&task.resources);
                    match self.cluster.place(&task.resources, wait_here) {
                        Some(node) => self.forward(node, task),
                        None => self.make_ready(task, true),
                    }
                    self.schedule();
                }
            }
            Event::ActorLocated { actor, node } => self.on_actor_located(actor, node),
        }
    }

    fn start_worker(&mut self) {
        if self.pool.request_start(self.now) {
            self.effects.push(Effect::StartWorker);
        }
    }

    fn send(&mut self, conn: ConnId, kind: pb::server_message::Kind) {
        let frame = framing::encode(&pb::ServerMessage { kind: Some(kind) });
        self.effects.push(Effect::Send { conn, frame });
    }

    fn gcs(&mut self, write: GcsWrite) {
        self.effects.push(Effect::Gcs(write));
    }

    fn set_state(&mut self, task: TaskId, state: TaskState) {
        self.gcs(GcsWrite::State(task, state));
    }

    fn on_message(&mut self, conn: ConnId, message: pb::client_message::Kind) {
        use pb::client_message::Kind;
        match message {
            Kind::Register(register) => self.on_register(conn, register),
            Kind::SubmitTask(spec) => self.on_submit(conn, spec),
            Kind::TaskDone(done) => self.on_task_done(conn, done),
            Kind::Fetch(fetch) => self.on_fetch(conn, &fetch.object_ids),
            Kind::Free(free) => self.on_free(conn, &free.object_ids, free.all_nodes),
            Kind::Blocked(_) => self.on_blocked(conn, true),
            Kind::Unblocked(_) => self.on_blocked(conn, false),
            Kind::KillActor(kill) => match ActorId::from_slice(&kill.actor_id) {
                Ok(id) => self.kill_actor(id, format!("actor {id} was killed with ray.kill")),
                Err(e) => log::warn!(conn; "refusing to kill a malformed actor id: {e}"),
            },
        }
    }

    fn on_register(&mut self, conn: ConnId, register: pb::Register) {
        if !self.peers.contains_key(&conn) {
            return;
        }
        if register.is_worker {
            let id =
                WorkerId::from_slice(&register.worker_id).unwrap_or_else(|_| WorkerId::random());
            self.pool.register(conn, id, register.pid, self.now);
            self.peers.insert(conn, Peer::Worker);
            log::debug!(pid = register.pid; "worker registered");
        } else {
            let config = register.job.unwrap_or_default();
            let job = JobId::from_slice(&config.job_id).unwrap_or_else(|_| JobId::random());
            self.peers.insert(conn, Peer::Driver(job));
            log::info!(job:% = job, pid = register.pid; "driver connected");
            self.jobs.add(job, config, conn);
        }
        let registered = pb::Registered {
            node_id: self.settings.node_id.as_bytes().to_vec(),
            plasma_socket: self.settings.plasma_socket.clone(),
            redis_address: self.settings.redis_address.clone(),
            node_ip_address: self.settings.node_ip_address.clone(),
            redis_password: self.settings.redis_password.clone(),
        };
        self.send(conn, pb::server_message::Kind::Registered(registered));
        self.schedule();
    }

    fn on_submit(&mut self, conn: ConnId, spec: common_pb::TaskSpec) {
        match Task::from_spec(spec) {
            Ok(mut task) => {
                task.submitter = Some(conn);
                if task.is_actor_creation() {
                    self.create_actor(task)
                } else if task.is_actor_call() {
                    self.submit_actor_call(task)
                } else {
                    self.submit(task)
                }
            }
            Err(refused) => {
                let (spec, e) = *refused;
                // The submitter's `ray.get` raises instead of waiting forever.
                let message = format!("task {} was refused: {e}", spec.function_name);
                log::warn!(conn; "{message}");
                let metadata = value::error_metadata(value::ERROR_INVALID_TASK);
                for id in task::refused_return_ids(&spec) {
                    self.put_error(id, &metadata, &message);
                }
            }
        }
    }

    fn submit(&mut self, task: Task) {
        if self.jobs.has_ended(&task.job) {
            log::debug!(task:% = task.id; "dropping a task of a job whose driver left");
            return;
        }
        let entry = TaskEntry {
            task_id: task.id,
            spec: prost::Message::encode_to_vec(&task.spec).into(),
            state: TaskState::Waiting.as_str().into(),
            node: Some(self.settings.node_id),
        };
        self.gcs(GcsWrite::Task(entry));
        let missing = self.deps.missing(&task);
        if missing.is_empty() {
            self.ready.push(task, false);
            self.schedule();
        } else {
            for id in &missing {
                self.pull_unless_made_here(*id);
            }
            self.deps.park(task, missing);
        }
    }

    /// Whether the task `id` is known here and not finished: queued, waiting, running, or
    /// forwarded from here (its results will come back).
    fn pending_here(&self, id: &TaskId) -> bool {
        self.deps.contains(id)
            || self.ready.contains(id)
            || self.forwarded.contains_key(id)
            || self.pool.runs(id)
            || self.actors.has_call(id)
    }

    /// Asks for `id` from other nodes, unless a task here will make it (or bring it back).
    fn pull_unless_made_here(&mut self, id: ObjectId) {
        if self.deps.is_local(&id) || self.pending_here(&id.task_id()) {
            return;
        }
        if self.deps.want(id) {
            self.pull(id);
        }
    }

    /// Gets `id` from another node, unless a program freed it everywhere.
    fn pull(&mut self, id: ObjectId) {
        if self.freed.contains(&id) {
            self.on_freed(id);
        } else {
            self.effects.push(Effect::Pull { id });
        }
    }

    /// A program here freed objects from this node's store, and wants them gone from the
    /// other nodes too.
    fn on_free(&mut self, conn: ConnId, ids: &[Vec<u8>], all_nodes: bool) {
        let mut freed = Vec::with_capacity(ids.len());
        for bytes in ids {
            match ObjectId::from_slice(bytes) {
                Ok(id) => freed.push(id),
                Err(_) => log::warn!(conn; "ignoring a free of a malformed object id"),
            }
        }
        if !freed.is_empty() {
            self.note_freed(&freed);
            self.effects.push(Effect::FreeElsewhere {
                ids: freed,
                all_nodes,
            });
        }
    }

    /// Remembers `ids` as freed everywhere; a pull of one under way ends as freed now.
    fn note_freed(&mut self, ids: &[ObjectId]) {
        for id in ids {
            self.freed.insert(*id);
            if self.deps.is_pulling(id) {
                self.on_freed(*id);
            }
        }
    }

    /// Another raylet forwarded a task: it runs here like one submitted here, and its
    /// results are reported to its home.
    fn on_forwarded(
        &mut self,
        spec: common_pb::TaskSpec,
        home: NodeId,
        hops: u32,
        job: Option<pb::JobConfig>,
    ) {
        match Task::from_spec(spec) {
            Ok(mut task) => {
                // A task spilled from here may be placed back here: it is the task it was
                // (with its submitter, whom its results go to).
                if home == self.settings.node_id {
                    if let Some((_, mut original)) = self.forwarded.remove(&task.id) {
                        // Placed here on purpose: it stays.
                        original.hops = MAX_HOPS;
                        self.make_ready(original, true);
                        self.schedule();
                        return;
                    }
                }
                task.home = (home != self.settings.node_id).then_some(home);
                task.hops = hops;
                if let Some(job) = job {
                    self.jobs.add_remote(task.job, job, home);
                }
                if task.is_actor_creation() {
                    self.create_actor(task);
                } else if task.is_actor_call() {
                    self.submit_actor_call(task);
                } else {
                    self.submit(task);
                }
            }
            Err(refused) => {
                let (spec, e) = *refused;
                log::warn!("refusing a forwarded task {}: {e}", spec.function_name);
            }
        }
    }

    /// A task forwarded from here finished on `node`: its small results are taken as if a
    /// worker here had sent them; the others (and error objects) are in that node's store,
    /// pulled here when someone here waits for them.
    fn on_remote_finished(&mut self, id: TaskId, node: NodeId, results: Vec<pb::InlineObject>) {
        let Some((_, task)) = self.forwarded.remove(&id) else {
            log::debug!(task:% = id, node:% = node; "a task finished elsewhere that was not forwarded from here");
            return;
        };
        let inline: Vec<ObjectId> = results
            .iter()
            .filter_map(|o| ObjectId::from_slice(&o.object_id).ok())
            .collect();
        self.take_results(task.id, task.spec.num_returns, task.submitter, results);
        // Its submitter (a driver, or a worker's nested task) expects the results
        // unasked: the large ones are brought here for it.
        let expected = task.submitter.is_some_and(|c| self.peers.contains_key(&c));
        for id in task.return_ids() {
            if inline.contains(&id) || self.deps.is_local(&id) {
                continue;
            }
            if (expected || self.deps.awaited(&id) || self.inline.has_interest(&id))
                && self.deps.want(id)
            {
                self.pull(id);
            }
        }
        self.schedule();
    }

    /// `id` is local now: the tasks that waited for it may be ready.
    fn mark_local(&mut self, id: ObjectId) {
        let (ready, pulled) = self.deps.arrived(id);
        for task in ready {
            self.ready.push(task, false);
        }
        if pulled {
            self.effects.push(Effect::StopPull { id });
        }
    }

    /// `id` left the store: queued tasks that take it wait for it again, and it is asked
    /// for from elsewhere when anyone here needs it.
    fn on_deleted(&mut self, id: ObjectId) {
        // A small result still held in memory stays local.
        if self.inline.get(&id).is_some() || !self.deps.departed(&id) {
            return;
        }
        let taken = self.ready.take_dependents(&id);
        let needed = !taken.is_empty() || self.actors.awaits(&id) || self.inline.has_interest(&id);
        for task in taken {
            log::info!(task:% = task.id, object:% = id; "an argument of a queued task left the store; the task waits for it again");
            let missing = self.deps.missing(&task);
            self.set_state(task.id, TaskState::Waiting);
            self.deps.park(task, missing);
        }
        if needed && self.deps.want(id) {
            self.pull(id);
        }
    }

    /// No copy of `id` is left: an error object takes its place, so that every task and
    /// `get` waiting for it raises `ObjectLostError` instead of waiting forever.
    fn on_lost(&mut self, id: ObjectId, reason: &str) {
        if self.deps.is_local(&id) {
            return;
        }
        let message = format!(
            "object {id} was lost: no copy is left in the cluster (evicted or its node died), and {reason}"
        );
        log::warn!("{message}");
        let metadata = value::error_metadata(value::ERROR_OBJECT_LOST);
        self.put_error(id, &metadata, &message);
    }

    /// No copy of `id` is left since a program freed it: an error object takes its place
    /// (`ObjectFreedError`), as for a lost one.
    fn on_freed(&mut self, id: ObjectId) {
        if self.deps.is_local(&id) {
            return;
        }
        log::info!(object:% = id; "a freed object was asked for");
        let object = freed_error(id);
        self.promote(id, Arc::new(object));
    }

    /// This node claimed the re-run of a task whose objects were lost: it runs again like a
    /// task submitted here by nobody (its results are kept for whoever waits for them).
    fn on_rerun(&mut self, spec: common_pb::TaskSpec) {
        match Task::from_spec(spec) {
            Ok(task) => {
                if self.pending_here(&task.id) {
                    return;
                }
                log::warn!(task:% = task.id, attempt = task.spec.attempt;
                    "rebuilding lost objects: running {} again from its lineage", task.spec.function_name);
                self.reruns.insert(task.id);
                // The pull that found the loss ended; the rebuilt copy is pulled anew
                // when it is made on another node.
                for id in task.return_ids() {
                    self.deps.pull_ended(&id);
                }
                self.submit(task);
            }
            Err(refused) => {
                let (spec, e) = *refused;
                let metadata = value::error_metadata(value::ERROR_OBJECT_LOST);
                let message = format!(
                    "an object of task {} was lost, and its lineage is unusable: {e}",
                    spec.function_name
                );
                for id in task::refused_return_ids(&spec) {
                    self.put_error(id, &metadata, &message);
                }
            }
        }
    }

    /// `node` died (or was declared dead): what it ran for this node is redone. Tasks go
    /// again while their `max_retries` allow, actors created there from here are made
    /// again while their `max_restarts` allow, and calls that were on their way to an
    /// actor there fail with the actor (as in Ray, a call is not run twice).
    fn on_node_dead(&mut self, node: NodeId) {
        log::warn!(node:% = node; "node died: redoing what it ran for this node");
        self.cluster.remove(&node);
        self.departed.insert(node);
        let lost: Vec<TaskId> = self
            .forwarded
            .iter()
            .filter(|(_, (at, _))| *at == Some(node))
            .map(|(id, _)| *id)
            .collect();
        let lost: Vec<Task> = lost
            .iter()
            .filter_map(|id| self.forwarded.remove(id).map(|(_, task)| task))
            .collect();
        let actors: Vec<ActorId> = self
            .remote_actors
            .iter()
            .filter(|(_, (at, _))| *at == node)
            .map(|(id, _)| *id)
            .collect();
        for id in actors {
            self.remote_actor_lost(id, node);
        }
        for task in lost {
            self.redo(task, node);
        }
        self.schedule();
    }

    /// A task forwarded from here was placed on `node` (by a global scheduler, or handed
    /// on by a relay): it is redone if `node` dies, or now if it is dead already. (Where two relays' reports cross, the
    /// later one read wins: the task may be a hop further than recorded.)
    fn on_moved(&mut self, task: TaskId, node: NodeId) {
        if self.departed.contains(&node) {
            if let Some((_, lost)) = self.forwarded.remove(&task) {
                self.redo(lost, node);
                self.schedule();
            }
        } else if let Some((placed, _)) = self.forwarded.get_mut(&task) {
            *placed = Some(node);
        }
    }

    /// `node` beats: the calls suspended for its actors go to them again, in order.
    fn resume_calls(&mut self, node: NodeId) {
        if self.suspended.is_empty() {
            return;
        }
        let actors: Vec<ActorId> = self
            .suspended
            .keys()
            .filter(|id| {
                self.remote_actors
                    .get(id)
                    .is_some_and(|(at, _)| *at == node)
            })
            .copied()
            .collect();
        for id in actors {
            for call in self.suspended.remove(&id).unwrap_or_default() {
                self.forward(node, call);
            }
        }
    }

    /// A task forwarded to `node` was lost with it.
    fn redo(&mut self, task: Task, node: NodeId) {
        if self.jobs.has_ended(&task.job) {
            self.set_state(task.id, TaskState::Cancelled);
            return;
        }
        if task.is_actor_creation() {
            // Made again with its actor (`remote_actor_lost`).
            return;
        }
        if task.is_actor_call() {
            let reason = format!(
                "node {node}, where the actor of this call ({}) lived, died",
                task.spec.function_name
            );
            self.store_errors(&task, value::ERROR_ACTOR_DIED, &reason);
            return;
        }
        let attempts = self.retries.entry(task.id).or_insert(0);
        if *attempts < task.spec.max_retries {
            *attempts += 1;
            log::warn!(task:% = task.id, node:% = node, attempt = *attempts;
                "node died running {}; retrying", task.spec.function_name);
            self.make_ready(task, true);
            return;
        }
        self.retries.remove(&task.id);
        let message = format!(
            "node {node} died running task {} ({}), and its max_retries ({}) are used up",
            task.spec.function_name, task.id, task.spec.max_retries
        );
        log::warn!("{message}; its results become errors");
        self.store_errors(&task, value::ERROR_WORKER_DIED, &message);
        self.gcs(GcsWrite::Error {
            job: task.job,
            kind: "node_died",
            message,
        });
    }

    /// Actor `id` lived on `node`, which died. Created from here: it is made again (on
    /// any node that can hold it) while its restarts allow, or is dead for good. Created
    /// elsewhere: its next calls look it up again (its creator restarts it or says it is
    /// dead).
    fn remote_actor_lost(&mut self, id: ActorId, node: NodeId) {
        self.remote_actors.remove(&id);
        let Some((creation, restarts_left)) = self.remote_creations.remove(&id) else {
            return;
        };
        if self.jobs.has_ended(&creation.job) {
            return;
        }
        let task = self.actors.create(id, creation);
        let suspended = self.suspended.remove(&id).unwrap_or_default();
        if restarts_left == 0 {
            let reason = format!(
                "actor {id} ({}) died with node {node}, and it has no restarts left (max_restarts)",
                task.spec.function_name
            );
            log::warn!("{reason}");
            for call in &suspended {
                self.store_errors(call, value::ERROR_ACTOR_DIED, &reason);
            }
            self.actors.kill(id, reason);
            self.record_actor(id);
            return;
        }
        for call in suspended {
            self.actors.enqueue(id, call);
        }
        if let Some(actor) = self.actors.get_mut(&id) {
            actor.restarts_left = restarts_left - 1;
        }
        log::warn!(actor:% = id, node:% = node, restarts_left = restarts_left - 1;
            "actor's node died; restarting it");
        self.record_actor(id);
        self.make_ready(task, true);
    }

    fn is_driver(&self, conn: ConnId) -> bool {
        matches!(self.peers.get(&conn), Some(Peer::Driver(_)))
    }

    /// Takes the small results of the task running on `conn`: they go to the drivers
    /// waiting for them, into plasma for the workers waiting for them, and stay in memory.
    fn accept_results(&mut self, conn: ConnId, results: Vec<pb::InlineObject>) {
        let running = self
            .pool
            .get(conn)
            .and_then(|w| w.running())
            .map(|task| (task.id, task.spec.num_returns, task.submitter));
        let Some((task, num_returns, submitter)) = running else {
            log::warn!(conn; "results from a worker that runs no task; dropped");
            return;
        };
        self.take_results(task, num_returns, submitter, results);
    }

    /// Takes the small results of `task`, made here or on another node.
    fn take_results(
        &mut self,
        task: TaskId,
        num_returns: u32,
        submitter: Option<ConnId>,
        results: Vec<pb::InlineObject>,
    ) {
        let mut to_drivers: HashMap<ConnId, Vec<pb::InlineObject>> = HashMap::new();
        let rerun = !self.reruns.is_empty() && self.reruns.remove(&task);
        for object in results {
            let id = match ObjectId::from_slice(&object.object_id) {
                Ok(id) if (1..=num_returns).any(|i| ObjectId::for_return(task, i) == id) => id,
                _ => {
                    log::warn!(task:% = task; "dropping a result that is not one of the task's");
                    continue;
                }
            };
            let mut targets = self.inline.take_interest(&id);
            targets.extend(submitter.filter(|s| !targets.contains(s)));
            let (drivers, workers): (Vec<ConnId>, Vec<ConnId>) =
                targets.into_iter().partition(|c| self.is_driver(*c));
            for driver in drivers {
                to_drivers.entry(driver).or_default().push(object.clone());
            }
            let object = Arc::new(object);
            if workers.is_empty() {
                if rerun {
                    // Other nodes may wait for the rebuilt copy: it goes where they look.
                    self.promote(id, object.clone());
                }
                for (old, forgotten) in self.inline.insert(id, object) {
                    self.promote(old, forgotten);
                }
            } else {
                self.inline.remove(&id);
                self.promote(id, object);
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
    fn promote(&mut self, id: ObjectId, object: Arc<pb::InlineObject>) {
        self.effects.push(Effect::Put { id, object });
    }

    /// Puts an error object (`metadata` names its kind) under `id`.
    fn put_error(&mut self, id: ObjectId, metadata: &[u8], message: &str) {
        let object = pb::InlineObject {
            object_id: id.as_bytes().to_vec().into(),
            data: message.as_bytes().to_vec().into(),
            metadata: metadata.to_vec().into(),
        };
        self.promote(id, Arc::new(object));
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
                if let Some(object) = self.inline.get(&id) {
                    ready.push((**object).clone());
                    continue;
                }
            } else if let Some(object) = self.inline.remove(&id) {
                self.promote(id, object);
                continue;
            }
            if !self.deps.is_local(&id) {
                self.inline.add_interest(id, conn);
                self.pull_unless_made_here(id);
            } else if driver && self.freed.contains(&id) {
                // Freed everywhere, yet still here: a reader holds it, and the store serves
                // it to no one until the reader lets go (it cannot hold the error object
                // under the same ID before then). The driver gets the error itself.
                ready.push(freed_error(id));
            } else if driver {
                // A driver asks for what this node's store holds as far as the scheduler
                // heard: the store removed it (a free) and its notice is on the way. Noted,
                // so that the removal has it asked for (and found lost) instead of leaving
                // the driver waiting.
                self.inline.add_interest(id, conn);
            }
        }
        if !ready.is_empty() {
            self.send(
                conn,
                pb::server_message::Kind::ObjectsReady(pb::ObjectsReady { objects: ready }),
            );
        }
    }

    /// Queues a task whose arguments are local (a retry goes first); one of a job that
    /// ended is dropped.
    fn make_ready(&mut self, task: Task, first: bool) {
        if self.jobs.has_ended(&task.job) {
            self.set_state(task.id, TaskState::Cancelled);
            return;
        }
        self.ready.push(task, first);
    }

    /// Dispatches ready tasks to idle workers while resources allow, and starts workers
    /// where tasks could run but none is idle.
    fn schedule(&mut self) {
        // Tasks that could run now but have no idle worker: those needing CPUs, and not.
        let (mut runnable_cpu, mut runnable_free) = (0usize, 0usize);
        for shape in self.ready.shapes() {
            let Some(request) = self.ready.front(&shape).map(|t| t.resources.clone()) else {
                continue;
            };
            if !self.resources.feasible(&request) {
                // Another node may run it; else it waits for one that can.
                if !self.spill(&shape, &request, false) {
                    self.warn_infeasible(&shape);
                }
                continue;
            }
            while self.resources.fits(&request) {
                let Some(conn) = self.pool.next_idle() else {
                    let waiting = self.ready.queued(&shape);
                    if request.get("CPU").is_some_and(|cpus| *cpus > 0.0) {
                        runnable_cpu += waiting;
                    } else {
                        runnable_free += waiting;
                    }
                    break;
                };
                let Some(task) = self.ready.pop(&shape) else {
                    self.pool.make_idle(conn, true, self.now);
                    break;
                };
                self.dispatch(conn, task);
            }
            // What cannot start here now goes where a heartbeat showed room.
            if !self.resources.fits(&request) {
                self.spill(&shape, &request, true);
            }
        }
        self.send_tasks_ahead();
        // Start workers for tasks that could run now: up to one per CPU not lent out, and
        // beyond that (bounded) for tasks and actors that take no CPU.
        let active = self.pool.active();
        let limit = self.cpu_slots();
        let mut wanted = runnable_cpu.saturating_sub(self.pool.in_flight());
        while wanted > 0 && active + self.pool.in_flight() < limit {
            if !self.pool.request_start(self.now) {
                break;
            }
            self.effects.push(Effect::StartWorker);
            wanted -= 1;
        }
        let mut wanted = runnable_free.saturating_sub(self.pool.in_flight());
        while wanted > 0 && active + self.pool.in_flight() < limit + MAX_CPU_FREE_WORKERS {
            if !self.pool.request_start(self.now) {
                break;
            }
            self.effects.push(Effect::StartWorker);
            wanted -= 1;
        }
        self.dispatch_actor_calls();
        // Keep the minimum pool.
        for _ in self.pool.live()..self.settings.min_workers {
            self.start_worker();
        }
    }

    /// Forwards the queued tasks of `shape` to other nodes: to those with room for them
    /// (per their heartbeats, less what was forwarded since), or with `room` false to any
    /// that could run them. Returns whether any other node could take them. Tasks
    /// forwarded [`MAX_HOPS`] times already stay.
    fn spill(&mut self, shape: &task::Shape, request: &Amounts, room: bool) -> bool {
        if self.cluster.is_empty() {
            return false;
        }
        let mut placed = false;
        while let Some(front) = self.ready.front(shape) {
            if front.hops >= MAX_HOPS {
                return placed;
            }
            let Some(node) = self.cluster.place(request, room) else {
                return placed;
            };
            let Some(task) = self.ready.pop(shape) else {
                break;
            };
            // A global scheduler sees the whole cluster and where arguments are: it
            // chooses when there is a choice (a task only one node can run goes there
            // straight, a hop shorter); actors are placed here (their calls must know
            // the node at once).
            if self.global_scheduler
                && !task.is_actor_creation()
                && !task.is_actor_call()
                && self.cluster.candidates(request) > 1
            {
                self.spill_to_global(node, task);
            } else {
                self.forward(node, task);
            }
            placed = true;
        }
        placed
    }

    /// Hands `task` to a global scheduler; `likely` (this raylet's own pick) is charged
    /// in the view so that a burst spreads before the next heartbeats.
    fn spill_to_global(&mut self, likely: NodeId, mut task: Task) {
        self.cluster.charge(&likely, &task.resources);
        self.inline_arguments(&mut task);
        self.set_state(task.id, TaskState::Forwarded);
        let job = self.jobs.config(&task.job).cloned();
        let home = task.home.unwrap_or(self.settings.node_id);
        self.effects.push(Effect::Spill {
            spec: Box::new(task.spec.clone()),
            home,
            hops: task.hops + 1,
            job,
        });
        self.handed_on(None, task);
    }

    /// Keeps `task`, handed on to `node` (`None`: to a global scheduler), until it is known
    /// to have arrived: its home keeps it until it finishes, a relay until it was taken.
    fn handed_on(&mut self, node: Option<NodeId>, task: Task) {
        if task.home.is_none() {
            self.forwarded.insert(task.id, (node, task));
        } else {
            self.relayed.insert(task.id, task);
        }
    }

    /// A task handed on from here that did not arrive.
    fn take_handed_on(&mut self, id: &TaskId) -> Option<Task> {
        self.forwarded
            .remove(id)
            .map(|(_, task)| task)
            .or_else(|| self.relayed.remove(id))
    }

    /// Sends `task` to run on `node`, with the small arguments held here inlined; its
    /// home (this node, or the one it came from) hears from `node` when it is done.
    fn forward(&mut self, node: NodeId, mut task: Task) {
        self.cluster.charge(&node, &task.resources);
        self.inline_arguments(&mut task);
        self.set_state(task.id, TaskState::Forwarded);
        log::debug!(task:% = task.id, node:% = node; "forwarding a task");
        let job = self.jobs.config(&task.job).cloned();
        let home = task.home.unwrap_or(self.settings.node_id);
        self.effects.push(Effect::Forward {
            node,
            spec: Box::new(task.spec.clone()),
            home,
            hops: task.hops + 1,
            job,
        });
        if let Some(home) = task.home {
            // A relay: the home redoes the task if `node` dies, so it must know.
            self.effects.push(Effect::TaskMoved {
                home,
                task: task.id,
                node,
            });
        }
        if task.is_actor_creation() {
            self.actor_moved(&task, node);
        }
        self.handed_on(Some(node), task);
    }

    /// The creation of an actor was forwarded to `node`: the actor lives there, and the
    /// calls queued here follow it (after the creation: one queue per node keeps order).
    fn actor_moved(&mut self, creation: &Task, node: NodeId) {
        let Some(id) = actor_id_of(creation) else {
            return;
        };
        self.remote_actors.insert(id, (node, creation.job));
        let local = self.actors.remove(&id);
        if creation.home.is_none() {
            let restarts_left = local
                .as_ref()
                .map_or(creation.spec.max_restarts, |a| a.restarts_left);
            self.remote_creations
                .insert(id, (creation.clone(), restarts_left));
        }
        // The actor table says where it goes (the node that runs it writes it too).
        self.gcs(GcsWrite::Actor(ActorInfo {
            actor_id: id,
            job_id: creation.job,
            node: Some(node),
            worker: None,
            state: ActorState::Pending.name().to_string(),
        }));
        let queued = local.map(|a| a.queue).unwrap_or_default();
        for call in queued {
            self.forward(node, call);
        }
    }

    /// A task could not be handed to `node`: it runs here, or goes elsewhere; an actor
    /// call fails (its actor is there); an actor's creation comes back here.
    fn forward_failed(&mut self, task: Task, node: NodeId) {
        let restartable = actor_id_of(&task).filter(|id| {
            self.remote_creations
                .get(id)
                .is_some_and(|(_, left)| *left > 0)
        });
        if let (true, Some(id)) = (task.is_actor_call(), restartable) {
            // Its node may be dying: the call waits to know (see `suspended`).
            self.suspended.entry(id).or_default().push(task);
            return;
        }
        if task.is_actor_call() {
            let reason = format!("cannot reach node {node}, where the actor of this call lives");
            self.store_errors(&task, value::ERROR_ACTOR_DIED, &reason);
            return;
        }
        if task.is_actor_creation() {
            if let Some(id) = actor_id_of(&task) {
                self.remote_actors.remove(&id);
                let task = self.actors.create(id, task);
                self.record_actor(id);
                self.make_ready(task, true);
            }
            return;
        }
        self.make_ready(task, true);
    }

    /// The GCS said where an actor lives: the calls that waited for it go there.
    fn on_actor_located(&mut self, actor: ActorId, node: Option<NodeId>) {
        let calls = self.locating.remove(&actor).unwrap_or_default();
        match node.filter(|n| *n != self.settings.node_id) {
            Some(node) => {
                if let Some(job) = calls.first().map(|c| c.job) {
                    self.remote_actors.insert(actor, (node, job));
                }
                for call in calls {
                    self.forward(node, call);
                }
            }
            None => {
                let reason = format!("actor {actor} is on no node of the cluster");
                for call in &calls {
                    self.store_errors(call, value::ERROR_ACTOR_DIED, &reason);
                }
            }
        }
    }

    /// Gives each busy pool worker whose running task has the shape of a queued one that
    /// task to run next: it goes on without waiting for the raylet in between. Only behind
    /// short tasks (see [`Pool::ahead_candidates`]): a task must not wait behind a long
    /// one while a worker frees up.
    fn send_tasks_ahead(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let candidates = self
            .pool
            .ahead_candidates(self.now, self.settings.task_ahead_max);
        for (conn, shape, job) in candidates {
            let Some(next) = self.ready.pop(&shape) else {
                continue;
            };
            // Same job: the worker's output goes to the driver of the task it runs.
            if next.is_actor_creation() || next.spec.max_calls > 0 || next.job != job {
                self.make_ready(next, true);
                continue;
            }
            self.send_ahead(conn, next);
        }
    }

    /// Sends `task` to the busy worker on `conn`, to run after its current task, in the
    /// resources of the running one.
    fn send_ahead(&mut self, conn: ConnId, mut task: Task) {
        let held = match self.pool.get(conn).map(|w| &w.state) {
            Some(WorkerState::Busy { held, .. }) => held.resource_ids(),
            _ => {
                self.make_ready(task, true);
                return;
            }
        };
        let frame = self.assignment(conn, &mut task, held);
        if let Some(worker) = self.pool.get_mut(conn) {
            worker.ahead = Some(task);
        }
        self.effects.push(Effect::Send { conn, frame });
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

    fn warn_infeasible(&mut self, shape: &task::Shape) {
        let Some(task) = self.ready.front(shape) else {
            return;
        };
        let key = format!("{}:{:?}", task.spec.function_name, task.resources);
        let message = format!(
            "task {} ({}) needs {:?} but this node has {:?}; it stays pending until a node can run it",
            task.spec.function_name,
            task.id,
            task.resources,
            self.resources.total()
        );
        let job = task.job;
        if !self.jobs.first_warning(key) {
            return;
        }
        log::warn!("{message}");
        if let Some(driver) = self.jobs.driver(&job) {
            self.send(
                driver,
                pb::server_message::Kind::Warning(pb::Warning { message }),
            );
        }
    }

    fn dispatch(&mut self, conn: ConnId, mut task: Task) {
        if task.is_actor_creation() {
            if let Some(id) = actor_id_of(&task) {
                if let Some(worker) = self.pool.get_mut(conn) {
                    worker.actor = Some(id);
                }
                self.actors.bind(id, conn);
                self.record_actor(id);
            }
        }
        let held = self.resources.acquire(&task.resources);
        // An actor's methods run with the instances (GPUs) the actor holds for life.
        let resource_ids = self
            .actor_resource_ids(&task)
            .unwrap_or_else(|| held.resource_ids());
        let frame = self.assignment(conn, &mut task, resource_ids);
        self.set_state(task.id, TaskState::Running);
        if let Some(worker) = self.pool.get_mut(conn) {
            worker.job = Some(task.job);
            worker.started = self.now;
            worker.state = WorkerState::Busy {
                task,
                held,
                blocked: false,
            };
        }
        self.effects.push(Effect::Send { conn, frame });
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
        let same_job = self.pool.get(conn).is_some_and(|w| w.job == Some(task.job));
        let job = (!same_job)
            .then(|| self.jobs.config(&task.job).cloned())
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
            let Some(object) = self.inline.get(&id) else {
                continue;
            };
            if object.metadata == value::META_PICKLE5 {
                arg.value = Some(common_pb::task_arg::Value::Inline(object.data.to_vec()));
            } else if let Some(object) = self.inline.remove(&id) {
                self.promote(id, object);
            }
        }
    }

    fn on_task_done(&mut self, conn: ConnId, done: pb::TaskDone) {
        // A task forwarded here reports to its home, with its small results.
        let home = self
            .pool
            .get(conn)
            .and_then(|w| w.running())
            .and_then(|t| t.home.map(|home| (home, t.id)));
        if let Some((home, task)) = home {
            self.effects.push(Effect::ReturnResults {
                home,
                task,
                results: done.results.clone(),
            });
        }
        if !done.results.is_empty() {
            self.accept_results(conn, done.results);
        }
        let now = self.now;
        let Some(worker) = self.pool.get_mut(conn) else {
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
        if task.id.as_bytes().as_slice() != done.task_id.as_slice() {
            log::warn!(conn, task:% = task.id; "task done names another task");
        }
        if let Some(actor) = worker.actor {
            self.set_state(task.id, TaskState::Finished);
            self.actor_call_done(actor, conn, &task, held, blocked);
            self.schedule();
            return;
        }
        let calls = worker.calls.entry(task.function).or_insert(0);
        *calls += 1;
        let retire = task.spec.max_calls > 0 && *calls >= task.spec.max_calls;
        let took = now.saturating_duration_since(worker.started);
        let ahead = worker.ahead.take();
        if let Some(next) = ahead {
            // Tasks go ahead only to workers that do not retire (max_calls is 0 for both),
            // and are taken back when the worker blocks: it runs this one now, in the
            // resources of the finished task.
            if blocked {
                self.resources
                    .adjust("CPU", -held.amounts.get("CPU").copied().unwrap_or(0.0));
            }
            worker.started = now;
            worker.state = WorkerState::Busy {
                task: next,
                held,
                blocked: false,
            };
        } else {
            if retire {
                worker.state = WorkerState::Retiring;
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
                self.pool.make_idle(conn, false, self.now);
            }
        }
        self.pool.record_duration(task.function, took);
        self.retries.remove(&task.id);
        self.set_state(task.id, TaskState::Finished);
        self.schedule();
    }

    fn on_blocked(&mut self, conn: ConnId, now_blocked: bool) {
        let Some(worker) = self.pool.get_mut(conn) else {
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
        let Some(WorkerState::Busy { held, blocked, .. }) =
            self.pool.get_mut(conn).map(|w| &mut w.state)
        else {
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
        let Some(peer) = self.peers.remove(&conn) else {
            return;
        };
        self.inline.forget(conn);
        match peer {
            Peer::Driver(job) => {
                log::info!(job:% = job; "driver disconnected");
                self.end_job(job);
            }
            Peer::Worker => {
                let Some(worker) = self.pool.remove(conn) else {
                    return;
                };
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
                if let Some(task) = worker.ahead {
                    // Sent ahead, never started.
                    self.make_ready(task, true);
                }
                match (worker.actor, running) {
                    (Some(actor), running) => self.actor_worker_died(actor, running, worker.pid),
                    (None, Some(task)) => self.on_worker_died(task, worker.pid),
                    (None, None) => {}
                }
                self.schedule();
            }
            Peer::Unregistered => {}
        }
    }

    /// The driver of `job` left: nobody will read its results. Its actors die, its
    /// queued and waiting tasks are dropped, the workers running its tasks are killed
    /// (their CPUs serve other jobs), and later tasks of it are refused.
    fn end_job(&mut self, job: JobId) {
        self.jobs.end(job);
        let remote: Vec<ActorId> = self
            .remote_actors
            .iter()
            .filter(|(_, (_, j))| *j == job)
            .map(|(id, _)| *id)
            .collect();
        for id in self.actors.of_job(job).into_iter().chain(remote) {
            self.kill_actor(id, format!("the driver of actor {id}'s job exited"));
        }
        let mut cancelled = self.ready.take_where(|t| t.job == job);
        cancelled.extend(self.deps.take_where(|t| t.job == job));
        for task in &cancelled {
            self.set_state(task.id, TaskState::Cancelled);
        }
        let pids = self.pool.working_for(job);
        if !cancelled.is_empty() || !pids.is_empty() {
            log::info!(job:% = job, cancelled = cancelled.len(), workers_killed = pids.len();
                "cancelled the tasks of a job whose driver left");
        }
        for pid in pids {
            self.effects.push(Effect::KillWorker { pid });
        }
    }

    /// Tells idle pool workers beyond the usual pool (at least one per CPU, or
    /// `min_workers`) to exit once idle for [`IDLE_WORKER_EXIT`].
    fn retire_idle_workers(&mut self) {
        let keep = self.settings.min_workers.max(self.cpu_slots());
        for conn in self.pool.retire_idle(self.now, keep, IDLE_WORKER_EXIT) {
            self.send(
                conn,
                pb::server_message::Kind::Exit(pb::Exit {
                    reason: "idle beyond the node's pool".into(),
                }),
            );
        }
    }

    /// A worker died running `task`: retry it, or store error objects for its results.
    fn on_worker_died(&mut self, task: Task, pid: u32) {
        if self.jobs.has_ended(&task.job) {
            self.set_state(task.id, TaskState::Cancelled);
            return;
        }
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
        self.gcs(GcsWrite::Error {
            job: task.job,
            kind: "worker_died",
            message,
        });
    }

    /// Stores error objects of `kind` in place of every result of `task`, so that
    /// `ray.get` raises instead of waiting forever.
    fn store_errors(&mut self, task: &Task, kind: &str, message: &str) {
        let metadata = value::error_metadata(kind);
        for id in task.return_ids() {
            self.put_error(id, &metadata, message);
        }
        self.set_state(task.id, TaskState::Failed);
        if let Some(home) = task.home {
            // The error objects are in this node's store; the home pulls them.
            self.effects.push(Effect::ReturnResults {
                home,
                task: task.id,
                results: Vec::new(),
            });
        }
    }

    fn on_output(&mut self, pid: u32, line: String, stderr: bool) {
        let job = self
            .pool
            .conn_of(pid)
            .and_then(|c| self.pool.get(c))
            .and_then(|w| w.job);
        // A job whose driver is on another node: the line goes there.
        if let Some((job, home)) = job.and_then(|j| Some((j, self.jobs.home(&j)?))) {
            if self.jobs.driver(&job).is_none() {
                self.effects.push(Effect::ForwardOutput {
                    home,
                    job,
                    pid,
                    line,
                    stderr,
                });
                return;
            }
        }
        self.print_for(job, pid, line, stderr);
    }

    /// Shows a worker's line to the driver of `job` (unless it redirects its workers'
    /// output), else logs it.
    fn print_for(&mut self, job: Option<JobId>, pid: u32, line: String, stderr: bool) {
        let driver = job.and_then(|job| {
            let config = self.jobs.config(&job)?;
            (!config.redirect_worker_output)
                .then(|| self.jobs.driver(&job))
                .flatten()
        });
        match driver {
            Some(driver) => self.send(
                driver,
                pb::server_message::Kind::WorkerOutput(pb::WorkerOutput { pid, line, stderr }),
            ),
            None => log::info!(pid, stderr; "worker: {line}"),
        }
    }

    /// Tells every worker and driver that the node stops.
    pub fn stop(&mut self) {
        let frame = framing::encode(&pb::ServerMessage {
            kind: Some(pb::server_message::Kind::Exit(pb::Exit {
                reason: "the raylet is stopping".into(),
            })),
        });
        let conns: Vec<ConnId> = self
            .peers
            .iter()
            .filter(|(_, p)| !matches!(p, Peer::Unregistered))
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            self.effects.push(Effect::Send {
                conn,
                frame: frame.clone(),
            });
        }
    }

    /// The worker pids, for shutdown.
    pub fn worker_pids(&self) -> Vec<u32> {
        self.pool.pids()
    }

    /// Total resources, for the node table.
    pub fn total(&self) -> BTreeMap<String, f64> {
        self.resources.total().clone()
    }

    // Actors: their state lives in `actors`; when their calls run is decided here.

    fn record_actor(&mut self, id: ActorId) {
        let Some(actor) = self.actors.get(&id) else {
            return;
        };
        let worker = actor.worker.and_then(|c| self.pool.get(c)).map(|w| w.id);
        let info = ActorInfo {
            actor_id: id,
            job_id: actor.job,
            node: Some(self.settings.node_id),
            worker,
            state: actor.state.name().to_string(),
        };
        self.gcs(GcsWrite::Actor(info));
    }

    /// An actor's creation task arrived: register the actor, then schedule the task like
    /// any other (its resources are those it holds for life, if any).
    fn create_actor(&mut self, task: Task) {
        let Some(id) = actor_id_of(&task) else {
            log::warn!(task:% = task.id; "refusing an actor creation without an actor id");
            return;
        };
        let task = self.actors.create(id, task);
        self.record_actor(id);
        self.submit(task);
    }

    /// A method call arrived: queue it behind the actor's earlier calls.
    fn submit_actor_call(&mut self, task: Task) {
        let Some(id) = actor_id_of(&task) else {
            log::warn!(task:% = task.id; "refusing an actor task without an actor id");
            return;
        };
        // Every call has a task entry from its submission (its spec is not kept): a pull
        // elsewhere can tell a call under way from a result the GCS forgot.
        if let Some(waiting) = self.suspended.get_mut(&id) {
            waiting.push(task);
            return;
        }
        if self.actors.get(&id).is_none() {
            // It lives elsewhere: its calls go there, in order.
            if let Some((node, _)) = self.remote_actors.get(&id).copied() {
                self.forward(node, task);
            } else {
                let waiting = self.locating.entry(id).or_default();
                waiting.push(task);
                if waiting.len() == 1 {
                    self.effects.push(Effect::LocateActor { actor: id });
                }
            }
            return;
        }
        match self.actors.refusal(&id) {
            None => {
                self.actors.enqueue(id, task);
                self.dispatch_actor_calls();
            }
            Some(reason) => self.store_errors(&task, value::ERROR_ACTOR_DIED, &reason),
        }
    }

    /// The resource instances an actor holds for life, for its method calls.
    fn actor_resource_ids(&self, task: &Task) -> Option<HashMap<String, pb::ResourceIds>> {
        if task.is_actor_creation() {
            return None;
        }
        let actor = self.actors.get(&actor_id_of(task)?)?;
        actor.held.as_ref().map(Held::resource_ids)
    }

    /// Sends each idle actor its next call whose arguments are local and whose resources
    /// fit, and each busy one (past its constructor) calls to run next, up to the depth.
    fn dispatch_actor_calls(&mut self) {
        let deps = &self.deps;
        let candidates = self
            .actors
            .with_runnable_call(|t| t.dependencies().iter().all(|d| deps.is_local(d)));
        for id in candidates {
            while let Some(actor) = self.actors.get(&id) {
                let (Some(conn), Some(head)) = (actor.worker, actor.queue.front()) else {
                    break;
                };
                if !head.dependencies().iter().all(|d| self.deps.is_local(d)) {
                    break;
                }
                let ahead = actor.running;
                if ahead {
                    let constructing = self
                        .pool
                        .get(conn)
                        .and_then(|w| w.running())
                        .is_some_and(Task::is_actor_creation);
                    if actor.inflight.len() >= PIPELINE_DEPTH || constructing {
                        break;
                    }
                } else if !self.resources.fits(&head.resources) {
                    break;
                }
                let Some(actor) = self.actors.get_mut(&id) else {
                    break;
                };
                let Some(mut task) = actor.queue.pop_front() else {
                    break;
                };
                if ahead {
                    let resource_ids = self.actor_resource_ids(&task).unwrap_or_default();
                    let frame = self.assignment(conn, &mut task, resource_ids);
                    if let Some(actor) = self.actors.get_mut(&id) {
                        actor.inflight.push_back(task);
                    }
                    self.effects.push(Effect::Send { conn, frame });
                } else {
                    actor.running = true;
                    self.dispatch(conn, task);
                }
            }
        }
    }

    /// The actor's worker on `conn` finished its constructor or a call.
    fn actor_call_done(
        &mut self,
        id: ActorId,
        conn: ConnId,
        task: &Task,
        held: Held,
        blocked: bool,
    ) {
        let Some(actor) = self.actors.get_mut(&id) else {
            self.give_back(&held, blocked);
            return;
        };
        actor.running = false;
        if task.is_actor_creation() && actor.creation.spec.actor_holds_resources {
            // Held for life; CPUs lent out while the constructor was blocked come back.
            actor.held = Some(held.clone());
            if blocked {
                self.resources
                    .adjust("CPU", -held.amounts.get("CPU").copied().unwrap_or(0.0));
            }
        } else {
            self.give_back(&held, blocked);
        }
        // The worker starts the next call it was sent: it takes what the last one gave back.
        let Some(next) = self
            .actors
            .get_mut(&id)
            .and_then(|a| a.inflight.pop_front())
        else {
            return;
        };
        if let Some(actor) = self.actors.get_mut(&id) {
            actor.running = true;
        }
        let held = self.resources.acquire(&next.resources);
        let now = self.now;
        if let Some(worker) = self.pool.get_mut(conn) {
            worker.started = now;
            worker.state = WorkerState::Busy {
                task: next,
                held,
                blocked: false,
            };
        }
    }

    /// The actor's worker went away, maybe in the middle of `running`.
    fn actor_worker_died(&mut self, id: ActorId, running: Option<Task>, pid: u32) {
        let node = self.settings.node_id;
        let reason = format!("the actor {id}'s process (pid {pid}) on node {node} died");
        let Some(died) = self.actors.worker_died(id, reason) else {
            return;
        };
        if let Some(held) = &died.held {
            self.resources.release(held);
        }
        if let Some(task) = running.filter(|t| !t.is_actor_creation()) {
            let reason = match &died.restart {
                Err(reason) => reason.clone(),
                Ok(_) => format!(
                    "the actor {id}'s process (pid {pid}) died during this call; the actor restarts"
                ),
            };
            self.store_errors(&task, value::ERROR_ACTOR_DIED, &reason);
        }
        match died.restart {
            Ok(creation) => {
                log::warn!(actor:% = id, pid; "actor died; restarting it");
                self.record_actor(id);
                self.make_ready(creation, true);
            }
            Err(reason) => {
                log::warn!(actor:% = id, pid, failed_calls = died.failed.len(); "actor died");
                if let Some(job) = self.actors.get(&id).map(|a| a.job) {
                    if !self.jobs.has_ended(&job) {
                        self.gcs(GcsWrite::Error {
                            job,
                            kind: "actor_died",
                            message: reason.clone(),
                        });
                    }
                }
                for task in &died.failed {
                    self.store_errors(task, value::ERROR_ACTOR_DIED, &reason);
                }
                self.record_actor(id);
            }
        }
    }

    /// `ray.kill`, or its driver left: the actor dies now, without restarts.
    fn kill_actor(&mut self, id: ActorId, reason: String) {
        if let Some((node, _)) = self.remote_actors.get(&id).copied() {
            self.effects.push(Effect::KillRemoteActor {
                node,
                actor: id,
                reason,
            });
            return;
        }
        let Some((queued, worker)) = self.actors.kill(id, reason.clone()) else {
            return;
        };
        for task in &queued {
            self.store_errors(task, value::ERROR_ACTOR_DIED, &reason);
        }
        match worker.and_then(|c| self.pool.get(c)) {
            // Its disconnect then fails the call it was running.
            Some(worker) => self.effects.push(Effect::KillWorker { pid: worker.pid }),
            None => {
                // Not placed yet: its creation task must not run any more.
                if let Some(creation) = self.actors.get(&id).map(|a| a.creation.id) {
                    self.ready.remove(&creation);
                    self.deps.remove(&creation);
                }
                self.record_actor(id);
            }
        }
    }

    /// Whether `id` is an actor of this node that is not dead (for tests and status).
    pub fn actor_alive(&self, id: &ActorId) -> bool {
        self.actors
            .get(id)
            .is_some_and(|a| !matches!(a.state, ActorState::Dead(_)))
    }
}

/// The error object that stands for `id` once a program freed it and no copy is left
/// (`ObjectFreedError`).
fn freed_error(id: ObjectId) -> pb::InlineObject {
    let message =
        format!("object {id} was freed (ray.internal.free) and no copy is left in the cluster");
    pb::InlineObject {
        object_id: id.as_bytes().to_vec().into(),
        data: message.into_bytes().into(),
        metadata: value::error_metadata(value::ERROR_OBJECT_FREED).into(),
    }
}
