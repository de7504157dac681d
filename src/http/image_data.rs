//! Image data handlers: streaming upload and download.
//!
//! Both run the store's protocols (`Store::upload`, `Store::download`); what is left here is
//! HTTP: headers, the policy checks, Glance's answers, and the format check of what arrived.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::images::load_visible;
use super::wire::{checksum, now_micros};
use super::{AppState, Error, blocking, no_content};
use crate::blob::inspect::check_upload;
use crate::kv::{ImageId, ImageRecord, ImageStatus};
use crate::policy::Caller;
use crate::store::{UploadRequest, Uploaded};

pub(super) fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, Error> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| Error::bad_request(format!("{name} must be a number of bytes"))),
    }
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#upload-binary-image-data
pub async fn upload_image_data(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    request: Request,
) -> Result<Response, Error> {
    receive_image_data(state, caller, image_id, request, false).await
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#stage-binary-image-data
///
/// The same streaming, hashing, limits and format checks as `/file`; the bytes go into the
/// blob store at once (so they never exist twice on disk) and the image stays `uploading`
/// until `POST /import` with `glance-direct` makes it `active`.
pub async fn stage_image_data(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    request: Request,
) -> Result<Response, Error> {
    if !state
        .config
        .import_methods
        .iter()
        .any(|method| method == "glance-direct")
    {
        return Err(Error::not_found(
            "The glance-direct import method is not enabled on this server",
        ));
    }
    receive_image_data(state, caller, image_id, request, true).await
}

/// The store an upload names in `X-Image-Meta-Store` (`None`: the default store): a configured
/// store id, or `file` for the data directory's store (v1 named stores by scheme). Anything
/// else is refused with 400, as Glance refuses an unknown store.
pub(super) fn upload_store(state: &AppState, named: Option<&str>) -> Result<Option<String>, Error> {
    let Some(named) = named.map(str::trim) else {
        return Ok(None);
    };
    if state.store.has_store(named) {
        return Ok(Some(named.to_owned()));
    }
    if named == "file"
        && let Some(info) = state
            .store
            .store_infos()
            .into_iter()
            .find(|info| info.kind == "file")
    {
        return Ok(Some(info.id));
    }
    Err(Error::bad_request(format!(
        "Store for identifier {named} not found"
    )))
}

/// `PUT /file` (`staging` false: the image becomes `active`) and `PUT /stage` (`staging` true:
/// it becomes `uploading`, holding its data for an import).
async fn receive_image_data(
    state: AppState,
    caller: Caller,
    image_id: String,
    request: Request,
    staging: bool,
) -> Result<Response, Error> {
    let headers = request.headers();
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let media_type = content_type
            .to_str()
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim();
        if !media_type.eq_ignore_ascii_case("application/octet-stream") {
            return Err(Error::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Image data must be sent as application/octet-stream, not '{media_type}'"),
            ));
        }
    }
    let declared_size = header_u64(headers, "x-openstack-image-size")?;
    let content_length = header_u64(headers, header::CONTENT_LENGTH.as_str())?;
    let cap = state.config.image_size_cap;
    if let (Some(declared), Some(length)) = (declared_size, content_length)
        && declared != length
    {
        return Err(size_mismatch(declared, length));
    }
    if declared_size
        .or(content_length)
        .is_some_and(|size| size > cap)
    {
        return Err(too_large(cap));
    }

    let Some(id) = ImageId::parse(&image_id) else {
        return Err(Error::no_image(&image_id));
    };
    // Staged data goes to the default store; the import names where it ends up.
    let target = if staging {
        None
    } else {
        let named = headers
            .get("x-image-meta-store")
            .map(|value| value.to_str().unwrap_or("\u{fffd}"));
        upload_store(&state, named)?
    };
    let request_sizes = UploadRequest {
        quota: true,
        staging,
        declared: declared_size.or(content_length),
        declared_exact: declared_size.is_some(),
        cap,
        target,
    };
    let body = idle_limited(request.into_body());
    let raw = image_id.clone();
    let record = state
        .store
        .upload(
            id,
            body,
            request_sizes,
            move |record| {
                if !caller.can_see(record) {
                    return Err(Error::no_image(&raw));
                }
                if !caller.can_modify(record) {
                    return Err(Error::not_authorized("upload_image"));
                }
                let target = if staging {
                    ImageStatus::Uploading
                } else {
                    ImageStatus::Saving
                };
                if record.status != ImageStatus::Queued {
                    return Err(Error::conflict(format!(
                        "Image status transition from {} to {} is not allowed",
                        record.status.as_str(),
                        target.as_str()
                    )));
                }
                if record.disk_format.is_none() || record.container_format.is_none() {
                    return Err(Error::bad_request(
                        "Set disk_format and container_format before uploading image data",
                    ));
                }
                record.status = target;
                record.updated_at = now_micros().max(record.updated_at);
                Ok(())
            },
            check_format,
            move |record, data| {
                record.status = if staging {
                    ImageStatus::Uploading
                } else {
                    ImageStatus::Active
                };
                record.data = Some(data);
                record.updated_at = now_micros().max(record.updated_at);
                Ok(())
            },
        )
        .await?;
    let data = record.data.as_ref();
    tracing::info!(
        image = %record.id,
        size = data.map(|data| data.size),
        blob = %data.map(|data| data.digest.to_hex()).unwrap_or_default(),
        staged = staging,
        "image data stored"
    );
    Ok(no_content())
}

