//! Metadata definitions (`/v2/metadefs`, API v2.2): the catalog of namespaces, their
//! objects, properties, tags and resource-type associations, and the resource types, which
//! Horizon's "Update Metadata" dialog and Nova's scheduler hints read.
//!
//! Handlers live one file per resource (`namespaces`, `objects`, `properties`, `tags`,
//! `resource_types`); `document` checks bodies and namespace files; this module holds what
//! they share: finding a namespace the caller may see, the JSON views, creating a namespace
//! with its contents (for `POST /v2/metadefs/namespaces` and for loading files), and the
//! starter set a fresh data directory loads.
//!
//! The rules are Glance's defaults: readers see public namespaces and their own project's;
//! only admins change anything; a namespace the caller cannot see is 404 whatever the method,
//! a visible one the caller may not change is 403; nothing in a protected namespace can be
//! deleted (403) until it is unprotected.

pub mod document;
pub(super) mod namespaces;
pub(super) mod objects;
pub(super) mod properties;
pub(super) mod resource_types;
pub(super) mod tags;

use serde_json::{Map, Value, json};

use super::Error;
use super::wire::format_time;
use crate::kv::{
    AssociationRecord, NamespaceRecord, ObjectRecord, PropertyRecord, ReadCatalog,
    ResourceTypeRecord, TagRecord, WriteCatalog,
};
use crate::policy::Caller;
use crate::store::Store;
use document::{NamespaceDoc, ObjectDoc, PropertyDef, Refusal};

/// The resource types Glance's database starts with, in its order.
const SEEDED_RESOURCE_TYPES: &[&str] = &[
    "OS::Glance::Image",
    "OS::Cinder::Volume",
    "OS::Nova::Server",
    "OS::Nova::Aggregate",
    "OS::Nova::Flavor",
    "OS::Trove::Instance",
];

/// The meta key saying the starter set was loaded; once set, it is never loaded again, so
/// an operator's deletions and edits stay.
const SEEDED: &str = "metadefs_seeded";

/// The namespaces every fresh data directory starts with, written for ocellus
/// (`metadefs/*.json`, in Glance's file format).
pub const STARTER_SET: &[(&str, &str)] = &[
    (
        "compute-hardware.json",
        include_str!("../../../metadefs/compute-hardware.json"),
    ),
    (
        "compute-guest-agent.json",
        include_str!("../../../metadefs/compute-guest-agent.json"),
    ),
    (
        "compute-watchdog.json",
        include_str!("../../../metadefs/compute-watchdog.json"),
    ),
    (
        "operating-system.json",
        include_str!("../../../metadefs/operating-system.json"),
    ),
];

/// The owner Glance's loader gives namespace files that name none.
const LOADED_OWNER: &str = "admin";

/// A refused document as Glance answers it: 400, or 403 for a server-set attribute.
impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Error {
        match refusal {
            Refusal::Invalid(message) => Error::bad_request(message),
            Refusal::ReadOnly(message) => Error::forbidden(message),
        }
    }
}

/// 404 for a namespace that does not exist or that the caller may not see: the two are not
/// told apart.
pub fn no_namespace(name: &str) -> Error {
    Error::not_found(format!(
        "There is no metadata definition namespace named {name}"
    ))
}

/// The namespace `name`, if the caller may see it.
pub fn visible_namespace<N, C>(
    catalog: &crate::kv::Catalog<N, C>,
    caller: &Caller,
    name: &str,
) -> Result<NamespaceRecord, Error>
where
    N: redb::ReadableTable<&'static str, &'static [u8]>,
    C: redb::ReadableTable<&'static [u8], &'static [u8]>,
{
    match catalog.namespace(name)? {
        Some(namespace) if sees(caller, &namespace) => Ok(namespace),
        _ => Err(no_namespace(name)),
    }
}

fn sees(caller: &Caller, namespace: &NamespaceRecord) -> bool {
    caller.can_see_namespace(namespace.owner.as_deref(), namespace.public)
}

/// Glance's `metadef_admin` rule for `action`: 403 unless the caller is an admin.
pub fn require_admin(caller: &Caller, action: &str) -> Result<(), Error> {
    if caller.can_manage_metadefs() {
        Ok(())
    } else {
        Err(Error::not_authorized(action))
    }
}

