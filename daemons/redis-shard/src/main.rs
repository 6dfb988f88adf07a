//! `rayd-redis-shard`: starts and supervises the Redis servers of the GCS on the head node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rayd_config::Overrides;
use rayd_daemon::args::ConfigArgs;

/// Starts a primary redis-server and `num_redis_shards` shards, writes the shard list
/// into the primary, and restarts any that dies.
#[derive(Debug, Parser)]
#[command(name = "rayd-redis-shard", version)]
struct Args {
    #[command(flatten)]
    config: ConfigArgs,
    /// Port of the primary Redis.
    #[arg(long)]
    redis_port: Option<u16>,
    /// Number of shards besides the primary.
    #[arg(long)]
    num_redis_shards: Option<u16>,
    /// Ports of the shards, comma-separated (default: the ports after --redis-port).
    #[arg(long, value_delimiter = ',')]
    redis_shard_ports: Option<Vec<u16>>,
    /// Password every Redis server requires.
    #[arg(long)]
    redis_password: Option<String>,
    /// maxclients of every Redis server.
    #[arg(long)]
    redis_max_clients: Option<u32>,
    /// Turn on append-only persistence.
    #[arg(long)]
    redis_persistence: bool,
    /// Directory for the servers' data and config files.
    #[arg(long)]
    redis_data_dir: Option<PathBuf>,
    /// Address to bind and to advertise in the shard list.
    #[arg(long)]
    node_ip_address: Option<String>,
    /// Log level.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut overrides = Overrides::default();
    overrides
        .set("redis_port", args.redis_port)
        .set("num_redis_shards", args.num_redis_shards)
        .set("redis_shard_ports", args.redis_shard_ports)
        .set("redis_password", args.redis_password)
        .set("redis_max_clients", args.redis_max_clients)
        .set("redis_persistence", args.redis_persistence.then_some(true))
        .set(
            "redis_data_dir",
            args.redis_data_dir.map(|p| p.display().to_string()),
        )
        .set("node_ip_address", args.node_ip_address)
        .set("log_level", args.log_level);
    rayd_daemon::main(
        "rayd-redis-shard",
        &args.config,
        &overrides,
        rayd_daemon::Threads::One,
        rayd_redis_shard::run,
    )
}
