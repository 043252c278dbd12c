//! Bounds on the streams one party may hold open, so that no participant, member, reader or
//! stranger can make the coordinator hold more than the operator allows: concurrent uploads
//! (and reveals) per participant, work streams per participant, model downloads and ledger
//! streams (in all, and per reader), and how long any of them may wait on the other side.
//! Each is a `conclave serve` setting named in its refusal.
//!
//! - A party over its own share (uploads per participant, work streams, 4 downloads or ledger
//!   streams per reader) is refused at once with RESOURCE_EXHAUSTED.
//! - The server-wide shares (downloads, ledger streams) are waited for, up to one idle
//!   period, so honest participants arriving together at a round's start queue rather than
//!   fail; as many may wait as the share has places, and a stream beyond that, or one that
//!   waited in vain, is refused.
//! - A stream whose peer stops sending (uploads, reveals, their header included) or stops
//!   reading (downloads, ledger streams) for one idle period is cut with DEADLINE_EXCEEDED
//!   (its server-wide place is given back then; its reader's own place when the reader lets
//!   go), and an upload may take one idle period per chunk it needs, no more.
//!
//! Own shares are keyed by what was already checked: the signed identity and the job (or, for
//! an unsigned read of a public server, the address it comes from), so a stranger cannot make
//! the table grow past the server-wide bounds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::CoordinatorError;

/// Uploads (or reveals) one participant may stream at once by default: a retry may overlap
/// the stream it replaces until that one is cut.
pub const DEFAULT_UPLOADS_PER_PARTICIPANT: usize = 2;

/// How long an upload or reveal stream may go without a message by default.
pub const DEFAULT_UPLOAD_IDLE: Duration = Duration::from_secs(30);

/// Work streams one participant may hold open in one job by default.
pub const DEFAULT_WORK_STREAMS_PER_PARTICIPANT: usize = 4;

/// Ledger streams the server keeps open by default, in all.
pub const DEFAULT_LEDGER_STREAMS: usize = 256;

/// Model downloads the server streams at once by default, in all.
pub const DEFAULT_DOWNLOADS: usize = 64;

/// Downloads, and ledger streams, one reader may have open at once.
pub const STREAMS_PER_READER: usize = 4;

/// Bytes of update data the server holds in memory at once by default, over all uploads.
pub const DEFAULT_UPLOAD_BUFFER: u64 = 1 << 30;

/// The slowest an upload's (or reveal's) data may come once it holds room in the upload
/// buffer, bytes per second, beyond one idle period (256 KiB/s: a 400 MB model in 26 min).
pub const MIN_UPLOAD_RATE: u64 = 256 * 1024;

/// The unit the upload buffer is counted in.
const BUFFER_UNIT: u64 = 64 * 1024;

/// The stream bounds of a server.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Concurrent upload (and, for members, reveal) streams per participant and job.
    pub uploads_per_participant: usize,
    /// Longest wait for the next message of an upload or reveal stream.
    pub upload_idle: Duration,
    /// Open work streams per participant and job.
    pub work_streams_per_participant: usize,
    /// Open ledger streams in all (each reader may hold [`STREAMS_PER_READER`]).
    pub ledger_streams: usize,
    /// Model downloads in all (each reader may hold [`STREAMS_PER_READER`]).
    pub downloads: usize,
    /// Bytes of update data held in memory at once, over all uploads and reveals: an upload
    /// takes its share before its data is read and gives it back once it is stored.
    pub upload_buffer: u64,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            uploads_per_participant: DEFAULT_UPLOADS_PER_PARTICIPANT,
            upload_idle: DEFAULT_UPLOAD_IDLE,
            work_streams_per_participant: DEFAULT_WORK_STREAMS_PER_PARTICIPANT,
            ledger_streams: DEFAULT_LEDGER_STREAMS,
            downloads: DEFAULT_DOWNLOADS,
            upload_buffer: DEFAULT_UPLOAD_BUFFER,
        }
    }
}

/// The server's memory for update data in flight (see [`StreamLimits::upload_buffer`]), so
/// that however many participants upload at once, the coordinator holds at most this much of
/// their data: the others wait, unread (their senders held back by HTTP/2 flow control).
pub struct UploadBuffer {
    units: Arc<tokio::sync::Semaphore>,
    size: u32,
    waiting: AtomicUsize,
}

