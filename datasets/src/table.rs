//! `Table`: the checked numeric form of a participant's data.

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};

/// Which columns to read, as named by the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableSchema {
    pub features: Vec<String>,
    pub label: String,
    pub num_classes: u32,
}

/// Rows of finite `f32` features (row-major) and integer class labels in `0..num_classes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Table {
    features: Vec<f32>,
    labels: Vec<i64>,
    cols: usize,
}

impl Table {
    /// Builds a table; `features.len()` must be `labels.len() * cols`.
    pub fn new(features: Vec<f32>, labels: Vec<i64>, cols: usize) -> Self {
        assert_eq!(
            features.len(),
            labels.len() * cols,
            "features must be rows x cols"
        );
        Self {
            features,
            labels,
            cols,
        }
    }

    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Features, row-major.
    pub fn features(&self) -> &[f32] {
        &self.features
    }

    pub fn labels(&self) -> &[i64] {
        &self.labels
    }

    /// The rows at `indices`, in that order.
    pub fn select(&self, indices: &[usize]) -> Table {
        let mut features = Vec::with_capacity(indices.len() * self.cols);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            features.extend_from_slice(&self.features[i * self.cols..(i + 1) * self.cols]);
            labels.push(self.labels[i]);
        }
        Table {
            features,
            labels,
            cols: self.cols,
        }
    }

    /// Splits into (train, held-out) with `fraction` of the rows held out, shuffled by `seed`.
    /// At least one row stays in training.
    pub fn split(&self, fraction: f32, seed: u64) -> (Table, Table) {
        let mut idx: Vec<usize> = (0..self.rows()).collect();
        idx.shuffle(&mut StdRng::seed_from_u64(seed));
        let held = ((self.rows() as f64 * fraction as f64).round() as usize)
            .min(self.rows().saturating_sub(1));
        let (eval, train) = idx.split_at(held);
        (self.select(train), self.select(eval))
    }

    /// Per-column mean and standard deviation (population), with deviations of 0 replaced by 1
    /// so constant columns standardise to 0.
    pub fn column_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let n = self.rows().max(1) as f64;
        let mut mean = vec![0f64; self.cols];
        let mut sq = vec![0f64; self.cols];
        for row in self.features.chunks_exact(self.cols) {
            for (j, &v) in row.iter().enumerate() {
                mean[j] += v as f64;
                sq[j] += (v as f64) * (v as f64);
            }
        }
        let mean: Vec<f64> = mean.iter().map(|s| s / n).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| {
                let var = (s / n - m * m).max(0.0);
                if var > 1e-12 { var.sqrt() as f32 } else { 1.0 }
            })
            .collect();
        (mean.into_iter().map(|m| m as f32).collect(), std)
    }

    /// Standardises every column: `(x - mean) / std`.
    pub fn standardize(&mut self, mean: &[f32], std: &[f32]) {
        for row in self.features.chunks_exact_mut(self.cols) {
            for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
                *v = (*v - m) / s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_select_and_standardize() {
        let t = Table::new(
            (0..20).map(|v| v as f32).collect(),
            (0..10).map(|v| v % 2).collect(),
            2,
        );
        let (train, eval) = t.split(0.3, 1);
        assert_eq!((train.rows(), eval.rows()), (7, 3));
        let mut all: Vec<f32> = train
            .features()
            .iter()
            .chain(eval.features())
            .copied()
            .collect();
        all.sort_by(f32::total_cmp);
        assert_eq!(all, t.features());
        let mut s = t.clone();
        let (m, d) = s.column_stats();
        s.standardize(&m, &d);
        let (m2, d2) = s.column_stats();
        assert!(m2.iter().all(|v| v.abs() < 1e-5) && d2.iter().all(|v| (v - 1.0).abs() < 1e-4));
    }
}
