//! The committee draw of DESIGN.md, "A round", step 1, and the randomness it runs on.
//!
//! **Entropy.** Each participant of a secure job commits at join to the head `v_0` of a hash
//! chain, `v_k = BLAKE3(v_{k+1})` ([`DrawChain`]), derived from its identity and the job, so a
//! restarted participant reveals the same links. Before the first round the coordinator fixes a
//! pool of admitted participants (a draw *attempt*) and each pool member reveals its next link
//! `v_{a+1}`, signed over the attempt and the pool. No one — coordinator, colluding participants
//! — knows an honest member's link before the pool is fixed, and each link is fixed by the
//! commitment, so it cannot be chosen either. When every pool member revealed, the job's draw
//! entropy is [`draw_entropy`] of the attempt, the pool and the links.
//!
//! **Seed and draw.** Round `r`'s seed is `BLAKE3-derive-key(context, job ‖ r ‖ entropy)`
//! ([`draw_seed`]): nothing the coordinator writes (no time, no choice of entries) goes in. The
//! committee is drawn from every admitted participant ([`draw_committee`]): each gets the score
//! `BLAKE3(seed, did)` and the `c` lowest scores sit, preferring those not on the previous
//! committee while enough others exist. A participant's chance depends only on its own score,
//! so admitting one more participant changes the committee only if that one scores in.
//!
//! **Residual bias.** The coordinator chooses the pool before any link is known, and can
//! retry only by declaring an attempt incomplete; a participant that did not reveal in an
//! attempt is never in a later pool, so each extra draw it gets costs it one participant
//! (recorded in the ledger, and known to that participant if it did reveal). A colluding pool
//! member can withhold its link to force such a retry — one extra draw per colluder. Open
//! admission lets a coordinator add identities of its own after the entropy is known (the
//! sybil limit of single-server secure aggregation); an admission list closes that.

use crate::ParticipantId;

const DRAW_CONTEXT: &str = "conclave 2026-12 committee draw seed v2";
const SCORE_CONTEXT: &str = "conclave 2026-12 committee draw score v2";
const ENTROPY_CONTEXT: &str = "conclave 2026-12 committee draw entropy v2";
const POOL_CONTEXT: &str = "conclave 2026-12 committee draw pool v2";
const CHAIN_CONTEXT: &str = "conclave 2026-12 committee draw chain link v2";
const CHAIN_SECRET_CONTEXT: &str = "conclave 2026-12 committee draw chain secret v2";

/// Links of a draw chain: the attempts a job's draw may take at most.
pub const CHAIN_LEN: u32 = 256;

/// Errors of a draw.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrawError {
    #[error("cannot draw a committee of {size} from {available} participants")]
    TooFew { size: usize, available: usize },
    #[error("participant {0} is listed twice")]
    Duplicate(String),
}

