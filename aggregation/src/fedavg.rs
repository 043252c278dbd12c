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

/// Elements summed per block: the output block (4 MiB) stays in cache while every update
/// streams through it once, so the output is not re-read from memory once per update.
const BLOCK: usize = 1 << 20;

/// Below this many elements the sum runs on one thread.
const PARALLEL_MIN: usize = 1 << 18;

/// The sample-weighted mean of `updates`. All must have the same length, finite values, and a
/// positive sample count.
pub fn weighted_mean(updates: &[WeightedUpdate<'_>]) -> Result<Vec<f32>, AggregationError> {
    let dim = updates
        .first()
        .ok_or(AggregationError::NoUpdates)?
        .delta
        .len();
    let mut out = vec![0f32; dim];
    add_weighted_mean(&mut out, updates)?;
    Ok(out)
}

/// The FedAvg server step, fused: `global += Σ n_i Δ_i / Σ n_i`. Summing straight into the
/// resident global model saves allocating (and page-faulting) a fresh output vector each
/// round. On error `global` is unchanged, except for [`AggregationError::NonFinite`], which
/// leaves the non-finite sum in place for the caller to discard.
pub fn add_weighted_mean(
    global: &mut [f32],
    updates: &[WeightedUpdate<'_>],
) -> Result<(), AggregationError> {
    if updates.is_empty() {
        return Err(AggregationError::NoUpdates);
    }
    let dim = global.len();
    let mut total: u64 = 0;
    for u in updates {
        if u.delta.len() != dim {
            return Err(AggregationError::DimensionMismatch {
                expected: dim,
                got: u.delta.len(),
            });
        }
        if u.num_samples == 0 {
            return Err(AggregationError::ZeroSamples);
        }
        total = total
            .checked_add(u.num_samples)
            .ok_or(AggregationError::ZeroSamples)?;
    }
    // Weights in f64 so that large sample counts keep their ratio; the sum runs in f32.
    let weights: Vec<f32> = updates
        .iter()
        .map(|u| (u.num_samples as f64 / total as f64) as f32)
        .collect();
    sum_parallel(global, updates, &weights);
    check_finite(global)
}

/// Adds `Σ w_i · update_i` into `global`, the output split among the available cores (each
/// sums its range block by block). The split depends only on `global`'s length, so every
/// caller adds each element in the same order.
fn sum_parallel(global: &mut [f32], updates: &[WeightedUpdate<'_>], weights: &[f32]) {
    let dim = global.len();
    let threads = if dim >= PARALLEL_MIN {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        1
    };
    let per_thread = dim.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        for (t, range) in global.chunks_mut(per_thread).enumerate() {
            let mut job = move || sum_range(range, t * per_thread, updates, weights);
            if threads == 1 {
                job()
            } else {
                scope.spawn(job);
            }
        }
    });
}

/// `Ok` when every parameter is finite.
fn check_finite(global: &[f32]) -> Result<(), AggregationError> {
    match global.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(AggregationError::NonFinite { index }),
        None => Ok(()),
    }
}

/// FedAvg one update at a time, for updates read from disk one by one: `global` plus each
/// `n_i Δ_i / Σ n_i` as it comes, with `Σ n_i` known up front (the round's records hold every
/// upload's count). Only `global` and the update being added are in memory, however many
/// updates there are. Per element the additions happen in the order the updates are added,
/// exactly as [`add_weighted_mean`] does them in slice order, so both give the same bits.
pub struct StreamingMean<'a> {
    global: &'a mut [f32],
    total: u64,
    added: u64,
}

impl<'a> StreamingMean<'a> {
    /// Starts adding into `global` updates whose sample counts sum to `total`.
    pub fn new(global: &'a mut [f32], total: u64) -> Result<Self, AggregationError> {
        if total == 0 {
            return Err(AggregationError::NoUpdates);
        }
        Ok(Self {
            global,
            total,
            added: 0,
        })
    }

