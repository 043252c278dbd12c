//! A plain round as the operator's metrics show it: updates accepted, refusals counted by
//! their reason, the hospital that never sent its update counted as a dropout, and each phase
//! of the round (open, collect, close; no committee phases) timed once.

use std::time::{Duration, Instant};

use conclave_crypto::Identity;
use conclave_proto::v1::{self, work_item::Item};
use conclave_tests::metrics::{metric_values, record_metrics};
use conclave_tests::{TestCoordinator, client, wdbc_job_starting_at};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_dropouts_and_phases_are_counted() {
    record_metrics();
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(dir.path()).await;
    // Three hospitals train in the round; two updates are enough, the round waits 2 s.
    let job = coordinator.launch(&wdbc_job_starting_at(1, 2, 3, 2)).await;
    let dim = coordinator.info(&job).await.dim as usize;
    let mut hospitals = Vec::new();
    for _ in 0..3 {
        let mut c = client(&coordinator, Identity::generate()).await;
        c.join(&job, false).await.unwrap();
        hospitals.push(c);
    }
    let mut round = 0;
    for (i, c) in hospitals.iter_mut().enumerate() {
        let mut work = c.work(&job).await.unwrap();
        while let Some(Ok(item)) = work.next().await {
            if let Some(Item::Train(t)) = item.item {
                round = t.round;
                break;
            }
        }
        if i < 2 {
            c.upload(&job, round, 10, &vec![0.25; dim]).await.unwrap();
        } else {
            // The third sends an update of the wrong size (refused), then nothing.
            let e = c.upload(&job, round, 10, &vec![0.25; dim + 1]).await;
            assert!(e.is_err());
        }
    }
    // A second update from the first hospital is a duplicate.
    let e = hospitals[0].upload(&job, round, 10, &vec![0.5; dim]).await;
    assert!(e.is_err());

    let started = Instant::now();
    while coordinator.info(&job).await.model_version < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "round never closed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let info = coordinator.info(&job).await;
    assert_eq!(info.rounds[0].state, v1::RoundState::Closed as i32);

    let metrics = metric_values();
    let value = |k: &str| conclave_tests::metrics::value(&metrics, k);
    assert_eq!(value("conclave.uploads{outcome=accepted}"), 2.0);
    assert_eq!(
        value("conclave.uploads{outcome=refused,reason=wrong_length}"),
        1.0
    );
    assert_eq!(
        value("conclave.uploads{outcome=refused,reason=duplicate_upload}"),
        1.0
    );
    assert_eq!(
        value("conclave.dropouts{privacy=plain,role=participant}"),
        1.0
    );
    assert!(!metrics.contains_key("conclave.dropouts{privacy=plain,role=committee}"));
    for phase in ["open", "collect", "close"] {
        assert_eq!(
            value(&format!(
                "conclave.round.phase.duration{{phase={phase},privacy=plain}}"
            )),
            1.0
        );
    }
    assert!(!metrics.keys().any(|k| k.contains("phase=check")));
    assert_eq!(
        value("conclave.round.duration{outcome=closed,privacy=plain}"),
        1.0
    );
    // At least the two accepted updates (4 bytes a parameter) came in.
    assert!(
        value("conclave.rpc.bytes_in{rpc.method=/conclave.v1.Rounds/UploadUpdate}")
            >= (2 * 4 * dim) as f64
    );
    coordinator.stop().await;
}
