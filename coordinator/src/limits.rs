//! Bounds on the streams one party may hold open, so that no participant, member, reader or
//! stranger can make the coordinator hold more than the operator allows: streams still waiting
//! for their signed header, concurrent uploads (and reveals) per participant, work streams per
//! participant, model downloads and ledger streams (in all and per reader), and how long any
//! of them may wait on the other side. Each is a `conclave serve` setting; hitting one refuses
//! the new stream with RESOURCE_EXHAUSTED (or cuts a stalled one with DEADLINE_EXCEEDED) and
//! names the setting, and nothing else waits for it.
//!
//! Places are keyed by what the coordinator already checked: the signed identity (or, for an
//! anonymous reader of a public server, its address) and the job, so a stranger cannot make
//! the table grow past the global bounds.

use std::collections::HashMap;
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

/// Upload and reveal streams that may wait for their signed header at once by default.
pub const DEFAULT_PENDING_STREAMS: usize = 256;

/// Downloads, and ledger streams, one reader may have open at once.
pub const STREAMS_PER_READER: usize = 4;

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
    /// Upload and reveal streams waiting for their signed header, in all.
    pub pending_streams: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            uploads_per_participant: DEFAULT_UPLOADS_PER_PARTICIPANT,
            upload_idle: DEFAULT_UPLOAD_IDLE,
            work_streams_per_participant: DEFAULT_WORK_STREAMS_PER_PARTICIPANT,
            ledger_streams: DEFAULT_LEDGER_STREAMS,
            downloads: DEFAULT_DOWNLOADS,
            pending_streams: DEFAULT_PENDING_STREAMS,
        }
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

    /// Takes a place of kind `kind` in all (at most `max`) and one of `reader`'s (at most
    /// [`STREAMS_PER_READER`]).
    pub fn take_reader(
        self: &Arc<Self>,
        kind: &str,
        reader: &str,
        max: usize,
        setting: &str,
    ) -> Result<(Slot, Slot), CoordinatorError> {
        let all = self.take(kind.into(), max, "the server", setting)?;
        let own = self.take(
            format!("{kind}\0{reader}"),
            STREAMS_PER_READER,
            reader,
            &format!("{STREAMS_PER_READER} {kind} streams per reader"),
        )?;
        Ok((all, own))
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

/// Waits for the next message of an upload or reveal stream for at most `idle`, and not past
/// `until` (the stream's whole time).
pub async fn next_within<S>(
    stream: &mut S,
    idle: Duration,
    until: tokio::time::Instant,
) -> Result<Option<S::Item>, CoordinatorError>
where
    S: tokio_stream::Stream + Unpin,
{
    use tokio_stream::StreamExt;
    let now = tokio::time::Instant::now();
    if now >= until {
        return Err(CoordinatorError::StreamTooSlow);
    }
    let wait = idle.min(until - now);
    match tokio::time::timeout(wait, stream.next()).await {
        Ok(next) => Ok(next),
        Err(_) if wait < idle => Err(CoordinatorError::StreamTooSlow),
        Err(_) => Err(CoordinatorError::StreamIdle(idle.as_secs_f64())),
    }
}

/// Sends `item` on a server stream, giving up when the reader has not taken the one before
/// within `idle` (it then loses the stream, and what the stream held is freed).
pub async fn send_within<T>(tx: &tokio::sync::mpsc::Sender<T>, item: T, idle: Duration) -> bool {
    matches!(tokio::time::timeout(idle, tx.send(item)).await, Ok(Ok(())))
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
