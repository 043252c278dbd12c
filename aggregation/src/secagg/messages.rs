//! The data the secure-aggregation parties exchange, and the exact bytes each hash or
//! signature covers.

use conclave_crypto::{Identity, ParticipantId, PublicIdentity, Seed, seal, shamir::Share};

use super::ProtocolError;

const MANIFEST_CONTEXT: &str = "conclave 2026-12 secagg manifest v2";
const STATEMENT_CONTEXT: &str = "conclave 2026-11 secagg statement v1";
const VECTOR_CONTEXT: &str = "conclave 2026-11 secagg masked vector v1";
const BOXES_CONTEXT: &str = "conclave 2026-11 secagg box for one member v1";
const COMPLAINT_CONTEXT: &str = "conclave 2026-12 secagg complaint v1";

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
    /// What the coordinator signed of the round's plan (its digest): every manifest names it,
    /// and members sum only uploads made under the plan they were shown, so all of `U` saw
    /// the same committee, keys and threshold.
    pub plan_hash: [u8; 32],
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
            return bad(format!(
                "threshold {} must be > c/2 and <= c (c = {c})",
                self.threshold
            ));
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
            return Err(ProtocolError::WrongRound {
                job: job_id.into(),
                round,
            });
        }
        Ok(())
    }

    /// Refuses an upload made under another plan than this round's.
    pub(crate) fn check_plan(
        &self,
        participant: &ParticipantId,
        plan_hash: &[u8; 32],
    ) -> Result<(), ProtocolError> {
        if plan_hash != &self.plan_hash {
            return Err(ProtocolError::OtherPlan(participant.to_string()));
        }
        Ok(())
    }

    /// Bytes of the plaintext of a participant's box for one member: that member's seed,
    /// then its share (index byte + 32 bytes) of each other member's seed.
    pub(crate) fn box_len(&self) -> usize {
        32 + 33 * (self.committee.len() - 1)
    }

    /// Opens participant `i`'s box for member `k` (`identity` must be that member) and parses
    /// it: `i`'s seed for this member, and this member's share of each of `i`'s other seeds,
    /// by the committee position whose seed it is.
    pub(crate) fn open_box(
        &self,
        identity: &Identity,
        i: &ParticipantId,
        k: usize,
        sealed: &[u8],
    ) -> Result<OpenedBox, ComplaintReason> {
        let plain = zeroize::Zeroizing::new(
            seal::open(identity, &self.box_info(i, k), b"", sealed)
                .map_err(|_| ComplaintReason::Unopenable)?,
        );
        if plain.len() != self.box_len() {
            return Err(ComplaintReason::Malformed);
        }
        let seed = Seed::from_bytes(plain[..32].try_into().expect("32 bytes"));
        let others = (0..self.committee.len()).filter(|&j| j != k);
        let mut shares = Vec::with_capacity(self.committee.len() - 1);
        for (j, piece) in others.zip(plain[32..].chunks_exact(33)) {
            if piece[0] as usize != k + 1 {
                return Err(ComplaintReason::Malformed);
            }
            let y: [u8; 32] = piece[1..].try_into().expect("33 bytes");
            let share = Share::from_parts(piece[0], y).map_err(|_| ComplaintReason::Malformed)?;
            shares.push((j, share));
        }
        Ok(OpenedBox { seed, shares })
    }

    /// HPKE `info` of the box participant `i` seals to member `k`.
    pub(crate) fn box_info(&self, i: &ParticipantId, k: usize) -> Vec<u8> {
        format!("conclave/secagg/box/{}/{}/{i}/{k}", self.job_id, self.round).into_bytes()
    }
}

/// What a committee member finds in one participant's box.
pub(crate) struct OpenedBox {
    /// The participant's mask seed for this member.
    pub seed: Seed,
    /// This member's share of each of the participant's seeds, with the committee position
    /// of the member that seed is for.
    pub shares: Vec<(usize, Share)>,
}

/// BLAKE3 of a masked ring vector (little-endian words), as signed in a [`Manifest`].
pub fn vector_hash(v: &[u32]) -> [u8; 32] {
    if cfg!(target_endian = "little") {
        return vector_hash_le_bytes(bytemuck::cast_slice(v));
    }
    let mut h = blake3::Hasher::new_derive_key(VECTOR_CONTEXT);
    let mut buf = [0u8; 4 * 4096];
    for chunk in v.chunks(4096) {
        for (b, w) in buf.chunks_exact_mut(4).zip(chunk) {
            b.copy_from_slice(&w.to_le_bytes());
        }
        h.update(&buf[..4 * chunk.len()]);
    }
    *h.finalize().as_bytes()
}

/// [`vector_hash`] of the vector whose little-endian bytes are `bytes` (as uploaded).
pub fn vector_hash_le_bytes(bytes: &[u8]) -> [u8; 32] {
    *blake3::Hasher::new_derive_key(VECTOR_CONTEXT)
        .update(bytes)
        .finalize()
        .as_bytes()
}

