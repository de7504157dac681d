//! A Keystone-compatible identity endpoint, just wide enough for the OpenStack clients.
//!
//! Served under `/v3` and again under `/identity` (`/identity` answers 300 like Keystone's
//! root, so an auth URL given without a version works there; `/` stays Glance's versions
//! document). `POST …/v3/auth/tokens` exchanges an API key for a token by the
//! `application_credential` method (id = key id, secret = key secret), the `password` method
//! (user name = key name, password = key secret, domain `Default`) or the `token` method;
//! `GET`/`HEAD` validate a token. The token body and its service catalog follow Keystone's
//! shape (see ../shared/reference/keystone-30/). Errors are Keystone's JSON, not Glance's.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde_json::{Value, json};

use super::auth::{THROTTLED_MESSAGE, client_address, credential, header_text, www_authenticate};
use super::{AppState, BaseUrl};
use crate::identity::{AuthError, Authenticated, Method as AuthMethod, TokenClaims};
use crate::kv::{KeyRecord, Role};

/// The identity API version we mimic (Keystone 30 reports v3.14).
const VERSION_ID: &str = "v3.14";
const VERSION_UPDATED: &str = "2020-04-07T00:00:00Z";
/// The one region of the catalog.
const REGION: &str = "RegionOne";
/// All keys live in Keystone's default domain.
const DOMAIN_ID: &str = "default";
const DOMAIN_NAME: &str = "Default";
/// Largest accepted token request body.
const BODY_LIMIT: usize = 64 * 1024;

/// A Keystone-style error answer: `{"error": {"code", "message", "title"}}`.
struct KeystoneError {
    status: StatusCode,
    message: String,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl KeystoneError {
    fn new(status: StatusCode, message: impl Into<String>) -> KeystoneError {
        KeystoneError {
            status,
            message: message.into(),
            headers: Vec::new(),
        }
    }

    fn bad_request(message: impl Into<String>) -> KeystoneError {
        KeystoneError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unauthorized(base: &str) -> KeystoneError {
        let mut error = KeystoneError::new(
            StatusCode::UNAUTHORIZED,
            "The request you have made requires authentication.",
        );
        if let Some(value) = www_authenticate(base) {
            error.headers.push((header::WWW_AUTHENTICATE, value));
        }
        error
    }

    fn from_auth(error: AuthError, base: &str) -> KeystoneError {
        match error {
            AuthError::Invalid => KeystoneError::unauthorized(base),
            AuthError::Throttled { retry_after } => {
                let mut error =
                    KeystoneError::new(StatusCode::TOO_MANY_REQUESTS, THROTTLED_MESSAGE);
                error
                    .headers
                    .push((header::RETRY_AFTER, HeaderValue::from(retry_after)));
                error
            }
            AuthError::Internal(detail) => {
                tracing::error!(error = %detail, "authentication failed internally");
                KeystoneError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "An unexpected error prevented the server from fulfilling your request.",
                )
            }
        }
    }
}

impl IntoResponse for KeystoneError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = json!({"error": {"code": self.status.as_u16(), "message": self.message, "title": title}});
        let mut response = (self.status, Json(body)).into_response();
        for (name, value) in self.headers {
            response.headers_mut().insert(name, value);
        }
        vary(response)
    }
}

fn vary(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("X-Auth-Token"));
    response
}

/// The identity root this request came in under: `…/v3` or `…/identity/v3`, no trailing slash.
fn identity_root(base: &str, uri: &OriginalUri) -> String {
    if uri.path().starts_with("/identity") {
        format!("{base}/identity/v3")
    } else {
        format!("{base}/v3")
    }
}

fn version_entry(root: &str) -> Value {
    json!({
        "id": VERSION_ID,
        "status": "stable",
        "updated": VERSION_UPDATED,
        "links": [{"rel": "self", "href": format!("{root}/")}],
        "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}],
    })
}

/// `GET /identity`: 300 with the one version, as Keystone's root answers.
pub async fn identity_versions(BaseUrl(base): BaseUrl) -> Response {
    let root = format!("{base}/identity/v3");
    let mut response = (
        StatusCode::MULTIPLE_CHOICES,
        Json(json!({"versions": {"values": [version_entry(&root)]}})),
    )
        .into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("{root}/")) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    vary(response)
}

/// `GET /v3`: the version document.
pub async fn identity_version(BaseUrl(base): BaseUrl, uri: OriginalUri) -> Response {
    let root = identity_root(&base, &uri);
    vary(Json(json!({"version": version_entry(&root)})).into_response())
}

