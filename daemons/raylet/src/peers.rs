//! Between raylets: the node manager service that other raylets call (tasks forwarded to
//! this node, results of tasks forwarded from it), the clients that call theirs, and the
//! watcher that follows the other nodes through the GCS (their heartbeats and their
//! joining and leaving) and tells the scheduler.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayd_common::auth::{AuthChannel, ClientAuth, ServerAuth};
use rayd_common::id::{ActorId, JobId, NodeId, ObjectId, TaskId};
use rayd_common::proto::globalscheduler::v1 as gs;
use rayd_common::proto::nodemanager::v1 as nm;
use rayd_gcs::{keys, GcsClient, Heartbeat, NodeEvent, Target};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::io::Input;
use crate::scheduler::Event;

/// How long connecting to another raylet may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the live global schedulers are read from the GCS (their entries live 5 s).
const SCHEDULERS_INTERVAL: Duration = Duration::from_secs(1);
/// How long one call to a global scheduler may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a raylet waits for more forwards before it acknowledges those it took.
const ACK_DELAY: Duration = Duration::from_millis(10);
/// How many forwards a raylet acknowledges at most at once.
const ACK_BATCH: u32 = 256;
/// How often an idle stream to another raylet is pinged, and how long a ping may take.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

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

fn forwarded(request: nm::ForwardTaskRequest) -> Result<Event, Status> {
    let spec = request
        .spec
        .ok_or_else(|| Status::invalid_argument("no task spec"))?;
    let home = node_id(&request.home_node_id, "home_node_id")?;
    Ok(Event::TaskForwarded {
        spec,
        home,
        hops: request.hops,
        job: request.job,
    })
}

/// The scheduler's event for one message of a peer's stream.
fn event_of(body: Option<nm::peer_message::Body>) -> Result<Event, Status> {
    use nm::peer_message::Body;
    match body.ok_or_else(|| Status::invalid_argument("an empty peer message"))? {
        Body::Forward(request) => forwarded(request),
        Body::Finished(request) => Ok(Event::RemoteTaskFinished {
            task: TaskId::from_slice(&request.task_id)
                .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))?,
            node: node_id(&request.node_id, "node_id")?,
            results: request.results,
        }),
        Body::Moved(request) => Ok(Event::TaskMoved {
            task: TaskId::from_slice(&request.task_id)
                .map_err(|e| Status::invalid_argument(format!("task_id: {e}")))?,
            node: node_id(&request.node_id, "node_id")?,
        }),
        Body::KillActor(request) => Ok(Event::KillActor {
            actor: ActorId::from_slice(&request.actor_id)
                .map_err(|e| Status::invalid_argument(format!("actor_id: {e}")))?,
            reason: request.reason,
        }),
        Body::Free(request) => request
            .object_ids
            .iter()
            .map(|bytes| {
                ObjectId::from_slice(bytes)
                    .map_err(|e| Status::invalid_argument(format!("object_ids: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Event::FreeObjects),
        Body::Output(request) => Ok(Event::RemoteOutput {
            job: JobId::from_slice(&request.job_id)
                .map_err(|e| Status::invalid_argument(format!("job_id: {e}")))?,
            pid: request.pid,
            line: request.line,
            stderr: request.stderr,
        }),
    }
}

type AckStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<nm::PeerAck, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl nm::node_manager_server::NodeManager for Service {
    async fn forward_task(
        &self,
        request: Request<nm::ForwardTaskRequest>,
    ) -> Result<Response<nm::ForwardTaskReply>, Status> {
        self.deliver(forwarded(request.into_inner())?)?;
        Ok(Response::new(nm::ForwardTaskReply {}))
    }

    type PeerStream = AckStream;

    async fn peer(
        &self,
        request: Request<tonic::Streaming<nm::PeerMessage>>,
    ) -> Result<Response<AckStream>, Status> {
        let mut inbound = request.into_inner();
        let inputs = self.inputs.clone();
        let (acks, outbound) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            use tokio_stream::StreamExt;
            // Forwards are acknowledged together, ACK_DELAY after the last one or every
            // ACK_BATCH: an ack per forward would wake the sender once more per task.
            let mut taken: Option<u64> = None;
            let mut since_ack = 0u32;
            loop {
                let next = match taken {
                    None => inbound.next().await,
                    Some(seq) => tokio::select! {
                        next = inbound.next() => next,
                        () = tokio::time::sleep(ACK_DELAY) => {
                            if acks.send(Ok(nm::PeerAck { seq, refused: String::new() })).is_err() {
                                return;
                            }
                            taken = None;
                            since_ack = 0;
                            continue;
                        }
                    },
                };
                let message = match next {
                    Some(Ok(message)) => message,
                    None => return,
                    Some(Err(status)) => {
                        log::debug!("a peer's stream broke: {status}");
                        return;
                    }
                };
                let seq = message.seq;
                let forward = matches!(message.body, Some(nm::peer_message::Body::Forward(_)));
                let ack = match event_of(message.body) {
                    Ok(event) => {
                        if inputs.send(event.into()).is_err() {
                            let _ = acks.send(Err(Status::unavailable("the raylet is stopping")));
                            return;
                        }
                        if forward {
                            taken = Some(seq);
                            since_ack += 1;
                        }
                        (since_ack >= ACK_BATCH).then(|| nm::PeerAck {
                            seq,
                            refused: String::new(),
                        })
                    }
                    // Acknowledges the forwards before it too.
                    Err(status) => Some(nm::PeerAck {
                        seq,
                        refused: status.message().to_string(),
                    }),
                };
                if let Some(ack) = ack {
                    taken = None;
                    since_ack = 0;
                    if acks.send(Ok(ack)).is_err() {
                        return;
                    }
                }
            }
        });
        let stream: AckStream = Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(
            outbound,
        ));
        Ok(Response::new(stream))
    }
}

