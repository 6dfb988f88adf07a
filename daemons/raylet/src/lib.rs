//! `rayd-raylet`: the local scheduler of a rayd node.
//!
//! It serves the node's drivers and workers on a Unix socket (framed protobuf, see
//! `rayd.raylet.v1`), follows the plasma store's events to learn which objects are local,
//! schedules tasks onto a pool of `rayd-worker` processes (see [`scheduler`]), registers
//! the node in the GCS and sends heartbeats. Redis is never waited on while scheduling.

mod beats;
mod connection;
mod gcs;
pub mod io;
mod lineage;
mod metrics;
mod peers;
pub mod scheduler;
mod workers;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::time::Duration;

use rayd_common::process::{find_rayd_binary, signal_pid};
use rayd_config::RaydConfig;
use rayd_daemon::shutdown::{notify_ready, notify_stopping, Shutdown};
use rayd_gcs::{GcsClient, GcsError, Heartbeat, NodeInfo, Standing};
use rayd_plasma_client::{ClientError, EventKind, PlasmaClient, Subscription};
use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use io::{Input, Node, WorkerCommand};
use scheduler::{Event, NodeSettings, Scheduler};

/// Why the raylet could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum RayletError {
    #[error("no `redis_address`: the raylet needs the cluster's GCS")]
    NoRedisAddress,
    #[error("cannot reach the plasma store: {0}")]
    Plasma(#[from] ClientError),
    #[error("gcs: {0}")]
    Gcs(#[from] GcsError),
    #[error("cannot find the rayd-worker executable (set worker_path)")]
    NoWorkerBinary,
    #[error("cannot serve on {path}: {source}")]
    Socket {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] rayd_common::auth::TlsError),
    #[error("{0}")]
    Metrics(#[from] rayd_metrics::MetricsError),
    #[error(
        "the cluster declared this node dead (its heartbeats stopped reaching the GCS for \
         longer than node_death_timeout_ms: a pause or a network partition); the raylet \
         and its plasma store exit so that, restarted, they join as a new node"
    )]
    DeclaredDead,
    #[error("the plasma store's event stream ended (the store died or restarted): exiting, for the supervisor to start the raylet again against the new store")]
    PlasmaGone,
    #[error("cannot start the raylet's {what} thread: {source}")]
    Thread {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

impl rayd_daemon::Failure for RayletError {
    /// A missing key or an unusable value: restarting with the same configuration cannot help.
    fn is_config(&self) -> bool {
        matches!(self, Self::NoRedisAddress | Self::NoWorkerBinary)
    }
}

fn bind(path: &PathBuf) -> Result<UnixListener, RayletError> {
    let io = |source| RayletError::Socket {
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.exists()) {
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io(e)),
        _ => {}
    }
    UnixListener::bind(path).map_err(io)
}

/// Forwards the plasma store's events to the scheduler, from a thread of its own (the
/// subscription is a blocking socket). When the stream ends (the store died or was
/// restarted: its objects, and the node ID that came from it, are gone) `gone` fires and
/// the raylet exits, so that its supervisor starts it again against the new store.
fn follow_plasma(
    socket: PathBuf,
    events: mpsc::UnboundedSender<Input>,
    gone: CancellationToken,
) -> Result<(), RayletError> {
    let mut subscription = Subscription::connect(&socket)?;
    std::thread::Builder::new()
        .name("plasma-events".into())
        .spawn(move || loop {
            let event = match subscription.next(None) {
                Ok(Some(event)) => event,
                Ok(None) => continue,
                Err(e) => {
                    log::error!(socket:% = socket.display(); "plasma event stream failed: {e}");
                    gone.cancel();
                    return;
                }
            };
            let event = match event.kind {
                EventKind::Sealed => Event::ObjectSealed(event.id),
                EventKind::Deleted => Event::ObjectDeleted(event.id),
            };
            if events.send(event.into()).is_err() {
                return;
            }
        })
        .map_err(|source| RayletError::Thread {
            what: "plasma-events",
            source,
        })?;
    Ok(())
}

