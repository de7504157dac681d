//! The key-management endpoint used by `ocellus key …` while the server runs (redb allows one
//! process per database file, so the CLI cannot open it then).
//!
//! `GET /ocellus/v1/keys`, `POST /ocellus/v1/keys` and `DELETE /ocellus/v1/keys/{id}`, for
//! admins only. Created keys' secrets appear in the creation response and nowhere else.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{AppState, Error, JsonBody, blocking, no_content};
use axum::http::request::Parts;

use super::auth::client_address;
use crate::config::AuthMode;
use crate::identity::{self, CreateKeyError, KeyRequest, key_view};
use crate::kv::Role;
use crate::policy::Caller;

/// Admins only; in lab mode, where anyone may claim the admin role, only from loopback, so
/// that a lab server reachable from the network cannot be made to mint keys that would outlive
/// a switch to `auth = "keys"`.
pub(super) fn require_admin(state: &AppState, caller: &Caller, parts: &Parts) -> Result<(), Error> {
    let lab = state.config.auth == AuthMode::None;
    if caller.is_admin() && (!lab || client_address(parts).is_loopback()) {
        Ok(())
    } else {
        Err(Error::not_authorized("manage_keys"))
    }
}

pub async fn list_keys(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let store = state.store.clone();
    let keys = blocking(move || Ok(store.keys()?)).await?;
    let now = identity::now_secs();
    let views: Vec<Value> = keys.iter().map(|key| key_view(key, now)).collect();
    Ok(Json(json!({ "keys": views })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    project: String,
    role: String,
    name: Option<String>,
    /// A duration from now (`30d`) or an RFC 3339 time.
    expires: Option<String>,
}

pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    require_admin(&state, &caller, &parts)?;
    let body: CreateBody = serde_json::from_value(body)
        .map_err(|error| Error::bad_request(format!("Bad key request: {error}")))?;
    let role = Role::parse(&body.role)
        .ok_or_else(|| Error::bad_request("role must be one of: admin, member, reader"))?;
    let now = identity::now_secs();
    let expires_at = match &body.expires {
        Some(text) => Some(identity::parse_expiry(text, now).map_err(Error::bad_request)?),
        None => None,
    };
    let request = KeyRequest {
        project: body.project,
        role,
        name: body.name,
        expires_at,
    };
    let store = state.store.clone();
    let created = blocking(move || {
        identity::create_key(&store, &request, now).map_err(|error| match error {
            CreateKeyError::Invalid(message) => Error::bad_request(message),
            CreateKeyError::NameTaken(name) => {
                Error::conflict(format!("A key named {name} already exists"))
            }
            CreateKeyError::Kv(error) => error.into(),
        })
    })
    .await?;
    tracing::info!(key = %created.record.id, name = %created.record.name, project = %created.record.project_name, role = created.record.role.as_str(), "API key created");
    Ok((StatusCode::CREATED, Json(created.view(now))).into_response())
}

pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    Path(key_id): Path<String>,
) -> Result<Response, Error> {
    require_admin(&state, &caller, &parts)?;
    let store = state.store.clone();
    let id = key_id.clone();
    let revoked = blocking(move || Ok(store.revoke_key(&id)?)).await?;
    state.identity.forget(&key_id);
    match revoked {
        Some(key) => {
            tracing::info!(key = %key.id, name = %key.name, "API key revoked");
            Ok(no_content())
        }
        None => Err(Error::not_found(format!("No key with id {key_id}"))),
    }
}

/// The body of `POST /ocellus/v1/check` and `/gc`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OperationBody {
    #[serde(default)]
    repair: bool,
    #[serde(default)]
    dry_run: bool,
}

/// An empty body asks for the defaults.
fn operation_body(body: &[u8]) -> Result<OperationBody, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(OperationBody::default());
    }
    serde_json::from_slice(body)
        .map_err(|error| Error::bad_request(format!("Bad request body: {error}")))
}

