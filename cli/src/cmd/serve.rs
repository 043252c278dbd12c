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
    /// Serve over TLS with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, requires = "tls_key", value_name = "PEM")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (mode 0600 or stricter).
    #[arg(long, requires = "tls_cert", value_name = "PEM")]
    tls_key: Option<PathBuf>,
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
    let state = State::open(&args.data_dir)
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
