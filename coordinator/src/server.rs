//! Accepting connections: binds the services with their message-size limits and runs until
//! the shutdown signal fires, then waits for in-flight requests to finish.

use std::future::Future;
use std::sync::Arc;

use conclave_proto::MAX_MESSAGE_BYTES;
use conclave_proto::v1::{jobs_server::JobsServer, rounds_server::RoundsServer};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::service::{jobs::JobsService, rounds::RoundsService};
use crate::{CoordinatorError, State};

/// Most concurrent requests served on one connection.
const MAX_CONCURRENT_PER_CONNECTION: usize = 256;

/// Serves the coordinator's gRPC services on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: Arc<State>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), CoordinatorError> {
    state.start_drivers();
    let jobs = JobsServer::new(JobsService {
        state: Arc::clone(&state),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let rounds = RoundsServer::new(RoundsService { state })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .concurrency_limit_per_connection(MAX_CONCURRENT_PER_CONNECTION)
        .add_service(jobs)
        .add_service(rounds)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown)
        .await
        .map_err(|e| CoordinatorError::Storage(format!("server: {e}")))
}
