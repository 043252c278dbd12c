//! One job's state behind the coordinator's lock — its durable record, latest model, nonces,
//! its privacy mode's state (a secure round in progress), the committee draw in progress, open
//! work streams — and the round logic that moves it on: open a round (set up by its mode), step
//! it (by its mode's rules, [`crate::mode`]), close it with the model its server strategy made
//! of the round's aggregate ([`server_step`]) or with its failure. Every batch of ledger entries
//! is staged through the job's round engine before it is committed ([`Job::commit`]). Request
//! handlers (`state`, `committee`, `draw`) and the round driver call these narrow methods.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use conclave_aggregation::engine::JobEngine;
use conclave_aggregation::strategy;
use conclave_aggregation::{AggregationError, JobSpec, ModelLayout, Strategy};
use conclave_crypto::ParticipantId;
use conclave_ledger::{Batch, Head, Payload};
use conclave_proto::v1;
use tokio::sync::{Notify, watch};

use crate::CoordinatorError;
use crate::auth::Nonces;
use crate::draw::Gathering;
use crate::mode::{Mode, Opening, Step, Stepping, secagg::SecaggRound};
use crate::store::{RoundRecord, RoundStatus, Store};
use crate::telemetry::{self, RoundClock, RoundEnd};
use crate::work::{Index, WorkEpoch};

/// A job and everything the coordinator holds of it.
pub(crate) struct Job {
    pub spec: JobSpec,
    pub layout: ModelLayout,
    pub record: crate::store::JobRecord,
    /// Flat little-endian f32 parameters of `record.model_version`.
    pub latest_model: Arc<Vec<u8>>,
    /// The server strategy's state after `record.model_version` (empty for FedAvg).
    pub strategy_state: Arc<Vec<f32>>,
    pub nonces: Nonces,
    pub changes: watch::Sender<u64>,
    pub wake: Arc<Notify>,
    /// The job's privacy mode, with its state of the round in progress (a secure round is
    /// rebuilt from disk after a restart).
    pub mode: Mode,
    /// A secure job's draw attempt in progress: the reveals gathered so far (in memory).
    pub gathering: Option<Gathering>,
    /// Open work streams per participant: committee members with none are not asked to answer.
    pub connected: HashMap<String, usize>,
    /// When each participant's last work stream ended (unix ms; absent while it has one, or
    /// when it has had none since this coordinator started).
    pub gone_since: HashMap<String, u64>,
    /// The coordinator's did:key (shown in the job's info).
    pub coordinator: String,
    /// Which phase the open round is in since when, for telemetry (in memory only).
    pub clock: RoundClock,
    /// A plain round being averaged (outside the job's lock): it takes no more uploads.
    pub closing: Option<u32>,
    /// The round last opened and when its opening began (for the clock, once committed).
    pub opened_at: Option<(u32, SystemTime)>,
    /// Membership sets over the record, and the work epoch streams were last woken at
    /// ([`crate::work`]).
    pub index: Index,
    pub epoch: WorkEpoch,
    /// The job's round rules and what they know of its ledger entries: every batch is staged
    /// through it before it is committed ([`Job::commit`]).
    pub engine: JobEngine,
}

/// How a round ends: its new model (stored without the job's lock, and only recorded under
/// it) and Σ n_i; or failed, with why.
pub(crate) type Outcome = Result<(StoredModel, u64), String>;

/// A model version's files written: its flat bytes and their hash, and the server strategy's
/// state after it with its hash (none when the strategy keeps no state).
pub(crate) struct StoredModel {
    pub bytes: Arc<Vec<u8>>,
    pub hash: blake3::Hash,
    pub state: Arc<Vec<f32>>,
    pub state_hash: Option<String>,
}

