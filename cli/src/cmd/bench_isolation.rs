//! `conclave bench isolation`: how long `GetJob` takes while a large plain round closes, on
//! another job and on the closing job itself, against the same probe with nothing closing,
//! in one run; prints one JSON line.
//!
//! One coordinator (in this process, over loopback gRPC) holds a small job and a large plain
//! job whose participants upload synthetic updates. A prober asks `GetJob` of both jobs in
//! turn every `--interval-ms`, first with nothing happening (the baseline), then from the
//! moment the last update is acknowledged until the large job holds its new model (its
//! updates are averaged from disk and the model is stored: the close).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use conclave_aggregation::{
    DataSchema, JobSpec, ModelArch, Normalization, Optimizer, Privacy, RewardPolicy, TrainingConfig,
};
use conclave_coordinator::{LocalServer, ServerPolicy, State};
use conclave_crypto::Identity;
use conclave_participant::client::{Client, connect, get_job, jobs_client, sign, upload_messages};
use conclave_proto::v1::{self, work_item::Item};
use serde_json::json;
use tokio_stream::StreamExt;

use super::bench::{model_for, synthetic_update};
use crate::printer::Printer;

#[derive(clap::Args)]
pub struct IsolationArgs {
    /// Elements of the large job's model (the model is sized to the nearest it can have).
    #[arg(long, default_value_t = 50_000_000)]
    dim: usize,
    /// Participants uploading to the large job.
    #[arg(long, default_value_t = 4)]
    participants: usize,
    /// Time between two probes, milliseconds.
    #[arg(long, default_value_t = 5)]
    interval_ms: u64,
    /// Probes of the baseline (nothing closing).
    #[arg(long, default_value_t = 400)]
    baseline_probes: usize,
    /// Where the coordinator keeps its state (default: the system temp dir). Every update is
    /// written durably there, and read back at the close.
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

/// `n` new participants join `job` at `url`, and each waits on its work stream for its
/// training task: the clients, their streams and the round to upload to.
pub(super) async fn join_and_train(
    url: &str,
    job: &str,
    n: usize,
) -> anyhow::Result<Vec<(Client, tonic::Streaming<v1::WorkItem>, u32)>> {
    let mut ready = Vec::with_capacity(n);
    for _ in 0..n {
        let mut client = Client::connect(url, Arc::new(Identity::generate())).await?;
        client.join(job, false).await?;
        ready.push(client);
    }
    let mut training = Vec::with_capacity(n);
    for mut client in ready {
        let mut work = client.work(job).await?;
        let round = loop {
            match work.next().await.context("work stream ended")??.item {
                Some(Item::Train(task)) => break task.round,
                _ => continue,
            }
        };
        training.push((client, work, round));
    }
    Ok(training)
}

/// A one-round plain job of `model` on synthetic data that starts once `start` participants
/// joined, takes any number of updates and waits an hour for them.
pub(super) fn plain_job(model: ModelArch, start: u32) -> JobSpec {
    JobSpec {
        name: "bench".into(),
        model,
        data: DataSchema {
            features: vec!["x".into()],
            label: "y".into(),
            num_classes: 2,
            normalize: Normalization::None,
            eval_fraction: 0.2,
        },
        training: TrainingConfig {
            local_epochs: 1,
            batch_size: 1,
            learning_rate: 0.1,
            optimizer: Optimizer::Sgd,
        },
        rounds: 1,
        min_participants: 1,
        start_participants: start,
        round_deadline_secs: 3600,
        privacy: Privacy::Plain,
        clip_norm: Some(1.0),
        max_samples: None,
        seed: 1,
        admission: Vec::new(),
        rewards: RewardPolicy::default_for(false),
        strategy: Default::default(),
    }
}

/// [`plain_job`] as it goes on the wire.
pub(super) fn spec(model: ModelArch, start: u32) -> v1::JobSpec {
    plain_job(model, start).to_proto()
}

/// Latencies (ms) summarised: count, median, 99th percentile, worst.
fn summary(mut ms: Vec<f64>) -> serde_json::Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            return None;
        }
        let i = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
        Some(ms[i])
    };
    json!({ "n": ms.len(), "p50_ms": at(0.5), "p99_ms": at(0.99), "max_ms": ms.last() })
}

