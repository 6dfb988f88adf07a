//! One supervised `redis-server`: its directory and config file, its process, and the
//! PING that tells whether it is serving.

use std::fmt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use rayd_common::process::{set_parent_death_signal, terminate};
use rayd_config::RaydConfig;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::ShardError;

/// How long one PING may take before the server counts as not answering.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// Pause between PINGs while waiting for a server to come up.
const READY_POLL: Duration = Duration::from_millis(10);

/// What a server is in the GCS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Shard(usize),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Primary => f.write_str("primary"),
            Role::Shard(i) => write!(f, "shard {i}"),
        }
    }
}

/// One redis-server and what is needed to (re)start it.
#[derive(Debug)]
pub struct RedisServer {
    pub role: Role,
    pub port: u16,
    /// `host:port` that clients use (and that the shard list advertises).
    pub address: String,
    password: Option<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Describes the server of `role` on `port`; nothing starts yet.
    pub fn new(role: Role, port: u16, config: &RaydConfig) -> Self {
        Self {
            role,
            port,
            address: format!("{}:{port}", config.node_ip_address),
            password: config.redis_password.clone(),
            dir: config.redis_data_dir().join(port.to_string()),
            child: None,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("redis.conf")
    }

    /// Creates the server's directory (mode 0700) and config file (mode 0600: it may hold
    /// the password).
    pub fn write_config(&self, config: &RaydConfig) -> Result<(), ShardError> {
        let io = |what: &str| {
            let what = format!("{what} {}", self.dir.display());
            move |source| ShardError::Io { what, source }
        };
        std::fs::create_dir_all(&self.dir).map_err(io("cannot create"))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io("cannot restrict"))?;
        let ip = &config.node_ip_address;
        let bind = if ip.starts_with("127.") || ip == "::1" {
            ip.clone()
        } else {
            format!("{ip} 127.0.0.1")
        };
        let mut text = format!(
            "# written by rayd-redis-shard for the {role}; rewritten at every start\n\
             port {port}\nbind {bind}\nprotected-mode yes\ndaemonize no\n\
             dir {dir}\nlogfile {log}\nsave \"\"\n",
            role = self.role,
            port = self.port,
            dir = self.dir.display(),
            log = self.log_path().display(),
        );
        if config.redis_persistence {
            text.push_str(&format!(
                "appendonly yes\nappendfsync {}\n",
                config.redis_appendfsync
            ));
        } else {
            text.push_str("appendonly no\n");
        }
        if let Some(max) = config.redis_max_clients {
            text.push_str(&format!("maxclients {max}\n"));
        }
        if let Some(password) = &config.redis_password {
            text.push_str(&format!("requirepass {password}\n"));
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(self.config_path())
            .map_err(io("cannot write the config file in"))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .map_err(io("cannot write the config file in"))
    }

    /// Starts the process and waits until it answers PING.
    pub async fn start(&mut self, binary: &Path, timeout: Duration) -> Result<(), ShardError> {
        let mut command = Command::new(binary);
        command
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        // Redis flushes its append-only file on SIGTERM: the gentlest end if we die.
        set_parent_death_signal(&mut command, Signal::SIGTERM);
        let child = command.spawn().map_err(|source| ShardError::Io {
            what: format!("cannot start {} for the {}", binary.display(), self.role),
            source,
        })?;
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(ShardError::Start {
                        role: self.role,
                        port: self.port,
                        reason: format!("redis-server exited ({status}): {}", self.log_tail()),
                    });
                }
            }
            if self.ping().await {
                log::info!(role:% = self.role, address = self.address.as_str(), pid = self.pid().unwrap_or(0); "redis server ready");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                self.stop(Duration::ZERO).await;
                return Err(ShardError::Start {
                    role: self.role,
                    port: self.port,
                    reason: format!("no answer to PING within {timeout:?}: {}", self.log_tail()),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        }
    }

    /// The last lines of the server's log, for error messages.
    fn log_tail(&self) -> String {
        rayd_common::process::log_tail(&self.log_path(), 3, " | ")
    }

    /// The process ID, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Waits until the process exits (forever if none runs) and returns how it ended.
    pub async fn exited(&mut self) -> String {
        match self.child.as_mut() {
            Some(child) => {
                let status = child.wait().await;
                self.child = None;
                match status {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("cannot wait for it: {e}"),
                }
            }
            None => std::future::pending().await,
        }
    }

    /// Kills the process at once (a server that stopped answering).
    pub fn kill(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            if let Err(e) = terminate(&mut child, grace).await {
                log::warn!(role:% = self.role; "cannot stop redis-server: {e}");
            }
        }
    }

    /// Whether the server answers PING (after AUTH when a password is set).
    pub async fn ping(&self) -> bool {
        tokio::time::timeout(PING_TIMEOUT, ping(&self.address, self.password.as_deref()))
            .await
            .unwrap_or(false)
    }
}

/// Sends PING (after AUTH when `password` is set) in the Redis protocol.
async fn ping(address: &str, password: Option<&str>) -> bool {
    let Ok(stream) = TcpStream::connect(address).await else {
        return false;
    };
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    if let Some(password) = password {
        let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
        if write.write_all(auth.as_bytes()).await.is_err()
            || !matches!(lines.next_line().await, Ok(Some(l)) if l == "+OK")
        {
            return false;
        }
    }
    if write.write_all(b"*1\r\n$4\r\nPING\r\n").await.is_err() {
        return false;
    }
    matches!(lines.next_line().await, Ok(Some(l)) if l == "+PONG")
}
