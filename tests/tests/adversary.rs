//! The adversary suite: a malicious coordinator ([`Evil`]) runs each attack of the threat model
//! against real participants (`conclave_participant::run`, training on the shipped data) over
//! loopback gRPC. It holds the coordinator's key, writes its own ledger, rewrites plans, specs,
//! statements and tasks, re-sends tasks, and picks `U` and `A`. In every test the hospital's
//! update never leaves in a form the attacker can open: the hospital refuses, says what was
//! wrong, and stays connected; where it does upload, the attacker's keys open too little of it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use conclave_aggregation::secagg::{
    Approval, Manifest, RoundConfig, Statement, contribute, sign_plan,
};
use conclave_crypto::{Identity, ParticipantId};
use conclave_participant::{Event, ParticipantError, Policy, run};
use conclave_proto::v1::{self, work_item::Item};
use conclave_tests::adversary::{Evil, Sent, attacker_unmasks};
use conclave_tests::{hospital_files, wdbc_job, wdbc_secagg_job};
use tokio::sync::mpsc::UnboundedReceiver;

/// A hospital: `run` against the malicious coordinator, with its events.
struct Hospital {
    did: ParticipantId,
    events: UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<Result<u32, ParticipantError>>,
}

fn start_hospital(evil: &Evil, dir: &Path, identity: Arc<Identity>, policy: Policy) -> Hospital {
    let files = hospital_files(dir, 2);
    let config = conclave_participant::ParticipantConfig {
        coordinator: evil.url.clone(),
        job_id: evil.job_id.clone(),
        data: files[0].0.clone(),
        eval_data: Some(files[0].1.clone()),
        device: tch::Device::Cpu,
        policy,
        state_dir: dir.join("hospital.state"),
    };
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let did = identity.participant_id();
    let task = tokio::spawn(run(config, Arc::clone(&identity), Some(tx)));
    Hospital { did, events, task }
}

impl Hospital {
    /// The next event `pick` accepts (others are skipped), within 60 s.
    async fn expect<T>(&mut self, mut pick: impl FnMut(&Event) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let event = tokio::time::timeout_at(deadline, self.events.recv())
                .await
                .expect("the hospital did not do what the test expects in time")
                .expect("the hospital's events ended");
            if let Some(t) = pick(&event) {
                return t;
            }
        }
    }

    /// Waits for the hospital to refuse round `round`'s task; returns why.
    async fn refusal(&mut self, round: u32) -> String {
        self.expect(|e| match e {
            Event::Refused { round: r, reason } if *r == round => Some(reason.clone()),
            Event::Trained { round: r, .. } if *r == round => {
                panic!("the hospital trained and uploaded in round {round}")
            }
            _ => None,
        })
        .await
    }
}

fn uploads_by(evil: &Evil, did: &ParticipantId) -> Vec<v1::UploadHeader> {
    evil.sent()
        .into_iter()
        .filter(|s| s.sender() == did.as_str())
        .filter_map(|s| match s {
            Sent::Upload { header, .. } => Some(header),
            _ => None,
        })
        .collect()
}

/// A secure job of three participants, committee 3 with threshold 2.
fn secure_spec() -> conclave_aggregation::JobSpec {
    wdbc_secagg_job(1, 2, 3, 60, (3, 2), 10)
}

/// A hospital with a fresh key and the default policy.
fn fresh_hospital(evil: &Evil, dir: &std::path::Path) -> Hospital {
    start_hospital(evil, dir, Arc::new(Identity::generate()), Policy::default())
}

/// The hospital joins, two identities the test holds (other hospitals) are admitted, and the
/// draw runs; returns them and the draw entropy.
async fn joined_and_drawn(evil: &Evil, hospital: &Hospital) -> (Vec<Identity>, [u8; 32]) {
    let did = hospital.did.to_string();
    evil.wait_for(|s| matches!(s, Sent::Join(_) if s.sender() == did).then_some(()))
        .await;
    let others: Vec<Identity> = (0..2).map(|_| Identity::generate()).collect();
    evil.admit(&others.iter().collect::<Vec<_>>());
    let entropy = evil
        .draw(
            std::slice::from_ref(&hospital.did),
            &others.iter().collect::<Vec<_>>(),
        )
        .await;
    (others, entropy)
}

