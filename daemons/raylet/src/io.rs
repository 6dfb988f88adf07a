//! The raylet's I/O layer: feeds the scheduler core its events and carries out the
//! effects it asks for. Everything that blocks or forks leaves the event loop's thread:
//! plasma puts go to a writer thread of their own (in order), worker processes are
//! forked on the blocking pool, pulls run as tasks of their own; GCS writes go to the
//! batching writer ([`crate::gcs`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rayd_common::id::{ActorId, NodeId, ObjectId};
use rayd_common::process::signal_pid;
use rayd_common::proto::nodemanager::v1 as nm;
use rayd_common::proto::raylet::v1 as pb;
use rayd_gcs::keys::{self, Table};
use rayd_gcs::{GcsClient, Target};
use rayd_plasma_client::{ClientError, PlasmaClient};
use tokio::sync::mpsc;

use crate::lineage::{Progress, Recovery};
use crate::metrics::RayletMetrics;
use crate::peers::{Outgoing, Peers};
use crate::scheduler::{ConnId, Effect, Event, GcsWrite, Scheduler};
use crate::workers::Spawner;

/// Object IDs in one `Free` to another raylet at most (20 bytes each: far under gRPC's
/// 4 MiB message limit).
const FREE_BATCH: usize = 10_000;

/// How long the node of an actor is looked for in the GCS before its calls fail.
const LOCATE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What reaches the raylet's event loop.
// Events move once through a channel; boxing the task-carrying variant would only add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    /// A connection was accepted; frames for it go to `tx`.
    Connected {
        conn: ConnId,
        tx: mpsc::UnboundedSender<Vec<u8>>,
    },
    /// Anything else, for the scheduler.
    Event(Event),
}

impl From<Event> for Input {
    fn from(event: Event) -> Self {
        Input::Event(event)
    }
}

/// How worker processes are started.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub binary: PathBuf,
    pub raylet_socket: PathBuf,
    pub log_level: String,
    /// Hex ID of the node, for the workers' log records (`RAYD_NODE_ID`).
    pub node_id: String,
}

/// The scheduler with the means to carry out its effects.
#[derive(Debug)]
pub struct Node {
    pub scheduler: Scheduler,
    conns: HashMap<ConnId, mpsc::UnboundedSender<Vec<u8>>>,
    inputs: mpsc::UnboundedSender<Input>,
    writes: mpsc::UnboundedSender<GcsWrite>,
    puts: std::sync::mpsc::Sender<(ObjectId, Arc<pb::InlineObject>)>,
    workers: Spawner,
    gcs: GcsClient,
    plasma: PlasmaClient,
    node_id: NodeId,
    peers: Peers,
    /// Pulls under way, to stop when their object arrives by another way.
    pulls: HashMap<ObjectId, tokio::task::AbortHandle>,
    /// What `/metrics` reports.
    pub metrics: RayletMetrics,
}

impl Node {
    pub fn new(
        scheduler: Scheduler,
        inputs: mpsc::UnboundedSender<Input>,
        writes: mpsc::UnboundedSender<GcsWrite>,
        plasma: PlasmaClient,
        gcs: GcsClient,
        worker: WorkerCommand,
        peers: Peers,
    ) -> std::io::Result<Self> {
        let node_id = plasma.node_id();
        let puts = spawn_putter(plasma.clone())?;
        let workers = Spawner::new(worker, inputs.clone())?;
        Ok(Self {
            scheduler,
            conns: HashMap::new(),
            inputs,
            writes,
            puts,
            workers,
            gcs,
            plasma,
            node_id,
            peers,
            pulls: HashMap::new(),
            metrics: RayletMetrics::default(),
        })
    }

