//! What the engine holds of a job, as plain data: what a coordinator's own job records must
//! agree with at startup, and what a restarted coordinator resumes an open round from.

use std::collections::{BTreeMap, BTreeSet};

use conclave_crypto::ParticipantId;
use conclave_proto::v1;

use super::JobEngine;

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

pub(super) fn of(job: &JobEngine) -> JobSummary {
    JobSummary {
        spec: job.spec_bytes.clone(),
        admitted: job
            .admitted
            .iter()
            .map(|(d, a)| (d.clone(), a.sealing_key))
            .collect(),
        model_hashes: job.model_hashes.clone(),
        last_round: job.last_round,
        open_round: job.open.as_ref().map(|state| OpenRound {
            round: state.round,
            participants: state.participants.clone(),
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
