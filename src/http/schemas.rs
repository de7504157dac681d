//! JSON Schemas served under `/v2/schemas`.
//!
//! Clients such as python-glanceclient download these documents and validate
//! request bodies against them with `jsonschema` before sending anything. They
//! also read the `readOnly` flag to decide which attributes a user may set and
//! the `is_base` flag to tell core attributes from optional, well-known extra
//! properties. Because of that, the structure here mirrors Glance's schemas
//! exactly: the property names, types, enums (order included), length limits,
//! patterns, required lists, flags and link templates are the same.
//!
//! The human-readable `description` strings are written for this project and
//! are not copied from Glance. This module leaves out operator-supplied
//! property definitions (Glance's `schema-image.json` override file).

use serde_json::{Map, Value, json};

/// Disk formats accepted in `disk_format`, in the order Glance lists them.
pub const DISK_FORMATS: &[&str] = &[
    "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
];

/// Container formats accepted in `container_format`, in the order Glance lists them.
pub const CONTAINER_FORMATS: &[&str] = &[
    "ami",
    "ari",
    "aki",
    "bare",
    "ovf",
    "ova",
    "docker",
    "compressed",
];

/// The UUID pattern Glance uses for image identifiers.
const UUID_PATTERN: &str =
    "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$";

/// Image lifecycle states, in Glance's order.
const IMAGE_STATUSES: &[&str] = &[
    "queued",
    "saving",
    "active",
    "killed",
    "deleted",
    "uploading",
    "importing",
    "pending_delete",
    "deactivated",
];

/// Image visibility values, in Glance's order.
const VISIBILITIES: &[&str] = &["community", "public", "private", "shared"];

/// Image member states, in Glance's order.
const MEMBER_STATUSES: &[&str] = &["pending", "accepted", "rejected"];

/// Returns the schema of a single image (`GET /v2/schemas/image`).
pub fn image_schema() -> Value {
    json!({
        "name": "image",
        "properties": image_properties(),
        "additionalProperties": { "type": "string" },
        "links": [
            { "rel": "self", "href": "{self}" },
            { "rel": "enclosure", "href": "{file}" },
            { "rel": "describedby", "href": "{schema}" },
        ],
    })
}

/// Returns the schema of an image list (`GET /v2/schemas/images`).
///
/// The full image schema is embedded as the item schema of `images`.
pub fn images_schema() -> Value {
    json!({
        "name": "images",
        "properties": {
            "images": {
                "type": "array",
                "items": image_schema(),
            },
            "first": { "type": "string" },
            "next": { "type": "string" },
            "schema": { "type": "string" },
        },
        "links": [
            { "rel": "first", "href": "{first}" },
            { "rel": "next", "href": "{next}" },
            { "rel": "describedby", "href": "{schema}" },
        ],
    })
}

/// Returns the schema of a single image member (`GET /v2/schemas/member`).
pub fn member_schema() -> Value {
    json!({
        "name": "member",
        "properties": {
            "member_id": {
                "type": "string",
                "description": "Project (tenant) the image is shared with.",
            },
            "image_id": {
                "type": "string",
                "description": "Identifier (UUID) of the shared image.",
                "pattern": UUID_PATTERN,
            },
            "created_at": {
                "type": "string",
                "description": "When the membership was created.",
            },
            "updated_at": {
                "type": "string",
                "description": "When the membership was last changed.",
            },
            "status": {
                "type": "string",
                "description": "The member's answer to the share offer.",
                "enum": MEMBER_STATUSES,
            },
            "schema": {
                "readOnly": true,
                "type": "string",
            },
        },
    })
}

