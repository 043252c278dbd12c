//! `State`: the coordinator's jobs and rounds behind one lock, with narrow methods for each
//! thing a request or the round driver may do. Every method validates its input first and
//! changes nothing when it fails; every change is written to the [`Store`] before the method
//! returns (and so before the client is answered).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_aggregation::fedavg::{self, WeightedUpdate};
use conclave_aggregation::secagg::{
    Approval, HashedBytes, Manifest, ProtocolError, Reveal, RevealedShare,
};
use conclave_aggregation::{JobSpec, ModelLayout};
use conclave_crypto::ParticipantId;
use conclave_ledger::{Batch, Payload};
use conclave_proto::v1::{self, work_item::Item};
use conclave_proto::{NONCE_LEN, Signed};
use prost::Message;
use tokio::sync::{Notify, watch};

use crate::CoordinatorError;
use crate::secagg::{self, Phase, SecaggRound};
use crate::store::{
    EvalRecord, JobRecord, ParticipantRecord, RoundRecord, RoundStatus, Store, UploadPart,
    UploadRecord,
};

/// Milliseconds since the Unix epoch: the coordinator's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Largest sample count a participant may claim for one update or evaluation.
const MAX_SAMPLES: u64 = 1 << 40;
/// Nonces remembered per job before the oldest half is forgotten (replays of forgotten nonces
/// still fail: each state-changing request is also refused as a duplicate).
const MAX_NONCES: usize = 1 << 20;

struct Job {
    spec: JobSpec,
    layout: ModelLayout,
    record: JobRecord,
    /// Flat little-endian f32 parameters of `record.model_version`.
    latest_model: Arc<Vec<u8>>,
    nonces: HashSet<Vec<u8>>,
    changes: watch::Sender<u64>,
    wake: Arc<Notify>,
    /// The secure-aggregation round in progress (in memory only).
    secagg: Option<SecaggRound>,
    /// Open work streams per participant: committee members with none are not asked to answer.
    connected: HashMap<String, usize>,
    /// The coordinator's did:key (shown in the job's info).
    coordinator: String,
}

/// What a participant's work stream has already been sent.
#[derive(Clone, Debug, Default)]
pub struct WorkCursor {
    evaluated: Option<u32>,
    trained: Option<u32>,
    signed: Option<u32>,
    revealed: Option<u32>,
    done: bool,
}

impl WorkCursor {
    /// Whether the job is over for this stream.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// An upload whose signed header has been checked; its payload is still to come.
#[derive(Debug)]
pub struct UploadTicket {
    pub job: String,
    pub round: u32,
    pub did: ParticipantId,
    pub num_samples: u64,
    pub dim: u64,
    pub payload_hash: [u8; 32],
    /// Secure aggregation: the manifest of the masked vector.
    pub manifest: Option<v1::SealedManifest>,
}

impl UploadTicket {
    /// The ledger entry that records this upload as accepted (`manifest_hash` empty for a
    /// plain upload; a masked upload's sample count is 0, checked with its header).
    fn accepted_entry(&self, manifest_hash: Vec<u8>) -> Payload {
        Payload::UpdateAccepted(v1::UpdateAccepted {
            job_id: self.job.clone(),
            round: self.round,
            participant: self.did.to_string(),
            num_samples: self.num_samples,
            payload_hash: self.payload_hash.to_vec(),
            manifest_hash,
        })
    }
}

/// The coordinator's state.
pub struct State {
    store: Store,
    jobs: Mutex<BTreeMap<String, Job>>,
    /// Set when the server shuts down: open work streams end.
    closing: watch::Sender<bool>,
}

fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes little-endian f32s, refusing NaN and infinities.
pub fn decode_f32(bytes: &[u8]) -> Result<Vec<f32>, CoordinatorError> {
    let values: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(CoordinatorError::NonFinite { index }),
        None => Ok(values),
    }
}

