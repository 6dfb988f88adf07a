//! The last lines of each daemon's log on a node (`/api/logs`), for the nodes whose log
//! directory this machine sees: `rayd start` and `ray.init()` write each daemon's output
//! to `<temp_dir>/session_latest/logs/<daemon>.log`, and a node's `temp_dir` is the
//! grandparent of its raylet socket (`<temp_dir>/sockets/raylet`), as
//! `ray.global_state.log_files()` finds them. Daemons under systemd log to the journal.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

/// Most lines returned per file.
pub const MAX_LINES: usize = 200;
/// Bytes read from the end of a file to find its last lines.
const TAIL_BYTES: u64 = 64 << 10;

/// Where a node's daemons write their logs, from its raylet socket.
pub fn log_dir(raylet_socket: &Path) -> Option<PathBuf> {
    let temp_dir = raylet_socket.parent()?.parent()?;
    Some(temp_dir.join("session_latest").join("logs"))
}

/// The last `lines` lines of `path` (at most [`TAIL_BYTES`] read).
fn tail(path: &Path, lines: usize) -> std::io::Result<Vec<String>> {
    let mut file = std::fs::File::open(path)?;
    let size = file.metadata()?.len();
    let from = size.saturating_sub(TAIL_BYTES);
    file.seek(SeekFrom::Start(from))?;
    let mut bytes = Vec::new();
    file.take(TAIL_BYTES).read_to_end(&mut bytes)?;
    let text = String::from_utf8_lossy(&bytes);
    let mut all: Vec<&str> = text.lines().collect();
    if from > 0 && !all.is_empty() {
        all.remove(0); // cut in the middle
    }
    let skip = all.len().saturating_sub(lines);
    Ok(all[skip..].iter().map(|l| l.to_string()).collect())
}

/// The last `lines` lines of every `*.log` file in `dir`, by file name.
pub fn tails(dir: &Path, lines: usize) -> Value {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            return json!({
                "directory": dir.display().to_string(),
                "error": format!("cannot read {}: {e} (daemons under systemd log to the journal: \
                                  journalctl -u 'rayd-*')", dir.display()),
                "files": [],
            })
        }
    };
    let mut names: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "log"))
        .collect();
    names.sort();
    let files: Vec<Value> = names
        .iter()
        .map(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            match tail(path, lines.min(MAX_LINES)) {
                Ok(lines) => json!({"name": name, "lines": lines}),
                Err(e) => json!({"name": name, "lines": [], "error": e.to_string()}),
            }
        })
        .collect();
    json!({"directory": dir.display().to_string(), "files": files})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_lines_of_each_log_and_only_logs() {
        let dir = tempfile::tempdir().unwrap();
        let body: String = (0..300).map(|i| format!("line {i}\n")).collect();
        std::fs::write(dir.path().join("rayd-raylet.log"), body).unwrap();
        std::fs::write(dir.path().join("rayd.toml"), "secret = 1\n").unwrap();
        let value = tails(dir.path(), 3);
        let files = value["files"].as_array().unwrap();
        assert_eq!(files.len(), 1, "{value}");
        assert_eq!(files[0]["name"], "rayd-raylet.log");
        assert_eq!(
            files[0]["lines"],
            json!(["line 297", "line 298", "line 299"])
        );
    }

    #[test]
    fn a_missing_directory_says_where_the_logs_are() {
        let value = tails(Path::new("/nonexistent/logs"), 3);
        assert!(
            value["error"].as_str().unwrap().contains("journalctl"),
            "{value}"
        );
    }

    #[test]
    fn the_log_directory_is_beside_the_sockets() {
        assert_eq!(
            log_dir(Path::new("/tmp/rayd/sockets/raylet")).unwrap(),
            PathBuf::from("/tmp/rayd/session_latest/logs")
        );
    }
}
