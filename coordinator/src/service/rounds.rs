//! The `Rounds` service: participants join, receive work, download models, upload updates and
//! report metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use conclave_proto::MAX_CHUNK_BYTES;
use conclave_proto::v1::{self, rounds_server::Rounds, upload_chunk::Part};
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::access::reader_key;
use crate::limits::{self, next_within};
use crate::telemetry;
use crate::work::WorkCursor;
use crate::{CoordinatorError, State};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Serves `conclave.v1.Rounds`.
pub struct RoundsService {
    pub(crate) state: Arc<State>,
}

#[tonic::async_trait]
impl Rounds for RoundsService {
    async fn join(
        &self,
        request: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let req = request.into_inner();
        let job = self.state.join(&req)?;
        tracing::info!(job = %req.job_id, participant = %req.auth.unwrap_or_default().participant, "participant joined");
        Ok(Response::new(v1::JoinResponse { job: Some(job) }))
    }

    type WorkStream = BoxStream<v1::WorkItem>;

    async fn work(
        &self,
        request: Request<v1::WorkRequest>,
    ) -> Result<Response<Self::WorkStream>, Status> {
        let req = request.into_inner();
        let (did, mut changes) = self.state.subscribe(&req)?;
        let mut closing = self.state.closing();
        let (tx, rx) = mpsc::channel(8);
        let state = Arc::clone(&self.state);
        tokio::spawn(async move {
            // Counts this stream as the participant's connection until the task ends.
            let _connection = Connection {
                state: Arc::clone(&state),
                job: req.job_id.clone(),
                did: did.clone(),
            };
            let mut cursor = WorkCursor::default();
            loop {
                changes.borrow_and_update();
                match state.pending_work(&req.job_id, &did, &mut cursor) {
                    Ok(items) => {
                        for item in items {
                            if tx.send(Ok(item)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
                if cursor.is_done() {
                    return;
                }
                let shutting_down = tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return } else { false },
                    _ = tx.closed() => return,
                    _ = closing.wait_for(|c| *c) => true,
                };
                // The server is shutting down: end the stream, saying so, and the client
                // reconnects to the next server.
                if shutting_down {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "the coordinator is shutting down: reconnect",
                        )))
                        .await;
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type DownloadModelStream = BoxStream<v1::ModelChunk>;

    async fn download_model(
        &self,
        request: Request<v1::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let remote = request.remote_addr();
        let req = request.into_inner();
        let reader = self.state.allow_model_read(&req)?;
        let idle = self.state.policy.streams.upload_idle;
        // The places are taken before an older version is read back into memory, and held
        // by the read itself, which runs on even if the client goes away meanwhile.
        let places = self
            .state
            .slots
            .take_reader(
                "download",
                &reader_key(reader.as_ref(), remote),
                &self.state.download_gate,
                idle,
            )
            .await?;
        let state = Arc::clone(&self.state);
        let (job, version) = (req.job_id.clone(), req.model_version);
        let (places, loaded) =
            tokio::task::spawn_blocking(move || (places, state.model(&job, version)))
                .await
                .map_err(|e| Status::internal(e.to_string()))?;
        let (bytes, hash) = loaded?;
        let limits::ReaderPlaces { all, own } = places;
        let (feed, stream) = limits::feed(2, idle, own);
        tokio::spawn(async move {
            // The server-wide place goes back when feeding ends (also when the reader is cut);
            // the reader's own goes with the stream.
            let _all = all;
            let total = bytes.len() as u64;
            for offset in (0..bytes.len().max(1)).step_by(MAX_CHUNK_BYTES) {
                let end = (offset + MAX_CHUNK_BYTES).min(bytes.len());
                let chunk = v1::ModelChunk {
                    offset: offset as u64,
                    data: bytes[offset..end].to_vec(),
                    total_bytes: if offset == 0 { total } else { 0 },
                    model_hash: if offset == 0 {
                        hash.clone()
                    } else {
                        Vec::new()
                    },
                };
                // A reader that stops reading loses the stream, its places and the model copy.
                if !feed.send(Ok(chunk)).await {
                    return;
                }
            }
            feed.finish();
        });
        Ok(Response::new(stream))
    }

    async fn upload_update(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
    ) -> Result<Response<v1::UploadReceipt>, Status> {
        // Counted however the call ends: an upload whose client goes away mid-stream (the
        // call is dropped) counts as refused, "cancelled".
        let mut outcome = UploadOutcome {
            refused: "cancelled",
            stored: Arc::new(AtomicBool::new(false)),
        };
        let answer = match self.receive_upload(request, &outcome.stored).await {
            Ok(receipt) => Ok(Response::new(receipt)),
            Err(Refused::Coordinator(e)) => {
                outcome.refused = e.reason();
                Err(e.into())
            }
            Err(Refused::Stream(status)) => {
                outcome.refused = stream_reason(status.code());
                Err(status)
            }
        };
        drop(outcome);
        answer
    }

    async fn submit_check(
        &self,
        request: Request<v1::CheckReport>,
    ) -> Result<Response<v1::CheckReceipt>, Status> {
        let state = Arc::clone(&self.state);
        let req = request.into_inner();
        // May read back complained-about vectors from disk: off the async threads.
        tokio::task::spawn_blocking(move || state.submit_check(&req))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::CheckReceipt {}))
    }

    async fn submit_draw_reveal(
        &self,
        request: Request<v1::DrawRevealRequest>,
    ) -> Result<Response<v1::DrawRevealReceipt>, Status> {
        self.state.submit_draw_reveal(&request.into_inner())?;
        Ok(Response::new(v1::DrawRevealReceipt {}))
    }

    async fn submit_approval(
        &self,
        request: Request<v1::ApprovalRequest>,
    ) -> Result<Response<v1::ApprovalReceipt>, Status> {
        self.state.submit_approval(&request.into_inner())?;
        Ok(Response::new(v1::ApprovalReceipt {}))
    }

    async fn submit_reveal(
        &self,
        request: Request<Streaming<v1::RevealChunk>>,
    ) -> Result<Response<v1::RevealReceipt>, Status> {
        use v1::reveal_chunk::Part as RevealPart;
        let mut stream = request.into_inner();
        let streams = &self.state.policy.streams;
        let idle = streams.upload_idle;
        let header = match next_within(&mut stream, idle, None).await? {
            Some(Ok(v1::RevealChunk {
                part: Some(RevealPart::Header(h)),
            })) => h,
            Some(Ok(_)) => {
                return Err(CoordinatorError::InvalidRequest(
                    "a reveal must start with its header".into(),
                )
                .into());
            }
            Some(Err(status)) => return Err(status),
            None => return Err(CoordinatorError::InvalidRequest("empty reveal".into()).into()),
        };
        let (member, len) = self.state.check_reveal(&header)?;
        let slot = self.state.slots.take(
            limits::participant_key("reveal", &header.job_id, &member),
            streams.uploads_per_participant,
            &format!("{member} (reveals to job {})", header.job_id),
            "--max-uploads-per-participant",
        )?;
        let room = self
            .state
            .upload_buffer
            // The payload, and its decoded copy while the reveal is checked.
            .take(len as u64 * 8, idle.saturating_mul(BUFFER_WAIT_IDLES))
            .await?;
        let payload = read_payload(&mut stream, idle, len * 4, |c| match c.part {
            Some(RevealPart::Data(d)) => Some(d),
            _ => None,
        })
        .await?;
        let state = Arc::clone(&self.state);
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let _room = room;
            state.accept_reveal(&member, &header, &payload)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        Ok(Response::new(v1::RevealReceipt {}))
    }

    async fn report_metrics(
        &self,
        request: Request<v1::MetricsReport>,
    ) -> Result<Response<v1::MetricsReceipt>, Status> {
        self.state.report_metrics(&request.into_inner())?;
        Ok(Response::new(v1::MetricsReceipt {}))
    }
}

/// Why an upload was not taken: a refusal of the coordinator, or the stream's own status.
enum Refused {
    Coordinator(CoordinatorError),
    Stream(Status),
}

impl From<CoordinatorError> for Refused {
    fn from(e: CoordinatorError) -> Self {
        Refused::Coordinator(e)
    }
}

impl From<Status> for Refused {
    fn from(s: Status) -> Self {
        Refused::Stream(s)
    }
}

/// How long an upload or reveal may wait for room in the upload buffer, in idle periods.
const BUFFER_WAIT_IDLES: u32 = 10;

/// How an upload ended, counted when dropped: accepted once it is stored (even if its client
/// went away meanwhile), else refused for a reason.
struct UploadOutcome {
    refused: &'static str,
    stored: Arc<AtomicBool>,
}

impl Drop for UploadOutcome {
    fn drop(&mut self) {
        let stored = self.stored.load(std::sync::atomic::Ordering::SeqCst);
        telemetry::upload((!stored).then_some(self.refused));
    }
}

/// The telemetry reason of an upload whose stream failed (a fixed name per code).
fn stream_reason(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        InvalidArgument => "stream_invalid",
        DeadlineExceeded => "stream_deadline",
        ResourceExhausted => "stream_exhausted",
        Cancelled => "stream_cancelled",
        _ => "stream_other",
    }
}

impl RoundsService {
    /// Reads one upload (header, then data) and stores it.
    async fn receive_upload(
        &self,
        request: Request<Streaming<v1::UploadChunk>>,
        stored: &Arc<AtomicBool>,
    ) -> Result<v1::UploadReceipt, Refused> {
        let mut stream = request.into_inner();
        let streams = &self.state.policy.streams;
        let idle = streams.upload_idle;
        let header = match next_within(&mut stream, idle, None).await? {
            Some(Ok(v1::UploadChunk {
                part: Some(Part::Header(h)),
            })) => h,
            Some(Ok(_)) => {
                return Err(CoordinatorError::InvalidRequest(
                    "an upload must start with its header".into(),
                )
                .into());
            }
            Some(Err(status)) => return Err(status.into()),
            None => return Err(CoordinatorError::InvalidRequest("empty upload".into()).into()),
        };
        let ticket = self.state.check_upload(&header)?;
        // Held until the payload is stored, however the stream ends.
        let slot = self.state.slots.take(
            limits::participant_key("upload", &ticket.job, &ticket.did),
            streams.uploads_per_participant,
            &format!("{} (uploads to job {})", ticket.did, ticket.job),
            "--max-uploads-per-participant",
        )?;
        // Room for the data in the server's upload buffer, also held until it is stored.
        let room = self
            .state
            .upload_buffer
            .take(ticket.dim * 4, idle.saturating_mul(BUFFER_WAIT_IDLES))
            .await?;
        let payload = read_payload(&mut stream, idle, ticket.dim as usize * 4, |c| {
            match c.part {
                Some(Part::Data(d)) => Some(d),
                _ => None,
            }
        })
        .await?;
        let state = Arc::clone(&self.state);
        let stored = Arc::clone(stored);
        let receipt = v1::UploadReceipt {
            round: ticket.round,
            payload_hash: ticket.payload_hash.to_vec(),
        };
        tokio::task::spawn_blocking(move || {
            // Still held if the client goes away while the update is stored.
            let _slot = slot;
            let _room = room;
            let accepted = state.accept_upload(&ticket, &payload);
            if accepted.is_ok() {
                stored.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            accepted
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))??;
        tracing::debug!(round = receipt.round, "update accepted");
        Ok(receipt)
    }
}

/// Marks a work stream as gone when its task ends, however it ends.
struct Connection {
    state: Arc<State>,
    job: String,
    did: conclave_crypto::ParticipantId,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.state.disconnect(&self.job, &self.did);
    }
}

/// Reads the data chunks that follow a header: each non-empty and at most
/// [`MAX_CHUNK_BYTES`], `expected` bytes in all, counted as they arrive. Each comes within
/// `idle` of the one before, and the whole payload within one `idle` per chunk it needs (so a
/// trickle cannot hold the stream open). The caller has taken room for `expected` bytes in
/// the upload buffer, and that much is reserved at once.
async fn read_payload<T>(
    stream: &mut Streaming<T>,
    idle: std::time::Duration,
    expected: usize,
    data_of: impl Fn(T) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    let chunks = u32::try_from(expected.div_ceil(MAX_CHUNK_BYTES)).unwrap_or(u32::MAX);
    // The stream holds room in the upload buffer: its data must also come at a minimum rate,
    // so that a trickle cannot keep that room from others for hours.
    let by_rate = tokio::time::Instant::now()
        + idle
        + std::time::Duration::from_secs_f64(expected as f64 / limits::MIN_UPLOAD_RATE as f64);
    let until = limits::deadline(idle, chunks.saturating_add(1)).min(by_rate);
    // The header was checked and the room for `expected` bytes taken from the upload buffer
    // before this: reserving it whole is what the buffer counts (growing by doubling would
    // hold up to 1.7× as much while the last copy is made).
    let mut payload = Vec::with_capacity(expected);
    while let Some(chunk) = next_within(stream, idle, Some(until)).await? {
        let Some(data) = data_of(chunk?) else {
            return Err(CoordinatorError::InvalidRequest(
                "only data chunks may follow the header".into(),
            )
            .into());
        };
        if data.len() > MAX_CHUNK_BYTES {
            return Err(CoordinatorError::ChunkTooLarge {
                size: data.len(),
                max: MAX_CHUNK_BYTES,
            }
            .into());
        }
        if data.is_empty() {
            return Err(CoordinatorError::InvalidRequest("an empty data chunk".into()).into());
        }
        if payload.len() + data.len() > expected {
            let got = (payload.len() + data.len()) as u64 / 4;
            return Err(CoordinatorError::WrongLength {
                expected: expected as u64 / 4,
                got,
            }
            .into());
        }
        payload.extend_from_slice(&data);
    }
    Ok(payload)
}
