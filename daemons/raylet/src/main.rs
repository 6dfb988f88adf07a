//! `rayd-raylet`: the local scheduler and worker pool of one node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rayd_daemon::args::{ConfigArgs, ResourceArgs};
use serde::Serialize;

/// The raylet allocates and frees a few small buffers per message; glibc's malloc took a
/// fifth of its time on a stream of actor calls.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Queues tasks until their arguments are local and resources free, and runs them on a
/// pool of rayd-worker processes.
///
/// Each field is also the config key it overrides (`rayd_config::Overrides::from_flags`).
#[derive(Debug, Parser, Serialize)]
#[command(name = "rayd-raylet", version)]
struct Args {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigArgs,
    /// host:port of the cluster's primary Redis.
    #[arg(long)]
    redis_address: Option<String>,
    /// Password of the cluster's Redis servers.
    #[arg(long)]
    redis_password: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
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
    rayd_daemon::main(
        "rayd-raylet",
        &args.config,
        &args,
        rayd_daemon::Threads::One,
        rayd_raylet::run,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn every_flag_names_a_config_key() {
        let args = super::Args::parse_from(["rayd-raylet"]);
        assert_eq!(
            rayd_config::unknown_flag_keys(&args).unwrap(),
            Vec::<String>::new()
        );
    }
}
