//! One record in Kafka's v2 encoding: length, attributes, timestamp and offset deltas,
//! key, value, headers. Decoded records borrow the batch's bytes.

use std::ops::Range;

use bytes::Bytes;

use super::varint::{get_varint, get_varlong, put_varint, put_varlong};
use crate::cursor::Cursor;
use crate::error::DecodeError;

/// A decoded record. `key`, `value` and header bytes are slices of the batch, not copies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Absolute offset: the batch's base offset plus the record's offset delta.
    pub offset: u64,
    /// Absolute timestamp in milliseconds.
    pub timestamp: i64,
    /// The key; `None` for a null key.
    pub key: Option<Bytes>,
    /// The value; `None` is a tombstone on compacted topics.
    pub value: Option<Bytes>,
    /// Application headers, in order.
    pub headers: Vec<RecordHeader>,
}

/// One application header of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHeader {
    /// Header name (UTF-8 by convention; not enforced).
    pub key: Bytes,
    /// Header value; `None` for null.
    pub value: Option<Bytes>,
}

/// The fields of a record to encode, relative to its batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RecordFields<'a> {
    pub(crate) offset_delta: i32,
    pub(crate) timestamp_delta: i64,
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) value: Option<&'a [u8]>,
    pub(crate) headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// Appends one encoded record to `out`.
pub(crate) fn encode_record(out: &mut Vec<u8>, r: &RecordFields<'_>) {
    let body_len = body_len(r);
    out.reserve(body_len + 5);
    put_varint(out, len_i32(body_len));
    out.push(0); // record attributes: unused in v2
    put_varlong(out, r.timestamp_delta);
    put_varint(out, r.offset_delta);
    put_nullable(out, r.key);
    put_nullable(out, r.value);
    put_varint(out, len_i32(r.headers.len()));
    for (key, value) in r.headers {
        put_nullable(out, Some(key));
        put_nullable(out, *value);
    }
}

fn put_nullable(out: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(b) => {
            put_varint(out, len_i32(b.len()));
            out.extend_from_slice(b);
        }
    }
}

/// Lengths are bounded by the records-section limit (64 MiB), far below `i32::MAX`.
fn len_i32(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

fn zigzag_len(v: i64) -> usize {
    let mut u = ((v << 1) ^ (v >> 63)) as u64;
    let mut n = 1;
    while u >= 0x80 {
        u >>= 7;
        n += 1;
    }
    n
}

fn nullable_len(b: Option<&[u8]>) -> usize {
    b.map_or(zigzag_len(-1), |b| zigzag_len(b.len() as i64) + b.len())
}

fn body_len(r: &RecordFields<'_>) -> usize {
    let headers: usize = r
        .headers
        .iter()
        .map(|(k, v)| nullable_len(Some(k)) + nullable_len(*v))
        .sum();
    1 + zigzag_len(r.timestamp_delta)
        + zigzag_len(i64::from(r.offset_delta))
        + nullable_len(r.key)
        + nullable_len(r.value)
        + zigzag_len(r.headers.len() as i64)
        + headers
}

/// Where a record decoder is: the records section and the batch values deltas apply to.
pub(crate) struct RecordContext<'a> {
    pub(crate) records: &'a Bytes,
    pub(crate) base_offset: u64,
    pub(crate) first_timestamp: i64,
    pub(crate) last_offset_delta: u32,
}

/// A record's fields as positions in the records section: found without allocating or
/// touching reference counts, so the produce path can check every record cheaply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RecordLayout {
    /// Position just after the record.
    pub(crate) end: usize,
    /// Timestamp relative to the batch's first timestamp.
    pub(crate) timestamp_delta: i64,
    /// Offset relative to the batch's base offset.
    pub(crate) offset_delta: u32,
    /// Key bytes, `None` for null.
    pub(crate) key: Option<Range<usize>>,
    /// Value bytes, `None` for null.
    pub(crate) value: Option<Range<usize>>,
}

fn malformed(reason: &'static str) -> DecodeError {
    DecodeError::MalformedRecord { index: 0, reason }
}

/// Parses the record at `at` in `section`, handing each header's (key, value) positions to
/// `on_header`. Checks the framing: lengths, null markers, header count, no bytes left over
/// inside the record. `index` is the record's position in the batch, for errors.
pub(crate) fn walk_record(
    section: &[u8],
    at: usize,
    index: u32,
    mut on_header: impl FnMut(Range<usize>, Option<Range<usize>>),
) -> Result<RecordLayout, DecodeError> {
    walk_record_inner(section, at, &mut on_header).map_err(|e| match e {
        DecodeError::MalformedRecord { reason, .. } => {
            DecodeError::MalformedRecord { index, reason }
        }
        DecodeError::Truncated { .. } => DecodeError::MalformedRecord {
            index,
            reason: "truncated",
        },
        other => other,
    })
}

fn walk_record_inner(
    section: &[u8],
    at: usize,
    on_header: &mut impl FnMut(Range<usize>, Option<Range<usize>>),
) -> Result<RecordLayout, DecodeError> {
    let mut c = Cursor::new(section.get(at..).unwrap_or_default());
    let len = usize::try_from(get_varint(&mut c)?).map_err(|_| malformed("negative length"))?;
    let body_start = at + c.position();
    let body = c.take(len)?;
    let mut b = Cursor::new(body);
    let _attributes = b.u8()?;
    let timestamp_delta = get_varlong(&mut b)?;
    let offset_delta =
        u32::try_from(get_varint(&mut b)?).map_err(|_| malformed("negative offset delta"))?;
    let slice = |b: &mut Cursor<'_>| -> Result<Option<Range<usize>>, DecodeError> {
        let len = get_varint(b)?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| malformed("negative length"))?;
        let start = body_start + b.position();
        b.take(len)?;
        Ok(Some(start..start + len))
    };
    let key = slice(&mut b)?;
    let value = slice(&mut b)?;
    let header_count =
        usize::try_from(get_varint(&mut b)?).map_err(|_| malformed("negative header count"))?;
    if header_count > b.remaining() / 2 {
        return Err(malformed("header count exceeds record length"));
    }
    for _ in 0..header_count {
        let key = slice(&mut b)?.ok_or(malformed("null header key"))?;
        let value = slice(&mut b)?;
        on_header(key, value);
    }
    if b.remaining() != 0 {
        return Err(malformed("trailing bytes in record"));
    }
    Ok(RecordLayout {
        end: body_start + len,
        timestamp_delta,
        offset_delta,
        key,
        value,
    })
}

/// Decodes the record at `at` in the records section; `index` is its position in the batch.
pub(crate) fn decode_record(
    ctx: &RecordContext<'_>,
    at: usize,
    index: u32,
) -> Result<(Record, usize), DecodeError> {
    let mut headers = Vec::new();
    let layout = walk_record(ctx.records, at, index, |key, value| {
        headers.push((key, value));
    })?;
    if layout.offset_delta > ctx.last_offset_delta {
        return Err(DecodeError::MalformedRecord {
            index,
            reason: "offset delta beyond the batch's last offset delta",
        });
    }
    let slice = |r: Range<usize>| ctx.records.slice(r);
    let record = Record {
        offset: ctx.base_offset + u64::from(layout.offset_delta),
        timestamp: ctx.first_timestamp.wrapping_add(layout.timestamp_delta),
        key: layout.key.map(slice),
        value: layout.value.map(slice),
        headers: headers
            .into_iter()
            .map(|(key, value)| RecordHeader {
                key: slice(key),
                value: value.map(slice),
            })
            .collect(),
    };
    Ok((record, layout.end))
}
