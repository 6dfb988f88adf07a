//! The global control store (GCS): cluster metadata on a primary Redis and N shards.
//!
//! The primary holds what is cluster-wide (the shard list, cluster metadata, the node
//! table, the function index, the error lists); every per-ID table lives on the shard
//! that [`keys::shard_index`] picks for the ID. Keys are readable (`rayd:task:<hex>`) so an
//! operator can inspect a cluster with `redis-cli`; the whole schema is in [`keys`].

mod client;
pub mod keys;
mod lineage;
mod liveness;
mod schedulers;
mod tables;
mod views;

pub use client::{
    connect_server, GcsClient, GcsError, GcsReply, Notification, Server, Subscription, Target,
};
pub use lineage::{Lineage, RerunClaim};
pub use liveness::Standing;
pub use schedulers::GlobalSchedulerInfo;
pub use tables::{
    now_ms, ActorInfo, ErrorInfo, FunctionInfo, Heartbeat, NodeEvent, NodeInfo, ObjectInfo,
    StoreFigures, TaskEntry,
};
pub use views::{
    chrome_tracing, profile_key, ActorRow, ProfileEvent, TaskRow, METRICS_ENDPOINTS,
    RAYLET_METRICS_FIELD, WEBUI_URL,
};