/// How long an upload may go without receiving any bytes before it is abandoned.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// An upload's body as a stream that fails after `BODY_IDLE_TIMEOUT` without data: a client
/// that stops sending mid-upload must not hold the image in `saving` (and a connection slot)
/// forever.
pub(super) fn idle_limited(
    body: Body,
) -> impl futures_util::Stream<Item = Result<axum::body::Bytes, String>> + Send {
    futures_util::stream::unfold(Box::pin(body.into_data_stream()), |mut body| async move {
        match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next()).await {
            Ok(Some(chunk)) => Some((chunk.map_err(|error| error.to_string()), body)),
            Ok(None) => None,
            Err(_) => Some((
                Err(format!("no data for {} s", BODY_IDLE_TIMEOUT.as_secs())),
                body,
            )),
        }
    })
}

fn size_mismatch(declared: u64, actual: u64) -> Error {
    Error::bad_request(format!(
        "x-openstack-image-size declared {declared} bytes but the data is {actual} bytes"
    ))
}

fn too_large(cap: u64) -> Error {
    Error::too_large(format!("Image data is larger than the {cap}-byte limit"))
}

/// Applies the format inspector's verdict (`check_upload`) to every upload: unsafe data, or
/// data that is not what a bare image's `disk_format` says, answers 415 as in Glance. Returns
/// the virtual size to record.
pub(super) fn check_format(
    record: &ImageRecord,
    received: Uploaded<'_>,
) -> Result<Option<u64>, Error> {
    check_upload(
        record.disk_format.as_deref().unwrap_or(""),
        record.container_format.as_deref().unwrap_or(""),
        received.inspection,
    )
    .map_err(|message| Error::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, message))
}

/// Why a `Range` header is refused.
#[derive(Debug, PartialEq, Eq)]
enum RangeRefusal {
    /// More than one range: 400, as Glance serves one range per request.
    Several,
    /// A `bytes` range that does not parse or ends before it starts: 416, as in Glance.
    Malformed,
    /// A range outside the data: 416.
    Unsatisfiable,
}

