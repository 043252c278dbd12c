//! Who may do what on a coordinator, and how much one request may make it hold: the operator's
//! [`ServerPolicy`] (`conclave serve --launcher`, `--public-read`, `--max-jobs`,
//! `--max-model-params`, `--max-participants-per-job`) and the checks the `Jobs`, `Rounds` and `Ledger` services apply
//! with it.
//!
//! - Launching a job takes a signed `CreateJob` from one of the launcher identities; nobody
//!   else can make the coordinator build, store and reload a model.
//! - Reading (a job, the job list, a model, the ledger) takes a signed request, unless the
//!   server reads publicly. A job may be read by a launcher and by any identity its admission
//!   lets join (everyone, under open admission: such an identity could join and read anyway).
//!   The ledger is one chain for all jobs: it is served whole to a launcher and to a
//!   participant that joined some job, so the participants of one job see the entries of the
//!   others (one coordinator per consortium keeps them apart).
//! - A signed request's nonce is remembered only once the request is allowed, and only when
//!   the answer depends on who signed (not for a read of an open job), so a stranger's
//!   signatures take no memory.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use conclave_aggregation::JobSpec;
use conclave_crypto::ParticipantId;
use conclave_proto::v1;
use conclave_proto::{MAX_PAGE_BYTES, Signed};
use prost::Message;

use crate::auth::Signer;
use crate::limits::StreamLimits;
use crate::state::now_ms;
use crate::{CoordinatorError, State};

/// Jobs a server keeps by default (every one is reloaded, model included, at each start).
pub const DEFAULT_MAX_JOBS: usize = 64;

/// Model parameters a job may have by default (400 MB of f32 per model version).
pub const DEFAULT_MAX_MODEL_PARAMS: u64 = 100_000_000;

/// Participants a job may have by default, whatever its spec allows.
pub const DEFAULT_MAX_PARTICIPANTS_PER_JOB: usize = 10_000;

/// The most `--max-participants-per-job` may be: one ledger entry names every participant of
/// a round (`RoundOpened`, `RoundClosed`, a draw's `DrawReveals` at ~160 bytes each) and must
/// stay within the ledger's 8 MiB entry limit.
pub const MAX_PARTICIPANTS_PER_JOB: usize = 40_000;

/// What the operator allows, set when the coordinator starts.
#[derive(Clone, Debug)]
pub struct ServerPolicy {
    /// The identities whose signed `CreateJob` is accepted. Empty: no job can be launched.
    pub launchers: BTreeSet<ParticipantId>,
    /// Serve reads without a signature.
    pub public_read: bool,
    /// Most jobs the server keeps (finished ones included).
    pub max_jobs: usize,
    /// Most parameters a job's model may have.
    pub max_model_params: u64,
    /// Most participants one job may have (a secure job's spec may allow fewer), at most
    /// [`MAX_PARTICIPANTS_PER_JOB`].
    pub max_participants_per_job: usize,
    /// Bounds on open streams.
    pub streams: StreamLimits,
    /// How long a round waits for a participant with no work stream, once it has
    /// `min_participants` updates, before it stops waiting for it.
    pub dropout_grace: std::time::Duration,
}

/// The default of [`ServerPolicy::dropout_grace`]: a restarted coordinator's participants are
/// back well within it.
pub const DEFAULT_DROPOUT_GRACE: std::time::Duration = std::time::Duration::from_secs(15);

impl Default for ServerPolicy {
    /// No launcher, signed reads, the default limits.
    fn default() -> Self {
        Self {
            launchers: BTreeSet::new(),
            public_read: false,
            max_jobs: DEFAULT_MAX_JOBS,
            max_model_params: DEFAULT_MAX_MODEL_PARAMS,
            max_participants_per_job: DEFAULT_MAX_PARTICIPANTS_PER_JOB,
            streams: StreamLimits::default(),
            dropout_grace: DEFAULT_DROPOUT_GRACE,
        }
    }
}

impl ServerPolicy {
    /// A policy that lets `launcher` launch jobs, with everything else at its default.
    pub fn with_launcher(launcher: ParticipantId) -> Self {
        Self {
            launchers: BTreeSet::from([launcher]),
            ..Self::default()
        }
    }

    /// Whether `did` may launch jobs.
    pub fn is_launcher(&self, did: &ParticipantId) -> bool {
        self.launchers.contains(did)
    }

