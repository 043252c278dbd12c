//! `State`: the coordinator's jobs behind one lock, with narrow methods for each thing a
//! request or the round driver may do. Every method validates its input first and changes
//! nothing when it fails; every change is written to the [`Store`] before the method returns
//! (and so before the client is answered). The committee's requests are in `committee`, the
//! draw's in `draw`, each job's round logic in `job`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use conclave_aggregation::JobSpec;
use conclave_aggregation::engine::{JobEngine, JobSummary};
use conclave_crypto::{ParticipantId, PublicIdentity};
use conclave_ledger::Payload;
use conclave_ledger::signed::{admission_digest, contribution_digest, export_digest, signed_by};
use conclave_proto::v1;
use conclave_proto::{MAX_SPEC_BYTES, Signed};
use prost::Message;
use tokio::sync::watch;

use crate::CoordinatorError;
use crate::access::ServerPolicy;
use crate::auth::{self, Signer};
use crate::job::{Job, Stepped, StoredModel, f32_bytes, server_step};
use crate::limits::{Gate, Slots};
use crate::mode::{Closing, Mode, Step, UploadKind};
use crate::store::{EvalRecord, JobRecord, ParticipantRecord, RoundRecord, Store, UploadRecord};
use crate::telemetry;

/// Milliseconds since the Unix epoch: the coordinator's clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

use conclave_aggregation::job::MAX_SAMPLES;

/// An upload whose signed header has been checked; its payload is still to come.
#[derive(Debug)]
pub struct UploadTicket {
    pub job: String,
    pub round: u32,
    pub did: ParticipantId,
    pub num_samples: u64,
    pub dim: u64,
    pub payload_hash: [u8; 32],
    /// What the upload carries beside its vector, by the job's privacy mode.
    pub kind: UploadKind,
    /// The participant's signature over the contribution (checked with the header).
    pub signature: Vec<u8>,
}

impl UploadTicket {
    /// The ledger entry that records this upload as accepted (a masked upload's sample count
    /// is 0, checked with its header).
    fn accepted_entry(&self) -> Payload {
        Payload::UpdateAccepted(v1::UpdateAccepted {
            job_id: self.job.clone(),
            round: self.round,
            participant: self.did.to_string(),
            num_samples: self.num_samples,
            payload_hash: self.payload_hash.to_vec(),
            manifest_hash: self.kind.manifest_hash().to_vec(),
            signature: self.signature.clone(),
        })
    }

    /// Whether this upload may be recorded now: [`check_round_upload`], and its ledger entry as
    /// the job's round engine judges it (before any file of it is moved into place, so a
    /// refusal leaves nothing behind).
    pub(crate) fn check(&self, job: &Job) -> Result<(), CoordinatorError> {
        check_round_upload(job, self.round, &self.did)?;
        job.engine
            .check(&self.accepted_entry(), true)
            .map(drop)
            .map_err(|e| CoordinatorError::rules(&self.job, e))
    }

    /// Records this upload in the job's open round and in the ledger, in one commit that
    /// writes only the upload (see `persist`); if it fails, the record is as it was.
    pub(crate) fn record(&self, job: &mut Job, store: &Store) -> Result<(), CoordinatorError> {
        let mut batch = store.batch(now_ms());
        batch.push(self.accepted_entry());
        fn open(job: &mut Job) -> &mut Vec<UploadRecord> {
            &mut job
                .record
                .rounds
                .last_mut()
                .expect("check_round_upload found an open round")
                .uploads
        }
        open(job).push(UploadRecord {
            did: self.did.to_string(),
            num_samples: self.num_samples,
            payload_hash: hex::encode(self.payload_hash),
        });
        let mut job = Undo::new(job, |job| {
            open(job).pop();
        });
        job.commit(store, batch, true)?;
        job.done();
        Ok(())
    }
}

/// The coordinator's state.
pub struct State {
    store: Store,
    /// Every job, each behind its own lock: the map's lock is held only to find or add a job,
    /// never while a job is worked on, so one job's work never waits for another's.
    jobs: Mutex<BTreeMap<String, Arc<Mutex<Job>>>>,
    /// Set when the server shuts down: open work streams end.
    closing: watch::Sender<bool>,
    /// When this coordinator started (unix ms): requests signed before are refused.
    started: u64,
    /// Who may launch and read, and the operator's limits.
    pub(crate) policy: ServerPolicy,
    /// Nonces of signed requests that belong to no job's memory (launches and reads).
    pub(crate) server_nonces: Mutex<auth::Nonces>,
    /// Places of open upload, reveal, download and ledger streams.
    pub(crate) slots: Arc<Slots>,
    /// The server-wide shares of downloads and of ledger streams.
    pub(crate) download_gate: Gate,
    pub(crate) ledger_gate: Gate,
    /// Room for update data in memory, over all uploads and reveals.
    pub(crate) upload_buffer: crate::limits::UploadBuffer,
    /// Launches whose model is being built (each holds a place among the jobs).
    launching: crate::access::Launching,
    /// When this state started serving (unix ms): the dropout grace of a participant that has
    /// had no work stream since is counted from then.
    serving_since: std::sync::atomic::AtomicU64,
    /// The jobs' round drivers: they end when the server closes, and `serve` waits for them.
    drivers: Mutex<tokio::task::JoinSet<()>>,
    /// Who some job names or admitted, for reader checks that take no job's lock.
    pub(crate) known: std::sync::RwLock<crate::access::KnownIds>,
}

