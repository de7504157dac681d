//! v1 image metadata on the wire: `x-image-meta-*` request headers in; the same headers, and
//! the `{"image": {...}}` JSON, out.
//!
//! Header names are case-insensitive and `-` stands for `_` anywhere in them, as in Glance v1
//! (`x-image-meta-disk-format` is `disk_format`, `x-image-meta-property-my-key` the property
//! `my_key`). Values are checked here, with v1's words, before anything is stored; applying
//! them to a record (`ImageMeta::apply`) goes through the same rules as v2 (`wire`), so the
//! two APIs cannot disagree about what an image may hold or who may change it.

use std::collections::BTreeMap;

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

use super::super::Error;
use super::super::schemas::{CONTAINER_FORMATS, DISK_FORMATS};
use super::super::wire::{
    apply_property, check_quotas, check_writable, checksum, is_core, micro_time,
};
use crate::kv::{ImageId, ImageRecord, Visibility};
use crate::policy::Caller;

/// Longest name, owner or property value, as in v2.
const MAX_LENGTH: usize = 255;

/// Fields v1 lets a client name but only the server sets.
const READ_ONLY: &[&str] = &[
    "status",
    "created_at",
    "updated_at",
    "deleted_at",
    "deleted",
    "virtual_size",
];

/// What a request's `x-image-meta-*` and `x-glance-*` headers ask for. For the nullable
/// fields, `Some(None)` is a header given empty (clear the field).
#[derive(Clone, Debug, Default)]
pub struct ImageMeta {
    pub id: Option<ImageId>,
    pub name: Option<Option<String>>,
    pub disk_format: Option<Option<String>>,
    pub container_format: Option<Option<String>>,
    pub owner: Option<Option<String>>,
    pub is_public: Option<bool>,
    pub protected: Option<bool>,
    pub min_ram: Option<i64>,
    pub min_disk: Option<i64>,
    /// `x-image-meta-size`: the data's size, checked against what arrives.
    pub size: Option<u64>,
    /// `x-image-meta-checksum`: the data's md5, checked against what arrives.
    pub checksum: Option<String>,
    pub properties: BTreeMap<String, String>,
    /// `x-glance-registry-purge-props: true`: the given properties replace all others.
    pub purge_properties: bool,
    /// `x-glance-api-copy-from`: fetch the data from this URL.
    pub copy_from: Option<String>,
    /// `x-image-meta-store`: where the data goes (a store id, or `file` for the data
    /// directory's store); checked against the configured stores by the handler.
    pub store: Option<String>,
}

/// A header's value as text; v1 headers are UTF-8 here.
fn text(name: &str, value: &HeaderValue) -> Result<String, Error> {
    std::str::from_utf8(value.as_bytes())
        .map(|text| text.trim().to_owned())
        .map_err(|_| Error::bad_request(format!("The value of header {name} is not UTF-8")))
}

fn integer(field: &str, value: &str) -> Result<i64, Error> {
    let number: i64 = value.parse().map_err(|_| {
        Error::bad_request(format!(
            "Invalid value '{value}' for parameter '{field}': '{value}' is not a whole number"
        ))
    })?;
    if number < 0 {
        return Err(Error::bad_request(format!(
            "Invalid value '{value}' for parameter '{field}': it must be zero or more"
        )));
    }
    Ok(number)
}

/// A boolean as v1's clients spell them; anything else is refused rather than read as false.
pub fn boolean(field: &str, value: &str) -> Result<bool, Error> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Ok(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Ok(false),
        _ => Err(Error::bad_request(format!(
            "Invalid value '{value}' for parameter '{field}': use true or false"
        ))),
    }
}

fn optional(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_owned())
}

fn checked_length(field: &str, value: &str) -> Result<(), Error> {
    if value.chars().count() > MAX_LENGTH {
        return Err(Error::bad_request(format!(
            "The {field} is {} characters long; at most {MAX_LENGTH} are allowed",
            value.chars().count()
        )));
    }
    Ok(())
}

