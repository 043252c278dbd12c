//! Privacy modes on the participant's side (DESIGN.md step 3): what a participant does
//! differently in `plain` and in `secagg` — whether it brings a draw commitment when it joins,
//! what it checks of a training task before it trains, how it sends its update, and its
//! committee duties (draw, check, approve, reveal). Each mode implements [`ParticipantMode`];
//! the runner holds the job's mode as [`Duties`], an exhaustive enum, and never asks which mode
//! a job is in otherwise. A new mode is a new module, one arm of [`Duties`] and one of
//! [`commits_to_draw`]: the compiler names every other place.

use conclave_aggregation::{JobSpec, Privacy};
use conclave_proto::v1;

use crate::client::Client;
use crate::duty::SecaggDuties;
use crate::error::ParticipantError;
use crate::runner::Event;

/// What one privacy mode asks of a participant.
pub(crate) trait ParticipantMode {
    /// Checks the privacy part of a training task before any training (a plan, or its
    /// absence). A refusal skips the round; a failure of this participant's own disk is fatal.
    async fn accept_task(&mut self, task: &v1::TrainTask) -> Result<(), ParticipantError>;

    /// Sends `delta`, trained on `num_samples` rows, for `task`'s round; returns the weight
    /// it counts for.
    async fn upload(
        &mut self,
        client: &mut Client,
        spec: &JobSpec,
        task: &v1::TrainTask,
        delta: &[f32],
        num_samples: u64,
    ) -> Result<u64, ParticipantError>;

    /// Reveals this participant's draw-chain link for a committee draw attempt.
    async fn draw(
        &mut self,
        client: &mut Client,
        task: v1::DrawTask,
    ) -> Result<Event, ParticipantError>;

    /// A committee member's check of every upload's box.
    async fn check(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeCheckTask,
    ) -> Result<Event, ParticipantError>;

    /// A committee member's approval of the round's statement.
    async fn sign(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeSignTask,
    ) -> Result<Event, ParticipantError>;

    /// A committee member's reveal once the statement is approved.
    async fn reveal(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeRevealTask,
    ) -> Result<Event, ParticipantError>;
}

/// Whether a participant of a job with `spec` brings a draw commitment when it joins (its
/// mode draws committees from the participants' draw chains).
pub(crate) fn commits_to_draw(spec: &JobSpec) -> bool {
    match spec.privacy {
        Privacy::Plain => false,
        Privacy::Secagg(_) => true,
    }
}

/// A job's privacy mode with this participant's state for it.
pub(crate) enum Duties {
    Plain(Plain),
    Secagg(Box<SecaggDuties>),
}

/// The plain mode: the update goes as it is, with its sample count; no committee.
pub(crate) struct Plain {
    pub job_id: String,
}

const NO_COMMITTEE: &str = "a plain job has no committee";

impl ParticipantMode for Plain {
    async fn accept_task(&mut self, task: &v1::TrainTask) -> Result<(), ParticipantError> {
        // A plan in a plain job is nonsense: refused, and the participant waits for the next
        // round.
        match &task.secagg {
            Some(_) => Err(ParticipantError::Refused(
                "a secure-aggregation plan for a plain job".into(),
            )),
            None => Ok(()),
        }
    }

    async fn upload(
        &mut self,
        client: &mut Client,
        _: &JobSpec,
        task: &v1::TrainTask,
        delta: &[f32],
        num_samples: u64,
    ) -> Result<u64, ParticipantError> {
        client
            .upload(&self.job_id, task.round, num_samples, delta)
            .await?;
        Ok(num_samples)
    }

    async fn draw(
        &mut self,
        _: &mut Client,
        task: v1::DrawTask,
    ) -> Result<Event, ParticipantError> {
        Ok(Event::DrawRefused {
            attempt: task.attempt,
            reason: "a plain job draws no committee".into(),
        })
    }

    async fn check(
        &mut self,
        _: &mut Client,
        task: v1::CommitteeCheckTask,
    ) -> Result<Event, ParticipantError> {
        Ok(no_committee(task.round))
    }

    async fn sign(
        &mut self,
        _: &mut Client,
        task: v1::CommitteeSignTask,
    ) -> Result<Event, ParticipantError> {
        Ok(no_committee(task.round))
    }

    async fn reveal(
        &mut self,
        _: &mut Client,
        task: v1::CommitteeRevealTask,
    ) -> Result<Event, ParticipantError> {
        Ok(no_committee(task.round))
    }
}

