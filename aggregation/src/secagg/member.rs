//! The committee member's side: check and sign at most one statement per round, then reveal
//! only what that statement allows, and only once `t` members have signed it.

use std::collections::HashSet;
use std::sync::Arc;

use conclave_crypto::shamir::Share;
use conclave_crypto::{Identity, ParticipantId, Seed, prg, seal};

use super::{Approval, MemberView, ProtocolError, Reveal, RevealedShare, RoundConfig, Statement};

/// What a member holds after signing a statement.
struct Signed {
    statement: Statement,
    hash: [u8; 32],
    /// `s_{i,me}` of every upload of the statement whose mask seeds this member holds.
    seeds: Vec<Seed>,
    /// `shares[u]`: this member's share of `s_{i,k}` for each mask holder `k` of the u-th
    /// upload, as `(k, share)` in holder order.
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
            signed: None,
            revealed: None,
        })
    }

    /// Checks a statement and this member's views of its uploads' manifests, opens its sealed seeds and
    /// shares, and signs `H(U, A)`. Signing the same statement again returns the same approval;
    /// any other statement for the round is refused once one is signed.
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
        // U: admitted participants, each once, at least min_participants, each with its signed manifest.
        if statement.uploads.len() < config.min_participants {
            return Err(ProtocolError::TooFewUploads {
                got: statement.uploads.len(),
                min: config.min_participants,
            });
        }
        let mut seen = HashSet::new();
        if manifests.len() != statement.uploads.len() {
            return Err(ProtocolError::BadManifest(format!(
                "{} manifests for {} uploads",
                manifests.len(),
                statement.uploads.len()
            )));
        }
        for ((id, manifest_hash), manifest) in statement.uploads.iter().zip(manifests) {
            if !seen.insert(id) {
                return Err(ProtocolError::DuplicateUpload(id.to_string()));
            }
            if &manifest.participant != id || &manifest.manifest_hash() != manifest_hash {
                return Err(ProtocolError::BadManifest(format!(
                    "manifest does not match the statement's entry for {id}"
                )));
            }
            manifest.verify(config, self.position)?;
        }
        // Open everything this member will need before committing to the statement, so a
        // participant's unopenable box stops the statement here rather than after signing.
        let me = self.position;
        let mut seeds = Vec::with_capacity(manifests.len());
        let mut shares = Vec::with_capacity(manifests.len());
        for m in manifests {
            let i = &m.participant;
            let open_err = |what: &str| ProtocolError::Open(format!("{what} from {i}"));
            let plain = zeroize::Zeroizing::new(
                seal::open(&self.identity, &config.box_info(i, me), b"", &m.sealed_box)
                    .map_err(|_| open_err("box"))?,
            );
            let holders = config.mask_holders(i);
            let holds = holders.contains(&me);
            if plain.len() != config.box_len(holds) {
                return Err(open_err("box of the wrong length"));
            }
            let offset = if holds {
                seeds.push(Seed::from_bytes(plain[..32].try_into().expect("32 bytes")));
                32
            } else {
                0
            };
            let mut row = Vec::with_capacity(holders.len());
            for (&k, piece) in holders.iter().zip(plain[offset..].chunks_exact(33)) {
                if piece[0] as usize != me + 1 {
                    return Err(open_err("share with another member's index"));
                }
                let y: [u8; 32] = piece[1..].try_into().expect("33 bytes");
                row.push((
                    k,
                    Share::from_parts(piece[0], y)
                        .map_err(|e| ProtocolError::Open(e.to_string()))?,
                ));
            }
            shares.push(row);
        }
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

    /// Reveals this member's partial sum and its shares of the absent members' seeds, once
    /// `approvals` hold `t` valid signatures by distinct committee members on the statement
    /// this member signed. Asking again returns the same reveal.
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
