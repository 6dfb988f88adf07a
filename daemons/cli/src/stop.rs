//! `rayd stop`: stops what `rayd start` recorded, gently first.

use std::process::ExitCode;
use std::time::Duration;

use rayd_config::RaydConfig;
use rayd_launcher::node::stop_processes;
use rayd_launcher::node_state;

/// Runs `rayd stop`.
pub fn stop(config: &RaydConfig) -> anyhow::Result<ExitCode> {
    let Some(state) = node_state::read(&config.temp_dir)? else {
        println!(
            "no rayd node was started from {}",
            config.temp_dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    };
    let grace = Duration::from_millis(config.shutdown_grace_ms);
    let stopped = stop_processes(&state.processes, grace);
    node_state::remove(&config.temp_dir)?;
    println!("stopped {stopped} rayd processes");
    Ok(ExitCode::SUCCESS)
}