/// Decodes little-endian u32 ring elements (masked vectors, partial sums).
pub fn decode_u32(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Checks a signed request's signature and returns the signer. The nonce is checked against
/// the job's memory separately, under the lock.
pub fn authenticate<T: Signed>(req: &T) -> Result<(ParticipantId, Vec<u8>), CoordinatorError> {
    let auth = req
        .auth()
        .ok_or_else(|| CoordinatorError::BadAuth("request is not signed".into()))?;
    let did = ParticipantId::parse(&auth.participant)
        .map_err(|e| CoordinatorError::BadAuth(e.to_string()))?;
    if auth.nonce.len() != NONCE_LEN {
        return Err(CoordinatorError::BadAuth(format!(
            "nonce must be {NONCE_LEN} bytes"
        )));
    }
    did.verify(&req.signing_bytes(), &auth.signature)
        .map_err(|e| CoordinatorError::BadAuth(e.to_string()))?;
    Ok((did, auth.nonce.clone()))
}

impl Job {
    fn id(&self) -> &str {
        &self.record.id
    }

    fn consume_nonce(&mut self, did: &ParticipantId, nonce: &[u8]) -> Result<(), CoordinatorError> {
        let mut key = did.as_str().as_bytes().to_vec();
        key.extend_from_slice(nonce);
        if self.nonces.contains(&key) {
            return Err(CoordinatorError::Replay(did.to_string()));
        }
        if self.nonces.len() >= MAX_NONCES {
            let keep: HashSet<Vec<u8>> = self.nonces.drain().skip(MAX_NONCES / 2).collect();
            self.nonces = keep;
        }
        self.nonces.insert(key);
        Ok(())
    }

    fn is_joined(&self, did: &ParticipantId) -> bool {
        self.record
            .participants
            .iter()
            .any(|p| p.did == did.as_str())
    }

    fn require_joined(&self, did: &ParticipantId) -> Result<(), CoordinatorError> {
        if self.is_joined(did) {
            Ok(())
        } else {
            Err(CoordinatorError::NotJoined {
                job: self.id().into(),
                did: did.to_string(),
            })
        }
    }

    fn open_round(&self) -> Option<&RoundRecord> {
        self.record
            .rounds
            .last()
            .filter(|r| r.status == RoundStatus::Open)
    }

    fn model_hash(&self, version: u32) -> Vec<u8> {
        hex_to_bytes(&self.record.model_hashes[version as usize])
    }

    fn bump(&self) {
        self.changes.send_modify(|v| *v += 1);
        self.wake.notify_one();
    }

    /// Opens the next round for every participant who has joined; in a secure-aggregation
    /// job, draws its committee (seeded by the ledger head: the batch's last entry) and sets
    /// up the aggregator. Records the opening in `batch`.
    fn open_next_round(&mut self, now: u64, batch: &mut Batch<'_>) {
        let round = self.record.rounds.last().map_or(1, |r| r.round + 1);
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
        self.secagg = None;
        if self.spec.secagg().is_some() {
            let previous: Vec<ParticipantId> = self
                .record
                .rounds
                .last()
                .map(|r| {
                    r.committee
                        .iter()
                        .filter_map(|d| ParticipantId::parse(d).ok())
                        .collect()
                })
                .unwrap_or_default();
            let head = batch.head();
            // The seed is recorded even if the draw fails, so the ledger shows why.
            record.draw_seed = hex::encode(conclave_crypto::committee::draw_seed(
                &head,
                &self.record.id,
                round,
            ));
            match secagg::open_round(
                &self.spec,
                &self.record.id,
                round,
                &head,
                &self.record.participants,
                &previous,
                batch.signer(),
            ) {
                Ok(sa) => {
                    record.committee = sa.committee.iter().map(|m| m.to_string()).collect();
                    record.draw_seed = hex::encode(&sa.plan.draw_seed);
                    record.plan = hex::encode(sa.plan.encode_to_vec());
                    self.secagg = Some(sa);
                }
                // The round then fails at its first step and the next one is drawn afresh.
                Err(e) => {
                    tracing::error!(job = %self.record.id, round, error = %e, "cannot open secure-aggregation round")
                }
            }
        }
        batch.push(Payload::RoundOpened(v1::RoundOpened {
            job_id: self.record.id.clone(),
            round,
            base_version: record.base_version,
            base_model_hash: self.model_hash(record.base_version),
            participants: record.expected.clone(),
            committee: record.committee.clone(),
            draw_seed: hex_to_bytes(&record.draw_seed),
            deadline_unix_ms: record.deadline_unix_ms,
        }));
        self.record.rounds.push(record);
    }

    /// The participants' evaluation of a model version so far (weighted means).
    fn evaluation(&self, version: u32) -> Option<v1::Evaluation> {
        let reports = self.record.evaluations.get(&version)?;
        let n: u64 = reports.iter().map(|e| e.num_examples).sum();
        let mean = |f: fn(&EvalRecord) -> f64| {
            reports
                .iter()
                .map(|e| f(e) * e.num_examples as f64)
                .sum::<f64>()
                / n.max(1) as f64
        };
        Some(v1::Evaluation {
            model_version: version,
            loss: mean(|e| e.loss),
            accuracy: mean(|e| e.accuracy),
            num_examples: n,
            reports: reports.len() as u32,
        })
    }

    /// The secure-aggregation state of the open round `round`.
    fn secagg_round(&mut self, round: u32) -> Result<&mut SecaggRound, CoordinatorError> {
        let job = self.record.id.clone();
        let current = self
            .open_round()
            .map_or("none".to_string(), |r| r.round.to_string());
        self.secagg
            .as_mut()
            .filter(|sa| sa.round == round)
            .ok_or(CoordinatorError::RoundNotOpen {
                job,
                round,
                current,
            })
    }

    fn info(&self) -> v1::JobInfo {
        let r = &self.record;
        let state = if r.finished {
            v1::JobState::Finished
        } else if r.rounds.is_empty() {
            v1::JobState::Waiting
        } else {
            v1::JobState::Running
        };
        v1::JobInfo {
            job_id: r.id.clone(),
            spec: Some(self.spec.to_proto()),
            state: state.into(),
            model_version: r.model_version,
            dim: self.layout.dim() as u64,
            participants: r.participants.iter().map(|p| p.did.clone()).collect(),
            rounds: r
                .rounds
                .iter()
                .map(|round| v1::RoundSummary {
                    round: round.round,
                    state: match round.status {
                        RoundStatus::Open => v1::RoundState::Open,
                        RoundStatus::Closed => v1::RoundState::Closed,
                        RoundStatus::Failed => v1::RoundState::Failed,
                    }
                    .into(),
                    base_version: round.base_version,
                    result_version: round.result_version.unwrap_or(0),
                    expected: round.expected.clone(),
                    uploaded: round.uploads.iter().map(|u| u.did.clone()).collect(),
                    total_samples: round
                        .total_samples
                        .unwrap_or_else(|| round.uploads.iter().map(|u| u.num_samples).sum()),
                    deadline_unix_ms: round.deadline_unix_ms,
                    committee: round.committee.clone(),
                    draw_seed: hex_to_bytes(&round.draw_seed),
                })
                .collect(),
            evaluations: r
                .evaluations
                .keys()
                .filter_map(|&version| self.evaluation(version))
                .collect(),
            created_unix_ms: r.created_unix_ms,
            coordinator: self.coordinator.clone(),
        }
    }
}

/// What a secure-aggregation round does next.
enum Step {
    /// Stay open until this time (or until woken by a message).
    Wait(u64),
    /// Close the round: with the new parameters and Σ n_i, or failed.
    Close(Option<(Vec<f32>, Option<u64>)>),
}

impl Job {
    /// One step of the open secure-aggregation round.
    fn secagg_step(
        &mut self,
        round: &RoundRecord,
        complete: bool,
        now: u64,
    ) -> Result<Step, CoordinatorError> {
        let phase_ms = self.spec.round_deadline_secs as u64 * 1000;
        let dim = self.layout.dim();
        let connected = &self.connected;
        let Some(sa) = self.secagg.as_mut().filter(|sa| sa.round == round.round) else {
            tracing::warn!(job = %self.record.id, round = round.round, "no secure-aggregation state (restart?): failing the round");
            return Ok(Step::Close(None));
        };
        let mut changed = false;
        let step = match sa.phase {
            Phase::Collecting => {
                if !complete && now < round.deadline_unix_ms {
                    Step::Wait(round.deadline_unix_ms)
                } else if now < sa.not_before {
                    Step::Wait(sa.not_before)
                } else {
                    let answering: Vec<ParticipantId> = sa
                        .committee
                        .iter()
                        .filter(|m| connected.contains_key(m.as_str()))
                        .cloned()
                        .collect();
                    match sa.aggregator.propose(&answering) {
                        Ok(st) => {
                            tracing::info!(job = %self.record.id, round = round.round, uploads = st.uploads.len(), answering = st.answering.len(), "statement proposed");
                            sa.phase = Phase::Signing {
                                deadline: now + phase_ms,
                            };
                            changed = true;
                            Step::Wait(now + phase_ms)
                        }
                        Err(e) => {
                            tracing::warn!(job = %self.record.id, round = round.round, error = %e, "round fails before unmasking");
                            Step::Close(None)
                        }
                    }
                }
            }
            Phase::Signing { deadline } => {
                if sa.aggregator.approved() {
                    tracing::info!(job = %self.record.id, round = round.round, "statement approved: members reveal");
                    sa.phase = Phase::Revealing {
                        deadline: now + phase_ms,
                    };
                    changed = true;
                    Step::Wait(now + phase_ms)
                } else if now >= deadline {
                    tracing::warn!(job = %self.record.id, round = round.round, "too few committee approvals before the deadline");
                    Step::Close(None)
                } else {
                    Step::Wait(deadline)
                }
            }
            Phase::Revealing { deadline } => {
                if sa.aggregator.complete() {
                    match sa
                        .aggregator
                        .finish()
                        .map_err(CoordinatorError::from)
                        .and_then(|sum| {
                            sa.quant
                                .decode_mean(&sum, dim)
                                .map_err(|e| CoordinatorError::InvalidRequest(e.to_string()))
                        }) {
                        Ok((mean, total)) => {
                            let mut params = decode_f32(&self.latest_model)?;
                            fedavg::add_weighted_mean(
                                &mut params,
                                &[WeightedUpdate {
                                    delta: &mean,
                                    num_samples: 1,
                                }],
                            )?;
                            Step::Close(Some((params, Some(total))))
                        }
                        Err(e) => {
                            tracing::error!(job = %self.record.id, round = round.round, error = %e, "unmasking failed");
                            Step::Close(None)
                        }
                    }
                } else if now >= deadline {
                    tracing::warn!(job = %self.record.id, round = round.round, "an answering member did not reveal: round fails");
                    Step::Close(None)
                } else {
                    Step::Wait(deadline)
                }
            }
        };
        if changed {
            self.bump();
        }
        Ok(step)
    }

    /// Closes the open round with its outcome (new parameters, or failure), opens the next
    /// round or finishes the job, and makes it all durable.
    fn close_round(
        &mut self,
        store: &Store,
        round: &RoundRecord,
        now: u64,
        outcome: Option<(Vec<f32>, Option<u64>)>,
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
        if let Some((params, total)) = outcome {
            let version = record.model_version + 1;
            store.save_model(&record.id, version, &self.layout.to_safetensors(&params)?)?;
            let bytes = f32_bytes(&params);
            let hash = blake3::hash(&bytes);
            record.model_hashes.push(hash.to_hex().to_string());
            record.model_version = version;
            closed.status = RoundStatus::Closed;
            closed.result_version = Some(version);
            closed.total_samples = total;
            new_model = Some(bytes);
            entry.success = true;
            entry.result_version = version;
            entry.model_hash = hash.as_bytes().to_vec();
            let statement = self
                .secagg
                .as_ref()
                .filter(|sa| sa.round == round.round)
                .and_then(|sa| sa.aggregator.statement().cloned());
            entry.contributors = match &statement {
                // Secure: the statement's uploads, whose sample counts stay secret.
                Some(st) => st
                    .uploads
                    .iter()
                    .map(|(d, _)| v1::Contribution {
                        participant: d.to_string(),
                        num_samples: 0,
                    })
                    .collect(),
                None => round
                    .uploads
                    .iter()
                    .map(|u| v1::Contribution {
                        participant: u.did.clone(),
                        num_samples: u.num_samples,
                    })
                    .collect(),
            };
            entry.total_samples =
                total.unwrap_or_else(|| round.uploads.iter().map(|u| u.num_samples).sum::<u64>());
            if let Some(st) = statement {
                completed = st.answering.iter().map(|a| a.to_string()).collect();
                entry.committee_completed = completed.clone();
                entry.statement = Some(st.to_wire());
            }
        } else {
            closed.status = RoundStatus::Failed;
        }
        let contributors: Vec<(String, u64)> = entry
            .contributors
            .iter()
            .map(|c| (c.participant.clone(), c.num_samples))
            .collect();
        batch.push(Payload::RoundClosed(entry));
        let awards =
            conclave_ledger::rewards::round_awards(&self.spec.rewards, &contributors, &completed);
        if !awards.is_empty() {
            batch.push(Payload::Reward(v1::Reward {
                job_id: record.id.clone(),
                round: round.round,
                awards,
            }));
        }
        let before = std::mem::replace(&mut self.record, record);
        let before_model = self.latest_model.clone();
        if round.round >= self.spec.rounds {
            self.record.finished = true;
            self.secagg = None;
        } else {
            if let Some(bytes) = &new_model {
                self.latest_model = Arc::new(bytes.clone());
            }
            self.open_next_round(now, &mut batch);
        }
        if let Err(e) = store.commit(Some(&self.record), batch) {
            self.record = before;
            self.latest_model = before_model;
            return Err(e);
        }
        if let Some(bytes) = new_model {
            self.latest_model = Arc::new(bytes);
        }
        tracing::info!(job = %self.record.id, round = round.round, model_version = self.record.model_version, status = ?self.record.rounds.iter().find(|r| r.round == round.round).map(|r| r.status), "round closed");
        store.drop_round_updates(&self.record.id, round.round)?;
        self.bump();
        Ok(self.open_round().map(|r| r.deadline_unix_ms))
    }
}

fn hex_to_bytes(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap_or_default()
}

impl State {
    /// Opens the data directory and loads every job in it. Call [`State::start_drivers`]
    /// from inside a tokio runtime to resume their rounds.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>, CoordinatorError> {
        let store = Store::open(data_dir)?;
        // A coordinator never builds on a ledger that does not verify.
        let (report, ledger_jobs) = conclave_ledger::verify::verify_ledger_jobs(
            store.ledger(),
            Some(&store.identity().participant_id()),
        )?;
        if let Some(p) = report.problem {
            return Err(CoordinatorError::Storage(format!(
                "the ledger in {} fails verification at entry {}: {} (run `conclave ledger verify`)",
                data_dir.display(),
                p.index,
                p.reason
            )));
        }
        let records = store.load_jobs()?;
        let disagreements = crate::crosscheck::disagreements(&records, &ledger_jobs);
        if !disagreements.is_empty() {
            return Err(CoordinatorError::Storage(format!(
                "the job records in {} disagree with the ledger: {}",
                data_dir.display(),
                disagreements.join("; ")
            )));
        }
        let mut jobs = BTreeMap::new();
        for record in records {
            let wire = hex::decode(&record.spec)
                .ok()
                .and_then(|b| v1::JobSpec::decode(b.as_slice()).ok())
                .ok_or_else(|| {
                    CoordinatorError::Storage(format!(
                        "job {}: stored spec is unreadable",
                        record.id
                    ))
                })?;
            let spec = JobSpec::from_proto(&wire)?;
            let layout = spec.layout();
            let model =
                layout.from_safetensors(&store.load_model(&record.id, record.model_version)?)?;
            let latest_model = Arc::new(f32_bytes(&model));
            if hash_hex(&latest_model) != record.model_hashes[record.model_version as usize] {
                return Err(CoordinatorError::Storage(format!(
                    "job {}: model file does not match its hash",
                    record.id
                )));
            }
            let job = Job {
                spec,
                layout,
                latest_model,
                nonces: HashSet::new(),
                changes: watch::channel(0).0,
                wake: Arc::new(Notify::new()),
                secagg: None,
                connected: HashMap::new(),
                coordinator: store.identity().participant_id().to_string(),
                record,
            };
            let secagg = job
                .open_round()
                .filter(|r| !r.plan.is_empty())
                .map(|r| secagg::resume_round(&job.spec, &job.record.id, r, &store));
            let mut job = job;
            match secagg {
                Some(Ok(sa)) => job.secagg = Some(sa),
                Some(Err(e)) => {
                    tracing::warn!(job = %job.record.id, error = %e, "cannot resume the secure round in progress; it will fail")
                }
                None => {}
            }
            jobs.insert(job.record.id.clone(), job);
        }
        Ok(Arc::new(Self {
            store,
            jobs: Mutex::new(jobs),
            closing: watch::channel(false).0,
        }))
    }

    /// A receiver that turns `true` when the server shuts down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every open work stream (clients reconnect to the next server).
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Job>> {
        // A panic while holding the lock cannot leave a half-applied change on disk (records
        // are written whole), so the in-memory map is still the last durable state.
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_job<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Job, &Store) -> Result<R, CoordinatorError>,
    ) -> Result<R, CoordinatorError> {
        let mut jobs = self.lock();
        let job = jobs
            .get_mut(id)
            .ok_or_else(|| CoordinatorError::UnknownJob(id.chars().take(64).collect()))?;
        f(job, &self.store)
    }

    /// Starts the round driver of every unfinished job.
    pub fn start_drivers(self: &Arc<Self>) {
        let ids: Vec<String> = self
            .lock()
            .iter()
            .filter(|(_, j)| !j.record.finished)
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.spawn_driver(id);
        }
    }

    /// Checks and stores a new job with its initial model (version 0); returns its id.
    pub fn create_job(self: &Arc<Self>, wire: &v1::JobSpec) -> Result<String, CoordinatorError> {
        let spec = JobSpec::from_proto(wire)?;
        let layout = spec.layout();
        let id = format!("j-{}", hex::encode(conclave_crypto::random_bytes::<8>()));
        let model = layout.init(spec.seed);
        let latest_model = Arc::new(f32_bytes(&model));
        self.store
            .save_model(&id, 0, &layout.to_safetensors(&model)?)?;
        let record = JobRecord {
            id: id.clone(),
            spec: hex::encode(spec.to_proto().encode_to_vec()),
            created_unix_ms: now_ms(),
            participants: Vec::new(),
            model_version: 0,
            model_hashes: vec![hash_hex(&latest_model)],
            rounds: Vec::new(),
            evaluations: BTreeMap::new(),
            finished: false,
        };
        // Under the jobs lock: every append happens there, so the ledger has one order.
        let mut jobs = self.lock();
        let mut batch = self.store.batch(record.created_unix_ms);
        batch.push(Payload::JobCreated(v1::JobCreated {
            job_id: id.clone(),
            spec: Some(spec.to_proto()),
            model_hash: blake3::hash(&latest_model).as_bytes().to_vec(),
        }));
        self.store.commit(Some(&record), batch)?;
        let job = Job {
            spec,
            layout,
            record,
            latest_model,
            nonces: HashSet::new(),
            changes: watch::channel(0).0,
            wake: Arc::new(Notify::new()),
            secagg: None,
            connected: HashMap::new(),
            coordinator: self.store.identity().participant_id().to_string(),
        };
        jobs.insert(id.clone(), job);
        drop(jobs);
        self.spawn_driver(id.clone());
        Ok(id)
    }

    /// A job's public state.
    pub fn job_info(&self, id: &str) -> Result<v1::JobInfo, CoordinatorError> {
        self.with_job(id, |job, _| Ok(job.info()))
    }

    /// Every job, oldest first.
    pub fn list_jobs(&self) -> Vec<v1::JobInfo> {
        let jobs = self.lock();
        let mut out: Vec<_> = jobs.values().map(Job::info).collect();
        out.sort_by_key(|j| j.created_unix_ms);
        out
    }

    /// Admits a participant to a job (idempotent for the same keys) and opens the first round
    /// once `min_participants` have joined.
    pub fn join(&self, req: &v1::JoinRequest) -> Result<v1::JobInfo, CoordinatorError> {
        let (did, nonce) = authenticate(req)?;
        let sealing_key: [u8; 32] = req.x25519_public.as_slice().try_into().map_err(|_| {
            CoordinatorError::InvalidRequest(format!(
                "x25519_public must be 32 bytes, got {}",
                req.x25519_public.len()
            ))
        })?;
        self.with_job(&req.job_id, |job, store| {
            if job.record.finished {
                return Err(CoordinatorError::JobFinished(job.id().into()));
            }
            if !job.spec.admission.is_empty() && !job.spec.admission.contains(&did) {
                return Err(CoordinatorError::NotAdmitted {
                    job: job.id().into(),
                    did: did.to_string(),
                });
            }
            let key_hex = hex::encode(sealing_key);
            if let Some(existing) = job
                .record
                .participants
                .iter()
                .find(|p| p.did == did.as_str())
            {
                if existing.sealing_key != key_hex {
                    return Err(CoordinatorError::KeyMismatch {
                        job: job.id().into(),
                        did: did.to_string(),
                    });
                }
                job.consume_nonce(&did, &nonce)?;
                return Ok(job.info());
            }
            if let Some(s) = job.spec.secagg()
                && job.record.participants.len() >= s.quant.max_participants() as usize
            {
                return Err(CoordinatorError::JobFull {
                    job: job.id().into(),
                    max: s.quant.max_participants(),
                });
            }
            job.consume_nonce(&did, &nonce)?;
            let mut record = job.record.clone();
            record.participants.push(ParticipantRecord {
                did: did.to_string(),
                sealing_key: key_hex,
            });
            let now = now_ms();
            let mut batch = store.batch(now);
            batch.push(Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
                job_id: job.id().into(),
                participant: did.to_string(),
                sealing_key: sealing_key.to_vec(),
            }));
            let before = std::mem::replace(&mut job.record, record);
            if job.record.rounds.is_empty()
                && job.record.participants.len() >= job.spec.start_participants as usize
            {
                job.open_next_round(now, &mut batch);
            }
            if let Err(e) = store.commit(Some(&job.record), batch) {
                job.record = before;
                job.secagg = None;
                return Err(e);
            }
            job.bump();
            Ok(job.info())
        })
    }

    /// Authenticates a work-stream request and returns a receiver of the job's change signal.
    pub fn subscribe(
        &self,
        req: &v1::WorkRequest,
    ) -> Result<(ParticipantId, watch::Receiver<u64>), CoordinatorError> {
        let (did, nonce) = authenticate(req)?;
        self.with_job(&req.job_id, |job, _| {
            job.require_joined(&did)?;
            job.consume_nonce(&did, &nonce)?;
            *job.connected.entry(did.to_string()).or_default() += 1;
            Ok((did, job.changes.subscribe()))
        })
    }

    /// Records that one of a participant's work streams ended.
    pub fn disconnect(&self, job_id: &str, did: &ParticipantId) {
        let _ = self.with_job(job_id, |job, _| {
            if let Some(n) = job.connected.get_mut(did.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    job.connected.remove(did.as_str());
                }
            }
            Ok(())
        });
    }

    /// The work items a participant has not been sent yet, in the order to do them.
    pub fn pending_work(
        &self,
        job_id: &str,
        did: &ParticipantId,
        cursor: &mut WorkCursor,
    ) -> Result<Vec<v1::WorkItem>, CoordinatorError> {
        self.with_job(job_id, |job, _| {
            let mut items = Vec::new();
            if cursor.done {
                return Ok(Vec::new());
            }
            let r = &job.record;
            let v = r.model_version;
            let reported = r
                .evaluations
                .get(&v)
                .is_some_and(|e| e.iter().any(|x| x.did == did.as_str()));
            if cursor.evaluated != Some(v) && !reported {
                items.push(Item::Evaluate(v1::EvaluateTask {
                    model_version: v,
                    model_hash: job.model_hash(v),
                }));
                cursor.evaluated = Some(v);
            }
            if let Some(round) = job.open_round() {
                let expected = round.expected.iter().any(|d| d == did.as_str());
                let uploaded = round.uploads.iter().any(|u| u.did == did.as_str());
                let plan = job
                    .secagg
                    .as_ref()
                    .filter(|sa| sa.round == round.round)
                    .map(|sa| sa.plan.clone());
                let secagg_ready = job.spec.secagg().is_none() || plan.is_some();
                if expected && !uploaded && secagg_ready && cursor.trained != Some(round.round) {
                    items.push(Item::Train(v1::TrainTask {
                        round: round.round,
                        model_version: round.base_version,
                        model_hash: job.model_hash(round.base_version),
                        deadline_unix_ms: round.deadline_unix_ms,
                        secagg: plan,
                    }));
                    cursor.trained = Some(round.round);
                }
            }
            if let Some(sa) = &job.secagg
                && let Some(statement) = sa.aggregator.statement()
                && statement.answering.contains(did)
            {
                if cursor.signed != Some(sa.round) {
                    let views = sa.aggregator.views_for(did)?;
                    items.push(Item::Sign(v1::CommitteeSignTask {
                        round: sa.round,
                        statement: Some(statement.to_wire()),
                        views: views.iter().map(|v| v.to_wire()).collect(),
                    }));
                    cursor.signed = Some(sa.round);
                }
                if matches!(sa.phase, Phase::Revealing { .. }) && cursor.revealed != Some(sa.round)
                {
                    items.push(Item::Reveal(v1::CommitteeRevealTask {
                        round: sa.round,
                        approvals: sa
                            .aggregator
                            .approvals()
                            .iter()
                            .map(|a| a.to_wire())
                            .collect(),
                    }));
                    cursor.revealed = Some(sa.round);
                }
            }
            if r.finished {
                items.push(Item::Done(v1::JobDone {
                    state: v1::JobState::Finished.into(),
                    final_model_version: v,
                }));
                cursor.done = true;
            }
            Ok(items
                .into_iter()
                .map(|item| v1::WorkItem { item: Some(item) })
                .collect())
        })
    }

    /// A model version's flat parameters (little-endian f32) and their BLAKE3 hash.
    pub fn model(
        &self,
        job_id: &str,
        version: u32,
    ) -> Result<(Arc<Vec<u8>>, Vec<u8>), CoordinatorError> {
        let (latest, hash, layout) = self.with_job(job_id, |job, _| {
            let latest = job.record.model_version;
            if version > latest {
                return Err(CoordinatorError::UnknownModelVersion {
                    job: job.id().into(),
                    version,
                    latest,
                });
            }
            let cached = (version == latest).then(|| job.latest_model.clone());
            Ok((cached, job.model_hash(version), job.layout.clone()))
        })?;
        if let Some(bytes) = latest {
            return Ok((bytes, hash));
        }
        let params = layout.from_safetensors(&self.store.load_model(job_id, version)?)?;
        Ok((Arc::new(f32_bytes(&params)), hash))
    }

    /// Checks a signed upload header before any payload is read.
    pub fn check_upload(
        &self,
        header: &v1::UploadHeader,
    ) -> Result<UploadTicket, CoordinatorError> {
        let (did, nonce) = authenticate(header)?;
        let payload_hash: [u8; 32] = header.payload_hash.as_slice().try_into().map_err(|_| {
            CoordinatorError::InvalidRequest("payload_hash must be 32 bytes".into())
        })?;
        self.with_job(&header.job_id, |job, _| {
            job.require_joined(&did)?;
            check_round_upload(job, header.round, &did)?;
            let secagg = job.spec.secagg().is_some();
            if secagg {
                // The sample count travels inside the masked vector: weights stay private.
                if header.num_samples != 0 || header.manifest.is_none() {
                    return Err(CoordinatorError::InvalidRequest(
                        "a secure-aggregation upload carries a manifest and no clear sample count"
                            .into(),
                    ));
                }
            } else if header.manifest.is_some() {
                return Err(CoordinatorError::InvalidRequest(
                    "this job takes plain updates, not a manifest".into(),
                ));
            } else if header.num_samples == 0 || header.num_samples > MAX_SAMPLES {
                return Err(CoordinatorError::InvalidRequest(format!(
                    "num_samples must be between 1 and {MAX_SAMPLES}"
                )));
            }
            let dim = job.layout.dim() as u64 + secagg as u64;
            if header.dim != dim {
                return Err(CoordinatorError::WrongLength {
                    expected: dim,
                    got: header.dim,
                });
            }
            job.consume_nonce(&did, &nonce)?;
            Ok(UploadTicket {
                job: job.id().into(),
                round: header.round,
                did,
                num_samples: header.num_samples,
                dim,
                payload_hash,
                manifest: header.manifest.clone(),
            })
        })
    }

    /// Stores a complete, checked upload. Durable before it returns.
    pub fn accept_upload(
        &self,
        ticket: &UploadTicket,
        payload: &[u8],
    ) -> Result<(), CoordinatorError> {
        if payload.len() as u64 != ticket.dim * 4 {
            return Err(CoordinatorError::WrongLength {
                expected: ticket.dim,
                got: payload.len() as u64 / 4,
            });
        }
        if let Some(manifest) = &ticket.manifest {
            return self.accept_masked(ticket, manifest, payload);
        }
        if blake3::hash(payload).as_bytes() != &ticket.payload_hash {
            return Err(CoordinatorError::HashMismatch);
        }
        decode_f32(payload)?;
        let staged = self.store.stage_update(
            &ticket.job,
            ticket.round,
            ticket.did.as_str(),
            UploadPart::Payload,
            payload,
        )?;
        let result = self.with_job(&ticket.job, |job, store| {
            check_round_upload(job, ticket.round, &ticket.did)?;
            let mut record = job.record.clone();
            let round = record
                .rounds
                .last_mut()
                .expect("check_round_upload found an open round");
            round.uploads.push(UploadRecord {
                did: ticket.did.to_string(),
                num_samples: ticket.num_samples,
                payload_hash: hex::encode(ticket.payload_hash),
            });
            store.commit_update(
                &staged,
                &ticket.job,
                ticket.round,
                ticket.did.as_str(),
                UploadPart::Payload,
            )?;
            let mut batch = store.batch(now_ms());
            batch.push(ticket.accepted_entry(Vec::new()));
            store.commit(Some(&record), batch)?;
            job.record = record;
            job.bump();
            Ok(())
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&staged);
        }
        result
    }

    /// Stores a masked upload durably (vector and manifest files, then the job record) and
    /// in the round's aggregator.
    fn accept_masked(
        &self,
        ticket: &UploadTicket,
        wire_manifest: &v1::SealedManifest,
        payload: &[u8],
    ) -> Result<(), CoordinatorError> {
        // Decoded and hashed once, outside the lock. The header's payload hash of a masked
        // vector is its manifest's vector hash.
        let masked = HashedBytes::new(payload);
        if masked.hash() != &ticket.payload_hash {
            return Err(CoordinatorError::HashMismatch);
        }
        let manifest =
            Manifest::from_wire(&ticket.job, ticket.round, ticket.did.clone(), wire_manifest)?;
        if *masked.hash() != manifest.vector_hash {
            return Err(CoordinatorError::Protocol(ProtocolError::HashMismatch));
        }
        let did = ticket.did.as_str();
        let staged_payload = self.store.stage_update(
            &ticket.job,
            ticket.round,
            did,
            UploadPart::Payload,
            payload,
        )?;
        let staged_manifest = self.store.stage_update(
            &ticket.job,
            ticket.round,
            did,
            UploadPart::Manifest,
            &wire_manifest.encode_to_vec(),
        );
        let staged_manifest = match staged_manifest {
            Ok(path) => path,
            Err(e) => {
                let _ = std::fs::remove_file(&staged_payload);
                return Err(e);
            }
        };
        let result = self.with_job(&ticket.job, |job, store| {
            check_round_upload(job, ticket.round, &ticket.did)?;
            let sa = job.secagg_round(ticket.round)?;
            if sa.phase != Phase::Collecting {
                return Err(CoordinatorError::RoundNotOpen {
                    job: ticket.job.clone(),
                    round: ticket.round,
                    current: "closing".into(),
                });
            }
            manifest.verify(sa.aggregator.config())?;
            let mut record = job.record.clone();
            record
                .rounds
                .last_mut()
                .expect("open round")
                .uploads
                .push(UploadRecord {
                    did: ticket.did.to_string(),
                    num_samples: 0,
                    payload_hash: hex::encode(ticket.payload_hash),
                });
            store.commit_updates(
                &[
                    (&staged_payload, UploadPart::Payload),
                    (&staged_manifest, UploadPart::Manifest),
                ],
                &ticket.job,
                ticket.round,
                did,
            )?;
            let mut batch = store.batch(now_ms());
            batch.push(ticket.accepted_entry(manifest.hash().to_vec()));
            store.commit(Some(&record), batch)?;
            job.record = record;
            // Checked above; this cannot fail but for a bug, and the upload is on disk either way.
            job.secagg_round(ticket.round)?
                .aggregator
                .accept(masked, manifest)?;
            job.bump();
            Ok(())
        });
        if result.is_err() {
            let _ = std::fs::remove_file(&staged_payload);
            let _ = std::fs::remove_file(&staged_manifest);
        }
        result
    }

    /// Records a committee member's approval of the round's statement.
    pub fn submit_approval(&self, req: &v1::ApprovalRequest) -> Result<(), CoordinatorError> {
        let (did, nonce) = authenticate(req)?;
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
                job.consume_nonce(&did, &nonce)?;
                return Ok(());
            }
            if sa.attested.contains(did.as_str()) {
                // Recorded before a restart (a member re-sends its approval of the same
                // statement): it counts again, the ledger keeps its one attestation.
                job.consume_nonce(&did, &nonce)?;
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
            job.consume_nonce(&did, &nonce)?;
            store.commit(None, batch)?;
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
        let (did, nonce) = authenticate(header)?;
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
                .is_some_and(|s| s.answering.contains(&did));
            if !answering {
                return Err(CoordinatorError::Protocol(ProtocolError::NotInStatement));
            }
            job.consume_nonce(&did, &nonce)?;
            Ok((did, len))
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

    /// Records a participant's evaluation of a model version.
    pub fn report_metrics(&self, req: &v1::MetricsReport) -> Result<(), CoordinatorError> {
        let (did, nonce) = authenticate(req)?;
        let ok = req.loss.is_finite() && req.loss >= 0.0 && (0.0..=1.0).contains(&req.accuracy);
        if !ok {
            return Err(CoordinatorError::InvalidRequest(
                "loss must be finite and >= 0, accuracy in [0, 1]".into(),
            ));
        }
        if req.num_examples == 0 || req.num_examples > MAX_SAMPLES {
            return Err(CoordinatorError::InvalidRequest(format!(
                "num_examples must be between 1 and {MAX_SAMPLES}"
            )));
        }
        self.with_job(&req.job_id, |job, store| {
            job.require_joined(&did)?;
            let latest = job.record.model_version;
            if req.model_version > latest {
                return Err(CoordinatorError::UnknownModelVersion {
                    job: job.id().into(),
                    version: req.model_version,
                    latest,
                });
            }
            let reports = job.record.evaluations.get(&req.model_version);
            if reports.is_some_and(|r| r.iter().any(|e| e.did == did.as_str())) {
                return Err(CoordinatorError::DuplicateReport {
                    did: did.to_string(),
                    version: req.model_version,
                });
            }
            job.consume_nonce(&did, &nonce)?;
            let mut record = job.record.clone();
            record
                .evaluations
                .entry(req.model_version)
                .or_default()
                .push(EvalRecord {
                    did: did.to_string(),
                    loss: req.loss,
                    accuracy: req.accuracy,
                    num_examples: req.num_examples,
                });
            store.commit(Some(&record), store.batch(now_ms()))?;
            job.record = record;
            job.bump();
            Ok(())
        })
    }

    /// Records in the ledger that the signer exported a model version it downloaded and
    /// checked; returns the entry's index.
    pub fn record_export(&self, req: &v1::RecordExportRequest) -> Result<u64, CoordinatorError> {
        let (did, nonce) = authenticate(req)?;
        if req.format.is_empty()
            || req.format.len() > 32
            || !req.format.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(CoordinatorError::InvalidRequest(
                "format must be 1-32 ASCII letters or digits".into(),
            ));
        }
        self.with_job(&req.job_id, |job, store| {
            let latest = job.record.model_version;
            if req.model_version > latest {
                return Err(CoordinatorError::UnknownModelVersion {
                    job: job.id().into(),
                    version: req.model_version,
                    latest,
                });
            }
            if job.model_hash(req.model_version) != req.model_hash {
                return Err(CoordinatorError::HashMismatch);
            }
            job.consume_nonce(&did, &nonce)?;
            let mut batch = store.batch(now_ms());
            batch.push(Payload::ModelExported(v1::ModelExported {
                job_id: req.job_id.clone(),
                model_version: req.model_version,
                model_hash: req.model_hash.clone(),
                format: req.format.clone(),
                exported_by: did.to_string(),
            }));
            store.commit(None, batch)?;
            Ok(store.ledger().head().len - 1)
        })
    }

    /// The ledger (for the `Ledger` service).
    pub fn ledger(&self) -> &conclave_ledger::Ledger {
        self.store.ledger()
    }

    /// Moves the open round on: a plain round closes when every expected participant uploaded
    /// or its deadline passed, aggregated (or failed, with fewer than `min_participants`
    /// uploads); a secure-aggregation round goes through its phases (collect, statement,
    /// reveal). A closed round opens the next or finishes the job. Returns the deadline to
    /// wake up at, if a round remains open.
    pub fn advance(&self, job_id: &str, now: u64) -> Result<Option<u64>, CoordinatorError> {
        self.with_job(job_id, |job, store| {
            let Some(round) = job.open_round().cloned() else {
                return Ok(None);
            };
            let complete = round.uploads.len() == round.expected.len();
            let outcome = if job.spec.secagg().is_some() {
                match job.secagg_step(&round, complete, now)? {
                    Step::Wait(deadline) => return Ok(Some(deadline)),
                    Step::Close(outcome) => outcome,
                }
            } else {
                if !complete && now < round.deadline_unix_ms {
                    return Ok(Some(round.deadline_unix_ms));
                }
                if round.uploads.len() >= job.spec.min_participants as usize
                    && !round.uploads.is_empty()
                {
                    let updates = round
                        .uploads
                        .iter()
                        .map(|u| {
                            Ok((
                                decode_f32(&store.load_update(
                                    job.id(),
                                    round.round,
                                    &u.did,
                                    UploadPart::Payload,
                                )?)?,
                                u.num_samples,
                            ))
                        })
                        .collect::<Result<Vec<_>, CoordinatorError>>()?;
                    let weighted: Vec<_> = updates
                        .iter()
                        .map(|(d, n)| WeightedUpdate {
                            delta: d,
                            num_samples: *n,
                        })
                        .collect();
                    let mut params = decode_f32(&job.latest_model)?;
                    fedavg::add_weighted_mean(&mut params, &weighted)?;
                    Some((params, None))
                } else {
                    None
                }
            };
            job.close_round(store, &round, now, outcome)
        })
    }

    fn spawn_driver(self: &Arc<Self>, job_id: String) {
        let Ok(wake) = self.with_job(&job_id, |job, _| Ok(job.wake.clone())) else {
            return;
        };
        let state = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let s = Arc::clone(&state);
                let id = job_id.clone();
                let next = tokio::task::spawn_blocking(move || s.advance(&id, now_ms())).await;
                match next {
                    Ok(Ok(Some(deadline))) => {
                        let wait = Duration::from_millis(deadline.saturating_sub(now_ms()));
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = wake.notified() => {}
                        }
                    }
                    Ok(Ok(None)) => {
                        if state
                            .with_job(&job_id, |job, _| Ok(job.record.finished))
                            .unwrap_or(true)
                        {
                            break;
                        }
                        wake.notified().await;
                    }
                    Ok(Err(e)) => {
                        tracing::error!(job = %job_id, error = %e, "round driver failed; retrying in 1 s");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                    Err(e) => {
                        tracing::error!(job = %job_id, error = %e, "round driver panicked");
                        break;
                    }
                }
            }
        });
    }
}

fn check_round_upload(job: &Job, round: u32, did: &ParticipantId) -> Result<(), CoordinatorError> {
    let Some(open) = job.open_round().filter(|r| r.round == round) else {
        let current = job
            .open_round()
            .map_or("none".to_string(), |r| r.round.to_string());
        return Err(CoordinatorError::RoundNotOpen {
            job: job.id().into(),
            round,
            current,
        });
    };
    if !open.expected.iter().any(|d| d == did.as_str()) {
        return Err(CoordinatorError::NotInRound {
            did: did.to_string(),
            round,
        });
    }
    if open.uploads.iter().any(|u| u.did == did.as_str()) {
        return Err(CoordinatorError::DuplicateUpload {
            did: did.to_string(),
            round,
        });
    }
    Ok(())
}
