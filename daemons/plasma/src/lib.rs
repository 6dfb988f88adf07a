//! `rayd-plasma`: the node's immutable object store in shared memory, and the object
//! manager that moves objects between nodes. Its clients (the raylet, the workers, the
//! Python SDK) link `rayd-plasma-client`, which also holds what both sides share:
//! [`protocol`] (framing and descriptor passing on the Unix socket), [`allocator`]
//! (placement in the arena) and the segments' mappings (re-exported by [`memory`]).
//!
//! Modules, lowest first: [`memory`] (segments: the memory model), [`segment`] (an
//! object's own segment), [`pool`] (segments prepared ahead of demand), [`lease`] (ranges
//! of the arena lent to clients), [`spill`] (objects on disk), [`store`] (the object table,
//! pins, spilling and eviction), [`state`] (what the daemon's tasks share), [`prefault`]
//! (memory prepared ahead of demand), [`connection`] and [`server`] (serving local
//! clients), [`object_manager`] (gRPC pulls between nodes) and [`gcs_report`] (object
//! locations in the GCS).

pub mod connection;
pub mod gcs_report;
pub mod lease;
pub mod memory;
mod metrics;
pub mod object_manager;
pub mod pool;
pub mod prefault;
mod relocate;
pub mod revocations;
pub mod segment;
pub mod server;
pub mod spill;
pub mod state;
pub mod store;

// What the store shares with its clients is defined in the client crate, below this one.
pub use rayd_plasma_client::{allocator, protocol};

use std::path::PathBuf;
use std::time::Duration;

use rayd_common::id::NodeId;
use rayd_config::RaydConfig;
use rayd_daemon::shutdown::{notify_ready, notify_status, notify_stopping, Shutdown};
use rayd_gcs::{GcsClient, StoreFigures};
use tokio_util::sync::CancellationToken;

use crate::memory::{Backing, MemoryError};
use crate::state::State;
use crate::store::Store;

/// Share of the machine's RAM the store takes when `object_store_memory` is 0.
const DEFAULT_MEMORY_SHARE: f64 = 0.3;
/// How often the store's figures go to the log.
const STATS_INTERVAL: Duration = Duration::from_secs(30);
/// How often the store's figures go to the GCS node table (also the store's heartbeat
/// there, which `rayd status` shows).
const FIGURES_INTERVAL: Duration = Duration::from_secs(2);

