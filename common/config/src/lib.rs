//! The one configuration model of every rayd binary.
//!
//! Sources, weakest first: built-in defaults (the `Default` impl below, mirrored in
//! `configs/rayd.toml`) < a TOML file (`--config`, else `/etc/rayd/rayd.toml` when it
//! exists) < `RAYD_<KEY>` environment variables < command-line flags. Keys are flat and
//! named as in `ray.init` / `ray start` (`redis_port`, `num_redis_shards`, ...). An unknown
//! key or a bad value is an error that names the key; binaries exit with [`EXIT_CONFIG`].

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Exit code of a binary whose configuration or usage is invalid (`EX_USAGE`).
pub const EXIT_CONFIG: i32 = 64;

/// The file read when `--config` is not given, if it exists.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/rayd/rayd.toml";

/// Prefix of the environment variables that set configuration keys.
pub const ENV_PREFIX: &str = "RAYD_";

/// Environment variables with the prefix that are not configuration keys.
const ENV_NOT_KEYS: &[&str] = &[
    "RAYD_CONFIG",
    // Set by the raylet and `ray.init()` for worker processes.
    "RAYD_RAYLET_SOCKET",
    "RAYD_WORKER_PYTHONPATH",
    "RAYD_WORKER_LOG_LEVEL",
    // Where the rayd binaries are, for processes that are not among them (the Python SDK).
    "RAYD_BIN_DIR",
];

/// Whether the environment variable `name` sets a configuration key (`RAYD_<KEY>`).
///
/// A daemon started with a resolved configuration file must not inherit these: the
/// environment beats the file, so a stale `RAYD_TEMP_DIR` would undo what the file says.
pub fn is_config_env_var(name: &str) -> bool {
    name.starts_with(ENV_PREFIX) && !ENV_NOT_KEYS.contains(&name)
}

/// The IP address of `host`: itself when it is one, else the first address it resolves
/// to (IPv4 first), or why it cannot be resolved.
pub fn resolve_host(host: &str) -> Result<String, String> {
    use std::net::ToSocketAddrs;
    if host.parse::<IpAddr>().is_ok() {
        return Ok(host.to_string());
    }
    let addresses: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("`{host}` is not an IP address and does not resolve: {e}"))?
        .map(|a| a.ip())
        .collect();
    addresses
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addresses.first())
        .map(|a| a.to_string())
        .ok_or_else(|| format!("`{host}` resolves to no address"))
}

/// A list of ports, also given as one port: the environment's `RAYD_REDIS_SHARD_PORTS=6380`
/// reads as a number, not a list of one.
fn ports_one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    struct Ports;
    impl<'de> serde::de::Visitor<'de> for Ports {
        type Value = Vec<u16>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a port or a list of ports")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Vec<u16>, E> {
            u16::try_from(v)
                .map(|p| vec![p])
                .map_err(|_| E::custom(format!("{v} is not a port")))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Vec<u16>, E> {
            u16::try_from(v)
                .map(|p| vec![p])
                .map_err(|_| E::custom(format!("{v} is not a port")))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u16>, A::Error> {
            let mut ports = Vec::new();
            while let Some(port) = seq.next_element::<u16>()? {
                ports.push(port);
            }
            Ok(ports)
        }
    }
    d.deserialize_any(Ports)
}

/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Most Redis shards a head may run; beyond this the head's ports and memory run out first.
const MAX_REDIS_SHARDS: u16 = 256;

/// Default `object_chunk_size`: large enough to amortize per-message costs, small enough
/// to stay in the CPU caches through checksum, encoding and copy (measured fastest on
/// loopback between 512 KiB and 1 MiB).
const DEFAULT_OBJECT_CHUNK_SIZE: u64 = 1 << 20;
/// Bounds of `object_chunk_size`.
const OBJECT_CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u64> = (4 << 10)..=(64 << 20);
/// Smallest explicit `object_store_memory`: room for the arena and a few objects.
const MIN_OBJECT_STORE_MEMORY: u64 = 1 << 20;