/// A stable id for a named catalog or role object, shaped like Keystone's (32 hex digits).
fn stable_id(kind: &str, name: &str) -> String {
    let digest = blake3::hash(format!("ocellus {kind} {name}").as_bytes());
    digest.to_hex()[..32].to_owned()
}

fn catalog(base: &str, identity_root: &str) -> Value {
    let service = |kind: &str, name: &str, url: &str| {
        let endpoints: Vec<Value> = ["public", "internal", "admin"]
            .iter()
            .map(|interface| {
                json!({
                    "id": stable_id("endpoint", &format!("{kind} {interface}")),
                    "interface": interface,
                    "region_id": REGION,
                    "url": url,
                    "region": REGION,
                })
            })
            .collect();
        json!({"endpoints": endpoints, "id": stable_id("service", kind), "type": kind, "name": name})
    };
    json!([
        service("identity", "keystone", &format!("{identity_root}/")),
        service("image", "glance", base),
    ])
}

fn keystone_time(unix_seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_seconds)
        .ok()
        .and_then(|time| {
            time.format(time::macros::format_description!(
                "[year]-[month]-[day]T[hour]:[minute]:[second].000000Z"
            ))
            .ok()
        })
        .unwrap_or_default()
}

fn token_body(key: &KeyRecord, claims: &TokenClaims, catalog: Option<Value>) -> Value {
    let domain = json!({"id": DOMAIN_ID, "name": DOMAIN_NAME});
    let roles: Vec<Value> = key
        .role
        .effective()
        .iter()
        .map(|role| json!({"id": stable_id("role", role.as_str()), "name": role.as_str()}))
        .collect();
    let audit_ids: Vec<String> = claims
        .audit_ids
        .iter()
        .map(|id| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id))
        .collect();
    let mut token = json!({
        "methods": claims.methods.iter().map(|method| method.as_str()).collect::<Vec<_>>(),
        "user": {"domain": domain, "id": key.id, "name": key.name, "password_expires_at": null},
        "audit_ids": audit_ids,
        "expires_at": keystone_time(claims.expires_at),
        "issued_at": keystone_time(claims.issued_at),
        "project": {"domain": domain, "id": key.project_id, "name": key.project_name},
        "is_domain": false,
        "roles": roles,
    });
    if let Some(catalog) = catalog {
        token["catalog"] = catalog;
    }
    if claims.methods.contains(&AuthMethod::ApplicationCredential) {
        token["application_credential"] =
            json!({"id": key.id, "name": key.name, "restricted": true});
    }
    json!({ "token": token })
}

fn token_response(status: StatusCode, token: &str, body: Value, head_only: bool) -> Response {
    let mut response = if head_only {
        let length = serde_json::to_vec(&body)
            .map(|bytes| bytes.len())
            .unwrap_or(0);
        let mut response = status.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
        response
    } else {
        (status, Json(body)).into_response()
    };
    if let Ok(value) = HeaderValue::from_str(token) {
        response.headers_mut().insert("X-Subject-Token", value);
    }
    vary(response)
}

fn wants_catalog(uri: &OriginalUri) -> bool {
    !uri.query()
        .unwrap_or("")
        .split('&')
        .any(|pair| pair == "nocatalog" || pair.starts_with("nocatalog="))
}

/// Checks a `{"id"}` or `{"name", "domain"}` reference to the default domain.
fn default_domain(domain: Option<&Value>) -> bool {
    match domain {
        None => true,
        Some(domain) => {
            let id = domain.get("id").and_then(Value::as_str);
            let name = domain.get("name").and_then(Value::as_str);
            id.is_none_or(|id| id == DOMAIN_ID) && name.is_none_or(|name| name == DOMAIN_NAME)
        }
    }
}

/// Whether a requested scope names the key's project (by id, or by name in domain Default).
fn scope_matches(scope: &Value, key: &KeyRecord) -> bool {
    let Some(project) = scope.get("project") else {
        // Domain and system scopes do not exist here.
        return false;
    };
    if let Some(id) = project.get("id").and_then(Value::as_str) {
        return id == key.project_id;
    }
    match project.get("name").and_then(Value::as_str) {
        Some(name) => name == key.project_name && default_domain(project.get("domain")),
        None => false,
    }
}

