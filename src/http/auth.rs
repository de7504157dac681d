//! Who is calling: the `Caller` extractor.
//!
//! In the lab mode (`auth = "none"`) nobody proves anything: like Glance deployed without
//! Keystone, a request acts as an admin of the default project unless the `X-Project-Id` (or
//! `X-Tenant-Id`), `X-User-Id` and `X-Roles` headers say otherwise. With `auth = "keys"`, the
//! request must carry an API key or a token minted from one, in `X-Auth-Token` (what
//! glanceclient and openstacksdk send) or `Authorization: Bearer`; `Identity` checks it.
//! Either way the caller's image memberships are loaded here, for the visibility rules.

use std::net::{IpAddr, Ipv4Addr};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};

use super::listener::Connection;
use super::{AppState, BaseUrl, Error};
use crate::config::AuthMode;
use crate::identity::{AuthError, Authenticated};
use crate::kv::KeyRecord;
use crate::policy::Caller;

/// Roles of a lab-mode caller that names none.
const LAB_ROLES: [&str; 3] = ["admin", "member", "reader"];

impl FromRequestParts<AppState> for Caller {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, Error> {
        let mut caller = match state.config.auth {
            AuthMode::None => lab_caller(parts, &state.config.default_project),
            AuthMode::Keys => caller_for(&authenticate(parts, state).await?.key),
        };
        // One short read transaction (usually an empty range), off the async workers.
        let store = state.store.clone();
        let project = caller.project_id.clone();
        caller.memberships = super::blocking(move || Ok(store.memberships(&project)?)).await?;
        Ok(caller)
    }
}

/// The caller an API key (or a token minted from it) stands for.
pub fn caller_for(key: &KeyRecord) -> Caller {
    Caller {
        project_id: key.project_id.clone(),
        user_id: Some(key.id.clone()),
        roles: key
            .role
            .effective()
            .iter()
            .map(|role| role.as_str().to_owned())
            .collect(),
        memberships: Default::default(),
    }
}

/// The credential a request carries: `X-Auth-Token`, else a bearer token.
pub fn credential(parts: &Parts) -> Option<&str> {
    header_text(&parts.headers, "x-auth-token").or_else(|| {
        header_text(&parts.headers, "authorization").and_then(|value| {
            let (scheme, token) = value.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim())
                .filter(|token| !token.is_empty())
        })
    })
}

/// The address failures are counted against.
pub fn client_address(parts: &Parts) -> IpAddr {
    parts
        .extensions
        .get::<Connection>()
        .map(|connection| connection.peer.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
}

/// Checks the request's credential; 401 (with Keystone's `WWW-Authenticate`) or 429 if it
/// fails.
pub async fn authenticate(parts: &mut Parts, state: &AppState) -> Result<Authenticated, Error> {
    let Ok(BaseUrl(base)) = BaseUrl::from_request_parts(parts, state).await;
    let Some(credential) = credential(parts) else {
        return Err(unauthorized(&base));
    };
    let client = client_address(parts);
    let authenticated = state
        .identity
        .authenticate(credential, client)
        .await
        .map_err(|error| auth_error(error, &base))?;
    // The request's log lines name the key (its id, never the secret).
    tracing::Span::current().record("key", authenticated.key.id.as_str());
    Ok(authenticated)
}

/// Renders an authentication failure.
pub fn auth_error(error: AuthError, base: &str) -> Error {
    match error {
        AuthError::Invalid => unauthorized(base),
        AuthError::Throttled { retry_after } => {
            Error::new(StatusCode::TOO_MANY_REQUESTS, THROTTLED_MESSAGE)
                .with_header_value(header::RETRY_AFTER, HeaderValue::from(retry_after))
        }
        AuthError::Internal(error) => {
            tracing::error!(%error, "authentication failed internally");
            Error::internal()
        }
    }
}

/// The message of a 429 from the failure limiter.
pub const THROTTLED_MESSAGE: &str =
    "Too many failed authentication attempts from this address; retry later.";

/// `WWW-Authenticate` of every 401: where to get a token, as keystonemiddleware says it.
pub fn www_authenticate(base: &str) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("Keystone uri=\"{base}/v3\"")).ok()
}

/// 401 pointing at our Keystone-compatible endpoint, as keystonemiddleware does.
pub fn unauthorized(base: &str) -> Error {
    let error = Error::new(
        StatusCode::UNAUTHORIZED,
        "Authentication required: send an API key or a token in the X-Auth-Token header.",
    );
    match www_authenticate(base) {
        Some(value) => error.with_header_value(header::WWW_AUTHENTICATE, value),
        None => error,
    }
}

/// A header's trimmed text, if present, readable and not empty.
pub(super) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// The caller of a lab-mode request that names nothing: the default project, every role.
pub fn lab_default_caller(default_project: &str) -> Caller {
    Caller {
        project_id: default_project.to_owned(),
        user_id: None,
        roles: LAB_ROLES.iter().map(|role| role.to_string()).collect(),
        memberships: Default::default(),
    }
}

fn lab_caller(parts: &Parts, default_project: &str) -> Caller {
    let header = |name: &str| header_text(&parts.headers, name);
    let project_id = header("x-project-id")
        .or_else(|| header("x-tenant-id"))
        .unwrap_or(default_project)
        .to_owned();
    let roles = match header("x-roles") {
        Some(roles) => roles
            .split(',')
            .map(|role| role.trim().to_ascii_lowercase())
            .filter(|role| !role.is_empty())
            .collect(),
        None => LAB_ROLES.iter().map(|role| role.to_string()).collect(),
    };
    Caller {
        project_id,
        user_id: header("x-user-id").map(str::to_owned),
        roles,
        memberships: Default::default(),
    }
}