    /// Handles one input and carries out what it leads to.
    pub fn handle(&mut self, input: Input) {
        let now = Instant::now();
        match input {
            Input::Connected { conn, tx } => {
                self.conns.insert(conn, tx);
                self.scheduler.handle(now, Event::Connected { conn });
            }
            Input::Event(event) => {
                if let Event::Message {
                    message: pb::client_message::Kind::TaskDone(done),
                    ..
                } = &event
                {
                    self.metrics.task_done(done);
                }
                let closed = match &event {
                    Event::Disconnected { conn } => Some(*conn),
                    Event::ObjectSealed(id)
                    | Event::ObjectLost { id, .. }
                    | Event::ObjectFreed(id) => {
                        if let Some(pull) = self.pulls.remove(id) {
                            pull.abort();
                        }
                        None
                    }
                    _ => None,
                };
                self.scheduler.handle(now, event);
                if let Some(conn) = closed {
                    self.conns.remove(&conn);
                }
            }
        }
        self.carry_out();
    }

    /// Starts the workers kept ahead of demand.
    pub fn prestart(&mut self) {
        self.scheduler.prestart(Instant::now());
        self.carry_out();
    }

    /// Tells every worker and driver that the node stops.
    pub fn stop(&mut self) {
        self.scheduler.stop();
        self.carry_out();
    }