/// A plan signed with the coordinator's key from a configuration of the attacker's choosing.
fn forged_plan(evil: &Evil, config: &RoundConfig, seed: &[u8]) -> v1::SecaggPlan {
    let mut plan = config.to_plan(seed.try_into().unwrap());
    plan.base_model_hash = evil.model_hash();
    sign_plan(&mut plan, &evil.job_id, config.round, evil.key());
    plan
}

/// Attack 1: a plan the coordinator signed, but whose committee is not the one the hospital's
/// ledger replica recomputes — a committee of one key it owns with t = 1, a committee of keys
/// it holds with the job's c and t, an honest committee with one member's sealing key swapped
/// for its own. Each is refused, naming why; then the honest plan is accepted, and what the
/// hospital uploads under it cannot be opened with the attacker's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plans_whose_committee_is_not_the_ledgers_draw_are_refused() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let evil = Evil::start(secure_spec()).await;
    let mut hospital = fresh_hospital(&evil, dir.path());
    let (_others, entropy) = joined_and_drawn(&evil, &hospital).await;
    let (plan, config) = evil.honest_plan(1, &entropy);
    evil.open_round(1, &plan, &config);
    let mine: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();

    // One key the coordinator owns, t = 1.
    let mut one = config.clone();
    one.committee = vec![mine[0].public()];
    one.threshold = 1;
    evil.send(
        &hospital.did,
        evil.train_task(1, Some(forged_plan(&evil, &one, &plan.draw_seed))),
    )
    .await;
    let why = hospital.refusal(1).await;
    assert!(
        why.contains("committee of 1") && why.contains("threshold 1"),
        "{why}"
    );

    // The job's c and t, but keys the coordinator holds.
    let mut held = config.clone();
    held.committee = mine.iter().map(|m| m.public()).collect();
    evil.send(
        &hospital.did,
        evil.train_task(1, Some(forged_plan(&evil, &held, &plan.draw_seed))),
    )
    .await;
    let why = hospital.refusal(1).await;
    assert!(why.contains("not the one drawn in the ledger"), "{why}");

    // The honest committee, one member's sealing key swapped for the coordinator's own.
    let mut swapped = config.clone();
    let victim = swapped
        .committee
        .iter()
        .position(|m| m.id != hospital.did)
        .unwrap();
    swapped.committee[victim].sealing_key = mine[1].public().sealing_key;
    evil.send(
        &hospital.did,
        evil.train_task(1, Some(forged_plan(&evil, &swapped, &plan.draw_seed))),
    )
    .await;
    let why = hospital.refusal(1).await;
    assert!(
        why.contains("sealing key") || why.contains("not the one the ledger"),
        "{why}"
    );

    // A model of its own for this hospital: the honest plan with another model in the task,
    // and a plan that names another base model than the ledger's round.
    let mut task = evil.train_task(1, Some(plan.clone()));
    if let Item::Train(t) = &mut task {
        t.model_hash = blake3::hash(b"a model for this hospital only")
            .as_bytes()
            .to_vec();
    }
    evil.send(&hospital.did, task).await;
    let why = hospital.refusal(1).await;
    assert!(
        why.contains("the task's model is not the plan's base model"),
        "{why}"
    );
    let mut other_model = config.to_plan(plan.draw_seed.as_slice().try_into().unwrap());
    other_model.base_model_hash = blake3::hash(b"another model").as_bytes().to_vec();
    sign_plan(&mut other_model, &evil.job_id, 1, evil.key());
    let mut task = evil.train_task(1, Some(other_model.clone()));
    if let Item::Train(t) = &mut task {
        t.model_hash = other_model.base_model_hash.clone();
    }
    evil.send(&hospital.did, task).await;
    let why = hospital.refusal(1).await;
    assert!(why.contains("not the one the ledger"), "{why}");
    assert!(
        uploads_by(&evil, &hospital.did).is_empty(),
        "nothing left the hospital"
    );

    // The honest plan: the hospital trains and uploads; the attacker's keys open too little.
    evil.send(&hospital.did, evil.train_task(1, Some(plan.clone())))
        .await;
    hospital
        .expect(|e| matches!(e, Event::Trained { round: 1, .. }).then_some(()))
        .await;
    let uploads = uploads_by(&evil, &hospital.did);
    assert_eq!(uploads.len(), 1);
    let manifest = uploads[0].manifest.as_ref().expect("a masked upload");
    let keys: Vec<&Identity> = mine.iter().collect();
    assert!(!attacker_unmasks(&config, &hospital.did, manifest, &keys));
    hospital.task.abort();
}

