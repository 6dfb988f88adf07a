//! Between raylets: the node manager service that other raylets call (tasks forwarded to
//! this node, results of tasks forwarded from it), the clients that call theirs, and the
//! watcher that follows the other nodes through the GCS (their heartbeats and their
//! joining and leaving) and tells the scheduler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayd_common::auth::{AuthChannel, ClientAuth, ServerAuth};
use rayd_common::id::{ActorId, JobId, NodeId, TaskId};
use rayd_common::proto::globalscheduler::v1 as gs;
use rayd_common::proto::nodemanager::v1 as nm;
use rayd_gcs::{keys, GcsClient, Heartbeat, NodeEvent, Target};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;
use tonic::{Request, Response, Status};

use crate::io::Input;
use crate::scheduler::Event;

/// How long connecting to another raylet may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the live global schedulers are read from the GCS (their entries live 5 s).
const SCHEDULERS_INTERVAL: Duration = Duration::from_secs(1);
/// How long one call to another raylet may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The node manager service: what other raylets send becomes events for the scheduler.
#[derive(Debug)]
struct Service {
    inputs: mpsc::UnboundedSender<Input>,
}

fn node_id(bytes: &[u8], field: &str) -> Result<NodeId, Status> {
    NodeId::from_slice(bytes).map_err(|e| Status::invalid_argument(format!("{field}: {e}")))
}

impl Service {
    fn deliver(&self, event: Event) -> Result<(), Status> {
        self.inputs
            .send(event.into())
            .map_err(|_| Status::unavailable("the raylet is stopping"))
    }
}

#[tonic::async_trait]
impl nm::node_manager_server::NodeManager for Service {
    async fn forward_task(
        &self,
        request: Request<nm::ForwardTaskRequest>,
    ) -> Result<Response<nm::ForwardTaskReply>, Status> {
        let request = request.into_inner();
        let spec = request
            .spec
            .ok_or_else(|| Status::invalid_argument("no task spec"))?;
        let home = node_id(&request.home_node_id, "home_node_id")?;
        self.deliver(Event::TaskForwarded {
            spec,
            home,
            hops: request.hops,
            job: request.job,
        })?;
        Ok(Response::new(nm::ForwardTaskReply {}))
    }

    async fn task_finished(
        &self,
        request: Request<nm::TaskFinishedRequest>,
    ) -> Result<Response<nm::TaskFinishedReply>, Status> {
        let request = request.into_inner();
        let task = TaskId::from_slice(&request.task_id)
            .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))?;
        let node = node_id(&request.node_id, "node_id")?;
        self.deliver(Event::RemoteTaskFinished {
            task,
            node,
            results: request.results,
        })?;
        Ok(Response::new(nm::TaskFinishedReply {}))
    }

    async fn kill_actor(
        &self,
        request: Request<nm::KillActorRequest>,
    ) -> Result<Response<nm::KillActorReply>, Status> {
        let request = request.into_inner();
        let actor = ActorId::from_slice(&request.actor_id)
            .map_err(|e| Status::invalid_argument(format!("actor_id: {e}")))?;
        self.deliver(Event::KillActor {
            actor,
            reason: request.reason,
        })?;
        Ok(Response::new(nm::KillActorReply {}))
    }

    async fn worker_output(
        &self,
        request: Request<nm::WorkerOutputRequest>,
    ) -> Result<Response<nm::WorkerOutputReply>, Status> {
        let request = request.into_inner();
        let job = JobId::from_slice(&request.job_id)
            .map_err(|e| Status::invalid_argument(format!("job_id: {e}")))?;
        self.deliver(Event::RemoteOutput {
            job,
            pid: request.pid,
            line: request.line,
            stderr: request.stderr,
        })?;
        Ok(Response::new(nm::WorkerOutputReply {}))
    }
}

