//! The mirror's admin endpoints, used by `ocellus mirror …` while the server runs:
//! `GET /ocellus/v1/mirror` (status), `POST /ocellus/v1/mirror/plan` and
//! `POST /ocellus/v1/mirror/sync` and `POST /ocellus/v1/mirror/verify` (body
//! `{"sources": [...]}`, empty for all). Admins only.

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
