//! Secure aggregation end to end over gRPC: 10 hospitals, a committee of 5 with threshold 3.
//! Three participants and two committee members die mid-round; the round still completes, and
//! the new model is plain FedAvg of the updates that arrived, within quantization error. The
//! committee is the one anyone can recompute from the ledger, which verifies and pays only
//! those who did their part.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conclave_crypto::{Identity, ParticipantId};
use conclave_ledger::Payload;
use conclave_ledger::rewards::Balances;
use conclave_ledger::verify::verify_ledger;
use conclave_participant::Event;
use conclave_participant::client::download_model;
use conclave_proto::v1::{self, work_item::Item};
use conclave_tests::{
    TestCoordinator, client, committee_from_ledger, hospital_files, launcher, participant_config,
    run_tagged, secagg_duties, wdbc_secagg_job,
};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_survives_two_committee_and_three_participant_deaths() {
    tch::set_num_threads(1);
    conclave_tests::metrics::record_metrics();
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(&dir.path().join("coordinator")).await;
    let spec = wdbc_secagg_job(1, 3, 10, 6, (5, 3), 20);
    let job = coordinator.launch(&spec).await;
    let people: Vec<Arc<Identity>> = (0..10).map(|_| Arc::new(Identity::generate())).collect();
    let ids: Vec<ParticipantId> = people.iter().map(|p| p.participant_id()).collect();
    let mut rounds = coordinator.rounds().await;
    let v0 = download_model(&mut rounds, Some(launcher()), &job, 0, None)
        .await
        .unwrap();

    // All ten join; the tenth join fixes the committee draw's pool.
    let mut clients = Vec::new();
    for p in &people {
        let mut c = client(&coordinator, Arc::clone(p)).await;
        c.join(&job, true).await.unwrap();
        clients.push(Some(c));
    }
    // Every hospital reveals its draw-chain link, then seven train for real and three only
    // take their training task (with the round plan) and die without uploading. Who dies is
    // chosen below, once the committee is known; all ten are online for the draw.
    let files = hospital_files(dir.path(), 10);
    let (plan_tx, mut plan_rx) = tokio::sync::mpsc::unbounded_channel();
    let (fate_tx, fate_rx) = tokio::sync::watch::channel(None::<Vec<usize>>);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = BTreeMap::new();
    for i in 0..10 {
        let mut c = clients[i].take().unwrap();
        let (job, plan_tx, tx) = (job.clone(), plan_tx.clone(), tx.clone());
        let mut fate = fate_rx.clone();
        let mut duties = secagg_duties(
            &coordinator.url,
            Arc::clone(&people[i]),
            &job,
            &dir.path().join(format!("draw-{i}")),
        )
        .await;
        let config = participant_config(
            &coordinator,
            &job,
            &files[i],
            dir.path().join(format!("hospital-{i}.state")),
        );
        let identity = Arc::clone(&people[i]);
        tasks.insert(
            i,
            tokio::spawn(async move {
                let mut work = c.work(&job).await.unwrap();
                while let Some(Ok(item)) = work.next().await {
                    match item.item {
                        Some(Item::Draw(task)) => {
                            duties.draw(&mut c, task).await.unwrap();
                        }
                        Some(Item::Train(task)) => {
                            let dropouts = fate
                                .wait_for(|f| f.is_some())
                                .await
                                .unwrap()
                                .clone()
                                .unwrap();
                            if dropouts.contains(&i) {
                                let _ = plan_tx.send(task.secagg);
                                return;
                            }
                            break;
                        }
                        _ => {}
                    }
                }
                drop(work);
                let _ = run_tagged(config, identity, i, tx).await;
            }),
        );
    }
    drop(plan_tx);
    drop(tx);
    // Round 1 opens once the pool has revealed. Recompute its committee as anyone holding the
    // ledger can: from the job's draw entropy over every admitted participant.
    let ledger = coordinator.state.ledger();
    let started = std::time::Instant::now();
    while coordinator.info(&job).await.rounds.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the draw never completed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let committee = committee_from_ledger(ledger, &job, 1, 5);
    let entries = ledger.read(0, 1000).unwrap();
    let opened = entries
        .iter()
        .find_map(|e| match e.payload() {
            Payload::RoundOpened(r) if r.job_id == job && r.round == 1 => Some(r.clone()),
            _ => None,
        })
        .expect("round 1 is in the ledger");
    assert_eq!(
        opened.committee,
        committee.iter().map(|m| m.to_string()).collect::<Vec<_>>()
    );
    let seed = opened.draw_seed.clone();
    let is_member = |i: usize| committee.contains(&ids[i]);
    let dropouts: Vec<usize> = (0..10).filter(|&i| !is_member(i)).take(3).collect();
    let doomed_members: Vec<usize> = (0..10).filter(|&i| is_member(i)).take(2).collect();
    fate_tx.send(Some(dropouts.clone())).unwrap();

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
            Event::CommitteeRefused { reason, .. } | Event::Refused { reason, .. } => {
                panic!("hospital {i} refused: {reason}")
            }
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
    assert_eq!(plan.draw_seed, seed);

    let info = coordinator.info(&job).await;
    let round = &info.rounds[0];
    assert_eq!(round.state, v1::RoundState::Closed as i32);
    assert_eq!(round.expected_count, 10);
    assert_eq!(round.uploaded_count, 7);
    assert_eq!(round.committee, drawn);
    let total: u64 = uploads.values().map(|(n, _)| n).sum();
    assert_eq!(
        round.total_samples, total,
        "Σ n_i is learned only from the unmasked sum"
    );

    // The model equals plain FedAvg of the seven uploads, within quantization error.
    let v1 = download_model(&mut rounds, Some(launcher()), &job, 1, None)
        .await
        .unwrap();
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

    // The ledger verifies, and pays the round's pool: 900 equally to the seven whose updates
    // are in the sum, 100 to the three members who revealed (not to the two who died).
    let report = verify_ledger(ledger, None).unwrap();
    assert_eq!(report.problem, None);
    let mut balances = Balances::new(Some(&job));
    ledger.for_each(|e| balances.add(&e)).unwrap();
    let paid = balances.by_did();
    let survivors_in_committee: Vec<&ParticipantId> = committee
        .iter()
        .enumerate()
        .filter(|(_, m)| !doomed_members.iter().any(|&d| ids[d] == **m))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(survivors_in_committee.len(), 3);
    for m in &survivors_in_committee {
        assert!((33..=34).contains(&paid[m.as_str()].committee), "{m}");
    }
    for &d in &doomed_members {
        assert_eq!(
            paid[ids[d].as_str()].committee,
            0,
            "a member who died earns no committee share"
        );
        assert!((128..=129).contains(&paid[ids[d].as_str()].contribution));
    }
    for &d in &dropouts {
        assert!(!paid.contains_key(ids[d].as_str()), "dropouts earn nothing");
    }
    assert_eq!(paid.values().map(|b| b.total()).sum::<u64>(), 1000);

    // The operator's metrics count the same round: seven updates in, three hospitals and two
    // committee members missing.
    let metrics = conclave_tests::metrics::metric_values();
    let value = |k: &str| conclave_tests::metrics::value(&metrics, k);
    assert_eq!(value("conclave.uploads{outcome=accepted}"), 7.0);
    assert_eq!(
        value("conclave.dropouts{privacy=secagg,role=participant}"),
        3.0
    );
    assert_eq!(
        value("conclave.dropouts{privacy=secagg,role=committee}"),
        2.0
    );
    assert_eq!(
        value("conclave.round.duration{outcome=closed,privacy=secagg}"),
        1.0
    );
    coordinator.stop().await;
}
