//! The `conclave` binary as a user runs it: separate coordinator and hospital processes on
//! loopback, the demo, and clear errors for bad job files, bad data and bad flags.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn conclave() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_conclave"));
    cmd.env_remove("CONCLAVE_COORDINATOR")
        .env("CONCLAVE_LOG", "warn");
    cmd
}

fn run(args: &[&str]) -> Output {
    conclave().args(args).output().expect("conclave runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Kills the coordinator process when the test ends, pass or fail.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn job_check_names_every_problem() {
    let ok = run(&[
        "job",
        "check",
        repo("examples/wdbc-job.toml").to_str().unwrap(),
    ]);
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).contains("62 parameters"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name = \"x\"\nrounds = -1\ncolour = 3\n[model]\nkind = \"forest\"\n[training]\nbatch_size = 0\n").unwrap();
    let out = run(&["job", "check", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    for path in [
        "rounds:",
        "colour:",
        "model.kind:",
        "data:",
        "training.batch_size:",
    ] {
        assert!(err.contains(path), "{path} not in:\n{err}");
    }
    let out = run(&[
        "job",
        "check",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"));
}

#[test]
fn identity_files_are_private_and_never_overwritten() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.identity");
    let out = run(&["identity", "new", "--out", path.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(text(&out.stdout).starts_with("did:key:z6Mk"));
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let before = std::fs::read(&path).unwrap();
    let again = run(&["identity", "new", "--out", path.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("already exists"));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn demo_runs_on_shipped_data_and_exports_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&[
        "demo",
        "--rounds",
        "3",
        "--participants",
        "3",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("round")).count(),
        3,
        "{stdout}"
    );
    assert!(stdout.contains("final test accuracy"), "{stdout}");
    assert!(dir.path().join("model-final.safetensors").exists());

    assert!(
        text(&out.stderr).contains("privacy secagg"),
        "secagg is the default: {}",
        text(&out.stderr)
    );

    let out = run(&[
        "demo",
        "--privacy",
        "fhe",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not available"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&[
        "demo",
        "--participants",
        "1",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("at least 2"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn separate_processes_train_and_export_like_the_readme() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Server(
        conclave()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
                &d("coordinator"),
            ])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Write a 2-round, 2-hospital version of the example job.
    let job_file = d("job.toml");
    let example = std::fs::read_to_string(repo("examples/wdbc-job.toml")).unwrap();
    std::fs::write(
        &job_file,
        example
            .replace("rounds = 20", "rounds = 2")
            .replace("start_participants = 3", "start_participants = 2"),
    )
    .unwrap();
    let started = Instant::now();
    let job = loop {
        let out = run(&["job", "launch", &job_file, "--coordinator", &url]);
        if out.status.success() {
            break text(&out.stdout).trim().to_string();
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "coordinator did not come up: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    };
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
            "2",
            "--out-dir",
            &d("sites"),
            "--stem",
            stem,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }

    // A hospital whose export has a broken cell is told where, and is not admitted.
    let broken = d("broken.csv");
    let csv = std::fs::read_to_string(d("sites/train-1.csv")).unwrap();
    let mut lines: Vec<String> = csv.lines().map(str::to_string).collect();
    lines[3] = lines[3].replacen(|c: char| c.is_ascii_digit(), "x", 1);
    std::fs::write(&broken, lines.join("\n")).unwrap();
    run(&["identity", "new", "--out", &d("broken.identity")]);
    let out = run(&[
        "join",
        "--coordinator",
        &url,
        "--job",
        &job,
        "--data",
        &broken,
        "--identity",
        &d("broken.identity"),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("column \"mean_radius\", row 3"), "{err}");

    let mut hospitals = Vec::new();
    for i in 1..=2 {
        let identity = d(&format!("h{i}.identity"));
        assert!(
            run(&["identity", "new", "--out", &identity])
                .status
                .success()
        );
        hospitals.push(
            conclave()
                .args([
                    "join",
                    "--coordinator",
                    &url,
                    "--job",
                    &job,
                    "--identity",
                    &identity,
                ])
                .args([
                    "--data",
                    &d(&format!("sites/train-{i}.csv")),
                    "--eval-data",
                    &d(&format!("sites/test-{i}.csv")),
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
    }
    for h in hospitals {
        let out = h.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout).trim(), "2", "final model version");
    }

    let out = run(&[
        "job",
        "status",
        &job,
        "--coordinator",
        &url,
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["state"], "finished");
    assert_eq!(
        status["participants"].as_array().unwrap().len(),
        2,
        "the broken hospital never joined"
    );
    assert_eq!(status["rounds"].as_array().unwrap().len(), 2);
    let table = run(&["job", "status", &job, "--coordinator", &url]);
    assert!(text(&table.stdout).contains("closed"));

    let out = run(&[
        "model",
        "export",
        "--job",
        &job,
        "--round",
        "1",
        "--format",
        "pt",
        "--out",
        &d("m.pt"),
        "--coordinator",
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let loaded = tch::Tensor::load_multi(d("m.pt")).unwrap();
    let names: Vec<&str> = loaded.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"layers.0.weight") && names.contains(&"layers.0.bias"),
        "{names:?}"
    );
    let out = run(&[
        "model",
        "export",
        "--job",
        &job,
        "--round",
        "9",
        "--out",
        &d("x.safetensors"),
        "--coordinator",
        &url,
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("no round 9"));
}
