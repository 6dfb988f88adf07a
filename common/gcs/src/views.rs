//! Read-only views over whole tables, for operators (the dashboard, `rayd timeline`):
//! every task and actor (scanned shard by shard), a job's timeline events (the list the
//! SDK's `ray.timeline()` reads), the HTTP endpoints the daemons record, and the
//! dashboard's URL. Nothing here is on a scheduling path.

use std::collections::BTreeMap;

use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::client::{GcsClient, GcsError, GcsReply, Server};
use crate::keys::{self, Table};
use rayd_common::id::{ActorId, JobId, NodeId, TaskId};

/// The key of a job's timeline events: a list of JSON rows written by the SDK's workers
/// and drivers (`ray._private.profiling`), the last 100,000 kept.
pub fn profile_key(job: JobId) -> String {
    format!("rayd:profile:{job}")
}

/// Where the dashboard serves (`http://host:port`), a string on the primary.
pub const WEBUI_URL: &str = "rayd:webui_url";

/// Where every daemon serves `/health` and `/metrics`: a hash on the primary, field
/// `<daemon>@<ip>` (e.g. `rayd-raylet@10.0.0.2`), value the port.
pub const METRICS_ENDPOINTS: &str = "rayd:metrics";

/// The node-table field of the raylet's metrics port (the other daemons' are
/// `<daemon>_metrics_port`).
pub const RAYLET_METRICS_FIELD: &str = "metrics_port";

/// A task as the task table has it, with the names from its spec.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRow {
    pub task_id: TaskId,
    pub job_id: String,
    pub function_name: String,
    pub state: String,
    pub node: Option<NodeId>,
    pub updated_ms: u64,
    /// The actor this task creates or calls.
    pub actor_id: Option<ActorId>,
    pub actor_creation: bool,
}

/// An actor as the actor table has it.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorRow {
    pub actor_id: ActorId,
    pub job_id: String,
    pub state: String,
    pub node: Option<NodeId>,
    /// Times its constructor ran again after its worker died.
    pub restarts: u64,
    pub updated_ms: u64,
}

/// One timeline event as the SDK records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProfileEvent {
    pub pid: u64,
    pub node_ip_address: String,
    /// `worker` or `driver`.
    pub component_type: String,
    /// `task`, `task:submit`, or a `ray.profile` name.
    pub event_type: String,
    pub name: String,
    pub task_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub start: f64,
    pub end: f64,
    pub extra_data: serde_json::Map<String, serde_json::Value>,
}

impl ProfileEvent {
    /// Reads one stored row `[pid, node_ip_address, component_type, event_type, name,
    /// task_id, start, end, extra_data]`; `None` when it is not one.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let row: serde_json::Value = serde_json::from_slice(raw).ok()?;
        let row = row.as_array()?;
        let text = |i: usize| row.get(i)?.as_str().map(str::to_string);
        Some(Self {
            pid: row.first()?.as_u64()?,
            node_ip_address: text(1)?,
            component_type: text(2)?,
            event_type: text(3)?,
            name: text(4)?,
            task_id: text(5),
            start: row.get(6)?.as_f64()?,
            end: row.get(7)?.as_f64()?,
            extra_data: row
                .get(8)
                .and_then(|v| v.as_object().cloned())
                .unwrap_or_default(),
        })
    }
}

/// Events in the Chrome trace format (chrome://tracing, Perfetto): one process row per
/// node, one thread row per worker or driver; the same as the SDK's `ray.timeline()`.
pub fn chrome_tracing(events: &[ProfileEvent]) -> Vec<serde_json::Value> {
    events
        .iter()
        .map(|e| {
            let mut args = e.extra_data.clone();
            if let Some(task) = &e.task_id {
                args.insert("task_id".into(), task.clone().into());
            }
            let mut event = serde_json::json!({
                "cat": e.event_type,
                "name": e.name,
                "pid": format!("Node {}", e.node_ip_address),
                "tid": format!("{}:{}", e.component_type, e.pid),
                "ts": e.start * 1e6,
                "args": args,
            });
            if e.event_type == "task:submit" {
                event["ph"] = "i".into();
                event["s"] = "t".into();
                event["name"] = format!("submit {}", e.name).into();
            } else {
                event["ph"] = "X".into();
                event["dur"] = ((e.end - e.start) * 1e6).into();
            }
            event
        })
        .collect()
}

fn bytes(reply: &GcsReply) -> Option<&[u8]> {
    match reply {
        GcsReply::Bytes(b) => Some(b),
        _ => None,
    }
}

