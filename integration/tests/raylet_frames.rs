//! The raylet's socket against clients that promise frames and never send them: its
//! memory follows the bytes that arrive, and such connections are closed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::Output;
use std::time::{Duration, Instant};

use rayd_integration::{binary, clean_command, free_ports, process_alive, TestDir};

fn rayd(dir: &TestDir, args: &[&str]) -> Output {
    clean_command(&binary("rayd"))
        .args(args)
        .args(["--temp-dir", dir.path().to_str().unwrap_or_default()])
        .output()
        .expect("run rayd")
}

/// Stops the node even when an assertion fails.
struct Node<'a>(&'a TestDir);

impl Drop for Node<'_> {
    fn drop(&mut self) {
        let _ = rayd(self.0, &["stop"]);
    }
}

/// Resident memory of `pid` in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib / 1024.0
}

#[test]
fn stalled_promised_frames_cost_nothing_and_are_dropped() {
    let dir = TestDir::new();
    let port = free_ports(3)[1].to_string();
    let started = rayd(
        &dir,
        &[
            "start",
            "--head",
            "--redis-port",
            &port,
            "--num-cpus",
            "1",
            "--object-store-memory",
            "67108864",
        ],
    );
    let _node = Node(&dir);
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("node.json")).expect("node.json"),
    )
    .expect("json");
    let raylet = state["processes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "rayd-raylet"))
        .and_then(|p| p["pid"].as_u64())
        .expect("the raylet's pid") as u32;
    let socket = dir.path().join("sockets").join("raylet");
    let before = rss_mib(raylet);

    // 300 connections, each promising a 60 MiB frame and sending 1 KiB of it.
    let mut stalled: Vec<UnixStream> = (0..300)
        .map(|_| {
            let mut stream = UnixStream::connect(&socket).expect("connect");
            stream
                .write_all(&(60u32 << 20).to_le_bytes())
                .expect("announce");
            stream.write_all(&[0u8; 1024]).expect("a little of it");
            stream
        })
        .collect();
    let mut peak = before;
    let watch_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < watch_until {
        peak = peak.max(rss_mib(raylet));
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("raylet resident memory: {before:.1} MiB before, {peak:.1} MiB at most with 300 stalled frames");
    assert!(
        peak < 100.0,
        "the raylet grew from {before:.1} MiB to {peak:.1} MiB"
    );

    // Each stalled connection is closed once its frame waited long enough.
    let deadline = Instant::now() + Duration::from_secs(30);
    for stream in &mut stalled {
        let left = deadline.saturating_duration_since(Instant::now());
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        let mut byte = [0u8; 1];
        match stream.read(&mut byte) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a stalled connection is still open: {other:?}"),
        }
    }
    assert!(process_alive(raylet), "the raylet survived");
    assert!(rss_mib(raylet) < 100.0);
}
