//! Starting the daemons of one node: what `rayd start` and `ray.init()` share.

use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rayd_common::process::signal_pid;
use rayd_config::RaydConfig;

use crate::node_state::Process;
use crate::LaunchError;

/// The daemons of a head node, in start order (`rayd start --head`).
pub const HEAD_DAEMONS: &[&str] = &[
    "rayd-redis-shard",
    "rayd-global-scheduler",
    "rayd-plasma",
    "rayd-raylet",
];
/// The daemons of `ray.init()`'s single-node cluster: a head without a global scheduler
/// (with one node, there is nowhere to spill to).
pub const LOCAL_DAEMONS: &[&str] = &["rayd-redis-shard", "rayd-plasma", "rayd-raylet"];
/// The daemons of a node that joins a head, in start order.
pub const WORKER_DAEMONS: &[&str] = &["rayd-plasma", "rayd-raylet"];
/// The web dashboard, started last on a head with `include_webui`.
pub const DASHBOARD: &str = "rayd-dashboard";

/// A node whose daemons this process started.
#[derive(Debug)]
pub struct StartedNode {
    pub session_dir: PathBuf,
    /// The cluster's primary Redis.
    pub redis_address: String,
    pub raylet_socket: PathBuf,
    pub plasma_socket: PathBuf,
    /// The file that holds the cluster's secret (`<session>/redis_password`, mode 0600).
    pub password_file: Option<PathBuf>,
    pub processes: Vec<Process>,
    pub grace: Duration,
    children: Vec<Child>,
}

impl StartedNode {
    /// Stops every daemon (reverse start order) and reaps them.
    pub fn stop(&mut self) -> usize {
        let stopped = stop_processes(&self.processes, self.grace);
        for child in &mut self.children {
            let _ = child.wait();
        }
        self.processes.clear();
        stopped
    }

    /// The processes, so that a caller can watch them.
    pub fn children(&mut self) -> &mut [Child] {
        &mut self.children
    }
}

/// Stops `processes` in reverse start order: SIGTERM, up to `grace` to exit, then SIGKILL
/// for the process and its group (the children it started). Returns how many were running.
pub fn stop_processes(processes: &[Process], grace: Duration) -> usize {
    let mut stopped = 0;
    for process in processes.iter().rev() {
        if process.is_running() {
            stopped += 1;
            signal_pid(process.pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while process.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Each daemon leads its own process group (rayd start made it a session leader):
        // whatever of it is left, children included, goes now.
        if let Ok(pgid) = i32::try_from(process.pid) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
    stopped
}

/// Creates `<temp_dir>/session_<unix time>_<pid>/logs` and points `session_latest` at it.
pub fn new_session(temp_dir: &Path) -> Result<PathBuf, LaunchError> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let session = temp_dir.join(format!("session_{secs}_{}", std::process::id()));
    std::fs::create_dir_all(session.join("logs")).map_err(LaunchError::io("create", &session))?;
    let latest = temp_dir.join("session_latest");
    let _ = std::fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(&session, &latest);
    Ok(session)
}

/// Writes `text` to `path`, readable by this user only.
fn write_private(path: &Path, text: &str) -> Result<(), LaunchError> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(LaunchError::io("write", path))?;
    std::io::Write::write_all(&mut file, text.as_bytes()).map_err(LaunchError::io("write", path))
}

/// Writes the effective configuration for the daemons (mode 0600: it holds the
/// password), so that each reads exactly what the launcher resolved.
fn write_session_config(session: &Path, config: &RaydConfig) -> Result<PathBuf, LaunchError> {
    let path = session.join("rayd.toml");
    write_private(&path, &config.to_toml())?;
    Ok(path)
}

/// The name of the file in a session directory that holds the cluster's secret.
pub const PASSWORD_FILE: &str = "redis_password";

/// `n` TCP ports on `ip` that were free a moment ago.
pub fn free_ports(ip: &str, n: usize) -> Result<Vec<u16>, LaunchError> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((ip, 0)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LaunchError::FreePorts {
            ip: ip.into(),
            source,
        })?;
    Ok(listeners
        .iter()
        .filter_map(|l| l.local_addr().ok().map(|a| a.port()))
        .collect())
}

/// Starts a node's daemons, each ready before the next starts. A head runs the GCS
/// (its `redis_address` becomes this node's primary) and a global scheduler, except an
/// `attached` head (`ray.init()`'s local cluster: [`LOCAL_DAEMONS`]); any other node joins
/// `config.redis_address`. On failure, what was started is stopped again.
pub fn start_node(
    config: &RaydConfig,
    head: bool,
    attached: bool,
) -> Result<StartedNode, LaunchError> {
    let mut config = config.clone();
    if head && config.redis_password.is_none() {
        // Authenticated by default: a head without a given secret makes one.
        let secret =
            rayd_common::auth::generate_secret().map_err(|e| LaunchError::Secret(e.to_string()))?;
        config.redis_password = Some(secret);
    }
    let mut daemons = if head {
        config.redis_address = Some(format!("{}:{}", config.node_ip_address, config.redis_port));
        if attached {
            LOCAL_DAEMONS.to_vec()
        } else {
            HEAD_DAEMONS.to_vec()
        }
    } else {
        WORKER_DAEMONS.to_vec()
    };
    if head && config.include_webui {
        daemons.push(DASHBOARD);
    }
    let redis_address = config
        .redis_address
        .clone()
        .ok_or(LaunchError::NoRedisAddress)?;
    std::fs::create_dir_all(&config.temp_dir)
        .map_err(LaunchError::io("create", &config.temp_dir))?;
    let session = new_session(&config.temp_dir)?;
    let config_path = write_session_config(&session, &config)?;
    let password_file = match &config.redis_password {
        Some(password) => {
            let path = session.join(PASSWORD_FILE);
            write_private(&path, password)?;
            Some(path)
        }
        None => None,
    };
    let args = ["--config".to_string(), config_path.display().to_string()];
    let mut node = StartedNode {
        session_dir: session.clone(),
        redis_address,
        raylet_socket: config.raylet_socket(),
        plasma_socket: config.plasma_socket(),
        password_file,
        processes: Vec::new(),
        grace: Duration::from_millis(config.shutdown_grace_ms),
        children: Vec::new(),
    };
    for name in daemons {
        match crate::launch::launch(name, &args, &session, attached) {
            Ok(child) => {
                node.processes.push(Process {
                    name: (*name).to_string(),
                    pid: child.id(),
                });
                node.children.push(child);
            }
            Err(e) => {
                node.stop();
                return Err(e);
            }
        }
    }
    Ok(node)
}
