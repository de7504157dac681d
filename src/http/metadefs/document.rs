//! Checking metadata definition documents: request bodies, and the namespace files
//! `ocellus metadefs load` reads (Glance's `etc/metadefs` format: a namespace with its
//! properties, objects, tags and resource-type associations nested).
//!
//! The rules are those of Glance's JSON Schemas (`/v2/schemas/metadefs/...`): which keys
//! exist, their types, lengths and enums. A property definition is kept as a JSON object in a
//! fixed key order (Glance's), without its name. Names that travel in URL paths (namespaces,
//! objects, properties, tags, resource types) must also be non-empty and free of `/` and
//! control characters, which Glance accepts and then cannot address.

use serde_json::{Map, Value};

/// The types a property (or an array's items) may declare.
const PROPERTY_TYPES: &[&str] = &["array", "boolean", "integer", "number", "object", "string"];

/// The keys of a property definition, in the order Glance writes them.
const PROPERTY_KEYS: &[&str] = &[
    "type",
    "title",
    "description",
    "operators",
    "default",
    "readonly",
    "minimum",
    "maximum",
    "enum",
    "pattern",
    "minLength",
    "maxLength",
    "items",
    "uniqueItems",
    "minItems",
    "maxItems",
    "additionalItems",
    "required",
];

/// Longest name of anything in a namespace, as in Glance's columns.
pub const NAME_MAX: usize = 80;

/// One property definition: its name and the rest of it.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyDef {
    pub name: String,
    pub definition: Map<String, Value>,
}

/// An object as a request or a file gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectDoc {
    pub name: String,
    pub description: Option<String>,
    /// `None` when the document leaves it out.
    pub required: Option<Vec<String>>,
    /// `None` when the document leaves it out.
    pub properties: Option<Vec<PropertyDef>>,
}

/// A resource-type association as a request or a file gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct AssociationDoc {
    pub name: String,
    pub prefix: Option<String>,
    pub properties_target: Option<String>,
}

/// A namespace document, with what it holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NamespaceDoc {
    pub namespace: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// `Some(true)` for public; `None` when left out.
    pub public: Option<bool>,
    pub protected: Option<bool>,
    pub owner: Option<String>,
    pub associations: Vec<AssociationDoc>,
    pub properties: Vec<PropertyDef>,
    pub objects: Vec<ObjectDoc>,
    pub tags: Vec<String>,
}

/// Why a document was refused: the 400's message (403 for read-only keys, see `ReadOnly`).
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    Invalid(String),
    /// A key the server sets (`created_at`, `self`...).
    ReadOnly(String),
}

type Checked<T> = Result<T, Refusal>;

fn invalid<T>(message: impl Into<String>) -> Checked<T> {
    Err(Refusal::Invalid(message.into()))
}

fn object<'a>(value: &'a Value, what: &str) -> Checked<&'a Map<String, Value>> {
    match value {
        Value::Object(map) => Ok(map),
        _ => invalid(format!("{what} must be a JSON object")),
    }
}

/// Refuses the keys a client may not send.
fn refuse_read_only(map: &Map<String, Value>, keys: &[&str]) -> Checked<()> {
    for key in keys {
        if map.contains_key(*key) {
            return Err(Refusal::ReadOnly(format!(
                "The attribute '{key}' is set by the server and cannot be given"
            )));
        }
    }
    Ok(())
}

fn refuse_unknown(map: &Map<String, Value>, allowed: &[&str], what: &str) -> Checked<()> {
    match map.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => invalid(format!("{what} has no attribute '{key}'")),
        None => Ok(()),
    }
}

/// An optional string no longer than `max` characters; `null` is refused, as by Glance's
/// schemas.
fn optional_text(
    map: &Map<String, Value>,
    key: &str,
    max: Option<usize>,
    what: &str,
) -> Checked<Option<String>> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(text)) => {
            if let Some(max) = max
                && text.chars().count() > max
            {
                return invalid(format!("{what}: '{key}' is longer than {max} characters"));
            }
            Ok(Some(text.clone()))
        }
        Some(_) => invalid(format!("{what}: '{key}' must be a string")),
    }
}

fn optional_bool(map: &Map<String, Value>, key: &str, what: &str) -> Checked<Option<bool>> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => invalid(format!("{what}: '{key}' must be true or false")),
    }
}

/// Checks a name that will appear in URL paths.
pub fn check_name(name: &str, what: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if name.chars().count() > NAME_MAX {
        return Err(format!("{what} is longer than {NAME_MAX} characters"));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(format!("{what} must not contain '/' or control characters"));
    }
    Ok(())
}