/// `POST /ocellus/v1/check` (`ocellus check` while the server runs): the full check, and
/// with `{"repair": true}` its safe repairs. Uploads in flight are left alone.
pub async fn check(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let repair = operation_body(&body)?.repair;
    let store = state.store.clone();
    let report =
        blocking(move || Ok(store.check_full(crate::store::Mode::Online, repair, &mut |_| {})?))
            .await?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// `POST /ocellus/v1/gc` (`ocellus gc` while the server runs).
pub async fn gc(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let dry_run = operation_body(&body)?.dry_run;
    let store = state.store.clone();
    let report = blocking(move || Ok(store.gc(crate::store::Mode::Online, dry_run)?)).await?;
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}

/// `GET /ocellus/v1/stats` (`ocellus stats` while the server runs).
pub async fn stats(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let store = state.store.clone();
    Ok(Json(blocking(move || Ok(stats_view(&store)?)).await?))
}

/// What `ocellus stats` shows: the store's figures, the scrub's and the damaged blobs.
/// Reads every image record. Blocks.
pub fn stats_view(store: &crate::store::Store) -> Result<Value, crate::store::StoreError> {
    let mut value = serde_json::to_value(store.stats()?).unwrap_or_default();
    value["scrub"] = serde_json::to_value(store.scrub_stats()?).unwrap_or_default();
    value["damaged_blobs"] = store
        .bad_blobs()?
        .iter()
        .map(|(digest, at)| json!({"blob": digest.to_hex(), "found_at": at}))
        .collect();
    Ok(value)
}

/// Where the server stages backups: inside its data directory, the one place a hardened unit
/// lets it write, and on the blobs' filesystem, so that staging links rather than copies.
pub const BACKUP_STAGING: &str = "backups";

/// `POST /ocellus/v1/backups` (`ocellus backup DIR` while the server runs): writes a backup
/// (database copy, hard links to its blobs, manifest) under `<data_dir>/backups/` and answers
/// its path; the command then copies it to DIR, verifying every blob, and removes it.
pub async fn backup(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
) -> Result<Response, Error> {
    require_admin(&state, &caller, &parts)?;
    let store = state.store.clone();
    let dir = state.config.data_dir.join(BACKUP_STAGING).join(format!(
        "{}-{}",
        identity::now_secs(),
        uuid::Uuid::new_v4().simple()
    ));
    let path = std::fs::canonicalize(&state.config.data_dir)
        .map(|data| data.join(dir.strip_prefix(&state.config.data_dir).unwrap_or(&dir)))
        .unwrap_or_else(|_| dir.clone());
    let manifest = blocking(move || Ok(store.backup_into(&dir)?)).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "path": path.display().to_string(),
            "blobs": manifest.blobs.len(),
            "linked": manifest.linked,
        })),
    )
        .into_response())
}

/// A project's quotas as the admin endpoint shows them: the overrides (`null`: the default)
/// and the limits in force (`-1`: unlimited), with the project's usage.
fn quota_view(
    project: &str,
    overrides: &crate::kv::QuotaRecord,
    quotas: &crate::store::Quotas,
    usage: &crate::kv::Usage,
) -> Value {
    let limit =
        |limit: Option<u64>| limit.map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
    json!({
        "project": project,
        "overrides": {
            "image_size_total": overrides.image_size_total,
            "image_stage_total": overrides.image_stage_total,
            "image_count_total": overrides.image_count_total,
            "image_count_uploading": overrides.image_count_uploading,
        },
        "limits": {
            "image_size_total": limit(quotas.image_size_total),
            "image_stage_total": limit(quotas.image_stage_total),
            "image_count_total": limit(quotas.image_count_total),
            "image_count_uploading": limit(quotas.image_count_uploading),
        },
        "usage": {
            "image_size_total": usage.size_total,
            "image_stage_total": usage.stage_total,
            "image_count_total": usage.count_total,
            "image_count_uploading": usage.count_uploading,
        },
    })
}

/// `GET /ocellus/v1/quotas` (`ocellus quota list`): every project with overrides or images.
pub async fn list_quotas(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let store = state.store.clone();
    let views = blocking(move || Ok(quota_views(&store)?)).await?;
    Ok(Json(json!({ "quotas": views })))
}

