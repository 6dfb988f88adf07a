//! `rayd start`: launch this machine's daemons, as `ray start` does.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rayd_common::config::{RaydConfig, EXIT_CONFIG};
use rayd_common::gcs::GcsClient;

use crate::node_state::{self, NodeState, Process};
use crate::stop::stop_processes;
use crate::StartArgs;

/// The daemons of a head node, in start order.
const HEAD_DAEMONS: &[&str] = &["rayd-redis-shard"];
/// The daemons of a node that joins a head, in start order.
const WORKER_DAEMONS: &[&str] = &[];

/// Creates `<temp_dir>/session_<unix time>_<pid>/logs` and points `session_latest` at it.
fn new_session(temp_dir: &Path) -> anyhow::Result<PathBuf> {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let session = temp_dir.join(format!("session_{secs}_{}", std::process::id()));
    std::fs::create_dir_all(session.join("logs"))
        .with_context(|| format!("cannot create {}", session.display()))?;
    let latest = temp_dir.join("session_latest");
    let _ = std::fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(&session, &latest);
    Ok(session)
}

/// Writes the effective configuration for the daemons (mode 0600: it may hold the
/// password), so that each reads exactly what `rayd start` resolved.
fn write_session_config(session: &Path, config: &RaydConfig) -> anyhow::Result<PathBuf> {
    let path = session.join("rayd.toml");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, config.to_toml().as_bytes())?;
    Ok(path)
}

/// Checks that the head at `address` answers and is a rayd GCS.
fn check_head(address: &str, password: Option<&str>) -> anyhow::Result<usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let gcs = tokio::time::timeout(
            Duration::from_secs(10),
            GcsClient::connect(address, password),
        )
        .await
        .with_context(|| format!("the GCS at {address} did not answer within 10 s"))??;
        let shards = gcs.shard_addresses().len();
        gcs.quit().await;
        Ok(shards)
    })
}

/// Runs `rayd start`.
pub fn start(config: &RaydConfig, args: &StartArgs) -> anyhow::Result<ExitCode> {
    if !args.head && config.redis_address.is_none() {
        eprintln!("rayd start: give --head to start a head node, or --redis-address host:port to join one");
        return Ok(ExitCode::from(u8::try_from(EXIT_CONFIG).unwrap_or(1)));
    }
    let temp_dir = &config.temp_dir;
    std::fs::create_dir_all(temp_dir)
        .with_context(|| format!("cannot create {}", temp_dir.display()))?;
    if let Some(state) = node_state::read(temp_dir)? {
        let running: Vec<String> = state
            .processes
            .iter()
            .filter(|p| p.is_running())
            .map(|p| format!("{} (pid {})", p.name, p.pid))
            .collect();
        if !running.is_empty() {
            bail!(
                "a rayd node started from {} is already running: {}; run `rayd stop` first",
                temp_dir.display(),
                running.join(", ")
            );
        }
    }

    let (redis_address, daemons) = if args.head {
        (
            format!("{}:{}", config.node_ip_address, config.redis_port),
            HEAD_DAEMONS,
        )
    } else {
        let address = config.redis_address.clone().unwrap_or_default();
        let shards = check_head(&address, config.redis_password.as_deref())?;
        println!("the head's GCS at {address} answers ({shards} shards)");
        (address, WORKER_DAEMONS)
    };
    let mut config = config.clone();
    config.redis_address = Some(redis_address.clone());
    let session = new_session(temp_dir)?;
    let config_path = write_session_config(&session, &config)?;
    let config_arg = config_path.display().to_string();

    let mut state = NodeState {
        session_dir: session.clone(),
        redis_address: redis_address.clone(),
        head: args.head,
        processes: Vec::new(),
    };
    let mut children: Vec<Child> = Vec::new();
    for name in daemons {
        match crate::launch::launch(
            name,
            &["--config".to_string(), config_arg.clone()],
            &session,
        ) {
            Ok(child) => {
                state.processes.push(Process {
                    name: (*name).to_string(),
                    pid: child.id(),
                });
                // Record as we go so that `rayd stop` finds a half-started node.
                node_state::write(temp_dir, &state)?;
                children.push(child);
            }
            Err(e) => {
                stop_processes(
                    &state.processes,
                    Duration::from_millis(config.shutdown_grace_ms),
                );
                node_state::remove(temp_dir)?;
                return Err(e);
            }
        }
    }
    node_state::write(temp_dir, &state)?;

    let role = if args.head { "head" } else { "worker" };
    println!("started a rayd {role} node; the cluster's GCS is at {redis_address}");
    for process in &state.processes {
        println!("  {:<20} pid {}", process.name, process.pid);
    }
    println!("attach a driver:  ray.init(redis_address=\"{redis_address}\")");
    if args.head {
        println!("join another node: rayd start --redis-address {redis_address}");
    }
    println!("logs:             {}", session.join("logs").display());
    println!("stop:             rayd stop{}", temp_dir_flag(&config));
    if args.block {
        return block(&config, &state, children);
    }
    Ok(ExitCode::SUCCESS)
}

fn temp_dir_flag(config: &RaydConfig) -> String {
    if config.temp_dir == RaydConfig::default().temp_dir {
        String::new()
    } else {
        format!(" --temp-dir {}", config.temp_dir.display())
    }
}

/// Stays in the foreground until a signal or a daemon's exit, then stops the node.
fn block(
    config: &RaydConfig,
    state: &NodeState,
    mut children: Vec<Child>,
) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let exited = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut poll = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return anyhow::Ok(None),
                _ = term.recv() => return Ok(None),
                _ = poll.tick() => {
                    for (child, process) in children.iter_mut().zip(&state.processes) {
                        if let Some(status) = child.try_wait()? {
                            return Ok(Some(format!("{} exited ({status})", process.name)));
                        }
                    }
                }
            }
        }
    })?;
    stop_processes(
        &state.processes,
        Duration::from_millis(config.shutdown_grace_ms),
    );
    for child in &mut children {
        let _ = child.wait();
    }
    node_state::remove(&config.temp_dir)?;
    match exited {
        None => {
            println!("stopped the rayd node");
            Ok(ExitCode::SUCCESS)
        }
        Some(why) => {
            eprintln!("rayd: {why}; stopped the rest of the node");
            Ok(ExitCode::from(1))
        }
    }
}
