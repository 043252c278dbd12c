//! The protocol replay behind `ledger verify`: what the entries say, checked against the rules
//! of DESIGN.md in order. Jobs are created once; admissions are asked for by their participant
//! (its signature) with a sealing key that is not a low-order point; a secure job's draw
//! attempts reveal chain links that match the commitments, and every committee is the draw
//! recomputed from the resulting entropy over every admitted participant; rounds open and close
//! in order from the latest model; every accepted upload is signed by its participant;
//! complaints come from committee members before any attestation, and an approved statement
//! sums exactly the accepted uploads nobody complained about, with `t` attestations; rewards
//! are the policy's arithmetic and follow their round; exports are signed by an admitted
//! participant and name a model the job produced.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use conclave_aggregation::JobSpec;
use conclave_aggregation::secagg::{ComplaintReason, Statement, complaint_hash};
use conclave_crypto::committee::{self, draw_committee, draw_seed, is_link, pool_hash};
use conclave_crypto::{ParticipantId, PublicIdentity};
use conclave_proto::v1;
use prost::Message;

use crate::entry::{Entry, Hash, Payload};
use crate::rewards::round_awards;
use crate::signed::{admission_digest, contribution_digest, draw_reveal_digest, export_digest};

/// A signature an entry carries: (signer, digest signed, signature bytes).
pub(crate) type Signed<'a> = (ParticipantId, [u8; 32], &'a [u8]);

/// The participant signatures an entry carries over digests of its own fields — an admission,
/// an accepted upload, a complaint, an export, a draw attempt's reveals; `None` when one of
/// them cannot even be parsed. These need no replay state, so they are checked ahead of the
/// replay, in parallel. `id` parses a did:key (a cache of the ones seen before: parsing
/// decompresses a curve point).
pub(crate) fn participant_signatures<'a>(
    entry: &'a Entry,
    id: &impl Fn(&str) -> Option<ParticipantId>,
) -> Option<Vec<Signed<'a>>> {
    if let Payload::DrawReveals(p) = entry.payload() {
        let pool_hash: [u8; 32] = p.pool_hash.as_slice().try_into().ok()?;
        return p
            .reveals
            .iter()
            .map(|r| {
                let signer = id(&r.participant)?;
                let d = draw_reveal_digest(&p.job_id, p.attempt, &pool_hash, &signer, &r.value);
                Some((signer, d, r.signature.as_slice()))
            })
            .collect();
    }
    participant_signature(entry, id).map(|one| one.into_iter().collect())
}

fn participant_signature<'a>(
    entry: &'a Entry,
    parse: &impl Fn(&str) -> Option<ParticipantId>,
) -> Option<Option<Signed<'a>>> {
    Some(match entry.payload() {
        Payload::ParticipantAdmitted(p) => {
            let id = parse(&p.participant)?;
            let d = admission_digest(&p.job_id, &id, &p.sealing_key, &p.draw_commitment);
            Some((id, d, &p.signature[..]))
        }
        Payload::UpdateAccepted(p) => {
            let id = parse(&p.participant)?;
            let d = contribution_digest(
                &p.job_id,
                p.round,
                &id,
                p.num_samples,
                &p.payload_hash,
                &p.manifest_hash,
            );
            Some((id, d, &p.signature[..]))
        }
        Payload::CommitteeComplaint(p) => {
            let member = parse(&p.member)?;
            let participant = parse(&p.participant)?;
            let manifest: [u8; 32] = p.manifest_hash.as_slice().try_into().ok()?;
            let reason = ComplaintReason::from_code(p.reason)?;
            let d = complaint_hash(&p.job_id, p.round, &member, &participant, &manifest, reason);
            Some((member, d, &p.signature[..]))
        }
        Payload::ModelExported(p) => {
            let id = parse(&p.exported_by)?;
            let d = export_digest(&p.job_id, p.model_version, &p.model_hash, &p.format, &id);
            Some((id, d, &p.signature[..]))
        }
        _ => None,
    })
}

