//! What committee members send in a secure round: their check of every upload's box (with
//! signed complaints about the ones they cannot use, recorded in the ledger and taken out of
//! the sum before any statement), their approval of the round's one statement (recorded as an
//! attestation before it counts), and their reveal once the statement is approved.

use conclave_aggregation::secagg::{
    Approval, Complaint, HashedBytes, ProtocolError, Reveal, RevealedShare,
};
use conclave_crypto::ParticipantId;
use conclave_ledger::Payload;
use conclave_proto::v1;

use super::Phase;
use crate::state::{decode_u32, now_ms};
use crate::store::UploadPart;
use crate::{CoordinatorError, State};

impl State {
    /// Records a member's check of the round's uploads. Each complaint is checked (signed by
    /// the member, about an accepted upload's manifest), recorded in the ledger, and its upload
    /// taken out of the sum; the member then counts as one that can answer.
    pub fn submit_check(&self, req: &v1::CheckReport) -> Result<(), CoordinatorError> {
        let signer = self.authenticate(req)?;
        let did = signer.did.clone();
        let complaints = req
            .complaints
            .iter()
            .map(|c| Complaint::from_wire(&req.job_id, req.round, did.clone(), c))
            .collect::<Result<Vec<_>, _>>()?;
        self.with_job(&req.job_id, |job, store| {
            let sa = job.secagg_round(req.round)?;
            if !sa.committee.contains(&did) {
                return Err(CoordinatorError::Protocol(ProtocolError::NotMember(
                    did.to_string(),
                )));
            }
            if !matches!(sa.phase, Phase::Checking { .. }) {
                return Err(CoordinatorError::Protocol(ProtocolError::OutOfOrder(
                    "uploads are checked after collection and before the statement",
                )));
            }
            let mut fresh = Vec::new();
            for complaint in &complaints {
                sa.aggregator.check_complaint(complaint)?;
                let recorded = sa.aggregator.complaints().iter().any(|c| {
                    c.member == complaint.member && c.participant == complaint.participant
                });
                if !recorded && !fresh.contains(&complaint) {
                    fresh.push(complaint);
                }
            }
            // After a restart, a round whose statement was attested takes no new complaint:
            // complaints come before any statement (the ledger would refuse it).
            if !fresh.is_empty() && !sa.attested.is_empty() {
                return Err(CoordinatorError::Protocol(ProtocolError::OutOfOrder(
                    "complaints are closed once a member attested the round's statement",
                )));
            }
            // The complained-about vectors, read back from their durable files.
            let mut vectors = Vec::with_capacity(fresh.len());
            for complaint in &fresh {
                vectors.push(store.load_update(
                    &req.job_id,
                    req.round,
                    complaint.participant.as_str(),
                    UploadPart::Payload,
                )?);
            }
            if !fresh.is_empty() {
                let mut batch = store.batch(now_ms());
                for c in &fresh {
                    batch.push(Payload::CommitteeComplaint(v1::CommitteeComplaint {
                        job_id: c.job_id.clone(),
                        round: c.round,
                        member: c.member.to_string(),
                        participant: c.participant.to_string(),
                        manifest_hash: c.manifest_hash.to_vec(),
                        reason: c.reason.code() as i32,
                        signature: c.signature.clone(),
                    }));
                }
                job.nonces.consume(&signer, now_ms())?;
                job.commit(store, batch, false)?;
            } else {
                job.nonces.consume(&signer, now_ms())?;
            }
            let sa = job.secagg_round(req.round)?;
            for (complaint, vector) in fresh.into_iter().zip(&vectors) {
                tracing::warn!(job = %req.job_id, round = req.round, member = %complaint.member, participant = %complaint.participant, reason = %complaint.reason, "complaint: the upload is left out of the sum");
                sa.aggregator
                    .exclude(complaint.clone(), HashedBytes::new(vector))?;
            }
            sa.checked.insert(did.to_string());
            job.bump();
            Ok(())
        })
    }

