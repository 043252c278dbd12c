//! A secure round's state on the coordinator (the [`Aggregator`] state machine, the phase it
//! is in, its committee and signed plan), how it is set up as the round opens
//! ([`set_up_round`]) and rebuilt after a restart ([`resume_round`]), and how a masked upload is
//! accepted into it. Accepted masked uploads and their manifests are on disk before they are
//! acknowledged, and complaints and attestations are in the ledger: a restarted coordinator
//! resumes the round from them.

use std::collections::HashSet;

use conclave_aggregation::JobSpec;
use conclave_aggregation::quantize::QuantParams;
use conclave_aggregation::secagg::{
    Aggregator, Complaint, HashedBytes, Manifest, ProtocolError, RoundConfig, sign_plan,
};
use conclave_crypto::committee::draw_committee;
use conclave_crypto::{Identity, ParticipantId, PublicIdentity};
use conclave_ledger::verify::OpenRound;
use conclave_proto::v1;
use prost::Message;

use crate::state::UploadTicket;
use crate::store::{ParticipantRecord, RoundRecord, Store, UploadPart};
use crate::{CoordinatorError, State};

/// Where a secure-aggregation round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepting masked uploads until all arrive or the round deadline.
    Collecting,
    /// Members open every upload's box and complain about those they cannot use.
    Checking { deadline: u64 },
    /// The statement is out; waiting for `t` member approvals.
    Signing { deadline: u64 },
    /// Approved; waiting for every answering member's reveal.
    Revealing { deadline: u64 },
}

/// One secure-aggregation round in progress.
pub struct SecaggRound {
    pub round: u32,
    pub aggregator: Aggregator,
    pub quant: QuantParams,
    pub plan: v1::SecaggPlan,
    pub phase: Phase,
    pub committee: Vec<ParticipantId>,
    /// No statement before this time (unix ms): after a restart, members need a moment to
    /// reconnect before the coordinator decides who answers.
    pub not_before: u64,
    /// Members whose attestation for this round is in the ledger (one each, ever).
    pub attested: HashSet<String>,
    /// Members that reported their check of the uploads (those can answer).
    pub checked: HashSet<String>,
}

impl SecaggRound {
    /// The aggregate of a round whose answering members all revealed: the sum unmasked and
    /// decoded to the mean update, with Σ n_i. Reads the round only, so it runs without the
    /// job's lock. `Err`: the round fails, with why.
    pub fn unmask(&self, dim: usize) -> Result<(Vec<f32>, u64), String> {
        let uploads = self.aggregator.uploads();
        let sum = self
            .aggregator
            .finish()
            .map_err(|e| format!("unmasking failed: {e}"))?;
        self.quant
            .decode_mean(&sum, dim, uploads)
            .map_err(|e| e.to_string())
    }
}

/// How long a resumed round waits for committee members to reconnect.
const RESUME_GRACE_MS: u64 = 5_000;

/// Draws the committee with `seed` (DESIGN.md step 1: from the job's draw entropy) from every
/// admitted participant and sets up the round, with its plan signed by `coordinator`.
#[allow(clippy::too_many_arguments)]
pub(super) fn set_up_round(
    spec: &JobSpec,
    job_id: &str,
    round: u32,
    seed: [u8; 32],
    base: (u32, Vec<u8>),
    participants: &[ParticipantRecord],
    previous_committee: &[ParticipantId],
    coordinator: &Identity,
) -> Result<SecaggRound, CoordinatorError> {
    let settings = spec
        .secagg()
        .ok_or_else(|| CoordinatorError::InvalidRequest("not a secure-aggregation job".into()))?;
    // Ring vectors: the update's parameters plus the sample count.
    let len = spec.layout().dim() + 1;
    let parse = |p: &ParticipantRecord| -> Result<PublicIdentity, CoordinatorError> {
        let id =
            ParticipantId::parse(&p.did).map_err(|e| CoordinatorError::Storage(e.to_string()))?;
        let key: [u8; 32] = hex::decode(&p.sealing_key)
            .ok()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| CoordinatorError::Storage(format!("bad sealing key of {}", p.did)))?;
        Ok(PublicIdentity {
            id,
            sealing_key: key,
        })
    };
    let publics: Vec<PublicIdentity> = participants.iter().map(parse).collect::<Result<_, _>>()?;
    let ids: Vec<ParticipantId> = publics.iter().map(|p| p.id.clone()).collect();
    let committee = draw_committee(
        &seed,
        &ids,
        previous_committee,
        settings.committee_size as usize,
    )
    .map_err(|e| CoordinatorError::InvalidRequest(e.to_string()))?;
    let config = RoundConfig {
        job_id: job_id.into(),
        round,
        committee: committee
            .iter()
            .map(|m| {
                publics
                    .iter()
                    .find(|p| &p.id == m)
                    .cloned()
                    .expect("drawn from publics")
            })
            .collect(),
        participants: publics,
        threshold: settings.threshold as usize,
        min_participants: spec.min_participants as usize,
        len,
        plan_hash: [0; 32],
    };
    let mut plan = config.to_plan(seed);
    (plan.base_version, plan.base_model_hash) = base;
    sign_plan(&mut plan, job_id, round, coordinator);
    // The config as every participant will parse it from the signed plan.
    let config = RoundConfig::from_plan(job_id, round, &plan)?;
    Ok(SecaggRound {
        round,
        aggregator: Aggregator::new(config)?,
        quant: settings.quant,
        plan,
        phase: Phase::Collecting,
        committee,
        not_before: 0,
        attested: HashSet::new(),
        checked: HashSet::new(),
    })
}

