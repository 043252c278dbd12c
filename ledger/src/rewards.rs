//! Balances: each participant's earnings as the sum of the reward entries in the ledger (never
//! stored apart from them). How a round's pool is split is a rule of the round engine
//! ([`round_awards`], re-exported here).

use std::collections::BTreeMap;

pub use conclave_aggregation::engine::rewards::round_awards;
use conclave_proto::v1;

use crate::entry::{Entry, Payload};

/// One participant's earnings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Balance {
    pub contribution: u64,
    pub committee: u64,
    /// Rounds the participant was paid for.
    pub rounds: u64,
}

impl Balance {
    pub fn total(&self) -> u64 {
        self.contribution + self.committee
    }
}

/// Balances derived from reward entries, optionally for one job, by did.
#[derive(Debug, Default)]
pub struct Balances {
    job: Option<String>,
    by_did: BTreeMap<String, Balance>,
}

impl Balances {
    /// Balances over every job, or over `job` only.
    pub fn new(job: Option<&str>) -> Self {
        Self {
            job: job.map(str::to_owned),
            by_did: BTreeMap::new(),
        }
    }

    /// Adds an entry (only reward entries count).
    pub fn add(&mut self, entry: &Entry) {
        let Payload::Reward(r) = entry.payload() else {
            return;
        };
        if self.job.as_ref().is_some_and(|j| *j != r.job_id) {
            return;
        }
        let mut paid = Vec::new();
        for a in &r.awards {
            let b = self.by_did.entry(a.participant.clone()).or_default();
            match v1::AwardReason::try_from(a.reason) {
                Ok(v1::AwardReason::Committee) => b.committee += a.amount,
                _ => b.contribution += a.amount,
            }
            if !paid.contains(&&a.participant) {
                paid.push(&a.participant);
                b.rounds += 1;
            }
        }
    }

    /// Every participant's balance, by did.
    pub fn by_did(&self) -> &BTreeMap<String, Balance> {
        &self.by_did
    }
}
