//! Accepting connections: binds the services with their message-size limits and runs until
//! the shutdown signal fires, then waits for in-flight requests and the round drivers to
//! finish.

use std::future::Future;
use std::sync::Arc;

use conclave_ledger::entry::MAX_ENTRY_BYTES;
use conclave_proto::MAX_MESSAGE_BYTES;
use conclave_proto::v1::{
    jobs_server::JobsServer, ledger_server::LedgerServer, rounds_server::RoundsServer,
};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;

use crate::service::{jobs::JobsService, ledger::LedgerService, rounds::RoundsService};
use crate::{CoordinatorError, State};

/// Most concurrent requests served on one connection.
const MAX_CONCURRENT_PER_CONNECTION: usize = 256;

/// How often an idle connection is pinged (HTTP/2).
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(30);

/// How long a ping may go unanswered before the connection is closed.
const KEEPALIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// HTTP/2 flow-control window of one stream: unread data a peer may send ahead (~13 MB/s
/// per upload at 20 ms round trip).
const STREAM_WINDOW: u32 = 256 * 1024;

/// HTTP/2 flow-control window of one connection, over all its streams.
const CONNECTION_WINDOW: u32 = 1024 * 1024;

/// Serves the coordinator's gRPC services on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CoordinatorError> {
    serve_with_tls(listener, state, None, shutdown).await
}

/// As [`serve`], over TLS when `tls` is given (see [`crate::tls::server_config`]).
pub async fn serve_with_tls(
    listener: TcpListener,
    state: Arc<State>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CoordinatorError> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| CoordinatorError::Tls(conclave_proto::error_chain(&e)))?;
    }
    state.start_drivers();
    let closing = Arc::clone(&state);
    let drivers = Arc::clone(&state);
    let jobs = JobsServer::new(JobsService {
        state: Arc::clone(&state),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let ledger = LedgerServer::new(LedgerService {
        state: Arc::clone(&state),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    // One entry per message; entries are bounded by MAX_ENTRY_BYTES.
    .max_encoding_message_size(MAX_ENTRY_BYTES + 1024);
    let rounds = RoundsServer::new(RoundsService { state })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Small request/response messages must not wait for Nagle's algorithm to meet the peer's
    // delayed ACK (~40 ms a call on Linux).
    let incoming = TcpListenerStream::new(listener).map(|stream| {
        stream.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    });
    let served = builder
        .layer(crate::telemetry::RpcTelemetry)
        .concurrency_limit_per_connection(MAX_CONCURRENT_PER_CONNECTION)
        // A peer that vanished without closing its connection is noticed within a minute (an
        // unanswered HTTP/2 ping closes it), so its streams end and give their places back.
        .http2_keepalive_interval(Some(KEEPALIVE))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        // Fixed flow-control windows: an upload waiting for room in the upload buffer has at
        // most STREAM_WINDOW sent ahead, unread, and one connection at most CONNECTION_WINDOW
        // (an adaptive window would grow to 16 MiB for a fast sender).
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .add_service(jobs)
        .add_service(rounds)
        .add_service(ledger)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            // Long-lived work streams would hold the graceful shutdown open forever.
            closing.close_streams();
        })
        .await;
    // Round drivers end with the server: once `serve` returns, nothing of `state` runs.
    drivers.stop_drivers().await;
    served.map_err(|e| CoordinatorError::Storage(format!("server: {e}")))
}

/// A coordinator serving on an ephemeral loopback port inside this process: for the demo,
/// benchmarks and tests. Stops when [`LocalServer::stop`] is called or when dropped.
pub struct LocalServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), CoordinatorError>>>,
}

impl LocalServer {
    /// Binds 127.0.0.1:0 and serves `state` there.
    pub async fn start(state: Arc<State>) -> Result<Self, CoordinatorError> {
        Self::start_on(state, "127.0.0.1:0".parse().expect("a socket address")).await
    }

    /// Serves `state` on `addr` (e.g. the address of a coordinator that was restarted).
    pub async fn start_on(
        state: Arc<State>,
        addr: std::net::SocketAddr,
    ) -> Result<Self, CoordinatorError> {
        let listener = TcpListener::bind(addr).await?;
        let url = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            url,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops serving and waits until in-flight requests are done.
    pub async fn stop(mut self) -> Result<(), CoordinatorError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task
                .await
                .map_err(|e| CoordinatorError::Storage(format!("server task: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
