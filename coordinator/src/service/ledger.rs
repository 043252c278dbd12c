//! The `Ledger` service: streams entries from an index, and with `follow`, keeps the stream
//! open and sends new entries as they are committed. Entries go out exactly as stored (body
//! bytes and signature), so a replica checks the coordinator's own signatures.

use std::pin::Pin;
use std::sync::Arc;

use conclave_proto::v1::{self, ledger_server::Ledger};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::State;
use crate::limits::FOLLOW_STREAMS_PER_READER;

/// Entries read from the database per step.
const PAGE: usize = 256;

/// Serves `conclave.v1.Ledger`.
pub struct LedgerService {
    pub(crate) state: Arc<State>,
}

type EntryStream = Pin<Box<dyn Stream<Item = Result<v1::LedgerEntry, Status>> + Send>>;

#[tonic::async_trait]
impl Ledger for LedgerService {
    type EntriesStream = EntryStream;

    async fn entries(
        &self,
        request: Request<v1::LedgerRequest>,
    ) -> Result<Response<Self::EntriesStream>, Status> {
        let req = request.into_inner();
        let reader = self.state.allow_ledger_read(&req)?;
        // A follow stream stays open: it holds a place in all and one of its reader's.
        let places = if req.follow {
            let slots = &self.state.slots;
            let limit = self.state.policy.streams.follow_streams;
            let all = slots.take("follow".into(), limit, "the server", "--max-follow-streams")?;
            let own = match &reader {
                Some(did) => Some(slots.take(
                    format!("follow\0{did}"),
                    FOLLOW_STREAMS_PER_READER,
                    &did.to_string(),
                    "ledger follow streams per reader",
                )?),
                None => None,
            };
            Some((all, own))
        } else {
            None
        };
        let state = Arc::clone(&self.state);
        let mut appended = state.ledger().subscribe();
        let mut closing = state.closing();
        let (tx, rx) = mpsc::channel(PAGE);
        tokio::spawn(async move {
            let _places = places;
            let mut next = req.from_index;
            loop {
                let s = Arc::clone(&state);
                let page = tokio::task::spawn_blocking(move || s.ledger().read(next, PAGE)).await;
                let entries = match page {
                    Ok(Ok(entries)) => entries,
                    Ok(Err(e)) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                };
                let full = entries.len() == PAGE;
                for entry in entries {
                    next = entry.index() + 1;
                    if tx.send(Ok(entry.to_wire())).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if !req.follow {
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
                        _ = tx.closed() => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
