//! A secure round survives a coordinator restart: masked uploads acknowledged before the
//! restart are on disk, the restarted coordinator resumes the round from them, and the sum is
//! unmasked once the last participant uploads.

use std::sync::Arc;
use std::time::Duration;

use conclave_aggregation::JobSpec;
use conclave_crypto::Identity;
use conclave_participant::ParticipantError;
use conclave_participant::client::{Client, download_model};
use conclave_proto::v1::{self, work_item::Item};
use conclave_tests::{TestCoordinator, launcher, secagg_duties, wdbc_secagg_job};
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// A participant that uploads `delta` once `gate` opens and does its draw and committee
/// duties, reconnecting its work stream whenever the coordinator goes away.
#[allow(clippy::too_many_arguments)]
async fn scripted(
    url: String,
    identity: Arc<Identity>,
    job: String,
    spec: Arc<JobSpec>,
    delta: Vec<f32>,
    mut gate: watch::Receiver<bool>,
    mut reveal_gate: watch::Receiver<bool>,
    state: std::path::PathBuf,
) -> Result<(), ParticipantError> {
    let mut client = Client::connect(&url, Arc::clone(&identity)).await?;
    client.join(&job, true).await?;
    // Plans after the restart must still carry the coordinator's signature (its key is kept
    // in its data directory) and match the ledger.
    let mut duties = secagg_duties(&url, identity, &job, &state).await;
    for _ in 0..100 {
        let Ok(mut work) = client.work(&job).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Some(Ok(item)) = work.next().await {
            match item.item {
                Some(Item::Train(task)) => {
                    while !*gate.borrow_and_update() {
                        gate.changed().await.expect("gate kept open");
                    }
                    duties
                        .upload(&mut client, &spec, &task, delta.clone(), 100)
                        .await?;
                }
                // As the participant runner: a failed call waits for the next ask.
                Some(Item::Draw(task)) => {
                    let _ = duties.draw(&mut client, task).await;
                }
                Some(Item::Check(task)) => {
                    let _ = duties.check(&mut client, task).await;
                }
                Some(Item::Sign(task)) => {
                    let _ = duties.sign(&mut client, task).await;
                }
                Some(Item::Reveal(task)) => {
                    while !*reveal_gate.borrow_and_update() {
                        reveal_gate.changed().await.expect("gate kept open");
                    }
                    let _ = duties.reveal(&mut client, task).await;
                }
                Some(Item::Done(_)) => return Ok(()),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(ParticipantError::StreamEnded)
}

/// A coordinator in `dir` with a one-round secure job for three participants (c = 3, t = 2);
/// returns it, the job's spec and id, and the model's dimension.
/// Waits for every scripted participant; each must end without error within a minute.
async fn finish(tasks: Vec<tokio::task::JoinHandle<Result<(), ParticipantError>>>) {
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("participants finish")
            .unwrap()
            .unwrap();
    }
}

async fn secure_job(dir: &std::path::Path) -> (TestCoordinator, Arc<JobSpec>, String, usize) {
    let coordinator = TestCoordinator::start(dir).await;
    let spec = Arc::new(wdbc_secagg_job(1, 2, 3, 60, (3, 2), 10));
    let job = coordinator.launch(&spec).await;
    let dim = coordinator.info(&job).await.dim as usize;
    (coordinator, spec, job, dim)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_round_resumes_after_a_coordinator_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (first, spec, job, dim) = secure_job(dir.path()).await;
    let url = first.url.clone();

    let deltas: Vec<Vec<f32>> = (0..3)
        .map(|i| {
            (0..dim)
                .map(|k| ((i * 7 + k) % 5) as f32 * 0.01 - 0.02)
                .collect()
        })
        .collect();
    let (open, closed) = (watch::channel(true).1, watch::channel(false));
    let mut tasks = Vec::new();
    for (i, delta) in deltas.iter().enumerate() {
        let gate = if i < 2 {
            open.clone()
        } else {
            closed.1.clone()
        };
        tasks.push(tokio::spawn(scripted(
            url.clone(),
            Arc::new(Identity::generate()),
            job.clone(),
            Arc::clone(&spec),
            delta.clone(),
            gate,
            open.clone(),
            dir.path().join(format!("participant-{i}")),
        )));
    }
    // Two uploads acknowledged, then the coordinator stops.
    let before = loop {
        let info = first.info(&job).await;
        if info.rounds.first().is_some_and(|r| r.uploaded_count == 2) {
            break info;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    first.stop().await;

    let second = TestCoordinator::restart(dir.path(), &url).await;
    let after = second.info(&job).await;
    assert_eq!(
        (
            after.rounds[0].uploaded_count,
            after.rounds[0].total_samples
        ),
        (
            before.rounds[0].uploaded_count,
            before.rounds[0].total_samples
        ),
        "acknowledged uploads survived"
    );
    assert_eq!(after.rounds[0].state, v1::RoundState::Open as i32);
    // The third participant uploads; the round completes with all three.
    closed.0.send(true).unwrap();
    finish(tasks).await;
    let info = second.info(&job).await;
    assert_eq!(info.model_version, 1);
    assert_eq!(info.rounds[0].uploaded_count, 3);
    assert_eq!(info.rounds[0].total_samples, 300);
    let mut rounds = second.rounds().await;
    let v0 = download_model(&mut rounds, Some(launcher()), &job, 0, None)
        .await
        .unwrap();
    let v1 = download_model(&mut rounds, Some(launcher()), &job, 1, None)
        .await
        .unwrap();
    let tolerance = 4.0 / spec.secagg().unwrap().quant.scale() * 1000.0 / 100.0;
    for k in 0..dim {
        let mean = deltas.iter().map(|d| d[k] as f64).sum::<f64>() / 3.0;
        assert!(
            (v1[k] as f64 - v0[k] as f64 - mean).abs() <= tolerance,
            "parameter {k}"
        );
    }
    second.stop().await;
}

/// The coordinator restarts after the committee approved the statement but before it
/// revealed: the resumed round proposes the same statement, the members' repeated approvals
/// count again without a second attestation in the ledger, and the ledger still verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_repeated_after_a_restart_are_recorded_once() {
    let dir = tempfile::tempdir().unwrap();
    let (first, spec, job, dim) = secure_job(dir.path()).await;
    let url = first.url.clone();
    let open = watch::channel(true).1;
    let reveals = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..3 {
        let delta: Vec<f32> = (0..dim).map(|k| ((i + k) % 3) as f32 * 0.01).collect();
        tasks.push(tokio::spawn(scripted(
            url.clone(),
            Arc::new(Identity::generate()),
            job.clone(),
            Arc::clone(&spec),
            delta,
            open.clone(),
            reveals.1.clone(),
            dir.path().join(format!("participant-{i}")),
        )));
    }
    // Wait until t = 2 attestations are in the ledger, then stop the coordinator.
    let attestations = |ledger: &conclave_ledger::Ledger| {
        let mut n = std::collections::BTreeMap::<String, usize>::new();
        ledger
            .for_each(|e| {
                if let conclave_ledger::Payload::CommitteeAttestation(a) = e.payload() {
                    *n.entry(a.member.clone()).or_default() += 1;
                }
            })
            .unwrap();
        n
    };
    let started = std::time::Instant::now();
    while attestations(first.state.ledger()).len() < 2 {
        assert!(started.elapsed() < Duration::from_secs(60), "no approvals");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;

    let second = TestCoordinator::restart(dir.path(), &url).await;
    reveals.0.send(true).unwrap();
    finish(tasks).await;
    assert_eq!(second.info(&job).await.model_version, 1);
    let ledger = second.state.ledger();
    assert!(
        attestations(ledger).values().all(|&n| n == 1),
        "one attestation per member: {:?}",
        attestations(ledger)
    );
    let report = conclave_ledger::verify::verify_ledger(ledger, None).unwrap();
    assert_eq!(report.problem, None);
    second.stop().await;
    // And the coordinator starts again on that ledger.
    let third = TestCoordinator::restart(dir.path(), &url).await;
    third.stop().await;
}

/// The startup cross-check covers a secure round's stored plan: a plan edited in the record
/// (here: its committee swapped for other keys, re-encoded) is not the one the ledger's
/// round_opened names, so the coordinator refuses to start on it; put back, it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_stored_plan_stops_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let (first, spec, job, dim) = secure_job(dir.path()).await;
    let url = first.url.clone();
    let open = watch::channel(true).1;
    let closed = watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..3 {
        let gate = if i < 2 {
            open.clone()
        } else {
            closed.1.clone()
        };
        tasks.push(tokio::spawn(scripted(
            url.clone(),
            Arc::new(Identity::generate()),
            job.clone(),
            Arc::clone(&spec),
            vec![0.01; dim],
            gate,
            open.clone(),
            dir.path().join(format!("participant-{i}")),
        )));
    }
    while first
        .info(&job)
        .await
        .rounds
        .first()
        .is_none_or(|r| r.uploaded_count < 2)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    first.stop().await;
    for t in &tasks {
        t.abort();
    }
    let db = rusqlite::Connection::open(dir.path().join("conclave.db")).unwrap();
    let original = conclave_tests::records::read(&db, &job);
    let mut record = original.clone();
    let plan_hex = record["rounds"][0]["plan"].as_str().unwrap().to_string();
    let mut plan =
        <v1::SecaggPlan as prost::Message>::decode(hex::decode(&plan_hex).unwrap().as_slice())
            .unwrap();
    plan.committee[0].sealing_key = Identity::generate().public().sealing_key.to_vec();
    record["rounds"][0]["plan"] = hex::encode(prost::Message::encode_to_vec(&plan)).into();
    conclave_tests::records::replace(&db, &job, &record);
    let err = conclave_coordinator::State::open(dir.path(), conclave_tests::test_policy())
        .err()
        .expect("a coordinator started on a stored plan the ledger does not name")
        .to_string();
    assert!(err.contains("stored round plan"), "{err}");
    conclave_tests::records::replace(&db, &job, &original);
    let second = TestCoordinator::restart(dir.path(), &url).await;
    assert_eq!(second.info(&job).await.rounds[0].uploaded_count, 2);
    second.stop().await;
}
