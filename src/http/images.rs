//! Image metadata handlers: create, list, show, update (JSON-patch), delete, deactivate and
//! reactivate. Image data is in `image_data`, tags in `tags`.

use axum::Json;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::wire::{
    ImageJson, apply_property, check_quotas, check_writable, image_view, is_core, now_micros,
};
use super::{
    AppState, BaseUrl, Error, JsonBody, blocking, list_query, no_content, read_small_body,
};
use crate::kv::{ImageId, ImageRecord, ImageStatus, InsertOutcome, ListOutcome, ListRequest};
use crate::policy::Caller;

/// The JSON-patch media types Glance accepts on PATCH.
const PATCH_V2_1: &str = "application/openstack-images-v2.1-json-patch";
const PATCH_V2_0: &str = "application/openstack-images-v2.0-json-patch";
const ACCEPT_PATCH: &str =
    "application/openstack-images-v2.0-json-patch, application/openstack-images-v2.1-json-patch";

/// Loads an image the caller can see, or 404.
pub async fn load_visible(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
) -> Result<ImageRecord, Error> {
    let Some(id) = ImageId::parse(raw_id) else {
        return Err(Error::no_image(raw_id));
    };
    let store = state.store.clone();
    let record = blocking(move || Ok(store.image(id)?)).await?;
    match record {
        Some(record) if caller.can_see(&record) => Ok(record),
        _ => Err(Error::no_image(raw_id)),
    }
}

/// Applies `change` to an image the caller may modify, in one transaction, and bumps
/// `updated_at`. 404 if the caller cannot see the image; 403 (naming the policy `action`) if
/// they may not change it.
pub async fn modify_image(
    state: &AppState,
    caller: Caller,
    raw_id: &str,
    action: &'static str,
    change: impl FnOnce(&mut ImageRecord, &Caller) -> Result<(), Error> + Send + 'static,
) -> Result<ImageRecord, Error> {
    let Some(id) = ImageId::parse(raw_id) else {
        return Err(Error::no_image(raw_id));
    };
    let store = state.store.clone();
    let raw = raw_id.to_owned();
    let changed = blocking(move || {
        store.update_image(id, |record| {
            if !caller.can_see(record) {
                return Err(Error::no_image(&raw));
            }
            if !caller.can_modify(record) {
                return Err(Error::not_authorized(action));
            }
            change(record, &caller)?;
            record.updated_at = now_micros().max(record.updated_at);
            Ok(())
        })
    })
    .await?;
    changed.ok_or_else(|| Error::no_image(raw_id))
}

/// A new `queued` image owned by the caller's project, with the client's `fields` applied
/// and checked (writable, valid, within the per-image quotas, allowed to the caller).
pub fn new_image(
    fields: &serde_json::Map<String, Value>,
    caller: &Caller,
    limits: &crate::config::PerImageQuotas,
) -> Result<ImageRecord, Error> {
    let now = now_micros();
    let mut record = ImageRecord::new(ImageId::random(), Some(caller.project_id.clone()), now);
    for (key, value) in fields {
        check_writable(key)?;
        apply_property(&mut record, key, value, caller)?;
    }
    if !caller.can_create(record.owner.as_deref()) {
        return Err(Error::not_authorized("add_image"));
    }
    check_quotas(&record, limits)?;
    Ok(record)
}

/// Makes and stores a new image from the client's `fields` (see `new_image`), within the
/// project's image count: what `POST /v2/images` and the UI's create form do.
pub async fn insert_new_image(
    state: &AppState,
    caller: &Caller,
    fields: &serde_json::Map<String, Value>,
) -> Result<ImageRecord, Error> {
    let record = new_image(fields, caller, &state.config.per_image)?;
    let store = state.store.clone();
    let stored = record.clone();
    let outcome = blocking(move || {
        if let Some(owner) = &stored.owner {
            store.check_image_count(owner)?;
        }
        Ok(store.insert_image(&stored)?)
    })
    .await?;
    if outcome == InsertOutcome::IdTaken {
        return Err(Error::conflict(format!(
            "An image with ID {} exists or existed",
            record.id
        )));
    }
    Ok(record)
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#create-image
pub async fn create_image(
    State(state): State<AppState>,
    caller: Caller,
    BaseUrl(base): BaseUrl,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Value::Object(fields) = body else {
        return Err(Error::bad_request(
            "Provided object does not match schema 'image': the body must be a JSON object",
        ));
    };
    let record = insert_new_image(&state, &caller, &fields).await?;
    tracing::info!(image = %record.id, project = %caller.project_id, "image created");

    let location = format!("{base}/v2/images/{}", record.id);
    let mut response = (StatusCode::CREATED, Json(image_view(&record))).into_response();
    let response_headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response_headers.insert(header::LOCATION, value);
    }
    discovery_headers(&state, response_headers);
    Ok(response)
}

