//! One module per top-level command.

pub mod bench;
pub mod data;
pub mod demo;
pub mod identity;
pub mod job;
pub mod join;
pub mod model;
pub mod serve;
