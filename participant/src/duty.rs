//! A participant's secure-aggregation duties, independent of how its update was produced:
//! check a round plan against its pin and its ledger replica and remember it, mask and upload
//! an update under it, and, when on the round's committee, check every upload's box (filing
//! signed complaints), sign the round's one statement (remembered durably first) and reveal
//! what it allows; before a job's first round, reveal its draw-chain link for the pool it is
//! shown. Used by [`run`](crate::run) and by benchmarks that upload synthetic updates.
//!
//! Refusals are [`ParticipantError::Refused`]: the caller reports them and stays connected.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use conclave_aggregation::JobSpec;
use conclave_aggregation::secagg::{
    Approval, Member, MemberView, RoundConfig, Statement, contribute, plan_digest,
};
use conclave_crypto::committee::{DrawChain, pool_hash};
use conclave_crypto::{Identity, ParticipantId};
use conclave_ledger::signed::draw_reveal_digest;
use conclave_proto::v1;
use prost::Message;

use crate::client::{Client, masked_upload_messages};
use crate::ledger_sync::Follower;
use crate::memory::Memory;
use crate::plan::{check_plan, check_task_model};
use crate::policy::Pin;
use crate::{Event, ParticipantError};

/// Accepted plans kept for reuse at upload: the current round's and a few before it.
const ACCEPTED_KEPT: usize = 4;

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

/// One participant's secure-aggregation duties in one job.
pub struct SecaggDuties {
    identity: Arc<Identity>,
    pin: Pin,
    memory: Memory,
    ledger: Follower,
    /// The committee roles this participant holds, by round.
    members: HashMap<u32, Member>,
    /// The plans this process checked and accepted, by round (the latest few): masking under
    /// one of them reuses its check (see [`SecaggDuties::mask`]).
    accepted: BTreeMap<u32, RoundConfig>,
    committee_time: Duration,
    /// The most failed draw attempts accepted ([`crate::Policy::max_draw_retries`]).
    max_draw_retries: u32,
}

impl SecaggDuties {
    /// The duties of `identity` in the pinned job, remembering in `state_dir` and checking
    /// plans against a replica of the ledger of the coordinator at `url`.
    pub async fn open(
        identity: Arc<Identity>,
        pin: Pin,
        state_dir: &Path,
        url: &str,
    ) -> Result<Self, ParticipantError> {
        let memory = Memory::open(state_dir, &pin.job_id)?;
        let replica = Memory::replica_path(state_dir, pin.coordinator.as_str());
        let ledger = Follower::open(url, Some(Arc::clone(&identity)), &replica)
            .await
            .map_err(|e| ParticipantError::State(format!("ledger replica: {e}")))?;
        Ok(Self {
            identity,
            pin,
            memory,
            ledger,
            members: HashMap::new(),
            accepted: BTreeMap::new(),
            committee_time: Duration::ZERO,
            max_draw_retries: crate::policy::DEFAULT_MAX_DRAW_RETRIES,
        })
    }

    /// Accepts at most this many failed draw attempts before the first round.
    pub fn with_max_draw_retries(mut self, retries: u32) -> Self {
        self.max_draw_retries = retries;
        self
    }

    /// Time spent checking, signing and revealing as a committee member so far.
    pub fn committee_time(&self) -> Duration {
        self.committee_time
    }

    fn job_id(&self) -> &str {
        &self.pin.job_id
    }

    /// Brings the ledger replica up to date (a failure to verify it is a refusal: the
    /// coordinator served a ledger that breaks the protocol or rewrote what it served).
    async fn catch_up(&mut self) -> Result<(), ParticipantError> {
        self.ledger.catch_up().await.map_err(|e| match e {
            crate::ledger_sync::SyncError::Connect(e) => e,
            other => ParticipantError::Refused(format!("the coordinator's ledger: {other}")),
        })?;
        if self
            .ledger
            .replica()
            .signer()
            .is_some_and(|s| s != self.pin.coordinator.as_str())
        {
            return Err(ParticipantError::Refused(
                "the ledger is signed by another key than the pinned coordinator's".into(),
            ));
        }
        Ok(())
    }