/// Serves the node manager on `listener` until `cancel` fires.
pub fn serve(
    listener: TcpListener,
    inputs: mpsc::UnboundedSender<Input>,
    secret: Option<&str>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(
            nm::node_manager_server::NodeManagerServer::with_interceptor(
                Service { inputs },
                ServerAuth::new(secret),
            ),
        )
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            cancel.cancelled_owned(),
        );
    tokio::spawn(server)
}

/// What goes to another raylet, in order: one queue per node, so that the calls of an
/// actor forwarded there arrive in the order they were made.
#[derive(Debug)]
pub enum Outgoing {
    /// A task to run there; on failure the scheduler hears `ForwardFailed` for `task`.
    Forward {
        task: TaskId,
        request: Box<nm::ForwardTaskRequest>,
    },
    /// A task forwarded from there finished here.
    Finished(nm::TaskFinishedRequest),
    /// Kill an actor that lives there.
    KillActor(nm::KillActorRequest),
    /// A worker's line for the driver there.
    Output(nm::WorkerOutputRequest),
}

/// The other raylets: their node manager addresses (learned by the watcher) and a queue
/// to each, with a task that sends what is queued in order.
#[derive(Debug, Clone)]
pub struct Peers {
    inner: Arc<Mutex<HashMap<NodeId, Peer>>>,
    inputs: mpsc::UnboundedSender<Input>,
    /// The live global schedulers' connections, most recently heard from first.
    schedulers: Arc<Mutex<Vec<(String, AuthChannel)>>>,
    /// The cluster's token on every call.
    auth: ClientAuth,
}

#[derive(Debug)]
struct Peer {
    address: String,
    queue: Option<mpsc::UnboundedSender<Outgoing>>,
}

/// Why a call to another raylet failed.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("node {0} is unknown here (no heartbeat seen)")]
    Unknown(NodeId),
    #[error("node {node} has a bad node manager address {address:?}")]
    Address { node: NodeId, address: String },
    #[error("node {node} at {address}: {status}")]
    Call {
        node: NodeId,
        address: String,
        status: Box<Status>,
    },
}

impl Peers {
    pub fn new(inputs: mpsc::UnboundedSender<Input>, secret: Option<&str>) -> Self {
        Self {
            inner: Arc::default(),
            inputs,
            schedulers: Arc::default(),
            auth: ClientAuth::new(secret),
        }
    }

    /// The live global schedulers are at `addresses`; returns whether that changed
    /// whether any is up.
    fn set_schedulers(&self, addresses: Vec<String>) -> Option<bool> {
        let mut schedulers = self.schedulers.lock().unwrap_or_else(|e| e.into_inner());
        let was_up = !schedulers.is_empty();
        let mut known: HashMap<String, AuthChannel> = schedulers.drain(..).collect();
        for address in addresses {
            let channel = match known.remove(&address) {
                Some(channel) => channel,
                None => match channel(&address, &self.auth) {
                    Some(channel) => channel,
                    None => {
                        log::warn!(address = address.as_str(); "a global scheduler has a bad address");
                        continue;
                    }
                },
            };
            schedulers.push((address, channel));
        }
        let up = !schedulers.is_empty();
        (up != was_up).then_some(up)
    }

    /// Hands a task to a global scheduler (the first that takes it); the scheduler core
    /// hears where it went, or that none took it.
    pub fn spill(&self, task: TaskId, request: nm::ForwardTaskRequest) {
        let schedulers = self
            .schedulers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let inputs = self.inputs.clone();
        tokio::spawn(async move {
            let mut error = "no global scheduler is up".to_string();
            for (address, channel) in schedulers {
                let mut client = gs::global_scheduler_client::GlobalSchedulerClient::new(channel);
                match client.spill_task(request.clone()).await {
                    Ok(reply) => match NodeId::from_slice(&reply.into_inner().node_id) {
                        Ok(node) => {
                            let _ = inputs.send(Event::Spilled { task, node }.into());
                            return;
                        }
                        Err(e) => error = format!("global scheduler {address}: bad node id: {e}"),
                    },
                    Err(status) => {
                        error = format!("global scheduler {address}: {status}");
                        // Nobody can run it: another scheduler would say the same.
                        if status.code() == tonic::Code::FailedPrecondition {
                            break;
                        }
                    }
                }
            }
            let _ = inputs.send(Event::SpillFailed { task, error }.into());
        });
    }

