//! The Wisconsin Diagnostic Breast Cancer data shipped with Conclave (see
//! `datasets/data/README.md` for origin and license), embedded in the binary so the demo runs
//! from anywhere.

/// The fixed training split (456 rows), CSV with header.
pub const TRAIN_CSV: &str = include_str!("../data/wdbc_train.csv");
/// The fixed test split (113 rows), CSV with header.
pub const TEST_CSV: &str = include_str!("../data/wdbc_test.csv");
/// The label column: 1 = malignant, 0 = benign.
pub const LABEL: &str = "diagnosis";
/// The 30 feature columns, in file order.
pub const FEATURES: [&str; 30] = [
    "mean_radius",
    "mean_texture",
    "mean_perimeter",
    "mean_area",
    "mean_smoothness",
    "mean_compactness",
    "mean_concavity",
    "mean_concave_points",
    "mean_symmetry",
    "mean_fractal_dimension",
    "radius_se",
    "texture_se",
    "perimeter_se",
    "area_se",
    "smoothness_se",
    "compactness_se",
    "concavity_se",
    "concave_points_se",
    "symmetry_se",
    "fractal_dimension_se",
    "worst_radius",
    "worst_texture",
    "worst_perimeter",
    "worst_area",
    "worst_smoothness",
    "worst_compactness",
    "worst_concavity",
    "worst_concave_points",
    "worst_symmetry",
    "worst_fractal_dimension",
];

/// The table schema of the shipped data.
pub fn schema() -> crate::TableSchema {
    crate::TableSchema {
        features: FEATURES.iter().map(|s| s.to_string()).collect(),
        label: LABEL.into(),
        num_classes: 2,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::load_table;

    fn data(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("data")
            .join(name)
    }

    #[test]
    fn shipped_files_load_and_agree() {
        let all = load_table(&data("wdbc.csv"), &schema()).unwrap();
        assert_eq!((all.rows(), all.cols()), (569, 30));
        assert_eq!(
            all.labels().iter().filter(|&&l| l == 1).count(),
            212,
            "212 malignant"
        );
        let parquet = load_table(&data("wdbc.parquet"), &schema()).unwrap();
        assert_eq!(parquet, all);
        let train = load_table(&data("wdbc_train.csv"), &schema()).unwrap();
        let test = load_table(&data("wdbc_test.csv"), &schema()).unwrap();
        assert_eq!((train.rows(), test.rows()), (456, 113));
        assert!(TRAIN_CSV.starts_with(&FEATURES.join(",")));
    }
}
