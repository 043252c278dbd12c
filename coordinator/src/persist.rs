//! How a job's record is kept in the database. Not as one value rewritten at every change —
//! with N participants a round's N upload commits then wrote O(N²) bytes, and each one copied
//! everything the job had ever recorded — but in keyed parts, each written when it is new or
//! has changed:
//!
//! ```text
//! job/<id>                   the header: spec, model versions and hashes, draw
//! job/<id>/p/<i>             participant i, in join order
//! job/<id>/r/<i>             round i's header (its uploads apart)
//! job/<id>/r/<i>/u/<j>       upload j of round i, in arrival order
//! job/<id>/e/<version>/<j>   evaluation j of a model version
//! job/<id>/x/<j>             export j
//! ```
//!
//! Indices are ten digits, zero-padded, so key order is record order. Participants, uploads,
//! evaluations and exports are only ever appended: what is new is what lies past the count already written. A header is
//! rewritten when a fingerprint of the fields that change in it after it is made (status,
//! versions, deadlines, the lengths of its lists) changes. A commit therefore costs what it
//! changes, not what the job holds. A record written by an older coordinator as one value still
//! loads, and its next commit rewrites it in parts. In debug builds every commit is read back and
//! compared with the record ([`crate::store::Store::commit`]), so every test also checks that
//! nothing a change makes is left unwritten.

use std::collections::BTreeMap;

use conclave_ledger::StateWrite;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::CoordinatorError;
use crate::store::{
    DrawRecord, EvalRecord, JobRecord, ParticipantRecord, RoundRecord, RoundStatus,
};

/// Key prefix of job records in the database's state table.
pub(crate) const JOB_KEY: &str = "job/";

/// What of a job's record the database holds: enough to tell what a commit must write.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Shadow {
    header: Option<HeaderPrint>,
    participants: usize,
    /// Per round: its header's fingerprint and how many of its uploads are written.
    rounds: Vec<(RoundPrint, usize)>,
    evaluations: BTreeMap<u32, usize>,
    exports: usize,
}

#[derive(Clone, Debug, PartialEq)]
struct HeaderPrint {
    spec: usize,
    created_unix_ms: u64,
    model_version: u32,
    model_hashes: usize,
    state_hash: Option<String>,
    finished: bool,
    draw: DrawPrint,
}

/// The draw's lists are replaced only together with its attempt numbers or entropy.
#[derive(Clone, Debug, PartialEq)]
struct DrawPrint {
    open: Option<(u32, usize)>,
    next_attempt: u32,
    excluded: usize,
    last_revealers: usize,
    entropy: Option<String>,
}

/// A round's lists (expected, committee, plan, seed) are fixed when it opens.
#[derive(Clone, Debug, PartialEq)]
struct RoundPrint {
    round: u32,
    status: RoundStatus,
    base_version: u32,
    result_version: Option<u32>,
    expected: usize,
    deadline_unix_ms: u64,
    committee: usize,
    draw_seed: usize,
    plan: usize,
    total_samples: Option<u64>,
}

impl Shadow {
    /// What the database holds once `record` is committed.
    pub fn of(record: &JobRecord) -> Self {
        Self {
            header: Some(HeaderPrint::of(record)),
            participants: record.participants.len(),
            rounds: record
                .rounds
                .iter()
                .map(|r| (RoundPrint::of(r), r.uploads.len()))
                .collect(),
            evaluations: record
                .evaluations
                .iter()
                .map(|(v, e)| (*v, e.len()))
                .collect(),
            exports: record.exports.len(),
        }
    }
}

impl HeaderPrint {
    fn of(r: &JobRecord) -> Self {
        let d = &r.draw;
        Self {
            spec: r.spec.len(),
            created_unix_ms: r.created_unix_ms,
            model_version: r.model_version,
            model_hashes: r.model_hashes.len(),
            state_hash: r.state_hash.clone(),
            finished: r.finished,
            draw: DrawPrint {
                open: d.open.as_ref().map(|(a, pool)| (*a, pool.len())),
                next_attempt: d.next_attempt,
                excluded: d.excluded.len(),
                last_revealers: d.last_revealers.len(),
                entropy: d.entropy.clone(),
            },
        }
    }
}

impl RoundPrint {
    fn of(r: &RoundRecord) -> Self {
        Self {
            round: r.round,
            status: r.status,
            base_version: r.base_version,
            result_version: r.result_version,
            expected: r.expected.len(),
            deadline_unix_ms: r.deadline_unix_ms,
            committee: r.committee.len(),
            draw_seed: r.draw_seed.len(),
            plan: r.plan.len(),
            total_samples: r.total_samples,
        }
    }
}

