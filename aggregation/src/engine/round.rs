//! A round's opening and what it collects. Rounds open one at a time, in order, from the latest
//! model, for every admitted participant in admission order (none hand-picked); a secure
//! round's committee is the draw recomputed from the job's draw entropy. Every accepted upload
//! is signed by a participant of the round, once; a plain one shows its sample count (within
//! `max_samples`), a secure one a manifest and no count. Complaints come from committee
//! members about accepted uploads, before any attestation; each member attests once, with its
//! signature on the statement's hash.

use conclave_crypto::ParticipantId;
use conclave_crypto::committee::{draw_committee, draw_seed};
use conclave_proto::v1;

use super::{Change, JobEngine, Refusal, RoundState, hash32};
use crate::secagg::ComplaintReason;

/// Why an upload to a round is refused whatever it holds: the coordinator answers an upload's
/// header with this before it reads the body, and refuses the entry with it at commit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UploadRefusal {
    #[error("round {round} of job {job} is not open")]
    NotOpen {
        job: String,
        round: u32,
        /// The round that is open, if any.
        current: Option<u32>,
    },
    #[error("{did} is not in round {round}")]
    NotInRound { did: String, round: u32 },
    #[error("{did} uploaded twice in round {round}")]
    Duplicate { did: String, round: u32 },
}

impl JobEngine {
    /// Whether `did` may upload to `round`: the round is open, `did` trains in it, and has no
    /// upload accepted in it yet.
    pub fn check_upload_claim(&self, round: u32, did: &str) -> Result<(), UploadRefusal> {
        let open = match &self.open {
            Some(r) if r.round == round => r,
            other => {
                return Err(UploadRefusal::NotOpen {
                    job: self.id.clone(),
                    round,
                    current: other.as_ref().map(|r| r.round),
                });
            }
        };
        if !open.participants.contains(did) {
            return Err(UploadRefusal::NotInRound {
                did: did.into(),
                round,
            });
        }
        if open.uploads.contains_key(did) {
            return Err(UploadRefusal::Duplicate {
                did: did.into(),
                round,
            });
        }
        Ok(())
    }

