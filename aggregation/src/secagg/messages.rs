//! The data the secure-aggregation parties exchange, and the exact bytes each hash or
//! signature covers.

use conclave_crypto::{Identity, ParticipantId, PublicIdentity, shamir::Share};

use super::ProtocolError;

const MANIFEST_CONTEXT: &str = "conclave 2026-11 secagg manifest v1";
const STATEMENT_CONTEXT: &str = "conclave 2026-11 secagg statement v1";
const VECTOR_CONTEXT: &str = "conclave 2026-11 secagg masked vector v1";

/// What every party of a round agrees on before it starts (from the signed round plan).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundConfig {
    pub job_id: String,
    pub round: u32,
    /// Participants admitted to the round, with their sealing keys.
    pub participants: Vec<PublicIdentity>,
    /// The committee; a member's share index is its position here plus one.
    pub committee: Vec<PublicIdentity>,
    /// Shares needed to rebuild a seed, and member signatures needed to act: `t > c/2`.
    pub threshold: usize,
    pub min_participants: usize,
    /// Ring elements per vector (the update plus the sample count).
    pub len: usize,
}

impl RoundConfig {
    /// Checks the configuration's own consistency.
    pub fn validate(&self) -> Result<(), ProtocolError> {
        let c = self.committee.len();
        let bad = |m: String| Err(ProtocolError::BadConfig(m));
        if c == 0 || c > conclave_crypto::shamir::MAX_SHARES {
            return bad(format!("committee size {c} must be 1..=255"));
        }
        if self.threshold * 2 <= c || self.threshold > c {
            return bad(format!("threshold {} must be > c/2 and <= c (c = {c})", self.threshold));
        }
        if self.min_participants == 0 || self.len == 0 {
            return bad("min_participants and len must be positive".into());
        }
        let mut ids: Vec<&ParticipantId> = self.participants.iter().map(|p| &p.id).collect();
        ids.sort();
        if ids.windows(2).any(|w| w[0] == w[1]) {
            return bad("a participant is listed twice".into());
        }
        let mut members: Vec<&ParticipantId> = self.committee.iter().map(|p| &p.id).collect();
        members.sort();
        if members.windows(2).any(|w| w[0] == w[1]) {
            return bad("a committee member is listed twice".into());
        }
        Ok(())
    }

    /// The public identity of a participant of this round.
    pub fn participant(&self, id: &ParticipantId) -> Option<&PublicIdentity> {
        self.participants.iter().find(|p| &p.id == id)
    }

    /// A member's position in the committee (0-based; its share index is this plus one).
    pub fn member_position(&self, id: &ParticipantId) -> Option<usize> {
        self.committee.iter().position(|p| &p.id == id)
    }

    pub(crate) fn check_round(&self, job_id: &str, round: u32) -> Result<(), ProtocolError> {
        if job_id != self.job_id || round != self.round {
            return Err(ProtocolError::WrongRound { job: job_id.into(), round });
        }
        Ok(())
    }

    /// HPKE `info` of the seed participant `i` seals to member `j`.
    pub(crate) fn seed_info(&self, i: &ParticipantId, j: usize) -> Vec<u8> {
        format!("conclave/secagg/seed/{}/{}/{i}/{j}", self.job_id, self.round).into_bytes()
    }

    /// HPKE `info` of the share of `s_ij` that member `k` holds.
    pub(crate) fn share_info(&self, i: &ParticipantId, j: usize, k: usize) -> Vec<u8> {
        format!("conclave/secagg/share/{}/{}/{i}/{j}/{k}", self.job_id, self.round).into_bytes()
    }
}

/// BLAKE3 of a masked ring vector (little-endian words), as signed in a [`Manifest`].
pub fn vector_hash(v: &[u32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(VECTOR_CONTEXT);
    for chunk in v.chunks(16 * 1024) {
        let bytes: Vec<u8> = chunk.iter().flat_map(|w| w.to_le_bytes()).collect();
        h.update(&bytes);
    }
    *h.finalize().as_bytes()
}

fn put_bytes(h: &mut blake3::Hasher, b: &[u8]) {
    h.update(&(b.len() as u64).to_le_bytes());
    h.update(b);
}

/// A participant's signed account of its upload: the hash of its masked vector and every
/// sealed seed and share. Small (`O(c²)` boxes), so every committee member can check it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub job_id: String,
    pub round: u32,
    pub participant: ParticipantId,
    pub vector_hash: [u8; 32],
    /// `sealed_seeds[j]`: `s_ij` sealed to member `j`.
    pub sealed_seeds: Vec<Vec<u8>>,
    /// `sealed_shares[j][k]`: member `k`'s share of `s_ij`, sealed to member `k`.
    pub sealed_shares: Vec<Vec<Vec<u8>>>,
    pub signature: Vec<u8>,
}