/// The header as stored: the record without its participants, rounds, evaluations and
/// exports (read back as a [`JobRecord`] whose lists are empty).
#[derive(Serialize)]
struct Header<'a> {
    id: &'a str,
    spec: &'a str,
    created_unix_ms: u64,
    model_version: u32,
    model_hashes: &'a [String],
    state_hash: &'a Option<String>,
    finished: bool,
    draw: &'a DrawRecord,
}

/// A round's header as stored: the round without its uploads.
#[derive(Serialize)]
struct RoundHeader<'a> {
    round: u32,
    status: RoundStatus,
    base_version: u32,
    result_version: Option<u32>,
    expected: &'a [String],
    deadline_unix_ms: u64,
    committee: &'a [String],
    draw_seed: &'a str,
    plan: &'a str,
    total_samples: Option<u64>,
}

fn json(value: &impl Serialize) -> Result<Vec<u8>, CoordinatorError> {
    serde_json::to_vec(value).map_err(|e| CoordinatorError::Storage(e.to_string()))
}

fn index(i: usize) -> String {
    format!("{i:010}")
}

/// The writes that bring the database from `shadow` to `record`.
pub(crate) fn writes(
    record: &JobRecord,
    shadow: &Shadow,
) -> Result<Vec<StateWrite>, CoordinatorError> {
    let base = format!("{JOB_KEY}{}", record.id);
    let mut out = Vec::new();
    let mut put = |key: String, value: Vec<u8>| out.push(StateWrite::Put { key, value });
    let r = record;
    if shadow.header.as_ref() != Some(&HeaderPrint::of(r)) {
        put(
            base.clone(),
            json(&Header {
                id: &r.id,
                spec: &r.spec,
                created_unix_ms: r.created_unix_ms,
                model_version: r.model_version,
                model_hashes: &r.model_hashes,
                state_hash: &r.state_hash,
                finished: r.finished,
                draw: &r.draw,
            })?,
        );
    }
    for (i, p) in r.participants.iter().enumerate().skip(shadow.participants) {
        put(format!("{base}/p/{}", index(i)), json(p)?);
    }
    for (i, round) in r.rounds.iter().enumerate() {
        let (print, uploads) = match shadow.rounds.get(i) {
            Some((print, uploads)) => (Some(print), *uploads),
            None => (None, 0),
        };
        let key = format!("{base}/r/{}", index(i));
        if print != Some(&RoundPrint::of(round)) {
            put(
                key.clone(),
                json(&RoundHeader {
                    round: round.round,
                    status: round.status,
                    base_version: round.base_version,
                    result_version: round.result_version,
                    expected: &round.expected,
                    deadline_unix_ms: round.deadline_unix_ms,
                    committee: &round.committee,
                    draw_seed: &round.draw_seed,
                    plan: &round.plan,
                    total_samples: round.total_samples,
                })?,
            );
        }
        for (j, u) in round.uploads.iter().enumerate().skip(uploads) {
            put(format!("{key}/u/{}", index(j)), json(u)?);
        }
    }
    for (version, reports) in &r.evaluations {
        let written = shadow.evaluations.get(version).copied().unwrap_or(0);
        for (j, e) in reports.iter().enumerate().skip(written) {
            put(
                format!("{base}/e/{}/{}", index(*version as usize), index(j)),
                json(e)?,
            );
        }
    }
    for (j, x) in r.exports.iter().enumerate().skip(shadow.exports) {
        put(format!("{base}/x/{}", index(j)), json(x)?);
    }
    Ok(out)
}

/// Appends the part at place `at` of its list (its key's last index) to `list`, refusing a
/// gap or a repeat and a value that is not a `what`.
fn append<T: DeserializeOwned>(
    list: &mut Vec<T>,
    at: usize,
    value: &[u8],
    what: &str,
) -> Result<(), String> {
    if at != list.len() {
        return Err(format!("{what}s out of order"));
    }
    list.push(serde_json::from_slice(value).map_err(|e| format!("not a valid {what}: {e}"))?);
    Ok(())
}

/// A job's record being read back from its parts.
#[derive(Default)]
struct Parts {
    header: Option<JobRecord>,
    participants: Vec<ParticipantRecord>,
    rounds: Vec<RoundRecord>,
    evaluations: BTreeMap<u32, Vec<EvalRecord>>,
    exports: Vec<(u32, String, String)>,
}

