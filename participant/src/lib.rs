//! The Conclave participant: what runs at a hospital. It connects out to the coordinator
//! (hospital firewalls allow only outbound connections), joins a job, and follows the work
//! stream: it evaluates each new global model on its local held-out rows and reports the
//! metrics, and for each round it downloads the global model, trains locally with tch
//! (libtorch, CPU or CUDA) and uploads its update `w_local - w_global` with its sample count —
//! in a secure job masked, under a round plan it checked against its own [`policy`], its pin
//! and its verified ledger replica, and remembered in its state directory ([`memory`]).
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
//!     policy: conclave_participant::Policy::default(),
//!     state_dir: "hospital-state".into(),
//! };
//! let final_version = run(config, identity, None).await?;
//! # Ok(()) }
//! ```

pub mod client;
mod duty;
mod error;
pub mod ledger_sync;
pub mod memory;
mod mode;
mod plan;
pub mod policy;
pub mod retry;
mod runner;
pub mod tls;
pub mod trainer;

pub use duty::{MaskedUpload, SecaggDuties};
pub use error::ParticipantError;
pub use policy::{Pin, Policy};
pub use runner::{Event, ParticipantConfig, load_local_data, parse_device, run};
pub use trainer::Metrics;
