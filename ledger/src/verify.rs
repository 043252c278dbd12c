//! Verification: recompute every hash, link and signature of a ledger, then replay what the
//! entries say and check that it follows the protocol: rounds open and close in order, only
//! a round's participants upload, each secure round's committee is the draw recomputed from
//! the chain, each approved statement carries `t` committee signatures, rewards are the
//! policy's arithmetic, and exported models are ones the ledger produced. The result names
//! the first entry that is wrong and why.
//!
//! Signatures are checked in parallel with Ed25519 batch verification (one failure in a batch
//! falls back to checking its entries one by one, to name the first bad one).

use std::collections::{BTreeMap, BTreeSet};

use conclave_aggregation::JobSpec;
use conclave_aggregation::secagg::Statement;
use conclave_crypto::ParticipantId;
use conclave_crypto::committee::{draw_committee, draw_seed};
use conclave_proto::v1;
use rayon::prelude::*;

use crate::db::{Ledger, RawRow, decode_row};
use crate::entry::{Entry, GENESIS, Hash, Payload};
use crate::rewards::round_awards;
use crate::{EntryError, LedgerError};

/// The first entry found wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub index: u64,
    pub reason: String,
}

/// What a verification found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// Entries that verified (all of them when `problem` is `None`).
    pub verified: u64,
    /// The hash of the last verified entry.
    pub head: Hash,
    /// The did:key that signed the entries.
    pub signer: Option<String>,
    pub problem: Option<Problem>,
}

/// Entries verified per chunk (read, link-checked, signature-checked, replayed).
const CHUNK: usize = 8192;
/// Signatures per batch verification.
const SIG_BATCH: usize = 64;

/// Verifies a whole ledger database. `signer`: the coordinator key every entry must be
/// signed by (default: whoever signed entry 0).
pub fn verify_ledger(
    ledger: &Ledger,
    signer: Option<&ParticipantId>,
) -> Result<Report, LedgerError> {
    Ok(verify_all(ledger, signer)?.report())
}

/// As [`verify_ledger`], with what the replay holds of every job at the end (meaningful when
/// the report has no problem): what a coordinator's own job records must agree with.
pub fn verify_ledger_jobs(
    ledger: &Ledger,
    signer: Option<&ParticipantId>,
) -> Result<(Report, BTreeMap<String, JobSummary>), LedgerError> {
    let v = verify_all(ledger, signer)?;
    Ok((v.report(), v.jobs()))
}

fn verify_all(ledger: &Ledger, signer: Option<&ParticipantId>) -> Result<Verifier, LedgerError> {
    let mut v = Verifier::new(signer.cloned());
    let mut from = 0;
    loop {
        let rows = ledger.raw_rows(from, CHUNK)?;
        let Some(last) = rows.last() else { break };
        from = last.idx.max(0) as u64 + 1;
        if v.push_rows(rows) {
            break;
        }
    }
    Ok(v)
}

/// One job as the ledger tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// Participants admitted (did:key).
    pub admitted: BTreeSet<String>,
    /// BLAKE3 of each model version's parameters; index = version.
    pub model_hashes: Vec<Vec<u8>>,
    /// The last round opened (0: none yet).
    pub last_round: u32,
    /// The round still open, if any.
    pub open_round: Option<OpenRound>,
    pub finished: bool,
}

/// A round opened and not yet closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRound {
    pub round: u32,
    pub participants: BTreeSet<String>,
    /// Participants whose update was accepted.
    pub uploaded: BTreeSet<String>,
}

/// An incremental verifier: feed it rows in order.
pub struct Verifier {
    expected_signer: Option<ParticipantId>,
    next_index: u64,
    head: Hash,
    replay: Replay,
    problem: Option<Problem>,
}

impl Verifier {
    pub fn new(signer: Option<ParticipantId>) -> Self {
        Self {
            expected_signer: signer,
            next_index: 0,
            head: GENESIS,
            replay: Replay::default(),
            problem: None,
        }
    }

    /// Checks the next stored rows; returns true once a problem is found.
    pub fn push_rows(&mut self, rows: Vec<RawRow>) -> bool {
        if self.problem.is_some() {
            return true;
        }
        // Decoding and hashing are independent per row: in parallel; linking is in order.
        let decoded: Vec<(i64, Result<Entry, EntryError>)> = rows
            .into_par_iter()
            .map(|row| (row.idx, decode_row(row).map_err(|(_, e)| e)))
            .collect();
        let mut entries = Vec::with_capacity(decoded.len());
        for (idx, entry) in decoded {
            if let Err(p) = self.link(idx, entry).map(|e| entries.push(e)) {
                self.problem = Some(p);
                break;
            }
        }
        self.check_and_replay(entries)
    }

