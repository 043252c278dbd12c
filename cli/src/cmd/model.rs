//! `conclave model export`: write a global model version as safetensors or a PyTorch file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use conclave_aggregation::JobSpec;
use conclave_crypto::Identity;
use conclave_participant::client::{
    Client, connect, download_model, get_job, jobs_client, list_rounds, rounds_client,
};
use conclave_proto::v1;
use conclave_proto::v1::jobs_client::JobsClient;
use tonic::transport::Channel;

use crate::CoordinatorArg;
use crate::printer::Printer;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    /// safetensors (f32 tensors named layers.N.weight / layers.N.bias).
    Safetensors,
    /// TorchScript archive of the named tensors (libtorch's own format): in Python,
    /// `{k.replace("|", "."): v for k, v in torch.jit.load(path).named_parameters()}`.
    Pt,
}

#[derive(clap::Subcommand)]
pub enum Command {
    /// Export the model produced by a round (default: the latest).
    Export {
        #[arg(long)]
        job: String,
        /// The round whose result to export; 0 is the initial model.
        #[arg(long)]
        round: Option<u32>,
        #[arg(long, value_enum, default_value = "safetensors")]
        format: ModelFormat,
        /// Output file; default: <job>-round<N>.<ext> in the current directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sign the requests with this identity (a launcher's or one the job admits).
        #[arg(long, env = "CONCLAVE_IDENTITY", value_name = "FILE")]
        identity: Option<PathBuf>,
        /// Also record the export in the ledger, signed by --identity (a participant of the
        /// job).
        #[arg(long)]
        record: bool,
        #[command(flatten)]
        coordinator: CoordinatorArg,
    },
}

pub async fn run(command: Command, printer: &Printer) -> anyhow::Result<()> {
    let Command::Export {
        job,
        round,
        format,
        out,
        identity,
        record,
        coordinator,
    } = command;
    let identity = identity
        .map(|p| Identity::load(&p).with_context(|| format!("loading identity {}", p.display())))
        .transpose()?;
    if record && identity.is_none() {
        bail!("--record needs --identity (or CONCLAVE_IDENTITY): the exporter signs the record");
    }
    let (path, version, model_hash) = export(
        &coordinator.coordinator,
        identity.as_ref(),
        &job,
        round,
        format,
        out.as_deref(),
    )
    .await?;
    printer.status(format!("exported model version {version} of job {job}"));
    if let (true, Some(identity)) = (record, identity) {
        // Signed twice over: the request (fresh, for the coordinator) and the export itself
        // (kept in the ledger, so anyone can check who exported what).
        let index = Client::connect(&coordinator.coordinator, Arc::new(identity))
            .await?
            .record_export(
                &job,
                version,
                &model_hash,
                &format!("{format:?}").to_lowercase(),
            )
            .await
            .context("recording the export in the ledger")?;
        printer.status(format!("recorded in the ledger as entry {index}"));
    }
    printer.data(path.display().to_string());
    Ok(())
}

/// Picks the model version a round produced.
async fn version_of_round(
    jobs: &JobsClient<Channel>,
    reader: Option<&Identity>,
    info: &v1::JobInfo,
    round: Option<u32>,
) -> anyhow::Result<u32> {
    let Some(round) = round else {
        return Ok(info.model_version);
    };
    if round == 0 {
        return Ok(0);
    }
    let found = match info.rounds.iter().find(|r| r.round == round) {
        Some(r) => Some(r.clone()),
        // Older than the rounds a JobInfo lists: read its page.
        None if round <= info.rounds_opened => list_rounds(jobs, reader, &info.job_id, round)
            .await
            .context("fetching the job's rounds")?
            .0
            .into_iter()
            .find(|r| r.round == round),
        None => None,
    };
    let Some(r) = found else {
        bail!(
            "job {} has no round {round} (it has {})",
            info.job_id,
            info.rounds_opened
        );
    };
    match v1::RoundState::try_from(r.state) {
        Ok(v1::RoundState::Closed) => Ok(r.result_version),
        Ok(v1::RoundState::Failed) => {
            bail!("round {round} failed (too few updates): it produced no model")
        }
        _ => bail!("round {round} is still open"),
    }
}

/// Downloads a model version and writes it, reading as `reader` when given; returns the path,
/// the version and the BLAKE3 hash of its flat f32 parameters (checked against the
/// coordinator's while downloading). Recording is the caller's (the coordinator records only
/// participants' exports and refuses anyone else's by name).
pub async fn export(
    url: &str,
    reader: Option<&Identity>,
    job: &str,
    round: Option<u32>,
    format: ModelFormat,
    out: Option<&Path>,
) -> anyhow::Result<(PathBuf, u32, [u8; 32])> {
    let channel = connect(url).await?;
    let jobs = jobs_client(channel.clone());
    let info = get_job(&jobs, reader, job).await.context("fetching job")?;
    let spec = JobSpec::from_proto(&info.spec.clone().unwrap_or_default())?;
    let layout = spec.layout();
    let version = version_of_round(&jobs, reader, &info, round).await?;
    let params = download_model(&mut rounds_client(channel), reader, job, version, None).await?;
    let ext = match format {
        ModelFormat::Safetensors => "safetensors",
        ModelFormat::Pt => "pt",
    };
    let path = out
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(format!("{job}-v{version}.{ext}")));
    match format {
        ModelFormat::Safetensors => {
            std::fs::write(&path, layout.to_safetensors(&params)?)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        ModelFormat::Pt => {
            let named: Vec<(String, tch::Tensor)> = layout
                .split(&params)?
                .into_iter()
                .map(|(spec, values)| {
                    let shape: Vec<i64> = spec.shape.iter().map(|&d| d as i64).collect();
                    (
                        spec.name.clone(),
                        tch::Tensor::from_slice(values).reshape(&shape),
                    )
                })
                .collect();
            tch::Tensor::save_multi(&named, &path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
    }
    let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    Ok((path, version, *blake3::hash(&bytes).as_bytes()))
}
