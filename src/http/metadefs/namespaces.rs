//! `/v2/metadefs/namespaces` and `/v2/metadefs/namespaces/{namespace}`, and the routes that
//! empty a namespace (`DELETE .../objects`, `.../properties`, `.../tags`), which Glance's
//! router sends to its namespace controller.

use std::cmp::Ordering;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::super::list_query::{DEFAULT_LIMIT, MAX_LIMIT};
use super::super::wire::now_micros;
use super::super::{AppState, BaseUrl, Error, JsonBody, blocking, no_content};
use super::{
    Origin, WHOLE_OBJECT, association_view, created_namespace_view, document, finish_namespace,
    insert_namespace, list_of, namespace_fields, object_view, property_definition, require_admin,
    visible_namespace, visible_namespaces,
};
use crate::kv::NamespaceRecord;
use crate::policy::Caller;

/// The query of a request as pairs, in order.
pub fn query_pairs(query: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(name, _)| name == key)
        .map(|(_, value)| value.as_str())
}

/// `sort_dir`: `asc` or `desc` (the default).
pub fn sort_descending(pairs: &[(String, String)]) -> Result<bool, Error> {
    match query_value(pairs, "sort_dir") {
        None | Some("desc") => Ok(true),
        Some("asc") => Ok(false),
        Some(other) => Err(Error::bad_request(format!(
            "Unknown sort direction {other}: use asc or desc"
        ))),
    }
}

/// A `limit` parameter: a whole number, 0 or more.
pub fn parse_limit(text: &str) -> Result<usize, Error> {
    match text.parse::<i64>() {
        Ok(number) if number >= 0 => Ok(usize::try_from(number).unwrap_or(usize::MAX)),
        Ok(_) => Err(Error::bad_request("limit must be 0 or more")),
        Err(_) => Err(Error::bad_request("limit must be a whole number")),
    }
}

/// The namespace attributes a list may be sorted by.
#[derive(Clone, Copy)]
enum SortKey {
    Namespace,
    DisplayName,
    Description,
    Visibility,
    Protected,
    Owner,
    CreatedAt,
    UpdatedAt,
    Id,
}

impl SortKey {
    fn parse(text: &str) -> Option<SortKey> {
        Some(match text {
            "namespace" => SortKey::Namespace,
            "display_name" => SortKey::DisplayName,
            "description" => SortKey::Description,
            "visibility" => SortKey::Visibility,
            "protected" => SortKey::Protected,
            "owner" => SortKey::Owner,
            "created_at" => SortKey::CreatedAt,
            "updated_at" => SortKey::UpdatedAt,
            "id" => SortKey::Id,
            _ => return None,
        })
    }