fn hash_hex(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

/// Decodes little-endian u32 ring elements (masked vectors, partial sums).
pub fn decode_u32(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

impl State {
    /// Opens the data directory and loads every job in it, to serve under `policy`. Call
    /// [`State::start_drivers`] from inside a tokio runtime to resume their rounds.
    pub fn open(data_dir: &Path, policy: ServerPolicy) -> Result<Arc<Self>, CoordinatorError> {
        let store = Store::open(data_dir)?;
        // A coordinator never builds on a ledger that does not verify.
        let (report, mut engines) = conclave_ledger::verify::verify_ledger_engines(
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
        let ledger_jobs: BTreeMap<String, JobSummary> = engines
            .iter()
            .map(|(id, engine)| (id.clone(), engine.summary()))
            .collect();
        let disagreements = crate::crosscheck::disagreements(&records, &ledger_jobs);
        if !disagreements.is_empty() {
            return Err(CoordinatorError::Storage(format!(
                "the job records in {} disagree with the ledger: {}",
                data_dir.display(),
                disagreements.join("; ")
            )));
        }
        let started = now_ms();
        let mut jobs = BTreeMap::new();
        let mut known = crate::access::KnownIds::default();
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
            let strategy_state =
                Arc::new(load_strategy_state(&store, &spec, layout.dim(), &record)?);
            let coordinator = store.identity().participant_id().to_string();
            // Present: the records agree with the ledger's jobs.
            let engine = engines.remove(&record.id).expect("crosschecked");
            let mut job = Job::new(
                spec,
                record,
                latest_model,
                strategy_state,
                coordinator,
                engine,
            );
            let open = job.open_round().cloned();
            if let Some(round) = open {
                let summary = ledger_jobs
                    .get(&job.record.id)
                    .and_then(|s| s.open_round.as_ref());
                let resumed = job.mode.rules_mut().resume_round(
                    &job.spec,
                    &job.record.id,
                    &round,
                    &store,
                    summary,
                );
                match resumed {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(job = %job.record.id, error = %e, "cannot resume the round in progress; it will fail")
                    }
                }
            }
            job.resume_draw(started);
            known.name(&job.spec.admission);
            for p in &job.record.participants {
                if let Ok(did) = ParticipantId::parse(&p.did) {
                    known.join(did);
                }
            }
            jobs.insert(job.record.id.clone(), Arc::new(Mutex::new(job)));
        }
        let download_gate = Gate::new(policy.streams.downloads, "--max-downloads");
        let ledger_gate = Gate::new(policy.streams.ledger_streams, "--max-ledger-streams");
        let upload_buffer = crate::limits::UploadBuffer::new(policy.streams.upload_buffer);
        Ok(Arc::new(Self {
            store,
            jobs: Mutex::new(jobs),
            closing: watch::channel(false).0,
            started,
            policy,
            server_nonces: Mutex::new(auth::Nonces::default()),
            slots: Arc::new(Slots::default()),
            download_gate,
            ledger_gate,
            upload_buffer,
            launching: Default::default(),
            drivers: Mutex::new(tokio::task::JoinSet::new()),
            serving_since: std::sync::atomic::AtomicU64::new(started),
            known: std::sync::RwLock::new(known),
        }))
    }

    /// A receiver that turns `true` when the server shuts down.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// Ends every open work stream (clients reconnect to the next server) and tells the round
    /// drivers to stop.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Stops the round drivers and waits until each has finished the step it was taking
    /// (so nothing of this state writes to its data directory afterwards).
    pub async fn stop_drivers(&self) {
        self.closing.send_replace(true);
        let mut drivers = std::mem::take(
            &mut *self
                .drivers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        );
        while let Some(done) = drivers.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a round driver panicked");
            }
        }
    }

    /// Round drivers started and not yet waited for.
    pub fn drivers_running(&self) -> usize {
        self.drivers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }

    fn directory(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Mutex<Job>>>> {
        self.jobs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on one job under that job's lock (only). The lock is held through `f`'s
    /// ledger commit, never across jobs.
    pub(crate) fn with_job<R>(
        &self,
        id: &str,
        f: impl FnOnce(&mut Job, &Store) -> Result<R, CoordinatorError>,
    ) -> Result<R, CoordinatorError> {
        let cell = self
            .directory()
            .get(id)
            .cloned()
            .ok_or_else(|| CoordinatorError::UnknownJob(id.chars().take(64).collect()))?;
        let mut job = lock_job(&cell);
        job.settle();
        let result = f(&mut job, &self.store);
        job.settle();
        result
    }

    /// Checks a signed request's signature and signing time; the nonce is consumed under the
    /// lock, once the request is otherwise accepted.
    pub(crate) fn authenticate<T: Signed>(&self, req: &T) -> Result<Signer, CoordinatorError> {
        auth::authenticate(req, now_ms(), self.started)
    }

    /// Starts the round driver of every unfinished job.
    pub fn start_drivers(self: &Arc<Self>) {
        // Participants can only come back from now on: their grace period starts here.
        self.serving_since
            .store(now_ms(), std::sync::atomic::Ordering::SeqCst);
        let ids: Vec<String> = self.with_jobs(|jobs| {
            jobs.iter()
                .filter(|j| !j.record.finished)
                .map(|j| j.id().to_string())
                .collect()
        });
        for id in ids {
            self.spawn_driver(id);
        }
    }

    /// Checks and stores a new job with its initial model (version 0); returns its id.
    pub fn create_job(
        self: &Arc<Self>,
        req: &v1::CreateJobRequest,
    ) -> Result<String, CoordinatorError> {
        let signer = self.authenticate(req)?;
        // Who, before anything of the spec is looked at.
        self.policy.check_launcher(&signer)?;
        let spec_bytes = req.spec.as_ref().map_or(0, Message::encoded_len);
        if spec_bytes > MAX_SPEC_BYTES {
            return Err(CoordinatorError::InvalidRequest(format!(
                "the job spec is {spec_bytes} bytes encoded, more than the {MAX_SPEC_BYTES} a \
                 coordinator accepts"
            )));
        }
        let spec = JobSpec::from_proto(req.spec.as_ref().unwrap_or(&v1::JobSpec::default()))?;
        self.policy.check_model(&spec)?;
        Mode::check_spec(&spec)?;
        if spec.start_participants as usize > self.policy.max_participants_per_job {
            return Err(CoordinatorError::InvalidRequest(format!(
                "start_participants is {}, more than the {} participants this coordinator lets \
                 a job have (conclave serve --max-participants-per-job)",
                spec.start_participants, self.policy.max_participants_per_job
            )));
        }
        // A place among the jobs is reserved before the model is built, so concurrent
        // launches cannot build more models than there are places.
        let place = {
            let jobs = self.directory();
            self.launching.reserve(jobs.len(), self.policy.max_jobs)?
        };
        self.consume_server_nonce(&signer)?;
        let layout = spec.layout();
        let id = format!("j-{}", hex::encode(conclave_crypto::random_bytes::<8>()));
        let model = layout.init(spec.seed);
        let latest_model = Arc::new(f32_bytes(&model));
        drop(model);
        self.store
            .save_model_bytes(&id, 0, &layout, &latest_model)?;
        let record = JobRecord {
            id: id.clone(),
            spec: hex::encode(spec.to_proto().encode_to_vec()),
            created_unix_ms: now_ms(),
            participants: Vec::new(),
            model_version: 0,
            model_hashes: vec![hash_hex(&latest_model)],
            state_hash: None,
            rounds: Vec::new(),
            evaluations: BTreeMap::new(),
            finished: false,
            draw: Default::default(),
            exports: Vec::new(),
        };
        let created = v1::JobCreated {
            job_id: id.clone(),
            spec: Some(spec.to_proto()),
            model_hash: blake3::hash(&latest_model).as_bytes().to_vec(),
        };
        // The job's rules start from its creation, as a replay of the ledger starts them.
        let engine = JobEngine::create(&created).map_err(|e| CoordinatorError::rules(&id, e))?;
        let mut batch = self.store.batch(record.created_unix_ms);
        batch.push(Payload::JobCreated(created));
        // The ledger orders the commit among everyone's; no job's lock is needed for it.
        self.store.commit(Some(&record), batch)?;
        let coordinator = self.store.identity().participant_id().to_string();
        self.learn_ids(|ids| ids.name(&spec.admission));
        let strategy_state = Arc::new(spec.strategy.rules().initial_state(layout.dim()));
        let job = Job::new(
            spec,
            record,
            latest_model,
            strategy_state,
            coordinator,
            engine,
        );
        self.directory()
            .insert(id.clone(), Arc::new(Mutex::new(job)));
        // The job now holds its place itself.
        drop(place);
        self.spawn_driver(id.clone());
        Ok(id)
    }

    /// Downloads holding a place and waiting for one, now (for tests and operators).
    pub fn download_load(&self) -> (usize, usize) {
        self.download_gate.load()
    }

    /// Bytes of update data held in memory now, and uploads waiting for room (for tests and
    /// operators).
    pub fn upload_buffer_load(&self) -> (u64, usize) {
        self.upload_buffer.load()
    }

    /// Upload streams `did` has open in `job` now (for tests and operators).
    pub fn open_uploads(&self, job: &str, did: &ParticipantId) -> usize {
        self.slots
            .count(&crate::limits::participant_key("upload", job, did))
    }

    /// Runs `f` over every job (in id order) at one moment: each job's lock is taken, in id
    /// order (so two such calls cannot deadlock; [`State::with_job`] holds one lock only),
    /// and held through `f`. A job's lock is held only for brief work (its ledger commit
    /// included), never while a round is averaged or unmasked or a model is stored.
    pub(crate) fn with_jobs<R>(&self, f: impl FnOnce(&[&Job]) -> R) -> R {
        let cells: Vec<Arc<Mutex<Job>>> = self.directory().values().cloned().collect();
        let guards: Vec<MutexGuard<'_, Job>> = cells.iter().map(|c| lock_job(c)).collect();
        let jobs: Vec<&Job> = guards.iter().map(|g| &**g).collect();
        f(&jobs)
    }

    /// Admits a participant to a job (idempotent for the same keys) and starts the job once
    /// `start_participants` have joined. The sealing key must not be a low-order point, and
    /// the participant signs what its admission records (in a secure job, with the head of its
    /// draw chain).
    pub fn join(&self, req: &v1::JoinRequest) -> Result<v1::JobInfo, CoordinatorError> {
        let signer = self.authenticate(req)?;
        let did = signer.did.clone();
        let sealing_key: [u8; 32] = req.x25519_public.as_slice().try_into().map_err(|_| {
            CoordinatorError::InvalidRequest(format!(
                "x25519_public must be 32 bytes, got {}",
                req.x25519_public.len()
            ))
        })?;
        PublicIdentity::check_sealing_key(&sealing_key)
            .map_err(|e| CoordinatorError::InvalidRequest(e.to_string()))?;
        let digest = admission_digest(&req.job_id, &did, &sealing_key, &req.draw_commitment);
        if !signed_by(&did, &digest, &req.admission_signature) {
            return Err(CoordinatorError::BadAuth(
                "the admission signature does not verify".into(),
            ));
        }
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
            job.mode.rules().check_join(&req.draw_commitment)?;
            let key_hex = hex::encode(sealing_key);
            let commitment_hex = hex::encode(&req.draw_commitment);
            if let Some(existing) = job
                .index
                .participant(did.as_str())
                .map(|i| &job.record.participants[i])
            {
                if existing.sealing_key != key_hex || existing.draw_commitment != commitment_hex {
                    return Err(CoordinatorError::KeyMismatch {
                        job: job.id().into(),
                        did: did.to_string(),
                    });
                }
                job.nonces.consume(&signer, now_ms())?;
                return Ok(job.info());
            }
            job.mode
                .rules()
                .check_room(job.id(), job.record.participants.len())?;
            let server_max = self.policy.max_participants_per_job;
            if job.record.participants.len() >= server_max {
                return Err(CoordinatorError::LimitReached(format!(
                    "job {} has {server_max} participants, the most this coordinator lets a job \
                     have (conclave serve --max-participants-per-job)",
                    job.id()
                )));
            }
            job.nonces.consume(&signer, now_ms())?;
            // What the join and a start it makes can change, to put back if the commit fails.
            let before = (job.record.participants.len(), job.record.rounds.len());
            job.record.participants.push(ParticipantRecord {
                did: did.to_string(),
                sealing_key: key_hex,
                draw_commitment: commitment_hex,
            });
            let now = now_ms();
            let mut batch = store.batch(now);
            batch.push(Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
                job_id: job.id().into(),
                participant: did.to_string(),
                sealing_key: sealing_key.to_vec(),
                draw_commitment: req.draw_commitment.clone(),
                signature: req.admission_signature.clone(),
            }));
            let before_opened = job.opened_at;
            let admitted = batch.len();
            job.start_if_ready(now, &mut batch);
            // Whether this join started the job (its first round or its draw): only then did
            // it set up round or draw state, which had none before.
            let started = batch.len() > admitted;
            if let Err(e) = job.commit(store, batch, true) {
                // The job as it was: a round or draw already in progress is left alone.
                let (participants, rounds) = before;
                job.record.participants.truncate(participants);
                job.record.rounds.truncate(rounds);
                job.opened_at = before_opened;
                if started {
                    // A start opens a draw attempt only where none was open.
                    job.record.draw.open = None;
                    job.mode.rules_mut().forget_round();
                    job.gathering = None;
                }
                return Err(e);
            }
            self.learn_ids(|ids| ids.join(did.clone()));
            job.bump();
            Ok(job.info())
        })
    }

    /// Authenticates a work-stream request and returns a receiver of the job's change signal.
    pub fn subscribe(
        &self,
        req: &v1::WorkRequest,
    ) -> Result<(ParticipantId, watch::Receiver<u64>), CoordinatorError> {
        let signer = self.authenticate(req)?;
        self.with_job(&req.job_id, |job, _| {
            job.require_joined(&signer.did)?;
            let max = self.policy.streams.work_streams_per_participant;
            let open = job.connected.get(signer.did.as_str()).copied().unwrap_or(0);
            if open >= max {
                return Err(CoordinatorError::LimitReached(format!(
                    "{} already holds {open} open work streams for job {}, this coordinator's \
                     limit (--max-work-streams-per-participant)",
                    signer.did,
                    job.id()
                )));
            }
            job.nonces.consume(&signer, now_ms())?;
            *job.connected.entry(signer.did.to_string()).or_default() += 1;
            job.gone_since.remove(signer.did.as_str());
            Ok((signer.did.clone(), job.changes.subscribe()))
        })
    }

    /// Records that one of a participant's work streams ended.
    pub fn disconnect(&self, job_id: &str, did: &ParticipantId) {
        let _ = self.with_job(job_id, |job, _| {
            if let Some(n) = job.connected.get_mut(did.as_str()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    job.connected.remove(did.as_str());
                    job.gone_since.insert(did.to_string(), now_ms());
                    // The round may stop waiting for it once its grace period is over.
                    job.wake.notify_one();
                }
            }
            Ok(())
        });
    }

    /// A model version's flat parameters (little-endian f32) and their BLAKE3 hash.
    pub(crate) fn model(
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

    /// Checks a signed upload header before any payload is read: the round, the shape, the
    /// sample count against the job's bounds, and the participant's signature over what the
    /// ledger will record of the contribution.
    pub fn check_upload(
        &self,
        header: &v1::UploadHeader,
    ) -> Result<UploadTicket, CoordinatorError> {
        let signer = self.authenticate(header)?;
        let did = signer.did.clone();
        let payload_hash: [u8; 32] = header.payload_hash.as_slice().try_into().map_err(|_| {
            CoordinatorError::InvalidRequest("payload_hash must be 32 bytes".into())
        })?;
        self.with_job(&header.job_id, |job, _| {
            job.require_joined(&did)?;
            check_round_upload(job, header.round, &did)?;
            let kind = job.mode.rules().check_header(&job.spec, &did, header)?;
            let dim = job.mode.rules().upload_dim(job.layout.dim());
            if header.dim != dim {
                return Err(CoordinatorError::WrongLength {
                    expected: dim,
                    got: header.dim,
                });
            }
            let digest = contribution_digest(
                &header.job_id,
                header.round,
                &did,
                header.num_samples,
                &payload_hash,
                kind.manifest_hash(),
            );
            if !signed_by(&did, &digest, &header.contribution_signature) {
                return Err(CoordinatorError::BadAuth(
                    "the contribution signature does not verify".into(),
                ));
            }
            job.nonces.consume(&signer, now_ms())?;
            Ok(UploadTicket {
                job: job.id().into(),
                round: header.round,
                did,
                num_samples: header.num_samples,
                dim,
                payload_hash,
                kind,
                signature: header.contribution_signature.clone(),
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
        match &ticket.kind {
            UploadKind::Plain { clip_norm } => self.accept_plain(ticket, *clip_norm, payload),
            UploadKind::Masked { manifest, .. } => self.accept_masked(ticket, manifest, payload),
        }
    }

    /// Records a participant's evaluation of a model version.
    pub fn report_metrics(&self, req: &v1::MetricsReport) -> Result<(), CoordinatorError> {
        let signer = self.authenticate(req)?;
        let did = signer.did.clone();
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
            if job.index.reported(req.model_version, did.as_str()) {
                return Err(CoordinatorError::DuplicateReport {
                    did: did.to_string(),
                    version: req.model_version,
                });
            }
            job.nonces.consume(&signer, now_ms())?;
            let version = req.model_version;
            let reports = job.record.evaluations.entry(version).or_default();
            reports.push(EvalRecord {
                did: did.to_string(),
                loss: req.loss,
                accuracy: req.accuracy,
                num_examples: req.num_examples,
            });
            let mut job = Undo::new(job, move |job| {
                let reports = job.record.evaluations.entry(version).or_default();
                reports.pop();
                if reports.is_empty() {
                    job.record.evaluations.remove(&version);
                }
            });
            job.commit(store, store.batch(now_ms()), true)?;
            job.bump();
            job.done();
            Ok(())
        })
    }

    /// Records in the ledger that an admitted participant exported a model version it
    /// downloaded and checked, with its signature over the export; returns the entry's index.
    pub fn record_export(&self, req: &v1::RecordExportRequest) -> Result<u64, CoordinatorError> {
        let signer = self.authenticate(req)?;
        let did = signer.did.clone();
        if req.format.is_empty()
            || req.format.len() > 32
            || !req.format.chars().all(|c| c.is_ascii_alphanumeric())
        {
            return Err(CoordinatorError::InvalidRequest(
                "format must be 1-32 ASCII letters or digits".into(),
            ));
        }
        let digest = export_digest(
            &req.job_id,
            req.model_version,
            &req.model_hash,
            &req.format,
            &did,
        );
        if !signed_by(&did, &digest, &req.signature) {
            return Err(CoordinatorError::BadAuth(
                "the export signature does not verify".into(),
            ));
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
            if job.model_hash(req.model_version) != req.model_hash {
                return Err(CoordinatorError::HashMismatch);
            }
            let export = (req.model_version, req.format.clone(), did.to_string());
            if job.record.exports.contains(&export) {
                return Err(CoordinatorError::DuplicateExport {
                    did: did.to_string(),
                    version: req.model_version,
                    format: req.format.clone(),
                });
            }
            let formats = job
                .record
                .exports
                .iter()
                .filter(|(v, _, by)| *v == req.model_version && by == did.as_str())
                .count();
            if formats >= MAX_EXPORT_FORMATS {
                return Err(CoordinatorError::LimitReached(format!(
                    "{did} has recorded {formats} exports of version {} of job {}, the most \
                     one participant may record of one version",
                    req.model_version,
                    job.id()
                )));
            }
            job.nonces.consume(&signer, now_ms())?;
            let mut batch = store.batch(now_ms());
            batch.push(Payload::ModelExported(v1::ModelExported {
                job_id: req.job_id.clone(),
                model_version: req.model_version,
                model_hash: req.model_hash.clone(),
                format: req.format.clone(),
                exported_by: did.to_string(),
                signature: req.signature.clone(),
            }));
            job.record.exports.push(export);
            let mut job = Undo::new(job, |job| {
                job.record.exports.pop();
            });
            // The head the commit returned: another job's entries may follow at once.
            let head = job.commit(store, batch, true)?;
            job.done();
            Ok(head.len - 1)
        })
    }

    /// The job store (for the privacy modes' upload paths).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The ledger (for the `Ledger` service).
    pub fn ledger(&self) -> &conclave_ledger::Ledger {
        self.store.ledger()
    }

    /// Moves a job on: a secure job's draw gathers its links; a plain round closes when every
    /// expected participant uploaded or its deadline passed, aggregated (or failed, with fewer
    /// than `min_participants` uploads or an aggregate that overflows); a secure round goes
    /// through its phases (collect, check, statement, reveal). A closed round opens the next
    /// or finishes the job; a failure is recorded once, with its reason. Returns the time to
    /// wake up at, if the job is waiting for something.
    pub fn advance(&self, job_id: &str, now: u64) -> Result<Option<u64>, CoordinatorError> {
        let entered = std::time::SystemTime::now();
        let next = self.with_job(job_id, |job, store| {
            if job.gathering.is_some() {
                return job.draw_step(store, now).map(Advanced::Done);
            }
            let Some(open) = job.open_round() else {
                return Ok(Advanced::Done(None));
            };
            if job.closing.is_some() {
                // Its close is under way (one driver per job: this is not reached).
                return Ok(Advanced::Done(None));
            }
            // The driver wakes at every upload: the round's lists are copied only to close it.
            let (complete, grace_over) = self.collected(job, open, now);
            let (number, deadline) = (open.round, open.deadline_unix_ms);
            let owned = |job: &Job| job.open_round().cloned().expect("the round is open");
            let wake = |t: u64| Ok(Advanced::Done(Some(grace_over.map_or(t, |g| g.min(t)))));
            let outcome = match job.step(number, deadline, complete, now) {
                Step::Wait(deadline) => return wake(deadline),
                Step::Fail(reason) => Err(reason),
                Step::Aggregate => {
                    // Computed without the job's lock: uploads and committee messages to the
                    // round are refused from here on, so what is aggregated is the round's.
                    let taken = job.mode.take_round();
                    let round = owned(job);
                    return Ok(Advanced::Average(PendingClose::of(job, round, taken)));
                }
            };
            let round = owned(job);
            job.clock
                .enter(round.round, telemetry::Phase::Close, entered);
            job.close_round(store, &round, now, outcome)
                .map(|wake| Advanced::Closed(round.round, wake))
        })?;
        match next {
            Advanced::Done(wake) => Ok(wake),
            Advanced::Closed(round, wake) => {
                self.forget_updates(job_id, round);
                Ok(wake)
            }
            Advanced::Average(close) => self.close_pending(job_id, *close),
        }
    }

    /// Deletes a closed round's update files (no longer needed), with no lock held. A failure
    /// only leaves files behind.
    fn forget_updates(&self, job_id: &str, round: u32) {
        if let Err(e) = self.store.drop_round_updates(job_id, round) {
            tracing::warn!(job = %job_id, round, error = %e, "cannot delete the closed round's updates");
        }
    }

    /// Closes a round whose updates are all in, with no lock held (every other request to the
    /// job, and to every other job, is served meanwhile): a plain round's updates are averaged
    /// from their files, a secure round's sum is unmasked; the new model is stored. Then the
    /// close is recorded under the job's lock.
    fn close_pending(
        &self,
        job_id: &str,
        close: PendingClose,
    ) -> Result<Option<u64>, CoordinatorError> {
        let PendingClose {
            round,
            latest,
            layout,
            version,
            mode,
            strategy,
            state,
        } = close;
        // However this ends (an error, a panic), the round is given back as it was: it takes
        // uploads and holds its mode's state again, to close on the next try.
        let mut reopen = Reopen {
            state: self,
            job_id,
            mode: Some(mode),
        };
        let computed = reopen
            .mode
            .as_ref()
            .expect("set above")
            .rules()
            .aggregate(&Closing {
                job_id,
                dim: layout.dim(),
                store: &self.store,
                round: &round,
            })?;
        // The job's server strategy makes the new model of the aggregate, the same way in
        // every mode; the model and the strategy's state are stored before the close is.
        let outcome = match computed {
            Ok(aggregate) => match server_step(&strategy, &latest, aggregate.mean, &state)? {
                Ok(Stepped { params, state }) => {
                    let stored = StoredModel::save(
                        &self.store,
                        job_id,
                        version,
                        &layout,
                        params,
                        &strategy,
                        state,
                    )?;
                    Ok((stored, aggregate.total))
                }
                Err(reason) => Err(reason),
            },
            Err(reason) => Err(reason),
        };
        let mode = reopen.mode.take();
        let closed = self.with_job(job_id, |job, store| {
            job.closing = None;
            if let Some(mode) = mode {
                job.mode.put_round(mode);
            }
            // Only this job's driver closes its rounds, so the round is still the one that was
            // averaged; anything else is a bug, and nothing is recorded.
            let current = job.open_round().map(|r| (r.round, r.uploads.len()));
            if current != Some((round.round, round.uploads.len()))
                || job.record.model_version + 1 != version
            {
                return Err(CoordinatorError::Storage(format!(
                    "job {job_id}: round {} changed while it was closed",
                    round.round
                )));
            }
            // Closed now, not when averaging began: the next round's deadline counts from here.
            job.close_round(store, &round, now_ms(), outcome)
        });
        std::mem::forget(reopen);
        let wake = closed?;
        self.forget_updates(job_id, round.round);
        Ok(wake)
    }

    /// Whether the open round has every update it will get: all expected participants
    /// uploaded, or at least `min_participants` did and every one still missing has had no
    /// work stream for the server's dropout grace period (it went away, or never came back
    /// after a restart of this coordinator). Otherwise also when the next missing
    /// participant's grace period ends, if that could complete it.
    fn collected(&self, job: &Job, round: &RoundRecord, now: u64) -> (bool, Option<u64>) {
        let mut missing = job.index.missing().peekable();
        if missing.peek().is_none() {
            return (true, None);
        }
        if round.uploads.len() < job.spec.min_participants as usize {
            return (false, None);
        }
        let grace = self.policy.dropout_grace.as_millis() as u64;
        let mut last_over = 0;
        for did in missing {
            if job.connected.contains_key(did.as_str()) {
                return (false, None);
            }
            let serving = self.serving_since.load(std::sync::atomic::Ordering::SeqCst);
            let gone = job.gone_since.get(did.as_str()).copied().unwrap_or(serving);
            last_over = last_over.max(gone.saturating_add(grace));
        }
        if last_over <= now {
            (true, None)
        } else {
            (false, Some(last_over))
        }
    }

    fn spawn_driver(self: &Arc<Self>, job_id: String) {
        let Ok(wake) = self.with_job(&job_id, |job, _| Ok(job.wake.clone())) else {
            return;
        };
        let state = Arc::clone(self);
        let mut closing = self.closing();
        let driver = async move {
            // Each wait ends early when the server closes; a step in progress is finished.
            while !*closing.borrow_and_update() {
                let s = Arc::clone(&state);
                let id = job_id.clone();
                let next = tokio::task::spawn_blocking(move || s.advance(&id, now_ms())).await;
                let wait = match next {
                    Ok(Ok(Some(deadline))) => {
                        Some(Duration::from_millis(deadline.saturating_sub(now_ms())))
                    }
                    Ok(Ok(None)) => {
                        if state
                            .with_job(&job_id, |job, _| Ok(job.record.finished))
                            .unwrap_or(true)
                        {
                            break;
                        }
                        None
                    }
                    Ok(Err(e)) => {
                        tracing::error!(job = %job_id, error = %e, "round driver failed; retrying in 1 s");
                        Some(Duration::from_secs(1))
                    }
                    Err(e) => {
                        tracing::error!(job = %job_id, error = %e, "round driver panicked");
                        break;
                    }
                };
                let sleep = async {
                    match wait {
                        Some(wait) => tokio::time::sleep(wait).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = sleep => {}
                    _ = wake.notified() => {}
                    _ = closing.changed() => {}
                }
            }
        };
        self.drivers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .spawn(driver);
    }
}

/// A change made to a job in memory before it is committed, undone when this is dropped
/// unless [`Undo::done`] says the commit went through: on an error return, and on a panic
/// (whose poisoned lock [`lock_job`] recovers), the job is left as the disk has it.
struct Undo<'a, F: FnOnce(&mut Job)> {
    job: &'a mut Job,
    undo: Option<F>,
}

impl<'a, F: FnOnce(&mut Job)> Undo<'a, F> {
    fn new(job: &'a mut Job, undo: F) -> Self {
        Self {
            job,
            undo: Some(undo),
        }
    }

    /// The change is durable: keep it.
    fn done(mut self) {
        self.undo = None;
    }
}

impl<F: FnOnce(&mut Job)> std::ops::Deref for Undo<'_, F> {
    type Target = Job;
    fn deref(&self) -> &Job {
        self.job
    }
}