    fn carry_out(&mut self) {
        let effects: Vec<Effect> = self.scheduler.take_effects().collect();
        for effect in effects {
            self.metrics.count(&effect);
            match effect {
                Effect::Send { conn, frame } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        let _ = tx.send(frame);
                    }
                }
                Effect::StartWorker => self.start_worker(),
                Effect::KillWorker { pid } => {
                    signal_pid(pid, nix::sys::signal::Signal::SIGKILL);
                }
                Effect::Put { id, object } => {
                    let _ = self.puts.send((id, object));
                }
                Effect::Pull { id } => self.pull(id),
                Effect::StopPull { id } => {
                    if let Some(pull) = self.pulls.remove(&id) {
                        pull.abort();
                    }
                }
                Effect::Forward {
                    node,
                    spec,
                    home,
                    hops,
                    job,
                } => {
                    let (task, request) = forward_request(self.node_id, *spec, home, hops, job);
                    self.peers.send(
                        node,
                        Outgoing::Forward {
                            task,
                            request: Box::new(request),
                        },
                    );
                }
                Effect::ReturnResults {
                    home,
                    task,
                    results,
                } => {
                    let request = nm::TaskFinishedRequest {
                        task_id: task.as_bytes().to_vec(),
                        node_id: self.node_id.as_bytes().to_vec(),
                        results,
                    };
                    self.peers.send(home, Outgoing::Finished(request));
                }
                Effect::TaskMoved { home, task, node } => {
                    let request = nm::TaskMovedRequest {
                        task_id: task.as_bytes().to_vec(),
                        node_id: node.as_bytes().to_vec(),
                    };
                    self.peers.send(home, Outgoing::Moved(request));
                }
                Effect::KillRemoteActor {
                    node,
                    actor,
                    reason,
                } => {
                    let request = nm::KillActorRequest {
                        actor_id: actor.as_bytes().to_vec(),
                        reason,
                    };
                    self.peers.send(node, Outgoing::KillActor(request));
                }
                Effect::LocateActor { actor } => self.locate(actor),
                Effect::FreeElsewhere { ids, all_nodes } => self.free_elsewhere(ids, all_nodes),
                Effect::DeleteHere { ids } => {
                    let plasma = self.plasma.clone();
                    tokio::task::spawn_blocking(move || {
                        if let Err(e) = plasma.delete(&ids) {
                            log::warn!(objects = ids.len(); "cannot drop freed objects from the store: {e}");
                        }
                    });
                }
                Effect::ForwardOutput {
                    home,
                    job,
                    pid,
                    line,
                    stderr,
                } => {
                    let request = nm::WorkerOutputRequest {
                        job_id: job.as_bytes().to_vec(),
                        pid,
                        line,
                        stderr,
                    };
                    self.peers.send(home, Outgoing::Output(request));
                }
                Effect::Spill {
                    spec,
                    home,
                    hops,
                    job,
                } => {
                    let (task, request) = forward_request(self.node_id, *spec, home, hops, job);
                    self.peers.spill(task, request);
                }
                Effect::Gcs(write) => {
                    let _ = self.writes.send(write);
                }
            }
        }
    }

    fn start_worker(&self) {
        self.workers.start();
    }

    /// Asks every other node (`all_nodes`), or each that the GCS lists with a copy of one
    /// of `ids`, to drop them.
    fn free_elsewhere(&self, ids: Vec<ObjectId>, all_nodes: bool) {
        let peers = self.peers.clone();
        if all_nodes {
            let nodes = peers.nodes();
            for chunk in ids.chunks(FREE_BATCH) {
                let object_ids: Vec<Vec<u8>> =
                    chunk.iter().map(|id| id.as_bytes().to_vec()).collect();
                for node in &nodes {
                    let request = nm::FreeObjectsRequest {
                        object_ids: object_ids.clone(),
                    };
                    peers.send(*node, Outgoing::Free(request));
                }
            }
            return;
        }
        let gcs = self.gcs.clone();
        let own = self.node_id;
        tokio::spawn(async move {
            let mut by_node: HashMap<NodeId, Vec<Vec<u8>>> = HashMap::new();
            for id in ids {
                match gcs.object_info(id).await {
                    Ok(Some(info)) => {
                        for node in info.locations.into_iter().filter(|n| *n != own) {
                            by_node
                                .entry(node)
                                .or_default()
                                .push(id.as_bytes().to_vec());
                        }
                    }
                    Ok(None) => {}
                    Err(e) => {
                        log::warn!(object:% = id; "cannot look up the copies of a freed object: {e}")
                    }
                }
            }
            for (node, object_ids) in by_node {
                for chunk in object_ids.chunks(FREE_BATCH) {
                    let request = nm::FreeObjectsRequest {
                        object_ids: chunk.to_vec(),
                    };
                    peers.send(node, Outgoing::Free(request));
                }
            }
        });
    }

    /// Finds the node of `actor` in the GCS actor table, waiting a while for its entry
    /// (its creator writes it within a few tens of milliseconds).
    fn locate(&self, actor: ActorId) {
        let gcs = self.gcs.clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + LOCATE_TIMEOUT;
            let mut pause = std::time::Duration::from_millis(10);
            let node = loop {
                match gcs.actor(actor).await {
                    Ok(Some(info)) if info.state == "dead" => break None,
                    // A node that died (the actor is being restarted elsewhere) is not it.
                    Ok(Some(rayd_gcs::ActorInfo {
                        node: Some(node), ..
                    })) => match gcs.node(node).await {
                        Ok(Some(entry)) if entry.alive => break Some(node),
                        Ok(_) => {}
                        Err(e) => {
                            log::warn!(actor:% = actor; "cannot look the actor's node up: {e}")
                        }
                    },
                    Ok(_) => {}
                    Err(e) => log::warn!(actor:% = actor; "cannot look the actor up: {e}"),
                }
                if tokio::time::Instant::now() + pause > deadline {
                    break None;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            };
            let _ = inputs.send(Event::ActorLocated { actor, node }.into());
        });
    }

    /// Asks the node's store to pull `id` from a live node that holds it, waiting for a
    /// first copy when none was made yet; when copies were made and none is left, has it
    /// made again from its lineage or reports it lost.
    fn pull(&mut self, id: ObjectId) {
        if self.pulls.get(&id).is_some_and(|p| !p.is_finished()) {
            return;
        }
        let gcs = self.gcs.clone();
        let plasma = self.plasma.clone();
        let inputs = self.inputs.clone();
        let own = self.node_id;
        let task = tokio::spawn(async move {
            let event = match pull(gcs, plasma, own, id).await {
                PullEnd::Here => return,
                PullEnd::Rerun(spec) => Event::Rerun { spec: *spec },
                PullEnd::Lost(reason) => Event::ObjectLost { id, reason },
                PullEnd::Freed => Event::ObjectFreed(id),
            };
            let _ = inputs.send(event.into());
        });
        self.pulls.insert(id, task.abort_handle());
    }
}

