//! The protocol under dropouts, a curious coordinator and a malicious one.

use std::sync::Arc;

use conclave_crypto::{Identity, ParticipantId};
use proptest::prelude::*;

use super::*;
use crate::quantize::ring_add;

struct World {
    config: RoundConfig,
    people: Vec<Arc<Identity>>,
}

/// `n` participants; the first `c` of them also form the committee.
fn world(n: usize, c: usize, t: usize, min: usize, len: usize) -> World {
    let people: Vec<Arc<Identity>> = (0..n).map(|_| Arc::new(Identity::generate())).collect();
    let config = RoundConfig {
        job_id: "j-test".into(),
        round: 4,
        participants: people.iter().map(|p| p.public()).collect(),
        committee: people[..c].iter().map(|p| p.public()).collect(),
        threshold: t,
        min_participants: min,
        len,
        plan_hash: [7; 32],
    };
    World { config, people }
}

fn vector(i: usize, len: usize) -> Vec<u32> {
    (0..len)
        .map(|k| {
            (i as u32 + 1)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(k as u32 * 97)
        })
        .collect()
}

/// Runs a round: participants not in `silent` upload, members not in `absent` answer.
/// Returns the unmasked sum, or the step that refused.
fn run_round(
    w: &World,
    silent: &[usize],
    absent: &[usize],
) -> Result<(Vec<u32>, Vec<u32>), ProtocolError> {
    let mut agg = Aggregator::new(w.config.clone())?;
    let mut expected = vec![0u32; w.config.len];
    for (i, p) in w
        .people
        .iter()
        .enumerate()
        .filter(|(i, _)| !silent.contains(i))
    {
        let q = vector(i, w.config.len);
        ring_add(&mut expected, &q);
        let (masked, manifest) = contribute(&w.config, p, q.as_slice())?;
        agg.accept(HashedBytes::new(&le_bytes(&masked)), manifest)?;
    }
    let c = w.config.committee.len();
    let answering: Vec<ParticipantId> = (0..c)
        .filter(|j| !absent.contains(j))
        .map(|j| w.people[j].participant_id())
        .collect();
    let statement = agg.propose(&answering)?;
    let mut members: Vec<(Member, Vec<MemberView>)> = (0..c)
        .filter(|j| !absent.contains(j))
        .map(|j| {
            let views = agg.views_for(&w.people[j].participant_id()).unwrap();
            (
                Member::new(w.config.clone(), Arc::clone(&w.people[j])).unwrap(),
                views,
            )
        })
        .collect();
    for (m, views) in &mut members {
        agg.add_approval(m.sign_statement(&statement, views)?)?;
    }
    let approvals = agg.approvals();
    for (m, _) in &mut members {
        let reveal = m.reveal(&approvals)?;
        let answering_positions: Vec<usize> = (0..c).filter(|j| !absent.contains(j)).collect();
        assert!(
            reveal
                .shares
                .iter()
                .all(|s| !answering_positions.contains(&s.absent)),
            "never a share of an answering member"
        );
        agg.add_reveal(reveal)?;
    }
    Ok((agg.finish()?, expected))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// For any n, length, c, t and dropout sets: within tolerance the unmasked sum equals the
    /// plain ring sum of the survivors' vectors exactly; beyond it the coordinator cannot even
    /// propose, so no member reveals anything.
    #[test]
    fn unmasked_sum_is_exact_under_any_dropouts(
        n in 2usize..7, len in 1usize..40, c_raw in 1usize..5, t_frac in 0.0f64..1.0, min_raw in 1usize..7,
        silent_bits in any::<u8>(), absent_bits in any::<u8>(),
    ) {
        let c = c_raw.min(n);
        let t = c / 2 + 1 + ((c - c / 2 - 1) as f64 * t_frac) as usize;
        let min = min_raw.min(n);
        let w = world(n, c, t, min, len);
        let silent: Vec<usize> = (0..n).filter(|i| silent_bits >> i & 1 == 1).collect();
        let absent: Vec<usize> = (0..c).filter(|j| absent_bits >> j & 1 == 1).collect();
        let result = run_round(&w, &silent, &absent);
        let uploads = n - silent.len();
        if uploads >= min && c - absent.len() >= t {
            let (sum, expected) = result.unwrap();
            prop_assert_eq!(sum, expected);
        } else {
            let refused = matches!(result, Err(ProtocolError::TooFewUploads { .. } | ProtocolError::TooFewMembers { .. }));
            prop_assert!(refused, "{:?}", result.map(|_| ()));
        }
    }
}