    fn learn(&self, node: NodeId, address: String) {
        let mut peers = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get_mut(&node) {
            Some(peer) if peer.address == address => {}
            _ => {
                peers.insert(
                    node,
                    Peer {
                        address,
                        queue: None,
                    },
                );
            }
        }
    }

    fn forget(&self, node: &NodeId) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(node);
    }

    /// Queues `message` for `node`; sent after everything queued for it before.
    pub fn send(&self, node: NodeId, message: Outgoing) {
        let queue = {
            let mut peers = self.inner.lock().unwrap_or_else(|e| e.into_inner());
            match peers.get_mut(&node) {
                None => Err(PeerError::Unknown(node)),
                Some(peer) => match &peer.queue {
                    Some(queue) if !queue.is_closed() => Ok(queue.clone()),
                    _ => match connect(node, &peer.address, &self.auth) {
                        Ok(client) => {
                            let (tx, rx) = mpsc::unbounded_channel();
                            tokio::spawn(deliver(
                                node,
                                peer.address.clone(),
                                client,
                                rx,
                                self.inputs.clone(),
                            ));
                            peer.queue = Some(tx.clone());
                            Ok(tx)
                        }
                        Err(e) => Err(e),
                    },
                },
            }
        };
        match queue {
            Ok(queue) => {
                if let Err(mpsc::error::SendError(message)) = queue.send(message) {
                    fail(&self.inputs, node, message, "the connection closed".into());
                }
            }
            Err(e) => fail(&self.inputs, node, message, e.to_string()),
        }
    }
}

/// A connection (made on first use) to the gRPC server at `address` (`host:port`).
fn channel(address: &str, auth: &ClientAuth) -> Option<AuthChannel> {
    if address.is_empty() {
        return None;
    }
    let endpoint = Endpoint::from_shared(format!("http://{address}")).ok()?;
    Some(
        endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy(),
    )
    .map(|channel| auth.wrap(channel))
}

fn connect(
    node: NodeId,
    address: &str,
    auth: &ClientAuth,
) -> Result<nm::node_manager_client::NodeManagerClient<AuthChannel>, PeerError> {
    let channel = channel(address, auth).ok_or_else(|| PeerError::Address {
        node,
        address: address.to_string(),
    })?;
    Ok(nm::node_manager_client::NodeManagerClient::new(channel))
}

/// Tells the scheduler (or the log) that `message` did not reach `node`.
fn fail(inputs: &mpsc::UnboundedSender<Input>, node: NodeId, message: Outgoing, error: String) {
    match message {
        Outgoing::Forward { task, .. } => {
            let _ = inputs.send(Event::ForwardFailed { task, node, error }.into());
        }
        Outgoing::Finished(_) => {
            log::warn!(node:% = node; "cannot report a finished task to its home: {error}");
        }
        Outgoing::KillActor(_) => {
            log::warn!(node:% = node; "cannot ask a node to kill an actor: {error}");
        }
        Outgoing::Output(request) => {
            log::info!(node:% = node, pid = request.pid; "worker (its driver's node cannot be reached: {error}): {}", request.line);
        }
    }
}

/// Sends what is queued for `node`, one call at a time, in order.
async fn deliver(
    node: NodeId,
    address: String,
    mut client: nm::node_manager_client::NodeManagerClient<AuthChannel>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    while let Some(message) = queue.recv().await {
        let result = match &message {
            Outgoing::Forward { request, .. } => {
                client.forward_task((**request).clone()).await.map(|_| ())
            }
            Outgoing::Finished(request) => client.task_finished(request.clone()).await.map(|_| ()),
            Outgoing::KillActor(request) => client.kill_actor(request.clone()).await.map(|_| ()),
            Outgoing::Output(request) => client.worker_output(request.clone()).await.map(|_| ()),
        };
        if let Err(status) = result {
            let error = PeerError::Call {
                node,
                address: address.clone(),
                status: Box::new(status),
            };
            fail(&inputs, node, message, error.to_string());
        }
    }
}