    /// Checks decoded entries (e.g. served to a replica) in order; returns true once a
    /// problem is found.
    pub fn push_entries(&mut self, entries: Vec<Entry>) -> bool {
        let rows = entries
            .into_iter()
            .map(|e| RawRow {
                idx: e.index() as i64,
                signature: e.signature().to_vec(),
                body: e.bytes().to_vec(),
            })
            .collect();
        self.push_rows(rows)
    }

    /// Structural check of the next row: position, canonical decoding, index and link.
    fn link(&mut self, idx: i64, entry: Result<Entry, EntryError>) -> Result<Entry, Problem> {
        let at = self.next_index;
        let bad = |reason: String| Problem { index: at, reason };
        if idx != at as i64 {
            return Err(bad(if idx > at as i64 {
                format!("entry {at} is missing (the next stored entry is {idx})")
            } else {
                format!("stored at position {idx} out of order")
            }));
        }
        let entry = entry.map_err(|e| bad(e.to_string()))?;
        if entry.index() != at {
            return Err(bad(format!(
                "holds entry {} (reordered or replaced)",
                entry.index()
            )));
        }
        if entry.prev_hash() != self.head {
            return Err(bad(
                "prev_hash does not match the previous entry's hash".into()
            ));
        }
        self.head = *entry.hash();
        self.next_index += 1;
        Ok(entry)
    }

    fn check_and_replay(&mut self, entries: Vec<Entry>) -> bool {
        let mut problems: Vec<Problem> = self.problem.take().into_iter().collect();
        if let (None, Some(first)) = (&self.expected_signer, entries.first()) {
            match first.signer_id() {
                Ok(id) => self.expected_signer = Some(id),
                Err(e) => problems.push(Problem {
                    index: first.index(),
                    reason: e.to_string(),
                }),
            }
        }
        if let Some(signer) = &self.expected_signer
            && let Some(p) = first_bad_signature(&entries, signer)
        {
            problems.push(p);
        }
        let limit = problems.iter().map(|p| p.index).min().unwrap_or(u64::MAX);
        for entry in entries.iter().take_while(|e| e.index() < limit) {
            if let Err(reason) = self.replay.apply(entry) {
                problems.push(Problem {
                    index: entry.index(),
                    reason,
                });
                break;
            }
        }
        self.problem = problems.into_iter().min_by_key(|p| p.index);
        self.problem.is_some()
    }

    /// Every job as replayed so far.
    pub fn jobs(&self) -> BTreeMap<String, JobSummary> {
        self.replay
            .jobs
            .iter()
            .map(|(id, job)| {
                let summary = JobSummary {
                    admitted: job.admitted.clone(),
                    model_hashes: job.model_hashes.clone(),
                    last_round: job.last_round,
                    open_round: job.open.as_ref().map(|(round, state)| OpenRound {
                        round: *round,
                        participants: state.participants.iter().cloned().collect(),
                        uploaded: state.uploads.keys().cloned().collect(),
                    }),
                    finished: job.finished,
                };
                (id.clone(), summary)
            })
            .collect()
    }

    /// The verification result so far.
    pub fn report(&self) -> Report {
        let verified = self.problem.as_ref().map_or(self.next_index, |p| p.index);
        Report {
            verified,
            head: if self.problem.is_none() {
                self.head
            } else {
                GENESIS
            },
            signer: self.expected_signer.as_ref().map(|s| s.to_string()),
            problem: self.problem.clone(),
        }
    }
}

/// The first entry whose signature is not the signer's valid signature.
fn first_bad_signature(entries: &[Entry], signer: &ParticipantId) -> Option<Problem> {
    let key = signer.verifying_key();
    entries.par_chunks(SIG_BATCH).find_map_first(|batch| {
        if batch.iter().all(|e| e.signer() == signer.as_str()) {
            let messages: Vec<&[u8]> = batch.iter().map(|e| &e.hash()[..]).collect();
            let signatures: Vec<ed25519_dalek::Signature> = batch
                .iter()
                .map(|e| ed25519_dalek::Signature::from_bytes(e.signature()))
                .collect();
            let keys = vec![*key; batch.len()];
            if ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
                return None;
            }
        }
        // Something in this batch is wrong: name the first entry, in order, that is.
        batch.iter().find_map(|e| {
            let reason = if e.signer() != signer.as_str() {
                format!("signed by {}, not by the coordinator {signer}", e.signer())
            } else if signer.verify(e.hash(), e.signature()).is_err() {
                "signature does not verify".to_string()
            } else {
                return None;
            };
            Some(Problem {
                index: e.index(),
                reason,
            })
        })
    })
}

