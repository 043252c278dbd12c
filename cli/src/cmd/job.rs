//! `conclave job`: check, launch and inspect jobs.

use std::path::PathBuf;

use anyhow::Context;
use conclave_aggregation::JobSpec;
use conclave_participant::client::{connect, get_job, jobs_client, list_jobs, list_rounds, sign};
use conclave_proto::v1;
use serde_json::json;

use crate::printer::Printer;
use crate::{CoordinatorArg, Format, SignerArg, existing};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check a job file and print every problem with its key path (no coordinator needed).
    Check { file: PathBuf },
    /// Launch the job described by a TOML file; prints the job id.
    Launch {
        file: PathBuf,
        #[command(flatten)]
        coordinator: CoordinatorArg,
        /// The launcher's identity, one the coordinator's operator allows to launch jobs.
        #[command(flatten)]
        signer: SignerArg,
    },
    /// Show a job's rounds and metrics.
    Status {
        job: String,
        #[command(flatten)]
        coordinator: CoordinatorArg,
        #[command(flatten)]
        signer: SignerArg,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
    /// List the coordinator's jobs.
    List {
        #[command(flatten)]
        coordinator: CoordinatorArg,
        #[command(flatten)]
        signer: SignerArg,
        #[arg(long, value_enum, default_value = "table")]
        format: Format,
    },
}

/// Reads and checks a job file.
pub fn read_job(file: &std::path::Path) -> anyhow::Result<JobSpec> {
    let text = std::fs::read_to_string(existing(file.to_owned())?)
        .with_context(|| format!("reading {}", file.display()))?;
    JobSpec::from_toml(&text).with_context(|| format!("{} is not a valid job", file.display()))
}

