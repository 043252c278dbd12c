//! Nothing accepted is lost when the coordinator stops: a restarted coordinator on the same
//! data directory still holds the job, its participants and every acknowledged upload, and the
//! round goes on.

use std::sync::Arc;

use conclave_crypto::Identity;
use conclave_participant::client::download_model;
use conclave_tests::{TestCoordinator, client, wdbc_job};

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
    a.join(&job).await.unwrap();
    client(&first, Arc::clone(&bob))
        .await
        .join(&job)
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
    let info = second.info(&job).await;
    assert_eq!(info.model_version, 1);
    let mut rounds = second.rounds().await;
    let v0 = download_model(&mut rounds, &job, 0, None).await.unwrap();
    let v1 = download_model(&mut rounds, &job, 1, None).await.unwrap();
    // (10 * 1 + 30 * -1) / 40 = -0.5: alice's pre-restart upload was counted.
    assert!(v0.iter().zip(&v1).all(|(x, y)| (y - x + 0.5).abs() < 1e-6));
    second.stop().await;
}
