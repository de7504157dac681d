//! The UI's two static files, compiled in and served under a path that names their content, so
//! browsers may cache them forever and a new build is never served an old copy.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

struct Asset {
    name: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: [Asset; 3] = [
    Asset {
        name: "ui.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../../../static/ui/ui.js"),
    },
    Asset {
        name: "ui.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../../../static/ui/ui.css"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../../../static/ui/favicon.svg"),
    },
];

/// The first 16 hex digits of the BLAKE3 of all assets: one version for the set.
fn version() -> &'static str {
    static VERSION: OnceLock<String> = OnceLock::new();
    VERSION.get_or_init(|| {
        let mut hasher = blake3::Hasher::new();
        for asset in &ASSETS {
            hasher.update(asset.name.as_bytes());
            hasher.update(&(asset.bytes.len() as u64).to_le_bytes());
            hasher.update(asset.bytes);
        }
        hasher.finalize().to_hex()[..16].to_owned()
    })
}

/// The URL of an asset, e.g. `/ui/static/0123…/ui.js`.
pub fn url(name: &str) -> String {
    format!("/ui/static/{}/{name}", version())
}

/// `GET /ui/static/{hash}/{file}`: immutable under the current version, 404 otherwise.
pub async fn serve(Path((hash, file)): Path<(String, String)>) -> Response {
    let Some(asset) = ASSETS.iter().find(|asset| asset.name == file) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    if hash != version() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    response
}
