//! Fixed-point quantization of weighted updates into the ring Z_{2^32}, with stochastic
//! rounding, for secure aggregation.
//!
//! Participant `i` with `n_i` samples and clipped update `Δ_i` (`‖Δ_i‖₂ ≤ C`) encodes
//! `w_i·Δ_i` with `w_i = n_i / M` (M = the job's `max_samples` per participant, so `w_i ≤ 1`)
//! as `round(S · w_i · Δ_i[k])`, two's complement, and appends `n_i` itself as the last
//! element. With at most `P` participants in a round, every coordinate of the sum has
//! magnitude at most `S·P·C + P` (the `+P` is rounding), and [`QuantParams::new`] picks the
//! largest scale `S` that keeps this below 2^31, so the ring sum never wraps; it refuses
//! settings that would leave too little precision. The sample counts sum to at most `P·M`,
//! which must fit in 32 bits. Stochastic rounding makes each coordinate unbiased:
//! `E[q] = S·w·Δ`.

use conclave_crypto::Seed;
use rand::Rng;

/// Largest magnitude an encoded coordinate is computed with (the scale keeps a single
/// coordinate below 2^31 / P; this bound is what makes the cast below sound on its own).
const I32_BOUND: f64 = (i32::MAX - 1) as f64;

/// Relative slack over the clip norm that `encode` (and a coordinator checking a plain upload)
/// accepts: f32 clipping can overshoot by an ulp or so. The scale is chosen for the norm with
/// this slack.
pub const CLIP_SLACK: f64 = 1e-5;

/// Smallest scale accepted: coarser than 2^-12 per unit of update would lose the update.
pub const MIN_SCALE: f64 = 4096.0;

/// Why quantization parameters or inputs are refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum QuantError {
    #[error("clip_norm must be a finite number > 0 for secure aggregation, got {0}")]
    BadClip(f32),
    #[error("max_samples and max_participants must be at least 1")]
    BadBounds,
    #[error(
        "{participants} participants × clip_norm {clip} leave a scale of {scale:.1} (< {MIN_SCALE}): the 32-bit ring sum could wrap or lose precision; lower clip_norm or max_participants"
    )]
    TooCoarse {
        participants: u32,
        clip: f32,
        scale: f64,
    },
    #[error(
        "{participants} participants × max_samples {max_samples} overflow the 32-bit sample count"
    )]
    SampleOverflow { participants: u32, max_samples: u64 },
    #[error("update has L2 norm {norm}, above clip_norm {clip}")]
    NotClipped { norm: f64, clip: f32 },
    #[error("sample count {got} is outside 1..={max}")]
    BadSamples { got: u64, max: u64 },
    #[error("update value at {index} is not finite")]
    NonFinite { index: usize },
    #[error("ring vector has {got} elements, expected {expected}")]
    Length { got: usize, expected: usize },
    #[error("sum of sample counts is 0: nothing to decode")]
    NoSamples,
    #[error("the unmasked sum is out of the bounds {uploads} clipped uploads allow: {what}")]
    OutOfBounds { uploads: usize, what: String },
}

/// The encoding all parties of a round agree on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct QuantParams {
    clip: f32,
    max_samples: u64,
    max_participants: u32,
    scale: f64,
}

impl QuantParams {
    /// Parameters for rounds of at most `max_participants` participants with at most
    /// `max_samples` samples each and updates clipped to `clip`.
    pub fn new(clip: f32, max_samples: u64, max_participants: u32) -> Result<Self, QuantError> {
        if !(clip.is_finite() && clip > 0.0) {
            return Err(QuantError::BadClip(clip));
        }
        if max_samples == 0 || max_participants == 0 {
            return Err(QuantError::BadBounds);
        }
        if (max_participants as u128) * (max_samples as u128) > u32::MAX as u128 {
            return Err(QuantError::SampleOverflow {
                participants: max_participants,
                max_samples,
            });
        }
        let p = max_participants as f64;
        // S·P·C' + P ≤ 2^31 - 1, with C' the largest norm `encode` accepts (the clip bound
        // plus its f32 slack) and a margin of one unit per participant for f64 rounding.
        let scale = ((i32::MAX as f64 - 2.0 * p) / (p * clip as f64 * (1.0 + CLIP_SLACK))).floor();
        if scale < MIN_SCALE {
            return Err(QuantError::TooCoarse {
                participants: max_participants,
                clip,
                scale,
            });
        }
        Ok(Self {
            clip,
            max_samples,
            max_participants,
            scale,
        })
    }

