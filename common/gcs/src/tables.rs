//! Typed reads and writes of the GCS tables (schema in [`crate::keys`]).
//!
//! Multi-command writes go out as one pipeline; fred additionally pipelines concurrent
//! callers on each connection, so callers that spawn their writes never wait on Redis.

use std::collections::{BTreeMap, HashMap};
use std::time::{SystemTime, UNIX_EPOCH};

use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::client::{GcsClient, GcsError};
use crate::keys::{self, Table};
use rayd_common::id::{ActorId, FunctionId, JobId, NodeId, ObjectId, TaskId, WorkerId};

/// Milliseconds since the Unix epoch: the clock of the GCS's timestamps.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

type Fields = HashMap<String, Vec<u8>>;

fn text(fields: &Fields, name: &'static str) -> Result<String, GcsError> {
    let raw = fields.get(name).ok_or(GcsError::Malformed {
        what: name,
        reason: "field missing".into(),
    })?;
    String::from_utf8(raw.clone()).map_err(|e| GcsError::Malformed {
        what: name,
        reason: e.to_string(),
    })
}

fn parsed<T: std::str::FromStr>(fields: &Fields, name: &'static str) -> Result<T, GcsError>
where
    T::Err: std::fmt::Display,
{
    text(fields, name)?
        .parse()
        .map_err(|e: T::Err| GcsError::Malformed {
            what: name,
            reason: e.to_string(),
        })
}

fn json<T: serde::de::DeserializeOwned>(
    fields: &Fields,
    name: &'static str,
) -> Result<T, GcsError> {
    serde_json::from_str(&text(fields, name)?).map_err(|e| GcsError::Malformed {
        what: name,
        reason: e.to_string(),
    })
}

fn to_json(value: &impl Serialize) -> String {
    // Maps of strings to numbers and plain structs always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

/// A message of [`keys::NODE_EVENTS_CHANNEL`]: `<node hex> alive` or `<node hex> dead`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeEvent {
    Alive(NodeId),
    Dead(NodeId),
}

impl NodeEvent {
    /// Reads a message of the channel; `None` for anything else.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut words = text.split_whitespace();
        let node: NodeId = words.next()?.parse().ok()?;
        match (words.next()?, words.next()) {
            ("alive", None) => Some(NodeEvent::Alive(node)),
            ("dead", None) => Some(NodeEvent::Dead(node)),
            _ => None,
        }
    }
}

impl std::fmt::Display for NodeEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeEvent::Alive(node) => write!(f, "{node} alive"),
            NodeEvent::Dead(node) => write!(f, "{node} dead"),
        }
    }
}

/// A node in the node table.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeInfo {
    pub node_id: NodeId,
    pub node_ip_address: String,
    /// Unix socket of the node's raylet.
    pub raylet_socket: String,
    /// Unix socket of the node's plasma store.
    pub plasma_socket: String,
    /// `host:port` of the node's object manager (gRPC).
    pub object_manager_address: String,
    /// `host:port` of the node's raylet for other raylets (gRPC node manager); empty for
    /// a node registered by an older raylet.
    pub node_manager_address: String,
    pub resources_total: BTreeMap<String, f64>,
    pub resources_available: BTreeMap<String, f64>,
    pub alive: bool,
    pub last_heartbeat_ms: u64,
    /// Tasks queued (waiting for arguments, resources or a worker), as of the last heartbeat.
    pub queued_tasks: u64,
    /// Tasks running, as of the last heartbeat.
    pub running_tasks: u64,
    /// The node's object store, as its plasma last reported.
    pub store: Option<StoreFigures>,
}

