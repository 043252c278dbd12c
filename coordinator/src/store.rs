//! Durable storage of the coordinator's state in its data directory:
//!
//! ```text
//! DATA_DIR/conclave.db                             SQLite: the ledger, and each job's record
//!                                                  (spec, participants, rounds, metrics)
//! DATA_DIR/coordinator.key                         the coordinator's signing identity (0600)
//! DATA_DIR/jobs/<job-id>/models/v<N>.safetensors   global model version N
//! DATA_DIR/jobs/<job-id>/models/v<N>.state         the server strategy's state after version
//!                                                  N (safetensors; only the latest is kept)
//! DATA_DIR/jobs/<job-id>/rounds/<r>/<id>.update    accepted update of one participant
//! ```
//!
//! A job record changes in the same SQLite transaction as the ledger entries that record the
//! change ([`Store::commit`]), so the two never disagree. Vectors live in files: every write
//! goes to a temporary file that is fsync'd and renamed into place, then the directory is
//! fsync'd, before the database commit that refers to it; anything acknowledged to a client
//! is on disk.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use conclave_crypto::Identity;
use conclave_ledger::{Batch, Ledger};
use serde::{Deserialize, Serialize};

use crate::CoordinatorError;
use crate::persist::{self, JOB_KEY, Shadow};

/// A participant as recorded at join.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ParticipantRecord {
    pub did: String,
    pub sealing_key: String,
    /// Secure jobs: the head of the participant's draw chain (hex).
    #[serde(default)]
    pub draw_commitment: String,
}

/// A secure job's committee draw, as far as it got (mirrors the ledger's draw entries).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DrawRecord {
    /// The attempt whose pool is fixed and whose reveals are being gathered.
    pub open: Option<(u32, Vec<String>)>,
    /// The next attempt's number.
    pub next_attempt: u32,
    /// Pool members that did not reveal in some attempt.
    pub excluded: Vec<String>,
    /// Who revealed in the last incomplete attempt: the next attempt's pool.
    #[serde(default)]
    pub last_revealers: Vec<String>,
    /// The job's draw entropy (hex), once an attempt completed.
    pub entropy: Option<String>,
}

/// State of a round.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RoundStatus {
    Open,
    Closed,
    Failed,
}

/// An accepted upload.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct UploadRecord {
    pub did: String,
    pub num_samples: u64,
    pub payload_hash: String,
}

/// One round of a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RoundRecord {
    pub round: u32,
    pub status: RoundStatus,
    pub base_version: u32,
    pub result_version: Option<u32>,
    pub expected: Vec<String>,
    /// Stored apart from the round ([`crate::persist`]).
    #[serde(default)]
    pub uploads: Vec<UploadRecord>,
    pub deadline_unix_ms: u64,
    /// Secure aggregation: the committee drawn for the round (did:keys, share order).
    #[serde(default)]
    pub committee: Vec<String>,
    /// Secure aggregation: the seed that drew the committee (hex).
    #[serde(default)]
    pub draw_seed: String,
    /// Secure aggregation: the round plan (protobuf `SecaggPlan`, hex), to resume the round
    /// after a restart.
    #[serde(default)]
    pub plan: String,
    /// Σ n_i of a closed round (a secure round's is known only once its sum is unmasked;
    /// rounds closed by older coordinators may have none in plain mode).
    #[serde(default)]
    pub total_samples: Option<u64>,
}

/// One participant's evaluation of one model version.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EvalRecord {
    pub did: String,
    pub loss: f64,
    pub accuracy: f64,
    pub num_examples: u64,
}

