//! A participant's replica of a coordinator's ledger. Served entries are appended only if
//! they extend the replica's chain, are signed by the coordinator key the replica first saw,
//! and replay correctly; the first entry served must be the replica's own last entry,
//! byte for byte. Because every entry hashes its predecessor, that one comparison catches a
//! coordinator that rewrote anything it served before, and a coordinator that stops serving
//! an entry the replica holds has truncated its history.

use crate::LedgerError;
use crate::db::{Head, Ledger};
use crate::entry::Entry;
use crate::verify::{Report, Verifier};

/// A replica being brought up to date.
pub struct Replica {
    ledger: Ledger,
    verifier: Verifier,
    /// The index the next served entry must have.
    expect: u64,
    /// Whether the first served entry (the replica's last) was compared yet.
    compared: bool,
}

impl Replica {
    /// Opens (creating if needed) a replica database and verifies what it holds.
    pub fn open(path: &std::path::Path) -> Result<(Self, Report), LedgerError> {
        let ledger = Ledger::open(path)?;
        // Replay what the replica holds, so new entries are checked in context.
        let mut verifier = Verifier::new(None);
        let mut from = 0;
        loop {
            let rows = ledger.raw_rows(from, 8192)?;
            let Some(last) = rows.last() else { break };
            from = last.idx.max(0) as u64 + 1;
            if verifier.push_rows(rows) {
                break;
            }
        }
        let report = verifier.report();
        if let Some(p) = &report.problem {
            return Err(LedgerError::Corrupt(format!(
                "the replica itself fails verification at entry {}: {}",
                p.index, p.reason
            )));
        }
        let head = ledger.head();
        Ok((
            Self {
                ledger,
                verifier,
                expect: head.len.saturating_sub(1),
                compared: head.len == 0,
            },
            report,
        ))
    }

    /// The index to ask the coordinator to serve from: the replica's last entry (to compare),
    /// or 0 when empty.
    pub fn request_from(&self) -> u64 {
        self.ledger.head().len.saturating_sub(1)
    }

    /// Starts a new request to the coordinator (a replica kept open across syncs): the first
    /// entry served must again be the replica's last one. Returns the index to ask from.
    pub fn begin(&mut self) -> u64 {
        let head = self.ledger.head();
        self.expect = head.len.saturating_sub(1);
        self.compared = head.len == 0;
        self.request_from()
    }

    pub fn head(&self) -> Head {
        self.ledger.head()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// What the verified replica holds of one job (its open round, admissions, draw).
    pub fn job(&self, id: &str) -> Option<crate::verify::JobSummary> {
        self.verifier.job(id)
    }

    /// The coordinator key that signs the replica's entries, once it holds any.
    pub fn signer(&self) -> Option<String> {
        self.verifier.report().signer
    }

    /// Checks and durably appends served entries (in the order served, starting at
    /// [`Replica::request_from`]). Nothing is appended from a batch that has a bad entry.
    pub fn apply(&mut self, served: Vec<Entry>) -> Result<u64, LedgerError> {
        let mut fresh = Vec::with_capacity(served.len());
        for entry in served {
            if entry.index() != self.expect {
                return Err(LedgerError::BadServedEntry {
                    index: entry.index(),
                    reason: format!("expected entry {}", self.expect),
                });
            }
            if !self.compared {
                let mine = self.ledger.get(entry.index())?.ok_or_else(|| {
                    LedgerError::Corrupt("the replica lost its last entry".into())
                })?;
                if mine.bytes() != entry.bytes() || mine.signature() != entry.signature() {
                    return Err(LedgerError::Rewritten(format!(
                        "entry {} was served before with hash {}, now with hash {}",
                        entry.index(),
                        hex::encode(mine.hash()),
                        hex::encode(entry.hash())
                    )));
                }
                self.compared = true;
            } else {
                fresh.push(entry);
            }
            self.expect += 1;
        }
        if fresh.is_empty() {
            return Ok(0);
        }
        let head = self.ledger.head();
        if self.verifier.push_entries(fresh.clone()) {
            let p = self.verifier.report().problem.expect("a problem was found");
            return Err(LedgerError::BadServedEntry {
                index: p.index,
                reason: p.reason,
            });
        }
        let n = fresh.len() as u64;
        self.ledger.commit_entries(head, &fresh, &[])?;
        Ok(n)
    }

    /// Called when the coordinator's stream ended: an empty answer to a request for the
    /// replica's own last entry means the coordinator no longer has it.
    pub fn finish(&self) -> Result<(), LedgerError> {
        if !self.compared {
            return Err(LedgerError::Rewritten(format!(
                "the coordinator no longer serves entry {} (its history was truncated)",
                self.request_from()
            )));
        }
        Ok(())
    }
}