/// Why the store could not start or keep serving.
#[derive(Debug, thiserror::Error)]
pub enum PlasmaError {
    #[error("invalid value for `node_id`: {0}")]
    NodeId(String),
    #[error("invalid value for `object_store_memory`: {0}")]
    Capacity(String),
    #[error("cannot set up the object store memory: {0}")]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Socket(#[from] server::SocketError),
    #[error("cannot listen for the object manager on {address}: {source}")]
    ObjectManagerBind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] rayd_common::auth::TlsError),
    #[error("the object manager failed: {0}")]
    ObjectManager(#[source] tonic::transport::Error),
    #[error("cannot share the arena's descriptor: {0}")]
    Arena(#[source] std::io::Error),
    #[error("{0}")]
    Metrics(#[from] rayd_metrics::MetricsError),
    #[error("the client socket failed: {0}")]
    Serve(#[source] std::io::Error),
}

impl rayd_daemon::Failure for PlasmaError {
    /// A missing key or an unusable value: restarting with the same configuration cannot help.
    fn is_config(&self) -> bool {
        matches!(self, Self::NodeId(_) | Self::Capacity(_))
    }
}

/// Total RAM of the machine, from `/proc/meminfo`.
fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The memory limit of this process's cgroup (v2 `memory.max`, or v1
/// `memory.limit_in_bytes`), when there is one.
fn cgroup_limit() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut fields = line.splitn(3, ':');
        let (_, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
        let file = if controllers.is_empty() {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else {
            continue;
        };
        if let Some(limit) = std::fs::read_to_string(file)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
        {
            return Some(limit);
        }
    }
    None
}

/// The store's capacity: `object_store_memory`, or a share of the RAM when it is 0,
/// checked against the RAM the machine (and this process's cgroup) can give.
pub fn capacity(config: &RaydConfig) -> Result<u64, PlasmaError> {
    let total = match (total_memory(), cgroup_limit()) {
        (Some(ram), Some(limit)) => Some(ram.min(limit)),
        (ram, limit) => ram.or(limit),
    };
    match (config.object_store_memory, total) {
        (0, Some(total)) => Ok((total as f64 * DEFAULT_MEMORY_SHARE) as u64),
        (0, None) => Err(PlasmaError::Capacity(
            "0 means a share of the RAM, but /proc/meminfo is unreadable: set it in bytes".into(),
        )),
        (wanted, Some(total)) if wanted > total => Err(PlasmaError::Capacity(format!(
            "{wanted} bytes is more than the {total} bytes of RAM this machine (or cgroup) has"
        ))),
        (wanted, _) => Ok(wanted),
    }
}

/// The node's ID: `node_id`, or a fresh random one.
pub fn node_id(config: &RaydConfig) -> Result<NodeId, PlasmaError> {
    match &config.node_id {
        Some(text) => text
            .parse()
            .map_err(|e| PlasmaError::NodeId(format!("{e}"))),
        None => Ok(NodeId::random()),
    }
}

/// Keeps freed heap memory in the process instead of handing it back to the system at
/// once. A transfer allocates and frees a buffer per chunk (HTTP/2 frames, gRPC
/// messages); with glibc's defaults the heap top was trimmed and faulted back in (pages
/// zeroed anew) for every chunk, which cost a third of the transfer rate (100 MB over
/// loopback: 0.6-0.95 GB/s before, 1.0-1.4 GB/s after). Called once, before any thread
/// starts.
pub fn tune_allocator() {
    #[cfg(target_env = "gnu")]
    {
        // Retained at most: what one busy moment of transfers needed.
        const TRIM_THRESHOLD: libc::c_int = 256 << 20;
        const TOP_PAD: libc::c_int = 64 << 20;
        // SAFETY: mallopt only changes allocator parameters; it is called before any
        // other thread exists.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
            libc::mallopt(libc::M_TOP_PAD, TOP_PAD);
        }
    }
}

/// Runs the store until `shutdown`: the client socket, the object manager, the GCS
/// reporter and the periodic figures in the log.
pub async fn run(config: RaydConfig, shutdown: Shutdown) -> Result<(), PlasmaError> {
    rayd_plasma_client::raise_descriptor_limit();
    let node = node_id(&config)?;
    let capacity = capacity(&config)?;
    let backing = match &config.plasma_directory {
        None => Backing::Memfd,
        Some(path) => Backing::Directory {
            path: path.clone(),
            huge_pages: config.huge_pages,
        },
    };
    backing.check()?;
    let spill_dir = config.object_spilling_directory();
    let store = Store::new(capacity, backing, spill_dir.clone())?;
    let layout = store.layout();

    let om_address = format!("{}:{}", config.node_ip_address, config.object_manager_port);
    let om_listener = tokio::net::TcpListener::bind(&om_address)
        .await
        .map_err(|source| PlasmaError::ObjectManagerBind {
            address: om_address.clone(),
            source,
        })?;
    let om_address = om_listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or(om_address);
    let socket: PathBuf = config.plasma_socket();
    let listener = server::bind(&socket)?;

    let cancel = shutdown.graceful.child_token();
    let reporter_cancel = CancellationToken::new();
    let (figures_tx, figures_rx) = tokio::sync::watch::channel(StoreFigures::default());
    let gcs_round_trip = rayd_metrics::round_trip_histogram();
    let (locations, reporter) = match &config.redis_address {
        Some(address) => {
            let (tx, task) = gcs_report::spawn(
                address.clone(),
                config.redis_password.clone(),
                node,
                figures_rx,
                gcs_round_trip.clone(),
                reporter_cancel.clone(),
            );
            (Some(tx), Some(task))
        }
        None => {
            log::info!("no redis_address: object locations are not reported");
            (None, None)
        }
    };
    let tls = rayd_common::auth::Tls::from_optional_files(
        config.tls_cert_file.as_deref(),
        config.tls_key_file.as_deref(),
        config.tls_ca_file.as_deref(),
    )?;
    let state = State::new(
        store,
        node,
        om_address.clone(),
        config.object_chunk_size,
        config.redis_password.as_deref(),
        tls.as_ref(),
        locations,
    )
    .map_err(PlasmaError::Arena)?;
    let relocate_task = config.redis_address.clone().map(|address| {
        relocate::spawn(
            address,
            config.redis_password.clone(),
            state.clone(),
            reporter_cancel.clone(),
        )
    });
    let prefault_thread = prefault::spawn(state.clone()).map_err(PlasmaError::Arena)?;
    // The thread starts with whatever the store wants prepared at first.
    state.prefault.wake();

    let om_server = rayd_common::auth::ServerAuth::new(config.redis_password.as_deref())
        .with_tls(tls.as_ref())
        .server()
        .map_err(PlasmaError::ObjectManager)?
        .tcp_nodelay(true)
        .initial_stream_window_size(object_manager::WINDOW)
        .initial_connection_window_size(object_manager::WINDOW * 2)
        .max_frame_size(object_manager::MAX_FRAME)
        .http2_keepalive_interval(Some(object_manager::KEEPALIVE_INTERVAL))
        .max_concurrent_streams(object_manager::MAX_STREAMS_PER_CONNECTION)
        .add_service(object_manager::Service::new(state.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(om_listener),
            cancel.clone().cancelled_owned(),
        );
    let mut om_task = tokio::spawn(om_server);
    let mut serve_task = tokio::spawn(server::serve(listener, state.clone(), cancel.clone()));
    let stats_task = tokio::spawn(figures(state.clone(), figures_tx, cancel.clone()));

    log::info!(
        node_id:% = node,
        socket:% = socket.display(),
        object_manager_address = om_address.as_str(),
        capacity_bytes = layout.capacity,
        spill_directory:% = spill_dir.display();
        "plasma store ready"
    );
    let health = rayd_metrics::Health::starting();
    if config.metrics_enabled {
        let registry = metrics::registry(state.clone(), gcs_round_trip);
        let address = rayd_metrics::serve(
            &config.node_ip_address,
            config.plasma_metrics_port,
            registry,
            health.clone(),
            cancel.clone(),
        )
        .await?;
        if let Some(redis) = config.redis_address.clone() {
            tokio::spawn(record_metrics_port(
                redis,
                config.redis_password.clone(),
                node,
                address,
            ));
        }
    }
    notify_status(&format!("serving on {}", socket.display()));
    notify_ready();
    health.set_serving();

    let result = tokio::select! {
        _ = cancel.cancelled() => Ok(()),
        r = &mut om_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PlasmaError::ObjectManager(e)),
            Err(e) => Err(PlasmaError::Serve(std::io::Error::other(e))),
        },
        r = &mut serve_task => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(PlasmaError::Serve(e)),
            Err(e) => Err(PlasmaError::Serve(std::io::Error::other(e))),
        },
    };
    notify_stopping();
    health.set_not_serving("stopping");
    cancel.cancel();
    let _ = std::fs::remove_file(&socket);
    // A task that already ended was awaited by the select above (awaiting it again
    // would panic); the others get a bounded time to drain.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        if !serve_task.is_finished() {
            let _ = serve_task.await;
        }
        if !om_task.is_finished() {
            let _ = om_task.await;
        }
    })
    .await;
    stats_task.abort();
    state.prefault.stop();
    let _ = prefault_thread.join();
    // Every object goes with the store: take this node off their locations.
    state.with_store(|s| s.clear());
    drop(state);
    if let Some(relocate) = relocate_task {
        relocate.abort();
    }
    if let Some(reporter) = reporter {
        reporter_cancel.cancel();
        let _ = reporter.await;
    }
    result
}

