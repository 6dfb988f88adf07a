//! Starting and stopping the daemons of one node by hand: what `rayd start` / `rayd stop`
//! (the CLI) and `ray.init()` (the Python SDK) share.
//!
//! [`launch`] starts one daemon in the background and waits for its `READY=1`;
//! [`node`] starts a node's daemons in order (and stops them); [`node_state`] is the
//! record of what `rayd start` launched, in `<temp_dir>/node.json`.

pub mod launch;
pub mod node;
pub mod node_state;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a node or one of its daemons could not be started, or the node's record not kept.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("cannot find the `{0}` binary next to rayd or in PATH")]
    BinaryNotFound(String),
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create a directory for the readiness socket")]
    NotifyDir(#[source] std::io::Error),
    #[error("{name} exited ({status}) before it was ready:\n{log}\n(full log: {})", path.display())]
    Exited {
        name: String,
        status: ExitStatus,
        /// The last lines of its log.
        log: String,
        path: PathBuf,
    },
    #[error("{name} was not ready within {timeout:?}:\n{log}\n(full log: {})", path.display())]
    NotReady {
        name: String,
        timeout: Duration,
        /// The last lines of its log.
        log: String,
        path: PathBuf,
    },
    #[error("cannot find free ports on {ip}")]
    FreePorts {
        ip: String,
        #[source]
        source: std::io::Error,
    },
    #[error("joining a cluster needs its redis_address")]
    NoRedisAddress,
    #[error("{} is corrupt; remove it", path.display())]
    CorruptState {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot generate the cluster secret: {0}")]
    Secret(String),
    #[error("cannot encode the node's record")]
    EncodeState(#[source] serde_json::Error),
}

impl LaunchError {
    /// An I/O error while doing `action` to `path` (the message reads "cannot <action> <path>").
    pub(crate) fn io(
        action: &'static str,
        path: &std::path::Path,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}
