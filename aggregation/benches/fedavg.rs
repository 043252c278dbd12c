//! The coordinator's plain-mode hot path: n updates of d floats -> sample-weighted mean, added
//! into the global model.
//! Reports throughput in bytes of update read per second, next to a baseline that makes one
//! full pass over the output per update (what a straightforward implementation does).
//!
//! `streaming_mean` is what the coordinator runs since updates are read from disk one at a
//! time (only one in memory): one pass per update, each split among the cores.
//!
//! Run: `make bench` (or `cargo bench -p conclave-aggregation --bench fedavg`).

use std::hint::black_box;

use conclave_aggregation::fedavg::{StreamingMean, WeightedUpdate, add_weighted_mean};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn updates(n: usize, d: usize) -> Vec<Vec<f32>> {
    (0..n)
        .map(|i| {
            (0..d)
                .map(|j| ((i * 31 + j * 7) % 1000) as f32 * 1e-3 - 0.5)
                .collect()
        })
        .collect()
}

/// Baseline: one single-threaded pass over the whole global vector per update.
fn naive(global: &mut [f32], updates: &[WeightedUpdate<'_>]) {
    let total: u64 = updates.iter().map(|u| u.num_samples).sum();
    for u in updates {
        let w = u.num_samples as f32 / total as f32;
        for (o, x) in global.iter_mut().zip(u.delta) {
            *o += w * x;
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("fedavg");
    group.sample_size(10);
    for &(n, d) in &[
        (10usize, 1_000_000usize),
        (100, 1_000_000),
        (10, 10_000_000),
    ] {
        let data = updates(n, d);
        let weighted: Vec<_> = data
            .iter()
            .enumerate()
            .map(|(i, v)| WeightedUpdate {
                delta: v,
                num_samples: 10 + i as u64,
            })
            .collect();
        group.throughput(Throughput::Bytes((n * d * 4) as u64));
        let id = format!("n{n}_d{d}");
        // Both sum into a resident global model, as the coordinator does each round.
        let mut global = vec![0f32; d];
        group.bench_with_input(
            BenchmarkId::new("add_weighted_mean", &id),
            &weighted,
            |b, w| b.iter(|| add_weighted_mean(black_box(&mut global), black_box(w)).unwrap()),
        );
        let mut global = vec![0f32; d];
        let total: u64 = weighted.iter().map(|u| u.num_samples).sum();
        group.bench_with_input(
            BenchmarkId::new("streaming_mean", &id),
            &weighted,
            |b, w| {
                b.iter(|| {
                    let mut mean = StreamingMean::new(black_box(&mut global), total).unwrap();
                    for u in w {
                        mean.add(*u).unwrap();
                    }
                    mean.finish().unwrap()
                })
            },
        );
        let mut global = vec![0f32; d];
        group.bench_with_input(
            BenchmarkId::new("baseline_one_pass_per_update", &id),
            &weighted,
            |b, w| b.iter(|| naive(black_box(&mut global), black_box(w))),
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
