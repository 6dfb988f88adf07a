//! `rayd-redis-shard`: the supervisor of the GCS's Redis servers on the head node.
//!
//! It starts one primary `redis-server` and `num_redis_shards` shards, writes the shard
//! list (`rayd:shards`) and cluster metadata (`rayd:cluster`) into the primary, and then
//! watches them: a server that exits is restarted at once, one that stops answering PING
//! for a few health checks is killed and restarted. After the primary restarts, the shard
//! list is written again (without persistence the primary comes back empty). SIGTERM stops
//! every server. Readiness (`READY=1`) is sent only once every server answers.

mod metrics;
mod server;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use fred::prelude::*;
use rayd_common::process::find_executable;
use rayd_config::RaydConfig;
use rayd_daemon::shutdown::{notify_ready, notify_status, notify_stopping, Shutdown};
use rayd_gcs::keys;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use metrics::ShardMetrics;
pub use server::{RedisServer, Role};

/// How long a starting redis-server may take to answer PING (loading a large append-only
/// file takes a while).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed health checks in a row after which a running server is killed and restarted.
const MAX_MISSED_PINGS: u32 = 4;
/// Failed restarts in a row after which the supervisor gives up (and systemd takes over).
const MAX_FAILED_RESTARTS: u32 = 5;

/// Why the supervisor could not start or keep its servers.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(
        "redis-server executable `{0}` not found: install redis-server or set redis_server_path"
    )]
    RedisNotFound(PathBuf),
    #[error("port {port} on {ip} for the redis {role} is already in use")]
    PortInUse { ip: String, port: u16, role: Role },
    #[error("no free port after {after} on {ip} for the redis shards")]
    NoFreePort { ip: String, after: u16 },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("redis {role} on port {port} did not start: {reason}")]
    Start {
        role: Role,
        port: u16,
        reason: String,
    },
    #[error("{0}")]
    Metrics(#[from] rayd_metrics::MetricsError),
    #[error("cannot write the shard list into the primary: {0}")]
    Metadata(#[from] rayd_gcs::GcsError),
    #[error(
        "redis {role} on port {port} failed {MAX_FAILED_RESTARTS} restarts in a row: {reason}"
    )]
    GaveUp {
        role: Role,
        port: u16,
        reason: String,
    },
}

impl rayd_daemon::Failure for ShardError {
    /// A missing key or an unusable value: restarting with the same configuration cannot help.
    fn is_config(&self) -> bool {
        matches!(self, Self::RedisNotFound(_))
    }
}

fn check_port_free(ip: &str, server: &RedisServer) -> Result<(), ShardError> {
    if port_is_free(ip, server.port)? {
        Ok(())
    } else {
        Err(ShardError::PortInUse {
            ip: ip.to_string(),
            port: server.port,
            role: server.role,
        })
    }
}

/// Whether `ip:port` can be bound now.
fn port_is_free(ip: &str, port: u16) -> Result<bool, ShardError> {
    match TcpListener::bind((ip, port)) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Ok(false),
        Err(source) => Err(ShardError::Io {
            what: format!("cannot bind {ip}:{port} for a redis server"),
            source,
        }),
    }
}

/// The shards' ports: the configured ones, or else the first free ports after `redis_port`
/// (as `ray start` does without `--redis-shard-ports`, a busy port next to the primary's
/// must not stop the head; the shard list tells clients where the shards are).
fn shard_ports(config: &RaydConfig) -> Result<Vec<u16>, ShardError> {
    if !config.redis_shard_ports.is_empty() {
        return Ok(config.redis_shard_ports.clone());
    }
    let ip = &config.node_ip_address;
    let mut ports = Vec::with_capacity(usize::from(config.num_redis_shards));
    let mut candidate = config.redis_port;
    while ports.len() < usize::from(config.num_redis_shards) {
        candidate = candidate
            .checked_add(1)
            .ok_or_else(|| ShardError::NoFreePort {
                ip: ip.clone(),
                after: config.redis_port,
            })?;
        if port_is_free(ip, candidate)? {
            ports.push(candidate);
        }
    }
    Ok(ports)
}

