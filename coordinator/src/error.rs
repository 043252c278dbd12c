//! The coordinator's error type and its one mapping to gRPC status codes.

use conclave_aggregation::engine::{Refusal, UploadRefusal};
use conclave_aggregation::secagg::ProtocolError;
use conclave_aggregation::{AggregationError, JobError};
use tonic::{Code, Status};

/// Everything a coordinator request can fail with. Each variant names what was wrong;
/// [`From<CoordinatorError> for Status`] is the single table from these to gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("unknown job {0:?}")]
    UnknownJob(String),
    #[error("job {job} has no model version {version} (latest is {latest})")]
    UnknownModelVersion {
        job: String,
        version: u32,
        latest: u32,
    },
    #[error("{0}")]
    InvalidJob(#[from] JobError),
    #[error("authentication failed: {0}")]
    BadAuth(String),
    #[error("nonce already used by {0}: replayed request refused")]
    Replay(String),
    #[error(
        "request signed at {signed} (unix ms), the coordinator's clock says {now}: more than {max} ms apart (check the clock)"
    )]
    ClockSkew { signed: u64, now: u64, max: u64 },
    #[error(
        "request signed at {signed} (unix ms), before this coordinator started at {started}: sign it again"
    )]
    SignedBeforeStart { signed: u64, started: u64 },
    #[error(
        "{0} sent more signed requests in the last minutes than the coordinator keeps track of: slow down"
    )]
    TooManyRequests(String),
    #[error("update has L2 norm {norm}, above the job's clip_norm {clip}")]
    NotClipped { norm: f64, clip: f32 },
    #[error("{got} samples claimed, more than the job's max_samples {max}")]
    TooManySamples { got: u64, max: u64 },
    #[error("{did} is not on job {job}'s admission list")]
    NotAdmitted { job: String, did: String },
    #[error("{did} has not joined job {job}")]
    NotJoined { job: String, did: String },
    #[error("{did} joined job {job} with another sealing key")]
    KeyMismatch { job: String, did: String },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("update has {got} elements, the model has {expected}")]
    WrongLength { expected: u64, got: u64 },
    #[error("update element {index} is NaN or infinite")]
    NonFinite { index: usize },
    #[error("payload does not match the signed hash in the header")]
    HashMismatch,
    #[error("chunk of {size} bytes exceeds the limit of {max} bytes")]
    ChunkTooLarge { size: usize, max: usize },
    #[error("round {round} of job {job} is not open (current round: {current})")]
    RoundNotOpen {
        job: String,
        round: u32,
        current: String,
    },
    #[error("{did} is not a participant of round {round}")]
    NotInRound { did: String, round: u32 },
    #[error("{did} already uploaded an update for round {round}")]
    DuplicateUpload { did: String, round: u32 },
    #[error("{did} already reported metrics for model version {version}")]
    DuplicateReport { did: String, version: u32 },
    #[error("{did} already recorded an export of model version {version} as {format}")]
    DuplicateExport {
        did: String,
        version: u32,
        format: String,
    },
    #[error("job {0} has finished")]
    JobFinished(String),
    #[error("storage: {0}")]
    Storage(String),
    /// The job's round engine refused an entry the coordinator was about to record: nothing
    /// was recorded (a coordinator bug, or an input its own checks let through).
    #[error("job {job}: not recorded, the round engine refuses it: {reason}")]
    Rules { job: String, reason: String },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("aggregation: {0}")]
    Aggregation(#[from] AggregationError),
    #[error("secure aggregation: {0}")]
    Protocol(ProtocolError),
    #[error("job {job} is full ({max} participants)")]
    JobFull { job: String, max: u32 },
    #[error(
        "{0} may not launch jobs on this coordinator (its operator names launchers with `conclave serve --launcher`)"
    )]
    NotLauncher(String),
    #[error("{did} may not read {what}: {why}")]
    NotReader {
        did: String,
        what: String,
        why: &'static str,
    },
    #[error("refused: {0}")]
    LimitReached(String),
    #[error(
        "the job keeps {params} values (its model's parameters, and its server strategy's state if it has one), more than this coordinator's limit of {max} (conclave serve --max-model-params)"
    )]
    ModelTooLarge { params: u64, max: u64 },
    #[error(
        "no message for {0} s: stream cut (the coordinator's --upload-idle-secs); send it again"
    )]
    StreamIdle(f64),
    #[error(
        "the stream took longer than its data allows (one chunk per --upload-idle-secs, and at least 256 KiB/s after the first period): stream cut; send it again"
    )]
    StreamTooSlow,
    #[error(
        "the reader took nothing for {0} s: stream cut (the coordinator's --upload-idle-secs); read it again"
    )]
    ReaderStalled(f64),
}

