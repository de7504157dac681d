//! `/v2/metadefs/namespaces/{namespace}/properties` and `.../properties/{property}`.
//! Deleting every property of a namespace is in `namespaces`, as in Glance's router.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::super::wire::now_micros;
use super::super::{AppState, Error, JsonBody, blocking, no_content};
use super::namespaces::query_pairs;
use super::{
    document, named_property, new_property, property_definition, protected, require_admin,
    visible_namespace,
};
use crate::policy::Caller;

fn no_property(name: &str, namespace: &str) -> Error {
    Error::not_found(format!(
        "There is no property named {name} in metadata definition namespace {namespace}"
    ))
}

fn property_taken(name: &str, namespace: &str) -> Error {
    Error::conflict(format!(
        "A property named {name} already exists in metadata definition namespace {namespace}"
    ))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#list-properties>
pub async fn list_properties(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
) -> Result<Json<Value>, Error> {
    let store = state.store.clone();
    let properties = blocking(move || {
        store.read_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            let map: Map<String, Value> = catalog
                .properties(&found)?
                .iter()
                .map(|property| {
                    (
                        property.name.clone(),
                        Value::Object(property_definition(property)),
                    )
                })
                .collect();
            Ok::<_, Error>(map)
        })
    })
    .await?;
    Ok(Json(json!({ "properties": properties })))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#create-property>
pub async fn create_property(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let property = document::property(&body, None)?;
    let store = state.store.clone();
    let created = blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "add_metadef_property")?;
            if catalog.property(&found, &property.name)?.is_some() {
                return Err(property_taken(&property.name, &found.namespace));
            }
            let now = now_micros();
            let seq = catalog.next_seq();
            let record = new_property(&property, seq, now, Some(now));
            catalog.put_property(&found, &record, None)?;
            Ok(named_property(&record.name, property_definition(&record)))
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#show-property-definition>
///
/// With `resource_type`, `{property}` is the name with the prefix of the namespace's
/// association with that type; it must carry that prefix (404 otherwise).
pub async fn show_property(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    let pairs = query_pairs(query.as_deref());
    let resource_type = pairs
        .iter()
        .rev()
        .find(|(key, value)| key == "resource_type" && !value.is_empty())
        .map(|(_, value)| value.clone());
    let store = state.store.clone();
    let view = blocking(move || {
        store.read_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            let mut stored_name = name.as_str();
            if let Some(resource_type) = &resource_type {
                let Some(association) = catalog.association(&found, resource_type)? else {
                    return Err(Error::not_found(format!(
                        "Metadata definition namespace {} has no association with resource type {resource_type}",
                        found.namespace
                    )));
                };
                let prefix = association.prefix.unwrap_or_default();
                match name.strip_prefix(prefix.as_str()) {
                    Some(rest) if !prefix.is_empty() => stored_name = rest,
                    _ => {
                        return Err(Error::not_found(format!(
                            "Property {name} does not start with the prefix '{prefix}' of resource type {resource_type}"
                        )));
                    }
                }
            }
            match catalog.property(&found, stored_name)? {
                Some(property) => Ok(named_property(&property.name, property_definition(&property))),
                None => Err(no_property(stored_name, &found.namespace)),
            }
        })
    })
    .await?;
    Ok(Json(view))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#update-property-definition>
///
/// The body replaces the property (name included: a different name renames it).
pub async fn update_property(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    let property = document::property(&body, None)?;
    let store = state.store.clone();
    let updated = blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "modify_metadef_property")?;
            let Some(current) = catalog.property(&found, &name)? else {
                return Err(no_property(&name, &found.namespace));
            };
            if property.name != name && catalog.property(&found, &property.name)?.is_some() {
                return Err(property_taken(&property.name, &found.namespace));
            }
            let record = new_property(
                &property,
                current.seq,
                current.created_at,
                Some(now_micros()),
            );
            catalog.put_property(&found, &record, Some(&name))?;
            Ok(named_property(&record.name, property_definition(&record)))
        })
    })
    .await?;
    Ok(Json(updated))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#remove-property-definition>
pub async fn delete_property(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, Error> {
    let store = state.store.clone();
    blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "remove_metadef_property")?;
            if catalog.property(&found, &name)?.is_none() {
                return Err(no_property(&name, &found.namespace));
            }
            if found.protected {
                return Err(protected(&format!("Property {name}")));
            }
            catalog.remove_property(&found, &name)?;
            Ok(())
        })
    })
    .await?;
    Ok(no_content())
}
