//! A secure job's committee-draw entropy, gathered once before its first round (DESIGN.md,
//! "A round", step 1; the construction and its residual bias are in
//! `conclave_crypto::committee`). The coordinator fixes a pool — every admitted participant
//! that has not failed to reveal in an earlier attempt — in a `draw_pool` entry, asks each pool
//! member for the next link of its draw chain, checks each link against the member's
//! commitment and signature, and once every member revealed records them (`draw_reveals`,
//! complete) and opens round 1 in the same transaction. If the attempt's deadline passes with
//! links missing, it records what it got (incomplete): the missing members are left out of
//! every later pool, and the next attempt starts. Reveals are held in memory; a restarted
//! coordinator asks again for the open attempt (a link is fixed by the commitment, so asking
//! twice reveals nothing new).

use std::collections::{BTreeMap, HashSet};

use conclave_crypto::ParticipantId;
use conclave_crypto::committee::{self, CHAIN_LEN, is_link, pool_hash};
use conclave_ledger::signed::{draw_reveal_digest, signed_by};
use conclave_ledger::{Batch, Payload};
use conclave_proto::v1;

use crate::job::Job;
use crate::state::now_ms;
use crate::store::Store;
use crate::{CoordinatorError, State};

/// A draw attempt whose pool is fixed: the links gathered so far.
pub(crate) struct Gathering {
    pub attempt: u32,
    pub pool: Vec<ParticipantId>,
    /// The pool as a set, for the work streams' membership question.
    pub members: HashSet<ParticipantId>,
    pub pool_hash: [u8; 32],
    /// member → (link, signature)
    pub reveals: BTreeMap<ParticipantId, ([u8; 32], Vec<u8>)>,
    pub deadline: u64,
}

impl Gathering {
    fn new(job_id: &str, attempt: u32, pool: Vec<ParticipantId>, deadline: u64) -> Self {
        Self {
            pool_hash: pool_hash(job_id, attempt, &pool),
            attempt,
            members: pool.iter().cloned().collect(),
            pool,
            reveals: BTreeMap::new(),
            deadline,
        }
    }

    /// The work item asking a pool member for its link.
    pub fn task(&self) -> v1::DrawTask {
        v1::DrawTask {
            attempt: self.attempt,
            pool: self.pool.iter().map(|p| p.to_string()).collect(),
        }
    }
}

impl Job {
    /// Fixes the next draw attempt's pool, when no attempt is open and the draw is not done:
    /// the first pool is every admitted participant, once `start_participants` have joined;
    /// each later one is exactly those who revealed in the attempt before (newcomers train,
    /// but do not join a retry: a retry costs the coordinator a pool member every time).
    /// Recorded in `batch`.
    pub fn start_draw_attempt(&mut self, now: u64, batch: &mut Batch<'_>) {
        if self.record.draw.open.is_some() || self.record.draw.entropy.is_some() {
            return;
        }
        let attempt = self.record.draw.next_attempt;
        let dids: Vec<String> = if attempt == 0 {
            if self.record.participants.len() < self.spec.start_participants as usize {
                return;
            }
            self.record
                .participants
                .iter()
                .map(|p| p.did.clone())
                .collect()
        } else {
            self.record.draw.last_revealers.clone()
        };
        let mut pool: Vec<ParticipantId> = dids
            .iter()
            .filter_map(|d| ParticipantId::parse(d).ok())
            .collect();
        pool.sort();
        if pool.len() < self.spec.min_participants as usize {
            tracing::error!(job = %self.record.id, "too few participants revealed their draw links: the job cannot start");
            return;
        }
        if attempt >= CHAIN_LEN {
            tracing::error!(job = %self.record.id, "no draw attempts left: the job cannot start");
            return;
        }
        let dids: Vec<String> = pool.iter().map(|p| p.to_string()).collect();
        batch.push(Payload::DrawPool(v1::DrawPool {
            job_id: self.record.id.clone(),
            attempt,
            participants: dids.clone(),
        }));
        self.record.draw.open = Some((attempt, dids));
        let deadline = now + self.spec.round_deadline_secs as u64 * 1000;
        self.gathering = Some(Gathering::new(&self.record.id, attempt, pool, deadline));
        tracing::info!(job = %self.record.id, attempt, "draw pool fixed: gathering chain links");
    }

    /// After a restart: gathers again for the attempt the record says is open.
    pub fn resume_draw(&mut self, now: u64) {
        if self.gathering.is_some() {
            return;
        }
        if let Some((attempt, dids)) = &self.record.draw.open {
            let pool = dids
                .iter()
                .filter_map(|d| ParticipantId::parse(d).ok())
                .collect();
            let deadline = now + self.spec.round_deadline_secs as u64 * 1000;
            self.gathering = Some(Gathering::new(&self.record.id, *attempt, pool, deadline));
        }
    }

