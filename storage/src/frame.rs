//! The envelope of every small derived or state file: magic, version, kind, body, CRC.

use bytes::BufMut;

use crate::cursor::Cursor;

/// Wraps `body` as `magic | version u8 | kind u8 | body_len u32 | body | crc32 u32`.
pub(crate) fn encode_frame(magic: &[u8; 4], version: u8, kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 14);
    out.put_slice(magic);
    out.put_u8(version);
    out.put_u8(kind);
    out.put_u32_le(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(body);
    let crc = crc32fast::hash(&out);
    out.put_u32_le(crc);
    out
}

/// The body of a frame, or why the bytes are not a valid frame of this magic/version/kind.
pub(crate) fn decode_frame<'a>(
    bytes: &'a [u8],
    magic: &[u8; 4],
    version: u8,
    kind: u8,
) -> Result<&'a [u8], &'static str> {
    let crc_at = bytes.len().checked_sub(4).ok_or("file truncated")?;
    let (framed, crc) = bytes.split_at(crc_at);
    let truncated = |_| "file truncated";
    if Cursor::new(crc).u32().map_err(truncated)? != crc32fast::hash(framed) {
        return Err("CRC mismatch");
    }
    let mut c = Cursor::new(framed);
    if c.take(4).map_err(truncated)? != magic {
        return Err("wrong magic");
    }
    if c.u8().map_err(truncated)? != version {
        return Err("unsupported version");
    }
    if c.u8().map_err(truncated)? != kind {
        return Err("file of another kind");
    }
    let len = c.u32().map_err(truncated)?;
    let body = c.take(len as usize).map_err(truncated)?;
    if c.remaining() != 0 {
        return Err("bytes after the body");
    }
    Ok(body)
}