/// Every setting of a rayd node. Each daemon reads the keys it needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaydConfig {
    /// Address of this node that other nodes reach it at; Redis binds to it on the head.
    pub node_ip_address: String,
    /// Directory for sockets, logs and session state of processes started by hand.
    pub temp_dir: PathBuf,
    /// Log level: error, warn, info, debug or trace.
    pub log_level: String,
    /// `host:port` of the head's primary Redis, for processes that join a cluster.
    pub redis_address: Option<String>,
    /// Port of the primary Redis on the head.
    pub redis_port: u16,
    /// Number of Redis shards besides the primary.
    pub num_redis_shards: u16,
    /// Ports of the shards; empty means the first free ports after `redis_port`.
    #[serde(deserialize_with = "ports_one_or_many")]
    pub redis_shard_ports: Vec<u16>,
    /// The cluster's secret: every Redis server requires it (`requirepass`), the gRPC
    /// services require a token derived from it, function definitions carry a MAC made
    /// with it. `rayd start --head` and `ray.init()` generate one when unset; daemons
    /// started otherwise without one run an open cluster.
    pub redis_password: Option<String>,
    /// A file (mode 0600) holding `redis_password`, read when that key is unset.
    pub redis_password_file: Option<PathBuf>,
    /// This daemon's certificate (PEM) for mutual TLS between the gRPC services; with
    /// `tls_key_file` and `tls_ca_file`, every gRPC server and client uses TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// The key (PEM) of `tls_cert_file`.
    pub tls_key_file: Option<PathBuf>,
    /// The cluster's CA certificate (PEM): peers must present a certificate it signed.
    pub tls_ca_file: Option<PathBuf>,
    /// `maxclients` of every Redis server; Redis' own default when unset.
    pub redis_max_clients: Option<u32>,
    /// Append-only persistence for every Redis server, so metadata survives a restart.
    pub redis_persistence: bool,
    /// When persistent Redis servers fsync their append-only file: always, everysec or no.
    pub redis_appendfsync: String,
    /// Directory of the Redis servers' data and config files; `<temp_dir>/redis` when unset.
    pub redis_data_dir: Option<PathBuf>,
    /// The `redis-server` executable (a path, or a name looked up in `PATH`).
    pub redis_server_path: PathBuf,
    /// Milliseconds between health checks of supervised processes.
    pub health_check_interval_ms: u64,
    /// Milliseconds a process gets to stop after SIGTERM before it is killed.
    pub shutdown_grace_ms: u64,
    /// Hex ID of this node (40 digits); a random one per start of a daemon when unset.
    pub node_id: Option<String>,
    /// Bytes of shared memory the node's plasma store may use; 0 means 30% of the RAM.
    pub object_store_memory: u64,
    /// Unix socket of the plasma store; `<temp_dir>/sockets/plasma_store` when unset.
    pub plasma_socket: Option<PathBuf>,
    /// Directory whose files back plasma memory (e.g. a hugetlbfs mount) instead of memfd.
    /// Files take no memfd seals: sealed objects are then read-only to readers, but not
    /// protected by the kernel against a process of the same user reopening them.
    pub plasma_directory: Option<PathBuf>,
    /// Back plasma memory with huge pages: `plasma_directory` must be a hugetlbfs mount.
    pub huge_pages: bool,
    /// Directory where the plasma store spills objects when `object_store_memory` is full;
    /// `<temp_dir>/spill` when unset.
    pub object_spilling_directory: Option<PathBuf>,
    /// TCP port of the object manager (gRPC) through which other nodes pull objects; 0 picks one.
    pub object_manager_port: u16,
    /// Bytes per chunk when objects move between nodes.
    pub object_chunk_size: u64,
    /// CPUs the raylet schedules; the machine's CPU count when unset.
    pub num_cpus: Option<f64>,
    /// GPUs the raylet schedules; when unset, those detected (`CUDA_VISIBLE_DEVICES`, the
    /// NVIDIA driver, `nvidia-smi`).
    pub num_gpus: Option<f64>,
    /// Custom resources of this node: name -> amount (a TOML table; `--resources` takes JSON).
    pub resources: BTreeMap<String, f64>,
    /// Workers the raylet starts ahead of demand; `num_cpus` when unset.
    pub num_workers: Option<u32>,
    /// A busy worker gets its next task ahead of time only behind tasks of a function that
    /// typically runs shorter than this many milliseconds (and has run less); 0: never.
    pub task_ahead_max_ms: u64,
    /// Unix socket of the raylet; `<temp_dir>/sockets/raylet` when unset.
    pub raylet_socket: Option<PathBuf>,
    /// The `rayd-worker` executable; the one next to `rayd-raylet` when unset.
    pub worker_path: Option<PathBuf>,
    /// Milliseconds between the raylet's heartbeats to the GCS (other raylets place
    /// tasks from them).
    pub heartbeat_interval_ms: u64,
    /// Milliseconds without a heartbeat after which the global scheduler declares a node
    /// dead: its tasks are redone elsewhere, its objects rebuilt, its actors restarted.
    pub node_death_timeout_ms: u64,
    /// TCP port of the raylet's node manager (gRPC), through which other raylets forward
    /// tasks to this node; 0 picks one.
    pub node_manager_port: u16,
    /// TCP port of the global scheduler (gRPC, head node), bound on `node_ip_address`, to
    /// which raylets spill tasks; 0 picks one (raylets find it in the GCS).
    pub global_scheduler_port: u16,
    /// Whether each daemon serves `/health` and `/metrics` over HTTP on `node_ip_address`.
    pub metrics_enabled: bool,
    /// HTTP port of the raylet's `/health` and `/metrics` (Ray's `metrics_export_port`);
    /// 0 picks one (recorded in the node table).
    pub raylet_metrics_port: u16,
    /// HTTP port of the plasma store's `/health` and `/metrics`; 0 picks one.
    pub plasma_metrics_port: u16,
    /// HTTP port of the global scheduler's `/health` and `/metrics`; 0 picks one.
    pub global_scheduler_metrics_port: u16,
    /// HTTP port of the Redis supervisor's `/health` and `/metrics`; 0 picks one.
    pub redis_shard_metrics_port: u16,
    /// Whether a head runs the web dashboard (`rayd-dashboard`).
    pub include_webui: bool,
    /// Address the dashboard listens on: loopback unless opened up on purpose (it has
    /// no authentication).
    pub webui_host: String,
    /// Port of the dashboard; when it is taken, the dashboard takes a free one (its URL
    /// is in the GCS, `ray.get_webui_url()`); 0 picks one.
    pub webui_port: u16,
}

