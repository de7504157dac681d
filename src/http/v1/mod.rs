//! The legacy Images API v1 (removed from Glance in Rocky), served for the seed lab's curl
//! flow and old scripts.
//!
//! v1 is a second view of the same image records as v2: the same ids, data, checksums and
//! properties; `is_public` is `visibility == public`. Access follows v2's rules (`policy`), and
//! uploads run the same store protocol as `PUT /v2/images/{id}/file`: hashing, size cap, disk
//! admission, quotas and the format inspector. What v1 adds is its wire format (`meta`), the
//! `Content-Transfer-Encoding: base64` bodies of the seed (`transfer`), and its members calls
//! (`members`). Codes and headers follow Glance 16 (Queens); where it was careless (a checksum
//! mismatch left a `killed` image behind, an unreadable `is_public` meant false) a refusal here
//! leaves nothing behind and says why.
//!
//! Deliberately left out: deleted images (Glance's admins could still `HEAD` them; here a
//! deleted image is gone), external locations (`x-image-meta-location`, refused), and the
//! `can_share` delegation (the flag is kept and shown, but only owners and admins manage
//! members, as in v2).

mod members;
mod meta;
mod transfer;

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

pub use members::{
    forbid_member_show, list_members, list_shared_images, remove_member, replace_members,
    set_member,
};
use meta::{ImageMeta, image_brief, image_detail, image_headers, v1_size};
use transfer::{TransferEncoding, decode_base64};

use super::image_data::{check_format, header_u64, idle_limited, upload_store};
use super::images::{load_visible, modify_image, remove_image};
use super::import::{request_id, start_import};
use super::list_query::{DEFAULT_LIMIT, MAX_LIMIT};
use super::wire::{checksum, hex, now_micros};
use super::{AppState, BaseUrl, Error, blocking};
use crate::importer::{Source, Targets};
use crate::kv::KvError;
use crate::kv::{
    Direction, ImageId, ImageRecord, ImageStatus, InsertOutcome, ListOutcome, ListRequest, SortKey,
    Visibility,
};
use crate::policy::{Caller, PublicFilter};
use crate::store::{StoreError, UploadRequest};

/// `GET /v1`: 302 to `/v1/`, as Glance's router redirects the empty path below a version.
pub async fn v1_redirect(BaseUrl(base): BaseUrl) -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, format!("{base}/v1/"))],
    )
        .into_response()
}

/// The parameters of a v1 listing.
struct ListParams {
    sort_key: SortKey,
    sort_dir: Direction,
    marker: Option<ImageId>,
    limit: usize,
    filters: Filters,
}

/// v1's filters: equality on the named fields, `size_min`/`size_max`, `changes-since`, and
/// `property-KEY` for custom properties.
#[derive(Default)]
struct Filters {
    name: Option<String>,
    status: Option<ImageStatus>,
    disk_format: Option<String>,
    container_format: Option<String>,
    min_ram: Option<i64>,
    min_disk: Option<i64>,
    size_min: Option<u64>,
    size_max: Option<u64>,
    protected: Option<bool>,
    /// Unix microseconds; images updated at or after it.
    changes_since: Option<i64>,
    public: Option<PublicFilter>,
    properties: Vec<(String, String)>,
}

impl Filters {
    fn matches(&self, record: &ImageRecord, caller: &Caller) -> bool {
        let size = v1_size(record);
        // Hidden images (v2's os_hidden) stay out of v1 listings, which cannot ask for them.
        !record.os_hidden
            && caller.lists_v1(record, self.public.unwrap_or(PublicFilter::Default))
            && self
                .name
                .as_ref()
                .is_none_or(|name| record.name.as_ref() == Some(name))
            && self.status.is_none_or(|status| record.status == status)
            && self
                .disk_format
                .as_ref()
                .is_none_or(|format| record.disk_format.as_ref() == Some(format))
            && self
                .container_format
                .as_ref()
                .is_none_or(|format| record.container_format.as_ref() == Some(format))
            && self.min_ram.is_none_or(|min_ram| record.min_ram == min_ram)
            && self
                .min_disk
                .is_none_or(|min_disk| record.min_disk == min_disk)
            && self.size_min.is_none_or(|min| size >= min)
            && self.size_max.is_none_or(|max| size <= max)
            && self
                .protected
                .is_none_or(|protected| record.protected == protected)
            && self
                .changes_since
                .is_none_or(|since| record.updated_at >= since)
            && self
                .properties
                .iter()
                .all(|(key, value)| record.properties.get(key) == Some(value))
    }
}

