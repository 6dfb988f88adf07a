//! rayd-redis-shard with real redis-server processes: supervision, persistence, shutdown
//! and bad input.

use std::time::Duration;

use nix::sys::signal::Signal;
use rayd_integration::{
    binary, children_of, free_port, process_alive, redis_cli, redis_pid, wait_for, wait_for_redis,
    Daemon, Gcs, TestDir,
};

const SHORT: Duration = Duration::from_secs(2);
const LONG: Duration = Duration::from_secs(30);

fn shard_list(gcs: &Gcs) -> String {
    redis_cli(
        gcs.port,
        gcs.password.as_deref(),
        &["lrange", "rayd:shards", "0", "-1"],
    )
    .unwrap_or_default()
}

#[test]
fn writes_the_shard_list_and_cluster_metadata() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 2, &[]);
    let expected: Vec<String> = gcs
        .shard_ports
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    assert_eq!(shard_list(&gcs), expected.join("\n"));
    let shards = redis_cli(
        gcs.port,
        None,
        &["hget", "rayd:cluster", "num_redis_shards"],
    );
    assert_eq!(shards.as_deref(), Some("2"));
    for port in &gcs.shard_ports {
        assert_eq!(redis_cli(*port, None, &["ping"]).as_deref(), Some("PONG"));
    }
}

#[test]
fn a_killed_shard_or_primary_is_restarted_and_the_shard_list_kept() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 2, &[]);
    let before = shard_list(&gcs);
    for port in [gcs.shard_ports[1], gcs.port] {
        let children = children_of(gcs.daemon.pid());
        let old = redis_pid(&children, port).expect("a redis-server child on the port");
        rayd_common::process::signal_pid(old, Signal::SIGKILL);
        let new = wait_for("a new redis-server process", SHORT, || {
            redis_pid(&children_of(gcs.daemon.pid()), port).filter(|pid| *pid != old)
        });
        assert_ne!(new, old);
        wait_for_redis(port, None, SHORT);
        wait_for("the shard list back in the primary", SHORT, || {
            (shard_list(&gcs) == before).then_some(())
        });
    }
    assert!(gcs.daemon.log().contains("redis server restarted"));
}

#[test]
fn with_persistence_data_survives_a_kill() {
    let dir = TestDir::new();
    let gcs = Gcs::start(
        dir.path(),
        1,
        &["--redis-persistence", "--config", &always_fsync(&dir)],
    );
    let shard = gcs.shard_ports[0];
    assert_eq!(
        redis_cli(shard, None, &["set", "rayd:test:key", "kept"]).as_deref(),
        Some("OK")
    );
    let old = redis_pid(&children_of(gcs.daemon.pid()), shard).expect("shard process");
    rayd_common::process::signal_pid(old, Signal::SIGKILL);
    wait_for("the shard to be restarted", SHORT, || {
        redis_pid(&children_of(gcs.daemon.pid()), shard).filter(|pid| *pid != old)
    });
    wait_for_redis(shard, None, SHORT);
    assert_eq!(
        redis_cli(shard, None, &["get", "rayd:test:key"]).as_deref(),
        Some("kept")
    );
}

fn always_fsync(dir: &TestDir) -> String {
    let path = dir.path().join("fsync.toml");
    std::fs::write(&path, "redis_appendfsync = \"always\"\n").expect("write config");
    path.display().to_string()
}

#[test]
fn sigterm_stops_every_redis_server() {
    let dir = TestDir::new();
    let mut gcs = Gcs::start(dir.path(), 2, &[]);
    let children = children_of(gcs.daemon.pid());
    assert_eq!(children.len(), 3, "primary and two shards");
    let status = gcs.daemon.stop();
    assert!(status.success(), "clean exit, got {status}");
    for pid in children {
        assert!(
            !process_alive(pid),
            "redis-server {pid} outlived its supervisor"
        );
    }
}

