//! The HTTP face of ocellus: the only code that knows URLs, headers, JSON and Glance's error
//! bodies.
//!
//! `router` is the whole route table; `negotiate_version` rewrites a request's path before
//! it, as Glance's version negotiation does. Handlers live one file per resource (`images`,
//! `image_data`, `tags`, `discovery`; `metadefs` for the metadata definitions); wire formats in `wire`; list parameters in `list_query`;
//! the caller's identity in `auth`. Every response passes through `finish_response`, which adds
//! `x-openstack-request-id`, renders error bodies and logs the request.

pub(crate) mod admin;
pub(crate) mod auth;
mod discovery;
mod error;
mod exports;
mod identity;
mod image_data;
mod images;
mod import;
#[cfg(test)]
mod list_plan_tests;
mod list_query;
pub mod listener;
mod members;
pub(crate) mod metadefs;
mod mirror;
mod observe;
pub mod schemas;
mod tags;
mod ui;
mod v1;
mod wire;

use std::sync::Arc;
use std::time::Instant;

use tracing::Instrument;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any, delete, get, post, put};

pub use error::Error;
pub use listener::serve;

use crate::config::Config;
use crate::identity::Identity;
use crate::store::Store;

/// Largest JSON request body (image create, PATCH); image data is streamed and not bound by it.
const JSON_BODY_LIMIT: usize = 1 << 20;

/// Everything handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Image metadata and bytes.
    pub store: Arc<Store>,
    /// The resolved settings.
    pub config: Arc<Config>,
    /// API keys and tokens.
    pub identity: Arc<Identity>,
    /// The HTTPS configuration, when `tls_cert` and `tls_key` are set.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// What `/metrics` serves.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Runs imports in the background.
    pub importer: Arc<crate::importer::Importer>,
    /// The mirror, when `mirror_catalog` is set.
    pub mirror: Option<Arc<crate::mirror::service::MirrorService>>,
    /// The edge cache, when the catalog says `mode = "edge"`.
    pub edge: Option<Arc<crate::mirror::edge::Edge>>,
    /// Where the NBD export listens, once it does (`nbd::serve` sets it).
    pub nbd_address: Arc<std::sync::OnceLock<std::net::SocketAddr>>,
}