fn required_name(map: &Map<String, Value>, key: &str, what: &str) -> Checked<String> {
    match map.get(key) {
        Some(Value::String(name)) => {
            check_name(name, &format!("{what}: '{key}'")).map_err(Refusal::Invalid)?;
            Ok(name.clone())
        }
        Some(_) => invalid(format!("{what}: '{key}' must be a string")),
        None => invalid(format!("{what}: '{key}' is required")),
    }
}

/// A list of distinct strings.
fn string_list(value: &Value, key: &str, what: &str, at_least_one: bool) -> Checked<Vec<String>> {
    let Value::Array(items) = value else {
        return invalid(format!("{what}: '{key}' must be a list of strings"));
    };
    let mut list: Vec<String> = Vec::new();
    for item in items {
        let Value::String(text) = item else {
            return invalid(format!("{what}: '{key}' must be a list of strings"));
        };
        if list.contains(text) {
            return invalid(format!("{what}: '{key}' lists '{text}' twice"));
        }
        list.push(text.clone());
    }
    if at_least_one && list.is_empty() {
        return invalid(format!("{what}: '{key}' must not be empty"));
    }
    Ok(list)
}

/// Checks a property definition. `name` is where its name comes from: `Some` for a map key
/// (the definition may repeat it), `None` for a standalone property, whose body must name it.
pub fn property(value: &Value, key_name: Option<&str>) -> Checked<PropertyDef> {
    let what = match key_name {
        Some(name) => format!("Property '{name}'"),
        None => "The property".to_owned(),
    };
    let map = object(value, &what)?;
    refuse_read_only(map, &["created_at", "updated_at"])?;
    let mut allowed = PROPERTY_KEYS.to_vec();
    allowed.push("name");
    refuse_unknown(map, &allowed, &what)?;
    let name = match key_name {
        Some(name) => {
            check_name(name, &format!("{what}: the name")).map_err(Refusal::Invalid)?;
            if let Some(given) = map.get("name")
                && !given.is_string()
            {
                return invalid(format!("{what}: 'name' must be a string"));
            }
            name.to_owned()
        }
        None => required_name(map, "name", &what)?,
    };
    let mut definition = Map::new();
    for key in PROPERTY_KEYS {
        let Some(value) = map.get(*key) else {
            continue;
        };
        let fits = match *key {
            "type" => value
                .as_str()
                .is_some_and(|kind| PROPERTY_TYPES.contains(&kind)),
            "title" | "description" | "pattern" => value.is_string(),
            "operators" => string_list(value, key, &what, false).is_ok(),
            "required" => string_list(value, key, &what, key_name.is_none()).is_ok(),
            "minimum" | "maximum" => value.is_number(),
            "minLength" | "maxLength" | "minItems" | "maxItems" => value.is_u64(),
            "readonly" | "uniqueItems" | "additionalItems" => value.is_boolean(),
            "enum" => value.is_array(),
            "items" => items(value).is_ok(),
            // `default` may be any value.
            _ => true,
        };
        if !fits {
            return invalid(match *key {
                "type" => format!(
                    "{what}: 'type' must be one of {}",
                    PROPERTY_TYPES.join(", ")
                ),
                "minLength" | "maxLength" | "minItems" | "maxItems" => {
                    format!("{what}: '{key}' must be a whole number, 0 or more")
                }
                "items" => format!(
                    "{what}: 'items' must be an object with an optional 'type' (one of {}) and 'enum' (a list)",
                    PROPERTY_TYPES.join(", ")
                ),
                "operators" | "required" => format!(
                    "{what}: '{key}' must be a list of distinct strings{}",
                    if *key == "required" && key_name.is_none() {
                        ", not empty"
                    } else {
                        ""
                    }
                ),
                "minimum" | "maximum" => format!("{what}: '{key}' must be a number"),
                "readonly" | "uniqueItems" | "additionalItems" => {
                    format!("{what}: '{key}' must be true or false")
                }
                "enum" => format!("{what}: 'enum' must be a list"),
                _ => format!("{what}: '{key}' must be a string"),
            });
        }
        definition.insert((*key).to_owned(), value.clone());
    }
    for key in ["type", "title"] {
        if !definition.contains_key(key) {
            return invalid(format!("{what}: '{key}' is required"));
        }
    }
    Ok(PropertyDef { name, definition })
}

fn items(value: &Value) -> Result<(), ()> {
    let Value::Object(map) = value else {
        return Err(());
    };
    for (key, value) in map {
        let fits = match key.as_str() {
            "type" => value
                .as_str()
                .is_some_and(|kind| PROPERTY_TYPES.contains(&kind)),
            "enum" => value.is_array(),
            _ => false,
        };
        if !fits {
            return Err(());
        }
    }
    Ok(())
}

