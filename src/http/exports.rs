//! Block-level access over HTTP and the way into the NBD export:
//!
//! - `POST /ocellus/v1/images/{id}/nbd`: the `nbd://` URI of an image (with keys, carrying a
//!   short-lived capability bound to the key and the image);
//! - `GET /ocellus/v1/images/{id}/extents`: which ranges are data and which are zeros;
//! - `GET /ocellus/v1/images/{id}/raw`: the guest-visible disk of a qcow2 image (`Range`
//!   served), or the bytes of a raw one.
//!
//! Each applies the rules of `GET /v2/images/{id}/file`: 404 for an image the caller cannot
//! see, 403 without the download right or for a deactivated image.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::image_data::requested_range;
use super::images::load_visible;
use super::{AppState, BaseUrl, Error};
use crate::config::AuthMode;
use crate::kv::{ImageData, ImageRecord, ImageStatus, Stretch};
use crate::nbd::names::export_name;
use crate::policy::Caller;

/// Default and longest lifetime of an NBD capability, in seconds.
pub const CAPABILITY_LIFETIME: i64 = 3600;
pub const CAPABILITY_MAX_LIFETIME: i64 = 86_400;

/// Bytes the raw view reads per step while streaming.
const RAW_STEP: u64 = 4 << 20;

/// Loads an image whose data the caller may read, with the download rules of `/file`.
async fn readable(
    state: &AppState,
    caller: &Caller,
    raw_id: &str,
) -> Result<(ImageRecord, ImageData), Error> {
    let record = load_visible(state, caller, raw_id).await?;
    if !caller.can_download() {
        return Err(Error::not_authorized("download_image"));
    }
    if record.status == ImageStatus::Deactivated && !caller.can_download_deactivated() {
        return Err(Error::forbidden(
            "The image is deactivated; its data cannot be read",
        ));
    }
    let data = record.data.clone().filter(|_| {
        matches!(
            record.status,
            ImageStatus::Active | ImageStatus::Deactivated
        )
    });
    match data {
        Some(data) => Ok((record, data)),
        None => Err(Error::conflict(format!(
            "Image {raw_id} has no data to read (status {})",
            record.status.as_str()
        ))),
    }
}

/// https://github.com/NetworkBlockDevice/nbd/blob/master/doc/uri.md for the URI form.
pub async fn nbd_uri(
    State(state): State<AppState>,
    caller: Caller,
    BaseUrl(base): BaseUrl,
    Path(image_id): Path<String>,
    body: Option<Json<serde_json::Value>>,
) -> Result<Response, Error> {
    let Some(address) = state.nbd_address.get().copied() else {
        return Err(Error::not_found(
            "The NBD export is not enabled on this server (nbd_listen)",
        ));
    };
    let lifetime = match body.as_ref().and_then(|Json(body)| body.get("expires_in")) {
        None => CAPABILITY_LIFETIME,
        Some(value) => value
            .as_i64()
            .filter(|seconds| (1..=CAPABILITY_MAX_LIFETIME).contains(seconds))
            .ok_or_else(|| {
                Error::bad_request(format!(
                    "expires_in must be a whole number of seconds from 1 to {CAPABILITY_MAX_LIFETIME}"
                ))
            })?,
    };
    let (record, data) = readable(&state, &caller, &image_id).await?;
    let (capability, expires_at) = match state.config.auth {
        AuthMode::None => (None, None),
        AuthMode::Keys => {
            let key_id = caller.user_id.clone().unwrap_or_default();
            let store = state.store.clone();
            let key = super::blocking(move || Ok(store.key(&key_id)?))
                .await?
                .ok_or_else(|| Error::not_authorized("download_image"))?;
            let (token, expires_at) = state.identity.issue_capability(&key, record.id.0, lifetime);
            (Some(token), Some(expires_at))
        }
    };
    let host = if address.ip().is_unspecified() {
        host_of(&base)
    } else if address.is_ipv6() {
        format!("[{}]", address.ip())
    } else {
        address.ip().to_string()
    };
    let scheme = if state.tls.is_some() { "nbds" } else { "nbd" };
    let uri = |raw: bool| {
        format!(
            "{scheme}://{host}:{}/{}",
            address.port(),
            export_name(record.id, raw, capability.as_deref())
        )
    };
    let qcow2 = record.disk_format.as_deref() == Some("qcow2");
    let mut answer = json!({
        "image_id": record.id.to_string(),
        "uri": uri(false),
        "export": export_name(record.id, false, capability.as_deref()),
        "host": host,
        "port": address.port(),
        "tls": state.tls.is_some(),
        "size": data.size,
        "expires_at": expires_at.map(|at| super::wire::format_time(at * 1_000_000)),
    });
    if qcow2 {
        answer["raw_uri"] = json!(uri(true));
        answer["raw_export"] = json!(export_name(record.id, true, capability.as_deref()));
        answer["virtual_size"] = json!(data.virtual_size);
    }
    Ok(Json(answer).into_response())
}