/// `POST /v3/auth/tokens`.
pub async fn issue_token(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    uri: OriginalUri,
    request: Request,
) -> Response {
    match issue(&state, &base, &uri, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn issue(
    state: &AppState,
    base: &str,
    uri: &OriginalUri,
    request: Request,
) -> Result<Response, KeystoneError> {
    let (parts, body) = request.into_parts();
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(KeystoneError::bad_request(
            "Token requests must be sent as application/json.",
        ));
    }
    let bytes: Bytes = match tokio::time::timeout(
        super::SMALL_BODY_TIMEOUT,
        axum::body::to_bytes(body, BODY_LIMIT),
    )
    .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(_)) => {
            return Err(KeystoneError::bad_request(
                "The request body is too large or was cut off.",
            ));
        }
        Err(_) => {
            return Err(KeystoneError::new(
                StatusCode::REQUEST_TIMEOUT,
                "The request body did not arrive in time.",
            ));
        }
    };
    let body: Value = serde_json::from_slice(&bytes)
        .map_err(|_| KeystoneError::bad_request("The request body is not valid JSON."))?;
    let auth = body
        .get("auth")
        .filter(|auth| auth.is_object())
        .ok_or_else(|| KeystoneError::bad_request("'auth' is a required property"))?;
    let identity = auth
        .get("identity")
        .filter(|identity| identity.is_object())
        .ok_or_else(|| KeystoneError::bad_request("'identity' is a required property"))?;
    let methods: Vec<&str> = identity
        .get("methods")
        .and_then(Value::as_array)
        .map(|methods| methods.iter().filter_map(Value::as_str).collect())
        .ok_or_else(|| KeystoneError::bad_request("'methods' is a required property"))?;
    let scope = auth.get("scope");
    let client = client_address(&parts);
    let identity_api = &state.identity;

    let (key, method, parent) = if methods.contains(&"application_credential") {
        let credential = identity
            .get("application_credential")
            .ok_or_else(|| KeystoneError::bad_request("'application_credential' is missing"))?;
        let secret = credential
            .get("secret")
            .and_then(Value::as_str)
            .ok_or_else(|| KeystoneError::bad_request("'secret' is a required property"))?;
        let key = if let Some(id) = credential.get("id").and_then(Value::as_str) {
            identity_api.authenticate_id(id, secret, client).await
        } else if let Some(name) = credential.get("name").and_then(Value::as_str) {
            let user = credential.get("user");
            let user_matches = |key: &KeyRecord| {
                user.is_none_or(|user| {
                    user.get("id")
                        .and_then(Value::as_str)
                        .is_none_or(|id| id == key.id)
                        && user
                            .get("name")
                            .and_then(Value::as_str)
                            .is_none_or(|name| name == key.name)
                })
            };
            match identity_api.authenticate_name(name, secret, client).await {
                Ok(key) if user_matches(&key) => Ok(key),
                Ok(_) => Err(AuthError::Invalid),
                Err(error) => Err(error),
            }
        } else {
            return Err(KeystoneError::bad_request(
                "An application credential needs an 'id', or a 'name' and a 'user'",
            ));
        }
        .map_err(|error| KeystoneError::from_auth(error, base))?;
        if scope.is_some() {
            let mut error = KeystoneError::unauthorized(base);
            error.message = "Application credentials cannot request a scope.".into();
            return Err(error);
        }
        (key, AuthMethod::ApplicationCredential, None)
    } else if methods.contains(&"password") {
        let user = identity
            .get("password")
            .and_then(|password| password.get("user"))
            .ok_or_else(|| KeystoneError::bad_request("'user' is a required property"))?;
        let secret = user
            .get("password")
            .and_then(Value::as_str)
            .ok_or_else(|| KeystoneError::bad_request("'password' is a required property"))?;
        let key = if let Some(id) = user.get("id").and_then(Value::as_str) {
            identity_api.authenticate_id(id, secret, client).await
        } else if let Some(name) = user.get("name").and_then(Value::as_str) {
            if !default_domain(user.get("domain")) {
                return Err(KeystoneError::unauthorized(base));
            }
            identity_api.authenticate_name(name, secret, client).await
        } else {
            return Err(KeystoneError::bad_request(
                "A password user needs an 'id', or a 'name' and a 'domain'",
            ));
        }
        .map_err(|error| KeystoneError::from_auth(error, base))?;
        (key, AuthMethod::Password, None)
    } else if methods.contains(&"token") {
        let token = identity
            .get("token")
            .and_then(|token| token.get("id"))
            .and_then(Value::as_str)
            .ok_or_else(|| KeystoneError::bad_request("'id' is a required property of 'token'"))?;
        let authenticated = identity_api
            .authenticate(token, client)
            .await
            .map_err(|error| match error {
                AuthError::Invalid => {
                    KeystoneError::new(StatusCode::NOT_FOUND, "The token is not recognized.")
                }
                other => KeystoneError::from_auth(other, base),
            })?;
        let method = AuthMethod::Token;
        (authenticated.key, method, authenticated.token)
    } else {
        return Err(KeystoneError::unauthorized(base));
    };

    if let Some(scope) = scope
        && !scope_matches(scope, &key)
    {
        return Err(KeystoneError::unauthorized(base));
    }
    let (token, claims) = identity_api.issue_token(&key, method, parent.as_ref());
    tracing::info!(key = %key.id, method = method.as_str(), "token issued");
    let catalog = wants_catalog(uri).then(|| catalog(base, &identity_root(base, uri)));
    Ok(token_response(
        StatusCode::CREATED,
        &token,
        token_body(&key, &claims, catalog),
        false,
    ))
}

