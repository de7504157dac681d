//! UI sessions: login with an API key, the session cookie, the CSRF token.
//!
//! A session id is 256 random bits, sent only in the cookie (`HttpOnly; SameSite=Strict`;
//! under TLS `__Host-` and `Secure`, else `Path=/ui`) and stored only as its BLAKE3 digest.
//! A session ends after 30 idle minutes, 12 hours, at logout, or as soon as its key is revoked
//! or expires: every request reads the key again. The lab mode has no login; each browser gets
//! an anonymous session, so that its forms carry a CSRF token all the same.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};

use super::super::auth::{caller_for, client_address};
use super::super::{AppState, blocking};
use super::forms::Form;
use super::views;
use crate::config::AuthMode;
use crate::identity::AuthError;
use crate::kv::{KeyRecord, SESSION_ABSOLUTE_SECS as ABSOLUTE_SECS, UiSession};
use crate::policy::Caller;

/// The cookie's name over plain HTTP (scoped to `/ui`).
const COOKIE: &str = "ocellus_session";
/// Its name under TLS: the `__Host-` prefix makes browsers insist on `Secure`, `Path=/` and no
/// `Domain`, so no other host or plain-HTTP page can plant one.
const TLS_COOKIE: &str = "__Host-ocellus_session";
/// `last_seen` is written at most this often (each write is a commit).
const TOUCH_SECS: i64 = 60;

fn now() -> i64 {
    crate::identity::now_secs()
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random source works");
    super::super::wire::hex(&bytes)
}

fn digest(id: &str) -> [u8; 32] {
    *blake3::hash(id.as_bytes()).as_bytes()
}

fn is_tls(parts_extensions: &axum::http::Extensions) -> bool {
    parts_extensions
        .get::<super::super::listener::Connection>()
        .is_some_and(|connection| connection.tls)
}

/// The session id the request's cookie carries (64 hex digits), if any.
fn cookie_id(headers: &HeaderMap, tls: bool) -> Option<String> {
    let name = if tls { TLS_COOKIE } else { COOKIE };
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| value.len() == 64 && value.bytes().all(|byte| byte.is_ascii_hexdigit()))
}

/// `Set-Cookie` for a new session.
fn set_cookie(id: &str, tls: bool) -> HeaderValue {
    let text = if tls {
        format!(
            "{TLS_COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={ABSOLUTE_SECS}"
        )
    } else {
        format!("{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={ABSOLUTE_SECS}")
    };
    HeaderValue::from_str(&text).expect("hex ids make valid headers")
}

/// `Set-Cookie` that drops the session cookie.
fn clear_cookie(tls: bool) -> HeaderValue {
    HeaderValue::from_static(if tls {
        "__Host-ocellus_session=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    } else {
        "ocellus_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"
    })
}

/// Whether a stored session may still be used, given its key (as read now).
fn usable(session: &UiSession, key: Option<&KeyRecord>, mode: AuthMode, now: i64) -> bool {
    let fresh = !session.expired(now);
    let holder = match (mode, &session.key_id, key) {
        (AuthMode::None, None, _) => true,
        (AuthMode::Keys, Some(id), Some(key)) => {
            key.id == *id && key.expires_at.is_none_or(|expiry| expiry > now)
        }
        _ => false,
    };
    fresh && holder
}

/// A live session and its key, found from the request's cookie; ends (removes) a stored one
/// that is no longer usable.
async fn find(
    state: &AppState,
    headers: &HeaderMap,
    tls: bool,
) -> Result<Option<(UiSession, [u8; 32], Option<KeyRecord>)>, super::super::Error> {
    let Some(id) = cookie_id(headers, tls) else {
        return Ok(None);
    };
    let digest = digest(&id);
    let store = state.store.clone();
    let mode = state.config.auth;
    blocking(move || {
        let Some(session) = store.session(&digest)? else {
            return Ok(None);
        };
        let key = match &session.key_id {
            Some(key_id) => store.key(key_id)?,
            None => None,
        };
        let now = now();
        if !usable(&session, key.as_ref(), mode, now) {
            store.remove_session(&digest)?;
            return Ok(None);
        }
        if now - session.last_seen >= TOUCH_SECS {
            store.touch_session(&digest, now)?;
        }
        Ok(Some((session, digest, key)))
    })
    .await
}

