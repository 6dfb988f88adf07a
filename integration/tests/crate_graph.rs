//! The crate graph runs one way: `common/` is below everything, and the daemons and the
//! SDK both build on it, never on each other (docs/decisions.md, "The crate graph").
//! Read from `cargo metadata`, so a dependency added to any manifest is checked.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The workspace root (this crate is `integration/`).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(root());
    command
}

/// Where a crate's directory lies: `common`, `daemons`, `sdk` or something else.
fn area(dir: &Path) -> String {
    dir.strip_prefix(root())
        .ok()
        .and_then(|p| p.components().next())
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Every dependency (normal or build) of a workspace crate on another crate of the
/// workspace: (crate, its area, dependency, the dependency's area).
fn edges() -> Vec<(String, String, String, String)> {
    let out = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let mut edges = Vec::new();
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().unwrap_or_default().to_string();
        let manifest = Path::new(package["manifest_path"].as_str().unwrap_or_default());
        let from = area(manifest.parent().unwrap_or(manifest));
        for dep in package["dependencies"].as_array().into_iter().flatten() {
            // kind: null for normal dependencies, "build", or "dev" (tests may use anything).
            let (Some(path), false) = (dep["path"].as_str(), dep["kind"] == "dev") else {
                continue;
            };
            let to = area(Path::new(path));
            let dep_name = dep["name"].as_str().unwrap_or_default().to_string();
            edges.push((name.clone(), from.clone(), dep_name, to));
        }
    }
    edges
}

/// The dependencies that break the order: a daemon on the SDK, the SDK on a daemon, or
/// `common/` on either.
fn violations(edges: &[(String, String, String, String)]) -> Vec<String> {
    edges
        .iter()
        .filter(|(_, from, _, to)| {
            matches!(
                (from.as_str(), to.as_str()),
                ("daemons", "sdk") | ("sdk", "daemons") | ("common", "sdk" | "daemons")
            )
        })
        .map(|(name, from, dep, to)| format!("{name} ({from}/) depends on {dep} ({to}/)"))
        .collect()
}

#[test]
fn daemons_and_the_sdk_depend_on_common_never_on_each_other() {
    let edges = edges();
    assert!(
        edges
            .iter()
            .any(|(name, _, dep, _)| name == "rayd-raylet" && dep == "rayd-common"),
        "the graph was read: {edges:?}"
    );
    let bad = violations(&edges);
    assert!(
        bad.is_empty(),
        "the crate graph runs the wrong way:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_rule_catches_a_daemon_on_the_sdk_and_the_sdk_on_a_daemon() {
    let edge = |a: &str, b: &str| {
        (
            "x".to_string(),
            a.to_string(),
            "y".to_string(),
            b.to_string(),
        )
    };
    assert_eq!(violations(&[edge("daemons", "sdk")]).len(), 1);
    assert_eq!(violations(&[edge("sdk", "daemons")]).len(), 1);
    assert_eq!(violations(&[edge("common", "daemons")]).len(), 1);
    assert!(violations(&[edge("sdk", "common"), edge("daemons", "common")]).is_empty());
}

#[test]
fn the_python_extension_links_no_grpc_or_http2_stack() {
    let out = cargo()
        .args([
            "tree",
            "--offline",
            "-p",
            "rayd-python",
            "-e",
            "normal",
            "--prefix",
            "none",
        ])
        .output()
        .expect("cargo tree runs");
    assert!(
        out.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tree = String::from_utf8_lossy(&out.stdout);
    let heavy: Vec<&str> = tree
        .lines()
        .filter(|line| {
            let name = line.split(' ').next().unwrap_or_default();
            ["tonic", "hyper", "h2", "clap", "systemd-journal-logger"].contains(&name)
        })
        .collect();
    assert!(heavy.is_empty(), "the extension links {heavy:?}");
    assert!(
        tree.contains("rayd-plasma-client"),
        "the tree was read: {tree}"
    );
}
