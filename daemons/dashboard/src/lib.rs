//! `rayd-dashboard`: the cluster's web dashboard, on the head node.
//!
//! Pages (served from the binary, no CDN): the cluster (nodes, resources, object stores,
//! alive/dead), tasks (counts by state, the latest with function, node, duration, error),
//! actors, the task timeline (the data of `ray.timeline()`) and the last lines of each
//! daemon's log on a node. Each page reads a JSON API under `/api/` and refreshes itself.
//! Everything is read from the GCS on each request; nothing is written but the
//! dashboard's own URL (`rayd:webui_url`, for `ray.get_webui_url()`). Read-only: only GET
//! routes exist. It listens on `webui_host` (127.0.0.1 unless configured otherwise).

mod api;
mod logs;

use std::net::IpAddr;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rayd_common::id::{JobId, NodeId};
use rayd_config::RaydConfig;
use rayd_daemon::shutdown::{notify_ready, notify_stopping, Shutdown};
use rayd_gcs::{GcsClient, GcsError};
use rayd_metrics::prometheus_client::metrics::counter::Counter;
use rayd_metrics::prometheus_client::registry::Registry;
use rayd_metrics::{Health, MetricsError};
use serde::Deserialize;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Why the dashboard could not start.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error("no `redis_address`: the dashboard reads the cluster's GCS")]
    NoRedisAddress,
    #[error("gcs: {0}")]
    Gcs(#[from] GcsError),
    #[error("{0}")]
    Listen(#[from] MetricsError),
}

impl rayd_daemon::Failure for DashboardError {
    /// A missing key: restarting with the same configuration cannot help.
    fn is_config(&self) -> bool {
        matches!(self, Self::NoRedisAddress)
    }
}

#[derive(Debug, Clone)]
struct App {
    gcs: GcsClient,
    requests: Counter,
}

/// An API reply: the JSON, or a 502 that says what the GCS answered.
fn reply(result: Result<serde_json::Value, GcsError>) -> Response {
    match result {
        Ok(value) => Json(value).into_response(),
        Err(e) => (
            StatusCode::BAD_GATEWAY,
            Json(serde_json::json!({ "error": format!("cannot read the GCS: {e}") })),
        )
            .into_response(),
    }
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(serde_json::json!({ "error": message })),
    )
        .into_response()
}

async fn cluster(State(app): State<App>) -> Response {
    app.requests.inc();
    reply(api::cluster(&app.gcs).await)
}

async fn tasks(State(app): State<App>) -> Response {
    app.requests.inc();
    reply(api::tasks(&app.gcs).await)
}

async fn actors(State(app): State<App>) -> Response {
    app.requests.inc();
    reply(api::actors(&app.gcs).await)
}

async fn jobs(State(app): State<App>) -> Response {
    app.requests.inc();
    reply(api::jobs(&app.gcs).await)
}

#[derive(Debug, Deserialize)]
struct JobQuery {
    job: Option<String>,
}

async fn timeline(State(app): State<App>, Query(query): Query<JobQuery>) -> Response {
    app.requests.inc();
    let job = match query.job.as_deref().filter(|j| !j.is_empty()) {
        None => None,
        Some(hex) => match hex.parse::<JobId>() {
            Ok(job) => Some(job),
            Err(e) => return bad_request(format!("job `{hex}` is not a job id: {e}")),
        },
    };
    reply(api::timeline(&app.gcs, job).await)
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    node: String,
    lines: Option<usize>,
}

async fn node_logs(State(app): State<App>, Query(query): Query<LogQuery>) -> Response {
    app.requests.inc();
    let node: NodeId = match query.node.parse() {
        Ok(node) => node,
        Err(e) => return bad_request(format!("node `{}` is not a node id: {e}", query.node)),
    };
    let info = match app.gcs.node(node).await {
        Ok(Some(info)) => info,
        Ok(None) => return bad_request(format!("no node {node} in the node table")),
        Err(e) => return reply(Err(e)),
    };
    let lines = query.lines.unwrap_or(50);
    let Some(dir) = logs::log_dir(std::path::Path::new(&info.raylet_socket)) else {
        return bad_request(format!(
            "node {node} has no raylet socket to find its logs by"
        ));
    };
    // Reading files blocks: off the event loop.
    let value = tokio::task::spawn_blocking(move || logs::tails(&dir, lines)).await;
    match value {
        Ok(mut value) => {
            value["node_id"] = node.hex().into();
            value["address"] = info.node_ip_address.into();
            Json(value).into_response()
        }
        Err(e) => reply(Err(GcsError::Malformed {
            what: "log tail",
            reason: e.to_string(),
        })),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}

/// The dashboard's routes (GET only), with `/health` and `/metrics` of its own.
fn router(gcs: GcsClient, health: Health) -> Router {
    let requests = Counter::default();
    let mut registry = Registry::with_prefix("rayd_dashboard");
    registry.register("api_requests", "Requests of the JSON API", requests.clone());
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route("/api/cluster", get(cluster))
        .route("/api/tasks", get(tasks))
        .route("/api/actors", get(actors))
        .route("/api/jobs", get(jobs))
        .route("/api/timeline", get(timeline))
        .route("/api/logs", get(node_logs))
        .with_state(App { gcs, requests })
        .merge(rayd_metrics::router(registry, health))
}

/// The URL people open: the listening address, or this node's when it listens on all.
fn url(config: &RaydConfig, address: std::net::SocketAddr) -> String {
    let host = if address.ip().is_unspecified() {
        config.node_ip_address.clone()
    } else {
        address.ip().to_string()
    };
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("http://[{host}]:{}", address.port()),
        _ => format!("http://{host}:{}", address.port()),
    }
}

/// Runs the dashboard until `shutdown` fires.
pub async fn run(config: RaydConfig, shutdown: Shutdown) -> Result<(), DashboardError> {
    let redis_address = config
        .redis_address
        .clone()
        .ok_or(DashboardError::NoRedisAddress)?;
    let gcs = GcsClient::connect(&redis_address, config.redis_password.as_deref()).await?;
    let cancel = shutdown.graceful.child_token();
    let health = Health::starting();
    let app = router(gcs.clone(), health.clone());
    let address = match rayd_metrics::serve_router(
        &config.webui_host,
        config.webui_port,
        app.clone(),
        cancel.clone(),
    )
    .await
    {
        Ok(address) => address,
        Err(MetricsError::Listen { source, address })
            if source.kind() == std::io::ErrorKind::AddrInUse && config.webui_port != 0 =>
        {
            log::warn!(address = address.as_str(); "the dashboard's port is taken; taking a free one");
            rayd_metrics::serve_router(&config.webui_host, 0, app, cancel.clone()).await?
        }
        Err(e) => return Err(e.into()),
    };
    let url = url(&config, address);
    gcs.put_webui_url(&url).await?;
    gcs.put_metrics_endpoint("rayd-dashboard", address).await?;
    log::info!(url = url.as_str(), gcs = redis_address.as_str(); "dashboard serving");
    notify_ready();
    health.set_serving();
    cancel.cancelled().await;
    notify_stopping();
    health.set_not_serving("stopping");
    // Only our own URL goes: another dashboard may have taken the key since.
    if gcs.webui_url().await.ok().flatten().as_deref() == Some(url.as_str()) {
        if let Err(e) = gcs.remove_webui_url().await {
            log::warn!("cannot remove the dashboard's url from the gcs: {e}");
        }
    }
    gcs.quit().await;
    Ok(())
}