impl Default for RaydConfig {
    fn default() -> Self {
        Self {
            node_ip_address: "127.0.0.1".into(),
            temp_dir: PathBuf::from("/tmp/rayd"),
            log_level: "info".into(),
            redis_address: None,
            redis_port: 6379,
            num_redis_shards: 1,
            redis_shard_ports: Vec::new(),
            redis_password: None,
            redis_password_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            redis_max_clients: None,
            redis_persistence: false,
            redis_appendfsync: "everysec".into(),
            redis_data_dir: None,
            redis_server_path: PathBuf::from("redis-server"),
            health_check_interval_ms: 500,
            shutdown_grace_ms: 5000,
            node_id: None,
            object_store_memory: 0,
            plasma_socket: None,
            plasma_directory: None,
            huge_pages: false,
            object_spilling_directory: None,
            object_manager_port: 8076,
            object_chunk_size: DEFAULT_OBJECT_CHUNK_SIZE,
            num_cpus: None,
            num_gpus: None,
            resources: BTreeMap::new(),
            num_workers: None,
            task_ahead_max_ms: 2,
            raylet_socket: None,
            worker_path: None,
            heartbeat_interval_ms: 100,
            node_death_timeout_ms: 5000,
            node_manager_port: 0,
            global_scheduler_port: 0,
            metrics_enabled: true,
            raylet_metrics_port: 0,
            plasma_metrics_port: 0,
            global_scheduler_metrics_port: 0,
            redis_shard_metrics_port: 0,
            include_webui: false,
            webui_host: "127.0.0.1".into(),
            webui_port: 8265,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Parse(#[from] config::ConfigError),
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
    #[error("cannot read the flags: {0}")]
    Flags(String),
}

impl RaydConfig {
    /// The ports the shards (besides the primary) would get when every port is free: the
    /// explicit ones, or those right after `redis_port` (rayd-redis-shard skips busy ones).
    pub fn shard_ports(&self) -> Vec<u16> {
        if self.redis_shard_ports.is_empty() {
            (1..=self.num_redis_shards)
                .map(|i| self.redis_port.wrapping_add(i))
                .collect()
        } else {
            self.redis_shard_ports.clone()
        }
    }

    /// The Unix socket of the plasma store, explicit or derived from `temp_dir`.
    pub fn raylet_socket(&self) -> PathBuf {
        self.raylet_socket
            .clone()
            .unwrap_or_else(|| self.temp_dir.join("sockets").join("raylet"))
    }

    /// The resources this node offers: CPU and GPU (configured or detected) and the
    /// custom ones.
    pub fn node_resources(&self) -> BTreeMap<String, f64> {
        let mut resources = self.resources.clone();
        let cpus = self.num_cpus.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
        });
        resources.insert("CPU".into(), cpus);
        let gpus = self.num_gpus.unwrap_or_else(|| detected_gpus() as f64);
        if gpus > 0.0 {
            resources.insert("GPU".into(), gpus);
        }
        resources
    }

    /// The Unix socket of the plasma store.
    pub fn plasma_socket(&self) -> PathBuf {
        self.plasma_socket
            .clone()
            .unwrap_or_else(|| self.temp_dir.join("sockets").join("plasma_store"))
    }

    /// Where the plasma store spills objects.
    pub fn object_spilling_directory(&self) -> PathBuf {
        self.object_spilling_directory
            .clone()
            .unwrap_or_else(|| self.temp_dir.join("spill"))
    }

    /// Where the Redis servers keep their files.
    pub fn redis_data_dir(&self) -> PathBuf {
        self.redis_data_dir
            .clone()
            .unwrap_or_else(|| self.temp_dir.join("redis"))
    }

    /// Checks what types alone cannot: ranges, formats and consistency between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: String| Err(ConfigError::Invalid { key, reason });
        match self.node_ip_address.parse::<IpAddr>() {
            Err(_) => {
                return invalid(
                    "node_ip_address",
                    format!("`{}` is not an IP address", self.node_ip_address),
                )
            }
            Ok(ip) if ip.is_unspecified() => {
                return invalid(
                    "node_ip_address",
                    format!("`{ip}` is not an address other nodes can reach"),
                )
            }
            Ok(_) => {}
        }
        if self.webui_host.parse::<IpAddr>().is_err() {
            return invalid(
                "webui_host",
                format!("`{}` is not an IP address", self.webui_host),
            );
        }
        if log_level_filter(&self.log_level).is_none() {
            return invalid(
                "log_level",
                format!(
                    "`{}` is not one of error, warn, info, debug, trace",
                    self.log_level
                ),
            );
        }
        if let Some(address) = &self.redis_address {
            if let Err(reason) = parse_host_port(address) {
                return invalid("redis_address", reason);
            }
        }
        if self.redis_port == 0 {
            return invalid("redis_port", "must be a port between 1 and 65535".into());
        }
        if self.num_redis_shards == 0 || self.num_redis_shards > MAX_REDIS_SHARDS {
            return invalid(
                "num_redis_shards",
                format!(
                    "{} is outside 1..={MAX_REDIS_SHARDS}",
                    self.num_redis_shards
                ),
            );
        }
        if !self.redis_shard_ports.is_empty()
            && self.redis_shard_ports.len() != usize::from(self.num_redis_shards)
        {
            return invalid(
                "redis_shard_ports",
                format!(
                    "lists {} ports but num_redis_shards is {}",
                    self.redis_shard_ports.len(),
                    self.num_redis_shards
                ),
            );
        }
        let mut ports = self.shard_ports();
        if u32::from(self.redis_port) + u32::from(self.num_redis_shards) > 65535
            && self.redis_shard_ports.is_empty()
        {
            return invalid(
                "redis_port",
                format!(
                    "{} leaves no room for {} shard ports after it",
                    self.redis_port, self.num_redis_shards
                ),
            );
        }
        ports.push(self.redis_port);
        ports.sort_unstable();
        if ports.contains(&0) {
            return invalid("redis_shard_ports", "port 0 is not a port".into());
        }
        if ports.windows(2).any(|w| w[0] == w[1]) {
            return invalid(
                "redis_shard_ports",
                "every Redis server needs its own port (a port repeats, or equals redis_port)"
                    .into(),
            );
        }
        if self
            .redis_password
            .as_deref()
            .is_some_and(|p| p.is_empty() || p.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return invalid(
                "redis_password",
                "must be non-empty, without whitespace or control characters".into(),
            );
        }
        let tls = [&self.tls_cert_file, &self.tls_key_file, &self.tls_ca_file];
        if tls.iter().any(|f| f.is_some()) && !tls.iter().all(|f| f.is_some()) {
            return invalid(
                "tls_cert_file",
                "TLS needs all three of tls_cert_file, tls_key_file and tls_ca_file".into(),
            );
        }
        if !self.temp_dir.is_absolute() {
            return invalid(
                "temp_dir",
                format!(
                    "`{}` is relative: give an absolute path (daemons do not share a working directory)",
                    self.temp_dir.display()
                ),
            );
        }
        if let Some(dir) = &self.plasma_directory {
            if !dir.is_dir() {
                return invalid(
                    "plasma_directory",
                    format!("{} is not an existing directory", dir.display()),
                );
            }
        }
        if self.redis_max_clients == Some(0) {
            return invalid("redis_max_clients", "must be at least 1".into());
        }
        if !["always", "everysec", "no"].contains(&self.redis_appendfsync.as_str()) {
            return invalid(
                "redis_appendfsync",
                format!(
                    "`{}` is not one of always, everysec, no",
                    self.redis_appendfsync
                ),
            );
        }
        for (key, value) in [("num_cpus", self.num_cpus), ("num_gpus", self.num_gpus)] {
            if value.is_some_and(|v| !v.is_finite() || v < 0.0) {
                return invalid(key, "must be a number of at least 0".into());
            }
        }
        if let Some((name, _)) = self.resources.iter().find(|(name, v)| {
            !v.is_finite() || **v < 0.0 || name.is_empty() || *name == "CPU" || *name == "GPU"
        }) {
            return invalid(
                "resources",
                format!("`{name}`: amounts must be at least 0, and CPU and GPU have keys of their own (num_cpus, num_gpus)"),
            );
        }
        for (key, path) in [
            ("raylet_socket", self.raylet_socket()),
            ("plasma_socket", self.plasma_socket()),
        ] {
            if path.as_os_str().len() > MAX_SOCKET_PATH {
                return invalid(
                    key,
                    format!(
                        "{} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path may have (set a shorter temp_dir or {key})",
                        path.display()
                    ),
                );
            }
        }
        if self.heartbeat_interval_ms == 0 {
            return invalid("heartbeat_interval_ms", "must be at least 1".into());
        }
        if self.node_death_timeout_ms < self.heartbeat_interval_ms.saturating_mul(3) {
            return invalid(
                "node_death_timeout_ms",
                format!(
                    "{} is shorter than three heartbeats ({} ms each): live nodes would be declared dead",
                    self.node_death_timeout_ms, self.heartbeat_interval_ms
                ),
            );
        }
        if self.health_check_interval_ms == 0 {
            return invalid("health_check_interval_ms", "must be at least 1".into());
        }
        if let Some(node_id) = &self.node_id {
            if let Err(e) = node_id.parse::<rayd_common::id::NodeId>() {
                return invalid("node_id", e.to_string());
            }
        }
        if self.object_store_memory != 0 && self.object_store_memory < MIN_OBJECT_STORE_MEMORY {
            return invalid(
                "object_store_memory",
                format!(
                    "{} bytes is below the minimum of {MIN_OBJECT_STORE_MEMORY} (0 means 30% of the RAM)",
                    self.object_store_memory
                ),
            );
        }
        if self.huge_pages && self.plasma_directory.is_none() {
            return invalid(
                "huge_pages",
                "needs plasma_directory set to a hugetlbfs mount".into(),
            );
        }
        if !OBJECT_CHUNK_SIZE_RANGE.contains(&self.object_chunk_size) {
            return invalid(
                "object_chunk_size",
                format!(
                    "{} is outside {}..={}",
                    self.object_chunk_size,
                    OBJECT_CHUNK_SIZE_RANGE.start(),
                    OBJECT_CHUNK_SIZE_RANGE.end()
                ),
            );
        }
        Ok(())
    }