/// The whole route table.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", resource("GET", get(discovery::versions_root)))
        .route("/versions", resource("GET", get(discovery::versions)))
        .route("/healthcheck", resource("GET", get(observe::healthcheck)))
        .route("/metrics", resource("GET", get(observe::metrics)))
        .route("/v2", any(discovery::v2_redirect))
        .route(
            "/v2/schemas/image",
            resource("GET", get(discovery::image_schema)),
        )
        .route(
            "/v2/schemas/images",
            resource("GET", get(discovery::images_schema)),
        )
        .route(
            "/v2/schemas/member",
            resource("GET", get(discovery::member_schema)),
        )
        .route(
            "/v2/schemas/members",
            resource("GET", get(discovery::members_schema)),
        )
        .route("/v2/info/import", resource("GET", get(import::import_info)))
        .route(
            "/v2/info/stores/detail",
            resource("GET", get(import::stores_detail)),
        )
        .route("/v2/info/usage", resource("GET", get(import::usage)))
        .route(
            "/v2/stores/{store}/{image}",
            resource("DELETE", delete(import::delete_from_store)),
        )
        .route(
            "/v2/schemas/task",
            resource("GET", get(discovery::task_schema)),
        )
        .route(
            "/v2/schemas/tasks",
            resource("GET", get(discovery::tasks_schema)),
        )
        .route(
            "/v2/images/{image_id}/stage",
            resource("PUT", put(image_data::stage_image_data)),
        )
        .route(
            "/v2/images/{image_id}/import",
            resource("POST", post(import::import_image)),
        )
        .route(
            "/v2/images/{image_id}/tasks",
            resource("GET", get(import::image_tasks)),
        )
        .route(
            "/v2/tasks",
            resource(
                "GET, POST",
                get(import::list_tasks).post(import::create_task),
            ),
        )
        .route(
            "/v2/tasks/{task_id}",
            resource("GET", get(import::show_task)),
        )
        .route(
            "/v2/info/stores",
            resource("GET", get(discovery::stores_info)),
        )
        .route(
            "/v2/images",
            resource(
                "GET, POST",
                get(images::list_images).post(images::create_image),
            ),
        )
        .route(
            "/v2/images/{image_id}",
            resource(
                "GET, PATCH, DELETE",
                get(images::show_image)
                    .patch(images::update_image)
                    .delete(images::delete_image),
            ),
        )
        .route(
            "/v2/images/{image_id}/file",
            resource(
                "GET, PUT",
                get(image_data::download_image_data).put(image_data::upload_image_data),
            ),
        )
        .route(
            "/v2/images/{image_id}/actions/deactivate",
            resource("POST", post(images::deactivate_image)),
        )
        .route(
            "/v2/images/{image_id}/actions/reactivate",
            resource("POST", post(images::reactivate_image)),
        )
        .route(
            "/v2/images/{image_id}/tags/{tag}",
            resource(
                "PUT, DELETE",
                put(tags::add_image_tag).delete(tags::delete_image_tag),
            ),
        )
        .route(
            "/v2/images/{image_id}/members",
            resource(
                "GET, POST",
                get(members::list_members).post(members::create_member),
            ),
        )
        .route(
            "/v2/images/{image_id}/members/{member_id}",
            resource(
                "GET, PUT, DELETE",
                get(members::show_member)
                    .put(members::update_member)
                    .delete(members::delete_member),
            ),
        )
        .route(
            "/v2/schemas/metadefs/{name}",
            resource("GET", get(metadefs::show_schema)),
        )
        .route(
            "/v2/metadefs/resource_types",
            resource("GET", get(metadefs::resource_types::list_resource_types)),
        )
        .route(
            "/v2/metadefs/namespaces",
            resource(
                "GET, POST",
                get(metadefs::namespaces::list_namespaces)
                    .post(metadefs::namespaces::create_namespace),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}",
            resource(
                "GET, PUT, DELETE",
                get(metadefs::namespaces::show_namespace)
                    .put(metadefs::namespaces::update_namespace)
                    .delete(metadefs::namespaces::delete_namespace),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}/resource_types",
            resource(
                "GET, POST",
                get(metadefs::resource_types::list_associations)
                    .post(metadefs::resource_types::create_association),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}/resource_types/{resource_type}",
            resource(
                "DELETE",
                axum::routing::delete(metadefs::resource_types::delete_association),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}/properties",
            resource(
                "GET, POST, DELETE",
                get(metadefs::properties::list_properties)
                    .post(metadefs::properties::create_property)
                    .delete(metadefs::namespaces::delete_properties),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}/properties/{property_name}",
            resource(
                "GET, PUT, DELETE",
                get(metadefs::properties::show_property)
                    .put(metadefs::properties::update_property)
                    .delete(metadefs::properties::delete_property),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}/objects",
            resource(
                "GET, POST, DELETE",
                get(metadefs::objects::list_objects)
                    .post(metadefs::objects::create_object)
                    .delete(metadefs::namespaces::delete_objects),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}/objects/{object_name}",
            resource(
                "GET, PUT, DELETE",
                get(metadefs::objects::show_object)
                    .put(metadefs::objects::update_object)
                    .delete(metadefs::objects::delete_object),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}/tags",
            resource(
                "GET, POST, DELETE",
                get(metadefs::tags::list_tags)
                    .post(metadefs::tags::create_tags)
                    .delete(metadefs::namespaces::delete_tags),
            ),
        )
        .route(
            "/v2/metadefs/namespaces/{namespace}/tags/{tag_name}",
            resource(
                "GET, POST, PUT, DELETE",
                get(metadefs::tags::show_tag)
                    .post(metadefs::tags::create_tag)
                    .put(metadefs::tags::update_tag)
                    .delete(metadefs::tags::delete_tag),
            ),
        )
        .route(
            "/identity",
            identity_resource(get(identity::identity_versions)),
        )
        .route(
            "/identity/",
            identity_resource(get(identity::identity_versions)),
        )
        .route("/v3", identity_resource(get(identity::identity_version)))
        .route("/v3/", identity_resource(get(identity::identity_version)))
        .route(
            "/identity/v3",
            identity_resource(get(identity::identity_version)),
        )
        .route(
            "/identity/v3/",
            identity_resource(get(identity::identity_version)),
        )
        .route("/v3/auth/tokens", tokens_resource())
        .route("/identity/v3/auth/tokens", tokens_resource())
        .route(
            "/ocellus/v1/keys",
            resource("GET, POST", get(admin::list_keys).post(admin::create_key)),
        )
        .route(
            "/ocellus/v1/quotas",
            resource("GET", get(admin::list_quotas)),
        )
        .route(
            "/ocellus/v1/quotas/{project}",
            resource("PUT", put(admin::set_quota)),
        )
        .route(
            "/ocellus/v1/images/{image_id}/nbd",
            resource("POST", post(exports::nbd_uri)),
        )
        .route(
            "/ocellus/v1/images/{image_id}/extents",
            resource("GET", get(exports::extents)),
        )
        .route(
            "/ocellus/v1/images/{image_id}/raw",
            resource("GET", get(exports::raw)),
        )
        .route("/ocellus/v1/check", resource("POST", post(admin::check)))
        .route("/ocellus/v1/gc", resource("POST", post(admin::gc)))
        .route("/ocellus/v1/stats", resource("GET", get(admin::stats)))
        .route("/ocellus/v1/backups", resource("POST", post(admin::backup)))
        .route("/ocellus/v1/mirror", resource("GET", get(mirror::status)))
        .route(
            "/ocellus/v1/mirror/plan",
            resource("POST", post(mirror::plan)),
        )
        .route(
            "/ocellus/v1/mirror/sync",
            resource("POST", post(mirror::sync)),
        )
        .route(
            "/ocellus/v1/mirror/verify",
            resource("POST", post(mirror::verify)),
        )
        .route(
            "/ocellus/v1/mirror/export",
            resource("POST", post(mirror::export)),
        )
        .route(
            "/ocellus/v1/mirror/import",
            resource("POST", post(mirror::import)),
        )
        .route(
            "/ocellus/v1/metadefs",
            resource("POST", post(admin::load_metadefs)),
        )
        .route(
            "/ocellus/v1/keys/{key_id}",
            resource("DELETE", axum::routing::delete(admin::revoke_key)),
        )
        .merge(v1_routes(&state))
        .merge(ui::routes(&state))
        .route_layer(middleware::from_fn_with_state(state.clone(), edge_guard))
        .route_layer(middleware::from_fn(observe::note_route))
        .fallback(discovery::unrouted)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            finish_response,
        ))
        .with_state(state)
}

