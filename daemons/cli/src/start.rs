//! `rayd start`: launch this machine's daemons, as `ray start` does.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use rayd_config::{RaydConfig, EXIT_CONFIG};
use rayd_gcs::GcsClient;
use rayd_launcher::node::{start_node, StartedNode};
use rayd_launcher::node_state::{self, NodeState};

use crate::StartArgs;

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

/// Where the cluster's dashboard serves, as it recorded in the GCS.
fn webui_url(address: &str, password: Option<&str>) -> anyhow::Result<Option<String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let gcs = GcsClient::connect(address, password).await?;
        let url = gcs.webui_url().await?;
        gcs.quit().await;
        Ok(url)
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

    if !args.head {
        let address = config.redis_address.clone().unwrap_or_default();
        let shards = check_head(&address, config.redis_password.as_deref())?;
        println!("the head's GCS at {address} answers ({shards} shards)");
    }
    let mut node = start_node(config, args.head, false)?;
    let redis_address = node.redis_address.clone();
    let session = node.session_dir.clone();
    let state = NodeState {
        session_dir: session.clone(),
        redis_address: redis_address.clone(),
        head: args.head,
        redis_password_file: node.password_file.clone(),
        processes: node.processes.clone(),
    };
    if let Err(e) = node_state::write(temp_dir, &state) {
        node.stop();
        return Err(e.into());
    }

    let role = if args.head { "head" } else { "worker" };
    println!("started a rayd {role} node; the cluster's GCS is at {redis_address}");
    if let Some(name) = args
        .node_ip_address
        .as_deref()
        .filter(|n| *n != config.node_ip_address)
    {
        println!(
            "this node's address: {} (resolved from {name})",
            config.node_ip_address
        );
    }
    for process in &state.processes {
        println!("  {:<22} pid {}", process.name, process.pid);
    }
    println!("attach a driver:  ray.init(address=\"auto\") on this machine, elsewhere ray.init(redis_address=\"{redis_address}\", redis_password=...)");
    if let Some(file) = &node.password_file {
        println!(
            "cluster secret:   {} (mode 0600; drivers and nodes need it)",
            file.display()
        );
    }
    if args.head {
        let secret = node
            .password_file
            .as_ref()
            .map(|f| format!(" --redis-password-file <a copy of {}>", f.display()))
            .unwrap_or_default();
        println!("join another node: rayd start --redis-address {redis_address}{secret}");
    }
    if args.head && config.include_webui {
        match webui_url(&redis_address, config.redis_password.as_deref()) {
            Ok(Some(url)) => println!("dashboard:        {url}"),
            Ok(None) => eprintln!("rayd: the dashboard recorded no URL in the GCS"),
            Err(e) => eprintln!("rayd: cannot read the dashboard's URL: {e:#}"),
        }
    }
    println!("logs:             {}", session.join("logs").display());
    println!("stop:             rayd stop{}", temp_dir_flag(config));
    if args.block {
        return block(config, &state, node);
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
    mut node: StartedNode,
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
                    for (child, process) in node.children().iter_mut().zip(&state.processes) {
                        if let Some(status) = child.try_wait()? {
                            return Ok(Some(format!("{} exited ({status})", process.name)));
                        }
                    }
                }
            }
        }
    })?;
    node.stop();
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