    fn compare(self, left: &NamespaceRecord, right: &NamespaceRecord) -> Ordering {
        match self {
            SortKey::Namespace => left.namespace.cmp(&right.namespace),
            SortKey::DisplayName => left.display_name.cmp(&right.display_name),
            SortKey::Description => left.description.cmp(&right.description),
            // Glance sorts the column's text: "private" before "public".
            SortKey::Visibility => left.public.cmp(&right.public),
            SortKey::Protected => left.protected.cmp(&right.protected),
            SortKey::Owner => left.owner.cmp(&right.owner),
            SortKey::CreatedAt => left.created_at.cmp(&right.created_at),
            SortKey::UpdatedAt => left.updated_at.cmp(&right.updated_at),
            SortKey::Id => left.seq.cmp(&right.seq),
        }
    }
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#list-namespaces>
pub async fn list_namespaces(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    let pairs = query_pairs(query.as_deref());
    let limit = match query_value(&pairs, "limit") {
        Some(text) => parse_limit(text)?.min(MAX_LIMIT),
        None => DEFAULT_LIMIT,
    };
    let descending = sort_descending(&pairs)?;
    let sort_text = query_value(&pairs, "sort_key").unwrap_or("created_at");
    let sort_key = SortKey::parse(sort_text)
        .ok_or_else(|| Error::bad_request(format!("Namespaces cannot be sorted by {sort_text}")))?;
    let visibility = match query_value(&pairs, "visibility") {
        None | Some("") => None,
        Some("public") => Some(true),
        Some("private") => Some(false),
        Some(other) => {
            return Err(Error::bad_request(format!(
                "Unknown visibility {other}: use public or private"
            )));
        }
    };
    let resource_types: Option<Vec<String>> = query_value(&pairs, "resource_types")
        .map(|text| text.split(',').map(str::to_owned).collect());
    let marker = query_value(&pairs, "marker").map(str::to_owned);
    if !caller.can_read() {
        return Err(Error::not_authorized("get_metadef_namespaces"));
    }

    let store = state.store.clone();
    let mut namespaces =
        blocking(move || store.read_metadefs(|catalog| visible_namespaces(catalog, &caller)))
            .await?;
    // The marker must be a namespace the caller sees; filtered out by the other parameters,
    // it still marks a place in the order.
    let marked = match &marker {
        None => None,
        Some(marker) => Some(
            namespaces
                .iter()
                .find(|(namespace, _)| &namespace.namespace == marker)
                .map(|(namespace, _)| namespace.clone())
                .ok_or_else(|| super::no_namespace(marker))?,
        ),
    };
    namespaces.retain(|(namespace, associations)| {
        visibility.is_none_or(|public| namespace.public == public)
            && resource_types.as_ref().is_none_or(|wanted| {
                associations
                    .iter()
                    .any(|association| wanted.contains(&association.resource_type))
            })
    });
    let order = |left: &NamespaceRecord, right: &NamespaceRecord| {
        let ordering = sort_key
            .compare(left, right)
            .then(left.created_at.cmp(&right.created_at))
            .then(left.seq.cmp(&right.seq));
        if descending {
            ordering.reverse()
        } else {
            ordering
        }
    };
    namespaces.sort_by(|left, right| order(&left.0, &right.0));
    let start = match &marked {
        None => 0,
        Some(marked) => namespaces
            .iter()
            .position(|(namespace, _)| order(namespace, marked) == Ordering::Greater)
            .unwrap_or(namespaces.len()),
    };
    let page: Vec<_> = namespaces.into_iter().skip(start).take(limit).collect();

    let views = page.iter().map(|(namespace, associations)| {
        let mut view = namespace_fields(namespace);
        if !associations.is_empty() {
            view.insert(
                "resource_type_associations".into(),
                list_of(associations.iter().map(association_view)),
            );
        }
        finish_namespace(view, &namespace.namespace)
    });
    let mut body = Map::new();
    body.insert("namespaces".into(), list_of(views));
    let link_pairs: Vec<(String, String)> = pairs
        .iter()
        .filter(|(key, _)| key != "marker")
        .cloned()
        .collect();
    let encode = |pairs: &[(String, String)]| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(pairs)
            .finish()
    };
    if limit > 0
        && page.len() == limit
        && let Some((last, _)) = page.last()
    {
        let mut next = link_pairs.clone();
        next.push(("marker".into(), last.namespace.clone()));
        body.insert(
            "next".into(),
            format!("/v2/metadefs/namespaces?{}", encode(&next)).into(),
        );
    }
    body.insert("schema".into(), "/v2/schemas/metadefs/namespaces".into());
    let first = if link_pairs.is_empty() {
        "/v2/metadefs/namespaces".to_owned()
    } else {
        format!("/v2/metadefs/namespaces?{}", encode(&link_pairs))
    };
    body.insert("first".into(), first.into());
    Ok(Json(Value::Object(body)))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#create-namespace>
pub async fn create_namespace(
    State(state): State<AppState>,
    caller: Caller,
    BaseUrl(base): BaseUrl,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let document = document::namespace(&body)?;
    require_admin(&caller, "add_metadef_namespace")?;
    let owner = document
        .owner
        .clone()
        .unwrap_or_else(|| caller.project_id.clone());
    let store = state.store.clone();
    let given = document.clone();
    let namespace = blocking(move || {
        store.write_metadefs(|catalog| {
            insert_namespace(catalog, &given, Some(owner), now_micros(), Origin::Api)
        })
    })
    .await?;
    tracing::info!(namespace = %namespace.namespace, "metadata definition namespace created");
    let view = created_namespace_view(&namespace, &document);
    let mut response = (StatusCode::CREATED, Json(view)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!(
        "{base}{}",
        super::namespace_link(&namespace.namespace)
    )) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `visibility`, where Glance checks it on a show: public or private.
fn check_visibility_parameter(pairs: &[(String, String)], also_shared: bool) -> Result<(), Error> {
    match query_value(pairs, "visibility") {
        None | Some("") | Some("public") | Some("private") => Ok(()),
        Some("shared") if also_shared => Ok(()),
        Some(other) => Err(Error::bad_request(format!("Unknown visibility {other}"))),
    }
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#get-namespace-details>
///
/// With `resource_type`, property names (an object's `required` too) carry the prefix of the
/// namespace's association with that type.
pub async fn show_namespace(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    let pairs = query_pairs(query.as_deref());
    check_visibility_parameter(&pairs, false)?;
    let resource_type = query_value(&pairs, "resource_type")
        .filter(|text| !text.is_empty())
        .map(str::to_owned);
    let store = state.store.clone();
    let view = blocking(move || {
        store.read_metadefs(|catalog| {
            let namespace = visible_namespace(catalog, &caller, &name)?;
            let associations = catalog.associations(&namespace)?;
            let prefix = resource_type
                .as_ref()
                .and_then(|wanted| {
                    associations
                        .iter()
                        .find(|association| &association.resource_type == wanted)
                })
                .and_then(|association| association.prefix.clone())
                .unwrap_or_default();
            let mut view = namespace_fields(&namespace);
            if !associations.is_empty() {
                view.insert(
                    "resource_type_associations".into(),
                    list_of(associations.iter().map(association_view)),
                );
            }
            let properties = catalog.properties(&namespace)?;
            if !properties.is_empty() {
                let map: Map<String, Value> = properties
                    .iter()
                    .map(|property| {
                        (
                            format!("{prefix}{}", property.name),
                            Value::Object(property_definition(property)),
                        )
                    })
                    .collect();
                view.insert("properties".into(), Value::Object(map));
            }
            let objects = catalog.objects(&namespace)?;
            if !objects.is_empty() {
                view.insert(
                    "objects".into(),
                    list_of(objects.iter().map(|object| {
                        object_view(&namespace.namespace, object, WHOLE_OBJECT, &prefix)
                    })),
                );
            }
            let tags = catalog.tags(&namespace)?;
            if !tags.is_empty() {
                view.insert(
                    "tags".into(),
                    list_of(
                        tags.iter()
                            .map(|tag| serde_json::json!({ "name": tag.name })),
                    ),
                );
            }
            Ok::<_, Error>(finish_namespace(view, &namespace.namespace))
        })
    })
    .await?;
    Ok(Json(view))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#update-namespace>
///
/// The body replaces the namespace's own fields (left-out ones go back to their defaults,
/// as in Glance) and may rename it; its contents are not touched.
pub async fn update_namespace(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    let document = document::namespace(&body)?;
    let store = state.store.clone();
    let updated = blocking(move || {
        store.write_metadefs(|catalog| {
            let mut namespace = visible_namespace(catalog, &caller, &name)?;
            require_admin(&caller, "modify_metadef_namespace")?;
            if document.namespace != namespace.namespace
                && catalog.namespace(&document.namespace)?.is_some()
            {
                return Err(Error::conflict(format!(
                    "A metadata definition namespace named {} already exists",
                    document.namespace
                )));
            }
            namespace.namespace = document.namespace.clone();
            namespace.display_name = document.display_name.clone();
            namespace.description = document.description.clone();
            namespace.public = document.public.unwrap_or(false);
            namespace.protected = document.protected.unwrap_or(false);
            namespace.owner = Some(document.owner.clone().unwrap_or(caller.project_id.clone()));
            namespace.updated_at = Some(now_micros());
            catalog.put_namespace(&namespace, Some(&name))?;
            Ok(namespace)
        })
    })
    .await?;
    tracing::info!(namespace = %updated.namespace, "metadata definition namespace updated");
    Ok(Json(finish_namespace(
        namespace_fields(&updated),
        &updated.namespace,
    )))
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#delete-namespace>
///
/// Deletes the namespace and everything in it, in one transaction.
pub async fn delete_namespace(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    empty_namespace(state, caller, name, Contents::All).await
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#delete-all-objects>
pub async fn delete_objects(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    empty_namespace(state, caller, name, Contents::Objects).await
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#remove-all-properties>
pub async fn delete_properties(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    empty_namespace(state, caller, name, Contents::Properties).await
}

/// <https://docs.openstack.org/api-ref/image/v2/metadefs-index.html#delete-all-tag-definitions>
pub async fn delete_tags(
    State(state): State<AppState>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<Response, Error> {
    empty_namespace(state, caller, name, Contents::Tags).await
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contents {
    /// The namespace itself, with everything in it.
    All,
    Objects,
    Properties,
    Tags,
}

/// Glance checks `delete_metadef_namespace` (and for tags also `delete_metadef_tags`) and
/// the namespace's protection for all four.
async fn empty_namespace(
    state: AppState,
    caller: Caller,
    name: String,
    contents: Contents,
) -> Result<Response, Error> {
    let store = state.store.clone();
    blocking(move || {
        store.write_metadefs(|catalog| {
            let namespace = visible_namespace(catalog, &caller, &name)?;
            require_admin(&caller, "delete_metadef_namespace")?;
            if contents == Contents::Tags {
                require_admin(&caller, "delete_metadef_tags")?;
            }
            if namespace.protected {
                return Err(Error::forbidden(format!(
                    "Metadata definition namespace {name} is protected: set protected to false before deleting it or its contents"
                )));
            }
            match contents {
                Contents::All => catalog.remove_namespace(&namespace)?,
                Contents::Objects => catalog.clear_objects(&namespace)?,
                Contents::Properties => catalog.clear_properties(&namespace)?,
                Contents::Tags => catalog.clear_tags(&namespace)?,
            }
            Ok(())
        })
    })
    .await?;
    Ok(no_content())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_directions_are_checked() {
        assert_eq!(parse_limit("3").unwrap(), 3);
        assert!(parse_limit("-1").is_err());
        assert!(parse_limit("x").is_err());
        let pairs = query_pairs(Some("sort_dir=up"));
        assert!(sort_descending(&pairs).is_err());
        assert!(!sort_descending(&query_pairs(Some("sort_dir=asc"))).unwrap());
    }

    #[test]
    fn protected_message_names_the_item() {
        assert_eq!(
            super::super::protected("Object Gadget").message,
            "Object Gadget belongs to a protected namespace and cannot be deleted; unprotect the namespace first"
        );
    }
}