fn bad_filter(name: &str, value: &str, expected: &str) -> Error {
    Error::bad_request(format!(
        "Bad value passed to filter {name}: '{value}' is not {expected}"
    ))
}

/// `changes-since` as clients send it: ISO 8601 with or without a zone (UTC then) or fraction.
fn parse_since(value: &str) -> Option<i64> {
    let micros = |time: OffsetDateTime| (time.unix_timestamp_nanos() / 1000) as i64;
    if let Ok(time) = OffsetDateTime::parse(value, &Rfc3339) {
        return Some(micros(time));
    }
    let plain = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let fraction = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond]");
    let value = value.strip_suffix('Z').unwrap_or(value);
    time::PrimitiveDateTime::parse(value, &plain)
        .or_else(|_| time::PrimitiveDateTime::parse(value, &fraction))
        .ok()
        .map(|time| micros(time.assume_utc()))
}

fn parse_list(query: Option<&str>) -> Result<ListParams, Error> {
    let mut params = ListParams {
        sort_key: SortKey::CreatedAt,
        sort_dir: Direction::Desc,
        marker: None,
        limit: DEFAULT_LIMIT,
        filters: Filters::default(),
    };
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        let filters = &mut params.filters;
        match key.as_ref() {
            "limit" => {
                let limit: i64 = value.parse().map_err(|_| {
                    Error::bad_request(format!("limit param must be an integer, not '{value}'"))
                })?;
                if limit < 0 {
                    return Err(Error::bad_request("limit param must be positive"));
                }
                params.limit = (limit as u64).min(MAX_LIMIT as u64) as usize;
            }
            "marker" => {
                params.marker = Some(ImageId::parse(&value).ok_or_else(bad_marker)?);
            }
            "sort_key" => {
                params.sort_key = SortKey::ALL
                    .into_iter()
                    .find(|key| key.as_str() == value)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            SortKey::ALL.iter().map(|key| key.as_str()).collect();
                        Error::bad_request(format!(
                            "Unsupported sort_key '{value}'. Acceptable values: {}",
                            names.join(", ")
                        ))
                    })?;
            }
            "sort_dir" => {
                params.sort_dir = match value.as_str() {
                    "asc" => Direction::Asc,
                    "desc" => Direction::Desc,
                    _ => {
                        return Err(Error::bad_request(format!(
                            "Unsupported sort_dir '{value}'. Acceptable values: asc, desc"
                        )));
                    }
                }
            }
            "name" => filters.name = Some(value),
            "status" => {
                filters.status = Some(
                    ImageStatus::parse(&value)
                        .ok_or_else(|| bad_filter("status", &value, "an image status"))?,
                )
            }
            "disk_format" => filters.disk_format = Some(value),
            "container_format" => filters.container_format = Some(value),
            "min_ram" | "min_disk" | "size_min" | "size_max" => {
                let number: u64 = value
                    .parse()
                    .map_err(|_| bad_filter(&key, &value, "a whole number"))?;
                let signed = i64::try_from(number).unwrap_or(i64::MAX);
                match key.as_ref() {
                    "min_ram" => filters.min_ram = Some(signed),
                    "min_disk" => filters.min_disk = Some(signed),
                    "size_min" => filters.size_min = Some(number),
                    _ => filters.size_max = Some(number),
                }
            }
            "protected" => filters.protected = Some(meta::boolean("protected", &value)?),
            "is_public" => {
                filters.public = Some(if value.eq_ignore_ascii_case("none") {
                    PublicFilter::Any
                } else if meta::boolean("is_public", &value)? {
                    PublicFilter::Default
                } else {
                    PublicFilter::NotPublic
                })
            }
            "changes-since" => {
                filters.changes_since = Some(
                    parse_since(&value)
                        .ok_or_else(|| bad_filter("changes-since", &value, "an ISO 8601 time"))?,
                )
            }
            other => {
                if let Some(property) = other.strip_prefix("property-") {
                    filters.properties.push((property.to_owned(), value));
                }
                // Glance v1 ignores parameters it does not know.
            }
        }
    }
    Ok(params)
}

