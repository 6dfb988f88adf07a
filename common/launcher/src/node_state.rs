//! `<temp_dir>/node.json`: what `rayd start` launched on this machine, for `rayd stop` and
//! `rayd status`.

use std::path::{Path, PathBuf};

use rayd_common::process::{process_alive, process_name};
use serde::{Deserialize, Serialize};

use crate::LaunchError;

/// A daemon that `rayd start` launched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Process {
    /// Binary name, e.g. `rayd-redis-shard`; checked before signalling the pid.
    pub name: String,
    pub pid: u32,
}

impl Process {
    /// Whether the process still runs and is still the daemon (not a reused pid).
    pub fn is_running(&self) -> bool {
        process_alive(self.pid) && process_name(self.pid).as_deref() == Some(&self.name)
    }
}

/// The node started from one temp dir.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub session_dir: PathBuf,
    /// The cluster's primary Redis.
    pub redis_address: String,
    pub head: bool,
    /// The file (mode 0600) that holds the cluster's secret, for drivers and `rayd status`
    /// on this machine; none for an open cluster.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// In start order.
    pub processes: Vec<Process>,
}

fn path(temp_dir: &Path) -> PathBuf {
    temp_dir.join("node.json")
}

/// The recorded node, if any.
pub fn read(temp_dir: &Path) -> Result<Option<NodeState>, LaunchError> {
    let path = path(temp_dir);
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| LaunchError::CorruptState { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LaunchError::io("read", &path)(e)),
    }
}

/// Records the node.
pub fn write(temp_dir: &Path, state: &NodeState) -> Result<(), LaunchError> {
    let path = path(temp_dir);
    let text = serde_json::to_string_pretty(state).map_err(LaunchError::EncodeState)?;
    std::fs::write(&path, text).map_err(LaunchError::io("write", &path))
}

/// Forgets the node.
pub fn remove(temp_dir: &Path) -> Result<(), LaunchError> {
    let path = path(temp_dir);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(LaunchError::io("remove", &path)(e))
        }
        _ => Ok(()),
    }
}
