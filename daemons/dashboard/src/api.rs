//! The dashboard's JSON API (`/api/...`): what each page shows, read from the GCS on each
//! request (the GCS is the truth; the dashboard keeps nothing).

use std::collections::{BTreeMap, HashMap};

use rayd_common::id::{JobId, NodeId};
use rayd_gcs::{chrome_tracing, GcsClient, GcsError, NodeInfo, ProfileEvent, TaskRow};
use serde_json::{json, Value};

/// Most tasks (and actors) read per shard for one page.
const MAX_SCANNED: usize = 20_000;
/// Latest tasks listed.
const LATEST_TASKS: usize = 100;
/// Timeline events read per job.
const MAX_EVENTS_PER_JOB: usize = 20_000;
/// Jobs whose timelines are read for the task list (the most recent ones).
const MAX_JOBS: usize = 8;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Node ID -> address, to show where things run.
fn addresses(nodes: &[NodeInfo]) -> HashMap<NodeId, String> {
    nodes
        .iter()
        .map(|n| (n.node_id, n.node_ip_address.clone()))
        .collect()
}

/// `/api/cluster`: every node with its resources, store and liveness, and the totals.
pub async fn cluster(gcs: &GcsClient) -> Result<Value, GcsError> {
    let nodes = gcs.nodes().await?;
    let now = now_ms();
    let mut total: BTreeMap<String, f64> = BTreeMap::new();
    let mut available: BTreeMap<String, f64> = BTreeMap::new();
    let mut rows = Vec::with_capacity(nodes.len());
    for node in &nodes {
        if node.alive {
            for (name, amount) in &node.resources_total {
                *total.entry(name.clone()).or_default() += amount;
            }
            for (name, amount) in &node.resources_available {
                *available.entry(name.clone()).or_default() += amount;
            }
        }
        let store = node.store.as_ref().map(|s| {
            json!({"used_bytes": s.used_bytes, "capacity_bytes": s.capacity_bytes,
                   "objects": s.objects, "evictions": s.evictions,
                   "spilled_bytes": s.spilled_bytes})
        });
        rows.push(json!({
            "node_id": node.node_id.hex(),
            "address": node.node_ip_address,
            "alive": node.alive,
            "resources_total": node.resources_total,
            "resources_available": node.resources_available,
            "queued_tasks": node.queued_tasks,
            "running_tasks": node.running_tasks,
            "heartbeat_age_ms": now.saturating_sub(node.last_heartbeat_ms),
            "store": store,
            "metrics_ports": gcs.metrics_ports(node.node_id).await?,
        }));
    }
    Ok(json!({
        "nodes": rows,
        "alive": nodes.iter().filter(|n| n.alive).count(),
        "dead": nodes.iter().filter(|n| !n.alive).count(),
        "resources_total": total,
        "resources_available": available,
    }))
}

/// What the timeline says of one task: when it ran, where, and its error.
#[derive(Debug, Default)]
struct Span {
    start: Option<f64>,
    end: Option<f64>,
    error: Option<String>,
}

/// The task spans of the most recent jobs' timelines, by task ID (hex).
async fn spans(gcs: &GcsClient) -> Result<HashMap<String, Span>, GcsError> {
    let mut spans: HashMap<String, Span> = HashMap::new();
    let jobs = gcs.profiled_jobs().await?;
    let mut events = Vec::new();
    for job in jobs {
        let mut of_job = gcs.profile_events(job, MAX_EVENTS_PER_JOB).await?;
        of_job.retain(|e| e.event_type == "task");
        events.push(of_job);
    }
    // The jobs whose last task ran most recently.
    events.sort_by(|a, b| {
        let last = |e: &Vec<ProfileEvent>| e.last().map_or(0.0, |e| e.end);
        last(b).total_cmp(&last(a))
    });
    for event in events.into_iter().take(MAX_JOBS).flatten() {
        let Some(task) = event.task_id.clone() else {
            continue;
        };
        let span = spans.entry(task).or_default();
        span.start = Some(event.start);
        span.end = Some(event.end);
        span.error = event
            .extra_data
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_string);
    }
    Ok(spans)
}

