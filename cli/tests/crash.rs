//! The coordinator `kill -9`'d at seeded random points of a 5-round job, and restarted on the
//! same port and data directory: every hospital process keeps running and finishes the job,
//! `ledger verify` passes, and in plain mode the final model is bit for bit the one an
//! uninterrupted run of the same job (same seeds, identities and data) produces.
//!
//! Each test runs a few seeds; the soak command runs more:
//! `CONCLAVE_CRASH_RUNS=20 cargo test --release -p conclave-cli --test crash -- --nocapture`.

mod common;

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Hospitals in the job, and its rounds.
const HOSPITALS: u32 = 4;
const ROUNDS: u32 = 5;

/// A small deterministic generator (the kill schedule only needs to be reproducible).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// Uniform in `lo..hi` milliseconds.
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// Shared by every run of a test: the hospitals' identities and data (so that two runs train
/// the same way), and the job file.
struct Setup {
    dir: tempfile::TempDir,
    job_file: String,
}

impl Setup {
    fn new(privacy: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
        partition_wdbc(&d("sites"), HOSPITALS);
        for i in 1..=HOSPITALS {
            let out = run(&["identity", "new", "--out", &d(&format!("h{i}.identity"))]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        let example = std::fs::read_to_string(repo("examples/wdbc-job.toml")).unwrap();
        let job = example
            .replace("rounds = 20", &format!("rounds = {ROUNDS}"))
            .replace(
                "start_participants = 3",
                &format!("start_participants = {HOSPITALS}"),
            )
            .replace("round_deadline_secs = 120", "round_deadline_secs = 90")
            .replace("privacy = \"secagg\"", &format!("privacy = \"{privacy}\""));
        let job_file = d("job.toml");
        std::fs::write(&job_file, job).unwrap();
        Setup { dir, job_file }
    }

    fn path(&self, p: &str) -> String {
        self.dir.path().join(p).to_str().unwrap().to_string()
    }
}

/// What a run left: where its coordinator kept its data, and the final model it exported.
struct Outcome {
    data_dir: String,
    model: Vec<u8>,
    version: String,
}

/// Runs the job once: a coordinator, the hospitals, and `kills` SIGKILLs of the coordinator
/// at `schedule`'s intervals, each followed by a restart on the same port and data directory.
fn run_job(setup: &Setup, name: &str, plain: bool, kills: Vec<Duration>) -> Outcome {
    let data_dir = setup.path(&format!("{name}-coordinator"));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = Server::start(port, &data_dir);
    let launched = once_up(&["job", "launch", &setup.job_file, "--coordinator", &url]);
    let job = text(&launched.stdout).trim().to_string();
    let mut hospitals: Vec<Child> = (1..=HOSPITALS)
        .map(|i| {
            let mut cmd = conclave();
            cmd.args(["join", "--coordinator", &url, "--job", &job])
                .args(["--identity", &setup.path(&format!("h{i}.identity"))])
                .args(["--state-dir", &setup.path(&format!("{name}-h{i}.state"))])
                .args(["--data", &setup.path(&format!("sites/train-{i}.csv"))])
                .args(["--eval-data", &setup.path(&format!("sites/test-{i}.csv"))]);
            if plain {
                cmd.arg("--allow-plain");
            }
            cmd.env("CONCLAVE_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let planned = kills.len();
    let mut landed = 0;
    for wait in kills {
        std::thread::sleep(wait);
        if hospitals
            .iter_mut()
            .all(|h| h.try_wait().unwrap().is_some())
        {
            break;
        }
        landed += 1;
        server.0.kill().unwrap(); // SIGKILL: no shutdown, no flush
        server.0.wait().unwrap();
        server = Server::start(port, &data_dir);
    }
    assert!(
        planned == 0 || landed > 0,
        "the job finished before the coordinator was killed"
    );
    let started = Instant::now();
    let mut versions = Vec::new();
    for h in hospitals.iter_mut() {
        while h.try_wait().unwrap().is_none() {
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "a hospital is still running 5 minutes on"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    for h in hospitals {
        let out = h.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "a hospital exited through a coordinator restart: {}",
            text(&out.stderr)
        );
        versions.push(text(&out.stdout).trim().to_string());
    }
    assert!(
        versions.iter().all(|v| *v == versions[0]),
        "hospitals disagree on the final version: {versions:?}"
    );
    let out = setup.path(&format!("{name}-final.safetensors"));
    let exported = once_up(&[
        "model",
        "export",
        "--job",
        &job,
        "--coordinator",
        &url,
        "--out",
        &out,
    ]);
    assert!(exported.status.success());
    drop(server);
    // The ledger the coordinator left, through every kill, verifies.
    let verify = run(&["ledger", "verify", "--ledger", &data_dir]);
    assert!(
        verify.status.success(),
        "{}{}",
        text(&verify.stdout),
        text(&verify.stderr)
    );
    Outcome {
        data_dir,
        model: std::fs::read(&out).unwrap(),
        version: versions.swap_remove(0),
    }
}

/// How many seeded runs a test makes (`CONCLAVE_CRASH_RUNS` for a soak).
fn runs(default: u64) -> u64 {
    std::env::var("CONCLAVE_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// 1 to 3 kills: the first 0.3 to 1.2 s after the hospitals start (a fast machine finishes a
/// plain job in about 2 s, so a later first kill could miss it), then 1 to 2.5 s apart.
fn schedule(seed: u64) -> Vec<Duration> {
    let mut rng = Lcg(seed);
    let kills = 1 + rng.next() % 3;
    (0..kills)
        .map(|i| match i {
            0 => rng.millis(300, 1200),
            _ => rng.millis(1000, 2500),
        })
        .collect()
}

#[test]
fn plain_jobs_survive_kill_9_and_train_the_same_model() {
    let setup = Setup::new("plain");
    let calm = run_job(&setup, "calm", true, Vec::new());
    assert_eq!(calm.version, ROUNDS.to_string());
    for seed in 0..runs(2) {
        let kills = schedule(1000 + seed);
        eprintln!("plain run {seed}: kills after {kills:?}");
        let crashed = run_job(&setup, &format!("plain-{seed}"), true, kills);
        assert_eq!(crashed.version, ROUNDS.to_string(), "run {seed}");
        assert!(
            crashed.model == calm.model,
            "run {seed}: the final model differs from the uninterrupted run's ({})",
            crashed.data_dir
        );
    }
}

#[test]
fn secure_jobs_survive_kill_9() {
    let setup = Setup::new("secagg");
    for seed in 0..runs(2) {
        let kills = schedule(2000 + seed);
        eprintln!("secagg run {seed}: kills after {kills:?}");
        let crashed = run_job(&setup, &format!("secagg-{seed}"), false, kills);
        // A secure round caught mid-protocol may fail (and is recorded as failed); the job
        // still finishes with every hospital, on a model the rounds that closed produced.
        let version: u32 = crashed.version.parse().unwrap();
        eprintln!("secagg run {seed}: final model version {version}");
        assert!(
            (1..=ROUNDS).contains(&version),
            "run {seed}: version {version}"
        );
        assert!(!crashed.model.is_empty());
    }
}
