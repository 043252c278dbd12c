//! `conclave ledger sync`: keeps a verified local replica of the coordinator's ledger. Every
//! served entry must extend the replica's chain under the coordinator key it first saw and
//! replay correctly; the first entry asked for is the replica's own last one, so a coordinator
//! that rewrote or truncated what it served before is caught (see `conclave_ledger::replica`).

use std::path::Path;
use std::sync::Arc;

use conclave_crypto::Identity;

use conclave_ledger::entry::MAX_ENTRY_BYTES;
use conclave_ledger::replica::Replica;
use conclave_ledger::{Entry, Head, LedgerError};
use conclave_proto::MAX_MESSAGE_BYTES;
use conclave_proto::v1::{self, ledger_client::LedgerClient};

use crate::ParticipantError;
use crate::client::{connect, sign_read};
use crate::retry::{Retry, retrying};

/// Entries checked and committed together.
const BATCH: usize = 1024;

/// What a sync did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// Entries the replica held before.
    pub before: u64,
    /// Entries appended.
    pub added: u64,
    pub head: Head,
    /// The coordinator key the replica follows.
    pub signer: Option<String>,
}

/// Errors of a sync.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Connect(#[from] ParticipantError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("the coordinator sent an undecodable entry: {0}")]
    Decode(String),
}

/// Opens the ledger stream from `from_index`, signed by `reader` when given (signed again and
/// re-sent through a coordinator restart, see [`retrying`]).
async fn entries(
    client: &LedgerClient<tonic::transport::Channel>,
    reader: Option<&Identity>,
    from_index: u64,
    follow: bool,
) -> Result<tonic::Streaming<v1::LedgerEntry>, ParticipantError> {
    Ok(retrying("Ledger.Entries", Retry::Stream, || {
        let mut request = v1::LedgerRequest {
            from_index,
            follow,
            auth: None,
        };
        sign_read(reader, &mut request);
        let mut client = client.clone();
        async move { client.entries(request).await }
    })
    .await
    .map_err(ParticipantError::rpc("Ledger.Entries"))?
    .into_inner())
}

/// Brings the replica at `replica` up to date with the coordinator at `url`, asking as
/// `reader` when given (a coordinator that does not serve reads publicly wants them signed).
/// With `follow`, keeps going as entries are appended, calling `progress` after each commit,
/// until the coordinator closes the stream.
pub async fn sync(
    url: &str,
    reader: Option<&Identity>,
    replica: &Path,
    follow: bool,
    mut progress: impl FnMut(&SyncReport),
) -> Result<SyncReport, SyncError> {
    let (mut replica, opened) = tokio::task::block_in_place(|| Replica::open(replica))?;
    let mut report = SyncReport {
        before: replica.head().len,
        added: 0,
        head: replica.head(),
        signer: opened.signer,
    };
    let channel = connect(url).await?;
    let client = LedgerClient::new(channel)
        .max_decoding_message_size(MAX_ENTRY_BYTES + 1024)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut stream = entries(&client, reader, replica.request_from(), follow).await?;
    let mut pending: Vec<Entry> = Vec::new();
    loop {
        let next = stream
            .message()
            .await
            .map_err(ParticipantError::rpc("Ledger.Entries"))?;
        let done = next.is_none();
        if let Some(wire) = next {
            pending.push(Entry::from_wire(wire).map_err(|e| SyncError::Decode(e.to_string()))?);
        }
        if pending.len() >= BATCH || (follow && !pending.is_empty()) || done {
            let batch = std::mem::take(&mut pending);
            report.added += tokio::task::block_in_place(|| replica.apply(batch))?;
            report.head = replica.head();
            if report.signer.is_none() {
                report.signer = replica.ledger().get(0)?.map(|e| e.signer().to_string());
            }
            progress(&report);
        }
        if done {
            break;
        }
    }
    replica.finish()?;
    Ok(report)
}

/// A participant's verified replica, kept open while it takes part in a job and brought up to
/// date before it acts on a round plan, so the plan can be checked against what the ledger
/// says (DESIGN.md, "The participant's own policy": the committee is the draw recomputed from
/// the participant's own replica). Served entries are checked and committed in batches as they
/// arrive, so a coordinator cannot make it hold an unbounded backlog.
pub struct Follower {
    url: String,
    /// Who the ledger reads are signed by.
    reader: Option<Arc<Identity>>,
    path: std::path::PathBuf,
    /// The connection to the coordinator's ledger service, kept across catch-ups.
    client: Option<LedgerClient<tonic::transport::Channel>>,
    /// `None` only while a batch is applied off the async threads, or after that failed
    /// abnormally (the next catch-up reopens the replica from disk).
    replica: Option<Replica>,
}

impl Follower {
    /// Opens (creating if needed) and verifies the replica at `path`, following `url` and
    /// signing its reads as `reader` when given.
    pub async fn open(
        url: &str,
        reader: Option<Arc<Identity>>,
        path: &Path,
    ) -> Result<Self, SyncError> {
        let mut follower = Self {
            url: url.into(),
            reader,
            path: path.to_owned(),
            client: None,
            replica: None,
        };
        follower.reopen().await?;
        Ok(follower)
    }

    async fn reopen(&mut self) -> Result<(), SyncError> {
        let path = self.path.clone();
        let (replica, _) = tokio::task::spawn_blocking(move || Replica::open(&path))
            .await
            .map_err(|e| SyncError::Decode(format!("replica task: {e}")))??;
        self.replica = Some(replica);
        Ok(())
    }

    /// Applies a batch of served entries off the async threads.
    async fn apply(&mut self, batch: Vec<Entry>) -> Result<(), SyncError> {
        let mut replica = self.replica.take().expect("open between batches");
        let (replica, applied) = tokio::task::spawn_blocking(move || {
            let applied = replica.apply(batch);
            (replica, applied)
        })
        .await
        .map_err(|e| SyncError::Decode(format!("replica task: {e}")))?;
        self.replica = Some(replica);
        applied.map(|_| ()).map_err(SyncError::from)
    }

    /// Brings the replica up to date with every entry the coordinator has now.
    pub async fn catch_up(&mut self) -> Result<(), SyncError> {
        if self.replica.is_none() {
            self.reopen().await?;
        }
        let from = self.replica.as_mut().expect("opened above").begin();
        let client = match self.client.take() {
            Some(c) => c,
            None => LedgerClient::new(connect(&self.url).await?)
                .max_decoding_message_size(MAX_ENTRY_BYTES + 1024)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        };
        let mut stream = entries(&client, self.reader.as_deref(), from, false).await?;
        // Kept for the next catch-up only once this one got through.
        self.client = Some(client);
        let mut pending = Vec::new();
        while let Some(wire) = stream
            .message()
            .await
            .map_err(ParticipantError::rpc("Ledger.Entries"))?
        {
            pending.push(Entry::from_wire(wire).map_err(|e| SyncError::Decode(e.to_string()))?);
            if pending.len() >= BATCH {
                self.apply(std::mem::take(&mut pending)).await?;
            }
        }
        self.apply(pending).await?;
        self.replica().finish().map_err(SyncError::from)
    }

    /// The verified replica.
    pub fn replica(&self) -> &Replica {
        self.replica.as_ref().expect("open between catch-ups")
    }
}