/// `OpenStack-image-import-methods` (the methods enabled; an empty field value is not
/// allowed, so no methods means no header, as in Glance) and `OpenStack-image-store-ids`.
fn discovery_headers(state: &AppState, headers: &mut axum::http::HeaderMap) {
    if !state.config.import_methods.is_empty()
        && let Ok(value) = HeaderValue::from_str(&state.config.import_methods.join(","))
    {
        headers.insert("OpenStack-image-import-methods", value);
    }
    if let Ok(value) = HeaderValue::from_str(&state.store.store_ids().join(",")) {
        headers.insert("OpenStack-image-store-ids", value);
    }
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#show-image
pub async fn show_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Response, Error> {
    let record = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_read() {
        return Err(Error::not_authorized("get_image"));
    }
    let mut response = Json(image_view(&record)).into_response();
    discovery_headers(&state, response.headers_mut());
    Ok(response)
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#list-images
pub async fn list_images(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    if !caller.can_read() {
        return Err(Error::not_authorized("get_images"));
    }
    let params = list_query::parse(query.as_deref())?;
    let (images, more, params) = list_page(&state, caller, params, false).await?;

    let encode = |pairs: &[(String, String)]| {
        form_urlencoded::Serializer::new(String::new())
            .extend_pairs(
                pairs
                    .iter()
                    .map(|(key, value)| (key.as_str(), value.as_str())),
            )
            .finish()
    };
    let query = encode(&params.link_pairs);
    let first = if query.is_empty() {
        "/v2/images".to_owned()
    } else {
        format!("/v2/images?{query}")
    };
    let next = match images.last() {
        Some(last) if more => {
            let mut pairs = params.link_pairs.clone();
            pairs.push(("marker".into(), last.id.to_string()));
            Some(format!("/v2/images?{}", encode(&pairs)))
        }
        _ => None,
    };
    Ok(Json(ImageList {
        images: images.iter().map(ImageJson).collect(),
        first,
        schema: "/v2/schemas/images",
        next,
    })
    .into_response())
}

/// One page of the images `params` asks for, as `GET /v2/images` and the UI's list show
/// them, and whether more follow. `backwards` walks from the marker in the opposite order (the
/// page before it, for the UI's "previous" link), still returning the page in the requested
/// order.
pub async fn list_page(
    state: &AppState,
    caller: Caller,
    params: list_query::ListParams,
    backwards: bool,
) -> Result<(Vec<ImageRecord>, bool, list_query::ListParams), Error> {
    let store = state.store.clone();
    let (outcome, params) = blocking(move || {
        let flip = |direction: crate::kv::Direction| match (backwards, direction) {
            (false, direction) => direction,
            (true, crate::kv::Direction::Asc) => crate::kv::Direction::Desc,
            (true, crate::kv::Direction::Desc) => crate::kv::Direction::Asc,
        };
        let sort: Vec<_> = params
            .sort
            .iter()
            .map(|&(key, direction)| (key, flip(direction)))
            .collect();
        let request = ListRequest {
            sort: &sort,
            tiebreak: flip(params.tiebreak),
            marker: params.marker,
            limit: params.limit,
            candidates: params.filters.candidates(&caller),
        };
        let visible = |record: &ImageRecord| caller.can_see(record);
        let matches = |record: &ImageRecord| params.filters.matches(record, &caller);
        let outcome = store.list_images(&request, &visible, &matches)?;
        Ok((outcome, params))
    })
    .await?;
    match outcome {
        ListOutcome::Page { mut images, more } => {
            if backwards {
                images.reverse();
            }
            Ok((images, more, params))
        }
        ListOutcome::MarkerNotFound => {
            let marker = params.marker.map(|id| id.to_string()).unwrap_or_default();
            Err(list_query::marker_not_found(&marker))
        }
    }
}

/// A page of images, serialized without building JSON values.
#[derive(serde::Serialize)]
struct ImageList<'a> {
    images: Vec<ImageJson<'a>>,
    first: String,
    schema: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

/// The JSON-patch dialect of a PATCH, from its media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum PatchDialect {
    /// `application/openstack-images-v2.0-json-patch`: draft-04 style, `{"replace": "/name"}`.
    V2_0,
    /// `application/openstack-images-v2.1-json-patch`: RFC 6902 style, `{"op": "replace"}`.
    V2_1,
}

/// One JSON-patch operation, normalized from either patch dialect.
pub(super) struct PatchOperation {
    pub op: String,
    pub path: String,
    pub value: Option<Value>,
}

fn parse_patch(body: &Value, dialect: PatchDialect) -> Result<Vec<PatchOperation>, Error> {
    let Some(items) = body.as_array() else {
        return Err(Error::bad_request(
            "The request body must be a JSON array of patch operations",
        ));
    };
    let mut operations = Vec::with_capacity(items.len());
    for item in items {
        let Some(object) = item.as_object() else {
            return Err(Error::bad_request(
                "Each patch operation must be a JSON object",
            ));
        };
        let (op, path) = if dialect == PatchDialect::V2_0 {
            // The older dialect names the operation as the key: {"replace": "/name", "value": ..}.
            let found = ["add", "remove", "replace"]
                .iter()
                .find_map(|op| object.get(*op).map(|path| (op.to_string(), path.clone())));
            let Some((op, path)) = found else {
                return Err(Error::bad_request(
                    "Patch operation must be one of: add, remove, replace",
                ));
            };
            (op, path)
        } else {
            let op = object
                .get("op")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            if !["add", "remove", "replace"].contains(&op.as_str()) {
                return Err(Error::bad_request(format!(
                    "Unsupported patch operation `{op}`: use add, remove or replace"
                )));
            }
            (op, object.get("path").cloned().unwrap_or(Value::Null))
        };
        let Some(path) = path.as_str() else {
            return Err(Error::bad_request("Each patch operation needs a path"));
        };
        let value = object.get("value").cloned();
        if op != "remove" && value.is_none() {
            return Err(Error::bad_request(format!(
                "The {op} operation needs a value"
            )));
        }
        operations.push(PatchOperation {
            op,
            path: parse_pointer(path)?,
            value,
        });
    }
    Ok(operations)
}

/// A one-level JSON pointer (`/name`), unescaped.
fn parse_pointer(pointer: &str) -> Result<String, Error> {
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(Error::bad_request(format!(
            "Invalid path {pointer}: it must start with /"
        )));
    };
    if rest.is_empty() {
        return Err(Error::bad_request("The patch path names no property"));
    }
    if rest.starts_with("locations/") || rest == "locations" {
        return Err(Error::forbidden(
            "Image locations are not exposed by this server",
        ));
    }
    if rest.contains('/') {
        return Err(Error::bad_request(format!(
            "Invalid path {pointer}: nested paths are not supported"
        )));
    }
    // Per RFC 6901, ~1 is '/' and ~0 is '~'; in this order so that "~01" becomes "~1".
    Ok(rest.replace("~1", "/").replace("~0", "~"))
}