/// Attack 1b: the coordinator writes a committee of its choosing into its own ledger, so the
/// plan and the ledger agree — but the ledger no longer verifies (the committee is not the
/// draw), and the hospital refuses to act on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledger_whose_committee_is_not_the_draw_is_refused() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let evil = Evil::start(secure_spec()).await;
    let mut hospital = fresh_hospital(&evil, dir.path());
    let (others, entropy) = joined_and_drawn(&evil, &hospital).await;
    let (plan, config) = evil.honest_plan(1, &entropy);
    // The committee in another order is not the draw's.
    let mut steered = config.clone();
    steered.committee.reverse();
    let steered_plan = forged_plan(&evil, &steered, &plan.draw_seed);
    let steered = RoundConfig::from_plan(&evil.job_id, 1, &steered_plan).unwrap();
    evil.open_round(1, &steered_plan, &steered);
    evil.send(&hospital.did, evil.train_task(1, Some(steered_plan)))
        .await;
    let why = hospital.refusal(1).await;
    assert!(why.contains("ledger"), "{why}");
    assert!(uploads_by(&evil, &hospital.did).is_empty());
    let _ = others;
    hospital.task.abort();
}

/// Attack 2: downgrades. In a secure job, a training task without a plan is refused (it would
/// have meant uploading in the clear); a job that is plain at first contact is refused without
/// `--allow-plain`; and a job the hospital pinned as secure that the coordinator later
/// describes as plain (or with weaker settings) stops the hospital before it joins.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn downgrades_to_plain_are_refused() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let evil = Evil::start(secure_spec()).await;
    let id = Arc::new(Identity::generate());
    let mut hospital = start_hospital(&evil, dir.path(), Arc::clone(&id), Policy::default());
    let pinned = hospital
        .expect(|e| match e {
            Event::Pinned {
                settings,
                first_contact: true,
            } => Some(settings.clone()),
            _ => None,
        })
        .await;
    assert!(
        pinned.contains("secagg") && pinned.contains("threshold 2"),
        "{pinned}"
    );
    let (_others, entropy) = joined_and_drawn(&evil, &hospital).await;
    let (plan, config) = evil.honest_plan(1, &entropy);
    evil.open_round(1, &plan, &config);
    evil.send(&hospital.did, evil.train_task(1, None)).await;
    let why = hospital.refusal(1).await;
    assert!(why.contains("downgrade"), "{why}");
    assert!(
        uploads_by(&evil, &hospital.did).is_empty(),
        "nothing in the clear"
    );
    hospital.task.abort();
    let _ = hospital.task.await;

    // The same hospital comes back; the coordinator now says the job is plain.
    let plain = wdbc_job(1, 2, 60).to_proto();
    evil.set_info(|info| info.spec = Some(plain.clone()));
    let again = start_hospital(&evil, dir.path(), Arc::clone(&id), Policy::default());
    let err = again.task.await.unwrap().unwrap_err().to_string();
    assert!(err.contains("privacy is plain, pinned secagg"), "{err}");
    // Weaker settings are named too.
    let mut weaker = secure_spec().to_proto();
    weaker.threshold = 3;
    weaker.committee_size = 3;
    weaker.min_participants = 3;
    evil.set_info(|info| info.spec = Some(weaker.clone()));
    let again = start_hospital(&evil, dir.path(), Arc::clone(&id), Policy::default());
    let err = again.task.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("threshold") && err.contains("min_participants"),
        "{err}"
    );

    // A hospital that never met the job: plain is refused without --allow-plain.
    evil.set_info(|info| info.spec = Some(plain.clone()));
    let fresh = tempfile::tempdir().unwrap();
    let first = start_hospital(
        &evil,
        fresh.path(),
        Arc::new(Identity::generate()),
        Policy::default(),
    );
    let err = first.task.await.unwrap().unwrap_err().to_string();
    assert!(
        err.contains("--allow-plain") || err.contains("privacy is plain"),
        "{err}"
    );
    let joined = evil
        .sent()
        .iter()
        .filter(|s| matches!(s, Sent::Join(_)))
        .count();
    assert_eq!(joined, 1, "only the first run joined");
}

