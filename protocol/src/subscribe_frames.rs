//! `SubscribeResponse` messages as gRPC length-prefixed frames whose large batches are the
//! stored bytes themselves, handed on as their own chunks instead of copied.
//!
//! tonic encodes every message into one buffer: with 16 consumers at the head that copy was
//! a fifth of the broker's CPU (issue 18). The frame is gRPC's 5-byte prefix (uncompressed
//! flag, big-endian length) and a protobuf encoding of the message, with one difference from
//! prost's: the high watermark comes first, so that a response whose last batch is shared
//! does not end in a chunk of a few bytes, which h2 would write with a `writev` of its own.
//! Protobuf parsers accept fields in any order, so clients decode the same message.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint};

use crate::v1::SubscribeResponse;

/// Batches at least this long go out as their own chunk. Each chunk becomes an HTTP/2 DATA
/// frame and a `writev` of its own, which costs more than copying a short batch.
pub const SHARED_BATCH_BYTES_MIN: usize = 16 * 1024;

/// Bytes of gRPC's message prefix: a compression flag and a big-endian `u32` length.
const GRPC_PREFIX_BYTES: usize = 5;

/// `SubscribeResponse.batches`.
const BATCHES_FIELD: u32 = 1;
/// `SubscribeResponse.high_watermark`.
const HIGH_WATERMARK_FIELD: u32 = 2;

/// A message longer than the receiver accepts (or than gRPC's prefix can state).
#[derive(Debug, thiserror::Error)]
#[error("a subscribe response of {len} bytes exceeds the {max}-byte message limit")]
pub struct MessageTooLarge {
    /// The encoded message length.
    pub len: usize,
    /// The limit it broke.
    pub max: usize,
}

/// Appends `response` to `chunks` as one gRPC frame: the prefix, the high watermark and the
/// field keys in small chunks (with short batches copied in), each batch of at least
/// [`SHARED_BATCH_BYTES_MIN`] as the very `Bytes` it came in.
pub fn encode(
    response: SubscribeResponse,
    max_message_bytes: usize,
    chunks: &mut VecDeque<Bytes>,
) -> Result<(), MessageTooLarge> {
    let len = response.encoded_len();
    let max = max_message_bytes.min(u32::MAX as usize);
    if len > max {
        return Err(MessageTooLarge { len, max });
    }
    let copied: usize = response
        .batches
        .iter()
        .filter(|b| b.len() < SHARED_BATCH_BYTES_MIN)
        .map(|b| b.len())
        .sum();
    let mut head = BytesMut::with_capacity(GRPC_PREFIX_BYTES + 32 + copied);
    head.put_u8(0);
    // In range: `len` was checked against u32::MAX above.
    head.put_u32(len as u32);
    if response.high_watermark != 0 {
        encode_key(HIGH_WATERMARK_FIELD, WireType::Varint, &mut head);
        encode_varint(response.high_watermark, &mut head);
    }
    for batch in response.batches {
        encode_key(BATCHES_FIELD, WireType::LengthDelimited, &mut head);
        encode_varint(batch.len() as u64, &mut head);
        if batch.len() < SHARED_BATCH_BYTES_MIN {
            head.extend_from_slice(&batch);
        } else {
            chunks.push_back(head.split().freeze());
            chunks.push_back(batch);
        }
    }
    if !head.is_empty() {
        chunks.push_back(head.freeze());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message in one gRPC frame, checked as a client's decoder reads it.
    fn decode_frame(frame: &[u8]) -> SubscribeResponse {
        let (prefix, body) = frame.split_at(GRPC_PREFIX_BYTES);
        assert_eq!(prefix[0], 0, "uncompressed");
        let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
        assert_eq!(len, body.len(), "the prefix states the body's length");
        SubscribeResponse::decode(body).expect("a valid message")
    }

    fn batch(len: usize, fill: u8) -> Bytes {
        Bytes::from(vec![fill; len])
    }

    #[test]
    fn frames_decode_to_the_message_sent() {
        let sizes: [&[usize]; 6] = [
            &[],
            &[1],
            &[SHARED_BATCH_BYTES_MIN - 1],
            &[SHARED_BATCH_BYTES_MIN],
            &[100, 200_000, 5, SHARED_BATCH_BYTES_MIN + 1, 300],
            &[1 << 20, 1 << 20],
        ];
        for (i, lens) in sizes.iter().enumerate() {
            for high_watermark in [0, 1, u64::MAX] {
                let response = SubscribeResponse {
                    batches: lens
                        .iter()
                        .enumerate()
                        .map(|(j, &n)| batch(n, (i * 7 + j) as u8))
                        .collect(),
                    high_watermark,
                };
                let mut chunks = VecDeque::new();
                encode(response.clone(), usize::MAX, &mut chunks).expect("fits");
                let sent: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
                assert_eq!(sent.len(), GRPC_PREFIX_BYTES + response.encoded_len());
                assert_eq!(
                    decode_frame(&sent),
                    response,
                    "sizes {lens:?}, hw {high_watermark}"
                );
            }
        }
    }

    #[test]
    fn large_batches_are_shared_not_copied() {
        let big = batch(SHARED_BATCH_BYTES_MIN, 9);
        let response = SubscribeResponse {
            batches: vec![batch(10, 1), big.clone(), batch(10, 2)],
            high_watermark: 42,
        };
        let mut chunks = VecDeque::new();
        encode(response, usize::MAX, &mut chunks).expect("fits");
        // The head (prefix, watermark, the short batch), the shared batch, the short tail.
        assert_eq!(chunks.len(), 3);
        // The same memory, not an equal copy.
        assert_eq!(chunks[1].as_ptr(), big.as_ptr());
        assert_eq!(chunks[1].len(), big.len());
    }

    #[test]
    fn a_response_ending_in_a_shared_batch_ends_with_it() {
        let big = batch(SHARED_BATCH_BYTES_MIN + 5, 3);
        let response = SubscribeResponse {
            batches: vec![big.clone()],
            high_watermark: 7,
        };
        let mut chunks = VecDeque::new();
        encode(response, usize::MAX, &mut chunks).expect("fits");
        assert_eq!(chunks.len(), 2, "a head and the batch, no trailing chunk");
        assert_eq!(chunks[1].as_ptr(), big.as_ptr());
    }

    #[test]
    fn a_message_over_the_limit_is_refused_and_nothing_is_queued() {
        let response = SubscribeResponse {
            batches: vec![batch(1000, 1)],
            high_watermark: 1,
        };
        let mut chunks = VecDeque::new();
        let error = encode(response, 1000, &mut chunks).expect_err("too large");
        assert!(error.len > 1000);
        assert!(chunks.is_empty());
    }
}
