//! A participant's secure-aggregation duties, independent of how its update was produced:
//! mask and upload an update for a round, and, when on the round's committee, sign the
//! statement and reveal what it allows. Used by [`run`](crate::run) and by benchmarks that
//! upload synthetic updates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_aggregation::JobSpec;
use conclave_aggregation::secagg::{
    Approval, Member, MemberView, RoundConfig, Statement, contribute, verify_plan,
};
use conclave_crypto::{Identity, ParticipantId};
use conclave_proto::v1;

use crate::client::{Client, masked_upload_messages};
use crate::{Event, ParticipantError};

/// Runs CPU-bound work (training, masking, unmasking) off the async runtime's threads.
pub(crate) async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ParticipantError> + Send + 'static,
) -> Result<T, ParticipantError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ParticipantError::Config(format!("worker task failed: {e}")))?
}

/// CPU time of the calling thread (where the OS tells; wall time otherwise), so committee
/// time counts work, not waiting for a core.
struct ThreadCpu(Duration);

impl ThreadCpu {
    fn read() -> Option<Duration> {
        #[cfg(unix)]
        {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
            let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
            if rc == 0 {
                return Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
            }
        }
        None
    }

    fn now() -> Self {
        Self(Self::read().unwrap_or_else(|| START.elapsed()))
    }

    fn elapsed(&self) -> Duration {
        Self::read()
            .unwrap_or_else(|| START.elapsed())
            .saturating_sub(self.0)
    }
}

static START: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);

/// A masked upload ready to send.
pub struct MaskedUpload {
    /// The weight (sample count, capped) inside the masked vector.
    pub weight: u64,
    pub messages: Vec<v1::UploadChunk>,
}

/// The committee roles this participant holds, by round, and the CPU time its duties took.
pub struct SecaggDuties {
    identity: Arc<Identity>,
    members: HashMap<u32, Member>,
    committee_time: Duration,
    /// The coordinator key round plans must be signed by.
    coordinator: Option<ParticipantId>,
}

impl SecaggDuties {
    pub fn new(identity: Arc<Identity>) -> Self {
        Self {
            identity,
            members: HashMap::new(),
            committee_time: Duration::ZERO,
            coordinator: None,
        }
    }

    /// Acts only on round plans signed by this coordinator key (pinned at join).
    pub fn pin_coordinator(&mut self, coordinator: ParticipantId) {
        self.coordinator = Some(coordinator);
    }

    /// Time spent checking, signing and revealing as a committee member so far.
    pub fn committee_time(&self) -> Duration {
        self.committee_time
    }

    /// Quantizes `delta` (already clipped) with weight `num_samples` (capped at the job's
    /// max_samples), masks it for the training task's round plan and uploads it. Returns the
    /// weight used and the encoded bytes sent.
    pub async fn upload(
        &mut self,
        client: &mut Client,
        spec: &JobSpec,
        job_id: &str,
        task: &v1::TrainTask,
        delta: Vec<f32>,
        num_samples: u64,
    ) -> Result<(u64, usize), ParticipantError> {
        let masked = self.mask(spec, job_id, task, delta, num_samples).await?;
        let weight = masked.weight;
        let (_, bytes) = client.send_upload(masked.messages).await?;
        Ok((weight, bytes))
    }

