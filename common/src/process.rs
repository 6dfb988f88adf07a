//! Child processes that rayd supervises: redis-server under `rayd-redis-shard`, daemons
//! under `rayd start` and `ray.init()`, workers under the raylet.
//!
//! Children get a parent-death signal (Linux `PR_SET_PDEATHSIG`), so a supervisor killed
//! with SIGKILL does not leave them running. Stopping is SIGTERM, a grace period, then
//! SIGKILL.

use std::process::ExitStatus;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Makes `command`'s child receive `signal` when the thread that spawned it exits.
///
/// The signal is tied to the spawning *thread*; spawn from a long-lived thread (a tokio
/// worker, or the main thread), not from a short-lived blocking-pool thread.
pub fn set_parent_death_signal(command: &mut Command, signal: Signal) {
    let signal = signal as libc::c_int;
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid, raise), allocating nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl; then nobody would signal us.
            if libc::getppid() == 1 {
                libc::raise(signal);
            }
            Ok(())
        });
    }
}

/// Sends `signal` to the process `pid`, ignoring a process that is already gone.
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Stops `child`: SIGTERM, then SIGKILL if it has not exited after `grace`.
pub async fn terminate(child: &mut Child, grace: Duration) -> std::io::Result<ExitStatus> {
    if let Some(status) = child.try_wait()? {
        return Ok(status);
    }
    if let Some(pid) = child.id() {
        signal_pid(pid, Signal::SIGTERM);
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            if let Some(pid) = child.id() {
                log::warn!(pid; "process ignored SIGTERM for {grace:?}; killing it");
            }
            child.start_kill()?;
            child.wait().await
        }
    }
}
