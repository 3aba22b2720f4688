//! The records of `__consumer_offsets`: a committed offset keyed by (group, topic,
//! partition), in the versioned binary format of `docs/formats/offsets.md`. A record with
//! no value (a tombstone) deletes the commit, so compaction keeps one record per key.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The key format this build writes.
pub const KEY_VERSION: u16 = 1;
/// The value format this build writes.
pub const VALUE_VERSION: u16 = 1;
/// Longest metadata string kept with an offset.
pub const METADATA_BYTES_MAX: usize = 4096;

/// What a commit is keyed by.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OffsetKey {
    /// The group.
    pub group: String,
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OffsetValue {
    /// The next offset to read.
    pub offset: u64,
    /// The partition leader's epoch the consumer last saw (0 if unknown).
    pub leader_epoch: u32,
    /// When the coordinator took the commit, ms since the epoch.
    pub commit_time_ms: i64,
    /// Free text from the consumer.
    pub metadata: String,
}

/// A record of `__consumer_offsets` that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OffsetRecordError {
    /// Fewer bytes than the format needs.
    #[error("{what} is truncated")]
    Truncated {
        /// Which part.
        what: &'static str,
    },
    /// A version this build does not read.
    #[error("{what} version {version} is not supported")]
    UnknownVersion {
        /// Key or value.
        what: &'static str,
        /// The version found.
        version: u16,
    },
    /// A name that is not UTF-8.
    #[error("{what} is not UTF-8")]
    NotUtf8 {
        /// Which field.
        what: &'static str,
    },
    /// Bytes after the last field.
    #[error("{what} has {extra} trailing bytes")]
    Trailing {
        /// Key or value.
        what: &'static str,
        /// How many.
        extra: usize,
    },
    /// A field longer than its length prefix allows.
    #[error("{what} is longer than {max} bytes")]
    TooLong {
        /// Which field.
        what: &'static str,
        /// The limit.
        max: usize,
    },
}

fn put_string(out: &mut BytesMut, what: &'static str, s: &str) -> Result<(), OffsetRecordError> {
    let len = u16::try_from(s.len()).map_err(|_| OffsetRecordError::TooLong {
        what,
        max: u16::MAX as usize,
    })?;
    out.put_u16_le(len);
    out.put_slice(s.as_bytes());
    Ok(())
}

fn get_u16(buf: &mut &[u8], what: &'static str) -> Result<u16, OffsetRecordError> {
    if buf.remaining() < 2 {
        return Err(OffsetRecordError::Truncated { what });
    }
    Ok(buf.get_u16_le())
}

fn get_string(buf: &mut &[u8], what: &'static str) -> Result<String, OffsetRecordError> {
    let len = get_u16(buf, what)? as usize;
    if buf.remaining() < len {
        return Err(OffsetRecordError::Truncated { what });
    }
    let (head, rest) = buf.split_at(len);
    *buf = rest;
    String::from_utf8(head.to_vec()).map_err(|_| OffsetRecordError::NotUtf8 { what })
}

fn no_trailing(buf: &[u8], what: &'static str) -> Result<(), OffsetRecordError> {
    if buf.is_empty() {
        Ok(())
    } else {
        Err(OffsetRecordError::Trailing {
            what,
            extra: buf.len(),
        })
    }
}

impl OffsetKey {
    /// The key's bytes: version, group, topic, partition (little-endian, u16 length prefixes).
    pub fn encode(&self) -> Result<Bytes, OffsetRecordError> {
        let mut out = BytesMut::with_capacity(10 + self.group.len() + self.topic.len());
        out.put_u16_le(KEY_VERSION);
        put_string(&mut out, "group", &self.group)?;
        put_string(&mut out, "topic", &self.topic)?;
        out.put_u32_le(self.partition);
        Ok(out.freeze())
    }

    /// Reads a key.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, OffsetRecordError> {
        let version = get_u16(&mut bytes, "key")?;
        if version != KEY_VERSION {
            return Err(OffsetRecordError::UnknownVersion {
                what: "key",
                version,
            });
        }
        let group = get_string(&mut bytes, "group")?;
        let topic = get_string(&mut bytes, "topic")?;
        if bytes.remaining() < 4 {
            return Err(OffsetRecordError::Truncated { what: "partition" });
        }
        let partition = bytes.get_u32_le();
        no_trailing(bytes, "key")?;
        Ok(Self {
            group,
            topic,
            partition,
        })
    }
}

