//! `rayd-global-scheduler`: the cluster's placement of spilled tasks (head node).
//!
//! A raylet spills a task that it cannot or should not run (`SpillTask`, gRPC); the global
//! scheduler picks a node from its view of the cluster ([`placement`]) and forwards the
//! task to that node's raylet itself (`NodeManager.ForwardTask`), trying the next node
//! when one refuses. The view comes from the GCS ([`watch`]): the node table at start,
//! then the heartbeats and node events on the primary's channels. The scheduler keeps no
//! state of its own (the GCS is the truth), so several may run at once: each registers in
//! `rayd:global_schedulers` and refreshes its entry every second; raylets pick a live one.
//!
//! It also declares dead the nodes silent for `node_death_timeout_ms`, checked and written
//! in one step by the GCS with the GCS's clock, so that several schedulers agree.

mod metrics;
pub mod placement;
mod service;
mod watch;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rayd_common::id::NodeId;
use rayd_common::proto::globalscheduler::v1::global_scheduler_server::GlobalSchedulerServer;
use rayd_config::RaydConfig;
use rayd_daemon::shutdown::{notify_ready, notify_stopping, Shutdown};
use rayd_gcs::{GcsClient, GcsError};
use tokio::net::TcpListener;

use crate::placement::View;

/// How often the scheduler refreshes its entry in `rayd:global_schedulers`.
const REGISTRATION_INTERVAL: Duration = Duration::from_secs(1);
/// How long a dead node's entry stays in the node table (for `ray.nodes()` and
/// `rayd status`) before it is deleted.
const DEAD_NODE_RETENTION: Duration = Duration::from_secs(3600);
/// How often dead nodes' entries older than the retention are deleted.
const PRUNE_INTERVAL: Duration = Duration::from_secs(60);
/// How often a stopping scheduler looks whether its last spills are done.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// Heartbeat intervals a node may miss before it is out of the view.
const STALE_HEARTBEATS: u64 = 10;
/// ... but never less than this (ms): a loaded machine delays heartbeats.
const MIN_STALE_MS: u64 = 1000;

/// Why the global scheduler could not start or keep running.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("no `redis_address`: the global scheduler needs the cluster's GCS")]
    NoRedisAddress,
    #[error("gcs: {0}")]
    Gcs(#[from] GcsError),
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make an id: {0}")]
    Id(String),
    #[error(transparent)]
    Tls(#[from] rayd_common::auth::TlsError),
    #[error("the grpc server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("the grpc server task ended: {0}")]
    ServerTask(String),
    #[error("{0}")]
    Metrics(#[from] rayd_metrics::MetricsError),
    #[error("lost the gcs subscription to the nodes' heartbeats")]
    Subscription,
}

impl rayd_daemon::Failure for SchedulerError {
    /// A missing key or an unusable value: restarting with the same configuration cannot help.
    fn is_config(&self) -> bool {
        matches!(self, Self::NoRedisAddress)
    }
}

/// How long a node may stay silent before it is out of the view, for raylets that beat
/// every `heartbeat_interval_ms`.
pub fn stale_after_ms(heartbeat_interval_ms: u64) -> u64 {
    heartbeat_interval_ms
        .saturating_mul(STALE_HEARTBEATS)
        .max(MIN_STALE_MS)
}

/// How often silent nodes are looked for: a few times within the silence that kills.
fn reap_interval(silence_ms: u64) -> Duration {
    Duration::from_millis((silence_ms / 4).clamp(50, 1000))
}

/// Declares dead, in the GCS, the nodes of `silent` that are still silent by the GCS's
/// own clock (another global scheduler may have done it first; the announcement on the
/// node events channel updates every view, this one included).
async fn reap_silent(gcs: &GcsClient, view: &Mutex<View>, silent: &[NodeId], silence_ms: u64) {
    if silent.is_empty() {
        return;
    }
    match gcs.reap_silent_nodes(silent, silence_ms).await {
        Ok(dead) => {
            for node in dead {
                log::warn!(node:% = node, silence_ms; "node declared dead: no heartbeat for {silence_ms} ms");
                watch::lock(view).dead(&node);
            }
        }
        Err(e) => log::warn!("cannot declare silent nodes dead: {e}"),
    }
}

/// A random ID for this scheduler's registration (16 hex digits).
fn new_id() -> Result<String, SchedulerError> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| SchedulerError::Id(e.to_string()))?;
    Ok(hex::encode(bytes))
}

