//! Nothing accepted is lost when the coordinator stops: a restarted coordinator on the same
//! data directory still holds the job, its participants and every acknowledged upload, and the
//! round goes on.

use std::sync::Arc;

use conclave_aggregation::Strategy;
use conclave_aggregation::strategy::{Adaptive, SecondMoment};
use conclave_crypto::Identity;
use conclave_participant::client::download_model;
use conclave_proto::v1;
use conclave_tests::{TestCoordinator, client, launcher, wdbc_job};

/// A stopped server leaves nothing of its state running: its round drivers have finished
/// before `serve` returns, so a restarted coordinator is the only writer of its data
/// directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_drivers_end_before_the_server_stops() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCoordinator::start(dir.path()).await;
    first.launch(&wdbc_job(2, 2, 600)).await;
    first.launch(&wdbc_job(3, 2, 600)).await;
    let state = Arc::clone(&first.state);
    assert_eq!(state.drivers_running(), 2);
    first.stop().await;
    assert_eq!(state.drivers_running(), 0, "drivers outlived serve");
}

/// A request captured before a restart (its nonce forgotten with the old process) is refused
/// by the restarted coordinator as signed before it started, and changes nothing; the
/// participant's own client signs it again and gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_captured_before_a_restart_are_not_replayed_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let alice = Arc::new(Identity::generate());
    let first = TestCoordinator::start(dir.path()).await;
    let job = first.launch(&wdbc_job(2, 2, 600)).await;
    let mut a = client(&first, Arc::clone(&alice)).await;
    a.join(&job, false).await.unwrap();
    let captured = conclave_tests::join_request(
        &Identity::generate(),
        &job,
        Identity::generate().public().sealing_key.to_vec(),
        Vec::new(),
    );
    let mut work = v1::WorkRequest {
        job_id: job.clone(),
        auth: None,
    };
    conclave_participant::client::sign(&alice, &mut work);
    let url = first.url.clone();
    first.stop().await;
    drop(a);
    // Signed in the old process's life, sent to the new one.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let second = TestCoordinator::restart(dir.path(), &url).await;
    let mut rounds = second.rounds().await;
    let status = rounds.join(captured).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted, "{}", status.message());
    assert!(status.message().contains("before this coordinator started"));
    let status = rounds.work(work).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Aborted);
    assert_eq!(second.info(&job).await.participant_count, 1);
    client(&second, Arc::new(Identity::generate()))
        .await
        .join(&job, false)
        .await
        .unwrap();
    assert_eq!(second.info(&job).await.participant_count, 2);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_jobs_participants_and_acknowledged_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
    );
    let first = TestCoordinator::start(dir.path()).await;
    let job = first.launch(&wdbc_job(2, 2, 600)).await;
    let dim = first.info(&job).await.dim as usize;
    let mut a = client(&first, Arc::clone(&alice)).await;
    a.join(&job, false).await.unwrap();
    client(&first, Arc::clone(&bob))
        .await
        .join(&job, false)
        .await
        .unwrap();
    a.upload(&job, 1, 10, &vec![1.0; dim]).await.unwrap();
    let before = first.info(&job).await;
    first.stop().await;
    drop(a);

    let second = TestCoordinator::start(dir.path()).await;
    let after = second.info(&job).await;
    assert_eq!(
        after, before,
        "the restarted coordinator reports the same job state"
    );
    let mut a = client(&second, Arc::clone(&alice)).await;
    assert_eq!(
        a.upload(&job, 1, 10, &vec![1.0; dim])
            .await
            .unwrap_err()
            .code(),
        Some(tonic::Code::AlreadyExists)
    );
    let mut b = client(&second, Arc::clone(&bob)).await;
    b.upload(&job, 1, 30, &vec![-1.0; dim]).await.unwrap();
    let info = second.wait_for_model(&job, 1).await;
    assert_eq!(info.model_version, 1);
    let mut rounds = second.rounds().await;
    let v0 = download_model(&mut rounds, Some(launcher()), &job, 0, None)
        .await
        .unwrap();
    let v1 = download_model(&mut rounds, Some(launcher()), &job, 1, None)
        .await
        .unwrap();
    // (10 * 1 + 30 * -1) / 40 = -0.5: alice's pre-restart upload was counted.
    assert!(v0.iter().zip(&v1).all(|(x, y)| (y - x + 0.5).abs() < 1e-6));
    second.stop().await;
}

