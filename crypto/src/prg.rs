//! Masks: expanding a [`Seed`] into a pseudorandom vector over the ring Z_{2^32} with a stream
//! cipher, and adding or subtracting it in place. The mask of seed `s` is the AES-128-CTR
//! keystream under key `s[..16]` (a uniformly random 128-bit key) with the fixed initial
//! block `"conclave-msk" ‖ 0^4` and a little-endian 128-bit counter, read as little-endian
//! `u32`s. AES-128-CTR (RustCrypto `aes` + `ctr`, hardware AES detected at run time) was the
//! fastest well-reviewed candidate measured here, about 4× ChaCha8 once compiled for the
//! CPU's VAES instructions (see `simd`, `benches/prg.rs` and docs/BENCHMARKS.md). Every seed
//! is fresh and used for one mask only, so the fixed counter block never repeats under one
//! key.

use chacha20::cipher::{KeyIvInit, StreamCipher};
use chacha20::{ChaCha8, ChaCha12, ChaCha20};

use crate::Seed;

/// Nonce of every mask stream: domain separation from any other use of a seed.
const MASK_NONCE: [u8; 12] = *b"conclave-msk";

/// Elements expanded per step: the scratch keystream stays in L1 while it is added.
const STEP: usize = 4096;

/// The stream ciphers a mask can be expanded with (all but the default are for benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaskCipher {
    ChaCha8,
    ChaCha12,
    ChaCha20,
    /// AES-128 in counter mode (hardware AES when the CPU has it), key = first 16 seed bytes.
    Aes128Ctr,
}

/// The cipher Conclave's masks use.
pub const MASK_CIPHER: MaskCipher = MaskCipher::Aes128Ctr;

type AesCtr = ctr::Ctr128LE<aes::Aes128>;

/// The AES-128-CTR keystream of a mask seed.
fn aes_stream(seed: &Seed) -> AesCtr {
    let mut iv = [0u8; 16];
    iv[..12].copy_from_slice(&MASK_NONCE);
    let key: &[u8; 16] = seed.expose()[..16].try_into().expect("16 bytes");
    AesCtr::new(key.into(), &iv.into())
}

/// Writes the next `buf.len()` keystream bytes of an AES mask stream. Not generic, so it is
/// compiled here, where the cipher code inlines into the vector-instruction build (`simd`),
/// whatever crate the caller is in.
fn aes_keystream(stream: &mut AesCtr, buf: &mut [u8]) {
    simd::dispatch(
        #[inline(always)]
        || stream.write_keystream(buf),
    )
}

/// Streams the mask of `seed` in steps, calling `f(offset, keystream words)` for each.
fn for_each_step(cipher: MaskCipher, seed: &Seed, len: usize, f: impl FnMut(usize, &[u32])) {
    let key = seed.expose().into();
    match cipher {
        MaskCipher::Aes128Ctr => {
            let mut stream = aes_stream(seed);
            stream_steps(|buf| aes_keystream(&mut stream, buf), len, f)
        }
        MaskCipher::ChaCha8 => {
            let mut stream = ChaCha8::new(key, &MASK_NONCE.into());
            stream_steps(|buf| stream.write_keystream(buf), len, f)
        }
        MaskCipher::ChaCha12 => {
            let mut stream = ChaCha12::new(key, &MASK_NONCE.into());
            stream_steps(|buf| stream.write_keystream(buf), len, f)
        }
        MaskCipher::ChaCha20 => {
            let mut stream = ChaCha20::new(key, &MASK_NONCE.into());
            stream_steps(|buf| stream.write_keystream(buf), len, f)
        }
    }
}

/// Runs `f` over a keystream in steps of [`STEP`] words; `f` is compiled with the same vector
/// instructions as the keystream (`simd`), so simple per-element work on it vectorises.
#[inline(always)]
fn stream_steps(mut write: impl FnMut(&mut [u8]), len: usize, mut f: impl FnMut(usize, &[u32])) {
    simd::dispatch(
        #[inline(always)]
        || {
            let mut words = [0u32; STEP];
            let mut offset = 0;
            while offset < len {
                let n = STEP.min(len - offset);
                write(bytemuck::cast_slice_mut(&mut words[..n]));
                for w in &mut words[..n] {
                    *w = u32::from_le(*w);
                }
                f(offset, &words[..n]);
                offset += n;
            }
        },
    )
}

