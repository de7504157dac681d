//! The JSON clients see for an image, and the checks on what they may write into one.
//!
//! `image_view` turns a stored record into Glance's flat image document (custom properties
//! beside the core ones, nulls for unset fields). `apply_property` is the single place that
//! validates a client-supplied property value, shared by create and PATCH, so both refuse the
//! same things with the same errors.

use serde_json::Value;
use time::OffsetDateTime;
use time::macros::format_description;

use super::Error;
use super::schemas::{CONTAINER_FORMATS, DISK_FORMATS};
use crate::kv::{ImageId, ImageRecord, ImageStatus, Visibility};
use crate::policy::Caller;

/// Longest name, owner, tag, property key or value.
const MAX_LENGTH: usize = 255;

/// Properties the server computes; writing them is 403.
const READ_ONLY: &[&str] = &[
    "status",
    "checksum",
    "size",
    "virtual_size",
    "created_at",
    "updated_at",
    "os_hash_algo",
    "os_hash_value",
    "direct_url",
    "self",
    "file",
    "schema",
    "stores",
];

/// Properties Glance reserves for itself; writing them is 403.
const RESERVED: &[&str] = &["location", "deleted", "deleted_at"];

/// Core properties: stored as fields, never as custom properties, and never removable.
const CORE: &[&str] = &[
    "id",
    "name",
    "visibility",
    "protected",
    "os_hidden",
    "owner",
    "min_ram",
    "min_disk",
    "disk_format",
    "container_format",
    "tags",
    "locations",
];

/// Current time in unix microseconds.
pub fn now_micros() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// Glance's timestamp format: seconds precision, UTC, `Z`.
pub fn format_time(micros: i64) -> String {
    let format = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|time| time.format(&format).ok())
        .unwrap_or_default()
}

/// Timestamps with microseconds and no zone (UTC), as Glance shows an image's tasks and as the
/// v1 API shows images.
pub fn micro_time(micros: i64) -> String {
    let format =
        format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]");
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|time| time.format(&format).ok())
        .unwrap_or_default()
}

/// Lower-case hex of a digest, as Glance reports checksums.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// MD5 of the image data as Glance's `checksum`, if there is data.
pub fn checksum(record: &ImageRecord) -> Option<String> {
    record
        .data
        .as_ref()
        .filter(|_| {
            !matches!(
                record.status,
                ImageStatus::Uploading | ImageStatus::Importing
            )
        })
        .map(|data| hex(&data.md5))
}

/// An image as Glance shows it: custom properties flattened next to the core fields, nulls for
/// unset ones. Serialized straight from the record (a listing of 1000 images builds no
/// intermediate JSON values).
pub struct ImageJson<'a>(pub &'a ImageRecord);

impl serde::Serialize for ImageJson<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;

        let record = self.0;
        // Staged data (an image `uploading` or `importing`) shows its size only, as in Glance:
        // its hashes and virtual size appear once it is imported.
        // An image whose bytes are not here yet (an edge cache's) shows what its upstream
        // states of them.
        let upstream = |key: &str| {
            record
                .data
                .is_none()
                .then(|| record.properties.get(key))
                .flatten()
        };
        let size = record.data.as_ref().map(|data| data.size).or_else(|| {
            upstream(crate::mirror::glance::PROP_UPSTREAM_SIZE).and_then(|size| size.parse().ok())
        });
        let upstream_hash = upstream(crate::mirror::glance::PROP_UPSTREAM_HASH)
            .and_then(|text| text.split_once(':'));
        let data = record.data.as_ref().filter(|_| {
            !matches!(
                record.status,
                ImageStatus::Uploading | ImageStatus::Importing
            )
        });
        let id = record.id.to_string();
        let mut map = serializer.serialize_map(None)?;
        // Custom properties never share a name with the core fields below: `apply_property`
        // routes core names to their fields.
        for (key, value) in &record.properties {
            map.serialize_entry(key, value)?;
        }
        map.serialize_entry("name", &record.name)?;
        map.serialize_entry("disk_format", &record.disk_format)?;
        map.serialize_entry("container_format", &record.container_format)?;
        map.serialize_entry("visibility", record.visibility.as_str())?;
        map.serialize_entry("size", &size)?;
        map.serialize_entry("virtual_size", &data.and_then(|data| data.virtual_size))?;
        map.serialize_entry("status", record.status.as_str())?;
        map.serialize_entry(
            "checksum",
            &checksum(record)
                .or_else(|| upstream(crate::mirror::glance::PROP_UPSTREAM_CHECKSUM).cloned()),
        )?;
        map.serialize_entry("protected", &record.protected)?;
        map.serialize_entry("min_ram", &record.min_ram)?;
        map.serialize_entry("min_disk", &record.min_disk)?;
        map.serialize_entry("owner", &record.owner)?;
        map.serialize_entry("os_hidden", &record.os_hidden)?;
        map.serialize_entry(
            "os_hash_algo",
            &data
                .map(|_| "sha512")
                .or(upstream_hash.map(|(algorithm, _)| algorithm)),
        )?;
        map.serialize_entry(
            "os_hash_value",
            &data
                .map(|data| hex(&data.sha512))
                .or(upstream_hash.map(|(_, hex)| hex.to_owned())),
        )?;
        map.serialize_entry("id", &id)?;
        map.serialize_entry("created_at", &format_time(record.created_at))?;
        map.serialize_entry("updated_at", &format_time(record.updated_at))?;
        map.serialize_entry("tags", &record.tags)?;
        map.serialize_entry("self", &format!("/v2/images/{id}"))?;
        map.serialize_entry("file", &format!("/v2/images/{id}/file"))?;
        map.serialize_entry("schema", "/v2/schemas/image")?;
        if let Some(data) = data {
            map.serialize_entry("stores", &data.stores.join(","))?;
        }
        map.end()
    }
}

