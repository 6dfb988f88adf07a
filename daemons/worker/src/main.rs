//! `rayd-worker`: started by a raylet, never by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let level = std::env::var("RAYD_WORKER_LOG_LEVEL")
        .ok()
        .and_then(|l| rayd_config::log_level_filter(&l))
        .unwrap_or(log::LevelFilter::Warn);
    let _ = rayd_daemon::logging::init("rayd-worker", None, level);
    match rayd_worker::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