fn bad_marker() -> Error {
    Error::bad_request("Invalid marker: no such image is visible to you")
}

/// `GET /v1/images` and `GET /v1/`: the brief listing.
pub async fn list_images(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    list(state, caller, query, false).await
}

/// `GET /v1/images/detail`: the listing with every field.
pub async fn list_images_detail(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(query): RawQuery,
) -> Result<Response, Error> {
    list(state, caller, query, true).await
}

async fn list(
    state: AppState,
    caller: Caller,
    query: Option<String>,
    detail: bool,
) -> Result<Response, Error> {
    if !caller.can_read() {
        return Err(Error::not_authorized("get_images"));
    }
    let params = parse_list(query.as_deref())?;
    let store = state.store.clone();
    let outcome = blocking(move || {
        let sort = [(params.sort_key, params.sort_dir)];
        let request = ListRequest {
            sort: &sort,
            tiebreak: params.sort_dir,
            marker: params.marker,
            limit: params.limit,
            candidates: Vec::new(),
        };
        let visible = |record: &ImageRecord| caller.can_see(record);
        let matches = |record: &ImageRecord| params.filters.matches(record, &caller);
        Ok(store.list_images(&request, &visible, &matches)?)
    })
    .await?;
    let images = match outcome {
        ListOutcome::Page { images, .. } => images,
        ListOutcome::MarkerNotFound => return Err(bad_marker()),
    };
    let view = if detail { image_detail } else { image_brief };
    let images: Vec<Value> = images.iter().map(view).collect();
    Ok(Json(json!({ "images": images })).into_response())
}

/// Whether a request carries image data: a positive length, or a chunked body.
fn has_data(headers: &HeaderMap) -> bool {
    headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.trim().parse::<u64>().ok())
            .is_some_and(|length| length > 0)
}

/// The checks v1 makes of a request that carries data, before anything is stored.
fn check_data_request(headers: &HeaderMap, meta: &ImageMeta) -> Result<TransferEncoding, Error> {
    let media_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(str::trim)
        .unwrap_or("");
    if !media_type.eq_ignore_ascii_case("application/octet-stream") {
        return Err(Error::bad_request(
            "Content-Type must be application/octet-stream",
        ));
    }
    if meta.copy_from.is_some() {
        return Err(Error::bad_request(
            "Send image data or x-glance-api-copy-from, not both",
        ));
    }
    let encoding = headers
        .get("content-transfer-encoding")
        .map(|value| value.to_str().unwrap_or("?"));
    TransferEncoding::parse(encoding).ok_or_else(|| {
        Error::bad_request(format!(
            "Content-Transfer-Encoding '{}' is not served: send the bytes as they are, or base64",
            encoding.unwrap_or_default()
        ))
    })
}

/// v1 needs both formats before data arrives (uploaded or copied).
fn check_formats(record: &ImageRecord) -> Result<(), Error> {
    if record.disk_format.is_none() {
        return Err(Error::bad_request("Disk format is not specified."));
    }
    if record.container_format.is_none() {
        return Err(Error::bad_request("Container format is not specified."));
    }
    Ok(())
}