/// The byte range to serve, `(first, last)` inclusive; `Ok(None)` means everything (no Range
/// header, or one in a unit other than bytes, which RFC 9110 says to ignore).
fn parse_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, RangeRefusal> {
    let Some(value) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let Some((unit, spec)) = value.to_str().ok().and_then(|text| text.split_once('=')) else {
        return Ok(None);
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Ok(None);
    }
    if spec.contains(',') {
        return Err(RangeRefusal::Several);
    }
    let (start, end) = spec.split_once('-').ok_or(RangeRefusal::Malformed)?;
    let (start, end) = (start.trim(), end.trim());
    let number = |text: &str| -> Result<u64, RangeRefusal> {
        if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
            return Err(RangeRefusal::Malformed);
        }
        // More digits than u64 holds is past the end of any image.
        Ok(text.parse().unwrap_or(u64::MAX))
    };
    if start.is_empty() {
        let suffix = number(end)?;
        if suffix == 0 || size == 0 {
            return Err(RangeRefusal::Unsatisfiable);
        }
        return Ok(Some((size - suffix.min(size), size - 1)));
    }
    let first = number(start)?;
    let last = if end.is_empty() {
        u64::MAX
    } else {
        number(end)?
    };
    if last < first {
        return Err(RangeRefusal::Malformed);
    }
    if first >= size {
        return Err(RangeRefusal::Unsatisfiable);
    }
    Ok(Some((first, last.min(size - 1))))
}

/// The status, first byte and length a download of `size` bytes answers its `Range` header
/// with (200 and everything without one); the refusals as Glance gives them: 400 for several
/// ranges, 416 with `Content-Range: bytes */size` and the given message otherwise.
pub(super) fn requested_range(
    headers: &HeaderMap,
    size: u64,
    malformed: &str,
    unsatisfiable: &str,
) -> Result<(StatusCode, u64, u64), Error> {
    let message = match parse_range(headers, size) {
        Ok(None) => return Ok((StatusCode::OK, 0, size)),
        Ok(Some((first, last))) => {
            return Ok((StatusCode::PARTIAL_CONTENT, first, last - first + 1));
        }
        Err(RangeRefusal::Several) => {
            return Err(Error::bad_request(
                "Only one range per request is served; ask for each range separately",
            ));
        }
        Err(RangeRefusal::Malformed) => malformed,
        Err(RangeRefusal::Unsatisfiable) => unsatisfiable,
    };
    let mut error = Error::new(StatusCode::RANGE_NOT_SATISFIABLE, message);
    error.header = HeaderValue::from_str(&format!("bytes */{size}"))
        .ok()
        .map(|value| (header::CONTENT_RANGE, value));
    Err(error)
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#download-binary-image-data
pub async fn download_image_data(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let record = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_download() {
        return Err(Error::not_authorized("download_image"));
    }
    if record.status == ImageStatus::Deactivated && !caller.can_download_deactivated() {
        return Err(Error::forbidden(
            "The image is deactivated; its data cannot be downloaded",
        ));
    }
    // Staged data belongs to the import until it completes: like Glance, no data to serve.
    let staged = matches!(
        record.status,
        ImageStatus::Uploading | ImageStatus::Importing
    );
    let Some(data) = record.data.as_ref().filter(|_| !staged) else {
        if let Some(edge) = state.edge.clone()
            && edge.fetches(&record)
        {
            return pull_through(&state, &caller, edge, record, &headers).await;
        }
        return Ok(no_content());
    };
    if let Some(edge) = &state.edge
        && crate::mirror::sync::of_source(&record, &edge.settings.source)
    {
        edge.hit(record.id, data.size);
    }
    let data = data.clone();
    serve_data(&state, &record, &data, &headers).await
}

/// Serves an image's bytes (whole or one range) from the store.
async fn serve_data(
    state: &AppState,
    record: &crate::kv::ImageRecord,
    data: &crate::kv::ImageData,
    headers: &HeaderMap,
) -> Result<Response, Error> {
    // A bucket store with presigned downloads sends the client to the engine itself.
    let store = state.store.clone();
    let presign = data.clone();
    if let Some(url) = blocking(move || Ok::<_, Error>(store.presigned_download(&presign)?)).await?
        && let Ok(location) = HeaderValue::from_str(&url)
    {
        let mut response = StatusCode::FOUND.into_response();
        response.headers_mut().insert(header::LOCATION, location);
        return Ok(response);
    }
    let size = data.size;
    let (status, first, length) = requested_range(
        headers,
        size,
        "The Range header is not a valid byte range",
        &format!("The requested range is outside the image data ({size} bytes)"),
    )?;
    // Any read of the whole image is verified, a `Range: bytes=0-` one included.
    let stream = state.store.download(data, first, length).await?;
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(md5) = checksum(record).and_then(|sum| HeaderValue::from_str(&sum).ok()) {
        response_headers.insert("Content-MD5", md5);
    }
    response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) =
            HeaderValue::from_str(&format!("bytes {first}-{}/{size}", first + length - 1))
    {
        response_headers.insert(header::CONTENT_RANGE, value);
    }
    Ok(response.into_response())
}