impl<F: FnOnce(&mut Job)> std::ops::DerefMut for Undo<'_, F> {
    fn deref_mut(&mut self) -> &mut Job {
        self.job
    }
}

impl<F: FnOnce(&mut Job)> Drop for Undo<'_, F> {
    fn drop(&mut self) {
        if let Some(undo) = self.undo.take() {
            undo(self.job);
        }
    }
}

fn lock_job(cell: &Mutex<Job>) -> MutexGuard<'_, Job> {
    // A commit is one transaction, so a panic while holding the lock leaves the disk at the
    // last commit. Uploads, reports and exports are pushed in memory under an [`Undo`] that
    // takes them back on a panic; the rarer changes that rebuild the record (a join that
    // starts the job, a round's close, a draw step) put it back on an error, not a panic.
    cell.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The most exports one participant may record of one model version (each one a format):
/// exports are kept with the job, so one participant cannot grow its record without end.
const MAX_EXPORT_FORMATS: usize = 16;

/// What [`State::advance`] did under the job's lock: all of it, or it left a round's close
/// (a plain average, a secure unmasking) to be computed without the lock.
enum Advanced {
    Done(Option<u64>),
    /// This round closed: its update files can go.
    Closed(u32, Option<u64>),
    Average(Box<PendingClose>),
}