/// 403 for deleting from a protected namespace.
pub fn protected(what: &str) -> Error {
    Error::forbidden(format!(
        "{what} belongs to a protected namespace and cannot be deleted; unprotect the namespace first"
    ))
}

/// 409 for a name that is taken.
fn taken(what: &str, namespace: &str) -> Error {
    Error::conflict(format!(
        "{what} already exists in metadata definition namespace {namespace}"
    ))
}

pub fn namespace_link(name: &str) -> String {
    format!("/v2/metadefs/namespaces/{name}")
}

/// A namespace's own fields, in Glance's order; callers add contents, then `finish`.
pub fn namespace_fields(namespace: &NamespaceRecord) -> Map<String, Value> {
    let mut view = Map::new();
    view.insert("namespace".into(), namespace.namespace.clone().into());
    if let Some(name) = &namespace.display_name {
        view.insert("display_name".into(), name.clone().into());
    }
    if let Some(description) = &namespace.description {
        view.insert("description".into(), description.clone().into());
    }
    view.insert(
        "visibility".into(),
        if namespace.public {
            "public"
        } else {
            "private"
        }
        .into(),
    );
    view.insert("protected".into(), namespace.protected.into());
    if let Some(owner) = &namespace.owner {
        view.insert("owner".into(), owner.clone().into());
    }
    view.insert(
        "created_at".into(),
        format_time(namespace.created_at).into(),
    );
    if let Some(updated) = namespace.updated_at {
        view.insert("updated_at".into(), format_time(updated).into());
    }
    view
}

/// Adds `self` and `schema` to a namespace view.
pub fn finish_namespace(mut view: Map<String, Value>, name: &str) -> Value {
    view.insert("self".into(), namespace_link(name).into());
    view.insert("schema".into(), "/v2/schemas/metadefs/namespace".into());
    Value::Object(view)
}

/// `created_at` and, once set, `updated_at`.
fn times(view: &mut Map<String, Value>, created_at: i64, updated_at: Option<i64>) {
    view.insert("created_at".into(), format_time(created_at).into());
    if let Some(updated) = updated_at {
        view.insert("updated_at".into(), format_time(updated).into());
    }
}

pub fn association_view(association: &AssociationRecord) -> Value {
    let mut view = Map::new();
    view.insert("name".into(), association.resource_type.clone().into());
    if let Some(prefix) = &association.prefix {
        view.insert("prefix".into(), prefix.clone().into());
    }
    if let Some(target) = &association.properties_target {
        view.insert("properties_target".into(), target.clone().into());
    }
    times(&mut view, association.created_at, association.updated_at);
    Value::Object(view)
}

pub fn resource_type_view(resource_type: &ResourceTypeRecord) -> Value {
    let mut view = Map::new();
    view.insert("name".into(), resource_type.name.clone().into());
    times(
        &mut view,
        resource_type.created_at,
        resource_type.updated_at,
    );
    Value::Object(view)
}

pub fn tag_view(tag: &TagRecord) -> Value {
    let mut view = Map::new();
    view.insert("name".into(), tag.name.clone().into());
    times(&mut view, tag.created_at, tag.updated_at);
    Value::Object(view)
}

/// A stored JSON document (a property definition, an object's property map).
fn stored_json(text: &str) -> Map<String, Value> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map,
        _ => {
            tracing::error!("a stored metadef definition is not a JSON object");
            Map::new()
        }
    }
}

pub fn property_definition(property: &PropertyRecord) -> Map<String, Value> {
    stored_json(&property.definition)
}

/// A property with its name first, as `GET .../properties/{name}` shows it.
pub fn named_property(name: &str, definition: Map<String, Value>) -> Value {
    let mut view = Map::new();
    view.insert("name".into(), name.into());
    view.extend(definition);
    Value::Object(view)
}

/// Which optional parts of an object a view shows: a read shows them all; a create or
/// update answer echoes those the request gave, as Glance does.
#[derive(Clone, Copy)]
pub struct ObjectParts {
    pub required: bool,
    pub properties: bool,
}

pub const WHOLE_OBJECT: ObjectParts = ObjectParts {
    required: true,
    properties: true,
};