/// The mask of `seed`: `len` pseudorandom ring elements.
pub fn expand_mask(seed: &Seed, len: usize) -> Vec<u32> {
    expand_mask_with(MASK_CIPHER, seed, len)
}

/// As [`expand_mask`], with a chosen cipher (for benchmarks and known-answer tests).
pub fn expand_mask_with(cipher: MaskCipher, seed: &Seed, len: usize) -> Vec<u32> {
    let mut out = vec![0u32; len];
    for_each_step(cipher, seed, len, |offset, words| {
        out[offset..offset + words.len()].copy_from_slice(words)
    });
    out
}

/// `v += mask(seed)` in Z_{2^32}, without materialising the mask.
pub fn add_mask(v: &mut [u32], seed: &Seed) {
    let len = v.len();
    for_each_step(MASK_CIPHER, seed, len, |offset, words| {
        for (x, w) in v[offset..offset + words.len()].iter_mut().zip(words) {
            *x = x.wrapping_add(*w);
        }
    });
}

/// `v += Σ mask(seed)` over many seeds in Z_{2^32}, in one pass over `v`: each block of `v`
/// stays in cache while every seed's keystream for it is added (the same result as calling
/// [`add_mask`] per seed, with `v` streamed through memory once instead of once per seed).
pub fn add_masks(v: &mut [u32], seeds: &[Seed]) {
    apply_masks(v, seeds, u32::wrapping_add)
}

/// `v -= Σ mask(seed)` over many seeds, in one pass over `v`.
pub fn sub_masks(v: &mut [u32], seeds: &[Seed]) {
    apply_masks(v, seeds, u32::wrapping_sub)
}

fn apply_masks(v: &mut [u32], seeds: &[Seed], op: impl Fn(u32, u32) -> u32) {
    simd::dispatch(
        #[inline(always)]
        || {
            let mut streams: Vec<AesCtr> = seeds.iter().map(aes_stream).collect();
            let mut words = [0u32; STEP];
            for block in v.chunks_mut(STEP) {
                let n = block.len();
                for stream in &mut streams {
                    stream.write_keystream(bytemuck::cast_slice_mut(&mut words[..n]));
                    for (x, w) in block.iter_mut().zip(&words[..n]) {
                        *x = op(*x, u32::from_le(*w));
                    }
                }
            }
        },
    )
}

/// Runs mask code compiled for the widest AES instructions the CPU has.
///
/// The `aes` crate picks its VAES backends (4 blocks per instruction) at run time, but its
/// per-block code only inlines into callers compiled with the same target features; called
/// from ordinary code it runs at less than half its speed (measured here: 10 GB/s against
/// 24 GB/s per core on an AVX-512 EPYC). So the whole keystream loop, together with the
/// closure that consumes it, is instantiated once per feature level and chosen at run time
/// by the standard library's cached CPUID check. The cipher code itself is the `aes` and
/// `ctr` crates', unchanged; only the compiler's instruction selection differs.
mod simd {
    /// Instruction-set levels, narrowest first.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
    pub(super) enum Level {
        Baseline,
        /// AES-NI and AVX2.
        AesniAvx2,
        /// VAES on 256-bit vectors, AVX2.
        Vaes256,
        /// VAES on 512-bit vectors, AVX-512 F, DQ, BW and VL (with the FMA and F16C they imply).
        Vaes512,
    }

    impl Level {
        /// The widest level this CPU has (the standard library caches the CPUID answers).
        #[inline(always)]
        pub(super) fn detect() -> Level {
            #[cfg(target_arch = "x86_64")]
            {
                use std::arch::is_x86_feature_detected as has;
                if has!("aes") && has!("avx2") {
                    if !has!("vaes") {
                        return Level::AesniAvx2;
                    }
                    // AVX-512F implies FMA and F16C to the compiler: check them too.
                    if has!("avx512f")
                        && has!("avx512dq")
                        && has!("avx512bw")
                        && has!("avx512vl")
                        && has!("fma")
                        && has!("f16c")
                    {
                        return Level::Vaes512;
                    }
                    return Level::Vaes256;
                }
            }
            Level::Baseline
        }
    }

