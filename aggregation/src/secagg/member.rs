//! The committee member's side: check every upload's box and complain about those it cannot
//! use, sign at most one statement per round — across re-sent tasks and restarts too, since
//! the caller restores what it signed before ([`Member::restore_signed`]) and keeps what it
//! signs durably before the signature leaves — then reveal only what that statement allows,
//! and only once `t` members have signed it.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use conclave_crypto::shamir::Share;
use conclave_crypto::{Identity, ParticipantId, Seed, prg};

use super::messages::OpenedBox;
use super::{
    Approval, Complaint, ComplaintReason, MemberView, ProtocolError, Reveal, RevealedShare,
    RoundConfig, Statement,
};

/// What a member holds after signing a statement.
struct Signed {
    statement: Statement,
    hash: [u8; 32],
    /// `s_{i,me}` of every upload of the statement.
    seeds: Vec<Seed>,
    /// `shares[u]`: this member's share of `s_{i,k}` for every other member `k`, for the u-th
    /// upload of the statement, as `(k, share)` in committee order.
    shares: Vec<Vec<(usize, Share)>>,
    approval: Approval,
    /// `Σ_{i∈U} PRG(s_{i,me})`, once computed ([`Member::prepare_partial`]); kept private
    /// until `t` approvals are shown.
    partial: Option<Vec<u32>>,
}

/// A committee member's protocol state for one round.
pub struct Member {
    config: RoundConfig,
    identity: Arc<Identity>,
    position: usize,
    /// Boxes opened while checking, by participant: the manifest hash they belong to and what
    /// they held, or why they were complained about.
    checked: BTreeMap<ParticipantId, ([u8; 32], Result<OpenedBox, ComplaintReason>)>,
    /// The statement this member signed in an earlier life (restored from its own records).
    signed_before: Option<[u8; 32]>,
    signed: Option<Signed>,
    revealed: Option<Reveal>,
}

impl Member {
    /// The member state of `identity`, which must be on the round's committee.
    pub fn new(config: RoundConfig, identity: Arc<Identity>) -> Result<Self, ProtocolError> {
        config.validate()?;
        let me = identity.participant_id();
        let position = config
            .member_position(&me)
            .ok_or(ProtocolError::NotMember(me.to_string()))?;
        Ok(Self {
            config,
            identity,
            position,
            checked: BTreeMap::new(),
            signed_before: None,
            signed: None,
            revealed: None,
        })
    }

    /// Tells the member that it already signed the statement with this hash for this round
    /// (kept by the caller across re-sent tasks and restarts): any other statement is refused.
    pub fn restore_signed(&mut self, statement_hash: [u8; 32]) {
        self.signed_before = Some(statement_hash);
    }

    /// The round this member serves.
    pub fn config(&self) -> &RoundConfig {
        &self.config
    }

    /// Checks the uploads' views before any statement: opens this member's box in each and
    /// returns a signed complaint for every box it cannot use (the coordinator must leave those
    /// uploads out of `U`). A view whose participant signature, digests or plan do not check is
    /// the coordinator's doing, not the participant's: the whole check is refused.
    pub fn check(&mut self, views: &[MemberView]) -> Result<Vec<Complaint>, ProtocolError> {
        let mut seen = HashSet::new();
        for view in views {
            view.verify(&self.config, self.position)?;
            if !seen.insert(&view.participant) {
                return Err(ProtocolError::DuplicateUpload(view.participant.to_string()));
            }
        }
        let mut complaints = Vec::new();
        for view in views {
            let hash = view.manifest_hash();
            let opened = match self.checked.remove(&view.participant) {
                Some((h, opened)) if h == hash => opened,
                _ => self.config.open_box(
                    &self.identity,
                    &view.participant,
                    self.position,
                    &view.sealed_box,
                ),
            };
            if let Err(reason) = &opened {
                complaints.push(self.complaint(view, *reason));
            }
            self.checked
                .insert(view.participant.clone(), (hash, opened));
        }
        Ok(complaints)
    }

    fn complaint(&self, view: &MemberView, reason: ComplaintReason) -> Complaint {
        let mut complaint = Complaint {
            job_id: self.config.job_id.clone(),
            round: self.config.round,
            member: self.identity.participant_id(),
            participant: view.participant.clone(),
            manifest_hash: view.manifest_hash(),
            reason,
            signature: Vec::new(),
        };
        complaint.signature = self.identity.sign(&complaint.hash()).to_vec();
        complaint
    }

