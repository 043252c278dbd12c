//! One ledger entry: its canonical bytes (the protobuf encoding of `v1::LedgerBody`, checked
//! by re-encoding), its hash, and the signer's Ed25519 signature on that hash.

use conclave_crypto::{Identity, ParticipantId};
use conclave_proto::v1;
use prost::Message;

pub use v1::ledger_body::Payload;

use crate::EntryError;

/// Key-derivation context of the entry hash.
const ENTRY_CONTEXT: &str = "conclave 2026-11 ledger entry v1";

/// A 32-byte BLAKE3 hash.
pub type Hash = [u8; 32];

/// The `prev_hash` of entry 0.
pub const GENESIS: Hash = [0; 32];

/// Largest canonical body an entry may have (a round's participant list fits easily).
pub const MAX_ENTRY_BYTES: usize = 8 << 20;

/// The hash of an entry's canonical body bytes.
pub fn entry_hash(body: &[u8]) -> Hash {
    *blake3::Hasher::new_derive_key(ENTRY_CONTEXT)
        .update(body)
        .finalize()
        .as_bytes()
}

/// What an entry records, by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    JobCreated,
    ParticipantAdmitted,
    RoundOpened,
    UpdateAccepted,
    CommitteeAttestation,
    RoundClosed,
    Reward,
    ModelExported,
    CommitteeComplaint,
    DrawPool,
    DrawReveals,
}

impl Kind {
    /// Every kind, in wire order.
    pub const ALL: [Kind; 11] = [
        Kind::JobCreated,
        Kind::ParticipantAdmitted,
        Kind::RoundOpened,
        Kind::UpdateAccepted,
        Kind::CommitteeAttestation,
        Kind::RoundClosed,
        Kind::Reward,
        Kind::ModelExported,
        Kind::CommitteeComplaint,
        Kind::DrawPool,
        Kind::DrawReveals,
    ];

    /// The kind of a payload.
    pub fn of(payload: &Payload) -> Kind {
        match payload {
            Payload::JobCreated(_) => Kind::JobCreated,
            Payload::ParticipantAdmitted(_) => Kind::ParticipantAdmitted,
            Payload::RoundOpened(_) => Kind::RoundOpened,
            Payload::UpdateAccepted(_) => Kind::UpdateAccepted,
            Payload::CommitteeAttestation(_) => Kind::CommitteeAttestation,
            Payload::RoundClosed(_) => Kind::RoundClosed,
            Payload::Reward(_) => Kind::Reward,
            Payload::ModelExported(_) => Kind::ModelExported,
            Payload::CommitteeComplaint(_) => Kind::CommitteeComplaint,
            Payload::DrawPool(_) => Kind::DrawPool,
            Payload::DrawReveals(_) => Kind::DrawReveals,
        }
    }

    /// The snake_case name shown in tables and exports.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::JobCreated => "job_created",
            Kind::ParticipantAdmitted => "participant_admitted",
            Kind::RoundOpened => "round_opened",
            Kind::UpdateAccepted => "update_accepted",
            Kind::CommitteeAttestation => "committee_attestation",
            Kind::RoundClosed => "round_closed",
            Kind::Reward => "reward",
            Kind::ModelExported => "model_exported",
            Kind::CommitteeComplaint => "committee_complaint",
            Kind::DrawPool => "draw_pool",
            Kind::DrawReveals => "draw_reveals",
        }
    }
}

/// A decoded entry with its exact bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    body: v1::LedgerBody,
    bytes: Vec<u8>,
    signature: [u8; 64],
    hash: Hash,
}

impl Entry {
    /// Builds and signs entry `index` after `prev_hash`.
    pub fn create(
        signer: &Identity,
        index: u64,
        prev_hash: Hash,
        time_unix_ms: u64,
        payload: Payload,
    ) -> Self {
        let body = v1::LedgerBody {
            index,
            prev_hash: prev_hash.to_vec(),
            time_unix_ms,
            signer: signer.participant_id().to_string(),
            payload: Some(payload),
        };
        let bytes = body.encode_to_vec();
        let hash = entry_hash(&bytes);
        let signature = signer.sign(&hash);
        Self {
            body,
            bytes,
            signature,
            hash,
        }
    }

