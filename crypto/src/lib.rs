//! Conclave's cryptographic building blocks: participant identities (an Ed25519 signing key,
//! named by its `did:key`, plus an X25519 key for sealed messages), request signatures, fresh
//! nonces, and the pieces of secure aggregation: sealed boxes (HPKE, [`seal`]), seeds and the
//! masks expanded from them ([`prg`]), Shamir sharing of seeds ([`shamir`]) and the committee
//! draw ([`committee`]).
//!
//! Types that hold secrets ([`Identity`]) zeroize on drop and print no key bytes; public
//! values ([`ParticipantId`], [`PublicIdentity`]) are plain data. Primitives come from the
//! dalek crates; this crate only composes them. It does no network I/O; the only file it
//! touches is the identity file.
//!
//! ```
//! use conclave_crypto::{Identity, ParticipantId};
//!
//! let alice = Identity::generate();
//! let sig = alice.sign(b"hello");
//! let id: ParticipantId = alice.participant_id();
//! assert!(id.verify(b"hello", &sig).is_ok());
//! assert!(id.verify(b"hellp", &sig).is_err());
//! ```

pub mod committee;
mod error;
mod identity;
mod participant_id;
pub mod prg;
pub mod seal;
mod seed;
pub mod shamir;

pub use error::CryptoError;
pub use identity::{Identity, PublicIdentity};
pub use participant_id::ParticipantId;
pub use seed::Seed;

/// Returns `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("the operating system's random source is available");
    out
}
