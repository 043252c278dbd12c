//! Verification: recompute every hash, link and signature of a ledger, then replay what the
//! entries say through the round engine's rules (the `replay` module): signed admissions and
//! contributions, the committee draw recomputed from the participants' revealed entropy,
//! complaints before statements, statements with `t` committee signatures over exactly the
//! uploads nobody complained about, the policy's rewards, signed exports. The result names the
//! first entry that is wrong and why.
//!
//! Signatures are checked in parallel with Ed25519 batch verification (one failure in a batch
//! falls back to checking its entries one by one, to name the first bad one).

use std::collections::BTreeMap;

use conclave_crypto::ParticipantId;
use rayon::prelude::*;

use crate::db::{Ledger, RawRow, decode_row};
use crate::entry::{Entry, GENESIS, Hash};
use crate::replay::{Replay, participant_signatures};
use crate::{EntryError, LedgerError};
use conclave_aggregation::engine::JobEngine;
pub use conclave_aggregation::engine::{DrawSummary, JobSummary, OpenRound};

/// The first entry found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub index: u64,
    pub reason: String,
}

/// What a verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Entries that verified (all of them when `problem` is `None`).
    pub verified: u64,
    /// The hash of the last verified entry.
    pub head: Hash,
    /// The did:key that signed the entries.
    pub signer: Option<String>,
    pub problem: Option<Problem>,
}

/// Entries verified per chunk (read, link-checked, signature-checked, replayed).
const CHUNK: usize = 8192;
/// Signatures per batch verification.
const SIG_BATCH: usize = 64;

/// Verifies a whole ledger database. `signer`: the coordinator key every entry must be
/// signed by (default: whoever signed entry 0).
pub fn verify_ledger(
    ledger: &Ledger,
    signer: Option<&ParticipantId>,
) -> Result<Report, LedgerError> {
    Ok(verify_all(ledger, signer)?.report())
}

/// As [`verify_ledger`], with what the replay holds of every job at the end (meaningful when
/// the report has no problem): what a coordinator's own job records must agree with.
pub fn verify_ledger_jobs(
    ledger: &Ledger,
    signer: Option<&ParticipantId>,
) -> Result<(Report, BTreeMap<String, JobSummary>), LedgerError> {
    let v = verify_all(ledger, signer)?;
    Ok((v.report(), v.jobs()))
}

/// As [`verify_ledger`], with every job's round engine as the replay left it (meaningful when
/// the report has no problem): what a coordinator resumes its jobs' rules from.
pub fn verify_ledger_engines(
    ledger: &Ledger,
    signer: Option<&ParticipantId>,
) -> Result<(Report, BTreeMap<String, JobEngine>), LedgerError> {
    let v = verify_all(ledger, signer)?;
    Ok((v.report(), v.replay.into_engines()))
}

fn verify_all(ledger: &Ledger, signer: Option<&ParticipantId>) -> Result<Verifier, LedgerError> {
    let mut v = Verifier::new(signer.cloned());
    let mut from = 0;
    loop {
        let rows = ledger.raw_rows(from, CHUNK)?;
        let Some(last) = rows.last() else { break };
        from = last.idx.max(0) as u64 + 1;
        if v.push_rows(rows) {
            break;
        }
    }
    v.finish();
    Ok(v)
}

/// An incremental verifier: feed it rows in order.
pub struct Verifier {
    expected_signer: Option<ParticipantId>,
    next_index: u64,
    head: Hash,
    replay: Replay,
    problem: Option<Problem>,
}

impl Verifier {
    pub fn new(signer: Option<ParticipantId>) -> Self {
        Self {
            expected_signer: signer,
            next_index: 0,
            head: GENESIS,
            replay: Replay::default(),
            problem: None,
        }
    }

    /// Checks the next stored rows; returns true once a problem is found.
    pub fn push_rows(&mut self, rows: Vec<RawRow>) -> bool {
        if self.problem.is_some() {
            return true;
        }
        // Decoding and hashing are independent per row: in parallel; linking is in order.
        let decoded: Vec<(i64, Result<Entry, EntryError>)> = rows
            .into_par_iter()
            .map(|row| (row.idx, decode_row(row).map_err(|(_, e)| e)))
            .collect();
        let mut entries = Vec::with_capacity(decoded.len());
        for (idx, entry) in decoded {
            if let Err(p) = self.link(idx, entry).map(|e| entries.push(e)) {
                self.problem = Some(p);
                break;
            }
        }
        self.check_and_replay(entries)
    }

    /// Checks decoded entries (e.g. served to a replica) in order; returns true once a
    /// problem is found.
    pub fn push_entries(&mut self, entries: Vec<Entry>) -> bool {
        let rows = entries
            .into_iter()
            .map(|e| RawRow {
                idx: e.index() as i64,
                signature: e.signature().to_vec(),
                body: e.bytes().to_vec(),
            })
            .collect();
        self.push_rows(rows)
    }

    /// Structural check of the next row: position, canonical decoding, index and link.
    fn link(&mut self, idx: i64, entry: Result<Entry, EntryError>) -> Result<Entry, Problem> {
        let at = self.next_index;
        let bad = |reason: String| Problem { index: at, reason };
        if idx != at as i64 {
            return Err(bad(if idx > at as i64 {
                format!("entry {at} is missing (the next stored entry is {idx})")
            } else {
                format!("stored at position {idx} out of order")
            }));
        }
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        if entry.index() != at {
            return Err(bad(format!(
                "holds entry {} (reordered or replaced)",
                entry.index()
            )));
        }
        if entry.prev_hash() != self.head {
            return Err(bad(
                "prev_hash does not match the previous entry's hash".into()
            ));
        }
        self.head = *entry.hash();
        self.next_index += 1;
        Ok(entry)
    }