pub(super) fn apply_patch(
    record: &mut ImageRecord,
    dialect: PatchDialect,
    operations: &[PatchOperation],
    caller: &Caller,
    limits: &crate::config::PerImageQuotas,
) -> Result<(), Error> {
    for operation in operations {
        let key = operation.path.as_str();
        if key == "id" {
            return Err(Error::forbidden("Attribute 'id' is read-only."));
        }
        check_writable(key)?;
        match operation.op.as_str() {
            "remove" => {
                if is_core(key) {
                    return Err(Error::forbidden(format!(
                        "Property {key} cannot be removed"
                    )));
                }
                if record.properties.remove(key).is_none() {
                    return Err(Error::conflict(format!("Property {key} does not exist")));
                }
            }
            op => {
                let present = is_core(key) || record.properties.contains_key(key);
                if op == "replace" && !present {
                    return Err(Error::conflict(format!("Property {key} does not exist")));
                }
                // The 2.0 dialect follows draft-04 JSON patch, where `add` does not replace;
                // Glance counts every core attribute as present.
                if op == "add" && dialect == PatchDialect::V2_0 && present {
                    return Err(Error::conflict(format!("Property {key} already present")));
                }
                apply_property(
                    record,
                    key,
                    operation.value.as_ref().unwrap_or(&Value::Null),
                    caller,
                )?;
            }
        }
    }
    check_quotas(record, limits)
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#update-image
pub async fn update_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    request: Request,
) -> Result<Json<Value>, Error> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(|value| {
            value
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let dialect = match content_type.as_str() {
        PATCH_V2_1 => PatchDialect::V2_1,
        PATCH_V2_0 => PatchDialect::V2_0,
        other => {
            return Err(Error::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Image PATCH takes one of: {ACCEPT_PATCH}; got '{other}'"),
            )
            .with_header(
                header::HeaderName::from_static("accept-patch"),
                ACCEPT_PATCH,
            ));
        }
    };
    // Look the image up first so that an unknown image is 404 whatever the body says.
    load_visible(&state, &caller, &image_id).await?;
    let bytes = read_small_body(request, &state).await?;
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|_| Error::bad_request("Malformed JSON in request body."))?;
    let operations = parse_patch(&body, dialect)?;
    let limits = state.config.per_image;
    let record = modify_image(
        &state,
        caller,
        &image_id,
        "modify_image",
        move |record, caller| apply_patch(record, dialect, &operations, caller, &limits),
    )
    .await?;
    Ok(Json(image_view(&record)))
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#delete-image
pub async fn delete_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Response, Error> {
    remove_image(&state, caller, &image_id).await?;
    Ok(no_content())
}

