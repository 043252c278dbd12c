//! `conclave bench secagg`: one full round without training, over real gRPC on loopback, in
//! secure-aggregation mode and in plain mode, in one process run; prints one JSON line.
//!
//! Every participant is an in-process client that uploads a synthetic update (uniform noise
//! scaled to half the clip norm). Round time runs from the moment the round opens (in plain
//! mode at the last join; in secure mode once the pool has revealed its draw links, which is
//! reported apart as `secagg_draw_s`: it happens once per job) until the coordinator holds the
//! new model. Participants, committee and coordinator share this machine's cores, as in
//! Flower's simulation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use conclave_aggregation::{JobSpec, ModelArch};
use conclave_coordinator::{LocalServer, ServerPolicy, State};
use conclave_crypto::Identity;
use conclave_participant::client::{Client, connect, get_job, jobs_client, sign, upload_messages};
use conclave_participant::{Event, Pin, SecaggDuties};
use conclave_proto::v1::{self, work_item::Item};
use rand::Rng;
use serde_json::json;
use tokio_stream::StreamExt;

use crate::printer::Printer;

#[derive(clap::Subcommand)]
pub enum Command {
    /// A secure-aggregation round against the same round in plain mode.
    Secagg(SecaggArgs),
    /// Durable ledger appends per second and verification throughput.
    Ledger(super::bench_ledger::LedgerArgs),
    /// GetJob latency while another job's large plain round closes.
    Isolation(super::bench_isolation::IsolationArgs),
    /// The coordinator's peak memory over a plain round, by participant count.
    Memory(super::bench_memory::MemoryArgs),
}

#[derive(clap::Args)]
pub struct SecaggArgs {
    #[arg(long, default_value_t = 100)]
    participants: usize,
    /// Elements per update (the model is sized to the nearest dimension it can have).
    #[arg(long, default_value_t = 1_000_000)]
    dim: usize,
    #[arg(long, default_value_t = 10)]
    committee: u32,
    /// Default: committee / 2 + 1.
    #[arg(long)]
    threshold: Option<u32>,
    /// Fraction of participants (committee members among them) that disconnect right after
    /// uploading: their committee seats are then rebuilt from shares.
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Round deadline, seconds.
    #[arg(long, default_value_t = 600)]
    deadline: u32,
    /// Where the coordinator keeps its state during the run (default: the system temp dir).
    /// Plain rounds write every update durably (fsync) before acknowledging it; secagg rounds
    /// keep masked uploads in memory. A tmpfs such as /dev/shm takes the disk out of both.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

/// An MLP with one input, two classes and hidden widths [a, b] whose size is close to `dim`.
pub(super) fn model_for(dim: usize) -> ModelArch {
    let a = ((dim as f64).sqrt() as usize).clamp(1, 65_536);
    let b = (dim.saturating_sub(2 + 2 * a) / (a + 3)).clamp(1, 65_536);
    ModelArch::Mlp { hidden: vec![a, b] }
}

/// Uniform noise scaled to L2 norm `norm`.
pub(super) fn synthetic_update(dim: usize, norm: f32) -> Vec<f32> {
    let mut rng = rand::rng();
    let mut delta: Vec<f32> = (0..dim).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    let current = delta
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::MIN_POSITIVE);
    delta.iter_mut().for_each(|x| *x *= norm / current);
    delta
}

struct RoundStats {
    /// From the last join to the round's opening: a secure job's draw (once per job).
    draw_seconds: f64,
    /// Committee members among the participants who left after uploading.
    committee_dropped: usize,
    seconds: f64,
    /// CPU time of the whole process (all parties) during the round, where the OS tells.
    cpu_seconds: Option<f64>,
    upload_bytes: usize,
    committee_cpu: Duration,
    dim: usize,
}

