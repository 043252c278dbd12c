//! What a participant's work stream is sent, and when a stream is woken. A job's work streams
//! are woken only when its [`WorkEpoch`] changes — a round opens, a secure round moves to its
//! next phase, a draw attempt starts, the model moves on, the job ends — because only those
//! make new work. An upload or a report by one participant makes work for nobody else; waking
//! all N streams for each of a round's N uploads cost N² passes under the job's lock, each
//! walking lists of N. The passes that remain ask their membership questions of an [`Index`]
//! kept beside the record, so a stream with nothing new costs O(1).

use std::collections::{HashMap, HashSet};

use conclave_crypto::ParticipantId;
use conclave_proto::v1::{self, work_item::Item};

use crate::CoordinatorError;
use crate::State;
use crate::job::Job;
use crate::mode::secagg::Phase;
use crate::store::{JobRecord, RoundStatus};

/// What a participant's work stream has already been sent.
#[derive(Clone, Debug, Default)]
pub struct WorkCursor {
    evaluated: Option<u32>,
    trained: Option<u32>,
    drawn: Option<u32>,
    pub(crate) checked: Option<u32>,
    pub(crate) signed: Option<u32>,
    pub(crate) revealed: Option<u32>,
    done: bool,
}

impl WorkCursor {
    /// Whether the job is over for this stream.
    pub fn is_done(&self) -> bool {
        self.done
    }
}

/// Everything the items of [`State::pending_work`] depend on, apart from the participant's own
/// progress (its own uploads, reports, reveals and checks, which make no work for it) and the
/// cursor. Two equal epochs give every participant the same items, so streams need waking
/// only when it changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkEpoch {
    model_version: u32,
    /// The open draw attempt.
    draw: Option<u32>,
    /// The open round and how many it expects.
    round: Option<(u32, usize)>,
    /// The secure round's number, phase and whether its statement is out.
    secagg: Option<(u32, Phase, bool)>,
    finished: bool,
}

impl WorkEpoch {
    pub fn of(job: &Job) -> Self {
        Self {
            model_version: job.record.model_version,
            draw: job.gathering.as_ref().map(|g| g.attempt),
            round: job.open_round().map(|r| (r.round, r.expected.len())),
            secagg: job.mode.rules().epoch(),
            finished: job.record.finished,
        }
    }
}

/// Sets kept beside a job's record, so that membership questions do not walk its lists: who
/// joined; of the open round, who is expected, who uploaded and who is still missing; who
/// reported on each model version. The record's lists only grow between two points where the
/// job is settled (a failed change puts back what it added before the job's lock is released),
/// and a new round replaces the round's lists, so [`Index::sync`] at those points takes in
/// only what was added since.
#[derive(Debug, Default)]
pub(crate) struct Index {
    /// did → its place in the record's participants.
    joined: HashMap<String, usize>,
    joined_seen: usize,
    round: Option<u32>,
    expected: HashSet<String>,
    uploaded: HashSet<String>,
    missing: HashSet<String>,
    reports: HashMap<u32, (HashSet<String>, usize)>,
}

impl Index {
    /// Takes in what the record gained since the last call (see the type's doc).
    pub fn sync(&mut self, record: &JobRecord) {
        if record.participants.len() < self.joined_seen {
            *self = Self::default();
        }
        for (i, p) in record
            .participants
            .iter()
            .enumerate()
            .skip(self.joined_seen)
        {
            self.joined.insert(p.did.clone(), i);
        }
        self.joined_seen = record.participants.len();
        match record
            .rounds
            .last()
            .filter(|r| r.status == RoundStatus::Open)
        {
            Some(open) => {
                if self.round != Some(open.round) || open.uploads.len() < self.uploaded.len() {
                    self.round = Some(open.round);
                    self.expected = open.expected.iter().cloned().collect();
                    self.missing = self.expected.clone();
                    self.uploaded.clear();
                }
                for u in &open.uploads[self.uploaded.len()..] {
                    self.missing.remove(&u.did);
                    self.uploaded.insert(u.did.clone());
                }
            }
            None => {
                self.round = None;
                self.expected.clear();
                self.uploaded.clear();
                self.missing.clear();
            }
        }
        self.reports
            .retain(|v, _| record.evaluations.contains_key(v));
        for (version, list) in &record.evaluations {
            let (dids, seen) = self.reports.entry(*version).or_default();
            if list.len() < *seen {
                dids.clear();
                *seen = 0;
            }
            for e in &list[*seen..] {
                dids.insert(e.did.clone());
            }
            *seen = list.len();
        }
    }

