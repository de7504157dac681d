//! The records stored in redb, and their versioned byte encoding.
//!
//! A record is what we keep, not what we send: the JSON that clients see is built from these in
//! `src/http`. Each encoded record starts with a one-byte version, followed by the postcard
//! encoding of that version's struct. When a record changes shape, the old struct stays here
//! under its version number and `decode` upgrades it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::tables::{Digest, ImageId};

/// The version bytes of the `ImageRecord` encodings: 1 had no store list (its bytes were all in
/// the data directory, the store `fs`); 2, the current one, names the stores holding the bytes.
const IMAGE_RECORD_V1: u8 = 1;
const IMAGE_RECORD_V2: u8 = 2;

/// The store a version-1 record's bytes are in: the data directory, which was called `fs`.
pub const LEGACY_STORE: &str = "fs";

/// Glance's image statuses. `Deleted` and `PendingDelete` never reach the table: a deleted image
/// is removed and its id kept in the tombstone table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageStatus {
    Queued,
    Saving,
    Active,
    Killed,
    Deleted,
    Uploading,
    Importing,
    PendingDelete,
    Deactivated,
}

impl ImageStatus {
    pub const ALL: [ImageStatus; 9] = [
        ImageStatus::Queued,
        ImageStatus::Saving,
        ImageStatus::Active,
        ImageStatus::Killed,
        ImageStatus::Deleted,
        ImageStatus::Uploading,
        ImageStatus::Importing,
        ImageStatus::PendingDelete,
        ImageStatus::Deactivated,
    ];

    /// Glance's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageStatus::Queued => "queued",
            ImageStatus::Saving => "saving",
            ImageStatus::Active => "active",
            ImageStatus::Killed => "killed",
            ImageStatus::Deleted => "deleted",
            ImageStatus::Uploading => "uploading",
            ImageStatus::Importing => "importing",
            ImageStatus::PendingDelete => "pending_delete",
            ImageStatus::Deactivated => "deactivated",
        }
    }

    pub fn parse(text: &str) -> Option<ImageStatus> {
        ImageStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

/// Who may see an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Visibility {
    Public,
    Community,
    Shared,
    Private,
}

impl Visibility {
    pub const ALL: [Visibility; 4] = [
        Visibility::Community,
        Visibility::Public,
        Visibility::Private,
        Visibility::Shared,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Community => "community",
            Visibility::Shared => "shared",
            Visibility::Private => "private",
        }
    }

    pub fn parse(text: &str) -> Option<Visibility> {
        Visibility::ALL
            .into_iter()
            .find(|visibility| visibility.as_str() == text)
    }
}

/// The bytes behind an image: where they are and what Glance reports about them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageData {
    /// The blob holding the bytes.
    pub digest: Digest,
    /// Size in bytes.
    pub size: u64,
    /// Size of the disk the image describes, when the format tells it.
    pub virtual_size: Option<u64>,
    /// MD5 of the bytes, Glance's `checksum`.
    pub md5: [u8; 16],
    /// SHA-512 of the bytes, Glance's `os_hash_value` with `os_hash_algo` sha512.
    pub sha512: [u8; 64],
    /// The stores holding a copy of the bytes (by store id), in the order they got it; never
    /// empty. Glance's `stores` property.
    pub stores: Vec<String>,
    /// The extent map of freshly received bytes, on its way to the blob's row (written with
    /// the blob's first reference). Not part of the image record: `None` when read back.
    pub zeros: Option<std::sync::Arc<super::Extents>>,
}

// serde implements arrays only up to 32 elements, so the SHA-512 goes through a byte vector.
mod sha512_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 64], D::Error> {
        let bytes = Vec::<u8>::deserialize(deserializer)?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("sha512 must be 64 bytes"))
    }
}

/// The stored form of `ImageData` (see `sha512_bytes`).
#[derive(Serialize, Deserialize)]
struct ImageDataV1 {
    digest: [u8; 32],
    size: u64,
    virtual_size: Option<u64>,
    md5: [u8; 16],
    #[serde(with = "sha512_bytes")]
    sha512: [u8; 64],
}

