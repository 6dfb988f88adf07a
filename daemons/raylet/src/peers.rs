//! Between raylets: the node manager service that other raylets call (tasks forwarded to
//! this node, results of tasks forwarded from it), the clients that call theirs, and the
//! watcher that follows the other nodes through the GCS (their heartbeats and their
//! joining and leaving) and tells the scheduler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayd_common::id::{NodeId, TaskId};
use rayd_common::proto::nodemanager::v1 as nm;
use rayd_gcs::{keys, GcsClient, Heartbeat, Target};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::io::Input;
use crate::scheduler::Event;

/// How long connecting to another raylet may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
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
}

/// Serves the node manager on `listener` until `cancel` fires.
pub fn serve(
    listener: TcpListener,
    inputs: mpsc::UnboundedSender<Input>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<Result<(), tonic::transport::Error>> {
    let server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(nm::node_manager_server::NodeManagerServer::new(Service {
            inputs,
        }))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            cancel.cancelled_owned(),
        );
    tokio::spawn(server)
}

/// The other raylets: their node manager addresses (learned by the watcher) and a
/// connection to each, made on first use.
#[derive(Debug, Clone, Default)]
pub struct Peers {
    inner: Arc<Mutex<HashMap<NodeId, Peer>>>,
}

#[derive(Debug)]
struct Peer {
    address: String,
    channel: Option<Channel>,
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
    fn learn(&self, node: NodeId, address: String) {
        let mut peers = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match peers.get_mut(&node) {
            Some(peer) if peer.address == address => {}
            _ => {
                peers.insert(
                    node,
                    Peer {
                        address,
                        channel: None,
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

    fn client(
        &self,
        node: NodeId,
    ) -> Result<(String, nm::node_manager_client::NodeManagerClient<Channel>), PeerError> {
        let mut peers = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let peer = peers.get_mut(&node).ok_or(PeerError::Unknown(node))?;
        let channel = match &peer.channel {
            Some(channel) => channel.clone(),
            None => {
                let bad = || PeerError::Address {
                    node,
                    address: peer.address.clone(),
                };
                if peer.address.is_empty() {
                    return Err(bad());
                }
                let channel = Endpoint::from_shared(format!("http://{}", peer.address))
                    .map_err(|_| bad())?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                peer.channel = Some(channel.clone());
                channel
            }
        };
        Ok((
            peer.address.clone(),
            nm::node_manager_client::NodeManagerClient::new(channel),
        ))
    }

    /// Hands a task to `node`.
    pub async fn forward(
        &self,
        node: NodeId,
        request: nm::ForwardTaskRequest,
    ) -> Result<(), PeerError> {
        let (address, mut client) = self.client(node)?;
        client
            .forward_task(request)
            .await
            .map(|_| ())
            .map_err(|status| PeerError::Call {
                node,
                address,
                status: Box::new(status),
            })
    }

    /// Tells `home` that a task forwarded from it finished here.
    pub async fn finished(
        &self,
        home: NodeId,
        request: nm::TaskFinishedRequest,
    ) -> Result<(), PeerError> {
        let (address, mut client) = self.client(home)?;
        client
            .task_finished(request)
            .await
            .map(|_| ())
            .map_err(|status| PeerError::Call {
                node: home,
                address,
                status: Box::new(status),
            })
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
    tokio::spawn(async move {
        let channels = vec![
            keys::HEARTBEATS_CHANNEL.to_string(),
            keys::NODE_EVENTS_CHANNEL.to_string(),
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
            let event = if notification.channel == keys::NODE_EVENTS_CHANNEL {
                let text = String::from_utf8_lossy(&notification.payload);
                let mut words = text.split_whitespace();
                let (Some(node), Some(state)) = (words.next(), words.next()) else {
                    continue;
                };
                let Ok(node) = node.parse::<NodeId>() else {
                    continue;
                };
                if node == own || state != "dead" {
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