#[test]
fn a_password_is_required_by_every_server() {
    let dir = TestDir::new();
    let gcs = Gcs::start(dir.path(), 1, &["--redis-password", "s3cret-pw"]);
    for port in [gcs.port, gcs.shard_ports[0]] {
        assert_eq!(
            redis_cli(port, None, &["get", "x"]),
            None,
            "no password, no access"
        );
        assert_eq!(
            redis_cli(port, Some("s3cret-pw"), &["ping"]).as_deref(),
            Some("PONG")
        );
    }
    let config = std::fs::read_to_string(
        dir.path()
            .join("redis")
            .join(gcs.port.to_string())
            .join("redis.conf"),
    )
    .expect("config file");
    assert!(config.contains("requirepass s3cret-pw"));
    let logged = gcs.daemon.log();
    assert!(
        !logged.contains("s3cret-pw"),
        "the password leaked into the log"
    );
}

fn start_failing(dir: &TestDir, args: &[&str]) -> (i32, String) {
    let mut daemon = Daemon::start(
        dir.path(),
        "redis-shard",
        &binary("rayd-redis-shard"),
        args,
        &[],
    );
    let status = daemon.wait_exit(LONG);
    (status.code().unwrap_or(-1), daemon.log())
}

#[test]
fn a_missing_redis_server_binary_is_named() {
    let dir = TestDir::new();
    let port = free_port().to_string();
    let mut daemon = Daemon::start(
        dir.path(),
        "redis-shard-missing",
        &binary("rayd-redis-shard"),
        &["--redis-port", &port],
        &[
            ("RAYD_REDIS_SERVER_PATH", "/nonexistent/redis-server"),
            ("RAYD_TEMP_DIR", dir.path().to_str().unwrap_or_default()),
        ],
    );
    let status = daemon.wait_exit(LONG);
    // A configuration to fix (redis_server_path), not a failure to retry: exit 64, which
    // the unit's RestartPreventExitStatus= does not restart.
    assert_eq!(status.code(), Some(64));
    assert!(
        daemon
            .log()
            .contains("redis-server executable `/nonexistent/redis-server` not found"),
        "{}",
        daemon.log()
    );
}

#[test]
fn a_port_in_use_is_named() {
    let dir = TestDir::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("address").port().to_string();
    let data = dir.path().join("redis");
    let (code, log) = start_failing(
        &dir,
        &[
            "--redis-port",
            &port,
            "--redis-data-dir",
            data.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(code, 1);
    assert!(
        log.contains(&format!(
            "port {port} on 127.0.0.1 for the redis primary is already in use"
        )),
        "{log}"
    );
}

#[test]
fn a_busy_port_next_to_the_primary_is_skipped_for_a_shard() {
    let dir = TestDir::new();
    // A free primary port whose next port we can hold, so the default shard port is busy.
    let (port, _taken) = wait_for("a free port with a bindable neighbour", LONG, || {
        let port = free_port();
        let next = port.checked_add(1)?;
        std::net::TcpListener::bind(("127.0.0.1", next))
            .ok()
            .map(|l| (port, l))
    });
    let data = dir.path().join("redis");
    let port_arg = port.to_string();
    let mut daemon = Daemon::start(
        dir.path(),
        "redis-shard",
        &binary("rayd-redis-shard"),
        &[
            "--redis-port",
            &port_arg,
            "--redis-data-dir",
            data.to_str().unwrap_or_default(),
        ],
        &[],
    );
    daemon.wait_for_log("gcs ready", LONG);
    let shards = redis_cli(port, None, &["lrange", "rayd:shards", "0", "-1"]).unwrap_or_default();
    let shard: u16 = shards
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("one shard in the list, got {shards:?}"));
    assert!(shard > port + 1, "shard on {shard}, primary on {port}");
    assert_eq!(redis_cli(shard, None, &["ping"]).as_deref(), Some("PONG"));
}

#[test]
fn invalid_config_exits_64_naming_the_key() {
    let dir = TestDir::new();
    let (code, log) = start_failing(&dir, &["--num-redis-shards", "0"]);
    assert_eq!(code, 64);
    assert!(
        log.contains("invalid value for `num_redis_shards`"),
        "{log}"
    );

    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "redis_prot = 1\n").expect("write");
    let (code, log) = start_failing(&dir, &["--config", file.to_str().unwrap_or_default()]);
    assert_eq!(code, 64);
    assert!(log.contains("unknown field `redis_prot`"), "{log}");

    let (code, log) = start_failing(&dir, &["--check-config", "--redis-port", "7000"]);
    assert_eq!((code, log.trim()), (0, "configuration ok"));
}
