//! The registry of running global schedulers (`rayd:global_schedulers` on the primary):
//! each registers itself and refreshes its entry every second; a raylet lists the live ones
//! to spill to.

use std::collections::HashMap;

use fred::prelude::*;
use serde::{Deserialize, Serialize};

use crate::client::{GcsClient, GcsError};
use crate::keys;
use crate::tables::now_ms;

/// A global scheduler's entry in `rayd:global_schedulers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GlobalSchedulerInfo {
    /// Its ID (the hash field).
    #[serde(skip)]
    pub id: String,
    /// `host:port` of its gRPC service (`rayd.globalscheduler.v1.GlobalScheduler`).
    pub address: String,
    /// When it last refreshed its entry (Unix ms).
    pub last_heartbeat_ms: u64,
}

impl GcsClient {
    /// Registers the global scheduler `id` serving at `address`, or refreshes its entry.
    pub async fn register_global_scheduler(&self, id: &str, address: &str) -> Result<(), GcsError> {
        let entry = GlobalSchedulerInfo {
            id: id.to_string(),
            address: address.to_string(),
            last_heartbeat_ms: now_ms(),
        };
        // A struct of a string and a number always serializes.
        let value = serde_json::to_string(&entry).unwrap_or_default();
        let _: () = self
            .primary()
            .hset(keys::GLOBAL_SCHEDULERS, (id, value))
            .await?;
        Ok(())
    }

    /// Removes the global scheduler `id`'s entry (it stops).
    pub async fn remove_global_scheduler(&self, id: &str) -> Result<(), GcsError> {
        let _: () = self.primary().hdel(keys::GLOBAL_SCHEDULERS, id).await?;
        Ok(())
    }

    /// The live global schedulers (refreshed within [`keys::GLOBAL_SCHEDULER_TTL_MS`]),
    /// most recently refreshed first. Malformed entries are skipped.
    pub async fn global_schedulers(&self) -> Result<Vec<GlobalSchedulerInfo>, GcsError> {
        let entries: HashMap<String, String> =
            self.primary().hgetall(keys::GLOBAL_SCHEDULERS).await?;
        Ok(live(entries, now_ms()))
    }
}

/// The entries refreshed within the TTL before `now`, most recent first.
fn live(entries: HashMap<String, String>, now: u64) -> Vec<GlobalSchedulerInfo> {
    let mut live: Vec<GlobalSchedulerInfo> = entries
        .into_iter()
        .filter_map(|(id, value)| {
            let mut info: GlobalSchedulerInfo = serde_json::from_str(&value).ok()?;
            info.id = id;
            Some(info)
        })
        .filter(|info| now.saturating_sub(info.last_heartbeat_ms) <= keys::GLOBAL_SCHEDULER_TTL_MS)
        .collect();
    live.sort_by(|a, b| {
        b.last_heartbeat_ms
            .cmp(&a.last_heartbeat_ms)
            .then_with(|| a.id.cmp(&b.id))
    });
    live
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_recently_refreshed_entries_are_live() {
        let entry = |address: &str, at: u64| {
            format!(r#"{{"address":"{address}","last_heartbeat_ms":{at}}}"#)
        };
        let entries = HashMap::from([
            ("old".to_string(), entry("10.0.0.1:1", 1_000)),
            ("new".to_string(), entry("10.0.0.2:2", 9_000)),
            ("newer".to_string(), entry("10.0.0.3:3", 9_500)),
            ("junk".to_string(), "not json".to_string()),
        ]);
        let live = live(entries, 10_000);
        let ids: Vec<&str> = live.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["newer", "new"]);
        assert_eq!(live[0].address, "10.0.0.3:3");
    }
}
