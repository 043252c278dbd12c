//! The coordinator's side: collect masked uploads, leave out those a member complained about,
//! propose one statement, gather approvals and reveals, and unmask the sum. It never holds a
//! seed of a member who answers.

use std::collections::{BTreeMap, BTreeSet};

use conclave_crypto::shamir::{self, Share};
use conclave_crypto::{ParticipantId, prg};

use super::{
    Approval, Complaint, HashedBytes, Manifest, MemberView, ProtocolError, Reveal, RoundConfig,
    Statement,
};
use crate::quantize::ring_sub;

/// The coordinator's protocol state for one round. Masked vectors are summed as they are
/// accepted (every accepted upload is in the one statement unless a member complains about
/// it, and then it is subtracted again), so it holds one vector, not n.
pub struct Aggregator {
    config: RoundConfig,
    /// Uploads to sum: accepted, and not complained about.
    uploads: BTreeMap<ParticipantId, Manifest>,
    /// Uploads left out on a member's complaint.
    excluded: BTreeMap<ParticipantId, Manifest>,
    complaints: Vec<Complaint>,
    /// `Σ y_i` over `uploads`.
    masked_sum: Vec<u32>,
    statement: Option<(Statement, [u8; 32])>,
    approvals: BTreeMap<ParticipantId, Approval>,
    reveals: BTreeMap<ParticipantId, Reveal>,
}

impl Aggregator {
    pub fn new(config: RoundConfig) -> Result<Self, ProtocolError> {
        config.validate()?;
        Ok(Self {
            masked_sum: vec![0; config.len],
            config,
            uploads: BTreeMap::new(),
            excluded: BTreeMap::new(),
            complaints: Vec::new(),
            statement: None,
            approvals: BTreeMap::new(),
            reveals: BTreeMap::new(),
        })
    }

    /// Accepts one participant's masked vector and manifest (before the statement).
    pub fn accept(
        &mut self,
        masked: HashedBytes<'_>,
        manifest: Manifest,
    ) -> Result<(), ProtocolError> {
        if self.statement.is_some() {
            return Err(ProtocolError::OutOfOrder(
                "uploads are closed once a statement is proposed",
            ));
        }
        manifest.verify(&self.config)?;
        if masked.len() != self.config.len {
            return Err(ProtocolError::Length {
                got: masked.len(),
                expected: self.config.len,
            });
        }
        if *masked.hash() != manifest.vector_hash {
            return Err(ProtocolError::HashMismatch);
        }
        if self.uploads.contains_key(&manifest.participant)
            || self.excluded.contains_key(&manifest.participant)
        {
            return Err(ProtocolError::DuplicateUpload(
                manifest.participant.to_string(),
            ));
        }
        masked.add_to(&mut self.masked_sum);
        self.uploads.insert(manifest.participant.clone(), manifest);
        Ok(())
    }

    /// Number of uploads to sum (accepted, not complained about).
    pub fn uploads(&self) -> usize {
        self.uploads.len()
    }

    /// Checks a committee member's complaint about an accepted upload (before the statement):
    /// signed by a member, for this round, about the manifest that was accepted. Returns
    /// whether the upload is still in the sum (then [`Aggregator::exclude`] takes it out).
    pub fn check_complaint(&self, complaint: &Complaint) -> Result<bool, ProtocolError> {
        if self.statement.is_some() {
            return Err(ProtocolError::OutOfOrder(
                "complaints are closed once a statement is proposed",
            ));
        }
        self.config
            .check_round(&complaint.job_id, complaint.round)?;
        if self.config.member_position(&complaint.member).is_none() {
            return Err(ProtocolError::NotMember(complaint.member.to_string()));
        }
        if !complaint.verify() {
            return Err(ProtocolError::BadSignature(complaint.member.to_string()));
        }
        let manifest = self
            .uploads
            .get(&complaint.participant)
            .or_else(|| self.excluded.get(&complaint.participant))
            .ok_or_else(|| ProtocolError::UnknownParticipant(complaint.participant.to_string()))?;
        if manifest.hash() != complaint.manifest_hash {
            return Err(ProtocolError::BadManifest(format!(
                "the complaint about {} names another manifest",
                complaint.participant
            )));
        }
        Ok(self.uploads.contains_key(&complaint.participant))
    }

