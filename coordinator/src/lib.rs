//! The Conclave coordinator: a gRPC server (tonic) that keeps jobs and their rounds, admits
//! participants, hands them work over a server stream, collects their updates until all arrive
//! or the round's deadline passes, aggregates them with the job's strategy, stores each global
//! model version as safetensors, and aggregates the participants' evaluation metrics.
//!
//! Shaped like a small tokio server: [`server::serve`] accepts connections, the `service`
//! module holds one thin adapter per gRPC service, and [`State`] holds all jobs behind narrow
//! methods. Business logic never sees `tonic::Status`; [`CoordinatorError`] maps to it in one
//! table. The coordinator never needs libtorch: models are flat `f32` vectors to it.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let launcher = conclave_crypto::ParticipantId::parse("did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK")?;
//! let policy = conclave_coordinator::ServerPolicy::with_launcher(launcher);
//! let state = conclave_coordinator::State::open("coordinator-data".as_ref(), policy)?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:50051").await?;
//! conclave_coordinator::serve(listener, state, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```

pub mod access;
mod auth;
mod crosscheck;
mod draw;
mod error;
mod job;
pub mod limits;
mod mode;
mod persist;
pub mod server;
mod service;
pub mod state;
pub mod store;
mod summary;
pub mod telemetry;
pub mod tls;
pub mod work;

pub use access::ServerPolicy;
pub use error::CoordinatorError;
pub use server::{LocalServer, serve, serve_with_tls};
pub use state::State;
