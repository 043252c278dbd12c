//! Rewards: how one round's pool is split under a job's [`RewardPolicy`] (a rule of the round
//! engine: the coordinator pays it and `ledger verify` recomputes it).
//!
//! The committee's part (`committee_share_bps` of the pool) is split equally among members who
//! completed their duty (revealed); the rest among contributors whose update is in the
//! aggregate, by sample count or equally. A round with no committee gives the contributors the
//! whole pool; a failed round pays nothing. Integer parts use the largest-remainder method
//! (ties to the smaller did), so each round pays exactly its pool.

use crate::{RewardPolicy, RewardSplit};
use conclave_proto::v1;

/// Splits `part` in proportion to `weights` (equal parts when every weight is 0); the result
/// sums to `part` exactly.
fn apportion(part: u64, weights: &[(&str, u64)]) -> Vec<u64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let total: u128 = weights.iter().map(|(_, w)| *w as u128).sum();
    let (weight, total): (Box<dyn Fn(u64) -> u128>, u128) = if total == 0 {
        (Box::new(|_| 1), weights.len() as u128)
    } else {
        (Box::new(|w| w as u128), total)
    };
    let mut amounts = Vec::with_capacity(weights.len());
    let mut remainders = Vec::with_capacity(weights.len());
    for (i, (_, w)) in weights.iter().enumerate() {
        let share = part as u128 * weight(*w);
        amounts.push((share / total) as u64);
        remainders.push((share % total, i));
    }
    let mut left = part - amounts.iter().sum::<u64>();
    remainders.sort_by(|a, b| b.0.cmp(&a.0).then(weights[a.1].0.cmp(weights[b.1].0)));
    for (_, i) in remainders {
        if left == 0 {
            break;
        }
        amounts[i] += 1;
        left -= 1;
    }
    amounts
}

/// The awards of one successful round: contributors `(did, samples)` and the committee
/// members who completed their duty. Awards of zero are left out; order: contributions by
/// did, then committee service by did.
pub fn round_awards(
    policy: &RewardPolicy,
    contributors: &[(String, u64)],
    committee: &[String],
) -> Vec<v1::Award> {
    if contributors.is_empty() || policy.pool_per_round == 0 {
        return Vec::new();
    }
    let committee_part = if committee.is_empty() {
        0
    } else {
        (policy.pool_per_round as u128 * policy.committee_share_bps as u128 / 10_000) as u64
    };
    let contributor_part = policy.pool_per_round - committee_part;
    let mut by_did: Vec<(&str, u64)> = contributors
        .iter()
        .map(|(d, n)| {
            let w = match policy.split {
                RewardSplit::Samples => *n,
                RewardSplit::Equal => 1,
            };
            (d.as_str(), w)
        })
        .collect();
    by_did.sort();
    let mut members: Vec<(&str, u64)> = committee.iter().map(|d| (d.as_str(), 1)).collect();
    members.sort();
    let mut out = Vec::new();
    for (part, list, reason) in [
        (contributor_part, &by_did, v1::AwardReason::Contribution),
        (committee_part, &members, v1::AwardReason::Committee),
    ] {
        for ((did, _), amount) in list.iter().zip(apportion(part, list)) {
            if amount > 0 {
                out.push(v1::Award {
                    participant: did.to_string(),
                    amount,
                    reason: reason.into(),
                });
            }
        }
    }
    out
}

