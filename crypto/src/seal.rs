//! Sealed boxes: HPKE (RFC 9180) base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and
//! ChaCha20-Poly1305, from the `hpke` crate. A participant seals each seed and share to one
//! committee member's X25519 key; the coordinator relays the box and cannot open it. The
//! `info` binds a box to its purpose (job, round, sender, recipient), so a box cannot be
//! replayed into another round or presented as coming from someone else.

use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};

use crate::Identity;

/// Length of the encapsulated key at the front of a sealed box.
pub const ENC_LEN: usize = 32;
/// Bytes a sealed box adds to its plaintext: encapsulated key + Poly1305 tag.
pub const SEAL_OVERHEAD: usize = ENC_LEN + 16;

/// Errors of sealing and opening.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("recipient key is not a valid X25519 public key")]
    BadRecipient,
    #[error("sealed box is malformed or was not sealed to this key with this context")]
    Open,
    #[error("sealing failed")]
    Seal,
}

/// Seals `plaintext` to `recipient` (an X25519 public key): returns `enc ‖ ciphertext`.
pub fn seal(
    recipient: &[u8; 32],
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let pk = <X25519HkdfSha256 as Kem>::PublicKey::from_bytes(recipient)
        .map_err(|_| SealError::BadRecipient)?;
    let (enc, ct) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeS::Base,
        &pk,
        info,
        plaintext,
        aad,
    )
    .map_err(|_| SealError::Seal)?;
    let mut out = Vec::with_capacity(ENC_LEN + ct.len());
    out.extend_from_slice(&enc.to_bytes());
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a box sealed to `identity`'s X25519 key with the same `info` and `aad`.
pub fn open(
    identity: &Identity,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, SealError> {
    if sealed.len() < SEAL_OVERHEAD {
        return Err(SealError::Open);
    }
    let (enc, ct) = sealed.split_at(ENC_LEN);
    let enc =
        <X25519HkdfSha256 as Kem>::EncappedKey::from_bytes(enc).map_err(|_| SealError::Open)?;
    let sk = identity.hpke_private_key();
    hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, X25519HkdfSha256>(
        &OpModeR::Base,
        &sk,
        &enc,
        info,
        ct,
        aad,
    )
    .map_err(|_| SealError::Open)
}

/// The HPKE private key of an identity's X25519 secret.
pub(crate) fn private_key(secret: &[u8; 32]) -> <X25519HkdfSha256 as Kem>::PrivateKey {
    <X25519HkdfSha256 as Kem>::PrivateKey::from_bytes(secret)
        .expect("any 32 bytes are an X25519 secret")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_recipient_with_the_same_context_opens() {
        let bob = Identity::generate();
        let eve = Identity::generate();
        let pk = bob.public().sealing_key;
        let sealed = seal(&pk, b"job j-1 round 3 from a to b", b"aad", b"seed bytes").unwrap();
        assert_eq!(sealed.len(), 10 + SEAL_OVERHEAD);
        assert_eq!(
            open(&bob, b"job j-1 round 3 from a to b", b"aad", &sealed).unwrap(),
            b"seed bytes"
        );
        assert_eq!(
            open(&eve, b"job j-1 round 3 from a to b", b"aad", &sealed),
            Err(SealError::Open)
        );
        assert_eq!(
            open(&bob, b"job j-1 round 4 from a to b", b"aad", &sealed),
            Err(SealError::Open)
        );
        assert_eq!(
            open(&bob, b"job j-1 round 3 from a to b", b"other", &sealed),
            Err(SealError::Open)
        );
        for i in [0, 31, 32, sealed.len() - 1] {
            let mut t = sealed.clone();
            t[i] ^= 1;
            assert_eq!(
                open(&bob, b"job j-1 round 3 from a to b", b"aad", &t),
                Err(SealError::Open),
                "byte {i}"
            );
        }
        assert_eq!(open(&bob, b"", b"", &sealed[..20]), Err(SealError::Open));
        // Two seals of the same plaintext differ (fresh ephemeral key).
        assert_ne!(
            sealed,
            seal(&pk, b"job j-1 round 3 from a to b", b"aad", b"seed bytes").unwrap()
        );
    }
}