/// Returns the schema of a member list (`GET /v2/schemas/members`).
///
/// The full member schema is embedded as the item schema of `members`.
/// The properties of a task, shared by the task and tasks schemas; `full` adds those only a
/// single task shows.
fn task_properties(full: bool) -> Value {
    let uuid =
        "^([0-9a-fA-F]){8}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){4}-([0-9a-fA-F]){12}$";
    let mut properties = json!({
        "id": {"description": "The task's identifier", "pattern": uuid, "type": "string"},
        "type": {"description": "What the task does", "enum": ["import", "api_image_import", "location_import"], "type": "string"},
        "status": {"description": "Where the task stands", "enum": ["pending", "processing", "success", "failure"], "type": "string"},
        "owner": {"description": "The project that created the task", "type": "string"},
        "image_id": {"description": "The image the task works on", "type": "string"},
        "request_id": {"description": "The id of the request that created the task", "type": "string"},
        "user_id": {"description": "The user that created the task", "type": "string"},
        "expires_at": {"description": "When the finished task will be removed", "type": ["null", "string"]},
        "created_at": {"description": "When the task was created", "type": "string"},
        "updated_at": {"description": "When the task last changed", "type": "string"},
        "self": {"readOnly": true, "type": "string"},
        "schema": {"readOnly": true, "type": "string"},
    });
    if full {
        properties["input"] =
            json!({"description": "The task's parameters", "type": ["null", "object"]});
        properties["result"] =
            json!({"description": "What the task produced", "type": ["null", "object"]});
        properties["message"] =
            json!({"description": "A human-readable note, usually on failure", "type": "string"});
    }
    properties
}

/// <https://docs.openstack.org/api-ref/image/v2/index.html#show-task-schema>
pub fn task_schema() -> Value {
    json!({"name": "task", "properties": task_properties(true)})
}

/// <https://docs.openstack.org/api-ref/image/v2/index.html#show-tasks-schema>
pub fn tasks_schema() -> Value {
    json!({
        "name": "tasks",
        "properties": {
            "tasks": {"type": "array", "items": {"name": "task", "properties": task_properties(false)}},
            "schema": {"type": "string"},
        },
        "links": [{"rel": "describedby", "href": "{schema}"}],
    })
}

pub fn members_schema() -> Value {
    json!({
        "name": "members",
        "properties": {
            "members": {
                "type": "array",
                "items": member_schema(),
            },
            "schema": { "type": "string" },
        },
        "links": [
            { "rel": "describedby", "href": "{schema}" },
        ],
    })
}

/// Builds an enum list that starts with `null`, as Glance does for nullable formats.
fn nullable_enum(values: &[&str]) -> Value {
    let mut list = vec![Value::Null];
    list.extend(values.iter().map(|value| Value::from(*value)));
    Value::Array(list)
}

/// Collects every image property into one JSON object.
///
/// The properties are built in small pieces so that no single `json!` call
/// comes near the macro recursion limit.
fn image_properties() -> Value {
    let mut properties = Map::new();
    for (name, schema) in base_image_properties()
        .into_iter()
        .chain(location_property())
        .chain(extra_image_properties())
    {
        properties.insert(name.to_owned(), schema);
    }
    Value::Object(properties)
}