    #[cfg(test)]
    thread_local! {
        /// Tests cap the level to compare every level's output on one machine.
        pub(super) static CAP: std::cell::Cell<Level> = const { std::cell::Cell::new(Level::Vaes512) };
    }

    /// Calls `f` inside a function compiled for the widest level the CPU has. `f` should be
    /// `#[inline(always)]`.
    #[inline(always)]
    pub(super) fn dispatch<R>(f: impl FnOnce() -> R) -> R {
        let level = Level::detect();
        #[cfg(test)]
        let level = level.min(CAP.with(|c| c.get()));
        match level {
            // SAFETY (all three): `detect` found every feature the function is compiled for.
            #[cfg(target_arch = "x86_64")]
            Level::Vaes512 => unsafe { vaes512(f) },
            #[cfg(target_arch = "x86_64")]
            Level::Vaes256 => unsafe { vaes256(f) },
            #[cfg(target_arch = "x86_64")]
            Level::AesniAvx2 => unsafe { aesni_avx2(f) },
            _ => f(),
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "aes,avx2,vaes,fma,f16c,avx512f,avx512dq,avx512bw,avx512vl")]
    fn vaes512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "aes,avx2,vaes")]
    fn vaes256<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "aes,avx2")]
    fn aesni_avx2<R>(f: impl FnOnce() -> R) -> R {
        f()
    }
}

/// Calls `f(offset, words)` with the mask of `seed` in steps of up to 4096 words, without
/// materialising it (e.g. to use a keystream as random bits).
pub fn with_mask(seed: &Seed, len: usize, f: impl FnMut(usize, &[u32])) {
    for_each_step(MASK_CIPHER, seed, len, f)
}