/// A plasma store's figures, reported to the node table every few seconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreFigures {
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub objects: u64,
    pub evictions: u64,
    /// Objects on disk now (spilled when memory was full).
    #[serde(default)]
    pub spilled_objects: u64,
    /// Bytes on disk now.
    #[serde(default)]
    pub spilled_bytes: u64,
    /// Bytes spilled since the store started.
    #[serde(default)]
    pub spill_written_bytes: u64,
    /// Bytes restored from disk since the store started.
    #[serde(default)]
    pub spill_restored_bytes: u64,
    /// When the store wrote these figures (ms since the Unix epoch): its heartbeat, for
    /// `rayd status`. 0 from a store that predates it.
    #[serde(default)]
    pub reported_ms: u64,
}

/// A node's periodic report, published on `rayd:heartbeats`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub node_id: String,
    pub resources_available: BTreeMap<String, f64>,
    pub queue_length: u64,
    #[serde(default)]
    pub running: u64,
    pub time_ms: u64,
}

/// Where an object is and how big it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub locations: Vec<NodeId>,
    /// The last copy listed was removed by `ray.internal.free` (and none was made since):
    /// the object is not rebuilt (`ObjectFreedError`).
    pub freed: bool,
}

/// A task in the task table: its spec (the lineage) and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEntry {
    pub task_id: TaskId,
    /// The encoded `rayd.common.v1.TaskSpec` (shared, not copied, on its way to Redis).
    pub spec: prost::bytes::Bytes,
    /// `waiting`, `scheduled`, `running`, `finished`, `failed`, ...
    pub state: String,
    pub node: Option<NodeId>,
}

/// An actor in the actor table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorInfo {
    pub actor_id: ActorId,
    pub job_id: JobId,
    pub node: Option<NodeId>,
    pub worker: Option<WorkerId>,
    /// `pending`, `alive`, `restarting`, `dead`.
    pub state: String,
}

/// An exported function or actor class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    pub function_id: FunctionId,
    pub job_id: JobId,
    pub name: String,
    /// The pickled definition.
    pub definition: Vec<u8>,
    /// [`rayd_common::auth::function_mac`] of the definition under the cluster's secret
    /// (empty in an open cluster): workers unpickle only definitions whose MAC verifies.
    pub mac: Vec<u8>,
}

/// An error pushed to the driver of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// Short machine-readable kind, e.g. `worker_died`.
    pub kind: String,
    pub message: String,
    pub time_ms: u64,
}

fn optional_id<T: std::str::FromStr>(
    fields: &Fields,
    name: &'static str,
) -> Result<Option<T>, GcsError>
where
    T::Err: std::fmt::Display,
{
    match fields.get(name) {
        None => Ok(None),
        Some(raw) if raw.is_empty() => Ok(None),
        Some(_) => parsed(fields, name).map(Some),
    }
}

fn id_text<T: std::fmt::Display>(id: Option<T>) -> String {
    id.map(|id| id.to_string()).unwrap_or_default()
}

/// Sets the hash of each task in KEYS from four ARGV each: state, node, updated_ms, spec
/// (an empty spec leaves the stored one).
/// ARGV: the time, then state, node and spec (empty: keep the one written) per key.
const PUT_TASKS_SCRIPT: &str = "local now = ARGV[1] \
for i, key in ipairs(KEYS) do \
    local a = 1 + (i - 1) * 3 \
    if ARGV[a + 3] == '' then \
        redis.call('HSET', key, 'state', ARGV[a + 1], 'node', ARGV[a + 2], 'updated_ms', now) \
    else \
        redis.call('HSET', key, 'state', ARGV[a + 1], 'node', ARGV[a + 2], 'updated_ms', now, \
            'spec', ARGV[a + 3]) \
    end \
end \
return #KEYS";

/// KEYS: the actor's entry, its events channel. ARGV: job, node, worker, updated_ms. Writes
/// a `pending` entry unless the actor is alive on that node already.
/// Removes a node's copy of an object that a program freed there, and marks the object
/// freed when no other copy is listed (another node's copy can still be pulled, and when
/// it goes too, the object is rebuilt or lost as any other). KEYS: the entry, the
/// channel; ARGV: the node's field, the time, the announcement.
const REMOVE_FREED_COPY_SCRIPT: &str = "redis.call('HDEL', KEYS[1], ARGV[1]) \
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do \
    if string.sub(field, 1, 5) == 'node:' then \
        redis.call('PUBLISH', KEYS[2], ARGV[3]) \
        return 0 \
    end \
end \
redis.call('HSET', KEYS[1], 'freed', ARGV[2]) \
redis.call('PUBLISH', KEYS[2], ARGV[3]) \
return 1";

