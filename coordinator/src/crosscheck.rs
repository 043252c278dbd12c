//! At startup, the coordinator's job records (its working state in SQLite) are checked against
//! the replay of its own ledger. Both are written in one transaction, so they agree unless a
//! record was changed or corrupted outside the coordinator; a coordinator that resumed from
//! such a record would sign entries its own verifier later rejects, so it refuses to start.

use std::collections::{BTreeMap, BTreeSet};

use conclave_ledger::verify::JobSummary;

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
    let admitted: BTreeSet<String> = record.participants.iter().map(|p| p.did.clone()).collect();
    if admitted != ledger.admitted {
        out.push(format!(
            "{} participants recorded, {} admitted in the ledger",
            admitted.len(),
            ledger.admitted.len()
        ));
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
        }
        (Some(r), None) => out.push(format!("round {} is open in the record only", r.round)),
        (None, Some(l)) => out.push(format!("round {} is open in the ledger only", l.round)),
    }
    out
}
