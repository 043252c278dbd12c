//! A synthetic ledger that follows the protocol: jobs, admissions, rounds with uploads,
//! committee draws, member attestations, closes and rewards, signed by a coordinator key.
//! Tests tamper with it; `conclave bench ledger` measures appends and verification with it.
//! The entries are what the coordinator writes, built the same way (the draw from the
//! batch's head, the policy's awards), without training anything.

use conclave_aggregation::JobSpec;
use conclave_aggregation::secagg::Statement;
use conclave_crypto::committee::{draw_committee, draw_seed};
use conclave_crypto::{Identity, ParticipantId};
use conclave_proto::v1;

use crate::db::Batch;
use crate::entry::Payload;
use crate::rewards::round_awards;

/// The job file of the simulated plain job.
pub const PLAIN_JOB: &str = r#"
name = "sim-plain"
rounds = 100000
min_participants = 2
privacy = "plain"
[model]
kind = "logistic_regression"
[data]
features = ["a", "b"]
label = "y"
"#;

/// The job file of the simulated secure-aggregation job.
pub const SECAGG_JOB: &str = r#"
name = "sim-secagg"
rounds = 100000
min_participants = 2
start_participants = 3
privacy = "secagg"
committee_size = 3
threshold = 2
clip_norm = 1.0
max_samples = 1000
[model]
kind = "logistic_regression"
[data]
features = ["a", "b"]
label = "y"
"#;

/// A job being simulated.
pub struct SimJob {
    pub id: String,
    pub spec: JobSpec,
    pub participants: Vec<Identity>,
    round: u32,
    version: u32,
    model_hash: [u8; 32],
    previous_committee: Vec<ParticipantId>,
}

fn fake_hash(tag: &str, a: u64, b: u64) -> [u8; 32] {
    *blake3::hash(format!("{tag}/{a}/{b}").as_bytes()).as_bytes()
}

impl SimJob {
    /// Creates the job and admits `n` fresh participants.
    pub fn create(batch: &mut Batch<'_>, id: &str, job_file: &str, n: usize) -> Self {
        let spec = JobSpec::from_toml(job_file).expect("the simulated job files are valid");
        let model_hash = fake_hash(id, 0, 0);
        batch.push(Payload::JobCreated(v1::JobCreated {
            job_id: id.into(),
            spec: Some(spec.to_proto()),
            model_hash: model_hash.to_vec(),
        }));
        let participants: Vec<Identity> = (0..n).map(|_| Identity::generate()).collect();
        for p in &participants {
            batch.push(Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
                job_id: id.into(),
                participant: p.participant_id().to_string(),
                sealing_key: p.public().sealing_key.to_vec(),
            }));
        }
        Self {
            id: id.into(),
            spec,
            participants,
            round: 0,
            version: 0,
            model_hash,
            previous_committee: Vec::new(),
        }
    }

    /// Admits one more participant.
    pub fn admit(&mut self, batch: &mut Batch<'_>) {
        let p = Identity::generate();
        batch.push(Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
            job_id: self.id.clone(),
            participant: p.participant_id().to_string(),
            sealing_key: p.public().sealing_key.to_vec(),
        }));
    }

    /// One successful round in which everyone uploads; returns the entries it took.
    pub fn round(&mut self, batch: &mut Batch<'_>) -> usize {
        let before = batch.entries().len();
        self.round += 1;
        let round = self.round;
        let ids: Vec<ParticipantId> = self
            .participants
            .iter()
            .map(|p| p.participant_id())
            .collect();
        let dids: Vec<String> = ids.iter().map(|d| d.to_string()).collect();
        let (committee, seed) = match self.spec.secagg() {
            None => (Vec::new(), Vec::new()),
            Some(s) => {
                let seed = draw_seed(&batch.head(), &self.id, round);
                let committee = draw_committee(
                    &seed,
                    &ids,
                    &self.previous_committee,
                    s.committee_size as usize,
                )
                .expect("enough participants");
                (committee, seed.to_vec())
            }
        };
        batch.push(Payload::RoundOpened(v1::RoundOpened {
            job_id: self.id.clone(),
            round,
            base_version: self.version,
            base_model_hash: self.model_hash.to_vec(),
            participants: dids.clone(),
            committee: committee.iter().map(|m| m.to_string()).collect(),
            draw_seed: seed,
            deadline_unix_ms: 0,
        }));
        let secagg = self.spec.secagg().is_some();
        let mut contributors = Vec::new();
        let mut uploads = Vec::new();
        for (i, d) in ids.iter().enumerate() {
            let samples = if secagg { 0 } else { 50 + i as u64 * 10 };
            let manifest = if secagg {
                fake_hash("manifest", round as u64, i as u64).to_vec()
            } else {
                Vec::new()
            };
            batch.push(Payload::UpdateAccepted(v1::UpdateAccepted {
                job_id: self.id.clone(),
                round,
                participant: d.to_string(),
                num_samples: samples,
                payload_hash: fake_hash("payload", round as u64, i as u64).to_vec(),
                manifest_hash: manifest.clone(),
            }));
            contributors.push((d.to_string(), samples));
            uploads.push((d.clone(), manifest));
        }
        let mut statement_wire = None;
        let mut completed = Vec::new();
        if secagg {
            uploads.sort_by(|a, b| a.0.cmp(&b.0));
            contributors.sort();
            let statement = Statement {
                job_id: self.id.clone(),
                round,
                uploads: uploads
                    .iter()
                    .map(|(d, m)| (d.clone(), m.as_slice().try_into().expect("32 bytes")))
                    .collect(),
                answering: committee.clone(),
            };
            let hash = statement.hash();
            for m in &committee {
                let member = self
                    .participants
                    .iter()
                    .find(|p| &p.participant_id() == m)
                    .expect("members are participants");
                batch.push(Payload::CommitteeAttestation(v1::CommitteeAttestation {
                    job_id: self.id.clone(),
                    round,
                    member: m.to_string(),
                    statement_hash: hash.to_vec(),
                    signature: member.sign(&hash).to_vec(),
                }));
            }
            completed = committee.iter().map(|m| m.to_string()).collect();
            statement_wire = Some(statement.to_wire());
        }
        self.version += 1;
        self.model_hash = fake_hash(&self.id, self.version as u64, 1);
        batch.push(Payload::RoundClosed(v1::RoundClosed {
            job_id: self.id.clone(),
            round,
            success: true,
            result_version: self.version,
            model_hash: self.model_hash.to_vec(),
            total_samples: contributors.iter().map(|(_, n)| n).sum(),
            contributors: contributors
                .iter()
                .map(|(d, n)| v1::Contribution {
                    participant: d.clone(),
                    num_samples: *n,
                })
                .collect(),
            statement: statement_wire,
            committee_completed: completed.clone(),
            base_metrics: None,
        }));
        let awards = round_awards(&self.spec.rewards, &contributors, &completed);
        if !awards.is_empty() {
            batch.push(Payload::Reward(v1::Reward {
                job_id: self.id.clone(),
                round,
                awards,
            }));
        }
        self.previous_committee = committee;
        batch.entries().len() - before
    }

    /// The model hash of the latest version (for an export entry).
    pub fn model_hash(&self) -> ([u8; 32], u32) {
        (self.model_hash, self.version)
    }
}