fn put(h: &mut blake3::Hasher, bytes: &[u8]) {
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// One step down a draw chain: `v_k = link(v_{k+1})`.
pub fn link(value: &[u8; 32]) -> [u8; 32] {
    *blake3::Hasher::new_derive_key(CHAIN_CONTEXT)
        .update(value)
        .finalize()
        .as_bytes()
}

/// Whether `value` is link `v_k` of the chain whose head is `commitment`: `k` steps of
/// [`link`] lead from it to the head.
pub fn is_link(commitment: &[u8; 32], k: u32, value: &[u8; 32]) -> bool {
    if k == 0 || k > CHAIN_LEN {
        return false;
    }
    let mut v = *value;
    for _ in 0..k {
        v = link(&v);
    }
    v == *commitment
}

/// A participant's draw chain for one job: `v_{CHAIN_LEN}` is a secret derived from its
/// identity, `v_0` its public commitment.
pub struct DrawChain {
    top: zeroize::Zeroizing<[u8; 32]>,
}

impl DrawChain {
    /// The chain whose top link is `secret`.
    pub fn new(secret: zeroize::Zeroizing<[u8; 32]>) -> Self {
        Self { top: secret }
    }

    /// `identity`'s chain for a job: its top link derived from the identity and the job id
    /// ([`crate::Identity::derive_secret`]), so the participant needs no state to reveal.
    pub fn for_job(identity: &crate::Identity, job_id: &str) -> Self {
        Self::new(identity.derive_secret(CHAIN_SECRET_CONTEXT, job_id.as_bytes()))
    }

    /// Link `v_k` (`k ≤ CHAIN_LEN`).
    pub fn value(&self, k: u32) -> [u8; 32] {
        let mut v = *self.top;
        for _ in k.min(CHAIN_LEN)..CHAIN_LEN {
            v = link(&v);
        }
        v
    }

    /// The head `v_0`, committed at join.
    pub fn commitment(&self) -> [u8; 32] {
        self.value(0)
    }
}

/// The hash of a draw attempt's pool (sorted did:keys), which every reveal is signed over.
pub fn pool_hash(job_id: &str, attempt: u32, pool: &[ParticipantId]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(POOL_CONTEXT);
    put(&mut h, job_id.as_bytes());
    h.update(&attempt.to_le_bytes());
    h.update(&(pool.len() as u64).to_le_bytes());
    for p in pool {
        put(&mut h, p.as_str().as_bytes());
    }
    *h.finalize().as_bytes()
}

/// A job's draw entropy from a complete attempt: the pool's hash and every member's link, in
/// pool order.
pub fn draw_entropy(pool_hash: &[u8; 32], links: &[[u8; 32]]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(ENTROPY_CONTEXT);
    h.update(pool_hash);
    h.update(&(links.len() as u64).to_le_bytes());
    for l in links {
        h.update(l);
    }
    *h.finalize().as_bytes()
}

/// The draw seed of a round: `BLAKE3-derive-key(context, len(job) ‖ job ‖ round ‖ entropy)`.
pub fn draw_seed(job_id: &str, round: u32, entropy: &[u8; 32]) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key(DRAW_CONTEXT);
    put(&mut h, job_id.as_bytes());
    h.update(&round.to_le_bytes());
    h.update(entropy);
    *h.finalize().as_bytes()
}

