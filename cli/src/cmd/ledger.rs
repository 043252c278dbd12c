//! `conclave ledger`: inspect, verify, export and replicate the contribution ledger. Reads a
//! coordinator's data directory (read-only, also while it runs) or a replica file made by
//! `conclave ledger sync`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use conclave_crypto::ParticipantId;
use conclave_ledger::Ledger;
use conclave_ledger::rewards::Balances;
use conclave_ledger::verify::verify_ledger;
use conclave_ledger::view::{Filter, Row, row};
use polars::prelude::*;

use crate::printer::Printer;
use crate::{CoordinatorArg, Format, SignerArg};

/// Where the ledger is.
#[derive(clap::Args, Clone)]
pub struct LedgerArg {
    /// A coordinator's data directory, or a replica file (from `conclave ledger sync`).
    #[arg(long, env = "CONCLAVE_LEDGER")]
    ledger: PathBuf,
}

impl LedgerArg {
    fn open(&self) -> anyhow::Result<Ledger> {
        let path = if self.ledger.is_dir() {
            self.ledger.join("conclave.db")
        } else {
            self.ledger.clone()
        };
        Ledger::open_read_only(&path).with_context(|| format!("opening {}", path.display()))
    }
}

/// Which entries.
#[derive(clap::Args, Clone)]
pub struct FilterArgs {
    #[arg(long)]
    job: Option<String>,
    #[arg(long)]
    round: Option<u32>,
    /// A participant's did:key.
    #[arg(long)]
    participant: Option<String>,
}