/// FedAdam's moments are stored beside the model and survive a restart: the round closed after
/// the restart steps from the moments of the round before it, as an uninterrupted FedAdam run
/// does (recomputed here from the paper's rule), and not from fresh ones; only the latest
/// state file is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_strategys_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        Arc::new(Identity::generate()),
        Arc::new(Identity::generate()),
    );
    let (lr, b1, b2, tau) = (0.1f64, 0.9f64, 0.99f64, 1e-3f64);
    let mut spec = wdbc_job(3, 2, 600);
    spec.strategy = Strategy::Adaptive(Adaptive {
        second_moment: SecondMoment::Adam,
        server_lr: lr as f32,
        beta1: b1 as f32,
        beta2: b2 as f32,
        tau: tau as f32,
    });
    let first = TestCoordinator::start(dir.path()).await;
    let job = first.launch(&spec).await;
    let dim = first.info(&job).await.dim as usize;
    let mut a = client(&first, Arc::clone(&alice)).await;
    let mut b = client(&first, Arc::clone(&bob)).await;
    a.join(&job, false).await.unwrap();
    b.join(&job, false).await.unwrap();
    // Round 1's mean update: (10 · 1 + 30 · −1) / 40 = −0.5.
    a.upload(&job, 1, 10, &vec![1.0; dim]).await.unwrap();
    b.upload(&job, 1, 30, &vec![-1.0; dim]).await.unwrap();
    first.wait_for_model(&job, 1).await;
    first.stop().await;
    drop((a, b));

    let second = TestCoordinator::start(dir.path()).await;
    let mut a = client(&second, Arc::clone(&alice)).await;
    let mut b = client(&second, Arc::clone(&bob)).await;
    // Round 2's: (10 · 0.5 + 10 · 0.25) / 20 = 0.375.
    a.upload(&job, 2, 10, &vec![0.5; dim]).await.unwrap();
    b.upload(&job, 2, 10, &vec![0.25; dim]).await.unwrap();
    second.wait_for_model(&job, 2).await;
    let mut rounds = second.rounds().await;
    let mut models = Vec::new();
    for version in 0..3 {
        models.push(
            download_model(&mut rounds, Some(launcher()), &job, version, None)
                .await
                .unwrap(),
        );
    }
    let step = |x: f64, m: f64, v: f64, d: f64| {
        let m = b1 * m + (1.0 - b1) * d;
        let v = b2 * v + (1.0 - b2) * d * d;
        (x + lr * m / (v.sqrt() + tau), m, v)
    };
    let close = |got: f32, want: f64| (got as f64 - want).abs() <= 1e-5 * (1.0 + want.abs());
    for (k, ((&x0, &got1), &got2)) in models[0].iter().zip(&models[1]).zip(&models[2]).enumerate() {
        let (x1, m1, v1) = step(x0 as f64, 0.0, tau * tau, -0.5);
        assert!(close(got1, x1), "v1[{k}] = {got1}, FedAdam gives {x1}");
        let (x2, _, _) = step(x1, m1, v1, 0.375);
        let (fresh, _, _) = step(x1, 0.0, tau * tau, 0.375);
        assert!(
            close(got2, x2),
            "v2[{k}] = {got2}: FedAdam with the moments carried over gives {x2}, with fresh ones {fresh}"
        );
    }
    assert_eq!(models[0].len(), dim);
    let models_dir = dir.path().join("jobs").join(&job).join("models");
    assert!(models_dir.join("v2.state").exists());
    assert!(
        !models_dir.join("v1.state").exists(),
        "a superseded state is deleted"
    );
    second.stop().await;

    // A state file that does not match its record stops the coordinator, naming the job.
    let state = models_dir.join("v2.state");
    let good = std::fs::read(&state).unwrap();
    let mut bytes = good.clone();
    // The low mantissa byte of the last value: still a finite number, another one.
    let at = bytes.len() - 4;
    bytes[at] ^= 1;
    std::fs::write(&state, &bytes).unwrap();
    let err = conclave_coordinator::State::open(dir.path(), conclave_tests::test_policy())
        .err()
        .expect("a changed state file is refused");
    assert!(err.to_string().contains(&job), "{err}");
    assert!(err.to_string().contains("does not match its hash"), "{err}");

    // Put back, it starts; a state file a crash left behind is swept. When the job finishes,
    // no state is kept.
    std::fs::write(&state, &good).unwrap();
    std::fs::write(models_dir.join("v1.state"), b"left by a crash").unwrap();
    let third = TestCoordinator::start(dir.path()).await;
    assert!(
        !models_dir.join("v1.state").exists(),
        "a stale state is swept at start"
    );
    let mut a = client(&third, Arc::clone(&alice)).await;
    let mut b = client(&third, Arc::clone(&bob)).await;
    a.upload(&job, 3, 10, &vec![0.5; dim]).await.unwrap();
    b.upload(&job, 3, 10, &vec![0.5; dim]).await.unwrap();
    let info = third.wait_for_model(&job, 3).await;
    assert_eq!(info.state, v1::JobState::Finished as i32);
    assert!(!state.exists(), "a finished job keeps no state");
    third.stop().await;
    // And it starts again without one.
    TestCoordinator::start(dir.path()).await.stop().await;
}

