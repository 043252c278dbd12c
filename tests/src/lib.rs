//! Helpers for Conclave's end-to-end tests: a real coordinator on a loopback port, jobs over the
//! shipped data, hospitals with identities, and scripted participants that speak the wire
//! protocol directly so a test can misbehave on purpose.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conclave_aggregation::{
    DataSchema, JobSpec, ModelArch, Normalization, Optimizer, Privacy, RewardPolicy, TrainingConfig,
};
use conclave_coordinator::{LocalServer, ServerPolicy, State};
use conclave_crypto::Identity;
use conclave_datasets::partition::{Scheme, partition_file};
use conclave_datasets::wdbc;
use conclave_participant::client::{connect, get_job, jobs_client, rounds_client, sign};
use conclave_proto::v1::{self, jobs_client::JobsClient, rounds_client::RoundsClient};
use tonic::transport::Channel;

pub mod adversary;
pub mod metrics;
pub mod records;

/// The launcher of every test coordinator: one identity per test process, so a coordinator
/// restarted in a test still lets it launch and read.
pub fn launcher() -> &'static Identity {
    static LAUNCHER: std::sync::OnceLock<Identity> = std::sync::OnceLock::new();
    LAUNCHER.get_or_init(Identity::generate)
}

/// The policy of a test coordinator: [`launcher`] may launch, reads are signed. Rounds wait
/// out their deadline for missing participants (many tests upload without a work stream):
/// the dropout grace period is tested on its own.
pub fn test_policy() -> ServerPolicy {
    ServerPolicy {
        dropout_grace: std::time::Duration::from_secs(24 * 3600),
        ..ServerPolicy::with_launcher(launcher().participant_id())
    }
}

/// `request`, signed by [`launcher`].
pub fn as_launcher<T: conclave_proto::Signed>(mut request: T) -> T {
    sign(launcher(), &mut request);
    request
}

/// A coordinator serving on 127.0.0.1 until dropped.
pub struct TestCoordinator {
    pub url: String,
    pub state: Arc<State>,
    server: LocalServer,
}

impl TestCoordinator {
    /// Starts a coordinator with its data in `dir`, under [`test_policy`].
    pub async fn start(dir: &Path) -> Self {
        Self::start_with(dir, test_policy()).await
    }

    /// Starts a coordinator with its data in `dir`, under `policy`.
    pub async fn start_with(dir: &Path, policy: ServerPolicy) -> Self {
        let state = State::open(dir, policy).expect("open coordinator state");
        let server = LocalServer::start(Arc::clone(&state))
            .await
            .expect("serve on loopback");
        Self {
            url: server.url.clone(),
            state,
            server,
        }
    }

    /// Starts a coordinator on `dir` at a given URL's address (to restart one in place).
    pub async fn restart(dir: &Path, url: &str) -> Self {
        let addr = url
            .trim_start_matches("http://")
            .parse()
            .expect("a loopback address");
        let state = State::open(dir, test_policy()).expect("open coordinator state");
        let server = LocalServer::start_on(Arc::clone(&state), addr)
            .await
            .expect("serve on the same address");
        Self {
            url: server.url.clone(),
            state,
            server,
        }
    }

    /// Stops serving and waits for the server task.
    pub async fn stop(self) {
        self.server.stop().await.expect("coordinator stops cleanly");
    }

    pub async fn jobs(&self) -> JobsClient<Channel> {
        jobs_client(connect(&self.url).await.unwrap())
    }

    pub async fn rounds(&self) -> RoundsClient<Channel> {
        rounds_client(connect(&self.url).await.unwrap())
    }

    /// Launches a job as [`launcher`]; returns its id.
    pub async fn launch(&self, spec: &JobSpec) -> String {
        let mut req = v1::CreateJobRequest {
            spec: Some(spec.to_proto()),
            auth: None,
        };
        sign(launcher(), &mut req);
        self.jobs()
            .await
            .create_job(req)
            .await
            .unwrap()
            .into_inner()
            .job_id
    }

    /// The job as [`launcher`] reads it.
    pub async fn info(&self, job: &str) -> v1::JobInfo {
        get_job(&self.jobs().await, Some(launcher()), job)
            .await
            .unwrap()
    }

