//! The filter index: which images have a given value of a filterable field.
//!
//! `IMAGE_FILTER_INDEX` holds one entry per image and indexed value, keyed
//! `[field tag] [value] [created_at: 8 bytes] [id: 16 bytes]`: the same suffix as the sort
//! index, so the entries of one value run in creation order and a list sorted by `created_at`
//! can walk them from its marker. Fields whose sort-index groups already have that shape
//! (`name`, `status`, `disk_format`, `container_format`) are not repeated here: a lookup of
//! those reads the sort index's group.
//!
//! Indexed here: `visibility`, `owner`, each tag, `os_hidden` (only `true`: hidden images are
//! few and the default listing excludes them), `checksum` and `os_hash_value` (raw digests, for
//! images with data), and the custom properties `IndexedProperties` names.

use super::index::{SortKey, encode_optional_text, encode_time};
use super::records::{ImageRecord, ImageStatus, Visibility};

/// The custom properties with index entries: exact names, and prefixes written `prefix*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexedProperties(Vec<String>);

impl IndexedProperties {
    /// What Nova's scheduler filters and clients most often list by.
    pub const DEFAULT: [&'static str; 4] = ["os_distro", "os_version", "architecture", "hw_*"];

    pub fn new(patterns: Vec<String>) -> IndexedProperties {
        let mut patterns = patterns;
        patterns.sort();
        patterns.dedup();
        IndexedProperties(patterns)
    }

    pub fn default_set() -> IndexedProperties {
        IndexedProperties::new(Self::DEFAULT.iter().map(|name| name.to_string()).collect())
    }

    /// Whether a property of this name has index entries.
    pub fn covers(&self, name: &str) -> bool {
        self.0
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => pattern == name,
            })
    }

    /// The stored form: the patterns joined by newlines (a pattern holds no newline).
    pub fn to_text(&self) -> String {
        self.0.join("\n")
    }

    pub fn from_text(text: &str) -> IndexedProperties {
        IndexedProperties::new(
            text.split('\n')
                .filter(|pattern| !pattern.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }

    pub fn patterns(&self) -> &[String] {
        &self.0
    }
}

/// One indexed `field = value` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    Name(String),
    Status(ImageStatus),
    DiskFormat(String),
    ContainerFormat(String),
    Visibility(Visibility),
    Owner(String),
    Tag(String),
    /// `os_hidden=true`.
    Hidden,
    Checksum([u8; 16]),
    OsHashValue([u8; 64]),
    Property(String, String),
}

/// Where a lookup's entries are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexTable {
    Sort,
    Filter,
}

/// The first byte of each field's entries in the filter index. Stored on disk: never renumber.
mod tag {
    pub const VISIBILITY: u8 = 1;
    pub const OWNER: u8 = 2;
    pub const TAG: u8 = 3;
    pub const HIDDEN: u8 = 4;
    pub const CHECKSUM: u8 = 5;
    pub const OS_HASH_VALUE: u8 = 6;
    pub const PROPERTY: u8 = 7;
}

impl Lookup {
    /// The table and key prefix (tag and value) of this lookup's entries, or `None` for a
    /// property that is not indexed.
    pub fn prefix(&self, indexed: &IndexedProperties) -> Option<(IndexTable, Vec<u8>)> {
        let sort_group = |key: SortKey, value: &str| {
            let mut prefix = key.range_start();
            encode_optional_text(Some(value), &mut prefix);
            (IndexTable::Sort, prefix)
        };
        Some(match self {
            Lookup::Name(name) => sort_group(SortKey::Name, name),
            Lookup::Status(status) => sort_group(SortKey::Status, status.as_str()),
            Lookup::DiskFormat(format) => sort_group(SortKey::DiskFormat, format),
            Lookup::ContainerFormat(format) => sort_group(SortKey::ContainerFormat, format),
            Lookup::Visibility(visibility) => (
                IndexTable::Filter,
                text_prefix(tag::VISIBILITY, visibility.as_str()),
            ),
            Lookup::Owner(owner) => (IndexTable::Filter, text_prefix(tag::OWNER, owner)),
            Lookup::Tag(name) => (IndexTable::Filter, text_prefix(tag::TAG, name)),
            Lookup::Hidden => (IndexTable::Filter, vec![tag::HIDDEN]),
            Lookup::Checksum(md5) => (IndexTable::Filter, bytes_prefix(tag::CHECKSUM, md5)),
            Lookup::OsHashValue(sha512) => {
                (IndexTable::Filter, bytes_prefix(tag::OS_HASH_VALUE, sha512))
            }
            Lookup::Property(name, value) => {
                if !indexed.covers(name) {
                    return None;
                }
                (IndexTable::Filter, property_prefix(name, value))
            }
        })
    }
}

