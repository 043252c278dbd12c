//! `conclave serve`: run the coordinator until Ctrl-C or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use conclave_coordinator::State;

use crate::printer::Printer;

#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Directory for jobs, models and rounds (created if missing).
    #[arg(long)]
    data_dir: PathBuf,
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
    let state = State::open(&args.data_dir)
        .with_context(|| format!("opening data directory {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    printer.status(format!(
        "coordinator listening on {} (data in {}); Ctrl-C to stop",
        listener.local_addr()?,
        args.data_dir.display()
    ));
    conclave_coordinator::serve(listener, state, shutdown_signal()).await?;
    printer.status("coordinator stopped");
    Ok(())
}