    /// Records a checked complaint and takes its upload (`masked`, as accepted) out of the sum.
    pub fn exclude(
        &mut self,
        complaint: Complaint,
        masked: HashedBytes<'_>,
    ) -> Result<(), ProtocolError> {
        if self.check_complaint(&complaint)? {
            let manifest = &self.uploads[&complaint.participant];
            if *masked.hash() != manifest.vector_hash {
                return Err(ProtocolError::HashMismatch);
            }
            masked.sub_from(&mut self.masked_sum);
            let manifest = self
                .uploads
                .remove(&complaint.participant)
                .expect("checked above");
            self.excluded
                .insert(complaint.participant.clone(), manifest);
        }
        if !self
            .complaints
            .iter()
            .any(|c| c.member == complaint.member && c.participant == complaint.participant)
        {
            self.complaints.push(complaint);
        }
        Ok(())
    }

    /// The complaints recorded so far.
    pub fn complaints(&self) -> &[Complaint] {
        &self.complaints
    }

    /// Proposes the round's one statement: every accepted upload, and `answering` (the members
    /// still connected). Refused when it could not succeed; then nothing is revealed.
    pub fn propose(&mut self, answering: &[ParticipantId]) -> Result<Statement, ProtocolError> {
        if self.statement.is_some() {
            return Err(ProtocolError::AlreadyProposed);
        }
        let mut positions = Vec::with_capacity(answering.len());
        for id in answering {
            positions.push(
                self.config
                    .member_position(id)
                    .ok_or_else(|| ProtocolError::NotMember(id.to_string()))?,
            );
        }
        positions.sort_unstable();
        positions.dedup();
        if positions.len() < self.config.threshold {
            return Err(ProtocolError::TooFewMembers {
                got: positions.len(),
                t: self.config.threshold,
            });
        }
        if self.uploads.len() < self.config.min_participants {
            return Err(ProtocolError::TooFewUploads {
                got: self.uploads.len(),
                min: self.config.min_participants,
            });
        }
        let statement = Statement {
            job_id: self.config.job_id.clone(),
            round: self.config.round,
            uploads: self.propose_preview(),
            answering: positions
                .iter()
                .map(|&p| self.config.committee[p].id.clone())
                .collect(),
        };
        let hash = statement.hash();
        self.statement = Some((statement.clone(), hash));
        Ok(statement)
    }

    /// The uploads a statement proposed now would sum, with their manifest hashes.
    pub fn propose_preview(&self) -> Vec<(ParticipantId, [u8; 32])> {
        self.uploads
            .iter()
            .map(|(id, m)| (id.clone(), m.hash()))
            .collect()
    }

    /// Member `member`'s views of the uploads' manifests, in statement order (what it checks).
    pub fn views_for(&self, member: &ParticipantId) -> Result<Vec<MemberView>, ProtocolError> {
        let k = self
            .config
            .member_position(member)
            .ok_or_else(|| ProtocolError::NotMember(member.to_string()))?;
        Ok(self.uploads.values().map(|m| m.view_for(k)).collect())
    }

    /// The proposed statement, if any.
    pub fn statement(&self) -> Option<&Statement> {
        self.statement.as_ref().map(|(s, _)| s)
    }

    /// Whether every answering member has revealed.
    pub fn complete(&self) -> bool {
        self.statement
            .as_ref()
            .is_some_and(|(s, _)| self.reveals.len() >= s.answering.len())
    }

    /// The round's configuration.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// Records a member's approval; returns whether the statement now has `t` of them.
    pub fn add_approval(&mut self, approval: Approval) -> Result<bool, ProtocolError> {
        self.check_approval(&approval)?;
        self.approvals.insert(approval.member.clone(), approval);
        Ok(self.approvals.len() >= self.config.threshold)
    }

