//! `rayd-raylet`: the local scheduler and worker pool of one node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rayd_config::Overrides;
use rayd_daemon::args::{ConfigArgs, ResourceArgs};

/// The raylet allocates and frees a few small buffers per message; glibc's malloc took a
/// fifth of its time on a stream of actor calls.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Queues tasks until their arguments are local and resources free, and runs them on a
/// pool of rayd-worker processes.
#[derive(Debug, Parser)]
#[command(name = "rayd-raylet", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// host:port of the cluster's primary Redis.
    #[arg(long)]
    redis_address: Option<String>,
    /// Password of the cluster's Redis servers.
    #[arg(long)]
    redis_password: Option<String>,
    #[command(flatten)]
    resources: ResourceArgs,
    /// Unix socket to serve drivers and workers on.
    #[arg(long)]
    raylet_socket: Option<PathBuf>,
    /// Unix socket of the node's plasma store.
    #[arg(long)]
    plasma_socket: Option<PathBuf>,
    /// Address other nodes reach this node at.
    #[arg(long)]
    node_ip_address: Option<String>,
    /// Directory for sockets and logs.
    #[arg(long)]
    temp_dir: Option<PathBuf>,
    /// Log level.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut overrides = Overrides::default();
    let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
    overrides
        .set("redis_address", args.redis_address)
        .set("redis_password", args.redis_password)
        .set("raylet_socket", path(args.raylet_socket))
        .set("plasma_socket", path(args.plasma_socket))
        .set("node_ip_address", args.node_ip_address)
        .set("temp_dir", path(args.temp_dir))
        .set("log_level", args.log_level);
    args.resources.apply(&mut overrides);
    rayd_daemon::main(
        "rayd-raylet",
        &args.config,
        &overrides,
        rayd_daemon::Threads::One,
        rayd_raylet::run,
    )
}
