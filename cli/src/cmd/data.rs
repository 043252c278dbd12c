//! `conclave data`: split a dataset among hospitals, for trials and simulations.

use std::path::PathBuf;

use conclave_datasets::partition::{Scheme, partition_file};

use crate::existing;
use crate::printer::Printer;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemeArg {
    Iid,
    Dirichlet,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Split a CSV or Parquet file into N CSV files, IID or with Dirichlet(alpha) label skew.
    Partition {
        #[arg(long)]
        input: PathBuf,
        /// Label column (drives the Dirichlet scheme).
        #[arg(long)]
        label: String,
        #[arg(long)]
        parts: usize,
        #[arg(long, value_enum, default_value = "iid")]
        scheme: SchemeArg,
        /// Dirichlet concentration: small values give each part few classes.
        #[arg(long, default_value_t = 0.5)]
        alpha: f64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long)]
        out_dir: PathBuf,
        /// File name stem: files are <stem>-1.csv … <stem>-N.csv.
        #[arg(long, default_value = "part")]
        stem: String,
    },
}

pub fn run(command: Command, printer: &Printer) -> anyhow::Result<()> {
    let Command::Partition {
        input,
        label,
        parts,
        scheme,
        alpha,
        seed,
        out_dir,
        stem,
    } = command;
    let scheme = match scheme {
        SchemeArg::Iid => Scheme::Iid,
        SchemeArg::Dirichlet => Scheme::Dirichlet { alpha },
    };
    for path in partition_file(
        &existing(input)?,
        &label,
        parts,
        scheme,
        seed,
        &out_dir,
        &stem,
    )? {
        printer.data(path.display().to_string());
    }
    Ok(())
}