/// Writes the shard list and the cluster metadata into the primary, in one transaction.
/// Announces on the primary that shard `index` restarted (empty, without persistence).
async fn announce_restart(config: &RaydConfig, primary: &str, index: usize) {
    let result = async {
        let client = rayd_gcs::connect_server(primary, config.redis_password.as_deref()).await?;
        let sent: Result<(), fred::error::Error> = async {
            let _: u64 = client
                .hincrby(keys::CLUSTER, keys::SHARD_RESTARTS_FIELD, 1)
                .await?;
            client
                .publish(keys::SHARD_EVENTS_CHANNEL, keys::shard_restart(index))
                .await
        }
        .await;
        let _ = client.quit().await;
        sent.map_err(rayd_gcs::GcsError::from)
    }
    .await;
    if let Err(e) = result {
        log::warn!(shard = index; "cannot announce the shard's restart: {e}");
    }
}

async fn write_metadata(
    config: &RaydConfig,
    primary: &str,
    shards: &[String],
) -> Result<(), ShardError> {
    let client = rayd_gcs::connect_server(primary, config.redis_password.as_deref()).await?;
    let mut shown = config.clone();
    shown.redis_password = shown.redis_password.map(|_| "(set)".into());
    let result: Result<(), fred::error::Error> = async {
        let trx = client.multi();
        let _: () = trx.del(keys::SHARDS).await?;
        let _: () = trx.rpush(keys::SHARDS, shards.to_vec()).await?;
        let _: () = trx
            .hset(
                keys::CLUSTER,
                [
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("num_redis_shards", shards.len().to_string()),
                    ("primary", primary.to_string()),
                    ("redis_persistence", config.redis_persistence.to_string()),
                    ("config", shown.to_toml()),
                ],
            )
            .await?;
        let _: Value = trx.exec(true).await?;
        Ok(())
    }
    .await;
    let _ = client.quit().await;
    result.map_err(|e| ShardError::Metadata(e.into()))
}

/// Records where the supervisor serves `/metrics` in the GCS it runs (operators and
/// tests find it there); a failure is logged, the supervisor serves regardless.
async fn record_metrics_endpoint(
    config: &RaydConfig,
    primary: &str,
    address: std::net::SocketAddr,
) {
    let recorded = async {
        let gcs = rayd_gcs::GcsClient::connect(primary, config.redis_password.as_deref()).await?;
        gcs.put_metrics_endpoint("rayd-redis-shard", address)
            .await?;
        gcs.quit().await;
        Ok::<_, rayd_gcs::GcsError>(())
    };
    if let Err(e) = recorded.await {
        log::warn!(error:% = e; "cannot record the metrics endpoint in the gcs");
    }
}

/// A restart, reported by a server's supervising task.
#[derive(Debug)]
struct Restarted(Role);

/// Keeps one server running until `stop` fires, then stops it.
async fn supervise(
    mut server: RedisServer,
    binary: PathBuf,
    health_interval: Duration,
    grace: Duration,
    stop: CancellationToken,
    restarts: mpsc::UnboundedSender<Restarted>,
    metrics: ShardMetrics,
) -> Result<(), ShardError> {
    metrics.up(server.role);
    let mut health = tokio::time::interval(health_interval);
    health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missed = 0;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                server.stop(grace).await;
                log::info!(role:% = server.role; "redis server stopped");
                return Ok(());
            }
            how = server.exited() => {
                log::warn!(role:% = server.role, port = server.port; "redis server exited ({how}); restarting");
                metrics.down(server.role, format!("exited ({how}); restarting"));
                let mut failures = 0;
                while let Err(e) = server.start(&binary, START_TIMEOUT).await {
                    failures += 1;
                    log::error!(role:% = server.role; "restart failed: {e}");
                    if failures >= MAX_FAILED_RESTARTS {
                        return Err(ShardError::GaveUp { role: server.role, port: server.port, reason: e.to_string() });
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(200 << failures)) => {}
                    }
                }
                missed = 0;
                metrics.restarted(server.role);
                metrics.up(server.role);
                let _ = restarts.send(Restarted(server.role));
            }
            _ = health.tick() => {
                let started = std::time::Instant::now();
                if server.ping().await {
                    metrics.ping(server.role, started.elapsed().as_secs_f64());
                    if missed > 0 {
                        metrics.up(server.role);
                    }
                    missed = 0;
                } else {
                    missed += 1;
                    metrics.down(server.role, format!("missed {missed} health checks"));
                    if missed >= MAX_MISSED_PINGS {
                        log::warn!(role:% = server.role, missed; "redis server stopped answering; killing it");
                        server.kill();
                        missed = 0;
                    }
                }
            }
        }
    }
}

