//! `rayd-plasma`: the node's shared-memory object store.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rayd_config::switch_off;
use rayd_daemon::args::ConfigArgs;
use serde::Serialize;

/// Serves the node's object store on a Unix socket and its object manager over gRPC.
///
/// Each field is also the config key it overrides (`rayd_config::Overrides::from_flags`).
#[derive(Debug, Parser, Serialize)]
#[command(name = "rayd-plasma", version)]
struct Args {
    #[command(flatten)]
    #[serde(skip)]
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
    #[serde(skip_serializing_if = "switch_off")]
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
    rayd_daemon::main(
        "rayd-plasma",
        &args.config,
        &args,
        rayd_daemon::Threads::PerCore,
        rayd_plasma::run,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn every_flag_names_a_config_key() {
        let args = super::Args::parse_from(["rayd-plasma"]);
        assert_eq!(
            rayd_config::unknown_flag_keys(&args).unwrap(),
            Vec::<String>::new()
        );
    }
}