    /// The job once it holds model `version`. A round closes on the coordinator's driver
    /// task, just after the upload that completes it is acknowledged, so callers wait for it;
    /// panics if it has not happened within 30 s.
    pub async fn wait_for_model(&self, job: &str, version: u32) -> v1::JobInfo {
        let started = std::time::Instant::now();
        loop {
            let info = self.info(job).await;
            if info.model_version >= version {
                return info;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(30),
                "job {job} never reached model version {version}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
}

/// A logistic-regression job on the shipped breast-cancer data.
pub fn wdbc_job(rounds: u32, min_participants: u32, deadline_secs: u32) -> JobSpec {
    wdbc_job_starting_at(rounds, min_participants, min_participants, deadline_secs)
}

/// As [`wdbc_job`], with the first round opening once `start_participants` have joined.
pub fn wdbc_job_starting_at(
    rounds: u32,
    min_participants: u32,
    start_participants: u32,
    deadline_secs: u32,
) -> JobSpec {
    JobSpec {
        name: "e2e".into(),
        model: ModelArch::LogisticRegression,
        data: DataSchema {
            features: wdbc::FEATURES.iter().map(|s| s.to_string()).collect(),
            label: wdbc::LABEL.into(),
            num_classes: 2,
            normalize: Normalization::LocalZScore,
            eval_fraction: 0.2,
        },
        training: TrainingConfig {
            local_epochs: 1,
            batch_size: 16,
            learning_rate: 0.1,
            optimizer: Optimizer::Sgd,
        },
        rounds,
        min_participants,
        start_participants,
        round_deadline_secs: deadline_secs,
        privacy: Privacy::Plain,
        clip_norm: None,
        max_samples: None,
        seed: 1,
        admission: Vec::new(),
        rewards: RewardPolicy::default_for(false),
        strategy: Default::default(),
    }
}

/// A secure-aggregation version of [`wdbc_job_starting_at`]: committee `c` with threshold `t`,
/// updates clipped to 5, weights capped at 1000 samples.
pub fn wdbc_secagg_job(
    rounds: u32,
    min_participants: u32,
    start_participants: u32,
    deadline_secs: u32,
    (c, t): (u32, u32),
    max_participants: u32,
) -> JobSpec {
    let mut wire =
        wdbc_job_starting_at(rounds, min_participants, start_participants, deadline_secs)
            .to_proto();
    wire.privacy = v1::Privacy::Secagg.into();
    // The default policy for secagg: equal parts (sample counts are secret).
    wire.rewards = None;
    wire.committee_size = c;
    wire.threshold = t;
    wire.clip_norm = 5.0;
    wire.max_samples = 1000;
    wire.max_participants = max_participants;
    JobSpec::from_proto(&wire).expect("a valid secure-aggregation job")
}

/// Deals the shipped train and test splits to `n` hospitals under `dir`: (train, test) files.
pub fn hospital_files(dir: &Path, n: usize) -> Vec<(PathBuf, PathBuf)> {
    let train = dir.join("train.csv");
    let test = dir.join("test.csv");
    std::fs::write(&train, wdbc::TRAIN_CSV).unwrap();
    std::fs::write(&test, wdbc::TEST_CSV).unwrap();
    let trains = partition_file(&train, wdbc::LABEL, n, Scheme::Iid, 3, dir, "train").unwrap();
    let tests = partition_file(&test, wdbc::LABEL, n, Scheme::Iid, 4, dir, "test").unwrap();
    trains.into_iter().zip(tests).collect()
}

/// A participant's own connection, signing as `identity`.
pub async fn client(
    coordinator: &TestCoordinator,
    identity: impl Into<Arc<Identity>>,
) -> conclave_participant::client::Client {
    conclave_participant::client::Client::connect(&coordinator.url, identity.into())
        .await
        .unwrap()
}

/// Little-endian bytes of f32 values.
pub fn le_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// A participant's configuration for one hospital's files, with its own state directory and
/// a policy that takes part in plain jobs too (the tests run both modes).
pub fn participant_config(
    coordinator: &TestCoordinator,
    job: &str,
    files: &(PathBuf, PathBuf),
    state_dir: PathBuf,
) -> conclave_participant::ParticipantConfig {
    conclave_participant::ParticipantConfig {
        coordinator: coordinator.url.clone(),
        job_id: job.into(),
        data: files.0.clone(),
        eval_data: Some(files.1.clone()),
        device: tch::Device::Cpu,
        policy: conclave_participant::Policy {
            allow_plain: true,
            ..Default::default()
        },
        state_dir,
    }
}

/// Runs a participant whose events reach `events` tagged with `i` (to tell hospitals apart).
pub async fn run_tagged(
    config: conclave_participant::ParticipantConfig,
    identity: Arc<Identity>,
    i: usize,
    events: tokio::sync::mpsc::UnboundedSender<(usize, conclave_participant::Event)>,
) -> Result<u32, conclave_participant::ParticipantError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let _ = events.send((i, e));
        }
    });
    conclave_participant::run(config, identity, Some(tx)).await
}