#[test]
fn a_member_dropping_after_signing_fails_the_round() {
    let w = world(4, 3, 2, 2, 8);
    let mut agg = Aggregator::new(w.config.clone()).unwrap();
    for p in &w.people {
        let (masked, manifest) = contribute(&w.config, p, vector(0, 8)).unwrap();
        agg.accept(HashedBytes::new(&le_bytes(&masked)), manifest)
            .unwrap();
    }
    let all: Vec<ParticipantId> = w.people[..3].iter().map(|p| p.participant_id()).collect();
    let statement = agg.propose(&all).unwrap();
    let mut members: Vec<Member> = w.people[..3]
        .iter()
        .map(|p| Member::new(w.config.clone(), Arc::clone(p)).unwrap())
        .collect();
    for (j, m) in members.iter_mut().enumerate() {
        let views = agg.views_for(&w.people[j].participant_id()).unwrap();
        agg.add_approval(m.sign_statement(&statement, &views).unwrap())
            .unwrap();
    }
    let approvals = agg.approvals();
    for m in &mut members[..2] {
        agg.add_reveal(m.reveal(&approvals).unwrap()).unwrap();
    }
    // Member 3 signed and went away: the sum cannot be unmasked, and no second statement can
    // be proposed to collect its seeds instead.
    assert!(agg.finish().is_err());
    assert_eq!(
        agg.propose(&all[..2]).unwrap_err(),
        ProtocolError::AlreadyProposed
    );
}

#[test]
fn malicious_coordinator_gets_nothing_for_a_single_upload() {
    let w = world(5, 3, 2, 3, 16);
    let (masked, manifest) = contribute(&w.config, &w.people[4], vector(4, 16)).unwrap();
    let statement = Statement {
        job_id: w.config.job_id.clone(),
        round: w.config.round,
        uploads: vec![(manifest.participant.clone(), manifest.hash())],
        answering: w.people[..3].iter().map(|p| p.participant_id()).collect(),
    };
    for p in &w.people[..3] {
        let mut m = Member::new(w.config.clone(), Arc::clone(p)).unwrap();
        let k = w.config.member_position(&p.participant_id()).unwrap();
        assert_eq!(
            m.sign_statement(&statement, &[manifest.view_for(k)])
                .unwrap_err(),
            ProtocolError::TooFewUploads { got: 1, min: 3 }
        );
        assert_eq!(
            m.reveal(&[]).unwrap_err(),
            ProtocolError::OutOfOrder("no statement signed yet")
        );
    }
    // The aggregator refuses to propose it too.
    let mut agg = Aggregator::new(w.config.clone()).unwrap();
    agg.accept(HashedBytes::new(&le_bytes(&masked)), manifest)
        .unwrap();
    assert!(matches!(
        agg.propose(&statement.answering),
        Err(ProtocolError::TooFewUploads { .. })
    ));
}

