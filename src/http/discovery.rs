//! Discovery documents: API versions, JSON schemas, import and store info, and the health check.
//!
//! As behind keystonemiddleware, everything under `/v2` needs a credential in keys mode (the
//! `Caller` argument); the versions documents and the health check do not.
//!
//! The versions document lists a v2 minor version only when ocellus serves the feature that
//! version introduced (Glance itself leaves out versions of features it has not enabled), and
//! the highest listed is CURRENT.
//!
//! Version negotiation follows Glance's middleware, minus its `Accept`-header variant: a listed
//! minor version as the first path segment stands for `v2` (`/v2.1/images` is `/v2/images`,
//! and `/v1.1/images` is `/v1/images`), `/v2` itself redirects to `/v2/`, and a path that
//! starts with anything else (`/v9/images`, or `/v1/images` when the v1 API is off) gets the
//! versions document with 300. With `enable_v1_api`, the document also lists v1.1 and v1.0.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AppState, BaseUrl, Error, schemas};
use crate::policy::Caller;

/// v2 minor versions with whether we serve what they added.
const VERSIONS: &[(&str, bool)] = &[
    ("v2.0", true),  // images, image data, tags, schemas
    ("v2.1", true),  // image members
    ("v2.2", true),  // metadata definitions
    ("v2.3", true),  // deactivate and reactivate
    ("v2.4", true),  // tasks
    ("v2.5", true),  // community and shared visibility
    ("v2.6", true),  // interoperable import
    ("v2.7", true),  // hidden images and multiple hashes (os_hidden, os_hash_*)
    ("v2.8", true),  // multiple stores: /v2/info/stores, `stores` on import and upload
    ("v2.9", true),  // the copy-image import method
    ("v2.10", true), // DELETE /v2/stores/{store}/{image}
    ("v2.11", false),
    ("v2.12", true), // /v2/info/usage and an image's tasks
];

fn versions_document(base: &str, v1: bool) -> Value {
    let href = format!("{base}/v2/");
    let served: Vec<&str> = VERSIONS
        .iter()
        .filter(|(_, served)| *served)
        .map(|(id, _)| *id)
        .collect();
    let entries: Vec<Value> = served
        .iter()
        .rev()
        .enumerate()
        .map(|(position, id)| {
            json!({
                "id": id,
                "status": if position == 0 { "CURRENT" } else { "SUPPORTED" },
                "links": [{"rel": "self", "href": href}],
            })
        })
        .collect();
    let mut entries = entries;
    if v1 {
        // The legacy API, when enabled, after every v2 entry as Glance listed it.
        let href = format!("{base}/v1/");
        for id in V1_VERSIONS {
            entries.push(json!({
                "id": id,
                "status": "SUPPORTED",
                "links": [{"rel": "self", "href": href}],
            }));
        }
    }
    json!({ "versions": entries })
}

/// The legacy API's versions, newest first.
const V1_VERSIONS: [&str; 2] = ["v1.1", "v1.0"];

/// `GET /`: 300 Multiple Choices with the versions document.
pub async fn versions_root(State(state): State<AppState>, BaseUrl(base): BaseUrl) -> Response {
    let document = versions_document(&base, state.config.enable_v1_api);
    (StatusCode::MULTIPLE_CHOICES, Json(document)).into_response()
}

/// First path segments of ocellus's own services, where an unknown path is 404 rather than
/// the versions document: the image API and the identity and admin endpoints.
const OWN_PREFIXES: &[&str] = &["v2", "v3", "identity", "ocellus", "versions", "healthcheck"];

/// Whether `segment` names a v2 version we serve: `v2` or a listed minor version.
fn is_served_version(segment: &str) -> bool {
    segment == "v2"
        || VERSIONS
            .iter()
            .any(|(id, served)| *served && *id == segment)
}

/// The path a request with a minor version in its first segment (`/v2.1/images`) is served
/// as (`/v2/images`); `None` when there is nothing to rewrite.
pub fn negotiated_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix('/')?;
    let (segment, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    if V1_VERSIONS.contains(&segment) {
        return Some(format!("/v1{tail}"));
    }
    (segment != "v2" && is_served_version(segment)).then(|| format!("/v2{tail}"))
}

/// `/v2`, any method: 302 to `/v2/`, as Glance's router redirects the empty path below a
/// version. Like everything under `/v2`, it needs a credential in keys mode.
pub async fn v2_redirect(_caller: Caller, BaseUrl(base): BaseUrl) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("{base}/v2/"))],
    )
        .into_response()
}

/// Any path no route serves: 404 below our own services' prefixes, else (an unknown or
/// unserved API version, or no version at all) the versions document with 300, whatever the
/// method, as Glance answers.
pub async fn unrouted(state: State<AppState>, base: BaseUrl, uri: Uri) -> Response {
    let first = uri
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    if OWN_PREFIXES.contains(&first) || (first == "v1" && state.config.enable_v1_api) {
        return Error::not_found("The resource could not be found.").into_response();
    }
    versions_root(state, base).await
}

/// `GET /versions`.
pub async fn versions(State(state): State<AppState>, BaseUrl(base): BaseUrl) -> Response {
    Json(versions_document(&base, state.config.enable_v1_api)).into_response()
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#show-task-schema
pub async fn task_schema(_caller: Caller) -> Json<Value> {
    Json(schemas::task_schema())
}

pub async fn tasks_schema(_caller: Caller) -> Json<Value> {
    Json(schemas::tasks_schema())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#show-image-schema
pub async fn image_schema(_caller: Caller) -> Json<Value> {
    Json(schemas::image_schema())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#show-images-schema
pub async fn images_schema(_caller: Caller) -> Json<Value> {
    Json(schemas::images_schema())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#show-image-member-schema
pub async fn member_schema(_caller: Caller) -> Json<Value> {
    Json(schemas::member_schema())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#show-image-members-schema
pub async fn members_schema(_caller: Caller) -> Json<Value> {
    Json(schemas::members_schema())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#list-stores
pub async fn stores_info(State(state): State<AppState>, _caller: Caller) -> Json<Value> {
    let infos = state.store.store_infos();
    // As in Glance, the weights show once any is configured.
    let weighted = infos.iter().any(|info| info.weight != 0);
    let stores: Vec<Value> = infos
        .into_iter()
        .map(|info| {
            let mut view = json!({ "id": info.id });
            if weighted {
                view["weight"] = info.weight.into();
            }
            if let Some(description) = info.description {
                view["description"] = description.into();
            }
            if info.default {
                view["default"] = "true".into();
            }
            view
        })
        .collect();
    Json(json!({ "stores": stores }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_versions_in_the_path_stand_for_v2() {
        assert_eq!(
            negotiated_path("/v2.1/images").as_deref(),
            Some("/v2/images")
        );
        assert_eq!(negotiated_path("/v2.0").as_deref(), Some("/v2"));
        assert_eq!(negotiated_path("/v2.7/").as_deref(), Some("/v2/"));
        assert_eq!(
            negotiated_path("/v2.2/metadefs/namespaces").as_deref(),
            Some("/v2/metadefs/namespaces")
        );
        assert_eq!(
            negotiated_path("/v1.1/images").as_deref(),
            Some("/v1/images")
        );
        assert_eq!(negotiated_path("/v1.0").as_deref(), Some("/v1"));
        for unchanged in [
            "/v2/images",
            "/v2",
            "/v1/images",
            "/v2.11/images",
            "/v9",
            "/",
            "",
        ] {
            assert_eq!(negotiated_path(unchanged), None, "{unchanged}");
        }
    }
}
