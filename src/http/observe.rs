//! What the operator sees of each request: its log line and its metrics, and the endpoints
//! that show them (`/metrics`, the detailed `/healthcheck`).
//!
//! Every request runs inside a `request` span that carries its id (the
//! `x-openstack-request-id` the client gets) and, once authenticated, its key id, so anything
//! logged while serving it, down in the store, names it. The request's own line is written
//! when its response body ends (or is dropped, for a cut transfer), with the method, the route
//! template, the status, the bytes received and sent and the duration; the same figures go to
//! the metrics.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::{Frame, SizeHint};

use super::auth::{self, client_address};
use super::{AppState, Error};
use crate::config::AuthMode;
use crate::metrics::{Metrics, RouteLabels};

/// The route template a request matched, put on its response for the log and the metrics.
#[derive(Clone, Debug)]
pub struct Route(pub String);

/// Route layer: notes the matched route template on the response.
pub async fn note_route(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let route = matched.map(|matched| matched.as_str().to_owned());
    let mut response = next.run(request).await;
    if let Some(route) = route {
        response.extensions_mut().insert(Route(route));
    }
    response
}

/// Methods kept as metric labels; others are counted as `other`, so that clients cannot
/// create label sets at will.
fn method_label(method: &axum::http::Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Counts the bytes of a request body as the handler reads it.
pub struct CountedBody {
    inner: Body,
    count: Arc<AtomicU64>,
}

impl CountedBody {
    pub fn new(inner: Body, count: Arc<AtomicU64>) -> CountedBody {
        CountedBody { inner, count }
    }
}

impl http_body::Body for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            self.count.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// What is known of a request when its response starts; finished when the body ends.
pub struct Finish {
    pub span: tracing::Span,
    pub started: Instant,
    pub method: axum::http::Method,
    pub path: String,
    pub route: Option<String>,
    pub status: StatusCode,
    pub received: Arc<AtomicU64>,
    pub metrics: Arc<Metrics>,
}

impl Finish {
    fn done(self, sent: u64, complete: bool) {
        let elapsed = self.started.elapsed();
        let received = self.received.load(Ordering::Relaxed);
        let route = self.route.as_deref().unwrap_or("unmatched");
        self.metrics.request_done(
            RouteLabels {
                method: method_label(&self.method).to_owned(),
                route: route.to_owned(),
            },
            self.status.as_u16(),
            elapsed.as_secs_f64(),
            received,
            sent,
        );
        let _entered = self.span.enter();
        tracing::info!(
            method = %self.method,
            path = %self.path,
            route,
            status = self.status.as_u16(),
            bytes_in = received,
            bytes_out = sent,
            elapsed_ms = elapsed.as_millis() as u64,
            complete,
            "request"
        );
    }
}

/// A response body that counts what it sends and finishes the request's log line and
/// metrics when it ends, or when it is dropped unfinished (a client that went away, a cut
/// transfer: `complete=false`).
pub struct LoggedBody {
    inner: Body,
    sent: u64,
    /// The body's length when it declared one (hyper stops polling once that much is sent).
    length: Option<u64>,
    finish: Option<Finish>,
}

impl LoggedBody {
    pub fn new(inner: Body, finish: Finish) -> LoggedBody {
        LoggedBody {
            length: http_body::Body::size_hint(&inner).exact(),
            inner,
            sent: 0,
            finish: Some(finish),
        }
    }

    fn end(&mut self, complete: bool) {
        if let Some(finish) = self.finish.take() {
            finish.done(self.sent, complete);
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(context);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
                if self.inner.is_end_stream() {
                    self.end(true);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(false),
            Poll::Ready(None) => self.end(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        // An empty body is never polled, and one of known length is not polled past it: they
        // end here, complete.
        let complete =
            http_body::Body::is_end_stream(&self.inner) || self.length == Some(self.sent);
        self.end(complete);
    }
}

/// Who may read `/metrics` and the detailed health check: loopback clients, a scraper with
/// the configured token, and (with keys) admins. In lab mode anyone may claim admin, so only
/// the first two.
async fn may_observe(parts: &mut Parts, state: &AppState) -> Result<(), Error> {
    if client_address(parts).is_loopback() {
        return Ok(());
    }
    if let Some(token) = &state.config.metrics_token
        && let Some(offered) = auth::credential(parts)
        && constant_time_eq(offered.as_bytes(), token.as_bytes())
    {
        return Ok(());
    }
    match state.config.auth {
        AuthMode::None => Err(Error::forbidden(
            "Metrics are served to loopback clients, or with the metrics token.",
        )),
        AuthMode::Keys => {
            let authenticated = auth::authenticate(parts, state).await?;
            if auth::caller_for(&authenticated.key)
                .roles
                .iter()
                .any(|role| role == "admin")
            {
                Ok(())
            } else {
                Err(Error::forbidden("Metrics are for admins."))
            }
        }
    }
}

fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len()
        && left
            .iter()
            .zip(right)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(State(state): State<AppState>, request: Request) -> Result<Response, Error> {
    let (mut parts, _) = request.into_parts();
    may_observe(&mut parts, &state).await?;
    let store = state.store.clone();
    let (stats, scrub) =
        super::blocking(move || Ok::<_, Error>((store.stats()?, store.scrub_stats()?))).await?;
    if let Some(edge) = &state.edge {
        let counter = |counter: &std::sync::atomic::AtomicU64| {
            counter.load(std::sync::atomic::Ordering::Relaxed)
        };
        let counters = &edge.counters;
        state.metrics.set_edge([
            counter(&counters.hits),
            counter(&counters.misses),
            counter(&counters.fetched_bytes),
            counter(&counters.served_bytes),
            counter(&counters.evictions),
        ]);
    }
    let text = state.metrics.render(&stats, &scrub);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        text,
    )
        .into_response())
}

/// `GET /healthcheck`, as oslo.middleware's healthcheck answers it: `OK` (200) while the
/// service can take changes; 503 while metadata writes fail (a full or failing disk, a
/// database that could not be reopened) or the free space is under the reserve. With
/// `Accept: application/json`, a JSON body; the detailed one (database, disk, transfers,
/// scrub) for those who may read the metrics.
pub async fn healthcheck(State(state): State<AppState>, request: Request) -> Response {
    let (mut parts, _) = request.into_parts();
    let wants_json = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|accept| accept.contains("application/json"));
    let store = state.store.clone();
    let health = match super::blocking(move || Ok::<_, Error>(store.health())).await {
        Ok(health) => health,
        Err(error) => return error.into_response(),
    };
    let mut reasons = Vec::new();
    if !health.database_writable {
        reasons.push("metadata writes are failing: the disk is full or failing");
    }
    if health
        .free_bytes
        .is_some_and(|free| free < health.reserve_bytes)
    {
        reasons.push("free space is under the reserve kept for metadata");
    }
    let status = if reasons.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let text = if reasons.is_empty() {
        "OK".to_owned()
    } else {
        reasons.join("; ")
    };
    let mut response = if wants_json {
        let detailed = may_observe(&mut parts, &state).await.is_ok();
        let mut body = serde_json::json!({
            "detailed": detailed,
            "reasons": if reasons.is_empty() { vec!["OK"] } else { reasons.clone() },
        });
        if detailed {
            let store = state.store.clone();
            let figures =
                super::blocking(move || Ok::<_, Error>((store.stats()?, store.scrub_stats()?)))
                    .await;
            body["version"] = env!("CARGO_PKG_VERSION").into();
            body["database"] = serde_json::json!({"writable": health.database_writable});
            body["disk"] = serde_json::json!({
                "free_bytes": health.free_bytes,
                "reserve_bytes": health.reserve_bytes,
            });
            if let Ok((stats, scrub)) = figures {
                body["transfers"] = serde_json::json!({
                    "uploads": stats.uploads_in_flight,
                    "downloads": stats.downloads_in_flight,
                });
                body["images"] = stats.images.into();
                body["scrub"] = serde_json::to_value(&scrub).unwrap_or_default();
            }
        }
        (status, axum::Json(body)).into_response()
    } else {
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=UTF-8")],
            text,
        )
            .into_response()
    };
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(super::error::RETRY_AFTER),
        );
    }
    response
}