/// The node-table field of the store's metrics port.
const PLASMA_METRICS_FIELD: &str = "plasma_metrics_port";

/// Records the port of the store's `/metrics` in its node's entry (operators find it
/// there); a GCS out of reach is logged, the store serves regardless.
async fn record_metrics_port(
    redis: String,
    password: Option<String>,
    node: NodeId,
    address: std::net::SocketAddr,
) {
    let recorded = async {
        let gcs = GcsClient::connect(&redis, password.as_deref()).await?;
        gcs.put_metrics_port(node, PLASMA_METRICS_FIELD, address.port())
            .await?;
        gcs.put_metrics_endpoint("rayd-plasma", address).await?;
        gcs.quit().await;
        Ok::<_, rayd_gcs::GcsError>(())
    };
    if let Err(e) = recorded.await {
        log::warn!(error:% = e; "cannot record the metrics port in the gcs");
    }
}

/// Sends the store's figures to the GCS reporter every [`FIGURES_INTERVAL`] and logs them
/// every [`STATS_INTERVAL`].
async fn figures(
    state: std::sync::Arc<State>,
    report: tokio::sync::watch::Sender<StoreFigures>,
    cancel: CancellationToken,
) {
    let mut interval = tokio::time::interval(FIGURES_INTERVAL);
    let mut last_log = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = cancel.cancelled() => return,
        }
        let s = state.stats();
        report.send_replace(StoreFigures {
            used_bytes: s.used_bytes,
            capacity_bytes: s.capacity_bytes,
            objects: s.objects,
            evictions: s.evictions,
            spilled_objects: s.spill.objects,
            spilled_bytes: s.spill.bytes,
            spill_written_bytes: s.spill.written_bytes,
            spill_restored_bytes: s.spill.restored_bytes,
            reported_ms: rayd_gcs::now_ms(),
        });
        if last_log.elapsed() < STATS_INTERVAL {
            continue;
        }
        last_log = tokio::time::Instant::now();
        log::info!(
            used_bytes = s.used_bytes,
            capacity_bytes = s.capacity_bytes,
            objects = s.objects,
            evictions = s.evictions,
            spilled_objects = s.spill.objects,
            spilled_bytes = s.spill.bytes,
            reserved_bytes = s.reserved_bytes,
            clients = s.clients,
            pulls = state.pulls();
            "store figures"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_defaults_to_a_share_of_ram_and_refuses_too_much() {
        let mut config = RaydConfig::default();
        let default = capacity(&config).unwrap();
        assert!(default > 0 && default < total_memory().unwrap());
        config.object_store_memory = 1 << 50;
        let err = capacity(&config).unwrap_err().to_string();
        assert!(err.contains("`object_store_memory`"), "{err}");
        config.object_store_memory = 64 << 20;
        assert_eq!(capacity(&config).unwrap(), 64 << 20);
    }

    #[test]
    fn node_id_is_parsed_or_random() {
        let mut config = RaydConfig::default();
        assert_ne!(node_id(&config).unwrap(), node_id(&config).unwrap());
        let id = NodeId::random();
        config.node_id = Some(id.hex());
        assert_eq!(node_id(&config).unwrap(), id);
    }
}
