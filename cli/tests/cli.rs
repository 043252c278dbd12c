//! The `conclave` binary as a user runs it: separate coordinator and hospital processes on
//! loopback, the demo, and clear errors for bad job files, bad data and bad flags.

mod common;

use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;

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
    let _server = Server::start(port, &d("coordinator"));
    let job_file = two_hospital_job(&d("job.toml"), 2);
    let launched = once_up(&["job", "launch", &job_file, "--coordinator", &url]);
    let job = text(&launched.stdout).trim().to_string();
    partition_wdbc(&d("sites"), 2);

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
    each_finishes_at(hospitals, "2");

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
        status["participant_count"], 2,
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

    // A signed export is recorded in the ledger.
    let out = run(&[
        "model",
        "export",
        "--job",
        &job,
        "--out",
        &d("final.safetensors"),
        "--identity",
        &d("h1.identity"),
        "--record",
        "--coordinator",
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("recorded in the ledger"));

    // The ledger, read from the running coordinator's data directory, verifies and tells the
    // whole story of the job.
    let ledger = d("coordinator");
    let out = run(&["ledger", "verify", "--ledger", &ledger]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let head = text(&out.stdout).trim().to_string();
    assert_eq!(head.len(), 64);
    let out = run(&[
        "ledger", "show", "--ledger", &ledger, "--job", &job, "--format", "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let entries: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: std::collections::BTreeSet<&str> = entries
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "job_created",
        "participant_admitted",
        "round_opened",
        "update_accepted",
        "committee_attestation",
        "round_closed",
        "reward",
        "model_exported",
    ] {
        assert!(kinds.contains(kind), "{kind} missing from {kinds:?}");
    }
    let table = run(&["ledger", "show", "--ledger", &ledger, "--round", "2"]);
    assert!(text(&table.stdout).contains("round_closed"));
    let out = run(&[
        "ledger", "balances", "--ledger", &ledger, "--job", &job, "--format", "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let paid: u64 = text(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["total"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(paid, 2 * 1000, "two rounds pay their whole pool");
    for (format, file) in [
        ("csv", "l.csv"),
        ("jsonl", "l.jsonl"),
        ("parquet", "l.parquet"),
    ] {
        let out = run(&[
            "ledger",
            "export",
            "--ledger",
            &ledger,
            "--format",
            format,
            "--out",
            &d(file),
        ]);
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
    }
    let csv = std::fs::read_to_string(d("l.csv")).unwrap();
    assert!(csv.starts_with("index,time_unix_ms,time,kind,job_id,round,participant"));
    assert_eq!(csv.lines().count(), entries.len() + 1);
    let jsonl = std::fs::read_to_string(d("l.jsonl")).unwrap();
    assert_eq!(jsonl.lines().count(), entries.len());
    let first: serde_json::Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["kind"], "job_created");
    let parquet = std::fs::read(d("l.parquet")).unwrap();
    assert!(parquet.starts_with(b"PAR1") && parquet.ends_with(b"PAR1"));

    // A hospital keeps a verified replica; syncing again finds nothing new.
    let replica = d("replica.db");
    for _ in 0..2 {
        let out = run(&[
            "ledger",
            "sync",
            "--coordinator",
            &url,
            "--replica",
            &replica,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stdout).trim(),
            head,
            "the replica's head is the coordinator's"
        );
    }
    let out = run(&["ledger", "verify", "--ledger", &replica]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A coordinator killed with SIGKILL in the middle of a stream of joins restarts on a ledger
/// that verifies and holds every join it acknowledged.
#[test]
fn sigkill_during_appends_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let serve = |port: u16| Server::start(port, &d("c"));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut server = serve(port);
    // A plain job that never starts a round: every join is one ledger append.
    let job_file = d("job.toml");
    std::fs::write(
        &job_file,
        "name = \"crash\"\nrounds = 1\nmin_participants = 2\nstart_participants = 10000\nprivacy = \"plain\"\n[model]\nkind = \"logistic_regression\"\n[data]\nfeatures = [\"a\"]\nlabel = \"y\"\n",
    )
    .unwrap();
    let launched = once_up(&["job", "launch", &job_file, "--coordinator", &url]);
    let job = text(&launched.stdout).trim().to_string();
    let started = Instant::now();

    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (url, job, acked) = (url.clone(), job.clone(), acked.clone());
            rt.spawn(async move {
                loop {
                    let id = std::sync::Arc::new(conclave_crypto::Identity::generate());
                    let did = id.participant_id().to_string();
                    let Ok(mut c) = conclave_participant::client::Client::connect(&url, id).await
                    else {
                        return;
                    };
                    match c.join(&job, false).await {
                        Ok(_) => acked.lock().unwrap().push(did),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Let appends flow, then kill the coordinator mid-stream.
    while acked.lock().unwrap().len() < 150 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "joins are too slow"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();
    // Clients would retry through a restart; these stop where the coordinator died.
    for t in tasks {
        t.abort();
        let _ = rt.block_on(t);
    }
    let acked = acked.lock().unwrap().clone();

    let out = run(&["ledger", "verify", "--ledger", &d("c")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["ledger", "show", "--ledger", &d("c"), "--format", "json"]);
    let admitted: std::collections::BTreeSet<String> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["kind"] == "participant_admitted")
        .map(|e| e["participant"].as_str().unwrap().to_string())
        .collect();
    for did in &acked {
        assert!(
            admitted.contains(did),
            "acknowledged join of {did} was lost"
        );
    }
    // The coordinator restarts on it, with every acknowledged participant.
    let port = free_port();
    let _server = serve(port);
    let url = format!("http://127.0.0.1:{port}");
    let out = once_up(&[
        "job",
        "status",
        &job,
        "--coordinator",
        &url,
        "--format",
        "json",
    ]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let joined = status["participant_count"].as_u64().unwrap() as usize;
    assert!(joined >= acked.len(), "{joined} < {}", acked.len());
}

/// A test certificate authority that issues server certificates.
struct TestCa {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Conclave test consortium CA");
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) and its key, as PEM.
    fn issue(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Runs `args` and returns its output; fails the test if it has not ended within `secs`
/// (a `conclave serve` that wrongly accepts its settings would otherwise hang the test).
fn run_within(args: &[&str], secs: u64) -> Output {
    let mut child = conclave()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            panic!("conclave {args:?} still running after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Writes a key file with the given mode.
fn write_key(path: &str, pem: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// `conclave serve` over TLS on 127.0.0.1:`port`.
fn serve_tls(port: u16, data_dir: &str, cert: &str, key: &str) -> Server {
    Server(
        conclave()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", data_dir, "--tls-cert", cert, "--tls-key", key])
            .args(["--launcher", &launcher().did])
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Over TLS, the coordinator talks to clients that trust its CA (`--tls-ca`, or the system
/// store via SSL_CERT_FILE), and to no one else: not to clients trusting another CA, not in
/// plaintext; and a client refuses a certificate from its CA issued for another name. A whole
/// job runs over it: joins, the secure round, the ledger sync. Bad TLS files (no key, a shared
/// key, a certificate for a key, another certificate's key) stop `conclave serve` with the
/// reason.
#[test]
fn tls_coordinator_talks_only_to_clients_that_trust_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let (ca, other) = (TestCa::new(), TestCa::new());
    std::fs::write(d("ca.pem"), &ca.pem).unwrap();
    std::fs::write(d("other-ca.pem"), &other.pem).unwrap();
    let (cert, key) = ca.issue(&["127.0.0.1", "localhost"]);
    std::fs::write(d("cert.pem"), &cert).unwrap();
    write_key(&d("key.pem"), &key, 0o600);

    // Bad TLS settings stop the coordinator before it listens, naming the reason.
    let refused = |extra: &[&str], reason: &str| {
        let listen = format!("127.0.0.1:{}", free_port());
        let data = d("refused");
        let args = [&["serve", "--listen", &listen, "--data-dir", &data], extra].concat();
        let out = run_within(&args, 20);
        assert!(!out.status.success(), "served with {extra:?}");
        assert!(text(&out.stderr).contains(reason), "{}", text(&out.stderr));
    };
    refused(&["--tls-cert", &d("cert.pem")], "--tls-key");
    let (_, stranger_key) = ca.issue(&["127.0.0.1"]);
    for (file, content, mode, reason) in [
        ("shared-key.pem", &key, 0o644, "chmod 600"),
        ("not-a-key.pem", &cert, 0o600, "no PEM private key"),
        (
            "stranger-key.pem",
            &stranger_key,
            0o600,
            "does not go with the certificate",
        ),
    ] {
        write_key(&d(file), content, mode);
        refused(
            &["--tls-cert", &d("cert.pem"), "--tls-key", &d(file)],
            reason,
        );
    }

    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let _server = serve_tls(port, &d("coordinator"), &d("cert.pem"), &d("key.pem"));
    // A certificate from the trusted CA, but for another name.
    let (misnamed, misnamed_key) = ca.issue(&["coordinator.other.example"]);
    std::fs::write(d("misnamed.pem"), &misnamed).unwrap();
    write_key(&d("misnamed-key.pem"), &misnamed_key, 0o600);
    let misnamed_port = free_port();
    let _misnamed_server = serve_tls(
        misnamed_port,
        &d("misnamed-coordinator"),
        &d("misnamed.pem"),
        &d("misnamed-key.pem"),
    );
    let job_file = two_hospital_job(&d("job.toml"), 1);
    let ca = d("ca.pem");
    // The misnamed coordinator is up once it refuses for the name (and not for being down).
    let started = Instant::now();
    loop {
        let misnamed_url = format!("https://127.0.0.1:{misnamed_port}");
        let out = run(&[
            "job",
            "list",
            "--coordinator",
            &misnamed_url,
            "--tls-ca",
            &ca,
        ]);
        assert!(
            !out.status.success(),
            "answered under a certificate for another name"
        );
        if text(&out.stderr).contains("certificate") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let launched = once_up(&[
        "job",
        "launch",
        &job_file,
        "--coordinator",
        &url,
        "--tls-ca",
        &ca,
    ]);
    let job = text(&launched.stdout).trim().to_string();

    // No one else gets an answer.
    let status = |url: &str, extra: &[&str], ssl_cert_file: &str| {
        conclave()
            .args(["job", "status", &job, "--coordinator", url])
            .args(extra)
            .env("SSL_CERT_FILE", ssl_cert_file)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap()
    };
    let plaintext = status(&format!("http://127.0.0.1:{port}"), &[], &d("other-ca.pem"));
    assert!(!plaintext.status.success(), "plaintext was answered");
    let other_ca = d("other-ca.pem");
    for (extra, ssl_cert_file) in [
        (vec!["--tls-ca", other_ca.as_str()], ca.as_str()),
        (vec![], other_ca.as_str()),
    ] {
        let out = status(&url, &extra, ssl_cert_file);
        assert!(
            !out.status.success(),
            "answered a client that trusts another CA"
        );
        assert!(
            text(&out.stderr).contains("certificate"),
            "{}",
            text(&out.stderr)
        );
    }
    // With a CA named, plaintext is refused before connecting, except to loopback.
    let out = status("http://192.0.2.1:50051", &["--tls-ca", &ca], &ca);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("use https://"),
        "{}",
        text(&out.stderr)
    );
    let out = status(&url, &["--tls-ca", &job_file], &ca);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no PEM certificate"),
        "{}",
        text(&out.stderr)
    );
    // The system store (here SSL_CERT_FILE) is used when --tls-ca is not given.
    let out = status(&url, &[], &ca);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // A whole job over TLS.
    partition_wdbc(&d("sites"), 2);
    let hospitals: Vec<Child> = (1..=2)
        .map(|i| {
            let identity = d(&format!("h{i}.identity"));
            assert!(
                run(&["identity", "new", "--out", &identity])
                    .status
                    .success()
            );
            conclave()
                .args([
                    "join",
                    "--coordinator",
                    &url,
                    "--tls-ca",
                    &ca,
                    "--job",
                    &job,
                ])
                .args(["--identity", &identity])
                .args(["--data", &d(&format!("sites/train-{i}.csv"))])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    each_finishes_at(hospitals, "1");
    let out = run(&[
        "ledger",
        "sync",
        "--coordinator",
        &url,
        "--tls-ca",
        &ca,
        "--replica",
        &d("replica.db"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = run(&["ledger", "verify", "--ledger", &d("replica.db")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Only the operator's launchers launch jobs, and a job whose admission is closed is read only
/// by its launcher and the identities it lists; each refusal names the identity refused.
#[test]
fn only_launchers_launch_and_a_closed_job_is_read_only_by_whom_it_admits() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _server = Server::start(port, &d("coordinator"));
    let did_of = |file: &str| {
        let out = run(&["identity", "new", "--out", file]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let (stranger, hospital) = (d("stranger.identity"), d("hospital.identity"));
    let (stranger_did, hospital_did) = (did_of(&stranger), did_of(&hospital));
    let job_file = two_hospital_job(&d("job.toml"), 1);
    let closed = std::fs::read_to_string(&job_file).unwrap().replacen(
        "[model]",
        &format!("admission = [\"{hospital_did}\"]\n\n[model]"),
        1,
    );
    std::fs::write(&job_file, closed).unwrap();

    let out = once_up(&["job", "list", "--coordinator", &url]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let launch = |identity: &str| {
        conclave()
            .args(["job", "launch", &job_file, "--coordinator", &url])
            .args(["--identity", identity])
            .output()
            .unwrap()
    };
    let refused = launch(&stranger);
    assert!(!refused.status.success(), "a stranger launched a job");
    let err = text(&refused.stderr);
    assert!(
        err.contains(&stranger_did) && err.contains("--launcher"),
        "{err}"
    );
    let launched = launch(&launcher().file);
    assert!(launched.status.success(), "{}", text(&launched.stderr));
    let job = text(&launched.stdout).trim().to_string();

    let status = |identity: Option<&str>| {
        let mut cmd = conclave();
        cmd.args(["job", "status", &job, "--coordinator", &url]);
        match identity {
            Some(file) => cmd.args(["--identity", file]),
            None => cmd.env_remove("CONCLAVE_IDENTITY"),
        };
        cmd.output().unwrap()
    };
    let out = status(Some(&stranger));
    assert!(!out.status.success(), "a stranger read a closed job");
    let err = text(&out.stderr);
    assert!(
        err.contains(&stranger_did) && err.contains("may not read"),
        "{err}"
    );
    let out = status(None);
    assert!(!out.status.success(), "an unsigned read was answered");
    assert!(
        text(&out.stderr).contains("not signed"),
        "{}",
        text(&out.stderr)
    );
    for reader in [&hospital, &launcher().file] {
        let out = status(Some(reader));
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    // The stranger's list is empty; the hospital's holds the job.
    let list = |identity: &str| {
        let out = run(&[
            "job",
            "list",
            "--coordinator",
            &url,
            "--format",
            "json",
            "--identity",
            identity,
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    assert_eq!(list(&stranger).as_array().unwrap().len(), 0);
    assert_eq!(list(&hospital)[0]["job_id"], job.as_str());

    // The operator's flags are checked before anything starts.
    for (flags, reason) in [
        (&["--launcher", "did:key:z6Mnot-a-key"][..], "--launcher"),
        (&["--max-jobs", "0"][..], "--max-jobs"),
        (&["--upload-idle-secs", "0"][..], "--upload-idle-secs"),
    ] {
        let listen = format!("127.0.0.1:{}", free_port());
        let data = d("refused");
        let args = [&["serve", "--listen", &listen, "--data-dir", &data], flags].concat();
        let out = run_within(&args, 20);
        assert!(!out.status.success(), "served with {flags:?}");
        assert!(text(&out.stderr).contains(reason), "{}", text(&out.stderr));
    }
}
