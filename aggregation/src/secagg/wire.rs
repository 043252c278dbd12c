//! Conversions between the protocol's messages and their `conclave.v1` wire form. Parsing
//! checks every identity, key and hash length, so the state machines never see a malformed
//! value.

use conclave_crypto::shamir::Share;
use conclave_crypto::{ParticipantId, PublicIdentity};
use conclave_proto::v1;

use super::{Approval, Manifest, MemberView, ProtocolError, RevealedShare, RoundConfig, Statement};

fn bad(what: impl Into<String>) -> ProtocolError {
    ProtocolError::BadManifest(what.into())
}

fn id(s: &str) -> Result<ParticipantId, ProtocolError> {
    ParticipantId::parse(s).map_err(|e| bad(e.to_string()))
}

fn hash32(b: &[u8], what: &str) -> Result<[u8; 32], ProtocolError> {
    b.try_into()
        .map_err(|_| bad(format!("{what} must be 32 bytes")))
}

fn keys(k: &v1::PublicKeys) -> Result<PublicIdentity, ProtocolError> {
    Ok(PublicIdentity {
        id: id(&k.participant)?,
        sealing_key: hash32(&k.sealing_key, "sealing key")?,
    })
}

fn keys_to_wire(p: &PublicIdentity) -> v1::PublicKeys {
    v1::PublicKeys {
        participant: p.id.to_string(),
        sealing_key: p.sealing_key.to_vec(),
    }
}

impl RoundConfig {
    /// The wire plan of this round (with the seed that drew its committee).
    pub fn to_plan(&self, draw_seed: [u8; 32]) -> v1::SecaggPlan {
        v1::SecaggPlan {
            participants: self.participants.iter().map(keys_to_wire).collect(),
            committee: self.committee.iter().map(keys_to_wire).collect(),
            threshold: self.threshold as u32,
            min_participants: self.min_participants as u32,
            len: self.len as u64,
            draw_seed: draw_seed.to_vec(),
        }
    }

    /// Parses and checks a wire plan for `job_id`'s round `round`.
    pub fn from_plan(
        job_id: &str,
        round: u32,
        plan: &v1::SecaggPlan,
    ) -> Result<Self, ProtocolError> {
        let config = RoundConfig {
            job_id: job_id.into(),
            round,
            participants: plan
                .participants
                .iter()
                .map(keys)
                .collect::<Result<_, _>>()?,
            committee: plan.committee.iter().map(keys).collect::<Result<_, _>>()?,
            threshold: plan.threshold as usize,
            min_participants: plan.min_participants as usize,
            len: usize::try_from(plan.len).map_err(|_| bad("len too large"))?,
        };
        config.validate()?;
        Ok(config)
    }
}

impl Manifest {
    /// The wire form (job, round and participant travel in the upload header).
    pub fn to_wire(&self) -> v1::SealedManifest {
        v1::SealedManifest {
            vector_hash: self.vector_hash.to_vec(),
            sealed_boxes: self.sealed.clone(),
            signature: self.signature.clone(),
        }
    }

    /// Parses a wire manifest uploaded by `participant` for a round.
    pub fn from_wire(
        job_id: &str,
        round: u32,
        participant: ParticipantId,
        m: &v1::SealedManifest,
    ) -> Result<Self, ProtocolError> {
        Ok(Manifest {
            job_id: job_id.into(),
            round,
            participant,
            vector_hash: hash32(&m.vector_hash, "vector_hash")?,
            sealed: m.sealed_boxes.clone(),
            signature: m.signature.clone(),
        })
    }
}

impl MemberView {
    pub fn to_wire(&self) -> v1::MemberView {
        v1::MemberView {
            participant: self.participant.to_string(),
            vector_hash: self.vector_hash.to_vec(),
            digests: self.digests.iter().map(|d| d.to_vec()).collect(),
            sealed_box: self.sealed_box.clone(),
            signature: self.signature.clone(),
        }
    }

