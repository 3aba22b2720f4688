//! How a Raft entry is stored as record batches, so the partition log *is* the Raft log.
//!
//! - Normal partition entry: its producer batches, each stamped with the entry's log id.
//! - Blank entry: one control batch with no records.
//! - Membership entry: one control batch whose single record (key `membership`) holds
//!   openraft's membership as JSON.
//! - Normal entry with no batches: one control batch with key `empty` (keeps indexes dense).
//! - Controller entry: one data batch whose record (key `controller`) holds the command as JSON.
//!
//! Control batches take no offsets, so consumers see contiguous offsets (DESIGN §3).

use bytes::Bytes;
use openraft::EntryPayload;
use sluice_storage::batch::NewRecord;
use sluice_storage::{Batch, BatchBuilder, Compression, DecodeError};

use super::{Command, LogId, ProduceCommand, TypeConfig};

/// Which kind of group a log belongs to: decides how data batches read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupKind {
    /// Group 0: metadata commands.
    Controller,
    /// A topic partition: record batches.
    Partition,
}

const MEMBERSHIP_KEY: &[u8] = b"membership";
const EMPTY_KEY: &[u8] = b"empty";
const CONTROLLER_KEY: &[u8] = b"controller";

/// An entry that cannot be stored or read back.
#[derive(Debug, thiserror::Error)]
pub enum EntryCodecError {
    /// A stored or submitted batch is not valid.
    #[error("invalid batch in entry: {0}")]
    Batch(#[from] DecodeError),
    /// A JSON payload (membership, controller command) does not parse.
    #[error("invalid entry payload: {0}")]
    Json(#[from] serde_json::Error),
    /// A payload of the wrong kind for this group, or batches of different entries mixed.
    #[error("entry does not fit a {0:?} group: {1}")]
    Mismatch(GroupKind, &'static str),
}

type Entry = openraft::Entry<TypeConfig>;

fn single_record_batch(key: &[u8], value: &[u8], control: bool) -> Result<Batch, EntryCodecError> {
    let mut builder = BatchBuilder::new(Compression::None);
    if control {
        builder = builder.control();
    }
    builder.push(NewRecord {
        key: Some(key),
        value: Some(value),
        timestamp: 0,
        headers: &[],
    });
    Ok(Batch::decode(builder.build()?)?)
}

fn blank_batch() -> Result<Batch, EntryCodecError> {
    Ok(Batch::decode(
        BatchBuilder::new(Compression::None).control().build()?,
    )?)
}

/// The batches that store `entry`, in order.
pub fn entry_to_batches(kind: GroupKind, entry: &Entry) -> Result<Vec<Batch>, EntryCodecError> {
    match (&entry.payload, kind) {
        (EntryPayload::Blank, _) => Ok(vec![blank_batch()?]),
        (EntryPayload::Membership(m), _) => Ok(vec![single_record_batch(
            MEMBERSHIP_KEY,
            &serde_json::to_vec(m)?,
            true,
        )?]),
        (EntryPayload::Normal(Command::Produce(p)), GroupKind::Partition) => {
            if p.batches.is_empty() {
                return Ok(vec![single_record_batch(EMPTY_KEY, b"", true)?]);
            }
            p.batches
                .iter()
                .map(|b| Ok(Batch::decode(b.clone())?))
                .collect()
        }
        (EntryPayload::Normal(Command::Controller(c)), GroupKind::Controller) => {
            Ok(vec![single_record_batch(
                CONTROLLER_KEY,
                &serde_json::to_vec(c)?,
                false,
            )?])
        }
        (EntryPayload::Normal(_), kind) => Err(EntryCodecError::Mismatch(
            kind,
            "command of another group kind",
        )),
    }
}

/// Rebuilds one entry from its stored batches (all with the same Raft log id).
pub fn batches_to_entry(
    kind: GroupKind,
    log_id: LogId,
    batches: Vec<Batch>,
) -> Result<Entry, EntryCodecError> {
    let Some(first) = batches.first() else {
        return Err(EntryCodecError::Mismatch(kind, "entry without batches"));
    };
    if first.header().attributes.is_control() {
        if batches.len() != 1 {
            return Err(EntryCodecError::Mismatch(
                kind,
                "control batch shares its entry",
            ));
        }
        let records = first.records_vec()?;
        let payload = match records.first() {
            None => EntryPayload::Blank,
            Some(r) if r.key.as_deref() == Some(MEMBERSHIP_KEY) => EntryPayload::Membership(
                serde_json::from_slice(r.value.as_deref().unwrap_or_default())?,
            ),
            Some(r) if r.key.as_deref() == Some(EMPTY_KEY) => {
                EntryPayload::Normal(Command::Produce(ProduceCommand::default()))
            }
            Some(_) => return Err(EntryCodecError::Mismatch(kind, "unknown control record")),
        };
        return Ok(Entry { log_id, payload });
    }
    let payload = match kind {
        GroupKind::Partition => {
            let batches: Vec<Bytes> = batches.into_iter().map(|b| b.as_bytes().clone()).collect();
            EntryPayload::Normal(Command::Produce(ProduceCommand { batches }))
        }
        GroupKind::Controller => {
            let records = first.records_vec()?;
            let record = records
                .first()
                .ok_or(EntryCodecError::Mismatch(kind, "empty controller batch"))?;
            if record.key.as_deref() != Some(CONTROLLER_KEY) {
                return Err(EntryCodecError::Mismatch(
                    kind,
                    "controller batch without its key",
                ));
            }
            EntryPayload::Normal(Command::Controller(serde_json::from_slice(
                record.value.as_deref().unwrap_or_default(),
            )?))
        }
    };
    Ok(Entry { log_id, payload })
}