/// An object as the API shows it; `prefix` is prepended to its property names (a namespace
/// shown for a resource type).
pub fn object_view(
    namespace: &str,
    object: &ObjectRecord,
    parts: ObjectParts,
    prefix: &str,
) -> Value {
    let mut view = Map::new();
    view.insert("name".into(), object.name.clone().into());
    if parts.required {
        let required: Vec<Value> = object
            .required
            .iter()
            .map(|name| format!("{prefix}{name}").into())
            .collect();
        view.insert("required".into(), required.into());
    }
    if let Some(description) = &object.description {
        view.insert("description".into(), description.clone().into());
    }
    if parts.properties {
        let properties: Map<String, Value> = stored_json(&object.properties)
            .into_iter()
            .map(|(name, definition)| (format!("{prefix}{name}"), definition))
            .collect();
        view.insert("properties".into(), properties.into());
    }
    times(&mut view, object.created_at, object.updated_at);
    view.insert(
        "self".into(),
        format!("{}/objects/{}", namespace_link(namespace), object.name).into(),
    );
    view.insert("schema".into(), "/v2/schemas/metadefs/object".into());
    Value::Object(view)
}

/// The stored form of a property map.
fn property_map_text(properties: &[PropertyDef]) -> String {
    let map: Map<String, Value> = properties
        .iter()
        .map(|property| {
            (
                property.name.clone(),
                Value::Object(property.definition.clone()),
            )
        })
        .collect();
    Value::Object(map).to_string()
}

/// A new object record from a document.
pub fn new_object(document: &ObjectDoc, seq: u64, now: i64, updated: Option<i64>) -> ObjectRecord {
    ObjectRecord {
        name: document.name.clone(),
        description: document.description.clone(),
        required: document.required.clone().unwrap_or_default(),
        properties: property_map_text(document.properties.as_deref().unwrap_or_default()),
        created_at: now,
        updated_at: updated,
        seq,
    }
}

pub fn new_property(
    property: &PropertyDef,
    seq: u64,
    now: i64,
    updated: Option<i64>,
) -> PropertyRecord {
    PropertyRecord {
        name: property.name.clone(),
        definition: Value::Object(property.definition.clone()).to_string(),
        created_at: now,
        updated_at: updated,
        seq,
    }
}

/// Makes sure a resource type exists (created unprotected through the API, protected by a
/// load, as Glance does).
pub fn ensure_resource_type(
    catalog: &mut WriteCatalog<'_>,
    name: &str,
    now: i64,
    protected: bool,
) -> Result<(), Error> {
    if catalog.resource_type(name)?.is_none() {
        let seq = catalog.next_seq();
        catalog.put_resource_type(&ResourceTypeRecord {
            name: name.to_owned(),
            protected,
            created_at: now,
            updated_at: None,
            seq,
        })?;
    }
    Ok(())
}

/// Where a namespace comes from: the API stamps `updated_at` on everything it creates and
/// makes unprotected resource types; a file load does neither, as Glance's loader.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Api,
    File,
}

/// Stores a namespace and everything its document holds, refusing (409) a taken namespace
/// name or a name its document repeats; nothing is written on failure, since the caller's
/// transaction is then dropped.
pub fn insert_namespace(
    catalog: &mut WriteCatalog<'_>,
    document: &NamespaceDoc,
    owner: Option<String>,
    now: i64,
    origin: Origin,
) -> Result<NamespaceRecord, Error> {
    if catalog.namespace(&document.namespace)?.is_some() {
        return Err(Error::conflict(format!(
            "A metadata definition namespace named {} already exists",
            document.namespace
        )));
    }
    let updated = (origin == Origin::Api).then_some(now);
    let seq = catalog.next_seq();
    let namespace = NamespaceRecord {
        id: *uuid::Uuid::new_v4().as_bytes(),
        namespace: document.namespace.clone(),
        display_name: document.display_name.clone(),
        description: document.description.clone(),
        public: document.public.unwrap_or(false),
        protected: document.protected.unwrap_or(false),
        owner,
        created_at: now,
        updated_at: updated,
        seq,
    };
    catalog.put_namespace(&namespace, None)?;
    let name = &namespace.namespace;
    for association in &document.associations {
        if catalog
            .association(&namespace, &association.name)?
            .is_some()
        {
            return Err(taken(
                &format!("An association with resource type {}", association.name),
                name,
            ));
        }
        ensure_resource_type(catalog, &association.name, now, origin == Origin::File)?;
        let seq = catalog.next_seq();
        catalog.put_association(
            &namespace,
            &AssociationRecord {
                resource_type: association.name.clone(),
                prefix: association.prefix.clone(),
                properties_target: association.properties_target.clone(),
                created_at: now,
                updated_at: updated,
                seq,
            },
        )?;
    }
    for property in &document.properties {
        if catalog.property(&namespace, &property.name)?.is_some() {
            return Err(taken(&format!("A property named {}", property.name), name));
        }
        let seq = catalog.next_seq();
        catalog.put_property(&namespace, &new_property(property, seq, now, updated), None)?;
    }
    for object in &document.objects {
        if catalog.object(&namespace, &object.name)?.is_some() {
            return Err(taken(&format!("An object named {}", object.name), name));
        }
        let seq = catalog.next_seq();
        catalog.put_object(&namespace, &new_object(object, seq, now, updated), None)?;
    }
    for tag in &document.tags {
        if catalog.tag(&namespace, tag)?.is_some() {
            return Err(taken(
                &format!("A tag named {tag} (tag names ignore case)"),
                name,
            ));
        }
        let seq = catalog.next_seq();
        catalog.put_tag(
            &namespace,
            &TagRecord {
                name: tag.clone(),
                created_at: now,
                updated_at: updated,
                seq,
            },
            None,
        )?;
    }
    Ok(namespace)
}