    /// The configuration as TOML, as `--print-config` shows it.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// The GPUs this machine gives the node when `num_gpus` is not set: as many as
/// `CUDA_VISIBLE_DEVICES` names when it is set (as Ray does), else those the NVIDIA kernel
/// driver lists in `/proc/driver/nvidia/gpus`, else those `nvidia-smi` lists (containers
/// often lack the former); none on a machine without.
pub fn detected_gpus() -> usize {
    detect_gpus(
        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
        Path::new("/proc/driver/nvidia/gpus"),
        rayd_common::process::find_executable(Path::new("nvidia-smi")).as_deref(),
    )
}

/// How long `nvidia-smi` may take before it counts as no answer (a wedged driver makes it
/// hang).
const NVIDIA_SMI_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn detect_gpus(cuda_visible: Option<&str>, proc_dir: &Path, nvidia_smi: Option<&Path>) -> usize {
    if let Some(visible) = cuda_visible {
        return visible.split(',').filter(|d| !d.trim().is_empty()).count();
    }
    let listed = std::fs::read_dir(proc_dir).map_or(0, |dir| dir.flatten().count());
    if listed > 0 {
        return listed;
    }
    nvidia_smi.map_or(0, |binary| {
        run_with_timeout(
            std::process::Command::new(binary).args(["--query-gpu=index", "--format=csv,noheader"]),
            NVIDIA_SMI_TIMEOUT,
        )
        .map_or(0, |out| {
            out.lines()
                .filter(|l| l.trim().parse::<u32>().is_ok())
                .count()
        })
    })
}

/// The standard output of `command` if it succeeds within `timeout`; it is killed after.
fn run_with_timeout(
    command: &mut std::process::Command,
    timeout: std::time::Duration,
) -> Option<String> {
    use std::io::Read;
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break,
            Ok(Some(_)) | Err(_) => return None,
            Ok(None) if std::time::Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            // A child process gives no readiness event to wait on without a runtime.
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    Some(out)
}

/// The `log` level filter for a `log_level` value.
pub fn log_level_filter(level: &str) -> Option<log::LevelFilter> {
    match level {
        "error" => Some(log::LevelFilter::Error),
        "warn" => Some(log::LevelFilter::Warn),
        "info" => Some(log::LevelFilter::Info),
        "debug" => Some(log::LevelFilter::Debug),
        "trace" => Some(log::LevelFilter::Trace),
        _ => None,
    }
}

/// Splits `host:port`, with a message saying what is wrong when it is not one.
pub fn parse_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` is not host:port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{address}` has no valid port"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("`{address}` is not host:port"));
    }
    Ok((host.trim_matches(['[', ']']).to_string(), port))
}