/// An edge cache serves the read side only: changes to images are made at its upstream and
/// reach it with the next refresh, so writes get a 403 that says where to go.
async fn edge_guard(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let write = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD | axum::http::Method::OPTIONS
    );
    let path = request.uri().path();
    let image_path = ["/v2/images", "/v1/images", "/v2/stores"]
        .iter()
        .any(|prefix| path.starts_with(prefix));
    if let Some(edge) = &state.edge
        && write
        && image_path
        && edge.settings.forward_writes
    {
        return forward_write(edge.clone(), request).await;
    }
    if let Some(edge) = &state.edge
        && write
        && image_path
    {
        return Error::forbidden(format!(
            "This server is an edge cache of the images of source '{}'; change images at its upstream, and the change reaches this edge with its next refresh.",
            edge.settings.source
        ))
        .into_response();
    }
    next.run(request).await
}

/// `writes = "forward"`: the request goes to the upstream as it came, and its answer comes
/// back as it was (502 if the upstream cannot be reached).
async fn forward_write(
    edge: Arc<crate::mirror::edge::Edge>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path_and_query().map_or_else(
        || parts.uri.path().to_owned(),
        |path| path.as_str().to_owned(),
    );
    let mut headers = reqwest::header::HeaderMap::new();
    for (name, value) in &parts.headers {
        // Hop-by-hop headers and the host are the connection's, not the request's.
        if !matches!(
            name.as_str(),
            "host" | "connection" | "keep-alive" | "transfer-encoding" | "te" | "upgrade"
        ) && let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.as_str().as_bytes()),
            reqwest::header::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    let Ok(method) = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()) else {
        return Error::bad_request("Unknown method").into_response();
    };
    let body = reqwest::Body::wrap_stream(body.into_data_stream());
    match edge.forward(method, &path, headers, body).await {
        Ok(answer) => {
            let mut response = Response::new(axum::body::Body::from_stream(answer.fetched.body));
            *response.status_mut() = axum::http::StatusCode::from_u16(answer.status.as_u16())
                .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
            for (name, value) in &answer.headers {
                if matches!(
                    name.as_str(),
                    "connection" | "keep-alive" | "transfer-encoding"
                ) {
                    continue;
                }
                if let (Ok(name), Ok(value)) = (
                    axum::http::HeaderName::from_bytes(name.as_str().as_bytes()),
                    axum::http::HeaderValue::from_bytes(value.as_bytes()),
                ) {
                    response.headers_mut().append(name, value);
                }
            }
            response
        }
        Err(error) => Error::new(
            axum::http::StatusCode::BAD_GATEWAY,
            format!("The edge cache could not reach its upstream: {error}"),
        )
        .into_response(),
    }
}

