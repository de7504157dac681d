//! The mirror's admin endpoints, used by `ocellus mirror …` while the server runs:
//! `GET /ocellus/v1/mirror` (status), `POST /ocellus/v1/mirror/plan` and
//! `POST /ocellus/v1/mirror/sync` and `POST /ocellus/v1/mirror/verify` (body
//! `{"sources": [...]}`, empty for all), `POST /ocellus/v1/mirror/export` (the same body; the
//! bundle is staged in the data directory) and `POST /ocellus/v1/mirror/import` (`{"dir",
//! "require_signer"}`). Admins only.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::request::Parts;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin::require_admin;
use super::{AppState, Error};
use crate::mirror::service::{MirrorService, select};
use crate::policy::Caller;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Sources {
    #[serde(default)]
    sources: Vec<String>,
}

fn service(state: &AppState) -> Result<Arc<MirrorService>, Error> {
    state.mirror.clone().ok_or_else(|| {
        Error::conflict(
            "This server has no mirror_catalog; set it in its settings to keep a mirror.",
        )
    })
}

fn sources(body: &[u8]) -> Result<Vec<String>, Error> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice::<Sources>(body)
        .map(|sources| sources.sources)
        .map_err(|error| Error::bad_request(format!("Bad mirror request: {error}")))
}

pub async fn status(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let service = service(&state)?;
    let edge = state.edge.clone();
    let view = tokio::task::spawn_blocking(move || {
        let mut view = service.status();
        if let Some(edge) = edge {
            view["edge"] = edge.view();
        }
        view
    })
    .await
    .map_err(|_| Error::internal())?;
    Ok(Json(view))
}

pub async fn plan(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let service = service(&state)?;
    let names = sources(&body)?;
    let catalog = service.catalog().map_err(Error::conflict)?;
    let chosen = select(&catalog, &names).map_err(Error::bad_request)?;
    let mut plans = Vec::new();
    for source in chosen {
        plans.push(match service.mirror.plan_value(&catalog, source).await {
            Ok(candidate) => json!({"source": source.name, "plan": candidate}),
            Err(error) => json!({"source": source.name, "error": error}),
        });
    }
    Ok(Json(json!({ "plans": plans })))
}

pub async fn sync(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let service = service(&state)?;
    let names = sources(&body)?;
    let reports = service.sync(&names).await.map_err(Error::conflict)?;
    for report in &reports {
        state
            .metrics
            .mirror_synced(&report.source, report.outcome.label(), report.bytes);
    }
    Ok(Json(json!({ "reports": reports })))
}

pub async fn verify(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let service = service(&state)?;
    let names = sources(&body)?;
    let catalog = service.catalog().ok();
    let reports = crate::mirror::bundle::verify(&service.mirror, catalog.as_ref(), &names)
        .await
        .map_err(Error::conflict)?;
    Ok(Json(json!({ "images": reports })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    /// The bundle's directory, as the server sees it.
    dir: String,
    require_signer: Option<String>,
    manifest_signer: Option<String>,
    manifest_keyring: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ExportBody {
    #[serde(default)]
    sources: Vec<String>,
    /// An armored secret key file the server can read, to sign the manifest with.
    sign_key: Option<String>,
}

/// `POST /ocellus/v1/mirror/export` (`ocellus mirror export` while the server runs): the server
/// writes the bundle under `<data_dir>/backups/` (the one place its unit may write) and says
/// where; the command moves it to its destination.
pub async fn export(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let service = service(&state)?;
    let body: ExportBody = if body.iter().all(u8::is_ascii_whitespace) {
        ExportBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|error| Error::bad_request(format!("Bad mirror export request: {error}")))?
    };
    let staging = state
        .config
        .data_dir
        .join(super::admin::BACKUP_STAGING)
        .join(format!(
            "mirror-{}-{}",
            crate::identity::now_secs(),
            uuid::Uuid::new_v4().simple()
        ));
    let reports = crate::mirror::bundle::export(
        &service.mirror,
        &staging,
        &body.sources,
        body.sign_key.as_deref().map(std::path::Path::new),
    )
    .await
    .map_err(Error::conflict)?;
    let path = std::fs::canonicalize(&staging).unwrap_or(staging);
    Ok(Json(
        json!({ "path": path.display().to_string(), "images": reports }),
    ))
}

/// `POST /ocellus/v1/mirror/import` (`ocellus mirror import` while the server runs): the
/// server reads the bundle from `dir`, which it must be able to read.
pub async fn import(
    State(state): State<AppState>,
    caller: Caller,
    parts: Parts,
    body: axum::body::Bytes,
) -> Result<Json<Value>, Error> {
    require_admin(&state, &caller, &parts)?;
    let service = service(&state)?;
    let body: ImportBody = serde_json::from_slice(&body)
        .map_err(|error| Error::bad_request(format!("Bad mirror import request: {error}")))?;
    let catalog = service.catalog().map_err(Error::conflict)?;
    let reports = crate::mirror::bundle::import(
        &service.mirror,
        &catalog,
        std::path::Path::new(&body.dir),
        body.require_signer.as_deref(),
        body.manifest_keyring
            .as_deref()
            .map(std::path::Path::new)
            .zip(body.manifest_signer.as_deref()),
    )
    .await
    .map_err(Error::bad_request)?;
    Ok(Json(json!({ "images": reports })))
}