    /// Checks that `signer` may launch jobs.
    pub fn check_launcher(&self, signer: &Signer) -> Result<(), CoordinatorError> {
        if self.is_launcher(&signer.did) {
            Ok(())
        } else {
            Err(CoordinatorError::NotLauncher(signer.did.to_string()))
        }
    }

    /// Checks that `spec`'s model is within this server's size limit.
    pub fn check_model(&self, spec: &JobSpec) -> Result<(), CoordinatorError> {
        // A strategy's state is kept in memory beside the model, so it counts as parameters.
        let per_param = 1 + spec.strategy.rules().state_per_param() as u64;
        let params = spec.layout().dim() as u64 * per_param;
        if params > self.max_model_params {
            return Err(CoordinatorError::ModelTooLarge {
                params,
                max: self.max_model_params,
            });
        }
        Ok(())
    }
}

/// Launches in progress: each holds a place among the server's jobs from before its model is
/// built until it is stored (or refused).
#[derive(Default)]
pub(crate) struct Launching(AtomicUsize);

/// A reserved place among the jobs, given back when dropped.
pub(crate) struct LaunchPlace<'a>(&'a Launching);

impl Launching {
    /// Reserves a place on a server that keeps `jobs` jobs and may keep `max` (call under the
    /// jobs lock, so the count cannot change meanwhile).
    pub(crate) fn reserve(
        &self,
        jobs: usize,
        max: usize,
    ) -> Result<LaunchPlace<'_>, CoordinatorError> {
        let launching = self.0.load(Ordering::SeqCst);
        if jobs + launching >= max {
            return Err(CoordinatorError::LimitReached(format!(
                "this coordinator keeps {jobs} jobs ({launching} more being launched), its \
                 limit (conclave serve --max-jobs)"
            )));
        }
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(LaunchPlace(self))
    }
}

impl Drop for LaunchPlace<'_> {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Who a read comes from: nobody in particular on a public server, or a checked signer.
#[derive(Clone, Debug)]
enum Reader {
    /// A public server's reader; with its identity when it signed (its stream places are then
    /// its own, not its address's).
    Public(Option<Box<ParticipantId>>),
    Signed(Box<Signer>),
}

/// One page of the jobs whose spec `allowed` takes, oldest first (ties by id), starting after
/// the job `after` (from the first when empty), within [`MAX_PAGE_BYTES`].
fn jobs_where(
    jobs: &[&crate::job::Job],
    after: &str,
    allowed: impl Fn(&JobSpec) -> bool,
) -> Result<v1::ListJobsResponse, CoordinatorError> {
    let mut order: Vec<&crate::job::Job> =
        jobs.iter().copied().filter(|j| allowed(&j.spec)).collect();
    order.sort_by_key(|j| (j.record.created_unix_ms, j.id().to_owned()));
    let from = if after.is_empty() {
        0
    } else {
        order
            .iter()
            .position(|j| j.id() == after)
            .map(|i| i + 1)
            .ok_or_else(|| {
                CoordinatorError::InvalidRequest(format!(
                    "after_job_id {after:?} names no job this reader may list"
                ))
            })?
    };
    let mut page = v1::ListJobsResponse::default();
    let mut bytes = 0;
    for job in &order[from..] {
        let info = job.info();
        bytes += info.encoded_len() + 64;
        if bytes > MAX_PAGE_BYTES && !page.jobs.is_empty() {
            break;
        }
        page.jobs.push(info);
    }
    if from + page.jobs.len() < order.len() {
        page.next_after = page
            .jobs
            .last()
            .map(|j| j.job_id.clone())
            .unwrap_or_default();
    }
    Ok(page)
}

