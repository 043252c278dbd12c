//! The `Ledger` service: streams entries from an index, and with `follow`, keeps the stream
//! open and sends new entries as they are committed. Entries go out exactly as stored (body
//! bytes and signature), so a replica checks the coordinator's own signatures.

use std::sync::Arc;

use conclave_proto::v1::{self, ledger_server::Ledger};
use tonic::{Request, Response, Status};

use crate::State;
use crate::access::reader_key;
use crate::limits;

/// Entries read from the database per step.
const PAGE: usize = 256;

/// Entries queued for a reader ahead of what it has taken.
const BUFFERED: usize = 16;

/// Serves `conclave.v1.Ledger`.
pub struct LedgerService {
    pub(crate) state: Arc<State>,
}

type EntryStream = limits::FedStream<v1::LedgerEntry>;

#[tonic::async_trait]
impl Ledger for LedgerService {
    type EntriesStream = EntryStream;

    async fn entries(
        &self,
        request: Request<v1::LedgerRequest>,
    ) -> Result<Response<Self::EntriesStream>, Status> {
        let remote = request.remote_addr();
        let req = request.into_inner();
        let reader = self.state.allow_ledger_read(&req)?;
        let idle = self.state.policy.streams.upload_idle;
        // Every ledger stream holds one of its reader's places and one of the server's
        // (waited for) until it ends.
        let places = self
            .state
            .slots
            .take_reader(
                "ledger",
                &reader_key(reader.as_ref(), remote),
                &self.state.ledger_gate,
                idle,
            )
            .await?;
        let state = Arc::clone(&self.state);
        let mut appended = state.ledger().subscribe();
        let mut closing = state.closing();
        let limits::ReaderPlaces { all, own } = places;
        let (feed, stream) = limits::feed(BUFFERED, idle, own);
        tokio::spawn(async move {
            let _all = all;
            let mut next = req.from_index;
            loop {
                let s = Arc::clone(&state);
                let page = tokio::task::spawn_blocking(move || s.ledger().read(next, PAGE)).await;
                let entries = match page {
                    Ok(Ok(entries)) => entries,
                    Ok(Err(e)) => {
                        feed.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                    Err(e) => {
                        feed.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let full = entries.len() == PAGE;
                for entry in entries {
                    next = entry.index() + 1;
                    // A reader that stops reading loses the stream (and its places).
                    if !feed.send(Ok(entry.to_wire())).await {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if !req.follow {
                    feed.finish();
                    return;
                }
                // Wait for a commit past what was sent, or for shutdown.
                loop {
                    if *appended.borrow_and_update() > next {
                        break;
                    }
                    tokio::select! {
                        changed = appended.changed() => if changed.is_err() { return },
                        _ = closing.changed() => return,
                        _ = feed.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }
}
