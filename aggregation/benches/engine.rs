//! The round engine's cost on the coordinator's hot paths. Every accepted upload is checked
//! twice (before its file is moved into place, and when its batch is staged); a round's close
//! stages the close, its reward and the next opening on a copy of the engine. Baseline in the
//! same run: the Ed25519 signature every ledger entry already pays.
//!
//! Run: `cargo bench -p conclave-aggregation --bench engine`.

use std::hint::black_box;

use conclave_aggregation::JobSpec;
use conclave_aggregation::engine::{JobEngine, Payload, rewards::round_awards};
use conclave_crypto::Identity;
use conclave_proto::v1;
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const JOB: &str = r#"
name = "bench"
rounds = 1000
min_participants = 2
privacy = "plain"
[model]
kind = "logistic_regression"
[data]
features = ["a", "b"]
label = "y"
"#;

fn upload(did: &str) -> Payload {
    Payload::UpdateAccepted(v1::UpdateAccepted {
        job_id: "j-bench".into(),
        round: 1,
        participant: did.into(),
        num_samples: 10,
        payload_hash: vec![7; 32],
        manifest_hash: Vec::new(),
        signature: vec![0; 64],
    })
}

/// A plain job with `n` admitted participants and round 1 open, all but the last uploaded.
fn job(n: usize) -> (JobEngine, Vec<String>) {
    let spec = JobSpec::from_toml(JOB).unwrap();
    let hash = |v: u32| blake3::hash(&v.to_le_bytes()).as_bytes().to_vec();
    let mut engine = JobEngine::create(&v1::JobCreated {
        job_id: "j-bench".into(),
        spec: Some(spec.to_proto()),
        model_hash: hash(0),
    })
    .unwrap();
    let mut dids = Vec::with_capacity(n);
    for _ in 0..n {
        let p = Identity::generate();
        let did = p.participant_id().to_string();
        let admitted = Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
            job_id: "j-bench".into(),
            participant: did.clone(),
            sealing_key: p.public().sealing_key.to_vec(),
            draw_commitment: Vec::new(),
            signature: vec![0; 64],
        });
        engine.step(&admitted, true).unwrap();
        dids.push(did);
    }
    let open = |round: u32, base: u32| {
        Payload::RoundOpened(v1::RoundOpened {
            job_id: "j-bench".into(),
            round,
            base_version: base,
            base_model_hash: hash(base),
            participants: dids.clone(),
            ..Default::default()
        })
    };
    engine.step(&open(1, 0), true).unwrap();
    for d in &dids[..n - 1] {
        engine.step(&upload(d), true).unwrap();
    }
    (engine, dids)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("round_engine");
    let signer = Identity::generate();
    group.bench_function("baseline_ed25519_sign_per_entry", |b| {
        b.iter(|| black_box(signer.sign(black_box(&[3u8; 32]))))
    });
    for n in [100usize, 1_000, 10_000] {
        let (mut engine, dids) = job(n);
        let last = upload(&dids[n - 1]);
        group.bench_with_input(BenchmarkId::new("check_upload", n), &n, |b, _| {
            b.iter(|| black_box(engine.check(black_box(&last), true).unwrap()))
        });
        engine.step(&last, true).unwrap();
        let contributors: Vec<(String, u64)> = dids.iter().map(|d| (d.clone(), 10)).collect();
        let closed = v1::RoundClosed {
            job_id: "j-bench".into(),
            round: 1,
            success: true,
            result_version: 1,
            model_hash: blake3::hash(&1u32.to_le_bytes()).as_bytes().to_vec(),
            contributors: contributors
                .iter()
                .map(|(d, k)| v1::Contribution {
                    participant: d.clone(),
                    num_samples: *k,
                })
                .collect(),
            total_samples: 10 * n as u64,
            ..Default::default()
        };
        let spec = JobSpec::from_toml(JOB).unwrap();
        let batch = [
            Payload::RoundClosed(closed),
            Payload::Reward(v1::Reward {
                job_id: "j-bench".into(),
                round: 1,
                awards: round_awards(&spec.rewards, &contributors, &[]),
            }),
            Payload::RoundOpened(v1::RoundOpened {
                job_id: "j-bench".into(),
                round: 2,
                base_version: 1,
                base_model_hash: blake3::hash(&1u32.to_le_bytes()).as_bytes().to_vec(),
                participants: dids.clone(),
                ..Default::default()
            }),
        ];
        group.bench_with_input(
            BenchmarkId::new("stage_close_reward_open", n),
            &n,
            |b, _| b.iter(|| black_box(engine.stage(black_box(&batch), true).unwrap())),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
