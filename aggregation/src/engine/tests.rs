//! The engine against a reference model: any schedule of admissions, openings (good, from a
//! stale model, for hand-picked participants), uploads (good, duplicated, unsigned, for the
//! wrong round, with a bad count), closes (failed, successful, leaving an upload out, naming a
//! wrong version or total), rewards (right and wrong) and exports of a plain job is accepted
//! exactly when the reference says so, step by step and in staged batches (all or nothing),
//! and the invariants hold after every step.

use std::collections::{BTreeMap, BTreeSet};

use conclave_crypto::Identity;
use conclave_proto::v1;
use proptest::prelude::*;

use super::rewards::round_awards;
use super::*;

const JOB: &str = "j-test";
const ROUNDS: u32 = 4;
const MIN: usize = 2;
const MAX_SAMPLES: u64 = 50;

fn spec() -> JobSpec {
    JobSpec::from_toml(&format!(
        r#"
name = "engine"
rounds = {ROUNDS}
min_participants = {MIN}
privacy = "plain"
max_samples = {MAX_SAMPLES}
[model]
kind = "logistic_regression"
[data]
features = ["a", "b"]
label = "y"
[rewards]
pool_per_round = 1000
"#
    ))
    .unwrap()
}

fn created() -> v1::JobCreated {
    v1::JobCreated {
        job_id: JOB.into(),
        spec: Some(spec().to_proto()),
        model_hash: model_hash(0).to_vec(),
    }
}

fn model_hash(version: u32) -> [u8; 32] {
    *blake3::hash(&version.to_le_bytes()).as_bytes()
}

fn admission(p: &Identity) -> Payload {
    Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
        job_id: JOB.into(),
        participant: p.participant_id().to_string(),
        sealing_key: p.public().sealing_key.to_vec(),
        draw_commitment: Vec::new(),
        signature: vec![0; 64],
    })
}

fn opened(round: u32, base: u32, participants: Vec<String>) -> Payload {
    Payload::RoundOpened(v1::RoundOpened {
        job_id: JOB.into(),
        round,
        base_version: base,
        base_model_hash: model_hash(base).to_vec(),
        participants,
        deadline_unix_ms: 1,
        ..Default::default()
    })
}

fn upload(round: u32, did: &str, samples: u64) -> Payload {
    Payload::UpdateAccepted(v1::UpdateAccepted {
        job_id: JOB.into(),
        round,
        participant: did.into(),
        num_samples: samples,
        payload_hash: vec![7; 32],
        manifest_hash: Vec::new(),
        signature: vec![0; 64],
    })
}

fn closed(round: u32, version: Option<u32>, contributors: &[(String, u64)]) -> Payload {
    Payload::RoundClosed(match version {
        Some(v) => v1::RoundClosed {
            job_id: JOB.into(),
            round,
            success: true,
            result_version: v,
            model_hash: model_hash(v).to_vec(),
            contributors: contributors
                .iter()
                .map(|(d, n)| v1::Contribution {
                    participant: d.clone(),
                    num_samples: *n,
                })
                .collect(),
            total_samples: contributors.iter().map(|(_, n)| n).sum(),
            ..Default::default()
        },
        None => v1::RoundClosed {
            job_id: JOB.into(),
            round,
            failure: "deadline".into(),
            ..Default::default()
        },
    })
}

fn reward(round: u32, awards: Vec<v1::Award>) -> Payload {
    Payload::Reward(v1::Reward {
        job_id: JOB.into(),
        round,
        awards,
    })
}

fn export(version: u32, did: &str) -> Payload {
    Payload::ModelExported(v1::ModelExported {
        job_id: JOB.into(),
        model_version: version,
        model_hash: model_hash(version).to_vec(),
        format: "safetensors".into(),
        exported_by: did.into(),
        signature: vec![0; 64],
    })
}

/// What a schedule does, by participant index (out of a fixed set of identities).
#[derive(Clone, Debug)]
enum Op {
    Admit(usize),
    Open,
    /// An opening from a model that is not the latest.
    OpenStale,
    /// An opening for participants the coordinator picked (one admitted left out, or a
    /// stranger let in).
    OpenHandPicked,
    Upload(usize, u64),
    UploadWrongRound(usize),
    /// An upload whose participant signature did not verify.
    UploadUnsigned(usize),
    Fail,
    /// Success with every upload; `drop_one`: leave the first one out.
    Close {
        drop_one: bool,
    },
    /// Success, but naming a model version that is not the next one.
    CloseWrongVersion,
    /// Success, with a total that is not the sum of the counts.
    CloseWrongTotal,
    Reward {
        right: bool,
    },
    Export(usize, u32),
    /// An entry of another job.
    Stranger,
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..n).prop_map(Op::Admit),
        2 => Just(Op::Open),
        1 => Just(Op::OpenStale),
        1 => Just(Op::OpenHandPicked),
        6 => ((0..n), 0..MAX_SAMPLES + 3).prop_map(|(i, s)| Op::Upload(i, s)),
        1 => (0..n).prop_map(Op::UploadWrongRound),
        1 => (0..n).prop_map(Op::UploadUnsigned),
        1 => Just(Op::Fail),
        2 => any::<bool>().prop_map(|drop_one| Op::Close { drop_one }),
        1 => Just(Op::CloseWrongVersion),
        1 => Just(Op::CloseWrongTotal),
        2 => any::<bool>().prop_map(|right| Op::Reward { right }),
        1 => ((0..n), 0..3u32).prop_map(|(i, v)| Op::Export(i, v)),
        1 => Just(Op::Stranger),
    ]
}

