//! A round's close. A failed round names why and has no contributors and no model. A
//! successful one makes the next model version and counts each contributor once with the
//! sample count its upload showed, at least `min_participants` of them: in a plain round every
//! accepted upload; in a secure round exactly the approved statement's uploads, which are the
//! accepted uploads no member complained about, attested by at least `t` of the statement's
//! answering members (`A`, in committee order), who are the members credited. Its rewards are
//! the policy's split ([`super::rewards`]), due as the job's next entry.

use std::collections::BTreeSet;

use conclave_proto::v1;

use super::{JobEngine, Refusal, hash32};
use crate::secagg::Statement;

/// Longest failure reason a failed round may record.
pub const MAX_FAILURE_CHARS: usize = 1024;

/// What a checked close changes.
#[derive(Debug)]
pub(super) struct Closed {
    /// The new model's hash (a successful round).
    model_hash: Option<Vec<u8>>,
    /// The awards the round earns, if any.
    pub(super) awards: Vec<v1::Award>,
    round: u32,
}

impl JobEngine {
    pub(super) fn check_close(&self, p: &v1::RoundClosed) -> Result<Closed, Refusal> {
        let round = self.open_round(p.round)?;
        let failed = Closed {
            model_hash: None,
            awards: Vec::new(),
            round: p.round,
        };
        if !p.success {
            if !p.contributors.is_empty() || !p.model_hash.is_empty() || p.result_version != 0 {
                return Err("a failed round has no contributors and no model".into());
            }
            if p.failure.chars().count() > MAX_FAILURE_CHARS {
                return Err("the failure reason is too long".into());
            }
            return Ok(failed);
        }
        if !p.failure.is_empty() {
            return Err("a successful round gives no failure reason".into());
        }
        let version = self.model_hashes.len() as u32;
        if p.result_version != version {
            return Err(Refusal(format!(
                "the new model must be version {version}, not {}",
                p.result_version
            )));
        }
        hash32(&p.model_hash, "model_hash")?;
        let mut contributors = Vec::with_capacity(p.contributors.len());
        for c in &p.contributors {
            let Some((samples, _)) = round.uploads.get(&c.participant) else {
                return Err(Refusal(format!(
                    "{} is counted but never uploaded",
                    c.participant
                )));
            };
            if c.num_samples != *samples {
                return Err(Refusal(format!(
                    "{} is counted with {} samples, its upload had {samples}",
                    c.participant, c.num_samples
                )));
            }
            contributors.push((c.participant.clone(), c.num_samples));
        }
        let unique: BTreeSet<&String> = contributors.iter().map(|(d, _)| d).collect();
        if unique.len() != contributors.len() {
            return Err("a contributor is counted twice".into());
        }
        if contributors.len() < self.spec.min_participants as usize {
            return Err(Refusal(format!(
                "{} contributors, fewer than min_participants ({})",
                contributors.len(),
                self.spec.min_participants
            )));
        }
        let completed = match self.spec.secagg() {
            None => {
                if contributors.len() != round.uploads.len() {
                    return Err("a plain round sums every accepted upload".into());
                }
                // Each count is at most MAX_SAMPLES (2^40): a sum that overflows is refused.
                let total = contributors
                    .iter()
                    .try_fold(0u64, |t, (_, n)| t.checked_add(*n))
                    .ok_or("the contributors' sample counts overflow")?;
                if p.total_samples != total {
                    return Err(Refusal(format!(
                        "total_samples {} is not {total}",
                        p.total_samples
                    )));
                }
                if !p.committee_completed.is_empty() || p.statement.is_some() {
                    return Err("a plain round has no committee".into());
                }
                Vec::new()
            }
            Some(s) => self.check_statement(p, &contributors, s.threshold as usize)?,
        };
        let awards = super::rewards::round_awards(&self.spec.rewards, &contributors, &completed);
        Ok(Closed {
            model_hash: Some(p.model_hash.clone()),
            awards,
            round: p.round,
        })
    }

    /// A secure round's approved statement against what the round recorded; returns the
    /// members it credits.
    fn check_statement(
        &self,
        p: &v1::RoundClosed,
        contributors: &[(String, u64)],
        threshold: usize,
    ) -> Result<Vec<String>, Refusal> {
        let round = self.open_round(p.round)?;
        let wire = p
            .statement
            .as_ref()
            .ok_or("a secure round closes with its approved statement")?;
        let statement =
            Statement::from_wire(&p.job_id, p.round, wire).map_err(|e| Refusal(e.to_string()))?;
        let summed: Vec<&str> = statement.uploads.iter().map(|(d, _)| d.as_str()).collect();
        let counted: Vec<&str> = contributors.iter().map(|(d, _)| d.as_str()).collect();
        if summed != counted {
            return Err("the contributors are not the statement's uploads".into());
        }
        for (d, manifest) in &statement.uploads {
            if round.uploads.get(d.as_str()).map(|(_, m)| m.as_slice()) != Some(&manifest[..]) {
                return Err(Refusal(format!(
                    "the statement's manifest of {d} is not the one uploaded"
                )));
            }
        }
        // U is every accepted upload that no member complained about: the coordinator cannot
        // drop an upload it accepted, nor keep one a member could not open.
        let complained: BTreeSet<&str> = round
            .complaints
            .iter()
            .map(|c| c.participant.as_str())
            .collect();
        let expected: Vec<&str> = round
            .uploads
            .keys()
            .map(String::as_str)
            .filter(|d| !complained.contains(d))
            .collect();
        let mut sorted = summed.clone();
        sorted.sort_unstable();
        if sorted != expected {
            return Err(
                "the statement does not sum exactly the uploads no member complained about".into(),
            );
        }
        // A: at least t committee members, each once, in committee order; only their
        // attestations count (a member signs only a statement that lists it).
        let positions: Vec<usize> = statement
            .answering
            .iter()
            .map(|a| round.committee.iter().position(|m| m == a))
            .collect::<Option<_>>()
            .ok_or("a member answers but is not on the committee")?;
        if positions.len() < threshold || !positions.windows(2).all(|w| w[0] < w[1]) {
            return Err(Refusal(format!(
                "the statement's answering members are not {threshold} or more distinct committee members in committee order"
            )));
        }
        let hash = statement.hash();
        let signers = round
            .attestations
            .iter()
            .filter(|(m, h)| {
                **h == hash && statement.answering.iter().any(|a| a.as_str() == m.as_str())
            })
            .count();
        if signers < threshold {
            return Err(Refusal(format!(
                "the statement has {signers} committee attestations, fewer than the threshold {threshold}"
            )));
        }
        let answering: Vec<String> = statement.answering.iter().map(|a| a.to_string()).collect();
        if p.committee_completed != answering {
            return Err("the members credited are not the statement's answering members".into());
        }
        Ok(answering)
    }

    pub(super) fn apply_close(&mut self, closed: Closed) {
        self.open = None;
        if let Some(hash) = closed.model_hash {
            self.model_hashes.push(hash);
        }
        if closed.round >= self.spec.rounds {
            self.finished = true;
        }
        if !closed.awards.is_empty() {
            self.reward_due = Some((closed.round, closed.awards));
        }
    }
}
