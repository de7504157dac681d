//! Interoperable import and tasks: `POST /v2/images/{id}/import`, `GET /v2/images/{id}/tasks`,
//! `/v2/tasks`, and the discovery and quota documents that go with them (`/v2/info/import`,
//! `/v2/info/stores/detail`, `/v2/info/usage`). `PUT /stage` is in `image_data`, beside `/file`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::images::load_visible;
use super::wire::{format_time, micro_time, now_micros};
use super::{AppState, Error, JsonBody, blocking};
use crate::importer::{Source, Targets, new_task};
use crate::kv::{
    ImageId, ImageRecord, ImageStatus, InsertOutcome, TaskKind, TaskRecord, TaskStatus,
};
use crate::policy::Caller;
use crate::store::IMPORT_TASK;

/// The id the response middleware gives each request, for the task records.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

pub(super) fn request_id(parts: &Parts) -> Option<String> {
    parts.extensions.get::<RequestId>().map(|id| id.0.clone())
}

fn json_text(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// A task as `GET /v2/images/{id}/tasks` shows it (every field, as Glance's DB row).
fn image_task_view(task: &TaskRecord) -> Value {
    json!({
        "id": task.id.to_string(),
        "type": task.kind.as_str(),
        "status": task.status.as_str(),
        "owner": task.owner,
        "expires_at": task.expires_at.map(micro_time),
        "created_at": micro_time(task.created_at),
        "updated_at": micro_time(task.updated_at),
        "deleted_at": null,
        "deleted": false,
        "image_id": task.image_id.map(|id| id.to_string()),
        "request_id": task.request_id,
        "user_id": task.user_id,
        "input": json_text(&task.input),
        "result": task.result.as_deref().map(json_text),
        "message": task.message,
    })
}

/// A task as `GET /v2/tasks/{id}` and `POST /v2/tasks` show it.
fn task_view(task: &TaskRecord) -> Value {
    let mut view = json!({
        "id": task.id.to_string(),
        "type": task.kind.as_str(),
        "status": task.status.as_str(),
        "owner": task.owner,
        "input": json_text(&task.input),
        "result": task.result.as_deref().map(json_text),
        "message": task.message,
        "created_at": format_time(task.created_at),
        "updated_at": format_time(task.updated_at),
        "self": format!("/v2/tasks/{}", task.id),
        "schema": "/v2/schemas/task",
    });
    if let Some(image) = task.image_id {
        view["image_id"] = image.to_string().into();
    }
    if let Some(request_id) = &task.request_id {
        view["request_id"] = request_id.clone().into();
    }
    if let Some(user) = &task.user_id {
        view["user_id"] = user.clone().into();
    }
    if let Some(expires) = task.expires_at {
        view["expires_at"] = format_time(expires).into();
    }
    view
}

/// A task in `GET /v2/tasks`: the summary fields only, as Glance lists them.
fn task_summary(task: &TaskRecord) -> Value {
    let mut view = json!({
        "id": task.id.to_string(),
        "type": task.kind.as_str(),
        "status": task.status.as_str(),
        "owner": task.owner,
        "created_at": format_time(task.created_at),
        "updated_at": format_time(task.updated_at),
        "self": format!("/v2/tasks/{}", task.id),
        "schema": "/v2/schemas/task",
    });
    if let Some(expires) = task.expires_at {
        view["expires_at"] = format_time(expires).into();
    }
    view
}

fn enabled(state: &AppState, method: &str) -> bool {
    state
        .config
        .import_methods
        .iter()
        .any(|name| name == method)
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#import-an-image
pub async fn import_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    parts: Parts,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let record = load_visible(&state, &caller, &image_id).await?;
    let Value::Object(body) = body else {
        return Err(Error::bad_request(
            "The import request must be a JSON object.",
        ));
    };
    let Some(method) = body.get("method").and_then(Value::as_object) else {
        return Err(Error::bad_request(
            "Import request requires a 'method' field.",
        ));
    };
    let name = method
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !enabled(&state, name) {
        return Err(Error::bad_request(format!(
            "Unknown import method name '{name}'."
        )));
    }
    let header_store = parts
        .headers
        .get("x-image-meta-store")
        .map(|value| value.to_str().unwrap_or("\u{fffd}").trim().to_owned());
    let mut targets = import_targets(&state, &body, header_store.as_deref())?;
    if name == "copy-image" {
        // Glance's default policy: copying to further stores is for admins.
        if !caller.is_admin() {
            return Err(Error::not_authorized("copy_image"));
        }
        if record.status != ImageStatus::Active {
            return Err(Error::conflict(format!(
                "Image needs to be in 'active' status for copy-image, not '{}'",
                record.status.as_str()
            )));
        }
        let present = record
            .data
            .as_ref()
            .map(|data| data.stores.clone())
            .unwrap_or_default();
        targets.stores.retain(|store| !present.contains(store));
        if targets.stores.is_empty() {
            return Err(Error::conflict(
                "The image is already in every store asked for",
            ));
        }
    } else if !caller.can_modify(&record) {
        return Err(Error::not_authorized("modify_image"));
    }
    let source = match name {
        "glance-direct" => Source::Staged,
        "copy-image" => Source::Copy,
        _ => {
            let Some(uri) = method.get("uri").and_then(Value::as_str) else {
                return Err(Error::bad_request(
                    "web-download requires a 'uri' in 'method'.",
                ));
            };
            let url = state.importer.check_url(uri).map_err(|reason| {
                tracing::info!(%uri, %reason, "web-download refused");
                Error::bad_request(format!(
                    "URI for web-download does not pass filtering: {uri}"
                ))
            })?;
            Source::Web(url)
        }
    };
    start_import(
        &state,
        &caller,
        &record,
        source,
        targets,
        Value::Object(body.clone()),
        request_id(&parts),
    )
    .await?;
    Ok(StatusCode::ACCEPTED.into_response())
}

/// Starts an import of `record` from `source`: its task is recorded and the image moves to
/// `importing` in one step (refused with 409 unless `import_allowed`), then the importer runs
/// it in the background. `import_req` is the request as the task's input shows it. Returns the
/// task's id.
pub(super) async fn start_import(
    state: &AppState,
    caller: &Caller,
    record: &ImageRecord,
    source: Source,
    targets: Targets,
    import_req: Value,
    request_id: Option<String>,
) -> Result<ImageId, Error> {
    let mut input = json!({
        "image_id": record.id.to_string(),
        "import_req": import_req,
        "backend": targets.stores,
    });
    let method = match &source {
        Source::Web(url) => {
            input["uri"] = url.to_string().into();
            "web-download"
        }
        Source::Staged => "glance-direct",
        Source::Copy => "copy-image",
    };
    let task = new_task(
        TaskKind::ApiImageImport,
        record.owner.as_deref().unwrap_or(&caller.project_id),
        caller.user_id.as_deref(),
        Some(record.id),
        request_id,
        input,
    );
    let store = state.store.clone();
    let (task_id, image) = (task.id, record.id);
    let staged = matches!(source, Source::Staged);
    let copy = matches!(source, Source::Copy);
    let stores = targets.stores.clone();
    blocking(move || {
        store.begin_import(image, task_id, now_micros(), &stores, copy, |image| {
            if copy {
                return match image.status {
                    ImageStatus::Active
                        if image
                            .properties
                            .get(IMPORT_TASK)
                            .is_none_or(String::is_empty) =>
                    {
                        Ok(())
                    }
                    ImageStatus::Active => Err(Error::conflict(
                        "A copy of this image to other stores is already in progress",
                    )),
                    other => Err(Error::conflict(format!(
                        "Image needs to be in 'active' status for copy-image, not '{}'",
                        other.as_str()
                    ))),
                };
            }
            import_allowed(image, staged)
        })?;
        store.insert_task(&task)?;
        Ok(())
    })
    .await?;
    tracing::info!(image = %image, task = %task_id, method, "import accepted");
    state.importer.start(task_id, image, source, targets);
    Ok(task_id)
}

/// The stores of an import request: `stores` (each must be configured: 409 otherwise, as
/// in Glance), `all_stores`, the `X-Image-Meta-Store` header, or the default store; with
/// `all_stores_must_succeed` (default true).
fn import_targets(
    state: &AppState,
    body: &Map<String, Value>,
    header: Option<&str>,
) -> Result<Targets, Error> {
    let all = match body.get("all_stores") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(all)) => *all,
        Some(_) => return Err(Error::bad_request("'all_stores' must be a boolean.")),
    };
    let must_succeed = match body.get("all_stores_must_succeed") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(must)) => *must,
        Some(_) => {
            return Err(Error::bad_request(
                "'all_stores_must_succeed' must be a boolean.",
            ));
        }
    };
    let stores = match body.get("stores") {
        None | Some(Value::Null) if all && header.is_some() => {
            return Err(Error::bad_request(
                "All_stores parameter can't be used with x-image-meta-store header or stores parameter",
            ));
        }
        None | Some(Value::Null) if all => state.store.store_ids(),
        None | Some(Value::Null) => match header {
            Some(id) if state.store.has_store(id) => vec![id.to_owned()],
            Some(id) => return Err(Error::conflict(format!("Unknown store: {id}"))),
            None => vec![state.store.default_store().to_owned()],
        },
        Some(_) if header.is_some() => {
            return Err(Error::bad_request(
                "Stores parameter and x-image-meta-store header can't be both specified",
            ));
        }
        Some(_) if all => {
            return Err(Error::bad_request(
                "All_stores parameter can't be used with x-image-meta-store header or stores parameter",
            ));
        }
        Some(Value::Array(stores)) => {
            let mut targets: Vec<String> = Vec::new();
            for store in stores {
                let Some(id) = store.as_str().filter(|id| state.store.has_store(id)) else {
                    return Err(Error::conflict(format!("Unknown store: {store}")));
                };
                if !targets.iter().any(|known| known == id) {
                    targets.push(id.to_owned());
                }
            }
            if targets.is_empty() {
                vec![state.store.default_store().to_owned()]
            } else {
                targets
            }
        }
        Some(_) => return Err(Error::bad_request("'stores' must be a list of store ids.")),
    };
    Ok(Targets {
        stores,
        must_succeed,
    })
}