/// What `ocellus metadefs load` did.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LoadReport {
    /// Namespaces created.
    pub loaded: Vec<String>,
    /// Namespaces that existed and were replaced (`--overwrite`).
    pub replaced: Vec<String>,
    /// Namespaces that existed and were left as they are.
    pub skipped: Vec<String>,
}

/// Loads namespace documents in one transaction: a namespace that exists is skipped, or
/// with `overwrite` deleted (contents included) and loaded again. Blocks.
pub fn load_namespaces(
    store: &Store,
    documents: &[NamespaceDoc],
    overwrite: bool,
) -> Result<LoadReport, Error> {
    let now = super::wire::now_micros();
    let mut seen = std::collections::HashSet::new();
    for document in documents {
        if !seen.insert(document.namespace.as_str()) {
            return Err(Error::bad_request(format!(
                "Namespace {} is given twice",
                document.namespace
            )));
        }
    }
    store.write_metadefs(|catalog| {
        let mut report = LoadReport::default();
        for document in documents {
            if let Some(existing) = catalog.namespace(&document.namespace)? {
                if !overwrite {
                    report.skipped.push(document.namespace.clone());
                    continue;
                }
                catalog.remove_namespace(&existing)?;
                report.replaced.push(document.namespace.clone());
            } else {
                report.loaded.push(document.namespace.clone());
            }
            let owner = document
                .owner
                .clone()
                .unwrap_or_else(|| LOADED_OWNER.to_owned());
            insert_namespace(catalog, document, Some(owner), now, Origin::File)?;
        }
        Ok(report)
    })
}

/// Parses namespace files (name, text): each must be a namespace document.
pub fn parse_files(files: &[(String, String)]) -> Result<Vec<NamespaceDoc>, String> {
    files
        .iter()
        .map(|(name, text)| {
            let value: Value =
                serde_json::from_str(text).map_err(|error| format!("{name}: {error}"))?;
            document::namespace(&value).map_err(|refusal| match refusal {
                Refusal::Invalid(message) | Refusal::ReadOnly(message) => {
                    format!("{name}: {message}")
                }
            })
        })
        .collect()
}

/// On a data directory's first start with metadata definitions: the seeded resource types
/// and the starter set, as Glance's `db_load_metadefs` would. Later starts find the meta key
/// and change nothing. Blocks.
pub fn seed_catalog(store: &Store) -> Result<bool, crate::store::StoreError> {
    if store.meta(SEEDED)?.is_some() {
        return Ok(false);
    }
    let now = super::wire::now_micros();
    let files: Vec<(String, String)> = STARTER_SET
        .iter()
        .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
        .collect();
    // The starter set is part of the binary; a unit test keeps it valid.
    let documents = parse_files(&files).unwrap_or_default();
    let seeded = store.write_metadefs(|catalog| {
        for name in SEEDED_RESOURCE_TYPES {
            ensure_resource_type(catalog, name, now, true)?;
        }
        for document in &documents {
            if catalog.namespace(&document.namespace)?.is_none() {
                let owner = document.owner.clone().or(Some(LOADED_OWNER.to_owned()));
                insert_namespace(catalog, document, owner, now, Origin::File)?;
            }
        }
        Ok::<(), Error>(())
    });
    if let Err(error) = seeded {
        tracing::error!(message = %error.message, "loading the starter metadata definitions failed");
        return Err(crate::store::StoreError::Kv(crate::kv::KvError::Corrupt(
            "the starter metadata definitions could not be stored".into(),
        )));
    }
    store.set_meta(SEEDED, u64::try_from(now).unwrap_or(0))?;
    tracing::info!(
        namespaces = documents.len(),
        "loaded the starter metadata definitions"
    );
    Ok(true)
}

