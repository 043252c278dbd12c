//! Telemetry as an operator's collector meets it: an OTLP/gRPC receiver started here (the
//! collector's trace and metrics services, from `opentelemetry-proto`) gets the spans of every
//! RPC and of each phase of each round, and the round, byte, upload and dropout metrics, from
//! a `conclave demo` pointed at it by `--otlp-endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT`. With
//! `--log-format json` the log lines are JSON objects.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use common::*;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
use opentelemetry_proto::tonic::metrics::v1::{metric::Data, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

/// What the receiver got.
#[derive(Clone, Default)]
struct Collector {
    traces: Arc<Mutex<Vec<ExportTraceServiceRequest>>>,
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        self.traces.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for Collector {
    async fn export(
        &self,
        request: Request<ExportMetricsServiceRequest>,
    ) -> Result<Response<ExportMetricsServiceResponse>, Status> {
        self.metrics.lock().unwrap().push(request.into_inner());
        Ok(Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serves the collector on a loopback port; returns its URL.
async fn receive(collector: Collector) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .add_service(MetricsServiceServer::new(collector))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    url
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.as_ref())
}

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

fn spans(collector: &Collector) -> Vec<Span> {
    let traces = collector.traces.lock().unwrap();
    for request in traces.iter() {
        for rs in &request.resource_spans {
            let resource = rs.resource.as_ref().expect("a resource");
            assert_eq!(
                attr_str(&resource.attributes, "service.name"),
                Some("conclave")
            );
        }
    }
    traces
        .iter()
        .flat_map(|r| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| ss.spans.clone())
        .collect()
}

/// The last value exported for each metric and label set (metrics are cumulative), as
/// (metric, sorted "key=value" labels) → value; histograms give their count.
fn metrics(collector: &Collector) -> BTreeMap<(String, String), f64> {
    let mut last = BTreeMap::new();
    let labels = |attrs: &[KeyValue]| {
        let mut l: Vec<String> = attrs
            .iter()
            .map(|kv| {
                let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                format!("{}={v}", kv.key)
            })
            .collect();
        l.sort();
        l.join(",")
    };
    for request in collector.metrics.lock().unwrap().iter() {
        let all = request
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics);
        for metric in all {
            match &metric.data {
                Some(Data::Sum(sum)) => {
                    for p in &sum.data_points {
                        let v = match p.value {
                            Some(number_data_point::Value::AsInt(i)) => i as f64,
                            Some(number_data_point::Value::AsDouble(d)) => d,
                            None => continue,
                        };
                        last.insert((metric.name.clone(), labels(&p.attributes)), v);
                    }
                }
                Some(Data::Histogram(h)) => {
                    for p in &h.data_points {
                        last.insert((metric.name.clone(), labels(&p.attributes)), p.count as f64);
                    }
                }
                _ => {}
            }
        }
    }
    last
}

/// Runs the demo (secure rounds) with `extra` arguments and environment, off the runtime.
async fn demo(
    rounds: u32,
    hospitals: u32,
    args: Vec<String>,
    env: Vec<(String, String)>,
) -> String {
    tokio::task::spawn_blocking(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = conclave();
        cmd.args(&args).args([
            "demo",
            "--rounds",
            &rounds.to_string(),
            "--participants",
            &hospitals.to_string(),
            "--data-dir",
            dir.path().to_str().unwrap(),
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("conclave runs");
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_receives_the_spans_and_metrics_of_every_round() {
    let collector = Collector::default();
    let url = receive(collector.clone()).await;
    let (rounds, hospitals) = (2u32, 3u32);
    demo(
        rounds,
        hospitals,
        vec!["--otlp-endpoint".into(), url],
        vec![],
    )
    .await;

    let spans = spans(&collector);
    let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    for rpc in [
        "conclave.v1.Jobs/CreateJob",
        "conclave.v1.Rounds/Join",
        "conclave.v1.Rounds/Work",
        "conclave.v1.Rounds/DownloadModel",
        "conclave.v1.Rounds/UploadUpdate",
        "conclave.v1.Rounds/SubmitCheck",
        "conclave.v1.Rounds/SubmitApproval",
        "conclave.v1.Rounds/SubmitReveal",
    ] {
        assert!(names.contains(rpc), "no {rpc} span in {names:?}");
    }
    let uploads: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "conclave.v1.Rounds/UploadUpdate")
        .collect();
    assert_eq!(uploads.len(), (rounds * hospitals) as usize);
    for s in &uploads {
        assert_eq!(
            attr(&s.attributes, "rpc.grpc.status_code"),
            Some(&Value::IntValue(0)),
            "{s:?}"
        );
        assert_eq!(attr_str(&s.attributes, "rpc.system"), Some("grpc"));
    }

    // One span per round, each with its phases as children, in order and without gaps.
    let round_spans: Vec<&Span> = spans.iter().filter(|s| s.name == "round").collect();
    assert_eq!(round_spans.len(), rounds as usize, "{names:?}");
    for round in &round_spans {
        assert_eq!(
            attr_str(&round.attributes, "conclave.round.outcome"),
            Some("closed")
        );
        let mut phases: Vec<&Span> = spans
            .iter()
            .filter(|s| s.parent_span_id == round.span_id && s.trace_id == round.trace_id)
            .collect();
        phases.sort_by_key(|s| s.start_time_unix_nano);
        let order: Vec<&str> = phases.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            order,
            [
                "round.open",
                "round.collect",
                "round.check",
                "round.statement",
                "round.reveal",
                "round.close"
            ],
            "round {:?}",
            attr(&round.attributes, "conclave.round")
        );
        for pair in phases.windows(2) {
            assert_eq!(pair[0].end_time_unix_nano, pair[1].start_time_unix_nano);
        }
        assert_eq!(phases[0].start_time_unix_nano, round.start_time_unix_nano);
        assert_eq!(
            phases.last().unwrap().end_time_unix_nano,
            round.end_time_unix_nano
        );
    }

    let metrics = metrics(&collector);
    let value = |name: &str, labels: &str| {
        metrics
            .get(&(name.to_string(), labels.to_string()))
            .copied()
            .unwrap_or_else(|| panic!("no {name}{{{labels}}} in {metrics:#?}"))
    };
    assert_eq!(
        value("conclave.uploads", "outcome=accepted"),
        (rounds * hospitals) as f64
    );
    for phase in ["open", "collect", "check", "statement", "reveal", "close"] {
        assert_eq!(
            value(
                "conclave.round.phase.duration",
                &format!("phase={phase},privacy=secagg")
            ),
            rounds as f64
        );
    }
    assert_eq!(
        value("conclave.round.duration", "outcome=closed,privacy=secagg"),
        rounds as f64
    );
    // Every hospital sent its update and every committee member finished.
    assert!(!metrics.keys().any(|(name, _)| name == "conclave.dropouts"));
    // A masked update is at least 4 bytes per parameter; every hospital downloads the model.
    assert!(
        value(
            "conclave.rpc.bytes_in",
            "rpc.method=/conclave.v1.Rounds/UploadUpdate"
        ) > 0.0
    );
    assert!(
        value(
            "conclave.rpc.bytes_out",
            "rpc.method=/conclave.v1.Rounds/DownloadModel"
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_names_the_collector_and_json_logs_are_json() {
    let collector = Collector::default();
    let url = receive(collector.clone()).await;
    let stderr = demo(
        1,
        2,
        vec!["--log-format".into(), "json".into()],
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), url),
            ("CONCLAVE_LOG".into(), "info".into()),
        ],
    )
    .await;
    assert!(
        spans(&collector)
            .iter()
            .any(|s| s.name == "conclave.v1.Rounds/UploadUpdate")
    );
    // The demo's own progress lines share stderr; every log line is one JSON object.
    let logs: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "exporting spans and metrics over OTLP"),
        "{stderr}"
    );
    for l in &logs {
        assert!(l["level"].is_string() && l["timestamp"].is_string(), "{l}");
    }

    // A malformed endpoint is refused before anything runs.
    let out = run(&["--otlp-endpoint", "localhost:4317", "demo", "--rounds", "1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("expected http://HOST:PORT"),
        "{}",
        text(&out.stderr)
    );
}
