//! Calls to the coordinator that outlive its restarts: a transport failure (a connection
//! refused or broken, a stream the coordinator cut or ended early) is retried with growing
//! waits, each try signed afresh, until the process's patience ([`RETRY_FOR`] unless
//! [`set_patience`] says otherwise) has passed; a refusal the coordinator sent is returned at
//! once. Every call is safe to send again: the coordinator refuses a
//! duplicate upload, report, approval, reveal or export as ALREADY_EXISTS, so a resend whose
//! first try was accepted (and whose answer was lost) is recognised, not counted twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use tonic::{Code, Status};

/// How long a call keeps trying through transport failures, by default.
pub const RETRY_FOR: Duration = Duration::from_secs(60);

/// This process's budget, in ms ([`set_patience`]).
static PATIENCE_MS: AtomicU64 = AtomicU64::new(RETRY_FOR.as_millis() as u64);

/// Signatures refused as made before the coordinator started are signed again this often,
/// whatever the patience.
const RESIGNS: u32 = 5;

/// Sets how long this process's calls keep trying through transport failures: a participant
/// rides out a coordinator restart (the default, [`RETRY_FOR`]); a one-shot command (`job
/// status`, `model export`) would rather report a broken connection at once (zero).
pub fn set_patience(budget: Duration) {
    PATIENCE_MS.store(budget.as_millis() as u64, Ordering::Relaxed);
}

/// The current budget.
pub fn patience() -> Duration {
    Duration::from_millis(PATIENCE_MS.load(Ordering::Relaxed))
}

/// The first wait; each later one doubles, up to [`MAX_WAIT`].
const FIRST_WAIT: Duration = Duration::from_millis(250);
const MAX_WAIT: Duration = Duration::from_secs(5);

/// Whether `status` comes from the connection rather than from the coordinator: tonic makes
/// such statuses itself, from the transport error they carry as their source (a status the
/// coordinator sends has none), and UNAVAILABLE is never a refusal (the coordinator uses it
/// for a stream it ended early, at shutdown).
pub fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status).is_some() || status.code() == Code::Unavailable
}

/// What a call tries again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Transport failures, and ABORTED (a signature made before the coordinator restarted:
    /// signed again).
    Call,
    /// As `Call`, and a stream the coordinator cut for being idle or slow (DEADLINE_EXCEEDED)
    /// or could not give a place yet (RESOURCE_EXHAUSTED: a place may still be held by the
    /// broken stream this one replaces).
    Stream,
}

impl Retry {
    fn covers(self, status: &Status) -> bool {
        is_transport(status)
            || status.code() == Code::Aborted
            || (self == Retry::Stream
                && matches!(
                    status.code(),
                    Code::DeadlineExceeded | Code::ResourceExhausted
                ))
    }
}

/// The waits between the tries of one call.
pub(crate) struct Backoff {
    kind: Retry,
    started: Instant,
    budget: Duration,
    next: Duration,
    tries: u32,
}

impl Backoff {
    pub(crate) fn new(kind: Retry) -> Self {
        Self::within(kind, patience(), FIRST_WAIT)
    }

    fn within(kind: Retry, budget: Duration, first: Duration) -> Self {
        Self {
            kind,
            started: Instant::now(),
            budget,
            next: first,
            tries: 1,
        }
    }

    /// After a try failed with `status`: waits and returns true when the call should be tried
    /// again, false when `status` is a refusal or the budget is spent.
    pub(crate) async fn again(&mut self, call: &str, status: &Status) -> bool {
        if status.code() == Code::Aborted && self.tries <= RESIGNS {
            tokio::time::sleep(Duration::from_millis(500).min(self.budget.max(FIRST_WAIT))).await;
            self.tries += 1;
            return true;
        }
        if !self.kind.covers(status) || self.started.elapsed() + self.next > self.budget {
            return false;
        }
        // Up to a quarter more, so participants that lost the same coordinator do not all
        // come back in the same instant.
        let jitter = self.next.mul_f64(f64::from(rand::random::<u8>()) / 1024.0);
        tracing::info!(call, tries = self.tries, code = ?status.code(), error = %status.message(), wait_ms = (self.next + jitter).as_millis() as u64, "call failed; trying again");
        tokio::time::sleep(self.next + jitter).await;
        self.next = (self.next * 2).min(MAX_WAIT);
        self.tries += 1;
        true
    }
}

/// Runs `call` (which signs its request afresh each time) until it succeeds, is refused, or
/// the process's patience has passed.
pub(crate) async fn retrying<T, F, Fut>(
    name: &str,
    kind: Retry,
    call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    retry_with(name, Backoff::new(kind), call).await
}

async fn retry_with<T, F, Fut>(
    name: &str,
    mut backoff: Backoff,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Err(status) if backoff.again(name, &status).await => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn broken_connection() -> Status {
        // What tonic makes of an I/O error under a call: UNKNOWN, with the error as source.
        Status::from_error(Box::new(std::io::Error::other("connection reset by peer")))
    }

    #[test]
    fn only_statuses_made_from_the_transport_count_as_lost_connections() {
        assert!(is_transport(&broken_connection()));
        assert!(is_transport(&Status::unavailable("stream ended early")));
        // The same codes sent by the coordinator are refusals.
        assert!(!is_transport(&Status::unknown("transport error")));
        assert!(!is_transport(&Status::permission_denied("not admitted")));
        assert!(!Retry::Call.covers(&Status::deadline_exceeded("idle")));
        assert!(Retry::Stream.covers(&Status::deadline_exceeded("idle")));
        assert!(Retry::Stream.covers(&Status::resource_exhausted("no place")));
        assert!(Retry::Call.covers(&Status::aborted("signed before start")));
    }

    fn quick(kind: Retry) -> Backoff {
        Backoff::within(kind, Duration::from_millis(300), Duration::from_millis(5))
    }

    #[tokio::test]
    async fn transport_failures_are_retried_and_refusals_are_not() {
        let tries = AtomicU32::new(0);
        let got = retry_with("Test", quick(Retry::Call), || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0 | 1 => Err(broken_connection()),
                2 => Err(Status::aborted("signed before the coordinator started")),
                _ => Ok(7),
            }
        })
        .await;
        assert_eq!(got.unwrap(), 7);
        assert_eq!(tries.load(Ordering::SeqCst), 4);

        let tries = AtomicU32::new(0);
        let got: Result<(), _> = retry_with("Test", quick(Retry::Call), || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(Status::failed_precondition("round 3 is not open"))
        })
        .await;
        assert_eq!(got.unwrap_err().code(), Code::FailedPrecondition);
        assert_eq!(
            tries.load(Ordering::SeqCst),
            1,
            "a refusal is not sent again"
        );
    }

    #[tokio::test]
    async fn a_coordinator_that_stays_away_ends_the_call_after_the_budget() {
        let started = Instant::now();
        let tries = AtomicU32::new(0);
        let got: Result<(), _> = retry_with("Test", quick(Retry::Stream), || async {
            tries.fetch_add(1, Ordering::SeqCst);
            Err(Status::unavailable("connection refused"))
        })
        .await;
        assert_eq!(got.unwrap_err().code(), Code::Unavailable);
        // Waits of 5, 10, 20, 40, 80 ms (and up to a quarter more) fit in 300 ms; the next
        // (160 ms) would not.
        let waited = started.elapsed();
        assert!(waited < Duration::from_millis(300), "{waited:?}");
        assert_eq!(tries.load(Ordering::SeqCst), 6);
    }
}