/// Whether an image may start an import: glance-direct needs staged data (`uploading`),
/// web-download a `queued` image; both need the formats set.
fn import_allowed(image: &ImageRecord, staged: bool) -> Result<(), Error> {
    if image.status == ImageStatus::Importing {
        return Err(Error::conflict(
            "An import of this image is already in progress",
        ));
    }
    if image.status == ImageStatus::Active {
        return Err(Error::conflict(
            "Image with status active cannot be target for import",
        ));
    }
    if image.container_format.is_none() {
        return Err(Error::conflict(
            "'container_format' needs to be set before import",
        ));
    }
    if image.disk_format.is_none() {
        return Err(Error::conflict(
            "'disk_format' needs to be set before import",
        ));
    }
    if staged && !(image.status == ImageStatus::Uploading && image.data.is_some()) {
        return Err(Error::conflict(
            "Image needs to be staged before 'glance-direct' method can be used",
        ));
    }
    if !staged && image.status != ImageStatus::Queued {
        return Err(Error::conflict(format!(
            "Image needs to be in 'queued' status for web-download, not '{}'",
            image.status.as_str()
        )));
    }
    Ok(())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#get-an-image-s-tasks
pub async fn image_tasks(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Json<Value>, Error> {
    let record = load_visible(&state, &caller, &image_id).await?;
    let store = state.store.clone();
    let mut tasks = blocking(move || {
        store.expire_tasks(now_micros())?;
        Ok(store.image_tasks(record.id)?)
    })
    .await?;
    tasks.sort_by_key(|task| std::cmp::Reverse(task.created_at));
    Ok(Json(json!({
        "tasks": tasks.iter().map(image_task_view).collect::<Vec<_>>(),
    })))
}

/// Tasks are for admins (Glance's `tasks_api_access`).
fn admin_only(caller: &Caller, action: &str) -> Result<(), Error> {
    if caller.is_admin() {
        Ok(())
    } else {
        Err(Error::not_authorized(action))
    }
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#list-tasks
pub async fn list_tasks(
    State(state): State<AppState>,
    caller: Caller,
    uri: axum::http::Uri,
) -> Result<Json<Value>, Error> {
    admin_only(&caller, "get_tasks")?;
    let query: Vec<(String, String)> = form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .into_owned()
        .collect();
    let mut limit = 25usize;
    let mut marker = None;
    let mut sort_key = "created_at".to_owned();
    let mut descending = true;
    let mut status = None;
    let mut kind = None;
    for (name, value) in &query {
        match name.as_str() {
            "limit" => {
                limit = value
                    .parse::<usize>()
                    .map_err(|_| Error::bad_request("limit param must be an integer"))?
                    .min(1000)
            }
            "marker" => marker = Some(value.clone()),
            "sort_key" => {
                if ![
                    "created_at",
                    "updated_at",
                    "id",
                    "status",
                    "type",
                    "expires_at",
                ]
                .contains(&value.as_str())
                {
                    return Err(Error::bad_request(format!("Invalid sort_key: {value}")));
                }
                sort_key = value.clone();
            }
            "sort_dir" => {
                descending = match value.as_str() {
                    "desc" => true,
                    "asc" => false,
                    _ => {
                        return Err(Error::bad_request(format!(
                            "Invalid sort direction: {value}"
                        )));
                    }
                }
            }
            "status" => {
                status =
                    Some(TaskStatus::parse(value).ok_or_else(|| {
                        Error::bad_request(format!("Invalid status value: {value}"))
                    })?)
            }
            "type" => {
                if !["import", "api_image_import"].contains(&value.as_str()) {
                    return Err(Error::bad_request(format!("Invalid type value: {value}")));
                }
                kind = Some(value.clone())
            }
            _ => {}
        }
    }
    let store = state.store.clone();
    // Expired tasks go before they could be listed (the hourly upkeep removes them too).
    let mut tasks = blocking(move || {
        store.expire_tasks(now_micros())?;
        Ok(store.tasks()?)
    })
    .await?;
    tasks.retain(|task| {
        status.is_none_or(|status| task.status == status)
            && kind
                .as_deref()
                .is_none_or(|kind| task.kind.as_str() == kind)
    });
    let key = |task: &TaskRecord| -> (String, String) {
        let primary = match sort_key.as_str() {
            "updated_at" => format!("{:020}", task.updated_at),
            "id" => task.id.to_string(),
            "status" => task.status.as_str().to_owned(),
            "type" => task.kind.as_str().to_owned(),
            "expires_at" => format!("{:020}", task.expires_at.unwrap_or(0)),
            _ => format!("{:020}", task.created_at),
        };
        (primary, task.id.to_string())
    };
    tasks.sort_by_key(key);
    if descending {
        tasks.reverse();
    }
    if let Some(marker) = &marker {
        let Some(position) = tasks.iter().position(|task| task.id.to_string() == *marker) else {
            return Err(Error::not_found(format!("No task found with ID {marker}")));
        };
        tasks.drain(..=position);
    }
    let more = tasks.len() > limit;
    tasks.truncate(limit);
    let first = {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query.iter().filter(|(name, _)| name != "marker"))
            .finish();
        if query.is_empty() {
            "/v2/tasks".to_owned()
        } else {
            format!("/v2/tasks?{query}")
        }
    };
    let mut page = json!({
        "tasks": tasks.iter().map(task_summary).collect::<Vec<_>>(),
        "first": first,
        "schema": "/v2/schemas/tasks",
    });
    if more && let Some(last) = tasks.last() {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query.iter().filter(|(name, _)| name != "marker"))
            .append_pair("marker", &last.id.to_string())
            .finish();
        page["next"] = format!("/v2/tasks?{query}").into();
    }
    Ok(Json(page))
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#show-task-details
pub async fn show_task(
    State(state): State<AppState>,
    caller: Caller,
    Path(task_id): Path<String>,
) -> Result<Json<Value>, Error> {
    admin_only(&caller, "get_task")?;
    let missing = || Error::not_found(format!("Task with identifier {task_id} not found"));
    let id = ImageId::parse(&task_id).ok_or_else(missing)?;
    let store = state.store.clone();
    let task = blocking(move || Ok(store.task(id)?))
        .await?
        .ok_or_else(missing)?;
    Ok(Json(task_view(&task)))
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#create-task
///
/// The old `import` task: a new image made from `image_properties`, its data fetched from
/// `import_from` under the web-download rules (a URL that does not pass them is 400, as in
/// current Glance).
pub async fn create_task(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    admin_only(&caller, "add_task")?;
    if body.get("type").and_then(Value::as_str) != Some("import") {
        return Err(Error::bad_request("Task type must be 'import'."));
    }
    let Some(input) = body.get("input").and_then(Value::as_object) else {
        return Err(Error::bad_request("Task input must be an object."));
    };
    let Some(import_from) = input.get("import_from").and_then(Value::as_str) else {
        return Err(Error::bad_request("Task input requires 'import_from'."));
    };
    if input
        .get("import_from_format")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(Error::bad_request(
            "Task input requires 'import_from_format'.",
        ));
    }
    let url = state.importer.check_url(import_from).map_err(|_| {
        Error::bad_request(format!(
            "URI for web-download does not pass filtering: {import_from}"
        ))
    })?;
    let empty = Map::new();
    let properties = input
        .get("image_properties")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let record = super::images::new_image(properties, &caller, &state.config.per_image)?;
    let task = new_task(
        TaskKind::Import,
        &caller.project_id,
        caller.user_id.as_deref(),
        Some(record.id),
        request_id(&parts),
        Value::Object(input.clone()),
    );
    let view = task_view(&task);
    let store = state.store.clone();
    let (task_id, image) = (task.id, record.id);
    let project = caller.project_id.clone();
    let default = state.store.default_store().to_owned();
    blocking(move || {
        store.check_image_count(&project)?;
        if store.insert_image(&record)? == InsertOutcome::IdTaken {
            return Err(Error::conflict("The image id is taken"));
        }
        store.begin_import(
            image,
            task_id,
            now_micros(),
            std::slice::from_ref(&default),
            false,
            |image| import_allowed(image, false),
        )?;
        store.insert_task(&task)?;
        Ok(())
    })
    .await?;
    let targets = Targets {
        stores: vec![state.store.default_store().to_owned()],
        must_succeed: true,
    };
    state
        .importer
        .start(task_id, image, Source::Web(url), targets);
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#import-methods-and-values-discovery
pub async fn import_info(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    Json(json!({
        "import-methods": {
            "description": "Import methods available.",
            "type": "array",
            "value": state.config.import_methods,
        }
    }))
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#list-stores-detail (admin).
pub async fn stores_detail(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Value>, Error> {
    admin_only(&caller, "stores_info_detail")?;
    let stores: Vec<Value> = state
        .store
        .store_infos()
        .into_iter()
        .map(|info| {
            let mut view = json!({
                "id": info.id,
                "type": info.kind,
                "properties": info.properties.into_iter().map(|(key, value)| (key.to_owned(), value)).collect::<Map<String, Value>>(),
                "weight": info.weight,
            });
            if let Some(description) = info.description {
                view["description"] = description.into();
            }
            if info.default {
                view["default"] = "true".into();
            }
            view
        })
        .collect();
    Ok(Json(json!({ "stores": stores })))
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#delete-image-from-store (admin):
/// removes one store's copy of an active image's bytes, never the last one.
pub async fn delete_from_store(
    State(state): State<AppState>,
    caller: Caller,
    Path((store_id, image_id)): Path<(String, String)>,
) -> Result<StatusCode, Error> {
    admin_only(&caller, "delete_image_location")?;
    let Some(id) = ImageId::parse(&image_id) else {
        return Err(Error::no_image(&image_id));
    };
    let store = state.store.clone();
    let removed =
        blocking(move || store.remove_from_store::<Error>(id, &store_id, |_| Ok(()))).await?;
    match removed {
        Some(record) => {
            tracing::info!(image = %record.id, "removed the image's bytes from a store");
            Ok(StatusCode::NO_CONTENT)
        }
        None => Err(Error::no_image(&image_id)),
    }
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#get-quota-usage
pub async fn usage(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, Error> {
    let store = state.store.clone();
    let project = caller.project_id.clone();
    let (quotas, usage) =
        blocking(move || Ok((store.quotas(&project)?, store.usage(&project)?))).await?;
    let limit =
        |limit: Option<u64>| limit.map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
    Ok(Json(json!({
        "usage": {
            "image_size_total": {"limit": limit(quotas.image_size_total), "usage": usage.size_total},
            "image_stage_total": {"limit": limit(quotas.image_stage_total), "usage": usage.stage_total},
            "image_count_total": {"limit": limit(quotas.image_count_total), "usage": usage.count_total},
            "image_count_uploading": {"limit": limit(quotas.image_count_uploading), "usage": usage.count_uploading},
        }
    })))
}