/// Receives image data for a queued image through the store's upload protocol. `apply`, when
/// given, is the metadata of the same request: it is checked before the data is read, and
/// committed together with the data, so a refused upload changes nothing.
async fn receive(
    state: &AppState,
    caller: Caller,
    id: ImageId,
    body: Body,
    headers: &HeaderMap,
    encoding: TransferEncoding,
    meta: Arc<ImageMeta>,
    apply: bool,
) -> Result<ImageRecord, Error> {
    let cap = state.config.image_size_cap;
    let length = header_u64(headers, header::CONTENT_LENGTH.as_str())?;
    // Base64 text is a third longer than what it encodes; the length bounds the data from above.
    let bound = match encoding {
        TransferEncoding::Identity => length,
        TransferEncoding::Base64 => length.map(|length| length / 4 * 3 + 3),
    };
    if let (Some(declared), Some(bound)) = (meta.size, bound)
        && declared > bound
    {
        return Err(Error::bad_request(format!(
            "Supplied size ({declared}) is more than the request body can hold"
        )));
    }
    let over_cap = match meta.size {
        Some(declared) => declared > cap,
        None => encoding == TransferEncoding::Identity && length.is_some_and(|length| length > cap),
    };
    if over_cap {
        return Err(Error::too_large(format!(
            "Image data is larger than the {cap}-byte limit"
        )));
    }
    let request = UploadRequest {
        quota: true,
        staging: false,
        declared: meta.size.or(bound),
        declared_exact: meta.size.is_some(),
        cap,
        target: upload_store(state, meta.store.as_deref())?,
    };
    let body = Box::pin(idle_limited(body));
    let body: std::pin::Pin<Box<dyn futures_util::Stream<Item = _> + Send>> = match encoding {
        TransferEncoding::Identity => body,
        TransferEncoding::Base64 => Box::pin(decode_base64(body)),
    };
    let limits = state.config.per_image;
    let (start_meta, accept_meta, finish_meta) = (meta.clone(), meta.clone(), meta.clone());
    let (start_caller, accept_caller) = (caller.clone(), caller.clone());
    let raw = id.to_string();
    let upload = state
        .store
        .upload(
            id,
            body.map(|chunk| chunk.map_err(|error| error.to_string())),
            request,
            move |record| {
                if !start_caller.can_see(record) {
                    return Err(Error::no_image(&raw).into());
                }
                if !start_caller.can_modify(record) {
                    return Err(Error::not_authorized("upload_image").into());
                }
                if record.status != ImageStatus::Queued {
                    return Err(Error::conflict(format!(
                        "Cannot upload to an unqueued image: image {raw} is {}",
                        record.status.as_str()
                    ))
                    .into());
                }
                let mut effective = record.clone();
                if apply {
                    start_meta.apply(&mut effective, &start_caller, &limits)?;
                }
                check_formats(&effective)?;
                record.status = ImageStatus::Saving;
                record.updated_at = now_micros().max(record.updated_at);
                Ok(())
            },
            move |record, received| {
                let mut effective = record.clone();
                if apply {
                    apply_while_queued(&accept_meta, &mut effective, &accept_caller, &limits)?;
                }
                Ok(check_format(&effective, received)?)
            },
            move |record, data| {
                if apply {
                    apply_while_queued(&finish_meta, record, &caller, &limits)?;
                }
                let md5 = hex(&data.md5);
                if let Some(expected) = &finish_meta.checksum
                    && *expected != md5
                {
                    return Err(Error::bad_request(format!(
                        "Supplied checksum ({expected}) and checksum generated from uploaded \
                         image ({md5}) did not match; the image was not changed"
                    ))
                    .into());
                }
                record.status = ImageStatus::Active;
                record.data = Some(data);
                record.updated_at = now_micros().max(record.updated_at);
                Ok(())
            },
        )
        .await;
    upload.map_err(|failure| match failure {
        UploadFailure::Refused(error) => error,
        UploadFailure::Store(StoreError::SizeMismatch { declared, actual }) => {
            size_mismatch(declared, actual)
        }
        UploadFailure::Store(error) => Error::from(error),
    })
}

/// Applies a request's metadata to an image that is `saving` its data, as to the `queued`
/// image the request was sent to (whose formats may still change).
fn apply_while_queued(
    meta: &ImageMeta,
    record: &mut ImageRecord,
    caller: &Caller,
    limits: &crate::config::PerImageQuotas,
) -> Result<(), Error> {
    let status = std::mem::replace(&mut record.status, ImageStatus::Queued);
    let applied = meta.apply(record, caller, limits);
    record.status = status;
    applied
}

/// Why an upload failed: a refusal worded here, or the store's error, kept apart so that a
/// size mismatch is reported in v1's terms.
enum UploadFailure {
    Refused(Error),
    Store(StoreError),
}

impl From<Error> for UploadFailure {
    fn from(error: Error) -> UploadFailure {
        UploadFailure::Refused(error)
    }
}

impl From<StoreError> for UploadFailure {
    fn from(error: StoreError) -> UploadFailure {
        UploadFailure::Store(error)
    }
}

impl From<KvError> for UploadFailure {
    fn from(error: KvError) -> UploadFailure {
        UploadFailure::Store(StoreError::Kv(error))
    }
}

fn size_mismatch(declared: u64, actual: Option<u64>) -> Error {
    let actual = match actual {
        Some(actual) => format!("{actual} bytes"),
        None => "more".to_owned(),
    };
    Error::bad_request(format!(
        "Supplied size ({declared}) and the size of the data received ({actual}) did not match; \
         the image was not changed"
    ))
}