/// The server strategy's state after a loaded job's latest model version: read from its file
/// beside the model and checked against the hash its record holds, or the strategy's initial
/// state before the first round closed; nothing for a strategy that keeps none, or for a
/// finished job (no step follows). Every other state file of the job is deleted (a crash or a
/// failed commit can leave one behind).
fn load_strategy_state(
    store: &Store,
    spec: &JobSpec,
    dim: usize,
    record: &JobRecord,
) -> Result<Vec<f32>, CoordinatorError> {
    let rules = spec.strategy.rules();
    let version = record.model_version;
    let keep = record.state_hash.as_ref().map(|_| version);
    let problem = |what: &str| {
        CoordinatorError::Storage(format!(
            "job {}: the {} state of model version {version} {what}",
            record.id,
            rules.label(),
        ))
    };
    let state = match (&record.state_hash, rules.state_per_param()) {
        (Some(_), 0) => return Err(problem("is recorded, but the strategy keeps none")),
        (None, _) if record.finished => Vec::new(),
        (None, 0) => Vec::new(),
        (None, _) if version == 0 => rules.initial_state(dim),
        (None, _) => return Err(problem("is not recorded")),
        (Some(hash), _) => {
            let file = store
                .load_strategy_state(&record.id, version)
                .map_err(|e| problem(&format!("cannot be read: {e}")))?;
            let state = conclave_aggregation::strategy::state_from_safetensors(rules, dim, &file)
                .map_err(|e| problem(&format!("cannot be used: {e}")))?;
            if &conclave_aggregation::strategy::state_hash(&state)
                .to_hex()
                .to_string()
                != hash
            {
                return Err(problem("does not match its hash"));
            }
            state
        }
    };
    store.sweep_strategy_states(&record.id, keep);
    Ok(state)
}

