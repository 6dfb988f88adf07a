//! The GCS key schema and the one rule that maps an ID to its shard.
//!
//! | key | type | where | holds |
//! |---|---|---|---|
//! | `rayd:shards` | list | primary | `host:port` of every shard, in shard order |
//! | `rayd:cluster` | hash | primary | version, shard count, start time, config |
//! | `rayd:nodes` | set | primary | hex IDs of every node ever registered |
//! | `rayd:node:<node>` | hash | primary | a node's addresses, resources, state, `*metrics_port` |
//! | `rayd:functions` | set | primary | hex IDs of every exported function |
//! | `rayd:global_schedulers` | hash | primary | per global scheduler ID: JSON `{"address", "last_heartbeat_ms"}` |
//! | `rayd:errors:<job>` | list | primary | JSON error records pushed to a job's driver |
//! | `rayd:metrics` | hash | primary | per `<daemon>@<ip>`: the port of its `/metrics` and `/health` |
//! | `rayd:webui_url` | string | primary | where the dashboard serves |
//! | `rayd:profile:<job>` | list | primary | a job's timeline events (JSON rows, written by the SDK) |
//! | `rayd:object:<object>` | hash | shard | `size`, and `node:<node>` per location |
//! | `rayd:task:<task>` | hash | shard | `spec` (protobuf), `state`, `node` |
//! | `rayd:actor:<actor>` | hash | shard | `state`, `node`, `worker`, `job` |
//! | `rayd:function:<function>` | hash | shard | `job`, `name`, `definition` |
//!
//! Channels: `rayd:heartbeats`, `rayd:node_events` and `rayd:shard_events` on the primary,
//! `rayd:error_events:<job>` on the primary, `rayd:object_events:<object>` and
//! `rayd:actor_events:<actor>` on the ID's shard.

use rayd_common::id::{JobId, ID_LEN};

/// The shard list: a Redis list of `host:port` on the primary.
pub const SHARDS: &str = "rayd:shards";
/// Cluster metadata hash on the primary.
pub const CLUSTER: &str = "rayd:cluster";
/// Set of registered node IDs on the primary.
pub const NODES: &str = "rayd:nodes";
/// Set of exported function IDs on the primary.
pub const FUNCTIONS: &str = "rayd:functions";
/// The running global schedulers, a hash on the primary: field = a scheduler's ID, value =
/// JSON `{"address": "host:port", "last_heartbeat_ms": <unix ms>}`, refreshed every second
/// by each scheduler and removed when it stops cleanly. One refreshed within the last
/// [`GLOBAL_SCHEDULER_TTL_MS`] counts as live; a raylet spills to a live one.
pub const GLOBAL_SCHEDULERS: &str = "rayd:global_schedulers";
/// A global scheduler whose entry is older than this (ms) is taken for gone.
pub const GLOBAL_SCHEDULER_TTL_MS: u64 = 5000;
/// Channel of node heartbeats on the primary.
pub const HEARTBEATS_CHANNEL: &str = "rayd:heartbeats";
/// Channel of node registrations and deaths on the primary.
pub const NODE_EVENTS_CHANNEL: &str = "rayd:node_events";

/// Channel on the primary on which the shards' supervisor announces that a shard
/// restarted (empty, without persistence): `<index> restarted`.
pub const SHARD_EVENTS_CHANNEL: &str = "rayd:shard_events";

/// The message of [`SHARD_EVENTS_CHANNEL`] for shard `index`.
pub fn shard_restart(index: usize) -> String {
    format!("{index} restarted")
}

/// The shard index of a [`SHARD_EVENTS_CHANNEL`] message; `None` for anything else.
pub fn parse_shard_restart(payload: &[u8]) -> Option<usize> {
    std::str::from_utf8(payload)
        .ok()?
        .strip_suffix(" restarted")?
        .parse()
        .ok()
}

/// The tables keyed by an ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Node,
    Object,
    Task,
    Actor,
    Function,
}

impl Table {
    /// The table's name in keys.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Node => "node",
            Table::Object => "object",
            Table::Task => "task",
            Table::Actor => "actor",
            Table::Function => "function",
        }
    }
}

/// What every key of `table` starts with: `rayd:<table>:`.
pub fn prefix(table: Table) -> String {
    format!("rayd:{}:", table.name())
}

/// The key of `id` in `table`: `rayd:<table>:<hex id>`.
pub fn key(table: Table, id: &impl AsRef<[u8; ID_LEN]>) -> String {
    format!("{}{}", prefix(table), hex::encode(id.as_ref()))
}

/// The channel announcing changes of `id` in `table` (objects and actors).
pub fn events_channel(table: Table, id: &impl AsRef<[u8; ID_LEN]>) -> String {
    format!("rayd:{}_events:{}", table.name(), hex::encode(id.as_ref()))
}

/// The list of errors pushed to the driver of `job`.
pub fn errors(job: JobId) -> String {
    format!("rayd:errors:{job}")
}

/// The channel announcing new errors of `job`.
pub fn error_events_channel(job: JobId) -> String {
    format!("rayd:error_events:{job}")
}

/// The shard (0-based, among `num_shards`) that holds every key of an ID.
///
/// FNV-1a over all 20 bytes: cheap, stable across versions and platforms, and it spreads
/// IDs that differ only in their last bytes (the return objects of one task).
pub fn shard_index(id: &[u8; ID_LEN], num_shards: usize) -> usize {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = id
        .iter()
        .fold(OFFSET, |h, b| (h ^ u64::from(*b)).wrapping_mul(PRIME));
    // Modulo of a u64 by a usize that fits the shard count; the result is below it.
    (hash % num_shards.max(1) as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayd_common::id::{ObjectId, TaskId};

    #[test]
    fn shard_restarts_read_back() {
        assert_eq!(parse_shard_restart(shard_restart(3).as_bytes()), Some(3));
        assert_eq!(parse_shard_restart(b"3 started"), None);
        assert_eq!(parse_shard_restart(b"x restarted"), None);
    }

    #[test]
    fn keys_are_readable() {
        let task = TaskId::from_bytes([0xab; ID_LEN]);
        assert_eq!(
            key(Table::Task, &task),
            format!("rayd:task:{}", "ab".repeat(20))
        );
        assert_eq!(
            events_channel(Table::Object, &ObjectId::NIL),
            format!("rayd:object_events:{}", "00".repeat(20))
        );
    }

    #[test]
    fn the_objects_of_one_task_spread_over_every_shard() {
        let task = TaskId::random_task();
        let mut seen = [0usize; 4];
        for i in 1..=400 {
            seen[shard_index(ObjectId::for_return(task, i).as_bytes(), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "uneven spread {seen:?}");
        assert_eq!(shard_index(task.as_bytes(), 1), 0);
    }
}