/// A share of the upload buffer, given back when dropped.
#[must_use = "the share is given back when dropped"]
pub struct BufferShare(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

/// One upload counted as waiting for room while this lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl UploadBuffer {
    /// A buffer of `bytes` (at least one unit).
    pub fn new(bytes: u64) -> Self {
        let size = (bytes / BUFFER_UNIT).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        Self {
            units: Arc::new(tokio::sync::Semaphore::new(size as usize)),
            size,
            waiting: AtomicUsize::new(0),
        }
    }

    /// Waits up to `wait` for room for `bytes` of data (an upload larger than the whole buffer
    /// waits for all of it, and then runs alone).
    pub async fn take(&self, bytes: u64, wait: Duration) -> Result<BufferShare, CoordinatorError> {
        let units = bytes.div_ceil(BUFFER_UNIT).clamp(1, u64::from(self.size)) as u32;
        // Counted as waiting until this returns or is dropped (its client went away).
        let _waiting = Waiting::new(&self.waiting);
        let taken =
            tokio::time::timeout(wait, Arc::clone(&self.units).acquire_many_owned(units)).await;
        match taken {
            Ok(permit) => Ok(BufferShare(
                permit.expect("the upload buffer's semaphore is never closed"),
            )),
            Err(_) => Err(CoordinatorError::LimitReached(format!(
                "the coordinator's upload buffer (--max-upload-buffer-mib) stayed full for {} s: \
                 send it again",
                wait.as_secs()
            ))),
        }
    }

    /// Bytes held now, and uploads waiting for room.
    pub fn load(&self) -> (u64, usize) {
        let held = u64::from(self.size) - self.units.available_permits() as u64;
        (held * BUFFER_UNIT, self.waiting.load(Ordering::SeqCst))
    }
}

/// Open streams counted by key; a [`Slot`] holds one place until it is dropped.
#[derive(Default)]
pub struct Slots {
    open: Mutex<HashMap<String, usize>>,
}

/// One open stream's place under a key (given back when dropped, however the stream ends).
#[must_use = "the place is given back when the slot is dropped"]
pub struct Slot {
    slots: Arc<Slots>,
    key: String,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a place under `key` if fewer than `max` are taken; otherwise refuses, naming
    /// `what` was over its limit and the setting that sets it.
    pub fn take(
        self: &Arc<Self>,
        key: String,
        max: usize,
        what: &str,
        setting: &str,
    ) -> Result<Slot, CoordinatorError> {
        let mut open = self.lock();
        let n = open.get(&key).copied().unwrap_or(0);
        if n >= max {
            return Err(CoordinatorError::LimitReached(format!(
                "{what} already holds {n} open streams, this coordinator's limit ({setting})"
            )));
        }
        open.insert(key.clone(), n + 1);
        Ok(Slot {
            slots: Arc::clone(self),
            key,
        })
    }

    /// Takes one of `reader`'s places of kind `kind` (at most [`STREAMS_PER_READER`]) at
    /// once, then waits up to `wait` for one of the server's (`gate`, sized by `setting`).
    pub async fn take_reader(
        self: &Arc<Self>,
        kind: &str,
        reader: &str,
        gate: &Gate,
        wait: Duration,
    ) -> Result<ReaderPlaces, CoordinatorError> {
        let own = self.take(
            format!("{kind}\0{reader}"),
            STREAMS_PER_READER,
            reader,
            &format!("{STREAMS_PER_READER} {kind} streams per reader"),
        )?;
        if let Ok(all) = Arc::clone(&gate.permits).try_acquire_owned() {
            return Ok(ReaderPlaces { all, own });
        }
        let _queued = Arc::clone(&gate.queue).try_acquire_owned().map_err(|_| {
            CoordinatorError::LimitReached(format!(
                "the server already streams {0} {kind}s and {0} more wait, its limit ({1}): \
                 try again",
                gate.size, gate.setting
            ))
        })?;
        let all = tokio::time::timeout(wait, Arc::clone(&gate.permits).acquire_owned())
            .await
            .map_err(|_| {
                CoordinatorError::LimitReached(format!(
                    "the server already streams {} {kind}s, its limit ({}), and none ended \
                     within {} s: try again",
                    gate.size,
                    gate.setting,
                    wait.as_secs()
                ))
            })?
            .expect("the gate's semaphore is never closed");
        Ok(ReaderPlaces { all, own })
    }

    /// Places taken under `key` now.
    pub fn count(&self, key: &str) -> usize {
        self.lock().get(key).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.lock();
        if let Some(n) = open.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

/// The key of a participant's places of one kind ("upload", "reveal") in a job.
pub fn participant_key(kind: &str, job: &str, did: &impl std::fmt::Display) -> String {
    format!("{kind}\0{job}\0{did}")
}

/// A server-wide share of streams of one kind, waited for; as many more may wait as the
/// share has places, and any beyond that are refused at once.
pub struct Gate {
    permits: Arc<tokio::sync::Semaphore>,
    queue: Arc<tokio::sync::Semaphore>,
    size: usize,
    setting: &'static str,
}

impl Gate {
    /// A share of `size` streams, set by the `serve` flag `setting`.
    pub fn new(size: usize, setting: &'static str) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(size)),
            queue: Arc::new(tokio::sync::Semaphore::new(size)),
            size,
            setting,
        }
    }

    /// Streams holding a place now, and streams waiting for one.
    pub fn load(&self) -> (usize, usize) {
        (
            self.size - self.permits.available_permits(),
            self.size - self.queue.available_permits(),
        )
    }
}

/// A reader's stream's places: one of the server's, held while the stream is fed, and one of
/// the reader's own, held until the reader lets go of the stream.
#[must_use = "the places are given back when dropped"]
pub struct ReaderPlaces {
    pub all: tokio::sync::OwnedSemaphorePermit,
    pub own: Slot,
}

/// The latest time `idle × n` from now can name without overflowing.
pub fn deadline(idle: Duration, n: u32) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let far = Duration::from_secs(100 * 365 * 24 * 3600);
    now.checked_add(idle.saturating_mul(n).min(far))
        .unwrap_or(now + far)
}