/// The host part of a base URL (`http://host:port`), without the port.
fn host_of(base: &str) -> String {
    let authority = base.split_once("://").map_or(base, |(_, rest)| rest);
    let authority = authority.split('/').next().unwrap_or(authority);
    if let Some(end) = authority.find(']') {
        return authority[..=end].to_owned();
    }
    authority.split(':').next().unwrap_or(authority).to_owned()
}

/// Whether the query asks for the raw view (`view=raw`); 400 for any other view.
fn raw_view(query: Option<&str>) -> Result<bool, Error> {
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "view" {
            return match value.as_ref() {
                "raw" => Ok(true),
                "stored" => Ok(false),
                other => Err(Error::bad_request(format!(
                    "view must be stored or raw, not {other:?}"
                ))),
            };
        }
    }
    Ok(false)
}

/// Opens the raw view of a qcow2 image, or says why there is none (409).
async fn raw_disk(
    state: &AppState,
    record: &ImageRecord,
    open: &crate::store::OpenData,
) -> Result<std::sync::Arc<crate::store::RawDisk>, Error> {
    if record.disk_format.as_deref() != Some("qcow2") {
        return Err(Error::conflict(format!(
            "Image {} is not qcow2 (disk_format {}); its stored bytes are its disk",
            record.id,
            record.disk_format.as_deref().unwrap_or("unset")
        )));
    }
    state.store.raw_disk(open).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::InvalidData {
            Error::conflict(format!("Image {} has no raw view: {error}", record.id))
        } else {
            tracing::error!(image = %record.id, %error, "could not open the raw view");
            Error::internal()
        }
    })
}

/// The most extents one `/extents` answer lists; `next_offset` continues.
const EXTENTS_PAGE: usize = 65_536;

/// The `offset` a paged `/extents` request starts at (default 0); 400 if it is not a number.
fn extents_offset(query: Option<&str>) -> Result<u64, Error> {
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        if key == "offset" {
            return value.parse().map_err(|_| {
                Error::bad_request(format!("offset must be a number of bytes, not {value:?}"))
            });
        }
    }
    Ok(0)
}

/// `GET /ocellus/v1/images/{id}/extents[?view=raw][&offset=N]`: data and zero extents from
/// `offset`, at most `EXTENTS_PAGE` of them (and, for a raw view, a bounded walk of its
/// tables); `next_offset` says where the next answer starts, `null` at the end.
pub async fn extents(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    let raw = raw_view(query.as_deref())?;
    let start = extents_offset(query.as_deref())?;
    let (record, data) = readable(&state, &caller, &image_id).await?;
    let (size, recorded, stretches) = if raw {
        let open = state.store.open_data(&data).await?;
        let disk = raw_disk(&state, &record, &open).await?;
        let size = disk.size();
        if start > size {
            return Err(offset_past_end(start, size));
        }
        let stretches = disk
            .describe(&state.store, &open, start, size - start, EXTENTS_PAGE)
            .await
            .map_err(|error| {
                tracing::error!(image = %record.id, %error, "could not read the qcow2 mapping");
                Error::internal()
            })?;
        (size, true, stretches)
    } else {
        if start > data.size {
            return Err(offset_past_end(start, data.size));
        }
        match state.store.extents(data.digest).await? {
            Some(map) => (
                data.size,
                true,
                map.describe(start, data.size - start, EXTENTS_PAGE),
            ),
            None => (
                data.size,
                false,
                vec![Stretch {
                    length: data.size - start,
                    zero: false,
                }],
            ),
        }
    };
    let mut offset = start;
    let mut zero_bytes = 0;
    let list: Vec<_> = stretches
        .iter()
        .filter(|stretch| stretch.length > 0)
        .map(|stretch| {
            let entry = json!({"offset": offset, "length": stretch.length, "zero": stretch.zero});
            offset += stretch.length;
            if stretch.zero {
                zero_bytes += stretch.length;
            }
            entry
        })
        .collect();
    Ok(Json(json!({
        "image_id": record.id.to_string(),
        "view": if raw { "raw" } else { "stored" },
        "size": size,
        "block_size": if raw { None } else { Some(crate::blob::zeros::BLOCK) },
        "recorded": recorded,
        "offset": start,
        "data_bytes": offset - start - zero_bytes,
        "zero_bytes": zero_bytes,
        "extents": list,
        "next_offset": (offset < size).then_some(offset),
    }))
    .into_response())
}

