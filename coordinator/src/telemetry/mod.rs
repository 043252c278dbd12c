//! What the coordinator tells an operator about itself, through the `opentelemetry` API: a
//! span per RPC and per round phase, and metrics for round and phase durations, bytes in and
//! out, uploads accepted and refused (by reason), and participant and committee dropouts.
//!
//! Only the API is used here. Until the binary installs an SDK provider (`conclave serve
//! --otlp-endpoint`, see `cli/src/telemetry.rs`) every instrument is a no-op, so a coordinator
//! without telemetry pays nothing and sends nothing. The provider must be installed before
//! the first instrument is used (instruments are created once, on first use).
//!
//! Labels stay bounded whatever a client sends: RPC methods are the fixed list
//! [`conclave_proto::METHODS`] (anything else is `"other"`), refusal reasons are
//! [`crate::CoordinatorError::reason`]'s fixed names, and job ids appear only on spans, never
//! on metrics.

mod round;
mod rpc;

use std::sync::OnceLock;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Histogram};

pub(crate) use round::{Phase, RoundClock, RoundEnd};
pub use rpc::{RpcTelemetry, RpcTelemetryService};

/// The instrumentation scope every span and metric of the coordinator is reported under.
pub const SCOPE: &str = "conclave-coordinator";

/// The coordinator's instruments, created from the global meter on first use.
struct Instruments {
    phase_duration: Histogram<f64>,
    round_duration: Histogram<f64>,
    bytes_in: Counter<u64>,
    bytes_out: Counter<u64>,
    uploads: Counter<u64>,
    dropouts: Counter<u64>,
}

fn instruments() -> &'static Instruments {
    static INSTRUMENTS: OnceLock<Instruments> = OnceLock::new();
    INSTRUMENTS.get_or_init(|| {
        let meter = opentelemetry::global::meter(SCOPE);
        Instruments {
            phase_duration: meter
                .f64_histogram("conclave.round.phase.duration")
                .with_unit("s")
                .with_description("How long a round spent in each phase")
                .build(),
            round_duration: meter
                .f64_histogram("conclave.round.duration")
                .with_unit("s")
                .with_description("How long a round took, from opening to closing or failing")
                .build(),
            bytes_in: meter
                .u64_counter("conclave.rpc.bytes_in")
                .with_unit("By")
                .with_description("Request body bytes received, by RPC method")
                .build(),
            bytes_out: meter
                .u64_counter("conclave.rpc.bytes_out")
                .with_unit("By")
                .with_description("Response body bytes sent, by RPC method")
                .build(),
            uploads: meter
                .u64_counter("conclave.uploads")
                .with_description("Update uploads accepted, and refused by reason")
                .build(),
            dropouts: meter
                .u64_counter("conclave.dropouts")
                .with_description(
                    "Expected participants without an update, and committee members that did \
                     not finish, when a round ended",
                )
                .build(),
        }
    })
}

/// Counts one upload: accepted, or refused for `reason` (one of a fixed set of names).
pub(crate) fn upload(refused: Option<&'static str>) {
    let uploads = &instruments().uploads;
    match refused {
        None => uploads.add(1, &[KeyValue::new("outcome", "accepted")]),
        Some(reason) => uploads.add(
            1,
            &[
                KeyValue::new("outcome", "refused"),
                KeyValue::new("reason", reason),
            ],
        ),
    }
}

fn bytes(method: &'static str, received: bool, n: u64) {
    let attrs = [KeyValue::new("rpc.method", method)];
    let i = instruments();
    if received {
        i.bytes_in.add(n, &attrs);
    } else {
        i.bytes_out.add(n, &attrs);
    }
}

fn phase_done(privacy: &'static str, phase: Phase, seconds: f64) {
    instruments().phase_duration.record(
        seconds,
        &[
            KeyValue::new("phase", phase.name()),
            KeyValue::new("privacy", privacy),
        ],
    );
}

fn round_done(privacy: &'static str, end: &RoundEnd, seconds: f64) {
    let i = instruments();
    let outcome = if end.closed { "closed" } else { "failed" };
    i.round_duration.record(
        seconds,
        &[
            KeyValue::new("privacy", privacy),
            KeyValue::new("outcome", outcome),
        ],
    );
    for (role, n) in [
        ("participant", end.participant_dropouts),
        ("committee", end.committee_dropouts),
    ] {
        if n > 0 {
            i.dropouts.add(
                n,
                &[
                    KeyValue::new("role", role),
                    KeyValue::new("privacy", privacy),
                ],
            );
        }
    }
}
