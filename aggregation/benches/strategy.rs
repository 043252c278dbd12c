//! The server step after a round's mean (`conclave_aggregation::strategy::apply`): the cost of
//! the strategy seam in the coordinator's plain close. Before the seam the mean of n updates
//! was summed straight into the model (`streaming_mean_into_model`); now it is summed into a
//! zeroed vector and the strategy adds it to the model's little-endian bytes
//! (`streaming_mean_then_fedavg`), or takes an adaptive step (`streaming_mean_then_fedadam`,
//! two moments per parameter). All three read the same n updates, one at a time.
//!
//! Run: `cargo bench -p conclave-aggregation --bench strategy`.

use std::hint::black_box;

use conclave_aggregation::Strategy;
use conclave_aggregation::fedavg::{StreamingMean, WeightedUpdate};
use conclave_aggregation::strategy::{self, Adaptive, SecondMoment};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn vectors(n: usize, d: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..d)
                .map(|j| ((i * 31 + j * 7) % 1000) as f32 * 1e-6 - 5e-4)
                .collect()
        })
        .collect()
}

fn mean_into(out: &mut [f32], updates: &[WeightedUpdate<'_>]) {
    let total = updates.iter().map(|u| u.num_samples).sum();
    let mut mean = StreamingMean::new(out, total).unwrap();
    for u in updates {
        mean.add(*u).unwrap();
    }
    mean.finish().unwrap();
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_step");
    group.sample_size(10);
    let fedadam = Strategy::Adaptive(Adaptive {
        second_moment: SecondMoment::Adam,
        server_lr: 0.1,
        beta1: 0.9,
        beta2: 0.99,
        tau: 1e-3,
    });
    for &(n, d) in &[(10usize, 1_000_000usize), (10, 10_000_000)] {
        let data = vectors(n, d);
        let updates: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(i, v)| WeightedUpdate {
                delta: v,
                num_samples: 10 + i as u64,
            })
            .collect();
        let model: Vec<f32> = vectors(1, d).remove(0);
        let model_bytes: Vec<u8> = model.iter().flat_map(|v| v.to_le_bytes()).collect();
        group.throughput(Throughput::Bytes((n * d * 4) as u64));
        let id = format!("n{n}_d{d}");
        group.bench_with_input(
            BenchmarkId::new("streaming_mean_into_model", &id),
            &updates,
            |b, u| {
                b.iter(|| {
                    let mut params = model.clone();
                    mean_into(&mut params, black_box(u));
                    params
                })
            },
        );
        group.bench_with_input(
            BenchmarkId::new("streaming_mean_then_fedavg", &id),
            &updates,
            |b, u| {
                b.iter(|| {
                    let mut next = vec![0f32; d];
                    mean_into(&mut next, black_box(u));
                    let rules = Strategy::default();
                    strategy::apply(rules.rules(), &model_bytes, &mut next, &mut []).unwrap();
                    next
                })
            },
        );
        let state = fedadam.rules().initial_state(d);
        group.bench_with_input(
            BenchmarkId::new("streaming_mean_then_fedadam", &id),
            &updates,
            |b, u| {
                b.iter(|| {
                    let mut next = vec![0f32; d];
                    mean_into(&mut next, black_box(u));
                    let mut state = state.clone();
                    strategy::apply(fedadam.rules(), &model_bytes, &mut next, &mut state).unwrap();
                    (next, state)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
