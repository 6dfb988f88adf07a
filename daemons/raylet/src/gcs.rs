//! The raylet's writes to the GCS, off the scheduling path: task lineage and states go
//! through a channel to a writer task that sends them in batches; heartbeats go out on a
//! timer.

use futures::future::join_all;
use rayd_common::gcs::{ActorInfo, GcsClient, TaskEntry};
use rayd_common::id::TaskId;
use tokio::sync::mpsc;

/// Most writes sent together.
const BATCH: usize = 512;

/// A write for the GCS.
#[derive(Debug)]
pub enum GcsWrite {
    /// A task's spec, when it arrives.
    Task(TaskEntry),
    /// A task's new state.
    State(TaskId, &'static str),
    /// An actor's entry.
    Actor(ActorInfo),
}

/// Starts the writer; it ends when every sender is dropped.
pub fn spawn_writer(
    gcs: GcsClient,
    node: rayd_common::id::NodeId,
) -> mpsc::UnboundedSender<GcsWrite> {
    let (tx, mut rx) = mpsc::unbounded_channel::<GcsWrite>();
    tokio::spawn(async move {
        let mut batch = Vec::with_capacity(BATCH);
        while rx.recv_many(&mut batch, BATCH).await > 0 {
            // Concurrent commands share one pipelined connection per shard.
            let results = join_all(batch.drain(..).map(|write| {
                let gcs = &gcs;
                async move {
                    match write {
                        GcsWrite::Task(entry) => gcs.put_task(&entry).await,
                        GcsWrite::State(task, state) => {
                            gcs.set_task_state(task, state, Some(node)).await
                        }
                        GcsWrite::Actor(actor) => gcs.put_actor(&actor).await,
                    }
                }
            }))
            .await;
            if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
                log::warn!("cannot write task records to the GCS: {e}");
            }
        }
    });
    tx
}