/// Runs the global scheduler until `shutdown` fires.
pub async fn run(config: RaydConfig, shutdown: Shutdown) -> Result<(), SchedulerError> {
    let redis_address = config
        .redis_address
        .clone()
        .ok_or(SchedulerError::NoRedisAddress)?;
    let gcs = GcsClient::connect(&redis_address, config.redis_password.as_deref()).await?;
    let wanted = format!(
        "{}:{}",
        config.node_ip_address, config.global_scheduler_port
    );
    let listen_error = |address: &str| {
        let address = address.to_string();
        move |source| SchedulerError::Listen { address, source }
    };
    let listener = TcpListener::bind(&wanted)
        .await
        .map_err(listen_error(&wanted))?;
    let address = listener
        .local_addr()
        .map_err(listen_error(&wanted))?
        .to_string();
    let id = new_id()?;

    let view = Arc::new(Mutex::new(View::new(stale_after_ms(
        config.heartbeat_interval_ms,
    ))));
    let cancel = shutdown.graceful.child_token();
    // The view is complete (node table read, channels followed) before we serve.
    let mut watcher = watch::start(gcs.clone(), view.clone(), cancel.clone()).await?;
    gcs.register_global_scheduler(&id, &address).await?;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let spills = metrics::SpillMetrics::default();
    let gcs_round_trip = rayd_metrics::round_trip_histogram();
    let health = rayd_metrics::Health::starting();
    if config.metrics_enabled {
        let registry = metrics::registry(
            &spills,
            view.clone(),
            in_flight.clone(),
            gcs_round_trip.clone(),
        );
        let address = rayd_metrics::serve(
            &config.node_ip_address,
            config.global_scheduler_metrics_port,
            registry,
            health.clone(),
            cancel.clone(),
        )
        .await?;
        gcs.put_metrics_endpoint("rayd-global-scheduler", address)
            .await?;
    }
    let tls = rayd_common::auth::Tls::from_optional_files(
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
        config.tls_ca_file.as_deref(),
    )?;
    let secret = config.redis_password.as_deref();
    let service = service::Service::new(gcs.clone(), view.clone(), in_flight.clone(), spills)
        .with_auth(rayd_common::auth::ClientAuth::new(secret).with_tls(tls.as_ref()));
    let server_auth = rayd_common::auth::ServerAuth::new(secret).with_tls(tls.as_ref());
    let mut server = tokio::spawn(
        server_auth
            .server()?
            .tcp_nodelay(true)
            .add_service(GlobalSchedulerServer::with_interceptor(
                service,
                server_auth.clone(),
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                cancel.clone().cancelled_owned(),
            ),
    );
    log::info!(
        id = id.as_str(), address = address.as_str(), gcs = redis_address.as_str();
        "global scheduler serving"
    );
    notify_ready();
    health.set_serving();

    let mut refresh = tokio::time::interval(REGISTRATION_INTERVAL);
    let silence_ms = config.node_death_timeout_ms;
    let mut reap = tokio::time::interval(reap_interval(silence_ms));
    reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut prune = tokio::time::interval(PRUNE_INTERVAL);
    let outcome = loop {
        tokio::select! {
            // A stop ends the watcher and the server too: it is a stop, not their failure.
            biased;
            _ = cancel.cancelled() => break Ok(()),
            result = &mut server => break match result {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(SchedulerError::Serve(e)),
                Err(e) => Err(SchedulerError::ServerTask(e.to_string())),
            },
            _ = &mut watcher => break Err(SchedulerError::Subscription),
            _ = reap.tick() => {
                let silent = watch::lock(&view).silent(watch::now_ms(), silence_ms);
                reap_silent(&gcs, &view, &silent, silence_ms).await;
            }
            _ = prune.tick() => {
                match gcs.prune_dead_nodes(DEAD_NODE_RETENTION.as_millis() as u64).await {
                    Ok(0) => {}
                    Ok(pruned) => log::info!(pruned; "deleted the entries of long-dead nodes"),
                    Err(e) => log::warn!("cannot prune dead nodes: {e}"),
                }
            }
            _ = refresh.tick() => {
                let started = Instant::now();
                match gcs.register_global_scheduler(&id, &address).await {
                    Ok(()) => {
                        gcs_round_trip.observe(started.elapsed().as_secs_f64());
                        health.set_serving();
                    }
                    Err(e) => {
                        log::warn!("cannot refresh the registration: {e}");
                        health.set_not_serving(format!("cannot reach the GCS: {e}"));
                    }
                }
            }
        }
    };
    notify_stopping();
    health.set_not_serving("stopping");
    cancel.cancel();
    watcher.abort();
    // Raylets stop spilling here at once, instead of after the registration's TTL.
    if let Err(e) = gcs.remove_global_scheduler(&id).await {
        log::warn!("cannot remove the registration: {e}");
    }
    // Spills being placed finish (a raylet must not see an error for a task that was
    // forwarded); idle connections of raylets are not waited for.
    let deadline = Instant::now() + Duration::from_millis(config.shutdown_grace_ms);
    while in_flight.load(Ordering::SeqCst) > 0 && !server.is_finished() && Instant::now() < deadline
    {
        tokio::time::sleep(DRAIN_POLL).await;
    }
    server.abort();
    gcs.quit().await;
    outcome
}
