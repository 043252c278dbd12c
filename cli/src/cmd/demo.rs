//! `conclave demo`: a coordinator and N simulated hospitals in one process, talking real gRPC
//! over loopback, train on the shipped breast-cancer data and report accuracy on its fixed
//! test split each round.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use conclave_aggregation::{
    DataSchema, JobSpec, ModelArch, Normalization, Optimizer, Privacy, RewardPolicy, TrainingConfig,
};
use conclave_coordinator::{LocalServer, ServerPolicy, State};
use conclave_crypto::Identity;
use conclave_datasets::partition::{Scheme, partition_file};
use conclave_datasets::wdbc;
use conclave_participant::client::{connect, get_job, jobs_client, list_rounds, sign};
use conclave_participant::{Event, ParticipantConfig, Policy, run as run_participant};
use conclave_proto::v1;

use crate::cmd::model::{ModelFormat, export};
use crate::printer::Printer;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrivacyArg {
    Plain,
    Secagg,
    Fhe,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelArg {
    LogisticRegression,
    Mlp,
}

#[derive(clap::Args)]
pub struct Args {
    /// Keep state here (default: a fresh directory under the system temp dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Number of simulated hospitals.
    #[arg(long, default_value_t = 5)]
    participants: usize,
    /// Privacy mode of the rounds: secagg (masked updates, unmasked only as a sum by a
    /// committee of hospitals) or plain (updates in the clear, for comparison).
    #[arg(long, value_enum, default_value = "secagg")]
    privacy: PrivacyArg,
    #[arg(long, value_enum, default_value = "logistic-regression")]
    model: ModelArg,
    /// Split the training data with Dirichlet(alpha) label skew instead of IID.
    #[arg(long)]
    dirichlet_alpha: Option<f64>,
    /// Where hospitals train: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
}

/// L2 clip bound of the demo's secure-aggregation rounds (its updates stay well below it).
const DEMO_CLIP: f32 = 5.0;

fn demo_job(args: &Args) -> anyhow::Result<JobSpec> {
    let n = args.participants as u32;
    let spec = JobSpec {
        name: "wdbc-demo".into(),
        model: match args.model {
            ModelArg::LogisticRegression => ModelArch::LogisticRegression,
            ModelArg::Mlp => ModelArch::Mlp { hidden: vec![16] },
        },
        data: DataSchema {
            features: wdbc::FEATURES.iter().map(|s| s.to_string()).collect(),
            label: wdbc::LABEL.into(),
            num_classes: 2,
            normalize: Normalization::LocalZScore,
            eval_fraction: 0.0,
        },
        training: TrainingConfig {
            local_epochs: 1,
            batch_size: 16,
            learning_rate: 0.1,
            optimizer: Optimizer::Sgd,
        },
        rounds: args.rounds,
        // Rounds train every hospital and survive up to two stragglers (secagg: at least 2).
        min_participants: n.min(3),
        start_participants: n,
        round_deadline_secs: 120,
        privacy: Privacy::Plain,
        clip_norm: None,
        max_samples: None,
        seed: 42,
        admission: Vec::new(),
        rewards: RewardPolicy::default_for(false),
        strategy: Default::default(),
    };
    let mut wire = spec.to_proto();
    match args.privacy {
        PrivacyArg::Plain => {}
        PrivacyArg::Secagg => {
            anyhow::ensure!(n >= 2, "secure aggregation needs at least 2 participants");
            // A committee of up to 5 hospitals with t > c/2; weights capped at 1000 samples.
            let c = n.min(5);
            wire.privacy = v1::Privacy::Secagg.into();
            wire.rewards = None;
            wire.min_participants = n.clamp(2, 3);
            wire.committee_size = c;
            wire.threshold = c / 2 + 1;
            wire.clip_norm = DEMO_CLIP;
            wire.max_samples = 1000;
            wire.max_participants = n.max(50);
        }
        PrivacyArg::Fhe => {
            bail!("privacy mode fhe is not available in this release yet; use secagg or plain")
        }
    }
    // Same checks as a job file or a wire request.
    Ok(JobSpec::from_proto(&wire)?)
}

/// Writes the shipped splits and deals them to the hospitals; returns (train, test) per hospital.
fn prepare_data(
    dir: &Path,
    parts: usize,
    alpha: Option<f64>,
) -> anyhow::Result<Vec<(PathBuf, PathBuf)>> {
    let shipped = dir.join("shipped");
    std::fs::create_dir_all(&shipped)?;
    let train = shipped.join("wdbc_train.csv");
    let test = shipped.join("wdbc_test.csv");
    std::fs::write(&train, wdbc::TRAIN_CSV)?;
    std::fs::write(&test, wdbc::TEST_CSV)?;
    let scheme = alpha.map_or(Scheme::Iid, |alpha| Scheme::Dirichlet { alpha });
    let hospitals = dir.join("hospitals");
    let trains = partition_file(&train, wdbc::LABEL, parts, scheme, 7, &hospitals, "train")?;
    // Every hospital holds a slice of the test split, so federated evaluation covers all of it.
    let tests = partition_file(
        &test,
        wdbc::LABEL,
        parts,
        Scheme::Iid,
        11,
        &hospitals,
        "test",
    )?;
    Ok(trains.into_iter().zip(tests).collect())
}

fn load_or_create_identity(path: &Path) -> anyhow::Result<Identity> {
    if path.exists() {
        return Identity::load(path).with_context(|| format!("loading {}", path.display()));
    }
    let identity = Identity::generate();
    identity.save(path)?;
    Ok(identity)
}

pub async fn run(args: Args, printer: &Printer) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.participants >= 1 && args.participants <= 50,
        "--participants must be between 1 and 50"
    );
    anyhow::ensure!(
        args.rounds >= 1 && args.rounds <= 1000,
        "--rounds must be between 1 and 1000"
    );
    let device = conclave_participant::parse_device(&args.device)?;
    let spec = demo_job(&args)?;
    let dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!(
            "conclave-demo-{}",
            hex::encode(conclave_crypto::random_bytes::<4>())
        )),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    printer.status(format!("demo state in {}", dir.display()));
    let files = prepare_data(&dir, args.participants, args.dirichlet_alpha)?;

    // Coordinator on an ephemeral loopback port; the demo's researcher is its one launcher.
    let launcher = load_or_create_identity(&dir.join("launcher.identity"))?;
    let policy = ServerPolicy::with_launcher(launcher.participant_id());
    let state = State::open(&dir.join("coordinator"), policy)?;
    let server = LocalServer::start(state).await?;
    let url = server.url.clone();
    let mut jobs = jobs_client(connect(&url).await?);
    let mut launch = v1::CreateJobRequest {
        spec: Some(spec.to_proto()),
        auth: None,
    };
    sign(&launcher, &mut launch);
    let job_id = jobs.create_job(launch).await?.into_inner().job_id;
    let privacy = match spec.secagg() {
        Some(s) => format!(
            "secagg (committee {} of {}, threshold {}, updates clipped to {})",
            s.committee_size,
            args.participants,
            s.threshold,
            s.quant.clip()
        ),
        None => "plain (updates in the clear)".into(),
    };
    printer.status(format!(
        "coordinator at {url}; job {job_id}: {} hospitals training on {device:?}, {} rounds, {:?} model, privacy {privacy}",
        args.participants, args.rounds, args.model
    ));

    // Five hospitals share two cores: one libtorch thread each.
    tch::set_num_threads(1);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for (i, (train, test)) in files.into_iter().enumerate() {
        let identity = Arc::new(load_or_create_identity(
            &dir.join("hospitals")
                .join(format!("hospital-{}.identity", i + 1)),
        )?);
        let config = ParticipantConfig {
            coordinator: url.clone(),
            job_id: job_id.clone(),
            data: train,
            eval_data: Some(test),
            device,
            policy: Policy {
                allow_plain: spec.secagg().is_none(),
                ..Policy::default()
            },
            state_dir: dir
                .join("hospitals")
                .join(format!("hospital-{}.state", i + 1)),
        };
        tasks.push(tokio::spawn(run_participant(
            config,
            identity,
            Some(tx.clone()),
        )));
    }
    drop(tx);

    let bar = printer.progress(args.rounds as u64, "rounds");
    let mut reports: BTreeMap<u32, usize> = BTreeMap::new();
    while let Some(event) = rx.recv().await {
        let Event::Evaluated { model_version, .. } = event else {
            continue;
        };
        let count = reports.entry(model_version).or_default();
        *count += 1;
        if *count < args.participants {
            continue;
        }
        let info = get_job(&jobs, Some(&launcher), &job_id).await?;
        let Some(eval) = info
            .evaluations
            .iter()
            .find(|e| e.model_version == model_version)
        else {
            continue;
        };
        let label =
            match info.rounds.iter().find(|r| {
                r.state == v1::RoundState::Closed as i32 && r.result_version == model_version
            }) {
                Some(r) => format!("round {:>3}", r.round),
                None => "initial  ".to_string(),
            };
        let line = format!(
            "{label}  test accuracy {:>6.2}%  loss {:.4}  ({} rows)",
            eval.accuracy * 100.0,
            eval.loss,
            eval.num_examples
        );
        bar.suspend(|| printer.data(line));
        let open = info
            .rounds
            .last()
            .is_some_and(|r| r.state == v1::RoundState::Open as i32);
        bar.set_position(u64::from(info.rounds_opened) - u64::from(open));
    }
    bar.finish_and_clear();
    for task in tasks {
        task.await
            .context("hospital task")?
            .context("hospital failed")?;
    }

    let (rounds, evaluations) = list_rounds(&jobs, Some(&launcher), &job_id, 1).await?;
    let out = dir.join("model-final.safetensors");
    let (path, version, _) = export(
        &url,
        Some(&launcher),
        &job_id,
        None,
        ModelFormat::Safetensors,
        Some(&out),
    )
    .await?;
    server.stop().await.context("coordinator")?;
    let failed = rounds
        .iter()
        .filter(|r| r.state == v1::RoundState::Failed as i32)
        .count();
    let Some(last) = evaluations.iter().find(|e| e.model_version == version) else {
        bail!("no evaluation of the final model was reported");
    };
    printer.data(format!(
        "final test accuracy: {:.2}% (loss {:.4}) on the {}-row shipped test split, model version {version} after {} rounds{}",
        last.accuracy * 100.0,
        last.loss,
        last.num_examples,
        rounds.len(),
        if failed > 0 { format!(" ({failed} failed)") } else { String::new() }
    ));
    printer.data(format!("model: {}", path.display()));
    let ledger = dir.join("coordinator");
    printer.data(format!(
        "ledger: conclave ledger verify --ledger {0}   (or: conclave ledger show --ledger {0})",
        ledger.display()
    ));
    Ok(())
}