/// The same as a JSON value, for single images.
pub fn image_view(record: &ImageRecord) -> Value {
    serde_json::to_value(ImageJson(record)).expect("image records always serialize")
}

/// 403 for properties no client may write.
pub fn check_writable(key: &str) -> Result<(), Error> {
    if READ_ONLY.contains(&key) || crate::mirror::sync::is_mirror_property(key) {
        return Err(Error::forbidden(format!("Attribute '{key}' is read-only.")));
    }
    if RESERVED.contains(&key) || key.starts_with("os_glance") {
        return Err(Error::forbidden(format!("Attribute '{key}' is reserved.")));
    }
    Ok(())
}

pub fn is_core(key: &str) -> bool {
    CORE.contains(&key)
}

fn schema_error(detail: impl std::fmt::Display) -> Error {
    Error::bad_request(format!(
        "Provided object does not match schema 'image': {detail}"
    ))
}

fn optional_text(key: &str, value: &Value) -> Result<Option<String>, Error> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if text.chars().count() <= MAX_LENGTH => Ok(Some(text.clone())),
        Value::String(_) => Err(schema_error(format_args!(
            "{key} is longer than {MAX_LENGTH} characters"
        ))),
        _ => Err(schema_error(format_args!("{key} must be a string or null"))),
    }
}

fn boolean(key: &str, value: &Value) -> Result<bool, Error> {
    value
        .as_bool()
        .ok_or_else(|| schema_error(format_args!("{key} must be a boolean")))
}

fn non_negative(key: &str, value: &Value) -> Result<i64, Error> {
    match value.as_i64() {
        Some(number) if number >= 0 => Ok(number),
        Some(_) => Err(schema_error(format_args!("{key} cannot be negative"))),
        None => Err(schema_error(format_args!("{key} must be an integer"))),
    }
}

fn one_of(key: &str, value: &Value, allowed: &[&str]) -> Result<Option<String>, Error> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if allowed.contains(&text.as_str()) => Ok(Some(text.clone())),
        _ => Err(schema_error(format_args!(
            "{value} is not a valid {key}; use one of: {}",
            allowed.join(", ")
        ))),
    }
}

fn uuid_text(key: &str, value: &Value) -> Result<Option<String>, Error> {
    match value {
        Value::Null => Ok(None),
        Value::String(text) if ImageId::parse(text).is_some() => Ok(Some(text.clone())),
        _ => Err(schema_error(format_args!(
            "{key} must be an image id (UUID) or null"
        ))),
    }
}