    /// Moves the draw on: once every pool member revealed, records the links and opens round
    /// 1; once the deadline passed, records what it got and starts the next attempt. Returns
    /// when to look again.
    pub fn draw_step(&mut self, store: &Store, now: u64) -> Result<Option<u64>, CoordinatorError> {
        let Some(g) = &self.gathering else {
            return Ok(None);
        };
        let complete = g.reveals.len() == g.pool.len();
        if !complete && now < g.deadline {
            return Ok(Some(g.deadline));
        }
        let mut record = self.record.clone();
        let reveals: Vec<v1::DrawValue> = g
            .reveals
            .iter()
            .map(|(p, (value, signature))| v1::DrawValue {
                participant: p.to_string(),
                value: value.to_vec(),
                signature: signature.clone(),
            })
            .collect();
        let mut batch = store.batch(now);
        batch.push(Payload::DrawReveals(v1::DrawReveals {
            job_id: record.id.clone(),
            attempt: g.attempt,
            reveals,
            complete,
            pool_hash: g.pool_hash.to_vec(),
        }));
        record.draw.open = None;
        if complete {
            let links: Vec<[u8; 32]> = g.reveals.values().map(|(v, _)| *v).collect();
            let entropy = committee::draw_entropy(&g.pool_hash, &links);
            record.draw.entropy = Some(hex::encode(entropy));
            tracing::info!(job = %record.id, attempt = g.attempt, "draw complete");
        } else {
            for p in &g.pool {
                if !g.reveals.contains_key(p) {
                    record.draw.excluded.push(p.to_string());
                }
            }
            record.draw.last_revealers = g.reveals.keys().map(|p| p.to_string()).collect();
            record.draw.next_attempt = g.attempt + 1;
            tracing::warn!(job = %record.id, attempt = g.attempt, missing = g.pool.len() - g.reveals.len(), "draw attempt incomplete: the missing members leave the pool");
        }
        let before = std::mem::replace(&mut self.record, record);
        let gathering = self.gathering.take();
        if complete {
            self.open_next_round(now, &mut batch);
        } else {
            self.start_draw_attempt(now, &mut batch);
        }
        if let Err(e) = self.commit(store, batch, true) {
            self.record = before;
            self.mode.rules_mut().forget_round();
            self.gathering = gathering;
            return Err(e);
        }
        self.bump();
        Ok(self
            .gathering
            .as_ref()
            .map(|g| g.deadline)
            .or_else(|| self.open_round().map(|r| r.deadline_unix_ms)))
    }
}

impl State {
    /// Records a pool member's draw-chain link for the open attempt, after checking it against
    /// the member's commitment and its signature over the attempt and the pool.
    pub fn submit_draw_reveal(&self, req: &v1::DrawRevealRequest) -> Result<(), CoordinatorError> {
        let signer = self.authenticate(req)?;
        let did = signer.did.clone();
        let value: [u8; 32] =
            req.value.as_slice().try_into().map_err(|_| {
                CoordinatorError::InvalidRequest("a draw link must be 32 bytes".into())
            })?;
        self.with_job(&req.job_id, |job, _| {
            job.require_joined(&did)?;
            let commitment = job
                .index
                .participant(did.as_str())
                .and_then(|i| hex::decode(&job.record.participants[i].draw_commitment).ok())
                .and_then(|c| <[u8; 32]>::try_from(c).ok())
                .ok_or_else(|| {
                    CoordinatorError::InvalidRequest("no draw commitment at join".into())
                })?;
            let job_id = job.id().to_string();
            let g = job
                .gathering
                .as_mut()
                .filter(|g| g.attempt == req.attempt)
                .ok_or_else(|| {
                    CoordinatorError::InvalidRequest(format!(
                        "draw attempt {} is not open",
                        req.attempt
                    ))
                })?;
            if !g.members.contains(&did) {
                return Err(CoordinatorError::InvalidRequest(format!(
                    "{did} is not in draw attempt {}'s pool",
                    req.attempt
                )));
            }
            if req.pool_hash != g.pool_hash {
                return Err(CoordinatorError::InvalidRequest(
                    "the reveal names another pool than this attempt's".into(),
                ));
            }
            if !is_link(&commitment, g.attempt + 1, &value) {
                return Err(CoordinatorError::InvalidRequest(
                    "the link does not match the draw commitment made at join".into(),
                ));
            }
            let digest = draw_reveal_digest(&job_id, g.attempt, &g.pool_hash, &did, &value);
            if !signed_by(&did, &digest, &req.signature) {
                return Err(CoordinatorError::BadAuth(
                    "the reveal's signature does not verify".into(),
                ));
            }
            job.nonces.consume(&signer, now_ms())?;
            let g = job.gathering.as_mut().expect("checked above");
            if let std::collections::btree_map::Entry::Vacant(e) = g.reveals.entry(did) {
                e.insert((value, req.signature.clone()));
                job.bump();
            }
            Ok(())
        })
    }
}