/// A plain upload header for `values`, with the participant's contribution signature and the
/// request signature (a test may change a field and call [`resign_header`]).
pub fn plain_header(
    identity: &Identity,
    job: &str,
    round: u32,
    num_samples: u64,
    values: &[f32],
) -> v1::UploadHeader {
    let mut h = v1::UploadHeader {
        job_id: job.into(),
        round,
        num_samples,
        dim: values.len() as u64,
        payload_hash: blake3::hash(&le_bytes(values)).as_bytes().to_vec(),
        ..Default::default()
    };
    resign_header(identity, &mut h);
    h
}

/// Signs an upload header again, contribution and request both.
pub fn resign_header(identity: &Identity, h: &mut v1::UploadHeader) {
    let manifest_hash = match &h.manifest {
        Some(m) => conclave_aggregation::secagg::Manifest::from_wire(
            &h.job_id,
            h.round,
            identity.participant_id(),
            m,
        )
        .map(|m| m.hash().to_vec())
        .unwrap_or_default(),
        None => Vec::new(),
    };
    let digest = conclave_ledger::signed::contribution_digest(
        &h.job_id,
        h.round,
        &identity.participant_id(),
        h.num_samples,
        &h.payload_hash,
        &manifest_hash,
    );
    h.contribution_signature = identity.sign(&digest).to_vec();
    conclave_participant::client::sign(identity, h);
}

/// A join request with the given sealing key and draw commitment, with the admission and
/// request signatures of `identity`.
pub fn join_request(
    identity: &Identity,
    job: &str,
    sealing_key: Vec<u8>,
    draw_commitment: Vec<u8>,
) -> v1::JoinRequest {
    let digest = conclave_ledger::signed::admission_digest(
        job,
        &identity.participant_id(),
        &sealing_key,
        &draw_commitment,
    );
    let mut req = v1::JoinRequest {
        job_id: job.into(),
        x25519_public: sealing_key,
        draw_commitment,
        admission_signature: identity.sign(&digest).to_vec(),
        auth: None,
    };
    conclave_participant::client::sign(identity, &mut req);
    req
}

/// The secure-aggregation duties of `identity` in `job`, pinned to the job as the coordinator
/// describes it now, with their state in `state_dir` (for scripted participants).
pub async fn secagg_duties(
    url: &str,
    identity: Arc<Identity>,
    job: &str,
    state_dir: &Path,
) -> conclave_participant::SecaggDuties {
    let mut c = conclave_participant::client::Client::connect(url, Arc::clone(&identity))
        .await
        .unwrap();
    let info = c.job(job).await.unwrap();
    let pin = conclave_participant::Pin {
        job_id: job.into(),
        coordinator: conclave_crypto::ParticipantId::parse(&info.coordinator).unwrap(),
        spec: JobSpec::from_proto(&info.spec.unwrap()).unwrap(),
    };
    conclave_participant::SecaggDuties::open(identity, pin, state_dir, url)
        .await
        .unwrap()
}

/// The committee of a secure job's round, recomputed as anyone holding the ledger can: from
/// the job's draw entropy (the ledger's complete draw attempt) over every admitted participant.
pub fn committee_from_ledger(
    ledger: &conclave_ledger::Ledger,
    job: &str,
    round: u32,
    size: usize,
) -> Vec<conclave_crypto::ParticipantId> {
    let (report, jobs) = conclave_ledger::verify::verify_ledger_jobs(ledger, None).unwrap();
    assert_eq!(report.problem, None);
    let summary = &jobs[job];
    let entropy = summary.draw.entropy.expect("the job's draw is complete");
    let pool: Vec<conclave_crypto::ParticipantId> = summary
        .admitted
        .keys()
        .map(|d| conclave_crypto::ParticipantId::parse(d).unwrap())
        .collect();
    let seed = conclave_crypto::committee::draw_seed(job, round, &entropy);
    conclave_crypto::committee::draw_committee(&seed, &pool, &[], size).unwrap()
}