/// What the replay knows of one round.
#[derive(Default)]
struct RoundState {
    participants: Vec<String>,
    committee: Vec<ParticipantId>,
    /// participant → (sample count, manifest hash)
    uploads: BTreeMap<String, (u64, Vec<u8>)>,
    /// member → statement hash
    attestations: BTreeMap<String, Hash>,
}

/// What the replay knows of one job.
struct JobState {
    spec: JobSpec,
    admitted: BTreeSet<String>,
    model_hashes: Vec<Vec<u8>>,
    last_round: u32,
    open: Option<(u32, RoundState)>,
    previous_committee: Vec<ParticipantId>,
    finished: bool,
}

/// A successful round whose reward entry must come next.
struct PendingReward {
    job: String,
    round: u32,
    awards: Vec<v1::Award>,
}

/// The protocol replay.
#[derive(Default)]
struct Replay {
    jobs: BTreeMap<String, JobState>,
    prev_hash: Hash,
    pending_reward: Option<PendingReward>,
    /// Parsed did:keys (parsing decompresses a curve point: worth doing once per key).
    ids: std::collections::HashMap<String, ParticipantId>,
}

fn hash32(bytes: &[u8], what: &str) -> Result<Hash, String> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} must be 32 bytes, got {}", bytes.len()))
}

fn parse_id(did: &str) -> Result<ParticipantId, String> {
    ParticipantId::parse(did).map_err(|e| e.to_string())
}

impl Replay {
    fn id(&mut self, did: &str) -> Result<ParticipantId, String> {
        if let Some(id) = self.ids.get(did) {
            return Ok(id.clone());
        }
        let id = parse_id(did)?;
        self.ids.insert(did.to_string(), id.clone());
        Ok(id)
    }

    fn job(&mut self, id: &str) -> Result<&mut JobState, String> {
        self.jobs
            .get_mut(id)
            .ok_or_else(|| format!("job {id} was never created"))
    }

