//! What rayd's binaries share beyond their configuration: the life of a daemon, for
//! every binary's thin `main` (configuration -> `--check-config` / `--print-config` ->
//! logging -> runtime -> run until done or signalled -> exit code: 0 clean, 64 bad config
//! or usage, 1 failure), the flags every binary takes ([`args`]), [`logging`] (journald or
//! stderr) and [`shutdown`] (signals and `sd_notify`).
//!
//! Binaries only: libraries that the SDK links (`rayd-config`, `rayd-gcs`,
//! `rayd-launcher`, `rayd-plasma-client`) stay free of clap, journald and `sd_notify`.

pub mod args;
pub mod logging;
pub mod shutdown;

use std::future::Future;
use std::process::ExitCode;

use rayd_config::{Overrides, RaydConfig, EXIT_CONFIG};
use serde::Serialize;

use crate::args::ConfigArgs;
use crate::shutdown::Shutdown;

/// Exit code of a daemon that failed at run time.
pub const EXIT_FAILURE: u8 = 1;

/// Why a daemon's run ended, as its exit code says it: a configuration that lacks what
/// this daemon needs exits 64 like an invalid one (systemd's `RestartPreventExitStatus=64`
/// stops restarting it), any other failure 1.
pub trait Failure: std::fmt::Display {
    /// True when restarting cannot help: the configuration must change.
    fn is_config(&self) -> bool {
        false
    }
}

/// The async runtime a daemon runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One event-loop thread: the lowest latency for a daemon whose work is many small
    /// messages (the raylet); blocking work goes to tokio's blocking pool.
    One,
    /// A worker thread per core: for daemons that move bulk data.
    PerCore,
}

/// Runs the daemon `program` whose body is `run`, and returns its exit code.
///
/// `flags` are the binary's flags, which override the configuration keys of their
/// fields' names (see [`args`]). `run` gets the loaded configuration and the shutdown
/// tokens; it returns when the daemon has stopped, with an error if it failed.
pub fn main<F, Fut, E>(
    program: &str,
    args: &ConfigArgs,
    flags: &impl Serialize,
    threads: Threads,
    run: F,
) -> ExitCode
where
    F: FnOnce(RaydConfig, Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Failure,
{
    let config = match startup(program, args, flags) {
        Startup::Run(config) => *config,
        Startup::Exit(code) => return ExitCode::from(u8::try_from(code).unwrap_or(EXIT_FAILURE)),
    };
    // validate() has accepted the level, so the filter exists.
    let level = rayd_config::log_level_filter(&config.log_level).unwrap_or(log::LevelFilter::Info);
    // Before any thread starts: the watchdog's variables are removed from the environment so
    // that children (workers) do not inherit them.
    let watchdog = crate::shutdown::watchdog_interval();
    if let Err(e) = crate::logging::init(program, config.node_id.as_deref(), level) {
        eprintln!("{program}: cannot set up logging: {e}");
        return ExitCode::from(EXIT_FAILURE);
    }
    let mut builder = match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread(),
        Threads::PerCore => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().thread_name(program).build() {
        Ok(runtime) => runtime,
        Err(e) => {
            log::error!("cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async move {
        let shutdown = match Shutdown::install() {
            Ok(shutdown) => shutdown,
            Err(e) => {
                log::error!("cannot install signal handlers: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let forced = shutdown.forced.clone();
        if let Some(interval) = watchdog {
            tokio::spawn(crate::shutdown::ping_watchdog(interval));
        }
        tokio::select! {
            result = run(config, shutdown) => match result {
                Ok(()) => {
                    log::info!("stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    log::error!("{e}");
                    ExitCode::from(if e.is_config() {
                        u8::try_from(EXIT_CONFIG).unwrap_or(EXIT_FAILURE)
                    } else {
                        EXIT_FAILURE
                    })
                }
            },
            _ = forced.cancelled() => ExitCode::from(130),
        }
    })
}

/// What a binary does after loading its configuration.
#[derive(Debug)]
pub enum Startup {
    /// Run with this configuration.
    Run(Box<RaydConfig>),
    /// Exit now with this code (`--check-config`, `--print-config`, or an invalid config,
    /// already reported on stderr).
    Exit(i32),
}

/// Loads the configuration for the binary `program`, with its `flags` as the strongest
/// source, and handles `--check-config` and `--print-config`; reports an invalid
/// configuration on stderr.
pub fn startup(program: &str, args: &ConfigArgs, flags: &impl Serialize) -> Startup {
    let loaded = Overrides::from_flags(flags)
        .and_then(|overrides| rayd_config::load_for_process(args.config.as_deref(), &overrides));
    match loaded {
        Err(e) => {
            eprintln!("{program}: invalid configuration: {e}");
            Startup::Exit(EXIT_CONFIG)
        }
        Ok(config) if args.print_config => {
            print!("{}", config.to_toml());
            Startup::Exit(0)
        }
        Ok(_) if args.check_config => {
            println!("configuration ok");
            Startup::Exit(0)
        }
        Ok(config) => Startup::Run(Box::new(config)),
    }
}
