//! Model architectures and their parameter layout: the names and shapes of the tensors, the
//! order in which they are flattened into one `f32` vector, their initial values, and their
//! safetensors form. The coordinator works on flat vectors only and never needs libtorch; the
//! participant's tch model uses the same names and shapes.

use rand::{Rng, SeedableRng, rngs::StdRng};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::path::Path;

use crate::AggregationError;

/// A built-in model architecture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelArch {
    /// One linear layer followed by softmax (multinomial logistic regression).
    LogisticRegression,
    /// Linear layers with ReLU between them; `hidden` lists the hidden widths.
    Mlp { hidden: Vec<usize> },
}

/// One named tensor of a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name as in the safetensors file and the tch `VarStore` (e.g. `layers.0.weight`).
    pub name: String,
    /// Shape, row-major; a linear layer's weight is `[out, in]` as in PyTorch.
    pub shape: Vec<usize>,
}

impl TensorSpec {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The tensors of a model, in flattening order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLayout {
    tensors: Vec<TensorSpec>,
    /// Layer widths: inputs, hidden..., classes.
    widths: Vec<usize>,
}

impl ModelLayout {
    /// The layout of `arch` for `features` inputs and `classes` outputs.
    pub fn new(arch: &ModelArch, features: usize, classes: usize) -> Self {
        let mut widths = vec![features];
        if let ModelArch::Mlp { hidden } = arch {
            widths.extend(hidden);
        }
        widths.push(classes);
        let tensors = widths
            .windows(2)
            .enumerate()
            .flat_map(|(i, w)| {
                [
                    TensorSpec {
                        name: format!("layers.{i}.weight"),
                        shape: vec![w[1], w[0]],
                    },
                    TensorSpec {
                        name: format!("layers.{i}.bias"),
                        shape: vec![w[1]],
                    },
                ]
            })
            .collect();
        Self { tensors, widths }
    }

    /// The tensors in flattening order.
    pub fn tensors(&self) -> &[TensorSpec] {
        &self.tensors
    }

    /// Layer widths: input features, each hidden width, output classes.
    pub fn widths(&self) -> &[usize] {
        &self.widths
    }

    /// Total number of parameters.
    pub fn dim(&self) -> usize {
        self.tensors.iter().map(TensorSpec::numel).sum()
    }

    /// Initial parameters, deterministic in `seed`: every weight and bias uniform in
    /// `±1/sqrt(fan_in)`, the default of PyTorch's `nn.Linear`.
    pub fn init(&self, seed: u64) -> Vec<f32> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(self.dim());
        for (i, w) in self.widths.windows(2).enumerate() {
            let bound = 1.0 / (w[0] as f32).sqrt();
            let n = self.tensors[2 * i].numel() + self.tensors[2 * i + 1].numel();
            out.extend((0..n).map(|_| rng.random_range(-bound..=bound)));
        }
        out
    }

    /// Encodes flat parameters as a safetensors file (little-endian f32 tensors).
    pub fn to_safetensors(&self, params: &[f32]) -> Result<Vec<u8>, AggregationError> {
        self.check_len(params.len())?;
        let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
        safetensors::serialize(self.views(&bytes)?, None)
            .map_err(|e| AggregationError::Safetensors(e.to_string()))
    }

    /// Writes the safetensors file of the parameters' little-endian bytes to `path`, streamed
    /// (no copy of the model is built in memory). Not synced: the caller syncs the file.
    pub fn write_safetensors(&self, bytes: &[u8], path: &Path) -> Result<(), AggregationError> {
        safetensors::serialize_to_file(self.views(bytes)?, None, path)
            .map_err(|e| AggregationError::Safetensors(e.to_string()))
    }

