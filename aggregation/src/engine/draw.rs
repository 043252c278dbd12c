//! Admissions and a secure job's committee draw. A participant is admitted once, asked for by
//! itself (its signature), with a sealing key that is not a low-order point and, in a secure
//! job, a draw commitment. The draw's pools are not the coordinator's to pick: the first is
//! every admitted participant, each later one exactly those who revealed in the attempt
//! before; every reveal is a link of its member's committed chain, and a complete attempt
//! fixes the job's draw entropy.

use std::collections::BTreeSet;

use conclave_crypto::committee::{self, is_link, pool_hash};
use conclave_crypto::{ParticipantId, PublicIdentity};
use conclave_proto::v1;

use super::{Admitted, Change, Hash, JobEngine, Refusal, hash32};

/// How a draw attempt's reveals end it.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Everyone in the pool revealed: the job's draw entropy.
    Complete(Hash),
    /// Some did not: they are excluded, and the next pool is those who did.
    Incomplete {
        excluded: Vec<String>,
        revealers: Vec<ParticipantId>,
    },
}

impl JobEngine {
    pub(super) fn check_admission(
        &self,
        p: &v1::ParticipantAdmitted,
        signed: bool,
    ) -> Result<Change, Refusal> {
        let id = ParticipantId::parse(&p.participant).map_err(|e| Refusal(e.to_string()))?;
        if self.finished {
            return Err(Refusal(format!("job {} is finished", p.job_id)));
        }
        if !self.spec.admission.is_empty() && !self.spec.admission.contains(&id) {
            return Err(Refusal(format!(
                "{} is not on the job's admission list",
                p.participant
            )));
        }
        let key = hash32(&p.sealing_key, "sealing_key")?;
        PublicIdentity::check_sealing_key(&key).map_err(|e| Refusal(e.to_string()))?;
        let commitment = match (self.spec.secagg(), p.draw_commitment.is_empty()) {
            (Some(_), false) => Some(hash32(&p.draw_commitment, "draw_commitment")?),
            (None, true) => None,
            (Some(_), true) => return Err("a secure job's admission has a draw commitment".into()),
            (None, false) => return Err("a plain job's admission has no draw commitment".into()),
        };
        if !signed {
            return Err(Refusal(format!(
                "the admission of {} is not signed by it",
                p.participant
            )));
        }
        if self.admitted.contains_key(&p.participant) {
            return Err(Refusal(format!("{} is admitted twice", p.participant)));
        }
        Ok(Change::Admit(
            p.participant.clone(),
            Box::new(Admitted {
                id,
                sealing_key: key,
                commitment,
            }),
        ))
    }

    pub(super) fn check_draw_pool(&self, p: &v1::DrawPool) -> Result<Change, Refusal> {
        if self.spec.secagg().is_none() {
            return Err("a plain job draws no committee".into());
        }
        if self.draw.entropy.is_some() || self.last_round != 0 {
            return Err("the job's draw is already done".into());
        }
        if self.draw.open_attempt.is_some() || p.attempt != self.draw.next_attempt {
            return Err(Refusal(format!(
                "draw attempt {} out of order (next is {})",
                p.attempt, self.draw.next_attempt
            )));
        }
        if p.attempt >= committee::CHAIN_LEN {
            return Err("no draw attempts left".into());
        }
        // The pool is not the coordinator's to pick: the first is every admitted
        // participant (at least start_participants of them), each later one exactly those who
        // revealed in the attempt before (no newcomers, so no retry is free).
        let expected: Vec<ParticipantId> = if p.attempt == 0 {
            let mut all: Vec<ParticipantId> =
                self.admitted.values().map(|a| a.id.clone()).collect();
            all.sort();
            if all.len() < self.spec.start_participants as usize {
                return Err(Refusal(format!(
                    "a first draw pool of {}, fewer than start_participants ({})",
                    all.len(),
                    self.spec.start_participants
                )));
            }
            all
        } else {
            self.draw.last_revealers.clone()
        };
        if !expected
            .iter()
            .map(|m| m.as_str())
            .eq(p.participants.iter())
        {
            return Err(Refusal(format!(
                "draw attempt {}'s pool is not {}",
                p.attempt,
                if p.attempt == 0 {
                    "every admitted participant"
                } else {
                    "exactly those who revealed in the attempt before"
                }
            )));
        }
        if expected.len() < self.spec.min_participants as usize {
            return Err(Refusal(format!(
                "a draw pool of {} is smaller than min_participants",
                expected.len()
            )));
        }
        Ok(Change::DrawPool(p.attempt, expected))
    }

    pub(super) fn check_draw_reveals(
        &self,
        p: &v1::DrawReveals,
        signed: bool,
    ) -> Result<Change, Refusal> {
        let Some((attempt, pool)) = &self.draw.open_attempt else {
            return Err("no draw attempt is open".into());
        };
        let attempt = *attempt;
        if attempt != p.attempt {
            return Err(Refusal(format!(
                "reveals for attempt {} while attempt {attempt} is open",
                p.attempt
            )));
        }
        let pool_hash = pool_hash(&p.job_id, attempt, pool);
        if p.pool_hash != pool_hash {
            return Err("the reveals name another pool than the open attempt's".into());
        }
        if !signed {
            return Err("a reveal is not signed by its pool member".into());
        }
        let mut links = Vec::with_capacity(p.reveals.len());
        let mut revealed = BTreeSet::new();
        let mut revealers = Vec::with_capacity(p.reveals.len());
        let mut at = 0;
        for r in &p.reveals {
            // In pool order, each member at most once.
            let Some(pos) = pool[at..].iter().position(|m| m.as_str() == r.participant) else {
                return Err(Refusal(format!(
                    "{} reveals out of pool order or is not in the pool",
                    r.participant
                )));
            };
            at += pos + 1;
            let member = &pool[at - 1];
            let value = hash32(&r.value, "draw link")?;
            let commitment = self.admitted[member.as_str()]
                .commitment
                .ok_or("a pool member without a draw commitment")?;
            if !is_link(&commitment, attempt + 1, &value) {
                return Err(Refusal(format!(
                    "{}'s link does not match its draw commitment",
                    r.participant
                )));
            }
            revealed.insert(r.participant.as_str());
            revealers.push(member.clone());
            links.push(value);
        }
        let complete = revealed.len() == pool.len();
        if complete != p.complete {
            return Err("the attempt's completeness is misstated".into());
        }
        Ok(Change::DrawReveals(if complete {
            Outcome::Complete(committee::draw_entropy(&pool_hash, &links))
        } else {
            Outcome::Incomplete {
                excluded: pool
                    .iter()
                    .filter(|m| !revealed.contains(m.as_str()))
                    .map(|m| m.to_string())
                    .collect(),
                revealers,
            }
        }))
    }

    pub(super) fn apply_draw_reveals(&mut self, outcome: Outcome) {
        let attempt = self
            .draw
            .open_attempt
            .take()
            .map_or(0, |(attempt, _)| attempt);
        match outcome {
            Outcome::Complete(entropy) => self.draw.entropy = Some(entropy),
            Outcome::Incomplete {
                excluded,
                revealers,
            } => {
                self.draw.excluded.extend(excluded);
                self.draw.next_attempt = attempt + 1;
                self.draw.last_revealers = revealers;
            }
        }
    }
}