/// The answer to a create or update: `{"image": ...}` with `ETag` when there is data.
fn image_answer(status: StatusCode, record: &ImageRecord) -> Response {
    let mut response = (status, Json(json!({ "image": image_detail(record) }))).into_response();
    if let Some(sum) = checksum(record).and_then(|sum| HeaderValue::from_str(&sum).ok()) {
        response.headers_mut().insert(header::ETAG, sum);
    }
    response
}

/// Starts fetching `url` into a queued image, under the web-download rules.
async fn start_copy(
    state: &AppState,
    caller: &Caller,
    record: &ImageRecord,
    url: reqwest::Url,
    request_id: Option<String>,
) -> Result<ImageRecord, Error> {
    let import_req = json!({"method": {"name": "web-download", "uri": url.to_string()}});
    start_import(
        state,
        caller,
        record,
        Source::Web(url),
        Targets {
            stores: vec![state.store.default_store().to_owned()],
            must_succeed: true,
        },
        import_req,
        request_id,
    )
    .await?;
    let store = state.store.clone();
    let id = record.id;
    blocking(move || Ok(store.image(id)?))
        .await?
        .ok_or_else(|| Error::no_image(&id.to_string()))
}

/// The URL of `x-glance-api-copy-from`, if it passes the web-download rules.
fn copy_source(state: &AppState, meta: &ImageMeta) -> Result<Option<reqwest::Url>, Error> {
    let Some(uri) = &meta.copy_from else {
        return Ok(None);
    };
    state.importer.check_url(uri).map(Some).map_err(|reason| {
        tracing::info!(%uri, %reason, "copy-from refused");
        Error::bad_request(format!(
            "x-glance-api-copy-from {uri} does not pass the web-download rules"
        ))
    })
}

/// `POST /v1/images`: reserves an image from the headers, and stores its data when the body
/// has some (or fetches it from `x-glance-api-copy-from`).
pub async fn create_image(
    State(state): State<AppState>,
    caller: Caller,
    BaseUrl(base): BaseUrl,
    request: Request,
) -> Result<Response, Error> {
    let (parts, body) = request.into_parts();
    let meta = ImageMeta::from_headers(&parts.headers)?;
    let data = has_data(&parts.headers);
    let encoding = if data {
        Some(check_data_request(&parts.headers, &meta)?)
    } else {
        None
    };
    let now = now_micros();
    let mut record = ImageRecord {
        // v1 images are private unless made public.
        visibility: Visibility::Private,
        ..ImageRecord::new(
            meta.id.unwrap_or_else(ImageId::random),
            Some(caller.project_id.clone()),
            now,
        )
    };
    meta.apply(&mut record, &caller, &state.config.per_image)?;
    if !caller.can_create(record.owner.as_deref()) {
        return Err(Error::not_authorized("add_image"));
    }
    let copy = copy_source(&state, &meta)?;
    if data || copy.is_some() {
        check_formats(&record)?;
    }
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
            "An image with identifier {} exists or existed",
            record.id
        )));
    }
    tracing::info!(image = %record.id, project = %caller.project_id, api = "v1", "image created");
    let id = record.id;
    if let Some(encoding) = encoding {
        let meta = Arc::new(meta);
        record = match receive(
            &state,
            caller,
            id,
            body,
            &parts.headers,
            encoding,
            meta,
            false,
        )
        .await
        {
            Ok(record) => record,
            Err(error) => {
                // The create is one request: its refused data takes the reserved image with it.
                let store = state.store.clone();
                let withdrawn = blocking(move || {
                    store.withdraw_image(id, |record| {
                        if record.status == ImageStatus::Queued && record.data.is_none() {
                            Ok(())
                        } else {
                            Err(Error::conflict("the image changed meanwhile"))
                        }
                    })
                })
                .await;
                if let Err(withdraw_error) = withdrawn {
                    tracing::warn!(image = %id, error = %withdraw_error.message, "a failed v1 create left its queued image");
                }
                return Err(error);
            }
        };
    } else if let Some(url) = copy {
        record = start_copy(&state, &caller, &record, url, request_id(&parts)).await?;
    }
    let mut response = image_answer(StatusCode::CREATED, &record);
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/v1/images/{id}")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `HEAD /v1/images/{id}`: the image's metadata as headers.
pub async fn head_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Response, Error> {
    let record = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_read() {
        return Err(Error::not_authorized("get_image"));
    }
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    image_headers(&record, headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=UTF-8"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
    Ok(response)
}

/// `GET /v1/images/{id}`: the data, verified as it streams, with the metadata as headers. As
/// in Glance v1, `Range` is not served: the answer is always the whole image.
pub async fn show_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
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
    let data = match &record.data {
        Some(data)
            if matches!(
                record.status,
                ImageStatus::Active | ImageStatus::Deactivated
            ) =>
        {
            data
        }
        _ => {
            return Err(Error::not_found(format!("Image {image_id} is not active")));
        }
    };
    let stream = state.store.download(data, 0, data.size).await?;
    let mut response = Response::new(Body::from_stream(stream));
    let headers = response.headers_mut();
    image_headers(&record, headers);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(data.size));
    Ok(response)
}