    /// Adds one update (`num_samples` of the total).
    pub fn add(&mut self, update: WeightedUpdate<'_>) -> Result<(), AggregationError> {
        let dim = self.global.len();
        if update.delta.len() != dim {
            return Err(AggregationError::DimensionMismatch {
                expected: dim,
                got: update.delta.len(),
            });
        }
        if update.num_samples == 0 {
            return Err(AggregationError::ZeroSamples);
        }
        let added = self
            .added
            .checked_add(update.num_samples)
            .filter(|&a| a <= self.total)
            .ok_or(AggregationError::SampleTotal {
                added: self.added.saturating_add(update.num_samples),
                total: self.total,
            })?;
        self.added = added;
        let w = [(update.num_samples as f64 / self.total as f64) as f32];
        sum_parallel(self.global, &[update], &w);
        Ok(())
    }

    /// Starts adding one update (`num_samples` of the total) given in consecutive parts, so
    /// that it need not be in memory whole: the same sum, bit for bit, as [`Self::add`].
    /// Every part must be given before the next update is started.
    pub fn add_parts(&mut self, num_samples: u64) -> Result<UpdateParts<'_, 'a>, AggregationError> {
        if num_samples == 0 {
            return Err(AggregationError::ZeroSamples);
        }
        let added = self
            .added
            .checked_add(num_samples)
            .filter(|&a| a <= self.total)
            .ok_or(AggregationError::SampleTotal {
                added: self.added.saturating_add(num_samples),
                total: self.total,
            })?;
        self.added = added;
        let weight = (num_samples as f64 / self.total as f64) as f32;
        Ok(UpdateParts {
            mean: self,
            weight,
            next: 0,
        })
    }

    /// Ends the sum: every sample counted, and every parameter finite.
    pub fn finish(self) -> Result<(), AggregationError> {
        if self.added != self.total {
            return Err(AggregationError::SampleTotal {
                added: self.added,
                total: self.total,
            });
        }
        check_finite(self.global)
    }
}

/// One update being added to a [`StreamingMean`] part by part.
pub struct UpdateParts<'m, 'a> {
    mean: &'m mut StreamingMean<'a>,
    weight: f32,
    /// Where the next part starts.
    next: usize,
}

impl UpdateParts<'_, '_> {
    /// Adds the update's next `part.len()` elements.
    pub fn add(&mut self, part: &[f32]) -> Result<(), AggregationError> {
        let dim = self.mean.global.len();
        let end = self.next + part.len();
        if end > dim {
            return Err(AggregationError::DimensionMismatch {
                expected: dim,
                got: end,
            });
        }
        let update = WeightedUpdate {
            delta: part,
            num_samples: 1,
        };
        sum_parallel(
            &mut self.mean.global[self.next..end],
            &[update],
            &[self.weight],
        );
        self.next = end;
        Ok(())
    }

    /// Ends the update: every element given.
    pub fn finish(self) -> Result<(), AggregationError> {
        let dim = self.mean.global.len();
        if self.next != dim {
            return Err(AggregationError::DimensionMismatch {
                expected: dim,
                got: self.next,
            });
        }
        Ok(())
    }
}

