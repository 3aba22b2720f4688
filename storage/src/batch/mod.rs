//! The record batch: the unit producers send, the log stores and consumers read.
//!
//! Byte layout in `docs/formats/batch.md`. A batch is a fixed 85-byte header followed by a
//! records section in Kafka's v2 record encoding, optionally compressed.

mod builder;
mod compression;
mod header;
mod record;
mod validate;
mod varint;
mod view;

pub use builder::{BatchBuilder, NO_PRODUCER_ID, NewRecord, with_producer};
pub use compression::Compression;
pub(crate) use compression::compress;
pub use header::{
    Attributes, BatchHeader, MAGIC_V1, Placement, RaftPosition, stamp_assigned_fields,
};
pub use record::{Record, RecordHeader};
pub(crate) use record::{RecordFields, encode_record};
pub use view::{Batch, RecordIter};