#[test]
fn malicious_coordinator_showing_different_statements_gets_nothing() {
    // c = 5, t = 3: two different statements cannot both collect 3 signatures.
    let w = world(6, 5, 3, 2, 16);
    let contributions: Vec<_> = w
        .people
        .iter()
        .enumerate()
        .map(|(i, p)| contribute(&w.config, p, vector(i, 16)).unwrap())
        .collect();
    let all_members: Vec<ParticipantId> =
        w.people[..5].iter().map(|p| p.participant_id()).collect();
    let statement = |skip: usize| {
        let mut uploads: Vec<(ParticipantId, [u8; 32])> = contributions
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, (_, m))| (m.participant.clone(), m.hash()))
            .collect();
        uploads.sort();
        let manifests: Vec<Manifest> = uploads
            .iter()
            .map(|(id, _)| {
                contributions
                    .iter()
                    .find(|(_, m)| &m.participant == id)
                    .unwrap()
                    .1
                    .clone()
            })
            .collect();
        (
            Statement {
                job_id: w.config.job_id.clone(),
                round: w.config.round,
                uploads,
                answering: all_members.clone(),
            },
            manifests,
        )
    };
    let (s1, m1) = statement(5); // leaves out participant 5
    let (s2, m2) = statement(4); // leaves out participant 4: the difference isolates q_5 - q_4
    let mut members: Vec<Member> = w.people[..5]
        .iter()
        .map(|p| Member::new(w.config.clone(), Arc::clone(p)).unwrap())
        .collect();
    let mut a1 = Vec::new();
    let mut a2 = Vec::new();
    let views = |ms: &[Manifest], j: usize| -> Vec<MemberView> {
        ms.iter().map(|m| m.view_for(j)).collect()
    };
    for (j, m) in members.iter_mut().enumerate() {
        if j < 2 {
            a1.push(m.sign_statement(&s1, &views(&m1, j)).unwrap());
        } else {
            a2.push(m.sign_statement(&s2, &views(&m2, j)).unwrap());
        }
    }
    // Nobody signs a second statement.
    for (j, m) in members.iter_mut().enumerate() {
        let other = m
            .sign_statement(&s1, &views(&m1, j))
            .and(m.sign_statement(&s2, &views(&m2, j)));
        assert_eq!(other.unwrap_err(), ProtocolError::AlreadySigned);
    }
    // S1 has 2 < t signatures: its signers reveal nothing, even when shown S2's signatures or
    // signatures forged by the coordinator's own key.
    let coordinator = Identity::generate();
    let forged = Approval {
        member: coordinator.participant_id(),
        statement_hash: s1.hash(),
        signature: coordinator.sign(&s1.hash()).to_vec(),
    };
    let mut shown = a1.clone();
    shown.extend(a2.iter().cloned());
    shown.push(forged);
    let mut duplicate = a1[0].clone();
    duplicate.signature = a1[0].signature.clone();
    shown.push(duplicate);
    for m in &mut members[..2] {
        assert_eq!(
            m.reveal(&shown).unwrap_err(),
            ProtocolError::NotApproved { got: 2, t: 3 }
        );
    }
    // S2 is a legitimate statement with 3 signatures; its members may reveal for it.
    assert!(members[2].reveal(&a2).is_ok());
}

#[test]
fn members_refuse_statements_that_are_not_for_them_or_are_tampered() {
    let w = world(4, 3, 2, 2, 8);
    let contributions: Vec<_> = w
        .people
        .iter()
        .enumerate()
        .map(|(i, p)| contribute(&w.config, p, vector(i, 8)).unwrap())
        .collect();
    let mut uploads: Vec<_> = contributions
        .iter()
        .map(|(_, m)| (m.participant.clone(), m.hash()))
        .collect();
    uploads.sort();
    let manifests: Vec<Manifest> = uploads
        .iter()
        .map(|(id, _)| {
            contributions
                .iter()
                .find(|(_, m)| &m.participant == id)
                .unwrap()
                .1
                .clone()
        })
        .collect();
    let members: Vec<ParticipantId> = w.people[..3].iter().map(|p| p.participant_id()).collect();
    let base = Statement {
        job_id: w.config.job_id.clone(),
        round: w.config.round,
        uploads,
        answering: members.clone(),
    };
    let fresh = |j: usize| Member::new(w.config.clone(), Arc::clone(&w.people[j])).unwrap();
    let v0 = |ms: &[Manifest]| -> Vec<MemberView> { ms.iter().map(|m| m.view_for(0)).collect() };

    // Listing member 0 as absent while asking it to sign.
    let mut s = base.clone();
    s.answering = members[1..].to_vec();
    assert_eq!(
        fresh(0).sign_statement(&s, &v0(&manifests)).unwrap_err(),
        ProtocolError::NotInStatement
    );
    // Another round.
    let mut s = base.clone();
    s.round = 5;
    assert!(matches!(
        fresh(0).sign_statement(&s, &v0(&manifests)),
        Err(ProtocolError::WrongRound { .. })
    ));
    // A tampered manifest (member 0's seed box swapped for member 1's): the boxes no longer
    // match the signed digest.
    let mut bad = v0(&manifests);
    bad[0].sealed_box = manifests[0].sealed[1].clone();
    assert!(matches!(
        fresh(0).sign_statement(&base, &bad),
        Err(ProtocolError::BadManifest(_))
    ));
    // Consistent digests, but re-signed by someone who is not that participant.
    let mut forged = manifests[0].clone();
    forged.sealed.swap(0, 1);
    let mallory = Identity::generate();
    forged.signature = mallory.sign(&forged.hash()).to_vec();
    let mut s = base.clone();
    let pos = s
        .uploads
        .iter()
        .position(|(id, _)| *id == forged.participant)
        .unwrap();
    s.uploads[pos].1 = forged.hash();
    let mut views = v0(&manifests);
    views[pos] = forged.view_for(0);
    assert!(matches!(
        fresh(0).sign_statement(&s, &views),
        Err(ProtocolError::BadSignature(_))
    ));
    // The same after checking the genuine uploads: what the check verified covers only the
    // manifest hashes it saw, not the participant.
    let mut checked = fresh(0);
    assert!(checked.check(&v0(&manifests)).unwrap().is_empty());
    assert!(matches!(
        checked.sign_statement(&s, &views),
        Err(ProtocolError::BadSignature(_))
    ));
    // And a checked upload's box swapped after the check is still refused.
    let mut checked = fresh(0);
    checked.check(&v0(&manifests)).unwrap();
    assert!(matches!(
        checked.sign_statement(&base, &bad),
        Err(ProtocolError::BadManifest(_))
    ));
    assert!(checked.sign_statement(&base, &v0(&manifests)).is_ok());
    // A non-member in A.
    let mut s = base.clone();
    s.answering.push(mallory.participant_id());
    assert!(matches!(
        fresh(0).sign_statement(&s, &v0(&manifests)),
        Err(ProtocolError::NotMember(_))
    ));
    // Only committee members can hold member state.
    assert!(Member::new(w.config.clone(), Arc::clone(&w.people[3])).is_err());
}