fn no_committee(round: u32) -> Event {
    Event::CommitteeRefused {
        round,
        reason: NO_COMMITTEE.into(),
    }
}

impl ParticipantMode for SecaggDuties {
    async fn accept_task(&mut self, task: &v1::TrainTask) -> Result<(), ParticipantError> {
        self.accept_plan(task).await.map(|_| ())
    }

    async fn upload(
        &mut self,
        client: &mut Client,
        spec: &JobSpec,
        task: &v1::TrainTask,
        delta: &[f32],
        num_samples: u64,
    ) -> Result<u64, ParticipantError> {
        SecaggDuties::upload(self, client, spec, task, delta.to_vec(), num_samples)
            .await
            .map(|(weight, _)| weight)
    }

    async fn draw(
        &mut self,
        client: &mut Client,
        task: v1::DrawTask,
    ) -> Result<Event, ParticipantError> {
        SecaggDuties::draw(self, client, task).await
    }

    async fn check(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeCheckTask,
    ) -> Result<Event, ParticipantError> {
        SecaggDuties::check(self, client, task).await
    }

    async fn sign(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeSignTask,
    ) -> Result<Event, ParticipantError> {
        SecaggDuties::sign(self, client, task).await
    }

    async fn reveal(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeRevealTask,
    ) -> Result<Event, ParticipantError> {
        SecaggDuties::reveal(self, client, task).await
    }
}

/// Calls `$call` with `$m` bound to the job's mode, whichever arm it is (an exhaustive match:
/// a new arm is named here). Calls go through the trait: `SecaggDuties`' own methods of the
/// same names differ in what they return.
macro_rules! on_mode {
    ($duties:expr, $m:ident => $call:expr) => {
        match $duties {
            Duties::Plain($m) => $call,
            Duties::Secagg(boxed) => {
                let $m = boxed.as_mut();
                $call
            }
        }
    };
}

impl ParticipantMode for Duties {
    async fn accept_task(&mut self, task: &v1::TrainTask) -> Result<(), ParticipantError> {
        on_mode!(self, m => ParticipantMode::accept_task(m, task).await)
    }

    async fn upload(
        &mut self,
        client: &mut Client,
        spec: &JobSpec,
        task: &v1::TrainTask,
        delta: &[f32],
        num_samples: u64,
    ) -> Result<u64, ParticipantError> {
        on_mode!(self, m => ParticipantMode::upload(m, client, spec, task, delta, num_samples).await)
    }

    async fn draw(
        &mut self,
        client: &mut Client,
        task: v1::DrawTask,
    ) -> Result<Event, ParticipantError> {
        on_mode!(self, m => ParticipantMode::draw(m, client, task).await)
    }

    async fn check(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeCheckTask,
    ) -> Result<Event, ParticipantError> {
        on_mode!(self, m => ParticipantMode::check(m, client, task).await)
    }

    async fn sign(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeSignTask,
    ) -> Result<Event, ParticipantError> {
        on_mode!(self, m => ParticipantMode::sign(m, client, task).await)
    }

    async fn reveal(
        &mut self,
        client: &mut Client,
        task: v1::CommitteeRevealTask,
    ) -> Result<Event, ParticipantError> {
        on_mode!(self, m => ParticipantMode::reveal(m, client, task).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_ledger::sim::{PLAIN_JOB, SECAGG_JOB};

    #[test]
    fn only_a_committee_mode_commits_to_the_draw() {
        assert!(!commits_to_draw(&JobSpec::from_toml(PLAIN_JOB).unwrap()));
        assert!(commits_to_draw(&JobSpec::from_toml(SECAGG_JOB).unwrap()));
    }

    #[test]
    fn a_plain_participant_refuses_a_task_with_a_plan() {
        let mut plain = Duties::Plain(Plain {
            job_id: "job".into(),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let task = v1::TrainTask {
            round: 1,
            ..Default::default()
        };
        assert!(rt.block_on(plain.accept_task(&task)).is_ok());
        let planned = v1::TrainTask {
            secagg: Some(v1::SecaggPlan::default()),
            ..task
        };
        let refused = rt.block_on(plain.accept_task(&planned));
        assert!(
            matches!(&refused, Err(ParticipantError::Refused(r)) if r.contains("plan for a plain job")),
            "{refused:?}"
        );
    }
}