/// `PUT /v1/images/{id}`: changes metadata from the headers; with a body, also stores the data
/// of a queued image (409 otherwise), metadata and data committed together.
pub async fn update_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    request: Request,
) -> Result<Response, Error> {
    let (parts, body) = request.into_parts();
    let meta = ImageMeta::from_headers(&parts.headers)?;
    if meta
        .id
        .is_some_and(|id| Some(id) != ImageId::parse(&image_id))
    {
        return Err(Error::forbidden("Forbidden to modify 'id' of image"));
    }
    let record = if has_data(&parts.headers) {
        let encoding = check_data_request(&parts.headers, &meta)?;
        let Some(id) = ImageId::parse(&image_id) else {
            return Err(Error::no_image(&image_id));
        };
        receive(
            &state,
            caller,
            id,
            body,
            &parts.headers,
            encoding,
            Arc::new(meta),
            true,
        )
        .await?
    } else {
        let copy = copy_source(&state, &meta)?;
        let limits = state.config.per_image;
        let copying = copy.is_some();
        let copier = caller.clone();
        let record = modify_image(
            &state,
            caller,
            &image_id,
            "modify_image",
            move |record, caller| {
                meta.apply(record, caller, &limits)?;
                if copying {
                    if record.status != ImageStatus::Queued {
                        return Err(Error::conflict(format!(
                            "Cannot copy data into an unqueued image: image {} is {}",
                            record.id,
                            record.status.as_str()
                        )));
                    }
                    check_formats(record)?;
                }
                Ok(())
            },
        )
        .await?;
        match copy {
            Some(url) => start_copy(&state, &copier, &record, url, request_id(&parts)).await?,
            None => record,
        }
    };
    Ok(image_answer(StatusCode::OK, &record))
}

/// `DELETE /v1/images/{id}`: 200 with an empty body, as v1 answered.
pub async fn delete_image(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Response, Error> {
    remove_image(&state, caller, &image_id).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/html; charset=UTF-8")],
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_parameters() {
        let params = parse_list(Some(
            "sort_key=name&sort_dir=asc&limit=2&is_public=none&property-foo=bar&size_min=1",
        ))
        .unwrap();
        assert_eq!(params.sort_key, SortKey::Name);
        assert_eq!(params.sort_dir, Direction::Asc);
        assert_eq!(params.limit, 2);
        assert_eq!(params.filters.public, Some(PublicFilter::Any));
        assert_eq!(
            params.filters.properties,
            vec![("foo".into(), "bar".into())]
        );
        assert_eq!(params.filters.size_min, Some(1));
        for bad in [
            "sort_key=nonsense",
            "sort_dir=sideways",
            "limit=-1",
            "limit=x",
            "marker=nope",
            "size_min=abc",
            "is_public=maybe",
            "changes-since=yesterday",
            "status=sleeping",
        ] {
            assert_eq!(
                parse_list(Some(bad)).map(|_| ()).unwrap_err().status,
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }

    #[test]
    fn changes_since_spellings() {
        let expected = Some(946_684_800_000_000);
        assert_eq!(parse_since("2000-01-01T00:00:00"), expected);
        assert_eq!(parse_since("2000-01-01T00:00:00Z"), expected);
        assert_eq!(parse_since("2000-01-01T00:00:00.000000"), expected);
        assert_eq!(parse_since("2000-01-01T01:00:00+01:00"), expected);
        assert_eq!(parse_since("2000-01-01"), None);
    }
}
