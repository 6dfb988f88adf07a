//! `rayd-global-scheduler`: places the tasks that raylets spill (head node).

use std::process::ExitCode;

use clap::Parser;
use rayd_daemon::args::ConfigArgs;
use serde::Serialize;

/// Follows the nodes' heartbeats in the GCS and places the tasks that raylets spill to it
/// on a node that can run them, forwarding each to that node's raylet.
///
/// Each field is also the config key it overrides (`rayd_config::Overrides::from_flags`).
#[derive(Debug, Parser, Serialize)]
#[command(name = "rayd-global-scheduler", version)]
struct Args {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigArgs,
    /// TCP port of the gRPC service (0 picks one).
    #[arg(long)]
    global_scheduler_port: Option<u16>,
    /// Address to bind and to advertise in the GCS.
    #[arg(long)]
    node_ip_address: Option<String>,
    /// host:port of the GCS primary Redis.
    #[arg(long)]
    redis_address: Option<String>,
    /// Password of the GCS Redis servers.
    #[arg(long)]
    redis_password: Option<String>,
    /// Milliseconds between the raylets' heartbeats (a node silent for several is out).
    #[arg(long)]
    heartbeat_interval_ms: Option<u64>,
    /// Log level.
    #[arg(long)]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    rayd_daemon::main(
        "rayd-global-scheduler",
        &args.config,
        &args,
        rayd_daemon::Threads::One,
        rayd_global_scheduler::run,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn every_flag_names_a_config_key() {
        let args = super::Args::parse_from(["rayd-global-scheduler"]);
        assert_eq!(
            rayd_config::unknown_flag_keys(&args).unwrap(),
            Vec::<String>::new()
        );
    }
}
