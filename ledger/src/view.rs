//! Readable forms of entries: a one-line summary for tables, and a flat record with the
//! payload as JSON for exports that analysts open in pandas, polars or duckdb.

use conclave_proto::v1;
use serde_json::{Value, json};

use crate::entry::{Entry, Payload};

/// Which entries to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub job: Option<String>,
    pub round: Option<u32>,
    pub participant: Option<String>,
}

impl Filter {
    pub fn matches(&self, e: &Entry) -> bool {
        self.job.as_ref().is_none_or(|j| e.job_id() == j)
            && self.round.is_none_or(|r| e.round() == Some(r))
            && self
                .participant
                .as_ref()
                .is_none_or(|p| e.participants().contains(&p.as_str()))
    }
}

/// An entry flattened for tables and exports.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub index: u64,
    pub time_unix_ms: u64,
    pub kind: &'static str,
    pub job_id: String,
    pub round: Option<u32>,
    /// The participant the entry is mainly about, if one.
    pub participant: Option<String>,
    pub summary: String,
    pub payload_json: String,
    pub hash: String,
    pub prev_hash: String,
    pub signer: String,
}

fn short(did: &str) -> String {
    // did:key:z6Mk + 44 more characters; the tail tells keys apart.
    match did.len() {
        n if n > 20 => format!("…{}", &did[n - 8..]),
        _ => did.to_string(),
    }
}

fn hex_or_empty(b: &[u8]) -> Value {
    Value::String(hex::encode(b))
}

/// The row of an entry.
pub fn row(e: &Entry) -> Row {
    let (participant, summary, payload) = describe(e.payload());
    Row {
        index: e.index(),
        time_unix_ms: e.time_unix_ms(),
        kind: e.kind().as_str(),
        job_id: e.job_id().to_string(),
        round: e.round(),
        participant,
        summary,
        payload_json: payload.to_string(),
        hash: hex::encode(e.hash()),
        prev_hash: hex::encode(e.prev_hash()),
        signer: e.signer().to_string(),
    }
}

fn award_reason(r: i32) -> &'static str {
    match v1::AwardReason::try_from(r) {
        Ok(v1::AwardReason::Committee) => "committee",
        Ok(v1::AwardReason::Contribution) => "contribution",
        _ => "unknown",
    }
}

