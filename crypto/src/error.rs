//! The crypto crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong with identities and signatures.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The string is not a `did:key` for an Ed25519 key.
    #[error("invalid participant id {id:?}: {reason}")]
    InvalidDid { id: String, reason: &'static str },
    /// A signature has the wrong length or does not verify.
    #[error("signature does not verify for {signer}")]
    BadSignature { signer: String },
    /// An X25519 public key is not 32 bytes.
    #[error("sealing key must be 32 bytes, got {0}")]
    BadSealingKey(usize),
    /// An X25519 public key is a low-order point: nothing sealed to it would be secret.
    #[error("sealing key is a low-order X25519 point (nothing sealed to it would be secret)")]
    LowOrderKey,
    /// Reading or writing an identity file failed.
    #[error("identity file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The identity file exists already and overwriting was not asked for.
    #[error("identity file {0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// The identity file is readable by other users.
    #[error(
        "identity file {path} is accessible by other users (mode {mode:o}); run chmod 600 on it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    /// The identity file's content is malformed.
    #[error("identity file {path} is malformed: {reason}")]
    Malformed { path: PathBuf, reason: String },
}
