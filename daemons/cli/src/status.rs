//! `rayd status`: the cluster as the GCS sees it: its Redis servers and their health,
//! the registered nodes (what runs and waits on each, from their heartbeats), and the
//! global schedulers that announce themselves in the GCS.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use fred::prelude::*;
use rayd_config::RaydConfig;
use rayd_gcs::{connect_server, keys, GcsClient};
use rayd_launcher::node_state;
use serde::Serialize;

/// The GCS hash where each global scheduler announces itself: its ID -> JSON
/// `{"address": "host:port", "last_heartbeat_ms": <unix ms>}` (on the primary).
const GLOBAL_SCHEDULERS: &str = "rayd:global_schedulers";

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

/// A global scheduler, as it last announced itself in the GCS.
#[derive(Debug, PartialEq, Serialize)]
struct GlobalScheduler {
    id: String,
    address: Option<String>,
    last_heartbeat_ms: Option<u64>,
    /// Milliseconds since its last heartbeat.
    heartbeat_age_ms: Option<u64>,
    /// Why its entry could not be read.
    error: Option<String>,
}

/// The entries of [`GLOBAL_SCHEDULERS`], sorted by ID; a malformed one is kept, with why.
fn parse_global_schedulers(
    entries: std::collections::HashMap<String, String>,
    now_ms: u64,
) -> Vec<GlobalScheduler> {
    #[derive(serde::Deserialize)]
    struct Entry {
        address: String,
        last_heartbeat_ms: u64,
    }
    let mut schedulers: Vec<GlobalScheduler> = entries
        .into_iter()
        .map(|(id, json)| match serde_json::from_str::<Entry>(&json) {
            Ok(entry) => GlobalScheduler {
                id,
                address: Some(entry.address),
                last_heartbeat_ms: Some(entry.last_heartbeat_ms),
                heartbeat_age_ms: Some(now_ms.saturating_sub(entry.last_heartbeat_ms)),
                error: None,
            },
            Err(e) => GlobalScheduler {
                id,
                address: None,
                last_heartbeat_ms: None,
                heartbeat_age_ms: None,
                error: Some(format!("malformed entry: {e}")),
            },
        })
        .collect();
    schedulers.sort_by(|a, b| a.id.cmp(&b.id));
    schedulers
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[derive(Debug, Serialize)]
struct Status {
    redis_address: String,
    version: Option<String>,
    healthy: bool,
    servers: Vec<Server>,
    nodes: Vec<Node>,
    /// Empty when none is up (a raylet then spills tasks by itself).
    global_schedulers: Vec<GlobalScheduler>,
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
    let schedulers: std::collections::HashMap<String, String> =
        primary.hgetall(GLOBAL_SCHEDULERS).await?;
    let _ = primary.quit().await;
    let global_schedulers = parse_global_schedulers(schedulers, now_ms());
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
    let now = now_ms();
    if healthy {
        let gcs = GcsClient::connect(address, password).await?;
        for node in gcs.nodes().await? {
            nodes.push(Node {
                node_id: node.node_id.hex(),
                address: node.node_ip_address,
                alive: node.alive,
                resources_total: node.resources_total,
                resources_available: node.resources_available,
                running_tasks: node.running_tasks,
                queued_tasks: node.queued_tasks,
                heartbeat_age_ms: now.saturating_sub(node.last_heartbeat_ms),
                object_store: node.store,
            });
        }
        gcs.quit().await;
    }
    Ok(Status {
        redis_address: address.to_string(),
        version,
        healthy,
        servers,
        nodes,
        global_schedulers,
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
            "  {} {:<15} {:<5} {} running, {} queued; {}",
            &n.node_id[..12],
            n.address,
            if n.alive { "alive" } else { "dead" },
            n.running_tasks,
            n.queued_tasks,
            resources.join(", ")
        );
        if let Some(store) = &n.object_store {
            println!(
                "  {:12} object store: {} of {} used, {} objects, {} evictions",
                "",
                mib(store.used_bytes),
                mib(store.capacity_bytes),
                store.objects,
                store.evictions
            );
        }
    }
    for line in global_scheduler_lines(&status.global_schedulers) {
        println!("{line}");
    }
}

/// The table's lines about the global schedulers.
fn global_scheduler_lines(schedulers: &[GlobalScheduler]) -> Vec<String> {
    if schedulers.is_empty() {
        return vec!["\nglobal schedulers: none (raylets spill tasks by themselves)".into()];
    }
    let mut lines = vec![format!("\nglobal schedulers ({})", schedulers.len())];
    for s in schedulers {
        lines.push(match (&s.address, s.heartbeat_age_ms, &s.error) {
            (Some(address), Some(age), _) => format!(
                "  {:<12} {:<22} last heartbeat {:.1} s ago",
                s.id.get(..12).unwrap_or(&s.id),
                address,
                age as f64 / 1e3
            ),
            (_, _, error) => format!(
                "  {:<12} {}",
                s.id.get(..12).unwrap_or(&s.id),
                error.as_deref().unwrap_or("unreadable")
            ),
        });
    }
    lines
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
}

/// Runs `rayd status`; exits 1 when a server of the GCS is down.
pub fn status(config: &RaydConfig, json: bool) -> anyhow::Result<ExitCode> {
    let address = match &config.redis_address {
        Some(address) => address.clone(),
        None => match node_state::read(&config.temp_dir)? {
            Some(state) => state.redis_address,
            None => format!("{}:{}", config.node_ip_address, config.redis_port),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let status = runtime.block_on(gather(&address, config.redis_password.as_deref()))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_schedulers_are_read_sorted_with_their_heartbeat_age() {
        let entries = [
            (
                "b".to_string(),
                r#"{"address":"10.0.0.2:7000","last_heartbeat_ms":900}"#.to_string(),
            ),
            (
                "a".to_string(),
                r#"{"address":"10.0.0.1:7000","last_heartbeat_ms":1500}"#.to_string(),
            ),
            ("c".to_string(), "not json".to_string()),
        ];
        let parsed = parse_global_schedulers(entries.into_iter().collect(), 2000);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0].id, "a");
        assert_eq!(parsed[0].address.as_deref(), Some("10.0.0.1:7000"));
        assert_eq!(parsed[0].heartbeat_age_ms, Some(500));
        assert_eq!(parsed[1].heartbeat_age_ms, Some(1100));
        assert!(parsed[2]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("malformed")));
        let lines = global_scheduler_lines(&parsed);
        assert_eq!(lines[0], "\nglobal schedulers (3)");
        assert!(
            lines[1].contains("10.0.0.1:7000") && lines[1].contains("0.5 s ago"),
            "{}",
            lines[1]
        );
        assert!(lines[3].contains("malformed"), "{}", lines[3]);
    }

    #[test]
    fn no_global_scheduler_reads_none() {
        assert!(parse_global_schedulers(Default::default(), 0).is_empty());
        assert!(global_scheduler_lines(&[])[0].contains("global schedulers: none"));
    }
}
