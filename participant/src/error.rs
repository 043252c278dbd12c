//! The participant crate's error type.

/// What can stop a participant.
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    #[error("cannot connect to coordinator {url}: {message}")]
    Connect { url: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("coordinator refused {call}: {status}")]
    Rpc {
        call: &'static str,
        #[source]
        status: tonic::Status,
    },
    #[error("coordinator sent a bad model: {0}")]
    BadModel(String),
    #[error("{0}")]
    Job(#[from] conclave_aggregation::JobError),
    #[error("{0}")]
    Data(#[from] conclave_datasets::DataError),
    #[error("{0}")]
    Aggregation(#[from] conclave_aggregation::AggregationError),
    #[error("training failed: {0}")]
    Torch(#[from] tch::TchError),
    #[error("device {0:?} is not available (CUDA not found)")]
    DeviceUnavailable(String),
    #[error("{0}")]
    Config(String),
    #[error("the coordinator closed the work stream before the job finished")]
    StreamEnded,
    /// This participant will not do what it was asked: the request breaks its policy, its pin
    /// or the protocol. It stays connected for the next request.
    #[error("refused: {0}")]
    Refused(String),
    #[error("participant state: {0}")]
    State(String),
    #[error("secure aggregation: {0}")]
    Protocol(#[from] conclave_aggregation::secagg::ProtocolError),
    #[error("quantization: {0}")]
    Quant(#[from] conclave_aggregation::quantize::QuantError),
}

impl ParticipantError {
    pub(crate) fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| ParticipantError::Rpc { call, status }
    }

    /// The gRPC status code, when the coordinator refused a call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ParticipantError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}