async fn run_round(args: &SecaggArgs, secagg: bool) -> anyhow::Result<RoundStats> {
    let n = args.participants;
    let mut base = super::bench_isolation::plain_job(model_for(args.dim), n as u32);
    base.min_participants = 2;
    base.round_deadline_secs = args.deadline;
    let mut wire = base.to_proto();
    if secagg {
        wire.privacy = v1::Privacy::Secagg.into();
        wire.rewards = None;
        wire.committee_size = args.committee;
        wire.threshold = args.threshold.unwrap_or(args.committee / 2 + 1);
        wire.max_samples = 1000;
        wire.max_participants = n as u32;
    }
    let spec = Arc::new(JobSpec::from_proto(&wire).context("bench job")?);
    let dim = spec.layout().dim();

    let dir = match &args.data_dir {
        Some(parent) => tempfile::tempdir_in(parent)
            .with_context(|| format!("temp dir in {}", parent.display()))?,
        None => tempfile::tempdir()?,
    };
    let launcher = Identity::generate();
    let policy = ServerPolicy::with_launcher(launcher.participant_id());
    let state = State::open(dir.path(), policy)?;
    let server = LocalServer::start(state).await?;
    let url = server.url.clone();
    let mut jobs = jobs_client(connect(&url).await?);
    let mut launch = v1::CreateJobRequest {
        spec: Some(wire),
        auth: None,
    };
    sign(&launcher, &mut launch);
    let job = jobs.create_job(launch).await?.into_inner().job_id;

    let dropped = (args.dropout * n as f64).round() as usize;
    let mut clients = Vec::with_capacity(n);
    let mut coordinator = None;
    let mut leavers = Vec::new();
    for i in 0..n {
        let identity = Arc::new(Identity::generate());
        if i < dropped {
            leavers.push(identity.participant_id().to_string());
        }
        let mut client = Client::connect(&url, Arc::clone(&identity)).await?;
        let info = client.join(&job, secagg).await?;
        coordinator = conclave_crypto::ParticipantId::parse(&info.coordinator).ok();
        clients.push((client, identity));
    }
    // The simulated participants share this machine's cores. In plain mode their CPU work
    // runs on the runtime's worker threads, one per core; the secure participants' masking
    // runs on blocking threads, so it is held to one per core too: a hundred at once would
    // only thrash the caches, and finished uploads could not stream in while others compute.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mask_slots = Arc::new(tokio::sync::Semaphore::new(cores));
    let started = Instant::now();
    let cpu_before = process_cpu_seconds();
    let mut tasks = Vec::with_capacity(n);
    // The others upload only once every leaver is gone, so that the coordinator already
    // counts the leavers out when the last upload arrives and it picks who answers.
    let (left_tx, left_rx) = tokio::sync::watch::channel(0usize);
    let left_tx = Arc::new(left_tx);
    let coordinator = coordinator.context("the coordinator named no key")?;
    for (i, (mut client, identity)) in clients.into_iter().enumerate() {
        let (job, spec) = (job.clone(), Arc::clone(&spec));
        let (left_tx, mut left_rx) = (Arc::clone(&left_tx), left_rx.clone());
        let mask_slots = Arc::clone(&mask_slots);
        let leaves = i < dropped;
        // Each simulated participant pins the job and keeps its own state and ledger replica,
        // as a real one does.
        let pin = Pin {
            job_id: job.clone(),
            coordinator: coordinator.clone(),
            spec: (*spec).clone(),
        };
        let state_dir = dir.path().join(format!("participant-{i}"));
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut work = client.work(&job).await?;
            let mut duties = match secagg {
                true => Some(SecaggDuties::open(identity, pin, &state_dir, &url).await?),
                false => None,
            };
            let mut bytes = 0;
            let mut left = false;
            while let Some(item) = work.next().await {
                match item.context("work stream")?.item {
                    Some(Item::Train(task)) => {
                        // As `conclave join` does: the plan is checked on arrival, before
                        // the (here synthetic) training; masking then reuses the check.
                        if let Some(duties) = &mut duties {
                            duties.accept_plan(&task).await?;
                        }
                        if !leaves && dropped > 0 {
                            left_rx.wait_for(|n| *n >= dropped).await?;
                            tokio::time::sleep(Duration::from_millis(300)).await;
                        }
                        let delta = synthetic_update(dim, 0.5);
                        bytes = match &mut duties {
                            Some(duties) => {
                                let slot = mask_slots.acquire().await?;
                                let masked = duties.mask(&spec, &task, delta, 100).await?;
                                drop(slot);
                                client.send_upload(masked.messages).await?.1
                            }
                            None => {
                                client
                                    .send_upload(upload_messages(
                                        client.identity(),
                                        &job,
                                        task.round,
                                        100,
                                        &delta,
                                    ))
                                    .await?
                                    .1
                            }
                        };
                        if leaves {
                            left = true;
                            break;
                        }
                    }
                    Some(Item::Draw(task)) => {
                        let duties = duties.as_mut().context("a draw in a plain job")?;
                        if let Event::DrawRefused { reason, .. } =
                            duties.draw(&mut client, task).await?
                        {
                            bail!("a participant refused the committee draw: {reason}");
                        }
                    }
                    Some(Item::Check(task)) => {
                        let duties = duties.as_mut().context("a check in a plain job")?;
                        if let Event::CommitteeRefused { reason, .. } =
                            duties.check(&mut client, task).await?
                        {
                            bail!("a committee member refused to check the uploads: {reason}");
                        }
                    }
                    Some(Item::Sign(task)) => {
                        let duties = duties.as_mut().context("a statement in a plain job")?;
                        if let Event::CommitteeRefused { reason, .. } =
                            duties.sign(&mut client, task).await?
                        {
                            bail!("a committee member refused the statement: {reason}");
                        }
                    }
                    Some(Item::Reveal(task)) => {
                        let duties = duties.as_mut().context("a reveal in a plain job")?;
                        if let Event::CommitteeRefused { reason, .. } =
                            duties.reveal(&mut client, task).await?
                        {
                            bail!("a committee member refused to reveal: {reason}");
                        }
                    }
                    Some(Item::Done(_)) => break,
                    Some(Item::Evaluate(_)) | None => {}
                }
            }
            if left {
                drop(work);
                drop(client);
                left_tx.send_modify(|n| *n += 1);
            }
            let committee = duties.map_or(Duration::ZERO, |d| d.committee_time());
            Ok::<_, anyhow::Error>((bytes, committee))
        }));
    }
    // Wait for the coordinator to hold the new model (or give up on a failed round).
    // A secure job first gathers its committee draw's entropy (once per job); the round's
    // time runs from the moment it opens.
    let mut opened: Option<(Instant, Option<f64>)> = None;
    let (seconds, draw_seconds, cpu_seconds, info) = loop {
        let info = get_job(&jobs, Some(&launcher), &job).await?;
        if opened.is_none() && !info.rounds.is_empty() {
            opened = Some((Instant::now(), process_cpu_seconds()));
        }
        if info.model_version == 1 {
            let (open, cpu_open) = opened.unwrap_or((started, cpu_before));
            let cpu = process_cpu_seconds()
                .zip(cpu_open)
                .map(|(after, before)| after - before);
            let draw = (open - started).as_secs_f64();
            break (open.elapsed().as_secs_f64(), draw, cpu, info);
        }
        if info
            .rounds
            .first()
            .is_some_and(|r| r.state == v1::RoundState::Failed as i32)
        {
            bail!(
                "the {} round failed (too few uploads or committee members)",
                if secagg { "secagg" } else { "plain" }
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let mut upload_bytes = 0;
    let mut committee_cpu = Duration::ZERO;
    for task in tasks {
        let (bytes, cpu) = task.await??;
        upload_bytes = upload_bytes.max(bytes);
        committee_cpu += cpu;
    }
    server.stop().await?;
    let committee_dropped = info.rounds[0]
        .committee
        .iter()
        .filter(|m| leavers.contains(m))
        .count();
    Ok(RoundStats {
        draw_seconds,
        committee_dropped,
        seconds,
        cpu_seconds,
        upload_bytes,
        committee_cpu,
        dim,
    })
}

/// User + system CPU seconds of this process so far (Linux: /proc/self/stat).
fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on every Linux configuration Rust targets.
    Some(ticks / 100.0)
}

pub async fn run(command: Command, printer: &Printer) -> anyhow::Result<()> {
    let args = match command {
        Command::Secagg(args) => args,
        Command::Ledger(args) => return super::bench_ledger::run(args, printer),
        Command::Isolation(args) => return super::bench_isolation::run(args, printer).await,
        Command::Memory(args) => return super::bench_memory::run(args, printer).await,
    };
    anyhow::ensure!(args.participants >= 2, "--participants must be at least 2");
    anyhow::ensure!(
        (0.0..1.0).contains(&args.dropout),
        "--dropout must be in [0, 1)"
    );
    anyhow::ensure!(
        args.committee as usize <= args.participants,
        "--committee cannot exceed --participants"
    );
    printer.status(format!(
        "secagg round: {} participants × {} elements, committee {}",
        args.participants, args.dim, args.committee
    ));
    let secagg = run_round(&args, true).await?;
    printer.status("plain round");
    let plain = run_round(&args, false).await?;
    printer.data(
        json!({
            "participants": args.participants,
            "dim": secagg.dim,
            "committee": args.committee,
            "threshold": args.threshold.unwrap_or(args.committee / 2 + 1),
            "dropout": args.dropout,
            "secagg_s": secagg.seconds,
            "secagg_draw_s": secagg.draw_seconds,
            "plain_s": plain.seconds,
            "ratio": secagg.seconds / plain.seconds,
            "upload_bytes_per_participant": secagg.upload_bytes,
            "plain_upload_bytes_per_participant": plain.upload_bytes,
            "committee_cpu_s": secagg.committee_cpu.as_secs_f64(),
            "secagg_process_cpu_s": secagg.cpu_seconds,
            "plain_process_cpu_s": plain.cpu_seconds,
            "committee_dropped": secagg.committee_dropped,
        })
        .to_string(),
    );
    Ok(())
}