/// Starts a session (for `key_id`, or anonymous); returns its `Set-Cookie` and the id.
async fn start(
    state: &AppState,
    key_id: Option<String>,
    tls: bool,
) -> Result<(HeaderValue, String), super::super::Error> {
    let id = random_hex();
    let now = now();
    let session = UiSession {
        key_id,
        csrf: random_hex(),
        created_at: now,
        last_seen: now,
    };
    let store = state.store.clone();
    let digest = digest(&id);
    blocking(move || Ok(store.insert_session(&digest, &session)?)).await?;
    Ok((set_cookie(&id, tls), id))
}

/// The lab mode's anonymous session: a browser without a usable one gets one, and the request
/// goes on as if it had carried it.
pub async fn lab_session(
    state: &AppState,
    request: &mut Request,
) -> Result<Option<HeaderValue>, Response> {
    if state.config.auth != AuthMode::None {
        return Ok(None);
    }
    let tls = is_tls(request.extensions());
    match find(state, request.headers(), tls).await {
        Ok(Some(_)) => return Ok(None),
        Ok(None) => {}
        Err(error) => return Err(views::bare_error(error.status, &error.message).into_response()),
    }
    let (cookie, id) = start(state, None, tls)
        .await
        .map_err(|error| views::bare_error(error.status, &error.message).into_response())?;
    let name = if tls { TLS_COOKIE } else { COOKIE };
    if let Ok(value) = HeaderValue::from_str(&format!("{name}={id}")) {
        request.headers_mut().insert(header::COOKIE, value);
    }
    Ok(Some(cookie))
}

/// A UI request's caller: its session, key and the `Caller` the policy rules take.
pub struct Ui {
    pub caller: Caller,
    pub session: UiSession,
    digest: [u8; 32],
    pub key: Option<KeyRecord>,
    pub tls: bool,
    pub lab: bool,
}

impl FromRequestParts<AppState> for Ui {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Ui, Response> {
        let tls = is_tls(&parts.extensions);
        let found = find(state, &parts.headers, tls)
            .await
            .map_err(|error| views::bare_error(error.status, &error.message).into_response())?;
        let Some((session, digest, key)) = found else {
            return Err(login_needed(parts));
        };
        let lab = state.config.auth == AuthMode::None;
        let mut caller = match &key {
            Some(key) => caller_for(key),
            None => Caller {
                project_id: state.config.default_project.clone(),
                user_id: None,
                roles: ["admin", "member", "reader"]
                    .iter()
                    .map(|role| role.to_string())
                    .collect(),
                memberships: Default::default(),
            },
        };
        let store = state.store.clone();
        let project = caller.project_id.clone();
        caller.memberships = blocking(move || Ok(store.memberships(&project)?))
            .await
            .map_err(|error| views::bare_error(error.status, &error.message).into_response())?;
        Ok(Ui {
            caller,
            session,
            digest,
            key,
            tls,
            lab,
        })
    }
}

impl Ui {
    /// A 403 page unless `token` is this session's CSRF token.
    pub fn csrf_refusal(&self, token: Option<&str>) -> Option<Response> {
        let matches = token.is_some_and(|token| {
            // Compared as digests: `blake3::Hash` compares in constant time.
            blake3::hash(token.as_bytes()) == blake3::hash(self.session.csrf.as_bytes())
        });
        (!matches).then(|| {
            views::bare_error(
                StatusCode::FORBIDDEN,
                "Refused: the form's security token is missing or out of date (reload the page and try again). Nothing was changed.",
            )
        })
    }

    /// Who is logged in, for the page header.
    pub fn who(&self) -> String {
        match &self.key {
            Some(key) => format!(
                "{} (project {}, {})",
                key.name,
                key.project_name,
                key.role.as_str()
            ),
            None => format!("lab mode admin (project {})", self.caller.project_id),
        }
    }
}