/// A job record changed behind the coordinator's back (a participant or an accepted upload
/// deleted, a model hash or the finished flag changed) no longer matches the ledger: the coordinator refuses to start on
/// it, naming the job, rather than resume from it and sign entries its verifier rejects. Put
/// back, it starts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_disagrees_with_the_ledger_stops_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let first = TestCoordinator::start(dir.path()).await;
    let job = first.launch(&wdbc_job(2, 2, 600)).await;
    let dim = first.info(&job).await.dim as usize;
    let mut a = client(&first, Arc::new(Identity::generate())).await;
    a.join(&job, false).await.unwrap();
    client(&first, Arc::new(Identity::generate()))
        .await
        .join(&job, false)
        .await
        .unwrap();
    a.upload(&job, 1, 10, &vec![1.0; dim]).await.unwrap();
    first.stop().await;
    drop(a);

    let db = rusqlite::Connection::open(dir.path().join("conclave.db")).unwrap();
    // Read from its parts, written back whole: both are ways a coordinator finds a record.
    let original = conclave_tests::records::read(&db, &job);
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 6] = [
        ("participants", |r| {
            r["participants"].as_array_mut().unwrap().pop();
        }),
        ("open round 1", |r| {
            r["rounds"][0]["uploads"].as_array_mut().unwrap().clear();
        }),
        ("model versions", |r| {
            r["model_hashes"][0] = "00".repeat(32).into()
        }),
        ("finished", |r| r["finished"] = true.into()),
        ("job spec", |r| {
            // The same job flipped to other settings (here: 3 rounds instead of 2).
            let mut spec = conclave_tests::wdbc_job(3, 2, 600).to_proto();
            spec.rounds = 3;
            r["spec"] = hex::encode(prost::Message::encode_to_vec(&spec)).into();
        }),
        ("sealing key", |r| {
            r["participants"][0]["sealing_key"] = "11".repeat(32).into()
        }),
    ];
    for (what, edit) in edits {
        let mut record = original.clone();
        edit(&mut record);
        conclave_tests::records::replace(&db, &job, &record);
        let err = conclave_coordinator::State::open(dir.path(), conclave_tests::test_policy())
            .err()
            .expect("a coordinator started on a record the ledger contradicts")
            .to_string();
        assert!(
            err.contains("disagree with the ledger") && err.contains(&job) && err.contains(what),
            "{err}"
        );
    }
    conclave_tests::records::replace(&db, &job, &original);
    let second = TestCoordinator::start(dir.path()).await;
    assert_eq!(second.info(&job).await.rounds[0].uploaded_count, 1);
    second.stop().await;
}