    /// The fixed-point scale `S`.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    pub fn clip(&self) -> f32 {
        self.clip
    }

    pub fn max_samples(&self) -> u64 {
        self.max_samples
    }

    pub fn max_participants(&self) -> u32 {
        self.max_participants
    }

    /// Encodes `n·Δ` (as `S·(n/M)·Δ`, stochastically rounded) and `n`: `delta.len() + 1`
    /// ring elements. `delta` must already be clipped.
    pub fn encode(
        &self,
        delta: &[f32],
        num_samples: u64,
        rng: &mut impl Rng,
    ) -> Result<Vec<u32>, QuantError> {
        if num_samples == 0 || num_samples > self.max_samples {
            return Err(QuantError::BadSamples {
                got: num_samples,
                max: self.max_samples,
            });
        }
        // One pass for the norm, in eight independent lanes (a single running sum is one long
        // chain of dependent additions; lanes vectorise and give the same result every time).
        // A non-finite value makes the norm non-finite; only then is it looked for.
        let mut lanes = [0f64; 8];
        let mut blocks = delta.chunks_exact(8);
        for block in &mut blocks {
            for (lane, &x) in lanes.iter_mut().zip(block) {
                *lane += x as f64 * x as f64;
            }
        }
        for (lane, &x) in lanes.iter_mut().zip(blocks.remainder()) {
            *lane += x as f64 * x as f64;
        }
        let norm = lanes.iter().sum::<f64>().sqrt();
        if !norm.is_finite() {
            return Err(match delta.iter().position(|v| !v.is_finite()) {
                Some(index) => QuantError::NonFinite { index },
                // Not reachable (squares of finite f32s cannot overflow an f64 sum), but a
                // non-finite norm must never reach the rounding below.
                None => QuantError::NotClipped {
                    norm,
                    clip: self.clip,
                },
            });
        }
        // Clipping in f32 can overshoot by an ulp or so; allow that, nothing more.
        if norm > self.clip as f64 * (1.0 + CLIP_SLACK) {
            return Err(QuantError::NotClipped {
                norm,
                clip: self.clip,
            });
        }
        let factor = self.scale * num_samples as f64 / self.max_samples as f64;
        // Rounding noise: 32 uniform bits per element from the AES-CTR stream of a seed drawn
        // from `rng` (≈ 15 GB/s, against ~1 GB/s for one f64 draw per element from `rng`).
        // The noise is streamed in blocks, never held whole, and this loop is compiled with
        // the mask stream's vector instructions (`prg::with_mask`).
        let mut out = vec![0u32; delta.len() + 1];
        let seed = Seed::from_bytes(rng.random());
        conclave_crypto::prg::with_mask(&seed, delta.len(), |offset, noise| {
            let n = noise.len();
            let block = out[offset..offset + n]
                .iter_mut()
                .zip(&delta[offset..offset + n]);
            for ((o, &x), &r) in block.zip(noise) {
                // |v| ≤ S·C' < 2^31 by the scale; the bounds make the cast below sound
                // whatever reaches it (max/min also map a NaN to a bound, unlike clamp).
                #[allow(clippy::manual_clamp)] // clamp would keep a NaN; max/min do not
                let v = (x as f64 * factor).max(-I32_BOUND).min(I32_BOUND);
                // floor(v) without a libm call: the truncating cast to i32 is exact and only
                // negative non-integers need a step down. All of it vectorises.
                // SAFETY: the max/min above leave `v` a number within ±I32_BOUND, in i32.
                let t: i32 = unsafe { v.to_int_unchecked() };
                let floor = t - ((t as f64) > v) as i32;
                // Round up with probability v - floor (to 2^-32).
                let up = (r as f64) < (v - floor as f64) * 4_294_967_296.0;
                *o = floor.wrapping_add(up as i32) as u32;
            }
        });
        out[delta.len()] = num_samples as u32;
        Ok(out)
    }

    /// Decodes a ring sum of `uploads` encodings into `(Σ n_i Δ_i / Σ n_i, Σ n_i)`: the
    /// sample-weighted mean update and the total sample count. Refuses a sum that honest
    /// encodings could not add up to — a total outside `uploads..=uploads·M`, or an L2 norm
    /// above `S·C'·Σn_i/M + uploads·√dim` (each update is clipped to `C'`, weighted by
    /// `n_i/M`, and rounded by less than one unit per coordinate) — so one participant cannot
    /// push the model further than a clipped update could. Within those bounds a lie is not
    /// detected (that needs per-upload range proofs; DESIGN.md, "Bounds on one participant").
    pub fn decode_mean(
        &self,
        sum: &[u32],
        dim: usize,
        uploads: usize,
    ) -> Result<(Vec<f32>, u64), QuantError> {
        if sum.len() != dim + 1 {
            return Err(QuantError::Length {
                got: sum.len(),
                expected: dim + 1,
            });
        }
        let total = sum[dim] as u64;
        if total == 0 {
            return Err(QuantError::NoSamples);
        }
        let out_of_bounds = |what: String| QuantError::OutOfBounds { uploads, what };
        let most = uploads as u64 * self.max_samples;
        if total < uploads as u64 || total > most {
            return Err(out_of_bounds(format!(
                "{total} samples in all, not between {uploads} and {most}"
            )));
        }
        let mut lanes = [0f64; 8];
        for block in sum[..dim].chunks(8) {
            for (lane, &q) in lanes.iter_mut().zip(block) {
                let v = q as i32 as f64;
                *lane += v * v;
            }
        }
        let norm = lanes.iter().sum::<f64>().sqrt();
        let bound = self.scale * self.clip as f64 * (1.0 + CLIP_SLACK) * total as f64
            / self.max_samples as f64
            + uploads as f64 * (dim as f64).sqrt();
        // f64 rounding of the norm and bound: far below one unit.
        if norm > bound * (1.0 + 1e-9) + 1e-6 {
            return Err(out_of_bounds(format!(
                "L2 norm {norm:.0} above {bound:.0} (in units of 1/{:.0})",
                self.scale
            )));
        }
        // Σ S·(n_i/M)·Δ_i / (S·Σn_i/M) = Σ n_i Δ_i / Σ n_i
        let denom = self.scale * total as f64 / self.max_samples as f64;
        Ok((
            sum[..dim]
                .iter()
                .map(|&q| (q as i32 as f64 / denom) as f32)
                .collect(),
            total,
        ))
    }
}

