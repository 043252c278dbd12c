//! Mask expansion throughput (GB/s of mask, one core) for each candidate stream cipher, and
//! the masking step a participant runs: `y += mask(seed)`.
//!
//! Run: `cargo bench -p conclave-crypto --bench prg`.

use std::hint::black_box;

use conclave_crypto::Seed;
use conclave_crypto::prg::{MaskCipher, add_mask, expand_mask_with};
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