/// A value of an override (from a flag, or `ray.init()`'s arguments).
pub type ConfigValue = config::Value;
/// A table of override values.
pub type ConfigMap = config::Map<String, config::Value>;

/// Values given on the command line (or to `ray.init()`), the strongest source.
#[derive(Debug, Default, Clone)]
pub struct Overrides(Vec<(String, config::Value)>);

impl Overrides {
    /// Sets `key` to `value` when a flag gave one.
    pub fn set(&mut self, key: &str, value: Option<impl Into<config::Value>>) -> &mut Self {
        if let Some(value) = value {
            self.0.push((key.to_string(), value.into()));
        }
        self
    }

    /// A binary's flags as overrides. Each field of the flag struct sets the key of the
    /// same name, so a key is written once: as the field's name (clap derives the flag,
    /// `--num-redis-shards`, from it too). A field that is `None`, or a switch that is off
    /// (`#[serde(skip_serializing_if = "rayd_config::switch_off")]`), sets nothing; fields
    /// that are no key (`--check-config`, `--block`) are `#[serde(skip)]`.
    pub fn from_flags(flags: &impl Serialize) -> Result<Self, ConfigError> {
        let mut overrides = Self::default();
        for (key, value) in flag_fields(flags)? {
            overrides.set(&key, config_value(value));
        }
        Ok(overrides)
    }
}

/// For `skip_serializing_if`: a switch that is off sets nothing (a flag that is not given
/// leaves the weaker sources' value, even `true`).
pub fn switch_off(on: &bool) -> bool {
    !on
}

/// The fields of a flag struct, by name.
fn flag_fields(
    flags: &impl Serialize,
) -> Result<serde_json::Map<String, serde_json::Value>, ConfigError> {
    match serde_json::to_value(flags) {
        Ok(serde_json::Value::Object(fields)) => Ok(fields),
        Ok(other) => Err(ConfigError::Flags(format!(
            "flags must be a struct, not {other}"
        ))),
        Err(e) => Err(ConfigError::Flags(e.to_string())),
    }
}

/// The fields of `flags` that would set a key that does not exist (each binary's tests
/// check that this is empty for its flags).
pub fn unknown_flag_keys(flags: &impl Serialize) -> Result<Vec<String>, ConfigError> {
    let keys = flag_fields(&RaydConfig::default())?;
    Ok(flag_fields(flags)?
        .into_iter()
        .map(|(key, _)| key)
        .filter(|key| !keys.contains_key(key))
        .collect())
}

