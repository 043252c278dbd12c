//! The coordinator's part in a secure-aggregation round: drawing the committee, holding the
//! [`Aggregator`] state machine, and the phase the round is in. Masked uploads are kept in
//! memory only: a coordinator restart fails the round in progress (it is re-run as the next
//! round with a new committee), which reveals nothing.

use conclave_aggregation::JobSpec;
use conclave_aggregation::quantize::QuantParams;
use conclave_aggregation::secagg::{Aggregator, ProtocolError, RoundConfig};
use conclave_crypto::committee::{draw_committee, draw_seed};
use conclave_crypto::{ParticipantId, PublicIdentity};
use conclave_proto::v1;

use crate::CoordinatorError;
use crate::store::ParticipantRecord;

/// Where a secure-aggregation round stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Accepting masked uploads until all arrive or the round deadline.
    Collecting,
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
}

/// Draws the committee and sets up the round. `head` stands for the ledger head in the draw
/// seed (DESIGN.md step 1): until the ledger exists it is the hash of the round's base model,
/// which every participant receives and can check.
pub fn open_round(
    spec: &JobSpec,
    job_id: &str,
    round: u32,
    head: &[u8; 32],
    participants: &[ParticipantRecord],
    previous_committee: &[ParticipantId],
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
    let seed = draw_seed(head, job_id, round);
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
    };
    let plan = config.to_plan(seed);
    Ok(SecaggRound {
        round,
        aggregator: Aggregator::new(config)?,
        quant: settings.quant,
        plan,
        phase: Phase::Collecting,
        committee,
    })
}

impl From<ProtocolError> for CoordinatorError {
    fn from(e: ProtocolError) -> Self {
        CoordinatorError::Protocol(e)
    }
}
