//! Conversions between the protocol's messages and their `conclave.v1` wire form. Parsing
//! checks every identity, key and hash length, so the state machines never see a malformed
//! value.

use conclave_crypto::shamir::Share;
use conclave_crypto::{Identity, ParticipantId, PublicIdentity};
use conclave_proto::v1;

use super::{
    Approval, Complaint, ComplaintReason, Manifest, MemberView, ProtocolError, RevealedShare,
    RoundConfig, Statement,
};

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

/// Key-derivation context of what a coordinator signs of a round plan.
const PLAN_CONTEXT: &str = "conclave 2026-11 secagg round plan v1";

/// The 32 bytes a coordinator signs for `plan` (its signature field ignored) in `job_id`'s
/// round `round`: the plan's identity, named by every manifest made under it.
pub fn plan_digest(job_id: &str, round: u32, plan: &v1::SecaggPlan) -> [u8; 32] {
    use prost::Message;
    let mut unsigned = plan.clone();
    unsigned.signature.clear();
    let mut h = blake3::Hasher::new_derive_key(PLAN_CONTEXT);
    h.update(&(job_id.len() as u64).to_le_bytes());
    h.update(job_id.as_bytes());
    h.update(&round.to_le_bytes());
    h.update(&unsigned.encode_to_vec());
    *h.finalize().as_bytes()
}

/// Signs a round plan as the coordinator.
pub fn sign_plan(plan: &mut v1::SecaggPlan, job_id: &str, round: u32, coordinator: &Identity) {
    plan.coordinator = coordinator.participant_id().to_string();
    plan.signature = coordinator.sign(&plan_digest(job_id, round, plan)).to_vec();
}

/// Checks that `plan` for `job_id`'s round `round` is signed by `coordinator`.
pub fn verify_plan(
    plan: &v1::SecaggPlan,
    job_id: &str,
    round: u32,
    coordinator: &ParticipantId,
) -> Result<(), ProtocolError> {
    let bad = || ProtocolError::BadSignature(format!("round plan (coordinator {coordinator})"));
    if plan.coordinator != coordinator.as_str() {
        return Err(bad());
    }
    coordinator
        .verify(&plan_digest(job_id, round, plan), &plan.signature)
        .map_err(|_| bad())
}

impl RoundConfig {
    /// The wire plan of this round (with the seed that drew its committee), unsigned and
    /// without its base model (the coordinator fills that in).
    pub fn to_plan(&self, draw_seed: [u8; 32]) -> v1::SecaggPlan {
        v1::SecaggPlan {
            participants: self.participants.iter().map(keys_to_wire).collect(),
            committee: self.committee.iter().map(keys_to_wire).collect(),
            threshold: self.threshold as u32,
            min_participants: self.min_participants as u32,
            len: self.len as u64,
            draw_seed: draw_seed.to_vec(),
            coordinator: String::new(),
            signature: Vec::new(),
            base_version: 0,
            base_model_hash: Vec::new(),
        }
    }

