//! `Identity`: a participant's (or coordinator's) secret keys, and its identity file.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use ed25519_dalek::{Signer, SigningKey};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{CryptoError, ParticipantId, random_bytes};

/// A party's secret keys: Ed25519 for signing requests and X25519 for receiving sealed
/// messages. Both dalek key types zeroize on drop; `Debug` shows only the public id.
pub struct Identity {
    signing: SigningKey,
    sealing: StaticSecret,
    /// The did:key of `signing`, computed once (it is asked for often).
    id: ParticipantId,
}

/// The public half of an [`Identity`]: what other parties may know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicIdentity {
    /// The signing key, as a `did:key`.
    pub id: ParticipantId,
    /// The X25519 public key others seal messages to.
    pub sealing_key: [u8; 32],
}

/// Key-derivation context of [`Identity::derive_secret`]'s key.
const DERIVE_CONTEXT: &str = "conclave 2026-12 identity secret derivation v1";

/// The encodings of the points of small order on Curve25519 and its twist (u-coordinates,
/// little-endian, bit 255 ignored), as libsodium's X25519 blacklist lists them: a key
/// agreement with any of them gives the all-zero secret whatever the other side's key.
const LOW_ORDER: [[u8; 32]; 7] = {
    let mut t = [[0u8; 32]; 7];
    // 0 and 1.
    t[1][0] = 1;
    // The two points of order 8.
    t[2] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];
    t[3] = [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ];
    // p - 1, and the non-canonical p (= 0) and p + 1 (= 1).
    let mut k = 4;
    while k < 7 {
        let mut i = 1;
        while i < 31 {
            t[k][i] = 0xff;
            i += 1;
        }
        t[k][0] = 0xec + (k as u8 - 4);
        t[k][31] = 0x7f;
        k += 1;
    }
    t
};

impl PublicIdentity {
    /// Refuses an X25519 public key that is a low-order point (e.g. 32 zero bytes): a key
    /// agreement with it gives the all-zero secret whatever the other side's key, so nothing
    /// sealed to it would be secret, and sealing to it fails. A table lookup (libsodium's
    /// blacklist); a test checks it against the dalek crate's contributory test.
    pub fn check_sealing_key(key: &[u8; 32]) -> Result<(), CryptoError> {
        let mut masked = *key;
        masked[31] &= 0x7f;
        if LOW_ORDER.contains(&masked) {
            Err(CryptoError::LowOrderKey)
        } else {
            Ok(())
        }
    }
}

/// On-disk form of an identity file (JSON, mode 0600).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    version: u32,
    did: String,
    ed25519_secret: String,
    x25519_secret: String,
}

impl Identity {
    /// A fresh identity from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let ed = Zeroizing::new(random_bytes::<32>());
        let x = Zeroizing::new(random_bytes::<32>());
        Self::from_secret_bytes(&ed, &x)
    }

    fn from_secret_bytes(ed25519: &[u8; 32], x25519: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(ed25519);
        let id = ParticipantId::from_key(signing.verifying_key());
        Self {
            signing,
            sealing: StaticSecret::from(*x25519),
            id,
        }
    }

    /// The participant id (`did:key`) of this identity.
    pub fn participant_id(&self) -> ParticipantId {
        self.id.clone()
    }

    /// The public half of this identity.
    pub fn public(&self) -> PublicIdentity {
        PublicIdentity {
            id: self.participant_id(),
            sealing_key: PublicKey::from(&self.sealing).to_bytes(),
        }
    }

    /// The HPKE private key of the sealing key (for opening sealed boxes).
    pub(crate) fn hpke_private_key(
        &self,
    ) -> <hpke::kem::X25519HkdfSha256 as hpke::Kem>::PrivateKey {
        let secret = Zeroizing::new(self.sealing.to_bytes());
        crate::seal::private_key(&secret)
    }

    /// A secret for one purpose, derived from this identity: keyed BLAKE3 (a PRF) under a key
    /// derived from the Ed25519 secret, over `context` and `input`. The same identity always
    /// derives the same secret, so a restarted participant need not store it.
    pub fn derive_secret(&self, context: &str, input: &[u8]) -> Zeroizing<[u8; 32]> {
        let secret = Zeroizing::new(self.signing.to_bytes());
        let key = Zeroizing::new(blake3::derive_key(DERIVE_CONTEXT, secret.as_slice()));
        let mut h = blake3::Hasher::new_keyed(&key);
        h.update(&(context.len() as u64).to_le_bytes());
        h.update(context.as_bytes());
        h.update(input);
        Zeroizing::new(*h.finalize().as_bytes())
    }

    /// Signs `message` with the Ed25519 key (deterministic, RFC 8032).
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.signing.sign(message).to_bytes()
    }

    /// Writes the identity to `path` with mode 0600. Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.to_owned(),
            source,
        };
        let file = IdentityFile {
            version: 1,
            did: self.participant_id().to_string(),
            ed25519_secret: hex::encode(self.signing.to_bytes()),
            x25519_secret: hex::encode(self.sealing.to_bytes()),
        };
        let text = Zeroizing::new(
            serde_json::to_string_pretty(&file).expect("identity serialises to JSON"),
        );
        drop(Zeroizing::new(file.ed25519_secret));
        drop(Zeroizing::new(file.x25519_secret));
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AlreadyExists {
                    CryptoError::Exists(path.to_owned())
                } else {
                    io(e)
                }
            })?;
        out.write_all(text.as_bytes()).map_err(io)?;
        out.write_all(b"\n").map_err(io)?;
        out.sync_all().map_err(io)
    }

    /// Reads an identity file, refusing one that other users can read or that does not match
    /// its own `did`.
    pub fn load(path: &Path) -> Result<Self, CryptoError> {
        let io = |source| CryptoError::Io {
            path: path.to_owned(),
            source,
        };
        let malformed = |reason: String| CryptoError::Malformed {
            path: path.to_owned(),
            reason,
        };
        let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(CryptoError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(io)?);
        let file: IdentityFile =
            serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        if file.version != 1 {
            return Err(malformed(format!("unsupported version {}", file.version)));
        }
        let ed = Zeroizing::new(
            decode_key(&file.ed25519_secret)
                .map_err(|r| malformed(format!("ed25519_secret: {r}")))?,
        );
        let x = Zeroizing::new(
            decode_key(&file.x25519_secret)
                .map_err(|r| malformed(format!("x25519_secret: {r}")))?,
        );
        drop(Zeroizing::new(file.ed25519_secret));
        drop(Zeroizing::new(file.x25519_secret));
        let identity = Self::from_secret_bytes(&ed, &x);
        if identity.participant_id().as_str() != file.did {
            return Err(malformed("did does not match the ed25519 secret".into()));
        }
        Ok(identity)
    }
}