    pub fn from_wire(job_id: &str, round: u32, v: &v1::MemberView) -> Result<Self, ProtocolError> {
        Ok(MemberView {
            job_id: job_id.into(),
            round,
            participant: id(&v.participant)?,
            vector_hash: hash32(&v.vector_hash, "vector_hash")?,
            digests: v
                .digests
                .iter()
                .map(|d| hash32(d, "digest"))
                .collect::<Result<_, _>>()?,
            sealed_box: v.sealed_box.clone(),
            signature: v.signature.clone(),
        })
    }
}

impl Statement {
    pub fn to_wire(&self) -> v1::Statement {
        v1::Statement {
            uploads: self
                .uploads
                .iter()
                .map(|(p, h)| v1::StatementUpload {
                    participant: p.to_string(),
                    manifest_hash: h.to_vec(),
                })
                .collect(),
            answering: self.answering.iter().map(|p| p.to_string()).collect(),
        }
    }

    pub fn from_wire(job_id: &str, round: u32, s: &v1::Statement) -> Result<Self, ProtocolError> {
        Ok(Statement {
            job_id: job_id.into(),
            round,
            uploads: s
                .uploads
                .iter()
                .map(|u| {
                    Ok((
                        id(&u.participant)?,
                        hash32(&u.manifest_hash, "manifest_hash")?,
                    ))
                })
                .collect::<Result<_, ProtocolError>>()?,
            answering: s
                .answering
                .iter()
                .map(|a| id(a))
                .collect::<Result<_, _>>()?,
        })
    }
}

impl Approval {
    pub fn to_wire(&self) -> v1::Approval {
        v1::Approval {
            member: self.member.to_string(),
            statement_hash: self.statement_hash.to_vec(),
            signature: self.signature.clone(),
        }
    }

    pub fn from_wire(a: &v1::Approval) -> Result<Self, ProtocolError> {
        Ok(Approval {
            member: id(&a.member)?,
            statement_hash: hash32(&a.statement_hash, "statement_hash")?,
            signature: a.signature.clone(),
        })
    }
}

impl RevealedShare {
    pub fn to_wire(&self) -> v1::RevealedShare {
        v1::RevealedShare {
            participant: self.participant.to_string(),
            absent: self.absent as u32,
            index: self.share.index() as u32,
            value: self.share.expose().to_vec(),
        }
    }

    pub fn from_wire(s: &v1::RevealedShare) -> Result<Self, ProtocolError> {
        let index = u8::try_from(s.index).map_err(|_| bad("share index out of range"))?;
        let share = Share::from_parts(index, hash32(&s.value, "share value")?)
            .map_err(|e| bad(e.to_string()))?;
        Ok(RevealedShare {
            participant: id(&s.participant)?,
            absent: s.absent as usize,
            share,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use conclave_crypto::Identity;

    use super::*;
    use crate::secagg::contribute;

    #[test]
    fn messages_round_trip_through_the_wire() {
        let people: Vec<Arc<Identity>> = (0..3).map(|_| Arc::new(Identity::generate())).collect();
        let config = RoundConfig {
            job_id: "j".into(),
            round: 2,
            participants: people.iter().map(|p| p.public()).collect(),
            committee: people.iter().map(|p| p.public()).collect(),
            threshold: 2,
            min_participants: 2,
            len: 5,
        };
        assert_eq!(
            RoundConfig::from_plan("j", 2, &config.to_plan([1; 32])).unwrap(),
            config
        );
        let (_, manifest) = contribute(&config, &people[0], [1, 2, 3, 4, 5]).unwrap();
        let back =
            Manifest::from_wire("j", 2, people[0].participant_id(), &manifest.to_wire()).unwrap();
        assert_eq!(back, manifest);
        back.verify(&config).unwrap();
        let view = manifest.view_for(1);
        assert_eq!(
            MemberView::from_wire("j", 2, &view.to_wire()).unwrap(),
            view
        );
        let mut plan = config.to_plan([1; 32]);
        plan.threshold = 1;
        assert!(
            RoundConfig::from_plan("j", 2, &plan).is_err(),
            "t must be > c/2"
        );
        let mut plan = config.to_plan([1; 32]);
        plan.committee[0].sealing_key.pop();
        assert!(RoundConfig::from_plan("j", 2, &plan).is_err());
    }
}
