//! Each daemon's `/health` and `/metrics`, scraped from the real binaries while they work:
//! the Redis supervisor counts the restarts of a killed server and says why it is not
//! healthy while one does not answer; the global scheduler counts the nodes it sees;
//! plasma counts the objects put into it. (The raylet's task counters are scraped under
//! a Python workload: sdk/python/tests/test_metrics.py.)

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::Duration;

use nix::sys::signal::Signal;
use rayd_common::id::{NodeId, ObjectId};
use rayd_common::process::signal_pid;
use rayd_gcs::{GcsClient, Heartbeat, NodeInfo};
use rayd_integration::{
    children_of, free_port, redis_cli, redis_pid, wait_for, Gcs, GlobalScheduler, Plasma, TestDir,
};
use rayd_plasma_client::PlasmaClient;

const TIMEOUT: Duration = Duration::from_secs(15);

/// The status and body of `GET http://address/path`.
fn get(address: &str, path: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the listener");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut reply = String::new();
    stream.read_to_string(&mut reply).expect("read the reply");
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("an HTTP status line");
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    (status, body.to_string())
}

/// The samples of `/metrics`: `name{labels}` -> value.
fn scrape(address: &str) -> BTreeMap<String, f64> {
    let (status, body) = get(address, "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// Where `daemon` serves its metrics, as it recorded in the GCS (`rayd:metrics`).
fn endpoint(gcs: &Gcs, daemon: &str) -> String {
    wait_for(&format!("{daemon} in rayd:metrics"), TIMEOUT, || {
        let fields = redis_cli(gcs.port, None, &["hgetall", "rayd:metrics"])?;
        let lines: Vec<&str> = fields.lines().collect();
        lines.chunks(2).find_map(|pair| match pair {
            [field, port] => field
                .strip_prefix(&format!("{daemon}@"))
                .map(|ip| format!("{ip}:{port}")),
            _ => None,
        })
    })
}

#[test]
fn the_redis_supervisor_counts_restarts_and_says_why_it_is_not_healthy() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 2, &[]);
    let address = endpoint(&gcs, "rayd-redis-shard");
    assert_eq!(get(&address, "/health"), (200, "ok\n".into()));
    let before = scrape(&address);
    assert_eq!(before["rayd_redis_shard_up{server=\"shard 1\"}"], 1.0);
    assert!(!before.contains_key("rayd_redis_shard_restarts_total{server=\"shard 1\"}"));

    let port = gcs.shard_ports[1];
    let old = redis_pid(&children_of(gcs.daemon.pid()), port).expect("the shard's redis-server");
    signal_pid(old, Signal::SIGKILL);
    wait_for("one restart of shard 1", TIMEOUT, || {
        let samples = scrape(&address);
        (samples.get("rayd_redis_shard_restarts_total{server=\"shard 1\"}") == Some(&1.0))
            .then_some(())
    });
    wait_for("health back", TIMEOUT, || {
        (get(&address, "/health").0 == 200).then_some(())
    });

    // A server that stops answering: 503, naming it, until it answers again.
    let frozen = redis_pid(&children_of(gcs.daemon.pid()), gcs.shard_ports[0])
        .expect("shard 0's redis-server");
    signal_pid(frozen, Signal::SIGSTOP);
    let (status, body) = wait_for("an unhealthy supervisor", TIMEOUT, || {
        let reply = get(&address, "/health");
        (reply.0 != 200).then_some(reply)
    });
    let up = scrape(&address)
        .get("rayd_redis_shard_up{server=\"shard 0\"}")
        .copied();
    signal_pid(frozen, Signal::SIGCONT);
    assert_eq!(status, 503);
    assert!(
        body.starts_with("not serving: redis shard 0 missed"),
        "{body}"
    );
    assert_eq!(up, Some(0.0));
    wait_for("health back after the freeze", TIMEOUT, || {
        (get(&address, "/health").0 == 200).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_scheduler_counts_the_nodes_it_sees() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 1, &[]);
    let _scheduler = GlobalScheduler::start(dir.path(), "gs", &gcs.address(), &[]);
    let address = endpoint(&gcs, "rayd-global-scheduler");
    assert_eq!(get(&address, "/health").0, 200);
    let samples = scrape(&address);
    assert_eq!(samples["rayd_global_scheduler_live_nodes"], 0.0);
    assert_eq!(samples["rayd_global_scheduler_spills_received_total"], 0.0);

    let client = GcsClient::connect(&gcs.address(), None).await.unwrap();
    let resources = BTreeMap::from([("CPU".to_string(), 2.0)]);
    for _ in 0..2 {
        let node = NodeInfo {
            node_id: NodeId::random(),
            node_ip_address: "127.0.0.1".into(),
            raylet_socket: String::new(),
            plasma_socket: String::new(),
            object_manager_address: "127.0.0.1:1".into(),
            node_manager_address: "127.0.0.1:1".into(),
            resources_total: resources.clone(),
            resources_available: resources.clone(),
            alive: true,
            last_heartbeat_ms: 0,
            queued_tasks: 0,
            running_tasks: 0,
            store: None,
        };
        client.register_node(&node).await.unwrap();
        let beat = Heartbeat {
            node_id: node.node_id.hex(),
            resources_available: resources.clone(),
            queue_length: 0,
            running: 0,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64,
        };
        client.heartbeat(&beat).await.unwrap();
    }
    let address = address.clone();
    tokio::task::spawn_blocking(move || {
        wait_for("two live nodes", TIMEOUT, || {
            (scrape(&address)["rayd_global_scheduler_live_nodes"] == 2.0).then_some(())
        })
    })
    .await
    .unwrap();
    client.quit().await;
}

#[test]
fn plasma_counts_the_objects_and_bytes_put_into_it() {
    let dir = TestDir::new();
    // The store has no GCS here to record its port in: the port is configured.
    let port = free_port();
    let config = dir.path().join("rayd.toml");
    std::fs::write(&config, format!("plasma_metrics_port = {port}\n")).expect("write the config");
    let plasma = Plasma::start(
        dir.path(),
        "plasma",
        64 << 20,
        &["--config", config.to_str().expect("utf-8 temp dir")],
    );
    let address = format!("127.0.0.1:{port}");
    assert_eq!(get(&address, "/health").0, 200);
    let before = scrape(&address);
    assert_eq!(before["rayd_plasma_objects"], 0.0);
    let client = PlasmaClient::connect(&plasma.socket, "test").expect("connect to plasma");
    for _ in 0..3 {
        drop(
            client
                .put(ObjectId::random(), &vec![7u8; 1 << 20], b"")
                .expect("put"),
        );
    }
    let after = scrape(&address);
    assert_eq!(after["rayd_plasma_objects"], 3.0);
    assert!(
        after["rayd_plasma_used_bytes"] >= f64::from(3u32 << 20),
        "{after:?}"
    );
    assert_eq!(after["rayd_plasma_capacity_bytes"], f64::from(64u32 << 20));
    assert_eq!(after["rayd_plasma_pulls_total"], 0.0);
}