    pub fn is_joined(&self, did: &str) -> bool {
        self.joined.contains_key(did)
    }

    /// Where `did` is in the record's participants, if it joined.
    pub fn participant(&self, did: &str) -> Option<usize> {
        self.joined.get(did).copied()
    }

    /// Whether the open round `round` expects `did`.
    pub fn expects(&self, round: u32, did: &str) -> bool {
        self.round == Some(round) && self.expected.contains(did)
    }

    /// Whether `did` uploaded to the open round `round`.
    pub fn uploaded(&self, round: u32, did: &str) -> bool {
        self.round == Some(round) && self.uploaded.contains(did)
    }

    /// Who the open round still waits for.
    pub fn missing(&self) -> impl Iterator<Item = &String> {
        self.missing.iter()
    }

    pub fn reported(&self, version: u32, did: &str) -> bool {
        self.reports
            .get(&version)
            .is_some_and(|(dids, _)| dids.contains(did))
    }
}

impl Job {
    /// Brings what is derived from the job's state up to date, at a point where it is settled
    /// (before and after each change under the job's lock): the index, the round clock, and
    /// the work streams, which are woken if the work epoch changed.
    pub fn settle(&mut self) {
        self.index.sync(&self.record);
        self.observe_phase();
        let epoch = WorkEpoch::of(self);
        if epoch != self.epoch {
            self.epoch = epoch;
            self.changes.send_modify(|v| *v += 1);
        }
    }
}

impl State {
    /// The work items a participant has not been sent yet, in the order to do them.
    pub fn pending_work(
        &self,
        job_id: &str,
        did: &ParticipantId,
        cursor: &mut WorkCursor,
    ) -> Result<Vec<v1::WorkItem>, CoordinatorError> {
        self.with_job(job_id, |job, _| {
            let mut items = Vec::new();
            if cursor.done {
                return Ok(Vec::new());
            }
            let r = &job.record;
            let v = r.model_version;
            if cursor.evaluated != Some(v) && !job.index.reported(v, did.as_str()) {
                items.push(Item::Evaluate(v1::EvaluateTask {
                    model_version: v,
                    model_hash: job.model_hash(v),
                }));
                cursor.evaluated = Some(v);
            }
            if let Some(g) = &job.gathering
                && g.members.contains(did)
                && !g.reveals.contains_key(did)
                && cursor.drawn != Some(g.attempt)
            {
                items.push(Item::Draw(g.task()));
                cursor.drawn = Some(g.attempt);
            }
            if let Some(round) = job.open_round() {
                let wanted = job.index.expects(round.round, did.as_str())
                    && !job.index.uploaded(round.round, did.as_str());
                if wanted
                    && cursor.trained != Some(round.round)
                    && let Some(plan) = job.mode.rules().train_plan(round.round)
                {
                    items.push(Item::Train(v1::TrainTask {
                        round: round.round,
                        model_version: round.base_version,
                        model_hash: job.model_hash(round.base_version),
                        deadline_unix_ms: round.deadline_unix_ms,
                        secagg: plan,
                    }));
                    cursor.trained = Some(round.round);
                }
            }
            job.mode.rules().member_work(did, cursor, &mut items)?;
            if r.finished {
                items.push(Item::Done(v1::JobDone {
                    state: v1::JobState::Finished.into(),
                    final_model_version: v,
                }));
                cursor.done = true;
            }
            Ok(items
                .into_iter()
                .map(|item| v1::WorkItem { item: Some(item) })
                .collect())
        })
    }
}
