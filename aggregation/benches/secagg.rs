//! The secure-aggregation hot paths of one participant and of the coordinator, per update of
//! 1M elements: quantization with stochastic rounding, masking and sealing (`contribute`,
//! c = 10, t = 6), the little-endian upload bytes, and the coordinator's hash-and-add of an
//! upload into the running sum. Baselines in the same run: what plain mode does with the
//! same update (f32 little-endian bytes; hash-and-add of those bytes as f32).
//!
//! Run: `cargo bench -p conclave-aggregation --bench secagg`.

use std::hint::black_box;

use conclave_aggregation::quantize::QuantParams;
use conclave_aggregation::secagg::{HashedBytes, RoundConfig, contribute, le_bytes};
use conclave_crypto::Identity;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const DIM: usize = 1_000_000;

fn update() -> Vec<f32> {
    let raw: Vec<f32> = (0..DIM)
        .map(|j| ((j * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    raw.iter().map(|x| x * 0.5 / norm).collect()
}

fn bench(c: &mut Criterion) {
    let delta = update();
    let quant = QuantParams::new(1.0, 1000, 100).expect("params");
    let people: Vec<Identity> = (0..10).map(|_| Identity::generate()).collect();
    let me = Identity::generate();
    let mut participants: Vec<_> = people.iter().map(|p| p.public()).collect();
    participants.push(me.public());
    let config = RoundConfig {
        job_id: "j-bench".into(),
        round: 1,
        participants,
        committee: people.iter().map(|p| p.public()).collect(),
        threshold: 6,
        min_participants: 2,
        len: DIM + 1,
        plan_hash: [0; 32],
    };
    let quantized = quant.encode(&delta, 100, &mut rand::rng()).expect("encode");

    let mut group = c.benchmark_group("secagg_1M");
    group.throughput(Throughput::Bytes((DIM * 4) as u64));
    group.bench_function("quantize", |b| {
        b.iter(|| quant.encode(black_box(&delta), 100, &mut rand::rng()))
    });
    group.bench_function("contribute_c10_t6", |b| {
        b.iter(|| contribute(&config, &me, black_box(quantized.clone())).expect("contribute"))
    });
    group.bench_function("clone_baseline", |b| {
        b.iter(|| black_box(quantized.clone()))
    });
    group.bench_function("le_bytes", |b| b.iter(|| le_bytes(black_box(&quantized))));
    let upload = le_bytes(&quantized);
    let mut sum = vec![0u32; DIM + 1];
    group.bench_function("coordinator_hash_add", |b| {
        b.iter(|| HashedBytes::new(black_box(&upload)).add_to(&mut sum))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
