//! The partition snapshot's bytes: next offset and producer table, in a compact, versioned
//! binary format (docs/formats/snapshot.md). Decoding never panics: bad bytes are an error.

use std::collections::VecDeque;

use super::producer_state::{ProducerEntry, ProducerTable, RECENT_BATCHES, SequencedBatch};

/// Format version of the partition snapshot's bytes written by this build.
const VERSION: u8 = 1;
/// A snapshot of an earlier build: JSON, `{"next_offset":…,"producers":{…}}`.
const LEGACY_JSON: u8 = b'{';

/// Why snapshot bytes cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Fewer bytes than the format needs.
    #[error("partition snapshot truncated at byte {0}")]
    Truncated(usize),
    /// A version this build cannot read.
    #[error("partition snapshot version {0} is not supported")]
    UnsupportedVersion(u8),
    /// A field holds a value the format forbids.
    #[error("partition snapshot invalid: {0}")]
    Invalid(&'static str),
    /// A legacy JSON snapshot that does not parse.
    #[error("legacy partition snapshot: {0}")]
    Legacy(String),
}

/// Appends a partition's applied state to `out`.
///
/// Layout (little-endian): `version u8 = 1 | next_offset u64 | producers u32 |` then per
/// producer, by id: `id u64 | epoch u16 | last_timestamp i64 | batches u8 |` then per batch,
/// oldest first: `first_sequence u32 | last_sequence u32 | base_offset u64`.
pub fn encode(next_offset: u64, producers: &ProducerTable, out: &mut Vec<u8>) {
    out.reserve(13 + producers.len() * (19 + 16 * RECENT_BATCHES));
    out.push(VERSION);
    out.extend_from_slice(&next_offset.to_le_bytes());
    out.extend_from_slice(&(producers.len() as u32).to_le_bytes());
    for (id, entry) in producers.iter() {
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&entry.epoch.to_le_bytes());
        out.extend_from_slice(&entry.last_timestamp.to_le_bytes());
        // At most RECENT_BATCHES, asserted where they are recorded.
        out.push(entry.recent.len().min(usize::from(u8::MAX)) as u8);
        for batch in &entry.recent {
            out.extend_from_slice(&batch.first_sequence.to_le_bytes());
            out.extend_from_slice(&batch.last_sequence.to_le_bytes());
            out.extend_from_slice(&batch.base_offset.to_le_bytes());
        }
    }
}

/// Decodes what [`encode`] wrote, or a legacy JSON snapshot.
pub fn decode(bytes: &[u8]) -> Result<(u64, ProducerTable), SnapshotError> {
    match bytes.first() {
        Some(&VERSION) => decode_v1(bytes),
        Some(&LEGACY_JSON) => decode_legacy(bytes),
        Some(&other) => Err(SnapshotError::UnsupportedVersion(other)),
        None => Err(SnapshotError::Truncated(0)),
    }
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let end = self
            .at
            .checked_add(N)
            .ok_or(SnapshotError::Truncated(self.at))?;
        let slice = self
            .bytes
            .get(self.at..end)
            .ok_or(SnapshotError::Truncated(self.at))?;
        self.at = end;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(self.take()?))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(self.take()?))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(self.take()?))
    }

    fn i64(&mut self) -> Result<i64, SnapshotError> {
        Ok(i64::from_le_bytes(self.take()?))
    }
}

fn decode_v1(bytes: &[u8]) -> Result<(u64, ProducerTable), SnapshotError> {
    let mut r = Reader { bytes, at: 1 };
    let next_offset = r.u64()?;
    let count = r.u32()?;
    let mut table = ProducerTable::default();
    let mut previous: Option<u64> = None;
    for _ in 0..count {
        let id = r.u64()?;
        if previous.is_some_and(|p| p >= id) {
            return Err(SnapshotError::Invalid("producer ids not increasing"));
        }
        previous = Some(id);
        let epoch = r.u16()?;
        let last_timestamp = r.i64()?;
        let batches = usize::from(r.u8()?);
        if batches > RECENT_BATCHES {
            return Err(SnapshotError::Invalid("more batches than a producer keeps"));
        }
        let mut recent = VecDeque::with_capacity(batches);
        for _ in 0..batches {
            recent.push_back(SequencedBatch {
                first_sequence: r.u32()?,
                last_sequence: r.u32()?,
                base_offset: r.u64()?,
            });
        }
        table.insert(
            id,
            ProducerEntry {
                epoch,
                last_timestamp,
                recent,
            },
        );
    }
    if r.at != bytes.len() {
        return Err(SnapshotError::Invalid("bytes after the last producer"));
    }
    Ok((next_offset, table))
}

fn decode_legacy(bytes: &[u8]) -> Result<(u64, ProducerTable), SnapshotError> {
    #[derive(serde::Deserialize)]
    struct Legacy {
        next_offset: u64,
        producers: ProducerTable,
    }
    let legacy: Legacy =
        serde_json::from_slice(bytes).map_err(|e| SnapshotError::Legacy(e.to_string()))?;
    // Earlier builds kept no timestamp: count each producer as active now, so the first
    // expiry pass after an upgrade does not forget them all, and keep the window's size.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let mut producers = ProducerTable::default();
    for (id, entry) in legacy.producers.iter() {
        let mut entry = entry.clone();
        entry.last_timestamp = entry.last_timestamp.max(now);
        while entry.recent.len() > RECENT_BATCHES {
            entry.recent.pop_front();
        }
        producers.insert(id, entry);
    }
    Ok((legacy.next_offset, producers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(next_offset: u64, table: &ProducerTable) -> Vec<u8> {
        let mut out = Vec::new();
        encode(next_offset, table, &mut out);
        out
    }

    fn table(producers: u64, batches: usize) -> ProducerTable {
        let mut table = ProducerTable::default();
        for id in 0..producers {
            let recent = (0..batches as u32)
                .map(|b| SequencedBatch {
                    first_sequence: b * 10,
                    last_sequence: b * 10 + 9,
                    base_offset: id * 100 + u64::from(b),
                })
                .collect();
            table.insert(
                id * 3,
                ProducerEntry {
                    epoch: (id % 7) as u16,
                    last_timestamp: 1_700_000_000_000 + id as i64,
                    recent,
                },
            );
        }
        table
    }

    #[test]
    fn round_trips() {
        for (producers, batches) in [(0, 0), (1, 1), (50, 5), (3, 0)] {
            let t = table(producers, batches);
            assert_eq!(decode(&encoded(42, &t)), Ok((42, t)));
        }
    }

    #[test]
    fn bad_bytes_are_errors_not_panics() {
        let bytes = encoded(7, &table(20, 5));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());
        let mut version = bytes;
        version[0] = 9;
        assert_eq!(decode(&version), Err(SnapshotError::UnsupportedVersion(9)));
    }

    #[test]
    fn an_earlier_build_s_json_snapshot_still_restores() {
        let t = table(3, 2);
        #[derive(serde::Serialize)]
        struct Legacy<'a> {
            next_offset: u64,
            producers: &'a ProducerTable,
        }
        let json = serde_json::to_vec(&Legacy {
            next_offset: 9,
            producers: &t,
        })
        .expect("json");
        let (next, restored) = decode(&json).expect("legacy");
        assert_eq!(next, 9);
        assert_eq!(restored.len(), t.len());
        for ((id, got), (want_id, want)) in restored.iter().zip(t.iter()) {
            assert_eq!(
                (id, got.epoch, &got.recent),
                (want_id, want.epoch, &want.recent)
            );
            assert!(
                got.last_timestamp > 1_700_000_000_000,
                "counted as active now"
            );
        }
    }
}
