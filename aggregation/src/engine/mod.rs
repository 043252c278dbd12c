//! The round engine: one job's rules, written once. A [`JobEngine`] is a pure state machine
//! (no I/O, no clock, no network) over the events the ledger records for a job: admissions, a
//! secure job's committee draw, rounds opened from the latest model for every admitted
//! participant, signed uploads, committee complaints and attestations, closes with the
//! contributors and statement they imply, the policy's rewards, exports.
//!
//! Each event is first [`JobEngine::check`]ed against the rules, which changes nothing, and
//! the [`Checked`] change is then [`JobEngine::apply`]'d, which cannot fail. The same engine
//! runs in two places:
//! - `ledger verify` replays every entry through it, so a ledger that breaks a rule is named at
//!   the entry that breaks it;
//! - the coordinator stages every batch it is about to sign through its job's engine
//!   ([`JobEngine::stage`]) and commits only what the engine accepts, so it cannot record an
//!   entry its own verifier (or anyone's) would reject.
//!
//! The rules by event: [`draw`] (admissions and the draw), [`round`] (opening, uploads,
//! complaints, attestations), [`close`] (a round's close and its rewards, [`rewards`]).

mod close;
mod draw;
pub mod rewards;
mod round;
mod summary;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use conclave_crypto::ParticipantId;
use conclave_proto::v1;
pub use conclave_proto::v1::ledger_body::Payload;
use prost::Message;

pub use close::MAX_FAILURE_CHARS;
pub use round::UploadRefusal;
pub use summary::{DrawSummary, JobSummary, OpenRound};

use crate::JobSpec;

/// Why the engine refuses an event: which rule it breaks, in words that name the parties.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