    /// Parses and checks a wire plan for `job_id`'s round `round`.
    pub fn from_plan(
        job_id: &str,
        round: u32,
        plan: &v1::SecaggPlan,
    ) -> Result<Self, ProtocolError> {
        let config = RoundConfig {
            plan_hash: plan_digest(job_id, round, plan),
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
            plan_hash: self.plan_hash.to_vec(),
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
            plan_hash: hash32(&m.plan_hash, "plan_hash")?,
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
            plan_hash: self.plan_hash.to_vec(),
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
            plan_hash: hash32(&v.plan_hash, "plan_hash")?,
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

impl Complaint {
    /// The wire form (job, round and member travel in the signed report around it).
    pub fn to_wire(&self) -> v1::Complaint {
        v1::Complaint {
            participant: self.participant.to_string(),
            manifest_hash: self.manifest_hash.to_vec(),
            reason: self.reason.code() as i32,
            signature: self.signature.clone(),
        }
    }

    /// Parses a complaint `member` filed in `job_id`'s round `round`.
    pub fn from_wire(
        job_id: &str,
        round: u32,
        member: ParticipantId,
        c: &v1::Complaint,
    ) -> Result<Self, ProtocolError> {
        Ok(Complaint {
            job_id: job_id.into(),
            round,
            member,
            participant: id(&c.participant)?,
            manifest_hash: hash32(&c.manifest_hash, "manifest_hash")?,
            reason: ComplaintReason::from_code(c.reason)
                .ok_or_else(|| bad(format!("unknown complaint reason {}", c.reason)))?,
            signature: c.signature.clone(),
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
    use crate::secagg::{Member, contribute};

    /// Round 2 of job "j": three participants, the first `c` on the committee, t = 2.
    fn round_of_three(c: usize) -> (Vec<Arc<Identity>>, RoundConfig) {
        let people: Vec<Arc<Identity>> = (0..3).map(|_| Arc::new(Identity::generate())).collect();
        let config = RoundConfig {
            job_id: "j".into(),
            round: 2,
            participants: people.iter().map(|p| p.public()).collect(),
            committee: people[..c].iter().map(|p| p.public()).collect(),
            threshold: 2,
            min_participants: 2,
            len: 5,
            plan_hash: [0; 32],
        };
        let config = RoundConfig {
            plan_hash: plan_digest("j", 2, &config.to_plan([1; 32])),
            ..config
        };
        (people, config)
    }

    #[test]
    fn messages_round_trip_through_the_wire() {
        let (people, config) = round_of_three(3);
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

    #[test]
    fn a_plan_is_acted_on_only_with_the_pinned_coordinators_signature_for_its_round() {
        let (_, config) = round_of_three(2);
        let coordinator = Identity::generate();
        let pinned = coordinator.participant_id();
        let mut plan = config.to_plan([1; 32]);
        assert!(verify_plan(&plan, "j", 2, &pinned).is_err(), "unsigned");
        sign_plan(&mut plan, "j", 2, &coordinator);
        verify_plan(&plan, "j", 2, &pinned).unwrap();
        // The same plan replayed for another round or job, or edited, or signed by another key.
        assert!(verify_plan(&plan, "j", 3, &pinned).is_err());
        assert!(verify_plan(&plan, "k", 2, &pinned).is_err());
        let mut swapped = plan.clone();
        swapped.committee.swap(0, 1);
        assert!(verify_plan(&swapped, "j", 2, &pinned).is_err());
        let mut other = plan.clone();
        sign_plan(&mut other, "j", 2, &Identity::generate());
        assert!(verify_plan(&other, "j", 2, &pinned).is_err());
    }

    /// Applies byte edits, then optionally cuts the bytes short.
    fn mutate(
        mut bytes: Vec<u8>,
        edits: &[(proptest::sample::Index, u8)],
        cut: Option<proptest::sample::Index>,
    ) -> Vec<u8> {
        if !bytes.is_empty() {
            for (at, value) in edits {
                let i = at.index(bytes.len());
                bytes[i] ^= value | 1;
            }
        }
        if let Some(at) = cut {
            bytes.truncate(at.index(bytes.len() + 1));
        }
        bytes
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

        /// Whatever a malicious coordinator or a broken link makes of the bytes of a round
        /// plan, a manifest, a member's view, a statement, an approval or a revealed share,
        /// decoding and acting on them (a member checking a statement and its views, then
        /// revealing on approvals) returns a value or an error: it never panics. One message is
        /// mutated per case; the others are the valid ones, so later steps are reached.
        #[test]
        fn mutated_wire_messages_are_refused_not_panicked_on(
            edits in proptest::collection::vec(
                (proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>()),
                1..6,
            ),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
            which in 0..6usize,
        ) {
            use prost::Message;
            // One message is mutated per case, so the steps after it see valid input.
            let mutate = |kind: usize, bytes: Vec<u8>| {
                if kind == which { mutate(bytes, &edits, cut) } else { bytes }
            };
            let (people, config) = round_of_three(3);
            let plan = config.to_plan([1; 32]);
            let bytes = mutate(0, plan.encode_to_vec());
            if let Ok(p) = v1::SecaggPlan::decode(&bytes[..]) {
                let _ = RoundConfig::from_plan("j", 2, &p);
            }
            let mut uploads: Vec<Manifest> = people
                .iter()
                .map(|p| contribute(&config, p, [1, 2, 3, 4, 5]).unwrap().1)
                .collect();
            // A statement and its views list uploads by participant.
            uploads.sort_by(|a, b| a.participant.cmp(&b.participant));
            let bytes = mutate(1, uploads[0].to_wire().encode_to_vec());
            if let Ok(m) = v1::SealedManifest::decode(&bytes[..])
                && let Ok(m) = Manifest::from_wire("j", 2, uploads[0].participant.clone(), &m)
            {
                let _ = m.verify(&config);
            }
            let statement = Statement {
                job_id: "j".into(),
                round: 2,
                uploads: uploads.iter().map(|m| (m.participant.clone(), m.hash())).collect(),
                answering: config.committee.iter().map(|m| m.id.clone()).collect(),
            };
            let bytes = mutate(2, statement.to_wire().encode_to_vec());
            let statement = v1::Statement::decode(&bytes[..])
                .ok()
                .and_then(|s| Statement::from_wire("j", 2, &s).ok())
                .unwrap_or(statement);
            // Member 1 checks the (maybe mutated) statement with one mutated view.
            let mut views: Vec<MemberView> = uploads.iter().map(|m| m.view_for(1)).collect();
            let bytes = mutate(3, views[0].to_wire().encode_to_vec());
            if let Ok(v) = v1::MemberView::decode(&bytes[..])
                && let Ok(v) = MemberView::from_wire("j", 2, &v)
            {
                views[0] = v;
            }
            let mut member = Member::new(config.clone(), Arc::clone(&people[1])).unwrap();
            let signed = member.sign_statement(&statement, &views);
            if which != 2 && which != 3 {
                proptest::prop_assert!(signed.is_ok(), "valid statement and views were refused: {:?}", signed.as_ref().err());
            }
            if let Ok(approval) = signed {
                let bytes = mutate(4, approval.to_wire().encode_to_vec());
                let mut approvals = vec![approval];
                if let Ok(a) = v1::Approval::decode(&bytes[..])
                    && let Ok(a) = Approval::from_wire(&a)
                {
                    approvals.push(a);
                }
                let _ = member.reveal(&approvals);
            }
            let share = v1::RevealedShare {
                participant: people[2].participant_id().to_string(),
                absent: 1,
                index: 2,
                value: vec![7; 32],
            };
            let bytes = mutate(5, share.encode_to_vec());
            if let Ok(s) = v1::RevealedShare::decode(&bytes[..]) {
                let _ = RevealedShare::from_wire(&s);
            }
        }
    }
}
