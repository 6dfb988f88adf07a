//! `rayd-dashboard`: the web dashboard of a rayd cluster, on the head node.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rayd_daemon::args::ConfigArgs;
use serde::Serialize;

/// Serves the cluster's dashboard (nodes, tasks, actors, timeline, logs) read-only over
/// HTTP, from the GCS.
///
/// Each field is also the config key it overrides (`rayd_config::Overrides::from_flags`).
#[derive(Debug, Parser, Serialize)]
#[command(name = "rayd-dashboard", version)]
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
    /// Address to listen on (default 127.0.0.1).
    #[arg(long)]
    webui_host: Option<String>,
    /// Port to listen on (default 8265; 0: any free port).
    #[arg(long)]
    webui_port: Option<u16>,
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
        "rayd-dashboard",
        &args.config,
        &args,
        rayd_daemon::Threads::One,
        rayd_dashboard::run,
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[test]
    fn every_flag_names_a_config_key() {
        let args = super::Args::parse_from(["rayd-dashboard"]);
        assert_eq!(
            rayd_config::unknown_flag_keys(&args).unwrap(),
            Vec::<String>::new()
        );
    }
}