    /// The CPU part of [`SecaggDuties::upload`]: quantize, mask, seal, sign and encode the
    /// upload stream (and take up the committee role, if this participant has one).
    pub async fn mask(
        &mut self,
        spec: &JobSpec,
        job_id: &str,
        task: &v1::TrainTask,
        delta: Vec<f32>,
        num_samples: u64,
    ) -> Result<MaskedUpload, ParticipantError> {
        let round = task.round;
        let plan = task.secagg.as_ref().ok_or_else(|| {
            ParticipantError::Config("the training task has no secure-aggregation plan".into())
        })?;
        let settings = *spec.secagg().ok_or_else(|| {
            ParticipantError::Config(
                "coordinator sent a secure-aggregation plan for a plain job".into(),
            )
        })?;
        if let Some(coordinator) = &self.coordinator {
            verify_plan(plan, job_id, round, coordinator)?;
        }
        let config = RoundConfig::from_plan(job_id, round, plan)?;
        let weight = num_samples.min(settings.quant.max_samples());
        let (rc, id) = (config.clone(), Arc::clone(&self.identity));
        let job = job_id.to_string();
        let messages = blocking(move || {
            let q = settings.quant.encode(&delta, weight, &mut rand::rng())?;
            let (masked, manifest) = contribute(&rc, &id, q)?;
            Ok(masked_upload_messages(
                &id,
                &job,
                round,
                &masked,
                manifest.to_wire(),
            ))
        })
        .await?;
        if config
            .member_position(&self.identity.participant_id())
            .is_some()
        {
            self.members
                .insert(round, Member::new(config, Arc::clone(&self.identity))?);
        }
        Ok(MaskedUpload { weight, messages })
    }

    /// Checks and signs a round's statement; returns what happened.
    pub async fn sign(
        &mut self,
        client: &mut Client,
        job_id: &str,
        task: v1::CommitteeSignTask,
    ) -> Result<Event, ParticipantError> {
        let round = task.round;
        if !self.members.contains_key(&round) {
            return Ok(Event::CommitteeRefused {
                round,
                reason: "not a committee member of this round".into(),
            });
        }
        let statement = Statement::from_wire(job_id, round, &task.statement.unwrap_or_default())?;
        let views = task
            .views
            .iter()
            .map(|v| MemberView::from_wire(job_id, round, v))
            .collect::<Result<Vec<_>, _>>()?;
        // Opening and checking every upload's box is CPU work: off the async threads.
        let mut member = self.members.remove(&round).expect("checked above");
        let (member, signed, took) = blocking(move || {
            let started = ThreadCpu::now();
            let signed = member.sign_statement(&statement, &views);
            Ok((member, signed, started.elapsed()))
        })
        .await?;
        self.committee_time += took;
        self.members.insert(round, member);
        match signed {
            Ok(approval) => {
                client
                    .submit_approval(job_id, round, &approval.statement_hash, approval.signature)
                    .await?;
                // While the other members' approvals come in, expand this member's partial
                // sum (released only once `t` approvals are shown, in `reveal`).
                let mut member = self.members.remove(&round).expect("inserted above");
                let (member, took) = blocking(move || {
                    let started = ThreadCpu::now();
                    member.prepare_partial();
                    Ok((member, started.elapsed()))
                })
                .await?;
                self.committee_time += took;
                self.members.insert(round, member);
                Ok(Event::CommitteeSigned { round })
            }
            Err(e) => Ok(Event::CommitteeRefused {
                round,
                reason: e.to_string(),
            }),
        }
    }

    /// Reveals this member's partial sum and shares once the statement is approved.
    pub async fn reveal(
        &mut self,
        client: &mut Client,
        job_id: &str,
        task: v1::CommitteeRevealTask,
    ) -> Result<Event, ParticipantError> {
        let round = task.round;
        let Some(member) = self.members.get_mut(&round) else {
            return Ok(Event::CommitteeRefused {
                round,
                reason: "not a committee member of this round".into(),
            });
        };
        let approvals = task
            .approvals
            .iter()
            .map(Approval::from_wire)
            .collect::<Result<Vec<_>, _>>()?;
        let started = ThreadCpu::now();
        let revealed = member.reveal(&approvals);
        self.committee_time += started.elapsed();
        match revealed {
            Ok(reveal) => {
                let shares = reveal.shares.iter().map(|s| s.to_wire()).collect();
                client
                    .submit_reveal(
                        job_id,
                        round,
                        &reveal.statement_hash,
                        &reveal.partial,
                        shares,
                    )
                    .await?;
                self.members.remove(&round);
                Ok(Event::CommitteeRevealed { round })
            }
            Err(e) => Ok(Event::CommitteeRefused {
                round,
                reason: e.to_string(),
            }),
        }
    }
}