/// Draws a committee of `size` from `participants` (any order) with `seed`: the `size` lowest
/// scores `BLAKE3(seed, did)`, those not in `previous` first, in score order.
pub fn draw_committee(
    seed: &[u8; 32],
    participants: &[ParticipantId],
    previous: &[ParticipantId],
    size: usize,
) -> Result<Vec<ParticipantId>, DrawError> {
    let mut pool: Vec<([u8; 32], &ParticipantId)> = participants
        .iter()
        .map(|p| {
            let mut h = blake3::Hasher::new_derive_key(SCORE_CONTEXT);
            h.update(seed);
            put(&mut h, p.as_str().as_bytes());
            (*h.finalize().as_bytes(), p)
        })
        .collect();
    pool.sort();
    if let Some(w) = pool.windows(2).find(|w| w[0].1 == w[1].1) {
        return Err(DrawError::Duplicate(w[0].1.to_string()));
    }
    if size > pool.len() {
        return Err(DrawError::TooFew {
            size,
            available: pool.len(),
        });
    }
    let (fresh, repeat): (Vec<_>, Vec<_>) = pool
        .into_iter()
        .map(|(_, p)| p.clone())
        .partition(|p| !previous.contains(p));
    Ok(fresh.into_iter().chain(repeat).take(size).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<ParticipantId> {
        // Deterministic identities: the RFC 8032 test-1 style of fixed secret bytes.
        (0..n)
            .map(|i| {
                let key = ed25519_dalek::SigningKey::from_bytes(&[i as u8 + 1; 32]);
                ParticipantId::from_key(key.verifying_key())
            })
            .collect()
    }

    #[test]
    fn draw_is_deterministic_and_order_independent() {
        let people = ids(10);
        let seed = draw_seed("j-1", 3, &[7; 32]);
        let a = draw_committee(&seed, &people, &[], 5).unwrap();
        let mut reversed = people.clone();
        reversed.reverse();
        assert_eq!(a, draw_committee(&seed, &reversed, &[], 5).unwrap());
        assert_eq!(a.len(), 5);
        let other = draw_committee(&draw_seed("j-1", 4, &[7; 32]), &people, &[], 5).unwrap();
        assert_ne!(a, other, "another round draws another committee");
        assert_ne!(draw_seed("j-1", 3, &[7; 32]), draw_seed("j-1", 3, &[8; 32]));
        assert_ne!(
            draw_seed("j-1", 3, &[7; 32]),
            draw_seed("j-13", 0, &[7; 32])
        );
    }

    #[test]
    fn one_more_participant_changes_the_committee_only_by_scoring_in() {
        let people = ids(12);
        let seed = draw_seed("j", 1, &[3; 32]);
        let before = draw_committee(&seed, &people[..11], &[], 4).unwrap();
        let after = draw_committee(&seed, &people, &[], 4).unwrap();
        let newcomer = &people[11];
        if after.contains(newcomer) {
            assert_eq!(after.iter().filter(|m| before.contains(m)).count(), 3);
        } else {
            assert_eq!(before, after);
        }
    }

    #[test]
    fn previous_members_are_skipped_while_enough_others_exist() {
        let people = ids(10);
        let seed = draw_seed("j", 1, &[1; 32]);
        let first = draw_committee(&seed, &people, &[], 5).unwrap();
        let second = draw_committee(&draw_seed("j", 2, &[1; 32]), &people, &first, 5).unwrap();
        assert!(
            second.iter().all(|m| !first.contains(m)),
            "5 others exist: no repeats"
        );
        let third = draw_committee(&draw_seed("j", 3, &[1; 32]), &people, &first, 7).unwrap();
        assert_eq!(
            third.iter().filter(|m| first.contains(m)).count(),
            2,
            "only as many repeats as needed"
        );
        assert_eq!(
            draw_committee(&seed, &people, &[], 11).unwrap_err(),
            DrawError::TooFew {
                size: 11,
                available: 10
            }
        );
        let mut dup = people.clone();
        dup.push(people[3].clone());
        assert!(matches!(
            draw_committee(&seed, &dup, &[], 3),
            Err(DrawError::Duplicate(_))
        ));
    }

    #[test]
    fn every_participant_is_drawn_about_equally_often() {
        let people = ids(6);
        let mut counts = [0u32; 6];
        for round in 0..3000 {
            for m in draw_committee(&draw_seed("j", round, &[0; 32]), &people, &[], 2).unwrap() {
                counts[people.iter().position(|p| *p == m).unwrap()] += 1;
            }
        }
        // Expected 1000 each; a biased draw would drift far outside ±15%.
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn chain_links_check_against_the_commitment_only_in_order() {
        let chain = DrawChain::new(zeroize::Zeroizing::new([5; 32]));
        let head = chain.commitment();
        for k in [1, 2, 17, CHAIN_LEN] {
            assert!(is_link(&head, k, &chain.value(k)), "link {k}");
            assert!(
                !is_link(&head, k + 1, &chain.value(k)),
                "link {k} is not link {}",
                k + 1
            );
        }
        assert_eq!(link(&chain.value(3)), chain.value(2));
        assert!(!is_link(&head, 0, &head), "v_0 reveals nothing");
        assert!(!is_link(&head, 1, &[5; 32]));
        let other = DrawChain::new(zeroize::Zeroizing::new([6; 32]));
        assert!(!is_link(&head, 1, &other.value(1)));
    }

    /// Known answer: pins the seed, entropy and pool derivations and the scored draw, so a
    /// change to any of them is caught; other implementations can check against it.
    #[test]
    fn draw_known_answer() {
        let people = ids(8);
        let mut pool = people[..5].to_vec();
        pool.sort();
        let ph = pool_hash("j-0123456789abcdef", 0, &pool);
        let entropy = draw_entropy(&ph, &[[1; 32], [2; 32], [3; 32], [4; 32], [5; 32]]);
        let seed = draw_seed("j-0123456789abcdef", 7, &entropy);
        let drawn = draw_committee(&seed, &people, &people[..2], 4).unwrap();
        let positions: Vec<usize> = drawn
            .iter()
            .map(|m| people.iter().position(|p| p == m).unwrap())
            .collect();
        let chain = DrawChain::new(zeroize::Zeroizing::new([9; 32]));
        assert_eq!(
            (
                hex::encode(seed),
                positions,
                hex::encode(chain.commitment())
            ),
            (
                KAT_SEED.to_string(),
                KAT_POSITIONS.to_vec(),
                KAT_CHAIN_HEAD.to_string()
            )
        );
    }

    const KAT_SEED: &str = "81e5b2dbfc5851810105c7e78e8d1445c65be04d4269502b2f6b4f6f9e46432f";
    const KAT_POSITIONS: [usize; 4] = [3, 2, 6, 4];
    const KAT_CHAIN_HEAD: &str = "8591317f3a291045717c047633c7f4552305664063cc5ae3b437be3bce953159";
}