/// A map of property definitions (a namespace's or an object's), in the document's order.
fn property_map(value: &Value, what: &str) -> Checked<Vec<PropertyDef>> {
    let map = object(value, &format!("{what}: 'properties'"))?;
    map.iter()
        .map(|(name, definition)| property(definition, Some(name)))
        .collect()
}

/// Checks an object body (`POST`/`PUT .../objects`), or an object nested in a namespace.
pub fn metadef_object(value: &Value) -> Checked<ObjectDoc> {
    let what = "The object";
    let map = object(value, what)?;
    refuse_read_only(map, &["self", "schema", "created_at", "updated_at"])?;
    refuse_unknown(
        map,
        &["name", "description", "required", "properties"],
        what,
    )?;
    let name = required_name(map, "name", what)?;
    let description = optional_text(map, "description", None, what)?;
    let required = match map.get("required") {
        Some(value) => Some(string_list(value, "required", what, false)?),
        None => None,
    };
    let properties = match map.get("properties") {
        Some(value) => Some(property_map(value, &format!("Object '{name}'"))?),
        None => None,
    };
    Ok(ObjectDoc {
        name,
        description,
        required,
        properties,
    })
}

/// Checks a resource-type association body, or one nested in a namespace.
pub fn association(value: &Value) -> Checked<AssociationDoc> {
    let what = "The resource type association";
    let map = object(value, what)?;
    refuse_read_only(map, &["created_at", "updated_at"])?;
    refuse_unknown(map, &["name", "prefix", "properties_target"], what)?;
    Ok(AssociationDoc {
        name: required_name(map, "name", what)?,
        prefix: optional_text(map, "prefix", Some(NAME_MAX), what)?,
        properties_target: optional_text(map, "properties_target", Some(NAME_MAX), what)?,
    })
}

/// Checks a tag (`{"name": ...}`): the body of `PUT .../tags/{name}`, an item of a list.
pub fn tag(value: &Value) -> Checked<String> {
    let what = "The tag";
    let map = object(value, what)?;
    refuse_read_only(map, &["created_at", "updated_at"])?;
    refuse_unknown(map, &["name"], what)?;
    required_name(map, "name", what)
}

/// Checks the body of `POST .../tags`: `{"tags": [{"name": ...}, ...]}`.
pub fn tag_list(value: &Value) -> Checked<Vec<String>> {
    let what = "The tag list";
    let map = object(value, what)?;
    refuse_read_only(map, &["created_at", "updated_at"])?;
    refuse_unknown(map, &["tags"], what)?;
    match map.get("tags") {
        Some(Value::Array(items)) => items.iter().map(tag).collect(),
        Some(_) => invalid("'tags' must be a list of {\"name\": ...} objects"),
        None => invalid("The tag list needs 'tags'"),
    }
}

/// Checks a namespace document: a create or update body, or a namespace file.
pub fn namespace(value: &Value) -> Checked<NamespaceDoc> {
    let what = "The namespace";
    let map = object(value, what)?;
    refuse_read_only(map, &["self", "schema", "created_at", "updated_at"])?;
    refuse_unknown(
        map,
        &[
            "namespace",
            "display_name",
            "description",
            "visibility",
            "protected",
            "owner",
            "resource_type_associations",
            "properties",
            "objects",
            "tags",
        ],
        what,
    )?;
    let namespace = required_name(map, "namespace", what)?;
    let public = match map.get("visibility") {
        None => None,
        Some(Value::String(text)) if text == "public" => Some(true),
        Some(Value::String(text)) if text == "private" => Some(false),
        Some(_) => return invalid("The namespace: 'visibility' must be public or private"),
    };
    let list = |key: &str| -> Checked<&[Value]> {
        match map.get(key) {
            None => Ok(&[]),
            Some(Value::Array(items)) => Ok(items.as_slice()),
            Some(_) => invalid(format!("The namespace: '{key}' must be a list")),
        }
    };
    // Glance refuses server-set attributes at the top of a document only: what a client got
    // from a show (glanceclient's `md-namespace-update` sends it back) nests them, and they
    // are ignored there.
    let associations = list("resource_type_associations")?
        .iter()
        .map(|item| association(&without_server_fields(item)))
        .collect::<Checked<Vec<_>>>()?;
    let objects = list("objects")?
        .iter()
        .map(|item| metadef_object(&without_server_fields(item)))
        .collect::<Checked<Vec<_>>>()?;
    let tags = list("tags")?
        .iter()
        .map(|item| tag(&without_server_fields(item)))
        .collect::<Checked<Vec<_>>>()?;
    let properties = match map.get("properties") {
        Some(value) => property_map(value, "The namespace")?,
        None => Vec::new(),
    };
    Ok(NamespaceDoc {
        namespace,
        display_name: optional_text(map, "display_name", Some(NAME_MAX), what)?,
        description: optional_text(map, "description", Some(500), what)?,
        public,
        protected: optional_bool(map, "protected", what)?,
        owner: optional_text(map, "owner", Some(255), what)?,
        associations,
        properties,
        objects,
        tags,
    })
}