/// A round to close without the job's lock: a snapshot of what its close needs.
struct PendingClose {
    round: RoundRecord,
    /// The model the round started from.
    latest: Arc<Vec<u8>>,
    layout: conclave_aggregation::ModelLayout,
    /// The version the new model becomes.
    version: u32,
    /// The mode's state of the round, taken out of the job while the round is aggregated.
    mode: Mode,
    /// The job's server strategy and its state after the round's base model.
    strategy: conclave_aggregation::Strategy,
    state: Arc<Vec<f32>>,
}

impl PendingClose {
    /// Marks `job`'s open `round` as closing (it takes no more uploads) and snapshots what
    /// its close needs; the mode's state of the round comes out of the job with it.
    fn of(job: &mut Job, round: RoundRecord, mode: Mode) -> Box<Self> {
        job.closing = Some(round.round);
        Box::new(Self {
            version: job.record.model_version + 1,
            latest: Arc::clone(&job.latest_model),
            layout: job.layout.clone(),
            round,
            mode,
            strategy: job.spec.strategy.clone(),
            state: Arc::clone(&job.strategy_state),
        })
    }
}

/// Gives a round whose close did not finish back to its job: it takes uploads again, and its
/// mode's state of it is put back.
struct Reopen<'a> {
    state: &'a State,
    job_id: &'a str,
    mode: Option<Mode>,
}

impl Drop for Reopen<'_> {
    fn drop(&mut self) {
        let mode = self.mode.take();
        let _ = self.state.with_job(self.job_id, |job, _| {
            job.closing = None;
            if let Some(mode) = mode {
                job.mode.put_round(mode);
            }
            Ok(())
        });
    }
}

/// Refuses an upload to `round` by `did` unless the round is open and taking uploads, expects
/// `did`, and has none from it yet.
pub(crate) fn check_round_upload(
    job: &Job,
    round: u32,
    did: &ParticipantId,
) -> Result<(), CoordinatorError> {
    if job.open_round().is_none_or(|r| r.round != round) {
        let current = job
            .open_round()
            .map_or("none".to_string(), |r| r.round.to_string());
        return Err(CoordinatorError::RoundNotOpen {
            job: job.id().into(),
            round,
            current,
        });
    }
    if job.closing == Some(round) {
        return Err(CoordinatorError::RoundNotOpen {
            job: job.id().into(),
            round,
            current: format!("{round}, closing with the updates it has"),
        });
    }
    // Who may upload where is the round engine's rule, as the ledger's verifier runs it.
    Ok(job.engine.check_upload_claim(round, did.as_str())?)
}
