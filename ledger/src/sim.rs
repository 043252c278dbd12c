//! A synthetic ledger that follows the protocol: jobs, signed admissions, a secure job's draw
//! (a pool and its revealed chain links), rounds with signed uploads, committee draws, a
//! complaint, member attestations, closes and rewards, signed by a coordinator key. Tests
//! tamper with it; `conclave bench ledger` measures appends and verification with it. The
//! entries are what the coordinator writes, built the same way (the draw from the revealed
//! entropy), without training anything; each one goes through the job's round engine before
//! it is appended, and what a round pays is the engine's to say, as in the coordinator.

use conclave_aggregation::JobSpec;
use conclave_aggregation::engine::JobEngine;
use conclave_aggregation::secagg::{ComplaintReason, Statement, complaint_hash};
use conclave_crypto::committee::{DrawChain, draw_committee, draw_entropy, draw_seed, pool_hash};
use conclave_crypto::{Identity, ParticipantId};
use conclave_proto::v1;

use crate::db::Batch;
use crate::entry::Payload;
use crate::signed::{admission_digest, contribution_digest, draw_reveal_digest, export_digest};

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
    /// The job's draw entropy, once drawn (secure jobs).
    entropy: Option<[u8; 32]>,
    /// The job's rules: every entry the simulator makes goes through them, and what a round
    /// pays is theirs to say.
    engine: JobEngine,
}

fn fake_hash(tag: &str, a: u64, b: u64) -> [u8; 32] {
    *blake3::hash(format!("{tag}/{a}/{b}").as_bytes()).as_bytes()
}

/// The admission entry of `p`, signed by it (with its draw commitment in a secure job).
pub fn admission(job_id: &str, p: &Identity, secure: bool) -> Payload {
    let sealing_key = p.public().sealing_key.to_vec();
    let commitment = if secure {
        DrawChain::for_job(p, job_id).commitment().to_vec()
    } else {
        Vec::new()
    };
    let digest = admission_digest(job_id, &p.participant_id(), &sealing_key, &commitment);
    Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
        job_id: job_id.into(),
        participant: p.participant_id().to_string(),
        sealing_key,
        draw_commitment: commitment,
        signature: p.sign(&digest).to_vec(),
    })
}

/// An export entry, signed by the exporter.
pub fn export(job_id: &str, version: u32, model_hash: &[u8], exporter: &Identity) -> Payload {
    let digest = export_digest(
        job_id,
        version,
        model_hash,
        "safetensors",
        &exporter.participant_id(),
    );
    Payload::ModelExported(v1::ModelExported {
        job_id: job_id.into(),
        model_version: version,
        model_hash: model_hash.to_vec(),
        format: "safetensors".into(),
        exported_by: exporter.participant_id().to_string(),
        signature: exporter.sign(&digest).to_vec(),
    })
}

/// Appends `payload` to `batch` once the job's rules accept it (the simulator builds only what
/// a coordinator may record: anything else is a bug here).
fn push(engine: &mut JobEngine, batch: &mut Batch<'_>, payload: Payload) {
    if let Err(e) = engine.step(&payload, true) {
        panic!("the simulator broke the rules of job {}: {e}", engine.id());
    }
    batch.push(payload);
}

impl SimJob {
    /// Creates the job and admits `n` fresh participants.
    pub fn create(batch: &mut Batch<'_>, id: &str, job_file: &str, n: usize) -> Self {
        let spec = JobSpec::from_toml(job_file).expect("the simulated job files are valid");
        let model_hash = fake_hash(id, 0, 0);
        let created = v1::JobCreated {
            job_id: id.into(),
            spec: Some(spec.to_proto()),
            model_hash: model_hash.to_vec(),
        };
        let engine = JobEngine::create(&created).expect("the simulated job is valid");
        batch.push(Payload::JobCreated(created));
        let participants: Vec<Identity> = (0..n).map(|_| Identity::generate()).collect();
        let secure = spec.secagg().is_some();
        let mut job = Self {
            id: id.into(),
            spec,
            participants: Vec::new(),
            round: 0,
            version: 0,
            model_hash,
            previous_committee: Vec::new(),
            entropy: None,
            engine,
        };
        for p in &participants {
            push(&mut job.engine, batch, admission(id, p, secure));
        }
        job.participants = participants;
        job
    }

    /// Admits one more participant (it trains from the next round on).
    pub fn admit(&mut self, batch: &mut Batch<'_>) {
        let p = Identity::generate();
        push(
            &mut self.engine,
            batch,
            admission(&self.id, &p, self.spec.secagg().is_some()),
        );
        self.participants.push(p);
    }

    /// A secure job's draw: attempt 0 over every participant, all of whom reveal.
    fn draw(&mut self, batch: &mut Batch<'_>) -> [u8; 32] {
        let mut pool: Vec<&Identity> = self.participants.iter().collect();
        pool.sort_by_key(|p| p.participant_id());
        let ids: Vec<ParticipantId> = pool.iter().map(|p| p.participant_id()).collect();
        push(
            &mut self.engine,
            batch,
            Payload::DrawPool(v1::DrawPool {
                job_id: self.id.clone(),
                attempt: 0,
                participants: ids.iter().map(|d| d.to_string()).collect(),
            }),
        );
        let hash = pool_hash(&self.id, 0, &ids);
        let links: Vec<[u8; 32]> = pool
            .iter()
            .map(|p| DrawChain::for_job(p, &self.id).value(1))
            .collect();
        push(
            &mut self.engine,
            batch,
            Payload::DrawReveals(v1::DrawReveals {
                job_id: self.id.clone(),
                attempt: 0,
                reveals: pool
                    .iter()
                    .zip(&links)
                    .map(|(p, link)| v1::DrawValue {
                        participant: p.participant_id().to_string(),
                        value: link.to_vec(),
                        signature: p
                            .sign(&draw_reveal_digest(
                                &self.id,
                                0,
                                &hash,
                                &p.participant_id(),
                                link,
                            ))
                            .to_vec(),
                    })
                    .collect(),
                complete: true,
                pool_hash: hash.to_vec(),
            }),
        );
        draw_entropy(&hash, &links)
    }

