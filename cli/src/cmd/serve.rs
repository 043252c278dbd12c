//! `conclave serve`: run the coordinator until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use conclave_aggregation::job::MAX_MODEL_PARAMS;
use conclave_coordinator::access::{
    DEFAULT_DROPOUT_GRACE, DEFAULT_MAX_JOBS, DEFAULT_MAX_MODEL_PARAMS,
    DEFAULT_MAX_PARTICIPANTS_PER_JOB, MAX_PARTICIPANTS_PER_JOB,
};
use conclave_coordinator::limits::{self, StreamLimits};
use conclave_coordinator::{ServerPolicy, State};
use conclave_crypto::ParticipantId;

use crate::printer::Printer;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory for jobs, models and rounds (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
    /// Serve over TLS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (mode 0600 or stricter).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
    /// An identity allowed to launch jobs (its did:key, as `conclave identity new` prints it);
    /// repeat for several. Without one, every launch is refused.
    #[arg(long = "launcher", value_name = "DID", value_parser = parse_did)]
    launchers: Vec<ParticipantId>,
    /// Serve reads (jobs, models, the ledger) without a signature. By default a read must be
    /// signed by a launcher or by an identity the job admits.
    #[arg(long)]
    public_read: bool,
    /// Most jobs this coordinator keeps, finished ones included (each is reloaded at start).
    #[arg(long, default_value_t = DEFAULT_MAX_JOBS as u64, value_parser = clap::value_parser!(u64).range(1..))]
    max_jobs: u64,
    /// Most parameters a job's model may have (its server strategy's state counted as
    /// parameters: FedAdam, FedYogi and FedAdagrad keep two per parameter).
    #[arg(long, default_value_t = DEFAULT_MAX_MODEL_PARAMS, value_parser = clap::value_parser!(u64).range(1..=MAX_MODEL_PARAMS))]
    max_model_params: u64,
    /// Most participants one job may have, whatever its spec says (a secure job's
    /// max_participants may be lower).
    #[arg(long, default_value_t = DEFAULT_MAX_PARTICIPANTS_PER_JOB as u64, value_parser = clap::value_parser!(u64).range(2..=MAX_PARTICIPANTS_PER_JOB as u64))]
    max_participants_per_job: u64,
    /// Upload (and reveal) streams one participant may have open at once in a job.
    #[arg(long, default_value_t = limits::DEFAULT_UPLOADS_PER_PARTICIPANT as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_uploads_per_participant: u64,
    /// Seconds an upload or reveal stream may go without a message before it is cut.
    #[arg(long, default_value_t = limits::DEFAULT_UPLOAD_IDLE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=3600))]
    upload_idle_secs: u64,
    /// Work streams one participant may have open at once in a job.
    #[arg(long, default_value_t = limits::DEFAULT_WORK_STREAMS_PER_PARTICIPANT as u64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    max_work_streams_per_participant: u64,
    /// Ledger streams (`ledger sync`, participants' replicas) open at once, in all (more wait
    /// up to --upload-idle-secs for a place); each reader may have 4.
    #[arg(long, default_value_t = limits::DEFAULT_LEDGER_STREAMS as u64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_ledger_streams: u64,
    /// Model downloads streaming at once, in all (more wait up to --upload-idle-secs for a
    /// place); each reader may have 4.
    #[arg(long, default_value_t = limits::DEFAULT_DOWNLOADS as u64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_downloads: u64,
    /// MiB of update data (uploads and reveals being received and stored) the coordinator
    /// holds in memory at once; more uploads wait, unread, for room (up to 10 ×
    /// --upload-idle-secs).
    #[arg(long, default_value_t = limits::DEFAULT_UPLOAD_BUFFER >> 20, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    max_upload_buffer_mib: u64,
    /// Seconds a round waits for a participant whose work stream is gone, once the round
    /// has min_participants updates, before it closes without it (its deadline still bounds
    /// the round).
    #[arg(long, default_value_t = DEFAULT_DROPOUT_GRACE.as_secs(), value_parser = clap::value_parser!(u64).range(1..=86_400))]
    dropout_grace_secs: u64,
}

fn parse_did(s: &str) -> Result<ParticipantId, String> {
    ParticipantId::parse(s).map_err(|e| e.to_string())
}

impl Args {
    /// The access policy and limits these flags describe.
    fn policy(&self) -> ServerPolicy {
        ServerPolicy {
            launchers: self.launchers.iter().cloned().collect(),
            public_read: self.public_read,
            max_jobs: self.max_jobs as usize,
            max_model_params: self.max_model_params,
            max_participants_per_job: self.max_participants_per_job as usize,
            streams: StreamLimits {
                uploads_per_participant: self.max_uploads_per_participant as usize,
                upload_idle: std::time::Duration::from_secs(self.upload_idle_secs),
                work_streams_per_participant: self.max_work_streams_per_participant as usize,
                ledger_streams: self.max_ledger_streams as usize,
                downloads: self.max_downloads as usize,
                upload_buffer: self.max_upload_buffer_mib << 20,
            },
            dropout_grace: std::time::Duration::from_secs(self.dropout_grace_secs),
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = ctrl_c.await;
        }
    }
}

pub async fn run(args: Args, printer: &Printer) -> anyhow::Result<()> {
    // TLS files are checked before anything else starts.
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(conclave_coordinator::tls::server_config(cert, key)?),
        _ => None,
    };
    let policy = args.policy();
    let state = State::open(&args.data_dir, policy.clone())
        .with_context(|| format!("opening data directory {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    printer.status(format!(
        "coordinator listening on {scheme}://{} (data in {}); Ctrl-C to stop",
        listener.local_addr()?,
        args.data_dir.display()
    ));
    if policy.launchers.is_empty() {
        eprintln!(
            "note: no --launcher given: this coordinator refuses every new job (it still runs \
             the jobs it has)"
        );
    }
    if policy.public_read && !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: --public-read on {}: anyone who reaches the port can read every job, \
             model and the ledger",
            args.listen
        );
    }
    if tls.is_none() && !args.listen.ip().is_loopback() {
        eprintln!(
            "warning: serving without TLS on {}: plain-mode updates and models cross the \
             network unencrypted; pass --tls-cert and --tls-key",
            args.listen
        );
    }
    conclave_coordinator::serve_with_tls(listener, state, tls, shutdown_signal()).await?;
    printer.status("coordinator stopped");
    Ok(())
}