/// Awards as one line of text (for a refusal that shows what was expected).
pub fn describe(awards: &[v1::Award]) -> String {
    awards
        .iter()
        .map(|a| format!("{} {}", a.participant, a.amount))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pool: u64, bps: u32, split: RewardSplit) -> RewardPolicy {
        RewardPolicy {
            pool_per_round: pool,
            committee_share_bps: bps,
            split,
        }
    }

    fn list(awards: &[v1::Award]) -> Vec<(&str, u64, i32)> {
        awards
            .iter()
            .map(|a| (a.participant.as_str(), a.amount, a.reason))
            .collect()
    }

    const C: i32 = v1::AwardReason::Contribution as i32;
    const M: i32 = v1::AwardReason::Committee as i32;

    #[test]
    fn hand_computed_round_with_committee_and_remainders() {
        // Pool 1000, 10% committee: 900 by samples 100:200:300 (= 150, 300, 450), and 100
        // among three members: 33.33 each, the one extra token to the smallest did.
        let contributors = vec![
            ("did:c".to_string(), 300),
            ("did:a".to_string(), 100),
            ("did:b".to_string(), 200),
        ];
        let committee = vec!["did:z".to_string(), "did:b".into(), "did:x".into()];
        let awards = round_awards(
            &policy(1000, 1000, RewardSplit::Samples),
            &contributors,
            &committee,
        );
        assert_eq!(
            list(&awards),
            vec![
                ("did:a", 150, C),
                ("did:b", 300, C),
                ("did:c", 450, C),
                ("did:b", 34, M),
                ("did:x", 33, M),
                ("did:z", 33, M),
            ]
        );
        assert_eq!(awards.iter().map(|a| a.amount).sum::<u64>(), 1000);
    }

    #[test]
    fn largest_remainders_equal_split_and_no_committee() {
        // 100 by samples 1:1:1 → 33.33 each; remainders tie, so the smallest did gets 34.
        let three: Vec<(String, u64)> = ["did:q", "did:p", "did:r"]
            .iter()
            .map(|d| (d.to_string(), 7))
            .collect();
        let awards = round_awards(&policy(100, 2500, RewardSplit::Samples), &three, &[]);
        assert_eq!(
            list(&awards),
            vec![("did:p", 34, C), ("did:q", 33, C), ("did:r", 33, C)]
        );
        // 10 by samples 1:2 → 3.33, 6.67: the larger remainder (did:b) gets the extra token.
        let two = vec![("did:a".to_string(), 1), ("did:b".to_string(), 2)];
        let awards = round_awards(&policy(10, 0, RewardSplit::Samples), &two, &[]);
        assert_eq!(list(&awards), vec![("did:a", 3, C), ("did:b", 7, C)]);
        // Equal split ignores sample counts (secure aggregation: they are 0 = unknown).
        let secret = vec![("did:a".to_string(), 0), ("did:b".to_string(), 0)];
        let awards = round_awards(
            &policy(1000, 1000, RewardSplit::Equal),
            &secret,
            &["did:m".to_string()],
        );
        assert_eq!(
            list(&awards),
            vec![("did:a", 450, C), ("did:b", 450, C), ("did:m", 100, M)]
        );
        // Nobody contributed: nothing is paid, not even the committee.
        assert!(
            round_awards(
                &policy(1000, 1000, RewardSplit::Equal),
                &[],
                &["did:m".into()]
            )
            .is_empty()
        );
    }

    #[test]
    fn apportion_always_pays_the_whole_part() {
        use proptest::prelude::*;
        proptest!(|(part in 0u64..1_000_000_000_000, ws in proptest::collection::vec(0u64..1_000_000, 1..40))| {
            let names: Vec<String> = (0..ws.len()).map(|i| format!("did:{i:03}")).collect();
            let weights: Vec<(&str, u64)> = names.iter().map(String::as_str).zip(ws.iter().copied()).collect();
            let got = apportion(part, &weights);
            prop_assert_eq!(got.iter().sum::<u64>(), part);
            let total: u128 = ws.iter().map(|&w| w as u128).sum();
            for (a, (_, w)) in got.iter().zip(&weights) {
                let exact = if total == 0 { part as f64 / ws.len() as f64 } else { part as f64 * *w as f64 / total as f64 };
                prop_assert!((*a as f64 - exact).abs() < 1.0 + exact * 1e-12);
            }
        });
    }
}
