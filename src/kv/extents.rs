//! Extent maps: which 64 KiB blocks of a blob are all zero bytes.
//!
//! The map is recorded while an upload streams (the blob layer scans each block as it hashes
//! it) and is a property of the bytes, so it is kept per blob: written in the transaction that
//! first references the blob, removed in the one that drops its last reference. Block status
//! (NBD) and `GET /ocellus/v1/images/{id}/extents` answer from it; a blob stored before maps
//! were recorded has none, and is then described as all data, which is always true.

use serde::{Deserialize, Serialize};

/// The first (and only) encoding of a stored map.
const EXTENTS_V1: u8 = 1;

/// The zero ranges of a blob of `size` bytes, sorted, disjoint and not adjacent, each
/// starting on a block boundary; a range ends on a block boundary or at `size`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extents {
    pub size: u64,
    /// `(offset, length)` in bytes.
    pub zero: Vec<(u64, u64)>,
}

/// One stretch of a blob as block status reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stretch {
    pub length: u64,
    pub zero: bool,
}

impl Extents {
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![EXTENTS_V1];
        bytes.extend(postcard::to_stdvec(self).expect("extent maps always encode"));
        bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Extents, super::KvError> {
        match bytes.split_first() {
            Some((&EXTENTS_V1, rest)) => postcard::from_bytes(rest)
                .map_err(|error| super::KvError::Corrupt(format!("extent map: {error}"))),
            _ => Err(super::KvError::Corrupt("unknown extent map record".into())),
        }
    }

    /// Bytes in zero ranges.
    pub fn zero_bytes(&self) -> u64 {
        self.zero.iter().map(|(_, length)| length).sum()
    }

    /// Describes `[offset, offset + length)` (clamped to the blob) as alternating stretches,
    /// at most `limit` of them; the first starts at `offset`.
    pub fn describe(&self, offset: u64, length: u64, limit: usize) -> Vec<Stretch> {
        let end = offset.saturating_add(length).min(self.size);
        let mut stretches: Vec<Stretch> = Vec::new();
        let mut at = offset;
        // The first zero range that ends after `offset`.
        let mut next = self
            .zero
            .partition_point(|(start, length)| start + length <= offset);
        while at < end && stretches.len() < limit {
            let (zero, until) = match self.zero.get(next) {
                Some(&(start, length)) if start <= at => {
                    next += 1;
                    (true, (start + length).min(end))
                }
                Some(&(start, _)) => (false, start.min(end)),
                None => (false, end),
            };
            stretches.push(Stretch {
                length: until - at,
                zero,
            });
            at = until;
        }
        stretches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map() -> Extents {
        Extents {
            size: 1000,
            zero: vec![(100, 100), (500, 500)],
        }
    }

    #[test]
    fn describes_alternating_stretches_from_any_offset() {
        let stretches = |offset, length, limit| {
            map()
                .describe(offset, length, limit)
                .into_iter()
                .map(|stretch| (stretch.length, stretch.zero))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            stretches(0, 1000, 10),
            vec![(100, false), (100, true), (300, false), (500, true)]
        );
        assert_eq!(stretches(150, 100, 10), vec![(50, true), (50, false)]);
        assert_eq!(stretches(600, 10_000, 10), vec![(400, true)]);
        assert_eq!(stretches(0, 1000, 1), vec![(100, false)]);
        assert_eq!(stretches(1000, 10, 10), vec![]);
        assert_eq!(
            Extents {
                size: 10,
                zero: vec![]
            }
            .describe(0, 10, 4)
            .len(),
            1
        );
    }

    #[test]
    fn encoding_round_trips_and_is_versioned() {
        let bytes = map().encode();
        assert_eq!(bytes[0], EXTENTS_V1);
        assert_eq!(Extents::decode(&bytes).unwrap(), map());
        assert!(Extents::decode(&[9, 0]).is_err());
        assert_eq!(map().zero_bytes(), 600);
    }
}
