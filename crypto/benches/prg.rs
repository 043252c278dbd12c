//! Mask expansion throughput (GB/s of mask, one core) for each candidate stream cipher, and
//! the masking steps a participant runs: `y += mask(seed)`, and `y += Σ mask(s_j)` over the
//! six seeds of its mask holders in one pass.
//!
//! Run: `cargo bench -p conclave-crypto --bench prg`.

use std::hint::black_box;

use conclave_crypto::Seed;
use conclave_crypto::prg::{MaskCipher, add_mask, add_masks, expand_mask_with};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let len = 1_000_000usize;
    let seed = Seed::from_bytes([7; 32]);
    let mut group = c.benchmark_group("mask_1M");
    group.throughput(Throughput::Bytes((len * 4) as u64));
    for cipher in [
        MaskCipher::ChaCha8,
        MaskCipher::ChaCha12,
        MaskCipher::ChaCha20,
        MaskCipher::Aes128Ctr,
    ] {
        group.bench_function(BenchmarkId::new("expand", format!("{cipher:?}")), |b| {
            b.iter(|| expand_mask_with(cipher, black_box(&seed), len))
        });
    }
    let mut v = vec![0u32; len];
    group.bench_function("add_mask_in_place", |b| {
        b.iter(|| add_mask(black_box(&mut v), &seed))
    });
    group.finish();

    // What a participant does with t = 6 mask holders: six keystreams added in one pass.
    let seeds: Vec<Seed> = (0..6u8).map(|i| Seed::from_bytes([i; 32])).collect();
    let mut group = c.benchmark_group("masks_6x1M");
    group.throughput(Throughput::Bytes((6 * len * 4) as u64));
    group.bench_function("add_masks_fused", |b| {
        b.iter(|| add_masks(black_box(&mut v), &seeds))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
