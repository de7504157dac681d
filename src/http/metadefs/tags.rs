//! `/v2/metadefs/namespaces/{namespace}/tags` and `.../tags/{tag}`. Tag names are unique
//! whatever their case, as in Glance. Deleting every tag is in `namespaces`.

use std::cmp::Ordering;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::super::wire::now_micros;
use super::super::{AppState, Error, JsonBody, blocking, no_content};
use super::document::{self, check_name};
use super::namespaces::{parse_limit, query_pairs, sort_descending};
use super::{list_of, protected, require_admin, tag_view, visible_namespace};
use crate::kv::TagRecord;
use crate::policy::Caller;

fn no_tag(name: &str, namespace: &str) -> Error {
    Error::not_found(format!(
        "There is no tag named {name} in metadata definition namespace {namespace}"
    ))
}

fn tag_taken(name: &str, namespace: &str) -> Error {
    Error::conflict(format!(
        "A tag named {name} already exists in metadata definition namespace {namespace} (tag names ignore case)"
    ))
}

/// Orders tags by one of the attributes a list may be sorted by (checked beforehand).
fn compare(key: &str, left: &TagRecord, right: &TagRecord) -> Ordering {
    match key {
        "name" => left.name.cmp(&right.name),
        "updated_at" => left.updated_at.cmp(&right.updated_at),
        "id" => left.seq.cmp(&right.seq),
        _ => left.created_at.cmp(&right.created_at),
    }
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#list-tags>
///
/// Newest first by default; `limit`, `marker` (a tag name), `sort_key`, `sort_dir`.
pub async fn list_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    let pairs = query_pairs(query.as_deref());
    let value = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(name, value)| name == key && !value.is_empty())
            .map(|(_, value)| value.clone())
    };
    let descending = sort_descending(&pairs)?;
    let limit = value("limit").map(|text| parse_limit(&text)).transpose()?;
    let sort_key = value("sort_key").unwrap_or_else(|| "created_at".into());
    if !["name", "created_at", "updated_at", "id"].contains(&sort_key.as_str()) {
        return Err(Error::bad_request(format!(
            "Tags cannot be sorted by {sort_key}"
        )));
    }
    if let Some(visibility) = value("visibility")
        && !["public", "private", "shared"].contains(&visibility.as_str())
    {
        return Err(Error::bad_request(format!(
            "Unknown visibility {visibility}"
        )));
    }
    let marker = value("marker");
    let store = state.store.clone();
    let names = blocking(move || {
        store.read_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            let mut tags = catalog.tags(&found)?;
            let marked = match &marker {
                Some(marker) => Some(
                    catalog
                        .tag(&found, marker)?
                        .ok_or_else(|| no_tag(marker, &found.namespace))?,
                ),
                None => None,
            };
            let order = |left: &TagRecord, right: &TagRecord| {
                let ordering = compare(&sort_key, left, right)
                    .then(left.created_at.cmp(&right.created_at))
                    .then(left.seq.cmp(&right.seq));
                if descending {
                    ordering.reverse()
                } else {
                    ordering
                }
            };
            tags.sort_by(order);
            if let Some(marked) = &marked {
                tags.retain(|tag| order(tag, marked) == Ordering::Greater);
            }
            if let Some(limit) = limit {
                tags.truncate(limit);
            }
            Ok::<_, Error>(tags)
        })
    })
    .await?;
    Ok(Json(json!({
        "tags": list_of(names.iter().map(|tag| json!({"name": tag.name}))),
    })))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#create-tags>
///
/// Replaces the namespace's tags with the list, or with `X-Openstack-Append: true` adds it;
/// a name taken (or given twice) refuses the whole list. An empty list changes nothing.
pub async fn create_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(namespace): Path<String>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let names = document::tag_list(&body)?;
    let append = headers
        .get("x-openstack-append")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            ["1", "t", "true", "on", "y", "yes"].contains(&value.trim().to_lowercase().as_str())
        });
    let store = state.store.clone();
    let created = blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "add_metadef_tags")?;
            if names.is_empty() {
                return Ok(Vec::new());
            }
            if !append {
                catalog.clear_tags(&found)?;
            }
            let now = now_micros();
            for name in &names {
                if catalog.tag(&found, name)?.is_some() {
                    return Err(tag_taken(name, &found.namespace));
                }
                let seq = catalog.next_seq();
                catalog.put_tag(
                    &found,
                    &TagRecord {
                        name: name.clone(),
                        created_at: now,
                        updated_at: Some(now),
                        seq,
                    },
                    None,
                )?;
            }
            Ok(names)
        })
    })
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"tags": list_of(created.iter().map(|name| json!({"name": name})))})),
    )
        .into_response())
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#create-tag-definition>
pub async fn create_tag(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, Error> {
    check_name(&name, "The tag name").map_err(Error::bad_request)?;
    let store = state.store.clone();
    let tag = blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "add_metadef_tag")?;
            if catalog.tag(&found, &name)?.is_some() {
                return Err(tag_taken(&name, &found.namespace));
            }
            let now = now_micros();
            let seq = catalog.next_seq();
            let tag = TagRecord {
                name,
                created_at: now,
                updated_at: Some(now),
                seq,
            };
            catalog.put_tag(&found, &tag, None)?;
            Ok(tag)
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(tag_view(&tag))).into_response())
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#get-tag-definition>
pub async fn show_tag(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    let store = state.store.clone();
    let view = blocking(move || {
        store.read_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            match catalog.tag(&found, &name)? {
                Some(tag) => Ok(tag_view(&tag)),
                None => Err(no_tag(&name, &found.namespace)),
            }
        })
    })
    .await?;
    Ok(Json(view))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#update-tag-definition>
pub async fn update_tag(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    let new_name = document::tag(&body)?;
    let store = state.store.clone();
    let tag = blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "modify_metadef_tag")?;
            let Some(mut tag) = catalog.tag(&found, &name)? else {
                return Err(no_tag(&name, &found.namespace));
            };
            let renamed_to_other = new_name.to_lowercase() != tag.name.to_lowercase();
            if renamed_to_other && catalog.tag(&found, &new_name)?.is_some() {
                return Err(tag_taken(&new_name, &found.namespace));
            }
            let previous = tag.name.clone();
            tag.name = new_name;
            tag.updated_at = Some(now_micros());
            catalog.put_tag(&found, &tag, Some(&previous))?;
            Ok(tag)
        })
    })
    .await?;
    Ok(Json(tag_view(&tag)))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#delete-tag-definition>
pub async fn delete_tag(
    State(state): State<AppState>,
    caller: Caller,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Response, Error> {
    let store = state.store.clone();
    blocking(move || {
        store.write_metadefs(|catalog| {
            let found = visible_namespace(catalog, &caller, &namespace)?;
            require_admin(&caller, "delete_metadef_tag")?;
            if catalog.tag(&found, &name)?.is_none() {
                return Err(no_tag(&name, &found.namespace));
            }
            if found.protected {
                return Err(protected(&format!("Tag {name}")));
            }
            catalog.remove_tag(&found, &name)?;
            Ok(())
        })
    })
    .await?;
    Ok(no_content())
}