    /// One successful round in which everyone uploads (in a secure job, the first committee
    /// member complains about one upload, which is left out); returns the entries it took.
    pub fn round(&mut self, batch: &mut Batch<'_>) -> usize {
        let before = batch.len();
        if self.spec.secagg().is_some() && self.entropy.is_none() {
            self.entropy = Some(self.draw(batch));
        }
        self.round += 1;
        let round = self.round;
        let ids: Vec<ParticipantId> = self
            .participants
            .iter()
            .map(|p| p.participant_id())
            .collect();
        let dids: Vec<String> = ids.iter().map(|d| d.to_string()).collect();
        let (committee, seed) = match (self.spec.secagg(), &self.entropy) {
            (Some(s), Some(entropy)) => {
                let seed = draw_seed(&self.id, round, entropy);
                let committee = draw_committee(
                    &seed,
                    &ids,
                    &self.previous_committee,
                    s.committee_size as usize,
                )
                .expect("enough participants");
                (committee, seed.to_vec())
            }
            _ => (Vec::new(), Vec::new()),
        };
        let secagg = self.spec.secagg().is_some();
        push(
            &mut self.engine,
            batch,
            Payload::RoundOpened(v1::RoundOpened {
                job_id: self.id.clone(),
                round,
                base_version: self.version,
                base_model_hash: self.model_hash.to_vec(),
                participants: dids.clone(),
                committee: committee.iter().map(|m| m.to_string()).collect(),
                draw_seed: seed,
                deadline_unix_ms: 0,
                plan_hash: if secagg {
                    fake_hash("plan", round as u64, 0).to_vec()
                } else {
                    Vec::new()
                },
            }),
        );
        let mut contributors = Vec::new();
        let mut uploads = Vec::new();
        for (i, (d, p)) in ids.iter().zip(&self.participants).enumerate() {
            let samples = if secagg { 0 } else { 50 + i as u64 * 10 };
            let manifest = if secagg {
                fake_hash("manifest", round as u64, i as u64).to_vec()
            } else {
                Vec::new()
            };
            let payload_hash = fake_hash("payload", round as u64, i as u64).to_vec();
            let digest = contribution_digest(&self.id, round, d, samples, &payload_hash, &manifest);
            push(
                &mut self.engine,
                batch,
                Payload::UpdateAccepted(v1::UpdateAccepted {
                    job_id: self.id.clone(),
                    round,
                    participant: d.to_string(),
                    num_samples: samples,
                    payload_hash,
                    manifest_hash: manifest.clone(),
                    signature: p.sign(&digest).to_vec(),
                }),
            );
            contributors.push((d.to_string(), samples));
            uploads.push((d.clone(), manifest));
        }
        let mut statement_wire = None;
        let mut completed = Vec::new();
        if secagg {
            uploads.sort_by(|a, b| a.0.cmp(&b.0));
            contributors.sort();
            let member_of = |m: &ParticipantId| {
                self.participants
                    .iter()
                    .find(|p| &p.participant_id() == m)
                    .expect("members are participants")
            };
            // The first member cannot open the last upload's box: it is left out of U.
            let (left_out, manifest) = uploads.pop().expect("uploads");
            contributors.retain(|(d, _)| *d != left_out.as_str());
            let manifest: [u8; 32] = manifest.as_slice().try_into().expect("32 bytes");
            let complainer = &committee[0];
            let digest = complaint_hash(
                &self.id,
                round,
                complainer,
                &left_out,
                &manifest,
                ComplaintReason::Unopenable,
            );
            push(
                &mut self.engine,
                batch,
                Payload::CommitteeComplaint(v1::CommitteeComplaint {
                    job_id: self.id.clone(),
                    round,
                    member: complainer.to_string(),
                    participant: left_out.to_string(),
                    manifest_hash: manifest.to_vec(),
                    reason: v1::ComplaintReason::Unopenable.into(),
                    signature: member_of(complainer).sign(&digest).to_vec(),
                }),
            );
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
                push(
                    &mut self.engine,
                    batch,
                    Payload::CommitteeAttestation(v1::CommitteeAttestation {
                        job_id: self.id.clone(),
                        round,
                        member: m.to_string(),
                        statement_hash: hash.to_vec(),
                        signature: member_of(m).sign(&hash).to_vec(),
                    }),
                );
            }
            completed = committee.iter().map(|m| m.to_string()).collect();
            statement_wire = Some(statement.to_wire());
        }
        self.version += 1;
        self.model_hash = fake_hash(&self.id, self.version as u64, 1);
        let closed = v1::RoundClosed {
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
            committee_completed: completed,
            base_metrics: None,
            failure: String::new(),
        };
        let awards = self
            .engine
            .close_awards(&closed)
            .expect("the simulated close follows the rules");
        push(&mut self.engine, batch, Payload::RoundClosed(closed));
        if !awards.is_empty() {
            push(
                &mut self.engine,
                batch,
                Payload::Reward(v1::Reward {
                    job_id: self.id.clone(),
                    round,
                    awards,
                }),
            );
        }
        self.previous_committee = committee;
        batch.len() - before
    }

    /// The model hash of the latest version (for an export entry).
    pub fn model_hash(&self) -> ([u8; 32], u32) {
        (self.model_hash, self.version)
    }
}
