//! `rayd status`: the cluster as the GCS sees it: its Redis servers and their health,
//! the live global schedulers, and the registered nodes with the heartbeat age of each
//! node's daemons. The cluster is healthy when every Redis server answers, a global
//! scheduler is live, and every node the GCS holds alive still hears from its raylet and
//! its store.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use fred::prelude::*;
use rayd_config::RaydConfig;
use rayd_gcs::{connect_server, keys, GcsClient};
use rayd_launcher::node_state;
use serde::Serialize;

/// How long one server may take to answer before it counts as down.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);
/// Heartbeat intervals of the raylet a node may miss before it counts as gone ...
const STALE_HEARTBEATS: u64 = 10;
/// ... but never less than this (ms): a loaded machine delays heartbeats.
const MIN_STALE_MS: u64 = 3000;
/// A store that has not reported its figures (every 2 s) for this long (ms) is gone.
const STORE_STALE_MS: u64 = 10_000;

/// One Redis server of the GCS.
#[derive(Debug, Serialize)]
struct Server {
    role: String,
    address: String,
    healthy: bool,
    /// PING round trip.
    latency_ms: Option<f64>,
    keys: Option<u64>,
    error: Option<String>,
}

/// One daemon of a node, as its heartbeats in the GCS show it.
#[derive(Debug, Serialize, PartialEq)]
struct Daemon {
    name: &'static str,
    /// Milliseconds since its last heartbeat; none before the first.
    heartbeat_age_ms: Option<u64>,
    alive: bool,
}

/// One node of the node table.
#[derive(Debug, Serialize)]
struct Node {
    node_id: String,
    address: String,
    /// The GCS holds the node alive and each of its daemons is heard from.
    alive: bool,
    /// `alive`; `dead` (the GCS marked it: stopped or declared dead); `unresponsive` (the
    /// GCS holds it alive but a daemon fell silent).
    state: &'static str,
    daemons: Vec<Daemon>,
    resources_total: std::collections::BTreeMap<String, f64>,
    resources_available: std::collections::BTreeMap<String, f64>,
    running_tasks: u64,
    queued_tasks: u64,
    /// Milliseconds since the node's last heartbeat.
    heartbeat_age_ms: u64,
    /// The node's object store, as its plasma last reported.
    object_store: Option<rayd_gcs::StoreFigures>,
}

/// A live global scheduler (refreshed its registration within 5 s).
#[derive(Debug, Serialize)]
struct GlobalScheduler {
    id: String,
    address: String,
    /// Since its last refresh.
    last_seen_ms_ago: u64,
}

/// The daemons of a node and its state, from the GCS's `alive` flag and the ages of the
/// raylet's heartbeat and of the store's last report (none: not reported yet).
fn node_health(
    gcs_alive: bool,
    raylet_age_ms: u64,
    store_age_ms: Option<u64>,
    stale_ms: u64,
) -> (&'static str, Vec<Daemon>) {
    let daemons = vec![
        Daemon {
            name: "raylet",
            heartbeat_age_ms: Some(raylet_age_ms),
            alive: gcs_alive && raylet_age_ms <= stale_ms,
        },
        Daemon {
            name: "plasma",
            heartbeat_age_ms: store_age_ms,
            alive: gcs_alive && store_age_ms.is_none_or(|age| age <= STORE_STALE_MS),
        },
    ];
    let state = if !gcs_alive {
        "dead"
    } else if daemons.iter().all(|d| d.alive) {
        "alive"
    } else {
        "unresponsive"
    };
    (state, daemons)
}

#[derive(Debug, Serialize)]
struct Status {
    redis_address: String,
    version: Option<String>,
    healthy: bool,
    servers: Vec<Server>,
    global_schedulers: Vec<GlobalScheduler>,
    nodes: Vec<Node>,
    /// Where the dashboard serves, when one runs.
    webui_url: Option<String>,
    /// Every daemon's `/metrics` and `/health`: `<daemon>@<ip>` -> port.
    metrics_endpoints: std::collections::BTreeMap<String, u16>,
}

async fn probe(role: String, address: String, password: Option<&str>) -> Server {
    let result = tokio::time::timeout(ANSWER_TIMEOUT, async {
        let client = connect_server(&address, password).await?;
        let started = Instant::now();
        let _: String = client.ping(None).await?;
        let latency = started.elapsed();
        let keys: u64 = client.dbsize().await?;
        let _ = client.quit().await;
        Ok::<_, anyhow::Error>((latency, keys))
    })
    .await;
    let (latency_ms, keys, error) = match result {
        Ok(Ok((latency, keys))) => (Some(latency.as_secs_f64() * 1e3), Some(keys), None),
        Ok(Err(e)) => (None, None, Some(format!("{e:#}"))),
        Err(_) => (
            None,
            None,
            Some(format!("no answer within {ANSWER_TIMEOUT:?}")),
        ),
    };
    Server {
        role,
        address,
        healthy: error.is_none(),
        latency_ms,
        keys,
        error,
    }
}

