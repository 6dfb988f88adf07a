//! Object locations written again after a GCS shard restarted empty (the GCS keeps no
//! persistence by default): the shards' supervisor announces the restart on
//! `rayd:shard_events`, and the store reports its sealed objects that live on that shard,
//! through the same reporter as new ones. Without this, a pull would find no copy of an
//! object that is right here.

use std::sync::Arc;
use std::time::Duration;

use rayd_gcs::{keys, GcsClient, Target};
use tokio_util::sync::CancellationToken;

use crate::state::State;

/// Pause before trying the GCS again.
const RETRY: Duration = Duration::from_secs(1);

/// Follows shard restarts until `cancel` fires.
pub fn spawn(
    redis_address: String,
    password: Option<String>,
    state: Arc<State>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            if let Err(e) = follow(&redis_address, password.as_deref(), &state, &cancel).await {
                log::debug!("cannot follow shard restarts: {e}; trying again");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    })
}

async fn follow(
    address: &str,
    password: Option<&str>,
    state: &State,
    cancel: &CancellationToken,
) -> Result<(), rayd_gcs::GcsError> {
    let gcs = GcsClient::connect(address, password).await?;
    let mut events = gcs
        .subscribe(
            Target::Primary,
            vec![keys::SHARD_EVENTS_CHANNEL.to_string()],
        )
        .await?;
    let shards = gcs.shard_addresses().len();
    loop {
        let notification = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            n = events.next() => match n {
                Some(n) => n,
                None => return Ok(()),
            },
        };
        let Some(index) = keys::parse_shard_restart(&notification.payload) else {
            continue;
        };
        let sent = state.report_again(|id| keys::shard_index(id.as_bytes(), shards) == index);
        log::info!(shard = index, objects = sent; "a gcs shard restarted: reported its objects' locations again");
    }
}