/// Longest failure reason a failed round may record.
const MAX_FAILURE_CHARS: usize = 1024;

/// One job as the ledger tells it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobSummary {
    /// The job's spec as created (protobuf-encoded `v1::JobSpec`).
    pub spec: Vec<u8>,
    /// Participants admitted (did:key) with their sealing keys.
    pub admitted: BTreeMap<String, [u8; 32]>,
    /// BLAKE3 of each model version's parameters; index = version.
    pub model_hashes: Vec<Vec<u8>>,
    /// The last round opened (0: none yet).
    pub last_round: u32,
    /// The round still open, if any.
    pub open_round: Option<OpenRound>,
    pub finished: bool,
    /// A secure job's draw, as far as it got.
    pub draw: DrawSummary,
}

/// A secure job's draw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrawSummary {
    /// The attempt whose pool is fixed and whose reveals are not recorded yet.
    pub open_attempt: Option<(u32, Vec<ParticipantId>)>,
    /// The next attempt's number once the last one closed incomplete.
    pub next_attempt: u32,
    /// Pool members that did not reveal in some attempt: never in a later pool.
    pub excluded: BTreeSet<String>,
    /// Who revealed in the last incomplete attempt: exactly the next attempt's pool.
    pub last_revealers: Vec<ParticipantId>,
    /// The job's draw entropy, once an attempt completed.
    pub entropy: Option<[u8; 32]>,
}

/// A round opened and not yet closed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenRound {
    pub round: u32,
    pub participants: BTreeSet<String>,
    /// Participants whose update was accepted.
    pub uploaded: BTreeSet<String>,
    /// The model the round trains from: its version and hash.
    pub base_version: u32,
    pub base_model_hash: Vec<u8>,
    /// Secure aggregation: the committee (share order), draw seed and plan digest.
    pub committee: Vec<String>,
    pub draw_seed: Vec<u8>,
    pub plan_hash: Vec<u8>,
    /// Members whose attestation is recorded.
    pub attested: BTreeSet<String>,
    /// Complaints recorded, as entries.
    pub complaints: Vec<v1::CommitteeComplaint>,
}

/// What the replay knows of one round.
#[derive(Default)]
struct RoundState {
    participants: Vec<String>,
    base_version: u32,
    base_model_hash: Vec<u8>,
    committee: Vec<ParticipantId>,
    draw_seed: Vec<u8>,
    plan_hash: Vec<u8>,
    /// participant → (sample count, manifest hash)
    uploads: BTreeMap<String, (u64, Vec<u8>)>,
    /// member → statement hash
    attestations: BTreeMap<String, Hash>,
    complaints: Vec<v1::CommitteeComplaint>,
}

/// An admitted participant: its parsed id, sealing key and (secure jobs) draw commitment.
type Admitted = (ParticipantId, [u8; 32], Option<[u8; 32]>);

/// What the replay knows of one job.
struct JobState {
    spec: JobSpec,
    spec_bytes: Vec<u8>,
    /// did → what its admission recorded, and the order of admission.
    admitted: BTreeMap<String, Admitted>,
    admission_order: Vec<String>,
    model_hashes: Vec<Vec<u8>>,
    last_round: u32,
    open: Option<(u32, RoundState)>,
    previous_committee: Vec<ParticipantId>,
    finished: bool,
    draw: DrawSummary,
    /// (version, format, exporter) of every export recorded.
    exports: BTreeSet<(u32, String, String)>,
}

/// A successful round whose reward entry must come next.
struct PendingReward {
    job: String,
    round: u32,
    awards: Vec<v1::Award>,
}

/// The protocol replay.
#[derive(Default)]
pub(crate) struct Replay {
    jobs: BTreeMap<String, JobState>,
    pending_reward: Option<PendingReward>,
    /// Parsed did:keys (parsing decompresses a curve point: worth doing once per key).
    ids: HashMap<String, ParticipantId>,
}

fn hash32(bytes: &[u8], what: &str) -> Result<Hash, String> {
    bytes
        .try_into()
        .map_err(|_| format!("{what} must be 32 bytes, got {}", bytes.len()))
}