/// Serves the node manager on `listener` until `cancel` fires.
pub fn serve(
    listener: TcpListener,
    inputs: mpsc::UnboundedSender<Input>,
    auth: ServerAuth,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    tokio::spawn(async move {
        auth.server()?
            .tcp_nodelay(true)
            .add_service(
                nm::node_manager_server::NodeManagerServer::with_interceptor(
                    Service { inputs },
                    auth.clone(),
                ),
            )
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                cancel.cancelled_owned(),
            )
            .await
    })
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
    /// A task of that home was handed on from here.
    Moved(nm::TaskMovedRequest),
    /// Objects freed by a program here: that node's copies go too.
    Free(nm::FreeObjectsRequest),
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
    pub fn new(inputs: mpsc::UnboundedSender<Input>, auth: ClientAuth) -> Self {
        Self {
            inner: Arc::default(),
            inputs,
            schedulers: Arc::default(),
            auth,
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

    /// The other nodes known here (heard from, and not gone).
    pub fn nodes(&self) -> Vec<NodeId> {
        let peers = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        peers.keys().copied().collect()
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

/// An endpoint for the gRPC server at `address` (`host:port`), connected on first use.
fn endpoint(address: &str, auth: &ClientAuth) -> Option<tonic::transport::Endpoint> {
    if address.is_empty() {
        return None;
    }
    let endpoint = auth.endpoint(address).ok()?;
    Some(endpoint.connect_timeout(CONNECT_TIMEOUT).tcp_nodelay(true))
}

/// A connection for single calls, each bounded by [`CALL_TIMEOUT`].
fn channel(address: &str, auth: &ClientAuth) -> Option<AuthChannel> {
    let endpoint = endpoint(address, auth)?;
    Some(auth.wrap(endpoint.timeout(CALL_TIMEOUT).connect_lazy()))
}

/// A connection for a peer's long-lived stream: no deadline per call, but HTTP/2 pings,
/// so that a peer that stops answering breaks the stream instead of stalling it.
fn connect(
    node: NodeId,
    address: &str,
    auth: &ClientAuth,
) -> Result<nm::node_manager_client::NodeManagerClient<AuthChannel>, PeerError> {
    let endpoint = endpoint(address, auth).ok_or_else(|| PeerError::Address {
        node,
        address: address.to_string(),
    })?;
    let channel = endpoint
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_INTERVAL)
        .keep_alive_while_idle(true)
        .connect_lazy();
    Ok(nm::node_manager_client::NodeManagerClient::new(
        auth.wrap(channel),
    ))
}

/// Tells the scheduler (or the log) that `message` did not reach `node`.
fn fail(inputs: &mpsc::UnboundedSender<Input>, node: NodeId, message: Outgoing, error: String) {
    match message {
        Outgoing::Forward { task, .. } => forward_failed(inputs, node, task, error),
        Outgoing::Finished(_) => {
            log::warn!(node:% = node; "cannot report a finished task to its home: {error}");
        }
        Outgoing::KillActor(_) => {
            log::warn!(node:% = node; "cannot ask a node to kill an actor: {error}");
        }
        Outgoing::Moved(_) => {
            log::warn!(node:% = node; "cannot tell a task's home where it went: {error}");
        }
        Outgoing::Free(request) => {
            log::warn!(node:% = node, objects = request.object_ids.len(); "cannot ask a node to drop freed objects: {error}");
        }
        Outgoing::Output(request) => {
            log::info!(node:% = node, pid = request.pid; "worker (its driver's node cannot be reached: {error}): {}", request.line);
        }
    }
}

fn forward_failed(
    inputs: &mpsc::UnboundedSender<Input>,
    node: NodeId,
    task: TaskId,
    error: String,
) {
    let _ = inputs.send(Event::ForwardFailed { task, node, error }.into());
}

/// One stream to a peer while it lasts: what was sent on it and not yet acknowledged.
struct PeerStream {
    sender: mpsc::UnboundedSender<nm::PeerMessage>,
    next_seq: u64,
    /// Forwards sent and not yet acknowledged, oldest first.
    unacked: VecDeque<(u64, TaskId)>,
    /// Other messages sent since the stream opened (they are never acknowledged).
    others: u64,
}

impl PeerStream {
    fn new(sender: mpsc::UnboundedSender<nm::PeerMessage>) -> Self {
        Self {
            sender,
            next_seq: 1,
            unacked: VecDeque::new(),
            others: 0,
        }
    }

    /// Puts `message` on the stream; gives it back when the stream is gone already.
    fn push(&mut self, message: Outgoing) -> Result<(), Outgoing> {
        use nm::peer_message::Body;
        if self.sender.is_closed() {
            return Err(message);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let body = match message {
            Outgoing::Forward { task, request } => {
                self.unacked.push_back((seq, task));
                Body::Forward(*request)
            }
            Outgoing::Finished(request) => Body::Finished(request),
            Outgoing::KillActor(request) => Body::KillActor(request),
            Outgoing::Output(request) => Body::Output(request),
            Outgoing::Moved(request) => Body::Moved(request),
            Outgoing::Free(request) => Body::Free(request),
        };
        if !matches!(body, Body::Forward(_)) {
            self.others += 1;
        }
        // Closed since the check: the message counts as sent on a stream that broke, and
        // is failed with the others when the break is seen.
        let _ = self.sender.send(nm::PeerMessage {
            seq,
            body: Some(body),
        });
        Ok(())
    }

    /// The peer took every message up to `ack.seq`, or refused that one: the forwards it
    /// took, and the one it refused.
    fn acknowledged(&mut self, ack: &nm::PeerAck) -> (Vec<TaskId>, Option<TaskId>) {
        let (mut taken, mut refused) = (Vec::new(), None);
        while let Some(&(seq, task)) = self.unacked.front() {
            if seq > ack.seq {
                break;
            }
            self.unacked.pop_front();
            if seq == ack.seq && !ack.refused.is_empty() {
                refused = Some(task);
            } else {
                taken.push(task);
            }
        }
        (taken, refused)
    }
}

/// Sends what is queued for `node`, in order, on one stream at a time: a stream that
/// breaks fails its unacknowledged forwards (the scheduler places them again) and the
/// next message opens a new one.
async fn deliver(
    node: NodeId,
    address: String,
    mut client: nm::node_manager_client::NodeManagerClient<AuthChannel>,
    mut queue: mpsc::UnboundedReceiver<Outgoing>,
    inputs: mpsc::UnboundedSender<Input>,
) {
    let mut next = None;
    loop {
        let first = match next.take() {
            Some(message) => message,
            None => match queue.recv().await {
                Some(message) => message,
                None => return,
            },
        };
        let (sender, receiver) = mpsc::unbounded_channel();
        let mut stream = PeerStream::new(sender);
        if let Err(message) = stream.push(first) {
            fail(&inputs, node, message, "the stream closed".into());
            continue;
        }
        let call = client.peer(tokio_stream::wrappers::UnboundedReceiverStream::new(
            receiver,
        ));
        let error = match call.await {
            Err(status) => status,
            Ok(response) => {
                let mut acks = response.into_inner();
                loop {
                    tokio::select! {
                        message = queue.recv() => match message {
                            // Forgotten (the node left): dropping the sender ends the stream,
                            // and what it had not acknowledged is placed again.
                            None => {
                                for (_, task) in stream.unacked.drain(..) {
                                    forward_failed(&inputs, node, task, format!("node {node} left"));
                                }
                                return;
                            }
                            Some(message) => {
                                if let Err(message) = stream.push(message) {
                                    next = Some(message);
                                    break Status::unavailable("the stream closed");
                                }
                            }
                        },
                        ack = acks.message() => match ack {
                            Ok(Some(ack)) => {
                                let (taken, refused) = stream.acknowledged(&ack);
                                if !taken.is_empty() {
                                    let _ = inputs.send(Event::ForwardsTaken { node, tasks: taken }.into());
                                }
                                if let Some(task) = refused {
                                    forward_failed(&inputs, node, task, format!("node {node} refused it: {}", ack.refused));
                                } else if !ack.refused.is_empty() {
                                    log::warn!(node:% = node; "a node refused a message: {}", ack.refused);
                                }
                            }
                            Ok(None) => break Status::unavailable("the node ended the stream"),
                            Err(status) => break status,
                        },
                    }
                }
            }
        };
        let error = PeerError::Call {
            node,
            address: address.clone(),
            status: Box::new(error),
        }
        .to_string();
        for (_, task) in stream.unacked.drain(..) {
            forward_failed(&inputs, node, task, error.clone());
        }
        if stream.others > 0 {
            log::warn!(node:% = node, messages = stream.others; "messages to a node may be lost (results, kills, output): {error}");
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
        // Nodes whose death this raylet heard of (or that were dead before it came).
        let mut gone: std::collections::HashSet<NodeId> = std::collections::HashSet::new();
        match gcs.nodes().await {
            Ok(nodes) => {
                gone.extend(nodes.iter().filter(|n| !n.alive).map(|n| n.node_id));
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
        let mut reconcile = tokio::time::interval(RECONCILE_INTERVAL);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        reconcile.tick().await;
        loop {
            let notification = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = reconcile.tick() => {
                    for node in missed_deaths(&gcs, &mut gone).await {
                        if node == own {
                            continue;
                        }
                        known.remove(&node);
                        log::warn!(node:% = node; "the node table says a node died that no event announced");
                        peers.forget(&node);
                        if inputs.send(Event::NodeRemoved { node }.into()).is_err() {
                            return;
                        }
                    }
                    continue;
                }
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
                gone.insert(node);
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

/// How often the node table is read for deaths that no event announced.
const RECONCILE_INTERVAL: Duration = Duration::from_secs(3);

/// The nodes that the node table says are dead and that are not in `gone` yet (added).
/// Redis pub/sub delivers at most once (a message published while a subscriber reconnects
/// is lost): a node whose death event was missed kept, in this raylet's view, the tasks
/// placed on it, and their drivers waited for ever. Nodes absent from the table are left
/// alone (a GCS restarted empty lists none until they register again).
async fn missed_deaths(
    gcs: &GcsClient,
    gone: &mut std::collections::HashSet<NodeId>,
) -> Vec<NodeId> {
    let nodes = match gcs.nodes().await {
        Ok(nodes) => nodes,
        Err(e) => {
            log::debug!("cannot read the node table: {e}");
            return Vec::new();
        }
    };
    nodes
        .into_iter()
        .filter(|n| !n.alive && gone.insert(n.node_id))
        .map(|n| n.node_id)
        .collect()
}
