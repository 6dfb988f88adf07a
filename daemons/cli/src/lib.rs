//! The `rayd` command line, shaped like `ray start` / `ray stop` / `ray status`.
//!
//! `rayd start` launches the node's daemons in the background (each in its own session,
//! output in `<temp_dir>/session_*/logs/`), waits until each reports `READY=1` over a
//! private `NOTIFY_SOCKET`, and records them in `<temp_dir>/node.json`; `rayd stop` stops
//! what that file lists; `rayd status` asks the GCS. Starting and stopping are
//! `rayd-launcher`'s, which `ray.init()` shares.

mod start;
mod status;
mod stop;
mod timeline;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use rayd_config::RaydConfig;
use rayd_daemon::args::{ConfigArgs, ResourceArgs};
use rayd_daemon::Startup;
use serde::Serialize;

/// Start, stop and inspect rayd nodes.
#[derive(Debug, Parser)]
#[command(name = "rayd", version)]
pub struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

/// A subcommand's flags; each field that is not `#[serde(skip)]` is also the config key
/// it overrides (`rayd_config::Overrides::from_flags`).
#[derive(Debug, Subcommand, Serialize)]
#[serde(untagged)]
enum Command {
    /// Start this machine's rayd daemons: the head's with --head, else join --redis-address.
    Start(StartArgs),
    /// Stop every rayd process that `rayd start` started on this machine.
    Stop(NodeArgs),
    /// Show the cluster's GCS shards and their health.
    Status(StatusArgs),
    /// Write a job's task timeline as a Chrome trace (open it in Perfetto).
    Timeline(TimelineArgs),
}

/// Flags shared by every subcommand that finds the local node.
#[derive(Debug, Args, Serialize)]
struct NodeArgs {
    /// Directory for session state, sockets and logs.
    #[arg(long)]
    temp_dir: Option<PathBuf>,
}

#[derive(Debug, Args, Serialize)]
struct StartArgs {
    /// Start the head node (the GCS and the global scheduler).
    #[arg(long, conflicts_with = "redis_address")]
    #[serde(skip)]
    head: bool,
    /// Join the cluster whose primary Redis is at host:port.
    #[arg(long, alias = "address")]
    redis_address: Option<String>,
    /// Port of the primary Redis (head only).
    #[arg(long)]
    redis_port: Option<u16>,
    /// Number of Redis shards besides the primary (head only).
    #[arg(long)]
    num_redis_shards: Option<u16>,
    /// The cluster's secret (the password of its Redis servers).
    #[arg(long)]
    redis_password: Option<String>,
    /// A file holding the cluster's secret.
    #[arg(long)]
    redis_password_file: Option<PathBuf>,
    /// Address other nodes reach this node at.
    #[arg(long)]
    node_ip_address: Option<String>,
    #[command(flatten)]
    #[serde(flatten)]
    resources: ResourceArgs,
    /// Bytes of shared memory for the object store (default: 30% of RAM).
    #[arg(long)]
    object_store_memory: Option<u64>,
    /// Port other nodes pull objects from (0: any free port).
    #[arg(long)]
    object_manager_port: Option<u16>,
    /// Port of the global scheduler, to which raylets spill tasks (head only; 0: any free port).
    #[arg(long)]
    global_scheduler_port: Option<u16>,
    /// Run the web dashboard (head only).
    #[arg(long)]
    #[serde(skip_serializing_if = "rayd_config::switch_off")]
    include_webui: bool,
    /// Address the dashboard listens on (default 127.0.0.1: this machine only).
    #[arg(long)]
    webui_host: Option<String>,
    /// Port of the dashboard (default 8265; a free one when taken).
    #[arg(long)]
    webui_port: Option<u16>,
    /// Port of the raylet's /metrics and /health (Ray's --metrics-export-port; 0: any free port).
    #[arg(long, alias = "metrics-export-port")]
    raylet_metrics_port: Option<u16>,
    #[command(flatten)]
    #[serde(flatten)]
    node: NodeArgs,
    /// Stay in the foreground; stop the daemons on Ctrl-C or when one of them exits.
    #[arg(long)]
    #[serde(skip)]
    block: bool,
}

/// Flags of the subcommands that read a running cluster's GCS.
#[derive(Debug, Args, Serialize)]
struct GcsArgs {
    /// The cluster's primary Redis (default: the node started here, else redis_address).
    #[arg(long, alias = "address")]
    redis_address: Option<String>,
    /// The cluster's secret (the password of its Redis servers).
    #[arg(long)]
    redis_password: Option<String>,
    /// A file holding the cluster's secret.
    #[arg(long)]
    redis_password_file: Option<PathBuf>,
}

#[derive(Debug, Args, Serialize)]
struct StatusArgs {
    #[command(flatten)]
    #[serde(flatten)]
    gcs: GcsArgs,
    /// Print JSON instead of a table.
    #[arg(long)]
    #[serde(skip)]
    json: bool,
    #[command(flatten)]
    #[serde(flatten)]
    node: NodeArgs,
}

#[derive(Debug, Args, Serialize)]
struct TimelineArgs {
    #[command(flatten)]
    #[serde(flatten)]
    gcs: GcsArgs,
    /// The job (hex ID); default: the job whose last event is the latest.
    #[arg(long)]
    #[serde(skip)]
    job: Option<String>,
    /// Where to write the trace (JSON).
    #[arg(short, long, default_value = "timeline.json")]
    #[serde(skip)]
    output: PathBuf,
    #[command(flatten)]
    #[serde(flatten)]
    node: NodeArgs,
}

/// Runs the command line and returns the process's exit code.
pub fn main(cli: Cli) -> ExitCode {
    let config: RaydConfig = match rayd_daemon::startup("rayd", &cli.config, &cli.command) {
        Startup::Run(config) => *config,
        Startup::Exit(code) => return ExitCode::from(u8::try_from(code).unwrap_or(1)),
    };
    // The CLI talks to people: warnings and errors only, on stderr.
    let _ = rayd_daemon::logging::init("rayd", None, log::LevelFilter::Warn);
    let result = match cli.command {
        Command::Start(args) => start::start(&config, &args),
        Command::Stop(_) => stop::stop(&config),
        Command::Status(args) => status::status(&config, args.json),
        Command::Timeline(args) => timeline::timeline(&config, args.job.as_deref(), &args.output),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rayd: {e:#}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_names_a_config_key() {
        for command in ["start", "stop", "status", "timeline"] {
            let cli = Cli::parse_from(["rayd", command]);
            assert_eq!(
                rayd_config::unknown_flag_keys(&cli.command).unwrap(),
                Vec::<String>::new(),
                "rayd {command}"
            );
        }
    }
}