impl Manifest {
    /// The hash the participant signs (everything but the signature, length-prefixed).
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(MANIFEST_CONTEXT);
        put_bytes(&mut h, self.job_id.as_bytes());
        h.update(&self.round.to_le_bytes());
        put_bytes(&mut h, self.participant.as_str().as_bytes());
        h.update(&self.vector_hash);
        h.update(&(self.sealed_seeds.len() as u64).to_le_bytes());
        for s in &self.sealed_seeds {
            put_bytes(&mut h, s);
        }
        h.update(&(self.sealed_shares.len() as u64).to_le_bytes());
        for row in &self.sealed_shares {
            h.update(&(row.len() as u64).to_le_bytes());
            for s in row {
                put_bytes(&mut h, s);
            }
        }
        *h.finalize().as_bytes()
    }

    pub(crate) fn sign(&mut self, identity: &Identity) {
        self.signature = identity.sign(&self.hash()).to_vec();
    }

    /// Checks that the manifest is for this round, from one of its participants, shaped for
    /// its committee, and signed by that participant.
    pub fn verify(&self, config: &RoundConfig) -> Result<(), ProtocolError> {
        config.check_round(&self.job_id, self.round)?;
        if config.participant(&self.participant).is_none() {
            return Err(ProtocolError::UnknownParticipant(self.participant.clone()));
        }
        let c = config.committee.len();
        if self.sealed_seeds.len() != c || self.sealed_shares.len() != c || self.sealed_shares.iter().any(|r| r.len() != c) {
            return Err(ProtocolError::BadManifest(format!("expected {c} sealed seeds and {c}x{c} sealed shares")));
        }
        self.participant
            .verify(&self.hash(), &self.signature)
            .map_err(|_| ProtocolError::BadSignature(self.participant.clone()))
    }
}

/// The coordinator's proposal for unmasking: the uploads `U` to sum (participant and manifest
/// hash) and the committee members `A` expected to answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    pub job_id: String,
    pub round: u32,
    /// Sorted by participant.
    pub uploads: Vec<(ParticipantId, [u8; 32])>,
    /// Sorted by committee position.
    pub answering: Vec<ParticipantId>,
}

impl Statement {
    /// `H(U, A)`: what members sign.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(STATEMENT_CONTEXT);
        put_bytes(&mut h, self.job_id.as_bytes());
        h.update(&self.round.to_le_bytes());
        h.update(&(self.uploads.len() as u64).to_le_bytes());
        for (id, manifest) in &self.uploads {
            put_bytes(&mut h, id.as_str().as_bytes());
            h.update(manifest);
        }
        h.update(&(self.answering.len() as u64).to_le_bytes());
        for id in &self.answering {
            put_bytes(&mut h, id.as_str().as_bytes());
        }
        *h.finalize().as_bytes()
    }
}

/// A committee member's signature on a statement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Approval {
    pub member: ParticipantId,
    pub statement_hash: [u8; 32],
    pub signature: Vec<u8>,
}

impl Approval {
    pub(crate) fn verify(&self) -> bool {
        self.member.verify(&self.statement_hash, &self.signature).is_ok()
    }
}

/// A share a member reveals of an absent member's seed `s_ik`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevealedShare {
    pub participant: ParticipantId,
    /// Committee position of the absent member `k` whose seed this is a share of.
    pub absent: usize,
    pub share: Share,
}

/// What a committee member in `A` returns once the statement is approved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reveal {
    pub member: ParticipantId,
    pub statement_hash: [u8; 32],
    /// `M_j = Σ_{i∈U} PRG(s_ij)`.
    pub partial: Vec<u32>,
    pub shares: Vec<RevealedShare>,
}
