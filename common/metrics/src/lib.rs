//! Each rayd daemon's HTTP listener, for operators: `/health` (200 while the daemon
//! serves, 503 with the reason while it does not) and `/metrics` (its figures in the
//! Prometheus / OpenMetrics text format, encoded by `prometheus-client`).
//!
//! A daemon registers its metrics in a [`Registry`], keeps a [`Health`] up to date, and
//! calls [`serve`] once. Counters and gauges are atomics: the hot path pays an atomic
//! add, the encoding happens only when Prometheus scrapes.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

pub use prometheus_client;

/// The content type of the OpenMetrics text format, which Prometheus scrapes.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for /metrics on {address}: {source}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether the daemon serves, and if not why: what `/health` answers.
#[derive(Debug, Clone)]
pub struct Health(Arc<RwLock<Option<String>>>);

impl Health {
    /// A daemon that does not serve yet ("starting").
    pub fn starting() -> Self {
        Self(Arc::new(RwLock::new(Some("starting".into()))))
    }

    /// The daemon serves.
    pub fn set_serving(&self) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// The daemon does not serve, because of `reason`.
    pub fn set_not_serving(&self, reason: impl Into<String>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Some(reason.into());
    }

    /// `Ok` while serving, else the reason.
    pub fn status(&self) -> Result<(), String> {
        match &*self.0.read().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(reason) => Err(reason.clone()),
        }
    }
}

/// A histogram of GCS (Redis) round trips in seconds, 100 µs to about 3 s.
pub fn round_trip_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

#[derive(Debug, Clone)]
struct Shared {
    registry: Arc<Registry>,
    health: Health,
}

async fn health_page(State(shared): State<Shared>) -> impl IntoResponse {
    match shared.health.status() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not serving: {reason}\n"),
        ),
    }
}

async fn metrics_page(State(shared): State<Shared>) -> impl IntoResponse {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &shared.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, CONTENT_TYPE)], text),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode the metrics: {e}\n"),
        ),
    }
}

/// The routes `/health` and `/metrics`, to serve alone ([`serve`]) or beside others.
pub fn router(registry: Registry, health: Health) -> Router {
    Router::new()
        .route("/health", get(health_page))
        .route("/metrics", get(metrics_page))
        .with_state(Shared {
            registry: Arc::new(registry),
            health,
        })
}

/// Binds `ip:port` (0: a free port) and serves `router` there until `cancel`; returns the
/// bound address.
pub async fn serve_router(
    ip: &str,
    port: u16,
    router: Router,
    cancel: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let wanted = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    let listen_error = |source| MetricsError::Listen {
        address: wanted.clone(),
        source,
    };
    let listener = tokio::net::TcpListener::bind(&wanted)
        .await
        .map_err(listen_error)?;
    let address = listener.local_addr().map_err(listen_error)?;
    tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
        if let Err(e) = served {
            log::warn!(address:% = address; "the http listener failed: {e}");
        }
    });
    Ok(address)
}

/// Serves `/health` and `/metrics` of `registry` on `ip:port` (0: a free port) until
/// `cancel`; returns the bound address. The one call a daemon makes.
pub async fn serve(
    ip: &str,
    port: u16,
    registry: Registry,
    health: Health,
    cancel: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let address = serve_router(ip, port, router(registry, health), cancel).await?;
    log::info!(address:% = address; "serving /health and /metrics");
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(address: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.unwrap();
        reply
    }

    #[tokio::test]
    async fn health_says_why_not_and_metrics_count() {
        let mut registry = Registry::with_prefix("rayd_test");
        let counter = Counter::<u64>::default();
        registry.register("things", "Things done", counter.clone());
        let health = Health::starting();
        let cancel = CancellationToken::new();
        let address = serve("127.0.0.1", 0, registry, health.clone(), cancel.clone())
            .await
            .unwrap();

        let reply = get(address, "/health").await;
        assert!(reply.starts_with("HTTP/1.1 503"), "{reply}");
        assert!(reply.contains("not serving: starting"), "{reply}");
        health.set_serving();
        assert!(get(address, "/health").await.starts_with("HTTP/1.1 200"));

        counter.inc_by(10);
        let reply = get(address, "/metrics").await;
        assert!(reply.contains("rayd_test_things_total 10"), "{reply}");
        assert!(reply.contains("application/openmetrics-text"), "{reply}");
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_busy_port_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let err = serve(
            "127.0.0.1",
            port,
            Registry::default(),
            Health::starting(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string().contains(&format!("127.0.0.1:{port}")),
            "{err}"
        );
    }
}