    /// Records a committee member's approval of the round's statement.
    pub fn submit_approval(&self, req: &v1::ApprovalRequest) -> Result<(), CoordinatorError> {
        let signer = self.authenticate(req)?;
        let did = signer.did.clone();
        let statement_hash: [u8; 32] = req.statement_hash.as_slice().try_into().map_err(|_| {
            CoordinatorError::InvalidRequest("statement_hash must be 32 bytes".into())
        })?;
        self.with_job(&req.job_id, |job, store| {
            job.require_joined(&did)?;
            let sa = job.secagg_round(req.round)?;
            let approval = Approval {
                member: did.clone(),
                statement_hash,
                signature: req.signature.clone(),
            };
            // Checked against the statement first; recorded durably before it counts.
            if !sa.aggregator.check_approval(&approval)? {
                job.nonces.consume(&signer, now_ms())?;
                return Ok(());
            }
            if sa.attested.contains(did.as_str()) {
                // Recorded before a restart (a member re-sends its approval of the same
                // statement): it counts again, the ledger keeps its one attestation.
                job.nonces.consume(&signer, now_ms())?;
                job.secagg_round(req.round)?
                    .aggregator
                    .add_approval(approval)?;
                job.bump();
                return Ok(());
            }
            let mut batch = store.batch(now_ms());
            batch.push(Payload::CommitteeAttestation(v1::CommitteeAttestation {
                job_id: req.job_id.clone(),
                round: req.round,
                member: did.to_string(),
                statement_hash: statement_hash.to_vec(),
                signature: req.signature.clone(),
            }));
            job.nonces.consume(&signer, now_ms())?;
            job.commit(store, batch, false)?;
            let sa = job.secagg_round(req.round)?;
            sa.attested.insert(did.to_string());
            sa.aggregator.add_approval(approval)?;
            job.bump();
            Ok(())
        })
    }

    /// Checks a reveal's signed header before its partial sum is read; returns the signer and
    /// the number of ring elements to expect.
    pub fn check_reveal(
        &self,
        header: &v1::RevealHeader,
    ) -> Result<(ParticipantId, usize), CoordinatorError> {
        let signer = self.authenticate(header)?;
        self.with_job(&header.job_id, |job, _| {
            let sa = job.secagg_round(header.round)?;
            let len = sa.aggregator.config().len;
            if header.len != len as u64 {
                return Err(CoordinatorError::WrongLength {
                    expected: len as u64,
                    got: header.len,
                });
            }
            let answering = sa
                .aggregator
                .statement()
                .is_some_and(|s| s.answering.contains(&signer.did));
            if !answering {
                return Err(CoordinatorError::Protocol(ProtocolError::NotInStatement));
            }
            job.nonces.consume(&signer, now_ms())?;
            Ok((signer.did.clone(), len))
        })
    }

    /// Records a member's reveal (its partial sum and shares of absent members' seeds).
    pub fn accept_reveal(
        &self,
        member: &ParticipantId,
        header: &v1::RevealHeader,
        payload: &[u8],
    ) -> Result<(), CoordinatorError> {
        if blake3::hash(payload).as_bytes().as_slice() != header.partial_hash.as_slice() {
            return Err(CoordinatorError::HashMismatch);
        }
        let partial: Vec<u32> = decode_u32(payload);
        let statement_hash: [u8; 32] =
            header.statement_hash.as_slice().try_into().map_err(|_| {
                CoordinatorError::InvalidRequest("statement_hash must be 32 bytes".into())
            })?;
        let shares = header
            .shares
            .iter()
            .map(RevealedShare::from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        self.with_job(&header.job_id, |job, _| {
            let sa = job.secagg_round(header.round)?;
            if !matches!(sa.phase, Phase::Revealing { .. }) {
                return Err(CoordinatorError::Protocol(ProtocolError::OutOfOrder(
                    "the statement is not approved yet",
                )));
            }
            sa.aggregator.add_reveal(Reveal {
                member: member.clone(),
                statement_hash,
                partial,
                shares,
            })?;
            job.bump();
            Ok(())
        })
    }
}