    fn apply(&mut self, entry: &Entry) -> Result<(), String> {
        let prev = std::mem::replace(&mut self.prev_hash, *entry.hash());
        if let Some(p) = self.pending_reward.take() {
            match entry.payload() {
                Payload::Reward(r) if r.job_id == p.job && r.round == p.round => {
                    if r.awards != p.awards {
                        return Err(format!(
                            "reward of job {} round {} is not the policy's split: expected {}",
                            p.job,
                            p.round,
                            describe_awards(&p.awards)
                        ));
                    }
                    return Ok(());
                }
                _ => {
                    return Err(format!(
                        "expected the reward of job {} round {} here",
                        p.job, p.round
                    ));
                }
            }
        }
        match entry.payload() {
            Payload::JobCreated(p) => {
                if self.jobs.contains_key(&p.job_id) {
                    return Err(format!("job {} is created twice", p.job_id));
                }
                let spec = JobSpec::from_proto(&p.spec.clone().unwrap_or_default())
                    .map_err(|e| e.to_string())?;
                hash32(&p.model_hash, "model_hash")?;
                self.jobs.insert(
                    p.job_id.clone(),
                    JobState {
                        spec,
                        admitted: BTreeSet::new(),
                        model_hashes: vec![p.model_hash.clone()],
                        last_round: 0,
                        open: None,
                        previous_committee: Vec::new(),
                        finished: false,
                    },
                );
            }
            Payload::ParticipantAdmitted(p) => {
                let id = self.id(&p.participant)?;
                let job = self.job(&p.job_id)?;
                if job.finished {
                    return Err(format!("job {} is finished", p.job_id));
                }
                if !job.spec.admission.is_empty() && !job.spec.admission.contains(&id) {
                    return Err(format!(
                        "{} is not on the job's admission list",
                        p.participant
                    ));
                }
                if !job.admitted.insert(p.participant.clone()) {
                    return Err(format!("{} is admitted twice", p.participant));
                }
            }
            Payload::RoundOpened(p) => {
                let ids: Vec<ParticipantId> = p
                    .participants
                    .iter()
                    .map(|d| self.id(d))
                    .collect::<Result<_, _>>()?;
                let committee: Vec<ParticipantId> = p
                    .committee
                    .iter()
                    .map(|d| self.id(d))
                    .collect::<Result<_, _>>()?;
                let job = self.job(&p.job_id)?;
                if job.finished || job.open.is_some() || p.round != job.last_round + 1 {
                    return Err(format!(
                        "round {} cannot open (last round {}, {})",
                        p.round,
                        job.last_round,
                        if job.open.is_some() {
                            "still open"
                        } else {
                            "closed"
                        }
                    ));
                }
                let version = job.model_hashes.len() as u32 - 1;
                if p.base_version != version
                    || p.base_model_hash != job.model_hashes[version as usize]
                {
                    return Err(format!(
                        "round {} does not start from the latest model (version {version})",
                        p.round
                    ));
                }
                for d in &p.participants {
                    if !job.admitted.contains(d) {
                        return Err(format!(
                            "{d} is in round {} but was never admitted",
                            p.round
                        ));
                    }
                }
                match job.spec.secagg() {
                    None => {
                        if !committee.is_empty() || !p.draw_seed.is_empty() {
                            return Err("a plain round has no committee".into());
                        }
                    }
                    Some(s) => {
                        let seed = draw_seed(&prev, &p.job_id, p.round);
                        if p.draw_seed != seed {
                            return Err(format!(
                                "round {}: the draw seed is not BLAKE3 of the previous entry, job and round",
                                p.round
                            ));
                        }
                        let drawn = draw_committee(
                            &seed,
                            &ids,
                            &job.previous_committee,
                            s.committee_size as usize,
                        );
                        let ok = match &drawn {
                            Ok(d) => *d == committee,
                            // Too few participants to draw: the round opens without one.
                            Err(_) => committee.is_empty(),
                        };
                        if !ok {
                            return Err(format!(
                                "round {}: the committee is not the one the draw gives ({})",
                                p.round,
                                drawn.map_or_else(
                                    |e| e.to_string(),
                                    |d| d
                                        .iter()
                                        .map(|m| m.to_string())
                                        .collect::<Vec<_>>()
                                        .join(", ")
                                )
                            ));
                        }
                    }
                }
                job.previous_committee = committee.clone();
                job.last_round = p.round;
                job.open = Some((
                    p.round,
                    RoundState {
                        participants: p.participants.clone(),
                        committee,
                        ..Default::default()
                    },
                ));
            }
            Payload::UpdateAccepted(p) => {
                let job = self.job(&p.job_id)?;
                let secagg = job.spec.secagg().is_some();
                let round = open_round(job, &p.job_id, p.round)?;
                if !round.participants.contains(&p.participant) {
                    return Err(format!("{} is not in round {}", p.participant, p.round));
                }
                hash32(&p.payload_hash, "payload_hash")?;
                if secagg {
                    if p.num_samples != 0 {
                        return Err("a secure upload shows no sample count".into());
                    }
                    hash32(&p.manifest_hash, "manifest_hash")?;
                } else if p.num_samples == 0 || !p.manifest_hash.is_empty() {
                    return Err("a plain upload has a sample count and no manifest".into());
                }
                let value = (p.num_samples, p.manifest_hash.clone());
                if round.uploads.insert(p.participant.clone(), value).is_some() {
                    return Err(format!(
                        "{} uploaded twice in round {}",
                        p.participant, p.round
                    ));
                }
            }
            Payload::CommitteeAttestation(p) => {
                let member = self.id(&p.member)?;
                let job = self.job(&p.job_id)?;
                let round = open_round(job, &p.job_id, p.round)?;
                if !round.committee.contains(&member) {
                    return Err(format!(
                        "{} is not on round {}'s committee",
                        p.member, p.round
                    ));
                }
                let statement = hash32(&p.statement_hash, "statement_hash")?;
                member.verify(&statement, &p.signature).map_err(|_| {
                    format!("{}'s signature on the statement does not verify", p.member)
                })?;
                if round
                    .attestations
                    .insert(p.member.clone(), statement)
                    .is_some()
                {
                    return Err(format!("{} attests twice in round {}", p.member, p.round));
                }
            }
            Payload::RoundClosed(p) => {
                let job = self.job(&p.job_id)?;
                open_round(job, &p.job_id, p.round)?;
                let (_, round) = job.open.take().expect("checked open");
                let awards = close_round(job, &round, p)?;
                if p.round >= job.spec.rounds {
                    job.finished = true;
                }
                if let Some(awards) = awards {
                    self.pending_reward = Some(PendingReward {
                        job: p.job_id.clone(),
                        round: p.round,
                        awards,
                    });
                }
            }
            Payload::Reward(p) => {
                return Err(format!(
                    "reward of job {} round {} without a round that earned it just before",
                    p.job_id, p.round
                ));
            }
            Payload::ModelExported(p) => {
                self.id(&p.exported_by)?;
                let job = self.job(&p.job_id)?;
                let known = job.model_hashes.get(p.model_version as usize);
                if known != Some(&p.model_hash) {
                    return Err(format!(
                        "model version {} with this hash was never produced by job {}",
                        p.model_version, p.job_id
                    ));
                }
            }
        }
        Ok(())
    }
}

