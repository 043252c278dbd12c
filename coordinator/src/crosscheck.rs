//! At startup, the coordinator's job records (its working state in SQLite) are checked against
//! the replay of its own ledger. Both are written in one transaction, so they agree unless a
//! record was changed or corrupted outside the coordinator; a coordinator that resumed from
//! such a record would sign entries its own verifier later rejects, so it refuses to start.

use std::collections::{BTreeMap, BTreeSet};

use conclave_aggregation::secagg::plan_digest;
use conclave_ledger::verify::JobSummary;
use conclave_proto::v1;
use prost::Message;

use crate::store::{JobRecord, RoundStatus};

/// Every disagreement between the records and the ledger, one line each (empty: they agree).
pub fn disagreements(records: &[JobRecord], ledger: &BTreeMap<String, JobSummary>) -> Vec<String> {
    let mut out = Vec::new();
    let recorded: BTreeSet<&str> = records.iter().map(|r| r.id.as_str()).collect();
    for id in ledger.keys().filter(|id| !recorded.contains(id.as_str())) {
        out.push(format!("job {id} is in the ledger but has no record"));
    }
    for record in records {
        match ledger.get(&record.id) {
            None => out.push(format!(
                "job {} has a record but no job_created entry",
                record.id
            )),
            Some(summary) => out.extend(
                job_disagreements(record, summary)
                    .into_iter()
                    .map(|d| format!("job {}: {d}", record.id)),
            ),
        }
    }
    out
}

fn job_disagreements(record: &JobRecord, ledger: &JobSummary) -> Vec<String> {
    let mut out = Vec::new();
    // The job spec (privacy mode and settings included) is the one the ledger created.
    if hex::decode(&record.spec).ok().as_deref() != Some(&ledger.spec[..]) {
        out.push("the job spec differs from the one in its job_created entry".into());
    }
    let admitted: BTreeSet<String> = record.participants.iter().map(|p| p.did.clone()).collect();
    let in_ledger: BTreeSet<String> = ledger.admitted.keys().cloned().collect();
    if admitted != in_ledger {
        out.push(format!(
            "{} participants recorded, {} admitted in the ledger",
            admitted.len(),
            in_ledger.len()
        ));
    }
    for p in &record.participants {
        if let Some(key) = ledger.admitted.get(&p.did)
            && hex::encode(key) != p.sealing_key
        {
            out.push(format!(
                "{}'s sealing key differs from its admission",
                p.did
            ));
        }
    }
    let draw = &ledger.draw;
    let open_pool = draw
        .open_attempt
        .as_ref()
        .map(|(a, pool)| (*a, pool.iter().map(|p| p.to_string()).collect::<Vec<_>>()));
    let excluded: BTreeSet<&String> = record.draw.excluded.iter().collect();
    let revealers: Vec<String> = draw.last_revealers.iter().map(|p| p.to_string()).collect();
    if record.draw.open != open_pool
        || record.draw.last_revealers != revealers
        || record.draw.next_attempt != draw.next_attempt
        || excluded != draw.excluded.iter().collect()
        || record.draw.entropy != draw.entropy.map(hex::encode)
    {
        out.push("the committee draw differs from the ledger's draw entries".into());
    }
    let hashes: Vec<String> = ledger.model_hashes.iter().map(hex::encode).collect();
    if record.model_hashes != hashes || record.model_version as usize + 1 != hashes.len() {
        out.push(format!(
            "model versions differ (record: version {} of {} hashes; ledger: {} versions)",
            record.model_version,
            record.model_hashes.len(),
            hashes.len()
        ));
    }
    if record.finished != ledger.finished {
        out.push(format!(
            "finished is {} in the record, {} in the ledger",
            record.finished, ledger.finished
        ));
    }
    let last = record.rounds.last();
    if last.map_or(0, |r| r.round) != ledger.last_round {
        out.push(format!(
            "last round {} in the record, {} in the ledger",
            last.map_or(0, |r| r.round),
            ledger.last_round
        ));
    }
    let open = last.filter(|r| r.status == RoundStatus::Open);
    match (open, &ledger.open_round) {
        (None, None) => {}
        (Some(r), Some(l)) => {
            let expected: BTreeSet<String> = r.expected.iter().cloned().collect();
            let uploaded: BTreeSet<String> = r.uploads.iter().map(|u| u.did.clone()).collect();
            if r.round != l.round || expected != l.participants || uploaded != l.uploaded {
                out.push(format!(
                    "open round {} differs (record: {} participants, {} uploads; ledger: round {}, {} participants, {} uploads)",
                    r.round,
                    expected.len(),
                    uploaded.len(),
                    l.round,
                    l.participants.len(),
                    l.uploaded.len()
                ));
            }
            if r.committee != l.committee
                || hex::decode(&r.draw_seed).ok() != Some(l.draw_seed.clone())
            {
                out.push(format!(
                    "open round {}: the committee or draw seed differs from its round_opened entry",
                    r.round
                ));
            }
            if !r.plan.is_empty()
                && plan_digest_of(&record.id, r.round, &r.plan) != Some(l.plan_hash.clone())
            {
                out.push(format!(
                    "open round {}: the stored round plan is not the one its round_opened entry names",
                    r.round
                ));
            }
        }
        (Some(r), None) => out.push(format!("round {} is open in the record only", r.round)),
        (None, Some(l)) => out.push(format!("round {} is open in the ledger only", l.round)),
    }
    out
}

/// The digest of a stored round plan (hex protobuf), if it decodes.
fn plan_digest_of(job_id: &str, round: u32, plan: &str) -> Option<Vec<u8>> {
    let bytes = hex::decode(plan).ok()?;
    let plan = v1::SecaggPlan::decode(bytes.as_slice()).ok()?;
    Some(plan_digest(job_id, round, &plan).to_vec())
}
