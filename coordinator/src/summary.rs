//! A job's public description: the bounded `JobInfo` (counts and the most recent rounds) and
//! the pages of its round history (`ListRounds`). Who took part in a round is in the ledger;
//! nothing here grows with the number of participants, and a `JobInfo` does not grow with the
//! number of rounds, so `GetJob` and `Join` answer the same size in round 1 and round 10,000.

use conclave_proto::v1;
use conclave_proto::{MAX_PAGE_BYTES, MAX_ROUNDS_PER_PAGE, RECENT_ROUNDS};
use prost::Message;

use crate::job::{Job, hex_to_bytes};
use crate::store::{EvalRecord, RoundRecord, RoundStatus};

impl Job {
    /// The participants' evaluation of a model version so far (weighted means).
    pub fn evaluation(&self, version: u32) -> Option<v1::Evaluation> {
        let reports = self.record.evaluations.get(&version)?;
        let n: u64 = reports.iter().map(|e| e.num_examples).sum();
        let mean = |f: fn(&EvalRecord) -> f64| {
            reports
                .iter()
                .map(|e| f(e) * e.num_examples as f64)
                .sum::<f64>()
                / n.max(1) as f64
        };
        Some(v1::Evaluation {
            model_version: version,
            loss: mean(|e| e.loss),
            accuracy: mean(|e| e.accuracy),
            num_examples: n,
            reports: reports.len() as u32,
        })
    }

    /// The job's public description: counts and the most recent rounds, the same size
    /// however many rounds and participants the job has.
    pub fn info(&self) -> v1::JobInfo {
        let r = &self.record;
        let state = if r.finished {
            v1::JobState::Finished
        } else if r.rounds.is_empty() {
            v1::JobState::Waiting
        } else {
            v1::JobState::Running
        };
        let recent = &r.rounds[r.rounds.len().saturating_sub(RECENT_ROUNDS)..];
        let mut evaluations: Vec<_> = self.evaluation(0).into_iter().collect();
        evaluations.extend(self.round_evaluations(recent));
        // The current model's, also when the recent rounds all failed.
        let current = r.model_version;
        if !evaluations.iter().any(|e| e.model_version == current) {
            evaluations.extend(self.evaluation(current));
        }
        evaluations.sort_by_key(|e| e.model_version);
        v1::JobInfo {
            job_id: r.id.clone(),
            spec: Some(self.spec.to_proto()),
            state: state.into(),
            model_version: r.model_version,
            dim: self.layout.dim() as u64,
            participant_count: r.participants.len() as u32,
            rounds: recent.iter().map(round_summary).collect(),
            rounds_opened: r.rounds.len() as u32,
            evaluations,
            created_unix_ms: r.created_unix_ms,
            coordinator: self.coordinator.clone(),
        }
    }

    /// `ListRounds`: the rounds from `first` (numbered from 1), at most
    /// [`MAX_ROUNDS_PER_PAGE`] of them and about [`MAX_PAGE_BYTES`], with the evaluations of
    /// the versions they produced.
    pub fn rounds_page(&self, first: u32) -> v1::ListRoundsResponse {
        let rounds = &self.record.rounds;
        // Rounds are numbered 1, 2, ... in order.
        let from = (first.max(1) as usize - 1).min(rounds.len());
        let mut page = v1::ListRoundsResponse::default();
        let mut bytes = 0;
        for round in rounds[from..].iter().take(MAX_ROUNDS_PER_PAGE) {
            let summary = round_summary(round);
            bytes += summary.encoded_len() + 64;
            if bytes > MAX_PAGE_BYTES && !page.rounds.is_empty() {
                break;
            }
            page.rounds.push(summary);
        }
        let end = from + page.rounds.len();
        page.evaluations = self.round_evaluations(&rounds[from..end]);
        page.next_round = rounds.get(end).map_or(0, |r| r.round);
        page
    }

    /// Evaluations of the versions `rounds` produced.
    fn round_evaluations(&self, rounds: &[RoundRecord]) -> Vec<v1::Evaluation> {
        rounds
            .iter()
            .filter_map(|r| r.result_version)
            .filter_map(|version| self.evaluation(version))
            .collect()
    }
}