pub async fn run(args: IsolationArgs, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(args.participants >= 1, "--participants must be at least 1");
    anyhow::ensure!(args.interval_ms >= 1, "--interval-ms must be at least 1");
    let dir = match &args.data_dir {
        Some(parent) => tempfile::tempdir_in(parent)
            .with_context(|| format!("temp dir in {}", parent.display()))?,
        None => tempfile::tempdir()?,
    };
    let launcher = Identity::generate();
    let mut policy = ServerPolicy::with_launcher(launcher.participant_id());
    policy.max_model_params = policy.max_model_params.max(2 * args.dim as u64);
    let state = State::open(dir.path(), policy)?;
    let server = LocalServer::start(state).await?;
    let url = server.url.clone();
    let jobs = jobs_client(connect(&url).await?);
    let launch = |wire: v1::JobSpec| {
        let mut request = v1::CreateJobRequest {
            spec: Some(wire),
            auth: None,
        };
        sign(&launcher, &mut request);
        let mut jobs = jobs.clone();
        async move { anyhow::Ok(jobs.create_job(request).await?.into_inner().job_id) }
    };
    let big_spec = spec(model_for(args.dim), args.participants as u32);
    let dim = JobSpec::from_proto(&big_spec)?.layout().dim();
    let big = launch(big_spec).await?;
    let small = launch(spec(ModelArch::LogisticRegression, 1_000)).await?;
    printer.status(format!(
        "isolation: {} participants × {dim} elements, probing every {} ms",
        args.participants, args.interval_ms
    ));

    // Every participant joins and gets its training task; the updates are built up front.
    let mut uploads = Vec::new();
    for (client, work, round) in join_and_train(&url, &big, args.participants).await? {
        let messages = upload_messages(
            client.identity(),
            &big,
            round,
            100,
            &synthetic_update(dim, 0.5),
        );
        uploads.push((client, work, messages));
    }

    let interval = Duration::from_millis(args.interval_ms);
    let probe = |job: String| {
        let jobs = jobs.clone();
        let launcher = &launcher;
        async move {
            let started = Instant::now();
            let info = get_job(&jobs, Some(launcher), &job).await?;
            anyhow::Ok((started.elapsed().as_secs_f64() * 1e3, info.model_version))
        }
    };
    let mut baseline = Vec::new();
    for i in 0..args.baseline_probes {
        let job = if i % 2 == 0 { &small } else { &big };
        baseline.push(probe(job.clone()).await?.0);
        tokio::time::sleep(interval).await;
    }

    let mut sending = Vec::new();
    for (mut client, work, messages) in uploads {
        sending.push(tokio::spawn(async move {
            let sent = client.send_upload(messages).await.map(|_| ());
            drop(work);
            sent
        }));
    }
    for s in sending {
        s.await??;
    }
    // The close starts with the last acknowledgement and ends when the model is there.
    let close_started = Instant::now();
    let (mut other, mut same) = (Vec::new(), Vec::new());
    let close_seconds = loop {
        other.push(probe(small.clone()).await?.0);
        let (ms, version) = probe(big.clone()).await?;
        same.push(ms);
        if version == 1 {
            break close_started.elapsed().as_secs_f64();
        }
        anyhow::ensure!(
            close_started.elapsed() < Duration::from_secs(3600),
            "the round never closed"
        );
        tokio::time::sleep(interval).await;
    };
    server.stop().await?;
    printer.data(
        json!({
            "dim": dim,
            "participants": args.participants,
            "interval_ms": args.interval_ms,
            "close_s": close_seconds,
            "baseline": summary(baseline),
            "during_close_other_job": summary(other),
            "during_close_same_job": summary(same),
        })
        .to_string(),
    );
    Ok(())
}