fn text_prefix(tag: u8, text: &str) -> Vec<u8> {
    let mut prefix = vec![tag];
    encode_optional_text(Some(text), &mut prefix);
    prefix
}

fn bytes_prefix(tag: u8, bytes: &[u8]) -> Vec<u8> {
    let mut prefix = vec![tag];
    prefix.extend_from_slice(bytes);
    prefix
}

fn property_prefix(name: &str, value: &str) -> Vec<u8> {
    let mut prefix = vec![tag::PROPERTY];
    encode_optional_text(Some(name), &mut prefix);
    encode_optional_text(Some(value), &mut prefix);
    prefix
}

/// Every filter index key of `record`.
pub fn filter_keys(record: &ImageRecord, indexed: &IndexedProperties) -> Vec<Vec<u8>> {
    let mut prefixes = vec![text_prefix(tag::VISIBILITY, record.visibility.as_str())];
    if let Some(owner) = &record.owner {
        prefixes.push(text_prefix(tag::OWNER, owner));
    }
    for name in &record.tags {
        prefixes.push(text_prefix(tag::TAG, name));
    }
    if record.os_hidden {
        prefixes.push(vec![tag::HIDDEN]);
    }
    if let Some(data) = &record.data {
        prefixes.push(bytes_prefix(tag::CHECKSUM, &data.md5));
        prefixes.push(bytes_prefix(tag::OS_HASH_VALUE, &data.sha512));
    }
    for (name, value) in &record.properties {
        if indexed.covers(name) {
            prefixes.push(property_prefix(name, value));
        }
    }
    let suffix = suffix_of(record);
    let mut keys: Vec<Vec<u8>> = prefixes
        .into_iter()
        .map(|mut key| {
            key.extend_from_slice(&suffix);
            key
        })
        .collect();
    // A tag given twice is one entry.
    keys.sort();
    keys.dedup();
    keys
}

/// The `[created_at][id]` suffix every index key of `record` ends with.
pub fn suffix_of(record: &ImageRecord) -> [u8; 24] {
    let mut suffix = [0u8; 24];
    suffix[..8].copy_from_slice(&encode_time(record.created_at));
    suffix[8..].copy_from_slice(&record.id.0);
    suffix
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::ImageId;

    #[test]
    fn property_patterns_match_names_and_prefixes() {
        let indexed = IndexedProperties::default_set();
        assert!(indexed.covers("os_distro"));
        assert!(indexed.covers("hw_disk_bus"));
        assert!(indexed.covers("hw_"));
        assert!(!indexed.covers("os_distro_extra"));
        assert!(!indexed.covers("owner_specified.openstack.md5"));
        let round = IndexedProperties::from_text(&indexed.to_text());
        assert_eq!(round, indexed);
        assert_eq!(
            IndexedProperties::from_text(""),
            IndexedProperties::new(vec![])
        );
    }

    #[test]
    fn keys_follow_the_record_and_share_its_suffix() {
        let mut record = ImageRecord {
            name: Some("n".into()),
            os_hidden: true,
            tags: vec!["x".into(), "x".into(), "y".into()],
            properties: [
                ("os_distro".to_owned(), "debian".to_owned()),
                ("note".to_owned(), "free text".to_owned()),
            ]
            .into_iter()
            .collect(),
            ..ImageRecord::new(ImageId([7; 16]), Some("alpha".into()), 5)
        };
        let indexed = IndexedProperties::default_set();
        let keys = filter_keys(&record, &indexed);
        // visibility, owner, two distinct tags, hidden, os_distro; not the unindexed note.
        assert_eq!(keys.len(), 6);
        for key in &keys {
            assert!(key.ends_with(&suffix_of(&record)));
        }
        let lookups = [
            Lookup::Visibility(Visibility::Shared),
            Lookup::Owner("alpha".into()),
            Lookup::Tag("x".into()),
            Lookup::Tag("y".into()),
            Lookup::Hidden,
            Lookup::Property("os_distro".into(), "debian".into()),
        ];
        for lookup in lookups {
            let (table, prefix) = lookup.prefix(&indexed).unwrap();
            assert_eq!(table, IndexTable::Filter);
            assert!(
                keys.iter().any(|key| key.starts_with(&prefix)),
                "{lookup:?}"
            );
        }
        assert!(
            Lookup::Property("note".into(), "free text".into())
                .prefix(&indexed)
                .is_none()
        );
        // A value that is a prefix of another is a different group.
        let (_, short) = Lookup::Tag("x".into()).prefix(&indexed).unwrap();
        let (_, long) = Lookup::Tag("xy".into()).prefix(&indexed).unwrap();
        assert!(!long.starts_with(&short));
        record.os_hidden = false;
        record.owner = None;
        assert_eq!(filter_keys(&record, &indexed).len(), 4);
    }
}
