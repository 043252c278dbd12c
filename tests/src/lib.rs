//! Helpers for Conclave's end-to-end tests: a real coordinator on a loopback port, jobs over the
//! shipped data, hospitals with identities, and scripted participants that speak the wire
//! protocol directly so a test can misbehave on purpose.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use conclave_aggregation::{
    DataSchema, JobSpec, ModelArch, Normalization, Optimizer, Privacy, RewardPolicy, TrainingConfig,
};
use conclave_coordinator::{LocalServer, State};
use conclave_crypto::Identity;
use conclave_datasets::partition::{Scheme, partition_file};
use conclave_datasets::wdbc;
use conclave_participant::client::{connect, jobs_client, rounds_client};
use conclave_proto::v1::{self, jobs_client::JobsClient, rounds_client::RoundsClient};
use tonic::transport::Channel;

/// A coordinator serving on 127.0.0.1 until dropped.
pub struct TestCoordinator {
    pub url: String,
    pub state: Arc<State>,
    server: LocalServer,
}

impl TestCoordinator {
    /// Starts a coordinator with its data in `dir`.
    pub async fn start(dir: &Path) -> Self {
        let state = State::open(dir).expect("open coordinator state");
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
        let state = State::open(dir).expect("open coordinator state");
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

    /// Launches a job; returns its id.
    pub async fn launch(&self, spec: &JobSpec) -> String {
        let req = v1::CreateJobRequest {
            spec: Some(spec.to_proto()),
        };
        self.jobs()
            .await
            .create_job(req)
            .await
            .unwrap()
            .into_inner()
            .job_id
    }

    pub async fn info(&self, job: &str) -> v1::JobInfo {
        self.jobs()
            .await
            .get_job(v1::GetJobRequest { job_id: job.into() })
            .await
            .unwrap()
            .into_inner()
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
        seed: 1,
        admission: Vec::new(),
        rewards: RewardPolicy::default_for(false),
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
