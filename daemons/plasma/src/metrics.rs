//! The plasma store's Prometheus metrics, read from the store's own figures at each
//! scrape (nothing is counted twice, and serving objects pays nothing for them).

use std::sync::Arc;

use rayd_metrics::prometheus_client::collector::Collector;
use rayd_metrics::prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use rayd_metrics::prometheus_client::metrics::counter::ConstCounter;
use rayd_metrics::prometheus_client::metrics::gauge::ConstGauge;
use rayd_metrics::prometheus_client::metrics::histogram::Histogram;
use rayd_metrics::prometheus_client::registry::Registry;

use crate::state::State;

/// Reads the store's figures when Prometheus scrapes.
#[derive(Debug)]
struct StoreCollector(Arc<State>);

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let metric = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> std::fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let s = self.0.stats();
        let e = &mut encoder;
        gauge(e, "used_bytes", "Bytes of objects in memory", s.used_bytes)?;
        gauge(
            e,
            "capacity_bytes",
            "Bytes the store may use",
            s.capacity_bytes,
        )?;
        gauge(e, "objects", "Objects in memory", s.objects)?;
        gauge(e, "clients", "Connected clients", s.clients)?;
        gauge(e, "spilled_objects", "Objects on disk", s.spill.objects)?;
        gauge(e, "spilled_bytes", "Bytes on disk", s.spill.bytes)?;
        counter(e, "evictions", "Objects evicted to make room", s.evictions)?;
        counter(
            e,
            "evicted_bytes",
            "Bytes evicted to make room",
            s.evicted_bytes,
        )?;
        counter(
            e,
            "spill_written_bytes",
            "Bytes spilled to disk",
            s.spill.written_bytes,
        )?;
        counter(
            e,
            "spill_restored_bytes",
            "Bytes restored from disk",
            s.spill.restored_bytes,
        )?;
        counter(
            e,
            "pulls",
            "Objects pulled from other nodes",
            self.0.pulls(),
        )?;
        counter(
            e,
            "pulled_bytes",
            "Bytes pulled from other nodes",
            self.0.pulled_bytes(),
        )?;
        Ok(())
    }
}

/// The store's registry (prefix `rayd_plasma`); `gcs_round_trip` times its GCS writes.
pub fn registry(state: Arc<State>, gcs_round_trip: Histogram) -> Registry {
    let mut registry = Registry::with_prefix("rayd_plasma");
    registry.register_collector(Box::new(StoreCollector(state)));
    registry.register(
        "gcs_round_trip_seconds",
        "Batches of object-location writes to the GCS (Redis round trips)",
        gcs_round_trip,
    );
    registry
}