/// Runs the raylet until `shutdown` fires.
pub async fn run(config: RaydConfig, shutdown: Shutdown) -> Result<(), RayletError> {
    let redis_address = config
        .redis_address
        .clone()
        .ok_or(RayletError::NoRedisAddress)?;
    let plasma_socket = config.plasma_socket();
    let worker_path = config
        .worker_path
        .clone()
        .or_else(|| find_rayd_binary("rayd-worker"))
        .ok_or(RayletError::NoWorkerBinary)?;
    let plasma_path = plasma_socket.clone();
    let plasma = tokio::task::spawn_blocking(move || PlasmaClient::connect(&plasma_path, "raylet"))
        .await
        .map_err(|e| RayletError::Plasma(ClientError::Invalid(e.to_string())))??;
    let node_id = plasma.node_id();
    let store_pid = plasma.store_pid();
    // The store's own word for its object manager's address (its port may have been
    // picked at start).
    let object_manager_address = match plasma.stats() {
        Ok(stats) if !stats.object_manager_address.is_empty() => stats.object_manager_address,
        _ => format!("{}:{}", config.node_ip_address, config.object_manager_port),
    };
    let gcs = GcsClient::connect(&redis_address, config.redis_password.as_deref()).await?;
    let socket = config.raylet_socket();
    let listener = bind(&socket)?;
    let node_manager_address = format!("{}:{}", config.node_ip_address, config.node_manager_port);
    let node_manager = tokio::net::TcpListener::bind(&node_manager_address)
        .await
        .map_err(|source| RayletError::Listen {
            address: node_manager_address.clone(),
            source,
        })?;
    let node_manager_address =
        node_manager
            .local_addr()
            .map(|a| a.to_string())
            .map_err(|source| RayletError::Listen {
                address: node_manager_address,
                source,
            })?;
    let total = config.node_resources();
    log::info!(
        node_id:% = node_id, socket:% = socket.display(), plasma:% = plasma_socket.display(),
        gcs = redis_address.as_str(), node_manager = node_manager_address.as_str(), resources:? = total;
        "raylet serving"
    );

    let (events_tx, mut events) = mpsc::unbounded_channel();
    let plasma_gone = CancellationToken::new();
    follow_plasma(
        plasma_socket.clone(),
        events_tx.clone(),
        plasma_gone.clone(),
    )?;
    let writes = gcs::spawn_writer(gcs.clone(), node_id);
    let min_workers = config.num_workers.map_or_else(
        || total.get("CPU").copied().unwrap_or(1.0).ceil() as usize,
        |n| n as usize,
    );
    let settings = NodeSettings {
        node_id,
        node_ip_address: config.node_ip_address.clone(),
        plasma_socket: plasma_socket.display().to_string(),
        redis_address: redis_address.clone(),
        redis_password: config.redis_password.clone().unwrap_or_default(),
        min_workers,
        task_ahead_max: Duration::from_millis(config.task_ahead_max_ms),
    };
    let scheduler = Scheduler::new(settings, total.clone(), std::time::Instant::now());
    let worker = WorkerCommand {
        binary: worker_path,
        raylet_socket: socket.clone(),
        log_level: config.log_level.clone(),
        node_id: node_id.hex(),
    };
    let tls = rayd_common::auth::Tls::from_optional_files(
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
        config.tls_ca_file.as_deref(),
    )?;
    let secret = config.redis_password.as_deref();
    let peers = peers::Peers::new(
        events_tx.clone(),
        rayd_common::auth::ClientAuth::new(secret).with_tls(tls.as_ref()),
    );
    let mut node = Node::new(
        scheduler,
        events_tx.clone(),
        writes,
        plasma,
        gcs.clone(),
        worker,
        peers.clone(),
    )
    .map_err(|source| RayletError::Thread {
        what: "plasma-puts",
        source,
    })?;
    let info = NodeInfo {
        node_id,
        node_ip_address: config.node_ip_address.clone(),
        raylet_socket: socket.display().to_string(),
        plasma_socket: plasma_socket.display().to_string(),
        object_manager_address,
        node_manager_address,
        resources_total: total.clone(),
        resources_available: total,
        alive: true,
        last_heartbeat_ms: 0,
        queued_tasks: 0,
        running_tasks: 0,
        store: None,
    };
    gcs.register_node(&info).await?;
    let cancel = shutdown.graceful.child_token();
    let health = rayd_metrics::Health::starting();
    if config.metrics_enabled {
        let registry = node.metrics.registry();
        let address = rayd_metrics::serve(
            &config.node_ip_address,
            config.raylet_metrics_port,
            registry,
            health.clone(),
            cancel.clone(),
        )
        .await?;
        gcs.put_metrics_port(node_id, rayd_gcs::RAYLET_METRICS_FIELD, address.port())
            .await?;
        gcs.put_metrics_endpoint("rayd-raylet", address).await?;
    }
    peers::serve(
        node_manager,
        events_tx.clone(),
        rayd_common::auth::ServerAuth::new(secret).with_tls(tls.as_ref()),
        cancel.clone(),
    );
    peers::watch(
        gcs.clone(),
        node_id,
        peers,
        events_tx.clone(),
        cancel.clone(),
    );
    tokio::spawn(connection::serve(listener, events_tx, cancel.clone()));
    node.prestart();
    notify_ready();
    health.set_serving();
    let gcs_health = health.clone();

    // Cancelled when a heartbeat finds the node declared dead.
    let declared_dead = tokio_util::sync::CancellationToken::new();
    let interval = Duration::from_millis(config.heartbeat_interval_ms);
    let mut heartbeat = tokio::time::interval(interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut beats = beats::BeatTimer::new(interval, std::time::Instant::now());
    let result = loop {
        let early = beats.early();
        let beat_now = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            _ = declared_dead.cancelled() => break Err(RayletError::DeclaredDead),
            _ = plasma_gone.cancelled() => break Err(RayletError::PlasmaGone),
            event = events.recv() => match event {
                Some(input) => {
                    if let io::Input::Event(Event::TaskForwarded { spec, .. }) = &input {
                        beats.forwarded(spec.resources.keys());
                    }
                    node.handle(input);
                    beats.observe(node.scheduler.available(), std::time::Instant::now());
                    false
                }
                None => break Err(RayletError::PlasmaGone),
            },
            _ = heartbeat.tick() => {
                node.handle(Event::Tick.into());
                true
            }
            _ = tokio::time::sleep_until(early.unwrap_or_else(std::time::Instant::now).into()), if early.is_some() => true,
        };
        if !beat_now {
            continue;
        }
        let snapshot = node.scheduler.snapshot();
        node.metrics.observe(&snapshot);
        beats.sent(&snapshot.available, std::time::Instant::now());
        let beat = Heartbeat {
            node_id: node_id.hex(),
            resources_available: snapshot.available,
            queue_length: snapshot.queued,
            running: snapshot.running,
            time_ms: now_ms(),
        };
        let mut entry = info.clone();
        entry.resources_available = beat.resources_available.clone();
        let metrics = (node.metrics.gcs_round_trip.clone(), gcs_health.clone());
        tokio::spawn(send_heartbeat(
            gcs.clone(),
            beat,
            entry,
            declared_dead.clone(),
            metrics,
        ));
    };
    notify_stopping();
    if matches!(result, Err(RayletError::DeclaredDead)) {
        // The node's ID is its store's: the store goes too, so that, restarted by their
        // supervisor, both join as a new node (its objects were counted lost anyway).
        if let Some(pid) = store_pid {
            log::warn!(pid; "stopping the node's plasma store: the node was declared dead");
            signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
        }
    }
    health.set_not_serving("stopping");
    node.stop();
    for pid in node.scheduler.worker_pids() {
        signal_pid(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if let Err(e) = gcs.mark_node_dead(node_id).await {
        log::warn!("cannot mark the node dead in the GCS: {e}");
    }
    let _ = std::fs::remove_file(&socket);
    result
}

/// Sends one heartbeat, and acts on what the GCS says of the node: declared dead, the
/// raylet stops (`declared_dead`); unknown (the GCS lost its data), it registers again.
async fn send_heartbeat(
    gcs: GcsClient,
    beat: Heartbeat,
    entry: NodeInfo,
    declared_dead: tokio_util::sync::CancellationToken,
    (round_trip, health): (
        rayd_metrics::prometheus_client::metrics::histogram::Histogram,
        rayd_metrics::Health,
    ),
) {
    let started = std::time::Instant::now();
    let standing = gcs.heartbeat(&beat).await;
    match &standing {
        Ok(_) => {
            round_trip.observe(started.elapsed().as_secs_f64());
            health.set_serving();
        }
        Err(e) => health.set_not_serving(format!("cannot reach the GCS: {e}")),
    }
    match standing {
        Ok(Standing::Alive) => {}
        Ok(Standing::Dead) => declared_dead.cancel(),
        Ok(Standing::Unknown) => {
            log::warn!("the GCS has no entry for this node (restarted without its data?); registering again");
            if let Err(e) = gcs.register_node(&entry).await {
                log::warn!("cannot register the node again: {e}");
            }
        }
        Err(e) => log::warn!("heartbeat failed: {e}"),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
