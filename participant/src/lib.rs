//! The Conclave participant: what runs at a hospital. It connects out to the coordinator
//! (hospital firewalls allow only outbound connections), joins a job, and follows the work
//! stream: it evaluates each new global model on its local held-out rows and reports the
//! metrics, and for each round it downloads the global model, trains locally with tch
//! (libtorch, CPU or CUDA) and uploads its update `w_local - w_global` with its sample count.
//!
//! [`client`] is the gRPC side (no libtorch), [`trainer`] the tch side (no network), and
//! [`run`] ties them together.
//!
//! ```no_run
//! # async fn go() -> Result<(), conclave_participant::ParticipantError> {
//! use std::sync::Arc;
//! use conclave_participant::{run, ParticipantConfig};
//!
//! let identity = Arc::new(conclave_crypto::Identity::load("hospital.identity".as_ref()).unwrap());
//! let config = ParticipantConfig {
//!     coordinator: "http://127.0.0.1:50051".into(),
//!     job_id: "j-0123456789abcdef".into(),
//!     data: "local.parquet".into(),
//!     eval_data: None,
//!     device: tch::Device::Cpu,
//! };
//! let final_version = run(config, identity, None).await?;
//! # Ok(()) }
//! ```

pub mod client;
mod duty;
mod error;
pub mod ledger_sync;
mod runner;
pub mod tls;
pub mod trainer;

pub use duty::{MaskedUpload, SecaggDuties};
pub use error::ParticipantError;
pub use runner::{Event, ParticipantConfig, load_local_data, parse_device, run};
pub use trainer::Metrics;