/// Version 2 of the stored data: version 1 and the stores.
#[derive(Serialize, Deserialize)]
struct ImageDataV2 {
    digest: [u8; 32],
    size: u64,
    virtual_size: Option<u64>,
    md5: [u8; 16],
    #[serde(with = "sha512_bytes")]
    sha512: [u8; 64],
    stores: Vec<String>,
}

/// One image, as stored. Times are unix microseconds (UTC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRecord {
    pub id: ImageId,
    pub name: Option<String>,
    pub status: ImageStatus,
    pub visibility: Visibility,
    pub protected: bool,
    pub os_hidden: bool,
    pub owner: Option<String>,
    pub disk_format: Option<String>,
    pub container_format: Option<String>,
    pub min_ram: i64,
    pub min_disk: i64,
    pub data: Option<ImageData>,
    pub created_at: i64,
    pub updated_at: i64,
    pub tags: Vec<String>,
    /// Custom ("extra") properties; Glance only allows string values.
    pub properties: BTreeMap<String, String>,
}

/// Version 1 of the stored image record.
#[derive(Serialize, Deserialize)]
struct ImageRecordV1 {
    id: [u8; 16],
    name: Option<String>,
    status: ImageStatus,
    visibility: Visibility,
    protected: bool,
    os_hidden: bool,
    owner: Option<String>,
    disk_format: Option<String>,
    container_format: Option<String>,
    min_ram: i64,
    min_disk: i64,
    data: Option<ImageDataV1>,
    created_at: i64,
    updated_at: i64,
    tags: Vec<String>,
    properties: BTreeMap<String, String>,
}

/// Version 2 of the stored image record: version 1 with `ImageDataV2`.
#[derive(Serialize, Deserialize)]
struct ImageRecordV2 {
    id: [u8; 16],
    name: Option<String>,
    status: ImageStatus,
    visibility: Visibility,
    protected: bool,
    os_hidden: bool,
    owner: Option<String>,
    disk_format: Option<String>,
    container_format: Option<String>,
    min_ram: i64,
    min_disk: i64,
    data: Option<ImageDataV2>,
    created_at: i64,
    updated_at: i64,
    tags: Vec<String>,
    properties: BTreeMap<String, String>,
}

/// A stored record that cannot be read back.
#[derive(Debug)]
pub struct DecodeError(pub String);

impl ImageRecord {
    /// A new image as `POST /v2/images` makes one before the client's fields: queued, no data,
    /// name or formats, `shared`, unprotected and listed, created and updated at `now`
    /// (microseconds since the epoch). Other makers change what differs with `..`.
    pub fn new(id: ImageId, owner: Option<String>, now: i64) -> ImageRecord {
        ImageRecord {
            id,
            name: None,
            status: ImageStatus::Queued,
            visibility: Visibility::Shared,
            protected: false,
            os_hidden: false,
            owner,
            disk_format: None,
            container_format: None,
            min_ram: 0,
            min_disk: 0,
            data: None,
            created_at: now,
            updated_at: now,
            tags: Vec::new(),
            properties: BTreeMap::new(),
        }
    }

    /// The versioned encoding stored in the images table.
    pub fn encode(&self) -> Vec<u8> {
        let stored = ImageRecordV2 {
            id: self.id.0,
            name: self.name.clone(),
            status: self.status,
            visibility: self.visibility,
            protected: self.protected,
            os_hidden: self.os_hidden,
            owner: self.owner.clone(),
            disk_format: self.disk_format.clone(),
            container_format: self.container_format.clone(),
            min_ram: self.min_ram,
            min_disk: self.min_disk,
            data: self.data.as_ref().map(|data| ImageDataV2 {
                digest: data.digest.0,
                size: data.size,
                virtual_size: data.virtual_size,
                md5: data.md5,
                sha512: data.sha512,
                stores: data.stores.clone(),
            }),
            created_at: self.created_at,
            updated_at: self.updated_at,
            tags: self.tags.clone(),
            properties: self.properties.clone(),
        };
        let mut bytes = vec![IMAGE_RECORD_V2];
        // Serializing plain structs into a Vec cannot fail.
        bytes.extend(postcard::to_stdvec(&stored).unwrap_or_default());
        bytes
    }