    /// Checks a training task's plan against the pin and the ledger, remembers it (refusing
    /// another plan for a round that already has one), and takes up the committee role if
    /// this participant has one. Returns the round's configuration.
    pub async fn accept_plan(
        &mut self,
        task: &v1::TrainTask,
    ) -> Result<RoundConfig, ParticipantError> {
        let plan = task.secagg.as_ref().ok_or_else(|| {
            ParticipantError::Refused(format!(
                "round {}: a training task without a secure-aggregation plan in a secure job (a downgrade to plain)",
                task.round
            ))
        })?;
        self.catch_up().await?;
        let me = self.identity.participant_id();
        let job = self.ledger.replica().job(self.job_id());
        let retries = job.as_ref().map_or(0, |j| j.draw.next_attempt);
        if retries > self.max_draw_retries {
            return Err(ParticipantError::Refused(format!(
                "round {}: the committee draw took {retries} failed attempts, more than this participant accepts ({}): each gave the coordinator another draw to choose from",
                task.round, self.max_draw_retries
            )));
        }
        let config = check_plan(&self.pin, job.as_ref(), task, &me).map_err(|reason| {
            ParticipantError::Refused(format!("round {}: {reason}", task.round))
        })?;
        self.memory
            .remember_plan(task.round, &config.plan_hash, &plan.encode_to_vec())?;
        self.refuse_if_uploaded(task.round)?;
        self.take_up_role(task.round, config.clone())?;
        self.accepted.insert(task.round, config.clone());
        while self.accepted.len() > ACCEPTED_KEPT {
            self.accepted.pop_first();
        }
        Ok(config)
    }

    /// The configuration of `task`'s plan if this process already accepted that very plan
    /// (the same digest) for its round, and has not uploaded in the round since.
    ///
    /// Why the check need not run again: [`SecaggDuties::accept_plan`] checked this plan
    /// against the pin and against the replica's job (committee = the draw, sealing keys =
    /// the admissions, base model, threshold), and remembered it durably. Each of those is
    /// fixed by entries before the round opened, and a replica only ever grows by verified
    /// entries after its head (a rewrite is refused at the next catch-up), so a second check
    /// of the same plan could only give the same answer. A task carrying any other plan for
    /// the round takes the full path, where the remembered plan refuses it. What the check
    /// compares of the task itself rather than its plan (the model it names against the
    /// plan's base model) is compared again here: a re-sent task may carry the same plan with
    /// another model. (The one fact that can change after acceptance is the round's close; an
    /// upload after it cannot be recorded, and the coordinator chooses when to close anyway.)
    fn accepted_plan(&self, task: &v1::TrainTask) -> Result<Option<RoundConfig>, ParticipantError> {
        let (Some(plan), Some(config)) = (&task.secagg, self.accepted.get(&task.round)) else {
            return Ok(None);
        };
        if plan_digest(self.job_id(), task.round, plan) != config.plan_hash {
            return Ok(None);
        }
        check_task_model(task, plan).map_err(|reason| {
            ParticipantError::Refused(format!("round {}: {reason}", task.round))
        })?;
        self.refuse_if_uploaded(task.round)?;
        Ok(Some(config.clone()))
    }

    /// Refuses a task for a round whose upload the coordinator already accepted (a re-sent
    /// task: one upload per round).
    fn refuse_if_uploaded(&self, round: u32) -> Result<(), ParticipantError> {
        if self.memory.round(round)?.is_some_and(|r| r.uploaded) {
            return Err(ParticipantError::Refused(format!(
                "round {round}: this participant's upload was already accepted (a re-sent task)"
            )));
        }
        Ok(())
    }

