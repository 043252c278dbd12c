//! Reading and writing data files with polars, and checking them into a [`Table`].

use std::fs::File;
use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::{DataError, Table, TableSchema};

fn read_err(path: &Path) -> impl Fn(PolarsError) -> DataError + '_ {
    move |e| DataError::Read {
        path: path.to_owned(),
        message: e.to_string(),
    }
}

/// Reads a `.csv` (header row required) or `.parquet` file into a polars `DataFrame`. CSV
/// columns are read as text, so that [`load_table`] can name the exact cell that is not a
/// number; Parquet columns keep their stored types.
pub fn load_frame(path: &Path) -> Result<DataFrame, DataError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("csv") => {
            if !path.is_file() {
                return Err(DataError::Io {
                    path: path.to_owned(),
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            CsvReadOptions::default()
                .with_has_header(true)
                .with_infer_schema_length(Some(0))
                .try_into_reader_with_file_path(Some(path.to_owned()))
                .map_err(read_err(path))?
                .finish()
                .map_err(read_err(path))
        }
        Some("parquet") => {
            let file = File::open(path).map_err(|source| DataError::Io {
                path: path.to_owned(),
                source,
            })?;
            ParquetReader::new(file).finish().map_err(read_err(path))
        }
        _ => Err(DataError::UnsupportedFormat {
            path: path.to_owned(),
        }),
    }
}

/// Loads the schema's columns of a CSV or Parquet file as a checked [`Table`]: every feature a
/// finite number, every label an integer class id in `0..num_classes`.
pub fn load_table(path: &Path, schema: &TableSchema) -> Result<Table, DataError> {
    let df = load_frame(path)?;
    if df.height() == 0 {
        return Err(DataError::Empty {
            path: path.to_owned(),
        });
    }
    let rows = df.height();
    let cols = schema.features.len();
    let mut features = vec![0f32; rows * cols];
    for (j, name) in schema.features.iter().enumerate() {
        let values = numeric_column(&df, path, name)?;
        for (i, v) in values.into_iter().enumerate() {
            features[i * cols + j] = v as f32;
        }
    }
    let labels = numeric_column(&df, path, &schema.label)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if v.fract() == 0.0 && v >= 0.0 && v < schema.num_classes as f64 {
                Ok(v as i64)
            } else {
                Err(DataError::BadLabel {
                    path: path.to_owned(),
                    column: schema.label.clone(),
                    row: i + 1,
                    value: v,
                    num_classes: schema.num_classes,
                })
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Table::new(features, labels, cols))
}

/// One column as finite f64 values, or the first bad cell.
fn numeric_column(df: &DataFrame, path: &Path, name: &str) -> Result<Vec<f64>, DataError> {
    let column = df.column(name).map_err(|_| DataError::MissingColumn {
        path: path.to_owned(),
        column: name.to_owned(),
        available: df
            .get_column_names()
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    })?;
    let series = column.as_materialized_series();
    let cell = |row: usize| (path.to_owned(), name.to_owned(), row + 1);
    let mut out = Vec::with_capacity(series.len());
    match series.dtype() {
        DataType::String => {
            for (i, v) in series.str().map_err(read_err(path))?.iter().enumerate() {
                let text = v.map(str::trim).filter(|s| !s.is_empty());
                let Some(text) = text else {
                    let (path, column, row) = cell(i);
                    return Err(DataError::Missing { path, column, row });
                };
                let value: f64 = text.parse().map_err(|_| {
                    let (path, column, row) = cell(i);
                    DataError::NotNumeric {
                        path,
                        column,
                        row,
                        value: text.chars().take(40).collect(),
                    }
                })?;
                out.push(value);
            }
        }
        dt if dt.is_primitive_numeric() || dt.is_bool() => {
            let cast = series.cast(&DataType::Float64).map_err(read_err(path))?;
            for (i, v) in cast.f64().map_err(read_err(path))?.iter().enumerate() {
                let Some(value) = v else {
                    let (path, column, row) = cell(i);
                    return Err(DataError::Missing { path, column, row });
                };
                out.push(value);
            }
        }
        other => {
            return Err(DataError::WrongType {
                path: path.to_owned(),
                column: name.to_owned(),
                dtype: other.to_string(),
            });
        }
    }
    if let Some(i) = out.iter().position(|v| !v.is_finite()) {
        let (path, column, row) = cell(i);
        return Err(DataError::NotFinite { path, column, row });
    }
    Ok(out)
}

fn create(path: &Path) -> Result<File, DataError> {
    File::create(path).map_err(|source| DataError::Io {
        path: PathBuf::from(path),
        source,
    })
}

/// Writes a frame as CSV with a header row.
pub fn write_csv(df: &mut DataFrame, path: &Path) -> Result<(), DataError> {
    let mut file = create(path)?;
    CsvWriter::new(&mut file)
        .include_header(true)
        .finish(df)
        .map_err(read_err(path))
}

/// Writes a frame as Parquet.
pub fn write_parquet(df: &mut DataFrame, path: &Path) -> Result<(), DataError> {
    let file = create(path)?;
    ParquetWriter::new(file)
        .finish(df)
        .map(|_| ())
        .map_err(read_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> TableSchema {
        TableSchema {
            features: vec!["a".into(), "b".into()],
            label: "y".into(),
            num_classes: 2,
        }
    }

    fn load_text(text: &str) -> Result<Table, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("local.csv");
        std::fs::write(&path, text).unwrap();
        load_table(&path, &schema())
    }

    #[test]
    fn loads_good_csv() {
        let t = load_text("a,b,y,extra\n1,2,0,x\n3.5,-4,1,y\n").unwrap();
        assert_eq!(t.features(), [1.0, 2.0, 3.5, -4.0]);
        assert_eq!(t.labels(), [0, 1]);
    }

    #[test]
    fn names_column_and_row_of_each_problem() {
        let e = load_text("a,y\n1,0\n").unwrap_err();
        assert!(
            matches!(&e, DataError::MissingColumn { column, .. } if column == "b"),
            "{e}"
        );
        let e = load_text("a,b,y\n1,2,0\n3,abc,1\n").unwrap_err();
        assert!(
            matches!(&e, DataError::NotNumeric { column, row: 2, value, .. } if column == "b" && value == "abc"),
            "{e}"
        );
        let e = load_text("a,b,y\n1,2,0\n3,4,1\n,4,1\n").unwrap_err();
        assert!(
            matches!(&e, DataError::Missing { column, row: 3, .. } if column == "a"),
            "{e}"
        );
        let e = load_text("a,b,y\n1,NaN,0\n").unwrap_err();
        assert!(
            matches!(&e, DataError::NotFinite { column, row: 1, .. } if column == "b"),
            "{e}"
        );
        let e = load_text("a,b,y\n1,2,0\n1,2,2\n").unwrap_err();
        assert!(matches!(&e, DataError::BadLabel { row: 2, .. }), "{e}");
        let e = load_text("a,b,y\n1,2,0.5\n").unwrap_err();
        assert!(matches!(&e, DataError::BadLabel { row: 1, .. }), "{e}");
        let e = load_text("a,b,y\n").unwrap_err();
        assert!(matches!(&e, DataError::Empty { .. }), "{e}");
        let e = load_table(Path::new("/nonexistent/x.csv"), &schema()).unwrap_err();
        assert!(matches!(&e, DataError::Io { .. }), "{e}");
        let e = load_table(Path::new("x.xlsx"), &schema()).unwrap_err();
        assert!(matches!(&e, DataError::UnsupportedFormat { .. }), "{e}");
        assert!(e.to_string().contains("x.xlsx"));
    }

    #[test]
    fn parquet_with_nulls_is_refused_with_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.parquet");
        let mut df = df!("a" => [Some(1.0), None], "b" => [1.0, 2.0], "y" => [0i64, 1]).unwrap();
        write_parquet(&mut df, &path).unwrap();
        let e = load_table(&path, &schema()).unwrap_err();
        assert!(
            matches!(&e, DataError::Missing { column, row: 2, .. } if column == "a"),
            "{e}"
        );
    }
}
