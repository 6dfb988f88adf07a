//! Lineage: the task table as the recipe of every task-made object, and the claim that
//! makes one raylet (never two) re-run a task whose objects were lost.
//!
//! A task's entry counts its re-runs (`reruns`) and names the node that made the last one
//! (`rerun_node`). A raylet that finds an object lost reads the entry, then claims the
//! next re-run only if the count is still the one it read: of several raylets that found
//! the same loss, one wins and the others wait for the object (or claim again when the
//! winner's node dies). The count is bounded by the task's `max_retries`.

use fred::prelude::*;

use crate::client::{GcsClient, GcsError};
use crate::keys::{self, Table};
use rayd_common::id::{NodeId, TaskId};

/// What the task table says about a task, for rebuilding its objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// The encoded `rayd.common.v1.TaskSpec`; empty for an actor method call.
    pub spec: prost::bytes::Bytes,
    /// `waiting`, `running`, `finished`, `rerunning`, ...
    pub state: String,
    /// The node that ran (or runs) it, as last written.
    pub node: Option<NodeId>,
    /// Re-runs claimed so far.
    pub reruns: u32,
    /// The node that claimed the last re-run.
    pub rerun_node: Option<NodeId>,
    /// When `state` was last written, by the writer's clock (ms since the epoch; 0 when
    /// unknown).
    pub updated_ms: u64,
}

/// The outcome of a claim to re-run a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RerunClaim {
    /// This node runs re-run number `attempt` (from 1).
    Claimed { attempt: u32 },
    /// Another claim came first: `node` runs re-run `attempt`.
    Taken { node: Option<NodeId>, attempt: u32 },
    /// The task was re-run as often as it may be.
    Exhausted { reruns: u32 },
}

/// KEYS[1]: the task's entry. ARGV: the re-runs the caller read, its node, the most
/// re-runs allowed. Returns `{outcome, re-runs, node}`.
const CLAIM_SCRIPT: &str = "local n = tonumber(redis.call('HGET', KEYS[1], 'reruns') or '0') \
if n ~= tonumber(ARGV[1]) then \
    return {'taken', tostring(n), redis.call('HGET', KEYS[1], 'rerun_node') or ''} \
end \
if n >= tonumber(ARGV[3]) then return {'exhausted', tostring(n), ''} end \
redis.call('HSET', KEYS[1], 'reruns', tostring(n + 1), 'rerun_node', ARGV[2], 'state', 'rerunning') \
return {'claimed', tostring(n + 1), ARGV[2]}";

fn malformed(what: &'static str, reason: impl std::fmt::Display) -> GcsError {
    GcsError::Malformed {
        what,
        reason: reason.to_string(),
    }
}

fn node_of(raw: Option<String>) -> Result<Option<NodeId>, GcsError> {
    match raw.filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(hex) => hex.parse().map(Some).map_err(|e| malformed("task node", e)),
    }
}

/// The task entry's fields a lineage reads, in `HMGET` order.
type LineageFields = (
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

impl GcsClient {
    /// How many times GCS shards restarted (empty, without persistence) in this cluster's
    /// life, as their supervisor counted in `rayd:cluster`.
    pub async fn shard_restarts(&self) -> Result<u64, GcsError> {
        let count: Option<u64> = self
            .primary()
            .hget(keys::CLUSTER, keys::SHARD_RESTARTS_FIELD)
            .await?;
        Ok(count.unwrap_or(0))
    }

    /// The lineage of `task`, if the task table has an entry for it.
    pub async fn lineage(&self, task: TaskId) -> Result<Option<Lineage>, GcsError> {
        let (spec, state, node, reruns, rerun_node, updated_ms): LineageFields = self
            .shard_for(task.as_bytes())
            .hmget(
                keys::key(Table::Task, &task),
                vec![
                    "spec",
                    "state",
                    "node",
                    "reruns",
                    "rerun_node",
                    "updated_ms",
                ],
            )
            .await?;
        // An entry with a state and no spec: an actor method call (its spec is not kept).
        if spec.is_none() && state.is_none() {
            return Ok(None);
        }
        Ok(Some(Lineage {
            spec: spec.unwrap_or_default().into(),
            state: state.unwrap_or_default(),
            node: node_of(node)?,
            reruns: match reruns {
                None => 0,
                Some(n) => n.parse().map_err(|e| malformed("task reruns", e))?,
            },
            rerun_node: node_of(rerun_node)?,
            updated_ms: match updated_ms {
                None => 0,
                Some(ms) => ms.parse().map_err(|e| malformed("task updated_ms", e))?,
            },
        }))
    }

    /// Claims re-run `seen + 1` of `task` for `node`, allowed while `seen < max_reruns`.
    pub async fn claim_rerun(
        &self,
        task: TaskId,
        seen: u32,
        node: NodeId,
        max_reruns: u32,
    ) -> Result<RerunClaim, GcsError> {
        let reply: (String, String, String) = self
            .shard_for(task.as_bytes())
            .eval(
                CLAIM_SCRIPT,
                vec![keys::key(Table::Task, &task)],
                vec![seen.to_string(), node.hex(), max_reruns.to_string()],
            )
            .await?;
        let (outcome, count, claimer) = reply;
        let count: u32 = count.parse().map_err(|e| malformed("task reruns", e))?;
        Ok(match outcome.as_str() {
            "claimed" => RerunClaim::Claimed { attempt: count },
            "exhausted" => RerunClaim::Exhausted { reruns: count },
            _ => RerunClaim::Taken {
                node: node_of(Some(claimer))?,
                attempt: count,
            },
        })
    }
}