/// A masked vector as uploaded (little-endian words, borrowed, not copied) with its
/// [`vector_hash`], computed once when it is built: a coordinator hashes each upload once,
/// outside its locks, and adds it to the sum without decoding it into a second buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashedBytes<'a> {
    bytes: &'a [u8],
    hash: [u8; 32],
}

impl<'a> HashedBytes<'a> {
    /// Hashes little-endian words (a trailing partial word is left out).
    pub fn new(bytes: &'a [u8]) -> Self {
        let bytes = &bytes[..bytes.len() / 4 * 4];
        Self {
            bytes,
            hash: vector_hash_le_bytes(bytes),
        }
    }

    /// Number of words.
    pub fn len(&self) -> usize {
        self.bytes.len() / 4
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// `acc += self` in Z_{2^32}, word by word (`acc` must have `len()` words).
    pub fn add_to(&self, acc: &mut [u32]) {
        // Aligned on a little-endian machine (the usual case): add the words in place.
        if cfg!(target_endian = "little")
            && let Ok(words) = bytemuck::try_cast_slice::<u8, u32>(self.bytes)
        {
            for (a, w) in acc.iter_mut().zip(words) {
                *a = a.wrapping_add(*w);
            }
            return;
        }
        for (a, w) in acc.iter_mut().zip(self.bytes.chunks_exact(4)) {
            *a = a.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
    }

    /// `acc -= self` in Z_{2^32}, word by word (`acc` must have `len()` words).
    pub fn sub_from(&self, acc: &mut [u32]) {
        for (a, w) in acc.iter_mut().zip(self.bytes.chunks_exact(4)) {
            *a = a.wrapping_sub(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
        }
    }

    pub fn hash(&self) -> &[u8; 32] {
        &self.hash
    }
}

/// The little-endian bytes of a ring vector (as uploaded).
pub fn le_bytes(v: &[u32]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        return bytemuck::cast_slice(v).to_vec();
    }
    let mut out = Vec::with_capacity(4 * v.len());
    for w in v {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
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
    /// The digest of the round plan the participant masked under ([`RoundConfig::plan_hash`]).
    pub plan_hash: [u8; 32],
    pub vector_hash: [u8; 32],
    /// `sealed[k]`: one HPKE box to member `k` holding `s_ik` and `k`'s share of every `s_ij`.
    pub sealed: Vec<Vec<u8>>,
    pub signature: Vec<u8>,
}

impl Manifest {
    /// Digest of the box sealed to member `k`.
    pub fn box_digest(&self, k: usize) -> [u8; 32] {
        box_digest(&self.sealed[k])
    }

    /// The hash the participant signs: round, participant, plan, vector hash, and the digest
    /// of each member's box. A member checks it from its [`MemberView`] alone.
    pub fn hash(&self) -> [u8; 32] {
        let digests: Vec<[u8; 32]> = (0..self.sealed.len()).map(|k| self.box_digest(k)).collect();
        manifest_hash(
            &self.job_id,
            self.round,
            &self.participant,
            &self.plan_hash,
            &self.vector_hash,
            &digests,
        )
    }

    /// What member `k` needs of this manifest: its own box and every member's digest.
    pub fn view_for(&self, k: usize) -> MemberView {
        MemberView {
            job_id: self.job_id.clone(),
            round: self.round,
            participant: self.participant.clone(),
            plan_hash: self.plan_hash,
            vector_hash: self.vector_hash,
            digests: (0..self.sealed.len()).map(|j| self.box_digest(j)).collect(),
            sealed_box: self.sealed[k].clone(),
            signature: self.signature.clone(),
        }
    }

    pub(crate) fn sign(&mut self, identity: &Identity) {
        self.signature = identity.sign(&self.hash()).to_vec();
    }

    /// Checks that the manifest is for this round and its plan, from one of its participants,
    /// shaped for its committee, and signed by that participant.
    pub fn verify(&self, config: &RoundConfig) -> Result<(), ProtocolError> {
        config.check_round(&self.job_id, self.round)?;
        if config.participant(&self.participant).is_none() {
            return Err(ProtocolError::UnknownParticipant(
                self.participant.to_string(),
            ));
        }
        config.check_plan(&self.participant, &self.plan_hash)?;
        let c = config.committee.len();
        if self.sealed.len() != c {
            return Err(ProtocolError::BadManifest(format!(
                "expected {c} sealed boxes, got {}",
                self.sealed.len()
            )));
        }
        self.participant
            .verify(&self.hash(), &self.signature)
            .map_err(|_| ProtocolError::BadSignature(self.participant.to_string()))
    }
}

fn box_digest(sealed_box: &[u8]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(BOXES_CONTEXT);
    put_bytes(&mut h, sealed_box);
    *h.finalize().as_bytes()
}

fn manifest_hash(
    job_id: &str,
    round: u32,
    participant: &ParticipantId,
    plan_hash: &[u8; 32],
    vector_hash: &[u8; 32],
    digests: &[[u8; 32]],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(MANIFEST_CONTEXT);
    put_bytes(&mut h, job_id.as_bytes());
    h.update(&round.to_le_bytes());
    put_bytes(&mut h, participant.as_str().as_bytes());
    h.update(plan_hash);
    h.update(vector_hash);
    h.update(&(digests.len() as u64).to_le_bytes());
    for d in digests {
        h.update(d);
    }
    *h.finalize().as_bytes()
}

/// Member `k`'s part of a [`Manifest`]: the box sealed to it and everyone's box digests,
/// enough to check the participant's signature without the other members' boxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberView {
    pub job_id: String,
    pub round: u32,
    pub participant: ParticipantId,
    pub plan_hash: [u8; 32],
    pub vector_hash: [u8; 32],
    pub digests: Vec<[u8; 32]>,
    pub sealed_box: Vec<u8>,
    pub signature: Vec<u8>,
}

impl MemberView {
    /// The manifest hash this view stands for.
    pub fn manifest_hash(&self) -> [u8; 32] {
        manifest_hash(
            &self.job_id,
            self.round,
            &self.participant,
            &self.plan_hash,
            &self.vector_hash,
            &self.digests,
        )
    }

    /// Checks the view for member `k`: right round, plan and shape, its box matches its
    /// digest, and the participant signed the manifest hash.
    pub fn verify(&self, config: &RoundConfig, k: usize) -> Result<(), ProtocolError> {
        self.verify_unsigned(config, k)?;
        self.participant
            .verify(&self.manifest_hash(), &self.signature)
            .map_err(|_| ProtocolError::BadSignature(self.participant.to_string()))
    }

    /// [`MemberView::verify`] but for the signature: for a view whose manifest hash the member
    /// already saw signed by this participant (its check).
    pub(crate) fn verify_unsigned(
        &self,
        config: &RoundConfig,
        k: usize,
    ) -> Result<(), ProtocolError> {
        config.check_round(&self.job_id, self.round)?;
        if config.participant(&self.participant).is_none() {
            return Err(ProtocolError::UnknownParticipant(
                self.participant.to_string(),
            ));
        }
        config.check_plan(&self.participant, &self.plan_hash)?;
        let c = config.committee.len();
        if self.digests.len() != c || k >= c {
            return Err(ProtocolError::BadManifest(format!("expected {c} digests")));
        }
        if box_digest(&self.sealed_box) != self.digests[k] {
            return Err(ProtocolError::BadManifest(format!(
                "the box from {} does not match its signed digest",
                self.participant
            )));
        }
        Ok(())
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
        self.member
            .verify(&self.statement_hash, &self.signature)
            .is_ok()
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

/// Why a member could not use a participant's box.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ComplaintReason {
    /// The HPKE box does not open with this member's key and the round's context.
    #[error("the box does not open")]
    Unopenable,
    /// The box opens, but its contents are not a seed and one share per other member.
    #[error("the box holds no seed and shares of the right shape")]
    Malformed,
}

impl ComplaintReason {
    /// The reason's wire code (`v1::ComplaintReason`).
    pub fn code(self) -> u8 {
        match self {
            ComplaintReason::Unopenable => 1,
            ComplaintReason::Malformed => 2,
        }
    }

    /// The reason of a wire code.
    pub fn from_code(code: i32) -> Option<Self> {
        match code {
            1 => Some(ComplaintReason::Unopenable),
            2 => Some(ComplaintReason::Malformed),
            _ => None,
        }
    }
}

/// A committee member's signed statement that it cannot use one participant's box, filed
/// before any statement is signed: the coordinator leaves that upload out of `U`. Reveals
/// nothing about the member's other boxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Complaint {
    pub job_id: String,
    pub round: u32,
    pub member: ParticipantId,
    pub participant: ParticipantId,
    /// The manifest complained about.
    pub manifest_hash: [u8; 32],
    pub reason: ComplaintReason,
    pub signature: Vec<u8>,
}

impl Complaint {
    /// What the member signs.
    pub fn hash(&self) -> [u8; 32] {
        complaint_hash(
            &self.job_id,
            self.round,
            &self.member,
            &self.participant,
            &self.manifest_hash,
            self.reason,
        )
    }

    /// Whether the member's signature verifies.
    pub fn verify(&self) -> bool {
        self.member.verify(&self.hash(), &self.signature).is_ok()
    }
}

/// `H(job, round, member, participant, manifest, reason)`: what a complaint's member signs.
pub fn complaint_hash(
    job_id: &str,
    round: u32,
    member: &ParticipantId,
    participant: &ParticipantId,
    manifest_hash: &[u8; 32],
    reason: ComplaintReason,
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(COMPLAINT_CONTEXT);
    put_bytes(&mut h, job_id.as_bytes());
    h.update(&round.to_le_bytes());
    put_bytes(&mut h, member.as_str().as_bytes());
    put_bytes(&mut h, participant.as_str().as_bytes());
    h.update(manifest_hash);
    h.update(&[reason.code()]);
    *h.finalize().as_bytes()
}