/// The legacy v1 API's routes, when `enable_v1_api` is on (else `/v1` paths get the versions
/// document, as any unserved version does).
fn v1_routes(state: &AppState) -> Router<AppState> {
    if !state.config.enable_v1_api {
        return Router::new();
    }
    let images = || resource("GET", get(v1::list_images));
    Router::new()
        .route("/v1", resource("GET", get(v1::v1_redirect)))
        .route("/v1/", images())
        .route(
            "/v1/images",
            resource("GET, POST", get(v1::list_images).post(v1::create_image)),
        )
        .route(
            "/v1/images/detail",
            resource("GET", get(v1::list_images_detail)),
        )
        .route(
            "/v1/images/{image_id}",
            get(v1::show_image)
                .head(v1::head_image)
                .put(v1::update_image)
                .delete(v1::delete_image)
                .fallback(|method: Method| async move {
                    Error::method_not_allowed(method.as_str(), "GET, HEAD, PUT, DELETE")
                }),
        )
        .route(
            "/v1/images/{image_id}/members",
            resource("GET, PUT", get(v1::list_members).put(v1::replace_members)),
        )
        .route(
            "/v1/images/{image_id}/members/{member_id}",
            resource(
                "PUT, DELETE",
                get(v1::forbid_member_show)
                    .put(v1::set_member)
                    .delete(v1::remove_member),
            ),
        )
        .route(
            "/v1/shared-images/{member_id}",
            resource("GET", get(v1::list_shared_images)),
        )
}

/// Glance's version negotiation, which happens before routing: a request for `/v2.1/images`
/// is served as `/v2/images` (see `discovery`).
pub fn negotiate_version(mut request: Request) -> Request {
    let Some(path) = discovery::negotiated_path(request.uri().path()) else {
        return request;
    };
    let path_and_query = match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path,
    };
    let mut parts = request.uri().clone().into_parts();
    if let Ok(path_and_query) = path_and_query.parse() {
        parts.path_and_query = Some(path_and_query);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
    }
    request
}

/// Adds Glance's 405 answers to a route: for methods it lacks, and for HEAD, which axum would
/// otherwise answer with the GET handler but Glance refuses.
fn resource(allow: &'static str, methods: MethodRouter<AppState>) -> MethodRouter<AppState> {
    methods
        .head(move || async move { Error::method_not_allowed("HEAD", allow) })
        .fallback(
            move |method: Method| async move { Error::method_not_allowed(method.as_str(), allow) },
        )
}

/// Keystone's 405 (its own JSON body and `Allow`) for methods an identity route lacks.
fn identity_resource(methods: MethodRouter<AppState>) -> MethodRouter<AppState> {
    methods.fallback(|| identity::identity_method_not_allowed("GET, HEAD"))
}

fn tokens_resource() -> MethodRouter<AppState> {
    get(identity::validate_token)
        .head(identity::validate_token)
        .post(identity::issue_token)
        .fallback(|| identity::identity_method_not_allowed("GET, HEAD, POST"))
}