    pub(super) fn check_open(&self, p: &v1::RoundOpened) -> Result<Change, Refusal> {
        if self.finished || self.open.is_some() || p.round != self.last_round + 1 {
            return Err(Refusal(format!(
                "round {} cannot open (last round {}, {})",
                p.round,
                self.last_round,
                if self.open.is_some() {
                    "still open"
                } else {
                    "closed"
                }
            )));
        }
        let version = self.model_hashes.len() as u32 - 1;
        if p.base_version != version || p.base_model_hash != self.model_hashes[version as usize] {
            return Err(Refusal(format!(
                "round {} does not start from the latest model (version {version})",
                p.round
            )));
        }
        // Every admitted participant trains, and is in the committee's pool: none hand-picked.
        if p.participants != *self.admission_order {
            return Err(Refusal(format!(
                "round {}'s participants are not every admitted participant in admission order",
                p.round
            )));
        }
        let committee = match self.spec.secagg() {
            None => {
                if !p.committee.is_empty() || !p.draw_seed.is_empty() || !p.plan_hash.is_empty() {
                    return Err("a plain round has no committee".into());
                }
                Vec::new()
            }
            Some(s) => {
                let entropy = self.draw.entropy.ok_or_else(|| {
                    Refusal(format!(
                        "round {} opens before the job's draw is complete",
                        p.round
                    ))
                })?;
                let seed = draw_seed(&p.job_id, p.round, &entropy);
                if p.draw_seed != seed {
                    return Err(Refusal(format!(
                        "round {}: the draw seed is not BLAKE3 of the job, round and draw entropy",
                        p.round
                    )));
                }
                let ids: Vec<ParticipantId> = self
                    .admission_order
                    .iter()
                    .map(|d| self.admitted[d].id.clone())
                    .collect();
                let drawn = draw_committee(
                    &seed,
                    &ids,
                    &self.previous_committee,
                    s.committee_size as usize,
                );
                let committee = match &drawn {
                    Ok(d) if d.iter().map(|m| m.as_str()).eq(p.committee.iter()) => d.clone(),
                    // Too few participants to draw: the round opens without one.
                    Err(_) if p.committee.is_empty() => Vec::new(),
                    _ => {
                        return Err(Refusal(format!(
                            "round {}: the committee is not the one the draw gives ({})",
                            p.round,
                            drawn.map_or_else(
                                |e| e.to_string(),
                                |d| d
                                    .iter()
                                    .map(|m| m.to_string())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        )));
                    }
                };
                if !committee.is_empty() {
                    hash32(&p.plan_hash, "plan_hash")?;
                }
                committee
            }
        };
        Ok(Change::Open(Box::new(RoundState {
            round: p.round,
            participants: p.participants.iter().cloned().collect(),
            base_version: p.base_version,
            base_model_hash: p.base_model_hash.clone(),
            committee,
            draw_seed: p.draw_seed.clone(),
            plan_hash: p.plan_hash.clone(),
            ..Default::default()
        })))
    }

    pub(super) fn check_upload(
        &self,
        p: &v1::UpdateAccepted,
        signed: bool,
    ) -> Result<Change, Refusal> {
        self.check_upload_claim(p.round, &p.participant)
            .map_err(|e| Refusal(e.to_string()))?;
        hash32(&p.payload_hash, "payload_hash")?;
        if self.spec.secagg().is_some() {
            if p.num_samples != 0 {
                return Err("a secure upload shows no sample count".into());
            }
            hash32(&p.manifest_hash, "manifest_hash")?;
        } else if p.num_samples == 0 || !p.manifest_hash.is_empty() {
            return Err("a plain upload has a sample count and no manifest".into());
        } else if p.num_samples > crate::job::MAX_SAMPLES
            || self.spec.max_samples.is_some_and(|m| p.num_samples > m)
        {
            return Err(Refusal(format!(
                "{} claims {} samples, more than the job's max_samples",
                p.participant, p.num_samples
            )));
        }
        if !signed {
            return Err(Refusal(format!(
                "the upload of {} in round {} is not signed by its participant",
                p.participant, p.round
            )));
        }
        Ok(Change::Upload(
            p.participant.clone(),
            p.num_samples,
            p.manifest_hash.clone(),
        ))
    }

    pub(super) fn check_complaint(
        &self,
        p: &v1::CommitteeComplaint,
        signed: bool,
    ) -> Result<Change, Refusal> {
        let round = self.open_round(p.round)?;
        if !round.committee.iter().any(|m| m.as_str() == p.member) {
            return Err(Refusal(format!(
                "{} is not on round {}'s committee",
                p.member, p.round
            )));
        }
        if !round.attestations.is_empty() {
            return Err("a complaint after a member attested a statement".into());
        }
        let manifest = hash32(&p.manifest_hash, "manifest_hash")?;
        if round.uploads.get(&p.participant).map(|(_, m)| m.as_slice()) != Some(&manifest[..]) {
            return Err(Refusal(format!(
                "the complaint names an upload of {} that was not accepted",
                p.participant
            )));
        }
        ComplaintReason::from_code(p.reason)
            .ok_or_else(|| Refusal(format!("unknown complaint reason {}", p.reason)))?;
        if !signed {
            return Err(Refusal(format!(
                "{}'s complaint is not signed by it",
                p.member
            )));
        }
        if round
            .complained
            .contains(&(p.member.clone(), p.participant.clone()))
        {
            return Err(Refusal(format!(
                "{} complains twice about {}",
                p.member, p.participant
            )));
        }
        Ok(Change::Complaint(Box::new(p.clone())))
    }

    pub(super) fn check_attestation(
        &self,
        p: &v1::CommitteeAttestation,
    ) -> Result<Change, Refusal> {
        let round = self.open_round(p.round)?;
        let Some(member) = round.committee.iter().find(|m| m.as_str() == p.member) else {
            return Err(Refusal(format!(
                "{} is not on round {}'s committee",
                p.member, p.round
            )));
        };
        let statement = hash32(&p.statement_hash, "statement_hash")?;
        member.verify(&statement, &p.signature).map_err(|_| {
            Refusal(format!(
                "{}'s signature on the statement does not verify",
                p.member
            ))
        })?;
        if round.attestations.contains_key(&p.member) {
            return Err(Refusal(format!(
                "{} attests twice in round {}",
                p.member, p.round
            )));
        }
        Ok(Change::Attest(p.member.clone(), statement))
    }
}