/// Returns the core image attributes, which carry no `is_base` flag.
fn base_image_properties() -> Vec<(&'static str, Value)> {
    vec![
        (
            "id",
            json!({
                "type": "string",
                "description": "Image identifier (UUID).",
                "pattern": UUID_PATTERN,
            }),
        ),
        (
            "name",
            json!({
                "type": ["null", "string"],
                "description": "Human-readable name of the image.",
                "maxLength": 255,
            }),
        ),
        (
            "status",
            json!({
                "type": "string",
                "readOnly": true,
                "description": "Current lifecycle state of the image.",
                "enum": IMAGE_STATUSES,
            }),
        ),
        (
            "visibility",
            json!({
                "type": "string",
                "description": "Who may see and use the image.",
                "enum": VISIBILITIES,
            }),
        ),
        (
            "protected",
            json!({
                "type": "boolean",
                "description": "When true, the image cannot be deleted.",
            }),
        ),
        (
            "os_hidden",
            json!({
                "type": "boolean",
                "description": "When true, the image is left out of default image listings.",
            }),
        ),
        (
            "checksum",
            json!({
                "type": ["null", "string"],
                "readOnly": true,
                "description": "MD5 digest of the image data.",
                "maxLength": 32,
            }),
        ),
        (
            "os_hash_algo",
            json!({
                "type": ["null", "string"],
                "readOnly": true,
                "description": "Name of the hash algorithm that produced os_hash_value.",
                "maxLength": 64,
            }),
        ),
        (
            "os_hash_value",
            json!({
                "type": ["null", "string"],
                "readOnly": true,
                "description": "Hex digest of the image data, computed with os_hash_algo.",
                "maxLength": 128,
            }),
        ),
        (
            "owner",
            json!({
                "type": ["null", "string"],
                "description": "Project that owns the image.",
                "maxLength": 255,
            }),
        ),
        (
            "size",
            json!({
                "type": ["null", "integer"],
                "readOnly": true,
                "description": "Size of the stored image data, in bytes.",
            }),
        ),
        (
            "virtual_size",
            json!({
                "type": ["null", "integer"],
                "readOnly": true,
                "description": "Size of the virtual disk the image holds, in bytes.",
            }),
        ),
        (
            "container_format",
            json!({
                "type": ["null", "string"],
                "description": "Format of the wrapper around the image data.",
                "enum": nullable_enum(CONTAINER_FORMATS),
            }),
        ),
        (
            "disk_format",
            json!({
                "type": ["null", "string"],
                "description": "Format of the disk image data.",
                "enum": nullable_enum(DISK_FORMATS),
            }),
        ),
        (
            "created_at",
            json!({
                "type": "string",
                "readOnly": true,
                "description": "When the image was registered.",
            }),
        ),
        (
            "updated_at",
            json!({
                "type": "string",
                "readOnly": true,
                "description": "When the image was last changed.",
            }),
        ),
        (
            "tags",
            json!({
                "type": "array",
                "description": "Free-form text labels attached to the image.",
                "items": {
                    "type": "string",
                    "maxLength": 255,
                },
            }),
        ),
        (
            "direct_url",
            json!({
                "type": "string",
                "readOnly": true,
                "description": "Address of the image data in its backing store.",
            }),
        ),
        (
            "min_ram",
            json!({
                "type": "integer",
                "description": "Memory, in MB, needed to boot the image.",
            }),
        ),
        (
            "min_disk",
            json!({
                "type": "integer",
                "description": "Disk space, in GB, needed to boot the image.",
            }),
        ),
        (
            "self",
            json!({
                "type": "string",
                "readOnly": true,
                "description": "URL of this image.",
            }),
        ),
        (
            "file",
            json!({
                "type": "string",
                "readOnly": true,
                "description": "URL of this image's data.",
            }),
        ),
        (
            "stores",
            json!({
                "type": "string",
                "readOnly": true,
                "description": "Comma-separated identifiers of the stores that hold the image data; \
                                only shown when several stores are configured.",
            }),
        ),
        (
            "schema",
            json!({
                "type": "string",
                "readOnly": true,
                "description": "URL of the schema that describes this image.",
            }),
        ),
    ]
}

/// Returns the `locations` attribute, whose item schema is nested several levels deep.
fn location_property() -> Vec<(&'static str, Value)> {
    let validation_data = json!({
        "description": "Checksum and hash values to record on the image. Unless the image \
                        is still queued, they must equal the values it already has.",
        "type": "object",
        "writeOnly": true,
        "additionalProperties": false,
        "properties": {
            "checksum": {
                "type": "string",
                "minLength": 32,
                "maxLength": 32,
            },
            "os_hash_algo": {
                "type": "string",
                "maxLength": 64,
            },
            "os_hash_value": {
                "type": "string",
                "maxLength": 128,
            },
        },
        "required": ["os_hash_algo", "os_hash_value"],
    });
    vec![(
        "locations",
        json!({
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "url": {
                        "type": "string",
                        "maxLength": 255,
                    },
                    "metadata": { "type": "object" },
                    "validation_data": validation_data,
                },
                "required": ["url", "metadata"],
            },
            "description": "Backing-store addresses of the image data.",
        }),
    )]
}