/// A download of an edge cache's image whose bytes are not here: the requests that start the
/// fetch or join it while it is young stream the bytes as they arrive (unless they asked for
/// a range); later ones wait for that fetch and are then served from the store.
async fn pull_through(
    state: &AppState,
    caller: &Caller,
    edge: std::sync::Arc<crate::mirror::edge::Edge>,
    record: crate::kv::ImageRecord,
    headers: &HeaderMap,
) -> Result<Response, Error> {
    use crate::mirror::edge::{Begin, Edge};
    let ranged = headers.contains_key(header::RANGE);
    let size = record
        .properties
        .get(crate::mirror::glance::PROP_UPSTREAM_SIZE)
        .and_then(|size| size.parse::<u64>().ok());
    let id = record.id.to_string();
    match edge.begin(record.clone(), !ranged).await {
        Begin::Stream(stream) => {
            let mut response = Response::new(Body::from_stream(stream));
            let response_headers = response.headers_mut();
            response_headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            if let Some(size) = size {
                response_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
            }
            if let Some(md5) = record
                .properties
                .get(crate::mirror::glance::PROP_UPSTREAM_CHECKSUM)
                .and_then(|sum| HeaderValue::from_str(sum).ok())
            {
                response_headers.insert("Content-MD5", md5);
            }
            Ok(response)
        }
        waited @ (Begin::Wait(_) | Begin::Ready) => {
            if let Begin::Wait(done) = waited {
                Edge::wait(done).await.map_err(|error| {
                    Error::new(
                        StatusCode::BAD_GATEWAY,
                        format!(
                            "The edge cache could not fetch the image from its upstream: {error}"
                        ),
                    )
                })?;
            }
            let record = load_visible(state, caller, &id).await?;
            let Some(data) = record.data.clone() else {
                return Err(Error::new(
                    StatusCode::BAD_GATEWAY,
                    "The image's bytes left the edge cache before they could be served; try again",
                ));
            };
            edge.hit(record.id, data.size);
            serve_data(state, &record, &data, headers).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(value: &str, size: u64) -> Result<Option<(u64, u64)>, RangeRefusal> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RANGE, HeaderValue::from_str(value).unwrap());
        parse_range(&headers, size)
    }

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-15", 100), Ok(Some((0, 15))));
        assert_eq!(range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(range("bytes=50-500", 100), Ok(Some((50, 99))));
        assert_eq!(range("Bytes = 1 - 2", 100), Ok(Some((1, 2))));
        assert_eq!(
            range("bytes=0-99999999999999999999", 100),
            Ok(Some((0, 99)))
        );
        assert_eq!(range("items=0-1", 100), Ok(None));
        assert_eq!(
            range("bytes=999999-", 100),
            Err(RangeRefusal::Unsatisfiable)
        );
        assert_eq!(range("bytes=-0", 100), Err(RangeRefusal::Unsatisfiable));
        assert_eq!(
            range("bytes=99999999999999999999-", 100),
            Err(RangeRefusal::Unsatisfiable)
        );
    }

    /// Issue 9: Glance answers a malformed byte range with 416 and several ranges with 400;
    /// both used to be ignored.
    #[test]
    fn issue9_malformed_and_multiple_ranges() {
        for malformed in [
            "bytes=abc-def",
            "bytes=5-2",
            "bytes=-",
            "bytes=",
            "bytes=1",
            "bytes=+1-2",
        ] {
            assert_eq!(
                range(malformed, 100),
                Err(RangeRefusal::Malformed),
                "{malformed}"
            );
        }
        for several in ["bytes=0-1,5-6", "bytes=0-1, -5", "bytes=,"] {
            assert_eq!(range(several, 100), Err(RangeRefusal::Several), "{several}");
        }
    }
}
