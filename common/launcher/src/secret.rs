//! Finding the secret of a cluster whose head was started on this machine, for a driver
//! or `rayd status` that was given its address only: in the record of `rayd start`
//! (`<temp_dir>/node.json`, which names the secret's file), else in the session config of
//! a local cluster that `ray.init()` started (`<temp_dir>/driver_*/session_latest/rayd.toml`,
//! mode 0600). Only this user's files can be read, so only this user's clusters are found.

use std::path::{Path, PathBuf};

use crate::node_state;

/// The secret of the cluster whose primary Redis is at `address` (`host:port`), if a node
/// of it was started on this machine from `temp_dir`.
pub fn local_secret(temp_dir: &Path, address: &str) -> Option<String> {
    if let Ok(Some(state)) = node_state::read(temp_dir) {
        if same_address(&state.redis_address, address) {
            if let Some(file) = &state.redis_password_file {
                if let Ok(secret) = rayd_config::read_password_file(file) {
                    return Some(secret);
                }
            }
        }
    }
    session_configs(temp_dir)
        .into_iter()
        .find_map(|path| secret_in_config(&path, address))
}

/// The session configs of local clusters under `temp_dir`, the newest session of each.
fn session_configs(temp_dir: &Path) -> Vec<PathBuf> {
    let mut configs = vec![temp_dir.join("session_latest").join("rayd.toml")];
    if let Ok(entries) = std::fs::read_dir(temp_dir) {
        configs.extend(
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with("driver_"))
                .map(|e| e.path().join("session_latest").join("rayd.toml")),
        );
    }
    configs
}

/// The `redis_password` of the config at `path` when its `redis_address` is `address`.
fn secret_in_config(path: &Path, address: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let table: toml::Table = text.parse().ok()?;
    let own = table.get("redis_address")?.as_str()?;
    if !same_address(own, address) {
        return None;
    }
    Some(table.get("redis_password")?.as_str()?.to_string())
}

/// Whether two `host:port` addresses name the same server (`localhost` is 127.0.0.1).
fn same_address(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let resolved = |address: &str| {
        let (host, port) = rayd_config::parse_host_port(address).ok()?;
        Some((rayd_config::resolve_host(&host).ok()?, port))
    };
    match (resolved(a), resolved(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_local_clusters_secret_is_found_by_its_address() {
        let dir = tempfile::tempdir().unwrap();
        let session = dir.path().join("driver_x").join("session_latest");
        std::fs::create_dir_all(&session).unwrap();
        std::fs::write(
            session.join("rayd.toml"),
            "redis_address = \"127.0.0.1:7001\"\nredis_password = \"abc\"\n",
        )
        .unwrap();
        assert_eq!(
            local_secret(dir.path(), "127.0.0.1:7001").as_deref(),
            Some("abc")
        );
        assert_eq!(
            local_secret(dir.path(), "localhost:7001").as_deref(),
            Some("abc")
        );
        assert_eq!(local_secret(dir.path(), "127.0.0.1:7002"), None);
    }
}
