//! What the daemons owe systemd (deploy/systemd): exit 64 when the configuration lacks
//! what they need (`RestartPreventExitStatus=64` ends the restarts), and watchdog pings
//! from their event loops under `WatchdogSec=` (a stopped daemon falls silent). The service
//! manager's side is played by a datagram socket at `NOTIFY_SOCKET`, as systemd's is.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use rayd_integration::{binary, free_port, Daemon, TestDir};

#[test]
fn a_daemon_without_the_gcs_address_exits_64() {
    let dir = TestDir::new();
    let config = dir.path().join("rayd.toml");
    std::fs::write(&config, "log_level = \"info\"\n").expect("config");
    for program in ["rayd-raylet", "rayd-global-scheduler"] {
        let mut daemon = Daemon::start(
            dir.path(),
            program,
            &binary(program),
            &["--config", config.to_str().expect("utf-8")],
            &[],
        );
        let status = daemon.wait_exit(Duration::from_secs(30));
        assert_eq!(status.code(), Some(64), "{program}: {}", daemon.log());
        assert!(daemon.log().contains("redis_address"), "{}", daemon.log());
    }
}

/// The messages that arrive on `socket` within `window`.
fn messages(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(_) => break,
        }
    }
    got
}

fn pings(messages: &[String]) -> usize {
    messages
        .iter()
        .filter(|m| m.lines().any(|l| l == "WATCHDOG=1"))
        .count()
}

#[test]
fn the_watchdog_is_pinged_while_the_event_loop_runs_and_not_while_it_is_stopped() {
    let dir = TestDir::new();
    let notify = dir.path().join("notify");
    let socket = UnixDatagram::bind(&notify).expect("notify socket");
    let plasma_socket = dir.path().join("plasma.sock");
    let port = free_port().to_string();
    // systemd names the main process in WATCHDOG_PID; `exec` keeps the shell's pid.
    let mut daemon = Daemon::start(
        dir.path(),
        "plasma",
        std::path::Path::new("/bin/sh"),
        &[
            "-c",
            "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
            binary("rayd-plasma").to_str().expect("utf-8"),
            "--plasma-socket",
            plasma_socket.to_str().expect("utf-8"),
            "--object-manager-port",
            &port,
            "--object-store-memory",
            "10000000",
        ],
        &[
            ("NOTIFY_SOCKET", notify.to_str().expect("utf-8")),
            // 200 ms: a ping every 100 ms.
            ("WATCHDOG_USEC", "200000"),
        ],
    );
    let running = messages(&socket, Duration::from_secs(3));
    assert!(
        running.iter().any(|m| m.lines().any(|l| l == "READY=1")),
        "{running:?} {}",
        daemon.log()
    );
    assert!(pings(&running) >= 5, "{running:?}");

    daemon.signal(Signal::SIGSTOP);
    // Pings already sent before the stop may still be in the socket.
    let _ = messages(&socket, Duration::from_millis(100));
    let stopped = messages(&socket, Duration::from_millis(700));
    assert_eq!(pings(&stopped), 0, "{stopped:?}");

    daemon.signal(Signal::SIGCONT);
    let resumed = messages(&socket, Duration::from_secs(2));
    assert!(pings(&resumed) >= 3, "{resumed:?}");
    daemon.stop();
}
