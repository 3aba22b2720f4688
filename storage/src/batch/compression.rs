//! Batch compression codecs. Codes follow Kafka's `attributes` numbering and frame formats
//! (LZ4 frame, zstd frame), so a Kafka-protocol gateway can pass compressed bytes through.

use std::io::Read;

use bytes::Bytes;

use crate::error::DecodeError;

/// Codec of a batch's records section, chosen per batch by the producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// Records stored as encoded.
    #[default]
    None,
    /// LZ4 frame format.
    Lz4,
    /// Zstandard frame format.
    Zstd,
}

/// zstd level 3 is zstd's own default: a good ratio at well over 100 MB/s per core.
const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// The 3-bit code stored in `attributes` (Kafka's: 0 none, 3 lz4, 4 zstd).
    pub fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::Lz4 => 3,
            Self::Zstd => 4,
        }
    }

    /// The codec for a stored code; gzip (1) and snappy (2) are not supported.
    pub fn from_code(code: u8) -> Result<Self, DecodeError> {
        match code {
            0 => Ok(Self::None),
            3 => Ok(Self::Lz4),
            4 => Ok(Self::Zstd),
            other => Err(DecodeError::UnknownCompression(other)),
        }
    }
}

/// Compresses an encoded records section.
pub(crate) fn compress(codec: Compression, records: &[u8]) -> Vec<u8> {
    match codec {
        Compression::None => records.to_vec(),
        Compression::Lz4 => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(records.len() / 2));
            // Writing into a Vec cannot fail.
            let _ = std::io::Write::write_all(&mut enc, records);
            enc.finish().unwrap_or_default()
        }
        Compression::Zstd => zstd::bulk::compress(records, ZSTD_LEVEL).unwrap_or_default(),
    }
}

/// Decompresses a stored records section, refusing to produce more than `max_len` bytes.
pub(crate) fn decompress(
    codec: Compression,
    stored: &Bytes,
    max_len: usize,
) -> Result<Bytes, DecodeError> {
    match codec {
        Compression::None => Ok(stored.clone()),
        Compression::Lz4 => read_bounded(
            lz4_flex::frame::FrameDecoder::new(stored.as_ref()),
            max_len,
            "invalid lz4 frame",
        ),
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::with_buffer(stored.as_ref())
                .map_err(|_| DecodeError::Decompress("zstd decoder"))?;
            read_bounded(decoder, max_len, "invalid zstd frame")
        }
    }
}

fn read_bounded(
    reader: impl Read,
    max_len: usize,
    what: &'static str,
) -> Result<Bytes, DecodeError> {
    let mut out = Vec::new();
    let limit = max_len as u64 + 1;
    reader
        .take(limit)
        .read_to_end(&mut out)
        .map_err(|_| DecodeError::Decompress(what))?;
    if out.len() > max_len {
        return Err(DecodeError::TooLarge {
            what: "decompressed records section",
            len: out.len() as u64,
            max: max_len as u64,
        });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs_round_trip() {
        let data: Vec<u8> = (0..10_000u32)
            .flat_map(|i| (i % 97).to_le_bytes())
            .collect();
        for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let stored = Bytes::from(compress(codec, &data));
            assert_eq!(
                decompress(codec, &stored, data.len()).ok().as_deref(),
                Some(&data[..])
            );
        }
    }

    #[test]
    fn bomb_is_refused_at_the_limit() {
        let zeros = vec![0u8; 1 << 20];
        for codec in [Compression::Lz4, Compression::Zstd] {
            let stored = Bytes::from(compress(codec, &zeros));
            assert!(stored.len() < 64 * 1024);
            let err = decompress(codec, &stored, 1000);
            assert!(
                matches!(err, Err(DecodeError::TooLarge { .. })),
                "{codec:?}: {err:?}"
            );
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let junk = Bytes::from_static(b"\x04\x22\x4d\x18garbage-garbage");
        assert!(decompress(Compression::Lz4, &junk, 1 << 20).is_err());
        assert!(decompress(Compression::Zstd, &junk, 1 << 20).is_err());
    }
}