/// Everything the coordinator keeps about a job, apart from model and update vectors.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct JobRecord {
    pub id: String,
    /// The job's `v1::JobSpec`, protobuf-encoded, hex; checked again when loaded.
    pub spec: String,
    pub created_unix_ms: u64,
    /// Stored apart from the job, as are its rounds and evaluations ([`crate::persist`]).
    #[serde(default)]
    pub participants: Vec<ParticipantRecord>,
    pub model_version: u32,
    /// BLAKE3 (hex) of each model version's flat parameters, index = version.
    pub model_hashes: Vec<String>,
    /// BLAKE3 (hex) of the server strategy's state after `model_version` (its values as
    /// little-endian f32s); none while the strategy keeps no state, is at its initial state
    /// (no round closed yet), or is no longer needed (the job finished).
    #[serde(default)]
    pub state_hash: Option<String>,
    #[serde(default)]
    pub rounds: Vec<RoundRecord>,
    #[serde(default)]
    pub evaluations: BTreeMap<u32, Vec<EvalRecord>>,
    pub finished: bool,
    /// Secure jobs: the committee draw.
    #[serde(default)]
    pub draw: DrawRecord,
    /// Exports recorded in the ledger: (model version, format, exporter).
    #[serde(default)]
    pub exports: Vec<(u32, String, String)>,
}

/// The job records held in rows of a data directory's state table (key, value; any order),
/// read as the coordinator reads them at start: for tools and tests that look into the
/// database directly. Its keys are described in `persist`; a record may also be one value
/// under `job/<id>` (as older coordinators wrote it), which loads the same.
pub fn records_from_rows(
    mut rows: Vec<(String, Vec<u8>)>,
) -> Result<Vec<JobRecord>, CoordinatorError> {
    rows.sort();
    Ok(persist::load(rows)?.into_iter().map(|(r, _)| r).collect())
}

/// The files an accepted upload is kept in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UploadPart {
    /// The update (plain: f32 LE) or the masked ring vector (secagg: u32 LE).
    Payload,
    /// Secagg: the protobuf-encoded manifest of the masked vector.
    Manifest,
}

impl UploadPart {
    fn extension(self) -> &'static str {
        match self {
            UploadPart::Payload => "update",
            UploadPart::Manifest => "manifest",
        }
    }
}

/// The data directory.
pub struct Store {
    root: PathBuf,
    ledger: Ledger,
    identity: Identity,
    /// What the database holds of each job's record (see [`crate::persist`]).
    shadows: Mutex<HashMap<String, Shadow>>,
}

impl Store {
    /// Opens (creating if needed) a data directory, its database and the coordinator's key.
    pub fn open(root: &Path) -> Result<Self, CoordinatorError> {
        fs::create_dir_all(root.join("jobs"))?;
        sweep_temp_files(root)?;
        let key = root.join("coordinator.key");
        let identity = if key.exists() {
            Identity::load(&key)
        } else {
            let id = Identity::generate();
            id.save(&key).map(|()| id)
        }
        .map_err(|e| CoordinatorError::Storage(format!("{}: {e}", key.display())))?;
        let ledger = Ledger::open(&root.join("conclave.db"))?;
        Ok(Self {
            root: root.to_owned(),
            ledger,
            identity,
            shadows: Mutex::new(HashMap::new()),
        })
    }

