//! Thin tonic adapters: each gRPC service turns requests into [`State`](crate::State) calls and
//! errors into statuses (through `From<CoordinatorError> for Status`), and nothing else.

pub mod jobs;
pub mod ledger;
pub mod rounds;