/// The rules of a plain job, restated as simply as they can be.
#[derive(Clone, Default)]
struct Reference {
    admitted: Vec<String>,
    last_round: u32,
    /// round, participants, uploads (did → samples)
    open: Option<(u32, Vec<String>, BTreeMap<String, u64>)>,
    version: u32,
    finished: bool,
    reward_due: Option<(u32, Vec<v1::Award>)>,
    exports: BTreeSet<(u32, String)>,
}

impl Reference {
    /// The entry an op makes, whether its participant signature verified, and whether the
    /// rules accept it (changing the reference then).
    fn run(&mut self, op: &Op, dids: &[String], ids: &[Identity]) -> (Payload, bool, bool) {
        if let Op::UploadUnsigned(i) = op {
            let round = self.open.as_ref().map_or(self.last_round, |o| o.0);
            return (upload(round, &dids[*i], 1), false, false);
        }
        let (payload, ok) = self.judge(op, dids, ids);
        (payload, true, ok)
    }

    fn judge(&mut self, op: &Op, dids: &[String], ids: &[Identity]) -> (Payload, bool) {
        let due = self.reward_due.is_some();
        match op {
            Op::Admit(i) => {
                let ok = !due && !self.finished && !self.admitted.contains(&dids[*i]);
                if ok {
                    self.admitted.push(dids[*i].clone());
                }
                (admission(&ids[*i]), ok)
            }
            Op::Open | Op::OpenStale => {
                let stale = matches!(op, Op::OpenStale);
                let base = if stale {
                    self.version + 1
                } else {
                    self.version
                };
                let round = self.last_round + 1;
                let p = opened(round, base, self.admitted.clone());
                let ok = !stale && !due && !self.finished && self.open.is_none();
                if ok {
                    self.last_round = round;
                    self.open = Some((round, self.admitted.clone(), BTreeMap::new()));
                }
                (p, ok)
            }
            Op::Upload(i, samples) => {
                let did = &dids[*i];
                let round = self.open.as_ref().map_or(self.last_round, |o| o.0);
                let p = upload(round, did, *samples);
                let ok = !due
                    && (1..=MAX_SAMPLES).contains(samples)
                    && self
                        .open
                        .as_ref()
                        .is_some_and(|(_, participants, uploads)| {
                            participants.contains(did) && !uploads.contains_key(did)
                        });
                if ok {
                    self.open.as_mut().unwrap().2.insert(did.clone(), *samples);
                }
                (p, ok)
            }
            Op::UploadWrongRound(i) => (upload(self.last_round + 1, &dids[*i], 1), false),
            Op::UploadUnsigned(_) => unreachable!("judged in run"),
            Op::OpenHandPicked => {
                let mut picked = self.admitted.clone();
                match dids.iter().find(|d| !picked.contains(d)) {
                    Some(stranger) => picked.push(stranger.clone()),
                    None => {
                        picked.remove(0);
                    }
                }
                (opened(self.last_round + 1, self.version, picked), false)
            }
            Op::CloseWrongVersion | Op::CloseWrongTotal => {
                let (round, uploads) = self
                    .open
                    .as_ref()
                    .map_or((self.last_round, BTreeMap::new()), |o| (o.0, o.2.clone()));
                let contributors: Vec<(String, u64)> = uploads.into_iter().collect();
                let wrong_version = matches!(op, Op::CloseWrongVersion);
                let version = self.version + if wrong_version { 2 } else { 1 };
                let mut p = closed(round, Some(version), &contributors);
                if !wrong_version && let Payload::RoundClosed(c) = &mut p {
                    c.total_samples += 1;
                }
                (p, false)
            }
            Op::Fail => {
                let round = self.open.as_ref().map_or(self.last_round, |o| o.0);
                let ok = !due && self.open.is_some();
                if ok {
                    self.close(round, false);
                }
                (closed(round, None, &[]), ok)
            }
            Op::Close { drop_one } => {
                let (round, uploads) = self
                    .open
                    .as_ref()
                    .map_or((self.last_round, BTreeMap::new()), |o| (o.0, o.2.clone()));
                let mut contributors: Vec<(String, u64)> = uploads.into_iter().collect();
                let dropped = *drop_one && !contributors.is_empty();
                if dropped {
                    contributors.remove(0);
                }
                let p = closed(round, Some(self.version + 1), &contributors);
                let ok = !due && self.open.is_some() && !dropped && contributors.len() >= MIN;
                if ok {
                    self.version += 1;
                    self.close(round, true);
                    let awards = round_awards(&spec().rewards, &contributors, &[]);
                    self.reward_due = Some((round, awards));
                }
                (p, ok)
            }
            Op::Reward { right } => {
                let (round, mut awards) = self
                    .reward_due
                    .clone()
                    .unwrap_or((self.last_round, Vec::new()));
                if !right {
                    match awards.first_mut() {
                        Some(a) => a.amount += 1,
                        None => awards.push(v1::Award {
                            participant: dids[0].clone(),
                            amount: 1,
                            reason: v1::AwardReason::Contribution.into(),
                        }),
                    }
                }
                let ok = due && *right;
                if ok {
                    self.reward_due = None;
                }
                (reward(round, awards), ok)
            }
            Op::Export(i, version) => {
                let did = &dids[*i];
                let key = (*version, did.clone());
                let ok = !due
                    && self.admitted.contains(did)
                    && *version <= self.version
                    && !self.exports.contains(&key);
                if ok {
                    self.exports.insert(key);
                }
                (export(*version, did), ok)
            }
            Op::Stranger => {
                let mut p = upload(1, &dids[0], 1);
                if let Payload::UpdateAccepted(u) = &mut p {
                    u.job_id = "j-other".into();
                }
                (p, false)
            }
        }
    }

