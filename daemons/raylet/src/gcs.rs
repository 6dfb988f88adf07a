//! The raylet's writes to the GCS, off the scheduling path: task lineage and states go
//! through a channel to a writer task; heartbeats go out on a timer.
//!
//! The writer gathers writes for up to [`FLUSH_INTERVAL`] and keeps one per task (its spec
//! and its latest state), so a short task costs one Redis command instead of one per state
//! change; lineage still reaches the GCS within that interval.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use rayd_common::id::{NodeId, TaskId};
use rayd_gcs::{ActorInfo, GcsClient, TaskEntry};
use tokio::sync::mpsc;

use crate::scheduler::GcsWrite;

/// How long writes are gathered before they are sent.
const FLUSH_INTERVAL: Duration = Duration::from_millis(20);
/// Most tasks gathered before a flush, whatever the time.
const MAX_PENDING: usize = 4096;

/// What one flush writes for one task.
#[derive(Debug, Default)]
struct Pending {
    spec: Option<prost::bytes::Bytes>,
    state: Option<String>,
}

/// Starts the writer; it ends when every sender is dropped, after its last flush.
pub fn spawn_writer(gcs: GcsClient, node: NodeId) -> mpsc::UnboundedSender<GcsWrite> {
    let (tx, mut rx) = mpsc::unbounded_channel::<GcsWrite>();
    tokio::spawn(async move {
        let mut tasks: HashMap<TaskId, Pending> = HashMap::new();
        let mut actors = Vec::new();
        let mut open = true;
        while open {
            let Some(first) = rx.recv().await else {
                break;
            };
            gather(first, &mut tasks, &mut actors);
            let deadline = tokio::time::Instant::now() + FLUSH_INTERVAL;
            while tasks.len() < MAX_PENDING {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(write)) => gather(write, &mut tasks, &mut actors),
                    Ok(None) => {
                        open = false;
                        break;
                    }
                    Err(_) => break,
                }
            }
            flush(&gcs, node, &mut tasks, &mut actors).await;
        }
    });
    tx
}

fn gather(write: GcsWrite, tasks: &mut HashMap<TaskId, Pending>, actors: &mut Vec<ActorInfo>) {
    match write {
        GcsWrite::Task(entry) => {
            let pending = tasks.entry(entry.task_id).or_default();
            pending.spec = Some(entry.spec);
            // A state already gathered is newer than the one the entry was made with.
            pending.state.get_or_insert(entry.state);
        }
        GcsWrite::State(task, state) => {
            tasks.entry(task).or_default().state = Some(state.as_str().to_string());
        }
        GcsWrite::Actor(actor) => actors.push(actor),
    }
}

async fn flush(
    gcs: &GcsClient,
    node: NodeId,
    tasks: &mut HashMap<TaskId, Pending>,
    actors: &mut Vec<ActorInfo>,
) {
    let entries: Vec<TaskEntry> = tasks
        .drain()
        .map(|(task_id, pending)| TaskEntry {
            task_id,
            spec: pending.spec.unwrap_or_default(),
            state: pending.state.unwrap_or_default(),
            node: Some(node),
        })
        .collect();
    let (task_result, actor_results) = futures::join!(
        gcs.put_tasks(&entries),
        join_all(
            actors
                .drain(..)
                .map(|actor| async move { gcs.put_actor(&actor).await })
        )
    );
    if let Some(Err(e)) = std::iter::once(task_result)
        .chain(actor_results)
        .find(Result::is_err)
    {
        log::warn!("cannot write task records to the GCS: {e}");
    }
}
