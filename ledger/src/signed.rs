//! What participants sign that the ledger keeps, so that a coordinator cannot record an
//! admission, a contribution, an export or a draw reveal nobody made: the exact digest of each,
//! and its check. The participant signs the digest with its Ed25519 key; the coordinator checks
//! it before it records the entry; `ledger verify` checks it again from the entry alone.
//!
//! Each digest is a BLAKE3 derive-key hash under its own context string, over length-prefixed
//! fields, so a signature made for one purpose is no signature for another.

use conclave_crypto::ParticipantId;

const ADMISSION_CONTEXT: &str = "conclave 2026-12 admission v1";
const CONTRIBUTION_CONTEXT: &str = "conclave 2026-12 contribution v1";
const EXPORT_CONTEXT: &str = "conclave 2026-12 model export v1";
const DRAW_REVEAL_CONTEXT: &str = "conclave 2026-12 draw reveal v1";

struct Digest(blake3::Hasher);

impl Digest {
    fn new(context: &str) -> Self {
        Self(blake3::Hasher::new_derive_key(context))
    }

    fn bytes(mut self, b: &[u8]) -> Self {
        self.0.update(&(b.len() as u64).to_le_bytes());
        self.0.update(b);
        self
    }

    fn u64(mut self, v: u64) -> Self {
        self.0.update(&v.to_le_bytes());
        self
    }

    fn finish(self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// What a participant signs to be admitted to a job: its sealing key and, in secure jobs,
/// its draw commitment (empty otherwise).
pub fn admission_digest(
    job_id: &str,
    participant: &ParticipantId,
    sealing_key: &[u8],
    draw_commitment: &[u8],
) -> [u8; 32] {
    Digest::new(ADMISSION_CONTEXT)
        .bytes(job_id.as_bytes())
        .bytes(participant.as_str().as_bytes())
        .bytes(sealing_key)
        .bytes(draw_commitment)
        .finish()
}

/// What a participant signs for an upload: the round, its sample count (0 in secagg), the
/// payload's hash and (secagg) its manifest's hash.
pub fn contribution_digest(
    job_id: &str,
    round: u32,
    participant: &ParticipantId,
    num_samples: u64,
    payload_hash: &[u8],
    manifest_hash: &[u8],
) -> [u8; 32] {
    Digest::new(CONTRIBUTION_CONTEXT)
        .bytes(job_id.as_bytes())
        .u64(round as u64)
        .bytes(participant.as_str().as_bytes())
        .u64(num_samples)
        .bytes(payload_hash)
        .bytes(manifest_hash)
        .finish()
}

/// What an exporter signs: the model version it downloaded and checked, and the format.
pub fn export_digest(
    job_id: &str,
    model_version: u32,
    model_hash: &[u8],
    format: &str,
    exporter: &ParticipantId,
) -> [u8; 32] {
    Digest::new(EXPORT_CONTEXT)
        .bytes(job_id.as_bytes())
        .u64(model_version as u64)
        .bytes(model_hash)
        .bytes(format.as_bytes())
        .bytes(exporter.as_str().as_bytes())
        .finish()
}

/// What a pool member signs with the link it reveals in a draw attempt.
pub fn draw_reveal_digest(
    job_id: &str,
    attempt: u32,
    pool_hash: &[u8; 32],
    participant: &ParticipantId,
    value: &[u8],
) -> [u8; 32] {
    Digest::new(DRAW_REVEAL_CONTEXT)
        .bytes(job_id.as_bytes())
        .u64(attempt as u64)
        .bytes(pool_hash)
        .bytes(participant.as_str().as_bytes())
        .bytes(value)
        .finish()
}

/// Whether `signer`'s signature on `digest` verifies.
pub fn signed_by(signer: &ParticipantId, digest: &[u8; 32], signature: &[u8]) -> bool {
    signer.verify(digest, signature).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use conclave_crypto::Identity;

    #[test]
    fn digests_bind_every_field_and_their_purpose() {
        let p = Identity::generate().participant_id();
        let q = Identity::generate().participant_id();
        let c = contribution_digest("j", 1, &p, 5, &[1; 32], &[]);
        assert_ne!(c, contribution_digest("j", 2, &p, 5, &[1; 32], &[]));
        assert_ne!(c, contribution_digest("j", 1, &q, 5, &[1; 32], &[]));
        assert_ne!(c, contribution_digest("j", 1, &p, 6, &[1; 32], &[]));
        assert_ne!(c, contribution_digest("j", 1, &p, 5, &[2; 32], &[]));
        assert_ne!(c, contribution_digest("j", 1, &p, 5, &[1; 32], &[0]));
        // Length prefixes: moving a byte between fields changes the digest.
        assert_ne!(
            admission_digest("j", &p, &[1, 2], &[3]),
            admission_digest("j", &p, &[1], &[2, 3])
        );
        assert_ne!(
            export_digest("j", 1, &[1; 32], "pt", &p),
            export_digest("j", 1, &[1; 32], "pt", &q)
        );
        assert_ne!(
            draw_reveal_digest("j", 0, &[0; 32], &p, &[1; 32]),
            draw_reveal_digest("j", 1, &[0; 32], &p, &[1; 32])
        );
    }
}