const PUT_PENDING_ACTOR_SCRIPT: &str = "local cur = redis.call('HMGET', KEYS[1], 'state', 'node') \
if cur[1] == 'alive' and cur[2] == ARGV[2] then return 0 end \
redis.call('HSET', KEYS[1], 'job', ARGV[1], 'node', ARGV[2], 'worker', ARGV[3], \
    'state', 'pending', 'updated_ms', ARGV[4]) \
redis.call('PUBLISH', KEYS[2], 'pending') \
return 1";

impl GcsClient {
    // ---- nodes (primary) ----

    /// Registers (or re-registers) a node as alive and announces it.
    pub async fn register_node(&self, node: &NodeInfo) -> Result<(), GcsError> {
        let key = keys::key(Table::Node, &node.node_id);
        let pipeline = self.primary().pipeline();
        let _: () = pipeline
            .hset(
                &key,
                [
                    ("node_ip_address", node.node_ip_address.clone()),
                    ("raylet_socket", node.raylet_socket.clone()),
                    ("plasma_socket", node.plasma_socket.clone()),
                    (
                        "object_manager_address",
                        node.object_manager_address.clone(),
                    ),
                    ("node_manager_address", node.node_manager_address.clone()),
                    ("resources_total", to_json(&node.resources_total)),
                    ("resources_available", to_json(&node.resources_available)),
                    ("state", "alive".to_string()),
                    ("last_heartbeat_ms", now_ms().to_string()),
                ],
            )
            .await?;
        let _: () = pipeline.sadd(keys::NODES, node.node_id.hex()).await?;
        let _: () = pipeline
            .publish(
                keys::NODE_EVENTS_CHANNEL,
                NodeEvent::Alive(node.node_id).to_string(),
            )
            .await?;
        let _: Value = pipeline.all().await?;
        Ok(())
    }

    /// Records the figures of `node`'s object store in its node entry.
    pub async fn put_store_figures(
        &self,
        node: NodeId,
        figures: &StoreFigures,
    ) -> Result<(), GcsError> {
        let _: () = self
            .primary()
            .hset(keys::key(Table::Node, &node), [("store", to_json(figures))])
            .await?;
        Ok(())
    }