fn describe(p: &Payload) -> (Option<String>, String, Value) {
    match p {
        Payload::JobCreated(j) => {
            let spec = j.spec.clone().unwrap_or_default();
            let privacy = v1::Privacy::try_from(spec.privacy)
                .map(|p| {
                    p.as_str_name()
                        .trim_start_matches("PRIVACY_")
                        .to_lowercase()
                })
                .unwrap_or_default();
            let rewards = spec.rewards.unwrap_or_default();
            (
                None,
                format!(
                    "job {:?}: {} rounds, {privacy}, reward {} per round",
                    spec.name, spec.rounds, rewards.pool_per_round
                ),
                json!({
                    "name": spec.name,
                    "rounds": spec.rounds,
                    "privacy": privacy,
                    "min_participants": spec.min_participants,
                    "reward_pool_per_round": rewards.pool_per_round,
                    "committee_share_bps": rewards.committee_share_bps,
                    "model_hash": hex_or_empty(&j.model_hash),
                }),
            )
        }
        Payload::ParticipantAdmitted(a) => (
            Some(a.participant.clone()),
            format!("admitted {}", short(&a.participant)),
            json!({
                "participant": a.participant,
                "sealing_key": hex_or_empty(&a.sealing_key),
                "draw_commitment": hex_or_empty(&a.draw_commitment),
                "signature": hex_or_empty(&a.signature),
            }),
        ),
        Payload::DrawPool(d) => (
            None,
            format!(
                "draw attempt {}: pool of {}",
                d.attempt,
                d.participants.len()
            ),
            json!({ "attempt": d.attempt, "participants": d.participants }),
        ),
        Payload::DrawReveals(d) => (
            None,
            format!(
                "draw attempt {}: {} reveals, {}",
                d.attempt,
                d.reveals.len(),
                if d.complete {
                    "complete"
                } else {
                    "incomplete (the missing members leave the pool)"
                }
            ),
            json!({
                "attempt": d.attempt,
                "complete": d.complete,
                "reveals": d.reveals.iter().map(|r| json!({
                    "participant": r.participant,
                    "value": hex_or_empty(&r.value),
                    "signature": hex_or_empty(&r.signature),
                })).collect::<Vec<_>>(),
            }),
        ),
        Payload::CommitteeComplaint(c) => (
            Some(c.participant.clone()),
            format!(
                "{} cannot use the box of {}: {}",
                short(&c.member),
                short(&c.participant),
                complaint_reason(c.reason)
            ),
            json!({
                "member": c.member,
                "participant": c.participant,
                "manifest_hash": hex_or_empty(&c.manifest_hash),
                "reason": complaint_reason(c.reason),
                "signature": hex_or_empty(&c.signature),
            }),
        ),
        Payload::RoundOpened(r) => (
            None,
            if r.committee.is_empty() {
                format!(
                    "{} participants, model v{}",
                    r.participants.len(),
                    r.base_version
                )
            } else {
                format!(
                    "{} participants, model v{}, committee {}",
                    r.participants.len(),
                    r.base_version,
                    r.committee
                        .iter()
                        .map(|m| short(m))
                        .collect::<Vec<_>>()
                        .join(" ")
                )
            },
            json!({
                "base_version": r.base_version,
                "base_model_hash": hex_or_empty(&r.base_model_hash),
                "participants": r.participants,
                "committee": r.committee,
                "draw_seed": hex_or_empty(&r.draw_seed),
                "plan_hash": hex_or_empty(&r.plan_hash),
                "deadline_unix_ms": r.deadline_unix_ms,
            }),
        ),
        Payload::UpdateAccepted(u) => (
            Some(u.participant.clone()),
            if u.manifest_hash.is_empty() {
                format!(
                    "update from {}, {} samples",
                    short(&u.participant),
                    u.num_samples
                )
            } else {
                format!("masked update from {}", short(&u.participant))
            },
            json!({
                "participant": u.participant,
                "num_samples": u.num_samples,
                "payload_hash": hex_or_empty(&u.payload_hash),
                "manifest_hash": hex_or_empty(&u.manifest_hash),
                "signature": hex_or_empty(&u.signature),
            }),
        ),
        Payload::CommitteeAttestation(a) => (
            Some(a.member.clone()),
            format!(
                "{} signs statement {}",
                short(&a.member),
                &hex::encode(&a.statement_hash)[..12.min(a.statement_hash.len() * 2)]
            ),
            json!({
                "member": a.member,
                "statement_hash": hex_or_empty(&a.statement_hash),
                "signature": hex_or_empty(&a.signature),
            }),
        ),
        Payload::RoundClosed(c) => {
            let metrics = c.base_metrics.unwrap_or_default();
            (
                None,
                if c.success {
                    let eval = if metrics.reports > 0 {
                        format!(", base model accuracy {:.4}", metrics.accuracy)
                    } else {
                        String::new()
                    };
                    format!(
                        "model v{} from {} updates ({} samples){eval}",
                        c.result_version,
                        c.contributors.len(),
                        c.total_samples
                    )
                } else if c.failure.is_empty() {
                    "failed: no model".to_string()
                } else {
                    format!("failed: {}", c.failure)
                },
                json!({
                    "success": c.success,
                    "result_version": c.result_version,
                    "model_hash": hex_or_empty(&c.model_hash),
                    "total_samples": c.total_samples,
                    "contributors": c.contributors.iter().map(|x| json!({"participant": x.participant, "num_samples": x.num_samples})).collect::<Vec<_>>(),
                    "committee_completed": c.committee_completed,
                    "failure": c.failure,
                    "base_metrics": {
                        "model_version": metrics.model_version,
                        "loss": metrics.loss,
                        "accuracy": metrics.accuracy,
                        "num_examples": metrics.num_examples,
                        "reports": metrics.reports,
                    },
                }),
            )
        }
        Payload::Reward(r) => (
            None,
            format!(
                "{} tokens to {} awards",
                r.awards.iter().map(|a| a.amount).sum::<u64>(),
                r.awards.len()
            ),
            json!({
                "awards": r.awards.iter().map(|a| json!({
                    "participant": a.participant,
                    "amount": a.amount,
                    "reason": award_reason(a.reason),
                })).collect::<Vec<_>>(),
            }),
        ),
        Payload::ModelExported(m) => (
            Some(m.exported_by.clone()),
            format!(
                "model v{} exported as {} by {}",
                m.model_version,
                m.format,
                short(&m.exported_by)
            ),
            json!({
                "model_version": m.model_version,
                "model_hash": hex_or_empty(&m.model_hash),
                "format": m.format,
                "exported_by": m.exported_by,
                "signature": hex_or_empty(&m.signature),
            }),
        ),
    }
}

fn complaint_reason(code: i32) -> &'static str {
    match v1::ComplaintReason::try_from(code) {
        Ok(v1::ComplaintReason::Unopenable) => "box does not open",
        Ok(v1::ComplaintReason::Malformed) => "box malformed",
        _ => "unknown reason",
    }
}
