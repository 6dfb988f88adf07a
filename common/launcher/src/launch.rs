//! Starting a daemon in the background and waiting until it is ready.
//!
//! The daemon gets its own session (it outlives `rayd start` and the terminal), its output
//! goes to a log file, and `NOTIFY_SOCKET` points at a datagram socket of ours: the same
//! `READY=1` that tells systemd a daemon is serving tells us.

use std::fs::OpenOptions;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

use rayd_common::process::{find_rayd_binary, log_tail};

use crate::LaunchError;

/// How long a daemon may take to report READY=1.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The mimalloc option that makes it commit a new arena's memory at once.
const MIMALLOC_EAGER_COMMIT: &str = "MIMALLOC_ARENA_EAGER_COMMIT";

/// Starts the rayd binary `name` with `args`, output appended to `<logs>/<name>.log`, and
/// waits for its READY=1. An `attached` daemon gets SIGTERM when this process exits
/// (`ray.init()`'s node lives as long as its driver).
pub fn launch(
    name: &str,
    args: &[String],
    session: &Path,
    attached: bool,
) -> Result<Child, LaunchError> {
    let binary = find_rayd_binary(name).ok_or_else(|| LaunchError::BinaryNotFound(name.into()))?;
    let log_path = session.join("logs").join(format!("{name}.log"));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(LaunchError::io("open", &log_path))?;
    // A private directory with a short path: socket paths are limited to 107 bytes, and a
    // session directory can be deeper than that allows.
    let notify_dir = tempfile::Builder::new()
        .prefix("rayd-notify-")
        .tempdir()
        .map_err(LaunchError::NotifyDir)?;
    let socket_path = notify_dir.path().join(format!("{name}.sock"));
    let socket = UnixDatagram::bind(&socket_path).map_err(LaunchError::io("bind", &socket_path))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .map_err(LaunchError::io("set a read timeout on", &socket_path))?;

    let mut command = Command::new(&binary);
    if std::env::var_os(MIMALLOC_EAGER_COMMIT).is_none() {
        // mimalloc (the raylet's allocator, and its workers') otherwise commits its first
        // arena whole: 7-8 MiB of resident memory per process at idle.
        command.env(MIMALLOC_EAGER_COMMIT, "0");
    }
    // The daemon's configuration is the file in `args`, resolved from every source: a
    // `RAYD_<KEY>` variable inherited from here would beat the file (and undo a flag).
    for (key, _) in std::env::vars_os() {
        if key.to_str().is_some_and(rayd_config::is_config_env_var) {
            command.env_remove(key);
        }
    }
    command
        .args(args)
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(
            log.try_clone()
                .map_err(LaunchError::io("share", &log_path))?,
        )
        .stderr(log);
    // SAFETY: setsid and prctl are async-signal-safe and the closure allocates nothing.
    unsafe {
        command.pre_exec(move || {
            // Its own session: a Ctrl-C meant for the terminal's job does not reach it.
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if attached && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let spawned = if attached {
        spawn_from_lasting_thread(command)
    } else {
        command.spawn()
    };
    let mut child = spawned.map_err(LaunchError::io("start", &binary))?;

    let deadline = Instant::now() + READY_TIMEOUT;
    let mut buf = [0u8; 4096];
    let result = loop {
        if let Ok(n) = socket.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                break Ok(());
            }
        }
        if let Some(status) = child
            .try_wait()
            .map_err(LaunchError::io("wait for", &binary))?
        {
            break Err(LaunchError::Exited {
                name: name.into(),
                status,
                log: log_tail(&log_path, 10, "\n"),
                path: log_path,
            });
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break Err(LaunchError::NotReady {
                name: name.into(),
                timeout: READY_TIMEOUT,
                log: log_tail(&log_path, 10, "\n"),
                path: log_path,
            });
        }
    };
    drop(notify_dir);
    result.map(|()| child)
}

/// Spawns `command` from a thread that lives as long as this process. A parent-death signal
/// fires when the *thread* that forked the child ends, not its process: `ray.init()` called
/// on a thread that then finished (a thread pool's, say) had its whole node stopped under
/// the still-running driver.
fn spawn_from_lasting_thread(mut command: Command) -> std::io::Result<Child> {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static LAUNCHER: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();
    let launcher = LAUNCHER.get_or_init(|| {
        let (jobs, requests) = mpsc::channel::<Job>();
        // Never joined: the sender above is never dropped, so it ends with the process.
        std::thread::Builder::new()
            .name("rayd-launcher".into())
            .spawn(move || {
                for (mut command, reply) in requests {
                    let _ = reply.send(command.spawn());
                }
            })
            .ok()
            .map(|_| jobs)
    });
    let Some(jobs) = launcher else {
        // No thread to spare: the daemon is tied to this one, as before.
        return command.spawn();
    };
    let (reply, spawned) = mpsc::channel();
    jobs.send((command, reply))
        .map_err(|_| std::io::Error::other("the launcher thread is gone"))?;
    spawned
        .recv()
        .map_err(|_| std::io::Error::other("the launcher thread is gone"))?
}
