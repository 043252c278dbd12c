//! Writes `datasets/data/wdbc.parquet` from `wdbc.csv`: features as f64, `diagnosis` as i64.

use std::path::Path;

use polars::prelude::*;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    let text = conclave_datasets::load_frame(&dir.join("wdbc.csv"))?;
    let mut columns = Vec::new();
    for name in conclave_datasets::wdbc::FEATURES {
        columns.push(text.column(name)?.cast(&DataType::Float64)?);
    }
    columns.push(
        text.column(conclave_datasets::wdbc::LABEL)?
            .cast(&DataType::Int64)?,
    );
    let mut df = DataFrame::new_infer_height(columns)?;
    conclave_datasets::write_parquet(&mut df, &dir.join("wdbc.parquet"))?;
    println!("wrote {} rows", df.height());
    Ok(())
}
