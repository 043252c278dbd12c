//! `ParticipantId`: a participant's public name, the `did:key` of its Ed25519 key.

use std::fmt;

use ed25519_dalek::{Signature, VerifyingKey};

use crate::CryptoError;

/// Multicodec prefix of an Ed25519 public key (varint 0xed).
const ED25519_PUB_MULTICODEC: [u8; 2] = [0xed, 0x01];
const DID_KEY_PREFIX: &str = "did:key:z";

/// A participant's identity as shown everywhere: `did:key:z6Mk…`, which encodes its Ed25519
/// verifying key (multicodec `ed25519-pub`, base58btc). Public by design: it names the signer.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ParticipantId {
    did: String,
    key: VerifyingKey,
}

impl ParticipantId {
    /// The id of an Ed25519 verifying key.
    pub fn from_key(key: VerifyingKey) -> Self {
        let mut bytes = Vec::with_capacity(34);
        bytes.extend_from_slice(&ED25519_PUB_MULTICODEC);
        bytes.extend_from_slice(key.as_bytes());
        let did = format!("{DID_KEY_PREFIX}{}", bs58::encode(bytes).into_string());
        Self { did, key }
    }

    /// Parses a `did:key` string, checking that it encodes a valid Ed25519 point that is not
    /// of small order.
    pub fn parse(did: &str) -> Result<Self, CryptoError> {
        let bad = |reason| CryptoError::InvalidDid {
            id: did.chars().take(80).collect(),
            reason,
        };
        let encoded = did
            .strip_prefix(DID_KEY_PREFIX)
            .ok_or_else(|| bad("expected did:key:z…"))?;
        let bytes = bs58::decode(encoded)
            .into_vec()
            .map_err(|_| bad("not base58btc"))?;
        let key = bytes
            .strip_prefix(&ED25519_PUB_MULTICODEC)
            .ok_or_else(|| bad("not an ed25519-pub multicodec key"))?;
        let key: [u8; 32] = key
            .try_into()
            .map_err(|_| bad("ed25519 key must be 32 bytes"))?;
        let key = VerifyingKey::from_bytes(&key).map_err(|_| bad("not a valid ed25519 point"))?;
        // A small-order key is nobody's: anyone can make signatures that verify under it
        // (batch verification does not refuse them as `verify_strict` does).
        if key.is_weak() {
            return Err(bad("a small-order ed25519 point"));
        }
        let id = Self::from_key(key);
        if id.did != did {
            return Err(bad("non-canonical encoding"));
        }
        Ok(id)
    }

    /// The `did:key:…` string.
    pub fn as_str(&self) -> &str {
        &self.did
    }

    /// The Ed25519 verifying key this id names.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// Checks an Ed25519 signature by this participant (strict verification: no malleable or
    /// small-order forms).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), CryptoError> {
        let bad = || CryptoError::BadSignature {
            signer: self.did.clone(),
        };
        let signature = Signature::from_slice(signature).map_err(|_| bad())?;
        // verify_strict checks RFC 8032's equation as `verify` does and also rejects
        // small-order keys and R values: strictly stronger, so `verify` is not run again.
        self.key
            .verify_strict(message, &signature)
            .map_err(|_| bad())
    }
}

impl PartialOrd for ParticipantId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ParticipantId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.did.cmp(&other.did)
    }
}

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.did)
    }
}

impl fmt::Debug for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParticipantId({})", self.did)
    }
}

impl std::str::FromStr for ParticipantId {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 8032, section 7.1, TEST 1: public key and the signature of the empty message.
    const RFC8032_PUB: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
    const RFC8032_SIG: &str = "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b";

    fn rfc_id() -> ParticipantId {
        let key: [u8; 32] = hex::decode(RFC8032_PUB).unwrap().try_into().unwrap();
        ParticipantId::from_key(VerifyingKey::from_bytes(&key).unwrap())
    }

    #[test]
    fn small_order_keys_are_refused() {
        // The identity point (y = 1) and the order-4 point with y = 0: valid encodings that
        // anyone can "sign" for.
        for y in [1u8, 0] {
            let mut key = [0u8; 32];
            key[0] = y;
            let weak = VerifyingKey::from_bytes(&key).unwrap();
            let did = ParticipantId::from_key(weak).to_string();
            assert!(ParticipantId::parse(&did).is_err(), "{did}");
        }
        assert!(ParticipantId::parse(rfc_id().as_str()).is_ok());
    }

    #[test]
    fn rfc8032_test1_verifies() {
        let id = rfc_id();
        let sig = hex::decode(RFC8032_SIG).unwrap();
        id.verify(b"", &sig).unwrap();
        assert!(id.verify(b"x", &sig).is_err());
        let mut flipped = sig.clone();
        flipped[5] ^= 1;
        assert!(id.verify(b"", &flipped).is_err());
        assert!(id.verify(b"", &sig[..63]).is_err());
    }

    #[test]
    fn did_key_round_trips_and_has_the_ed25519_prefix() {
        let id = rfc_id();
        assert!(id.as_str().starts_with("did:key:z6Mk"), "{id}");
        assert_eq!(ParticipantId::parse(id.as_str()).unwrap(), id);
    }

    #[test]
    fn malformed_dids_are_refused() {
        let good = rfc_id().to_string();
        for bad in [
            "",
            "did:web:example.org",
            "did:key:zz",
            "did:key:z0OIl",
            &good[..good.len() - 1],
            &format!("{good}1"),
        ] {
            assert!(ParticipantId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
