//! The `rayd` command: start a head, inspect it, stop it, and refuse bad usage.

use std::process::Output;
use std::time::Duration;

use rayd_integration::{
    binary, clean_command, free_ports, process_alive, redis_cli, wait_for, TestDir,
};

fn rayd(dir: &TestDir, args: &[&str]) -> Output {
    clean_command(&binary("rayd"))
        .args(args)
        .args(["--temp-dir", dir.path().to_str().unwrap_or_default()])
        .output()
        .expect("run rayd")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Stops the node even when an assertion fails, so no daemon outlives the test.
struct Node<'a>(&'a TestDir);

impl Drop for Node<'_> {
    fn drop(&mut self) {
        let _ = rayd(self.0, &["stop"]);
    }
}

#[test]
fn start_status_stop_a_head() {
    let dir = TestDir::new();
    let port = free_ports(3)[1].to_string();
    let started = rayd(
        &dir,
        &[
            "start",
            "--head",
            "--redis-port",
            &port,
            "--num-redis-shards",
            "1",
        ],
    );
    let _node = Node(&dir);
    assert!(started.status.success(), "{}", text(&started));
    assert!(text(&started).contains(&format!(
        "ray.init(redis_address=\"127.0.0.1:{port}\", redis_password=...)"
    )));
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("node.json")).expect("node.json"),
    )
    .expect("json");
    let pid = state["processes"][0]["pid"].as_u64().expect("pid") as u32;
    let secret = std::fs::read_to_string(
        state["redis_password_file"]
            .as_str()
            .expect("the head's secret file"),
    )
    .expect("secret");
    assert!(process_alive(pid));

    let status = rayd(&dir, &["status", "--json"]);
    assert!(status.status.success(), "{}", text(&status));
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status json");
    assert_eq!(report["healthy"], true);
    assert_eq!(report["servers"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        report["nodes"].as_array().map(Vec::len),
        Some(1),
        "the raylet registered its node"
    );
    // The node's plasma reports its store's figures every few seconds.
    let store = wait_for(
        "the object store's figures in rayd status",
        Duration::from_secs(30),
        || {
            let status = rayd(&dir, &["status", "--json"]);
            let report: serde_json::Value = serde_json::from_slice(&status.stdout).ok()?;
            let store = report["nodes"][0]["object_store"].clone();
            (!store.is_null()).then_some(store)
        },
    );
    assert!(
        store["capacity_bytes"].as_u64().is_some_and(|c| c > 0),
        "{store}"
    );
    assert_eq!(store["objects"], 0);
    assert_eq!(report["nodes"][0]["queued_tasks"], 0);
    let table = rayd(&dir, &["status"]);
    assert!(
        text(&table).contains("object store: 0.0 MiB of"),
        "{}",
        text(&table)
    );

    // The head's global scheduler registered itself.
    let schedulers = redis_cli(
        port.parse().expect("port"),
        Some(&secret),
        &["hlen", "rayd:global_schedulers"],
    );
    assert_eq!(schedulers.as_deref(), Some("1"));
    assert_eq!(
        report["global_schedulers"].as_array().map(Vec::len),
        Some(1)
    );
    assert!(
        text(&table).contains("global schedulers (1)"),
        "{}",
        text(&table)
    );

    // Per daemon: the raylet's heartbeat and the store's report, each alive.
    let daemons = report["nodes"][0]["daemons"].as_array().expect("daemons");
    assert_eq!(daemons.len(), 2, "{daemons:?}");
    assert!(daemons.iter().all(|d| d["alive"] == true), "{daemons:?}");
    assert_eq!(report["nodes"][0]["state"], "alive");

    // `rayd status | head`: the pipe closes before the table is written.
    let mut piped = clean_command(&binary("rayd"))
        .args([
            "status",
            "--temp-dir",
            dir.path().to_str().unwrap_or_default(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run rayd status");
    drop(piped.stdout.take());
    let piped = piped.wait_with_output().expect("rayd status");
    assert!(
        matches!(piped.status.code(), Some(0 | 1)),
        "{:?} {}",
        piped.status,
        String::from_utf8_lossy(&piped.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&piped.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&piped.stderr)
    );

    let again = rayd(&dir, &["start", "--head", "--redis-port", &port]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));

    let stopped = rayd(&dir, &["stop"]);
    assert!(stopped.status.success(), "{}", text(&stopped));
    assert!(
        text(&stopped).contains("stopped 4 rayd processes"),
        "{}",
        text(&stopped)
    );
    wait_for("the supervisor to be gone", Duration::from_secs(10), || {
        (!process_alive(pid)).then_some(())
    });
    let port: u16 = port.parse().expect("port");
    assert_eq!(
        redis_cli(port, Some(&secret), &["ping"]),
        None,
        "redis still answers after rayd stop"
    );

    let status = rayd(
        &dir,
        &["status", "--redis-address", &format!("127.0.0.1:{port}")],
    );
    assert_eq!(status.status.code(), Some(1));
    assert!(
        text(&status).contains(&format!("cannot reach the GCS at 127.0.0.1:{port}")),
        "{}",
        text(&status)
    );
}

#[test]
fn bad_usage_is_refused() {
    let dir = TestDir::new();
    let neither = rayd(&dir, &["start"]);
    assert_eq!(neither.status.code(), Some(64));
    assert!(text(&neither).contains("--head"));
    let bad = rayd(&dir, &["start", "--head", "--num-redis-shards", "0"]);
    assert_eq!(bad.status.code(), Some(64));
    assert!(text(&bad).contains("`num_redis_shards`"));
    let stop = rayd(&dir, &["stop"]);
    assert!(stop.status.success());
    assert!(text(&stop).contains("no rayd node was started"));
}

#[test]
fn a_head_that_cannot_start_leaves_nothing_behind() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let started = rayd(&dir, &["start", "--head", "--redis-port", &port]);
    assert_eq!(started.status.code(), Some(1));
    assert!(
        text(&started).contains("already in use"),
        "{}",
        text(&started)
    );
    assert!(!dir.path().join("node.json").exists());
}