/// Follows the other nodes: those alive at start, then heartbeats and node events.
/// A node is announced to the scheduler (with its resources) the first time it is seen.
pub fn watch(
    gcs: GcsClient,
    own: NodeId,
    peers: Peers,
    inputs: mpsc::UnboundedSender<Input>,
    cancel: CancellationToken,
) {
    let schedulers = (gcs.clone(), peers.clone(), inputs.clone(), cancel.clone());
    tokio::spawn(async move {
        let (gcs, peers, inputs, cancel) = schedulers;
        let mut tick = tokio::time::interval(SCHEDULERS_INTERVAL);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            match gcs.global_schedulers().await {
                Ok(live) => {
                    let addresses = live.into_iter().map(|s| s.address).collect();
                    if let Some(available) = peers.set_schedulers(addresses) {
                        let _ = inputs.send(Event::GlobalScheduler { available }.into());
                    }
                }
                Err(e) => log::debug!("cannot read the global schedulers: {e}"),
            }
        }
    });
    tokio::spawn(async move {
        let channels = vec![
            keys::HEARTBEATS_CHANNEL.to_string(),
            keys::NODE_EVENTS_CHANNEL.to_string(),
            keys::SHARD_EVENTS_CHANNEL.to_string(),
        ];
        let mut subscription = loop {
            match gcs.subscribe(Target::Primary, channels.clone()).await {
                Ok(subscription) => break subscription,
                Err(e) => {
                    log::warn!("cannot follow the other nodes: {e}; trying again");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        let mut known: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
        match gcs.nodes().await {
            Ok(nodes) => {
                for node in nodes.into_iter().filter(|n| n.alive && n.node_id != own) {
                    peers.learn(node.node_id, node.node_manager_address.clone());
                    known.insert(node.node_id);
                    let _ = inputs.send(
                        Event::NodeAdded {
                            node: node.node_id,
                            total: node.resources_total,
                        }
                        .into(),
                    );
                }
            }
            Err(e) => log::warn!("cannot read the node table: {e}"),
        }
        loop {
            let notification = tokio::select! {
                _ = cancel.cancelled() => return,
                n = subscription.next() => match n {
                    Some(n) => n,
                    None => return,
                },
            };
            let event = if notification.channel == keys::SHARD_EVENTS_CHANNEL {
                Event::GcsShardRestarted
            } else if notification.channel == keys::NODE_EVENTS_CHANNEL {
                let Some(NodeEvent::Dead(node)) = NodeEvent::parse(&notification.payload) else {
                    continue;
                };
                if node == own {
                    continue;
                }
                known.remove(&node);
                peers.forget(&node);
                Event::NodeRemoved { node }
            } else {
                let Ok(beat) = serde_json::from_slice::<Heartbeat>(&notification.payload) else {
                    continue;
                };
                let Ok(node) = beat.node_id.parse::<NodeId>() else {
                    continue;
                };
                if node == own {
                    continue;
                }
                if !known.contains(&node) {
                    match gcs.node(node).await {
                        Ok(Some(info)) if info.alive => {
                            peers.learn(node, info.node_manager_address.clone());
                            known.insert(node);
                            let _ = inputs.send(
                                Event::NodeAdded {
                                    node,
                                    total: info.resources_total,
                                }
                                .into(),
                            );
                        }
                        Ok(_) => continue,
                        Err(e) => {
                            log::warn!(node:% = node; "cannot read a node's entry: {e}");
                            continue;
                        }
                    }
                }
                Event::NodeHeartbeat {
                    node,
                    available: beat.resources_available,
                    queued: beat.queue_length,
                }
            };
            if inputs.send(event.into()).is_err() {
                return;
            }
        }
    });
}