/// Adds the request id, renders error bodies in the format the client accepts, runs the
/// request in its span, and hands its log line and metrics to the response body
/// (`observe::LoggedBody`), which writes them when it ends.
async fn finish_response(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let wants_json = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    // The body the client said it would send: `None` for chunked ones (length unknown).
    let declared_body = if request.headers().contains_key(header::TRANSFER_ENCODING) {
        None
    } else {
        Some(
            request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse::<u64>().ok())
                .unwrap_or(0),
        )
    };
    let request_id = format!("req-{}", uuid::Uuid::new_v4());
    let span = tracing::info_span!("request", id = %request_id, key = tracing::field::Empty);
    let mut request = request;
    request
        .extensions_mut()
        .insert(import::RequestId(request_id.clone()));
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = received.clone();
    let request = request.map(|body| Body::new(observe::CountedBody::new(body, counted)));

    let mut response = next.run(request).instrument(span.clone()).await;
    let _entered = span.enter();
    if let Some(error::ErrorMessage(message)) =
        response.extensions_mut().remove::<error::ErrorMessage>()
    {
        let status = response.status();
        let (content_type, body) = if wants_json {
            ("application/json", error::json_body(status, &message))
        } else {
            (
                "text/html; charset=UTF-8",
                error::html_body(status, &message),
            )
        };
        if status.is_server_error() {
            tracing::warn!(%method, %path, %status, "request failed");
        } else {
            tracing::debug!(%method, %path, %status, %message, "request refused");
        }
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = Body::from(body);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response
            .headers_mut()
            .insert("x-openstack-request-id", value);
    }
    // A refusal answered before the body was read (an upload refused up front) ends the
    // connection: the unread bytes cannot be told from the next request. Saying so lets the
    // client open a new connection instead of writing its next request into a closing one.
    let unread = match declared_body {
        Some(length) => received.load(std::sync::atomic::Ordering::Relaxed) < length,
        None => true,
    };
    if unread && (response.status().is_client_error() || response.status().is_server_error()) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    let finish = observe::Finish {
        span: span.clone(),
        started,
        method,
        path,
        route: response
            .extensions()
            .get::<observe::Route>()
            .map(|route| route.0.clone()),
        status: response.status(),
        received,
        metrics: state.metrics.clone(),
    };
    response.map(|body| Body::new(observe::LoggedBody::new(body, finish)))
}

/// A JSON request body; a malformed or oversized body gets Glance's error instead of axum's.
pub struct JsonBody(pub serde_json::Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = Error;

    async fn from_request(request: Request, state: &S) -> Result<JsonBody, Error> {
        let bytes = read_small_body(request, state).await?;
        match serde_json::from_slice(&bytes) {
            Ok(value) => Ok(JsonBody(value)),
            Err(_) => Err(Error::bad_request("Malformed JSON in request body.")),
        }
    }
}

/// Time allowed for a whole small (JSON) request body to arrive.
pub const SMALL_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a bounded request body; 408 if it does not arrive within `SMALL_BODY_TIMEOUT`.
async fn read_small_body<S: Send + Sync>(request: Request, _state: &S) -> Result<Bytes, Error> {
    let body = axum::body::to_bytes(request.into_body(), JSON_BODY_LIMIT);
    match tokio::time::timeout(SMALL_BODY_TIMEOUT, body).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(Error::too_large(format!(
            "The request body is larger than {JSON_BODY_LIMIT} bytes or was cut off"
        ))),
        Err(_) => Err(Error::new(
            StatusCode::REQUEST_TIMEOUT,
            "The request body did not arrive in time",
        )),
    }
}

/// The scheme and authority clients use to reach us, for absolute links: `public_url` if set,
/// else the request's scheme and Host header. No trailing slash.
pub struct BaseUrl(pub String);

impl FromRequestParts<AppState> for BaseUrl {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<BaseUrl, std::convert::Infallible> {
        if let Some(url) = &state.config.public_url {
            return Ok(BaseUrl(url.clone()));
        }
        let tls = parts
            .extensions
            .get::<listener::Connection>()
            .is_some_and(|connection| connection.tls);
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .filter(|host| !host.is_empty() && host.chars().all(|c| c.is_ascii_graphic()))
            .unwrap_or("localhost");
        let scheme = if tls { "https" } else { "http" };
        Ok(BaseUrl(format!("{scheme}://{host}")))
    }
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "blocking task failed");
            Err(Error::internal())
        }
    }
}

/// A 204 with no body.
fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}
