//! The protocol replay behind `ledger verify`: every entry, in order, through its job's round
//! engine ([`conclave_aggregation::engine`], the same rules the coordinator stages its
//! batches through). What is the replay's own: jobs are created once; a round's reward is the
//! ledger's very next entry (the engine holds that per job; here it holds across jobs); and the
//! participant signatures an entry carries, which need no replay state and are checked ahead,
//! in parallel.

use std::collections::{BTreeMap, HashMap};

use conclave_aggregation::engine::{JobEngine, JobSummary, payload_job};
use conclave_aggregation::secagg::{ComplaintReason, complaint_hash};
use conclave_crypto::ParticipantId;

use crate::entry::{Entry, Payload};
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

/// The protocol replay.
#[derive(Default)]
pub(crate) struct Replay {
    jobs: BTreeMap<String, JobEngine>,
    /// The job whose round's reward must be the next entry.
    reward_due: Option<String>,
    /// Parsed did:keys of admitted participants (parsing decompresses a curve point: worth
    /// doing once per key), for the signature checks ahead of the replay.
    ids: HashMap<String, ParticipantId>,
}

impl Replay {
    /// A did:key parsed before, if any.
    pub(crate) fn known_id(&self, did: &str) -> Option<&ParticipantId> {
        self.ids.get(did)
    }

    /// Every job as replayed so far.
    pub(crate) fn summaries(&self) -> BTreeMap<String, JobSummary> {
        self.jobs
            .iter()
            .map(|(id, job)| (id.clone(), job.summary()))
            .collect()
    }

    /// One job as replayed so far.
    pub(crate) fn summary(&self, id: &str) -> Option<JobSummary> {
        self.jobs.get(id).map(JobEngine::summary)
    }

    /// The reward the next entry must be (job, round), if one is owed.
    pub(crate) fn reward_owed(&self) -> Option<(String, u32)> {
        let job = self.reward_due.as_ref()?;
        Some((job.clone(), self.jobs[job].reward_due()?))
    }

    /// Every job's engine as replayed so far (what a coordinator resumes with).
    pub(crate) fn into_engines(self) -> BTreeMap<String, JobEngine> {
        self.jobs
    }

    /// Applies the next entry. `signed`: whether the participant signature the entry carries
    /// over its own fields ([`participant_signatures`]) verified — checked ahead, in parallel.
    pub(crate) fn apply(&mut self, entry: &Entry, signed: bool) -> Result<(), String> {
        let payload = entry.payload();
        if let Some(due) = self.reward_due.take() {
            let round = self.jobs[&due].reward_due().expect("a reward is due");
            if !matches!(payload, Payload::Reward(r) if r.job_id == due) {
                return Err(format!(
                    "expected the reward of job {due} round {round} here"
                ));
            }
        }
        if let Payload::JobCreated(p) = payload {
            if self.jobs.contains_key(&p.job_id) {
                return Err(format!("job {} is created twice", p.job_id));
            }
            let job = JobEngine::create(p).map_err(|e| e.0)?;
            self.jobs.insert(p.job_id.clone(), job);
            return Ok(());
        }
        let id = payload_job(payload);
        let job = self
            .jobs
            .get_mut(id)
            .ok_or_else(|| format!("job {id} was never created"))?;
        job.step(payload, signed).map_err(|e| e.0)?;
        if let Payload::ParticipantAdmitted(p) = payload
            && let Some(parsed) = job.admitted_id(&p.participant)
        {
            self.ids.insert(p.participant.clone(), parsed.clone());
        }
        if job.reward_due().is_some() {
            self.reward_due = Some(id.to_string());
        }
        Ok(())
    }
}