impl FilterArgs {
    fn filter(&self) -> Filter {
        Filter {
            job: self.job.clone(),
            round: self.round,
            participant: self.participant.clone(),
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Parquet,
    Csv,
    Jsonl,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// List entries as a table (or JSON lines).
    Show {
        #[command(flatten)]
        ledger: LedgerArg,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Recompute every hash, signature, committee draw and reward; exit 1 at the first bad entry.
    Verify {
        #[command(flatten)]
        ledger: LedgerArg,
        /// The coordinator's did:key every entry must be signed by (default: entry 0's signer).
        #[arg(long)]
        coordinator_key: Option<String>,
    },
    /// Token balances, derived from the reward entries.
    Balances {
        #[command(flatten)]
        ledger: LedgerArg,
        #[arg(long)]
        job: Option<String>,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// Write entries to a Parquet, CSV or JSON-lines file for pandas, polars or duckdb.
    Export {
        #[command(flatten)]
        ledger: LedgerArg,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum)]
        format: ExportFormat,
        #[arg(long)]
        out: PathBuf,
    },
    /// Keep a verified local replica of a coordinator's ledger.
    Sync {
        #[command(flatten)]
        coordinator: CoordinatorArg,
        #[command(flatten)]
        signer: SignerArg,
        /// The replica database file (created if missing).
        #[arg(long, default_value = "conclave-ledger.db")]
        replica: PathBuf,
        /// Keep following new entries until the coordinator stops.
        #[arg(long)]
        follow: bool,
    },
}

pub async fn run(command: Command, printer: &Printer) -> anyhow::Result<()> {
    match command {
        Command::Show {
            ledger,
            filter,
            format,
        } => show(&ledger.open()?, &filter.filter(), format, printer),
        Command::Verify {
            ledger,
            coordinator_key,
        } => verify(&ledger.open()?, coordinator_key.as_deref(), printer),
        Command::Balances {
            ledger,
            job,
            format,
        } => balances(&ledger.open()?, job.as_deref(), format, printer),
        Command::Export {
            ledger,
            filter,
            format,
            out,
        } => {
            let n = export(&ledger.open()?, &filter.filter(), format, &out)?;
            printer.status(format!("exported {n} entries"));
            printer.data(out.display().to_string());
            Ok(())
        }
        Command::Sync {
            coordinator,
            signer,
            replica,
            follow,
        } => {
            let reader = signer.load()?;
            let report = conclave_participant::ledger_sync::sync(
                &coordinator.coordinator,
                reader.as_ref(),
                &replica,
                follow,
                |r| {
                    if follow {
                        printer.status(format!("replica at {} entries", r.head.len));
                    }
                },
            )
            .await
            .with_context(|| format!("syncing {}", replica.display()))?;
            printer.status(format!(
                "replica verified: {} entries ({} new), signed by {}",
                report.head.len,
                report.added,
                report.signer.as_deref().unwrap_or("nobody yet")
            ));
            printer.data(hex::encode(report.head.hash));
            Ok(())
        }
    }
}

fn rows(ledger: &Ledger, filter: &Filter) -> anyhow::Result<Vec<Row>> {
    let mut out = Vec::new();
    ledger.for_each(|e| {
        if filter.matches(&e) {
            out.push(row(&e));
        }
    })?;
    Ok(out)
}

fn show(ledger: &Ledger, filter: &Filter, format: Format, printer: &Printer) -> anyhow::Result<()> {
    let rows = rows(ledger, filter)?;
    match format {
        Format::Json => {
            for r in &rows {
                printer.data(json_line(r).to_string());
            }
        }
        Format::Table => {
            printer.data(format!(
                "{:>6}  {:<24}  {:<22}  {:<20}  {:>5}  {}",
                "index", "time (UTC)", "kind", "job", "round", "what"
            ));
            for r in &rows {
                printer.data(format!(
                    "{:>6}  {:<24}  {:<22}  {:<20}  {:>5}  {}",
                    r.index,
                    utc(r.time_unix_ms),
                    r.kind,
                    r.job_id,
                    r.round.map_or(String::new(), |n| n.to_string()),
                    r.summary
                ));
            }
        }
    }
    Ok(())
}

fn verify(ledger: &Ledger, key: Option<&str>, printer: &Printer) -> anyhow::Result<()> {
    let key = key
        .map(ParticipantId::parse)
        .transpose()
        .context("--coordinator-key")?;
    let report = verify_ledger(ledger, key.as_ref())?;
    match report.problem {
        None => {
            printer.status(format!(
                "ledger OK: {} entries, signed by {}",
                report.verified,
                report.signer.as_deref().unwrap_or("nobody (empty)")
            ));
            printer.data(hex::encode(report.head));
            Ok(())
        }
        Some(p) => bail!(
            "ledger verification failed at entry {}: {} ({} entries before it verify)",
            p.index,
            p.reason,
            report.verified
        ),
    }
}

fn balances(
    ledger: &Ledger,
    job: Option<&str>,
    format: Format,
    printer: &Printer,
) -> anyhow::Result<()> {
    let mut b = Balances::new(job);
    ledger.for_each(|e| b.add(&e))?;
    match format {
        Format::Json => {
            for (did, bal) in b.by_did() {
                printer.data(
                    serde_json::json!({
                        "participant": did,
                        "contribution": bal.contribution,
                        "committee": bal.committee,
                        "total": bal.total(),
                        "rounds": bal.rounds,
                    })
                    .to_string(),
                );
            }
        }
        Format::Table => {
            printer.data(format!(
                "{:<56}  {:>12}  {:>10}  {:>12}  {:>6}",
                "participant", "contribution", "committee", "total", "rounds"
            ));
            for (did, bal) in b.by_did() {
                printer.data(format!(
                    "{did:<56}  {:>12}  {:>10}  {:>12}  {:>6}",
                    bal.contribution,
                    bal.committee,
                    bal.total(),
                    bal.rounds
                ));
            }
        }
    }
    Ok(())
}

fn json_line(r: &Row) -> serde_json::Value {
    serde_json::json!({
        "index": r.index,
        "time_unix_ms": r.time_unix_ms,
        "kind": r.kind,
        "job_id": r.job_id,
        "round": r.round,
        "participant": r.participant,
        "summary": r.summary,
        "payload": serde_json::from_str::<serde_json::Value>(&r.payload_json).unwrap_or_default(),
        "hash": r.hash,
        "prev_hash": r.prev_hash,
        "signer": r.signer,
    })
}

/// ISO-8601 UTC time of a unix-ms timestamp (civil-from-days, no time-zone database needed).
fn utc(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The entries as a table: one row each, the payload as a JSON string column.
fn frame(rows: &[Row]) -> anyhow::Result<DataFrame> {
    let col = |name: &str, values: Vec<String>| Column::new(name.into(), values);
    let df = DataFrame::new(
        rows.len(),
        vec![
            Column::new(
                "index".into(),
                rows.iter().map(|r| r.index).collect::<Vec<_>>(),
            ),
            Column::new(
                "time_unix_ms".into(),
                rows.iter().map(|r| r.time_unix_ms).collect::<Vec<_>>(),
            ),
            col("time", rows.iter().map(|r| utc(r.time_unix_ms)).collect()),
            col("kind", rows.iter().map(|r| r.kind.to_string()).collect()),
            col("job_id", rows.iter().map(|r| r.job_id.clone()).collect()),
            Column::new(
                "round".into(),
                rows.iter().map(|r| r.round).collect::<Vec<_>>(),
            ),
            Column::new(
                "participant".into(),
                rows.iter()
                    .map(|r| r.participant.clone())
                    .collect::<Vec<_>>(),
            ),
            col("summary", rows.iter().map(|r| r.summary.clone()).collect()),
            col(
                "payload",
                rows.iter().map(|r| r.payload_json.clone()).collect(),
            ),
            col("hash", rows.iter().map(|r| r.hash.clone()).collect()),
            col(
                "prev_hash",
                rows.iter().map(|r| r.prev_hash.clone()).collect(),
            ),
            col("signer", rows.iter().map(|r| r.signer.clone()).collect()),
        ],
    )?;
    Ok(df)
}

fn export(
    ledger: &Ledger,
    filter: &Filter,
    format: ExportFormat,
    out: &Path,
) -> anyhow::Result<usize> {
    let rows = rows(ledger, filter)?;
    let mut df = frame(&rows)?;
    let tmp = out.with_extension("conclave-tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    match format {
        ExportFormat::Parquet => {
            ParquetWriter::new(file).finish(&mut df)?;
        }
        ExportFormat::Csv => {
            CsvWriter::new(file).finish(&mut df)?;
        }
        ExportFormat::Jsonl => {
            polars_io::json::JsonWriter::new(file)
                .with_json_format(polars_io::json::JsonFormat::JsonLines)
                .finish(&mut df)?;
        }
    }
    std::fs::rename(&tmp, out).with_context(|| format!("writing {}", out.display()))?;
    Ok(rows.len())
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_times() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
        // Cross-checked with Python: datetime.fromtimestamp(1795689296, UTC).
        assert_eq!(utc(1_795_689_296_000), "2026-11-26T10:34:56Z");
    }
}
