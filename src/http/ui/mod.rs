//! The web UI under `/ui/`: server-rendered pages over the same handlers and store calls as
//! `/v2`, one first-party script for uploads and live status, and its own sessions.
//!
//! Every request to `/ui` passes `guard` first: the Host must be an IP literal, `localhost` or
//! one of `ui.allowed_hosts` (a DNS-rebinding page cannot reach us under its own name);
//! unsafe methods must come from our own origin (`Sec-Fetch-Site`, else `Origin`); in the lab
//! mode a browser without a session gets an anonymous one (it still needs a CSRF token); and
//! every answer gets the security headers (a CSP that allows only our own script and style,
//! nothing inline, no framing). `session` turns the cookie into a `Caller`; only this module
//! ever reads it. `pages` holds the handlers, `forms` the form parsing, `views` the templates.

mod assets;
mod forms;
mod pages;
mod session;
mod views;

use std::net::IpAddr;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::AppState;

/// The UI's routes, under its guard; empty when `ui.enabled` is off (then `/ui` is unrouted,
/// as on a Glance).
pub fn routes(state: &AppState) -> Router<AppState> {
    if !state.config.ui.enabled {
        return Router::new();
    }
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(pages::list))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/static/{hash}/{file}", get(assets::serve))
        .route("/ui/images/new", get(pages::create_page))
        .route("/ui/images", post(pages::create))
        .route("/ui/images/{id}", get(pages::details))
        .route("/ui/images/{id}/status", get(pages::status))
        .route(
            "/ui/images/{id}/edit",
            get(pages::edit_page).post(pages::edit),
        )
        .route(
            "/ui/images/{id}/file",
            get(pages::download).put(pages::upload),
        )
        .route("/ui/images/{id}/tags", post(pages::add_tag))
        .route("/ui/images/{id}/tags/remove", post(pages::remove_tag))
        .route("/ui/images/{id}/members", post(pages::add_member))
        .route("/ui/images/{id}/members/remove", post(pages::remove_member))
        .route("/ui/images/{id}/members/answer", post(pages::answer_share))
        .route("/ui/images/{id}/deactivate", post(pages::deactivate))
        .route("/ui/images/{id}/reactivate", post(pages::reactivate))
        .route(
            "/ui/images/{id}/delete",
            get(pages::delete_page).post(pages::delete),
        )
        .route("/ui/{*rest}", get(pages::not_found).post(pages::not_found))
        .layer(middleware::from_fn_with_state(state.clone(), guard))
}

/// What every page forbids: anything but our own script, style and images; forms and fetches
/// only to us; no framing.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Host check, origin check, lab-mode session, security headers.
async fn guard(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let mut response = match admit(&state, &mut request).await {
        Ok(new_cookie) => {
            let mut response = next.run(request).await;
            if let Some(cookie) = new_cookie {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            response
        }
        Err(refusal) => refusal,
    };
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// The checks before any handler; `Ok(Some(cookie))` when a lab-mode session was started for
/// this request.
async fn admit(state: &AppState, request: &mut Request) -> Result<Option<HeaderValue>, Response> {
    let host = request_host(request.headers());
    if !host_allowed(host.as_deref(), &state.config.ui.allowed_hosts) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "This web UI answers only to IP addresses, localhost and the names listed in ui.allowed_hosts (a defence against DNS rebinding). Reach it by address, or add this host name to ui.allowed_hosts.",
        ));
    }
    let unsafe_method = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    if unsafe_method && !same_origin(request) {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "Refused: this request did not come from a page of this server (a cross-site request). Nothing was changed.",
        ));
    }
    if unsafe_method
        && let Some(edge) = &state.edge
        && request.uri().path().starts_with("/ui/images")
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            &format!(
                "This server is an edge cache of the images of source '{}'; change images at its upstream.",
                edge.settings.source
            ),
        ));
    }
    session::lab_session(state, request).await
}

/// A plain refusal page (before any session exists, so without the page chrome).
fn refuse(status: StatusCode, message: &str) -> Response {
    views::bare_error(status, message).into_response()
}

/// The host the request names, lower-cased, without its port.
fn request_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?.trim();
    let host = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        let (address, _) = rest.split_once(']')?;
        address
    } else {
        host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|byte| byte.is_ascii_digit()) {
                name
            } else {
                host
            }
        })
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// IP literals, `localhost` and the configured names pass.
fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    let Some(host) = host.filter(|host| !host.is_empty()) else {
        return false;
    };
    host.parse::<IpAddr>().is_ok() || host == "localhost" || allowed.iter().any(|name| name == host)
}

/// Whether an unsafe request comes from one of our pages: `Sec-Fetch-Site` says
/// `same-origin` (or `none`: typed by the user), or, from a browser that does not send it,
/// `Origin` is this server's own scheme and host. Neither: refused.
fn same_origin(request: &Request) -> bool {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return matches!(site.as_bytes(), b"same-origin" | b"none");
    }
    let Some(origin) = headers
        .get(header::ORIGIN)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let tls = request
        .extensions()
        .get::<super::listener::Connection>()
        .is_some_and(|connection| connection.tls);
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
    else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    origin.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_ip_literals_localhost_or_allowed_names() {
        let mut headers = HeaderMap::new();
        let mut host = |value: &'static str| {
            headers.insert(header::HOST, HeaderValue::from_static(value));
            request_host(&headers)
        };
        assert_eq!(host("127.0.0.1:9292").as_deref(), Some("127.0.0.1"));
        assert_eq!(host("[::1]:9292").as_deref(), Some("::1"));
        assert_eq!(host("LocalHost").as_deref(), Some("localhost"));
        assert_eq!(host("images.lab.:80").as_deref(), Some("images.lab"));
        let allowed = vec!["images.lab".to_owned()];
        for good in ["127.0.0.1", "::1", "localhost", "images.lab", "10.1.2.3"] {
            assert!(host_allowed(Some(good), &allowed), "{good}");
        }
        for bad in [
            "evil.example",
            "localhost.evil.example",
            "",
            "127.0.0.1.nip.io",
        ] {
            assert!(!host_allowed(Some(bad), &allowed), "{bad}");
        }
        assert!(!host_allowed(None, &allowed));
    }

    #[test]
    fn unsafe_requests_need_our_origin() {
        let request = |pairs: &[(&'static str, &'static str)]| {
            let mut request = Request::new(axum::body::Body::empty());
            for (name, value) in pairs {
                request
                    .headers_mut()
                    .insert(*name, HeaderValue::from_static(value));
            }
            request
        };
        assert!(same_origin(&request(&[("sec-fetch-site", "same-origin")])));
        assert!(same_origin(&request(&[("sec-fetch-site", "none")])));
        assert!(!same_origin(&request(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&request(&[
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://127.0.0.1:9292"),
            ("host", "127.0.0.1:9292"),
        ])));
        assert!(same_origin(&request(&[
            ("origin", "http://127.0.0.1:9292"),
            ("host", "127.0.0.1:9292"),
        ])));
        assert!(!same_origin(&request(&[
            ("origin", "http://127.0.0.2:8000"),
            ("host", "127.0.0.1:9292"),
        ])));
        assert!(!same_origin(&request(&[("host", "127.0.0.1:9292")])));
    }
}