pub async fn run(command: Command, printer: &Printer) -> anyhow::Result<()> {
    match command {
        Command::Check { file } => {
            let spec = read_job(&file)?;
            printer.data(format!(
                "{}: ok ({} parameters, {} rounds)",
                file.display(),
                spec.layout().dim(),
                spec.rounds
            ));
            warn_open_admission(&spec, printer);
        }
        Command::Launch {
            file,
            coordinator,
            signer,
        } => {
            let spec = read_job(&file)?;
            let Some(launcher) = signer.load()? else {
                anyhow::bail!(
                    "launching a job needs --identity (or CONCLAVE_IDENTITY): the identity file \
                     of a launcher the coordinator allows (`conclave serve --launcher DID`)"
                );
            };
            warn_open_admission(&spec, printer);
            let mut jobs = jobs_client(connect(&coordinator.coordinator).await?);
            let mut req = v1::CreateJobRequest {
                spec: Some(spec.to_proto()),
                auth: None,
            };
            sign(&launcher, &mut req);
            let resp = jobs.create_job(req).await.context("launching job")?;
            printer.data(resp.into_inner().job_id);
        }
        Command::Status {
            job,
            coordinator,
            signer,
            format,
        } => {
            let jobs = jobs_client(connect(&coordinator.coordinator).await?);
            let reader = signer.load()?;
            let mut info = get_job(&jobs, reader.as_ref(), &job)
                .await
                .context("fetching job")?;
            // A JobInfo lists the most recent rounds; the rest are read a page at a time.
            if info.rounds_opened as usize > info.rounds.len() {
                let (rounds, evaluations) = list_rounds(&jobs, reader.as_ref(), &job, 1)
                    .await
                    .context("fetching the job's rounds")?;
                let initial = info
                    .evaluations
                    .iter()
                    .find(|e| e.model_version == 0)
                    .cloned();
                info.rounds = rounds;
                info.evaluations = initial.into_iter().chain(evaluations).collect();
            }
            match format {
                Format::Json => printer.data(job_json(&info).to_string()),
                Format::Table => print_status(&info, printer),
            }
        }
        Command::List {
            coordinator,
            signer,
            format,
        } => {
            let jobs = jobs_client(connect(&coordinator.coordinator).await?);
            let list = list_jobs(&jobs, signer.load()?.as_ref())
                .await
                .context("listing jobs")?;
            match format {
                Format::Json => {
                    printer.data(json!(list.iter().map(job_json).collect::<Vec<_>>()).to_string())
                }
                Format::Table => {
                    printer.data(format!(
                        "{:<20} {:<24} {:<9} {:>6} {:>13} {:>9}",
                        "JOB", "NAME", "STATE", "ROUND", "PARTICIPANTS", "ACCURACY"
                    ));
                    for info in &list {
                        let spec = info.spec.clone().unwrap_or_default();
                        let acc = info
                            .evaluations
                            .last()
                            .map_or("-".into(), |e| format!("{:.2}%", e.accuracy * 100.0));
                        printer.data(format!(
                            "{:<20} {:<24} {:<9} {:>6} {:>13} {:>9}",
                            info.job_id,
                            spec.name,
                            state_name(info.state),
                            format!("{}/{}", info.rounds_opened, spec.rounds),
                            info.participant_count,
                            acc
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn warn_open_admission(spec: &JobSpec, printer: &Printer) {
    if spec.admission.is_empty() {
        printer.status("note: this job has open admission: anyone who can reach the coordinator may join. List allowed did:keys in `admission` to close it.");
    }
}

/// A job state's name.
pub fn state_name(state: i32) -> &'static str {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Waiting) => "waiting",
        Ok(v1::JobState::Running) => "running",
        Ok(v1::JobState::Finished) => "finished",
        _ => "unknown",
    }
}

fn round_state_name(state: i32) -> &'static str {
    match v1::RoundState::try_from(state) {
        Ok(v1::RoundState::Open) => "open",
        Ok(v1::RoundState::Closed) => "closed",
        Ok(v1::RoundState::Failed) => "failed",
        _ => "unknown",
    }
}

fn print_status(info: &v1::JobInfo, printer: &Printer) {
    let spec = info.spec.clone().unwrap_or_default();
    printer.data(format!(
        "job {} ({}): {}, model version {}, {} parameters",
        info.job_id,
        spec.name,
        state_name(info.state),
        info.model_version,
        info.dim
    ));
    let start = if spec.start_participants == 0 {
        spec.min_participants
    } else {
        spec.start_participants
    };
    printer.data(format!(
        "participants: {} (first round opens at {start}; a round needs {} updates)",
        info.participant_count, spec.min_participants
    ));
    printer.data(format!(
        "{:>5}  {:<7} {:>9} {:>8} {:>9} {:>9}",
        "ROUND", "STATE", "UPLOADS", "SAMPLES", "ACCURACY", "LOSS"
    ));
    let eval0 = info.evaluations.iter().find(|e| e.model_version == 0);
    if let Some(e) = eval0 {
        printer.data(format!(
            "{:>5}  {:<7} {:>9} {:>8} {:>8.2}% {:>9.4}",
            0,
            "initial",
            "-",
            "-",
            e.accuracy * 100.0,
            e.loss
        ));
    }
    for r in &info.rounds {
        let eval = info.evaluations.iter().find(|e| {
            r.state == v1::RoundState::Closed as i32 && e.model_version == r.result_version
        });
        printer.data(format!(
            "{:>5}  {:<7} {:>9} {:>8} {:>9} {:>9}",
            r.round,
            round_state_name(r.state),
            format!("{}/{}", r.uploaded_count, r.expected_count),
            r.total_samples,
            eval.map_or("-".into(), |e| format!("{:.2}%", e.accuracy * 100.0)),
            eval.map_or("-".into(), |e| format!("{:.4}", e.loss)),
        ));
    }
}

/// A job as JSON (for `--format json`).
pub fn job_json(info: &v1::JobInfo) -> serde_json::Value {
    let spec = info.spec.clone().unwrap_or_default();
    json!({
        "job_id": info.job_id,
        "name": spec.name,
        "state": state_name(info.state),
        "model_version": info.model_version,
        "dim": info.dim,
        "rounds_planned": spec.rounds,
        "min_participants": spec.min_participants,
        "start_participants": spec.start_participants,
        "participant_count": info.participant_count,
        "rounds_opened": info.rounds_opened,
        "rounds": info.rounds.iter().map(|r| json!({
            "round": r.round,
            "state": round_state_name(r.state),
            "base_version": r.base_version,
            "result_version": (r.state == v1::RoundState::Closed as i32).then_some(r.result_version),
            "expected": r.expected_count,
            "uploaded": r.uploaded_count,
            "total_samples": r.total_samples,
            "deadline_unix_ms": r.deadline_unix_ms,
        })).collect::<Vec<_>>(),
        "evaluations": info.evaluations.iter().map(|e| json!({
            "model_version": e.model_version,
            "loss": e.loss,
            "accuracy": e.accuracy,
            "num_examples": e.num_examples,
            "reports": e.reports,
        })).collect::<Vec<_>>(),
    })
}
