//! `rayd status`: the cluster as the GCS sees it: its Redis servers and their health,
//! the live global schedulers, and the registered nodes.

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

/// One node of the node table.
#[derive(Debug, Serialize)]
struct Node {
    node_id: String,
    address: String,
    alive: bool,
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

async fn gather(address: &str, password: Option<&str>) -> anyhow::Result<Status> {
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
    let healthy = servers.iter().all(|s| s.healthy);
    let mut nodes = Vec::new();
    let mut global_schedulers = Vec::new();
    let (mut webui_url, mut metrics_endpoints) = (None, Default::default());
    if healthy {
        let gcs = GcsClient::connect(address, password).await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for scheduler in gcs.global_schedulers().await? {
            global_schedulers.push(GlobalScheduler {
                id: scheduler.id,
                address: scheduler.address,
                last_seen_ms_ago: now_ms.saturating_sub(scheduler.last_heartbeat_ms),
            });
        }
        for node in gcs.nodes().await? {
            nodes.push(Node {
                node_id: node.node_id.hex(),
                address: node.node_ip_address,
                alive: node.alive,
                resources_total: node.resources_total,
                resources_available: node.resources_available,
                running_tasks: node.running_tasks,
                queued_tasks: node.queued_tasks,
                heartbeat_age_ms: now_ms.saturating_sub(node.last_heartbeat_ms),
                object_store: node.store,
            });
        }
        webui_url = gcs.webui_url().await?;
        metrics_endpoints = gcs.metrics_endpoints().await?;
        gcs.quit().await;
    }
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

fn print_table(status: &Status) {
    println!(
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
        println!("dashboard: {url}");
    }
    println!("\nGCS ({} Redis servers)", status.servers.len());
    for s in &status.servers {
        match &s.error {
            None => println!(
                "  {:<10} {:<22} ok    {:>7.2} ms  {} keys",
                s.role,
                s.address,
                s.latency_ms.unwrap_or_default(),
                s.keys.unwrap_or_default()
            ),
            Some(e) => println!("  {:<10} {:<22} DOWN  {e}", s.role, s.address),
        }
    }
    println!("\nglobal schedulers ({})", status.global_schedulers.len());
    for g in &status.global_schedulers {
        println!(
            "  {} {:<22} seen {} ms ago",
            g.id, g.address, g.last_seen_ms_ago
        );
    }
    println!("\nnodes ({})", status.nodes.len());
    for n in &status.nodes {
        let resources: Vec<String> = n
            .resources_total
            .iter()
            .map(|(name, total)| {
                let available = n.resources_available.get(name).copied().unwrap_or_default();
                format!("{name} {available}/{total}")
            })
            .collect();
        println!(
            "  {} {:<15} {:<5} {} running, {} queued; {}; last heartbeat {:.1} s ago",
            &n.node_id[..12],
            n.address,
            if n.alive { "alive" } else { "dead" },
            n.running_tasks,
            n.queued_tasks,
            resources.join(", "),
            n.heartbeat_age_ms as f64 / 1000.0
        );
        if let Some(store) = &n.object_store {
            println!(
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
        println!("\n/metrics and /health");
        for (daemon, port) in &status.metrics_endpoints {
            println!("  {daemon}:{port}");
        }
    }
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

/// Runs `rayd status`; exits 1 when a server of the GCS is down.
pub fn status(config: &RaydConfig, json: bool) -> anyhow::Result<ExitCode> {
    let (address, password) = cluster_gcs(config)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(gather(&address, password.as_deref()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print_table(&status);
    }
    Ok(if status.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
