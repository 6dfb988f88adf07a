//! `rayd-redis-shard`: starts and supervises the Redis servers of the GCS on the head node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rayd_config::switch_off;
use rayd_daemon::args::ConfigArgs;
use serde::Serialize;

/// Starts a primary redis-server and `num_redis_shards` shards, writes the shard list
/// into the primary, and restarts any that dies.
///
/// Each field is also the config key it overrides (`rayd_config::Overrides::from_flags`).
#[derive(Debug, Parser, Serialize)]
#[command(name = "rayd-redis-shard", version)]
struct Args {
    #[command(flatten)]
    #[serde(skip)]
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
    #[serde(skip_serializing_if = "switch_off")]
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
    rayd_daemon::main(
        "rayd-redis-shard",
        &args.config,
        &args,
        rayd_daemon::Threads::One,
        rayd_redis_shard::run,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn every_flag_names_a_config_key() {
        let args = super::Args::parse_from(["rayd-redis-shard"]);
        assert_eq!(
            rayd_config::unknown_flag_keys(&args).unwrap(),
            Vec::<String>::new()
        );
    }
}
