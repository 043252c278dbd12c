//! The coordinator's metrics as a test reads them: an SDK meter provider with an in-memory
//! exporter installed as the process's global one (before the coordinator's instruments are
//! first used, so once per test binary), read back as "metric{labels}" → value.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};

struct Recorder {
    provider: SdkMeterProvider,
    exporter: InMemoryMetricExporter,
}

fn recorder() -> &'static Recorder {
    static RECORDER: OnceLock<Recorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let exporter = InMemoryMetricExporter::default();
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter.clone())
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        Recorder { provider, exporter }
    })
}

/// Installs the recorder; call it first in a test, before the coordinator starts.
pub fn record_metrics() {
    recorder();
}

/// Every metric's current value (cumulative; a histogram gives its count) by
/// `name{key=value,...}` with the labels sorted.
pub fn metric_values() -> BTreeMap<String, f64> {
    let r = recorder();
    r.provider.force_flush().expect("metrics flushed");
    let mut values = BTreeMap::new();
    for rm in r.exporter.get_finished_metrics().expect("metrics") {
        for metric in rm.scope_metrics().flat_map(|s| s.metrics()) {
            let key = |attrs: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                let mut labels: Vec<String> =
                    attrs.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
                labels.sort();
                format!("{}{{{}}}", metric.name(), labels.join(","))
            };
            match metric.data() {
                AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                    for p in sum.data_points() {
                        values.insert(key(&mut p.attributes()), p.value() as f64);
                    }
                }
                AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                    for p in h.data_points() {
                        values.insert(key(&mut p.attributes()), p.count() as f64);
                    }
                }
                _ => {}
            }
        }
    }
    values
}

/// The value of `key` (as [`metric_values`] names it) in `values`; panics, listing them all,
/// when there is none.
pub fn value(values: &BTreeMap<String, f64>, key: &str) -> f64 {
    values
        .get(key)
        .copied()
        .unwrap_or_else(|| panic!("no {key} in {values:#?}"))
}
