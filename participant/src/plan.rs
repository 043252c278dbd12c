//! Checking a secure round's plan before acting on it (DESIGN.md, "The participant's own
//! policy"): signed by the pinned coordinator key for this job and round; the pinned committee
//! size, threshold and minimum; this participant among its participants; and everything it
//! says — the committee, the draw seed, every participant's sealing key, the plan's digest —
//! the same as the participant's own verified ledger replica holds for the round, where the
//! committee is the draw `ledger verify` recomputes. A plan that passes names its digest in
//! every manifest made under it, so members see that all of `U` was shown the same plan.

use std::collections::BTreeSet;

use conclave_aggregation::secagg::{RoundConfig, verify_plan};
use conclave_crypto::ParticipantId;
use conclave_ledger::verify::JobSummary;
use conclave_proto::v1;

use crate::policy::Pin;

/// The round configuration of a training task's plan that passes every check; otherwise what
/// failed.
pub fn check_plan(
    pin: &Pin,
    ledger: Option<&JobSummary>,
    task: &v1::TrainTask,
    me: &ParticipantId,
) -> Result<RoundConfig, String> {
    let job_id = &pin.job_id;
    let round = task.round;
    let plan = task
        .secagg
        .as_ref()
        .ok_or("a training task without a plan")?;
    verify_plan(plan, job_id, round, &pin.coordinator).map_err(|e| e.to_string())?;
    let config = RoundConfig::from_plan(job_id, round, plan).map_err(|e| e.to_string())?;
    let settings = pin
        .spec
        .secagg()
        .ok_or("the coordinator sent a secure-aggregation plan for a plain job")?;
    let mut diff = Vec::new();
    if config.committee.len() != settings.committee_size as usize {
        diff.push(format!(
            "committee of {}, the job's committee_size is {}",
            config.committee.len(),
            settings.committee_size
        ));
    }
    if config.threshold != settings.threshold as usize {
        diff.push(format!(
            "threshold {}, the job's is {}",
            config.threshold, settings.threshold
        ));
    }
    if config.min_participants != pin.spec.min_participants as usize {
        diff.push(format!(
            "min_participants {}, the job's is {}",
            config.min_participants, pin.spec.min_participants
        ));
    }
    let len = pin.spec.layout().dim() + 1;
    if config.len != len {
        diff.push(format!(
            "vectors of {} elements, the job's are {len}",
            config.len
        ));
    }
    if !diff.is_empty() {
        return Err(format!(
            "the plan differs from the pinned job: {}",
            diff.join("; ")
        ));
    }
    if config.participant(me).is_none() {
        return Err("this participant is not in the plan".into());
    }
    let job = ledger.ok_or("the ledger replica holds no such job")?;
    let open = job
        .open_round
        .as_ref()
        .filter(|r| r.round == round)
        .ok_or_else(|| format!("round {round} is not open in the ledger replica"))?;
    let committee: Vec<String> = config.committee.iter().map(|m| m.id.to_string()).collect();
    if committee != open.committee {
        return Err(
            "the plan's committee is not the one drawn in the ledger (round_opened)".into(),
        );
    }
    if plan.draw_seed != open.draw_seed {
        return Err("the plan's draw seed is not the ledger's".into());
    }
    // One model for all of U: the one the ledger says the round starts from, named by the
    // plan (so by every manifest) and by the task (what is downloaded and checked).
    if plan.base_version != open.base_version || plan.base_model_hash != open.base_model_hash {
        return Err("the plan's base model is not the one the ledger's round starts from".into());
    }
    check_task_model(task, plan)?;
    if config.plan_hash[..] != open.plan_hash[..] {
        return Err("the plan is not the one the ledger's round_opened entry names".into());
    }
    let participants: BTreeSet<String> = config
        .participants
        .iter()
        .map(|p| p.id.to_string())
        .collect();
    if participants != open.participants {
        return Err("the plan's participants are not the round's in the ledger".into());
    }
    for p in config.participants.iter().chain(&config.committee) {
        if job.admitted.get(p.id.as_str()) != Some(&p.sealing_key) {
            return Err(format!(
                "the plan gives {} a sealing key other than the one it was admitted with",
                p.id
            ));
        }
    }
    Ok(config)
}

/// The check [`check_plan`] makes of the task itself rather than its plan: the model the task
/// names is the plan's base model.
pub fn check_task_model(task: &v1::TrainTask, plan: &v1::SecaggPlan) -> Result<(), String> {
    if task.model_version != plan.base_version || task.model_hash != plan.base_model_hash {
        return Err("the task's model is not the plan's base model".into());
    }
    Ok(())
}
