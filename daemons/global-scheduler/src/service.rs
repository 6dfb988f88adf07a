//! The `GlobalScheduler` gRPC service: `SpillTask` places a task (the rule in
//! [`crate::placement`]) and forwards it to the chosen node's raylet.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rayd_common::auth::{AuthChannel, ClientAuth};
use rayd_common::id::{NodeId, ObjectId};
use rayd_common::proto::common::v1::{task_arg, TaskSpec};
use rayd_common::proto::globalscheduler::v1 as gs;
use rayd_common::proto::nodemanager::v1 as nm;
use rayd_gcs::GcsClient;
use tonic::{Request, Response, Status};

use crate::metrics::SpillMetrics;
use crate::placement::{Amounts, Unplaceable, View};
use crate::watch::now_ms;

/// How long connecting to a raylet may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one forward to a raylet may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Service {
    gcs: GcsClient,
    view: Arc<Mutex<View>>,
    /// A channel per node manager address, made on first use.
    channels: Mutex<HashMap<String, AuthChannel>>,
    /// Spills being placed now (a stop waits for them, not for idle connections).
    in_flight: Arc<AtomicUsize>,
    /// The cluster's token on every call to a raylet.
    auth: ClientAuth,
    metrics: SpillMetrics,
}

/// Counts one spill in flight while it lives.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// `{"CPU": 1, "Custom": 2}` as `CPU 1, Custom 2`.
fn describe(request: &Amounts) -> String {
    if request.is_empty() {
        return "no resources".into();
    }
    request
        .iter()
        .map(|(name, amount)| format!("{name} {amount}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The IDs of the task's object arguments, each once.
fn object_args(spec: &TaskSpec) -> Vec<ObjectId> {
    let mut seen = HashSet::new();
    spec.args
        .iter()
        .filter_map(|arg| match &arg.value {
            Some(task_arg::Value::ObjectId(bytes)) => ObjectId::from_slice(bytes).ok(),
            _ => None,
        })
        .filter(|id| seen.insert(*id))
        .collect()
}

impl Service {
    /// The service; `in_flight` counts the spills being placed.
    pub fn new(
        gcs: GcsClient,
        view: Arc<Mutex<View>>,
        in_flight: Arc<AtomicUsize>,
        metrics: SpillMetrics,
    ) -> Self {
        Self {
            gcs,
            view,
            channels: Mutex::new(HashMap::new()),
            in_flight,
            auth: ClientAuth::new(None),
            metrics,
        }
    }

    /// The service, calling the raylets with `auth` (the cluster's token, TLS).
    pub fn with_auth(mut self, auth: ClientAuth) -> Self {
        self.auth = auth;
        self
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Per node, the bytes of `spec`'s object arguments its store holds (the GCS object
    /// table). An object the table cannot tell about counts nowhere.
    async fn local_bytes(&self, spec: &TaskSpec) -> HashMap<NodeId, u64> {
        let objects = object_args(spec);
        let infos =
            futures::future::join_all(objects.iter().map(|o| self.gcs.object_info(*o))).await;
        let mut bytes: HashMap<NodeId, u64> = HashMap::new();
        for (object, info) in objects.iter().zip(infos) {
            match info {
                Ok(Some(info)) => {
                    for node in info.locations {
                        *bytes.entry(node).or_default() += info.size;
                    }
                }
                Ok(None) => {}
                Err(e) => log::warn!(object:% = object; "cannot read an argument's locations: {e}"),
            }
        }
        bytes
    }

    fn client(
        &self,
        address: &str,
    ) -> Result<nm::node_manager_client::NodeManagerClient<AuthChannel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => {
                let channel = self
                    .auth
                    .endpoint(address)
                    .map_err(|e| {
                        Status::internal(format!("bad node manager address {address:?}: {e}"))
                    })?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .timeout(CALL_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect_lazy();
                let channel = self.auth.wrap(channel);
                channels.insert(address.to_string(), channel.clone());
                channel
            }
        };
        Ok(nm::node_manager_client::NodeManagerClient::new(channel))
    }
}

#[tonic::async_trait]
impl gs::global_scheduler_server::GlobalScheduler for Service {
    async fn spill_task(
        &self,
        request: Request<nm::ForwardTaskRequest>,
    ) -> Result<Response<gs::SpillTaskReply>, Status> {
        let _in_flight = InFlight::new(&self.in_flight);
        self.metrics.received.inc();
        let mut forward = request.into_inner();
        let spec = forward
            .spec
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("no task spec"))?;
        if forward.home_node_id.len() != rayd_common::id::ID_LEN {
            return Err(Status::invalid_argument("home_node_id: not a node id"));
        }
        let request: Amounts = spec
            .resources
            .iter()
            .map(|(name, amount)| (name.clone(), *amount))
            .collect();
        let task = hex::encode(&spec.task_id);
        let function = spec.function_name.clone();
        let local_bytes = self.local_bytes(spec).await;
        forward.hops = forward.hops.saturating_add(1);
        // Not back to the node that spilled it; and when that node could run it itself,
        // only to a node with room now: a queue elsewhere is no shorter than its own.
        let spiller = NodeId::from_slice(&forward.from_node_id).ok();
        let mut tried: HashSet<NodeId> = spiller.into_iter().collect();
        let room_only = spiller.is_some_and(|n| self.view().could_run(&n, &request));
        loop {
            let (node, address) = {
                let mut view = self.view();
                let ranked = view.rank(&request, &local_bytes, now_ms());
                let node = match ranked {
                    Ok(nodes) => nodes
                        .into_iter()
                        .find(|n| !tried.contains(n) && (!room_only || view.has_room(n, &request))),
                    Err(Unplaceable::Infeasible) => {
                        self.metrics.unplaced.inc();
                        return Err(Status::failed_precondition(format!(
                            "no node can run task {task} ({function}): it needs {}, more than \
                             any live node has",
                            describe(&request)
                        )));
                    }
                    Err(Unplaceable::NoneAvailable) => None,
                };
                let Some(node) = node else {
                    self.metrics.unplaced.inc();
                    if room_only {
                        return Err(Status::unavailable(format!(
                            "no other node has room for task {task} ({function}, needs {}) \
                             now: it waits on the node that spilled it",
                            describe(&request)
                        )));
                    }
                    return Err(Status::unavailable(format!(
                        "no node took task {task} ({function}, needs {}): those that could run \
                         it are silent or refused it",
                        describe(&request)
                    )));
                };
                view.charge(&node, &request);
                (node, view.address(&node).unwrap_or_default().to_string())
            };
            let result = match self.client(&address) {
                Ok(mut client) => client.forward_task(forward.clone()).await.map(|_| ()),
                Err(status) => Err(status),
            };
            match result {
                Ok(()) => {
                    log::debug!(task = task.as_str(), node:% = node; "task placed");
                    self.metrics.placed.inc();
                    return Ok(Response::new(gs::SpillTaskReply {
                        node_id: node.as_bytes().to_vec(),
                    }));
                }
                Err(status) => {
                    log::warn!(
                        task = task.as_str(), node:% = node, address = address.as_str();
                        "node did not take a task: {}; trying another", status.message()
                    );
                    self.metrics.refused.inc();
                    tried.insert(node);
                    let mut view = self.view();
                    view.refund(&node, &request);
                    view.refused(&node);
                }
            }
        }
    }
}
