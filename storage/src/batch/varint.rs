//! Kafka's zigzag varints (protobuf `sint32`/`sint64` encoding), as used in v2 records.

use crate::cursor::Cursor;
use crate::error::DecodeError;

/// Longest encoding of a 64-bit varint.
const VARLONG_BYTES_MAX: u32 = 10;
/// Longest encoding of a 32-bit varint.
const VARINT_BYTES_MAX: u32 = 5;

/// Appends `value` as a zigzag varint.
pub(crate) fn put_varint(out: &mut Vec<u8>, value: i32) {
    put_unsigned(out, u64::from(((value << 1) ^ (value >> 31)) as u32));
}

/// Appends `value` as a zigzag varlong.
pub(crate) fn put_varlong(out: &mut Vec<u8>, value: i64) {
    put_unsigned(out, ((value << 1) ^ (value >> 63)) as u64);
}

fn put_unsigned(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a zigzag varint of at most 5 bytes.
pub(crate) fn get_varint(c: &mut Cursor<'_>) -> Result<i32, DecodeError> {
    let raw = get_unsigned(c, VARINT_BYTES_MAX)?;
    let raw = u32::try_from(raw).map_err(|_| DecodeError::MalformedRecord {
        index: 0,
        reason: "varint overflows 32 bits",
    })?;
    Ok(((raw >> 1) as i32) ^ -((raw & 1) as i32))
}

/// Reads a zigzag varlong of at most 10 bytes.
pub(crate) fn get_varlong(c: &mut Cursor<'_>) -> Result<i64, DecodeError> {
    let raw = get_unsigned(c, VARLONG_BYTES_MAX)?;
    Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64))
}

fn get_unsigned(c: &mut Cursor<'_>, max_bytes: u32) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for i in 0..max_bytes {
        let byte = c.u8()?;
        value |= u64::from(byte & 0x7f).checked_shl(7 * i).unwrap_or(0);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::MalformedRecord {
        index: 0,
        reason: "varint too long",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn varint_round_trips(v in any::<i32>()) {
            let mut buf = Vec::new();
            put_varint(&mut buf, v);
            let mut c = Cursor::new(&buf);
            prop_assert_eq!(get_varint(&mut c)?, v);
            prop_assert_eq!(c.remaining(), 0);
        }

        #[test]
        fn varlong_round_trips(v in any::<i64>()) {
            let mut buf = Vec::new();
            put_varlong(&mut buf, v);
            let mut c = Cursor::new(&buf);
            prop_assert_eq!(get_varlong(&mut c)?, v);
        }
    }

    #[test]
    fn zigzag_matches_kafka() {
        let mut buf = Vec::new();
        put_varint(&mut buf, -1);
        put_varint(&mut buf, 1);
        put_varint(&mut buf, 300);
        assert_eq!(buf, [0x01, 0x02, 0xd8, 0x04]);
    }

    #[test]
    fn overlong_varint_is_an_error() {
        let mut c = Cursor::new(&[0xff; 11]);
        assert!(get_varlong(&mut c).is_err());
    }
}