impl From<ProtocolError> for CoordinatorError {
    fn from(e: ProtocolError) -> Self {
        CoordinatorError::Protocol(e)
    }
}

/// Rebuilds the open round of a restarted coordinator from its stored plan, the masked
/// uploads accepted before the restart, and the complaints and attestations the ledger holds
/// of the round (`ledger`). It resumes collecting: no statement was proposed by this
/// coordinator's new life; members refuse a different one if they signed before.
pub(super) fn resume_round(
    spec: &JobSpec,
    job_id: &str,
    round: &RoundRecord,
    store: &Store,
    ledger: Option<&OpenRound>,
) -> Result<SecaggRound, CoordinatorError> {
    let settings = spec
        .secagg()
        .ok_or_else(|| CoordinatorError::InvalidRequest("not a secure-aggregation job".into()))?;
    let plan = hex::decode(&round.plan)
        .ok()
        .and_then(|b| v1::SecaggPlan::decode(b.as_slice()).ok())
        .ok_or_else(|| {
            CoordinatorError::Storage(format!("round {}: stored plan is unreadable", round.round))
        })?;
    let config = RoundConfig::from_plan(job_id, round.round, &plan)?;
    let committee = config.committee.iter().map(|m| m.id.clone()).collect();
    let mut aggregator = Aggregator::new(config)?;
    for upload in &round.uploads {
        let payload = store.load_update(job_id, round.round, &upload.did, UploadPart::Payload)?;
        let wire = v1::SealedManifest::decode(
            store
                .load_update(job_id, round.round, &upload.did, UploadPart::Manifest)?
                .as_slice(),
        )
        .map_err(|e| CoordinatorError::Storage(format!("manifest of {}: {e}", upload.did)))?;
        let did = ParticipantId::parse(&upload.did)
            .map_err(|e| CoordinatorError::Storage(e.to_string()))?;
        let masked = conclave_aggregation::secagg::HashedBytes::new(&payload);
        aggregator.accept(
            masked,
            conclave_aggregation::secagg::Manifest::from_wire(job_id, round.round, did, &wire)?,
        )?;
    }
    for c in ledger.map_or(&[][..], |l| &l.complaints) {
        let member = ParticipantId::parse(&c.member)
            .map_err(|e| CoordinatorError::Storage(e.to_string()))?;
        let complaint = Complaint::from_wire(
            job_id,
            round.round,
            member,
            &v1::Complaint {
                participant: c.participant.clone(),
                manifest_hash: c.manifest_hash.clone(),
                reason: c.reason,
                signature: c.signature.clone(),
            },
        )?;
        let payload =
            store.load_update(job_id, round.round, &c.participant, UploadPart::Payload)?;
        aggregator.exclude(complaint, HashedBytes::new(&payload))?;
    }
    Ok(SecaggRound {
        round: round.round,
        aggregator,
        quant: settings.quant,
        plan,
        phase: Phase::Collecting,
        committee,
        not_before: crate::state::now_ms() + RESUME_GRACE_MS,
        attested: ledger.map_or_else(HashSet::new, |l| l.attested.iter().cloned().collect()),
        checked: HashSet::new(),
    })
}

impl State {
    /// Stores a masked upload whose header was checked durably (vector and manifest files,
    /// then the job record) and in the round's aggregator.
    pub(crate) fn accept_masked(
        &self,
        ticket: &UploadTicket,
        wire_manifest: &v1::SealedManifest,
        payload: &[u8],
    ) -> Result<(), CoordinatorError> {
        // Decoded and hashed once, outside the lock. The header's payload hash of a masked
        // vector is its manifest's vector hash.
        let masked = HashedBytes::new(payload);
        if masked.hash() != &ticket.payload_hash {
            return Err(CoordinatorError::HashMismatch);
        }
        let manifest =
            Manifest::from_wire(&ticket.job, ticket.round, ticket.did.clone(), wire_manifest)?;
        if *masked.hash() != manifest.vector_hash {
            return Err(CoordinatorError::Protocol(ProtocolError::HashMismatch));
        }
        let did = ticket.did.as_str();
        let store = self.store();
        let staged_payload =
            store.stage_update(&ticket.job, ticket.round, did, UploadPart::Payload, payload)?;
        let staged_manifest = store.stage_update(
            &ticket.job,
            ticket.round,
            did,
            UploadPart::Manifest,
            &wire_manifest.encode_to_vec(),
        );
        let staged_manifest = match staged_manifest {
            Ok(path) => path,
            Err(e) => {
                let _ = std::fs::remove_file(&staged_payload);
                return Err(e);
            }
        };
        let result = self.with_job(&ticket.job, |job, store| {
            ticket.check(job)?;
            let sa = job.secagg_round(ticket.round)?;
            if sa.phase != Phase::Collecting {
                return Err(CoordinatorError::RoundNotOpen {
                    job: ticket.job.clone(),
                    round: ticket.round,
                    current: "closing".into(),
                });
            }
            manifest.verify(sa.aggregator.config())?;
            store.commit_updates(
                &[
                    (&staged_payload, UploadPart::Payload),
                    (&staged_manifest, UploadPart::Manifest),
                ],
                &ticket.job,
                ticket.round,
                did,
            )?;
            ticket.record(job, store)?;
            // Checked above; this cannot fail but for a bug, and the upload is on disk either way.
            job.secagg_round(ticket.round)?
                .aggregator
                .accept(masked, manifest)?;
            job.bump();
            Ok(())
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&staged_payload);
            let _ = std::fs::remove_file(&staged_manifest);
        }
        result
    }
}