/// A flag's value as the config crate holds it; `None` for a flag that was not given.
fn config_value(value: serde_json::Value) -> Option<config::Value> {
    use serde_json::Value as Json;
    Some(match value {
        Json::Null => return None,
        Json::Bool(b) => b.into(),
        Json::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.into(),
            (None, Some(i), _) => i.into(),
            (None, None, Some(f)) => f.into(),
            (None, None, None) => return None,
        },
        Json::String(s) => s.into(),
        Json::Array(items) => items
            .into_iter()
            .filter_map(config_value)
            .collect::<Vec<_>>()
            .into(),
        Json::Object(fields) => fields
            .into_iter()
            .filter_map(|(k, v)| Some((k, config_value(v)?)))
            .collect::<ConfigMap>()
            .into(),
    })
}

/// Loads the configuration from explicit sources; the process-independent core of
/// [`load_for_process`], used directly by tests.
pub fn load(
    file: Option<&Path>,
    env: &HashMap<String, String>,
    overrides: &Overrides,
) -> Result<RaydConfig, ConfigError> {
    let mut builder = config::Config::builder();
    if let Some(path) = file {
        // Read the file ourselves so that a missing file is reported with its path and the
        // OS error, not as a generic "not found" from the config crate.
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            path: path.to_path_buf(),
            source,
        })?;
        builder = builder
            .add_source(config::File::from_str(&text, config::FileFormat::Toml).required(true));
    }
    let env: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| is_config_env_var(k))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    builder = builder.add_source(
        config::Environment::with_prefix("RAYD")
            .prefix_separator("_")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("redis_shard_ports")
            .source(Some(env)),
    );
    for (key, value) in &overrides.0 {
        builder = builder.set_override(key.as_str(), value.clone())?;
    }
    let mut loaded: RaydConfig = builder.build()?.try_deserialize().map_err(|e| {
        // The config crate reports the file as "origin"; say which file.
        match file {
            Some(path) => ConfigError::Parse(config::ConfigError::Message(format!(
                "{e} (in {})",
                path.display()
            ))),
            None => ConfigError::Parse(e),
        }
    })?;
    // A host name (`localhost`) is resolved once, here: every process then uses the address.
    if loaded.node_ip_address.parse::<IpAddr>().is_err() {
        let ip = resolve_host(&loaded.node_ip_address).map_err(|reason| ConfigError::Invalid {
            key: "node_ip_address",
            reason,
        })?;
        log::info!(name = loaded.node_ip_address.as_str(), ip = ip.as_str(); "resolved node_ip_address");
        loaded.node_ip_address = ip;
    }
    if loaded.redis_password.is_none() {
        if let Some(path) = &loaded.redis_password_file {
            loaded.redis_password = Some(read_password_file(path)?);
        }
    }
    loaded.validate()?;
    Ok(loaded)
}

/// The password in `path` (surrounding whitespace ignored), or why it cannot be read.
pub fn read_password_file(path: &Path) -> Result<String, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        key: "redis_password_file",
        reason,
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let password = text.trim();
    if password.is_empty() {
        return Err(invalid(format!("{} is empty", path.display())));
    }
    Ok(password.to_string())
}