    fn check_and_replay(&mut self, entries: Vec<Entry>) -> bool {
        let mut problems: Vec<Problem> = self.problem.take().into_iter().collect();
        if let (None, Some(first)) = (&self.expected_signer, entries.first()) {
            match first.signer_id() {
                Ok(id) => self.expected_signer = Some(id),
                Err(e) => problems.push(Problem {
                    index: first.index(),
                    reason: e.to_string(),
                }),
            }
        }
        if let Some(signer) = &self.expected_signer
            && let Some(p) = first_bad_signature(&entries, signer)
        {
            problems.push(p);
        }
        let limit = problems.iter().map(|p| p.index).min().unwrap_or(u64::MAX);
        let signed = verify_participant_signatures(&entries, &self.replay);
        for (entry, signed) in entries
            .iter()
            .zip(signed)
            .take_while(|(e, _)| e.index() < limit)
        {
            if let Err(reason) = self.replay.apply(entry, signed) {
                problems.push(Problem {
                    index: entry.index(),
                    reason,
                });
                break;
            }
        }
        self.problem = problems.into_iter().min_by_key(|p| p.index);
        self.problem.is_some()
    }

    /// Says the ledger is whole: a round's close and its reward are committed together, so a
    /// ledger that ends owing a reward lost its last entries (a resumed job could never
    /// record anything again).
    pub fn finish(&mut self) {
        if self.problem.is_some() {
            return;
        }
        if let Some((job, round)) = self.replay.reward_owed() {
            self.problem = Some(Problem {
                index: self.next_index,
                reason: format!(
                    "entry {} is missing: the ledger ends before the reward of job {job} round {round}",
                    self.next_index
                ),
            });
        }
    }

    /// Every job as replayed so far.
    pub fn jobs(&self) -> BTreeMap<String, JobSummary> {
        self.replay.summaries()
    }

    /// One job as replayed so far.
    pub fn job(&self, id: &str) -> Option<JobSummary> {
        self.replay.summary(id)
    }

    /// The verification result so far.
    pub fn report(&self) -> Report {
        let verified = self.problem.as_ref().map_or(self.next_index, |p| p.index);
        Report {
            verified,
            head: if self.problem.is_none() {
                self.head
            } else {
                GENESIS
            },
            signer: self.expected_signer.as_ref().map(|s| s.to_string()),
            problem: self.problem.clone(),
        }
    }
}

/// The first entry whose signature is not the signer's valid signature.
fn first_bad_signature(entries: &[Entry], signer: &ParticipantId) -> Option<Problem> {
    let key = signer.verifying_key();
    entries.par_chunks(SIG_BATCH).find_map_first(|batch| {
        if batch.iter().all(|e| e.signer() == signer.as_str()) {
            let messages: Vec<&[u8]> = batch.iter().map(|e| &e.hash()[..]).collect();
            let signatures: Vec<ed25519_dalek::Signature> = batch
                .iter()
                .map(|e| ed25519_dalek::Signature::from_bytes(e.signature()))
                .collect();
            let keys = vec![*key; batch.len()];
            if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
                return None;
            }
        }
        // Something in this batch is wrong: name the first entry, in order, that is.
        batch.iter().find_map(|e| {
            let reason = if e.signer() != signer.as_str() {
                format!("signed by {}, not by the coordinator {signer}", e.signer())
            } else if signer.verify(e.hash(), e.signature()).is_err() {
                "signature does not verify".to_string()
            } else {
                return None;
            };
            Some(Problem {
                index: e.index(),
                reason,
            })
        })
    })
}

/// For each entry, whether the participant signatures it carries (if any) verify: batch
/// verification per chunk, in parallel; a failing chunk is checked one by one. did:keys the
/// replay has parsed before are taken from it.
fn verify_participant_signatures(entries: &[Entry], replay: &Replay) -> Vec<bool> {
    type Item = (ParticipantId, [u8; 32], ed25519_dalek::Signature);
    let id = |did: &str| {
        replay
            .known_id(did)
            .cloned()
            .or_else(|| ParticipantId::parse(did).ok())
    };
    entries
        .par_chunks(SIG_BATCH)
        .flat_map_iter(|chunk| {
            // Per entry: its parsed signatures, or None if one cannot even be parsed.
            let items: Vec<Option<Vec<Item>>> = chunk
                .iter()
                .map(|e| {
                    participant_signatures(e, &id)?
                        .into_iter()
                        .map(|(signer, digest, sig)| {
                            let sig = ed25519_dalek::Signature::from_slice(sig).ok()?;
                            Some((signer, digest, sig))
                        })
                        .collect()
                })
                .collect();
            let present: Vec<_> = items.iter().flatten().flatten().collect();
            let messages: Vec<&[u8]> = present.iter().map(|(_, d, _)| &d[..]).collect();
            let signatures: Vec<_> = present.iter().map(|(_, _, s)| *s).collect();
            let keys: Vec<_> = present
                .iter()
                .map(|(id, _, _)| *id.verifying_key())
                .collect();
            let all_good = ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok();
            items
                .into_iter()
                .map(move |item| match item {
                    None => false,
                    Some(sigs) => {
                        all_good
                            || sigs
                                .iter()
                                .all(|(id, digest, sig)| id.verify(digest, &sig.to_bytes()).is_ok())
                    }
                })
                .collect::<Vec<_>>()
        })
        .collect()
}