/// Returns the well-known optional properties, each marked `"is_base": false`.
fn extra_image_properties() -> Vec<(&'static str, Value)> {
    vec![
        (
            "kernel_id",
            json!({
                "type": ["null", "string"],
                "pattern": UUID_PATTERN,
                "description": "UUID of an image in this service to boot as the kernel \
                                of an AMI-style image.",
                "is_base": false,
            }),
        ),
        (
            "ramdisk_id",
            json!({
                "type": ["null", "string"],
                "pattern": UUID_PATTERN,
                "description": "UUID of an image in this service to boot as the ramdisk \
                                of an AMI-style image.",
                "is_base": false,
            }),
        ),
        (
            "instance_uuid",
            json!({
                "type": "string",
                "description": "Server instance this image is linked to. It is for \
                                information only and does not take a snapshot.",
                "is_base": false,
            }),
        ),
        (
            "architecture",
            json!({
                "description": "CPU architecture the operating system runs on, \
                                such as x86_64 or aarch64.",
                "type": "string",
                "is_base": false,
            }),
        ),
        (
            "os_distro",
            json!({
                "description": "Short common name of the operating system distribution, \
                                such as ubuntu or fedora.",
                "type": "string",
                "is_base": false,
            }),
        ),
        (
            "os_version",
            json!({
                "description": "Operating system version, as named by its vendor.",
                "type": "string",
                "is_base": false,
            }),
        ),
        (
            "description",
            json!({
                "description": "Free-form text about the image.",
                "type": "string",
                "is_base": false,
            }),
        ),
        (
            "cinder_encryption_key_id",
            json!({
                "description": "Key manager identifier of the key the Block Storage \
                                service uses to mount volumes made from this image.",
                "type": "string",
                "is_base": false,
            }),
        ),
        (
            "cinder_encryption_key_deletion_policy",
            json!({
                "description": "When the key named by cinder_encryption_key_id should be \
                                deleted; if unset, the key is left alone.",
                "type": "string",
                "enum": ["on_image_deletion", "do_not_delete"],
                "is_base": false,
            }),
        ),
    ]
}

/// The definitions Glance's metadef schemas share; `non_empty_lists` is the property
/// schemas' variant, whose `stringArray` needs an item.
fn metadef_definitions(with_property: bool, non_empty_lists: bool) -> Value {
    let mut string_array = json!({"type": "array", "items": {"type": "string"}});
    if non_empty_lists {
        string_array["minItems"] = json!(1);
    }
    string_array["uniqueItems"] = json!(true);
    let mut definitions = json!({
        "positiveInteger": {"type": "integer", "minimum": 0},
        "positiveIntegerDefault0": {
            "allOf": [{"$ref": "#/definitions/positiveInteger"}, {"default": 0}]
        },
        "stringArray": string_array,
    });
    if with_property {
        definitions["property"] = json!({
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "required": ["title", "type"],
                "properties": metadef_property_properties(),
            },
        });
    }
    definitions
}

/// The attributes of a property definition, in Glance's order.
fn metadef_property_properties() -> Value {
    let types = json!([
        "array", "boolean", "integer", "number", "object", "string", null
    ]);
    json!({
        "name": {"type": "string", "maxLength": 80},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "operators": {"type": "array", "items": {"type": "string"}},
        "type": {"type": "string", "enum": types},
        "required": {"$ref": "#/definitions/stringArray"},
        "minimum": {"type": "number"},
        "maximum": {"type": "number"},
        "maxLength": {"$ref": "#/definitions/positiveInteger"},
        "minLength": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "pattern": {"type": "string", "format": "regex"},
        "enum": {"type": "array"},
        "readonly": {"type": "boolean"},
        "default": {},
        "items": {
            "type": "object",
            "properties": {"type": {"type": "string", "enum": types}, "enum": {"type": "array"}},
        },
        "maxItems": {"$ref": "#/definitions/positiveInteger"},
        "minItems": {"$ref": "#/definitions/positiveIntegerDefault0"},
        "uniqueItems": {"type": "boolean", "default": false},
        "additionalItems": {"type": "boolean"},
    })
}

/// A read-only timestamp attribute.
fn metadef_time(description: &str) -> Value {
    json!({"type": "string", "readOnly": true, "description": description, "format": "date-time"})
}