async fn gather(
    address: &str,
    password: Option<&str>,
    heartbeat_interval_ms: u64,
) -> anyhow::Result<Status> {
    let primary = tokio::time::timeout(ANSWER_TIMEOUT, connect_server(address, password))
        .await
        .with_context(|| format!("the GCS at {address} did not answer within {ANSWER_TIMEOUT:?}"))?
        .with_context(|| format!("cannot reach the GCS at {address}"))?;
    let shards: Vec<String> = primary.lrange(keys::SHARDS, 0, -1).await?;
    let version: Option<String> = primary.hget(keys::CLUSTER, "version").await?;
    let _ = primary.quit().await;
    if shards.is_empty() {
        anyhow::bail!(
            "redis at {address} has no shard list at `{}`: is it a rayd head?",
            keys::SHARDS
        );
    }
    let mut servers = vec![probe("primary".into(), address.to_string(), password).await];
    for (i, shard) in shards.iter().enumerate() {
        servers.push(probe(format!("shard {i}"), shard.clone(), password).await);
    }
    let servers_healthy = servers.iter().all(|s| s.healthy);
    let stale_ms = (heartbeat_interval_ms * STALE_HEARTBEATS).max(MIN_STALE_MS);
    let mut nodes = Vec::new();
    let mut global_schedulers = Vec::new();
    let (mut webui_url, mut metrics_endpoints) = (None, Default::default());
    if servers_healthy {
        let gcs = GcsClient::connect(address, password).await?;
        let now_ms = rayd_gcs::now_ms();
        for scheduler in gcs.global_schedulers().await? {
            global_schedulers.push(GlobalScheduler {
                id: scheduler.id,
                address: scheduler.address,
                last_seen_ms_ago: now_ms.saturating_sub(scheduler.last_heartbeat_ms),
            });
        }
        for node in gcs.nodes().await? {
            let heartbeat_age_ms = now_ms.saturating_sub(node.last_heartbeat_ms);
            let store_age_ms = node
                .store
                .as_ref()
                .filter(|store| store.reported_ms > 0)
                .map(|store| now_ms.saturating_sub(store.reported_ms));
            let (state, daemons) =
                node_health(node.alive, heartbeat_age_ms, store_age_ms, stale_ms);
            nodes.push(Node {
                node_id: node.node_id.hex(),
                address: node.node_ip_address,
                alive: state == "alive",
                state,
                daemons,
                resources_total: node.resources_total,
                resources_available: node.resources_available,
                running_tasks: node.running_tasks,
                queued_tasks: node.queued_tasks,
                heartbeat_age_ms,
                object_store: node.store,
            });
        }
        webui_url = gcs.webui_url().await?;
        metrics_endpoints = gcs.metrics_endpoints().await?;
        gcs.quit().await;
    }
    // Nodes the GCS marked dead were stopped or declared dead: gone on purpose, or
    // already reported; a node it holds alive whose daemons are silent is not.
    let healthy = servers_healthy
        && !global_schedulers.is_empty()
        && nodes.iter().all(|n| n.state != "unresponsive");
    Ok(Status {
        redis_address: address.to_string(),
        version,
        healthy,
        servers,
        global_schedulers,
        nodes,
        webui_url,
        metrics_endpoints,
    })
}