    /// The tensors' views over flat little-endian parameter bytes.
    fn views<'b>(
        &self,
        bytes: &'b [u8],
    ) -> Result<Vec<(String, TensorView<'b>)>, AggregationError> {
        if !bytes.len().is_multiple_of(4) {
            return Err(AggregationError::Safetensors(format!(
                "{} bytes are not whole f32s",
                bytes.len()
            )));
        }
        self.check_len(bytes.len() / 4)?;
        let mut views = Vec::with_capacity(self.tensors.len());
        let mut offset = 0;
        for t in &self.tensors {
            let len = t.numel() * 4;
            let view = TensorView::new(Dtype::F32, t.shape.clone(), &bytes[offset..offset + len])
                .map_err(|e| AggregationError::Safetensors(e.to_string()))?;
            views.push((t.name.clone(), view));
            offset += len;
        }
        Ok(views)
    }

    /// Decodes a safetensors file holding exactly this layout's tensors into flat parameters.
    pub fn from_safetensors(&self, file: &[u8]) -> Result<Vec<f32>, AggregationError> {
        let st = SafeTensors::deserialize(file)
            .map_err(|e| AggregationError::Safetensors(e.to_string()))?;
        if st.len() != self.tensors.len() {
            return Err(AggregationError::Safetensors(format!(
                "expected {} tensors, found {}",
                self.tensors.len(),
                st.len()
            )));
        }
        let mut out = Vec::with_capacity(self.dim());
        for t in &self.tensors {
            let view = st
                .tensor(&t.name)
                .map_err(|e| AggregationError::Safetensors(format!("{}: {e}", t.name)))?;
            if view.dtype() != Dtype::F32 || view.shape() != t.shape.as_slice() {
                return Err(AggregationError::Safetensors(format!(
                    "{}: expected f32 {:?}, found {:?} {:?}",
                    t.name,
                    t.shape,
                    view.dtype(),
                    view.shape()
                )));
            }
            out.extend(le_f32s(view.data()));
        }
        Ok(out)
    }

    /// Splits flat parameters into `(spec, values)` per tensor.
    pub fn split<'a>(
        &'a self,
        params: &'a [f32],
    ) -> Result<Vec<(&'a TensorSpec, &'a [f32])>, AggregationError> {
        self.check_len(params.len())?;
        let mut rest = params;
        Ok(self
            .tensors
            .iter()
            .map(|t| {
                let (head, tail) = rest.split_at(t.numel());
                rest = tail;
                (t, head)
            })
            .collect())
    }

    fn check_len(&self, len: usize) -> Result<(), AggregationError> {
        if len != self.dim() {
            return Err(AggregationError::DimensionMismatch {
                expected: self.dim(),
                got: len,
            });
        }
        Ok(())
    }
}

/// The little-endian `f32`s of `bytes` (a trailing partial value is ignored).
pub(crate) fn le_f32s(bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_shapes_and_dim() {
        let l = ModelLayout::new(&ModelArch::Mlp { hidden: vec![8, 4] }, 30, 2);
        let names: Vec<_> = l.tensors().iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "layers.0.weight",
                "layers.0.bias",
                "layers.1.weight",
                "layers.1.bias",
                "layers.2.weight",
                "layers.2.bias"
            ]
        );
        assert_eq!(l.dim(), 30 * 8 + 8 + 8 * 4 + 4 + 4 * 2 + 2);
        let lr = ModelLayout::new(&ModelArch::LogisticRegression, 30, 2);
        assert_eq!(lr.dim(), 62);
    }

    #[test]
    fn init_is_deterministic_and_bounded() {
        let l = ModelLayout::new(&ModelArch::Mlp { hidden: vec![16] }, 30, 2);
        let a = l.init(7);
        assert_eq!(a, l.init(7));
        assert_ne!(a, l.init(8));
        let first = 30 * 16 + 16;
        assert!(a[..first].iter().all(|v| v.abs() <= 1.0 / 30f32.sqrt()));
        assert!(a[first..].iter().all(|v| v.abs() <= 0.25));
    }

    #[test]
    fn safetensors_round_trip_and_rejects_other_layouts() {
        let l = ModelLayout::new(&ModelArch::Mlp { hidden: vec![3] }, 5, 2);
        let p = l.init(1);
        let bytes = l.to_safetensors(&p).unwrap();
        assert_eq!(l.from_safetensors(&bytes).unwrap(), p);
        let other = ModelLayout::new(&ModelArch::LogisticRegression, 5, 2);
        assert!(other.from_safetensors(&bytes).is_err());
        assert!(l.from_safetensors(&bytes[..bytes.len() - 1]).is_err());
        assert!(l.to_safetensors(&p[1..]).is_err());
    }
}
