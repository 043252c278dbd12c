//! `Seed`: a 32-byte secret from which a mask is expanded.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A 32-byte secret seed (for example `s_ij`, the seed participant `i` shares with committee
/// member `j`). Zeroized on drop; `Debug` never shows it; equality is constant-time.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Seed([u8; 32]);

impl Seed {
    /// A fresh seed from the operating system's CSPRNG.
    pub fn random() -> Self {
        Self(crate::random_bytes())
    }

    /// Wraps secret bytes (taken by value so the caller's copy can be the only one).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The secret bytes, for sealing or sharing.
    pub fn expose(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for Seed {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Seed {}

impl fmt::Debug for Seed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Seed").finish_non_exhaustive()
    }
}