/// `GET` and `HEAD /v3/auth/tokens`: validates `X-Subject-Token` for the caller in
/// `X-Auth-Token`. A non-admin may only validate their own key's tokens.
pub async fn validate_token(
    State(state): State<AppState>,
    BaseUrl(base): BaseUrl,
    uri: OriginalUri,
    method: Method,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let head_only = method == Method::HEAD;
    let result = async {
        let caller = credential(&parts).ok_or_else(|| KeystoneError::unauthorized(&base))?;
        let client = client_address(&parts);
        let Authenticated { key: caller, .. } =
            state
                .identity
                .authenticate(caller, client)
                .await
                .map_err(|error| KeystoneError::from_auth(error, &base))?;
        let subject = subject_token(&parts.headers)?;
        let not_found =
            || KeystoneError::new(StatusCode::NOT_FOUND, "The token is not recognized.");
        let Authenticated { key, token } = state
            .identity
            .verify_token(subject)
            .await
            .map_err(|error| KeystoneError::from_auth(error, &base))?
            .ok_or_else(not_found)?;
        let claims = token.ok_or_else(not_found)?;
        if caller.id != key.id && caller.role != Role::Admin {
            return Err(KeystoneError::new(
                StatusCode::FORBIDDEN,
                "You are not authorized to validate this token.",
            ));
        }
        let catalog = wants_catalog(&uri).then(|| catalog(&base, &identity_root(&base, &uri)));
        Ok(token_response(
            StatusCode::OK,
            subject,
            token_body(&key, &claims, catalog),
            head_only,
        ))
    }
    .await;
    match result {
        Ok(response) => response,
        Err(error) if head_only => {
            let mut response = error.into_response();
            *response.body_mut() = axum::body::Body::empty();
            response
        }
        Err(error) => error.into_response(),
    }
}

fn subject_token(headers: &HeaderMap) -> Result<&str, KeystoneError> {
    header_text(headers, "x-subject-token")
        .ok_or_else(|| KeystoneError::new(StatusCode::NOT_FOUND, "The token is not recognized."))
}

/// 405 for other methods on the identity routes, in Keystone's shape.
pub async fn identity_method_not_allowed(allow: &'static str) -> Response {
    let mut response = (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"message": "The method is not allowed for the requested URL."})),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    vary(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> KeyRecord {
        KeyRecord {
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "ci".into(),
            project_id: "fedcba9876543210fedcba9876543210".into(),
            project_name: "alpha".into(),
            role: Role::Member,
            created_at: 0,
            expires_at: None,
            secret_hash: String::new(),
        }
    }

    #[test]
    fn scopes_must_name_the_keys_project() {
        let key = key();
        assert!(scope_matches(
            &json!({"project": {"name": "alpha", "domain": {"name": "Default"}}}),
            &key
        ));
        assert!(scope_matches(
            &json!({"project": {"id": key.project_id}}),
            &key
        ));
        assert!(!scope_matches(
            &json!({"project": {"name": "beta", "domain": {"name": "Default"}}}),
            &key
        ));
        assert!(!scope_matches(
            &json!({"project": {"name": "alpha", "domain": {"name": "Other"}}}),
            &key
        ));
        assert!(!scope_matches(&json!({"system": {"all": true}}), &key));
    }

    #[test]
    fn token_times_use_keystones_format() {
        assert_eq!(keystone_time(0), "1970-01-01T00:00:00.000000Z");
    }
}
