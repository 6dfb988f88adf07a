//! Reports object locations to the GCS object table (a sealed object adds this node to
//! its locations, a deleted or evicted one removes it) and the store's figures to the
//! node table (for `rayd status`). Off the store's critical path:
//! events queue in a bounded channel and one task writes them in batches, all of a
//! batch's commands in flight at once (fred pipelines them on each shard's connection).

use std::time::Duration;

use futures::future::join_all;
use rayd_common::id::NodeId;
use rayd_gcs::{GcsClient, GcsError, StoreFigures};
use rayd_metrics::prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::store::StoreEvent;

/// Events waiting for the GCS; beyond this (the GCS long unreachable) new ones are
/// dropped, so an unreachable GCS cannot exhaust the daemon's memory.
const QUEUE: usize = 1 << 20;
/// Most events written in one batch.
const MAX_BATCH: usize = 1024;
/// How long a batch waits to fill once its first event is in.
const BATCH_WINDOW: Duration = Duration::from_millis(2);
/// Pauses between connection attempts, doubling up to the last.
const RETRY: [u64; 6] = [100, 200, 400, 800, 1600, 3200];
/// How long the last events may take to go out at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// Starts the reporter; returns the queue to feed it and its task. The latest figures
/// sent on `figures` are written as they change.
pub fn spawn(
    redis_address: String,
    password: Option<String>,
    node: NodeId,
    figures: watch::Receiver<StoreFigures>,
    round_trip: Histogram,
    cancel: CancellationToken,
) -> (mpsc::Sender<StoreEvent>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(report(
        redis_address,
        password,
        node,
        rx,
        figures,
        round_trip,
        cancel,
    ));
    (tx, task)
}

async fn connect(
    address: &str,
    password: Option<&str>,
    cancel: &CancellationToken,
) -> Option<GcsClient> {
    let mut attempt = 0;
    loop {
        match GcsClient::connect(address, password).await {
            Ok(client) => {
                log::info!(redis_address = address; "reporting object locations to the gcs");
                return Some(client);
            }
            Err(e) => {
                let pause = RETRY[attempt.min(RETRY.len() - 1)];
                if attempt == 0 || attempt % 10 == 0 {
                    log::warn!(redis_address = address, error:% = e; "cannot reach the gcs; object locations wait");
                }
                attempt += 1;
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(pause)) => {}
                    _ = cancel.cancelled() => return None,
                }
            }
        }
    }
}

async fn report(
    address: String,
    password: Option<String>,
    node: NodeId,
    mut rx: mpsc::Receiver<StoreEvent>,
    mut figures: watch::Receiver<StoreFigures>,
    round_trip: Histogram,
    cancel: CancellationToken,
) {
    let Some(gcs) = connect(&address, password.as_deref(), &cancel).await else {
        return;
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            event = rx.recv() => event,
            Ok(()) = figures.changed() => {
                let current = figures.borrow_and_update().clone();
                if let Err(e) = gcs.put_store_figures(node, &current).await {
                    log::warn!(error:% = e; "cannot record the store's figures in the gcs");
                }
                continue;
            }
            _ = cancel.cancelled() => break,
        };
        let Some(first) = first else { break };
        batch.push(first);
        let window = tokio::time::sleep(BATCH_WINDOW);
        tokio::pin!(window);
        while batch.len() < MAX_BATCH {
            tokio::select! {
                event = rx.recv() => match event {
                    Some(event) => batch.push(event),
                    None => break,
                },
                _ = &mut window => break,
            }
        }
        let started = std::time::Instant::now();
        write(&gcs, node, &mut batch).await;
        round_trip.observe(started.elapsed().as_secs_f64());
    }
    // Flush what is queued, within a bound: the daemon is stopping.
    while let Ok(event) = rx.try_recv() {
        batch.push(event);
    }
    if !batch.is_empty() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, write(&gcs, node, &mut batch)).await;
    }
    gcs.quit().await;
}

async fn write(gcs: &GcsClient, node: NodeId, batch: &mut Vec<StoreEvent>) {
    let writes = batch.drain(..).map(|event| async move {
        let result: Result<(), GcsError> = match event {
            StoreEvent::Sealed {
                id,
                data_size,
                metadata_size,
            } => {
                gcs.add_object_location(id, node, data_size + metadata_size)
                    .await
            }
            StoreEvent::Removed { id, freed } => gcs.remove_object_location(id, node, freed).await,
        };
        result
    });
    let failures = join_all(writes)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect::<Vec<_>>();
    if let Some(first) = failures.first() {
        log::warn!(failed = failures.len(), error:% = first; "cannot record object locations in the gcs");
    }
}