impl CoordinatorError {
    /// A short fixed name for this kind of error: the `reason` label of refusals in
    /// telemetry (never anything a client chose).
    pub fn reason(&self) -> &'static str {
        use CoordinatorError::*;
        match self {
            UnknownJob(_) => "unknown_job",
            UnknownModelVersion { .. } => "unknown_model_version",
            InvalidJob(_) => "invalid_job",
            BadAuth(_) => "bad_auth",
            Replay(_) => "replay",
            ClockSkew { .. } => "clock_skew",
            SignedBeforeStart { .. } => "signed_before_start",
            TooManyRequests(_) => "too_many_requests",
            NotClipped { .. } => "not_clipped",
            TooManySamples { .. } => "too_many_samples",
            NotAdmitted { .. } => "not_admitted",
            NotJoined { .. } => "not_joined",
            KeyMismatch { .. } => "key_mismatch",
            InvalidRequest(_) => "invalid_request",
            WrongLength { .. } => "wrong_length",
            NonFinite { .. } => "non_finite",
            HashMismatch => "hash_mismatch",
            ChunkTooLarge { .. } => "chunk_too_large",
            RoundNotOpen { .. } => "round_not_open",
            NotInRound { .. } => "not_in_round",
            DuplicateUpload { .. } => "duplicate_upload",
            DuplicateReport { .. } => "duplicate_report",
            DuplicateExport { .. } => "duplicate_export",
            JobFinished(_) => "job_finished",
            Storage(_) => "storage",
            Rules { .. } => "rules",
            Tls(_) => "tls",
            Aggregation(_) => "aggregation",
            Protocol(_) => "secagg_protocol",
            JobFull { .. } => "job_full",
            NotLauncher(_) => "not_launcher",
            NotReader { .. } => "not_reader",
            LimitReached(_) => "limit_reached",
            ModelTooLarge { .. } => "model_too_large",
            StreamIdle(_) => "stream_idle",
            StreamTooSlow => "stream_too_slow",
            ReaderStalled(_) => "reader_stalled",
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        use CoordinatorError::*;
        match self {
            UnknownJob(_) | UnknownModelVersion { .. } => Code::NotFound,
            InvalidJob(_)
            | InvalidRequest(_)
            | WrongLength { .. }
            | NonFinite { .. }
            | NotClipped { .. }
            | TooManySamples { .. }
            | HashMismatch
            | ModelTooLarge { .. } => Code::InvalidArgument,
            BadAuth(_) | Replay(_) | ClockSkew { .. } => Code::Unauthenticated,
            // The client signs again and retries.
            SignedBeforeStart { .. } => Code::Aborted,
            NotAdmitted { .. } | NotJoined { .. } | NotLauncher(_) | NotReader { .. } => {
                Code::PermissionDenied
            }
            KeyMismatch { .. }
            | DuplicateUpload { .. }
            | DuplicateReport { .. }
            | DuplicateExport { .. } => Code::AlreadyExists,
            ChunkTooLarge { .. } | TooManyRequests(_) | LimitReached(_) => Code::ResourceExhausted,
            RoundNotOpen { .. } | NotInRound { .. } | JobFinished(_) => Code::FailedPrecondition,
            StreamIdle(_) | StreamTooSlow | ReaderStalled(_) => Code::DeadlineExceeded,
            JobFull { .. } => Code::FailedPrecondition,
            Storage(_) | Rules { .. } | Aggregation(_) | Tls(_) => Code::Internal,
            Protocol(p) => match p {
                ProtocolError::NotMember(_)
                | ProtocolError::UnknownParticipant(_)
                | ProtocolError::NotInStatement => Code::PermissionDenied,
                ProtocolError::BadSignature(_) => Code::Unauthenticated,
                ProtocolError::DuplicateUpload(_) => Code::AlreadyExists,
                ProtocolError::OutOfOrder(_)
                | ProtocolError::AlreadyProposed
                | ProtocolError::AlreadySigned
                | ProtocolError::Complained(_)
                | ProtocolError::NotApproved { .. }
                | ProtocolError::TooFewUploads { .. }
                | ProtocolError::TooFewMembers { .. } => Code::FailedPrecondition,
                ProtocolError::BadConfig(_) | ProtocolError::Rebuild(_) => Code::Internal,
                ProtocolError::WrongRound { .. }
                | ProtocolError::HashMismatch
                | ProtocolError::OtherPlan(_)
                | ProtocolError::Length { .. }
                | ProtocolError::BadManifest(_)
                | ProtocolError::Open(_) => Code::InvalidArgument,
            },
        }
    }
}

impl From<CoordinatorError> for Status {
    fn from(e: CoordinatorError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

impl CoordinatorError {
    /// The round engine's refusal of an entry of `job`.
    pub(crate) fn rules(job: &str, refusal: Refusal) -> Self {
        Self::Rules {
            job: job.to_string(),
            reason: refusal.0,
        }
    }
}

/// An upload the round engine refuses whatever it holds, with the status a client acts on.
impl From<UploadRefusal> for CoordinatorError {
    fn from(e: UploadRefusal) -> Self {
        match e {
            UploadRefusal::NotOpen {
                job,
                round,
                current,
            } => Self::RoundNotOpen {
                job,
                round,
                current: current.map_or("none".to_string(), |r| r.to_string()),
            },
            UploadRefusal::NotInRound { did, round } => Self::NotInRound { did, round },
            UploadRefusal::Duplicate { did, round } => Self::DuplicateUpload { did, round },
        }
    }
}

impl From<conclave_ledger::LedgerError> for CoordinatorError {
    fn from(e: conclave_ledger::LedgerError) -> Self {
        CoordinatorError::Storage(e.to_string())
    }
}

impl From<std::io::Error> for CoordinatorError {
    fn from(e: std::io::Error) -> Self {
        CoordinatorError::Storage(e.to_string())
    }
}