/// The job records in `rows` (the state table's `job/` rows, in key order), each with what the
/// database holds of it.
pub(crate) fn load(
    rows: Vec<(String, Vec<u8>)>,
) -> Result<Vec<(JobRecord, Shadow)>, CoordinatorError> {
    let mut jobs: BTreeMap<String, Parts> = BTreeMap::new();
    for (key, value) in rows {
        let bad = |why: &str| CoordinatorError::Storage(format!("{key}: {why}"));
        let rest = key
            .strip_prefix(JOB_KEY)
            .ok_or_else(|| bad("not a job key"))?;
        let (id, segments): (&str, Vec<&str>) = match rest.split_once('/') {
            None => (rest, Vec::new()),
            Some((id, part)) => (id, part.split('/').collect()),
        };
        if id.is_empty() {
            return Err(bad("no job id"));
        }
        let parts = jobs.entry(id.to_string()).or_default();
        // Exactly as written: ten ASCII digits.
        let number = |s: &str| -> Result<usize, CoordinatorError> {
            if s.len() != 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("malformed index"));
            }
            s.parse::<usize>().map_err(|_| bad("malformed index"))
        };
        match segments.as_slice() {
            [] => {
                if parts.header.is_some() {
                    return Err(bad("a second header"));
                }
                let header: JobRecord = serde_json::from_slice(&value)
                    .map_err(|e| bad(&format!("not a valid job header: {e}")))?;
                if header.id != id {
                    return Err(bad("names another job"));
                }
                parts.header = Some(header);
            }
            ["p", i] => append(&mut parts.participants, number(i)?, &value, "participant")
                .map_err(|why| bad(&why))?,
            ["r", i] => {
                append(&mut parts.rounds, number(i)?, &value, "round").map_err(|why| bad(&why))?
            }
            ["r", i, "u", j] => {
                let round = number(i)?;
                // Key order puts a round's uploads right after its header.
                let read = parts.rounds.len();
                let uploads = match parts.rounds.last_mut() {
                    Some(r) if round + 1 == read => &mut r.uploads,
                    _ => return Err(bad("an upload of a round not read")),
                };
                append(uploads, number(j)?, &value, "upload").map_err(|why| bad(&why))?
            }
            ["e", v, j] => {
                let version =
                    u32::try_from(number(v)?).map_err(|_| bad("model version too large"))?;
                let reports = parts.evaluations.entry(version).or_default();
                append(reports, number(j)?, &value, "evaluation").map_err(|why| bad(&why))?
            }
            ["x", j] => {
                append(&mut parts.exports, number(j)?, &value, "export").map_err(|why| bad(&why))?
            }
            _ => return Err(bad("not a part of a job record")),
        }
    }
    let mut out = Vec::with_capacity(jobs.len());
    for (id, parts) in jobs {
        let mut record = parts.header.ok_or_else(|| {
            CoordinatorError::Storage(format!("{JOB_KEY}{id}: parts of a job without its header"))
        })?;
        let inline = !record.participants.is_empty()
            || !record.rounds.is_empty()
            || !record.evaluations.is_empty()
            || !record.exports.is_empty();
        let split = !parts.participants.is_empty()
            || !parts.rounds.is_empty()
            || !parts.evaluations.is_empty()
            || !parts.exports.is_empty();
        let shadow = if inline {
            if split {
                return Err(CoordinatorError::Storage(format!(
                    "{JOB_KEY}{id}: a job record both whole and in parts"
                )));
            }
            // Written whole by an older coordinator: the next commit writes every part (and a
            // header without them).
            Shadow::default()
        } else {
            record.participants = parts.participants;
            record.rounds = parts.rounds;
            record.evaluations = parts.evaluations;
            record.exports = parts.exports;
            Shadow::of(&record)
        };
        out.push((record, shadow));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UploadRecord;
    use proptest::prelude::*;

    /// What a coordinator does to a job's record, in the order it can happen.
    #[derive(Clone, Debug)]
    enum Op {
        Join,
        Open,
        Upload,
        Close(bool),
        Report,
        DrawOpen,
        DrawStep(bool),
        Export,
        Finish,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Join),
            2 => Just(Op::Open),
            6 => Just(Op::Upload),
            2 => any::<bool>().prop_map(Op::Close),
            3 => Just(Op::Report),
            1 => Just(Op::DrawOpen),
            1 => any::<bool>().prop_map(Op::DrawStep),
            1 => Just(Op::Export),
            1 => Just(Op::Finish),
        ]
    }

    fn record() -> JobRecord {
        JobRecord {
            id: "j-0011223344556677".into(),
            spec: "0a0b".into(),
            created_unix_ms: 7,
            participants: Vec::new(),
            model_version: 0,
            model_hashes: vec!["00".repeat(32)],
            state_hash: None,
            rounds: Vec::new(),
            evaluations: BTreeMap::new(),
            finished: false,
            draw: DrawRecord::default(),
            exports: Vec::new(),
        }
    }

    /// Applies `op` as the coordinator would (ops that cannot happen now change nothing).
    fn apply(r: &mut JobRecord, op: &Op, step: usize) {
        let open = r
            .rounds
            .last()
            .is_some_and(|x| x.status == RoundStatus::Open);
        match op {
            Op::Join => r.participants.push(ParticipantRecord {
                did: format!("did:key:z{step}"),
                sealing_key: format!("{step:064}"),
                draw_commitment: String::new(),
            }),
            Op::Open if !open => r.rounds.push(RoundRecord {
                round: r.rounds.len() as u32 + 1,
                status: RoundStatus::Open,
                base_version: r.model_version,
                result_version: None,
                expected: r.participants.iter().map(|p| p.did.clone()).collect(),
                uploads: Vec::new(),
                deadline_unix_ms: step as u64,
                committee: vec![format!("did:key:c{step}")],
                draw_seed: "ab".into(),
                plan: format!("{step:x}"),
                total_samples: None,
            }),
            Op::Upload if open => {
                let round = r.rounds.last_mut().unwrap();
                if round.uploads.len() < round.expected.len() {
                    let did = round.expected[round.uploads.len()].clone();
                    round.uploads.push(UploadRecord {
                        did,
                        num_samples: step as u64,
                        payload_hash: "cd".into(),
                    });
                }
            }
            Op::Close(ok) if open => {
                let round = r.rounds.last_mut().unwrap();
                if *ok {
                    round.status = RoundStatus::Closed;
                    round.total_samples = Some(step as u64);
                    r.model_version += 1;
                    round.result_version = Some(r.model_version);
                    r.model_hashes.push(format!("{step:064}"));
                    r.state_hash = step.is_multiple_of(2).then(|| format!("{step:064x}"));
                } else {
                    round.status = RoundStatus::Failed;
                }
            }
            Op::Report => {
                let v = r.model_version;
                r.evaluations.entry(v).or_default().push(EvalRecord {
                    did: format!("did:key:z{step}"),
                    loss: 0.1 + step as f64 / 3.0,
                    accuracy: 1.0 / (step as f64 + 3.0),
                    num_examples: step as u64,
                });
            }
            Op::DrawOpen if r.draw.open.is_none() => {
                let pool = r.participants.iter().map(|p| p.did.clone()).collect();
                r.draw.open = Some((r.draw.next_attempt, pool));
            }
            Op::DrawStep(complete) if r.draw.open.is_some() => {
                let (_, pool) = r.draw.open.take().unwrap();
                if *complete {
                    r.draw.entropy = Some(format!("{step:064}"));
                } else {
                    r.draw.excluded.extend(pool.first().cloned());
                    r.draw.last_revealers = pool.into_iter().skip(1).collect();
                    r.draw.next_attempt += 1;
                }
            }
            Op::Export => r
                .exports
                .push((r.model_version, "onnx".into(), "did:key:x".into())),
            Op::Finish => r.finished = true,
            _ => {}
        }
    }

    fn commit(db: &mut BTreeMap<String, Vec<u8>>, r: &JobRecord, shadow: &Shadow) -> usize {
        let writes = writes(r, shadow).unwrap();
        let n = writes.len();
        for w in writes {
            match w {
                StateWrite::Put { key, value } => db.insert(key, value),
                StateWrite::Delete { key } => db.remove(&key),
            };
        }
        n
    }

    fn read(db: &BTreeMap<String, Vec<u8>>) -> Vec<(JobRecord, Shadow)> {
        load(db.iter().map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap()
    }

    proptest! {
        /// Whatever a job goes through, the record read back after each commit is the record
        /// committed, and what is read back knows what it holds (the next commit's writes
        /// start from it). A record first stored whole (by an older coordinator) loads, and
        /// goes on in parts.
        #[test]
        fn every_commit_reads_back_as_committed(
            ops in proptest::collection::vec(op(), 1..80),
            whole_at in 0usize..80,
        ) {
            let mut db = BTreeMap::new();
            let mut r = record();
            let mut shadow = Shadow::default();
            for (step, op) in ops.iter().enumerate() {
                apply(&mut r, op, step);
                if step == whole_at {
                    db.clear();
                    db.insert(format!("{JOB_KEY}{}", r.id), serde_json::to_vec(&r).unwrap());
                    let loaded = read(&db);
                    prop_assert_eq!(&loaded[0].0, &r);
                    shadow = loaded[0].1.clone();
                    continue;
                }
                commit(&mut db, &r, &shadow);
                let loaded = read(&db);
                prop_assert_eq!(loaded.len(), 1);
                prop_assert_eq!(&loaded[0].0, &r);
                prop_assert_eq!(&loaded[0].1, &Shadow::of(&r));
                shadow = loaded[0].1.clone();
            }
        }
    }

    /// The point of the split: an upload, a join or a report writes one small part, however
    /// many the job already holds.
    #[test]
    fn an_upload_writes_only_itself() {
        let mut db = BTreeMap::new();
        let mut r = record();
        for step in 0..500 {
            apply(&mut r, &Op::Join, step);
        }
        apply(&mut r, &Op::Open, 500);
        commit(&mut db, &r, &Shadow::default());
        for step in 0..500 {
            let shadow = Shadow::of(&r);
            apply(&mut r, &Op::Upload, 501 + step);
            assert_eq!(commit(&mut db, &r, &shadow), 1);
        }
        let shadow = Shadow::of(&r);
        apply(&mut r, &Op::Report, 2000);
        apply(&mut r, &Op::Join, 2001);
        assert_eq!(commit(&mut db, &r, &shadow), 2);
        let shadow = Shadow::of(&r);
        apply(&mut r, &Op::Export, 2001);
        assert_eq!(commit(&mut db, &r, &shadow), 1);
        // Closing writes the round's header and the job's, nothing else.
        let shadow = Shadow::of(&r);
        apply(&mut r, &Op::Close(true), 2002);
        assert_eq!(commit(&mut db, &r, &shadow), 2);
        assert_eq!(read(&db)[0].0, r);
    }

    /// The stored header and round header are the record and round without exactly their
    /// lists kept apart: a field added to the record but not to them would not be stored.
    #[test]
    fn headers_hold_every_field_but_the_lists_kept_apart() {
        let keys = |v: serde_json::Value| -> std::collections::BTreeSet<String> {
            v.as_object().unwrap().keys().cloned().collect()
        };
        let mut r = record();
        for (step, op) in [Op::Join, Op::Open, Op::Upload].iter().enumerate() {
            apply(&mut r, op, step);
        }
        let mut db = BTreeMap::new();
        commit(&mut db, &r, &Shadow::default());
        let stored = |key: String| serde_json::from_slice(&db[&key]).unwrap();
        let mut header = keys(stored(format!("{JOB_KEY}{}", r.id)));
        header.extend(["participants", "rounds", "evaluations", "exports"].map(String::from));
        assert_eq!(header, keys(serde_json::to_value(&r).unwrap()));
        let mut round = keys(stored(format!("{JOB_KEY}{}/r/{}", r.id, index(0))));
        round.insert("uploads".into());
        assert_eq!(round, keys(serde_json::to_value(&r.rounds[0]).unwrap()));
    }

    #[test]
    fn parts_out_of_order_or_without_a_header_are_refused() {
        let mut db = BTreeMap::new();
        let mut r = record();
        for step in 0..3 {
            apply(&mut r, &Op::Join, step);
        }
        commit(&mut db, &r, &Shadow::default());
        let mut gap = db.clone();
        gap.remove(&format!("{JOB_KEY}{}/p/{}", r.id, index(1)));
        let rows = |db: &BTreeMap<String, Vec<u8>>| db.clone().into_iter().collect::<Vec<_>>();
        let err = load(rows(&gap)).unwrap_err().to_string();
        assert!(err.contains("participants out of order"), "{err}");
        let mut headless = db.clone();
        headless.remove(&format!("{JOB_KEY}{}", r.id));
        let err = load(rows(&headless)).unwrap_err().to_string();
        assert!(err.contains("without its header"), "{err}");
        let mut unpadded = db.clone();
        unpadded.insert(format!("{JOB_KEY}{}/p/3", r.id), b"{}".to_vec());
        let err = load(rows(&unpadded)).unwrap_err().to_string();
        assert!(err.contains("malformed index"), "{err}");
        let mut slash = db.clone();
        slash.insert(format!("{JOB_KEY}{}/", r.id), b"{}".to_vec());
        assert!(load(rows(&slash)).is_err());
    }
}
