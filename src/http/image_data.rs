//! Image data handlers: streaming upload and download.
//!
//! Upload moves the image `queued` → `saving` in one transaction, streams the body into the blob
//! store (which hashes it on the way), checks the declared size and the disk format, and then
//! attaches the blob and makes the image `active` in a second transaction. Any failure in
//! between, including the client vanishing, puts the image back to `queued` (through
//! `SavingGuard`) and leaves no file behind (through `TempBlob` and `Store::attach_data`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use super::images::{load_visible, modify_image};
use super::wire::{checksum, now_micros};
use super::{AppState, Error, blocking, no_content};
use crate::blob::inspect::inspect;
use crate::blob::{BlobError, Received};
use crate::kv::{ImageId, ImageRecord, ImageStatus};
use crate::policy::Caller;
use crate::store::Store;

/// Puts an image left in `saving` back to `queued` unless the upload completed.
struct SavingGuard {
    store: Arc<Store>,
    id: ImageId,
    armed: bool,
}

impl Drop for SavingGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let store = self.store.clone();
        let id = self.id;
        // Only a cancelled handler gets here (the client went away), and Drop cannot wait, so
        // the transaction goes to the blocking pool.
        tokio::task::spawn_blocking(move || requeue(&store, id));
    }
}

/// Puts an image that is still `saving` back to `queued`.
fn requeue(store: &Store, id: ImageId) {
    let result = store.kv.update_image(id, |record| {
        if record.status == ImageStatus::Saving {
            record.status = ImageStatus::Queued;
            record.updated_at = now_micros().max(record.updated_at);
        }
        Ok::<(), crate::kv::KvError>(())
    });
    if let Err(error) = result {
        tracing::error!(image = %id, %error, "could not put a failed upload back to queued");
    }
}

fn header_u64(headers: &HeaderMap, name: &str) -> Result<Option<u64>, Error> {
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

    let record = modify_image(&state, caller, &image_id, "upload_image", |record, _| {
        if record.status != ImageStatus::Queued {
            return Err(Error::conflict(format!(
                "Image status transition from {} to saving is not allowed",
                record.status.as_str()
            )));
        }
        if record.disk_format.is_none() || record.container_format.is_none() {
            return Err(Error::bad_request(
                "Set disk_format and container_format before uploading image data",
            ));
        }
        record.status = ImageStatus::Saving;
        Ok(())
    })
    .await?;
    let mut guard = SavingGuard {
        store: state.store.clone(),
        id: record.id,
        armed: true,
    };

    let outcome = receive_and_attach(&state, &record, request, declared_size, cap).await;
    // Failures answer only after the image is queued again, so a client may retry at once.
    guard.armed = false;
    if outcome.is_err() {
        let store = state.store.clone();
        let id = record.id;
        blocking(move || {
            requeue(&store, id);
            Ok(())
        })
        .await?;
    }
    outcome
}