/// Runs the supervisor until `shutdown` fires or a server cannot be kept running.
pub async fn run(config: RaydConfig, shutdown: Shutdown) -> Result<(), ShardError> {
    let binary = find_executable(&config.redis_server_path)
        .ok_or_else(|| ShardError::RedisNotFound(config.redis_server_path.clone()))?;
    let mut servers = vec![RedisServer::new(Role::Primary, config.redis_port, &config)];
    for (i, port) in shard_ports(&config)?.into_iter().enumerate() {
        servers.push(RedisServer::new(Role::Shard(i), port, &config));
    }
    if config.redis_password.is_none() {
        log::warn!("no redis_password: the GCS is open to every client that reaches it (protected mode limits that to this machine)");
    }
    for server in &servers {
        check_port_free(&config.node_ip_address, server)?;
        server.write_config(&config)?;
    }
    log::info!(
        binary:% = binary.display(), data_dir:% = config.redis_data_dir().display(),
        shards = servers.len() - 1, persistence = config.redis_persistence;
        "starting redis servers"
    );
    // An error here drops the servers started so far, which kills them (kill_on_drop).
    for server in &mut servers {
        server.start(&binary, START_TIMEOUT).await?;
    }
    let primary = servers[0].address.clone();
    let shards: Vec<String> = servers[1..].iter().map(|s| s.address.clone()).collect();
    write_metadata(&config, &primary, &shards).await?;
    log::info!(primary = primary.as_str(), shards:? = shards; "gcs ready");
    let stop = shutdown.graceful.child_token();
    let health = rayd_metrics::Health::starting();
    let metrics = ShardMetrics::new(health.clone());
    if config.metrics_enabled {
        let address = rayd_metrics::serve(
            &config.node_ip_address,
            config.redis_shard_metrics_port,
            metrics.registry(),
            health,
            stop.clone(),
        )
        .await?;
        record_metrics_endpoint(&config, &primary, address).await;
    }
    notify_ready();
    notify_status(&format!("primary {primary}, {} shards", shards.len()));

    let (restarts_tx, mut restarts) = mpsc::unbounded_channel();
    let health = Duration::from_millis(config.health_check_interval_ms);
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let mut tasks = JoinSet::new();
    for server in servers {
        tasks.spawn(supervise(
            server,
            binary.clone(),
            health,
            grace,
            stop.clone(),
            restarts_tx.clone(),
            metrics.clone(),
        ));
    }
    let mut failure = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(Restarted(role)) = restarts.recv() => {
                match role {
                    // Without persistence the primary came back empty; with it, this is a no-op.
                    Role::Primary => if let Err(e) = write_metadata(&config, &primary, &shards).await {
                        log::error!("{e}");
                    },
                    // Stores report the locations it held again.
                    Role::Shard(index) => announce_restart(&config, &primary, index).await,
                }
                log::info!(role:% = role; "redis server restarted");
            }
            Some(done) = tasks.join_next() => {
                failure = Some(match done {
                    Ok(Err(e)) => e,
                    Ok(Ok(())) => continue,
                    Err(e) => ShardError::Io { what: "a supervising task panicked".into(), source: std::io::Error::other(e.to_string()) },
                });
                break;
            }
        }
    }
    notify_stopping();
    stop.cancel();
    while tasks.join_next().await.is_some() {}
    failure.map_or(Ok(()), Err)
}
