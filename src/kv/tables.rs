//! Every redb table of ocellus, in one place.
//!
//! A table's name carries a version suffix: when the key or value layout of a table changes,
//! the new layout gets a new name and a migration in `kv::migrate` copies the old rows over.
//! This module only names tables and their key types; the encodings of values live in
//! `kv::records` and `kv::index`.

use std::cmp::Ordering;

use redb::{Key, TableDefinition, TypeName, Value};

/// Schema bookkeeping: `schema_version` and other small counters.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta_v1");

/// Image records by id; values are `kv::records::ImageRecord` in its versioned encoding.
pub const IMAGES: TableDefinition<ImageId, &[u8]> = TableDefinition::new("images_v1");

/// Secondary index for sorted, paged listing; keys are built by `kv::index`, values are empty.
pub const IMAGE_SORT_INDEX: TableDefinition<&[u8], ()> =
    TableDefinition::new("image_sort_index_v1");

/// The filter index (see `kv::filter`): key = field tag, value, `created_at`, image id.
pub const IMAGE_FILTER_INDEX: TableDefinition<&[u8], ()> =
    TableDefinition::new("image_filter_index_v1");

/// What the database's indexes were built with: `indexed_properties` (patterns, one per line).
pub const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings_v1");

/// Running totals of the catalog (see `kv::usage`): row name to four counters.
pub const USAGE: TableDefinition<&str, [u64; 4]> = TableDefinition::new("usage_v1");

/// Ids of deleted images with their deletion time (unix microseconds), so an id is never reused.
pub const DELETED_IMAGES: TableDefinition<ImageId, i64> = TableDefinition::new("deleted_images_v1");

/// Content-addressed blobs: digest to (size in bytes, number of images referencing it).
pub const BLOBS: TableDefinition<Digest, (u64, u64)> = TableDefinition::new("blobs_v1");

/// Copies of blobs per store: (digest, store id) to the number of images whose data names that
/// store. A row exists while the count is above zero.
pub const BLOB_COPIES: TableDefinition<(Digest, &str), u64> =
    TableDefinition::new("blob_copies_v1");

/// Intents: copies that may be unreferenced, with the Unix time (seconds) since when. A row is
/// written when a copy loses its last reference and before an upload places bytes under a
/// content address; it goes when a reference is committed. The sweep removes a copy whose row
/// is older than its store's grace period and that still has no reference.
pub const BLOB_REMOVALS: TableDefinition<(Digest, &str), i64> =
    TableDefinition::new("blob_removals_v1");

/// Image members: key = image id (16 bytes) followed by the member (a project id, UTF-8);
/// values are `kv::access::MemberRecord` in its versioned encoding.
pub const MEMBERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("image_members_v1");

/// The reverse of `MEMBERS`, for listing the images shared with a project: key = member, a NUL
/// byte, then the image id. Values are empty.
pub const MEMBERSHIPS: TableDefinition<&[u8], ()> = TableDefinition::new("member_images_v1");

/// API keys by key id (32 hex digits); values are `kv::access::KeyRecord`.
pub const API_KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("api_keys_v1");

/// Key names (unique: they are the user names of the Keystone password method) to key ids.
pub const API_KEY_NAMES: TableDefinition<&str, &str> = TableDefinition::new("api_key_names_v1");

/// Projects: name to the id assigned when the first key of that project was created.
pub const PROJECTS: TableDefinition<&str, &str> = TableDefinition::new("projects_v1");

/// Server secrets, generated once: the key that signs identity tokens.
pub const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("secrets_v1");

/// The mirror's state per catalog source (JSON: conditional-request validators, backoff, the
/// last outcome), kept across restarts.
pub const MIRROR_SOURCES: TableDefinition<&str, &[u8]> = TableDefinition::new("mirror_sources_v1");

/// What vouched for each mirrored image (JSON: the vendor's digest document and signature as
/// fetched, how to check them), kept for `ocellus mirror verify` and bundles; removed with the
/// image.
pub const MIRROR_EVIDENCE: TableDefinition<ImageId, &[u8]> =
    TableDefinition::new("mirror_evidence_v1");

/// Web UI sessions: key = BLAKE3 of the session id (the cookie's value is never stored);
/// values are `kv::sessions::UiSession` in its versioned encoding.
pub const UI_SESSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("ui_sessions_v1");

/// Extent maps of blobs (`kv::extents::Extents` in its versioned encoding): which blocks are
/// all zero. Written with a blob's first reference, removed with its last.
pub const BLOB_EXTENTS: TableDefinition<Digest, &[u8]> = TableDefinition::new("blob_extents_v1");

/// Blobs found damaged (by the scrub or `ocellus check`), with the Unix time they were found;
/// their images refuse downloads until good bytes are uploaded again.
pub const BAD_BLOBS: TableDefinition<Digest, i64> = TableDefinition::new("bad_blobs_v1");