    /// The ledger.
    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// The coordinator's signing identity (its did:key signs every ledger entry).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// A batch of ledger entries signed by the coordinator at `now` (chained when committed).
    pub fn batch(&self, now: u64) -> Batch<'_> {
        self.ledger.batch(&self.identity, now)
    }

    /// Durably commits ledger entries together with a job record (if one changed): only
    /// the parts of the record that are new or changed since its last commit are written.
    /// Commits of one job are serialized by its caller (the job's lock).
    pub fn commit(
        &self,
        record: Option<&JobRecord>,
        batch: Batch<'_>,
    ) -> Result<conclave_ledger::db::Head, CoordinatorError> {
        let Some(record) = record else {
            return Ok(self.ledger.commit(batch, &[])?);
        };
        let shadow = self.shadows().get(&record.id).cloned().unwrap_or_default();
        let state = persist::writes(record, &shadow)?;
        let head = match self.ledger.commit(batch, &state) {
            Ok(head) => head,
            Err(e) => {
                // Whether a failed commit reached the disk is not always knowable: the next
                // commit of this job writes every part, so nothing rests on a guess.
                self.shadows().remove(&record.id);
                return Err(e.into());
            }
        };
        self.shadows().insert(record.id.clone(), Shadow::of(record));
        #[cfg(debug_assertions)]
        self.check_written(record);
        Ok(head)
    }

    fn shadows(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shadow>> {
        self.shadows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Debug builds: reads the record back and panics unless it is what was committed.
    #[cfg(debug_assertions)]
    fn check_written(&self, record: &JobRecord) {
        let rows = self
            .ledger
            .state(&format!("{JOB_KEY}{}", record.id))
            .expect("the state table reads back");
        let back = persist::load(rows)
            .expect("the committed record loads")
            .into_iter()
            .map(|(r, _)| r)
            .find(|r| r.id == record.id);
        assert!(
            back.as_ref() == Some(record),
            "job {}: the record read back differs from the one committed",
            record.id
        );
    }

    fn job_dir(&self, job: &str) -> PathBuf {
        self.root.join("jobs").join(job)
    }

    /// Path of a stored model version.
    pub fn model_path(&self, job: &str, version: u32) -> PathBuf {
        self.job_dir(job)
            .join("models")
            .join(format!("v{version}.safetensors"))
    }

    fn update_path(&self, job: &str, round: u32, did: &str, kind: UploadPart) -> PathBuf {
        // did:key strings are base58 after the prefix: safe in file names once ':' is replaced.
        self.job_dir(job)
            .join("rounds")
            .join(round.to_string())
            .join(format!("{}.{}", did.replace(':', "_"), kind.extension()))
    }

    /// Every stored job record.
    pub fn load_jobs(&self) -> Result<Vec<JobRecord>, CoordinatorError> {
        let mut out = Vec::new();
        let mut shadows = self.shadows();
        for (record, shadow) in persist::load(self.ledger.state(JOB_KEY)?)? {
            shadows.insert(record.id.clone(), shadow);
            out.push(record);
        }
        out.sort_by_key(|r| r.created_unix_ms);
        Ok(out)
    }

    /// Stores model `version` of `job` from its flat little-endian bytes, the file streamed to
    /// disk (durably, whole or not at all) without another copy in memory.
    pub fn save_model_bytes(
        &self,
        job: &str,
        version: u32,
        layout: &conclave_aggregation::ModelLayout,
        bytes: &[u8],
    ) -> Result<(), CoordinatorError> {
        let path = self.model_path(job, version);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&path, |tmp| {
            layout.write_safetensors(bytes, tmp)?;
            fs::OpenOptions::new().write(true).open(tmp)?.sync_all()?;
            Ok(())
        })
    }

    fn state_path(&self, job: &str, version: u32) -> PathBuf {
        self.job_dir(job)
            .join("models")
            .join(format!("v{version}.state"))
    }

    /// Stores the server strategy's state after model `version` (of `dim` parameters) of
    /// `job` (a safetensors file, streamed from the state), durably, whole or not at all.
    pub fn save_strategy_state(
        &self,
        job: &str,
        version: u32,
        strategy: &dyn conclave_aggregation::ServerStrategy,
        dim: usize,
        state: &[f32],
    ) -> Result<(), CoordinatorError> {
        let path = self.state_path(job, version);
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        write_atomic(&path, |tmp| {
            conclave_aggregation::strategy::write_state_safetensors(strategy, dim, state, tmp)?;
            fs::OpenOptions::new().write(true).open(tmp)?.sync_all()?;
            Ok(())
        })
    }

    /// Deletes every strategy state file of `job` but the one after model version `keep`
    /// (all of them when `keep` is `None`): what a crash or a failed commit left behind. A
    /// failure only leaves the files.
    pub fn sweep_strategy_states(&self, job: &str, keep: Option<u32>) {
        let keep = keep.map(|v| self.state_path(job, v));
        let Ok(entries) = fs::read_dir(self.job_dir(job).join("models")) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            let is_state = path.extension().and_then(|e| e.to_str()) == Some("state");
            if is_state
                && Some(&path) != keep.as_ref()
                && let Err(e) = fs::remove_file(&path)
            {
                tracing::warn!(job, path = %path.display(), error = %e, "cannot delete a superseded strategy state");
            }
        }
    }

    /// Reads the server strategy's state file after model `version` of `job`.
    pub fn load_strategy_state(
        &self,
        job: &str,
        version: u32,
    ) -> Result<Vec<u8>, CoordinatorError> {
        Ok(fs::read(self.state_path(job, version))?)
    }

    /// Deletes the strategy state after model `version` (superseded); a failure only leaves
    /// the file behind.
    pub fn drop_strategy_state(&self, job: &str, version: u32) {
        let path = self.state_path(job, version);
        if let Err(e) = fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(job, version, error = %e, "cannot delete a superseded strategy state");
        }
    }

    /// Reads a model version's safetensors bytes.
    pub fn load_model(&self, job: &str, version: u32) -> Result<Vec<u8>, CoordinatorError> {
        Ok(fs::read(self.model_path(job, version))?)
    }

    /// Durably writes an update under a temporary name; [`Store::commit_update`] moves it in place.
    pub fn stage_update(
        &self,
        job: &str,
        round: u32,
        did: &str,
        kind: UploadPart,
        payload: &[u8],
    ) -> Result<PathBuf, CoordinatorError> {
        let path = self.update_path(job, round, did, kind);
        let staged = path.with_extension(format!(
            "staged-{}",
            hex::encode(conclave_crypto::random_bytes::<8>())
        ));
        write_synced(&staged, payload)?;
        Ok(staged)
    }

    /// Moves a staged update to its final name.
    pub fn commit_update(
        &self,
        staged: &Path,
        job: &str,
        round: u32,
        did: &str,
        kind: UploadPart,
    ) -> Result<(), CoordinatorError> {
        self.commit_updates(&[(staged, kind)], job, round, did)
    }

    /// Moves several staged parts of one participant's update to their final names, with
    /// one directory sync for all of them (they live in the same directory).
    pub fn commit_updates(
        &self,
        staged: &[(&Path, UploadPart)],
        job: &str,
        round: u32,
        did: &str,
    ) -> Result<(), CoordinatorError> {
        let mut last = None;
        for &(from, kind) in staged {
            let path = self.update_path(job, round, did, kind);
            fs::rename(from, &path)?;
            last = Some(path);
        }
        match last {
            Some(path) => sync_dir(&path),
            None => Ok(()),
        }
    }

    /// Reads an accepted update.
    pub fn load_update(
        &self,
        job: &str,
        round: u32,
        did: &str,
        kind: UploadPart,
    ) -> Result<Vec<u8>, CoordinatorError> {
        Ok(fs::read(self.update_path(job, round, did, kind))?)
    }

    /// Opens a stored update to read it in parts.
    pub fn open_update(
        &self,
        job: &str,
        round: u32,
        did: &str,
        kind: UploadPart,
    ) -> Result<File, CoordinatorError> {
        Ok(File::open(self.update_path(job, round, did, kind))?)
    }

    /// Deletes every update of a round once its aggregate is stored: they are no longer needed.
    pub fn drop_round_updates(&self, job: &str, round: u32) -> Result<(), CoordinatorError> {
        let dir = self.job_dir(job).join("rounds").join(round.to_string());
        match fs::remove_dir_all(dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    let mut file = File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

fn sync_dir(path: &Path) -> Result<(), CoordinatorError> {
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Writes `path` so that a crash leaves the old or the new content, never a mix: `write`
/// writes (and syncs) a temp file of its own, which then replaces `path`.
fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), CoordinatorError>,
) -> Result<(), CoordinatorError> {
    // A name of its own: two writers of one path never share a half-written file.
    let tmp = path.with_extension(format!(
        "{TMP_EXTENSION}-{}",
        hex::encode(conclave_crypto::random_bytes::<8>())
    ));
    let written = write(&tmp).and_then(|()| Ok(fs::rename(&tmp, path)?));
    if written.is_err() {
        // A failed write (a full disk) leaves nothing behind to fill it further.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_dir(path)
}

/// The extension of files being written (see [`write_atomic`]); any left by a crash are
/// deleted when the store opens.
const TMP_EXTENSION: &str = "conclave-tmp";

/// Deletes the half-written files a crash left in the jobs' model directories.
fn sweep_temp_files(root: &Path) -> Result<(), CoordinatorError> {
    for job in fs::read_dir(root.join("jobs"))? {
        let models = job?.path().join("models");
        let Ok(entries) = fs::read_dir(&models) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            let is_temp = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.starts_with(TMP_EXTENSION));
            if is_temp {
                fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}
