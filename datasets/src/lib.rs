//! Local tabular data for Conclave participants: loading a CSV or Parquet file with polars into
//! a checked numeric [`Table`], the datasets Conclave ships ([`wdbc`]), and [`partition`]ers that
//! split a dataset among simulated hospitals (IID or with Dirichlet label skew).
//!
//! Every problem in a file is reported with the column and the row it is in, so a hospital's
//! data team can fix its export.
//!
//! ```no_run
//! use conclave_datasets::{load_table, TableSchema};
//!
//! let schema = TableSchema {
//!     features: conclave_datasets::wdbc::FEATURES.iter().map(|s| s.to_string()).collect(),
//!     label: "diagnosis".into(),
//!     num_classes: 2,
//! };
//! let table = load_table("datasets/data/wdbc_train.csv".as_ref(), &schema).unwrap();
//! assert_eq!(table.cols(), 30);
//! ```

mod error;
mod load;
pub mod partition;
mod table;
pub mod wdbc;

pub use error::DataError;
pub use load::{load_frame, load_table, write_csv, write_parquet};
pub use table::{Table, TableSchema};
