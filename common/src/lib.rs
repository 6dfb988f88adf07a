//! The shared core of rayd: what every daemon, the CLI and the SDK agree on.
//!
//! Modules are split by domain, lowest first: [`id`] (20-byte identifiers), [`proto`]
//! (generated gRPC and message types), [`config`] (the one configuration model),
//! [`logging`], [`shutdown`] (signals and `sd_notify`), [`process`] (supervised child
//! processes) and [`gcs`] (the global control store on sharded Redis).

pub mod config;
pub mod daemon;
pub mod framing;
pub mod gcs;
pub mod id;
pub mod logging;
pub mod process;
pub mod proto;
pub mod shutdown;