/// What the coordinator holds of a participant — the masked vector — looks uniform even when
/// the update is all zeros, and no seed appears in anything it holds.
#[test]
fn curious_coordinator_sees_uniform_bytes_and_no_seed() {
    let w = world(3, 3, 2, 2, 64 * 1024);
    let zeros = vec![0u32; w.config.len];
    let (masked, manifest) = contribute(&w.config, &w.people[0], zeros.as_slice()).unwrap();
    let bytes: Vec<u8> = masked.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut counts = [0f64; 256];
    for b in &bytes {
        counts[*b as usize] += 1.0;
    }
    let expected = bytes.len() as f64 / 256.0;
    let chi2: f64 = counts
        .iter()
        .map(|c| (c - expected).powi(2) / expected)
        .sum();
    // 255 degrees of freedom: the 99.99% quantile is about 347.
    assert!(chi2 < 347.0, "chi-squared {chi2}");

    // Members open their seeds; none of them occurs in the coordinator's bytes.
    let mut held = bytes.clone();
    for s in &manifest.sealed {
        held.extend_from_slice(s);
    }
    for j in 0..3 {
        let plain = conclave_crypto::seal::open(
            &w.people[j],
            &w.config.box_info(&manifest.participant, j),
            b"",
            &manifest.sealed[j],
        )
        .unwrap();
        let seed = &plain[..32];
        assert_eq!(
            plain.len(),
            32 + 33 * 2,
            "a seed and a share of each other seed"
        );
        assert!(
            !held.windows(32).any(|win| win == seed),
            "seed {j} in the clear"
        );
        // Nor does any share this member holds.
        for share in plain[32..].chunks(33) {
            assert!(
                !held.windows(32).any(|win| win == &share[1..]),
                "a share in the clear"
            );
        }
    }
}