    /// Sets up the member state of a round whose plan was accepted, if this participant is on
    /// its committee, restoring the statement it signed in an earlier life.
    fn take_up_role(&mut self, round: u32, config: RoundConfig) -> Result<(), ParticipantError> {
        if self.members.contains_key(&round)
            || config
                .member_position(&self.identity.participant_id())
                .is_none()
        {
            return Ok(());
        }
        let mut member = Member::new(config, Arc::clone(&self.identity))?;
        if let Some(h) = self.memory.round(round)?.and_then(|r| r.statement) {
            let hash: [u8; 32] = hex::decode(&h)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| ParticipantError::State(format!("round {round}: bad statement")))?;
            member.restore_signed(hash);
        }
        self.members.insert(round, member);
        Ok(())
    }

    /// The member state of a round: in memory, or rebuilt from the plan this participant
    /// remembered (after a restart of its process).
    fn member(&mut self, round: u32) -> Result<Option<Member>, ParticipantError> {
        if let Some(m) = self.members.remove(&round) {
            return Ok(Some(m));
        }
        let Some(record) = self.memory.round(round)? else {
            return Ok(None);
        };
        let plan = hex::decode(&record.plan)
            .ok()
            .and_then(|b| v1::SecaggPlan::decode(b.as_slice()).ok())
            .ok_or_else(|| ParticipantError::State(format!("round {round}: bad stored plan")))?;
        let config = RoundConfig::from_plan(self.job_id(), round, &plan)?;
        self.take_up_role(round, config)?;
        Ok(self.members.remove(&round))
    }

    /// Quantizes `delta` (already clipped) with weight `num_samples` (capped at the job's
    /// max_samples), masks it for the training task's round plan and uploads it. Returns the
    /// weight used and the encoded bytes sent.
    pub async fn upload(
        &mut self,
        client: &mut Client,
        spec: &JobSpec,
        task: &v1::TrainTask,
        delta: Vec<f32>,
        num_samples: u64,
    ) -> Result<(u64, usize), ParticipantError> {
        let masked = self.mask(spec, task, delta, num_samples).await?;
        let weight = masked.weight;
        let (_, bytes) = client.send_upload(masked.messages).await?;
        self.memory.mark_uploaded(task.round)?;
        Ok((weight, bytes))
    }

    /// The CPU part of [`SecaggDuties::upload`]: check and remember the plan (or, for the plan
    /// [`SecaggDuties::accept_plan`] already accepted for the round, compare the task with it),
    /// quantize, mask, seal, sign and encode the upload stream.
    pub async fn mask(
        &mut self,
        spec: &JobSpec,
        task: &v1::TrainTask,
        delta: Vec<f32>,
        num_samples: u64,
    ) -> Result<MaskedUpload, ParticipantError> {
        let round = task.round;
        // The runner accepts a task's plan on arrival, before training; the same plan is not
        // checked twice (see `accepted_plan`), so training time adds no catch-up here.
        let config = match self.accepted_plan(task)? {
            Some(config) => config,
            None => self.accept_plan(task).await?,
        };
        let settings = *spec.secagg().ok_or_else(|| {
            ParticipantError::Config("a secure-aggregation plan for a plain job".into())
        })?;
        let weight = num_samples.min(settings.quant.max_samples());
        let id = Arc::clone(&self.identity);
        let job = self.job_id().to_string();
        let messages = blocking(move || {
            let q = settings.quant.encode(&delta, weight, &mut rand::rng())?;
            let (masked, manifest) = contribute(&config, &id, q)?;
            Ok(masked_upload_messages(
                &id,
                &job,
                round,
                &masked,
                manifest.to_wire(),
                manifest.hash(),
            ))
        })
        .await?;
        Ok(MaskedUpload { weight, messages })
    }

    /// Opens this member's box in every upload and reports the boxes it cannot use (signed
    /// complaints), before any statement.
    pub async fn check(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeCheckTask,
    ) -> Result<Event, ParticipantError> {
        let round = task.round;
        let Some(mut member) = self.member(round)? else {
            return Ok(refused(round, "not a committee member of this round"));
        };
        let job = self.job_id().to_string();
        let views = task
            .views
            .iter()
            .map(|v| MemberView::from_wire(&job, round, v))
            .collect::<Result<Vec<_>, _>>();
        let views = match views {
            Ok(v) => v,
            Err(e) => {
                self.members.insert(round, member);
                return Ok(refused(round, &e.to_string()));
            }
        };
        let (member, checked, took) = blocking(move || {
            let started = ThreadCpu::now();
            let checked = member.check(&views);
            Ok((member, checked, started.elapsed()))
        })
        .await?;
        self.committee_time += took;
        self.members.insert(round, member);
        match checked {
            Ok(complaints) => {
                let wire = complaints.iter().map(|c| c.to_wire()).collect();
                client.submit_check(&job, round, wire).await?;
                Ok(Event::CommitteeChecked {
                    round,
                    complaints: complaints.len(),
                })
            }
            Err(e) => Ok(refused(round, &e.to_string())),
        }
    }

    /// Checks and signs a round's statement; returns what happened. The statement is
    /// remembered durably before the approval leaves.
    pub async fn sign(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeSignTask,
    ) -> Result<Event, ParticipantError> {
        let round = task.round;
        let Some(mut member) = self.member(round)? else {
            return Ok(refused(round, "not a committee member of this round"));
        };
        let job = self.job_id().to_string();
        let parsed = Statement::from_wire(&job, round, &task.statement.unwrap_or_default())
            .and_then(|s| {
                let views = task
                    .views
                    .iter()
                    .map(|v| MemberView::from_wire(&job, round, v))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((s, views))
            });
        let (statement, views) = match parsed {
            Ok(p) => p,
            Err(e) => {
                self.members.insert(round, member);
                return Ok(refused(round, &e.to_string()));
            }
        };
        // Opening and checking every upload's box is CPU work: off the async threads.
        let (member, signed, took) = blocking(move || {
            let started = ThreadCpu::now();
            let signed = member.sign_statement(&statement, &views);
            Ok((member, signed, started.elapsed()))
        })
        .await?;
        self.committee_time += took;
        self.members.insert(round, member);
        let approval = match signed {
            Ok(approval) => approval,
            Err(e) => return Ok(refused(round, &e.to_string())),
        };
        // Durable before the signature leaves: a restarted process signs nothing else.
        self.memory
            .remember_statement(round, &approval.statement_hash)?;
        client
            .submit_approval(&job, round, &approval.statement_hash, approval.signature)
            .await?;
        // While the other members' approvals come in, expand this member's partial sum
        // (released only once `t` approvals are shown, in `reveal`).
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

    /// Reveals this member's partial sum and shares once the statement is approved.
    pub async fn reveal(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeRevealTask,
    ) -> Result<Event, ParticipantError> {
        let round = task.round;
        let Some(mut member) = self.member(round)? else {
            return Ok(refused(round, "not a committee member of this round"));
        };
        let approvals = task
            .approvals
            .iter()
            .map(Approval::from_wire)
            .collect::<Result<Vec<_>, _>>();
        let approvals = match approvals {
            Ok(a) => a,
            Err(e) => {
                self.members.insert(round, member);
                return Ok(refused(round, &e.to_string()));
            }
        };
        let started = ThreadCpu::now();
        let revealed = member.reveal(&approvals);
        self.committee_time += started.elapsed();
        self.members.insert(round, member);
        match revealed {
            Ok(reveal) => {
                let shares = reveal.shares.iter().map(|s| s.to_wire()).collect();
                client
                    .submit_reveal(
                        self.job_id(),
                        round,
                        &reveal.statement_hash,
                        &reveal.partial,
                        shares,
                    )
                    .await?;
                Ok(Event::CommitteeRevealed { round })
            }
            Err(e) => Ok(refused(round, &e.to_string())),
        }
    }

    /// Reveals this participant's draw-chain link for a draw attempt, once the ledger shows
    /// the attempt's pool as the task lists it, and never for two pools in one attempt.
    pub async fn draw(
        &mut self,
        client: &mut Client,
        task: v1::DrawTask,
    ) -> Result<Event, ParticipantError> {
        let attempt = task.attempt;
        let refuse = |reason: String| Ok(Event::DrawRefused { attempt, reason });
        let pool: Vec<ParticipantId> = match task
            .pool
            .iter()
            .map(|d| ParticipantId::parse(d))
            .collect::<Result<_, _>>()
        {
            Ok(p) => p,
            Err(e) => return refuse(e.to_string()),
        };
        let me = self.identity.participant_id();
        if !pool.contains(&me) {
            return refuse("this participant is not in the pool".into());
        }
        if attempt >= conclave_crypto::committee::CHAIN_LEN {
            return refuse("no such draw attempt".into());
        }
        if let Err(e) = self.catch_up().await {
            return refuse(e.to_string());
        }
        let recorded = self
            .ledger
            .replica()
            .job(self.job_id())
            .and_then(|j| j.draw.open_attempt);
        if recorded != Some((attempt, pool.clone())) {
            return refuse("the pool is not the ledger's open draw attempt".into());
        }
        let hash = pool_hash(self.job_id(), attempt, &pool);
        if let Err(e) = self.memory.remember_draw(attempt, &hash) {
            return refuse(e.to_string());
        }
        let value = DrawChain::for_job(&self.identity, self.job_id()).value(attempt + 1);
        let signature = self.identity.sign(&draw_reveal_digest(
            self.job_id(),
            attempt,
            &hash,
            &me,
            &value,
        ));
        client
            .submit_draw_reveal(self.job_id(), attempt, &hash, &value, signature.to_vec())
            .await?;
        Ok(Event::DrawRevealed { attempt })
    }
}