/// Loads the configuration of this process: `file` (else the default file when it
/// exists), the process environment, and the overrides.
pub fn load_for_process(
    file: Option<&Path>,
    overrides: &Overrides,
) -> Result<RaydConfig, ConfigError> {
    let default = Path::new(DEFAULT_CONFIG_FILE);
    let file = match file {
        Some(path) => Some(path),
        None if default.exists() => Some(default),
        None => None,
    };
    let env: HashMap<String, String> = std::env::vars().collect();
    load(file, &env, overrides)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpus_come_from_cuda_visible_devices_the_driver_or_nvidia_smi() {
        let dir = tempfile::tempdir().expect("temp dir");
        let proc_dir = dir.path().join("gpus");
        assert_eq!(detect_gpus(Some("0,2"), &proc_dir, None), 2);
        assert_eq!(detect_gpus(Some(""), &proc_dir, None), 0);
        assert_eq!(detect_gpus(None, &proc_dir, None), 0);
        std::fs::create_dir_all(proc_dir.join("0000:01:00.0")).expect("fake gpu");
        assert_eq!(detect_gpus(None, &proc_dir, None), 1);
        let smi = dir.path().join("nvidia-smi");
        std::fs::write(&smi, "#!/bin/sh\nprintf '0\\n1\\n2\\n'\n").expect("script");
        std::fs::set_permissions(&smi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let none = dir.path().join("none");
        assert_eq!(detect_gpus(None, &none, Some(&smi)), 3);
        let failing = dir.path().join("failing-smi");
        std::fs::write(
            &failing,
            "#!/bin/sh\necho 'NVIDIA-SMI has failed'\nexit 9\n",
        )
        .expect("script");
        std::fs::set_permissions(
            &failing,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod");
        assert_eq!(detect_gpus(None, &none, Some(&failing)), 0);
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn write(dir: &tempfile::TempDir, text: &str) -> PathBuf {
        let path = dir.path().join("rayd.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn defaults_apply_without_any_source() {
        let config = load(None, &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config, RaydConfig::default());
        assert_eq!(config.shard_ports(), vec![6380]);
    }

    #[test]
    fn precedence_is_default_file_env_flag() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "redis_port = 7000\nnum_redis_shards = 3\nlog_level = \"warn\"\n",
        );
        let config = load(Some(&file), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!((config.redis_port, config.num_redis_shards), (7000, 3));
        assert_eq!(config.shard_ports(), vec![7001, 7002, 7003]);

        let vars = env(&[("RAYD_REDIS_PORT", "7100"), ("RAYD_LOG_LEVEL", "debug")]);
        let config = load(Some(&file), &vars, &Overrides::default()).unwrap();
        assert_eq!(config.redis_port, 7100);
        assert_eq!(config.log_level, "debug");
        assert_eq!(
            config.num_redis_shards, 3,
            "file value kept where env is silent"
        );

        let mut flags = Overrides::default();
        flags
            .set("redis_port", Some(7200))
            .set("log_level", None::<String>);
        let config = load(Some(&file), &vars, &flags).unwrap();
        assert_eq!(config.redis_port, 7200);
        assert_eq!(
            config.log_level, "debug",
            "an absent flag overrides nothing"
        );
    }

    /// Flags as a binary declares them: field names are the keys.
    #[derive(Serialize)]
    struct Flags {
        // Not a key: skipped (else unknown_flag_keys would name it).
        #[serde(skip)]
        #[allow(dead_code)]
        check_config: bool,
        redis_port: Option<u16>,
        log_level: Option<String>,
        temp_dir: Option<PathBuf>,
        redis_shard_ports: Option<Vec<u16>>,
        num_cpus: Option<f64>,
        #[serde(skip_serializing_if = "switch_off")]
        redis_persistence: bool,
        #[serde(skip_serializing_if = "switch_off")]
        huge_pages: bool,
    }

    #[test]
    fn flags_set_the_keys_of_their_names_and_absent_flags_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(
            &dir,
            "redis_port = 7000\nlog_level = \"warn\"\nredis_persistence = true\nnum_redis_shards = 2\n",
        );
        let vars = env(&[("RAYD_LOG_LEVEL", "debug")]);
        let flags = Flags {
            check_config: true,
            redis_port: Some(7200),
            log_level: None,
            temp_dir: Some(PathBuf::from("/var/tmp/r")),
            redis_shard_ports: Some(vec![7301, 7302]),
            num_cpus: Some(2.5),
            redis_persistence: false,
            huge_pages: false,
        };
        let overrides = Overrides::from_flags(&flags).unwrap();
        let config = load(Some(&file), &vars, &overrides).unwrap();
        assert_eq!(config.redis_port, 7200, "a flag beats the file");
        assert_eq!(
            config.log_level, "debug",
            "an absent flag leaves the env's value"
        );
        assert!(
            config.redis_persistence,
            "a switch that is off leaves the file's value"
        );
        assert_eq!(config.temp_dir, PathBuf::from("/var/tmp/r"));
        assert_eq!(config.redis_shard_ports, vec![7301, 7302]);
        assert_eq!(config.num_cpus, Some(2.5));
        assert_eq!(unknown_flag_keys(&flags).unwrap(), Vec::<String>::new());

        #[derive(Serialize)]
        struct Typo {
            redis_prot: Option<u16>,
        }
        assert_eq!(
            unknown_flag_keys(&Typo { redis_prot: None }).unwrap(),
            vec!["redis_prot".to_string()]
        );
        let err = load(
            None,
            &env(&[]),
            &Overrides::from_flags(&Typo {
                redis_prot: Some(1),
            })
            .unwrap(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("redis_prot"), "{err}");
    }

    #[test]
    fn lists_and_options_come_from_env() {
        let vars = env(&[
            ("RAYD_NUM_REDIS_SHARDS", "2"),
            ("RAYD_REDIS_SHARD_PORTS", "7001,7005"),
            ("RAYD_REDIS_PASSWORD", "s3cret"),
            ("RAYD_CONFIG", "/not/a/key"),
            ("PATH", "/usr/bin"),
        ]);
        let config = load(None, &vars, &Overrides::default()).unwrap();
        assert_eq!(config.shard_ports(), vec![7001, 7005]);
        assert_eq!(config.redis_password.as_deref(), Some("s3cret"));
    }

    #[test]
    fn a_bad_value_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "redis_port = \"many\"\n");
        let err = load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("redis_port"), "{err}");

        let err = load(
            None,
            &env(&[("RAYD_NUM_REDIS_SHARDS", "0")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `num_redis_shards`: 0 is outside 1..=256"
        );

        let err = load(
            None,
            &env(&[("RAYD_NODE_IP_ADDRESS", "nowhere.invalid")]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("`node_ip_address`"), "{err}");
    }

    #[test]
    fn a_host_name_is_resolved_once_to_its_address() {
        let config = load(
            None,
            &env(&[("RAYD_NODE_IP_ADDRESS", "localhost")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(config.node_ip_address, "127.0.0.1");
        assert_eq!(resolve_host("10.1.2.3").unwrap(), "10.1.2.3");
        assert!(is_config_env_var("RAYD_TEMP_DIR"));
        let one = load(
            None,
            &env(&[("RAYD_REDIS_SHARD_PORTS", "7001")]),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(one.redis_shard_ports, vec![7001]);
        assert!(!is_config_env_var("RAYD_BIN_DIR"));
        assert!(!is_config_env_var("PATH"));
    }

    #[test]
    fn an_unknown_key_names_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = write(&dir, "redis_prot = 7000\n");
        let err = load(Some(&file), &env(&[]), &Overrides::default()).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `redis_prot`"),
            "{err}"
        );
        let err = load(None, &env(&[("RAYD_BOGUS", "1")]), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("`bogus`"), "{err}");
    }

    #[test]
    fn a_missing_file_names_the_path() {
        let err = load(
            Some(Path::new("/nonexistent/rayd.toml")),
            &env(&[]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/rayd.toml"), "{err}");
    }

    #[test]
    fn socket_paths_too_long_for_unix_sockets_are_refused() {
        let deep = format!("/tmp/{}", "d".repeat(120));
        let err = load(
            None,
            &env(&[("RAYD_TEMP_DIR", deep.as_str())]),
            &Overrides::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("invalid value for `raylet_socket`"),
            "{err}"
        );
    }

    #[test]
    fn repeated_ports_are_refused() {
        let mut flags = Overrides::default();
        flags
            .set("num_redis_shards", Some(2))
            .set("redis_shard_ports", Some(vec![6379, 7000]));
        let err = load(None, &env(&[]), &flags).unwrap_err();
        assert!(err.to_string().contains("`redis_shard_ports`"), "{err}");
    }

    #[test]
    fn the_password_comes_from_its_file_unless_given() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "from-file\n").unwrap();
        let mut overrides = Overrides::default();
        overrides.set("redis_password_file", Some(secret.display().to_string()));
        let config = load(None, &env(&[]), &overrides).unwrap();
        assert_eq!(config.redis_password.as_deref(), Some("from-file"));
        let vars = env(&[("RAYD_REDIS_PASSWORD", "given")]);
        let config = load(None, &vars, &overrides).unwrap();
        assert_eq!(config.redis_password.as_deref(), Some("given"));
        let mut missing = Overrides::default();
        missing.set("redis_password_file", Some("/nonexistent/secret"));
        let err = load(None, &env(&[]), &missing).unwrap_err().to_string();
        assert!(
            err.contains("redis_password_file") && err.contains("/nonexistent/secret"),
            "{err}"
        );
    }

    #[test]
    fn a_relative_temp_dir_or_a_missing_plasma_directory_is_refused() {
        let err = load(
            None,
            &env(&[("RAYD_TEMP_DIR", "tmp/rayd")]),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("`temp_dir`") && err.contains("relative"),
            "{err}"
        );
        let vars = env(&[("RAYD_PLASMA_DIRECTORY", "/nonexistent/hugepages")]);
        let err = load(None, &vars, &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`plasma_directory`"), "{err}");
    }

    #[test]
    fn the_shipped_config_documents_exactly_the_defaults() {
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/rayd.toml");
        let config = load(Some(&shipped), &env(&[]), &Overrides::default()).unwrap();
        assert_eq!(config, RaydConfig::default());
        let text = std::fs::read_to_string(&shipped).unwrap();
        let printed = RaydConfig::default().to_toml();
        for line in printed.lines().filter(|l| !l.is_empty()) {
            if line.starts_with('[') {
                assert!(
                    text.contains(line),
                    "configs/rayd.toml lacks the table {line}"
                );
                continue;
            }
            let key = line.split(" = ").next().unwrap();
            assert!(
                text.contains(&format!("{key} =")),
                "configs/rayd.toml lacks `{key}`"
            );
        }
        for key in [
            "redis_address",
            "redis_password",
            "redis_password_file",
            "tls_cert_file",
            "tls_key_file",
            "tls_ca_file",
            "redis_max_clients",
            "redis_data_dir",
            "node_id",
            "plasma_socket",
            "plasma_directory",
        ] {
            assert!(
                text.contains(&format!("# {key} =")),
                "configs/rayd.toml lacks `{key}`"
            );
        }
    }

    /// TOML values of every kind, well-formed or not, for the fuzz target below.
    fn toml_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            any::<i64>().prop_map(|i| i.to_string()),
            any::<f64>().prop_map(|f| format!("{f:?}")),
            Just("nan".to_string()),
            Just("-inf".to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
            proptest::collection::vec(0u32..70000, 0..4).prop_map(|v| format!("{v:?}")),
            "[ -~]{0,12}",
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Any config file (known keys with any values, unknown keys, garbage) loads or
        /// fails with an error; never a panic (a fuzz target). `node_ip_address` is left
        /// out: a host name in it is resolved through DNS.
        #[test]
        fn any_config_file_loads_or_is_refused(
            lines in proptest::collection::vec(
                (
                    proptest::sample::select(
                        flag_fields(&RaydConfig::default())
                            .unwrap()
                            .into_iter()
                            .map(|(k, _)| k)
                            .filter(|k| k != "node_ip_address")
                            .chain(["bogus_key".to_string(), "".to_string()])
                            .collect::<Vec<_>>(),
                    ),
                    toml_value(),
                ),
                0..6,
            ),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let text: String = lines.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
            let path = write(&dir, &text);
            match load(Some(&path), &env(&[]), &Overrides::default()) {
                Ok(config) => proptest::prop_assert!(config.validate().is_ok()),
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