/// A form posted from a live session, with the session's CSRF token: what every UI POST
/// handler takes, so none can forget the check.
pub struct Posted {
    pub ui: Ui,
    pub form: Form,
}

impl axum::extract::FromRequest<AppState> for Posted {
    type Rejection = Response;

    async fn from_request(request: Request, state: &AppState) -> Result<Posted, Response> {
        let (mut parts, body) = request.into_parts();
        let ui = Ui::from_request_parts(&mut parts, state).await?;
        let form = Form::from_request(Request::from_parts(parts, body), state).await?;
        match ui.csrf_refusal(form.get("csrf")) {
            Some(refusal) => Err(refusal),
            None => Ok(Posted { ui, form }),
        }
    }
}

/// Where a request without a session goes: GETs to the login page (coming back afterwards),
/// script requests get a 401 they can show, forms go to the login page too.
fn login_needed(parts: &Parts) -> Response {
    if parts.headers.contains_key("x-csrf-token") {
        return super::super::Error::new(
            StatusCode::UNAUTHORIZED,
            "Your session has ended; log in again.",
        )
        .into_response();
    }
    let next = if parts.method == Method::GET {
        parts
            .uri
            .path_and_query()
            .map(|path| path.as_str().to_owned())
            .unwrap_or_else(|| "/ui/".into())
    } else {
        "/ui/".into()
    };
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("next", &next)
        .finish();
    Redirect::to(&format!("/ui/login?{query}")).into_response()
}

/// Only our own pages are places to return to after login.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(next)
            if next.starts_with("/ui/")
                && !next.starts_with("/ui//")
                && !next.contains('\\')
                && !next.bytes().any(|byte| byte.is_ascii_control()) =>
        {
            next.to_owned()
        }
        _ => "/ui/".into(),
    }
}

/// `GET /ui/login`.
pub async fn login_page(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    if state.config.auth == AuthMode::None {
        return Redirect::to("/ui/").into_response();
    }
    let next = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(key, _)| key == "next")
        .map(|(_, value)| value.into_owned());
    views::login(StatusCode::OK, &safe_next(next.as_deref()), None)
}

/// `POST /ui/login`: checks the key as the API does (the same failure limits), then starts a
/// session. The guard has checked the request's origin; there is no session yet to hold a
/// CSRF token.
pub async fn login(State(state): State<AppState>, parts: Parts, form: Form) -> Response {
    if state.config.auth == AuthMode::None {
        return Redirect::to("/ui/").into_response();
    }
    let next = safe_next(form.get("next"));
    let key = form.get("key").unwrap_or_default().trim().to_owned();
    if !key.starts_with("ock-") {
        return views::login(
            StatusCode::UNAUTHORIZED,
            &next,
            Some("That is not an API key: keys look like ock-… (see `ocellus key create`)."),
        );
    }
    let client = client_address(&parts);
    let authenticated = match state.identity.authenticate(&key, client).await {
        Ok(authenticated) => authenticated,
        Err(AuthError::Invalid) => {
            return views::login(
                StatusCode::UNAUTHORIZED,
                &next,
                Some("That API key is not valid (unknown, revoked or expired)."),
            );
        }
        Err(AuthError::Throttled { retry_after }) => {
            let mut response = views::login(
                StatusCode::TOO_MANY_REQUESTS,
                &next,
                Some(super::super::auth::THROTTLED_MESSAGE),
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return response;
        }
        Err(AuthError::Internal(error)) => {
            tracing::error!(%error, "authentication failed internally");
            return views::bare_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The server could not check the key.",
            )
            .into_response();
        }
    };
    tracing::Span::current().record("key", authenticated.key.id.as_str());
    let tls = is_tls(&parts.extensions);
    match start(&state, Some(authenticated.key.id.clone()), tls).await {
        Ok((cookie, _)) => {
            tracing::info!(key = %authenticated.key.id, "ui session started");
            let mut response = Redirect::to(&next).into_response();
            response.headers_mut().append(header::SET_COOKIE, cookie);
            response
        }
        Err(error) => views::bare_error(error.status, &error.message).into_response(),
    }
}