/// Attack 3 (the S1 − S2 attack): the hospital, a committee member, checks, signs and reveals
/// statement S1; the coordinator re-sends the round's training task, then asks it to sign a
/// statement S2 that leaves one upload out (S1 − S2 would be that upload). It is refused, with
/// nothing revealed for S2 — also after the hospital's process restarts between S1 and S2.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_statement_gets_nothing_across_resent_tasks_and_restarts() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let evil = Evil::start(secure_spec()).await;
    let id = Arc::new(Identity::generate());
    let mut hospital = start_hospital(&evil, dir.path(), Arc::clone(&id), Policy::default());
    let (others, entropy) = joined_and_drawn(&evil, &hospital).await;
    let (plan, config) = evil.honest_plan(1, &entropy);
    evil.open_round(1, &plan, &config);
    evil.send(&hospital.did, evil.train_task(1, Some(plan.clone())))
        .await;
    hospital
        .expect(|e| matches!(e, Event::Trained { round: 1, .. }).then_some(()))
        .await;
    // The hospital's manifest, and uploads the test makes for the two others.
    let mine = uploads_by(&evil, &hospital.did)[0]
        .manifest
        .clone()
        .unwrap();
    let mut manifests =
        vec![Manifest::from_wire(&evil.job_id, 1, hospital.did.clone(), &mine).unwrap()];
    for o in &others {
        manifests.push(contribute(&config, o, vec![7u32; config.len]).unwrap().1);
    }
    manifests.sort_by(|a, b| a.participant.cmp(&b.participant));
    let position = config
        .member_position(&hospital.did)
        .expect("all three are members");
    let views = |ms: &[&Manifest]| -> Vec<v1::MemberView> {
        ms.iter().map(|m| m.view_for(position).to_wire()).collect()
    };
    let all: Vec<&Manifest> = manifests.iter().collect();
    evil.send(
        &hospital.did,
        Item::Check(v1::CommitteeCheckTask {
            round: 1,
            views: views(&all),
        }),
    )
    .await;
    hospital
        .expect(|e| {
            matches!(
                e,
                Event::CommitteeChecked {
                    round: 1,
                    complaints: 0
                }
            )
            .then_some(())
        })
        .await;
    let statement = |ms: &[&Manifest]| Statement {
        job_id: evil.job_id.clone(),
        round: 1,
        uploads: ms
            .iter()
            .map(|m| (m.participant.clone(), m.hash()))
            .collect(),
        answering: config.committee.iter().map(|m| m.id.clone()).collect(),
    };
    let s1 = statement(&all);
    evil.send(
        &hospital.did,
        Item::Sign(v1::CommitteeSignTask {
            round: 1,
            statement: Some(s1.to_wire()),
            views: views(&all),
        }),
    )
    .await;
    hospital
        .expect(|e| matches!(e, Event::CommitteeSigned { round: 1 }).then_some(()))
        .await;
    let approvals = |s: &Statement| -> Vec<v1::Approval> {
        others
            .iter()
            .map(|o| {
                Approval {
                    member: o.participant_id(),
                    statement_hash: s.hash(),
                    signature: o.sign(&s.hash()).to_vec(),
                }
                .to_wire()
            })
            .collect()
    };
    evil.send(
        &hospital.did,
        Item::Reveal(v1::CommitteeRevealTask {
            round: 1,
            approvals: approvals(&s1),
        }),
    )
    .await;
    hospital
        .expect(|e| matches!(e, Event::CommitteeRevealed { round: 1 }).then_some(()))
        .await;

    // S2 leaves out the upload of one of the others.
    let left: Vec<&Manifest> = manifests
        .iter()
        .filter(|m| m.participant != others[0].participant_id())
        .collect();
    let s2 = statement(&left);
    let (s2_wire, left_views, s2_approvals) = (s2.to_wire(), views(&left), approvals(&s2));
    let attack = |did: ParticipantId| {
        let evil = &evil;
        let (s2, views, approvals) = (s2_wire.clone(), left_views.clone(), s2_approvals.clone());
        async move {
            evil.send(
                &did,
                Item::Sign(v1::CommitteeSignTask {
                    round: 1,
                    statement: Some(s2),
                    views,
                }),
            )
            .await;
            evil.send(
                &did,
                Item::Reveal(v1::CommitteeRevealTask {
                    round: 1,
                    approvals,
                }),
            )
            .await;
        }
    };
    // A re-sent training task first: refused (one upload per round), nothing re-uploaded.
    evil.send(&hospital.did, evil.train_task(1, Some(plan.clone())))
        .await;
    let why = hospital.refusal(1).await;
    assert!(why.contains("already accepted"), "{why}");
    attack(hospital.did.clone()).await;
    let refused = hospital
        .expect(|e| match e {
            Event::CommitteeRefused { round: 1, reason } => Some(reason.clone()),
            Event::CommitteeSigned { .. } => panic!("signed a second statement"),
            _ => None,
        })
        .await;
    assert!(refused.contains("another statement"), "{refused}");
    // And after the hospital's process restarts.
    let streams = evil.streams_opened(&hospital.did);
    hospital.task.abort();
    let _ = hospital.task.await;
    let mut again = start_hospital(&evil, dir.path(), Arc::clone(&id), Policy::default());
    evil.wait_streams(&again.did, streams).await;
    attack(again.did.clone()).await;
    for _ in 0..2 {
        again
            .expect(|e| match e {
                Event::CommitteeRefused { round: 1, .. } => Some(()),
                Event::CommitteeSigned { .. } | Event::CommitteeRevealed { .. } => {
                    panic!("acted on a second statement after a restart")
                }
                _ => None,
            })
            .await;
    }
    let approved: Vec<Vec<u8>> = evil
        .sent()
        .into_iter()
        .filter(|s| s.sender() == hospital.did.as_str())
        .filter_map(|s| match s {
            Sent::Approval(a) => Some(a.statement_hash),
            Sent::Reveal { header, .. } => Some(header.statement_hash),
            _ => None,
        })
        .collect();
    assert!(
        approved.iter().all(|h| *h == s1.hash().to_vec()),
        "the hospital approved and revealed only for S1"
    );
    again.task.abort();
}