impl StoredModel {
    /// Writes `params` as model `version` of `job`, and `state` beside it when `strategy`
    /// keeps one (first: a state without its model is never recorded, and the next attempt
    /// overwrites it). Both files are streamed, and the parameters are dropped once they are
    /// bytes, so at most two copies of the model are in memory here, beside the state.
    #[allow(clippy::too_many_arguments)]
    pub fn save(
        store: &Store,
        job: &str,
        version: u32,
        layout: &ModelLayout,
        params: Vec<f32>,
        strategy: &Strategy,
        state: Vec<f32>,
    ) -> Result<Self, CoordinatorError> {
        let state_hash = if strategy.rules().state_per_param() == 0 {
            None
        } else {
            store.save_strategy_state(job, version, strategy.rules(), layout.dim(), &state)?;
            Some(strategy::state_hash(&state).to_hex().to_string())
        };
        let bytes = f32_bytes(&params);
        drop(params);
        store.save_model_bytes(job, version, layout, &bytes)?;
        let hash = blake3::hash(&bytes);
        Ok(Self {
            bytes: Arc::new(bytes),
            hash,
            state: Arc::new(state),
            state_hash,
        })
    }
}

/// What a server step made: the new parameters and the strategy's state after them.
pub(crate) struct Stepped {
    pub params: Vec<f32>,
    pub state: Vec<f32>,
}

