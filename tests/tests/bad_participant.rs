//! One participant or stranger cannot make a secure job fail. Four honest hospitals train a
//! three-round secure job with the real coordinator while a stranger tries to join with a
//! low-order sealing key (refused, InvalidArgument) and an admitted participant misbehaves:
//! in round 1 it seals garbage to one committee member under a valid signature (that member
//! complains before any statement, the upload is left out, the round completes without it);
//! in round 2 its masked vector pushes the sum beyond what clipped updates allow (the round
//! fails once, cleanly, with its reason in the ledger); round 3 runs. The job finishes with
//! the honest hospitals and the ledger verifies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use conclave_aggregation::secagg::{RoundConfig, contribute};
use conclave_crypto::Identity;
use conclave_ledger::Payload;
use conclave_participant::Event;
use conclave_participant::client::masked_upload_messages;
use conclave_proto::v1::{self, work_item::Item};
use conclave_tests::{
    TestCoordinator, client, hospital_files, join_request, participant_config, run_tagged,
    secagg_duties, wdbc_secagg_job,
};
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_participant_and_a_stranger_do_not_stop_a_secure_job() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let coordinator = TestCoordinator::start(&dir.path().join("coordinator")).await;
    // Five participants, committee 3 with threshold 2, at least 2 uploads a round.
    let spec = wdbc_secagg_job(3, 2, 5, 10, (3, 2), 10);
    let job = coordinator.launch(&spec).await;

    // A stranger's low-order sealing key is refused at join.
    let stranger = Identity::generate();
    let mut rounds = coordinator.rounds().await;
    let status = rounds
        .join(join_request(&stranger, &job, vec![0; 32], vec![1; 32]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("low-order"),
        "{}",
        status.message()
    );
    assert!(coordinator.info(&job).await.participant_count == 0);

    // The misbehaving participant: honest in the draw, not in its uploads.
    let mallory = Arc::new(Identity::generate());
    let mallory_did = mallory.participant_id().to_string();
    let mut m = client(&coordinator, Arc::clone(&mallory)).await;
    m.join(&job, true).await.unwrap();
    let mut duties = secagg_duties(
        &coordinator.url,
        Arc::clone(&mallory),
        &job,
        &dir.path().join("mallory"),
    )
    .await;
    let (url, mjob) = (coordinator.url.clone(), job.clone());
    let mallory_task = tokio::spawn(async move {
        let mut m = conclave_participant::client::Client::connect(&url, Arc::clone(&mallory))
            .await
            .unwrap();
        let mut work = m.work(&mjob).await.unwrap();
        while let Some(Ok(item)) = work.next().await {
            match item.item {
                Some(Item::Draw(task)) => {
                    duties.draw(&mut m, task).await.unwrap();
                }
                Some(Item::Train(task)) if task.round <= 2 => {
                    let plan = task.secagg.expect("a plan");
                    let config = RoundConfig::from_plan(&mjob, task.round, &plan).unwrap();
                    let mut q = vec![0u32; config.len];
                    q[config.len - 1] = 10;
                    if task.round == 2 {
                        // Far beyond what clipped updates can add up to.
                        q[0] = 1 << 31;
                    }
                    let (masked, mut manifest) = contribute(&config, &mallory, q).unwrap();
                    if task.round == 1 {
                        // Garbage to an honest committee member, under a valid signature.
                        let k = config
                            .committee
                            .iter()
                            .position(|p| p.id != mallory.participant_id())
                            .unwrap();
                        manifest.sealed[k] = vec![0xAB; manifest.sealed[k].len()];
                        manifest.signature = mallory.sign(&manifest.hash()).to_vec();
                    }
                    let hash = manifest.hash();
                    let messages = masked_upload_messages(
                        &mallory,
                        &mjob,
                        task.round,
                        &masked,
                        manifest.to_wire(),
                        hash,
                    );
                    m.send_upload(messages).await.unwrap();
                }
                Some(Item::Done(_)) => return,
                _ => {}
            }
        }
    });

    // Four honest hospitals.
    let files = hospital_files(dir.path(), 4);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, f) in files.iter().enumerate() {
        let config = participant_config(
            &coordinator,
            &job,
            f,
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
        let version = tokio::time::timeout(Duration::from_secs(120), task)
            .await
            .expect("the honest hospitals finish")
            .unwrap()
            .unwrap();
        assert_eq!(
            version, 2,
            "rounds 1 and 3 produced a model, round 2 failed"
        );
    }
    mallory_task.abort();
    let mut complaints = 0;
    while let Ok((_, e)) = rx.try_recv() {
        if let Event::CommitteeChecked { complaints: n, .. } = e {
            complaints += n;
        }
        assert!(
            !matches!(e, Event::Refused { .. }),
            "an honest hospital refused: {e:?}"
        );
    }
    assert!(complaints >= 1, "a member complained about the garbage box");

    // The ledger tells it: the complaint, a round without the bad upload, the out-of-bounds
    // failure, and the last round; and it verifies.
    let ledger = coordinator.state.ledger();
    let report = conclave_ledger::verify::verify_ledger(ledger, None).unwrap();
    assert_eq!(report.problem, None);
    let mut closed = BTreeMap::new();
    let mut complained = Vec::new();
    ledger
        .for_each(|e| match e.payload() {
            Payload::RoundClosed(c) => {
                closed.insert(c.round, c.clone());
            }
            Payload::CommitteeComplaint(c) => complained.push((c.round, c.participant.clone())),
            _ => {}
        })
        .unwrap();
    assert_eq!(complained.first(), Some(&(1, mallory_did.clone())));
    assert!(closed[&1].success);
    assert!(
        closed[&1]
            .contributors
            .iter()
            .all(|c| c.participant != mallory_did),
        "the upload complained about is not in the sum"
    );
    assert_eq!(closed[&1].contributors.len(), 4);
    assert!(!closed[&2].success);
    assert!(
        closed[&2].failure.contains("out of the bounds"),
        "{}",
        closed[&2].failure
    );
    assert!(closed[&3].success);
    assert_eq!(closed.len(), 3, "each round closed once: no retry loop");
    let info = coordinator.info(&job).await;
    assert_eq!(info.rounds[1].state, v1::RoundState::Failed as i32);
    coordinator.stop().await;
}
