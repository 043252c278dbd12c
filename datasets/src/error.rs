//! The datasets crate's error type.

use std::path::PathBuf;

/// What can be wrong with a local data file. Row numbers count data rows from 1 (the header
/// of a CSV file is not a row).
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unsupported file type (expected .csv or .parquet)")]
    UnsupportedFormat { path: PathBuf },
    #[error("{path}: cannot read: {message}")]
    Read { path: PathBuf, message: String },
    #[error("{path}: missing column {column:?} (the file has: {available})")]
    MissingColumn {
        path: PathBuf,
        column: String,
        available: String,
    },
    #[error("{path}: column {column:?}, row {row}: value {value:?} is not a number")]
    NotNumeric {
        path: PathBuf,
        column: String,
        row: usize,
        value: String,
    },
    #[error("{path}: column {column:?}, row {row}: missing value")]
    Missing {
        path: PathBuf,
        column: String,
        row: usize,
    },
    #[error("{path}: column {column:?}, row {row}: value is NaN or infinite")]
    NotFinite {
        path: PathBuf,
        column: String,
        row: usize,
    },
    #[error("{path}: column {column:?} has type {dtype}, which is not numeric")]
    WrongType {
        path: PathBuf,
        column: String,
        dtype: String,
    },
    #[error(
        "{path}: column {column:?}, row {row}: label {value} is not a class id in 0..{num_classes}"
    )]
    BadLabel {
        path: PathBuf,
        column: String,
        row: usize,
        value: f64,
        num_classes: u32,
    },
    #[error("{path}: no data rows")]
    Empty { path: PathBuf },
    #[error("cannot partition: {0}")]
    Partition(String),
}
