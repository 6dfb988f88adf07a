//! The test kit of rayd's integration tests: real binaries in a temp dir, on free ports.
//!
//! - [`TestDir`]: a temp dir per test, kept (and its path printed) when the test fails.
//! - [`free_ports`]: ports nobody listens on, picked by the OS.
//! - [`Daemon`]: a rayd binary started in its own process group with its output captured
//!   in a log file; dropped, it gets SIGTERM, then SIGKILL for the whole group, so no
//!   process outlives a test, even a failing one.
//! - [`wait_for`]: polls a condition until a deadline; tests never sleep to synchronize.
//! - [`redis_cli`]: the operator's view of the GCS.
//!
//! Binaries are found in the cargo target dir (`cargo build --bins` first): Cargo sets
//! `CARGO_BIN_EXE_*` only for a package's own binaries.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
pub use rayd_common::process::process_alive;

/// How long a daemon gets to stop after SIGTERM before its group is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// A temp dir for one test.
#[derive(Debug)]
pub struct TestDir(tempfile::TempDir);

impl TestDir {
    /// Creates a fresh temp dir.
    pub fn new() -> Self {
        Self(
            tempfile::Builder::new()
                .prefix("rayd-test-")
                .tempdir()
                .expect("cannot create a temp dir"),
        )
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

/// `n` distinct TCP ports on 127.0.0.1 that were free a moment ago.
pub fn free_ports(n: usize) -> Vec<u16> {
    // Hold every listener until all are picked, so the OS cannot hand out one twice.
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("listener has an address").port())
        .collect()
}

/// One free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

/// The cargo target dir holding the binaries of this build profile.
pub fn target_dir() -> PathBuf {
    // Test executables live in <target>/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("test executable has a directory");
    deps.parent().expect("deps has a parent").to_path_buf()
}

/// The path of the rayd binary `name` (e.g. `rayd-redis-shard`).
pub fn binary(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` before the integration tests",
        path.display()
    );
    path
}

/// Polls `check` every 10 ms until it returns `Some`, and returns that; panics naming
/// `what` when `timeout` passes first.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A command with the environment of a clean test: no inherited rayd, journald or
/// systemd variables that would change what the binary does.
pub fn clean_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("RAYD_") || key == "JOURNAL_STREAM" || key == "NOTIFY_SOCKET" {
            command.env_remove(key);
        }
    }
    command
}

/// A running rayd binary.
#[derive(Debug)]
pub struct Daemon {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `binary` with `args` and extra `env`, its output going to `<dir>/<name>.log`.
    pub fn start(
        dir: &Path,
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log).expect("cannot create a log file");
        let err = out.try_clone().expect("cannot clone a log file");
        let mut command = clean_command(binary);
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
        Self {
            name: name.to_string(),
            child,
            log,
            status: None,
        }
    }

    /// The process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the daemon wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `text`.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) {
        let what = format!("`{text}` in the log of {}", self.name);
        wait_for(&what, timeout, || {
            if self.log().contains(text) {
                return Some(());
            }
            if let Some(status) = self.try_status() {
                panic!(
                    "{} exited ({status}) before logging `{text}`:\n{}",
                    self.name,
                    self.log()
                );
            }
            None
        });
    }

    /// The exit status, if the process has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("cannot poll a child");
        }
        self.status
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let what = format!("{} to exit", self.name);
        wait_for(&what, timeout, || self.try_status())
    }

    /// Sends `signal` to the daemon only (not its group).
    pub fn signal(&self, signal: Signal) {
        rayd_common::process::signal_pid(self.pid(), signal);
    }

    /// SIGTERM, then SIGKILL for the whole process group after the grace period; returns
    /// the daemon's exit status.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            kill_group(self.pid());
            return status;
        }
        self.signal(Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while self.try_status().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        kill_group(self.pid());
        let status = self.child.wait().expect("cannot wait for a child");
        self.status = Some(status);
        status
    }
}

fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid) {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "---- log of {} ({}) ----\n{}",
                self.name,
                self.log.display(),
                self.log()
            );
        }
    }
}

/// The IDs of the live processes whose parent is `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return children;
    };
    for entry in entries.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace().collect())
            .unwrap_or_default();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid) && process_alive(child) {
            children.push(child);
        }
    }
    children
}

/// The ID of the process listening with `redis-server` on `port` among `pids`, by its
/// command line (`redis-server 127.0.0.1:<port>`).
pub fn redis_pid(pids: &[u32], port: u16) -> Option<u32> {
    let needle = format!(":{port}");
    pids.iter().copied().find(|pid| {
        std::fs::read_to_string(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            c.contains("redis-server") && c.trim_end_matches('\0').ends_with(&needle)
        })
    })
}

