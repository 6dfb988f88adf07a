//! `rayd stop`: stops what `rayd start` recorded, gently first.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use rayd_common::config::RaydConfig;
use rayd_common::process::signal_pid;

use crate::node_state::{self, Process};

/// Stops `processes` in reverse start order: SIGTERM, up to `grace` to exit, then SIGKILL
/// for the process and its group (the children it started). Returns how many were running.
pub fn stop_processes(processes: &[Process], grace: Duration) -> usize {
    let mut stopped = 0;
    for process in processes.iter().rev() {
        if process.is_running() {
            stopped += 1;
            signal_pid(process.pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while process.is_running() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        // Each daemon leads its own process group (rayd start made it a session leader):
        // whatever of it is left, children included, goes now.
        if let Ok(pgid) = i32::try_from(process.pid) {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
    stopped
}

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