/// Deletes an image the caller may delete (v2's `delete_image` rule) unless it is protected.
pub async fn remove_image(state: &AppState, caller: Caller, image_id: &str) -> Result<(), Error> {
    let Some(id) = ImageId::parse(image_id) else {
        return Err(Error::no_image(image_id));
    };
    let store = state.store.clone();
    let raw = image_id.to_owned();
    let deleted = blocking(move || {
        store.delete_image(id, now_micros(), |record| {
            if !caller.can_see(record) {
                return Err(Error::no_image(&raw));
            }
            if !caller.can_modify(record) {
                return Err(Error::not_authorized("delete_image"));
            }
            if record.protected {
                return Err(Error::forbidden(format!(
                    "Image {raw} is protected and cannot be deleted"
                )));
            }
            Ok(())
        })
    })
    .await?;
    match deleted {
        Some(_) => {
            tracing::info!(image = %image_id, "image deleted");
            Ok(())
        }
        None => Err(Error::no_image(image_id)),
    }
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#deactivate-image
pub async fn deactivate_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Response, Error> {
    set_active(state, caller, image_id, false).await
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#reactivate-image
pub async fn reactivate_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Response, Error> {
    set_active(state, caller, image_id, true).await
}

async fn set_active(
    state: AppState,
    caller: Caller,
    image_id: String,
    active: bool,
) -> Result<Response, Error> {
    let action = if active { "reactivate" } else { "deactivate" };
    modify_image(&state, caller, &image_id, action, move |record, _| {
        let (from, to, verb) = if active {
            (ImageStatus::Deactivated, ImageStatus::Active, "reactivate")
        } else {
            (ImageStatus::Active, ImageStatus::Deactivated, "deactivate")
        };
        if record.status == to {
            return Ok(());
        }
        if record.status != from {
            return Err(Error::forbidden(format!(
                "Cannot {verb} an image in status '{}'",
                record.status.as_str()
            )));
        }
        record.status = to;
        Ok(())
    })
    .await?;
    Ok(no_content())
}
