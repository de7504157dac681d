//! The sort index behind paged listing.
//!
//! Every image has one entry per sort key in `IMAGE_SORT_INDEX`. An entry's key is
//! `[sort key tag] [order-preserving encoding of the value] [created_at: 8 bytes] [id: 16 bytes]`,
//! so a forward scan of one tag's range yields images ordered by that key, then by creation time,
//! then by id, which is Glance's order with its `created_at` and `id` tie-breakers. The value
//! encodings are self-delimiting, so every key of one value shares the prefix before the last 24
//! bytes (the "group" used for multi-key sorts).

use super::records::ImageRecord;
use super::tables::ImageId;

/// The keys Glance lets clients sort by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    Name,
    Status,
    ContainerFormat,
    DiskFormat,
    Size,
    Id,
    CreatedAt,
    UpdatedAt,
}

impl SortKey {
    /// In the order Glance lists them in its error message.
    pub const ALL: [SortKey; 8] = [
        SortKey::Name,
        SortKey::Status,
        SortKey::ContainerFormat,
        SortKey::DiskFormat,
        SortKey::Size,
        SortKey::Id,
        SortKey::CreatedAt,
        SortKey::UpdatedAt,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SortKey::Name => "name",
            SortKey::Status => "status",
            SortKey::ContainerFormat => "container_format",
            SortKey::DiskFormat => "disk_format",
            SortKey::Size => "size",
            SortKey::Id => "id",
            SortKey::CreatedAt => "created_at",
            SortKey::UpdatedAt => "updated_at",
        }
    }

    pub fn parse(text: &str) -> Option<SortKey> {
        SortKey::ALL.into_iter().find(|key| key.as_str() == text)
    }

    /// The first byte of this key's index entries. Stored on disk: never renumber.
    fn tag(self) -> u8 {
        match self {
            SortKey::Name => 1,
            SortKey::Status => 2,
            SortKey::ContainerFormat => 3,
            SortKey::DiskFormat => 4,
            SortKey::Size => 5,
            SortKey::Id => 6,
            SortKey::CreatedAt => 7,
            SortKey::UpdatedAt => 8,
        }
    }

    /// The order-preserving encoding of this key's value in a record.
    pub fn encode_value(self, record: &ImageRecord, out: &mut Vec<u8>) {
        match self {
            SortKey::Name => encode_optional_text(record.name.as_deref(), out),
            SortKey::Status => encode_optional_text(Some(record.status.as_str()), out),
            SortKey::ContainerFormat => {
                encode_optional_text(record.container_format.as_deref(), out)
            }
            SortKey::DiskFormat => encode_optional_text(record.disk_format.as_deref(), out),
            SortKey::Size => match record.data.as_ref().map(|data| data.size) {
                // SQL sorts NULL first in ascending order; so do we.
                None => out.push(0),
                Some(size) => {
                    out.push(1);
                    out.extend_from_slice(&size.to_be_bytes());
                }
            },
            SortKey::Id => out.extend_from_slice(&record.id.0),
            SortKey::CreatedAt => out.extend_from_slice(&encode_time(record.created_at)),
            SortKey::UpdatedAt => out.extend_from_slice(&encode_time(record.updated_at)),
        }
    }

    /// The first key of this sort key's range.
    pub fn range_start(self) -> Vec<u8> {
        vec![self.tag()]
    }

    /// The first key past this sort key's range.
    pub fn range_end(self) -> Vec<u8> {
        vec![self.tag() + 1]
    }
}

/// Length of the `[created_at][id]` suffix of every index key.
pub const SUFFIX_LEN: usize = 24;

/// The index key of `record` under `sort_key`.
pub fn index_key(sort_key: SortKey, record: &ImageRecord) -> Vec<u8> {
    let mut key = vec![sort_key.tag()];
    sort_key.encode_value(record, &mut key);
    key.extend_from_slice(&encode_time(record.created_at));
    key.extend_from_slice(&record.id.0);
    key
}

/// Every index key of `record`, one per sort key.
pub fn all_index_keys(record: &ImageRecord) -> Vec<Vec<u8>> {
    SortKey::ALL
        .iter()
        .map(|&key| index_key(key, record))
        .collect()
}

/// The range of the status index holding the images in `status` (the `group_of` their keys).
pub fn status_range(status: super::records::ImageStatus) -> (Vec<u8>, Vec<u8>) {
    let mut start = vec![SortKey::Status.tag()];
    encode_optional_text(Some(status.as_str()), &mut start);
    let mut end = start.clone();
    end.extend_from_slice(&[0xff; SUFFIX_LEN + 1]);
    (start, end)
}

/// The image id at the end of an index key.
pub fn id_of(index_key: &[u8]) -> Option<ImageId> {
    let start = index_key.len().checked_sub(16)?;
    let bytes: [u8; 16] = index_key[start..].try_into().ok()?;
    Some(ImageId(bytes))
}

/// The part of an index key shared by all images with the same value (tag and value).
pub fn group_of(index_key: &[u8]) -> &[u8] {
    &index_key[..index_key.len().saturating_sub(SUFFIX_LEN)]
}

/// Signed microseconds, mapped to big-endian bytes that sort like the numbers.
pub(super) fn encode_time(micros: i64) -> [u8; 8] {
    ((micros as u64) ^ (1 << 63)).to_be_bytes()
}

/// `0` for null, else `1`, the text with NUL escaped as `00 ff`, and the terminator `00 00`,
/// which sorts below any continuation so that "a" < "ab".
pub(super) fn encode_optional_text(text: Option<&str>, out: &mut Vec<u8>) {
    let Some(text) = text else {
        out.push(0);
        return;
    };
    out.push(1);
    for &byte in text.as_bytes() {
        out.push(byte);
        if byte == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text_key(text: Option<&str>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_optional_text(text, &mut out);
        out
    }

    #[test]
    fn text_encoding_preserves_order() {
        let mut samples = vec![
            None,
            Some(""),
            Some("a"),
            Some("a\0"),
            Some("a\0b"),
            Some("ab"),
            Some("b"),
            Some("\u{ff}"),
        ];
        let encoded: Vec<Vec<u8>> = samples.iter().map(|text| text_key(*text)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        samples.dedup();
        assert_eq!(samples.len(), 8);
    }

    #[test]
    fn time_encoding_preserves_order() {
        let times = [i64::MIN, -1, 0, 1, 1_700_000_000_000_000, i64::MAX];
        let encoded: Vec<[u8; 8]> = times.iter().map(|&t| encode_time(t)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
    }
}

/// A sort direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Asc,
    Desc,
}

impl Direction {
    pub fn parse(text: &str) -> Option<Direction> {
        match text {
            "asc" => Some(Direction::Asc),
            "desc" => Some(Direction::Desc),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Asc => "asc",
            Direction::Desc => "desc",
        }
    }
}