fn format_value(field: &str, value: &str, allowed: &[&str]) -> Result<Option<String>, Error> {
    let what = if field == "disk_format" {
        "disk"
    } else {
        "container"
    };
    match optional(value) {
        Some(format) if !allowed.contains(&format.as_str()) => Err(Error::bad_request(format!(
            "Invalid {what} format '{format}' for image; use one of: {}",
            allowed.join(", ")
        ))),
        format => Ok(format),
    }
}

impl ImageMeta {
    /// Reads and checks every v1 metadata header of a request.
    pub fn from_headers(headers: &HeaderMap) -> Result<ImageMeta, Error> {
        let mut meta = ImageMeta::default();
        for (name, value) in headers {
            let original = name.as_str();
            let normalized = original.replace('-', "_");
            if let Some(key) = normalized.strip_prefix("x_image_meta_property_") {
                let value = text(original, value)?;
                check_property(key, &value)?;
                meta.properties.insert(key.to_owned(), value);
                continue;
            }
            if normalized == "x_glance_registry_purge_props" {
                meta.purge_properties =
                    boolean("x-glance-registry-purge-props", &text(original, value)?)?;
                continue;
            }
            if normalized == "x_glance_api_copy_from" {
                meta.copy_from = optional(&text(original, value)?);
                continue;
            }
            let Some(field) = normalized.strip_prefix("x_image_meta_") else {
                continue;
            };
            let value = text(original, value)?;
            match field {
                "id" => {
                    meta.id = Some(ImageId::parse(&value).ok_or_else(|| {
                        Error::bad_request(format!("Invalid image id '{value}': it must be a UUID"))
                    })?)
                }
                "name" => {
                    checked_length("name", &value)?;
                    meta.name = Some(optional(&value));
                }
                "disk_format" => {
                    meta.disk_format = Some(format_value(field, &value, DISK_FORMATS)?)
                }
                "container_format" => {
                    meta.container_format = Some(format_value(field, &value, CONTAINER_FORMATS)?)
                }
                "owner" => {
                    checked_length("owner", &value)?;
                    meta.owner = Some(optional(&value));
                }
                "is_public" => meta.is_public = Some(boolean(field, &value)?),
                "protected" => meta.protected = Some(boolean(field, &value)?),
                "min_ram" => meta.min_ram = Some(integer(field, &value)?),
                "min_disk" => meta.min_disk = Some(integer(field, &value)?),
                "size" => meta.size = Some(integer(field, &value)? as u64),
                "checksum" => {
                    let sum = value.to_ascii_lowercase();
                    if sum.len() != 32 || !sum.bytes().all(|byte| byte.is_ascii_hexdigit()) {
                        return Err(Error::bad_request(format!(
                            "Invalid checksum '{value}': it must be an md5 digest in hex"
                        )));
                    }
                    meta.checksum = Some(sum);
                }
                "copy_from" => meta.copy_from = optional(&value),
                "store" => meta.store = optional(&value),
                "location" | "uri" => {
                    return Err(Error::bad_request(
                        "External image locations are not accepted: a client-supplied location \
                         lets it point the server at any data (OSSN-0065); upload the data, or \
                         give x-glance-api-copy-from to have the server fetch it",
                    ));
                }
                field if READ_ONLY.contains(&field) => {
                    return Err(Error::forbidden(format!(
                        "Forbidden to modify '{field}' of image: the server sets it"
                    )));
                }
                _ => return Err(Error::bad_request(format!("Bad header: {original}"))),
            }
        }
        Ok(meta)
    }

