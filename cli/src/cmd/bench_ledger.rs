//! `conclave bench ledger`: durable appends per second (batched and one per transaction) and
//! verification throughput, on a synthetic protocol-valid ledger (`conclave_ledger::sim`: a
//! plain job of 10 participants, round after round). Baselines measured in the same run:
//! the same bytes inserted into the same SQLite configuration without hashing or signing, and
//! one-by-one Ed25519 verification on one core. Prints one JSON line.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use conclave_crypto::Identity;
use conclave_ledger::sim::{PLAIN_JOB, SimJob};
use conclave_ledger::verify::verify_ledger;
use conclave_ledger::{Entry, Ledger};
use serde_json::json;

use crate::printer::Printer;

#[derive(clap::Args)]
pub struct LedgerArgs {
    /// Entries to append and verify.
    #[arg(long, default_value_t = 200_000)]
    entries: usize,
    /// Entries per durable transaction in the batched run.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Entries appended one transaction each (every one fsync'd).
    #[arg(long, default_value_t = 2000)]
    single: usize,
    /// Directory for the databases (default: a temporary directory).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

fn appends(path: &Path, total: usize, batch: usize) -> anyhow::Result<(f64, Vec<Entry>)> {
    let ledger = Ledger::open(path)?;
    let coordinator = Identity::generate();
    let mut b = ledger.batch(&coordinator, 1);
    let mut job = SimJob::create(&mut b, "j-bench", PLAIN_JOB, 10);
    ledger.commit(b, &[])?;
    let first = ledger.head().len;
    let start = Instant::now();
    while (ledger.head().len - first) < total as u64 {
        let mut b = ledger.batch(&coordinator, 2);
        if batch == 1 {
            job.admit(&mut b);
        } else {
            while b.len() < batch {
                job.round(&mut b);
            }
        }
        ledger.commit(b, &[])?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let count = (ledger.head().len - first) as usize;
    let written = ledger.read(first, count)?;
    Ok((seconds, written))
}

/// The same rows into the same SQLite setup, without building, hashing or signing entries.
fn raw_inserts(path: &Path, entries: &[Entry], batch: usize) -> anyhow::Result<f64> {
    let mut conn = rusqlite::Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE ledger (idx INTEGER PRIMARY KEY, body BLOB NOT NULL, signature BLOB NOT NULL)",
    )?;
    let start = Instant::now();
    for chunk in entries.chunks(batch) {
        let tx = conn.transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT INTO ledger (idx, body, signature) VALUES (?1, ?2, ?3)")?;
            for e in chunk {
                insert.execute(rusqlite::params![
                    e.index() as i64,
                    e.bytes(),
                    &e.signature()[..]
                ])?;
            }
        }
        tx.commit()?;
    }
    Ok(start.elapsed().as_secs_f64())
}

pub fn run(args: LedgerArgs, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.entries > 0 && args.batch > 0 && args.single > 0,
        "counts must be positive"
    );
    let tmp = match &args.data_dir {
        Some(d) => {
            tempfile::tempdir_in(d).with_context(|| format!("temp dir in {}", d.display()))?
        }
        None => tempfile::tempdir()?,
    };
    printer.status(format!(
        "{} batched appends ({} per transaction)",
        args.entries, args.batch
    ));
    let (batched_s, entries) = appends(&tmp.path().join("batched.db"), args.entries, args.batch)?;
    let raw_batched_s = raw_inserts(&tmp.path().join("raw-batched.db"), &entries, args.batch)?;
    printer.status(format!("{} single appends", args.single));
    let (single_s, singles) = appends(&tmp.path().join("single.db"), args.single, 1)?;
    let raw_single_s = raw_inserts(&tmp.path().join("raw-single.db"), &singles, 1)?;

    printer.status("verify");
    let ledger = Ledger::open_read_only(&tmp.path().join("batched.db"))?;
    let total = ledger.head().len;
    let start = Instant::now();
    let report = verify_ledger(&ledger, None)?;
    let verify_s = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.problem.is_none(),
        "the benchmark ledger fails: {:?}",
        report.problem
    );
    // Baseline: one-by-one signature checks alone, one core.
    let start = Instant::now();
    for e in &entries {
        e.check_signature()?;
    }
    let naive_s = start.elapsed().as_secs_f64();
    let n = entries.len() as f64;
    printer.data(
        json!({
            "entries": total,
            "batch": args.batch,
            "appends_per_s_batched": n / batched_s,
            "raw_sqlite_inserts_per_s_batched": n / raw_batched_s,
            "appends_per_s_single": singles.len() as f64 / single_s,
            "raw_sqlite_inserts_per_s_single": singles.len() as f64 / raw_single_s,
            "verify_entries_per_s": total as f64 / verify_s,
            "naive_signature_checks_per_s": n / naive_s,
            "verify_speedup_vs_naive": (total as f64 / verify_s) / (n / naive_s),
            "mean_entry_bytes": entries.iter().map(|e| e.bytes().len()).sum::<usize>() as f64 / n,
        })
        .to_string(),
    );
    Ok(())
}