/// A round's public summary (counts; who took part is in the ledger).
fn round_summary(round: &RoundRecord) -> v1::RoundSummary {
    v1::RoundSummary {
        round: round.round,
        state: match round.status {
            RoundStatus::Open => v1::RoundState::Open,
            RoundStatus::Closed => v1::RoundState::Closed,
            RoundStatus::Failed => v1::RoundState::Failed,
        }
        .into(),
        base_version: round.base_version,
        result_version: round.result_version.unwrap_or(0),
        expected_count: round.expected.len() as u32,
        uploaded_count: round.uploads.len() as u32,
        total_samples: round
            .total_samples
            .unwrap_or_else(|| round.uploads.iter().map(|u| u.num_samples).sum()),
        deadline_unix_ms: round.deadline_unix_ms,
        committee: round.committee.clone(),
        draw_seed: hex_to_bytes(&round.draw_seed),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use conclave_aggregation::JobSpec;

    use super::*;
    use crate::store::{JobRecord, ParticipantRecord, UploadRecord};

    const SPEC: &str = r#"
name = "pages"
rounds = 100000
min_participants = 2
round_deadline_secs = 30
privacy = "plain"
[model]
kind = "logistic_regression"
[data]
features = ["a", "b"]
label = "y"
[training]
local_epochs = 1
batch_size = 8
learning_rate = 0.1
optimizer = "sgd"
"#;

    fn did(i: usize) -> String {
        format!("did:key:z6Mk{i:0>44}")
    }

    /// A job with `participants` participants, every one in each of `rounds` closed rounds.
    fn job(participants: usize, rounds: u32) -> Job {
        let spec = JobSpec::from_toml(SPEC).unwrap();
        let everyone: Vec<String> = (0..participants).map(did).collect();
        let record = JobRecord {
            id: "j-1".into(),
            spec: String::new(),
            created_unix_ms: 1,
            participants: everyone
                .iter()
                .map(|d| ParticipantRecord {
                    did: d.clone(),
                    sealing_key: String::new(),
                    draw_commitment: String::new(),
                })
                .collect(),
            model_version: rounds,
            model_hashes: Vec::new(),
            state_hash: None,
            rounds: (1..=rounds)
                .map(|round| RoundRecord {
                    round,
                    status: RoundStatus::Closed,
                    base_version: round - 1,
                    result_version: Some(round),
                    expected: everyone.clone(),
                    uploads: everyone
                        .iter()
                        .map(|d| UploadRecord {
                            did: d.clone(),
                            num_samples: 10,
                            payload_hash: String::new(),
                        })
                        .collect(),
                    deadline_unix_ms: 0,
                    committee: Vec::new(),
                    draw_seed: String::new(),
                    plan: String::new(),
                    total_samples: None,
                })
                .collect(),
            evaluations: (0..=rounds)
                .map(|v| {
                    let e = EvalRecord {
                        did: did(0),
                        loss: 1.0 / (v + 1) as f64,
                        accuracy: 0.5,
                        num_examples: 7,
                    };
                    (v, vec![e])
                })
                .collect::<BTreeMap<_, _>>(),
            finished: false,
            draw: Default::default(),
            exports: Vec::new(),
        };
        let engine = conclave_aggregation::engine::JobEngine::create(&v1::JobCreated {
            job_id: record.id.clone(),
            spec: Some(spec.to_proto()),
            model_hash: vec![0; 32],
        })
        .unwrap();
        Job::new(
            spec,
            record,
            Arc::new(Vec::new()),
            Arc::new(Vec::new()),
            did(99_999),
            engine,
        )
    }

    #[test]
    fn job_info_does_not_grow_with_rounds_or_participants() {
        let small = job(3, 2).info().encoded_len();
        let large = job(5_000, 300);
        let info = large.info();
        assert_eq!(info.participant_count, 5_000);
        assert_eq!(info.rounds_opened, 300);
        assert_eq!(info.rounds.len(), RECENT_ROUNDS);
        assert_eq!(info.rounds.last().unwrap().round, 300);
        assert_eq!(info.rounds[0].uploaded_count, 5_000);
        assert_eq!(info.rounds[0].total_samples, 50_000);
        // The initial model's evaluation and those of the listed rounds' versions.
        let versions: Vec<u32> = info.evaluations.iter().map(|e| e.model_version).collect();
        assert_eq!(versions, [0, 293, 294, 295, 296, 297, 298, 299, 300]);
        // 5,000 participants and 300 rounds later, a few bytes more than at the start (the
        // counts' varints), not 5,000 did:keys or 300 round summaries.
        let grown = info.encoded_len();
        assert!(grown < small + 1024, "{small} -> {grown}");
    }

    #[test]
    fn round_pages_cover_the_history_once_in_order() {
        let job = job(4, 150);
        let mut seen = Vec::new();
        let mut versions = Vec::new();
        let mut next = 1;
        while next != 0 {
            let page = job.rounds_page(next);
            assert!(!page.rounds.is_empty() && page.rounds.len() <= MAX_ROUNDS_PER_PAGE);
            assert!(page.encoded_len() <= MAX_PAGE_BYTES);
            assert_eq!(page.rounds[0].round, next);
            seen.extend(page.rounds.iter().map(|r| r.round));
            versions.extend(page.evaluations.iter().map(|e| e.model_version));
            next = page.next_round;
        }
        assert_eq!(seen, (1..=150).collect::<Vec<_>>());
        assert_eq!(versions, (1..=150).collect::<Vec<_>>());
        // From the middle, from 0 (read as 1), and past the end.
        assert_eq!(job.rounds_page(140).rounds.len(), 11);
        assert_eq!(job.rounds_page(140).next_round, 0);
        assert_eq!(job.rounds_page(0).rounds[0].round, 1);
        let past = job.rounds_page(151);
        assert!(past.rounds.is_empty() && past.next_round == 0);
        assert!(job.rounds_page(u32::MAX).rounds.is_empty());
    }
}