/// Who holds a reader's stream places: its identity when it signed, otherwise the address it
/// connects from (a public server's anonymous readers share their address's places).
pub(crate) fn reader_key(
    did: Option<&ParticipantId>,
    remote: Option<std::net::SocketAddr>,
) -> String {
    use std::net::IpAddr;
    // A dual-stack listener sees IPv4 peers as mapped IPv6 addresses: canonical, they are
    // IPv4 again.
    match (did, remote.map(|a| a.ip().to_canonical())) {
        (Some(did), _) => did.to_string(),
        (None, Some(IpAddr::V4(ip))) => format!("address {ip}"),
        // One IPv6 host usually holds a whole /64.
        (None, Some(IpAddr::V6(ip))) => {
            let s = ip.segments();
            format!("addresses {:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        (None, None) => "an anonymous reader".into(),
    }
}

/// Whether `did` may read a job with this admission list: a launcher, or an identity the
/// admission lets join (a participant that joined was let in by it).
pub fn may_read_job(
    policy: &ServerPolicy,
    did: &ParticipantId,
    admission: &[ParticipantId],
) -> bool {
    policy.is_launcher(did) || admission.is_empty() || admission.contains(did)
}

/// Every identity some job's admission list names, and every identity that joined some job:
/// kept beside the jobs so that the checks of who a reader is never wait for a job's lock.
/// Identities are only ever added (admission lists are fixed at launch; participants stay).
#[derive(Default)]
pub(crate) struct KnownIds {
    named: HashSet<ParticipantId>,
    joined: HashSet<ParticipantId>,
}

impl KnownIds {
    pub fn name(&mut self, admission: &[ParticipantId]) {
        self.named.extend(admission.iter().cloned());
    }

    pub fn join(&mut self, did: ParticipantId) {
        self.joined.insert(did);
    }
}

impl State {
    fn known_ids(&self) -> std::sync::RwLockReadGuard<'_, KnownIds> {
        self.known
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records identities a job names or admitted (see [`KnownIds`]).
    pub(crate) fn learn_ids(&self, f: impl FnOnce(&mut KnownIds)) {
        f(&mut self
            .known
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()));
    }

    /// Who a read comes from. On a server that does not read publicly, an unsigned read, a
    /// bad signature or a stale signing time is refused.
    fn reader<T: Signed>(&self, req: &T) -> Result<Reader, CoordinatorError> {
        if self.policy.public_read {
            // Anyone may read. A valid signature by an identity the coordinator knows (a
            // launcher, or one a job names or admitted) makes a stream's places its own
            // rather than its address's; a fresh key's counts as its address, so new keys buy
            // no places. No nonce is kept: a replay could spend only the signer's own few
            // places, and only by someone who captured the request (over TLS, no one).
            let did = match req.auth() {
                Some(_) => {
                    let did = self.authenticate(req)?.did;
                    let known = self.policy.is_launcher(&did) || {
                        let ids = self.known_ids();
                        ids.named.contains(&did) || ids.joined.contains(&did)
                    };
                    known.then(|| Box::new(did))
                }
                None => None,
            };
            return Ok(Reader::Public(did));
        }
        if req.auth().is_none() {
            return Err(CoordinatorError::BadAuth(format!(
                "{} is not signed, and this coordinator serves reads to signed requests only \
                 (sign it with a launcher's identity or one the job admits)",
                T::METHOD
            )));
        }
        self.authenticate(req).map(|s| Reader::Signed(Box::new(s)))
    }

    /// Remembers the nonce of an allowed launch or read (refusing a replay).
    pub(crate) fn consume_server_nonce(&self, signer: &Signer) -> Result<(), CoordinatorError> {
        self.server_nonces
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .consume(signer, now_ms())
    }

    /// Allows `reader` to read the job `job` with this spec, or says who was refused.
    fn allow_job_read(
        &self,
        reader: &Reader,
        spec: &JobSpec,
        job: &str,
    ) -> Result<(), CoordinatorError> {
        match reader {
            Reader::Public(_) => Ok(()),
            // Under open admission whoever signs may read: a replay gets nothing a fresh key
            // would not, so no nonce is kept (a stranger's keys take no memory).
            Reader::Signed(_) if spec.admission.is_empty() => Ok(()),
            Reader::Signed(s) if may_read_job(&self.policy, &s.did, &spec.admission) => {
                self.consume_server_nonce(s)
            }
            Reader::Signed(s) => Err(CoordinatorError::NotReader {
                did: s.did.to_string(),
                what: format!("job {job}"),
                why: "it is not a launcher, and the job's admission list does not name it",
            }),
        }
    }

    /// `GetJob`: a job's state, for a reader allowed to see it.
    pub fn read_job(&self, req: &v1::GetJobRequest) -> Result<v1::JobInfo, CoordinatorError> {
        let reader = self.reader(req)?;
        self.with_job(&req.job_id, |job, _| {
            self.allow_job_read(&reader, &job.spec, job.id())?;
            Ok(job.info())
        })
    }

    /// `ListRounds`: a page of a job's round history, for a reader allowed to see the job.
    pub fn read_rounds(
        &self,
        req: &v1::ListRoundsRequest,
    ) -> Result<v1::ListRoundsResponse, CoordinatorError> {
        let reader = self.reader(req)?;
        self.with_job(&req.job_id, |job, _| {
            self.allow_job_read(&reader, &job.spec, job.id())?;
            Ok(job.rounds_page(req.first_round))
        })
    }

    /// `ListJobs`: a page of the jobs the reader may read, oldest first.
    pub fn read_jobs(
        &self,
        req: &v1::ListJobsRequest,
    ) -> Result<v1::ListJobsResponse, CoordinatorError> {
        let after = req.after_job_id.as_str();
        match self.reader(req)? {
            Reader::Public(_) => self.with_jobs(|jobs| jobs_where(jobs, after, |_| true)),
            Reader::Signed(s) => {
                // The answer depends on who asks only for a launcher or an identity some
                // admission list names; for anyone else it is the open jobs, which any fresh
                // key gets too, so no nonce is kept for them. Both are read under one lock,
                // so a job naming the signer cannot appear between the two.
                let (named, jobs) = self.with_jobs(|jobs| {
                    let named = self.policy.is_launcher(&s.did)
                        || jobs.iter().any(|j| j.spec.admission.contains(&s.did));
                    let readable =
                        |spec: &JobSpec| may_read_job(&self.policy, &s.did, &spec.admission);
                    (named, jobs_where(jobs, after, readable))
                });
                let page = jobs?;
                if named {
                    self.consume_server_nonce(&s)?;
                }
                Ok(page)
            }
        }
    }

    /// `DownloadModel`: checks that the reader may read the job (the model itself is loaded
    /// once the stream has its places, see the `Rounds` service). Returns the reader's
    /// identity when the read is signed.
    pub fn allow_model_read(
        &self,
        req: &v1::DownloadModelRequest,
    ) -> Result<Option<ParticipantId>, CoordinatorError> {
        let reader = self.reader(req)?;
        self.with_job(&req.job_id, |job, _| {
            self.allow_job_read(&reader, &job.spec, job.id())
        })?;
        Ok(match reader {
            Reader::Public(did) => did.map(|d| *d),
            Reader::Signed(s) => Some(s.did.clone()),
        })
    }

    /// `Ledger.Entries`: allowed to a launcher and to a participant that joined some job
    /// (under open admission, a stranger must join, and so be recorded, before it reads the
    /// ledger). The ledger is one chain for every job, so such a reader sees every job's
    /// entries. Returns the reader's identity when the read is signed.
    pub fn allow_ledger_read(
        &self,
        req: &v1::LedgerRequest,
    ) -> Result<Option<ParticipantId>, CoordinatorError> {
        match self.reader(req)? {
            Reader::Public(did) => Ok(did.map(|d| *d)),
            Reader::Signed(s) => {
                let allowed =
                    self.policy.is_launcher(&s.did) || self.known_ids().joined.contains(&s.did);
                if !allowed {
                    return Err(CoordinatorError::NotReader {
                        did: s.did.to_string(),
                        what: "the ledger".into(),
                        why: "it is not a launcher, and has joined no job on this coordinator",
                    });
                }
                self.consume_server_nonce(&s)?;
                Ok(Some(s.did.clone()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_crypto::Identity;

    fn did() -> ParticipantId {
        Identity::generate().participant_id()
    }

    #[test]
    fn a_job_is_read_by_launchers_and_its_admission_only() {
        let (launcher, listed, stranger) = (did(), did(), did());
        let policy = ServerPolicy::with_launcher(launcher.clone());
        let admission = vec![listed.clone()];
        assert!(may_read_job(&policy, &launcher, &admission));
        assert!(may_read_job(&policy, &listed, &admission));
        assert!(!may_read_job(&policy, &stranger, &admission));
        // Open admission: whoever signs could join, so may read.
        assert!(may_read_job(&policy, &stranger, &[]));
        assert!(!may_read_job(
            &ServerPolicy::default(),
            &launcher,
            &admission
        ));
    }
}
