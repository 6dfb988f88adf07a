//! The core that rayd drivers and workers share: the raylet connection, the plasma client,
//! the GCS, task submission, and objects.
//!
//! Nothing here knows Python: the Python extension (`ray._raylet`) wraps a [`CoreWorker`]
//! and hands it serialized bytes. The hot path (submit, put, get) never waits on Redis:
//! submission is one frame to the local raylet; small results come back in the raylet's
//! messages, large objects go through local shared memory.

mod core_worker;
mod inbox;
mod object;
mod raylet_client;
pub mod refs;

pub use rayd_common::inline::{InlineCache, INLINE_RESULT_MAX};
pub use rayd_common::value;

pub use core_worker::{ActorCall, Assigned, ConnectOptions, CoreWorker, TaskArgValue, TaskOptions};
pub use object::Object;
pub use rayd_plasma_client::{ClientError as PlasmaError, ObjectBuffer};
pub use raylet_client::find_local_raylet;

/// Why a core operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("cannot connect to the raylet at {path}: {source}")]
    RayletConnect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the raylet connection failed: {0}")]
    Raylet(#[source] std::io::Error),
    #[error("the raylet closed the connection")]
    RayletClosed,
    #[error("the plasma store at {socket} closed its event stream")]
    StoreClosed { socket: String },
    #[error("the raylet sent {got} where {expected} was expected")]
    Unexpected { expected: &'static str, got: String },
    #[error(transparent)]
    Plasma(#[from] rayd_plasma_client::ClientError),
    #[error("gcs: {0}")]
    Gcs(#[from] rayd_gcs::GcsError),
    #[error("malformed object {id}: {source}")]
    Value {
        id: rayd_common::id::ObjectId,
        #[source]
        source: value::ValueError,
    },
    #[error("function {0} is not in the GCS function table")]
    FunctionNotFound(rayd_common::id::FunctionId),
    #[error("function {id} (`{name}`) in the GCS does not carry a valid MAC of the cluster's secret: refused to load it (written by a client without the secret, or altered)")]
    FunctionForged {
        id: rayd_common::id::FunctionId,
        name: String,
    },
    #[error("no raylet of the cluster at {redis_address} runs on {ip} (pass node_ip_address: this node's address as its raylet registered it)")]
    NoLocalRaylet { redis_address: String, ip: String },
    #[error("the raylet of this node ({ip}) listens on {socket}, which this user may not open ({reason}): on a node run by systemd, join group `rayd` (`sudo usermod -aG rayd $USER`, then log in again)")]
    RayletDenied {
        ip: String,
        socket: String,
        reason: String,
    },
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
