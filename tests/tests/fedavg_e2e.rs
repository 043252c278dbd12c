//! A coordinator and three hospitals over loopback gRPC, three rounds of plain FedAvg with real
//! tch training: each new global model is the sample-weighted mean of the updates the
//! hospitals produced (recomputed here independently), and accuracy improves over round 0.

use std::collections::BTreeMap;
use std::sync::Arc;

use conclave_crypto::Identity;
use conclave_participant::Event;
use conclave_participant::client::download_model;
use conclave_tests::{
    TestCoordinator, hospital_files, launcher, participant_config, run_tagged, wdbc_job,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_hospitals_three_rounds_fedavg_matches_independent_mean() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(&dir.path().join("coordinator")).await;
    let job = coordinator.launch(&wdbc_job(3, 3, 60)).await;
    let files = hospital_files(dir.path(), 3);

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, files) in files.into_iter().enumerate() {
        let config = participant_config(
            &coordinator,
            &job,
            &files,
            dir.path().join(format!("hospital-{i}.state")),
        );
        tasks.push(tokio::spawn(run_tagged(
            config,
            Arc::new(Identity::generate()),
            i,
            tx.clone(),
        )));
    }
    drop(tx);
    for task in tasks {
        assert_eq!(
            task.await.unwrap().unwrap(),
            3,
            "every hospital ends at model version 3"
        );
    }
    // (round -> hospital -> (samples, delta))
    let mut updates: BTreeMap<u32, BTreeMap<usize, (u64, Vec<f32>)>> = BTreeMap::new();
    while let Some((i, event)) = rx.recv().await {
        if let Event::Trained {
            round,
            num_samples,
            delta,
        } = event
        {
            assert!(
                updates
                    .entry(round)
                    .or_default()
                    .insert(i, (num_samples, delta))
                    .is_none()
            );
        }
    }
    assert_eq!(updates.len(), 3);

    let info = coordinator.info(&job).await;
    assert_eq!(info.model_version, 3);
    assert_eq!(info.state, conclave_proto::v1::JobState::Finished as i32);
    let mut rounds = coordinator.rounds().await;
    for (round, by_hospital) in &updates {
        assert_eq!(by_hospital.len(), 3, "round {round}: all three uploaded");
        let summary = &info.rounds[*round as usize - 1];
        assert_eq!(summary.uploaded_count, 3);
        let before = download_model(&mut rounds, Some(launcher()), &job, round - 1, None)
            .await
            .unwrap();
        let after = download_model(&mut rounds, Some(launcher()), &job, *round, None)
            .await
            .unwrap();
        let total: u64 = by_hospital.values().map(|(n, _)| n).sum();
        assert_eq!(summary.total_samples, total);
        for k in 0..before.len() {
            let mean: f64 = by_hospital
                .values()
                .map(|(n, d)| *n as f64 * d[k] as f64)
                .sum::<f64>()
                / total as f64;
            let want = before[k] as f64 + mean;
            assert!(
                (after[k] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "round {round}, parameter {k}: coordinator has {}, independent FedAvg gives {want}",
                after[k]
            );
        }
    }

    let eval = |v: u32| {
        info.evaluations
            .iter()
            .find(|e| e.model_version == v)
            .cloned()
            .unwrap()
    };
    let (first, last) = (eval(0), eval(3));
    assert_eq!(first.reports, 3);
    assert_eq!(last.reports, 3);
    assert_eq!(
        last.num_examples, 113,
        "the hospitals' test slices make up the whole test split"
    );
    assert!(
        last.accuracy > first.accuracy + 0.2,
        "accuracy {:.3} -> {:.3}",
        first.accuracy,
        last.accuracy
    );
    assert!(last.loss < first.loss);
    assert!(last.accuracy >= 0.9, "{}", last.accuracy);
    coordinator.stop().await;
}