/// Attack 4: different plans for different hospitals. Another participant's manifest made
/// under a plan other than the one this member was shown (there, a committee of the
/// coordinator's keys): the member refuses the whole check, so no statement over it gets its
/// signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upload_made_under_another_plan_is_refused_by_members() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let evil = Evil::start(secure_spec()).await;
    let mut hospital = fresh_hospital(&evil, dir.path());
    let (others, entropy) = joined_and_drawn(&evil, &hospital).await;
    let (plan, config) = evil.honest_plan(1, &entropy);
    evil.open_round(1, &plan, &config);
    evil.send(&hospital.did, evil.train_task(1, Some(plan.clone())))
        .await;
    hospital
        .expect(|e| matches!(e, Event::Trained { round: 1, .. }).then_some(()))
        .await;
    let mine = uploads_by(&evil, &hospital.did)[0]
        .manifest
        .clone()
        .unwrap();
    let mine = Manifest::from_wire(&evil.job_id, 1, hospital.did.clone(), &mine).unwrap();
    // Another participant was shown a plan with the coordinator's own committee.
    let keys: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
    let mut other_config = config.clone();
    other_config.committee = keys.iter().map(|k| k.public()).collect();
    let other_plan = forged_plan(&evil, &other_config, &plan.draw_seed);
    let other_config = RoundConfig::from_plan(&evil.job_id, 1, &other_plan).unwrap();
    let (_, theirs) = contribute(&other_config, &others[0], vec![1u32; config.len]).unwrap();
    let position = config.member_position(&hospital.did).unwrap();
    // The view is shaped for this member's committee, but names the other plan.
    let view = theirs.view_for(position);
    let task = v1::CommitteeCheckTask {
        round: 1,
        views: vec![mine.view_for(position).to_wire(), view.to_wire()],
    };
    evil.send(&hospital.did, Item::Check(task)).await;
    let why = hospital
        .expect(|e| match e {
            Event::CommitteeRefused { round: 1, reason } => Some(reason.clone()),
            Event::CommitteeChecked { .. } => panic!("checked an upload made under another plan"),
            _ => None,
        })
        .await;
    assert!(why.contains("another round plan"), "{why}");
    let checks = evil
        .sent()
        .iter()
        .filter(|s| matches!(s, Sent::Check(_)))
        .count();
    assert_eq!(checks, 0);
    hospital.task.abort();
}

