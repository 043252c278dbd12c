//! Sample-weighted federated averaging (FedAvg, McMahan et al. 2017): the server step that
//! turns the round's updates `Δ_i` with sample counts `n_i` into `Σ n_i Δ_i / Σ n_i` and adds
//! it to the global model. This is the coordinator's hot path in plain mode; it is benchmarked
//! in `benches/fedavg.rs`.

use crate::AggregationError;

/// One participant's update and how many training samples produced it.
#[derive(Clone, Copy, Debug)]
pub struct WeightedUpdate<'a> {
    pub delta: &'a [f32],
    pub num_samples: u64,
}

/// Elements summed per block: small enough that the output block stays in L1/L2 while every
/// update streams through it once.
const BLOCK: usize = 4096;

/// The sample-weighted mean of `updates`. All must have the same length, finite values, and a
/// positive sample count.
pub fn weighted_mean(updates: &[WeightedUpdate<'_>]) -> Result<Vec<f32>, AggregationError> {
    let first = updates.first().ok_or(AggregationError::NoUpdates)?;
    let dim = first.delta.len();
    let mut total: u64 = 0;
    for u in updates {
        if u.delta.len() != dim {
            return Err(AggregationError::DimensionMismatch { expected: dim, got: u.delta.len() });
        }
        if u.num_samples == 0 {
            return Err(AggregationError::ZeroSamples);
        }
        total = total.checked_add(u.num_samples).ok_or(AggregationError::ZeroSamples)?;
    }
    // Weights in f64 so that large sample counts keep their ratio; the sum runs in f32.
    let weights: Vec<f32> = updates.iter().map(|u| (u.num_samples as f64 / total as f64) as f32).collect();
    let mut out = vec![0f32; dim];
    for (start, block) in (0..dim).step_by(BLOCK).zip(out.chunks_mut(BLOCK)) {
        for (u, &w) in updates.iter().zip(&weights) {
            let src = &u.delta[start..start + block.len()];
            for (o, &x) in block.iter_mut().zip(src) {
                *o += w * x;
            }
        }
    }
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        return Err(AggregationError::NonFinite { index: i });
    }
    Ok(out)
}

/// `global += mean`: the FedAvg server step.
pub fn apply(global: &mut [f32], mean: &[f32]) -> Result<(), AggregationError> {
    if global.len() != mean.len() {
        return Err(AggregationError::DimensionMismatch { expected: global.len(), got: mean.len() });
    }
    for (g, d) in global.iter_mut().zip(mean) {
        *g += d;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn weights_by_samples() {
        let a = [1.0f32, 0.0, 4.0];
        let b = [3.0f32, 2.0, 0.0];
        let m = weighted_mean(&[
            WeightedUpdate { delta: &a, num_samples: 1 },
            WeightedUpdate { delta: &b, num_samples: 3 },
        ])
        .unwrap();
        assert_eq!(m, vec![2.5, 1.5, 1.0]);
    }

    #[test]
    fn refuses_mismatched_and_empty_input() {
        assert!(matches!(weighted_mean(&[]), Err(AggregationError::NoUpdates)));
        let a = [1.0f32; 3];
        let b = [1.0f32; 2];
        let r = weighted_mean(&[WeightedUpdate { delta: &a, num_samples: 1 }, WeightedUpdate { delta: &b, num_samples: 1 }]);
        assert!(matches!(r, Err(AggregationError::DimensionMismatch { expected: 3, got: 2 })));
        let r = weighted_mean(&[WeightedUpdate { delta: &a, num_samples: 0 }]);
        assert!(matches!(r, Err(AggregationError::ZeroSamples)));
        let mut g = [0.0f32; 2];
        assert!(apply(&mut g, &a).is_err());
    }

    proptest! {
        /// For any updates (across block boundaries), the blocked sum equals a naive f64 mean.
        #[test]
        fn matches_naive_weighted_mean(
            dim in 1usize..10_000,
            counts in proptest::collection::vec(1u64..1000, 1..6),
            seed in any::<u64>(),
        ) {
            let mut x = seed;
            let mut next = || { x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5 };
            let deltas: Vec<Vec<f32>> = counts.iter().map(|_| (0..dim).map(|_| next()).collect()).collect();
            let updates: Vec<_> = deltas.iter().zip(&counts).map(|(d, &n)| WeightedUpdate { delta: d, num_samples: n }).collect();
            let got = weighted_mean(&updates).unwrap();
            let total: u64 = counts.iter().sum();
            for i in 0..dim {
                let want: f64 = deltas.iter().zip(&counts).map(|(d, &n)| d[i] as f64 * n as f64).sum::<f64>() / total as f64;
                prop_assert!((got[i] as f64 - want).abs() < 1e-5, "index {i}: {} vs {want}", got[i]);
            }
        }
    }
}