impl From<String> for Refusal {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for Refusal {
    fn from(reason: &str) -> Self {
        Self(reason.to_string())
    }
}

type Hash = [u8; 32];

fn hash32(bytes: &[u8], what: &str) -> Result<Hash, Refusal> {
    bytes
        .try_into()
        .map_err(|_| Refusal(format!("{what} must be 32 bytes, got {}", bytes.len())))
}

/// An admitted participant: its parsed id, sealing key and (secure jobs) draw commitment.
#[derive(Clone, Debug)]
struct Admitted {
    id: ParticipantId,
    sealing_key: Hash,
    commitment: Option<Hash>,
}

/// What the engine holds of the round in progress.
#[derive(Clone, Debug, Default)]
struct RoundState {
    round: u32,
    /// Who trains in it (a set: an upload's check does not walk all of them).
    participants: BTreeSet<String>,
    base_version: u32,
    base_model_hash: Vec<u8>,
    committee: Vec<ParticipantId>,
    draw_seed: Vec<u8>,
    plan_hash: Vec<u8>,
    /// participant → (sample count, manifest hash)
    uploads: BTreeMap<String, (u64, Vec<u8>)>,
    /// member → statement hash
    attestations: BTreeMap<String, Hash>,
    complaints: Vec<v1::CommitteeComplaint>,
    /// (member, participant) of each complaint: one each.
    complained: BTreeSet<(String, String)>,
}

/// One job's rules and what they need to know of its history. What grows with the number of
/// participants (who is admitted, the open round) is shared between copies and copied on
/// write, so staging a round's close on a copy does not copy them.
#[derive(Clone, Debug)]
pub struct JobEngine {
    id: String,
    spec: JobSpec,
    spec_bytes: Vec<u8>,
    /// did → what its admission recorded, and the order of admission.
    admitted: Arc<BTreeMap<String, Admitted>>,
    admission_order: Arc<Vec<String>>,
    /// BLAKE3 of each model version's parameters; index = version.
    model_hashes: Vec<Vec<u8>>,
    last_round: u32,
    open: Option<Arc<RoundState>>,
    previous_committee: Vec<ParticipantId>,
    finished: bool,
    draw: DrawSummary,
    /// (version, format, exporter) of every export recorded.
    exports: BTreeSet<(u32, String, String)>,
    /// A successful round's awards, whose reward entry must be the job's next entry.
    reward_due: Option<(u32, Vec<v1::Award>)>,
}

/// An event the engine accepted, with the change it makes: give it to [`JobEngine::apply`]
/// (of the same engine, unchanged since) to make it.
#[derive(Debug)]
pub struct Checked(Change);

#[derive(Debug)]
enum Change {
    Admit(String, Box<Admitted>),
    DrawPool(u32, Vec<ParticipantId>),
    DrawReveals(draw::Outcome),
    Open(Box<RoundState>),
    Upload(String, u64, Vec<u8>),
    Complaint(Box<v1::CommitteeComplaint>),
    Attest(String, Hash),
    Close(close::Closed),
    Rewarded,
    Export((u32, String, String)),
}

/// A batch of events checked in order, to apply once the batch is durable
/// ([`JobEngine::settle`]).
#[derive(Debug)]
pub enum Staged {
    /// Nothing to apply (an empty batch).
    Nothing,
    /// One event's change.
    One(Checked),
    /// The engine after several events (each checked against the state the ones before it
    /// left).
    Many(Box<JobEngine>),
}

impl JobEngine {
    /// A job as its creation records it: its spec (checked by the same rules everywhere) and
    /// the hash of its initial model.
    pub fn create(p: &v1::JobCreated) -> Result<Self, Refusal> {
        let wire = p.spec.clone().unwrap_or_default();
        let spec = JobSpec::from_proto(&wire).map_err(|e| Refusal(e.to_string()))?;
        hash32(&p.model_hash, "model_hash")?;
        Ok(Self {
            id: p.job_id.clone(),
            spec,
            spec_bytes: wire.encode_to_vec(),
            admitted: Arc::default(),
            admission_order: Arc::default(),
            model_hashes: vec![p.model_hash.clone()],
            last_round: 0,
            open: None,
            previous_committee: Vec::new(),
            finished: false,
            draw: DrawSummary::default(),
            exports: BTreeSet::new(),
            reward_due: None,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// The round whose reward entry must come next, if one is due.
    pub fn reward_due(&self) -> Option<u32> {
        self.reward_due.as_ref().map(|(round, _)| *round)
    }

    /// The parsed id of an admitted participant.
    pub fn admitted_id(&self, did: &str) -> Option<&ParticipantId> {
        self.admitted.get(did).map(|a| &a.id)
    }

    /// What the close `p` of the open round pays under the job's policy, by the rules (an
    /// empty list: nothing, or a failed round); refused as [`JobEngine::check`] would refuse
    /// the close. The reward entry that follows a close must carry exactly these.
    pub fn close_awards(&self, p: &v1::RoundClosed) -> Result<Vec<v1::Award>, Refusal> {
        // Checked as the entry it will be (once per round: the copy is not on a hot path).
        match self.check(&Payload::RoundClosed(p.clone()), true)?.0 {
            Change::Close(closed) => Ok(closed.awards),
            _ => unreachable!("a close is checked as a close"),
        }
    }

    /// Checks the job's next event against the rules; changes nothing. `signed`: whether the
    /// participant signatures the entry carries over its own fields verified (checked apart,
    /// in parallel, by whoever holds the entry).
    pub fn check(&self, payload: &Payload, signed: bool) -> Result<Checked, Refusal> {
        let job = payload_job(payload);
        if job != self.id {
            return Err(Refusal(format!(
                "an entry of job {job} given to job {}",
                self.id
            )));
        }
        if let Some((round, awards)) = &self.reward_due {
            return match payload {
                Payload::Reward(r) if r.round == *round => {
                    if r.awards != *awards {
                        return Err(Refusal(format!(
                            "reward of job {} round {round} is not the policy's split: expected {}",
                            self.id,
                            rewards::describe(awards)
                        )));
                    }
                    Ok(Checked(Change::Rewarded))
                }
                _ => Err(Refusal(format!(
                    "expected the reward of job {} round {round} here",
                    self.id
                ))),
            };
        }
        let change = match payload {
            Payload::JobCreated(_) => {
                return Err(format!("job {} is created twice", self.id).into());
            }
            Payload::ParticipantAdmitted(p) => self.check_admission(p, signed)?,
            Payload::DrawPool(p) => self.check_draw_pool(p)?,
            Payload::DrawReveals(p) => self.check_draw_reveals(p, signed)?,
            Payload::RoundOpened(p) => self.check_open(p)?,
            Payload::UpdateAccepted(p) => self.check_upload(p, signed)?,
            Payload::CommitteeComplaint(p) => self.check_complaint(p, signed)?,
            Payload::CommitteeAttestation(p) => self.check_attestation(p)?,
            Payload::RoundClosed(p) => Change::Close(self.check_close(p)?),
            Payload::Reward(p) => {
                return Err(Refusal(format!(
                    "reward of job {} round {} without a round that earned it just before",
                    p.job_id, p.round
                )));
            }
            Payload::ModelExported(p) => self.check_export(p, signed)?,
        };
        Ok(Checked(change))
    }

    /// Makes a change [`JobEngine::check`] accepted.
    pub fn apply(&mut self, checked: Checked) {
        match checked.0 {
            Change::Admit(did, admitted) => {
                Arc::make_mut(&mut self.admission_order).push(did.clone());
                Arc::make_mut(&mut self.admitted).insert(did, *admitted);
            }
            Change::DrawPool(attempt, pool) => self.draw.open_attempt = Some((attempt, pool)),
            Change::DrawReveals(outcome) => self.apply_draw_reveals(outcome),
            Change::Open(round) => {
                self.previous_committee = round.committee.clone();
                self.last_round = round.round;
                self.open = Some(Arc::from(round));
            }
            Change::Upload(did, samples, manifest) => {
                let round = self.open_mut();
                round.uploads.insert(did, (samples, manifest));
            }
            Change::Complaint(c) => {
                let round = self.open_mut();
                round
                    .complained
                    .insert((c.member.clone(), c.participant.clone()));
                round.complaints.push(*c);
            }
            Change::Attest(member, statement) => {
                let round = self.open_mut();
                round.attestations.insert(member, statement);
            }
            Change::Close(closed) => self.apply_close(closed),
            Change::Rewarded => self.reward_due = None,
            Change::Export(key) => {
                self.exports.insert(key);
            }
        }
    }

    /// Checks and applies one event; on a refusal nothing changed.
    pub fn step(&mut self, payload: &Payload, signed: bool) -> Result<(), Refusal> {
        let checked = self.check(payload, signed)?;
        self.apply(checked);
        Ok(())
    }

    /// Checks a batch of this job's events in order (each against the state the ones before
    /// it leave); changes nothing. What it returns is applied with [`JobEngine::settle`] once
    /// the batch is durable, and dropped if it is not.
    pub fn stage<'a>(
        &self,
        payloads: impl IntoIterator<Item = &'a Payload>,
        signed: bool,
    ) -> Result<Staged, Refusal> {
        let mut payloads = payloads.into_iter();
        let Some(first) = payloads.next() else {
            return Ok(Staged::Nothing);
        };
        let first = self.check(first, signed)?;
        let Some(second) = payloads.next() else {
            return Ok(Staged::One(first));
        };
        // Several events: the later ones are checked against a copy that holds the earlier
        // ones (once per round opening or close, so the copy's cost is not per upload).
        let mut after = Box::new(self.clone());
        after.apply(first);
        after.step(second, signed)?;
        for p in payloads {
            after.step(p, signed)?;
        }
        Ok(Staged::Many(after))
    }

    /// Applies a batch [`JobEngine::stage`] accepted (of this engine, unchanged since).
    pub fn settle(&mut self, staged: Staged) {
        match staged {
            Staged::Nothing => {}
            Staged::One(checked) => self.apply(checked),
            Staged::Many(after) => *self = *after,
        }
    }

    /// The job as replayed so far.
    pub fn summary(&self) -> JobSummary {
        summary::of(self)
    }

    fn check_export(&self, p: &v1::ModelExported, signed: bool) -> Result<Change, Refusal> {
        if !self.admitted.contains_key(&p.exported_by) {
            return Err(Refusal(format!(
                "{} exported a model of job {} it was never admitted to",
                p.exported_by, p.job_id
            )));
        }
        let known = self.model_hashes.get(p.model_version as usize);
        if known != Some(&p.model_hash) {
            return Err(Refusal(format!(
                "model version {} with this hash was never produced by job {}",
                p.model_version, p.job_id
            )));
        }
        // An export is recorded once: the same signed export copied elsewhere in the ledger
        // is not a second one.
        let key = (p.model_version, p.format.clone(), p.exported_by.clone());
        if self.exports.contains(&key) {
            return Err(Refusal(format!(
                "{} exported model version {} as {} twice",
                p.exported_by, p.model_version, p.format
            )));
        }
        if !signed {
            return Err(Refusal(format!(
                "the export is not signed by its exporter {}",
                p.exported_by
            )));
        }
        Ok(Change::Export(key))
    }

    /// The open round, to change (copied first if a staged copy shares it).
    fn open_mut(&mut self) -> &mut RoundState {
        Arc::make_mut(self.open.as_mut().expect("checked: a round is open"))
    }

    /// The open round numbered `round`.
    fn open_round(&self, round: u32) -> Result<&RoundState, Refusal> {
        match &self.open {
            Some(r) if r.round == round => Ok(r),
            _ => Err(Refusal(format!(
                "round {round} of job {} is not open",
                self.id
            ))),
        }
    }
}

/// The job an entry belongs to.
pub fn payload_job(payload: &Payload) -> &str {
    match payload {
        Payload::JobCreated(p) => &p.job_id,
        Payload::ParticipantAdmitted(p) => &p.job_id,
        Payload::RoundOpened(p) => &p.job_id,
        Payload::UpdateAccepted(p) => &p.job_id,
        Payload::CommitteeAttestation(p) => &p.job_id,
        Payload::RoundClosed(p) => &p.job_id,
        Payload::Reward(p) => &p.job_id,
        Payload::ModelExported(p) => &p.job_id,
        Payload::CommitteeComplaint(p) => &p.job_id,
        Payload::DrawPool(p) => &p.job_id,
        Payload::DrawReveals(p) => &p.job_id,
    }
}

#[cfg(test)]
mod tests;
