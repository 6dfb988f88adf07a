//! Which nodes the cluster counts alive: heartbeats that learn whether their node still
//! counts, and the declaration of death of nodes that stopped beating.
//!
//! Every time here is the primary's clock (`TIME` inside a script), never a node's own:
//! a heartbeat stamps the node's entry with it and a death compares against it, so clock
//! skew between machines, or a global scheduler that was not scheduled for a while,
//! cannot make a live node look silent. Each script checks and writes in one step, so
//! several global schedulers may declare deaths at once and a node declared dead stays
//! dead: its later heartbeats change nothing (it must register again, as a new node).

use fred::prelude::*;

use crate::client::{GcsClient, GcsError};
use crate::keys::{self, Table};
use crate::tables::NodeEvent;
use rayd_common::id::NodeId;

/// Where a node stands in the node table, as its heartbeat found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Alive: the heartbeat was recorded and published.
    Alive,
    /// Declared dead (missed heartbeats, or stopped): the heartbeat was ignored.
    Dead,
    /// No entry (the GCS lost its data, e.g. a restarted primary): it must register.
    Unknown,
}

/// The primary's time in ms, as a string (exact: no float formatting), for scripts.
const NOW_MS: &str = "local t = redis.call('TIME') \
local now = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000)) ";

/// KEYS[1]: the node's entry. ARGV: resources_available, queue_length, running, the
/// heartbeats channel, the heartbeat to publish.
const HEARTBEAT_SCRIPT: &str = "local state = redis.call('HGET', KEYS[1], 'state') \
if not state then return 'unknown' end \
if state ~= 'alive' then return state end \
redis.call('HSET', KEYS[1], 'resources_available', ARGV[1], 'queue_length', ARGV[2], \
    'running', ARGV[3], 'last_heartbeat_ms', now) \
redis.call('PUBLISH', ARGV[4], ARGV[5]) \
return 'alive'";

/// KEYS: entries of candidate nodes. ARGV[1]: the silence (ms) that makes a node dead;
/// ARGV[2]: the node events channel; ARGV[2 + i]: the hex ID of KEYS[i]. Returns the hex
/// IDs of the nodes it declared dead.
const REAP_SCRIPT: &str = "local dead = {} \
for i, key in ipairs(KEYS) do \
    local fields = redis.call('HMGET', key, 'state', 'last_heartbeat_ms') \
    if fields[1] == 'alive' and tonumber(now) - tonumber(fields[2] or '0') > tonumber(ARGV[1]) then \
        redis.call('HSET', key, 'state', 'dead', 'dead_ms', now) \
        redis.call('PUBLISH', ARGV[2], ARGV[2 + i] .. ' dead') \
        table.insert(dead, ARGV[2 + i]) \
    end \
end \
return dead";

/// ARGV[1]: how long (ms) a dead node's entry is kept; ARGV[2]: the node set; ARGV[3]: the
/// prefix of node entries. Deletes the older ones; returns how many.
const PRUNE_SCRIPT: &str = "local pruned = 0 \
for _, hex in ipairs(redis.call('SMEMBERS', ARGV[2])) do \
    local key = ARGV[3] .. hex \
    local fields = redis.call('HMGET', key, 'state', 'dead_ms') \
    if not fields[1] or (fields[1] == 'dead' and tonumber(now) - tonumber(fields[2] or '0') > tonumber(ARGV[1])) then \
        redis.call('DEL', key) \
        redis.call('SREM', ARGV[2], hex) \
        pruned = pruned + 1 \
    end \
end \
return pruned";

fn script(body: &str) -> String {
    format!("{NOW_MS}{body}")
}

impl GcsClient {
    /// Records a node's heartbeat and publishes it, unless the cluster no longer counts
    /// the node alive; says which.
    pub async fn heartbeat(&self, beat: &crate::Heartbeat) -> Result<Standing, GcsError> {
        let node: NodeId = beat
            .node_id
            .parse()
            .map_err(|e: rayd_common::id::IdError| GcsError::Malformed {
                what: "heartbeat node_id",
                reason: e.to_string(),
            })?;
        // Maps of strings to numbers and plain structs always serialize.
        let available = serde_json::to_string(&beat.resources_available).unwrap_or_default();
        let payload = serde_json::to_string(beat).unwrap_or_default();
        let state: String = self
            .primary()
            .eval(
                script(HEARTBEAT_SCRIPT),
                vec![keys::key(Table::Node, &node)],
                vec![
                    available,
                    beat.queue_length.to_string(),
                    beat.running.to_string(),
                    keys::HEARTBEATS_CHANNEL.to_string(),
                    payload,
                ],
            )
            .await?;
        Ok(match state.as_str() {
            "alive" => Standing::Alive,
            "unknown" => Standing::Unknown,
            _ => Standing::Dead,
        })
    }

    /// Declares dead those of `candidates` that are alive and have not beaten for
    /// `silence_ms` by the primary's clock, and announces each on the node events
    /// channel. Returns the nodes it declared dead (none that another declared first).
    pub async fn reap_silent_nodes(
        &self,
        candidates: &[NodeId],
        silence_ms: u64,
    ) -> Result<Vec<NodeId>, GcsError> {
        if candidates.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = candidates
            .iter()
            .map(|n| keys::key(Table::Node, n))
            .collect();
        let mut args = vec![
            silence_ms.to_string(),
            keys::NODE_EVENTS_CHANNEL.to_string(),
        ];
        args.extend(candidates.iter().map(|n| n.hex()));
        let dead: Vec<String> = self.primary().eval(script(REAP_SCRIPT), keys, args).await?;
        Ok(dead.iter().filter_map(|hex| hex.parse().ok()).collect())
    }

    /// Deletes the entries of nodes dead for longer than `retention_ms` (and stray IDs
    /// with no entry), so that the node table does not grow with every restart. Returns
    /// how many went.
    pub async fn prune_dead_nodes(&self, retention_ms: u64) -> Result<u64, GcsError> {
        let pruned: u64 = self
            .primary()
            .eval(
                script(PRUNE_SCRIPT),
                Vec::<String>::new(),
                vec![
                    retention_ms.to_string(),
                    keys::NODES.to_string(),
                    keys::prefix(Table::Node),
                ],
            )
            .await?;
        Ok(pruned)
    }

    /// Marks a node dead and announces it (a raylet that stops says so itself).
    pub async fn mark_node_dead(&self, node: NodeId) -> Result<(), GcsError> {
        let now = crate::tables::now_ms().to_string();
        let pipeline = self.primary().pipeline();
        let _: () = pipeline
            .hset(
                keys::key(Table::Node, &node),
                [("state", "dead".to_string()), ("dead_ms", now)],
            )
            .await?;
        let _: () = pipeline
            .publish(keys::NODE_EVENTS_CHANNEL, NodeEvent::Dead(node).to_string())
            .await?;
        let _: Value = pipeline.all().await?;
        Ok(())
    }
}