/// A nested item without the attributes the server sets (`created_at`, `updated_at`, `self`,
/// `schema`).
fn without_server_fields(item: &Value) -> Value {
    let mut item = item.clone();
    if let Value::Object(map) = &mut item {
        for key in ["created_at", "updated_at", "self", "schema"] {
            map.remove(key);
        }
    }
    item
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// glanceclient's `md-namespace-update` sends back what a show returned, nested times
    /// included; Glance ignores them below the top level.
    #[test]
    fn nested_server_fields_are_ignored_top_level_ones_refused() {
        let shown = json!({
            "namespace": "N", "visibility": "public",
            "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "hw_",
                "created_at": "2026-12-05T08:38:33Z"}],
            "objects": [{"name": "O", "created_at": "2026-12-05T08:38:33Z",
                "updated_at": "2026-12-05T08:38:33Z", "schema": "/v2/schemas/metadefs/object"}],
            "tags": [{"name": "t", "created_at": "2026-12-05T08:38:33Z"}]
        });
        let document = namespace(&shown).unwrap();
        assert_eq!(document.associations.len(), 1);
        assert_eq!(document.objects.len(), 1);
        assert_eq!(document.tags, vec!["t".to_owned()]);
        let mut top = shown.clone();
        top["created_at"] = json!("2026-12-05T08:38:33Z");
        assert!(matches!(namespace(&top), Err(Refusal::ReadOnly(_))));
        // A standalone association keeps Glance's refusal.
        assert!(matches!(
            association(&json!({"name": "X", "created_at": "2026-12-05T08:38:33Z"})),
            Err(Refusal::ReadOnly(_))
        ));
    }

    #[test]
    fn property_definitions_follow_glance_schema() {
        let checked = property(
            &json!({"name": "weight", "title": "Weight", "type": "number", "minimum": 0}),
            None,
        )
        .unwrap();
        assert_eq!(checked.name, "weight");
        assert_eq!(
            Value::Object(checked.definition),
            json!({"type": "number", "title": "Weight", "minimum": 0})
        );
        let refused = |body: Value| property(&body, None).unwrap_err();
        assert!(matches!(
            refused(json!({"name": "bad name", "type": "nosuchtype"})),
            Refusal::Invalid(_)
        ));
        assert!(matches!(
            refused(json!({"name": "a", "title": "A", "type": "string", "extra": 1})),
            Refusal::Invalid(_)
        ));
        assert!(matches!(
            refused(json!({"name": "a", "title": "A", "type": "string", "created_at": "x"})),
            Refusal::ReadOnly(_)
        ));
        assert!(matches!(
            refused(json!({"name": "a/b", "title": "A", "type": "string"})),
            Refusal::Invalid(_)
        ));
        assert!(matches!(
            refused(json!({"name": "a", "title": "A", "type": "string", "maxLength": -1})),
            Refusal::Invalid(_)
        ));
    }

    #[test]
    fn namespace_documents_nest_their_contents() {
        let document = namespace(&json!({
            "namespace": "OS::Test",
            "visibility": "public",
            "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "t_"}],
            "properties": {"speed": {"title": "Speed", "type": "integer"}},
            "objects": [{"name": "Widget", "properties": {"color": {"title": "Color", "type": "string"}}}],
            "tags": [{"name": "alpha"}],
        }))
        .unwrap();
        assert_eq!(document.public, Some(true));
        assert_eq!(document.properties[0].name, "speed");
        assert_eq!(
            document.objects[0].properties.as_ref().unwrap()[0].name,
            "color"
        );
        assert_eq!(document.tags, vec!["alpha".to_owned()]);
        assert!(namespace(&json!({"namespace": "x", "visibility": "shared"})).is_err());
        assert!(namespace(&json!({"namespace": "x", "display_name": null})).is_err());
        assert!(namespace(&json!({"display_name": "x"})).is_err());
        assert!(
            association(&json!({"name": "OS::Cinder::Volume", "properties_target": null})).is_err()
        );
    }
}