    /// Checks a statement and this member's views of its uploads' manifests, opens its sealed
    /// seeds and shares, and signs `H(U, A)`. Signing the same statement again returns the
    /// same approval; any other statement for the round is refused once one is signed, in
    /// this life or (see [`Member::restore_signed`]) an earlier one. An upload this member
    /// complained about is never summed.
    pub fn sign_statement(
        &mut self,
        statement: &Statement,
        manifests: &[MemberView],
    ) -> Result<Approval, ProtocolError> {
        let hash = statement.hash();
        if let Some(signed) = &self.signed {
            return if signed.hash == hash {
                Ok(signed.approval.clone())
            } else {
                Err(ProtocolError::AlreadySigned)
            };
        }
        if self.signed_before.is_some_and(|h| h != hash) {
            return Err(ProtocolError::AlreadySigned);
        }
        let config = &self.config;
        config.check_round(&statement.job_id, statement.round)?;
        // A: committee members, each once, in committee order, including this member.
        let mut last = None;
        for id in &statement.answering {
            let pos = config
                .member_position(id)
                .ok_or_else(|| ProtocolError::NotMember(id.to_string()))?;
            if last.is_some_and(|l| pos <= l) {
                return Err(ProtocolError::BadConfig(
                    "answering members must be distinct, in committee order".into(),
                ));
            }
            last = Some(pos);
        }
        if !statement
            .answering
            .contains(&self.identity.participant_id())
        {
            return Err(ProtocolError::NotInStatement);
        }
        if statement.answering.len() < config.threshold {
            return Err(ProtocolError::TooFewMembers {
                got: statement.answering.len(),
                t: config.threshold,
            });
        }
        // U: admitted participants, each once, at least min_participants, each with its
        // signed manifest made under this round's plan.
        if statement.uploads.len() < config.min_participants {
            return Err(ProtocolError::TooFewUploads {
                got: statement.uploads.len(),
                min: config.min_participants,
            });
        }
        if manifests.len() != statement.uploads.len() {
            return Err(ProtocolError::BadManifest(format!(
                "{} manifests for {} uploads",
                manifests.len(),
                statement.uploads.len()
            )));
        }
        let mut seen = HashSet::new();
        for ((id, manifest_hash), manifest) in statement.uploads.iter().zip(manifests) {
            if !seen.insert(id) {
                return Err(ProtocolError::DuplicateUpload(id.to_string()));
            }
            if &manifest.participant != id || &manifest.manifest_hash() != manifest_hash {
                return Err(ProtocolError::BadManifest(format!(
                    "manifest does not match the statement's entry for {id}"
                )));
            }
            match self.checked.get(id) {
                Some((h, Err(_))) if h == manifest_hash => {
                    return Err(ProtocolError::Complained(id.to_string()));
                }
                // This member's check verified this participant's signature over this very
                // manifest hash (which binds the plan, the vector and every box digest).
                Some((h, Ok(_))) if h == manifest_hash => {
                    manifest.verify_unsigned(config, self.position)?
                }
                _ => manifest.verify(config, self.position)?,
            }
        }
        // Everything this member will need, opened before committing to the statement, so a
        // box it cannot use stops the statement here rather than after signing.
        let mut seeds = Vec::with_capacity(manifests.len());
        let mut shares = Vec::with_capacity(manifests.len());
        for m in manifests {
            let opened = match self.checked.remove(&m.participant) {
                Some((h, Ok(opened))) if h == m.manifest_hash() => opened,
                _ => config
                    .open_box(&self.identity, &m.participant, self.position, &m.sealed_box)
                    .map_err(|reason| {
                        ProtocolError::Open(format!("{reason} (from {})", m.participant))
                    })?,
            };
            seeds.push(opened.seed);
            shares.push(opened.shares);
        }
        self.checked.clear();
        let approval = Approval {
            member: self.identity.participant_id(),
            statement_hash: hash,
            signature: self.identity.sign(&hash).to_vec(),
        };
        self.signed = Some(Signed {
            statement: statement.clone(),
            hash,
            seeds,
            shares,
            approval: approval.clone(),
            partial: None,
        });
        Ok(approval)
    }

    /// Expands this member's partial sum for the signed statement ahead of [`Member::reveal`]
    /// (e.g. while other members' approvals arrive). Releases nothing; does nothing before a
    /// statement is signed or once done.
    pub fn prepare_partial(&mut self) {
        let len = self.config.len;
        if let Some(signed) = &mut self.signed
            && signed.partial.is_none()
        {
            let mut partial = vec![0u32; len];
            prg::add_masks(&mut partial, &signed.seeds);
            signed.partial = Some(partial);
        }
    }

    /// Reveals this member's partial sum `Σ_{i∈U} PRG(s_{i,me})` and its shares of the absent
    /// members' seeds, once `approvals` hold `t` valid signatures by distinct committee members
    /// on the statement this member signed. Asking again returns the same reveal.
    pub fn reveal(&mut self, approvals: &[Approval]) -> Result<Reveal, ProtocolError> {
        let Some(signed) = &self.signed else {
            return Err(ProtocolError::OutOfOrder("no statement signed yet"));
        };
        if let Some(r) = &self.revealed {
            return Ok(r.clone());
        }
        let mut signers: HashSet<&ParticipantId> = HashSet::new();
        for a in approvals {
            if a.statement_hash == signed.hash
                && self.config.member_position(&a.member).is_some()
                && a.verify()
            {
                signers.insert(&a.member);
            }
        }
        if signers.len() < self.config.threshold {
            return Err(ProtocolError::NotApproved {
                got: signers.len(),
                t: self.config.threshold,
            });
        }
        self.prepare_partial();
        let signed = self.signed.as_mut().expect("checked above");
        let partial = signed.partial.take().expect("prepared above");
        let answering: Vec<usize> = signed
            .statement
            .answering
            .iter()
            .filter_map(|id| self.config.member_position(id))
            .collect();
        let mut shares = Vec::new();
        for (u, (participant, _)) in signed.statement.uploads.iter().enumerate() {
            for (k, share) in signed.shares[u]
                .iter()
                .filter(|(k, _)| !answering.contains(k))
            {
                shares.push(RevealedShare {
                    participant: participant.clone(),
                    absent: *k,
                    share: share.clone(),
                });
            }
        }
        let reveal = Reveal {
            member: self.identity.participant_id(),
            statement_hash: signed.hash,
            partial,
            shares,
        };
        self.revealed = Some(reveal.clone());
        Ok(reveal)
    }
}