/// `POST /ui/logout`.
pub async fn logout(State(state): State<AppState>, Posted { ui, .. }: Posted) -> Response {
    let store = state.store.clone();
    let digest = ui.digest;
    if let Err(error) = blocking(move || Ok(store.remove_session(&digest)?)).await {
        return views::bare_error(error.status, &error.message).into_response();
    }
    let mut response = Redirect::to(if ui.lab { "/ui/" } else { "/ui/login" }).into_response();
    response
        .headers_mut()
        .append(header::SET_COOKIE, clear_cookie(ui.tls));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    /// The idle limit (`kv::sessions`): 30 minutes.
    const IDLE_SECS: i64 = 30 * 60;

    #[test]
    fn the_cookie_is_read_by_its_name_and_shape_only() {
        let id = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&format!("other=1; ocellus_session={id}; x=y")).unwrap(),
        );
        assert_eq!(cookie_id(&headers, false), Some(id.clone()));
        assert_eq!(cookie_id(&headers, true), None);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("ocellus_session=../../etc"),
        );
        assert_eq!(cookie_id(&headers, false), None);
    }

    #[test]
    fn cookies_carry_the_flags() {
        let plain = set_cookie(&"a".repeat(64), false);
        let plain = plain.to_str().unwrap();
        assert!(plain.starts_with("ocellus_session="));
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
            assert!(plain.contains(flag), "{plain}");
        }
        assert!(!plain.contains("Secure"));
        let tls = set_cookie(&"a".repeat(64), true);
        let tls = tls.to_str().unwrap();
        assert!(tls.starts_with("__Host-ocellus_session="));
        for flag in ["HttpOnly", "SameSite=Strict", "Path=/;", "Secure"] {
            assert!(tls.contains(flag), "{tls}");
        }
    }

    #[test]
    fn sessions_end_when_idle_old_or_their_key_goes() {
        let key = KeyRecord {
            id: "k".repeat(32),
            name: "alice".into(),
            project_id: "p".into(),
            project_name: "p".into(),
            role: crate::kv::Role::Member,
            created_at: 0,
            expires_at: Some(5_000),
            secret_hash: String::new(),
        };
        let session = UiSession {
            key_id: Some(key.id.clone()),
            csrf: String::new(),
            created_at: 1_000,
            last_seen: 1_000,
        };
        assert!(usable(
            &session,
            Some(&key),
            AuthMode::Keys,
            1_000 + IDLE_SECS
        ));
        assert!(!usable(
            &session,
            Some(&key),
            AuthMode::Keys,
            1_001 + IDLE_SECS
        ));
        assert!(!usable(&session, None, AuthMode::Keys, 1_000));
        assert!(!usable(&session, Some(&key), AuthMode::None, 1_000));
        let expired = KeyRecord {
            expires_at: Some(1_000),
            ..key.clone()
        };
        assert!(!usable(&session, Some(&expired), AuthMode::Keys, 1_000));
        let old = UiSession {
            last_seen: 1_000 + ABSOLUTE_SECS,
            ..session.clone()
        };
        assert!(!usable(
            &old,
            Some(&KeyRecord {
                expires_at: None,
                ..key
            }),
            AuthMode::Keys,
            1_001 + ABSOLUTE_SECS
        ));
        let anonymous = UiSession {
            key_id: None,
            ..session
        };
        assert!(usable(&anonymous, None, AuthMode::None, 1_000));
        assert!(!usable(&anonymous, None, AuthMode::Keys, 1_000));
    }

    #[test]
    fn only_our_pages_are_login_destinations() {
        assert_eq!(safe_next(Some("/ui/images/x?a=b")), "/ui/images/x?a=b");
        for bad in [
            "//evil.example/",
            "/ui//evil.example",
            "https://evil/",
            "/v2/images",
            "/ui/\\x",
        ] {
            assert_eq!(safe_next(Some(bad)), "/ui/", "{bad}");
        }
        assert_eq!(safe_next(None), "/ui/");
    }
}
