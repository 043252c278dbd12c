//! Server strategies: how a round's aggregate becomes the next global model. Every privacy
//! mode ends a round with the same thing, the sample-weighted mean update `d` (in plain mode
//! averaged from the updates, under secure aggregation unmasked from their sum), and that is
//! all a strategy sees, so every strategy works under every mode. A strategy may keep state
//! across rounds (the adaptive ones keep two moments per parameter); the coordinator stores it
//! beside the model version it belongs to.
//!
//! A strategy acts on each parameter alone, so it is applied block by block
//! ([`apply`]) and a step over a range of parameters is that range of the whole step.
//!
//! Adding a strategy is a module with a type implementing [`ServerStrategy`], one arm of
//! [`Strategy`], and its settings in the job file (`crate::job`); the compiler names the rest.

mod adaptive;
mod fedavg;

pub use adaptive::{Adaptive, SecondMoment};
pub use fedavg::FedAvg;

use crate::AggregationError;
use crate::model::le_f32s;

/// One server strategy's rules.
pub trait ServerStrategy {
    /// Its name in job files and logs.
    fn label(&self) -> &'static str;

    /// How many `f32`s of state it keeps per model parameter (0: none).
    fn state_per_param(&self) -> usize;

    /// The state before the first round: [`Self::state_per_param`] values per parameter,
    /// parameter by parameter.
    fn initial_state(&self, dim: usize) -> Vec<f32>;

    /// One server step over a range of parameters. `base` is the round's base model,
    /// `next` holds the aggregate on entry and the new parameters on return, and `state`
    /// (`state_per_param() * next.len()` values, parameter by parameter) goes from the state
    /// after the last round to the state after this one.
    fn step(&self, base: &[f32], next: &mut [f32], state: &mut [f32]);
}

/// The strategies a job can use. Exhaustive: every `match` names each one.
#[derive(Clone, Debug, PartialEq)]
pub enum Strategy {
    FedAvg(FedAvg),
    Adaptive(Adaptive),
}

impl Default for Strategy {
    fn default() -> Self {
        Self::FedAvg(FedAvg)
    }
}

impl Strategy {
    /// Its rules.
    pub fn rules(&self) -> &dyn ServerStrategy {
        match self {
            Self::FedAvg(s) => s,
            Self::Adaptive(s) => s,
        }
    }
}

/// Parameters stepped at a time by [`apply`] (256 KiB of them): a block is checked while it
/// is still in cache.
const BLOCK: usize = 1 << 16;

/// The server step over a whole model: `next` holds the round's aggregate on entry and the
/// new parameters on return; `base` is the round's base model as little-endian `f32`s;
/// `state` is updated. A new parameter or state value that is not finite (the step
/// overflowed) is [`AggregationError::NonFinite`]; `next` and `state` are then unusable and
/// the caller keeps the old ones.
pub fn apply(
    strategy: &dyn ServerStrategy,
    base: &[u8],
    next: &mut [f32],
    state: &mut [f32],
) -> Result<(), AggregationError> {
    let dim = next.len();
    if base.len() != dim * 4 {
        return Err(AggregationError::DimensionMismatch {
            expected: dim,
            got: base.len() / 4,
        });
    }
    let k = strategy.state_per_param();
    if state.len() != dim * k {
        return Err(AggregationError::DimensionMismatch {
            expected: dim * k,
            got: state.len(),
        });
    }
    // Little-endian bytes are the machine's f32s when it is little-endian and they are
    // aligned (the allocator aligns a model's buffer): read in place, else decoded per block.
    let in_place: Option<&[f32]> = if cfg!(target_endian = "little") {
        bytemuck::try_cast_slice(base).ok()
    } else {
        None
    };
    let mut decoded = Vec::new();
    for (b, block) in next.chunks_mut(BLOCK).enumerate() {
        let start = b * BLOCK;
        let end = start + block.len();
        let base = match in_place {
            Some(all) => &all[start..end],
            None => {
                decoded.clear();
                decoded.extend(le_f32s(&base[start * 4..end * 4]));
                &decoded[..]
            }
        };
        let state = &mut state[start * k..end * k];
        strategy.step(base, block, state);
        if let Some(i) = block.iter().position(|v| !v.is_finite()) {
            return Err(AggregationError::NonFinite { index: start + i });
        }
        if let Some(i) = state.iter().position(|v| !v.is_finite()) {
            return Err(AggregationError::NonFinite {
                index: start + i / k,
            });
        }
    }
    Ok(())
}

/// The one tensor a state file holds.
const STATE_TENSOR: &str = "server_state";

/// The metadata key naming the strategy a state file belongs to.
const STATE_STRATEGY: &str = "strategy";