    fn close(&mut self, round: u32, _success: bool) {
        self.open = None;
        if round >= ROUNDS {
            self.finished = true;
        }
    }
}

/// What must hold of the engine whatever happened, and agree with the reference.
fn check_invariants(engine: &JobEngine, reference: &Reference) {
    let s = engine.summary();
    let admitted: BTreeSet<&String> = reference.admitted.iter().collect();
    assert_eq!(s.admitted.keys().collect::<BTreeSet<_>>(), admitted);
    assert_eq!(s.model_hashes.len() as u32, reference.version + 1);
    assert_eq!(s.last_round, reference.last_round);
    assert_eq!(s.finished, reference.finished);
    assert_eq!(
        engine.reward_due(),
        reference.reward_due.as_ref().map(|(r, _)| *r)
    );
    match (&s.open_round, &reference.open) {
        (None, None) => {}
        (Some(o), Some((round, participants, uploads))) => {
            assert_eq!(o.round, *round);
            assert_eq!(o.participants, participants.iter().cloned().collect());
            assert_eq!(o.uploaded, uploads.keys().cloned().collect());
            assert!(o.uploaded.is_subset(&o.participants));
            assert!(o.round == s.last_round && !s.finished);
        }
        (engine, reference) => panic!("open round: engine {engine:?}, reference {reference:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_schedule_is_judged_as_the_reference_judges_it(ops in proptest::collection::vec(op(4), 1..80)) {
        let ids: Vec<Identity> = (0..4).map(|_| Identity::generate()).collect();
        let dids: Vec<String> = ids.iter().map(|p| p.participant_id().to_string()).collect();
        let mut engine = JobEngine::create(&created()).unwrap();
        let mut reference = Reference::default();
        for op in &ops {
            let (payload, signed, accepted) = reference.run(op, &dids, &ids);
            match engine.step(&payload, signed) {
                Ok(()) => prop_assert!(accepted, "accepted {op:?}, which the rules refuse"),
                Err(e) => prop_assert!(!accepted, "refused {op:?}, which the rules accept: {e}"),
            }
            check_invariants(&engine, &reference);
        }
    }

    /// The same schedules in batches, as the coordinator commits them: a batch is staged
    /// whole or refused whole, and a refused or unsettled one leaves the engine as it was.
    #[test]
    fn a_batch_is_staged_all_or_nothing(
        ops in proptest::collection::vec(op(4), 1..80),
        cuts in proptest::collection::vec(1usize..5, 40),
    ) {
        let ids: Vec<Identity> = (0..4).map(|_| Identity::generate()).collect();
        let dids: Vec<String> = ids.iter().map(|p| p.participant_id().to_string()).collect();
        let mut engine = JobEngine::create(&created()).unwrap();
        let mut reference = Reference::default();
        let mut rest = &ops[..];
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, after) = rest.split_at((*cut).min(rest.len()));
            rest = after;
            // The coordinator stages only what it verified the signatures of.
            let mut trial = reference.clone();
            let judged: Vec<(Payload, bool)> = batch
                .iter()
                .filter(|op| !matches!(op, Op::UploadUnsigned(_)))
                .map(|op| trial.judge(op, &dids, &ids))
                .collect();
            let whole = judged.iter().all(|(_, ok)| *ok);
            let payloads: Vec<Payload> = judged.into_iter().map(|(p, _)| p).collect();
            let before = format!("{engine:?}");
            match engine.stage(&payloads, true) {
                Ok(staged) => {
                    prop_assert!(whole, "staged {batch:?}, which the rules refuse");
                    prop_assert_eq!(&before, &format!("{engine:?}"), "staging changed the engine");
                    engine.settle(staged);
                    reference = trial;
                }
                Err(e) => {
                    prop_assert!(!whole, "refused {batch:?}, which the rules accept: {e}");
                    prop_assert_eq!(&before, &format!("{engine:?}"), "a refused batch changed the engine");
                }
            }
            check_invariants(&engine, &reference);
        }
    }
}

