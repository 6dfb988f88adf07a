//! The global scheduler's Prometheus metrics: spills counted as they are placed, the
//! view's live nodes and the spills in flight read at each scrape.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rayd_metrics::prometheus_client::collector::Collector;
use rayd_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use rayd_metrics::prometheus_client::metrics::counter::Counter;
use rayd_metrics::prometheus_client::metrics::gauge::ConstGauge;
use rayd_metrics::prometheus_client::metrics::histogram::Histogram;
use rayd_metrics::prometheus_client::registry::Registry;

use crate::placement::View;

/// What happened to the spills that raylets sent.
#[derive(Debug, Clone, Default)]
pub struct SpillMetrics {
    pub received: Counter,
    pub placed: Counter,
    /// No live node could or would take the task.
    pub unplaced: Counter,
    /// A node refused a task forwarded to it (the next one was tried).
    pub refused: Counter,
}

/// Reads the view and the spills in flight when Prometheus scrapes.
#[derive(Debug)]
struct ViewCollector {
    view: Arc<Mutex<View>>,
    in_flight: Arc<AtomicUsize>,
}

impl Collector for ViewCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let live = self
            .view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .live_nodes(crate::watch::now_ms());
        let figures = [
            ("live_nodes", "Nodes in the view that beat recently", live),
            (
                "spills_in_flight",
                "Spills being placed now",
                self.in_flight.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, value) in figures {
            let gauge = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            gauge.encode(encoder.encode_descriptor(name, help, None, gauge.metric_type())?)?;
        }
        Ok(())
    }
}

/// The scheduler's registry (prefix `rayd_global_scheduler`).
pub fn registry(
    spills: &SpillMetrics,
    view: Arc<Mutex<View>>,
    in_flight: Arc<AtomicUsize>,
    gcs_round_trip: Histogram,
) -> Registry {
    let mut r = Registry::with_prefix("rayd_global_scheduler");
    r.register(
        "spills_received",
        "Tasks raylets spilled here",
        spills.received.clone(),
    );
    r.register(
        "spills_placed",
        "Spilled tasks forwarded to a node that took them",
        spills.placed.clone(),
    );
    r.register(
        "spills_unplaced",
        "Spilled tasks no live node could or would take",
        spills.unplaced.clone(),
    );
    r.register(
        "spills_refused",
        "Forwards a node refused (another was tried)",
        spills.refused.clone(),
    );
    r.register(
        "gcs_round_trip_seconds",
        "Registration refreshes in the GCS (Redis round trips)",
        gcs_round_trip,
    );
    r.register_collector(Box::new(ViewCollector { view, in_flight }));
    r
}
