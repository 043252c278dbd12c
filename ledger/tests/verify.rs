//! Verification against tampering and protocol violations: each test builds a valid ledger
//! (a plain and a secure-aggregation job, several rounds, rewards, an export), damages it the
//! way an attacker with access to the database or the coordinator's key would, and checks
//! that `verify_ledger` names exactly the damaged entry.

use std::path::Path;

use conclave_crypto::committee::{draw_committee, draw_seed};
use conclave_crypto::{Identity, ParticipantId};
use conclave_ledger::sim::{PLAIN_JOB, SECAGG_JOB, SimJob};
use conclave_ledger::verify::verify_ledger;
use conclave_ledger::{Ledger, Payload};
use proptest::prelude::*;
use rusqlite::{Connection, params};

/// Builds a valid ledger at `path`; returns the coordinator key and the entry count.
fn build(path: &Path) -> (Identity, u64) {
    let coordinator = Identity::generate();
    let ledger = Ledger::open(path).unwrap();
    let mut b = ledger.batch(&coordinator, 1_700_000_000_000);
    let mut plain = SimJob::create(&mut b, "j-plain", PLAIN_JOB, 3);
    let mut secure = SimJob::create(&mut b, "j-secure", SECAGG_JOB, 5);
    ledger.commit(b, &[]).unwrap();
    for _ in 0..2 {
        let mut b = ledger.batch(&coordinator, 1_700_000_001_000);
        plain.round(&mut b);
        secure.round(&mut b);
        ledger.commit(b, &[]).unwrap();
    }
    let mut b = ledger.batch(&coordinator, 1_700_000_002_000);
    let (hash, version) = secure.model_hash();
    b.push(conclave_ledger::sim::export(
        "j-secure",
        version,
        &hash,
        &secure.participants[0],
    ));
    let head = ledger.commit(b, &[]).unwrap();
    (coordinator, head.len)
}

fn rows(path: &Path) -> Vec<(i64, Vec<u8>, Vec<u8>)> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare("SELECT idx, body, signature FROM ledger ORDER BY idx")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn first_bad(path: &Path) -> Option<u64> {
    let ledger = Ledger::open_read_only(path).unwrap();
    verify_ledger(&ledger, None)
        .unwrap()
        .problem
        .map(|p| p.index)
}

#[test]
fn a_valid_ledger_verifies_and_holds_draws_attestations_and_rewards() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    let (coordinator, n) = build(&path);
    let ledger = Ledger::open_read_only(&path).unwrap();
    let report = verify_ledger(&ledger, Some(&coordinator.participant_id())).unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.verified, n);
    assert_eq!(report.head, ledger.head().hash);
    let mut kinds = std::collections::BTreeSet::new();
    ledger
        .for_each(|e| {
            kinds.insert(e.kind());
        })
        .unwrap();
    assert_eq!(kinds.len(), conclave_ledger::Kind::ALL.len(), "{kinds:?}");
    // Pinning another coordinator key fails at entry 0.
    let other = Identity::generate().participant_id();
    let report = verify_ledger(&ledger, Some(&other)).unwrap();
    assert_eq!(report.problem.unwrap().index, 0);
}

#[derive(Clone, Debug)]
enum Damage {
    FlipBodyByte { entry: usize, at: usize, bit: u8 },
    FlipSignatureByte { entry: usize, at: usize },
    Delete { entry: usize },
    Swap { a: usize, b: usize },
    ForgeSignature { entry: usize },
}