/// Runs `redis-cli` against 127.0.0.1:`port` and returns its output, or `None` when it
/// fails or the server does not answer.
pub fn redis_cli(port: u16, password: Option<&str>, args: &[&str]) -> Option<String> {
    let mut command = Command::new("redis-cli");
    command.args(["-h", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(password) = password {
        command.env("REDISCLI_AUTH", password);
    }
    let output = command.args(args).stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout)
        .trim_end()
        .to_string();
    // redis-cli exits 0 on most server errors and prints them instead.
    let failed = ["Could not connect", "ERR", "NOAUTH", "WRONGPASS", "LOADING"]
        .iter()
        .any(|prefix| text.starts_with(prefix));
    (output.status.success() && !failed).then_some(text)
}

/// Waits until the Redis server on `port` answers PING.
pub fn wait_for_redis(port: u16, password: Option<&str>, timeout: Duration) {
    wait_for(&format!("redis on port {port} to answer"), timeout, || {
        (redis_cli(port, password, &["ping"]).as_deref() == Some("PONG")).then_some(())
    });
}

/// A `rayd-redis-shard` on free ports in `dir`, ready (its shard list written).
#[derive(Debug)]
pub struct Gcs {
    pub daemon: Daemon,
    pub port: u16,
    pub shard_ports: Vec<u16>,
    pub password: Option<String>,
}

impl Gcs {
    /// Starts a GCS with `shards` shards and extra flags, and waits until it is ready.
    pub fn start(dir: &Path, shards: usize, extra: &[&str]) -> Self {
        let ports = free_ports(shards + 1);
        let shard_list = ports[1..]
            .iter()
            .map(u16::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let data = dir.join("redis");
        let port = ports[0].to_string();
        let count = shards.to_string();
        let mut args = vec![
            "--redis-port",
            &port,
            "--num-redis-shards",
            &count,
            "--redis-shard-ports",
            &shard_list,
            "--redis-data-dir",
            data.to_str().expect("utf-8 temp dir"),
        ];
        args.extend_from_slice(extra);
        let password = extra
            .iter()
            .position(|a| *a == "--redis-password")
            .and_then(|i| extra.get(i + 1))
            .map(|p| p.to_string());
        let mut daemon = Daemon::start(dir, "redis-shard", &binary("rayd-redis-shard"), &args, &[]);
        daemon.wait_for_log("gcs ready", Duration::from_secs(30));
        Self {
            daemon,
            port: ports[0],
            shard_ports: ports[1..].to_vec(),
            password,
        }
    }

    /// `host:port` of the primary.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// A `rayd-plasma` with its socket in `<dir>/<name>/` and its object manager on a free
/// port, ready (it logged "plasma store ready").
#[derive(Debug)]
pub struct Plasma {
    pub daemon: Daemon,
    pub socket: PathBuf,
    pub object_manager_port: u16,
}

impl Plasma {
    /// Starts a store of `memory` bytes with extra flags, and waits until it serves.
    pub fn start(dir: &Path, name: &str, memory: u64, extra: &[&str]) -> Self {
        let socket = dir.join(name).join("plasma.sock");
        let port = free_port();
        let memory = memory.to_string();
        let port_text = port.to_string();
        let mut args = vec![
            "--plasma-socket",
            socket.to_str().expect("utf-8 temp dir"),
            "--object-manager-port",
            &port_text,
            "--object-store-memory",
            &memory,
        ];
        args.extend_from_slice(extra);
        let mut daemon = Daemon::start(dir, name, &binary("rayd-plasma"), &args, &[]);
        daemon.wait_for_log("plasma store ready", Duration::from_secs(30));
        Self {
            daemon,
            socket,
            object_manager_port: port,
        }
    }

    /// `host:port` of its object manager.
    pub fn object_manager_address(&self) -> String {
        format!("127.0.0.1:{}", self.object_manager_port)
    }
}

/// A `rayd-global-scheduler` of the GCS at `redis_address`, on a port it picks, ready (it
/// logged "global scheduler serving"; its address is in the GCS, `rayd:global_schedulers`).
#[derive(Debug)]
pub struct GlobalScheduler {
    pub daemon: Daemon,
}

impl GlobalScheduler {
    /// Starts one with extra flags, and waits until it serves.
    pub fn start(dir: &Path, name: &str, redis_address: &str, extra: &[&str]) -> Self {
        let mut args = vec![
            "--redis-address",
            redis_address,
            "--node-ip-address",
            "127.0.0.1",
            "--global-scheduler-port",
            "0",
        ];
        args.extend_from_slice(extra);
        let mut daemon = Daemon::start(dir, name, &binary("rayd-global-scheduler"), &args, &[]);
        daemon.wait_for_log("global scheduler serving", Duration::from_secs(30));
        Self { daemon }
    }
}
