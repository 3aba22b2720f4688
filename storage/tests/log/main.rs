//! Component tests of the storage engine: one test binary (linking is slow on 2 cores).

mod codec;
mod compaction;
mod corpus;
mod durable_mark;
mod log_basics;
mod model;
mod recovery;
mod support;
