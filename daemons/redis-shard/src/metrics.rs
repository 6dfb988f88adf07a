//! The supervisor's Prometheus metrics and health: restarts of each Redis server, whether
//! each answers, and the round trip of its health-check PING. `/health` is 200 only while
//! every server answers.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rayd_metrics::prometheus_client::metrics::counter::Counter;
use rayd_metrics::prometheus_client::metrics::family::Family;
use rayd_metrics::prometheus_client::metrics::gauge::Gauge;
use rayd_metrics::prometheus_client::metrics::histogram::Histogram;
use rayd_metrics::prometheus_client::registry::Registry;
use rayd_metrics::Health;

use crate::server::Role;

type Labels = Vec<(String, String)>;

/// The supervisor's figures, shared by the task supervising each server.
#[derive(Debug, Clone)]
pub struct ShardMetrics {
    restarts: Family<Labels, Counter>,
    up: Family<Labels, Gauge>,
    ping: Family<Labels, Histogram>,
    health: Health,
    /// The servers that do not answer now, with why.
    down: Arc<Mutex<BTreeMap<String, String>>>,
}

fn labels(role: Role) -> Labels {
    vec![("server".into(), role.to_string())]
}

impl ShardMetrics {
    /// Metrics whose `/health` follows `health`.
    pub fn new(health: Health) -> Self {
        Self {
            restarts: Family::default(),
            up: Family::default(),
            ping: Family::new_with_constructor(rayd_metrics::round_trip_histogram),
            health,
            down: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// A registry (prefix `rayd_redis_shard`) that reads these metrics.
    pub fn registry(&self) -> Registry {
        let mut r = Registry::with_prefix("rayd_redis_shard");
        r.register(
            "restarts",
            "Restarts of a Redis server",
            self.restarts.clone(),
        );
        r.register(
            "up",
            "Whether a Redis server answers (1) or not (0)",
            self.up.clone(),
        );
        r.register(
            "ping_seconds",
            "Health-check PINGs of a Redis server (round trips)",
            self.ping.clone(),
        );
        r
    }

    /// A server answers (again).
    pub fn up(&self, role: Role) {
        self.up.get_or_create(&labels(role)).set(1);
        self.set_down(role, None);
    }

    /// A server does not answer, because of `reason`.
    pub fn down(&self, role: Role, reason: String) {
        self.up.get_or_create(&labels(role)).set(0);
        self.set_down(role, Some(reason));
    }

    /// A server was restarted.
    pub fn restarted(&self, role: Role) {
        self.restarts.get_or_create(&labels(role)).inc();
    }

    /// A health-check PING took `seconds`.
    pub fn ping(&self, role: Role, seconds: f64) {
        self.ping.get_or_create(&labels(role)).observe(seconds);
    }

    fn set_down(&self, role: Role, reason: Option<String>) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        match reason {
            Some(reason) => down.insert(role.to_string(), reason),
            None => down.remove(&role.to_string()),
        };
        match down.iter().next() {
            None => self.health.set_serving(),
            Some((server, reason)) => self
                .health
                .set_not_serving(format!("redis {server} {reason}")),
        }
    }
}