impl OffsetValue {
    /// The value's bytes: version, offset, leader epoch, commit time, metadata.
    pub fn encode(&self) -> Result<Bytes, OffsetRecordError> {
        if self.metadata.len() > METADATA_BYTES_MAX {
            return Err(OffsetRecordError::TooLong {
                what: "metadata",
                max: METADATA_BYTES_MAX,
            });
        }
        let mut out = BytesMut::with_capacity(24 + self.metadata.len());
        out.put_u16_le(VALUE_VERSION);
        out.put_u64_le(self.offset);
        out.put_u32_le(self.leader_epoch);
        out.put_i64_le(self.commit_time_ms);
        put_string(&mut out, "metadata", &self.metadata)?;
        Ok(out.freeze())
    }

    /// Reads a value.
    pub fn decode(mut bytes: &[u8]) -> Result<Self, OffsetRecordError> {
        let version = get_u16(&mut bytes, "value")?;
        if version != VALUE_VERSION {
            return Err(OffsetRecordError::UnknownVersion {
                what: "value",
                version,
            });
        }
        if bytes.remaining() < 20 {
            return Err(OffsetRecordError::Truncated { what: "value" });
        }
        let offset = bytes.get_u64_le();
        let leader_epoch = bytes.get_u32_le();
        let commit_time_ms = bytes.get_i64_le();
        let metadata = get_string(&mut bytes, "metadata")?;
        no_trailing(bytes, "value")?;
        Ok(Self {
            offset,
            leader_epoch,
            commit_time_ms,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> OffsetKey {
        OffsetKey {
            group: "billing".into(),
            topic: "orders".into(),
            partition: 7,
        }
    }

    fn value() -> OffsetValue {
        OffsetValue {
            offset: 1234,
            leader_epoch: 3,
            commit_time_ms: 1_790_000_000_000,
            metadata: "host-a".into(),
        }
    }

    #[test]
    fn keys_and_values_round_trip() {
        let k = key().encode().expect("encodes");
        assert_eq!(OffsetKey::decode(&k), Ok(key()));
        let v = value().encode().expect("encodes");
        assert_eq!(OffsetValue::decode(&v), Ok(value()));
    }

    #[test]
    fn the_documented_layout_is_what_is_written() {
        let k = key().encode().expect("encodes");
        // The golden bytes of docs/formats/offsets.md: a change here is a format change.
        let mut expected = vec![1, 0, 7, 0];
        expected.extend_from_slice(b"billing");
        expected.extend_from_slice(&[6, 0]);
        expected.extend_from_slice(b"orders");
        expected.extend_from_slice(&[7, 0, 0, 0]);
        assert_eq!(&k[..], &expected[..]);
        let v = value().encode().expect("encodes");
        let mut expected = vec![1, 0];
        expected.extend_from_slice(&1234u64.to_le_bytes());
        expected.extend_from_slice(&3u32.to_le_bytes());
        expected.extend_from_slice(&1_790_000_000_000i64.to_le_bytes());
        expected.extend_from_slice(&[6, 0]);
        expected.extend_from_slice(b"host-a");
        assert_eq!(&v[..], &expected[..]);
    }

    #[test]
    fn every_cut_and_every_flipped_version_is_a_typed_error() {
        let k = key().encode().expect("encodes");
        for cut in 0..k.len() {
            assert!(OffsetKey::decode(&k[..cut]).is_err(), "key cut at {cut}");
        }
        let v = value().encode().expect("encodes");
        for cut in 0..v.len() {
            assert!(
                OffsetValue::decode(&v[..cut]).is_err(),
                "value cut at {cut}"
            );
        }
        let mut bad = v.to_vec();
        bad[0] = 9;
        assert_eq!(
            OffsetValue::decode(&bad),
            Err(OffsetRecordError::UnknownVersion {
                what: "value",
                version: 9
            })
        );
        let mut long = k.to_vec();
        long.push(0);
        assert!(matches!(
            OffsetKey::decode(&long),
            Err(OffsetRecordError::Trailing { .. })
        ));
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 56) as u8
                })
                .collect();
            let _ = OffsetKey::decode(&bytes);
            let _ = OffsetValue::decode(&bytes);
        }
    }
}