    /// Applies the fields to a record with v2's rules: publicizing is for those v2 lets
    /// publicize, formats change only while the image is queued, only admins change owners,
    /// reserved properties stay the server's, and the per-image quotas hold.
    pub fn apply(
        &self,
        record: &mut ImageRecord,
        caller: &Caller,
        limits: &crate::config::PerImageQuotas,
    ) -> Result<(), Error> {
        let text = |value: &Option<String>| value.clone().map_or(Value::Null, Value::String);
        if let Some(name) = &self.name {
            apply_property(record, "name", &text(name), caller)?;
        }
        if let Some(format) = &self.disk_format {
            apply_property(record, "disk_format", &text(format), caller)?;
        }
        if let Some(format) = &self.container_format {
            apply_property(record, "container_format", &text(format), caller)?;
        }
        if let Some(owner) = &self.owner {
            apply_property(record, "owner", &text(owner), caller)?;
        }
        if let Some(protected) = self.protected {
            record.protected = protected;
        }
        if let Some(min_ram) = self.min_ram {
            record.min_ram = min_ram;
        }
        if let Some(min_disk) = self.min_disk {
            record.min_disk = min_disk;
        }
        match self.is_public {
            Some(true) => apply_property(record, "visibility", &json!("public"), caller)?,
            // Not public any more; an image that was shared or community stays so.
            Some(false) if record.visibility == Visibility::Public => {
                record.visibility = Visibility::Private
            }
            _ => {}
        }
        if self.purge_properties {
            // The server's own properties stay: import state and the mirror's provenance.
            record.properties.retain(|key, _| {
                key.starts_with("os_glance") || crate::mirror::sync::is_mirror_property(key)
            });
        }
        for (key, value) in &self.properties {
            apply_property(record, key, &Value::String(value.clone()), caller)?;
        }
        check_quotas(record, limits)
    }
}

/// A property a v1 header may set: not a core field (those have their own headers), not one
/// the server keeps for itself, and within v2's lengths.
fn check_property(key: &str, value: &str) -> Result<(), Error> {
    if key.is_empty() || key.chars().count() > MAX_LENGTH {
        return Err(Error::bad_request(format!(
            "Property names must be 1 to {MAX_LENGTH} characters"
        )));
    }
    if is_core(key) {
        return Err(Error::bad_request(format!(
            "'{key}' is an image field, not a property: set it with x-image-meta-{key}"
        )));
    }
    check_writable(key)?;
    checked_length(&format!("value of property {key}"), value)
}

/// The size v1 shows: that of the data, 0 before there is any.
pub fn v1_size(record: &ImageRecord) -> u64 {
    record.data.as_ref().map_or(0, |data| data.size)
}

/// An image as v1's detail views show it.
pub fn image_detail(record: &ImageRecord) -> Value {
    let properties: Map<String, Value> = record
        .properties
        .iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect();
    json!({
        "status": record.status.as_str(),
        "deleted": false,
        "container_format": record.container_format,
        "min_ram": record.min_ram,
        "updated_at": micro_time(record.updated_at),
        "owner": record.owner,
        "min_disk": record.min_disk,
        "is_public": record.visibility == Visibility::Public,
        "deleted_at": null,
        "id": record.id.to_string(),
        "size": v1_size(record),
        "virtual_size": record.data.as_ref().and_then(|data| data.virtual_size),
        "name": record.name,
        "checksum": checksum(record),
        "created_at": micro_time(record.created_at),
        "disk_format": record.disk_format,
        "properties": properties,
        "protected": record.protected,
    })
}

/// An image as `GET /v1/images` lists it.
pub fn image_brief(record: &ImageRecord) -> Value {
    json!({
        "name": record.name,
        "container_format": record.container_format,
        "disk_format": record.disk_format,
        "checksum": checksum(record),
        "id": record.id.to_string(),
        "size": v1_size(record),
    })
}

fn python_bool(value: bool) -> &'static str {
    if value { "True" } else { "False" }
}