/// A participant that seals garbage to one member (under a valid signature) is left out on
/// that member's signed complaint, before any statement; the round sums the others exactly.
#[test]
fn an_unopenable_box_excludes_its_participant_not_the_round() {
    let w = world(5, 3, 2, 2, 8);
    let mut agg = Aggregator::new(w.config.clone()).unwrap();
    let mut expected = vec![0u32; 8];
    let mut bad_manifest = None;
    let mut bad_bytes = Vec::new();
    for (i, p) in w.people.iter().enumerate() {
        let q = vector(i, 8);
        let (masked, mut manifest) = contribute(&w.config, p, q.as_slice()).unwrap();
        if i == 4 {
            manifest.sealed[1] = vec![0xAB; manifest.sealed[1].len()];
            manifest.sign(p);
            bad_manifest = Some(manifest.clone());
            bad_bytes = le_bytes(&masked);
        } else {
            ring_add(&mut expected, &q);
        }
        agg.accept(HashedBytes::new(&le_bytes(&masked)), manifest)
            .unwrap();
    }
    let members: Vec<ParticipantId> = w.people[..3].iter().map(|p| p.participant_id()).collect();
    let mut state: Vec<Member> = w.people[..3]
        .iter()
        .map(|p| Member::new(w.config.clone(), Arc::clone(p)).unwrap())
        .collect();
    let mut complaints = Vec::new();
    for (j, m) in state.iter_mut().enumerate() {
        complaints.extend(m.check(&agg.views_for(&members[j]).unwrap()).unwrap());
    }
    assert_eq!(complaints.len(), 1, "only member 1 cannot open a box");
    let complaint = complaints.pop().unwrap();
    assert_eq!(complaint.member, members[1]);
    assert_eq!(complaint.participant, w.people[4].participant_id());
    assert_eq!(complaint.reason, ComplaintReason::Unopenable);
    // A complaint signed by someone else, or about another manifest, is refused.
    let mut forged = complaint.clone();
    forged.signature = w.people[3].sign(&forged.hash()).to_vec();
    assert!(matches!(
        agg.check_complaint(&forged),
        Err(ProtocolError::BadSignature(_))
    ));
    let mut other = complaint.clone();
    other.manifest_hash = [9; 32];
    other.signature = w.people[1].sign(&other.hash()).to_vec();
    assert!(agg.check_complaint(&other).is_err());
    // The complaining member will not sum that upload, whatever it is asked.
    let all_uploads = agg.propose_preview();
    let mut with_bad = Statement {
        job_id: w.config.job_id.clone(),
        round: w.config.round,
        uploads: all_uploads,
        answering: members.clone(),
    };
    with_bad.uploads.sort();
    let views: Vec<MemberView> = with_bad
        .uploads
        .iter()
        .map(|(id, _)| {
            if *id == w.people[4].participant_id() {
                bad_manifest.as_ref().unwrap().view_for(1)
            } else {
                agg.views_for(&members[1])
                    .unwrap()
                    .into_iter()
                    .find(|v| &v.participant == id)
                    .unwrap()
            }
        })
        .collect();
    assert!(matches!(
        state[1].sign_statement(&with_bad, &views),
        Err(ProtocolError::Complained(_))
    ));
    agg.exclude(complaint, HashedBytes::new(&bad_bytes))
        .unwrap();
    assert_eq!(agg.uploads(), 4);
    assert_eq!(agg.complaints().len(), 1);
    let statement = agg.propose(&members).unwrap();
    assert!(
        !statement
            .uploads
            .iter()
            .any(|(id, _)| *id == w.people[4].participant_id())
    );
    // Complaints are closed once the statement is out.
    let late = state[0]
        .check(&agg.views_for(&members[0]).unwrap())
        .unwrap();
    assert!(late.is_empty());
    for (j, m) in state.iter_mut().enumerate() {
        agg.add_approval(
            m.sign_statement(&statement, &agg.views_for(&members[j]).unwrap())
                .unwrap(),
        )
        .unwrap();
    }
    let approvals = agg.approvals();
    for m in &mut state {
        agg.add_reveal(m.reveal(&approvals).unwrap()).unwrap();
    }
    assert_eq!(agg.finish().unwrap(), expected);
}

/// What a member signed in an earlier life (restored from its own records) binds it: a
/// re-sent task with another statement for the same round gets nothing.
#[test]
fn a_restored_member_signs_only_the_statement_it_signed_before() {
    let w = world(4, 3, 2, 2, 8);
    let mut agg = Aggregator::new(w.config.clone()).unwrap();
    let mut manifests = Vec::new();
    for (i, p) in w.people.iter().enumerate() {
        let (masked, manifest) = contribute(&w.config, p, vector(i, 8)).unwrap();
        agg.accept(HashedBytes::new(&le_bytes(&masked)), manifest.clone())
            .unwrap();
        manifests.push(manifest);
    }
    let members: Vec<ParticipantId> = w.people[..3].iter().map(|p| p.participant_id()).collect();
    let s1 = agg.propose(&members).unwrap();
    let views = agg.views_for(&members[0]).unwrap();
    let mut first = Member::new(w.config.clone(), Arc::clone(&w.people[0])).unwrap();
    let approval = first.sign_statement(&s1, &views).unwrap();
    // The participant process restarts: a fresh member state, restored from its records.
    let mut again = Member::new(w.config.clone(), Arc::clone(&w.people[0])).unwrap();
    again.restore_signed(s1.hash());
    let mut s2 = s1.clone();
    s2.uploads.pop();
    let views2: Vec<MemberView> = views[..views.len() - 1].to_vec();
    assert_eq!(
        again.sign_statement(&s2, &views2).unwrap_err(),
        ProtocolError::AlreadySigned
    );
    assert_eq!(again.sign_statement(&s1, &views).unwrap(), approval);
}
