//! Secure aggregation end to end over gRPC: 10 hospitals, a committee of 5 with threshold 3.
//! Three participants and two committee members die mid-round; the round still completes, and
//! the new model is plain FedAvg of the updates that arrived, within quantization error. The
//! committee is the one anyone can recompute from the public draw.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conclave_crypto::committee::{draw_committee, draw_seed};
use conclave_crypto::{Identity, ParticipantId};
use conclave_participant::client::download_model;
use conclave_participant::{Event, ParticipantConfig, run};
use conclave_proto::v1::{self, work_item::Item};
use conclave_tests::{TestCoordinator, client, hospital_files, wdbc_secagg_job};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_survives_two_committee_and_three_participant_deaths() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(&dir.path().join("coordinator")).await;
    let spec = wdbc_secagg_job(1, 3, 10, 4, (5, 3), 20);
    let job = coordinator.launch(&spec).await;

    // Recompute the round-1 committee as anyone can: from the base model's hash.
    let people: Vec<Arc<Identity>> = (0..10).map(|_| Arc::new(Identity::generate())).collect();
    let ids: Vec<ParticipantId> = people.iter().map(|p| p.participant_id()).collect();
    let mut rounds = coordinator.rounds().await;
    let v0 = download_model(&mut rounds, &job, 0, None).await.unwrap();
    let v0_bytes: Vec<u8> = v0.iter().flat_map(|v| v.to_le_bytes()).collect();
    let seed = draw_seed(blake3::hash(&v0_bytes).as_bytes(), &job, 1);
    let committee = draw_committee(&seed, &ids, &[], 5).unwrap();
    let is_member = |i: usize| committee.contains(&ids[i]);
    let dropouts: Vec<usize> = (0..10).filter(|&i| !is_member(i)).take(3).collect();
    let doomed_members: Vec<usize> = (0..10).filter(|&i| is_member(i)).take(2).collect();

    // Seven real hospitals train; the three dropouts only join.
    let files = hospital_files(dir.path(), 10);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = BTreeMap::new();
    for i in (0..10).filter(|i| !dropouts.contains(i)) {
        let config = ParticipantConfig {
            coordinator: coordinator.url.clone(),
            job_id: job.clone(),
            data: files[i].0.clone(),
            eval_data: Some(files[i].1.clone()),
            device: tch::Device::Cpu,
        };
        let tx = tx.clone();
        let (inner_tx, mut inner_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(e) = inner_rx.recv().await {
                let _ = tx.send((i, e));
            }
        });
        tasks.insert(
            i,
            tokio::spawn(run(config, Arc::clone(&people[i]), Some(inner_tx))),
        );
    }
    drop(tx);
    let (plan_tx, mut plan_rx) = tokio::sync::mpsc::unbounded_channel();
    for &i in &dropouts {
        let mut c = client(&coordinator, Arc::clone(&people[i])).await;
        c.join(&job).await.unwrap();
        let (job, plan_tx) = (job.clone(), plan_tx.clone());
        // It receives its training task (with the round plan), then dies without uploading.
        tokio::spawn(async move {
            let mut work = c.work(&job).await.unwrap();
            while let Some(Ok(item)) = work.next().await {
                if let Some(Item::Train(task)) = item.item {
                    let _ = plan_tx.send(task.secagg);
                    return;
                }
            }
        });
    }
    drop(plan_tx);

    // Collect what the hospitals uploaded; kill the two doomed members right after their upload.
    let mut uploads: BTreeMap<usize, (u64, Vec<f32>)> = BTreeMap::new();
    let mut finished = 0;
    let survivors = 7 - doomed_members.len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while finished < survivors {
        let (i, event) = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("round finishes in time")
            .expect("events");
        match event {
            Event::Trained {
                round: 1,
                num_samples,
                delta,
            } => {
                uploads.insert(i, (num_samples, delta));
                if doomed_members.contains(&i) {
                    tasks[&i].abort();
                }
            }
            Event::Done {
                final_model_version,
            } => {
                assert_eq!(
                    final_model_version, 1,
                    "hospital {i}: the round produced a model"
                );
                finished += 1;
            }
            Event::CommitteeRefused { reason, .. } => panic!("hospital {i} refused: {reason}"),
            _ => {}
        }
    }
    assert_eq!(uploads.len(), 7, "all seven real hospitals uploaded");

    // The plan every participant got names the committee anyone can recompute.
    let plan = plan_rx
        .recv()
        .await
        .unwrap()
        .expect("a secagg round sends its plan");
    let drawn: Vec<String> = plan
        .committee
        .iter()
        .map(|k| k.participant.clone())
        .collect();
    assert_eq!(
        drawn,
        committee.iter().map(|m| m.to_string()).collect::<Vec<_>>()
    );
    assert_eq!(plan.draw_seed, seed.to_vec());

    let info = coordinator.info(&job).await;
    let round = &info.rounds[0];
    assert_eq!(round.state, v1::RoundState::Closed as i32);
    assert_eq!(round.expected.len(), 10);
    assert_eq!(round.uploaded.len(), 7);
    assert_eq!(round.committee, drawn);
    let total: u64 = uploads.values().map(|(n, _)| n).sum();
    assert_eq!(
        round.total_samples, total,
        "Σ n_i is learned only from the unmasked sum"
    );

    // The model equals plain FedAvg of the seven uploads, within quantization error.
    let v1 = download_model(&mut rounds, &job, 1, None).await.unwrap();
    let scale = spec.secagg().unwrap().quant.scale();
    let tolerance = 7.0 * 1000.0 / (scale * total as f64) + 1e-6;
    for k in 0..v0.len() {
        let mean: f64 = uploads
            .values()
            .map(|(n, d)| *n as f64 * d[k] as f64)
            .sum::<f64>()
            / total as f64;
        let want = v0[k] as f64 + mean;
        assert!(
            (v1[k] as f64 - want).abs() <= tolerance,
            "parameter {k}: {} vs FedAvg {want} (±{tolerance})",
            v1[k]
        );
    }
    coordinator.stop().await;
}