/// Every project with quota overrides or images, as `quota_view`s. Blocks.
pub fn quota_views(store: &crate::store::Store) -> Result<Vec<Value>, crate::store::StoreError> {
    let mut projects: std::collections::BTreeMap<String, crate::kv::QuotaRecord> =
        store.quota_overrides()?.into_iter().collect();
    for usage in store.stats()?.projects {
        if !usage.project.is_empty() {
            projects.entry(usage.project).or_default();
        }
    }
    let mut views = Vec::new();
    for (project, overrides) in projects {
        let quotas = store.quotas(&project)?;
        let usage = store.usage(&project)?;
        views.push(quota_view(&project, &overrides, &quotas, &usage));
    }
    Ok(views)
}

/// `PUT /ocellus/v1/quotas/{project}` (`ocellus quota set`): changes the project's overrides
/// named in the body, each to a number (`-1`: unlimited) or `null` (back to the default);
/// the others stay.
pub async fn set_quota(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    Path(project): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    if project.is_empty() || project.len() > 255 {
        return Err(Error::bad_request("A project id is 1 to 255 characters"));
    }
    let store = state.store.clone();
    let view = blocking(move || {
        Ok(apply_quota_change(&store, &project, &body).map_err(Error::bad_request)??)
    })
    .await?;
    Ok(Json(view))
}

/// Applies a quota change (`PUT /ocellus/v1/quotas/{project}`'s body) and returns the
/// project's view; the outer error is a bad body. Blocks.
pub fn apply_quota_change(
    store: &crate::store::Store,
    project: &str,
    body: &Value,
) -> Result<Result<Value, crate::store::StoreError>, String> {
    let Value::Object(fields) = body else {
        return Err("The body must be a JSON object".into());
    };
    let mut changes = Vec::new();
    for (key, value) in fields {
        let parsed = match value {
            Value::Null => None,
            Value::Number(number) => Some(
                number
                    .as_i64()
                    .ok_or_else(|| format!("{key} must be an integer"))?,
            ),
            _ => return Err(format!("{key} must be an integer or null")),
        };
        if ![
            "image_size_total",
            "image_stage_total",
            "image_count_total",
            "image_count_uploading",
        ]
        .contains(&key.as_str())
        {
            return Err(format!("Unknown quota {key}"));
        }
        changes.push((key.clone(), parsed));
    }
    Ok((|| {
        let mut overrides = store
            .quota_overrides()?
            .into_iter()
            .find(|(name, _)| name == project)
            .map(|(_, overrides)| overrides)
            .unwrap_or_default();
        for (key, value) in changes {
            match key.as_str() {
                "image_size_total" => overrides.image_size_total = value,
                "image_stage_total" => overrides.image_stage_total = value,
                "image_count_total" => overrides.image_count_total = value,
                _ => overrides.image_count_uploading = value,
            }
        }
        store.set_quota_overrides(project, &overrides)?;
        let quotas = store.quotas(project)?;
        let usage = store.usage(project)?;
        Ok(quota_view(project, &overrides, &quotas, &usage))
    })())
}

/// `POST /ocellus/v1/metadefs` (`ocellus metadefs load DIR` while the server runs): loads
/// namespace documents (Glance's file format) given as `{"namespaces": [...], "overwrite":
/// bool}`, all in one transaction, and answers what was loaded, replaced and skipped.
pub async fn load_metadefs(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let Some(Value::Array(items)) = body.get("namespaces") else {
        return Err(Error::bad_request(
            "The body needs 'namespaces': a list of namespace documents",
        ));
    };
    let overwrite = match body.get("overwrite") {
        None => false,
        Some(Value::Bool(flag)) => *flag,
        Some(_) => return Err(Error::bad_request("'overwrite' must be true or false")),
    };
    let documents = items
        .iter()
        .map(super::metadefs::document::namespace)
        .collect::<Result<Vec<_>, _>>()?;
    let store = state.store.clone();
    let report =
        blocking(move || super::metadefs::load_namespaces(&store, &documents, overwrite)).await?;
    tracing::info!(
        loaded = report.loaded.len(),
        replaced = report.replaced.len(),
        skipped = report.skipped.len(),
        "metadata definitions loaded"
    );
    Ok(Json(serde_json::to_value(report).unwrap_or_default()))
}
