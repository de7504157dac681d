//! `/v2/metadefs/resource_types` and a namespace's associations with resource types,
//! `/v2/metadefs/namespaces/{namespace}/resource_types[/{resource_type}]`. Associating a
//! namespace with an unknown resource type creates the type, as in Glance.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::super::wire::now_micros;
use super::super::{AppState, Error, JsonBody, blocking, no_content};
use super::{
    association_view, document, ensure_resource_type, list_of, protected, require_admin,
    resource_type_view, visible_namespace,
};
use crate::kv::AssociationRecord;
use crate::policy::Caller;

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#list-resource-types>
pub async fn list_resource_types(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, Error> {
    if !caller.can_read() {
        return Err(Error::not_authorized("list_metadef_resource_types"));
    }
    let store = state.store.clone();
    let types =
        blocking(move || Ok(store.read_metadefs(|catalog| catalog.resource_types())?)).await?;
    Ok(Json(
        json!({"resource_types": list_of(types.iter().map(resource_type_view))}),
    ))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#list-resource-type-associations>
pub async fn list_associations(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
) -> Result<Json<Value>, Error> {
    let store = state.store.clone();
    let associations = blocking(move || {
        store.read_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            Ok::<_, Error>(catalog.associations(&found)?)
        })
    })
    .await?;
    Ok(Json(json!({
        "resource_type_associations": list_of(associations.iter().map(association_view)),
    })))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#create-resource-type-association>
pub async fn create_association(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let association = document::association(&body)?;
    let store = state.store.clone();
    let created = blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "add_metadef_resource_type_association")?;
            if catalog.association(&found, &association.name)?.is_some() {
                return Err(Error::conflict(format!(
                    "Metadata definition namespace {} is already associated with resource type {}",
                    found.namespace, association.name
                )));
            }
            let now = now_micros();
            ensure_resource_type(catalog, &association.name, now, false)?;
            let seq = catalog.next_seq();
            let record = AssociationRecord {
                resource_type: association.name,
                prefix: association.prefix,
                properties_target: association.properties_target,
                created_at: now,
                updated_at: Some(now),
                seq,
            };
            catalog.put_association(&found, &record)?;
            Ok(record)
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(association_view(&created))).into_response())
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#remove-resource-type-association>
pub async fn delete_association(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, resource_type)): Path<(String, String)>,
) -> Result<Response, Error> {
    let store = state.store.clone();
    blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "remove_metadef_resource_type_association")?;
            if catalog.association(&found, &resource_type)?.is_none() {
                return Err(Error::not_found(format!(
                    "Metadata definition namespace {} has no association with resource type {resource_type}",
                    found.namespace
                )));
            }
            if found.protected {
                return Err(protected(&format!(
                    "The association with resource type {resource_type}"
                )));
            }
            catalog.remove_association(&found, &resource_type)?;
            Ok(())
        })
    })
    .await?;
    Ok(no_content())
}