/// `v -= mask(seed)` in Z_{2^32}.
pub fn sub_mask(v: &mut [u32], seed: &Seed) {
    let len = v.len();
    for_each_step(MASK_CIPHER, seed, len, |offset, words| {
        for (x, w) in v[offset..offset + words.len()].iter_mut().zip(words) {
            *x = x.wrapping_sub(*w);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex32(s: &str) -> [u8; 32] {
        hex::decode(s).unwrap().try_into().unwrap()
    }

    /// RFC 8439 section 2.4.2: ChaCha20 with this key, nonce 000000000000004a00000000 and
    /// counter 1. Counter 0 is the block before, so the RFC's keystream starts at byte 64.
    #[test]
    fn chacha20_keystream_matches_rfc8439() {
        let key = hex32("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f");
        let nonce: [u8; 12] = hex::decode("000000000000004a00000000")
            .unwrap()
            .try_into()
            .unwrap();
        let mut c = ChaCha20::new(&key.into(), &nonce.into());
        let mut ks = [0u8; 128];
        c.write_keystream(&mut ks);
        assert_eq!(hex::encode(&ks[64..80]), "224f51f3401bd9e12fde276fb8631ded");
    }

    #[test]
    fn masks_are_deterministic_distinct_and_cancel() {
        let (a, b) = (Seed::from_bytes([1; 32]), Seed::from_bytes([2; 32]));
        let len = STEP * 2 + 3;
        let m = expand_mask(&a, len);
        assert_eq!(m, expand_mask(&a, len));
        assert_ne!(m, expand_mask(&b, len));
        // Prefix-consistent: a shorter mask is the start of a longer one.
        assert_eq!(expand_mask(&a, 10), m[..10]);
        let q: Vec<u32> = (0..len as u32).collect();
        let mut y = q.clone();
        add_mask(&mut y, &a);
        add_mask(&mut y, &b);
        assert_ne!(y, q);
        sub_mask(&mut y, &b);
        sub_mask(&mut y, &a);
        assert_eq!(y, q);
        for cipher in [
            MaskCipher::ChaCha8,
            MaskCipher::ChaCha12,
            MaskCipher::ChaCha20,
        ] {
            assert_ne!(expand_mask_with(cipher, &a, 16), m[..16], "{cipher:?}");
        }
    }

    /// Known answer for Conclave's own mask (AES-128-CTR, little-endian counter and words),
    /// cross-checked with Python's `cryptography` (AES-ECB of the counter blocks):
    /// guards against a silent change of cipher, nonce or byte order, which would make
    /// participants and committee members of different versions disagree on masks.
    #[test]
    fn fused_masks_equal_one_by_one_and_cancel() {
        let seeds: Vec<Seed> = (0..7).map(|_| Seed::random()).collect();
        // Lengths around the step size, to cover partial blocks.
        for len in [1, STEP - 1, STEP, STEP + 5, 3 * STEP + 17] {
            let start: Vec<u32> = (0..len as u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let mut fused = start.clone();
            add_masks(&mut fused, &seeds);
            let mut one_by_one = start.clone();
            for s in &seeds {
                add_mask(&mut one_by_one, s);
            }
            assert_eq!(fused, one_by_one, "len {len}");
            sub_masks(&mut fused, &seeds[..3]);
            for s in &seeds[3..] {
                sub_mask(&mut fused, s);
            }
            assert_eq!(fused, start, "len {len}");
        }
    }

    /// Every instruction-set level this CPU has (see `simd`) gives the same masks, fused
    /// masks and keystream words: the vector builds are only the compiler's instruction
    /// choice, but a participant and a member on different CPUs must agree bit for bit.
    #[test]
    fn every_instruction_level_gives_the_same_masks() {
        use simd::{CAP, Level};
        let seeds: Vec<Seed> = (0..3).map(|i| Seed::from_bytes([i + 9; 32])).collect();
        let len = 2 * STEP + 77;
        let run = |level: Level| {
            CAP.with(|c| c.set(level));
            let mut v: Vec<u32> = (0..len as u32).collect();
            add_masks(&mut v, &seeds);
            sub_masks(&mut v, &seeds[..1]);
            let expanded = expand_mask(&seeds[2], len);
            let mut streamed = Vec::new();
            with_mask(&seeds[1], len, |_, w| streamed.extend_from_slice(w));
            let kat = expand_mask(&Seed::from_bytes([0x42; 32]), 8);
            CAP.with(|c| c.set(Level::Vaes512));
            (v, expanded, streamed, kat)
        };
        let baseline = run(Level::Baseline);
        assert_eq!(baseline.3, KAT_MASK_0X42);
        let widest = Level::detect();
        for level in [Level::AesniAvx2, Level::Vaes256, Level::Vaes512] {
            if level <= widest {
                assert!(
                    run(level) == baseline,
                    "{level:?} differs from the baseline build"
                );
            }
        }
    }

    /// Known answers far into one mask (past the 64-block batches of the 512-bit VAES code
    /// and many 16 KiB steps), computed outside Rust: OpenSSL's AES-128-ECB of the
    /// little-endian counter blocks (`openssl enc -aes-128-ecb -nopad -K 4242…42`). Checked at
    /// every instruction level this CPU has, by expansion and by fused masking.
    #[test]
    fn long_mask_known_answer_at_every_level() {
        use simd::{CAP, Level};
        const WORDS: [(usize, u32); 6] = [
            (255, 2796023685),
            (256, 4194003224),
            (4095, 201136859),
            (4096, 539306296),
            (65535, 3061018166),
            (69999, 2541356803),
        ];
        let seed = Seed::from_bytes([0x42; 32]);
        for level in [
            Level::Baseline,
            Level::AesniAvx2,
            Level::Vaes256,
            Level::Vaes512,
        ] {
            if level > Level::detect() {
                continue;
            }
            CAP.with(|c| c.set(level));
            let expanded = expand_mask(&seed, 70_000);
            let mut fused = vec![0u32; 70_000];
            add_masks(&mut fused, std::slice::from_ref(&seed));
            CAP.with(|c| c.set(Level::Vaes512));
            for (i, word) in WORDS {
                assert_eq!(expanded[i], word, "{level:?}: word {i}");
                assert_eq!(fused[i], word, "{level:?}: fused word {i}");
            }
        }
    }

    #[test]
    fn mask_known_answer() {
        let m = expand_mask(&Seed::from_bytes([0x42; 32]), 8);
        assert_eq!(m, KAT_MASK_0X42);
    }

    const KAT_MASK_0X42: [u32; 8] = [
        3114958776, 472414841, 726168974, 517521668, 756688818, 634734698, 264905217, 3985714521,
    ];
}