fn damage() -> impl Strategy<Value = Damage> {
    // Entry positions are taken modulo the ledger's length in the test.
    prop_oneof![
        (0usize..1000, 0usize..100_000, 0u8..8).prop_map(|(entry, at, bit)| Damage::FlipBodyByte {
            entry,
            at,
            bit
        }),
        (0usize..1000, 0usize..64).prop_map(|(entry, at)| Damage::FlipSignatureByte { entry, at }),
        (0usize..1000).prop_map(|entry| Damage::Delete { entry }),
        (0usize..1000, 1usize..1000).prop_map(|(a, b)| Damage::Swap { a, b }),
        (0usize..1000).prop_map(|entry| Damage::ForgeSignature { entry }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_damage_is_named_at_its_exact_index(d in damage()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l.db");
        let (_, n) = build(&path);
        let n = n as usize;
        let stored = rows(&path);
        let conn = Connection::open(&path).unwrap();
        let expected = match d {
            Damage::FlipBodyByte { entry, at, bit } => {
                let i = entry % n;
                let mut body = stored[i].1.clone();
                let at = at % body.len();
                body[at] ^= 1 << bit;
                conn.execute("UPDATE ledger SET body = ?1 WHERE idx = ?2", params![body, i as i64]).unwrap();
                i
            }
            Damage::FlipSignatureByte { entry, at } => {
                let i = entry % n;
                let mut sig = stored[i].2.clone();
                sig[at] ^= 0x40;
                conn.execute("UPDATE ledger SET signature = ?1 WHERE idx = ?2", params![sig, i as i64]).unwrap();
                i
            }
            Damage::Delete { entry } => {
                // Deleting the last entry is a truncation: only a replica can tell (tested there).
                let i = entry % (n - 1);
                conn.execute("DELETE FROM ledger WHERE idx = ?1", params![i as i64]).unwrap();
                i
            }
            Damage::Swap { a, b } => {
                let a = a % n;
                let b = (a + 1 + b % (n - 1)) % n;
                let (lo, hi) = (a.min(b), a.max(b));
                for (to, from) in [(lo, hi), (hi, lo)] {
                    conn.execute(
                        "UPDATE ledger SET body = ?1, signature = ?2 WHERE idx = ?3",
                        params![stored[from].1, stored[from].2, to as i64],
                    ).unwrap();
                }
                lo
            }
            Damage::ForgeSignature { entry } => {
                // A valid signature, by a key that is not the coordinator's, on the true hash.
                let i = entry % n;
                let forger = Identity::generate();
                let hash = conclave_ledger::entry::entry_hash(&stored[i].1);
                conn.execute(
                    "UPDATE ledger SET signature = ?1 WHERE idx = ?2",
                    params![forger.sign(&hash).to_vec(), i as i64],
                ).unwrap();
                i
            }
        };
        drop(conn);
        prop_assert_eq!(first_bad(&path), Some(expected as u64), "{:?}", d);
    }
}

/// Appends one entry, properly linked and signed by the coordinator, that breaks a rule.
fn append_signed(path: &Path, coordinator: &Identity, payload: Payload) -> u64 {
    let ledger = Ledger::open(path).unwrap();
    let mut b = ledger.batch(coordinator, 1_700_000_003_000);
    b.push(payload);
    ledger.commit(b, &[]).unwrap().len - 1
}

/// A coordinator that signs, in its own name and correctly linked, an entry that breaks a
/// rule: a committee or seed that is not the draw, a seed it ground (another entropy, with the
/// committee that seed gives), a reward that is not the policy's, a statement whose members
/// did not attest or that drops an accepted upload nobody complained about, a complaint by a
/// non-member, an upload or admission the participant never signed, an export of a model the
/// job never produced or that no admitted participant signed. Each is named at its index.
#[test]
fn a_coordinator_that_signs_a_wrong_entry_is_caught_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        "committee",
        "seed",
        "ground",
        "reward",
        "statement",
        "dropped",
        "complaint",
        "upload",
        "admission",
        "export",
        "stranger export",
        "unsigned export",
        "copied export",
    ];
    for case in cases {
        let path = dir.path().join(format!("{case}.db"));
        let coordinator = Identity::generate();
        let ledger = Ledger::open(&path).unwrap();
        let mut b = ledger.batch(&coordinator, 1);
        let mut secure = SimJob::create(&mut b, "j-s", SECAGG_JOB, 5);
        secure.round(&mut b);
        ledger.commit(b, &[]).unwrap();
        // Round 2 built honestly, then one entry altered and signed again by the coordinator.
        let mut b = ledger.batch(&coordinator, 2);
        secure.round(&mut b);
        let mut entries: Vec<Payload> = b.payloads().to_vec();
        drop(b);
        let target = entries
            .iter()
            .position(|p| {
                matches!(
                    (case, p),
                    ("committee" | "seed" | "ground", Payload::RoundOpened(_))
                        | ("reward", Payload::Reward(_))
                        | ("statement" | "dropped", Payload::RoundClosed(_))
                        | ("complaint", Payload::CommitteeComplaint(_))
                        | ("upload", Payload::UpdateAccepted(_))
                )
            })
            .unwrap_or(entries.len());
        let stranger = Identity::generate();
        let committee: Vec<String> = entries
            .iter()
            .find_map(|p| match p {
                Payload::RoundOpened(r) => Some(r.committee.clone()),
                _ => None,
            })
            .unwrap();
        match (case, entries.get_mut(target)) {
            ("committee", Some(Payload::RoundOpened(r))) => r.committee.reverse(),
            ("seed", Some(Payload::RoundOpened(r))) => r.draw_seed[0] ^= 1,
            ("ground", Some(Payload::RoundOpened(r))) => {
                // The coordinator tries entropies until the draw suits it, and records the
                // committee that seed really gives: consistent, but not the job's entropy.
                let ids: Vec<ParticipantId> = r
                    .participants
                    .iter()
                    .map(|d| ParticipantId::parse(d).unwrap())
                    .collect();
                let honest = r.committee.clone();
                for k in 0u8.. {
                    let seed = draw_seed("j-s", r.round, &[k; 32]);
                    let drawn = draw_committee(&seed, &ids, &[], 3).unwrap();
                    let drawn: Vec<String> = drawn.iter().map(|m| m.to_string()).collect();
                    if drawn != honest {
                        r.draw_seed = seed.to_vec();
                        r.committee = drawn;
                        break;
                    }
                }
            }
            ("reward", Some(Payload::Reward(r))) => {
                r.awards[0].amount += 1;
                r.awards[1].amount -= 1;
            }
            ("statement", Some(Payload::RoundClosed(c))) => {
                // Claims a member answered who did not attest: the statement hash changes.
                c.statement.as_mut().unwrap().answering.pop();
            }
            ("dropped", Some(Payload::RoundClosed(c))) => {
                // Leaves out an accepted upload nobody complained about.
                let dropped = c.statement.as_mut().unwrap().uploads.remove(0);
                c.contributors
                    .retain(|x| x.participant != dropped.participant);
            }
            ("complaint", Some(Payload::CommitteeComplaint(x))) => {
                // Signed by the complainer, but the complainer is not on the committee.
                let outsider = secure
                    .participants
                    .iter()
                    .find(|p| !committee.contains(&p.participant_id().to_string()))
                    .unwrap();
                x.member = outsider.participant_id().to_string();
                let digest = conclave_aggregation::secagg::complaint_hash(
                    "j-s",
                    x.round,
                    &outsider.participant_id(),
                    &ParticipantId::parse(&x.participant).unwrap(),
                    &x.manifest_hash.clone().try_into().unwrap(),
                    conclave_aggregation::secagg::ComplaintReason::Unopenable,
                );
                x.signature = outsider.sign(&digest).to_vec();
            }
            ("upload", Some(Payload::UpdateAccepted(u))) => {
                // An upload the coordinator made up: signed by the coordinator, not by the
                // participant it names.
                u.payload_hash = vec![0xEE; 32];
                let digest = conclave_ledger::signed::contribution_digest(
                    "j-s",
                    u.round,
                    &ParticipantId::parse(&u.participant).unwrap(),
                    u.num_samples,
                    &u.payload_hash,
                    &u.manifest_hash,
                );
                u.signature = coordinator.sign(&digest).to_vec();
            }
            ("admission", None) => {
                let mut p = conclave_ledger::sim::admission("j-s", &stranger, true);
                if let Payload::ParticipantAdmitted(a) = &mut p {
                    a.signature = coordinator.sign(b"not the participant").to_vec();
                }
                entries.push(p);
            }
            ("export", None) => {
                entries.push(conclave_ledger::sim::export(
                    "j-s",
                    9,
                    &[0; 32],
                    &secure.participants[0],
                ));
            }
            ("stranger export", None) => {
                let (hash, version) = secure.model_hash();
                entries.push(conclave_ledger::sim::export(
                    "j-s", version, &hash, &stranger,
                ));
            }
            ("copied export", None) => {
                // An honest export, recorded twice.
                let (hash, version) = secure.model_hash();
                let p =
                    conclave_ledger::sim::export("j-s", version, &hash, &secure.participants[0]);
                entries.push(p.clone());
                entries.push(p);
            }
            ("unsigned export", None) => {
                let (hash, version) = secure.model_hash();
                let mut p =
                    conclave_ledger::sim::export("j-s", version, &hash, &secure.participants[0]);
                if let Payload::ModelExported(m) = &mut p {
                    m.format = "pt".into();
                }
                entries.push(p);
            }
            other => panic!("no target for {case}: {other:?}"),
        }
        let start = ledger.head().len;
        drop(ledger);
        let mut bad_index = None;
        // A copied export is bad at its second copy.
        let target = if case == "copied export" {
            target + 1
        } else {
            target
        };
        for (i, p) in entries.into_iter().enumerate() {
            let idx = append_signed(&path, &coordinator, p);
            if i == target {
                bad_index = Some(idx);
            }
        }
        assert_eq!(
            first_bad(&path),
            bad_index,
            "{case}: the altered entry (from {start}) is the first bad one"
        );
    }
}