    /// Decodes stored or received bytes, refusing anything but the canonical encoding of a
    /// complete body. The signature is checked separately ([`Entry::check_signature`]) so that
    /// many can be checked at once.
    pub fn from_parts(bytes: Vec<u8>, signature: &[u8]) -> Result<Self, EntryError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge(bytes.len()));
        }
        let signature: [u8; 64] = signature.try_into().map_err(|_| {
            EntryError::Malformed(format!("signature of {} bytes", signature.len()))
        })?;
        let body = v1::LedgerBody::decode(bytes.as_slice())
            .map_err(|e| EntryError::Malformed(e.to_string()))?;
        if body.encode_to_vec() != bytes {
            return Err(EntryError::Malformed("not the canonical encoding".into()));
        }
        if body.prev_hash.len() != 32 {
            return Err(EntryError::Malformed(format!(
                "prev_hash of {} bytes",
                body.prev_hash.len()
            )));
        }
        if body.payload.is_none() {
            return Err(EntryError::Malformed("no payload".into()));
        }
        let hash = entry_hash(&bytes);
        Ok(Self {
            body,
            bytes,
            signature,
            hash,
        })
    }

    /// Decodes the wire form.
    pub fn from_wire(wire: v1::LedgerEntry) -> Result<Self, EntryError> {
        Self::from_parts(wire.body, &wire.signature)
    }

    /// The wire form.
    pub fn to_wire(&self) -> v1::LedgerEntry {
        v1::LedgerEntry {
            body: self.bytes.clone(),
            signature: self.signature.to_vec(),
        }
    }

    /// Checks the signature against the signer the body names.
    pub fn check_signature(&self) -> Result<ParticipantId, EntryError> {
        let signer = self.signer_id()?;
        signer
            .verify(&self.hash, &self.signature)
            .map_err(|_| EntryError::BadSignature)?;
        Ok(signer)
    }

    /// The signer's parsed identity.
    pub fn signer_id(&self) -> Result<ParticipantId, EntryError> {
        ParticipantId::parse(&self.body.signer).map_err(|e| EntryError::Malformed(e.to_string()))
    }

    pub fn index(&self) -> u64 {
        self.body.index
    }

    pub fn prev_hash(&self) -> Hash {
        self.body
            .prev_hash
            .as_slice()
            .try_into()
            .expect("checked at decode")
    }

    pub fn time_unix_ms(&self) -> u64 {
        self.body.time_unix_ms
    }

    pub fn signer(&self) -> &str {
        &self.body.signer
    }

    pub fn payload(&self) -> &Payload {
        self.body.payload.as_ref().expect("checked at decode")
    }

    pub fn kind(&self) -> Kind {
        Kind::of(self.payload())
    }

    pub fn hash(&self) -> &Hash {
        &self.hash
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }

    /// The job the entry is about.
    pub fn job_id(&self) -> &str {
        conclave_aggregation::engine::payload_job(self.payload())
    }

    /// The round the entry is about, if any.
    pub fn round(&self) -> Option<u32> {
        match self.payload() {
            Payload::RoundOpened(p) => Some(p.round),
            Payload::UpdateAccepted(p) => Some(p.round),
            Payload::CommitteeAttestation(p) => Some(p.round),
            Payload::RoundClosed(p) => Some(p.round),
            Payload::Reward(p) => Some(p.round),
            Payload::CommitteeComplaint(p) => Some(p.round),
            _ => None,
        }
    }

    /// Every participant the entry names.
    pub fn participants(&self) -> Vec<&str> {
        match self.payload() {
            Payload::JobCreated(_) => vec![],
            Payload::ParticipantAdmitted(p) => vec![&p.participant],
            Payload::RoundOpened(p) => p
                .participants
                .iter()
                .chain(&p.committee)
                .map(String::as_str)
                .collect(),
            Payload::UpdateAccepted(p) => vec![&p.participant],
            Payload::CommitteeAttestation(p) => vec![&p.member],
            Payload::RoundClosed(p) => p
                .contributors
                .iter()
                .map(|c| c.participant.as_str())
                .chain(p.committee_completed.iter().map(String::as_str))
                .collect(),
            Payload::Reward(p) => p.awards.iter().map(|a| a.participant.as_str()).collect(),
            Payload::ModelExported(p) => vec![&p.exported_by],
            Payload::CommitteeComplaint(p) => vec![&p.member, &p.participant],
            Payload::DrawPool(p) => p.participants.iter().map(String::as_str).collect(),
            Payload::DrawReveals(p) => p.reveals.iter().map(|r| r.participant.as_str()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(signer: &Identity) -> Entry {
        Entry::create(
            signer,
            3,
            [7; 32],
            1_700_000_000_000,
            Payload::ParticipantAdmitted(v1::ParticipantAdmitted {
                job_id: "j-1".into(),
                participant: signer.participant_id().to_string(),
                sealing_key: vec![1; 32],
                ..Default::default()
            }),
        )
    }

    #[test]
    fn round_trips_and_checks_its_signature() {
        let id = Identity::generate();
        let e = sample(&id);
        let back = Entry::from_wire(e.to_wire()).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.check_signature().unwrap(), id.participant_id());
        assert_eq!(back.kind(), Kind::ParticipantAdmitted);
        assert_eq!(back.hash(), &entry_hash(back.bytes()));
    }

    #[test]
    fn refuses_non_canonical_bytes_and_bad_signatures() {
        let id = Identity::generate();
        let e = sample(&id);
        // The same fields with an unknown field appended decode, but are not canonical.
        let mut padded = e.bytes().to_vec();
        padded.extend_from_slice(&[0xf8, 0x01, 0x01]);
        assert!(matches!(
            Entry::from_parts(padded, e.signature()),
            Err(EntryError::Malformed(_))
        ));
        let mut sig = *e.signature();
        sig[0] ^= 1;
        let forged = Entry::from_parts(e.bytes().to_vec(), &sig).unwrap();
        assert_eq!(forged.check_signature(), Err(EntryError::BadSignature));
        // Signed by someone else than the body names.
        let other = Identity::generate();
        let resigned = Entry::from_parts(e.bytes().to_vec(), &other.sign(e.hash())).unwrap();
        assert_eq!(resigned.check_signature(), Err(EntryError::BadSignature));
    }
}