/// The server step of a round (without the job's lock): the strategy turns the round's
/// aggregate `mean` and its `state` into the new parameters over `base` (the round's base
/// model, little-endian) and its next state. A step that leaves f32 is the inner error: a
/// reason to fail the round once (the model and state stay as they were), not a fault to retry.
pub(crate) fn server_step(
    strategy: &Strategy,
    base: &[u8],
    mean: Vec<f32>,
    state: &[f32],
) -> Result<Result<Stepped, String>, CoordinatorError> {
    let mut params = mean;
    let mut state = state.to_vec();
    match strategy::apply(strategy.rules(), base, &mut params, &mut state) {
        Ok(()) => Ok(Ok(Stepped { params, state })),
        Err(AggregationError::NonFinite { index }) => Ok(Err(format!(
            "the aggregate overflows: {} makes parameter {index} of the new model or its state not finite",
            strategy.rules().label()
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn hex_to_bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_default()
}

pub(crate) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Passes each little-endian f32 of `bytes` to `each`, in order, without a copy of them; at a
/// NaN or an infinity it stops, refusing them with their index in `bytes`.
pub fn each_finite_f32(bytes: &[u8], mut each: impl FnMut(f32)) -> Result<(), CoordinatorError> {
    for (index, b) in bytes.chunks_exact(4).enumerate() {
        let v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if !v.is_finite() {
            return Err(CoordinatorError::NonFinite { index });
        }
        each(v);
    }
    Ok(())
}

impl Job {
    /// A job as loaded or created, with no round state in memory yet.
    pub fn new(
        spec: JobSpec,
        record: crate::store::JobRecord,
        latest_model: Arc<Vec<u8>>,
        strategy_state: Arc<Vec<f32>>,
        coordinator: String,
        engine: JobEngine,
    ) -> Self {
        let mode = Mode::of(&spec);
        Self {
            layout: spec.layout(),
            clock: RoundClock::new(&record.id, mode.rules().label()),
            mode,
            spec,
            record,
            latest_model,
            strategy_state,
            nonces: Nonces::default(),
            changes: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
            gathering: None,
            connected: HashMap::new(),
            gone_since: HashMap::new(),
            coordinator,
            closing: None,
            opened_at: None,
            index: Index::default(),
            epoch: WorkEpoch::default(),
            engine,
        }
    }

    /// Commits `batch` (with the job's record when `with_record`: see
    /// [`Store::commit`]) once the job's round engine has accepted every entry in it, in
    /// order; the engine learns them once they are durable. An entry the engine refuses is
    /// never signed, nothing is committed, and the refusal names the rule it breaks. The
    /// participant signatures the entries carry were checked when their requests came in.
    pub fn commit(
        &mut self,
        store: &Store,
        batch: Batch<'_>,
        with_record: bool,
    ) -> Result<Head, CoordinatorError> {
        let staged = self
            .engine
            .stage(batch.payloads(), true)
            .map_err(|e| CoordinatorError::rules(&self.record.id, e))?;
        let head = store.commit(with_record.then_some(&self.record), batch)?;
        self.engine.settle(staged);
        Ok(head)
    }

    pub fn id(&self) -> &str {
        &self.record.id
    }

    /// Whether the job's server strategy keeps state beside its models.
    pub fn strategy_state_kept(&self) -> bool {
        self.spec.strategy.rules().state_per_param() > 0
    }

    pub fn is_joined(&self, did: &ParticipantId) -> bool {
        self.index.is_joined(did.as_str())
    }

    pub fn require_joined(&self, did: &ParticipantId) -> Result<(), CoordinatorError> {
        if self.is_joined(did) {
            Ok(())
        } else {
            Err(CoordinatorError::NotJoined {
                job: self.id().into(),
                did: did.to_string(),
            })
        }
    }

    pub fn open_round(&self) -> Option<&RoundRecord> {
        self.record
            .rounds
            .last()
            .filter(|r| r.status == RoundStatus::Open)
    }

    /// The open round and the phase it is in, if a round is open.
    pub fn live_phase(&self) -> Option<(u32, telemetry::Phase)> {
        let round = self.open_round()?.round;
        if self.closing == Some(round) {
            return Some((round, telemetry::Phase::Close));
        }
        Some((round, self.mode.rules().phase(round)))
    }

    /// Tells the round clock where the job is now (after any change to it). A round that
    /// is opening or closing stays so until its opening is committed or its end recorded.
    pub fn observe_phase(&mut self) {
        let Some((round, phase)) = self.live_phase() else {
            return;
        };
        if !self.clock.is_on(round)
            && let Some((_, at)) = self.opened_at.take().filter(|(r, _)| *r == round)
        {
            // Opened (and committed) just now: its opening phase started at `at`.
            self.clock.open(round, at);
        }
        self.clock.enter(round, phase, SystemTime::now());
    }

    pub fn model_hash(&self, version: u32) -> Vec<u8> {
        hex_to_bytes(&self.record.model_hashes[version as usize])
    }

    /// Wakes the job's round driver (its work streams are woken when there is new work for
    /// them: [`Job::settle`]).
    pub fn bump(&self) {
        self.wake.notify_one();
    }

    /// Starts the first round when enough participants have joined: a plain job opens it; a
    /// secure job first fixes a draw pool (unless its draw is done), and the round opens when
    /// the pool has revealed ([`crate::draw`]).
    pub fn start_if_ready(&mut self, now: u64, batch: &mut Batch<'_>) {
        if !self.record.rounds.is_empty() || self.record.finished {
            return;
        }
        if self.mode.rules().needs_draw() && self.record.draw.entropy.is_none() {
            self.start_draw_attempt(now, batch);
        } else if self.record.participants.len() >= self.spec.start_participants as usize {
            self.open_next_round(now, batch);
        }
    }

    /// Opens the next round for every participant who has joined; in a secure-aggregation
    /// job, draws its committee (seeded by the job's draw entropy) and sets up the aggregator
    /// with a signed plan. Records the opening in `batch`.
    pub fn open_next_round(&mut self, now: u64, batch: &mut Batch<'_>) {
        let round = self.record.rounds.last().map_or(1, |r| r.round + 1);
        self.opened_at = Some((round, SystemTime::now()));
        let mut record = RoundRecord {
            round,
            status: RoundStatus::Open,
            base_version: self.record.model_version,
            result_version: None,
            expected: self
                .record
                .participants
                .iter()
                .map(|p| p.did.clone())
                .collect(),
            uploads: Vec::new(),
            deadline_unix_ms: now + self.spec.round_deadline_secs as u64 * 1000,
            committee: Vec::new(),
            draw_seed: String::new(),
            plan: String::new(),
            total_samples: None,
        };
        let entropy: [u8; 32] = self
            .record
            .draw
            .entropy
            .as_deref()
            .and_then(|e| hex::decode(e).ok())
            .and_then(|e| e.try_into().ok())
            .unwrap_or_default();
        let opening = Opening {
            spec: &self.spec,
            job_id: &self.record.id,
            participants: &self.record.participants,
            previous: self.record.rounds.last(),
            entropy,
            base_model_hash: self.model_hash(record.base_version),
            coordinator: batch.signer(),
        };
        let plan_hash = self.mode.rules_mut().open_round(&opening, &mut record);
        batch.push(Payload::RoundOpened(v1::RoundOpened {
            job_id: self.record.id.clone(),
            round,
            base_version: record.base_version,
            base_model_hash: self.model_hash(record.base_version),
            participants: record.expected.clone(),
            committee: record.committee.clone(),
            draw_seed: hex_to_bytes(&record.draw_seed),
            deadline_unix_ms: record.deadline_unix_ms,
            plan_hash,
        }));
        self.record.rounds.push(record);
    }

    /// The secure-aggregation state of the open round `round`.
    pub fn secagg_round(&mut self, round: u32) -> Result<&mut SecaggRound, CoordinatorError> {
        let job = self.record.id.clone();
        let current = self
            .open_round()
            .map_or("none".to_string(), |r| r.round.to_string());
        self.mode
            .secagg_round(round)
            .ok_or(CoordinatorError::RoundNotOpen {
                job,
                round,
                current,
            })
    }

    /// One step of the open round `round` (collecting until `deadline`, and `complete` when
    /// every update it will get is in), by its mode's rules.
    pub fn step(&mut self, round: u32, deadline: u64, complete: bool, now: u64) -> Step {
        let mut stepping = Stepping {
            job_id: &self.record.id,
            round,
            deadline,
            complete,
            now,
            uploads: self.open_round().map_or(0, |r| r.uploads.len()),
            min_participants: self.spec.min_participants as usize,
            phase_ms: self.spec.round_deadline_secs as u64 * 1000,
            connected: &self.connected,
            moved: false,
        };
        let step = self.mode.rules_mut().step(&mut stepping);
        if stepping.moved {
            self.bump();
        }
        step
    }

    /// Closes the open round with its outcome (new parameters, or failure with its reason),
    /// opens the next round or finishes the job, and makes it all durable. The round's update
    /// files are left for the caller to delete once the job's lock is released
    /// ([`crate::store::Store::drop_round_updates`]).
    ///
    /// A successful close the round engine refuses (the round's records disagree with its
    /// rules: a bug) is recorded as a failed round instead, with the rule it broke, so the
    /// job goes on; retrying it could only be refused again.
    pub fn close_round(
        &mut self,
        store: &Store,
        round: &RoundRecord,
        now: u64,
        outcome: Outcome,
    ) -> Result<Option<u64>, CoordinatorError> {
        if outcome.is_err() {
            return self.close_round_once(store, round, now, outcome);
        }
        match self.close_round_once(store, round, now, outcome) {
            Err(CoordinatorError::Rules { job, reason }) => {
                tracing::error!(job = %job, round = round.round, reason, "the round engine refuses the round's close; it is recorded as failed");
                let failure = format!("the round engine refuses its close: {reason}");
                self.close_round_once(store, round, now, Err(failure))
            }
            other => other,
        }
    }

    fn close_round_once(
        &mut self,
        store: &Store,
        round: &RoundRecord,
        now: u64,
        outcome: Outcome,
    ) -> Result<Option<u64>, CoordinatorError> {
        let mut record = self.record.clone();
        let mut new_model = None;
        let mut batch = store.batch(now);
        let closed = record.rounds.last_mut().expect("open round exists");
        let mut entry = v1::RoundClosed {
            job_id: record.id.clone(),
            round: round.round,
            base_metrics: self.evaluation(round.base_version),
            ..Default::default()
        };
        let mut completed = Vec::new();
        match outcome {
            Ok((stored, total)) => {
                let version = record.model_version + 1;
                let StoredModel {
                    bytes,
                    hash,
                    state,
                    state_hash,
                } = stored;
                record.model_hashes.push(hash.to_hex().to_string());
                record.model_version = version;
                record.state_hash = state_hash;
                closed.status = RoundStatus::Closed;
                closed.result_version = Some(version);
                closed.total_samples = Some(total);
                new_model = Some((bytes, state));
                entry.success = true;
                entry.result_version = version;
                entry.model_hash = hash.as_bytes().to_vec();
                completed = self.mode.rules().record_close(round, &mut entry);
                entry.total_samples = total;
            }
            Err(reason) => {
                tracing::warn!(job = %record.id, round = round.round, reason, "round failed");
                closed.status = RoundStatus::Failed;
                entry.failure = reason
                    .chars()
                    .take(conclave_aggregation::engine::MAX_FAILURE_CHARS)
                    .collect();
            }
        }
        let end = RoundEnd {
            closed: entry.success,
            uploads: round.uploads.len() as u64,
            participant_dropouts: round.expected.len().saturating_sub(round.uploads.len()) as u64,
            committee_dropouts: self.mode.rules().committee_dropouts(round, &completed),
        };
        // What the round pays is the rules' to say (the engine's, which `ledger verify` runs).
        let awards = self
            .engine
            .close_awards(&entry)
            .map_err(|e| CoordinatorError::rules(&record.id, e))?;
        batch.push(Payload::RoundClosed(entry));
        if !awards.is_empty() {
            batch.push(Payload::Reward(v1::Reward {
                job_id: record.id.clone(),
                round: round.round,
                awards,
            }));
        }
        let ended_at = SystemTime::now();
        let before = std::mem::replace(&mut self.record, record);
        let before_model = self.latest_model.clone();
        let before_state = self.strategy_state.clone();
        // A failed commit must leave the round exactly as it was, its secure state included.
        let before_mode = self.mode.take_round();
        let before_opened = self.opened_at;
        if round.round >= self.spec.rounds {
            self.record.finished = true;
            // No step follows: the state is not kept (its files are swept at the next start).
            self.record.state_hash = None;
        } else {
            if let Some((bytes, state)) = &new_model {
                self.latest_model = Arc::clone(bytes);
                self.strategy_state = Arc::clone(state);
            }
            self.open_next_round(now, &mut batch);
        }
        if let Err(e) = self.commit(store, batch, true) {
            self.record = before;
            self.latest_model = before_model;
            self.strategy_state = before_state;
            self.mode.put_round(before_mode);
            self.opened_at = before_opened;
            return Err(e);
        }
        if let Some((bytes, state)) = new_model {
            self.latest_model = bytes;
            self.strategy_state = state;
            // The states before are no longer needed (what this misses is swept at start).
            if self.strategy_state_kept() && self.record.model_version > 1 {
                store.drop_strategy_state(&self.record.id, self.record.model_version - 1);
            }
        }
        if self.record.finished {
            self.strategy_state = Arc::new(Vec::new());
            if self.strategy_state_kept() {
                store.drop_strategy_state(&self.record.id, self.record.model_version);
            }
        }
        // Reported once it is durable (a failed commit leaves the round open, on the clock).
        self.clock.finish(round.round, end, ended_at);
        tracing::info!(job = %self.record.id, round = round.round, model_version = self.record.model_version, status = ?self.record.rounds.iter().find(|r| r.round == round.round).map(|r| r.status), "round closed");
        self.bump();
        Ok(self.open_round().map(|r| r.deadline_unix_ms))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use conclave_ledger::sim::PLAIN_JOB;
    use prost::Message;

    use super::*;
    use crate::store::JobRecord;

    /// A created plain job in a fresh store, with its creation in the ledger.
    fn created(store: &Store) -> Job {
        let spec = JobSpec::from_toml(PLAIN_JOB).unwrap();
        let hash = blake3::hash(b"initial model");
        let record = JobRecord {
            id: "j-gate".into(),
            spec: hex::encode(spec.to_proto().encode_to_vec()),
            created_unix_ms: 1,
            participants: Vec::new(),
            model_version: 0,
            model_hashes: vec![hash.to_hex().to_string()],
            state_hash: None,
            rounds: Vec::new(),
            evaluations: BTreeMap::new(),
            finished: false,
            draw: Default::default(),
            exports: Vec::new(),
        };
        let creation = v1::JobCreated {
            job_id: record.id.clone(),
            spec: Some(spec.to_proto()),
            model_hash: hash.as_bytes().to_vec(),
        };
        let engine = JobEngine::create(&creation).unwrap();
        let mut batch = store.batch(1);
        batch.push(Payload::JobCreated(creation));
        store.commit(Some(&record), batch).unwrap();
        let coordinator = store.identity().participant_id().to_string();
        Job::new(
            spec,
            record,
            Arc::new(Vec::new()),
            Arc::new(Vec::new()),
            coordinator,
            engine,
        )
    }

    fn opening(job: &Job, round: u32) -> Payload {
        Payload::RoundOpened(v1::RoundOpened {
            job_id: job.id().into(),
            round,
            base_version: 0,
            base_model_hash: job.model_hash(0),
            deadline_unix_ms: 1,
            ..Default::default()
        })
    }

    #[test]
    fn the_coordinator_commits_nothing_its_round_engine_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut job = created(&store);
        // Round 2 before round 1, a close of a round never opened, a reward nobody earned:
        // each refused with the rule it breaks, and not one entry signed or stored.
        let forged = v1::RoundClosed {
            job_id: job.id().into(),
            round: 1,
            success: true,
            result_version: 1,
            model_hash: vec![9; 32],
            ..Default::default()
        };
        let reward = v1::Reward {
            job_id: job.id().into(),
            round: 1,
            awards: vec![v1::Award {
                participant: job.coordinator.clone(),
                amount: 1_000_000,
                reason: v1::AwardReason::Contribution.into(),
            }],
        };
        for payloads in [
            vec![opening(&job, 2)],
            vec![Payload::RoundClosed(forged)],
            vec![opening(&job, 1), Payload::Reward(reward)],
        ] {
            let mut batch = store.batch(2);
            for p in payloads {
                batch.push(p);
            }
            let err = job.commit(&store, batch, true).unwrap_err();
            assert!(matches!(err, CoordinatorError::Rules { .. }), "{err}");
            assert_eq!(store.ledger().head().len, 1, "{err}");
        }
        // A batch the rules accept is committed, and the engine learns it.
        let mut batch = store.batch(3);
        batch.push(opening(&job, 1));
        job.commit(&store, batch, true).unwrap();
        assert_eq!(store.ledger().head().len, 2);
        assert_eq!(job.engine.summary().last_round, 1);
        let report = conclave_ledger::verify::verify_ledger(store.ledger(), None).unwrap();
        assert_eq!(report.problem, None);
    }

    #[test]
    fn a_close_the_round_engine_refuses_is_recorded_as_failed_and_the_job_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut job = created(&store);
        let mut batch = store.batch(2);
        job.open_next_round(2, &mut batch);
        job.commit(&store, batch, true).unwrap();
        let round = job.open_round().cloned().unwrap();
        // A "successful" close of a round nobody uploaded to: fewer contributors than
        // min_participants, which the rules refuse.
        let stored = StoredModel {
            bytes: Arc::new(Vec::new()),
            hash: blake3::hash(b"a model from nothing"),
            state: Arc::new(Vec::new()),
            state_hash: None,
        };
        let wake = job.close_round(&store, &round, 3, Ok((stored, 0))).unwrap();
        assert!(wake.is_some(), "the next round is open");
        assert_eq!(job.record.rounds[0].status, RoundStatus::Failed);
        assert_eq!(job.record.model_version, 0);
        assert_eq!(job.open_round().map(|r| r.round), Some(2));
        let entries = store.ledger().read(0, 100).unwrap();
        let failure = entries
            .iter()
            .find_map(|e| match e.payload() {
                Payload::RoundClosed(c) => Some(c.failure.clone()),
                _ => None,
            })
            .unwrap();
        assert!(failure.contains("fewer than min_participants"), "{failure}");
        let report = conclave_ledger::verify::verify_ledger(store.ledger(), None).unwrap();
        assert_eq!(report.problem, None);
    }
}
