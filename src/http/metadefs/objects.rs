//! `/v2/metadefs/namespaces/{namespace}/objects` and `.../objects/{object}`. Deleting every
//! object of a namespace is in `namespaces`, as in Glance's router.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::super::wire::now_micros;
use super::super::{AppState, Error, JsonBody, blocking, no_content};
use super::namespaces::{parse_limit, query_pairs, sort_descending};
use super::{
    ObjectParts, WHOLE_OBJECT, document, list_of, new_object, object_view, protected,
    require_admin, visible_namespace,
};
use crate::policy::Caller;

fn no_object(name: &str, namespace: &str) -> Error {
    Error::not_found(format!(
        "There is no object named {name} in metadata definition namespace {namespace}"
    ))
}

fn object_taken(name: &str, namespace: &str) -> Error {
    Error::conflict(format!(
        "An object named {name} already exists in metadata definition namespace {namespace}"
    ))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#list-objects>
///
/// Glance checks the paging parameters and then lists every object, in creation order.
pub async fn list_objects(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    let pairs = query_pairs(query.as_deref());
    sort_descending(&pairs)?;
    for (key, value) in &pairs {
        match key.as_str() {
            "limit" if parse_limit(value)? == 0 => {
                return Err(Error::bad_request("limit must be 1 or more"));
            }
            "visibility" if !["public", "private", "shared", ""].contains(&value.as_str()) => {
                return Err(Error::bad_request(format!("Unknown visibility {value}")));
            }
            _ => {}
        }
    }
    let store = state.store.clone();
    let views = blocking(move || {
        store.read_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            let objects = catalog.objects(&found)?;
            Ok::<_, Error>(list_of(
                objects
                    .iter()
                    .map(|object| object_view(&found.namespace, object, WHOLE_OBJECT, "")),
            ))
        })
    })
    .await?;
    // Glance's link here has no leading slash.
    Ok(Json(
        json!({"objects": views, "schema": "v2/schemas/metadefs/objects"}),
    ))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#create-object>
pub async fn create_object(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let document = document::metadef_object(&body)?;
    let parts = ObjectParts {
        required: document.required.is_some(),
        properties: document.properties.is_some(),
    };
    let store = state.store.clone();
    let (found, object) = blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "add_metadef_object")?;
            if catalog.object(&found, &document.name)?.is_some() {
                return Err(object_taken(&document.name, &found.namespace));
            }
            let now = now_micros();
            let seq = catalog.next_seq();
            let object = new_object(&document, seq, now, Some(now));
            catalog.put_object(&found, &object, None)?;
            Ok((found, object))
        })
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(object_view(&found.namespace, &object, parts, "")),
    )
        .into_response())
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#show-object>
pub async fn show_object(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    let store = state.store.clone();
    let view = blocking(move || {
        store.read_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            match catalog.object(&found, &name)? {
                Some(object) => Ok(object_view(&found.namespace, &object, WHOLE_OBJECT, "")),
                None => Err(no_object(&name, &found.namespace)),
            }
        })
    })
    .await?;
    Ok(Json(view))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#update-object>
///
/// The body replaces the object (name included: a different name renames it).
pub async fn update_object(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    let document = document::metadef_object(&body)?;
    let parts = ObjectParts {
        required: document.required.is_some(),
        properties: document.properties.is_some(),
    };
    let store = state.store.clone();
    let (found, object) = blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "modify_metadef_object")?;
            let Some(current) = catalog.object(&found, &name)? else {
                return Err(no_object(&name, &found.namespace));
            };
            if document.name != name && catalog.object(&found, &document.name)?.is_some() {
                return Err(object_taken(&document.name, &found.namespace));
            }
            let mut object = new_object(&document, current.seq, current.created_at, None);
            object.updated_at = Some(now_micros());
            catalog.put_object(&found, &object, Some(&name))?;
            Ok((found, object))
        })
    })
    .await?;
    Ok(Json(object_view(&found.namespace, &object, parts, "")))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#delete-object>
pub async fn delete_object(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, Error> {
    let store = state.store.clone();
    blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "delete_metadef_object")?;
            if catalog.object(&found, &name)?.is_none() {
                return Err(no_object(&name, &found.namespace));
            }
            if found.protected {
                return Err(protected(&format!("Object {name}")));
            }
            catalog.remove_object(&found, &name)?;
            Ok(())
        })
    })
    .await?;
    Ok(no_content())
}