fn decode_key(text: &str) -> Result<[u8; 32], &'static str> {
    let bytes = Zeroizing::new(hex::decode(text).map_err(|_| "not hex")?);
    bytes.as_slice().try_into().map_err(|_| "must be 32 bytes")
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("id", &self.participant_id())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.json");
        let id = Identity::generate();
        id.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.public(), id.public());
        assert_eq!(loaded.sign(b"m"), id.sign(b"m"));
        assert!(matches!(id.save(&path), Err(CryptoError::Exists(_))));
    }

    #[test]
    fn refuses_world_readable_and_tampered_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.json");
        Identity::generate().save(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(CryptoError::TooOpen { .. })
        ));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let other = Identity::generate().participant_id().to_string();
        let did_start = text.find("did:key").unwrap();
        let end = did_start + text[did_start..].find('"').unwrap();
        std::fs::write(
            &path,
            format!("{}{}{}", &text[..did_start], other, &text[end..]),
        )
        .unwrap();
        assert!(matches!(
            Identity::load(&path),
            Err(CryptoError::Malformed { .. })
        ));
    }

    #[test]
    fn low_order_sealing_keys_are_refused() {
        // The eight low-order points of Curve25519 (in their canonical encodings) and the
        // non-canonical encodings of 0 and 1 (p and p + 1).
        let mut low: Vec<[u8; 32]> = vec![[0; 32]];
        let mut one = [0u8; 32];
        one[0] = 1;
        low.push(one);
        for hex in [
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ] {
            low.push(hex::decode(hex).unwrap().try_into().unwrap());
        }
        // With bit 255 set too (X25519 ignores it).
        let high: Vec<[u8; 32]> = low
            .iter()
            .map(|k| {
                let mut h = *k;
                h[31] |= 0x80;
                h
            })
            .collect();
        // The dalek crate's own test: the shared secret with a clamped scalar is all zeros.
        let contributory = |key: &[u8; 32]| {
            StaticSecret::from([0x5a; 32])
                .diffie_hellman(&PublicKey::from(*key))
                .was_contributory()
        };
        for key in low.iter().chain(&high) {
            assert!(!contributory(key), "{} is low-order", hex::encode(key));
            assert!(
                matches!(
                    PublicIdentity::check_sealing_key(key),
                    Err(CryptoError::LowOrderKey)
                ),
                "{}",
                hex::encode(key)
            );
        }
        for i in 0..2000u32 {
            // Real keys, and arbitrary bytes near the blacklist's values.
            let mut key = Identity::generate().public().sealing_key;
            if i % 2 == 1 {
                key = low[(i as usize / 2) % low.len()];
                key[(i as usize / 14) % 31] ^= 1 << (i % 8);
            }
            assert_eq!(
                contributory(&key),
                PublicIdentity::check_sealing_key(&key).is_ok(),
                "{}",
                hex::encode(key)
            );
        }
    }

    #[test]
    fn derived_secrets_are_per_identity_context_and_input() {
        let a = Identity::generate();
        let b = Identity::generate();
        assert_eq!(*a.derive_secret("x", b"1"), *a.derive_secret("x", b"1"));
        assert_ne!(*a.derive_secret("x", b"1"), *a.derive_secret("x", b"2"));
        assert_ne!(*a.derive_secret("x", b"1"), *a.derive_secret("y", b"1"));
        assert_ne!(*a.derive_secret("x", b"1"), *b.derive_secret("x", b"1"));
    }

    #[test]
    fn debug_shows_no_secret() {
        let id = Identity::generate();
        let shown = format!("{id:?}");
        assert!(shown.contains("did:key"));
        assert!(!shown.contains(&hex::encode(id.signing.to_bytes())));
    }
}
