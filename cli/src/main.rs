//! `conclave`: the one binary of Conclave. Runs the coordinator, a hospital participant, job and
//! model management, data partitioning and the demo. Data goes to stdout; logs, progress bars
//! and errors go to stderr, so `--format json | jq` stays clean.

mod cmd;
mod printer;
mod telemetry;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::printer::Printer;

/// Default coordinator address for client commands.
const DEFAULT_COORDINATOR: &str = "http://127.0.0.1:50051";

#[derive(Parser)]
#[command(
    name = "conclave",
    version,
    about = "Federated, privacy-preserving learning coordinator"
)]
struct Cli {
    /// Print less (no progress bars).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
    /// Print more logs (-v: info, -vv: debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// For https:// coordinators: trust only the CA certificate(s) in this PEM file (e.g. the
    /// consortium's own CA). Without it, the system's certificate store is used.
    #[arg(long, global = true, env = "CONCLAVE_TLS_CA", value_name = "PEM")]
    tls_ca: Option<PathBuf>,
    /// How log lines on stderr are written.
    #[arg(long, global = true, value_enum, default_value = "human")]
    log_format: telemetry::LogFormat,
    /// Export spans and metrics over OTLP/gRPC to this collector (e.g. http://127.0.0.1:4317).
    /// Without it (and without the variable) nothing is exported.
    #[arg(
        long,
        global = true,
        env = "OTEL_EXPORTER_OTLP_ENDPOINT",
        value_name = "URL"
    )]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the coordinator.
    Serve(cmd::serve::Args),
    /// Create or inspect identity files.
    #[command(subcommand)]
    Identity(cmd::identity::Command),
    /// Launch and inspect federated jobs.
    #[command(subcommand)]
    Job(cmd::job::Command),
    /// Join a job as a data owner and train on local data.
    Join(cmd::join::Args),
    /// Export global models.
    #[command(subcommand)]
    Model(cmd::model::Command),
    /// Prepare local data files.
    #[command(subcommand)]
    Data(cmd::data::Command),
    /// Run a coordinator and simulated hospitals on the shipped data, over loopback gRPC.
    Demo(cmd::demo::Args),
    /// Inspect, verify, export and replicate the contribution ledger.
    #[command(subcommand)]
    Ledger(cmd::ledger::Command),
    /// Measure a round over loopback gRPC (no training).
    #[command(subcommand)]
    Bench(cmd::bench::Command),
}

/// Where a client command finds the coordinator.
#[derive(clap::Args, Clone)]
struct CoordinatorArg {
    /// Coordinator URL.
    #[arg(long, env = "CONCLAVE_COORDINATOR", default_value = DEFAULT_COORDINATOR)]
    coordinator: String,
}

/// Who a client command signs its requests as.
#[derive(clap::Args, Clone)]
struct SignerArg {
    /// Identity file to sign requests with: a launcher's (see `conclave serve --launcher`) or
    /// one the job admits. Without it, reads go unsigned, which only a coordinator serving
    /// with --public-read answers.
    #[arg(long, env = "CONCLAVE_IDENTITY", value_name = "FILE")]
    identity: Option<PathBuf>,
}

impl SignerArg {
    /// The identity, loaded, if one was named.
    fn load(&self) -> anyhow::Result<Option<conclave_crypto::Identity>> {
        use anyhow::Context;
        self.identity
            .as_ref()
            .map(|p| {
                conclave_crypto::Identity::load(p)
                    .with_context(|| format!("loading identity {}", p.display()))
            })
            .transpose()
    }
}

/// Output format of inspection commands.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Json,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let printer = Printer::new(cli.quiet > 0);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // The exporters' connections are tasks of this runtime, so they are built inside it.
    let telemetry = {
        let _inside = runtime.enter();
        telemetry::init(cli.verbose, cli.log_format, cli.otlp_endpoint.as_deref())
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        if let Some(path) = &cli.tls_ca {
            trust_ca(path)?;
        }
        // A participant rides out coordinator restarts; one-shot commands report a broken
        // connection at once.
        if !matches!(
            cli.command,
            Command::Join(_) | Command::Demo(_) | Command::Bench(_)
        ) {
            conclave_participant::retry::set_patience(std::time::Duration::ZERO);
        }
        match cli.command {
            Command::Serve(args) => cmd::serve::run(args, &printer).await,
            Command::Identity(c) => cmd::identity::run(c, &printer),
            Command::Job(c) => cmd::job::run(c, &printer).await,
            Command::Join(args) => cmd::join::run(args, &printer).await,
            Command::Model(c) => cmd::model::run(c, &printer).await,
            Command::Data(c) => cmd::data::run(c, &printer),
            Command::Demo(args) => cmd::demo::run(args, &printer).await,
            Command::Ledger(c) => cmd::ledger::run(c, &printer).await,
            Command::Bench(c) => cmd::bench::run(c, &printer).await,
        }
    });
    // What is still buffered goes out while the runtime (and the exporters' connections) is up.
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--tls-ca`: the CA certificates every https:// connection of this process must chain to.
fn trust_ca(path: &std::path::Path) -> anyhow::Result<()> {
    use anyhow::Context;
    let pem =
        std::fs::read(path).with_context(|| format!("reading --tls-ca {}", path.display()))?;
    conclave_participant::tls::trust_only(&pem)
        .with_context(|| format!("--tls-ca {}", path.display()))?;
    Ok(())
}

/// A path argument that must exist.
fn existing(path: PathBuf) -> anyhow::Result<PathBuf> {
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    Ok(path)
}
