//! Bounds on the streams one party may hold open, so that no participant, member or reader can
//! make the coordinator hold more than the operator allows: concurrent uploads (and reveals)
//! per participant, an idle timeout on each of their chunks, work streams per participant and
//! ledger follow streams, in all and per reader. Each is a `conclave serve` setting; hitting
//! one refuses the new stream with RESOURCE_EXHAUSTED (or cuts an idle one with
//! DEADLINE_EXCEEDED) and names the setting, and nothing else waits for it.
//!
//! A stream's place is taken only after its request is authenticated (and, for uploads, after
//! its signed header is checked against the round), so the keys counted here are identities
//! the coordinator already knows: a stranger cannot make the table grow.

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

/// Ledger follow streams the server keeps open by default, in all.
pub const DEFAULT_FOLLOW_STREAMS: usize = 256;

/// Ledger follow streams one reader may keep open.
pub const FOLLOW_STREAMS_PER_READER: usize = 4;

/// The stream bounds of a server.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Concurrent upload (and, for members, reveal) streams per participant and job.
    pub uploads_per_participant: usize,
    /// Longest wait for the next message of an upload or reveal stream.
    pub upload_idle: Duration,
    /// Open work streams per participant and job.
    pub work_streams_per_participant: usize,
    /// Open ledger follow streams in all (each reader may hold [`FOLLOW_STREAMS_PER_READER`]).
    pub follow_streams: usize,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            uploads_per_participant: DEFAULT_UPLOADS_PER_PARTICIPANT,
            upload_idle: DEFAULT_UPLOAD_IDLE,
            work_streams_per_participant: DEFAULT_WORK_STREAMS_PER_PARTICIPANT,
            follow_streams: DEFAULT_FOLLOW_STREAMS,
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

/// Waits for the next message of an upload or reveal stream for at most `idle`.
pub async fn next_within<S>(
    stream: &mut S,
    idle: Duration,
) -> Result<Option<S::Item>, CoordinatorError>
where
    S: tokio_stream::Stream + Unpin,
{
    use tokio_stream::StreamExt;
    tokio::time::timeout(idle, stream.next())
        .await
        .map_err(|_| CoordinatorError::StreamIdle(idle.as_secs_f64()))
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