impl Replay {
    /// A did:key parsed before, if any.
    pub(crate) fn known_id(&self, did: &str) -> Option<&ParticipantId> {
        self.ids.get(did)
    }

    fn id(&mut self, did: &str) -> Result<ParticipantId, String> {
        if let Some(id) = self.ids.get(did) {
            return Ok(id.clone());
        }
        let id = ParticipantId::parse(did).map_err(|e| e.to_string())?;
        self.ids.insert(did.to_string(), id.clone());
        Ok(id)
    }

    fn ids(&mut self, dids: &[String]) -> Result<Vec<ParticipantId>, String> {
        dids.iter().map(|d| self.id(d)).collect()
    }

    fn job(&mut self, id: &str) -> Result<&mut JobState, String> {
        self.jobs
            .get_mut(id)
            .ok_or_else(|| format!("job {id} was never created"))
    }

    /// Every job as replayed so far.
    pub(crate) fn summaries(&self) -> BTreeMap<String, JobSummary> {
        self.jobs
            .iter()
            .map(|(id, job)| (id.clone(), summary(job)))
            .collect()
    }

    /// One job as replayed so far.
    pub(crate) fn summary(&self, id: &str) -> Option<JobSummary> {
        self.jobs.get(id).map(summary)
    }

    /// Applies the next entry. `signed`: whether the participant signature the entry carries
    /// over its own fields ([`participant_signatures`]) verified — checked ahead, in parallel.
    pub(crate) fn apply(&mut self, entry: &Entry, signed: bool) -> Result<(), String> {
        if let Some(p) = self.pending_reward.take() {
            return match entry.payload() {
                Payload::Reward(r) if r.job_id == p.job && r.round == p.round => {
                    if r.awards != p.awards {
                        return Err(format!(
                            "reward of job {} round {} is not the policy's split: expected {}",
                            p.job,
                            p.round,
                            describe_awards(&p.awards)
                        ));
                    }
                    Ok(())
                }
                _ => Err(format!(
                    "expected the reward of job {} round {} here",
                    p.job, p.round
                )),
            };
        }
        match entry.payload() {
            Payload::JobCreated(p) => {
                if self.jobs.contains_key(&p.job_id) {
                    return Err(format!("job {} is created twice", p.job_id));
                }
                let wire = p.spec.clone().unwrap_or_default();
                let spec = JobSpec::from_proto(&wire).map_err(|e| e.to_string())?;
                hash32(&p.model_hash, "model_hash")?;
                self.jobs.insert(
                    p.job_id.clone(),
                    JobState {
                        spec,
                        spec_bytes: wire.encode_to_vec(),
                        admitted: BTreeMap::new(),
                        admission_order: Vec::new(),
                        model_hashes: vec![p.model_hash.clone()],
                        last_round: 0,
                        open: None,
                        previous_committee: Vec::new(),
                        finished: false,
                        draw: DrawSummary::default(),
                        exports: BTreeSet::new(),
                    },
                );
            }
            Payload::ParticipantAdmitted(p) => self.admit(p, signed)?,
            Payload::DrawPool(p) => self.draw_pool(p)?,
            Payload::DrawReveals(p) => self.draw_reveals(p, signed)?,
            Payload::RoundOpened(p) => self.open_round(p)?,
            Payload::UpdateAccepted(p) => {
                let job = self.job(&p.job_id)?;
                let secagg = job.spec.secagg().is_some();
                let max_samples = job.spec.max_samples;
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
                } else if max_samples.is_some_and(|m| p.num_samples > m) {
                    return Err(format!(
                        "{} claims {} samples, more than the job's max_samples",
                        p.participant, p.num_samples
                    ));
                }
                if !signed {
                    return Err(format!(
                        "the upload of {} in round {} is not signed by its participant",
                        p.participant, p.round
                    ));
                }
                let value = (p.num_samples, p.manifest_hash.clone());
                if round.uploads.insert(p.participant.clone(), value).is_some() {
                    return Err(format!(
                        "{} uploaded twice in round {}",
                        p.participant, p.round
                    ));
                }
            }
            Payload::CommitteeComplaint(p) => {
                let member = self.id(&p.member)?;
                let job = self.job(&p.job_id)?;
                let round = open_round(job, &p.job_id, p.round)?;
                if !round.committee.contains(&member) {
                    return Err(format!(
                        "{} is not on round {}'s committee",
                        p.member, p.round
                    ));
                }
                if !round.attestations.is_empty() {
                    return Err("a complaint after a member attested a statement".into());
                }
                let manifest = hash32(&p.manifest_hash, "manifest_hash")?;
                if round.uploads.get(&p.participant).map(|(_, m)| m.as_slice())
                    != Some(&manifest[..])
                {
                    return Err(format!(
                        "the complaint names an upload of {} that was not accepted",
                        p.participant
                    ));
                }
                ComplaintReason::from_code(p.reason)
                    .ok_or_else(|| format!("unknown complaint reason {}", p.reason))?;
                if !signed {
                    return Err(format!("{}'s complaint is not signed by it", p.member));
                }
                if round
                    .complaints
                    .iter()
                    .any(|c| c.member == p.member && c.participant == p.participant)
                {
                    return Err(format!(
                        "{} complains twice about {}",
                        p.member, p.participant
                    ));
                }
                round.complaints.push(p.clone());
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
                let job = self.job(&p.job_id)?;
                if !job.admitted.contains_key(&p.exported_by) {
                    return Err(format!(
                        "{} exported a model of job {} it was never admitted to",
                        p.exported_by, p.job_id
                    ));
                }
                let known = job.model_hashes.get(p.model_version as usize);
                if known != Some(&p.model_hash) {
                    return Err(format!(
                        "model version {} with this hash was never produced by job {}",
                        p.model_version, p.job_id
                    ));
                }
                // An export is recorded once: the same signed export copied elsewhere in the
                // ledger is not a second one.
                let key = (p.model_version, p.format.clone(), p.exported_by.clone());
                if !job.exports.insert(key) {
                    return Err(format!(
                        "{} exported model version {} as {} twice",
                        p.exported_by, p.model_version, p.format
                    ));
                }
                if !signed {
                    return Err(format!(
                        "the export is not signed by its exporter {}",
                        p.exported_by
                    ));
                }
            }
        }
        Ok(())
    }

    fn admit(&mut self, p: &v1::ParticipantAdmitted, signed: bool) -> Result<(), String> {
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
        let key = hash32(&p.sealing_key, "sealing_key")?;
        PublicIdentity::check_sealing_key(&key).map_err(|e| e.to_string())?;
        let commitment = match (job.spec.secagg(), p.draw_commitment.is_empty()) {
            (Some(_), false) => Some(hash32(&p.draw_commitment, "draw_commitment")?),
            (None, true) => None,
            (Some(_), true) => return Err("a secure job's admission has a draw commitment".into()),
            (None, false) => return Err("a plain job's admission has no draw commitment".into()),
        };
        if !signed {
            return Err(format!(
                "the admission of {} is not signed by it",
                p.participant
            ));
        }
        if job.admitted.contains_key(&p.participant) {
            return Err(format!("{} is admitted twice", p.participant));
        }
        job.admitted
            .insert(p.participant.clone(), (id, key, commitment));
        job.admission_order.push(p.participant.clone());
        Ok(())
    }

    fn draw_pool(&mut self, p: &v1::DrawPool) -> Result<(), String> {
        let pool: Vec<ParticipantId> = self.ids(&p.participants)?;
        let job = self.job(&p.job_id)?;
        if job.spec.secagg().is_none() {
            return Err("a plain job draws no committee".into());
        }
        if job.draw.entropy.is_some() || job.last_round != 0 {
            return Err("the job's draw is already done".into());
        }
        if job.draw.open_attempt.is_some() || p.attempt != job.draw.next_attempt {
            return Err(format!(
                "draw attempt {} out of order (next is {})",
                p.attempt, job.draw.next_attempt
            ));
        }
        if p.attempt >= committee::CHAIN_LEN {
            return Err("no draw attempts left".into());
        }
        // The pool is not the coordinator's to pick: the first is every admitted
        // participant (at least start_participants of them), each later one exactly those who
        // revealed in the attempt before (no newcomers, so no retry is free).
        let expected: Vec<ParticipantId> = if p.attempt == 0 {
            let mut all: Vec<ParticipantId> =
                job.admitted.values().map(|(id, _, _)| id.clone()).collect();
            all.sort();
            if all.len() < job.spec.start_participants as usize {
                return Err(format!(
                    "a first draw pool of {}, fewer than start_participants ({})",
                    all.len(),
                    job.spec.start_participants
                ));
            }
            all
        } else {
            job.draw.last_revealers.clone()
        };
        if pool != expected {
            return Err(format!(
                "draw attempt {}'s pool is not {}",
                p.attempt,
                if p.attempt == 0 {
                    "every admitted participant"
                } else {
                    "exactly those who revealed in the attempt before"
                }
            ));
        }
        if pool.len() < job.spec.min_participants as usize {
            return Err(format!(
                "a draw pool of {} is smaller than min_participants",
                pool.len()
            ));
        }
        job.draw.open_attempt = Some((p.attempt, pool));
        Ok(())
    }

    fn draw_reveals(&mut self, p: &v1::DrawReveals, signed: bool) -> Result<(), String> {
        let job = self.job(&p.job_id)?;
        let Some((attempt, pool)) = job.draw.open_attempt.take() else {
            return Err("no draw attempt is open".into());
        };
        if attempt != p.attempt {
            return Err(format!(
                "reveals for attempt {} while attempt {attempt} is open",
                p.attempt
            ));
        }
        let pool_hash = pool_hash(&p.job_id, attempt, &pool);
        if p.pool_hash != pool_hash {
            return Err("the reveals name another pool than the open attempt's".into());
        }
        if !signed {
            return Err("a reveal is not signed by its pool member".into());
        }
        let mut links = Vec::with_capacity(p.reveals.len());
        let mut revealed = BTreeSet::new();
        let mut revealers = Vec::with_capacity(p.reveals.len());
        let mut at = 0;
        for r in &p.reveals {
            // In pool order, each member at most once.
            let Some(pos) = pool[at..].iter().position(|m| m.as_str() == r.participant) else {
                return Err(format!(
                    "{} reveals out of pool order or is not in the pool",
                    r.participant
                ));
            };
            at += pos + 1;
            let member = &pool[at - 1];
            let value = hash32(&r.value, "draw link")?;
            let (_, _, commitment) = &job.admitted[member.as_str()];
            let commitment = commitment.ok_or("a pool member without a draw commitment")?;
            if !is_link(&commitment, attempt + 1, &value) {
                return Err(format!(
                    "{}'s link does not match its draw commitment",
                    r.participant
                ));
            }
            revealed.insert(r.participant.clone());
            revealers.push(member.clone());
            links.push(value);
        }
        let complete = revealed.len() == pool.len();
        if complete != p.complete {
            return Err("the attempt's completeness is misstated".into());
        }
        if complete {
            job.draw.entropy = Some(committee::draw_entropy(&pool_hash, &links));
        } else {
            for m in &pool {
                if !revealed.contains(m.as_str()) {
                    job.draw.excluded.insert(m.to_string());
                }
            }
            job.draw.next_attempt = attempt + 1;
            job.draw.last_revealers = revealers;
        }
        Ok(())
    }

    fn open_round(&mut self, p: &v1::RoundOpened) -> Result<(), String> {
        let ids: Vec<ParticipantId> = self.ids(&p.participants)?;
        let committee: Vec<ParticipantId> = self.ids(&p.committee)?;
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
        if p.base_version != version || p.base_model_hash != job.model_hashes[version as usize] {
            return Err(format!(
                "round {} does not start from the latest model (version {version})",
                p.round
            ));
        }
        // Every admitted participant trains, and is in the committee's pool: none hand-picked.
        if p.participants != job.admission_order {
            return Err(format!(
                "round {}'s participants are not every admitted participant in admission order",
                p.round
            ));
        }
        match job.spec.secagg() {
            None => {
                if !committee.is_empty() || !p.draw_seed.is_empty() || !p.plan_hash.is_empty() {
                    return Err("a plain round has no committee".into());
                }
            }
            Some(s) => {
                let entropy = job.draw.entropy.ok_or_else(|| {
                    format!("round {} opens before the job's draw is complete", p.round)
                })?;
                let seed = draw_seed(&p.job_id, p.round, &entropy);
                if p.draw_seed != seed {
                    return Err(format!(
                        "round {}: the draw seed is not BLAKE3 of the job, round and draw entropy",
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
                if !committee.is_empty() {
                    hash32(&p.plan_hash, "plan_hash")?;
                }
            }
        }
        job.previous_committee = committee.clone();
        job.last_round = p.round;
        job.open = Some((
            p.round,
            RoundState {
                participants: p.participants.clone(),
                base_version: p.base_version,
                base_model_hash: p.base_model_hash.clone(),
                committee,
                draw_seed: p.draw_seed.clone(),
                plan_hash: p.plan_hash.clone(),
                ..Default::default()
            },
        ));
        Ok(())
    }
}

fn summary(job: &JobState) -> JobSummary {
    JobSummary {
        spec: job.spec_bytes.clone(),
        admitted: job
            .admitted
            .iter()
            .map(|(d, (_, key, _))| (d.clone(), *key))
            .collect(),
        model_hashes: job.model_hashes.clone(),
        last_round: job.last_round,
        open_round: job.open.as_ref().map(|(round, state)| OpenRound {
            round: *round,
            participants: state.participants.iter().cloned().collect(),
            uploaded: state.uploads.keys().cloned().collect(),
            base_version: state.base_version,
            base_model_hash: state.base_model_hash.clone(),
            committee: state.committee.iter().map(|m| m.to_string()).collect(),
            draw_seed: state.draw_seed.clone(),
            plan_hash: state.plan_hash.clone(),
            attested: state.attestations.keys().cloned().collect(),
            complaints: state.complaints.clone(),
        }),
        finished: job.finished,
        draw: job.draw.clone(),
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
        if p.failure.chars().count() > MAX_FAILURE_CHARS {
            return Err("the failure reason is too long".into());
        }
        return Ok(None);
    }
    if !p.failure.is_empty() {
        return Err("a successful round gives no failure reason".into());
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
            // U is every accepted upload that no member complained about: the coordinator
            // cannot drop an upload it accepted, nor keep one a member could not open.
            let complained: BTreeSet<&str> = round
                .complaints
                .iter()
                .map(|c| c.participant.as_str())
                .collect();
            let expected: Vec<&str> = round
                .uploads
                .keys()
                .map(String::as_str)
                .filter(|d| !complained.contains(d))
                .collect();
            let mut sorted = summed.clone();
            sorted.sort_unstable();
            if sorted != expected {
                return Err(
                    "the statement does not sum exactly the uploads no member complained about"
                        .into(),
                );
            }
            // A: at least t committee members, each once, in committee order; only their
            // attestations count (a member signs only a statement that lists it).
            let positions: Vec<usize> = statement
                .answering
                .iter()
                .map(|a| round.committee.iter().position(|m| m == a))
                .collect::<Option<_>>()
                .ok_or("a member answers but is not on the committee")?;
            if positions.len() < s.threshold as usize || !positions.windows(2).all(|w| w[0] < w[1])
            {
                return Err(format!(
                    "the statement's answering members are not {} or more distinct committee members in committee order",
                    s.threshold
                ));
            }
            let hash = statement.hash();
            let signers = round
                .attestations
                .iter()
                .filter(|(m, h)| {
                    **h == hash && statement.answering.iter().any(|a| a.as_str() == m.as_str())
                })
                .count();
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
