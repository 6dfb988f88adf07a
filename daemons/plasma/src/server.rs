//! The store's Unix socket: created in a directory only its owner can enter (mode 0700),
//! refused when another store already serves on it, removed at stop. Every accepted
//! connection is served by its own task.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection;
use crate::state::State;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot prepare the socket directory {path}: {source}")]
    Directory {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another plasma store already serves on {0}")]
    InUse(PathBuf),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Binds the store's socket at `path`.
pub fn bind(path: &Path) -> Result<UnixListener, SocketError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let dir_error = |source| SocketError::Directory {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(dir_error)?;
        // The umask may have narrowed the mode further, never widened it; make it exact.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_error)?;
    } else if dir
        .metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o007 != 0)
    {
        // Group access is the operator's choice (the systemd units give it to group rayd).
        log::warn!(directory:% = dir.display(); "the socket directory is open to every user; any of them can use the store");
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse(path.to_path_buf()));
        }
        // A socket file nobody listens on is left over from a store that died.
        let _ = std::fs::remove_file(path);
    }
    UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Accepts clients until `cancel`; then waits for their connections to wind down.
pub async fn serve(
    listener: UnixListener,
    state: Arc<State>,
    cancel: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tracker.spawn(connection::serve(state.clone(), stream, cancel.clone()));
                }
                Err(e) if is_transient(&e) => {
                    log::warn!(error:% = e; "cannot accept a client");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => return Err(e),
            },
            _ = cancel.cancelled() => break,
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::ECONNABORTED
                | libc::EINTR
        )
    )
}
