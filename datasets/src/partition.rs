//! Splitting a dataset among N simulated hospitals: IID (a seeded shuffle dealt round-robin)
//! or with label skew, where each class is divided among hospitals in proportions drawn from
//! Dirichlet(alpha) (Hsu et al., 2019): small alpha gives each hospital few classes.

use rand::{SeedableRng, rngs::StdRng, seq::SliceRandom};
use rand_distr::{Distribution, Gamma};

use crate::DataError;

/// How to split rows among parts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scheme {
    Iid,
    /// Label skew; `alpha > 0`.
    Dirichlet {
        alpha: f64,
    },
}

/// How many times a Dirichlet draw is repeated when it leaves a part empty.
const MAX_DRAWS: usize = 1000;

/// Row indices for each of `parts` parts. Every row lands in exactly one part and no part is
/// empty. `labels` is used by the Dirichlet scheme only.
pub fn partition(
    labels: &[i64],
    parts: usize,
    scheme: Scheme,
    seed: u64,
) -> Result<Vec<Vec<usize>>, DataError> {
    if parts == 0 || parts > labels.len() {
        return Err(DataError::Partition(format!(
            "cannot split {} rows into {parts} non-empty parts",
            labels.len()
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    match scheme {
        Scheme::Iid => {
            let mut idx: Vec<usize> = (0..labels.len()).collect();
            idx.shuffle(&mut rng);
            let mut out = vec![Vec::new(); parts];
            for (k, i) in idx.into_iter().enumerate() {
                out[k % parts].push(i);
            }
            Ok(out)
        }
        Scheme::Dirichlet { alpha } => {
            if !(alpha.is_finite() && alpha > 0.0) {
                return Err(DataError::Partition(format!(
                    "alpha must be a positive number, got {alpha}"
                )));
            }
            let mut classes: Vec<i64> = labels.to_vec();
            classes.sort_unstable();
            classes.dedup();
            // A Dirichlet(alpha, …, alpha) draw is a vector of Gamma(alpha, 1) draws, normalised.
            let gamma = Gamma::new(alpha, 1.0).map_err(|e| DataError::Partition(e.to_string()))?;
            for _ in 0..MAX_DRAWS {
                let mut out = vec![Vec::new(); parts];
                for &class in &classes {
                    let mut rows: Vec<usize> =
                        (0..labels.len()).filter(|&i| labels[i] == class).collect();
                    rows.shuffle(&mut rng);
                    let raw: Vec<f64> = (0..parts).map(|_| gamma.sample(&mut rng)).collect();
                    let sum: f64 = raw.iter().sum::<f64>().max(f64::MIN_POSITIVE);
                    let shares: Vec<f64> = raw.iter().map(|g| g / sum).collect();
                    let mut start = 0;
                    let mut acc = 0.0;
                    for (p, share) in shares.iter().enumerate() {
                        acc += share;
                        let end = if p + 1 == parts {
                            rows.len()
                        } else {
                            ((acc * rows.len() as f64).round() as usize).min(rows.len())
                        };
                        out[p].extend_from_slice(&rows[start..end.max(start)]);
                        start = end.max(start);
                    }
                }
                if out.iter().all(|p| !p.is_empty()) {
                    return Ok(out);
                }
            }
            Err(DataError::Partition(format!(
                "alpha {alpha} leaves some of the {parts} parts empty; use a larger alpha"
            )))
        }
    }
}

/// Splits a CSV or Parquet file by rows into `parts` CSV files `<out_dir>/<stem>-<i>.csv`
/// (i from 1), keeping every column as it was. The label column drives the Dirichlet scheme.
pub fn partition_file(
    input: &std::path::Path,
    label: &str,
    parts: usize,
    scheme: Scheme,
    seed: u64,
    out_dir: &std::path::Path,
    stem: &str,
) -> Result<Vec<std::path::PathBuf>, DataError> {
    use polars::prelude::{IdxCa, IdxSize};
    let df = crate::load_frame(input)?;
    let labels_table = crate::load_table(
        input,
        &crate::TableSchema {
            features: Vec::new(),
            label: label.into(),
            num_classes: u32::MAX,
        },
    )?;
    let split = partition(labels_table.labels(), parts, scheme, seed)?;
    std::fs::create_dir_all(out_dir).map_err(|source| DataError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    let mut paths = Vec::with_capacity(parts);
    for (i, rows) in split.iter().enumerate() {
        let mut rows = rows.clone();
        rows.sort_unstable();
        let idx = IdxCa::from_vec("idx".into(), rows.iter().map(|&r| r as IdxSize).collect());
        let mut part = df.take(&idx).map_err(|e| DataError::Read {
            path: input.to_owned(),
            message: e.to_string(),
        })?;
        let path = out_dir.join(format!("{stem}-{}.csv", i + 1));
        crate::write_csv(&mut part, &path)?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn every_row_in_exactly_one_nonempty_part(
            n in 10usize..400, parts in 1usize..8, alpha in 0.3f64..10.0, seed in any::<u64>(), iid in any::<bool>(),
        ) {
            let labels: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
            let scheme = if iid { Scheme::Iid } else { Scheme::Dirichlet { alpha } };
            let Ok(split) = partition(&labels, parts, scheme, seed) else { return Ok(()); };
            prop_assert_eq!(split.len(), parts);
            prop_assert!(split.iter().all(|p| !p.is_empty()));
            let mut all: Vec<usize> = split.concat();
            all.sort_unstable();
            prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn iid_never_fails_and_dirichlet_skews_labels() {
        let labels: Vec<i64> = (0..1000).map(|i| (i % 2) as i64).collect();
        assert!(partition(&labels, 5, Scheme::Iid, 1).is_ok());
        let split = partition(&labels, 5, Scheme::Dirichlet { alpha: 0.1 }, 3).unwrap();
        // With alpha = 0.1 at least one hospital is dominated (>= 80%) by one class.
        let skewed = split.iter().any(|p| {
            let ones = p.iter().filter(|&&i| labels[i] == 1).count() as f64;
            let frac = ones / p.len() as f64;
            !(0.2..=0.8).contains(&frac)
        });
        assert!(skewed);
        assert!(partition(&labels, 0, Scheme::Iid, 1).is_err());
        assert!(partition(&labels, 2, Scheme::Dirichlet { alpha: 0.0 }, 1).is_err());
    }

    #[test]
    fn partition_file_keeps_every_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("all.csv");
        std::fs::write(&input, crate::wdbc::TRAIN_CSV).unwrap();
        let paths = partition_file(
            &input,
            "diagnosis",
            3,
            Scheme::Dirichlet { alpha: 1.0 },
            5,
            dir.path(),
            "h",
        )
        .unwrap();
        let schema = crate::wdbc::schema();
        let parts: Vec<_> = paths
            .iter()
            .map(|p| crate::load_table(p, &schema).unwrap())
            .collect();
        assert_eq!(parts.iter().map(|t| t.rows()).sum::<usize>(), 456);
        let mut rows: Vec<Vec<u32>> = parts
            .iter()
            .flat_map(|t| {
                t.features()
                    .chunks(30)
                    .map(|r| r.iter().map(|v| v.to_bits()).collect())
                    .collect::<Vec<_>>()
            })
            .collect();
        let all = crate::load_table(&input, &schema).unwrap();
        let mut want: Vec<Vec<u32>> = all
            .features()
            .chunks(30)
            .map(|r| r.iter().map(|v| v.to_bits()).collect())
            .collect();
        rows.sort();
        want.sort();
        assert_eq!(rows, want);
    }
}