/// The request that hands a task to another raylet or a global scheduler, with its ID.
fn forward_request(
    from: NodeId,
    spec: rayd_common::proto::common::v1::TaskSpec,
    home: NodeId,
    hops: u32,
    job: Option<pb::JobConfig>,
) -> (rayd_common::id::TaskId, nm::ForwardTaskRequest) {
    let task = rayd_common::id::TaskId::from_slice(&spec.task_id).unwrap_or_default();
    let request = nm::ForwardTaskRequest {
        spec: Some(spec),
        home_node_id: home.as_bytes().to_vec(),
        hops,
        job,
        from_node_id: from.as_bytes().to_vec(),
    };
    (task, request)
}

/// How a pull ends.
enum PullEnd {
    /// The object is (or is being sealed) in this node's store.
    Here,
    /// It was lost, and this node claimed the re-run of the task that made it.
    Rerun(Box<rayd_common::proto::common::v1::TaskSpec>),
    /// It was lost for good: why.
    Lost(String),
    /// A program freed it (`ray.internal.free`) and no copy is left.
    Freed,
}

/// How long a pull that waits for another node's re-run looks again on its own (the
/// re-running node may die too).
const RERUN_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the object table may list copies that are not there (this node's, or a live
/// node's that the pull could not get: the store's report of the removal is on its way)
/// before the pull goes on without them.
const BEHIND_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long the task of an object never made may stay stranded on a dead node before
/// it is rebuilt from here: its home, when alive, redoes it at once (and the task's entry
/// then names a live node); this is for when the home died too.
const STRANDED_GRACE: std::time::Duration = std::time::Duration::from_secs(3);

/// How long an object may be unknown to the GCS (no copy, no task entry), in a cluster
/// whose GCS shards restarted empty, before it counts as lost: a task has an entry within
/// milliseconds of its submission. (An actor call queued on its own node has none until it
/// runs: one queued longer than this, whose result is awaited on another node after a
/// shard restart, counts as lost too early; calls are not written at submission because
/// that cost about 15% of actor call throughput.)
const UNKNOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits for news of `id`'s locations (a copy added or removed), at most `limit` when
/// given; the subscription is made on first use and kept.
async fn object_news(
    gcs: &GcsClient,
    id: ObjectId,
    subscription: &mut Option<rayd_gcs::Subscription>,
    limit: Option<std::time::Duration>,
) {
    let Some(s) = subscription.as_mut() else {
        let channel = keys::events_channel(Table::Object, &id);
        match gcs
            .subscribe(Target::ShardOf(id.as_bytes()), vec![channel])
            .await
        {
            // Subscribed first, then looked up again by the caller: a copy made in
            // between is not missed.
            Ok(s) => *subscription = Some(s),
            Err(e) => {
                log::warn!(object:% = id; "cannot follow the object's locations: {e}");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        return;
    };
    let next = match limit {
        None => s.next().await,
        Some(limit) => match tokio::time::timeout(limit, s.next()).await {
            Ok(next) => next,
            Err(_) => return,
        },
    };
    if next.is_none() {
        *subscription = None;
    }
}

/// Gets `id` into this node's store, or says how it comes back when no copy is left.
async fn pull(gcs: GcsClient, plasma: PlasmaClient, own: NodeId, id: ObjectId) -> PullEnd {
    let mut subscription = None;
    let mut stranded_since = None;
    let mut unknown_since = None;
    let mut behind_since = None;
    loop {
        let info = match gcs.object_info(id).await {
            Ok(info) => info,
            Err(e) => {
                log::warn!(object:% = id; "cannot look up the object's locations: {e}; trying again");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(info) = info else {
            // No copy was ever made: wait for the first, unless the task that makes it
            // stays stranded on a dead node (its home, which would redo it, died too).
            object_news(&gcs, id, &mut subscription, Some(RERUN_RECHECK)).await;
            match crate::lineage::stranded(&gcs, id).await {
                Ok(Progress::Stranded) => {
                    let since = *stranded_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() < STRANDED_GRACE {
                        continue;
                    }
                }
                Ok(Progress::NoLineage) => {
                    // A task just submitted has no entry for a few milliseconds; only a
                    // cluster whose shards restarted can have lost one for good.
                    let restarted = gcs.shard_restarts().await.unwrap_or(0) > 0;
                    let since = *unknown_since.get_or_insert_with(std::time::Instant::now);
                    if !restarted || since.elapsed() < UNKNOWN_GRACE {
                        continue;
                    }
                    return PullEnd::Lost(
                        "the GCS knows neither a copy nor the task that makes it (a GCS shard \
                         restarted without persistence and lost them)"
                            .into(),
                    );
                }
                Ok(Progress::UnderWay) => {
                    stranded_since = None;
                    unknown_since = None;
                    continue;
                }
                Err(e) => {
                    log::debug!(object:% = id; "cannot read the object's lineage: {e}");
                    continue;
                }
            }
            match crate::lineage::recover(&gcs, own, id).await {
                Ok(Recovery::Rerun(spec)) => return PullEnd::Rerun(spec),
                Ok(Recovery::Lost(reason)) => return PullEnd::Lost(reason),
                Ok(Recovery::Wait) | Err(_) => continue,
            }
        };
        // Here already (its seal reaches the scheduler through the store's events),
        // unless the entry is behind: the store removed it (freed, or gone with a spill
        // that failed) and the removal has not reached the GCS yet. Trusted, such an entry
        // would end the pull with nothing here, and a `get` would wait for good.
        let mut behind = false;
        if info.locations.contains(&own) {
            let store = plasma.clone();
            match tokio::task::spawn_blocking(move || store.contains(id)).await {
                Ok(Ok(false)) => behind = true,
                _ => return PullEnd::Here,
            }
        }
        let mut freed = info.freed;
        for node in info.locations.into_iter().filter(|node| *node != own) {
            let Ok(Some(entry)) = gcs.node(node).await else {
                continue;
            };
            if !entry.alive {
                continue;
            }
            // A live copy failed to come: its removal may be on its way to the table (or
            // the failure passes); not freed, whatever the mark says, until the table
            // catches up.
            freed = false;
            behind = true;
            let plasma = plasma.clone();
            let source = entry.object_manager_address.clone();
            match tokio::task::spawn_blocking(move || plasma.pull(id, &source)).await {
                // Its seal reaches the scheduler through the store's events.
                Ok(Ok(())) => return PullEnd::Here,
                Ok(Err(e)) => log::warn!(object:% = id, node:% = node; "pull failed: {e}"),
                Err(e) => log::warn!(object:% = id; "pull task failed: {e}"),
            }
        }
        // The table lists copies that are not there: the removals' records (whether they
        // were frees) are on their way; a store that cannot reach the GCS leaves them
        // behind for good.
        let since = behind.then(|| *behind_since.get_or_insert_with(std::time::Instant::now));
        if since.is_some_and(|since| since.elapsed() < BEHIND_GRACE) {
            object_news(&gcs, id, &mut subscription, Some(RERUN_RECHECK)).await;
            continue;
        }
        if freed {
            // Freed on purpose: not made again, as in Ray.
            return PullEnd::Freed;
        }
        match crate::lineage::recover(&gcs, own, id).await {
            Ok(Recovery::Rerun(spec)) => return PullEnd::Rerun(spec),
            Ok(Recovery::Lost(reason)) => return PullEnd::Lost(reason),
            Ok(Recovery::Wait) => {
                object_news(&gcs, id, &mut subscription, Some(RERUN_RECHECK)).await;
            }
            Err(e) => {
                log::warn!(object:% = id; "cannot read the object's lineage: {e}; trying again");
                tokio::time::sleep(RERUN_RECHECK).await;
            }
        }
    }
}

/// Starts the thread that puts objects into the store for the scheduler, in order.
fn spawn_putter(
    plasma: PlasmaClient,
) -> std::io::Result<std::sync::mpsc::Sender<(ObjectId, Arc<pb::InlineObject>)>> {
    let (tx, rx) = std::sync::mpsc::channel::<(ObjectId, Arc<pb::InlineObject>)>();
    std::thread::Builder::new()
        .name("plasma-puts".into())
        .spawn(move || {
            for (id, object) in rx {
                match plasma.put(id, &object.data, &object.metadata) {
                    Ok(_) | Err(ClientError::ObjectExists(_)) => {}
                    Err(e) => log::error!(object:% = id; "cannot put an object into plasma: {e}"),
                }
            }
        })?;
    Ok(tx)
}