/// A field's value as text; empty when missing.
fn lossy(value: Option<Vec<u8>>) -> String {
    value
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn malformed(what: &'static str, reason: impl Into<String>) -> GcsError {
    GcsError::Malformed {
        what,
        reason: reason.into(),
    }
}

impl GcsClient {
    /// The keys matching `pattern` on `server`, at most `max` of them.
    async fn scan_keys(
        &self,
        server: Server<'_>,
        pattern: &str,
        max: usize,
    ) -> Result<Vec<Vec<u8>>, GcsError> {
        let mut found = Vec::new();
        let mut cursor = b"0".to_vec();
        loop {
            let args = vec![
                cursor.clone(),
                b"MATCH".to_vec(),
                pattern.as_bytes().to_vec(),
                b"COUNT".to_vec(),
                b"1000".to_vec(),
            ];
            let GcsReply::Array(reply) = self.command(server, "SCAN", args).await? else {
                return Err(malformed("scan reply", "not an array"));
            };
            let [GcsReply::Bytes(next), GcsReply::Array(page)] = reply.as_slice() else {
                return Err(malformed("scan reply", "not [cursor, keys]"));
            };
            found.extend(page.iter().filter_map(bytes).map(<[u8]>::to_vec));
            cursor = next.clone();
            if cursor == b"0" || found.len() >= max {
                found.truncate(max);
                return Ok(found);
            }
        }
    }

    /// Every shard, as raw-command targets.
    fn every_shard(&self) -> impl Iterator<Item = Server<'static>> {
        (0..self.shard_addresses().len()).map(Server::Shard)
    }

    /// The entries of `table` (at most `max` per shard, in no order): each ID with the
    /// values of `fields` (in that order; `None` for a missing field). An entry that went
    /// between the scan and the read is left out.
    async fn scan_table<I: std::str::FromStr, const N: usize>(
        &self,
        table: Table,
        fields: [&str; N],
        max: usize,
    ) -> Result<Vec<(I, [Option<Vec<u8>>; N])>, GcsError> {
        let prefix = format!("rayd:{}:", table.name());
        let mut entries = Vec::new();
        for server in self.every_shard() {
            for key in self.scan_keys(server, &format!("{prefix}*"), max).await? {
                let Some(id) = key
                    .strip_prefix(prefix.as_bytes())
                    .and_then(|hex| std::str::from_utf8(hex).ok())
                    .and_then(|hex| hex.parse::<I>().ok())
                else {
                    continue;
                };
                let args = fields.iter().map(|f| f.as_bytes().to_vec());
                let args = std::iter::once(key).chain(args).collect();
                let GcsReply::Array(values) = self.command(server, "HMGET", args).await? else {
                    return Err(malformed("table entry", "HMGET did not answer an array"));
                };
                let values: [Option<Vec<u8>>; N] = values
                    .iter()
                    .map(|v| bytes(v).map(<[u8]>::to_vec))
                    .collect::<Vec<_>>()
                    .try_into()
                    .map_err(|_| malformed("table entry", "HMGET answered the wrong count"))?;
                if values.iter().all(Option::is_none) {
                    continue;
                }
                entries.push((id, values));
            }
        }
        Ok(entries)
    }

    /// The task table, at most `max` tasks per shard, in no order.
    pub async fn scan_tasks(&self, max: usize) -> Result<Vec<TaskRow>, GcsError> {
        let fields = ["state", "node", "updated_ms", "spec"];
        let entries = self
            .scan_table::<TaskId, 4>(Table::Task, fields, max)
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, [state, node, updated, spec])| {
                let spec: rayd_common::proto::common::v1::TaskSpec =
                    prost::Message::decode(spec.as_deref().unwrap_or_default()).unwrap_or_default();
                TaskRow {
                    task_id: id,
                    job_id: hex::encode(&spec.job_id),
                    function_name: spec.function_name,
                    state: lossy(state),
                    node: lossy(node).parse().ok(),
                    updated_ms: lossy(updated).parse().unwrap_or(0),
                    actor_id: ActorId::from_slice(&spec.actor_id).ok(),
                    actor_creation: spec.actor_creation,
                }
            })
            .collect())
    }

    /// The actor table, at most `max` actors per shard, in no order.
    pub async fn scan_actors(&self, max: usize) -> Result<Vec<ActorRow>, GcsError> {
        let fields = ["state", "node", "job", "starts", "updated_ms"];
        let entries = self
            .scan_table::<ActorId, 5>(Table::Actor, fields, max)
            .await?;
        Ok(entries
            .into_iter()
            .map(|(id, [state, node, job, starts, updated])| ActorRow {
                actor_id: id,
                job_id: lossy(job),
                state: lossy(state),
                node: lossy(node).parse().ok(),
                // Each start after the first is a restart.
                restarts: lossy(starts)
                    .parse::<u64>()
                    .map_or(0, |s| s.saturating_sub(1)),
                updated_ms: lossy(updated).parse().unwrap_or(0),
            })
            .collect())
    }

    /// The jobs that have timeline events.
    pub async fn profiled_jobs(&self) -> Result<Vec<JobId>, GcsError> {
        let keys = self
            .scan_keys(Server::Primary, "rayd:profile:*", 10_000)
            .await?;
        Ok(keys
            .iter()
            .filter_map(|k| std::str::from_utf8(k).ok())
            .filter_map(|k| k.strip_prefix("rayd:profile:"))
            .filter_map(|hex| hex.parse().ok())
            .collect())
    }

    /// The last `max` timeline events of `job`, oldest first (unreadable rows skipped).
    pub async fn profile_events(
        &self,
        job: JobId,
        max: usize,
    ) -> Result<Vec<ProfileEvent>, GcsError> {
        let from = -i64::try_from(max.max(1)).unwrap_or(i64::MAX);
        let rows: Vec<Vec<u8>> = self.primary().lrange(profile_key(job), from, -1).await?;
        Ok(rows.iter().filter_map(|r| ProfileEvent::parse(r)).collect())
    }

    /// Records the HTTP port of a daemon's `/health` and `/metrics` in its node's entry
    /// (`field`: [`RAYLET_METRICS_FIELD`] or `<daemon>_metrics_port`).
    pub async fn put_metrics_port(
        &self,
        node: NodeId,
        field: &str,
        port: u16,
    ) -> Result<(), GcsError> {
        let _: () = self
            .primary()
            .hset(keys::key(Table::Node, &node), (field, port.to_string()))
            .await?;
        Ok(())
    }

    /// The metrics ports recorded in a node's entry: field -> port.
    pub async fn metrics_ports(&self, node: NodeId) -> Result<BTreeMap<String, u16>, GcsError> {
        let fields: std::collections::HashMap<String, String> = self
            .primary()
            .hgetall(keys::key(Table::Node, &node))
            .await?;
        Ok(fields
            .into_iter()
            .filter(|(k, _)| k.ends_with(RAYLET_METRICS_FIELD))
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect())
    }

    /// Records where `daemon` serves `/health` and `/metrics` (see [`METRICS_ENDPOINTS`]).
    pub async fn put_metrics_endpoint(
        &self,
        daemon: &str,
        address: std::net::SocketAddr,
    ) -> Result<(), GcsError> {
        let field = format!("{daemon}@{}", address.ip());
        let _: () = self
            .primary()
            .hset(METRICS_ENDPOINTS, (field, address.port().to_string()))
            .await?;
        Ok(())
    }

    /// Every recorded `/metrics` endpoint: `<daemon>@<ip>` -> port.
    pub async fn metrics_endpoints(&self) -> Result<BTreeMap<String, u16>, GcsError> {
        let fields: std::collections::HashMap<String, String> =
            self.primary().hgetall(METRICS_ENDPOINTS).await?;
        Ok(fields
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
            .collect())
    }

    /// Records where the dashboard serves.
    pub async fn put_webui_url(&self, url: &str) -> Result<(), GcsError> {
        let _: () = self
            .primary()
            .set(WEBUI_URL, url, None, None, false)
            .await?;
        Ok(())
    }

    /// Forgets the dashboard's URL (it stopped).
    pub async fn remove_webui_url(&self) -> Result<(), GcsError> {
        let _: () = self.primary().del(WEBUI_URL).await?;
        Ok(())
    }

    /// Where the dashboard serves, if one runs.
    pub async fn webui_url(&self) -> Result<Option<String>, GcsError> {
        Ok(self.primary().get(WEBUI_URL).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_row_reads_back_and_traces_as_the_sdk_does() {
        let raw = br#"[42, "127.0.0.2", "worker", "task", "f", "ab", 1.5, 2.0, {"error": "boom"}]"#;
        let event = ProfileEvent::parse(raw).unwrap();
        assert_eq!(event.task_id.as_deref(), Some("ab"));
        let trace = chrome_tracing(&[event]);
        assert_eq!(trace[0]["ph"], "X");
        assert_eq!(trace[0]["dur"], 500_000.0);
        assert_eq!(trace[0]["pid"], "Node 127.0.0.2");
        assert_eq!(trace[0]["tid"], "worker:42");
        assert_eq!(trace[0]["args"]["error"], "boom");
        assert_eq!(trace[0]["args"]["task_id"], "ab");

        let submit = br#"[7, "127.0.0.1", "driver", "task:submit", "f", "ab", 1.0, 1.0, null]"#;
        let trace = chrome_tracing(&[ProfileEvent::parse(submit).unwrap()]);
        assert_eq!(
            (trace[0]["ph"].as_str(), trace[0]["name"].as_str()),
            (Some("i"), Some("submit f"))
        );
        assert!(ProfileEvent::parse(b"not json").is_none());
    }
}
