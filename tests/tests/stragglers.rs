//! A participant that disconnects mid-round, or dies halfway through its upload, does not hold
//! the round past its deadline, and nothing it sent half-way is aggregated.

use std::time::{Duration, Instant};

use conclave_crypto::Identity;
use conclave_participant::client::{download_model, upload_messages};
use conclave_proto::v1::{self, work_item::Item};
use conclave_tests::{TestCoordinator, client, launcher, wdbc_job, wdbc_job_starting_at};
use tokio_stream::StreamExt;

async fn next_train(stream: &mut tonic::Streaming<v1::WorkItem>) -> v1::TrainTask {
    loop {
        match stream
            .next()
            .await
            .expect("stream open")
            .expect("work item")
            .item
        {
            Some(Item::Train(t)) => return t,
            Some(_) => continue,
            None => panic!("empty work item"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropouts_do_not_block_the_round_past_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    let deadline_secs = 3;
    // Four hospitals train in the round; two updates are enough to aggregate.
    let job = coordinator
        .launch(&wdbc_job_starting_at(1, 2, 4, deadline_secs))
        .await;
    let dim = coordinator.info(&job).await.dim as usize;

    let mut quitter = client(&coordinator, Identity::generate()).await;
    let mut dying = client(&coordinator, Identity::generate()).await;
    quitter.join(&job, false).await.unwrap();
    dying.join(&job, false).await.unwrap();
    let mut good = Vec::new();
    for _ in 0..2 {
        let mut c = client(&coordinator, Identity::generate()).await;
        c.join(&job, false).await.unwrap();
        good.push(c);
    }
    let started = Instant::now();
    // The quitter receives its training task and disconnects.
    let mut quitter_work = quitter.work(&job).await.unwrap();
    let task = next_train(&mut quitter_work).await;
    assert_eq!(task.round, 1);
    drop(quitter_work);
    drop(quitter);

    let deltas = [vec![0.5f32; dim], vec![-0.25f32; dim]];
    let samples = [30u64, 10];
    for (i, c) in good.iter_mut().enumerate() {
        let mut work = c.work(&job).await.unwrap();
        let task = next_train(&mut work).await;
        c.upload(&job, task.round, samples[i], &deltas[i])
            .await
            .unwrap();
    }
    // Half an upload from the dying hospital, then the connection is cut.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut messages =
        upload_messages(dying.identity(), &job, 1, 5, &vec![9.0f32; dim]).into_iter();
    tx.send(messages.next().unwrap()).await.unwrap();
    let mut rounds = coordinator.rounds().await;
    let partial = tokio::spawn(async move {
        rounds
            .upload_update(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    partial.abort();
    drop(tx);

    // The round closes at its deadline with the two complete uploads.
    let info = loop {
        let info = coordinator.info(&job).await;
        if info.model_version == 1 {
            break info;
        }
        assert!(
            started.elapsed() < Duration::from_secs(deadline_secs as u64 + 5),
            "round still open long after its deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_secs(deadline_secs as u64 - 1),
        "closed before the deadline without the quitter"
    );
    let round = &info.rounds[0];
    assert_eq!(round.expected_count, 4);
    assert_eq!(round.uploaded_count, 2);
    assert_eq!(round.total_samples, 40);
    let mut rounds = coordinator.rounds().await;
    let v0 = download_model(&mut rounds, Some(launcher()), &job, 0, None)
        .await
        .unwrap();
    let v1 = download_model(&mut rounds, Some(launcher()), &job, 1, None)
        .await
        .unwrap();
    for (a, b) in v0.iter().zip(&v1) {
        // (30 * 0.5 + 10 * -0.25) / 40 = 0.3125
        assert!((b - a - 0.3125).abs() < 1e-6);
    }
    coordinator.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_with_too_few_uploads_fails_and_reveals_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    let job = coordinator.launch(&wdbc_job(2, 2, 1)).await;
    let dim = coordinator.info(&job).await.dim as usize;
    let mut a = client(&coordinator, Identity::generate()).await;
    let mut b = client(&coordinator, Identity::generate()).await;
    a.join(&job, false).await.unwrap();
    b.join(&job, false).await.unwrap();
    let mut work = a.work(&job).await.unwrap();
    let task = next_train(&mut work).await;
    a.upload(&job, task.round, 10, &vec![1.0; dim])
        .await
        .unwrap();
    // b never uploads: round 1 fails at its deadline, round 2 opens from the same model.
    let started = Instant::now();
    let info = loop {
        let info = coordinator.info(&job).await;
        if info.rounds.len() == 2 {
            break info;
        }
        assert!(started.elapsed() < Duration::from_secs(6));
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info.rounds[0].state, v1::RoundState::Failed as i32);
    assert_eq!(info.model_version, 0, "no model from a failed round");
    assert_eq!(info.rounds[1].base_version, 0);
    coordinator.stop().await;
}

/// Once a round has min_participants updates, it stops waiting for a participant whose work
/// stream has been gone for the server's dropout grace period (a hospital that died, or did
/// not come back after a coordinator restart), long before its deadline; a participant still
/// connected is waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_stops_waiting_for_a_participant_gone_past_the_grace_period() {
    let dir = tempfile::tempdir().unwrap();
    let policy = conclave_coordinator::ServerPolicy {
        dropout_grace: Duration::from_secs(1),
        ..conclave_tests::test_policy()
    };
    let coordinator = TestCoordinator::start_with(dir.path(), policy).await;
    // Three train in each round, two updates are enough; deadlines of 10 minutes.
    let job = coordinator
        .launch(&wdbc_job_starting_at(2, 2, 3, 600))
        .await;
    let dim = coordinator.info(&job).await.dim as usize;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut c = client(&coordinator, Identity::generate()).await;
        c.join(&job, false).await.unwrap();
        clients.push(c);
    }
    let mut streams = Vec::new();
    for c in clients.iter_mut() {
        streams.push(c.work(&job).await.unwrap());
    }
    for (c, s) in clients.iter_mut().zip(streams.iter_mut()).take(2) {
        let task = next_train(s).await;
        c.upload(&job, task.round, 10, &vec![0.1f32; dim])
            .await
            .unwrap();
    }
    // The third is still connected: the round waits for it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        coordinator.info(&job).await.model_version,
        0,
        "closed without a connected participant"
    );
    // It goes away: the round closes about a grace period later, with the two updates.
    let gone = Instant::now();
    drop(streams.pop());
    let info = loop {
        let info = coordinator.info(&job).await;
        if info.model_version == 1 {
            break info;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(30),
            "still waiting for a participant long gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        gone.elapsed() >= Duration::from_millis(900),
        "closed before the grace period"
    );
    assert_eq!(info.rounds[0].uploaded_count, 2);
    assert_eq!(info.rounds[0].expected_count, 3);
    coordinator.stop().await;
}
