//! `rayd-worker`: started by a raylet, never by hand.

use std::process::ExitCode;

fn main() -> ExitCode {
    let level = std::env::var("RAYD_WORKER_LOG_LEVEL")
        .ok()
        .and_then(|l| rayd_config::log_level_filter(&l))
        .unwrap_or(log::LevelFilter::Warn);
    // The raylet names its node, so that every journal entry carries RAYD_NODE_ID.
    let node_id = std::env::var("RAYD_NODE_ID").ok();
    let _ = rayd_daemon::logging::init("rayd-worker", node_id.as_deref(), level);
    match rayd_worker::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
