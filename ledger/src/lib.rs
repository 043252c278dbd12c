//! The contribution ledger (DESIGN.md, "Ledger"): an append-only chain of entries
//! `{index, prev_hash, time, kind, payload, signer, signature}`, each hashed with BLAKE3 over
//! its canonical bytes and signed with the coordinator's Ed25519 key, stored in an embedded
//! SQLite database whose commits are durable before they return.
//!
//! - [`entry`]: the entry, its canonical encoding, hash and signature.
//! - [`db`]: storage; batches of entries and the owner's state commit in one transaction.
//! - [`verify`]: recompute every hash and signature, replay the protocol through the round
//!   engine (`conclave_aggregation::engine`: signed admissions and contributions, committee
//!   draws, complaints, attestations, rewards), name the first bad index.
//! - [`signed`]: the digests participants sign for what the ledger keeps of them.
//! - [`rewards`]: balances from reward entries (a round's split is the engine's rule).
//! - [`replica`]: a participant's verified copy that detects rewritten history.
//! - [`view`]: rows and JSON for `conclave ledger show` and `export`.
//! - [`sim`]: a synthetic, protocol-valid ledger for tests and benchmarks.
//!
//! ```
//! use conclave_crypto::Identity;
//! use conclave_ledger::{Ledger, Payload, verify::verify_ledger};
//! use conclave_proto::v1;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let ledger = Ledger::open(&dir.path().join("ledger.db")).unwrap();
//! let coordinator = Identity::generate();
//! let mut batch = ledger.batch(&coordinator, 1_700_000_000_000);
//! batch.push(Payload::ModelExported(v1::ModelExported {
//!     job_id: "j-1".into(),
//!     exported_by: coordinator.participant_id().to_string(),
//!     ..Default::default()
//! }));
//! ledger.commit(batch, &[]).unwrap();
//! // Signatures and links hold, but no job j-1 was ever created: verification says so.
//! let report = verify_ledger(&ledger, None).unwrap();
//! assert_eq!(report.problem.unwrap().index, 0);
//! ```

pub mod db;
pub mod entry;
mod error;
mod replay;
pub mod replica;
pub mod rewards;
pub mod signed;
pub mod sim;
pub mod verify;
pub mod view;

pub use db::{Batch, Head, Ledger, StateWrite};
pub use entry::{Entry, Hash, Kind, Payload};
pub use error::{EntryError, LedgerError};
