//! `conclave bench memory`: the coordinator's peak resident memory over one plain round in
//! which every participant uploads at once, for each of several participant counts; prints
//! one JSON line per count.
//!
//! The coordinator runs as its own process (`conclave serve`, started fresh for each count,
//! and its peak, Linux's `VmHWM`, reset once the job exists, is that round's alone); the
//! simulated participants run in this process over loopback gRPC. The baseline, in the same
//! run, is the coordinator's resident memory once the job exists and before anyone uploads.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use conclave_aggregation::JobSpec;
use conclave_crypto::Identity;
use conclave_participant::client::{connect, get_job, jobs_client, sign, upload_messages};
use conclave_proto::v1;
use serde_json::json;

use super::bench::{model_for, synthetic_update};
use crate::printer::Printer;

#[derive(clap::Args)]
pub struct MemoryArgs {
    /// Participant counts to measure, one fresh coordinator each.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    participants: Vec<usize>,
    /// Elements per update (the model is sized to the nearest dimension it can have).
    #[arg(long, default_value_t = 1_000_000)]
    dim: usize,
    /// The coordinator's --max-upload-buffer-mib.
    #[arg(long, default_value_t = 1024)]
    upload_buffer_mib: u64,
    /// Where the coordinators keep their state (default: the system temp dir). Every update is
    /// written there durably.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

/// A field of `/proc/PID/status` in KiB (`VmHWM`, `VmRSS`); `None` off Linux.
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The coordinator process; killed when dropped (its state is a temp dir, thrown away).
struct Coordinator(Child);

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn measure(
    args: &MemoryArgs,
    n: usize,
    printer: &Printer,
) -> anyhow::Result<serde_json::Value> {
    let dir = match &args.data_dir {
        Some(parent) => tempfile::tempdir_in(parent)
            .with_context(|| format!("temp dir in {}", parent.display()))?,
        None => tempfile::tempdir()?,
    };
    let launcher = Identity::generate();
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let child = Command::new(std::env::current_exe()?)
        .args([
            "-q",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(dir.path())
        .args(["--launcher", &launcher.participant_id().to_string()])
        .args([
            "--max-model-params",
            &(2 * args.dim as u64).max(1000).to_string(),
        ])
        .args(["--max-participants-per-job", &n.max(2).to_string()])
        .args([
            "--max-upload-buffer-mib",
            &args.upload_buffer_mib.to_string(),
        ])
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .spawn()
        .context("starting conclave serve")?;
    let pid = child.id();
    let coordinator = Coordinator(child);
    let started = Instant::now();
    let channel = loop {
        match connect(&url).await {
            Ok(c) => break c,
            Err(_) if started.elapsed() < Duration::from_secs(30) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => bail!("the coordinator did not come up: {e}"),
        }
    };
    let mut jobs = jobs_client(channel);
    let mut wire = super::bench_isolation::spec(model_for(args.dim), n as u32);
    wire.name = "bench-memory".into();
    let dim = JobSpec::from_proto(&wire)?.layout().dim();
    let mut launch = v1::CreateJobRequest {
        spec: Some(wire),
        auth: None,
    };
    sign(&launcher, &mut launch);
    let job = jobs.create_job(launch).await?.into_inner().job_id;
    printer.status(format!("memory: {n} participants × {dim} elements"));

    let waiting = super::bench_isolation::join_and_train(&url, &job, n).await?;
    let idle_kib = status_kib(pid, "VmRSS");
    // The peak from here on is the round's: Linux resets VmHWM to the current RSS on "5".
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let delta = Arc::new(synthetic_update(dim, 0.5));
    let round_started = Instant::now();
    let mut sending = Vec::with_capacity(n);
    for (mut client, work, round) in waiting {
        let (job, delta) = (job.clone(), Arc::clone(&delta));
        sending.push(tokio::spawn(async move {
            let messages = upload_messages(client.identity(), &job, round, 100, &delta);
            let sent = client.send_upload(messages).await.map(|_| ());
            drop(work);
            sent
        }));
    }
    for s in sending {
        s.await??;
    }
    loop {
        let info = get_job(&jobs, Some(&launcher), &job).await?;
        if info.model_version == 1 {
            break;
        }
        anyhow::ensure!(
            info.rounds.first().map(|r| r.state) != Some(v1::RoundState::Failed as i32),
            "the round failed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let round_s = round_started.elapsed().as_secs_f64();
    let peak_kib = status_kib(pid, "VmHWM");
    drop(coordinator);
    let mib = |k: Option<u64>| k.map(|k| k as f64 / 1024.0);
    let model_mib = dim as f64 * 4.0 / (1 << 20) as f64;
    Ok(json!({
        "participants": n,
        "dim": dim,
        "model_mib": model_mib,
        "upload_buffer_mib": args.upload_buffer_mib,
        "round_s": round_s,
        "coordinator_rss_before_uploads_mib": mib(idle_kib),
        "coordinator_peak_rss_mib": mib(peak_kib),
        "peak_is_the_rounds_alone": reset,
        "peak_over_model": mib(peak_kib).map(|p| p / model_mib),
    }))
}

pub async fn run(args: MemoryArgs, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.participants.is_empty() && args.participants.iter().all(|&n| n >= 1),
        "--participants needs counts of at least 1"
    );
    for &n in &args.participants {
        let line = measure(&args, n, printer).await?;
        printer.data(line.to_string());
    }
    Ok(())
}