    /// One node, if registered.
    pub async fn node(&self, node: NodeId) -> Result<Option<NodeInfo>, GcsError> {
        let fields: Fields = self
            .primary()
            .hgetall(keys::key(Table::Node, &node))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(NodeInfo {
            node_id: node,
            node_ip_address: text(&fields, "node_ip_address")?,
            raylet_socket: text(&fields, "raylet_socket")?,
            plasma_socket: text(&fields, "plasma_socket")?,
            object_manager_address: text(&fields, "object_manager_address")?,
            node_manager_address: text(&fields, "node_manager_address").unwrap_or_default(),
            resources_total: json(&fields, "resources_total")?,
            resources_available: json(&fields, "resources_available")?,
            alive: text(&fields, "state")? == "alive",
            last_heartbeat_ms: parsed(&fields, "last_heartbeat_ms")?,
            queued_tasks: parsed(&fields, "queue_length").unwrap_or(0),
            running_tasks: parsed(&fields, "running").unwrap_or(0),
            store: fields
                .contains_key("store")
                .then(|| json(&fields, "store"))
                .transpose()?,
        }))
    }

    /// Every registered node, dead ones included, in ID order.
    pub async fn nodes(&self) -> Result<Vec<NodeInfo>, GcsError> {
        let mut ids: Vec<String> = self.primary().smembers(keys::NODES).await?;
        ids.sort();
        let mut nodes = Vec::with_capacity(ids.len());
        for id in ids {
            let id: NodeId =
                id.parse()
                    .map_err(|e: rayd_common::id::IdError| GcsError::Malformed {
                        what: "node id",
                        reason: e.to_string(),
                    })?;
            if let Some(node) = self.node(id).await? {
                nodes.push(node);
            }
        }
        Ok(nodes)
    }

    // ---- objects (shards) ----

    /// Records that `node` holds a copy of `object` of `size` bytes, and announces it.
    pub async fn add_object_location(
        &self,
        object: ObjectId,
        node: NodeId,
        size: u64,
    ) -> Result<(), GcsError> {
        let key = keys::key(Table::Object, &object);
        let pipeline = self.shard_for(object.as_bytes()).pipeline();
        let _: () = pipeline
            .hset(
                &key,
                [
                    ("size".to_string(), size.to_string()),
                    (format!("node:{node}"), now_ms().to_string()),
                ],
            )
            .await?;
        // A copy made again (a re-run, a put of the same ID) is not freed.
        let _: () = pipeline.hdel(key, "freed").await?;
        let _: () = pipeline
            .publish(
                keys::events_channel(Table::Object, &object),
                format!("added {node} {size}"),
            )
            .await?;
        let _: Value = pipeline.all().await?;
        Ok(())
    }

    /// Records that `node` no longer holds `object`, and announces it. `freed`: a program
    /// freed it there; with no other copy listed, the object is marked freed (see
    /// [`ObjectInfo::freed`]).
    pub async fn remove_object_location(
        &self,
        object: ObjectId,
        node: NodeId,
        freed: bool,
    ) -> Result<(), GcsError> {
        let key = keys::key(Table::Object, &object);
        let channel = keys::events_channel(Table::Object, &object);
        let announcement = format!("removed {node}");
        if freed {
            let _: Value = self
                .shard_for(object.as_bytes())
                .eval(
                    REMOVE_FREED_COPY_SCRIPT,
                    vec![key, channel],
                    vec![format!("node:{node}"), now_ms().to_string(), announcement],
                )
                .await?;
            return Ok(());
        }
        let pipeline = self.shard_for(object.as_bytes()).pipeline();
        let _: () = pipeline.hdel(key, format!("node:{node}")).await?;
        let _: () = pipeline.publish(channel, announcement).await?;
        let _: Value = pipeline.all().await?;
        Ok(())
    }

    /// An object's size and locations, if it was ever stored.
    pub async fn object_info(&self, object: ObjectId) -> Result<Option<ObjectInfo>, GcsError> {
        let fields: Fields = self
            .shard_for(object.as_bytes())
            .hgetall(keys::key(Table::Object, &object))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        let mut locations = Vec::new();
        for name in fields.keys() {
            if let Some(hex) = name.strip_prefix("node:") {
                locations.push(hex.parse().map_err(|e: rayd_common::id::IdError| {
                    GcsError::Malformed {
                        what: "object location",
                        reason: e.to_string(),
                    }
                })?);
            }
        }
        locations.sort();
        Ok(Some(ObjectInfo {
            // An entry may hold only the mark of a free whose object's seal was never
            // recorded (its report failed, or its shard restarted empty).
            size: if fields.contains_key("size") {
                parsed(&fields, "size")?
            } else {
                0
            },
            locations,
            freed: fields.contains_key("freed"),
        }))
    }

    // ---- tasks (shards) ----

    /// Writes a task's spec and state.
    pub async fn put_task(&self, task: &TaskEntry) -> Result<(), GcsError> {
        self.put_tasks(std::slice::from_ref(task)).await
    }

    /// Writes many tasks' entries with one command per shard (a script that sets each
    /// task's hash), since per-command overhead is what a busy raylet's lineage costs. An
    /// entry with an empty spec updates only the state and node of a task written before.
    pub async fn put_tasks(&self, tasks: &[TaskEntry]) -> Result<(), GcsError> {
        let count = self.shard_addresses().len();
        let now = Value::from(now_ms().to_string());
        let mut by_shard: Vec<(Vec<String>, Vec<Value>)> = vec![(Vec::new(), vec![now]); count];
        // A batch repeats a few states and (usually) one node: each is made once.
        let mut states: HashMap<&str, Value> = HashMap::new();
        let mut nodes: HashMap<Option<NodeId>, Value> = HashMap::new();
        for task in tasks {
            let (keys, args) = &mut by_shard[keys::shard_index(task.task_id.as_bytes(), count)];
            keys.push(keys::key(Table::Task, &task.task_id));
            args.extend([
                states
                    .entry(task.state.as_str())
                    .or_insert_with(|| Value::from(task.state.as_str()))
                    .clone(),
                nodes
                    .entry(task.node)
                    .or_insert_with(|| Value::from(id_text(task.node)))
                    .clone(),
                Value::Bytes(task.spec.clone()),
            ]);
        }
        let writes = by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, (keys, _))| !keys.is_empty())
            .filter_map(|(index, (keys, args))| {
                let shard = self.shard(index)?;
                Some(async move {
                    let _: Value = shard.eval(PUT_TASKS_SCRIPT, keys, args).await?;
                    Ok::<(), GcsError>(())
                })
            });
        futures::future::try_join_all(writes).await?;
        Ok(())
    }

    /// Updates a task's state and node.
    pub async fn set_task_state(
        &self,
        task: TaskId,
        state: &str,
        node: Option<NodeId>,
    ) -> Result<(), GcsError> {
        self.put_tasks(&[TaskEntry {
            task_id: task,
            spec: Default::default(),
            state: state.to_string(),
            node,
        }])
        .await
    }

    /// One task, if recorded.
    pub async fn task(&self, task: TaskId) -> Result<Option<TaskEntry>, GcsError> {
        let fields: Fields = self
            .shard_for(task.as_bytes())
            .hgetall(keys::key(Table::Task, &task))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(TaskEntry {
            task_id: task,
            spec: fields.get("spec").cloned().unwrap_or_default().into(),
            state: text(&fields, "state")?,
            node: optional_id(&fields, "node")?,
        }))
    }

    // ---- actors (shards) ----

    /// Writes an actor's entry and announces its state.
    pub async fn put_actor(&self, actor: &ActorInfo) -> Result<(), GcsError> {
        if actor.state == "pending" {
            return self.put_pending_actor(actor).await;
        }
        let pipeline = self.shard_for(actor.actor_id.as_bytes()).pipeline();
        let _: () = pipeline
            .hset(
                keys::key(Table::Actor, &actor.actor_id),
                [
                    ("job", actor.job_id.hex()),
                    ("node", id_text(actor.node)),
                    ("worker", id_text(actor.worker)),
                    ("state", actor.state.clone()),
                    ("updated_ms", now_ms().to_string()),
                ],
            )
            .await?;
        if actor.state == "alive" {
            // For operators (the dashboard): each start after the first is a restart.
            let _: () = pipeline
                .hincrby(keys::key(Table::Actor, &actor.actor_id), "starts", 1)
                .await?;
        }
        let _: () = pipeline
            .publish(
                keys::events_channel(Table::Actor, &actor.actor_id),
                actor.state.clone(),
            )
            .await?;
        let _: Value = pipeline.all().await?;
        Ok(())
    }

    /// [`Self::put_actor`] of a `pending` entry, which the raylet that placed the actor
    /// writes: the node running it writes `alive` separately, and the placer's write can
    /// land later; it then does not take the actor back to `pending` on that node.
    async fn put_pending_actor(&self, actor: &ActorInfo) -> Result<(), GcsError> {
        let _: Value = self
            .shard_for(actor.actor_id.as_bytes())
            .eval(
                PUT_PENDING_ACTOR_SCRIPT,
                vec![
                    keys::key(Table::Actor, &actor.actor_id),
                    keys::events_channel(Table::Actor, &actor.actor_id),
                ],
                vec![
                    actor.job_id.hex(),
                    id_text(actor.node),
                    id_text(actor.worker),
                    now_ms().to_string(),
                ],
            )
            .await?;
        Ok(())
    }

    /// One actor, if recorded.
    pub async fn actor(&self, actor: ActorId) -> Result<Option<ActorInfo>, GcsError> {
        let fields: Fields = self
            .shard_for(actor.as_bytes())
            .hgetall(keys::key(Table::Actor, &actor))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(ActorInfo {
            actor_id: actor,
            job_id: parsed(&fields, "job")?,
            node: optional_id(&fields, "node")?,
            worker: optional_id(&fields, "worker")?,
            state: text(&fields, "state")?,
        }))
    }

    // ---- functions (shards, index on the primary) ----

    /// Exports a function definition (idempotent: the ID is the definition's hash).
    pub async fn put_function(&self, function: &FunctionInfo) -> Result<(), GcsError> {
        let _: () = self
            .shard_for(function.function_id.as_bytes())
            .hset(
                keys::key(Table::Function, &function.function_id),
                [
                    ("job", function.job_id.hex().into_bytes()),
                    ("name", function.name.clone().into_bytes()),
                    ("definition", function.definition.clone()),
                    ("mac", function.mac.clone()),
                ],
            )
            .await?;
        let _: () = self
            .primary()
            .sadd(keys::FUNCTIONS, function.function_id.hex())
            .await?;
        Ok(())
    }

    /// Whether a function definition is in the GCS (a shard restarted without persistence
    /// has lost the ones it held).
    pub async fn function_exists(&self, function: FunctionId) -> Result<bool, GcsError> {
        let n: i64 = self
            .shard_for(function.as_bytes())
            .exists(keys::key(Table::Function, &function))
            .await?;
        Ok(n > 0)
    }

    /// A function definition, if exported.
    pub async fn function(&self, function: FunctionId) -> Result<Option<FunctionInfo>, GcsError> {
        let fields: Fields = self
            .shard_for(function.as_bytes())
            .hgetall(keys::key(Table::Function, &function))
            .await?;
        if fields.is_empty() {
            return Ok(None);
        }
        Ok(Some(FunctionInfo {
            function_id: function,
            job_id: parsed(&fields, "job")?,
            name: text(&fields, "name")?,
            definition: fields.get("definition").cloned().unwrap_or_default(),
            mac: fields.get("mac").cloned().unwrap_or_default(),
        }))
    }

    // ---- errors (primary) ----

    /// Pushes an error to the driver of `job`.
    pub async fn push_error(&self, job: JobId, error: &ErrorInfo) -> Result<(), GcsError> {
        let record = to_json(error);
        let pipeline = self.primary().pipeline();
        let _: () = pipeline.rpush(keys::errors(job), record.clone()).await?;
        let _: () = pipeline
            .publish(keys::error_events_channel(job), record)
            .await?;
        let _: Value = pipeline.all().await?;
        Ok(())
    }

    /// Every error pushed to the driver of `job`, oldest first.
    pub async fn errors(&self, job: JobId) -> Result<Vec<ErrorInfo>, GcsError> {
        let records: Vec<String> = self.primary().lrange(keys::errors(job), 0, -1).await?;
        records
            .iter()
            .map(|r| {
                serde_json::from_str(r).map_err(|e| GcsError::Malformed {
                    what: "error record",
                    reason: e.to_string(),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_events_read_back_what_is_published() {
        let node = NodeId::random();
        for event in [NodeEvent::Alive(node), NodeEvent::Dead(node)] {
            assert_eq!(NodeEvent::parse(event.to_string().as_bytes()), Some(event));
        }
        for bad in [
            "",
            "x dead",
            &format!("{node}"),
            &format!("{node} gone"),
            &format!("{node} dead now"),
        ] {
            assert_eq!(NodeEvent::parse(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
