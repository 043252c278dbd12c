//! The participant crate's error type.

/// What can stop a participant.
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    #[error("cannot connect to coordinator {url}: {message}")]
    Connect { url: String, message: String },
    #[error("TLS: {0}")]
    Tls(String),
    /// A call the coordinator refused, or one whose connection kept failing until
    /// the process's patience ([`crate::retry::patience`]) had passed: the message says which.
    #[error("{}", rpc_message(call, status))]
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

fn rpc_message(call: &str, status: &tonic::Status) -> String {
    if crate::retry::is_transport(status) {
        let tried = match crate::retry::patience().as_secs() {
            0 => String::new(),
            secs => format!(" (tried for {secs} s)"),
        };
        format!(
            "lost the connection to the coordinator during {call}{tried}: {}",
            conclave_proto::error_chain(status)
        )
    } else {
        format!("coordinator refused {call}: {status}")
    }
}

impl ParticipantError {
    pub(crate) fn rpc(call: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| ParticipantError::Rpc { call, status }
    }

    /// Whether the call failed on the connection (the coordinator was away), not by refusal.
    pub fn is_transport(&self) -> bool {
        matches!(self, ParticipantError::Rpc { status, .. } if crate::retry::is_transport(status))
    }

    /// The gRPC status code, when the coordinator refused a call.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ParticipantError::Rpc { status, .. } => Some(status.code()),
            _ => None,
        }
    }
}