/// The 16 bytes of an image UUID.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct ImageId(pub [u8; 16]);

impl ImageId {
    /// Parses the canonical hyphenated form; anything else is not an image id.
    pub fn parse(text: &str) -> Option<ImageId> {
        // Glance's schema pattern only admits the hyphenated 36-character form.
        if text.len() != 36 {
            return None;
        }
        uuid::Uuid::try_parse(text)
            .ok()
            .map(|uuid| ImageId(*uuid.as_bytes()))
    }

    /// A fresh random (version 4) id.
    pub fn random() -> ImageId {
        ImageId(*uuid::Uuid::new_v4().as_bytes())
    }
}

impl std::fmt::Display for ImageId {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        uuid::Uuid::from_bytes(self.0).hyphenated().fmt(formatter)
    }
}

/// The BLAKE3 digest that names a blob.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// Lower-case hex, as used in blob file names.
    pub fn to_hex(self) -> String {
        let mut hex = String::with_capacity(64);
        for byte in self.0 {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex
    }

    /// Parses 64 lower-case hex characters, as found in blob file names.
    pub fn from_hex(text: &str) -> Option<Digest> {
        if text.len() != 64
            || !text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).ok()?;
        }
        Some(Digest(bytes))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "Digest({})", self.to_hex())
    }
}

/// Implements redb's `Value` and `Key` for a newtype over a fixed byte array.
macro_rules! fixed_bytes_key {
    ($name:ident, $width:literal, $type_name:literal) => {
        impl Value for $name {
            type SelfType<'a> = $name;
            type AsBytes<'a> = [u8; $width];

            fn fixed_width() -> Option<usize> {
                Some($width)
            }

            fn from_bytes<'a>(data: &'a [u8]) -> $name
            where
                Self: 'a,
            {
                let mut bytes = [0u8; $width];
                // redb hands back exactly the bytes `as_bytes` produced, which are fixed width.
                bytes.copy_from_slice(&data[..$width]);
                $name(bytes)
            }

            fn as_bytes<'a, 'b: 'a>(value: &'a $name) -> [u8; $width]
            where
                Self: 'b,
            {
                value.0
            }

            fn type_name() -> TypeName {
                TypeName::new($type_name)
            }
        }

        impl Key for $name {
            fn compare(left: &[u8], right: &[u8]) -> Ordering {
                left.cmp(right)
            }
        }
    };
}

fixed_bytes_key!(ImageId, 16, "ocellus::ImageId");
fixed_bytes_key!(Digest, 32, "ocellus::Digest");

/// Tasks by id: a version byte, then the postcard encoding (`tasks.rs`).
pub const TASKS: TableDefinition<ImageId, &[u8]> = TableDefinition::new("tasks_v1");

/// The tasks of each image: image id then task id, both 16 bytes.
pub const IMAGE_TASKS: TableDefinition<&[u8], ()> = TableDefinition::new("image_tasks_v1");

/// Per-project quota overrides, by project id.
pub const QUOTAS: TableDefinition<&str, &[u8]> = TableDefinition::new("quotas_v1");

/// Metadata definition namespaces by name; values are `kv::metadefs::NamespaceRecord`.
pub const METADEF_NAMESPACES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("metadef_namespaces_v1");

/// Objects of namespaces: key = the namespace's 16-byte id, then the object's name.
pub const METADEF_OBJECTS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("metadef_objects_v1");

/// Properties of namespaces: key = the namespace's id, then the property's name.
pub const METADEF_PROPERTIES: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("metadef_properties_v1");

/// Tags of namespaces: key = the namespace's id, then the tag's lower-cased name.
pub const METADEF_TAGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("metadef_tags_v1");

/// Resource-type associations of namespaces: key = the namespace's id, then the type's name.
pub const METADEF_ASSOCIATIONS: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("metadef_resource_type_associations_v1");

/// Resource types by name; values are `kv::metadefs::ResourceTypeRecord`.
pub const METADEF_RESOURCE_TYPES: TableDefinition<&str, &[u8]> =
    TableDefinition::new("metadef_resource_types_v1");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_id_round_trips_and_rejects_other_forms() {
        let text = "0784579a-2ba1-487a-acd6-e261e56b7c32";
        let id = ImageId::parse(text).unwrap();
        assert_eq!(id.to_string(), text);
        assert_eq!(ImageId::parse("0784579a2ba1487aacd6e261e56b7c32"), None);
        assert_eq!(
            ImageId::parse("{0784579a-2ba1-487a-acd6-e261e56b7c32}"),
            None
        );
        assert_eq!(ImageId::parse("not-an-id"), None);
    }

    #[test]
    fn digest_hex_round_trips() {
        let digest = Digest([0xab; 32]);
        assert_eq!(Digest::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(Digest::from_hex("AB"), None);
        assert_eq!(Digest::from_hex(&"AB".repeat(32)), None);
    }
}
