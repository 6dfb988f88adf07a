//! Child processes that rayd supervises: redis-server under `rayd-redis-shard`, daemons
//! under `rayd start` and `ray.init()`, workers under the raylet.
//!
//! Children get a parent-death signal (Linux `PR_SET_PDEATHSIG`), so a supervisor killed
//! with SIGKILL does not leave them running. Stopping is SIGTERM, a grace period, then
//! SIGKILL. The async helpers (for tokio's `Command` and `Child`) come with the `tokio`
//! feature.

use std::path::{Path, PathBuf};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[cfg(feature = "tokio")]
pub use self::tokio_children::{set_parent_death_signal, terminate};

#[cfg(feature = "tokio")]
mod tokio_children {
    use std::process::ExitStatus;
    use std::time::Duration;

    use nix::sys::signal::Signal;
    use tokio::process::{Child, Command};

    use super::signal_pid;

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
}

/// Sends `signal` to the process `pid`, ignoring a process that is already gone.
pub fn signal_pid(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(pid), signal);
    }
}

/// Finds the executable `name`: as given when it is a path, else in `PATH`.
pub fn find_executable(name: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let is_executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if name.components().count() > 1 {
        return is_executable(name).then(|| name.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// Finds the rayd binary `name`: in `RAYD_BIN_DIR` when set (the Python SDK points it at
/// its environment's `bin/`), else next to the running executable (an installed suite or
/// a cargo target dir), else in `PATH`.
pub fn find_rayd_binary(name: &str) -> Option<PathBuf> {
    let in_dir = |dir: PathBuf| find_executable(&dir.join(name));
    std::env::var_os("RAYD_BIN_DIR")
        .and_then(|dir| in_dir(PathBuf::from(dir)))
        .or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf))
                .and_then(in_dir)
        })
        .or_else(|| find_executable(Path::new(name)))
}

/// Whether the process `pid` exists and has not exited (a zombie counts as exited).
pub fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses and may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// The name of the executable of process `pid` (the file name of `argv[0]`).
pub fn process_name(pid: u32) -> Option<String> {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let argv0 = cmdline.split(|b| *b == 0).next()?;
    let name = Path::new(std::str::from_utf8(argv0).ok()?).file_name()?;
    Some(name.to_string_lossy().into_owned())
}

/// The last `n` non-empty lines of a log file, joined by `separator` ("no log" when
/// there are none): what a launcher or supervisor quotes when a process failed to start.
pub fn log_tail(path: &Path, n: usize, separator: &str) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(n)..].join(separator);
    if tail.is_empty() {
        "no log".into()
    } else {
        tail
    }
}
