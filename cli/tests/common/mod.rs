//! What the `conclave` binary's tests share: the researcher identity every coordinator lets
//! launch, the binary itself, a coordinator process that dies with the test, and the shipped
//! data split among hospitals.
#![allow(dead_code)] // each test binary uses its own part

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The researcher of these tests: every coordinator they start lets it launch jobs, and
/// client commands sign as it unless told otherwise (`CONCLAVE_IDENTITY`).
pub struct Launcher {
    _dir: tempfile::TempDir,
    pub file: String,
    pub did: String,
}

pub fn launcher() -> &'static Launcher {
    static LAUNCHER: std::sync::OnceLock<Launcher> = std::sync::OnceLock::new();
    LAUNCHER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("launcher.identity");
        let identity = conclave_crypto::Identity::generate();
        identity.save(&file).unwrap();
        Launcher {
            file: file.to_str().unwrap().to_string(),
            did: identity.participant_id().to_string(),
            _dir: dir,
        }
    })
}

pub fn conclave() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conclave"));
    cmd.env_remove("CONCLAVE_COORDINATOR")
        .env_remove("CONCLAVE_TLS_CA")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env("CONCLAVE_IDENTITY", &launcher().file)
        .env("CONCLAVE_LOG", "warn");
    cmd
}

pub fn run(args: &[&str]) -> Output {
    conclave().args(args).output().expect("conclave runs")
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Kills the coordinator process when the test ends, pass or fail.
pub struct Server(pub Child);

impl Server {
    /// `conclave serve` on 127.0.0.1:`port` with its data in `data_dir`.
    pub fn start(port: u16, data_dir: &str) -> Self {
        Server(
            conclave()
                .args([
                    "serve",
                    "--listen",
                    &format!("127.0.0.1:{port}"),
                    "--data-dir",
                    data_dir,
                    "--launcher",
                    &launcher().did,
                ])
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }
}

/// Runs `args` until it succeeds (the coordinator may still be starting), for up to 20 s.
pub fn once_up(args: &[&str]) -> Output {
    let started = Instant::now();
    loop {
        let out = run(args);
        if out.status.success() {
            return out;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "coordinator did not come up: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes a version of the example job for 2 hospitals and `rounds` rounds to `path`.
pub fn two_hospital_job(path: &str, rounds: u32) -> String {
    let example = std::fs::read_to_string(repo("examples/wdbc-job.toml")).unwrap();
    std::fs::write(
        path,
        example
            .replace("rounds = 20", &format!("rounds = {rounds}"))
            .replace("start_participants = 3", "start_participants = 2"),
    )
    .unwrap();
    path.to_string()
}

/// Waits for every hospital process; each must succeed and print `version`, the job's final
/// model version.
pub fn each_finishes_at(hospitals: Vec<Child>, version: &str) {
    for h in hospitals {
        let out = h.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), version, "final model version");
    }
}

/// Splits the shipped WDBC train and test files into `parts` hospitals' files in `out_dir`
/// (`train-1.csv`, `test-1.csv`, ...).
pub fn partition_wdbc(out_dir: &str, parts: u32) {
    for (input, stem) in [
        ("datasets/data/wdbc_train.csv", "train"),
        ("datasets/data/wdbc_test.csv", "test"),
    ] {
        let out = run(&[
            "data",
            "partition",
            "--input",
            repo(input).to_str().unwrap(),
            "--label",
            "diagnosis",
            "--parts",
            &parts.to_string(),
            "--out-dir",
            out_dir,
            "--stem",
            stem,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
