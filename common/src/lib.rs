//! The bottom of rayd: the formats every process agrees on, with no daemon and no network
//! stack behind them.
//!
//! Modules, lowest first: [`auth`] (the cluster secret: gRPC tokens, function MACs), [`id`] (20-byte identifiers), [`proto`] (the message types
//! generated from `common/proto/`; their gRPC client and server code only with the `grpc`
//! feature), [`framing`] (length-prefixed messages on Unix sockets), [`value`] (how a
//! serialized value is laid out in an object), [`inline`] (small objects held in memory)
//! [`process`] (finding, signalling and stopping child processes) and [`recent`] (bounded
//! sets of recent facts).
//!
//! Everything above depends on this crate: `rayd-config`, `rayd-gcs`, `rayd-daemon`,
//! `rayd-launcher`, `rayd-plasma-client`, the daemons and the SDK.

pub mod auth;
pub mod framing;
pub mod id;
pub mod inline;
pub mod process;
pub mod proto;
pub mod recent;
pub mod resources;
pub mod value;
