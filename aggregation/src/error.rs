//! The aggregation crate's error type.

/// Errors of aggregation and model-layout operations.
#[derive(Debug, thiserror::Error)]
pub enum AggregationError {
    /// Nothing to aggregate.
    #[error("no updates to aggregate")]
    NoUpdates,
    /// A vector has the wrong number of elements.
    #[error("vector has {got} elements, expected {expected}")]
    DimensionMismatch { expected: usize, got: usize },
    /// An update claims zero samples (or the total overflows).
    #[error("every update needs a positive sample count (and the total must fit in 64 bits)")]
    ZeroSamples,
    /// A streamed mean was given updates whose counts do not add up to its announced total.
    #[error("the updates count {added} samples, the mean was announced for {total}")]
    SampleTotal { added: u64, total: u64 },
    /// The result has a NaN or infinity.
    #[error("aggregate is not finite at index {index}")]
    NonFinite { index: usize },
    /// A safetensors file does not hold the expected layout.
    #[error("safetensors: {0}")]
    Safetensors(String),
}
