//! What the broker checks of a produced batch before it stores it: beyond the CRCs, every
//! record's framing and the header's claims about them. A CRC proves only that the bytes
//! arrived as the producer wrote them, not that the producer wrote a readable batch.

use super::compression::decompress;
use super::record::walk_record;
use super::view::Batch;
use crate::error::DecodeError;
use crate::limits::DECOMPRESSED_BYTES_MAX;

fn invalid(index: u32, reason: &'static str) -> DecodeError {
    DecodeError::MalformedRecord { index, reason }
}

impl Batch {
    /// Checks a batch as a producer must write it, after bounded decompression:
    /// - every record's length and varint framing, key, value and header lengths (-1 is
    ///   the only negative, meaning null; header keys are never null), nothing past a
    ///   record's own length;
    /// - offset deltas 0, 1, 2, … ending at `last_offset_delta`, exactly `record_count`
    ///   records, and no bytes after the last one;
    /// - every timestamp is `first_timestamp` plus its delta without overflow, at most
    ///   `max_timestamp`, and the largest of them is `max_timestamp`.
    ///
    /// Compaction leaves gaps in offset deltas, so this is for produced batches only; what
    /// is read back from the log is checked by [`Batch::records`].
    pub fn validate_produced(&self) -> Result<(), DecodeError> {
        let header = self.header();
        if header.attributes.is_control() {
            return Err(DecodeError::InvalidHeader(
                "a produced batch is a control batch",
            ));
        }
        if header.record_count == 0 {
            return Err(DecodeError::InvalidHeader(
                "a produced batch has no records",
            ));
        }
        if u64::from(header.record_count) != u64::from(header.last_offset_delta) + 1 {
            return Err(DecodeError::InvalidHeader(
                "record count does not match the last offset delta",
            ));
        }
        let codec = header.attributes.compression();
        let section = decompress(codec, &self.stored_records(), DECOMPRESSED_BYTES_MAX)?;
        let mut position = 0;
        let mut max_timestamp = i64::MIN;
        for index in 0..header.record_count {
            if position == section.len() {
                return Err(invalid(index, "fewer records than the record count"));
            }
            let record = walk_record(&section, position, index, |_, _| {})?;
            if record.offset_delta != index {
                return Err(invalid(index, "offset delta is not the record's position"));
            }
            let timestamp = header
                .first_timestamp
                .checked_add(record.timestamp_delta)
                .ok_or(invalid(index, "timestamp overflows"))?;
            if timestamp > header.max_timestamp {
                return Err(invalid(index, "timestamp above the batch's max timestamp"));
            }
            max_timestamp = max_timestamp.max(timestamp);
            position = record.end;
        }
        if position != section.len() {
            return Err(DecodeError::InvalidHeader("bytes after the last record"));
        }
        if max_timestamp != header.max_timestamp {
            return Err(DecodeError::InvalidHeader(
                "max timestamp is not the largest record timestamp",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::batch::{BatchBuilder, Compression, NewRecord};

    use super::*;

    fn batch(compression: Compression, timestamps: &[i64]) -> Batch {
        let mut b = BatchBuilder::new(compression);
        for (i, ts) in timestamps.iter().enumerate() {
            let key = format!("k{i}");
            b.push(NewRecord {
                key: Some(key.as_bytes()),
                value: Some(b"value"),
                timestamp: *ts,
                headers: &[(b"h", Some(b"v")), (b"n", None)],
            });
        }
        Batch::decode(b.build().expect("build")).expect("decode")
    }

    #[test]
    fn what_the_builder_makes_is_valid() {
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            assert_eq!(batch(codec, &[5]).validate_produced(), Ok(()));
            // Timestamps may go backwards (a producer's clock stepped back).
            assert_eq!(batch(codec, &[10, 7, 12, 3]).validate_produced(), Ok(()));
        }
    }

    #[test]
    fn a_control_batch_is_refused() {
        let b = BatchBuilder::new(Compression::None).control();
        let control = Batch::decode(b.build().expect("build")).expect("decode");
        assert!(control.validate_produced().is_err());
    }
}
