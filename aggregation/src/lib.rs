//! The learning logic of Conclave, free of I/O: checked job definitions ([`JobSpec`]), model
//! parameter layouts ([`ModelLayout`]) and the aggregation strategies that turn a round's
//! updates into the next global model ([`fedavg`] for the mean, [`strategy`] for the server step),
//! and the round engine ([`engine`]): the rules of a job's ledger, written once for the
//! coordinator and `ledger verify`. Everything works on flat `f32` vectors; only the participant
//! crate knows libtorch.
//!
//! ```
//! use conclave_aggregation::fedavg::{weighted_mean, WeightedUpdate};
//!
//! let a = [1.0, 2.0];
//! let b = [3.0, 6.0];
//! let mean = weighted_mean(&[
//!     WeightedUpdate { delta: &a, num_samples: 3 },
//!     WeightedUpdate { delta: &b, num_samples: 1 },
//! ])
//! .unwrap();
//! assert_eq!(mean, vec![1.5, 3.0]);
//! ```

pub mod engine;
mod error;
pub mod fedavg;
pub mod job;
mod job_toml;
pub mod model;
pub mod quantize;
pub mod secagg;
pub mod strategy;

pub use error::AggregationError;
pub use job::{
    DataSchema, JobError, JobProblem, JobSpec, Normalization, Optimizer, Privacy, RewardPolicy,
    RewardSplit, SecaggSettings, TrainingConfig,
};
pub use model::{ModelArch, ModelLayout, TensorSpec};
pub use strategy::{ServerStrategy, Strategy};