fn metadef_namespace_properties() -> Value {
    json!({
        "namespace": {"type": "string", "description": "The namespace's name, unique in the catalog.", "maxLength": 80},
        "display_name": {"type": "string", "description": "A name for people, shown by user interfaces.", "maxLength": 80},
        "description": {"type": "string", "description": "What the namespace's definitions are for.", "maxLength": 500},
        "visibility": {"type": "string", "description": "public: every project reads it; private: only its owner's project.", "enum": ["public", "private"]},
        "protected": {"type": "boolean", "description": "While true, neither the namespace nor anything in it can be deleted."},
        "owner": {"type": "string", "description": "The project that owns the namespace.", "maxLength": 255},
        "created_at": metadef_time("When the namespace was created."),
        "updated_at": metadef_time("When the namespace was last changed."),
        "schema": {"readOnly": true, "type": "string"},
        "self": {"readOnly": true, "type": "string"},
        "resource_type_associations": {
            "type": "array",
            "items": {"type": "object", "properties": {
                "name": {"type": "string"},
                "prefix": {"type": "string"},
                "properties_target": {"type": "string"},
            }},
        },
        "properties": {"$ref": "#/definitions/property"},
        "objects": {
            "type": "array",
            "items": {"type": "object", "properties": {
                "name": {"type": "string"},
                "description": {"type": "string"},
                "required": {"$ref": "#/definitions/stringArray"},
                "properties": {"$ref": "#/definitions/property"},
            }},
        },
        "tags": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    })
}

fn metadef_resource_type_properties() -> Value {
    json!({
        "name": {"type": "string", "description": "The resource type, named as Heat names resource types where one exists (OS::Glance::Image, OS::Nova::Flavor...).", "maxLength": 80},
        "prefix": {"type": "string", "description": "Put before the namespace's property names when they are set on this resource type, separator included (hw_, hw:).", "maxLength": 80},
        "properties_target": {"type": "string", "description": "Which of the resource's key/value sets the properties go to, for resource types with several (a volume's image metadata: image).", "maxLength": 80},
        "created_at": metadef_time("When the association was made."),
        "updated_at": metadef_time("When the association was last changed."),
    })
}

fn metadef_object_properties() -> Value {
    json!({
        "name": {"type": "string", "maxLength": 80},
        "description": {"type": "string"},
        "required": {"$ref": "#/definitions/stringArray"},
        "properties": {"$ref": "#/definitions/property"},
        "schema": {"readOnly": true, "type": "string"},
        "self": {"readOnly": true, "type": "string"},
        "created_at": metadef_time("When the object was created."),
        "updated_at": metadef_time("When the object was last changed."),
    })
}

fn metadef_tag_properties() -> Value {
    json!({
        "name": {"type": "string", "maxLength": 80},
        "created_at": metadef_time("When the tag was created."),
        "updated_at": metadef_time("When the tag was last changed."),
    })
}

/// A single-item metadef schema.
fn metadef_item(name: &str, properties: Value, required: &[&str]) -> Value {
    json!({
        "name": name,
        "properties": properties,
        "additionalProperties": false,
        "required": required,
    })
}

/// A list schema around an item schema, as Glance builds them (paging links included).
fn metadef_collection(name: &str, key: &str, item: Value, definitions: Option<Value>) -> Value {
    let mut schema = json!({
        "name": name,
        "properties": {
            key: {"type": "array", "items": item},
            "first": {"type": "string"},
            "next": {"type": "string"},
            "schema": {"type": "string"},
        },
        "links": [
            {"rel": "first", "href": "{first}"},
            {"rel": "next", "href": "{next}"},
            {"rel": "describedby", "href": "{schema}"},
        ],
    });
    if let Some(definitions) = definitions {
        schema["definitions"] = definitions;
    }
    schema
}