fn offset_past_end(offset: u64, size: u64) -> Error {
    Error::bad_request(format!(
        "offset {offset} is past the end of the disk ({size} bytes)"
    ))
}

/// `GET /ocellus/v1/images/{id}/raw`: the guest-visible disk, every stored byte verified.
pub async fn raw(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let (record, data) = readable(&state, &caller, &image_id).await?;
    let open = state.store.open_data(&data).await?;
    let disk = if record.disk_format.as_deref() == Some("raw") {
        None
    } else {
        Some(raw_disk(&state, &record, &open).await?)
    };
    let size = disk.as_ref().map_or(data.size, |disk| disk.size());
    let beyond = format!("The requested range is not within the disk ({size} bytes)");
    let (status, first, length) = requested_range(&headers, size, &beyond, &beyond)?;
    // The first step is read before answering, so that a disk whose tables cannot be read
    // gets a status code rather than a cut body.
    let store = state.store.clone();
    let read = move |at: u64, count: u64| {
        let (store, open, disk) = (store.clone(), open.clone(), disk.clone());
        async move {
            let pieces = match disk {
                Some(disk) => disk.read(&store, &open, at, count).await?,
                None => store.read_open(&open, at, count).await?,
            };
            Ok::<_, std::io::Error>(futures_util::stream::iter(pieces.into_iter().map(Ok)))
        }
    };
    let end = first + length;
    let first_step = RAW_STEP.min(length);
    let head = if length == 0 {
        futures_util::stream::iter(Vec::new().into_iter().map(Ok))
    } else {
        read(first, first_step).await.map_err(|error| {
            tracing::error!(image = %record.id, %error, "raw view read failed");
            Error::internal()
        })?
    };
    let rest = futures_util::stream::unfold(first + first_step, move |at| {
        let read = read.clone();
        async move {
            if at >= end {
                return None;
            }
            let count = RAW_STEP.min(end - at);
            let item = read(at, count).await;
            let next = if item.is_ok() { at + count } else { end };
            let pieces: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>> =
                match item {
                    Ok(pieces) => Box::pin(pieces),
                    Err(error) => Box::pin(futures_util::stream::once(async move { Err(error) })),
                };
            Some((pieces, next))
        }
    });
    let stream = futures_util::StreamExt::chain(head, futures_util::StreamExt::flatten(rest));
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response_headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) = HeaderValue::from_str(&format!("bytes {first}-{}/{size}", end - 1))
    {
        response_headers.insert(header::CONTENT_RANGE, value);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_out_of_base_urls_without_ports() {
        assert_eq!(host_of("http://10.0.0.5:9292"), "10.0.0.5");
        assert_eq!(host_of("https://images.lab"), "images.lab");
        assert_eq!(host_of("http://[::1]:9292/x"), "[::1]");
    }

    #[test]
    fn views_are_named_or_refused() {
        assert!(!raw_view(None).unwrap());
        assert!(raw_view(Some("view=raw")).unwrap());
        assert!(!raw_view(Some("view=stored")).unwrap());
        assert!(raw_view(Some("view=qcow2")).is_err());
    }
}
