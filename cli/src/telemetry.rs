//! Logs and telemetry of one `conclave` process: human or JSON log lines on stderr, and, when
//! an OTLP endpoint is named (`--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`), spans and
//! metrics exported over OTLP/gRPC. With no endpoint no exporter is built and nothing is sent.
//!
//! The coordinator's instrumentation (`conclave_coordinator::telemetry`) only uses the
//! `opentelemetry` API; this module installs the SDK providers it reports to, and turns
//! `tracing` spans (one per RPC) into OpenTelemetry spans.

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Readable lines.
    Human,
    /// One JSON object per line (timestamp, level, target, fields, spans), for log shippers.
    Json,
}

/// What is exported to the OTLP endpoint: the coordinator's telemetry spans only. Log events
/// stay out of the export (they name participants), and so do other crates' spans.
const EXPORTED: &str = "conclave_coordinator::telemetry=info";

/// The installed exporters; [`Telemetry::shutdown`] sends what is still buffered.
pub struct Telemetry {
    providers: Option<(String, SdkTracerProvider, SdkMeterProvider)>,
}

/// The OTLP endpoint, checked: `http://` or `https://` with a host.
fn endpoint(raw: &str) -> anyhow::Result<String> {
    let uri: http::Uri = raw
        .parse()
        .with_context(|| format!("--otlp-endpoint {raw:?} is not a URL"))?;
    anyhow::ensure!(
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some(),
        "--otlp-endpoint {raw:?}: expected http://HOST:PORT or https://HOST:PORT (an OTLP/gRPC \
         collector, usually port 4317)"
    );
    Ok(raw.to_string())
}

fn resource() -> Resource {
    let builder = Resource::builder();
    // OTEL_SERVICE_NAME, when set, names the service instead.
    if std::env::var_os("OTEL_SERVICE_NAME").is_some() {
        builder.build()
    } else {
        builder.with_service_name("conclave").build()
    }
}

/// Sets up logging at `verbose` (0: warnings, 1: info, 2+: debug; `CONCLAVE_LOG` overrides)
/// in `format`, and OTLP export to `otlp` if given. Must run inside the tokio runtime that
/// outlives the process's work (the exporters' connections live on it).
pub fn init(verbose: u8, format: LogFormat, otlp: Option<&str>) -> anyhow::Result<Telemetry> {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter =
        EnvFilter::try_from_env("CONCLAVE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Human => logs.boxed(),
        LogFormat::Json => logs.json().with_current_span(false).boxed(),
    }
    .with_filter(filter);

    let Some(raw) = otlp.filter(|e| !e.trim().is_empty()) else {
        tracing_subscriber::registry().with(logs).init();
        return Ok(Telemetry { providers: None });
    };
    let url = endpoint(raw)?;
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("OTLP span exporter for {url}"))?;
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(url.clone())
        .build()
        .with_context(|| format!("OTLP metric exporter for {url}"))?;
    let tracer_provider = SdkTracerProvider::builder()
        .with_resource(resource())
        .with_batch_exporter(spans)
        .build();
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(resource())
        .with_periodic_exporter(metrics)
        .build();
    opentelemetry::global::set_tracer_provider(tracer_provider.clone());
    opentelemetry::global::set_meter_provider(meter_provider.clone());
    let spans_layer = tracing_opentelemetry::layer()
        .with_tracer(tracer_provider.tracer("conclave"))
        .with_filter(EnvFilter::new(EXPORTED));
    tracing_subscriber::registry()
        .with(logs)
        .with(spans_layer)
        .init();
    tracing::info!(endpoint = %url, "exporting spans and metrics over OTLP");
    Ok(Telemetry {
        providers: Some((url, tracer_provider, meter_provider)),
    })
}

impl Telemetry {
    /// Sends what is still buffered and stops the exporters (a no-op without them). Blocks:
    /// call it outside the runtime's tasks, while the runtime is still up.
    pub fn shutdown(self) {
        let Some((url, tracer_provider, meter_provider)) = self.providers else {
            return;
        };
        // The work is done either way: an unreachable collector costs its telemetry only.
        if let Err(e) = tracer_provider.shutdown() {
            eprintln!(
                "warning: the last spans could not be sent to {url} (is the collector up?): {e}"
            );
        }
        if let Err(e) = meter_provider.shutdown() {
            eprintln!(
                "warning: the last metrics could not be sent to {url} (is the collector up?): {e}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_must_be_http_urls_with_a_host() {
        assert!(endpoint("http://127.0.0.1:4317").is_ok());
        assert!(endpoint("https://collector.example:4317").is_ok());
        for bad in ["127.0.0.1:4317", "ftp://h:1", "http://", "not a url"] {
            let e = endpoint(bad).unwrap_err().to_string();
            assert!(e.contains("--otlp-endpoint"), "{bad}: {e}");
        }
    }
}
