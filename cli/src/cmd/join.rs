//! `conclave join`: take part in a job as a data owner.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use conclave_crypto::Identity;
use conclave_participant::{
    Event, ParticipantConfig, Policy, parse_device, run as run_participant,
};

use crate::printer::Printer;
use crate::{CoordinatorArg, existing};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    coordinator: CoordinatorArg,
    /// The job to join.
    #[arg(long)]
    job: String,
    /// Local training data (.csv or .parquet) with the job's feature and label columns.
    #[arg(long)]
    data: PathBuf,
    /// Local held-out data for evaluation; default: hold out the job's eval_fraction of --data.
    #[arg(long)]
    eval_data: Option<PathBuf>,
    /// Identity file (create one with `conclave identity new`).
    #[arg(long, default_value = "conclave.identity")]
    identity: PathBuf,
    /// Where to train: cpu, cuda, cuda:N, or auto.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Where this participant keeps what it pinned of the job, the round plans and statements
    /// it acted on, and its verified replica of the ledger (default: IDENTITY.state).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Take part in a plain job (updates sent in the clear). Refused without this flag.
    #[arg(long)]
    allow_plain: bool,
    /// Refuse secure jobs whose committee is smaller than this.
    #[arg(long, default_value_t = 0)]
    min_committee: u32,
    /// Refuse secure jobs whose threshold is lower than this.
    #[arg(long, default_value_t = 0)]
    min_threshold: u32,
    /// Refuse jobs whose rounds may sum fewer than this many participants.
    #[arg(long, default_value_t = 0)]
    min_participants: u32,
    /// Refuse a secure job whose committee draw failed more attempts than this (each retry
    /// lets the coordinator choose among more draws).
    #[arg(long, default_value_t = conclave_participant::policy::DEFAULT_MAX_DRAW_RETRIES)]
    max_draw_retries: u32,
}

pub async fn run(args: Args, printer: &Printer) -> anyhow::Result<()> {
    let device = parse_device(&args.device)?;
    let identity = Arc::new(
        Identity::load(&args.identity)
            .with_context(|| format!("loading identity {}", args.identity.display()))?,
    );
    let state_dir = args.state_dir.unwrap_or_else(|| {
        let mut name = args.identity.clone().into_os_string();
        name.push(".state");
        PathBuf::from(name)
    });
    let config = ParticipantConfig {
        coordinator: args.coordinator.coordinator,
        job_id: args.job,
        data: existing(args.data)?,
        eval_data: args.eval_data.map(existing).transpose()?,
        device,
        policy: Policy {
            allow_plain: args.allow_plain,
            min_committee: args.min_committee,
            min_threshold: args.min_threshold,
            min_participants: args.min_participants,
            max_draw_retries: args.max_draw_retries,
        },
        state_dir,
    };
    printer.status(format!(
        "joining job {} as {} (training on {:?})",
        config.job_id,
        identity.participant_id(),
        device
    ));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(run_participant(config, identity, Some(tx)));
    while let Some(event) = rx.recv().await {
        match event {
            Event::Pinned {
                settings,
                first_contact,
            } => printer.status(if first_contact {
                format!("pinned the job's settings and coordinator key: {settings}")
            } else {
                format!("the job matches what was pinned: {settings}")
            }),
            Event::Refused { round, reason } => {
                printer.status(format!("round {round}: refused: {reason}"))
            }
            Event::CommitteeChecked { round, complaints } => printer.status(format!(
                "round {round}: checked every upload's box ({complaints} complaints)"
            )),
            Event::DrawRevealed { attempt } => printer.status(format!(
                "revealed this hospital's link for committee draw attempt {attempt}"
            )),
            Event::DrawRefused { attempt, reason } => printer.status(format!(
                "committee draw attempt {attempt}: refused: {reason}"
            )),
            Event::Joined {
                train_rows,
                eval_rows,
            } => printer.status(format!(
                "joined: {train_rows} training rows, {eval_rows} held-out rows"
            )),
            Event::Trained {
                round, num_samples, ..
            } => printer.status(format!(
                "round {round}: trained on {num_samples} rows, update uploaded"
            )),
            Event::UploadRefused { round, reason } => {
                printer.status(format!("round {round}: update not accepted: {reason}"))
            }
            Event::Evaluated {
                model_version,
                metrics,
            } => printer.status(format!(
                "model v{model_version}: local accuracy {:.2}%, loss {:.4} on {} rows",
                metrics.accuracy * 100.0,
                metrics.loss,
                metrics.num_examples
            )),
            Event::CommitteeSigned { round } => {
                printer.status(format!("round {round}: signed the committee statement"))
            }
            Event::CommitteeRevealed { round } => {
                printer.status(format!("round {round}: revealed this member's partial sum"))
            }
            Event::CommitteeRefused { round, reason } => printer.status(format!(
                "round {round}: refused committee request: {reason}"
            )),
            Event::Done {
                final_model_version,
            } => printer.status(format!(
                "job finished at model version {final_model_version}"
            )),
        }
    }
    let final_version = task.await.context("participant task")??;
    printer.data(final_version.to_string());
    Ok(())
}