/// How long an upload may go without receiving any bytes before it is abandoned.
pub const BODY_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Streams the body into the blob store, checks it, and attaches it to the image.
async fn receive_and_attach(
    state: &AppState,
    record: &ImageRecord,
    request: Request,
    declared_size: Option<u64>,
    cap: u64,
) -> Result<Response, Error> {
    let limit = declared_size.unwrap_or(cap).min(cap);
    // A client that stops sending mid-upload must not hold the image in `saving` (and a
    // connection slot) forever.
    let body = futures_util::stream::unfold(
        Box::pin(request.into_body().into_data_stream()),
        |mut body| async move {
            match tokio::time::timeout(BODY_IDLE_TIMEOUT, body.next()).await {
                Ok(Some(chunk)) => Some((chunk.map_err(|error| error.to_string()), body)),
                Ok(None) => None,
                Err(_) => Some((
                    Err(format!("no data for {} s", BODY_IDLE_TIMEOUT.as_secs())),
                    body,
                )),
            }
        },
    );
    let received = match state.store.blobs.receive(body, limit).await {
        Ok(received) => received,
        Err(BlobError::TooLarge { .. }) if declared_size.is_some() => {
            return Err(Error::bad_request(format!(
                "More data arrived than x-openstack-image-size declared ({limit} bytes)"
            )));
        }
        Err(BlobError::TooLarge { limit }) => return Err(too_large(limit)),
        Err(BlobError::BodyFailed(detail)) => {
            tracing::info!(image = %record.id, %detail, "upload cut off");
            return Err(Error::bad_request(
                "The image data ended before the request was complete",
            ));
        }
        Err(error) => return Err(error.into()),
    };
    if let Some(declared) = declared_size
        && declared != received.size
    {
        return Err(size_mismatch(declared, received.size));
    }
    let virtual_size = check_format(record, &received)?;

    let store = state.store.clone();
    let id = record.id;
    let attached = blocking(move || {
        store.attach_data(id, received, virtual_size, |record, data| {
            if record.status != ImageStatus::Saving {
                return Err(Error::conflict(
                    "The image changed while its data was uploading",
                ));
            }
            record.status = ImageStatus::Active;
            record.data = Some(data);
            record.updated_at = now_micros().max(record.updated_at);
            Ok(())
        })
    })
    .await?;
    let Some(change) = attached else {
        return Err(Error::new(
            StatusCode::GONE,
            "The image was deleted while its data was uploading",
        ));
    };
    let data = change.record.data.as_ref();
    tracing::info!(
        image = %id,
        size = data.map(|data| data.size),
        blob = %data.map(|data| data.digest.to_hex()).unwrap_or_default(),
        "image data stored"
    );
    Ok(no_content())
}

fn size_mismatch(declared: u64, actual: u64) -> Error {
    Error::bad_request(format!(
        "x-openstack-image-size declared {declared} bytes but the data is {actual} bytes"
    ))
}

fn too_large(cap: u64) -> Error {
    Error::too_large(format!("Image data is larger than the {cap}-byte limit"))
}

/// Checks the data against the image's `disk_format` as Glance's format inspector does, and
/// returns the virtual size. Only `bare` containers are inspected.
fn check_format(record: &ImageRecord, received: &Received) -> Result<Option<u64>, Error> {
    if record.container_format.as_deref() != Some("bare") {
        return Ok(None);
    }
    let inspection = inspect(&received.head, received.size);
    let claimed = record.disk_format.as_deref().unwrap_or("");
    match claimed {
        // Raw takes any bytes: a hypervisor reads them as a plain disk.
        "raw" => Ok(Some(received.size)),
        "qcow2" | "vmdk" | "vhdx" | "vdi" | "iso" => {
            if inspection.format != claimed {
                return Err(Error::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    format!(
                        "Image disk_format {claimed} does not match the data, which is {}",
                        inspection.format
                    ),
                ));
            }
            if let Some(reason) = inspection.unsafe_reason {
                return Err(Error::bad_request(format!(
                    "Image data failed safety checks: {reason}"
                )));
            }
            Ok(inspection.virtual_size)
        }
        // A fixed VHD has its footer at the end, which inspection does not see; accept it.
        "vhd" if inspection.format == "vhd" => Ok(inspection.virtual_size),
        _ => Ok(None),
    }
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
    let Some(data) = record.data.as_ref() else {
        return Ok(no_content());
    };
    let size = data.size;
    let (status, first, length) = match parse_range(&headers, size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        Err(RangeRefusal::Several) => {
            return Err(Error::bad_request(
                "Only one range per request is served; ask for each range separately",
            ));
        }
        Err(refusal) => {
            let message = if refusal == RangeRefusal::Malformed {
                "The Range header is not a valid byte range".to_owned()
            } else {
                format!("The requested range is outside the image data ({size} bytes)")
            };
            let mut error = Error::new(StatusCode::RANGE_NOT_SATISFIABLE, message);
            error.header = HeaderValue::from_str(&format!("bytes */{size}"))
                .ok()
                .map(|value| (header::CONTENT_RANGE, value));
            return Err(error);
        }
    };
    // Any read of the whole image is verified, a `Range: bytes=0-` one included.
    let verify = first == 0 && length == size;
    let stream = state.store.blobs.read(data.digest, first, length, verify);
    let mut response = Response::new(Body::from_stream(stream));
    *response.status_mut() = status;
    let response_headers = response.headers_mut();
    response_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(md5) = checksum(&record).and_then(|sum| HeaderValue::from_str(&sum).ok()) {
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