fn refused(round: u32, reason: &str) -> Event {
    Event::CommitteeRefused {
        round,
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Masking reuses the check of a plan accepted for its round only for that very plan in a
    /// task naming the plan's base model: a task for the round with any other plan, or the
    /// plan in another round's task, goes through the full check (here it needs the
    /// coordinator's ledger, which is unreachable, so nothing is masked); a plan whose check
    /// failed is not kept; a round this participant already uploaded in is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn masking_reuses_only_the_plan_accepted_for_the_round() {
        let dir = tempfile::tempdir().unwrap();
        let spec = JobSpec::from_toml(crate::policy::TEST_SECAGG_SPEC).unwrap();
        let people: Vec<Arc<Identity>> = (0..3).map(|_| Arc::new(Identity::generate())).collect();
        let mut config = RoundConfig {
            job_id: "j-1".into(),
            round: 1,
            participants: people.iter().map(|p| p.public()).collect(),
            committee: people.iter().map(|p| p.public()).collect(),
            threshold: 2,
            min_participants: 2,
            len: spec.layout().dim() + 1,
            plan_hash: [0; 32],
        };
        let mut plan = config.to_plan([5; 32]);
        plan.base_version = 0;
        plan.base_model_hash = vec![3; 32];
        config.plan_hash = plan_digest("j-1", 1, &plan);
        let task = |plan: &v1::SecaggPlan| v1::TrainTask {
            round: 1,
            model_version: plan.base_version,
            model_hash: plan.base_model_hash.clone(),
            secagg: Some(plan.clone()),
            ..Default::default()
        };
        let pin = Pin {
            job_id: "j-1".into(),
            coordinator: Identity::generate().participant_id(),
            spec: spec.clone(),
        };
        // Nothing listens on port 1: any catch-up fails.
        let mut duties = SecaggDuties::open(
            Arc::clone(&people[0]),
            pin,
            dir.path(),
            "http://127.0.0.1:1",
        )
        .await
        .unwrap();
        let delta = vec![0.1f32; spec.layout().dim()];
        let unchecked = |r: Result<MaskedUpload, ParticipantError>, what: &str| match r {
            Err(ParticipantError::Connect { .. }) => {}
            Err(e) => panic!("{what}: expected the full check (a catch-up), got: {e}"),
            Ok(_) => panic!("{what}: masked without a check"),
        };

        // A plan whose check did not pass (no ledger to check it against) is not kept.
        assert!(duties.accept_plan(&task(&plan)).await.is_err());
        unchecked(
            duties.mask(&spec, &task(&plan), delta.clone(), 10).await,
            "after a failed acceptance",
        );

        // The state `accept_plan` leaves behind once its checks passed.
        duties
            .memory
            .remember_plan(1, &config.plan_hash, &plan.encode_to_vec())
            .unwrap();
        duties.accepted.insert(1, config.clone());
        let masked = duties
            .mask(&spec, &task(&plan), delta.clone(), 10)
            .await
            .expect("the accepted plan is reused without the coordinator");
        assert_eq!(masked.weight, 10);

        let mut other = plan.clone();
        other.threshold = 3;
        unchecked(
            duties.mask(&spec, &task(&other), delta.clone(), 10).await,
            "another plan for the accepted round",
        );
        let mut later = task(&plan);
        later.round = 2;
        unchecked(
            duties.mask(&spec, &later, delta.clone(), 10).await,
            "round 1's plan in a round 2 task",
        );
        let mut other_model = task(&plan);
        other_model.model_hash = vec![9; 32];
        match duties.mask(&spec, &other_model, delta.clone(), 10).await {
            Err(ParticipantError::Refused(why)) => assert!(why.contains("base model"), "{why}"),
            r => panic!(
                "a task naming another model was masked: {:?}",
                r.map(|m| m.weight)
            ),
        }

        duties.memory.mark_uploaded(1).unwrap();
        match duties.mask(&spec, &task(&plan), delta, 10).await {
            Err(ParticipantError::Refused(why)) => {
                assert!(why.contains("already accepted"), "{why}")
            }
            r => panic!(
                "a second upload in round 1 was not refused: {:?}",
                r.map(|m| m.weight)
            ),
        }
    }
}