/// The state a person reads: a task whose code raised is `failed` (the raylet counts it
/// finished: it returned, with errors as its results).
fn shown_state(task: &TaskRow, span: Option<&Span>) -> String {
    if span.is_some_and(|s| s.error.is_some()) {
        "failed".into()
    } else {
        task.state.clone()
    }
}

/// `/api/tasks`: counts by state and the latest tasks (not actor calls' entries alone:
/// every entry of the task table).
pub async fn tasks(gcs: &GcsClient) -> Result<Value, GcsError> {
    let nodes = gcs.nodes().await?;
    let addresses = addresses(&nodes);
    let mut tasks = gcs.scan_tasks(MAX_SCANNED).await?;
    let spans = spans(gcs).await?;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for task in &tasks {
        *counts
            .entry(shown_state(task, spans.get(&task.task_id.hex())))
            .or_default() += 1;
    }
    tasks.sort_by_key(|t| std::cmp::Reverse(t.updated_ms));
    let latest: Vec<Value> = tasks
        .iter()
        .take(LATEST_TASKS)
        .map(|t| {
            let span = spans.get(&t.task_id.hex());
            let duration = span.and_then(|s| Some(s.end? - s.start?));
            json!({
                "task_id": t.task_id.hex(),
                "function": t.function_name,
                "state": shown_state(t, span),
                "node": t.node.and_then(|n| addresses.get(&n).cloned()),
                "node_id": t.node.map(|n| n.hex()),
                "job_id": t.job_id,
                "actor_id": t.actor_id.map(|a| a.hex()),
                "updated_ms": t.updated_ms,
                "duration_s": duration,
                "error": span.and_then(|s| s.error.clone()),
            })
        })
        .collect();
    Ok(json!({"total": tasks.len(), "counts": counts, "latest": latest}))
}

/// `/api/actors`: every actor with its class (the name its creation task carries).
pub async fn actors(gcs: &GcsClient) -> Result<Value, GcsError> {
    let nodes = gcs.nodes().await?;
    let addresses = addresses(&nodes);
    let classes: HashMap<_, _> = gcs
        .scan_tasks(MAX_SCANNED)
        .await?
        .into_iter()
        .filter(|t| t.actor_creation)
        .filter_map(|t| Some((t.actor_id?, t.function_name)))
        .collect();
    let mut actors = gcs.scan_actors(MAX_SCANNED).await?;
    actors.sort_by_key(|a| std::cmp::Reverse(a.updated_ms));
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    for actor in &actors {
        *counts.entry(actor.state.clone()).or_default() += 1;
    }
    let rows: Vec<Value> = actors
        .iter()
        .map(|a| {
            json!({
                "actor_id": a.actor_id.hex(),
                "class": classes.get(&a.actor_id),
                "state": a.state,
                "node": a.node.and_then(|n| addresses.get(&n).cloned()),
                "node_id": a.node.map(|n| n.hex()),
                "job_id": a.job_id,
                "restarts": a.restarts,
            })
        })
        .collect();
    Ok(json!({"counts": counts, "actors": rows}))
}

/// `/api/jobs`: the jobs that have a timeline.
pub async fn jobs(gcs: &GcsClient) -> Result<Value, GcsError> {
    let jobs: Vec<String> = gcs.profiled_jobs().await?.iter().map(JobId::hex).collect();
    Ok(json!({ "jobs": jobs }))
}

/// `/api/timeline`: the Chrome trace events of `job` (of every job when `None`), as
/// `ray.timeline()` returns them.
pub async fn timeline(gcs: &GcsClient, job: Option<JobId>) -> Result<Value, GcsError> {
    let jobs = match job {
        Some(job) => vec![job],
        None => gcs.profiled_jobs().await?,
    };
    let mut events = Vec::new();
    for job in jobs {
        events.extend(gcs.profile_events(job, MAX_EVENTS_PER_JOB).await?);
    }
    events.sort_by(|a, b| a.start.total_cmp(&b.start));
    Ok(Value::Array(chrome_tracing(&events)))
}