/// The namespaces of a read, for a listing: the visible ones with their associations.
pub fn visible_namespaces(
    catalog: &ReadCatalog,
    caller: &Caller,
) -> Result<Vec<(NamespaceRecord, Vec<AssociationRecord>)>, Error> {
    let mut found = Vec::new();
    for namespace in catalog.namespaces()? {
        if sees(caller, &namespace) {
            let associations = catalog.associations(&namespace)?;
            found.push((namespace, associations));
        }
    }
    Ok(found)
}

/// A JSON list of views.
pub fn list_of(views: impl Iterator<Item = Value>) -> Value {
    Value::Array(views.collect())
}

/// A namespace as a create answers it: its fields and the contents the request gave, as
/// given (no times), as Glance echoes them.
pub fn created_namespace_view(namespace: &NamespaceRecord, document: &NamespaceDoc) -> Value {
    let mut view = namespace_fields(namespace);
    if !document.associations.is_empty() {
        let associations = document.associations.iter().map(|association| {
            let mut item = Map::new();
            item.insert("name".into(), association.name.clone().into());
            if let Some(prefix) = &association.prefix {
                item.insert("prefix".into(), prefix.clone().into());
            }
            if let Some(target) = &association.properties_target {
                item.insert("properties_target".into(), target.clone().into());
            }
            Value::Object(item)
        });
        view.insert("resource_type_associations".into(), list_of(associations));
    }
    if !document.properties.is_empty() {
        view.insert(
            "properties".into(),
            serde_json::from_str(&property_map_text(&document.properties)).unwrap_or_default(),
        );
    }
    if !document.objects.is_empty() {
        let objects = document.objects.iter().map(|object| {
            let mut item = Map::new();
            item.insert("name".into(), object.name.clone().into());
            if let Some(required) = &object.required {
                item.insert("required".into(), json!(required));
            }
            if let Some(description) = &object.description {
                item.insert("description".into(), description.clone().into());
            }
            if let Some(properties) = &object.properties {
                item.insert(
                    "properties".into(),
                    serde_json::from_str(&property_map_text(properties)).unwrap_or_default(),
                );
            }
            Value::Object(item)
        });
        view.insert("objects".into(), list_of(objects));
    }
    if !document.tags.is_empty() {
        let tags = document.tags.iter().map(|tag| json!({"name": tag}));
        view.insert("tags".into(), list_of(tags));
    }
    finish_namespace(view, &namespace.namespace)
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#metadata-definition-schemas>
///
/// `GET /v2/schemas/metadefs/{name}`: namespace(s), object(s), property/properties, tag(s),
/// resource_type(s).
pub async fn show_schema(
    _caller: Caller,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> Result<axum::Json<Value>, Error> {
    match super::schemas::metadef_schema(&name) {
        Some(schema) => Ok(axum::Json(schema)),
        None => Err(Error::not_found("The resource could not be found.")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starter_set_is_valid_and_covers_its_topics() {
        let files: Vec<(String, String)> = STARTER_SET
            .iter()
            .map(|(name, text)| ((*name).to_owned(), (*text).to_owned()))
            .collect();
        let documents = parse_files(&files).unwrap();
        let names: Vec<&str> = documents
            .iter()
            .flat_map(|document| {
                document
                    .properties
                    .iter()
                    .map(|property| property.name.as_str())
            })
            .collect();
        for wanted in [
            "qemu_guest_agent",
            "watchdog_action",
            "os_distro",
            "os_version",
            "os_type",
        ] {
            assert!(names.contains(&wanted), "{wanted} missing from {names:?}");
        }
        assert!(
            documents
                .iter()
                .all(|document| document.public == Some(true))
        );
    }
}