/// Adds ring vectors: `acc += v` in Z_{2^32}.
pub fn ring_add(acc: &mut [u32], v: &[u32]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = a.wrapping_add(*x);
    }
}

/// Subtracts ring vectors: `acc -= v` in Z_{2^32}.
pub fn ring_sub(acc: &mut [u32], v: &[u32]) {
    for (a, x) in acc.iter_mut().zip(v) {
        *a = a.wrapping_sub(*x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn refuses_settings_that_could_wrap() {
        assert!(QuantParams::new(0.0, 10, 10).is_err());
        assert!(QuantParams::new(f32::NAN, 10, 10).is_err());
        assert!(matches!(
            QuantParams::new(1e6, 100, 1000),
            Err(QuantError::TooCoarse { .. })
        ));
        assert!(matches!(
            QuantParams::new(1.0, 1 << 30, 8),
            Err(QuantError::SampleOverflow { .. })
        ));
        let q = QuantParams::new(10.0, 10_000, 100).unwrap();
        assert!(q.scale() * 100.0 * 10.0 + 100.0 < i32::MAX as f64);
    }

    #[test]
    fn encode_checks_its_input() {
        let q = QuantParams::new(1.0, 100, 10).unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        assert!(matches!(
            q.encode(&[2.0], 10, &mut rng),
            Err(QuantError::NotClipped { .. })
        ));
        assert!(matches!(
            q.encode(&[0.1], 0, &mut rng),
            Err(QuantError::BadSamples { .. })
        ));
        assert!(matches!(
            q.encode(&[0.1], 101, &mut rng),
            Err(QuantError::BadSamples { .. })
        ));
        assert!(matches!(
            q.encode(&[f32::NAN], 1, &mut rng),
            Err(QuantError::NonFinite { index: 0 })
        ));
    }

    #[test]
    fn stochastic_rounding_is_unbiased() {
        let q = QuantParams::new(1.0, 1, 1).unwrap();
        let x = 0.3 / q.scale() as f32; // 0.3 of one quantum
        let mut rng = StdRng::seed_from_u64(9);
        let ones: u64 = (0..20_000)
            .map(|_| q.encode(&[x], 1, &mut rng).unwrap()[0] as u64)
            .sum();
        let mean = ones as f64 / 20_000.0;
        assert!((mean - 0.3).abs() < 0.02, "{mean}");
    }

    #[test]
    fn rounding_stays_within_one_quantum_on_both_sides_of_zero() {
        let q = QuantParams::new(1.0, 1, 1).unwrap();
        let quantum = 1.0 / q.scale();
        let mut rng = StdRng::seed_from_u64(3);
        // Exact multiples of a quantum (negative, zero, positive) encode exactly; the others
        // land on the floor or the ceiling, never further.
        for k in [-5.0f64, -1.0, 0.0, 1.0, 7.0] {
            let x = (k * quantum) as f32;
            let want = (x as f64 * q.scale()).round() as i64;
            let got = q.encode(&[x], 1, &mut rng).unwrap()[0] as i32 as i64;
            assert_eq!(got, want, "{k} quanta");
        }
        for k in [-2.5f64, -0.25, 0.75, 3.5] {
            let x = (k * quantum) as f32;
            let v = x as f64 * q.scale();
            for _ in 0..50 {
                let got = q.encode(&[x], 1, &mut rng).unwrap()[0] as i32 as f64;
                assert!(got == v.floor() || got == v.ceil(), "{k}: {got} from {v}");
            }
        }
    }

    proptest! {
        /// `encode` is exactly the stochastic rounding it documents, element by element.
        #[test]
        fn encode_equals_the_scalar_definition(
            values in proptest::collection::vec(-1.0f32..1.0, 1..300),
            clip in 0.01f32..100.0,
            samples in 1u64..1000,
            seed in any::<u64>(),
        ) {
            let q = QuantParams::new(clip, 1000, 10).unwrap();
            let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            // Some integral and negative values: the floor's edge cases.
            let delta: Vec<f32> = values.iter().enumerate().map(|(i, x)| match i % 7 {
                0 => 0.0,
                1 => -(x.abs()) * clip * 0.9 / norm,
                _ => x * clip * 0.9 / norm,
            }).collect();
            let mut rng = StdRng::seed_from_u64(seed);
            let got = q.encode(&delta, samples, &mut rng.clone()).unwrap();
            // The definition: floor(v) + [r < frac(v)·2^32], with r the noise stream's word.
            let noise = conclave_crypto::prg::expand_mask(&Seed::from_bytes(rng.random()), delta.len());
            let factor = q.scale() * samples as f64 / 1000.0;
            for (k, (&x, &r)) in delta.iter().zip(&noise).enumerate() {
                let v = x as f64 * factor;
                let up = (r as f64) < (v - v.floor()) * 4_294_967_296.0;
                prop_assert_eq!(got[k], (v.floor() as i64 + up as i64) as i32 as u32, "element {}", k);
            }
            prop_assert_eq!(got[delta.len()], samples as u32);
        }

        /// For any participants at the bounds (every update at the largest norm accepted, every
        /// coordinate on one axis, maximal sample counts), the ring sum decodes to the
        /// weighted mean within quantization error, and never wraps.
        #[test]
        fn worst_case_sums_do_not_wrap(p in 1u32..64, clip in 0.01f32..100.0, max_samples in 1u64..10_000, sign in any::<bool>(), seed in any::<u64>()) {
            let Ok(q) = QuantParams::new(clip, max_samples, p) else { return Ok(()); };
            let mut rng = StdRng::seed_from_u64(seed);
            // The largest |Δ[0]| encode accepts: the clip norm plus its slack.
            let mut top = (clip as f64 * (1.0 + CLIP_SLACK)) as f32;
            if top as f64 > clip as f64 * (1.0 + CLIP_SLACK) {
                top = top.next_down();
            }
            let x = if sign { top } else { -top };
            let dim = 3;
            let mut sum = vec![0u32; dim + 1];
            for _ in 0..p {
                // All mass on coordinate 0, the largest a coordinate can be.
                let delta = [x, 0.0, 0.0];
                ring_add(&mut sum, &q.encode(&delta, max_samples, &mut rng).unwrap());
            }
            let (mean, total) = q.decode_mean(&sum, dim, p as usize).unwrap();
            prop_assert_eq!(total, p as u64 * max_samples);
            let tolerance = 2.0 * max_samples as f64 / (q.scale() * total as f64) * p as f64;
            prop_assert!((mean[0] as f64 - x as f64).abs() <= tolerance.max(1e-6) + (x.abs() as f64) * 1e-6, "{} vs {x}", mean[0]);
        }
    }

    proptest! {
        /// Honest sums of any clipped updates pass the bound check; a sum one participant
        /// pushed by more than a clipped update could — any coordinate moved by a large
        /// amount, or the count slot out of range — fails it.
        #[test]
        fn sums_out_of_bounds_are_refused(
            p in 1u32..20, clip in 0.01f32..10.0, max_samples in 1u64..1000,
            values in proptest::collection::vec(-1.0f32..1.0, 1..50), seed in any::<u64>(),
            at in any::<proptest::sample::Index>(), push in 1u32..(1 << 31),
        ) {
            let Ok(q) = QuantParams::new(clip, max_samples, p) else { return Ok(()); };
            let mut rng = StdRng::seed_from_u64(seed);
            let dim = values.len();
            let norm = values.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
            let delta: Vec<f32> = values.iter().map(|x| x * clip / norm).collect();
            let mut sum = vec![0u32; dim + 1];
            for _ in 0..p {
                ring_add(&mut sum, &q.encode(&delta, max_samples, &mut rng).unwrap());
            }
            prop_assert!(q.decode_mean(&sum, dim, p as usize).is_ok());
            // Fewer uploads than the count says is also refused (the count slot lies).
            if max_samples > 1 {
                prop_assert!(q.decode_mean(&sum, dim, 1).is_err() || p == 1);
            }
            // One coordinate pushed far beyond what p clipped updates can reach.
            let k = at.index(dim);
            let reach = (q.scale() * clip as f64 * p as f64 * 2.0 + p as f64 * 8.0) as u64;
            if (push as u64) > reach && (push as u64) < (1u64 << 32) - reach {
                let mut bad = sum.clone();
                bad[k] = bad[k].wrapping_add(push);
                let refused = matches!(q.decode_mean(&bad, dim, p as usize), Err(QuantError::OutOfBounds { .. }));
                prop_assert!(refused);
            }
            let mut bad = sum.clone();
            bad[dim] = (p as u64 * max_samples + 1).min(u32::MAX as u64) as u32;
            prop_assert!(q.decode_mean(&bad, dim, p as usize).is_err());
        }
    }
}
