//! Segment file names: the base offset in 20 digits plus a suffix, so `ls` sorts them.

/// The files that belong to one segment, by suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum SegmentFile {
    /// The record batches.
    Log,
    /// The sparse offset / Raft index.
    OffsetIndex,
    /// The sparse time index.
    TimeIndex,
    /// A compacted copy being written; deleted if found on open.
    Cleaned,
    /// A complete compacted copy about to replace the log; the swap is finished on open.
    Swap,
}

impl SegmentFile {
    const ALL: [SegmentFile; 5] = [
        Self::Log,
        Self::OffsetIndex,
        Self::TimeIndex,
        Self::Cleaned,
        Self::Swap,
    ];

    fn suffix(self) -> &'static str {
        match self {
            Self::Log => ".log",
            Self::OffsetIndex => ".index",
            Self::TimeIndex => ".timeindex",
            Self::Cleaned => ".log.cleaned",
            Self::Swap => ".log.swap",
        }
    }
}

/// The file name of `kind` for the segment starting at `base_offset`.
pub(crate) fn segment_file_name(base_offset: u64, kind: SegmentFile) -> String {
    format!("{base_offset:020}{}", kind.suffix())
}

/// Parses a name made by [`segment_file_name`]; `None` for any other file.
pub(crate) fn parse_segment_file_name(name: &str) -> Option<(u64, SegmentFile)> {
    let (digits, suffix) = name.split_at_checked(20)?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let kind = SegmentFile::ALL
        .into_iter()
        .find(|k| k.suffix() == suffix)?;
    Some((digits.parse().ok()?, kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_undoes_format(base in any::<u64>(), k in 0usize..5) {
            let kind = SegmentFile::ALL.get(k).copied().unwrap_or(SegmentFile::Log);
            let name = segment_file_name(base, kind);
            prop_assert_eq!(parse_segment_file_name(&name), Some((base, kind)));
        }
    }

    #[test]
    fn names_sort_by_offset_and_strangers_are_ignored() {
        assert_eq!(
            segment_file_name(42, SegmentFile::Log),
            "00000000000000000042.log"
        );
        assert_eq!(parse_segment_file_name("recovery-checkpoint"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.log"), None);
        assert_eq!(
            parse_segment_file_name("00000000000000000042.log.tmp"),
            None
        );
        assert_eq!(parse_segment_file_name("99999999999999999999.log"), None);
    }
}
