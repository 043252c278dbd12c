//! Local training and evaluation with tch (libtorch): builds the job's model with the parameter
//! names and shapes of [`ModelLayout`], loads the global parameters, trains on the local table
//! and returns the update `w_local - w_global`, clipped to the job's L2 bound.

use conclave_aggregation::{JobSpec, ModelLayout, Optimizer};
use conclave_datasets::Table;
use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use tch::nn::{self, Module, OptimizerConfig};
use tch::{Device, Kind, Tensor};

use crate::ParticipantError;

/// Evaluation result of a model on local held-out rows.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Metrics {
    /// Mean cross-entropy.
    pub loss: f64,
    /// Fraction of rows whose arg-max class equals the label.
    pub accuracy: f64,
    pub num_examples: u64,
}

/// The job's model, built in a fresh `VarStore` and loaded with `params`.
struct LocalModel {
    vs: nn::VarStore,
    net: nn::Sequential,
}

impl LocalModel {
    fn new(layout: &ModelLayout, params: &[f32], device: Device) -> Result<Self, ParticipantError> {
        let vs = nn::VarStore::new(device);
        let root = vs.root() / "layers";
        let widths = layout.widths();
        let mut net = nn::seq();
        for (i, w) in widths.windows(2).enumerate() {
            net = net.add(nn::linear(
                &root / i,
                w[0] as i64,
                w[1] as i64,
                Default::default(),
            ));
            if i + 2 < widths.len() {
                net = net.add_fn(|x| x.relu());
            }
        }
        let model = Self { vs, net };
        model.load(layout, params)?;
        Ok(model)
    }

    fn load(&self, layout: &ModelLayout, params: &[f32]) -> Result<(), ParticipantError> {
        let vars = self.vs.variables();
        tch::no_grad(|| -> Result<(), ParticipantError> {
            for (spec, values) in layout.split(params)? {
                let var = vars.get(&spec.name).ok_or_else(|| {
                    ParticipantError::Config(format!("model has no tensor {}", spec.name))
                })?;
                let shape: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
                let mut var = var.shallow_clone();
                var.f_copy_(
                    &Tensor::from_slice(values)
                        .f_reshape(&shape)?
                        .f_to_device(var.device())?,
                )?;
            }
            Ok(())
        })
    }

    fn flatten(&self, layout: &ModelLayout) -> Result<Vec<f32>, ParticipantError> {
        let vars = self.vs.variables();
        let mut out = Vec::with_capacity(layout.dim());
        for spec in layout.tensors() {
            let var = &vars[&spec.name];
            let flat = var.f_detach()?.f_to_device(Device::Cpu)?.f_flatten(0, -1)?;
            out.extend(Vec::<f32>::try_from(&flat)?);
        }
        Ok(out)
    }
}

fn tensors(table: &Table, device: Device) -> Result<(Tensor, Tensor), ParticipantError> {
    let xs = Tensor::from_slice(table.features())
        .f_reshape([table.rows() as i64, table.cols() as i64])?
        .f_to_device(device)?;
    let ys = Tensor::from_slice(table.labels()).f_to_device(device)?;
    Ok((xs, ys))
}

/// Trains the job's model from `global` on `data` for the job's local epochs and returns
/// `w_local - w_global`, clipped to `spec.clip_norm` when set. `seed` fixes the batch order.
pub fn train(
    spec: &JobSpec,
    global: &[f32],
    data: &Table,
    device: Device,
    seed: u64,
) -> Result<Vec<f32>, ParticipantError> {
    let layout = spec.layout();
    let model = LocalModel::new(&layout, global, device)?;
    let lr = spec.training.learning_rate as f64;
    let mut opt = match spec.training.optimizer {
        Optimizer::Sgd => nn::Sgd::default().build(&model.vs, lr)?,
        Optimizer::Adam => nn::Adam::default().build(&model.vs, lr)?,
    };
    let (xs, ys) = tensors(data, device)?;
    let mut order: Vec<i64> = (0..data.rows() as i64).collect();
    let mut rng = StdRng::seed_from_u64(seed);
    let batch = spec.training.batch_size as usize;
    for _ in 0..spec.training.local_epochs {
        order.shuffle(&mut rng);
        for idx in order.chunks(batch) {
            let idx = Tensor::from_slice(idx).f_to_device(device)?;
            let bx = xs.f_index_select(0, &idx)?;
            let by = ys.f_index_select(0, &idx)?;
            let loss = model.net.forward(&bx).cross_entropy_for_logits(&by);
            opt.backward_step(&loss);
        }
    }
    let local = model.flatten(&layout)?;
    let mut delta: Vec<f32> = local.iter().zip(global).map(|(l, g)| l - g).collect();
    if delta.iter().any(|v| !v.is_finite()) {
        return Err(ParticipantError::Config(
            "training diverged (NaN or infinite weights); lower the learning rate".into(),
        ));
    }
    if let Some(bound) = spec.clip_norm {
        clip_l2(&mut delta, bound);
    }
    Ok(delta)
}