/// The metadef schemas (`GET /v2/schemas/metadefs/{name}`), by name; the structure is
/// Glance's, descriptions ours.
pub fn metadef_schema(name: &str) -> Option<Value> {
    let with_definitions = |mut schema: Value, definitions: Value| {
        let required = schema
            .as_object_mut()
            .and_then(|map| map.remove("required"));
        schema["definitions"] = definitions;
        if let Some(required) = required {
            schema["required"] = required;
        }
        schema
    };
    Some(match name {
        "namespace" => with_definitions(
            metadef_item("namespace", metadef_namespace_properties(), &["namespace"]),
            metadef_definitions(true, false),
        ),
        "namespaces" => metadef_collection(
            "namespaces",
            "namespaces",
            metadef_item("namespace", metadef_namespace_properties(), &["namespace"]),
            Some(metadef_definitions(true, false)),
        ),
        "resource_type" => metadef_item(
            "resource_type_association",
            metadef_resource_type_properties(),
            &["name"],
        ),
        "resource_types" => metadef_collection(
            "resource_type_associations",
            "resource_type_associations",
            metadef_item(
                "resource_type_association",
                metadef_resource_type_properties(),
                &["name"],
            ),
            None,
        ),
        "property" => with_definitions(
            metadef_item(
                "property",
                metadef_property_properties(),
                &["type", "title", "name"],
            ),
            metadef_definitions(false, true),
        ),
        "properties" => {
            let mut schema = metadef_collection(
                "properties",
                "properties",
                Value::Null,
                Some(metadef_definitions(false, true)),
            );
            schema["properties"]["properties"] = json!({
                "type": "object",
                "additionalProperties": metadef_item(
                    "property",
                    metadef_property_properties(),
                    &["type", "title"],
                ),
            });
            schema
        }
        "object" => with_definitions(
            metadef_item("object", metadef_object_properties(), &["name"]),
            metadef_definitions(true, false),
        ),
        "objects" => metadef_collection(
            "objects",
            "objects",
            metadef_item("object", metadef_object_properties(), &["name"]),
            Some(metadef_definitions(true, false)),
        ),
        "tag" => metadef_item("tag", metadef_tag_properties(), &["name"]),
        "tags" => metadef_collection(
            "tags",
            "tags",
            metadef_item("tag", metadef_tag_properties(), &["name"]),
            None,
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Returns the names of all properties whose schema has `flag` set to `value`.
    fn keys_with(properties: &Value, flag: &str, value: bool) -> BTreeSet<String> {
        properties
            .as_object()
            .expect("properties must be an object")
            .iter()
            .filter(|(_, schema)| schema.get(flag) == Some(&Value::Bool(value)))
            .map(|(name, _)| name.clone())
            .collect()
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn image_has_exactly_glance_properties() {
        let schema = image_schema();
        let actual: BTreeSet<String> = schema["properties"]
            .as_object()
            .expect("properties must be an object")
            .keys()
            .cloned()
            .collect();
        let expected = set(&[
            "id",
            "name",
            "status",
            "visibility",
            "protected",
            "os_hidden",
            "checksum",
            "os_hash_algo",
            "os_hash_value",
            "owner",
            "size",
            "virtual_size",
            "container_format",
            "disk_format",
            "created_at",
            "updated_at",
            "tags",
            "direct_url",
            "min_ram",
            "min_disk",
            "self",
            "file",
            "stores",
            "schema",
            "locations",
            "kernel_id",
            "ramdisk_id",
            "instance_uuid",
            "architecture",
            "os_distro",
            "os_version",
            "description",
            "cinder_encryption_key_id",
            "cinder_encryption_key_deletion_policy",
        ]);
        assert_eq!(actual, expected);
        assert_eq!(schema["name"], "image");
        assert_eq!(schema["additionalProperties"], json!({ "type": "string" }));
        assert_eq!(
            schema["links"],
            json!([
                { "rel": "self", "href": "{self}" },
                { "rel": "enclosure", "href": "{file}" },
                { "rel": "describedby", "href": "{schema}" },
            ])
        );
        assert!(schema.get("required").is_none());
    }

    #[test]
    fn format_enums_are_null_then_constants() {
        let properties = &image_schema()["properties"];
        let mut disk = vec![Value::Null];
        disk.extend(DISK_FORMATS.iter().map(|f| json!(f)));
        assert_eq!(properties["disk_format"]["enum"], Value::Array(disk));
        let mut container = vec![Value::Null];
        container.extend(CONTAINER_FORMATS.iter().map(|f| json!(f)));
        assert_eq!(
            properties["container_format"]["enum"],
            Value::Array(container)
        );
        assert_eq!(DISK_FORMATS.len(), 11);
        assert_eq!(DISK_FORMATS[3], "vhd");
        assert_eq!(CONTAINER_FORMATS.len(), 8);
        assert_eq!(CONTAINER_FORMATS[3], "bare");
    }

    #[test]
    fn read_only_and_write_only_flags_match_glance() {
        let properties = &image_schema()["properties"];
        let expected = set(&[
            "status",
            "checksum",
            "os_hash_algo",
            "os_hash_value",
            "size",
            "virtual_size",
            "created_at",
            "updated_at",
            "direct_url",
            "self",
            "file",
            "stores",
            "schema",
        ]);
        assert_eq!(keys_with(properties, "readOnly", true), expected);
        assert!(keys_with(properties, "writeOnly", true).is_empty());
        let validation = &properties["locations"]["items"]["properties"]["validation_data"];
        assert_eq!(validation["writeOnly"], true);
        assert_eq!(validation["additionalProperties"], false);
        assert_eq!(
            validation["required"],
            json!(["os_hash_algo", "os_hash_value"])
        );
        assert_eq!(
            properties["locations"]["items"]["required"],
            json!(["url", "metadata"])
        );
    }

    #[test]
    fn only_extra_properties_are_marked_not_base() {
        let properties = &image_schema()["properties"];
        let expected = set(&[
            "kernel_id",
            "ramdisk_id",
            "instance_uuid",
            "architecture",
            "os_distro",
            "os_version",
            "description",
            "cinder_encryption_key_id",
            "cinder_encryption_key_deletion_policy",
        ]);
        assert_eq!(keys_with(properties, "is_base", false), expected);
        assert!(keys_with(properties, "is_base", true).is_empty());
    }

    #[test]
    fn nullable_types_and_limits_match_glance() {
        let properties = &image_schema()["properties"];
        let nullable_string = json!(["null", "string"]);
        for name in [
            "name",
            "checksum",
            "os_hash_algo",
            "os_hash_value",
            "owner",
            "container_format",
            "disk_format",
            "kernel_id",
            "ramdisk_id",
        ] {
            assert_eq!(properties[name]["type"], nullable_string, "{name}");
        }
        assert_eq!(properties["size"]["type"], json!(["null", "integer"]));
        assert_eq!(
            properties["virtual_size"]["type"],
            json!(["null", "integer"])
        );
        assert_eq!(properties["name"]["maxLength"], 255);
        assert_eq!(properties["checksum"]["maxLength"], 32);
        assert_eq!(properties["os_hash_algo"]["maxLength"], 64);
        assert_eq!(properties["os_hash_value"]["maxLength"], 128);
        assert_eq!(properties["tags"]["items"]["maxLength"], 255);
        assert_eq!(properties["id"]["pattern"], UUID_PATTERN);
        assert_eq!(
            properties["visibility"]["enum"],
            json!(["community", "public", "private", "shared"])
        );
        assert_eq!(properties["status"]["enum"][0], "queued");
        assert_eq!(properties["status"]["enum"][8], "deactivated");
    }

    #[test]
    fn images_schema_embeds_image_schema() {
        let schema = images_schema();
        assert_eq!(schema["name"], "images");
        assert_eq!(schema["properties"]["images"]["type"], "array");
        assert_eq!(schema["properties"]["images"]["items"], image_schema());
        for name in ["first", "next", "schema"] {
            assert_eq!(schema["properties"][name], json!({ "type": "string" }));
        }
        assert_eq!(schema["properties"].as_object().map(Map::len), Some(4));
        assert_eq!(
            schema["links"],
            json!([
                { "rel": "first", "href": "{first}" },
                { "rel": "next", "href": "{next}" },
                { "rel": "describedby", "href": "{schema}" },
            ])
        );
    }

    #[test]
    fn member_schemas_match_glance() {
        let member = member_schema();
        assert_eq!(member["name"], "member");
        assert_eq!(
            member["properties"]["status"]["enum"],
            json!(["pending", "accepted", "rejected"])
        );
        assert_eq!(member["properties"]["image_id"]["pattern"], UUID_PATTERN);
        assert_eq!(
            keys_with(&member["properties"], "readOnly", true),
            set(&["schema"])
        );
        assert_eq!(member["properties"].as_object().map(Map::len), Some(6));

        let members = members_schema();
        assert_eq!(members["name"], "members");
        assert_eq!(members["properties"]["members"]["items"], member);
        assert_eq!(members["properties"]["schema"], json!({ "type": "string" }));
        assert_eq!(
            members["links"],
            json!([{ "rel": "describedby", "href": "{schema}" }])
        );
    }
}