/// Attack 5: grinding the draw. The coordinator shows the hospital a draw pool other than the
/// one its ledger records, then a second pool for the same attempt: the hospital reveals its
/// link for neither, so the coordinator cannot pick among pools knowing the links.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_draw_pool_not_in_the_ledger_or_a_second_pool_gets_no_link() {
    tch::set_num_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let evil = Evil::start(secure_spec()).await;
    let mut hospital = fresh_hospital(&evil, dir.path());
    let did = hospital.did.to_string();
    evil.wait_for(|s| matches!(s, Sent::Join(_) if s.sender() == did).then_some(()))
        .await;
    let others: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
    evil.admit(&others.iter().collect::<Vec<_>>());
    let mut pool: Vec<ParticipantId> = evil.admitted().into_iter().map(|p| p.id).collect();
    pool.sort();
    // Not recorded at all.
    let task = |pool: &[ParticipantId]| {
        Item::Draw(v1::DrawTask {
            attempt: 0,
            pool: pool.iter().map(|p| p.to_string()).collect(),
        })
    };
    evil.send(&hospital.did, task(&pool)).await;
    let why = hospital
        .expect(|e| match e {
            Event::DrawRefused { attempt: 0, reason } => Some(reason.clone()),
            Event::DrawRevealed { .. } => panic!("revealed for a pool the ledger does not hold"),
            _ => None,
        })
        .await;
    assert!(why.contains("not the ledger's open draw attempt"), "{why}");
    // Recorded, revealed once; then the same attempt with another pool.
    evil.append(vec![conclave_ledger::Payload::DrawPool(v1::DrawPool {
        job_id: evil.job_id.clone(),
        attempt: 0,
        participants: pool.iter().map(|p| p.to_string()).collect(),
    })]);
    evil.send(&hospital.did, task(&pool)).await;
    hospital
        .expect(|e| matches!(e, Event::DrawRevealed { attempt: 0 }).then_some(()))
        .await;
    let smaller: Vec<ParticipantId> = pool
        .iter()
        .filter(|p| **p != others[0].participant_id())
        .cloned()
        .collect();
    evil.send(&hospital.did, task(&smaller)).await;
    hospital
        .expect(|e| match e {
            Event::DrawRefused { attempt: 0, .. } => Some(()),
            Event::DrawRevealed { .. } => panic!("revealed twice for one attempt"),
            _ => None,
        })
        .await;
    let reveals = evil
        .sent()
        .iter()
        .filter(|s| matches!(s, Sent::DrawReveal(_)))
        .count();
    assert_eq!(reveals, 1);
    hospital.task.abort();
}
