//! Logging for every rayd process.
//!
//! Under systemd (stderr connected to the journal, as `JOURNAL_STREAM` says) records go to
//! journald as structured entries with `RAYD_COMPONENT` and `RAYD_NODE_ID` fields; anywhere
//! else they go to stderr as one line each with a UTC timestamp. The `log` facade is the
//! one sink: `tracing` events from tonic and hyper are forwarded to it through tracing's
//! `log` feature (no tracing subscriber is installed), so they land in the same place.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::SystemTime;

use log::kv::{Key, Value, VisitSource};
use log::{LevelFilter, Log, Metadata, Record};

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot connect to journald: {0}")]
    Journal(#[source] std::io::Error),
    #[error("a logger is already installed in this process")]
    AlreadyInstalled(#[from] log::SetLoggerError),
}

/// Where records went, for the start-up log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stderr,
}

/// Installs the process logger for `component` (e.g. `rayd-redis-shard`).
pub fn init(
    component: &str,
    node_id: Option<&str>,
    level: LevelFilter,
) -> Result<Sink, LoggingError> {
    let sink = if systemd_journal_logger::connected_to_journal() {
        let mut fields = vec![("RAYD_COMPONENT".to_string(), component.to_string())];
        if let Some(node) = node_id {
            fields.push(("RAYD_NODE_ID".to_string(), node.to_string()));
        }
        systemd_journal_logger::JournalLog::new()
            .map_err(LoggingError::Journal)?
            .with_extra_fields(fields)
            .with_syslog_identifier(component.to_string())
            .install()?;
        Sink::Journald
    } else {
        log::set_boxed_logger(Box::new(StderrLogger {
            component: component.to_string(),
            node_id: node_id.map(|n| n.chars().take(8).collect()),
        }))?;
        Sink::Stderr
    };
    log::set_max_level(level);
    Ok(sink)
}

/// One line per record on stderr: `time LEVEL component[node]: message key=value ...`.
struct StderrLogger {
    component: String,
    node_id: Option<String>,
}

struct KvLine<'a>(&'a mut String);

impl<'kvs> VisitSource<'kvs> for KvLine<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format!(
            "{} {:<5} {}",
            humantime::format_rfc3339_millis(SystemTime::now()),
            record.level(),
            self.component
        );
        if let Some(node) = &self.node_id {
            let _ = write!(line, "[{node}]");
        }
        // Records of dependencies (tonic, hyper, fred) carry their module for context.
        let target = record.target();
        if !target.starts_with("rayd") {
            let _ = write!(line, " {target}");
        }
        let _ = write!(line, ": {}", record.args());
        let _ = record.key_values().visit(&mut KvLine(&mut line));
        line.push('\n');
        // A failed write to stderr has nowhere to be reported.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}