/// Scales `v` so its L2 norm is at most `bound`.
pub fn clip_l2(v: &mut [f32], bound: f32) {
    let norm = v
        .iter()
        .map(|x| (*x as f64) * (*x as f64))
        .sum::<f64>()
        .sqrt();
    if norm > bound as f64 {
        let scale = (bound as f64 / norm) as f32;
        v.iter_mut().for_each(|x| *x *= scale);
    }
}

/// Evaluates model `params` on `data`.
pub fn evaluate(
    spec: &JobSpec,
    params: &[f32],
    data: &Table,
    device: Device,
) -> Result<Metrics, ParticipantError> {
    let layout = spec.layout();
    let model = LocalModel::new(&layout, params, device)?;
    let (xs, ys) = tensors(data, device)?;
    let (loss, accuracy) = tch::no_grad(|| -> Result<(f64, f64), ParticipantError> {
        let logits = model.net.forward(&xs);
        let loss = f64::try_from(logits.cross_entropy_for_logits(&ys))?;
        let correct = logits
            .f_argmax(-1, false)?
            .f_eq_tensor(&ys)?
            .f_to_kind(Kind::Float)?
            .f_mean(Kind::Float)?;
        Ok((loss, f64::try_from(correct)?))
    })?;
    Ok(Metrics {
        loss,
        accuracy,
        num_examples: data.rows() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str) -> JobSpec {
        JobSpec::from_toml(&format!(
            r#"name = "t"
rounds = 1
[model]
kind = "{kind}"
{}
[data]
features = ["a", "b"]
label = "y"
[training]
local_epochs = 30
batch_size = 8
learning_rate = 0.5
"#,
            if kind == "mlp" { "hidden = [8]" } else { "" }
        ))
        .unwrap()
    }

    /// Two separable blobs.
    fn blobs() -> Table {
        let mut f = Vec::new();
        let mut l = Vec::new();
        for i in 0..64 {
            let y = (i % 2) as i64;
            let s = if y == 1 { 1.0 } else { -1.0 };
            f.extend([
                s + (i as f32 * 0.37).sin() * 0.3,
                s + (i as f32 * 0.11).cos() * 0.3,
            ]);
            l.push(y);
        }
        Table::new(f, l, 2)
    }

    #[test]
    fn training_learns_and_the_update_is_local_minus_global() {
        for kind in ["logistic_regression", "mlp"] {
            let spec = spec(kind);
            let global = spec.layout().init(3);
            let data = blobs();
            let before = evaluate(&spec, &global, &data, Device::Cpu).unwrap();
            let delta = train(&spec, &global, &data, Device::Cpu, 1).unwrap();
            assert_eq!(delta.len(), global.len());
            let local: Vec<f32> = global.iter().zip(&delta).map(|(g, d)| g + d).collect();
            let after = evaluate(&spec, &local, &data, Device::Cpu).unwrap();
            assert!(after.loss < before.loss, "{kind}: {before:?} -> {after:?}");
            assert!(after.accuracy > 0.95, "{kind}: {after:?}");
            assert_eq!(after.num_examples, 64);
            // Same seed, same update.
            assert_eq!(train(&spec, &global, &data, Device::Cpu, 1).unwrap(), delta);
        }
    }

    #[test]
    fn clipping_bounds_the_norm() {
        let mut spec = spec("logistic_regression");
        spec.clip_norm = Some(0.01);
        let global = spec.layout().init(3);
        let delta = train(&spec, &global, &blobs(), Device::Cpu, 1).unwrap();
        let norm: f32 = delta.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(norm <= 0.0100001, "{norm}");
        let mut v = vec![3.0, 4.0];
        clip_l2(&mut v, 10.0);
        assert_eq!(v, [3.0, 4.0]);
        clip_l2(&mut v, 1.0);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
    }
}
