//! Secret-shared secure aggregation with a committee (DESIGN.md, "A round", steps 3–5), as
//! pure state machines with no I/O: the participant's [`contribute`], the committee
//! [`Member`] and the coordinator's [`Aggregator`]. The network code relays their messages.
//!
//! Participant `i` masks its quantized vector with one mask per committee member,
//! `y_i = q_i + Σ_j PRG(s_ij)`, seals `s_ij` to member `j` and Shamir-shares every `s_ij`
//! `t`-of-`c` among the committee, each share sealed to its holder, and signs a small
//! [`Manifest`] of all that, naming the signed round plan it masked under. The coordinator proposes one [`Statement`] `(U, A)`: the uploads
//! to sum and the members expected to answer. A member signs at most one statement per round,
//! only one listing itself, with `|U| ≥ min_participants`, `|A| ≥ t` and a valid participant
//! signature for every upload; it reveals only after seeing `t > c/2` member signatures on
//! that statement: its partial `M_j = Σ_{i∈U} PRG(s_ij)` and, for members `k ∉ A`, its shares
//! of their seeds. Then `Σ y_i − Σ_{j∈A} M_j − Σ_{k∉A} Σ_i PRG(s_ik) = Σ_{i∈U} q_i`.

mod aggregator;
mod member;
mod messages;
mod participant;
mod wire;

pub use wire::{plan_digest, sign_plan, verify_plan};

pub use aggregator::Aggregator;
pub use member::Member;
pub use messages::{
    Approval, Complaint, ComplaintReason, HashedBytes, Manifest, MemberView, Reveal, RevealedShare,
    RoundConfig, Statement, complaint_hash, le_bytes, vector_hash, vector_hash_le_bytes,
};
pub use participant::contribute;

/// Why a protocol step was refused. Refusals change no state.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    #[error("round configuration is invalid: {0}")]
    BadConfig(String),
    #[error("message is for job {job} round {round}, not this round")]
    WrongRound { job: String, round: u32 },
    #[error("{0} is not a participant of this round")]
    UnknownParticipant(String),
    #[error("{0} is not a member of this round's committee")]
    NotMember(String),
    #[error("signature by {0} does not verify")]
    BadSignature(String),
    #[error("{0} masked its upload under another round plan than this one")]
    OtherPlan(String),
    #[error("masked vector does not match the manifest's hash")]
    HashMismatch,
    #[error("vector has {got} elements, the round's ring vectors have {expected}")]
    Length { got: usize, expected: usize },
    #[error("{0} already uploaded in this round")]
    DuplicateUpload(String),
    #[error("manifest is malformed: {0}")]
    BadManifest(String),
    #[error("statement sums {got} uploads, fewer than min_participants = {min}")]
    TooFewUploads { got: usize, min: usize },
    #[error("statement expects {got} committee members to answer, fewer than the threshold {t}")]
    TooFewMembers { got: usize, t: usize },
    #[error("statement does not list this member among those expected to answer")]
    NotInStatement,
    #[error("this member already signed another statement for this round")]
    AlreadySigned,
    #[error("only {got} valid member signatures on the statement, {t} needed")]
    NotApproved { got: usize, t: usize },
    #[error("a sealed seed or share could not be opened: {0}")]
    Open(String),
    #[error("this member complained about {0}'s box: it cannot be summed")]
    Complained(String),
    #[error("step out of order: {0}")]
    OutOfOrder(&'static str),
    #[error("the coordinator already proposed a statement for this round")]
    AlreadyProposed,
    #[error("cannot rebuild a seed: {0}")]
    Rebuild(String),
}

#[cfg(test)]
mod leak_tests;
#[cfg(test)]
mod tests;