/// The `x-image-meta-*` headers of `HEAD` and `GET /v1/images/{id}`, with `ETag`. Null fields
/// get no header; a property whose name cannot be a header name, or whose value cannot be a
/// header value (a line break), is left out here and shown by the JSON views.
pub fn image_headers(record: &ImageRecord, headers: &mut HeaderMap) {
    let mut put = |name: &str, value: &str| {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.insert(name, value);
        }
    };
    for (key, value) in &record.properties {
        put(&format!("x-image-meta-property-{key}"), value);
    }
    put("x-image-meta-id", &record.id.to_string());
    put("x-image-meta-deleted", "False");
    if let Some(format) = &record.container_format {
        put("x-image-meta-container_format", format);
    }
    let sum = checksum(record);
    if let Some(sum) = &sum {
        put("x-image-meta-checksum", sum);
    }
    put("x-image-meta-protected", python_bool(record.protected));
    put("x-image-meta-min_disk", &record.min_disk.to_string());
    put("x-image-meta-created_at", &micro_time(record.created_at));
    put("x-image-meta-size", &v1_size(record).to_string());
    if let Some(virtual_size) = record.data.as_ref().and_then(|data| data.virtual_size) {
        put("x-image-meta-virtual_size", &virtual_size.to_string());
    }
    put("x-image-meta-status", record.status.as_str());
    put(
        "x-image-meta-is_public",
        python_bool(record.visibility == Visibility::Public),
    );
    put("x-image-meta-min_ram", &record.min_ram.to_string());
    put("x-image-meta-updated_at", &micro_time(record.updated_at));
    if let Some(format) = &record.disk_format {
        put("x-image-meta-disk_format", format);
    }
    if let Some(name) = &record.name {
        put("x-image-meta-name", name);
    }
    if let Some(owner) = &record.owner {
        put("x-image-meta-owner", owner);
    }
    if let Some(sum) = &sum {
        put("etag", sum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn dashes_and_case_are_spellings_of_the_same_header() {
        let meta = ImageMeta::from_headers(&headers(&[
            ("X-Image-Meta-Disk-Format", "qcow2"),
            ("x-image-meta-container_format", "bare"),
            ("X-IMAGE-META-IS-PUBLIC", "True"),
            ("x-image-meta-property-my-key", "v"),
            ("x-image-meta-min-ram", "128"),
            ("content-type", "application/octet-stream"),
        ]))
        .unwrap();
        assert_eq!(meta.disk_format, Some(Some("qcow2".into())));
        assert_eq!(meta.container_format, Some(Some("bare".into())));
        assert_eq!(meta.is_public, Some(true));
        assert_eq!(meta.min_ram, Some(128));
        assert_eq!(meta.properties.get("my_key").map(String::as_str), Some("v"));
    }

    #[test]
    fn bad_headers_are_refused_with_the_reason() {
        let refused = |pairs: &[(&str, &str)]| {
            ImageMeta::from_headers(&headers(pairs))
                .map(|_| ())
                .unwrap_err()
        };
        let error = refused(&[("x-image-meta-disk_format", "floppy")]);
        assert_eq!(error.status.as_u16(), 400);
        assert!(error.message.contains("Invalid disk format 'floppy'"));
        let error = refused(&[("x-image-meta-size", "abc")]);
        assert!(
            error
                .message
                .contains("Invalid value 'abc' for parameter 'size'")
        );
        assert_eq!(
            refused(&[("x-image-meta-is_public", "maybe")])
                .status
                .as_u16(),
            400
        );
        assert_eq!(
            refused(&[("x-image-meta-min_disk", "-1")]).status.as_u16(),
            400
        );
        assert_eq!(
            refused(&[("x-image-meta-status", "active")])
                .status
                .as_u16(),
            403
        );
        assert_eq!(
            refused(&[("x-image-meta-location", "file:///etc/passwd")])
                .status
                .as_u16(),
            400
        );
        assert_eq!(
            refused(&[("x-image-meta-frobnicate", "1")]).message,
            "Bad header: x-image-meta-frobnicate"
        );
        assert_eq!(
            refused(&[("x-image-meta-property-name", "x")])
                .status
                .as_u16(),
            400
        );
        assert_eq!(
            refused(&[("x-image-meta-property-os_glance_x", "x")])
                .status
                .as_u16(),
            403
        );
        assert_eq!(
            refused(&[("x-image-meta-checksum", "xyz")]).status.as_u16(),
            400
        );
    }

    #[test]
    fn times_have_microseconds_and_no_zone() {
        assert_eq!(
            micro_time(1_764_924_276_723_665),
            "2025-12-05T08:44:36.723665"
        );
    }
}