/// Adds `Σ w_i · update_i[offset..offset + out.len()]` into `out`, one cache-sized block at a time.
fn sum_range(out: &mut [f32], offset: usize, updates: &[WeightedUpdate<'_>], weights: &[f32]) {
    for (b, block) in out.chunks_mut(BLOCK).enumerate() {
        let start = offset + b * BLOCK;
        for (u, &w) in updates.iter().zip(weights) {
            let src = &u.delta[start..start + block.len()];
            for (o, &x) in block.iter_mut().zip(src) {
                *o += w * x;
            }
        }
    }
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
            WeightedUpdate {
                delta: &a,
                num_samples: 1,
            },
            WeightedUpdate {
                delta: &b,
                num_samples: 3,
            },
        ])
        .unwrap();
        assert_eq!(m, vec![2.5, 1.5, 1.0]);
    }

    #[test]
    fn refuses_mismatched_and_empty_input() {
        assert!(matches!(
            weighted_mean(&[]),
            Err(AggregationError::NoUpdates)
        ));
        let a = [1.0f32; 3];
        let b = [1.0f32; 2];
        let r = weighted_mean(&[
            WeightedUpdate {
                delta: &a,
                num_samples: 1,
            },
            WeightedUpdate {
                delta: &b,
                num_samples: 1,
            },
        ]);
        assert!(matches!(
            r,
            Err(AggregationError::DimensionMismatch {
                expected: 3,
                got: 2
            })
        ));
        let r = weighted_mean(&[WeightedUpdate {
            delta: &a,
            num_samples: 0,
        }]);
        assert!(matches!(r, Err(AggregationError::ZeroSamples)));
        let mut g = [7.0f32; 2];
        assert!(
            add_weighted_mean(
                &mut g,
                &[WeightedUpdate {
                    delta: &a,
                    num_samples: 1
                }]
            )
            .is_err()
        );
        assert_eq!(
            g,
            [7.0, 7.0],
            "refused input leaves the global model untouched"
        );
    }

    #[test]
    fn parallel_blocked_sum_matches_sequential_on_large_vectors() {
        let dim = 2 * BLOCK + PARALLEL_MIN + 7;
        let a: Vec<f32> = (0..dim).map(|i| (i % 97) as f32 * 0.01).collect();
        let b: Vec<f32> = (0..dim).map(|i| (i % 13) as f32 * -0.1).collect();
        let m = weighted_mean(&[
            WeightedUpdate {
                delta: &a,
                num_samples: 2,
            },
            WeightedUpdate {
                delta: &b,
                num_samples: 6,
            },
        ])
        .unwrap();
        for i in (0..dim)
            .step_by(997)
            .chain([dim - 1, BLOCK - 1, BLOCK, PARALLEL_MIN])
        {
            let want = 0.25 * a[i] + 0.75 * b[i];
            assert!((m[i] - want).abs() < 1e-5, "index {i}: {} vs {want}", m[i]);
        }
    }

    #[test]
    fn an_update_in_parts_must_cover_the_model_exactly() {
        let mut global = vec![0f32; 4];
        let mut sum = StreamingMean::new(&mut global, 2).unwrap();
        let mut parts = sum.add_parts(1).unwrap();
        parts.add(&[1.0, 1.0]).unwrap();
        assert!(matches!(
            parts.add(&[1.0, 1.0, 1.0]),
            Err(AggregationError::DimensionMismatch {
                expected: 4,
                got: 5
            })
        ));
        assert!(matches!(
            parts.finish(),
            Err(AggregationError::DimensionMismatch {
                expected: 4,
                got: 2
            })
        ));
        assert!(matches!(
            sum.add_parts(2),
            Err(AggregationError::SampleTotal { added: 3, total: 2 })
        ));
        assert!(matches!(
            sum.add_parts(0),
            Err(AggregationError::ZeroSamples)
        ));
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
            // One at a time, as from disk: the same bits.
            let mut streamed = vec![0f32; dim];
            let mut sum = StreamingMean::new(&mut streamed, total).unwrap();
            for u in &updates {
                sum.add(*u).unwrap();
            }
            sum.finish().unwrap();
            prop_assert_eq!(
                streamed.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            // Each update in parts (as read from its file in blocks): the same bits again.
            let mut parted = vec![0f32; dim];
            let mut sum = StreamingMean::new(&mut parted, total).unwrap();
            for (k, u) in updates.iter().enumerate() {
                let mut parts = sum.add_parts(u.num_samples).unwrap();
                let step = 1 + (seed as usize ^ k.wrapping_mul(7919)) % dim;
                for part in u.delta.chunks(step) {
                    parts.add(part).unwrap();
                }
                parts.finish().unwrap();
            }
            sum.finish().unwrap();
            prop_assert_eq!(
                parted.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                got.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            );
            for i in 0..dim {
                let want: f64 = deltas.iter().zip(&counts).map(|(d, &n)| d[i] as f64 * n as f64).sum::<f64>() / total as f64;
                prop_assert!((got[i] as f64 - want).abs() < 1e-5, "index {i}: {} vs {want}", got[i]);
            }
        }
    }
}