    /// The version-1 encoding (no stores), as releases before stores wrote it; for tests of
    /// the upgrade.
    #[cfg(test)]
    pub fn encode_v1(&self) -> Vec<u8> {
        let stored = ImageRecordV1 {
            id: self.id.0,
            name: self.name.clone(),
            status: self.status,
            visibility: self.visibility,
            protected: self.protected,
            os_hidden: self.os_hidden,
            owner: self.owner.clone(),
            disk_format: self.disk_format.clone(),
            container_format: self.container_format.clone(),
            min_ram: self.min_ram,
            min_disk: self.min_disk,
            data: self.data.as_ref().map(|data| ImageDataV1 {
                digest: data.digest.0,
                size: data.size,
                virtual_size: data.virtual_size,
                md5: data.md5,
                sha512: data.sha512,
            }),
            created_at: self.created_at,
            updated_at: self.updated_at,
            tags: self.tags.clone(),
            properties: self.properties.clone(),
        };
        let mut bytes = vec![IMAGE_RECORD_V1];
        bytes.extend(postcard::to_stdvec(&stored).unwrap_or_default());
        bytes
    }

    /// Reads any known version of the encoding.
    pub fn decode(bytes: &[u8]) -> Result<ImageRecord, DecodeError> {
        let Some((&version, body)) = bytes.split_first() else {
            return Err(DecodeError("empty image record".into()));
        };
        let parse_error = |error: postcard::Error| DecodeError(error.to_string());
        let stored: ImageRecordV2 = match version {
            IMAGE_RECORD_V2 => postcard::from_bytes(body).map_err(parse_error)?,
            IMAGE_RECORD_V1 => {
                let old: ImageRecordV1 = postcard::from_bytes(body).map_err(parse_error)?;
                ImageRecordV2 {
                    id: old.id,
                    name: old.name,
                    status: old.status,
                    visibility: old.visibility,
                    protected: old.protected,
                    os_hidden: old.os_hidden,
                    owner: old.owner,
                    disk_format: old.disk_format,
                    container_format: old.container_format,
                    min_ram: old.min_ram,
                    min_disk: old.min_disk,
                    data: old.data.map(|data| ImageDataV2 {
                        digest: data.digest,
                        size: data.size,
                        virtual_size: data.virtual_size,
                        md5: data.md5,
                        sha512: data.sha512,
                        stores: vec![LEGACY_STORE.to_owned()],
                    }),
                    created_at: old.created_at,
                    updated_at: old.updated_at,
                    tags: old.tags,
                    properties: old.properties,
                }
            }
            _ => {
                return Err(DecodeError(format!(
                    "unknown image record version {version}"
                )));
            }
        };
        Ok(ImageRecord {
            id: ImageId(stored.id),
            name: stored.name,
            status: stored.status,
            visibility: stored.visibility,
            protected: stored.protected,
            os_hidden: stored.os_hidden,
            owner: stored.owner,
            disk_format: stored.disk_format,
            container_format: stored.container_format,
            min_ram: stored.min_ram,
            min_disk: stored.min_disk,
            data: stored.data.map(|data| ImageData {
                digest: Digest(data.digest),
                size: data.size,
                virtual_size: data.virtual_size,
                md5: data.md5,
                sha512: data.sha512,
                stores: data.stores,
                zeros: None,
            }),
            created_at: stored.created_at,
            updated_at: stored.updated_at,
            tags: stored.tags,
            properties: stored.properties,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ImageRecord {
        ImageRecord {
            id: ImageId([7; 16]),
            name: Some("cirros".into()),
            status: ImageStatus::Active,
            visibility: Visibility::Public,
            protected: false,
            os_hidden: true,
            owner: Some("lab".into()),
            disk_format: Some("qcow2".into()),
            container_format: Some("bare".into()),
            min_ram: 64,
            min_disk: 1,
            data: Some(ImageData {
                digest: Digest([1; 32]),
                size: 300,
                virtual_size: Some(1024),
                md5: [2; 16],
                sha512: [3; 64],
                stores: vec![LEGACY_STORE.into()],
                zeros: None,
            }),
            created_at: 1_700_000_000_000_000,
            updated_at: 1_700_000_000_000_001,
            tags: vec!["golden".into()],
            properties: BTreeMap::from([("os_distro".into(), "cirros".into())]),
        }
    }

    #[test]
    fn image_record_round_trips() {
        let record = sample();
        assert_eq!(ImageRecord::decode(&record.encode()).unwrap(), record);
    }

    /// Pins the on-disk encodings: if one changes, existing databases can no longer be read,
    /// so a change here needs a new record version instead. Version 1 is still read; version 2
    /// has the same bytes when there is no data.
    #[test]
    fn image_record_v1_golden_bytes() {
        let mut record = sample();
        record.data = None;
        record.properties.clear();
        let expected: Vec<u8> = [
            &[1u8][..], // version
            &[7; 16],   // id
            &[1, 6],
            b"cirros",     // name
            &[2, 0, 0, 1], // status, visibility, protected, os_hidden
            &[1, 3],
            b"lab", // owner
            &[1, 5],
            b"qcow2", // disk_format
            &[1, 4],
            b"bare",                                 // container_format
            &[128, 1, 2],                            // min_ram 64, min_disk 1 (zigzag varints)
            &[0],                                    // data: none
            &[128, 128, 242, 129, 131, 137, 133, 6], // created_at (zigzag varint)
            &[130, 128, 242, 129, 131, 137, 133, 6], // updated_at
            &[1, 6],
            b"golden", // tags
            &[0],      // properties
        ]
        .concat();
        assert_eq!(ImageRecord::decode(&expected).unwrap(), record);
        let current = record.encode();
        assert_eq!(current[0], 2);
        assert_eq!(current[1..], expected[1..]);
    }

    /// The same, with image data and properties: the fields that name a blob are pinned too.
    #[test]
    fn image_record_v1_golden_bytes_with_data() {
        let mut record = sample();
        record.tags.clear();
        let without_data_and_properties = {
            let mut bare = record.clone();
            bare.data = None;
            bare.properties.clear();
            bare.encode()
        };
        // Everything up to the data field is as in the test above.
        let prefix_len = without_data_and_properties.len() - 1 - 16 - 1 - 1;
        let expected: Vec<u8> = [
            &[1u8][..], // version 1
            &without_data_and_properties[1..prefix_len],
            &[1],         // data: some
            &[1; 32],     // digest
            &[172, 2],    // size 300 (varint)
            &[1, 128, 8], // virtual_size Some(1024)
            &[2; 16],     // md5
            &[64],        // sha512: a length, then the bytes (a byte string)
            &[3; 64],
            &[128, 128, 242, 129, 131, 137, 133, 6], // created_at
            &[130, 128, 242, 129, 131, 137, 133, 6], // updated_at
            &[0],                                    // tags
            &[1, 9],
            b"os_distro",
            &[6],
            b"cirros", // properties
        ]
        .concat();
        // Version 1 data is in the store `fs`.
        assert_eq!(ImageRecord::decode(&expected).unwrap(), record);
        // Version 2 appends the stores to the data.
        let sha512_end = prefix_len + 1 + 32 + 2 + 3 + 16 + 1 + 64;
        let v2: Vec<u8> = [
            &[2u8][..],
            &expected[1..sha512_end],
            &[1, 2],
            b"fs",
            &expected[sha512_end..],
        ]
        .concat();
        assert_eq!(record.encode(), v2);
        assert_eq!(ImageRecord::decode(&v2).unwrap(), record);
    }

    #[test]
    fn unknown_versions_and_garbage_are_errors() {
        assert!(ImageRecord::decode(&[]).is_err());
        assert!(ImageRecord::decode(&[9, 1, 2]).is_err());
        assert!(ImageRecord::decode(&[1, 255]).is_err());
    }
}
