//! The `secagg` privacy mode (DESIGN.md step 3), the coordinator's part: each round's
//! committee drawn and its plan signed as it opens, the phases an open round goes through
//! (collect, check, statement, reveal) and the work members get in each, what the close
//! records (the statement, its answering members), and the approved sum unmasked. The round's
//! state is in [`round`]; what members send (checks, approvals, reveals) in [`committee`].

mod committee;
mod round;

pub(crate) use round::{Phase, SecaggRound};

use conclave_aggregation::secagg::Manifest;
use conclave_aggregation::{JobSpec, SecaggSettings};
use conclave_crypto::ParticipantId;
use conclave_ledger::verify::OpenRound;
use conclave_proto::v1::{self, work_item::Item};
use prost::Message;

use super::{Aggregate, Closing, Opening, RoundMode, Step, Stepping, UploadKind};
use crate::CoordinatorError;
use crate::store::{RoundRecord, Store};
use crate::telemetry;
use crate::work::WorkCursor;
use round::{resume_round, set_up_round};

/// The secure mode: the job's settings and the round in progress, if one is.
pub(crate) struct Secure {
    settings: SecaggSettings,
    round: Option<Box<SecaggRound>>,
}

impl Secure {
    pub fn new(settings: SecaggSettings) -> Self {
        Self {
            settings,
            round: None,
        }
    }

    /// What a secure spec needs beyond the spec's own rules: a member's check task lists every
    /// upload in one message, so `max_participants` is bounded by the committee size.
    pub fn check_spec(settings: &SecaggSettings) -> Result<(), CoordinatorError> {
        let most = settings.most_listed_participants();
        if u64::from(settings.quant.max_participants()) > most {
            return Err(CoordinatorError::InvalidRequest(format!(
                "max_participants is {}, at most {most} with committee_size {}: a committee \
                 member's check task lists every upload in one message",
                settings.quant.max_participants(),
                settings.committee_size
            )));
        }
        Ok(())
    }

    /// The state of open round `round`, if it is the one in progress.
    pub fn round_mut(&mut self, round: u32) -> Option<&mut SecaggRound> {
        self.round.as_deref_mut().filter(|sa| sa.round == round)
    }

    fn round_ref(&self, round: u32) -> Option<&SecaggRound> {
        self.round.as_deref().filter(|sa| sa.round == round)
    }

    pub fn take_round(&mut self) -> Self {
        Self {
            settings: self.settings,
            round: self.round.take(),
        }
    }

    pub fn put_round(&mut self, taken: Self) {
        self.round = taken.round;
    }
}