/// Waits for the next message of an upload or reveal stream for at most `idle`, and, when
/// `until` is given, not past it (the stream's whole time).
pub async fn next_within<S>(
    stream: &mut S,
    idle: Duration,
    until: Option<tokio::time::Instant>,
) -> Result<Option<S::Item>, CoordinatorError>
where
    S: tokio_stream::Stream + Unpin,
{
    use tokio_stream::StreamExt;
    let now = tokio::time::Instant::now();
    let wait = match until {
        Some(until) if now >= until => return Err(CoordinatorError::StreamTooSlow),
        Some(until) if until - now < idle => Some(until - now),
        _ => None,
    };
    match tokio::time::timeout(wait.unwrap_or(idle), stream.next()).await {
        Ok(next) => Ok(next),
        Err(_) if wait.is_some() => Err(CoordinatorError::StreamTooSlow),
        Err(_) => Err(CoordinatorError::StreamIdle(idle.as_secs_f64())),
    }
}

/// The feeding side of a server stream that gives up on a reader that stops reading.
pub struct Feed<T> {
    tx: tokio::sync::mpsc::Sender<Result<T, tonic::Status>>,
    idle: Duration,
    cut: Arc<AtomicBool>,
    done: Arc<AtomicBool>,
}

/// A server stream as its client sees it.
pub type FedStream<T> =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, tonic::Status>> + Send>>;

/// A server stream and its feed, buffering `capacity` items; the stream holds `hold` (e.g.
/// the reader's own place) until the client lets go of it. The client gets what the feed
/// sends, then nothing more if the feed [finished](Feed::finish), DEADLINE_EXCEEDED if the
/// feed gave up on it for not reading, and UNAVAILABLE if the feed stopped early otherwise
/// (the server shutting down, say): a stream cut short never looks complete.
pub fn feed<T: Send + 'static, H: Send + 'static>(
    capacity: usize,
    idle: Duration,
    hold: H,
) -> (Feed<T>, FedStream<T>) {
    use tokio_stream::StreamExt;
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let cut = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let (was_cut, was_done) = (Arc::clone(&cut), Arc::clone(&done));
    // Read once every sender is gone: the flags are set before the feed's sender drops.
    let tail = tokio_stream::once(()).filter_map(move |()| {
        if was_cut.load(Ordering::SeqCst) {
            Some(Err(
                CoordinatorError::ReaderStalled(idle.as_secs_f64()).into()
            ))
        } else if !was_done.load(Ordering::SeqCst) {
            Some(Err(tonic::Status::unavailable(
                "the coordinator ended this stream early (it may be shutting down): ask again",
            )))
        } else {
            None
        }
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx)
        .chain(tail)
        .map(move |item| {
            let _held = &hold;
            item
        });
    let feed = Feed {
        tx,
        idle,
        cut,
        done,
    };
    (feed, Box::pin(stream))
}

impl<T> Feed<T> {
    /// Sends `item`; false once the reader is gone or was cut for not taking the item before
    /// within the idle period (the feed should then stop).
    pub async fn send(&self, item: Result<T, tonic::Status>) -> bool {
        match tokio::time::timeout(self.idle, self.tx.send(item)).await {
            Ok(Ok(())) => true,
            Ok(Err(_)) => false,
            Err(_) => {
                self.cut.store(true, Ordering::SeqCst);
                false
            }
        }
    }

    /// Resolves when the client has gone.
    pub async fn closed(&self) {
        self.tx.closed().await
    }

    /// Ends the stream as complete.
    pub fn finish(self) {
        self.done.store(true, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_place_is_given_back_however_its_stream_ends() {
        let slots = Arc::new(Slots::default());
        let a = slots.take("k".into(), 2, "p", "--x").unwrap();
        let b = slots.take("k".into(), 2, "p", "--x").unwrap();
        let refused = slots.take("k".into(), 2, "p", "--x").err().unwrap();
        assert!(refused.to_string().contains("--x"), "{refused}");
        // Other keys are not crowded out.
        let _other = slots.take("other".into(), 1, "q", "--x").unwrap();
        drop(a);
        let _c = slots.take("k".into(), 2, "p", "--x").unwrap();
        drop(b);
        assert_eq!(slots.count("k"), 1);
        drop(_c);
        assert_eq!(slots.count("k"), 0);
        assert!(slots.lock().get("k").is_none(), "empty keys are forgotten");
    }
}