/// The tag list from a JSON array: strings of at most 255 characters, duplicates dropped.
pub fn tags_from(value: &Value) -> Result<Vec<String>, Error> {
    let Some(items) = value.as_array() else {
        return Err(schema_error("tags must be an array of strings"));
    };
    let mut tags: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let tag = check_tag(
            item.as_str()
                .ok_or_else(|| schema_error("tags must be an array of strings"))?,
        )?;
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// A single tag, as given in a URL or a tag list.
pub fn check_tag(tag: &str) -> Result<String, Error> {
    if tag.chars().count() > MAX_LENGTH {
        return Err(schema_error(format_args!(
            "tags may be at most {MAX_LENGTH} characters"
        )));
    }
    Ok(tag.to_owned())
}

/// Sets one property from client JSON, after `check_writable`. Core properties go to their
/// fields; anything else becomes a custom string property (null removes it).
pub fn apply_property(
    record: &mut ImageRecord,
    key: &str,
    value: &Value,
    caller: &Caller,
) -> Result<(), Error> {
    match key {
        "id" => {
            let text = value.as_str().unwrap_or_default();
            record.id = ImageId::parse(text).ok_or_else(|| schema_error("id must be a UUID"))?;
        }
        "name" => record.name = optional_text(key, value)?,
        "visibility" => {
            let visibility = value.as_str().and_then(Visibility::parse).ok_or_else(|| {
                schema_error("visibility must be one of: community, public, private, shared")
            })?;
            if visibility == Visibility::Public
                && record.visibility != Visibility::Public
                && !caller.can_publicize()
            {
                return Err(Error::not_authorized("publicize_image"));
            }
            record.visibility = visibility;
        }
        "protected" => record.protected = boolean(key, value)?,
        "os_hidden" => record.os_hidden = boolean(key, value)?,
        "owner" => {
            let owner = optional_text(key, value)?;
            if owner != record.owner && !caller.is_admin() {
                return Err(Error::forbidden(
                    "Only administrators may change an image's owner",
                ));
            }
            record.owner = owner;
        }
        "min_ram" => record.min_ram = non_negative(key, value)?,
        "min_disk" => record.min_disk = non_negative(key, value)?,
        "disk_format" | "container_format" => {
            let allowed = if key == "disk_format" {
                DISK_FORMATS
            } else {
                CONTAINER_FORMATS
            };
            let format = one_of(key, value, allowed)?;
            let current = if key == "disk_format" {
                &mut record.disk_format
            } else {
                &mut record.container_format
            };
            if *current != format {
                if !matches!(record.status, ImageStatus::Queued | ImageStatus::Importing) {
                    return Err(Error::forbidden(format!(
                        "{key} can only be changed while the image is queued"
                    )));
                }
                *current = format;
            }
        }
        "tags" => record.tags = tags_from(value)?,
        "locations" => {
            return Err(Error::forbidden(
                "Image locations are not exposed by this server",
            ));
        }
        _ => {
            if key.is_empty() || key.chars().count() > MAX_LENGTH {
                return Err(schema_error(format_args!(
                    "property names must be 1 to {MAX_LENGTH} characters"
                )));
            }
            let text = match key {
                "kernel_id" | "ramdisk_id" => uuid_text(key, value)?,
                "cinder_encryption_key_deletion_policy" => {
                    one_of(key, value, &["on_image_deletion", "do_not_delete"])?
                }
                _ => match value {
                    Value::String(text) => Some(text.clone()),
                    _ => {
                        return Err(schema_error(format_args!(
                            "{value} is not a string (property {key})"
                        )));
                    }
                },
            };
            match text {
                Some(text) => {
                    record.properties.insert(key.to_owned(), text);
                }
                None => {
                    record.properties.remove(key);
                }
            }
        }
    }
    Ok(())
}

/// 413 when an image carries more custom properties or tags than the quotas allow. The
/// `os_glance_*` properties the server sets during imports do not count.
pub fn check_quotas(
    record: &ImageRecord,
    limits: &crate::config::PerImageQuotas,
) -> Result<(), Error> {
    let properties = record
        .properties
        .keys()
        .filter(|key| !key.starts_with("os_glance"))
        .count();
    if let Some(limit) = limits.properties
        && properties > limit
    {
        return Err(Error::too_large(format!(
            "Too many image properties: {properties} given, at most {limit} allowed"
        )));
    }
    if let Some(limit) = limits.tags
        && record.tags.len() > limit
    {
        return Err(Error::too_large(format!(
            "Too many image tags: {} given, at most {limit} allowed",
            record.tags.len()
        )));
    }
    Ok(())
}