/// Two admitted participants and an open round 1.
fn started() -> (JobEngine, Vec<String>) {
    let ids: Vec<Identity> = (0..2).map(|_| Identity::generate()).collect();
    let dids: Vec<String> = ids.iter().map(|p| p.participant_id().to_string()).collect();
    let mut engine = JobEngine::create(&created()).unwrap();
    for p in &ids {
        engine.step(&admission(p), true).unwrap();
    }
    engine.step(&opened(1, 0, dids.clone()), true).unwrap();
    (engine, dids)
}

#[test]
fn a_staged_batch_applies_all_of_it_or_nothing() {
    let (mut engine, dids) = started();
    for d in &dids {
        engine.step(&upload(1, d, 10), true).unwrap();
    }
    let contributors: Vec<(String, u64)> = dids.iter().map(|d| (d.clone(), 10)).collect();
    let awards = round_awards(&spec().rewards, &contributors, &[]);
    let close = [
        closed(1, Some(1), &contributors),
        reward(1, awards.clone()),
        opened(2, 1, dids.clone()),
    ];
    // The close's batch with a wrong reward: refused as a whole, the engine as it was.
    let before = format!("{engine:?}");
    let mut wrong = awards.clone();
    wrong[0].amount += 1;
    let bad = [close[0].clone(), reward(1, wrong), close[2].clone()];
    let refused = engine.stage(&bad, true).unwrap_err();
    assert!(refused.0.contains("not the policy's split"), "{refused}");
    assert_eq!(before, format!("{engine:?}"));
    // Staged and not settled (the commit failed): nothing changes.
    drop(engine.stage(&close, true).unwrap());
    assert_eq!(before, format!("{engine:?}"));
    // Settled: all of it.
    let staged = engine.stage(&close, true).unwrap();
    engine.settle(staged);
    let s = engine.summary();
    assert_eq!((s.last_round, s.model_hashes.len()), (2, 2));
    assert_eq!(s.open_round.unwrap().round, 2);
    assert_eq!(engine.reward_due(), None);
}

#[test]
fn a_reward_due_must_come_before_anything_else_of_the_job() {
    let (mut engine, dids) = started();
    for d in &dids {
        engine.step(&upload(1, d, 10), true).unwrap();
    }
    let contributors: Vec<(String, u64)> = dids.iter().map(|d| (d.clone(), 10)).collect();
    engine
        .step(&closed(1, Some(1), &contributors), true)
        .unwrap();
    assert_eq!(engine.reward_due(), Some(1));
    let err = engine.step(&opened(2, 1, dids.clone()), true).unwrap_err();
    assert!(err.0.contains("expected the reward"), "{err}");
}

#[test]
fn unsigned_entries_and_a_plain_round_that_drops_an_upload_are_refused() {
    let (mut engine, dids) = started();
    let err = engine.step(&upload(1, &dids[0], 10), false).unwrap_err();
    assert!(err.0.contains("not signed"), "{err}");
    for d in &dids {
        engine.step(&upload(1, d, 10), true).unwrap();
    }
    // The coordinator may not leave out an upload it accepted, nor count one twice.
    let one = [(dids[0].clone(), 10)];
    assert!(engine.step(&closed(1, Some(1), &one), true).is_err());
    let twice = [(dids[0].clone(), 10), (dids[0].clone(), 10)];
    assert!(engine.step(&closed(1, Some(1), &twice), true).is_err());
    // Nor claim another sample count than the upload showed.
    let other = [(dids[0].clone(), 10), (dids[1].clone(), 11)];
    let err = engine.step(&closed(1, Some(1), &other), true).unwrap_err();
    assert!(err.0.contains("its upload had 10"), "{err}");
}
