//! A raylet whose plasma store dies exits (with the reason in its log), so that its
//! supervisor starts it again against the new store, rather than serving on blind.

use std::process::Output;
use std::time::Duration;

use rayd_integration::{binary, clean_command, free_ports, process_alive, wait_for, TestDir};

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

#[test]
fn a_raylet_exits_when_its_plasma_store_dies() {
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
    assert!(started.status.success());
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("node.json")).expect("node.json"),
    )
    .expect("json");
    let pid = |name: &str| {
        state["processes"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == name))
            .and_then(|p| p["pid"].as_u64())
            .expect("a pid") as u32
    };
    let (plasma, raylet) = (pid("rayd-plasma"), pid("rayd-raylet"));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(plasma as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill plasma");
    wait_for("the raylet to exit", Duration::from_secs(10), || {
        (!process_alive(raylet)).then_some(())
    });
    let session = state["session_dir"].as_str().expect("session dir");
    let log = std::fs::read_to_string(format!("{session}/logs/rayd-raylet.log")).expect("log");
    assert!(log.contains("plasma store's event stream ended"), "{log}");
}