#[test]
fn the_earliest_of_two_bad_signatures_in_one_batch_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("l.db");
    build(&path);
    let stored = rows(&path);
    let conn = Connection::open(&path).unwrap();
    // Entry 3: a corrupted signature. Entry 5: replaced by an entry a forger signed in its
    // own name, linked correctly to entry 4.
    let mut sig = stored[3].2.clone();
    sig[10] ^= 1;
    conn.execute(
        "UPDATE ledger SET signature = ?1 WHERE idx = 3",
        params![sig],
    )
    .unwrap();
    let original = conclave_ledger::Entry::from_parts(stored[5].1.clone(), &stored[5].2).unwrap();
    let forger = Identity::generate();
    let forged = conclave_ledger::Entry::create(
        &forger,
        5,
        original.prev_hash(),
        original.time_unix_ms(),
        original.payload().clone(),
    );
    conn.execute(
        "UPDATE ledger SET body = ?1, signature = ?2 WHERE idx = 5",
        params![forged.bytes(), &forged.signature()[..]],
    )
    .unwrap();
    drop(conn);
    assert_eq!(first_bad(&path), Some(3));
}

/// The draw's pool is not the coordinator's to pick: a first pool that leaves out an admitted
/// participant (its reveals consistent with the smaller pool) is caught at the draw_pool entry.
#[test]
fn a_draw_pool_the_coordinator_picked_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pool.db");
    let coordinator = Identity::generate();
    let ledger = Ledger::open(&path).unwrap();
    let mut b = ledger.batch(&coordinator, 1);
    let mut secure = SimJob::create(&mut b, "j-s", SECAGG_JOB, 5);
    ledger.commit(b, &[]).unwrap();
    let mut b = ledger.batch(&coordinator, 2);
    secure.round(&mut b);
    let mut entries: Vec<Payload> = b.payloads().to_vec();
    drop(b);
    let Payload::DrawPool(pool) = &mut entries[0] else {
        panic!("the first round starts with the draw")
    };
    let left_out = pool.participants.pop().unwrap();
    if let Payload::DrawReveals(r) = &mut entries[1] {
        r.reveals.retain(|v| v.participant != left_out);
    }
    let start = ledger.head().len;
    drop(ledger);
    for p in entries {
        append_signed(&path, &coordinator, p);
    }
    assert_eq!(first_bad(&path), Some(start));
}

/// A round's close and its reward are committed together: a ledger that ends owing the
/// reward lost its last entry, and verification names the index that is missing (a
/// coordinator resuming from it could record nothing more for the job).
#[test]
fn a_ledger_that_ends_owing_a_reward_is_named_at_the_missing_entry() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("owing.db");
    let coordinator = Identity::generate();
    let ledger = Ledger::open(&path).unwrap();
    let mut b = ledger.batch(&coordinator, 1);
    let mut plain = SimJob::create(&mut b, "j-p", PLAIN_JOB, 3);
    plain.round(&mut b);
    let mut entries: Vec<Payload> = b.payloads().to_vec();
    drop(b);
    assert!(matches!(entries.pop(), Some(Payload::Reward(_))));
    let mut b = ledger.batch(&coordinator, 1);
    for p in entries {
        b.push(p);
    }
    let head = ledger.commit(b, &[]).unwrap();
    drop(ledger);
    assert_eq!(first_bad(&path), Some(head.len));
}
