//! A round's clock: which phase the open round of one job is in since when, reported as one
//! span per round with a child span per phase, and as duration histograms.
//!
//! Phases, in order: `open` (drawing the committee, signing the plan, and writing the
//! round's opening to the ledger, in the same commit as the previous round's close),
//! `collect` (waiting for updates), in secure rounds `check`, `statement` and `reveal` (the
//! committee's steps, DESIGN.md "A round"), and `close` (unmasking or averaging, and storing
//! the new model). The clock lives in memory: after a restart, a round still open is picked
//! up in the phase it is in, from the restart, and its spans say `resumed`.

use std::time::SystemTime;

use opentelemetry::global::{BoxedSpan, BoxedTracer};
use opentelemetry::trace::{Span, SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};

/// A phase of a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    Open,
    Collect,
    Check,
    Statement,
    Reveal,
    Close,
}

impl Phase {
    /// Its name on spans (`round.NAME`) and in the `phase` metric label.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Open => "open",
            Phase::Collect => "collect",
            Phase::Check => "check",
            Phase::Statement => "statement",
            Phase::Reveal => "reveal",
            Phase::Close => "close",
        }
    }

    fn span_name(self) -> &'static str {
        match self {
            Phase::Open => "round.open",
            Phase::Collect => "round.collect",
            Phase::Check => "round.check",
            Phase::Statement => "round.statement",
            Phase::Reveal => "round.reveal",
            Phase::Close => "round.close",
        }
    }
}

/// How a round ended, for its span and the dropout counters.
pub(crate) struct RoundEnd {
    /// A new model came out of it (else it failed).
    pub closed: bool,
    /// Updates it got.
    pub uploads: u64,
    /// Expected participants whose update it did not get.
    pub participant_dropouts: u64,
    /// Committee members that did not finish their part.
    pub committee_dropouts: u64,
}

struct Active {
    round: u32,
    started: SystemTime,
    span: BoxedSpan,
    phase: Phase,
    phase_started: SystemTime,
}

/// The clock of one job's open round (see the module docs).
pub(crate) struct RoundClock {
    job: String,
    privacy: &'static str,
    active: Option<Active>,
}

fn tracer() -> BoxedTracer {
    opentelemetry::global::tracer(super::SCOPE)
}

fn seconds(from: SystemTime, to: SystemTime) -> f64 {
    to.duration_since(from).unwrap_or_default().as_secs_f64()
}

impl RoundClock {
    pub fn new(job: &str, privacy: &'static str) -> Self {
        Self {
            job: job.to_string(),
            privacy,
            active: None,
        }
    }

    /// Whether round `round` is on the clock.
    pub fn is_on(&self, round: u32) -> bool {
        self.active.as_ref().is_some_and(|a| a.round == round)
    }

    /// Round `round` starts opening at `at`. A round still on the clock ends here, unreported
    /// as closed or failed (its end was never seen, e.g. its close was rolled back).
    pub fn open(&mut self, round: u32, at: SystemTime) {
        self.start(round, Phase::Open, at, false);
    }

    /// Round `round` is in `phase` at `at` (called whenever the job may have moved). A phase
    /// change ends the previous phase's span; a round the clock has not seen (after a
    /// restart) starts on the clock, resumed.
    pub fn enter(&mut self, round: u32, phase: Phase, at: SystemTime) {
        match &mut self.active {
            Some(a) if a.round == round => {
                if a.phase != phase {
                    let ended = std::mem::replace(&mut a.phase, phase);
                    let since = std::mem::replace(&mut a.phase_started, at);
                    self.report_phase(ended, since, at);
                }
            }
            _ => self.start(round, phase, at, true),
        }
    }

    /// Round `round` ended at `at`: its last phase and its span end.
    pub fn finish(&mut self, round: u32, end: RoundEnd, at: SystemTime) {
        let Some(a) = self.active.as_ref() else {
            return;
        };
        if a.round != round {
            return;
        }
        let (phase, since) = (a.phase, a.phase_started);
        self.report_phase(phase, since, at);
        let mut a = self.active.take().expect("checked above");
        a.span.set_attributes([
            KeyValue::new("conclave.round.uploads", end.uploads as i64),
            KeyValue::new(
                "conclave.round.participant_dropouts",
                end.participant_dropouts as i64,
            ),
            KeyValue::new(
                "conclave.round.committee_dropouts",
                end.committee_dropouts as i64,
            ),
            KeyValue::new(
                "conclave.round.outcome",
                if end.closed { "closed" } else { "failed" },
            ),
        ]);
        // Not the reason, which can name a participant: it stays in the ledger and the logs.
        if !end.closed {
            a.span.set_status(Status::error("round failed"));
        }
        a.span.end_with_timestamp(at);
        super::round_done(self.privacy, &end, seconds(a.started, at));
    }

    fn start(&mut self, round: u32, phase: Phase, at: SystemTime, resumed: bool) {
        if let Some(mut old) = self.active.take() {
            old.span
                .set_attribute(KeyValue::new("conclave.round.abandoned", true));
            old.span.end_with_timestamp(at);
        }
        let span = tracer()
            .span_builder("round")
            .with_kind(SpanKind::Internal)
            .with_start_time(at)
            .with_attributes(self.attributes(round, resumed))
            .start(&tracer());
        self.active = Some(Active {
            round,
            started: at,
            span,
            phase,
            phase_started: at,
        });
    }

    fn attributes(&self, round: u32, resumed: bool) -> Vec<KeyValue> {
        let mut attrs = vec![
            KeyValue::new("conclave.job", self.job.clone()),
            KeyValue::new("conclave.round", round as i64),
            KeyValue::new("conclave.privacy", self.privacy),
        ];
        if resumed {
            attrs.push(KeyValue::new("conclave.round.resumed", true));
        }
        attrs
    }

    fn report_phase(&self, phase: Phase, from: SystemTime, to: SystemTime) {
        let Some(a) = &self.active else {
            return;
        };
        let parent = Context::new().with_remote_span_context(a.span.span_context().clone());
        let tracer = tracer();
        let mut span = tracer
            .span_builder(phase.span_name())
            .with_kind(SpanKind::Internal)
            .with_start_time(from)
            .with_attributes(self.attributes(a.round, false))
            .start_with_context(&tracer, &parent);
        span.end_with_timestamp(to);
        super::phase_done(self.privacy, phase, seconds(from, to));
    }
}
