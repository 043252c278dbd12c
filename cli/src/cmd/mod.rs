//! One module per top-level command.

pub mod bench;
pub mod bench_isolation;
pub mod bench_ledger;
pub mod bench_memory;
pub mod data;
pub mod demo;
pub mod identity;
pub mod job;
pub mod join;
pub mod ledger;
pub mod model;
pub mod serve;
