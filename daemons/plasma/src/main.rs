//! `rayd-plasma`: the node's shared-memory object store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rayd_config::Overrides;
use rayd_daemon::args::ConfigArgs;

/// Serves the node's object store on a Unix socket and its object manager over gRPC.
#[derive(Debug, Parser)]
#[command(name = "rayd-plasma", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Bytes of shared memory for objects (0: 30% of the RAM).
    #[arg(long)]
    object_store_memory: Option<u64>,
    /// Unix socket to serve clients on.
    #[arg(long)]
    plasma_socket: Option<PathBuf>,
    /// Directory whose files back object memory instead of memfd.
    #[arg(long)]
    plasma_directory: Option<PathBuf>,
    /// Back object memory with huge pages (plasma_directory on hugetlbfs).
    #[arg(long)]
    huge_pages: bool,
    /// TCP port of the object manager (0 picks one).
    #[arg(long)]
    object_manager_port: Option<u16>,
    /// Bytes per chunk of object transfers.
    #[arg(long)]
    object_chunk_size: Option<u64>,
    /// Hex ID of this node.
    #[arg(long)]
    node_id: Option<String>,
    /// Address of this node.
    #[arg(long)]
    node_ip_address: Option<String>,
    /// host:port of the GCS primary Redis, to report object locations to.
    #[arg(long)]
    redis_address: Option<String>,
    /// Password of the GCS Redis servers.
    #[arg(long)]
    redis_password: Option<String>,
    /// Log level.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    rayd_plasma::tune_allocator();
    let args = Args::parse();
    let path = |p: Option<PathBuf>| p.map(|p| p.display().to_string());
    let mut overrides = Overrides::default();
    overrides
        .set("object_store_memory", args.object_store_memory)
        .set("plasma_socket", path(args.plasma_socket))
        .set("plasma_directory", path(args.plasma_directory))
        .set("huge_pages", args.huge_pages.then_some(true))
        .set("object_manager_port", args.object_manager_port)
        .set("object_chunk_size", args.object_chunk_size)
        .set("node_id", args.node_id)
        .set("node_ip_address", args.node_ip_address)
        .set("redis_address", args.redis_address)
        .set("redis_password", args.redis_password)
        .set("log_level", args.log_level);
    rayd_daemon::main(
        "rayd-plasma",
        &args.config,
        &overrides,
        rayd_daemon::Threads::PerCore,
        rayd_plasma::run,
    )
}