/// The status as the table people read.
fn table(status: &Status) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "rayd cluster at {} (version {}): {}",
        status.redis_address,
        status.version.as_deref().unwrap_or("unknown"),
        if status.healthy {
            "healthy"
        } else {
            "UNHEALTHY"
        }
    );
    if let Some(url) = &status.webui_url {
        let _ = writeln!(out, "dashboard: {url}");
    }
    let _ = writeln!(out, "\nGCS ({} Redis servers)", status.servers.len());
    for s in &status.servers {
        let _ = match &s.error {
            None => writeln!(
                out,
                "  {:<10} {:<22} ok    {:>7.2} ms  {} keys",
                s.role,
                s.address,
                s.latency_ms.unwrap_or_default(),
                s.keys.unwrap_or_default()
            ),
            Some(e) => writeln!(out, "  {:<10} {:<22} DOWN  {e}", s.role, s.address),
        };
    }
    let _ = writeln!(
        out,
        "\nglobal schedulers ({})",
        status.global_schedulers.len()
    );
    for g in &status.global_schedulers {
        let _ = writeln!(
            out,
            "  {} {:<22} seen {} ms ago",
            g.id, g.address, g.last_seen_ms_ago
        );
    }
    let _ = writeln!(out, "\nnodes ({})", status.nodes.len());
    for n in &status.nodes {
        let resources: Vec<String> = n
            .resources_total
            .iter()
            .map(|(name, total)| {
                let available = n.resources_available.get(name).copied().unwrap_or_default();
                format!("{name} {available}/{total}")
            })
            .collect();
        let _ = writeln!(
            out,
            "  {} {:<15} {:<5} {} running, {} queued; {}; heartbeats: {}",
            &n.node_id[..12],
            n.address,
            n.state,
            n.running_tasks,
            n.queued_tasks,
            resources.join(", "),
            n.daemons
                .iter()
                .map(|d| match d.heartbeat_age_ms {
                    Some(age) => format!(
                        "{} {:.1} s ago{}",
                        d.name,
                        age as f64 / 1000.0,
                        if d.alive { "" } else { " (GONE)" }
                    ),
                    None => format!("{} not yet", d.name),
                })
                .collect::<Vec<_>>()
                .join(", ")
        );
        if let Some(store) = &n.object_store {
            let _ = writeln!(
        out,
                "  {:12} object store: {} of {} used, {} objects, {} evictions; spilled: {} objects, {} on disk ({} written, {} restored)",
                "",
                mib(store.used_bytes),
                mib(store.capacity_bytes),
                store.objects,
                store.evictions,
                store.spilled_objects,
                mib(store.spilled_bytes),
                mib(store.spill_written_bytes),
                mib(store.spill_restored_bytes)
            );
        }
    }
    if !status.metrics_endpoints.is_empty() {
        let _ = writeln!(out, "\n/metrics and /health");
        for (daemon, port) in &status.metrics_endpoints {
            let _ = writeln!(out, "  {daemon}:{port}");
        }
    }
    out
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// The cluster's primary Redis and secret: `redis_address`, else that of the node
/// started here, else this machine's default; the secret given, else that of a node of
/// the cluster started on this machine (`rayd start`, `ray.init()`).
pub(crate) fn cluster_gcs(config: &RaydConfig) -> anyhow::Result<(String, Option<String>)> {
    let local = node_state::read(&config.temp_dir)?;
    let address = match (&config.redis_address, &local) {
        (Some(address), _) => address.clone(),
        (None, Some(state)) => state.redis_address.clone(),
        (None, None) => format!("{}:{}", config.node_ip_address, config.redis_port),
    };
    // A cluster started on this machine has its secret here.
    let password = config
        .redis_password
        .clone()
        .or_else(|| rayd_launcher::secret::local_secret(&config.temp_dir, &address));
    Ok((address, password))
}

/// Runs `rayd status`; exits 1 when the cluster is not healthy.
pub fn status(config: &RaydConfig, json: bool) -> anyhow::Result<ExitCode> {
    let (address, password) = cluster_gcs(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(gather(
        &address,
        password.as_deref(),
        config.heartbeat_interval_ms,
    ))?;
    let text = if json {
        serde_json::to_string_pretty(&status)? + "\n"
    } else {
        table(&status)
    };
    // `rayd status | head` closes the pipe early: not an error worth a word.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => {}
    }
    Ok(if status.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_alive_only_while_the_gcs_and_each_daemon_say_so() {
        let (state, daemons) = node_health(true, 100, Some(1500), 3000);
        assert_eq!(state, "alive");
        assert!(daemons.iter().all(|d| d.alive));
        // A store that has not reported yet is not counted as gone.
        assert_eq!(node_health(true, 100, None, 3000).0, "alive");
        let (state, daemons) = node_health(true, 5000, Some(1500), 3000);
        assert_eq!(state, "unresponsive");
        assert!(!daemons[0].alive && daemons[1].alive);
        let (state, daemons) = node_health(true, 100, Some(STORE_STALE_MS + 1), 3000);
        assert_eq!(state, "unresponsive");
        assert!(daemons[0].alive && !daemons[1].alive);
        let (state, daemons) = node_health(false, 100, Some(100), 3000);
        assert_eq!(state, "dead");
        assert!(daemons.iter().all(|d| !d.alive));
    }
}