impl RoundMode for Secure {
    fn label(&self) -> &'static str {
        "secagg"
    }

    fn needs_draw(&self) -> bool {
        true
    }

    fn check_join(&self, draw_commitment: &[u8]) -> Result<(), CoordinatorError> {
        if draw_commitment.len() != 32 {
            return Err(CoordinatorError::InvalidRequest(format!(
                "a secure job needs a 32-byte draw commitment at join, got {} bytes",
                draw_commitment.len()
            )));
        }
        Ok(())
    }

    fn check_room(&self, job_id: &str, joined: usize) -> Result<(), CoordinatorError> {
        let max = self.settings.quant.max_participants();
        if joined >= max as usize {
            return Err(CoordinatorError::JobFull {
                job: job_id.into(),
                max,
            });
        }
        Ok(())
    }

    fn upload_dim(&self, model_dim: usize) -> u64 {
        // The update's parameters plus the sample count, which travels masked with them.
        model_dim as u64 + 1
    }

    fn check_header(
        &self,
        _: &JobSpec,
        did: &ParticipantId,
        header: &v1::UploadHeader,
    ) -> Result<UploadKind, CoordinatorError> {
        // The sample count travels inside the masked vector: weights stay private.
        let Some(wire) = header.manifest.as_ref().filter(|_| header.num_samples == 0) else {
            return Err(CoordinatorError::InvalidRequest(
                "a secure-aggregation upload carries a manifest and no clear sample count".into(),
            ));
        };
        let parsed = Manifest::from_wire(&header.job_id, header.round, did.clone(), wire)?;
        Ok(UploadKind::Masked {
            manifest: wire.clone(),
            hash: parsed.hash(),
        })
    }

    fn open_round(&mut self, o: &Opening<'_>, record: &mut RoundRecord) -> Vec<u8> {
        self.round = None;
        let previous: Vec<ParticipantId> = o
            .previous
            .map(|r| {
                r.committee
                    .iter()
                    .filter_map(|d| ParticipantId::parse(d).ok())
                    .collect()
            })
            .unwrap_or_default();
        let seed = conclave_crypto::committee::draw_seed(o.job_id, record.round, &o.entropy);
        // The seed is recorded even if the draw fails, so the ledger shows why.
        record.draw_seed = hex::encode(seed);
        let base = (record.base_version, o.base_model_hash.clone());
        match set_up_round(
            o.spec,
            o.job_id,
            record.round,
            seed,
            base,
            o.participants,
            &previous,
            o.coordinator,
        ) {
            Ok(sa) => {
                record.committee = sa.committee.iter().map(|m| m.to_string()).collect();
                record.plan = hex::encode(sa.plan.encode_to_vec());
                let plan_hash = sa.aggregator.config().plan_hash.to_vec();
                self.round = Some(Box::new(sa));
                plan_hash
            }
            // The round then fails at its first step and the next one is drawn afresh.
            Err(e) => {
                tracing::error!(job = %o.job_id, round = record.round, error = %e, "cannot open secure-aggregation round");
                Vec::new()
            }
        }
    }

    fn resume_round(
        &mut self,
        spec: &JobSpec,
        job_id: &str,
        round: &RoundRecord,
        store: &Store,
        ledger: Option<&OpenRound>,
    ) -> Result<(), CoordinatorError> {
        if round.plan.is_empty() {
            // Its set-up failed when it opened: it fails at its first step, as it would have.
            return Err(CoordinatorError::Storage(format!(
                "round {} has no plan: it could not be set up when it opened",
                round.round
            )));
        }
        self.round = Some(Box::new(resume_round(spec, job_id, round, store, ledger)?));
        Ok(())
    }

    fn forget_round(&mut self) {
        self.round = None;
    }

    fn phase(&self, round: u32) -> telemetry::Phase {
        match self.round_ref(round).map(|sa| sa.phase) {
            Some(Phase::Collecting) | None => telemetry::Phase::Collect,
            Some(Phase::Checking { .. }) => telemetry::Phase::Check,
            Some(Phase::Signing { .. }) => telemetry::Phase::Statement,
            Some(Phase::Revealing { .. }) => telemetry::Phase::Reveal,
        }
    }

    fn epoch(&self) -> Option<(u32, Phase, bool)> {
        self.round
            .as_ref()
            .map(|sa| (sa.round, sa.phase, sa.aggregator.statement().is_some()))
    }

    fn step(&mut self, s: &mut Stepping<'_>) -> Step {
        let Some(sa) = self.round.as_mut().filter(|sa| sa.round == s.round) else {
            return Step::Fail("the secure round could not be set up or resumed".into());
        };
        let (now, phase_ms, min) = (s.now, s.phase_ms, s.min_participants);
        match sa.phase {
            Phase::Collecting => {
                if !s.complete && now < s.deadline {
                    Step::Wait(s.deadline)
                } else if now < sa.not_before {
                    Step::Wait(sa.not_before)
                } else if sa.aggregator.uploads() < min {
                    Step::Fail(format!(
                        "{} uploads, fewer than min_participants ({min})",
                        sa.aggregator.uploads()
                    ))
                } else {
                    // Members open every upload's box and complain before any statement.
                    sa.phase = Phase::Checking {
                        deadline: now + phase_ms,
                    };
                    s.moved = true;
                    Step::Wait(now + phase_ms)
                }
            }
            Phase::Checking { deadline } => {
                let connected = s.connected;
                let waiting = sa.committee.iter().any(|m| {
                    connected.contains_key(m.as_str()) && !sa.checked.contains(m.as_str())
                });
                if waiting && now < deadline {
                    return Step::Wait(deadline);
                }
                // A: the members that checked and are still connected.
                let answering: Vec<ParticipantId> = sa
                    .committee
                    .iter()
                    .filter(|m| {
                        connected.contains_key(m.as_str()) && sa.checked.contains(m.as_str())
                    })
                    .cloned()
                    .collect();
                match sa.aggregator.propose(&answering) {
                    Ok(st) => {
                        tracing::info!(job = %s.job_id, round = s.round, uploads = st.uploads.len(), answering = st.answering.len(), complaints = sa.aggregator.complaints().len(), "statement proposed");
                        sa.phase = Phase::Signing {
                            deadline: now + phase_ms,
                        };
                        s.moved = true;
                        Step::Wait(now + phase_ms)
                    }
                    Err(e) => Step::Fail(format!("no statement could be proposed: {e}")),
                }
            }
            Phase::Signing { deadline } => {
                if sa.aggregator.approved() {
                    tracing::info!(job = %s.job_id, round = s.round, "statement approved: members reveal");
                    sa.phase = Phase::Revealing {
                        deadline: now + phase_ms,
                    };
                    s.moved = true;
                    Step::Wait(now + phase_ms)
                } else if now >= deadline {
                    Step::Fail("too few committee approvals before the deadline".into())
                } else {
                    Step::Wait(deadline)
                }
            }
            Phase::Revealing { deadline } => {
                if sa.aggregator.complete() {
                    // Unmasked without the job's lock; the round takes no messages meanwhile
                    // (every answering member has revealed).
                    Step::Aggregate
                } else if now >= deadline {
                    Step::Fail("an answering member did not reveal before the deadline".into())
                } else {
                    Step::Wait(deadline)
                }
            }
        }
    }

    fn aggregate(&self, c: &Closing<'_>) -> Result<Result<Aggregate, String>, CoordinatorError> {
        let Some(sa) = self.round_ref(c.round.round) else {
            return Ok(Err("the secure round's state is gone".into()));
        };
        Ok(sa
            .unmask(c.dim)
            .map(|(mean, total)| Aggregate { mean, total }))
    }

    fn record_close(&self, round: &RoundRecord, entry: &mut v1::RoundClosed) -> Vec<String> {
        let Some(st) = self
            .round_ref(round.round)
            .and_then(|sa| sa.aggregator.statement())
        else {
            return Vec::new();
        };
        // The statement's uploads, whose sample counts stay secret.
        entry.contributors = st
            .uploads
            .iter()
            .map(|(d, _)| v1::Contribution {
                participant: d.to_string(),
                num_samples: 0,
            })
            .collect();
        let completed: Vec<String> = st.answering.iter().map(|a| a.to_string()).collect();
        entry.committee_completed = completed.clone();
        entry.statement = Some(st.to_wire());
        completed
    }

    fn committee_dropouts(&self, round: &RoundRecord, completed: &[String]) -> u64 {
        let finished = |did: &String| {
            if !completed.is_empty() {
                completed.contains(did)
            } else {
                self.round_ref(round.round)
                    .is_some_and(|sa| sa.checked.contains(did))
            }
        };
        round.committee.iter().filter(|d| !finished(d)).count() as u64
    }

    fn train_plan(&self, round: u32) -> Option<Option<v1::SecaggPlan>> {
        self.round_ref(round)
            .filter(|sa| sa.phase == Phase::Collecting)
            .map(|sa| Some(sa.plan.clone()))
    }

    fn member_work(
        &self,
        did: &ParticipantId,
        cursor: &mut WorkCursor,
        items: &mut Vec<Item>,
    ) -> Result<(), CoordinatorError> {
        let Some(sa) = self.round.as_ref().filter(|sa| sa.committee.contains(did)) else {
            return Ok(());
        };
        if matches!(sa.phase, Phase::Checking { .. })
            && !sa.checked.contains(did.as_str())
            && cursor.checked != Some(sa.round)
        {
            items.push(Item::Check(v1::CommitteeCheckTask {
                round: sa.round,
                views: sa
                    .aggregator
                    .views_for(did)?
                    .iter()
                    .map(|v| v.to_wire())
                    .collect(),
            }));
            cursor.checked = Some(sa.round);
        }
        if let Some(statement) = sa.aggregator.statement()
            && statement.answering.contains(did)
        {
            if cursor.signed != Some(sa.round) {
                let views = sa.aggregator.views_for(did)?;
                items.push(Item::Sign(v1::CommitteeSignTask {
                    round: sa.round,
                    statement: Some(statement.to_wire()),
                    views: views.iter().map(|v| v.to_wire()).collect(),
                }));
                cursor.signed = Some(sa.round);
            }
            if matches!(sa.phase, Phase::Revealing { .. }) && cursor.revealed != Some(sa.round) {
                items.push(Item::Reveal(v1::CommitteeRevealTask {
                    round: sa.round,
                    approvals: sa
                        .aggregator
                        .approvals()
                        .iter()
                        .map(|a| a.to_wire())
                        .collect(),
                }));
                cursor.revealed = Some(sa.round);
            }
        }
        Ok(())
    }
}