    /// Checks an approval without recording it; `Ok(false)` when its member has already
    /// approved (a repeat changes nothing).
    pub fn check_approval(&self, approval: &Approval) -> Result<bool, ProtocolError> {
        let Some((_, hash)) = &self.statement else {
            return Err(ProtocolError::OutOfOrder("no statement proposed"));
        };
        if self.config.member_position(&approval.member).is_none() {
            return Err(ProtocolError::NotMember(approval.member.to_string()));
        }
        if approval.statement_hash != *hash || !approval.verify() {
            return Err(ProtocolError::BadSignature(approval.member.to_string()));
        }
        Ok(!self.approvals.contains_key(&approval.member))
    }

    /// Whether the statement has `t` approvals.
    pub fn approved(&self) -> bool {
        self.statement.is_some() && self.approvals.len() >= self.config.threshold
    }

    /// The approvals gathered so far (sent to members so they can check the threshold).
    pub fn approvals(&self) -> Vec<Approval> {
        self.approvals.values().cloned().collect()
    }

    /// Records an answering member's reveal.
    pub fn add_reveal(&mut self, reveal: Reveal) -> Result<(), ProtocolError> {
        let Some((statement, hash)) = &self.statement else {
            return Err(ProtocolError::OutOfOrder("no statement proposed"));
        };
        let Some(pos) = self.config.member_position(&reveal.member) else {
            return Err(ProtocolError::NotMember(reveal.member.to_string()));
        };
        if !statement.answering.contains(&reveal.member) {
            return Err(ProtocolError::NotInStatement);
        }
        if reveal.statement_hash != *hash {
            return Err(ProtocolError::WrongRound {
                job: statement.job_id.clone(),
                round: statement.round,
            });
        }
        if reveal.partial.len() != self.config.len {
            return Err(ProtocolError::Length {
                got: reveal.partial.len(),
                expected: self.config.len,
            });
        }
        // One share per (upload in U, absent member), no more, no other.
        let is_absent = |k: usize| !statement.answering.contains(&self.config.committee[k].id);
        let absent = (0..self.config.committee.len())
            .filter(|&k| is_absent(k))
            .count();
        let expected = statement.uploads.len() * absent;
        let mut seen = BTreeSet::new();
        let well_formed = reveal.shares.len() == expected
            && reveal.shares.iter().all(|s| {
                s.absent < self.config.committee.len()
                    && is_absent(s.absent)
                    && s.share.index() as usize == pos + 1
                    && self.uploads.contains_key(&s.participant)
                    && seen.insert((&s.participant, s.absent))
            });
        if !well_formed {
            return Err(ProtocolError::BadManifest(format!(
                "reveal from {} has the wrong shares",
                reveal.member
            )));
        }
        self.reveals.insert(reveal.member.clone(), reveal);
        Ok(())
    }

    /// Unmasks `Σ_{i∈U} q_i` once every answering member has revealed.
    pub fn finish(&self) -> Result<Vec<u32>, ProtocolError> {
        let Some((statement, _)) = &self.statement else {
            return Err(ProtocolError::OutOfOrder("no statement proposed"));
        };
        if self.reveals.len() < statement.answering.len() {
            return Err(ProtocolError::OutOfOrder(
                "waiting for reveals from answering members",
            ));
        }
        let mut sum = self.masked_sum.clone();
        for reveal in self.reveals.values() {
            ring_sub(&mut sum, &reveal.partial);
        }
        // Absent members' masks: rebuild each s_ik from the answering members' shares.
        let mut shares: BTreeMap<(&ParticipantId, usize), Vec<Share>> = BTreeMap::new();
        for reveal in self.reveals.values() {
            for s in &reveal.shares {
                shares
                    .entry((&s.participant, s.absent))
                    .or_default()
                    .push(s.share.clone());
            }
        }
        let seeds = shares
            .iter()
            .map(|((participant, k), pieces)| {
                shamir::combine(pieces, self.config.threshold).map_err(|e| {
                    ProtocolError::Rebuild(format!("seed of {participant} for member {k}: {e}"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        prg::sub_masks(&mut sum, &seeds);
        Ok(sum)
    }
}
