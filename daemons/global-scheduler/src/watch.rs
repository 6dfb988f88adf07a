//! The view's source: the node table at start, then `rayd:heartbeats` (each node's free
//! resources and queue) and `rayd:node_events` (nodes registering and dying) on the GCS
//! primary.

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rayd_common::id::NodeId;
use rayd_gcs::{keys, GcsClient, Heartbeat, NodeEvent, NodeInfo, Subscription, Target};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::placement::{NodeView, View};
use crate::SchedulerError;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn lock(view: &Mutex<View>) -> std::sync::MutexGuard<'_, View> {
    view.lock().unwrap_or_else(|e| e.into_inner())
}

fn node_view(info: NodeInfo, last_heartbeat_ms: u64) -> NodeView {
    NodeView {
        address: info.node_manager_address,
        total: info.resources_total,
        available: info.resources_available,
        queued: info.queued_tasks,
        last_heartbeat_ms,
        alive: info.alive,
        reachable: true,
    }
}

/// Subscribes to the channels, then reads the node table into `view` (in this order, so
/// that nothing announced in between is missed), and follows the channels in a task until
/// `cancel` fires. The task ends on its own only when the subscription is lost for good.
pub async fn start(
    gcs: GcsClient,
    view: Arc<Mutex<View>>,
    cancel: CancellationToken,
) -> Result<JoinHandle<()>, SchedulerError> {
    let channels = vec![
        keys::HEARTBEATS_CHANNEL.to_string(),
        keys::NODE_EVENTS_CHANNEL.to_string(),
    ];
    let subscription = gcs.subscribe(Target::Primary, channels).await?;
    let nodes = gcs.nodes().await?;
    {
        let mut view = lock(&view);
        for info in nodes.into_iter().filter(|n| n.alive) {
            let at = info.last_heartbeat_ms;
            view.add(info.node_id, node_view(info, at));
        }
    }
    Ok(tokio::spawn(follow(gcs, view, subscription, cancel)))
}

async fn follow(
    gcs: GcsClient,
    view: Arc<Mutex<View>>,
    mut subscription: Subscription,
    cancel: CancellationToken,
) {
    loop {
        let notification = tokio::select! {
            _ = cancel.cancelled() => return,
            n = subscription.next() => match n {
                Some(n) => n,
                None => return,
            },
        };
        if notification.channel == keys::NODE_EVENTS_CHANNEL {
            match NodeEvent::parse(&notification.payload) {
                Some(NodeEvent::Dead(node)) => {
                    log::info!(node:% = node; "node dead: no more tasks go there");
                    lock(&view).dead(&node);
                }
                Some(NodeEvent::Alive(node)) => learn(&gcs, &view, node).await,
                None => {}
            }
            continue;
        }
        let Ok(beat) = serde_json::from_slice::<Heartbeat>(&notification.payload) else {
            log::debug!("a malformed heartbeat; skipped");
            continue;
        };
        let Ok(node) = beat.node_id.parse::<NodeId>() else {
            continue;
        };
        let now = now_ms();
        let known = lock(&view).heartbeat(
            &node,
            beat.resources_available.clone(),
            beat.queue_length,
            now,
        );
        if !known {
            // First heard of (registered before a missed event, or alive again).
            learn(&gcs, &view, node).await;
            lock(&view).heartbeat(&node, beat.resources_available, beat.queue_length, now);
        }
    }
}

/// Reads `node`'s entry and puts it in the view as just heard from.
async fn learn(gcs: &GcsClient, view: &Mutex<View>, node: NodeId) {
    match gcs.node(node).await {
        Ok(Some(info)) if info.alive => {
            log::info!(
                node:% = node, node_manager = info.node_manager_address.as_str(),
                resources:? = info.resources_total;
                "node joined"
            );
            lock(view).add(node, node_view(info, now_ms()));
        }
        Ok(_) => {}
        Err(e) => log::warn!(node:% = node; "cannot read a node's entry: {e}"),
    }
}