fn open_round<'a>(
    job: &'a mut JobState,
    job_id: &str,
    round: u32,
) -> Result<&'a mut RoundState, String> {
    match &mut job.open {
        Some((r, state)) if *r == round => Ok(state),
        _ => Err(format!("round {round} of job {job_id} is not open")),
    }
}

/// Checks a round's close against what the round recorded; returns the awards it earns.
fn close_round(
    job: &mut JobState,
    round: &RoundState,
    p: &v1::RoundClosed,
) -> Result<Option<Vec<v1::Award>>, String> {
    if !p.success {
        if !p.contributors.is_empty() || !p.model_hash.is_empty() || p.result_version != 0 {
            return Err("a failed round has no contributors and no model".into());
        }
        return Ok(None);
    }
    let version = job.model_hashes.len() as u32;
    if p.result_version != version {
        return Err(format!(
            "the new model must be version {version}, not {}",
            p.result_version
        ));
    }
    hash32(&p.model_hash, "model_hash")?;
    let mut contributors = Vec::with_capacity(p.contributors.len());
    for c in &p.contributors {
        let Some((samples, _)) = round.uploads.get(&c.participant) else {
            return Err(format!("{} is counted but never uploaded", c.participant));
        };
        if c.num_samples != *samples {
            return Err(format!(
                "{} is counted with {} samples, its upload had {samples}",
                c.participant, c.num_samples
            ));
        }
        contributors.push((c.participant.clone(), c.num_samples));
    }
    let unique: BTreeSet<&String> = contributors.iter().map(|(d, _)| d).collect();
    if unique.len() != contributors.len() {
        return Err("a contributor is counted twice".into());
    }
    if contributors.len() < job.spec.min_participants as usize {
        return Err(format!(
            "{} contributors, fewer than min_participants ({})",
            contributors.len(),
            job.spec.min_participants
        ));
    }
    let mut completed = Vec::new();
    match job.spec.secagg() {
        None => {
            if contributors.len() != round.uploads.len() {
                return Err("a plain round sums every accepted upload".into());
            }
            let total: u64 = contributors.iter().map(|(_, n)| n).sum();
            if p.total_samples != total {
                return Err(format!("total_samples {} is not {total}", p.total_samples));
            }
            if !p.committee_completed.is_empty() || p.statement.is_some() {
                return Err("a plain round has no committee".into());
            }
        }
        Some(s) => {
            let wire = p
                .statement
                .as_ref()
                .ok_or("a secure round closes with its approved statement")?;
            let statement =
                Statement::from_wire(&p.job_id, p.round, wire).map_err(|e| e.to_string())?;
            let summed: Vec<&str> = statement.uploads.iter().map(|(d, _)| d.as_str()).collect();
            let counted: Vec<&str> = contributors.iter().map(|(d, _)| d.as_str()).collect();
            if summed != counted {
                return Err("the contributors are not the statement's uploads".into());
            }
            for (d, manifest) in &statement.uploads {
                if round.uploads.get(d.as_str()).map(|(_, m)| m.as_slice()) != Some(&manifest[..]) {
                    return Err(format!(
                        "the statement's manifest of {d} is not the one uploaded"
                    ));
                }
            }
            let hash = statement.hash();
            let signers = round.attestations.values().filter(|h| **h == hash).count();
            if signers < s.threshold as usize {
                return Err(format!(
                    "the statement has {signers} committee attestations, fewer than the threshold {}",
                    s.threshold
                ));
            }
            let answering: Vec<String> =
                statement.answering.iter().map(|a| a.to_string()).collect();
            if p.committee_completed != answering {
                return Err(
                    "the members credited are not the statement's answering members".into(),
                );
            }
            for a in &statement.answering {
                if !round.committee.contains(a) {
                    return Err(format!("{a} answers but is not on the committee"));
                }
            }
            completed = answering;
        }
    }
    job.model_hashes.push(p.model_hash.clone());
    let awards = round_awards(&job.spec.rewards, &contributors, &completed);
    Ok((!awards.is_empty()).then_some(awards))
}

fn describe_awards(awards: &[v1::Award]) -> String {
    awards
        .iter()
        .map(|a| format!("{} {}", a.participant, a.amount))
        .collect::<Vec<_>>()
        .join(", ")
}
