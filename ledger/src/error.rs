//! The ledger crate's error types.

/// Why one entry's bytes are not acceptable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("malformed entry: {0}")]
    Malformed(String),
    #[error("entry of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("signature does not verify")]
    BadSignature,
}

/// Errors of ledger storage and replication.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("ledger database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("ledger entry {index}: {source}")]
    Entry { index: u64, source: EntryError },
    /// Served entries (a replica's) were checked against a head that another append has
    /// since moved.
    #[error("the ledger head moved while the entries were checked (at {built}, now {now})")]
    Conflict { built: u64, now: u64 },
    #[error("ledger is corrupt: {0}")]
    Corrupt(String),
    /// The database holds no ledger (e.g. a wrong path opened read-only).
    #[error("{0} holds no Conclave ledger")]
    NotALedger(String),
    /// A replica was served something that contradicts what it already holds.
    #[error("the coordinator rewrote history: {0}")]
    Rewritten(String),
    /// A replica was served an entry that does not extend its chain.
    #[error("served entry {index} is invalid: {reason}")]
    BadServedEntry { index: u64, reason: String },
}