/// The state's values as little-endian bytes: the values themselves on a little-endian
/// machine (no copy), a copy elsewhere.
fn state_bytes(state: &[f32]) -> std::borrow::Cow<'_, [u8]> {
    if cfg!(target_endian = "little") {
        std::borrow::Cow::Borrowed(bytemuck::cast_slice(state))
    } else {
        std::borrow::Cow::Owned(state.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

/// The BLAKE3 hash of a state's values (little-endian f32s): what a job's record keeps of the
/// state after its latest model, checked when the state is read back.
pub fn state_hash(state: &[f32]) -> blake3::Hash {
    blake3::hash(&state_bytes(state))
}

/// Writes a strategy's state for a model of `dim` parameters to `path` as a safetensors file:
/// one f32 tensor `server_state` of shape `[dim, state_per_param]`, the strategy's label in
/// its metadata. Streamed from the state (no copy of it on a little-endian machine). Not
/// synced: the caller syncs the file.
pub fn write_state_safetensors(
    strategy: &dyn ServerStrategy,
    dim: usize,
    state: &[f32],
    path: &std::path::Path,
) -> Result<(), AggregationError> {
    let k = strategy.state_per_param();
    if state.len() != dim * k {
        return Err(AggregationError::DimensionMismatch {
            expected: dim * k,
            got: state.len(),
        });
    }
    let bytes = state_bytes(state);
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![dim, k], &bytes)
        .map_err(|e| AggregationError::Safetensors(e.to_string()))?;
    let metadata = std::collections::HashMap::from([(
        STATE_STRATEGY.to_string(),
        strategy.label().to_string(),
    )]);
    safetensors::serialize_to_file([(STATE_TENSOR, view)], Some(metadata), path)
        .map_err(|e| AggregationError::Safetensors(e.to_string()))
}

/// Reads back a state file written by [`write_state_safetensors`] for this strategy and a model
/// of `dim` parameters, refusing another strategy's state, another shape, or a value that is
/// not finite.
pub fn state_from_safetensors(
    strategy: &dyn ServerStrategy,
    dim: usize,
    file: &[u8],
) -> Result<Vec<f32>, AggregationError> {
    let bad = |what: String| AggregationError::Safetensors(format!("server state: {what}"));
    let (_, header) =
        safetensors::SafeTensors::read_metadata(file).map_err(|e| bad(e.to_string()))?;
    let named = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(STATE_STRATEGY))
        .map(String::as_str);
    if named != Some(strategy.label()) {
        return Err(bad(format!(
            "written for strategy {named:?}, the job uses {:?}",
            strategy.label()
        )));
    }
    let st = safetensors::SafeTensors::deserialize(file).map_err(|e| bad(e.to_string()))?;
    let k = strategy.state_per_param();
    let view = st.tensor(STATE_TENSOR).map_err(|e| bad(e.to_string()))?;
    if st.len() != 1 || view.dtype() != safetensors::Dtype::F32 || view.shape() != [dim, k] {
        return Err(bad(format!(
            "expected one f32 tensor of shape [{dim}, {k}], found {} tensors, {:?} {:?}",
            st.len(),
            view.dtype(),
            view.shape()
        )));
    }
    let state: Vec<f32> = le_f32s(view.data()).collect();
    if let Some(i) = state.iter().position(|v| !v.is_finite()) {
        return Err(bad(format!("value {i} is not finite")));
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::{prop_assert_eq, proptest};

    fn le(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn adaptive(second_moment: SecondMoment) -> Strategy {
        Strategy::Adaptive(Adaptive {
            second_moment,
            server_lr: 0.1,
            beta1: 0.9,
            beta2: if second_moment == SecondMoment::Adagrad {
                0.0
            } else {
                0.99
            },
            tau: 1e-3,
        })
    }

    fn adam() -> Strategy {
        adaptive(SecondMoment::Adam)
    }

    #[test]
    fn fedavg_adds_the_mean_and_keeps_no_state() {
        let s = Strategy::default();
        assert_eq!(s.rules().label(), "fedavg");
        assert!(s.rules().initial_state(5).is_empty());
        let mut next = vec![0.5, -1.0, 0.0];
        apply(s.rules(), &le(&[1.0, 2.0, 3.0]), &mut next, &mut []).unwrap();
        assert_eq!(next, vec![1.5, 1.0, 3.0]);
    }

    #[test]
    fn apply_refuses_mismatched_lengths() {
        let s = adam();
        let mut next = vec![0.0; 3];
        let mut state = s.rules().initial_state(3);
        assert!(matches!(
            apply(s.rules(), &le(&[0.0; 2]), &mut next, &mut state),
            Err(AggregationError::DimensionMismatch { .. })
        ));
        assert!(matches!(
            apply(s.rules(), &le(&[0.0; 3]), &mut next, &mut state[..5]),
            Err(AggregationError::DimensionMismatch { .. })
        ));
    }

    /// Base bytes read in place (aligned) and decoded (misaligned) give the same model, over
    /// several blocks; an overflow in a later block is reported at its index in the model.
    #[test]
    fn apply_reads_aligned_and_misaligned_bases_alike_over_blocks() {
        let dim = BLOCK * 2 + 3;
        let base: Vec<f32> = (0..dim).map(|i| (i % 97) as f32 * 0.25 - 3.0).collect();
        let mean: Vec<f32> = (0..dim).map(|i| (i % 13) as f32 * 0.01 - 0.05).collect();
        let aligned = le(&base);
        let mut shifted = vec![0u8; aligned.len() + 1];
        shifted[1..].copy_from_slice(&aligned);
        for strategy in [Strategy::default(), adam()] {
            let s = strategy.rules();
            let (mut a, mut b) = (mean.clone(), mean.clone());
            let (mut sa, mut sb) = (s.initial_state(dim), s.initial_state(dim));
            apply(s, &aligned, &mut a, &mut sa).unwrap();
            apply(s, &shifted[1..], &mut b, &mut sb).unwrap();
            assert_eq!(a, b);
            assert_eq!(sa, sb);
            let mut whole = mean.clone();
            let mut state = s.initial_state(dim);
            s.step(&base, &mut whole, &mut state);
            assert_eq!(a, whole, "{}: block-wise is the whole step", s.label());
        }
        let mut next = mean.clone();
        next[BLOCK + 5] = f32::MAX;
        let mut big = base.clone();
        big[BLOCK + 5] = f32::MAX;
        let err = apply(Strategy::default().rules(), &le(&big), &mut next, &mut []).unwrap_err();
        assert!(matches!(err, AggregationError::NonFinite { index } if index == BLOCK + 5));
    }

    #[test]
    fn a_step_that_overflows_is_refused_with_its_index() {
        let mut next = vec![0.0, f32::MAX];
        let err = apply(
            Strategy::default().rules(),
            &le(&[0.0, f32::MAX]),
            &mut next,
            &mut [],
        )
        .unwrap_err();
        assert!(matches!(err, AggregationError::NonFinite { index: 1 }));
    }

    #[test]
    fn state_files_round_trip_and_refuse_another_strategy_or_shape() {
        let adam = adam();
        let yogi = adaptive(SecondMoment::Yogi);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.state");
        let write = |state: &[f32], dim| {
            write_state_safetensors(adam.rules(), dim, state, &path)
                .map(|()| std::fs::read(&path).unwrap())
        };
        let state: Vec<f32> = (0..8).map(|i| i as f32 * 0.5).collect();
        let file = write(&state, 4).unwrap();
        let read = state_from_safetensors(adam.rules(), 4, &file).unwrap();
        assert_eq!(read, state);
        assert_eq!(state_hash(&read), state_hash(&state));
        let err = state_from_safetensors(yogi.rules(), 4, &file).unwrap_err();
        assert!(err.to_string().contains("fedadam"), "{err}");
        assert!(state_from_safetensors(adam.rules(), 3, &file).is_err());
        assert!(state_from_safetensors(adam.rules(), 4, &file[..file.len() - 1]).is_err());
        assert!(write(&state, 3).is_err());
        let mut nan = state.clone();
        nan[5] = f32::NAN;
        let file = write(&nan, 4).unwrap();
        let err = state_from_safetensors(adam.rules(), 4, &file).unwrap_err();
        assert!(err.to_string().contains("value 5"), "{err}");
    }

    proptest! {
        /// Every strategy acts per parameter: stepping a model in two ranges gives the same
        /// bits as stepping it whole, so block-wise application changes nothing.
        #[test]
        fn a_step_over_ranges_is_the_step_over_the_whole(
            values in proptest::collection::vec((-10f32..10.0, -1f32..1.0), 1..64),
            split in 0usize..64,
            kind in 0usize..4,
        ) {
            let strategy = match kind {
                0 => Strategy::default(),
                1 => adaptive(SecondMoment::Adam),
                2 => adaptive(SecondMoment::Yogi),
                _ => adaptive(SecondMoment::Adagrad),
            };
            let s = strategy.rules();
            let base: Vec<f32> = values.iter().map(|v| v.0).collect();
            let mean: Vec<f32> = values.iter().map(|v| v.1).collect();
            let k = s.state_per_param();
            let split = split.min(base.len());
            let mut whole = mean.clone();
            let mut whole_state = s.initial_state(base.len());
            s.step(&base, &mut whole, &mut whole_state);
            let mut parts = mean.clone();
            let mut parts_state = s.initial_state(base.len());
            let (a, b) = parts.split_at_mut(split);
            let (sa, sb) = parts_state.split_at_mut(split * k);
            s.step(&base[..split], a, sa);
            s.step(&base[split..], b, sb);
            prop_assert_eq!(whole, parts);
            prop_assert_eq!(whole_state, parts_state);
        }
    }
}
