//! API keys and the Keystone-compatible identity endpoint: the bootstrap key, the admin
//! endpoint, token issue and validation, re-issue, revocation, expiry, discovery and the
//! authentication failure limiter. Expected shapes follow the golden Keystone exchanges in
//! ../shared/reference/keystone-30/.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::Server;
use crate::keys_support::{
    KEYS, Reply, app_credential_auth, assert_catalog, create_key, header_text, send, split_key,
    start_keys_server, text,
};

const TOKENS: &str = "/v3/auth/tokens";
const UNAUTHORIZED: &str = "The request you have made requires authentication.";

fn password_auth(name: &str, secret: &str) -> Value {
    json!({"auth": {"identity": {
        "methods": ["password"],
        "password": {"user": {"name": name, "domain": {"name": "Default"}, "password": secret}},
    }}})
}

fn token_auth(token: &str) -> Value {
    json!({"auth": {"identity": {"methods": ["token"], "token": {"id": token}}}})
}

fn scoped(mut request: Value, scope: Value) -> Value {
    request["auth"]["scope"] = scope;
    request
}

fn project_named(name: &str) -> Value {
    json!({"project": {"name": name, "domain": {"name": "Default"}}})
}

async fn post_token(server: &Server, request: &Value) -> Reply {
    send(server.request(Method::POST, TOKENS).json(request)).await
}

/// Issues a token that must be granted; returns it with the body.
async fn issue(server: &Server, request: &Value) -> (String, Value) {
    let reply = post_token(server, request).await;
    assert_eq!(
        reply.status,
        StatusCode::CREATED,
        "token request {request} refused: {}",
        reply.body
    );
    let token = header_text(&reply.headers, "x-subject-token").to_owned();
    assert!(token.starts_with("oct-"), "unexpected token format {token}");
    (token, reply.body)
}

/// `GET /v3/auth/tokens` by `caller` for `subject`.
async fn validate(server: &Server, caller: &str, subject: &str) -> Reply {
    send(
        server
            .request(Method::GET, TOKENS)
            .header("X-Auth-Token", caller)
            .header("X-Subject-Token", subject),
    )
    .await
}

/// The status of an image listing made with `credential` in `X-Auth-Token`.
async fn images_with(server: &Server, credential: &str) -> StatusCode {
    server
        .request(Method::GET, "/v2/images")
        .header("X-Auth-Token", credential)
        .send()
        .await
        .unwrap()
        .status()
}

async fn post_key(server: &Server, credential: &str, body: &Value) -> Reply {
    send(
        server
            .request(Method::POST, KEYS)
            .header("X-Auth-Token", credential)
            .json(body),
    )
    .await
}

async fn list_keys(server: &Server, credential: &str) -> Reply {
    send(
        server
            .request(Method::GET, KEYS)
            .header("X-Auth-Token", credential),
    )
    .await
}

async fn revoke(server: &Server, credential: &str, key_id: &str) -> StatusCode {
    server
        .request(Method::DELETE, &format!("{KEYS}/{key_id}"))
        .header("X-Auth-Token", credential)
        .send()
        .await
        .unwrap()
        .status()
}

/// Keystone's error shape: `{"error": {"code", "message", "title"}}` and `Vary`.
fn assert_keystone_error(reply: &Reply, status: StatusCode, case: &str) {
    assert_eq!(reply.status, status, "{case}: {}", reply.body);
    assert_eq!(
        reply.body["error"]["code"],
        status.as_u16(),
        "{case}: {}",
        reply.body
    );
    assert_eq!(
        reply.body["error"]["title"],
        status.canonical_reason().unwrap(),
        "{case}: {}",
        reply.body
    );
    assert!(
        reply.body["error"]["message"].is_string(),
        "{case}: {}",
        reply.body
    );
    assert_eq!(
        header_text(&reply.headers, "vary"),
        "X-Auth-Token",
        "{case}"
    );
}

/// Keystone's one 401 for every failed authentication, pointing at our identity endpoint.
fn assert_unauthorized(reply: &Reply, base: &str, case: &str) {
    assert_keystone_error(reply, StatusCode::UNAUTHORIZED, case);
    assert_eq!(reply.body["error"]["message"], UNAUTHORIZED, "{case}");
    assert_eq!(
        header_text(&reply.headers, "www-authenticate"),
        format!("Keystone uri=\"{base}/v3\""),
        "{case}"
    );
}

fn assert_retry_after(headers: &HeaderMap, case: &str) {
    let seconds: u64 = header_text(headers, "retry-after")
        .parse()
        .unwrap_or_else(|_| panic!("{case}: Retry-After is not a number of seconds"));
    assert!(
        (1..=60).contains(&seconds),
        "{case}: Retry-After {seconds} lies outside the 60 s window"
    );
}

fn is_hex(text: &str, length: usize) -> bool {
    text.len() == length
        && text
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
}

fn role_names(body: &Value) -> Vec<&str> {
    body["token"]["roles"]
        .as_array()
        .unwrap_or_else(|| panic!("no roles in {body}"))
        .iter()
        .map(|role| role["name"].as_str().expect("a role name"))
        .collect()
}

/// Unix seconds of a Keystone time (`2026-11-22T06:40:55.000000Z`).
fn unix_time(value: &Value) -> i64 {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{value} is not a time string"));
    assert!(
        text.ends_with(".000000Z"),
        "{text} is not in Keystone's format"
    );
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|error| panic!("{text}: {error}"))
        .unix_timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_key_is_written_for_the_service_user_only() {
    let (server, admin) = start_keys_server(0).await;
    let path = server.data_dir().join(ocellus::BOOTSTRAP_KEY_FILE);
    let contents = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        contents,
        format!("{admin}\n"),
        "the file holds the key and a newline"
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "bootstrap key file mode is {mode:o}");
    let (id, secret) = split_key(&admin);
    assert!(
        is_hex(&id, 32) && is_hex(&secret, 64),
        "{admin} is not ock-<32 hex>-<64 hex>"
    );

    let listing = list_keys(&server, &admin).await;
    assert_eq!(listing.status, StatusCode::OK, "{}", listing.body);
    assert_eq!(
        listing.body["keys"].as_array().map(Vec::len),
        Some(1),
        "{}",
        listing.body
    );
    let key = &listing.body["keys"][0];
    assert_eq!(key["id"], id.as_str());
    assert_eq!(key["name"], "bootstrap-admin");
    assert_eq!(key["project"], "admin");
    assert_eq!(key["role"], "admin");
    assert_eq!(key["expires_at"], Value::Null);
    assert_eq!(key["expired"], Value::Bool(false));
    assert!(
        !listing.body.to_string().contains(secret.as_str()),
        "the listing reveals the secret"
    );

    // In keys mode the image API wants a credential; discovery does not.
    let response = server
        .request(Method::GET, "/v2/images")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header_text(response.headers(), "www-authenticate"),
        format!("Keystone uri=\"{}/v3\"", server.base)
    );
    assert_eq!(
        server.status(Method::GET, "/versions").await,
        StatusCode::OK
    );
    assert_eq!(images_with(&server, &admin).await, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_creates_lists_and_revokes_keys() {
    let (server, admin) = start_keys_server(0).await;
    let created = create_key(&server, &admin, "alpha", "member", "alpha-ci", Some("30d")).await;
    let id = text(&created, "/id");
    let secret = text(&created, "/secret");
    assert!(is_hex(&id, 32), "key id {id}");
    assert!(is_hex(&secret, 64), "key secret {secret}");
    assert_eq!(text(&created, "/key"), format!("ock-{id}-{secret}"));
    assert_eq!(created["name"], "alpha-ci");
    assert_eq!(created["project"], "alpha");
    assert_eq!(created["role"], "member");
    assert_eq!(created["expired"], Value::Bool(false));
    assert!(is_hex(&text(&created, "/project_id"), 32), "{created}");
    let created_at = created["created_at"]
        .as_i64()
        .unwrap_or_else(|| panic!("created_at is not unix seconds: {created}"));
    assert_eq!(
        created["expires_at"].as_i64(),
        Some(created_at + 30 * 86_400)
    );

    // Keys of one project share its id; another project gets its own.
    let sibling = create_key(&server, &admin, "alpha", "reader", "alpha-viewer", None).await;
    assert_eq!(sibling["project_id"], created["project_id"]);
    assert_eq!(sibling["expires_at"], Value::Null);
    let other = create_key(
        &server,
        &admin,
        "beta",
        "admin",
        "beta-admin",
        Some("2099-01-01T00:00:00Z"),
    )
    .await;
    assert_ne!(other["project_id"], created["project_id"]);
    assert_eq!(other["expires_at"], 4_070_908_800_i64);

    let alpha_key = text(&created, "/key");
    assert_eq!(images_with(&server, &alpha_key).await, StatusCode::OK);

    let listing = list_keys(&server, &admin).await;
    assert_eq!(listing.status, StatusCode::OK, "{}", listing.body);
    let keys = listing.body["keys"].as_array().expect("a keys array");
    let mut names: Vec<&str> = keys
        .iter()
        .map(|key| key["name"].as_str().expect("a key name"))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["alpha-ci", "alpha-viewer", "beta-admin", "bootstrap-admin"]
    );
    for key in keys {
        for hidden in ["secret", "key", "secret_hash", "hash"] {
            assert!(
                key.get(hidden).is_none(),
                "the listing shows {hidden}: {key}"
            );
        }
    }
    let listed = listing.body.to_string();
    for shown in [&created, &sibling, &other] {
        assert!(
            !listed.contains(text(shown, "/secret").as_str()),
            "the listing reveals the secret of {}",
            shown["name"]
        );
    }

    assert_eq!(revoke(&server, &admin, &id).await, StatusCode::NO_CONTENT);
    assert_eq!(
        revoke(&server, &admin, &id).await,
        StatusCode::NOT_FOUND,
        "revoking twice"
    );
    assert_eq!(
        revoke(&server, &admin, &"0".repeat(32)).await,
        StatusCode::NOT_FOUND,
        "revoking an unknown id"
    );
    assert_eq!(
        images_with(&server, &alpha_key).await,
        StatusCode::UNAUTHORIZED,
        "a revoked key"
    );
    assert_eq!(
        images_with(&server, &text(&sibling, "/key")).await,
        StatusCode::OK,
        "revoking one key leaves the others alone"
    );
    let listing = list_keys(&server, &admin).await;
    assert_eq!(listing.status, StatusCode::OK, "{}", listing.body);
    let listed = listing.body["keys"].as_array().expect("a keys array");
    let sibling_id = text(&sibling, "/id");
    assert!(
        listed.iter().any(|key| key["id"] == sibling_id.as_str()),
        "the listing leaves out a live key: {}",
        listing.body
    );
    assert!(
        listed.iter().all(|key| key["id"] != id.as_str()),
        "the revoked key is still listed: {}",
        listing.body
    );
}

/// Runs `ocellus key create` for project `cli` with `arguments` in `cwd`, with no `OCELLUS_*`
/// variables; returns whether it succeeded, its stdout and its stderr.
async fn key_create_command(
    cwd: &std::path::Path,
    arguments: Vec<String>,
) -> (bool, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ocellus"));
    command
        .args([
            "key",
            "create",
            "--project",
            "cli",
            "--role",
            "member",
            "--json",
        ])
        .args(arguments)
        .current_dir(cwd);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OCELLUS_") {
            command.env_remove(name);
        }
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the ocellus binary runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Issue 9: `ocellus key create --url URL --data-dir DIR` authenticates with DIR's bootstrap
/// key, as `--help` says; `--url` alone does not send the default data directory's key to
/// whatever server the URL names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_key_create_with_url_sends_the_named_data_dirs_bootstrap_key() {
    let (server, admin) = start_keys_server(0).await;
    let cwd = tempfile::tempdir().unwrap();
    // The working directory holds a copy of the key as ./ocellus-data, the default data dir.
    let default_data_dir = cwd.path().join("ocellus-data");
    std::fs::create_dir(&default_data_dir).unwrap();
    std::fs::write(
        default_data_dir.join(ocellus::BOOTSTRAP_KEY_FILE),
        format!("{admin}\n"),
    )
    .unwrap();

    let (succeeded, stdout, stderr) = key_create_command(
        cwd.path(),
        vec![
            "--url".into(),
            server.base.clone(),
            "--data-dir".into(),
            server.data_dir().display().to_string(),
            "--name".into(),
            "made-by-cli".into(),
        ],
    )
    .await;
    assert!(succeeded, "stdout: {stdout}\nstderr: {stderr}");
    let created: Value = serde_json::from_str(&stdout).expect("--json prints JSON");
    assert_eq!(created["name"], "made-by-cli");
    assert_eq!(created["project"], "cli");
    let made = text(&created, "/key");
    assert_eq!(images_with(&server, &made).await, StatusCode::OK);

    let (succeeded, stdout, stderr) = key_create_command(
        cwd.path(),
        vec![
            "--url".into(),
            server.base.clone(),
            "--name".into(),
            "not-made".into(),
        ],
    )
    .await;
    assert!(!succeeded, "stdout: {stdout}");
    assert!(stderr.contains("401"), "stderr: {stderr}");
    let listing = list_keys(&server, &admin).await;
    let names: Vec<&str> = listing.body["keys"]
        .as_array()
        .expect("a keys array")
        .iter()
        .map(|key| key["name"].as_str().expect("a key name"))
        .collect();
    assert!(!names.contains(&"not-made"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoint_refuses_non_admins_duplicates_and_bad_requests() {
    let (server, admin) = start_keys_server(0).await;
    let member = create_key(&server, &admin, "alpha", "member", "alpha-ci", None).await;
    let member_key = text(&member, "/key");
    let member_id = text(&member, "/id");

    let new_key = json!({"project": "alpha", "role": "member", "name": "other"});
    assert_eq!(
        list_keys(&server, &member_key).await.status,
        StatusCode::FORBIDDEN,
        "a member listing keys"
    );
    assert_eq!(
        post_key(&server, &member_key, &new_key).await.status,
        StatusCode::FORBIDDEN,
        "a member creating a key"
    );
    assert_eq!(
        revoke(&server, &member_key, &member_id).await,
        StatusCode::FORBIDDEN,
        "a member revoking even its own key"
    );
    assert_eq!(
        images_with(&server, &member_key).await,
        StatusCode::OK,
        "the refused member key still works"
    );
    assert_eq!(
        server.status(Method::GET, KEYS).await,
        StatusCode::UNAUTHORIZED,
        "no credential"
    );

    let duplicate = json!({"project": "beta", "role": "reader", "name": "alpha-ci"});
    assert_eq!(
        post_key(&server, &admin, &duplicate).await.status,
        StatusCode::CONFLICT,
        "a taken name"
    );

    for (case, body) in [
        ("unknown role", json!({"project": "alpha", "role": "owner"})),
        (
            "bad project name",
            json!({"project": "has space", "role": "member"}),
        ),
        (
            "bad key name",
            json!({"project": "alpha", "role": "member", "name": "a/b"}),
        ),
        (
            "expiry without a unit",
            json!({"project": "alpha", "role": "member", "expires": "30"}),
        ),
        (
            "expiry in the past",
            json!({"project": "alpha", "role": "member", "expires": "2000-01-01T00:00:00Z"}),
        ),
        (
            "unknown field",
            json!({"project": "alpha", "role": "member", "colour": "red"}),
        ),
        ("no project", json!({"role": "member"})),
    ] {
        let reply = post_key(&server, &admin, &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{case}: {body}");
    }
    let malformed = server
        .request(Method::POST, KEYS)
        .header("X-Auth-Token", admin.as_str())
        .header("Content-Type", "application/json")
        .body("{\"project\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(
        malformed.status(),
        StatusCode::BAD_REQUEST,
        "malformed JSON"
    );

    // Nothing above created a key.
    let listing = list_keys(&server, &admin).await;
    assert_eq!(
        listing.body["keys"].as_array().map(Vec::len),
        Some(2),
        "{}",
        listing.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn application_credential_tokens_have_keystones_shape() {
    let (server, admin) = start_keys_server(0).await;
    let key = create_key(&server, &admin, "alpha", "member", "alpha-ci", None).await;
    let (id, secret) = (text(&key, "/id"), text(&key, "/secret"));

    let reply = post_token(&server, &app_credential_auth(&id, &secret)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert!(header_text(&reply.headers, "x-subject-token").starts_with("oct-"));
    assert_eq!(header_text(&reply.headers, "vary"), "X-Auth-Token");
    assert!(header_text(&reply.headers, "content-type").starts_with("application/json"));

    let token = &reply.body["token"];
    let domain = json!({"id": "default", "name": "Default"});
    assert_eq!(token["methods"], json!(["application_credential"]));
    assert_eq!(
        token["user"],
        json!({"domain": domain, "id": id, "name": "alpha-ci", "password_expires_at": null})
    );
    assert_eq!(
        token["project"],
        json!({"domain": domain, "id": key["project_id"], "name": "alpha"})
    );
    assert_eq!(token["is_domain"], Value::Bool(false));
    assert_eq!(
        token["application_credential"],
        json!({"id": id, "name": "alpha-ci", "restricted": true})
    );
    assert_eq!(role_names(&reply.body), ["member", "reader"]);
    let audit_ids = token["audit_ids"].as_array().expect("audit_ids");
    assert_eq!(audit_ids.len(), 1, "{token}");
    assert_eq!(
        audit_ids[0].as_str().map(str::len),
        Some(22),
        "audit ids are 16 bytes in unpadded URL-safe base64"
    );
    assert_eq!(
        unix_time(&token["expires_at"]) - unix_time(&token["issued_at"]),
        3600,
        "tokens live an hour"
    );
    assert_catalog(&reply.body, &format!("{}/v3/", server.base), &server.base);

    // ?nocatalog leaves the catalog out and nothing else.
    let reply = send(
        server
            .request(Method::POST, &format!("{TOKENS}?nocatalog"))
            .json(&app_credential_auth(&id, &secret)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert!(
        reply.body["token"].get("catalog").is_none(),
        "{}",
        reply.body
    );
    assert_eq!(reply.body["token"]["user"]["id"], id.as_str());

    // Under /identity the catalog's identity endpoint is /identity/v3/.
    let reply = send(
        server
            .request(Method::POST, "/identity/v3/auth/tokens")
            .json(&app_credential_auth(&id, &secret)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_catalog(
        &reply.body,
        &format!("{}/identity/v3/", server.base),
        &server.base,
    );

    // By name and owning user, as openstacksdk may send it (golden case 15).
    let by_name = json!({"auth": {"identity": {
        "methods": ["application_credential"],
        "application_credential": {
            "name": "alpha-ci",
            "user": {"name": "alpha-ci", "domain": {"name": "Default"}},
            "secret": secret,
        },
    }}});
    let (_, body) = issue(&server, &by_name).await;
    assert_eq!(body["token"]["application_credential"]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_roles_include_implied_roles() {
    let (server, admin) = start_keys_server(0).await;
    let mut role_ids: HashMap<String, Value> = HashMap::new();
    for (role, expected) in [
        ("admin", &["admin", "member", "reader"][..]),
        ("member", &["member", "reader"][..]),
        ("reader", &["reader"][..]),
    ] {
        let key = create_key(
            &server,
            &admin,
            "alpha",
            role,
            &format!("alpha-{role}"),
            None,
        )
        .await;
        let request = app_credential_auth(&text(&key, "/id"), &text(&key, "/secret"));
        let (_, body) = issue(&server, &request).await;
        assert_eq!(role_names(&body), expected, "roles of a {role} key");
        for granted in body["token"]["roles"].as_array().expect("roles") {
            let id = &granted["id"];
            assert!(id.as_str().is_some_and(|id| is_hex(id, 32)), "role id {id}");
            let known = role_ids
                .entry(text(granted, "/name"))
                .or_insert_with(|| id.clone());
            assert_eq!(*known, *id, "a role keeps one id across tokens");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_tokens_are_scoped_to_the_keys_project() {
    let (server, admin) = start_keys_server(0).await;
    let key = create_key(&server, &admin, "alpha", "member", "alpha-user", None).await;
    let (id, secret) = (text(&key, "/id"), text(&key, "/secret"));
    let project_id = text(&key, "/project_id");
    let expected_project = json!({
        "domain": {"id": "default", "name": "Default"},
        "id": project_id,
        "name": "alpha",
    });

    let cases = [
        (
            "scope by project name",
            scoped(password_auth("alpha-user", &secret), project_named("alpha")),
        ),
        (
            "scope by project id",
            scoped(
                password_auth("alpha-user", &secret),
                json!({"project": {"id": project_id}}),
            ),
        ),
        ("no scope", password_auth("alpha-user", &secret)),
        (
            "domain by id",
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": "alpha-user", "domain": {"id": "default"}, "password": secret}}}}}),
        ),
        (
            "user by id",
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "id": id, "password": secret}}}}}),
        ),
    ];
    for (case, request) in cases {
        let (_, body) = issue(&server, &request).await;
        let token = &body["token"];
        assert_eq!(token["project"], expected_project, "{case}");
        assert_eq!(token["methods"], json!(["password"]), "{case}");
        assert_eq!(token["user"]["id"], id.as_str(), "{case}");
        assert_eq!(token["user"]["name"], "alpha-user", "{case}");
        assert!(
            token.get("application_credential").is_none(),
            "{case}: {token}"
        );
        assert_eq!(role_names(&body), ["member", "reader"], "{case}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_token_requests_all_get_keystones_401() {
    let (server, admin) = start_keys_server(0).await;
    let key = create_key(&server, &admin, "alpha", "member", "alpha-user", None).await;
    // A second project, so that "beta" exists.
    create_key(&server, &admin, "beta", "member", "beta-user", None).await;
    let (id, secret) = (text(&key, "/id"), text(&key, "/secret"));
    let wrong = "0".repeat(64);
    let password = || password_auth("alpha-user", &secret);

    let cases = [
        ("wrong password", password_auth("alpha-user", &wrong)),
        ("unknown user", password_auth("nobody", &secret)),
        ("another project", scoped(password(), project_named("beta"))),
        (
            "unknown project",
            scoped(password(), project_named("gamma")),
        ),
        (
            "unknown project id",
            scoped(password(), json!({"project": {"id": "0".repeat(32)}})),
        ),
        (
            "domain scope",
            scoped(password(), json!({"domain": {"id": "default"}})),
        ),
        (
            "system scope",
            scoped(password(), json!({"system": {"all": true}})),
        ),
        (
            "user in another domain",
            json!({"auth": {"identity": {"methods": ["password"], "password": {"user": {
                "name": "alpha-user", "domain": {"name": "Other"}, "password": secret}}}}}),
        ),
        (
            "wrong application credential secret",
            app_credential_auth(&id, &wrong),
        ),
        (
            "unknown application credential",
            app_credential_auth(&"0".repeat(32), &secret),
        ),
        (
            "unsupported method",
            json!({"auth": {"identity": {"methods": ["totp"], "totp": {}}}}),
        ),
    ];
    for (case, request) in cases {
        let reply = post_token(&server, &request).await;
        assert_unauthorized(&reply, &server.base, case);
        assert!(
            !reply.body.to_string().contains(secret.as_str()),
            "{case}: the error echoes the secret"
        );
    }

    // Application credentials cannot ask for a scope, not even their own project (case 24).
    let reply = post_token(
        &server,
        &scoped(app_credential_auth(&id, &secret), project_named("alpha")),
    )
    .await;
    assert_keystone_error(
        &reply,
        StatusCode::UNAUTHORIZED,
        "application credential with a scope",
    );

    // The right credentials still work afterwards.
    issue(&server, &scoped(password(), project_named("alpha"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_token_requests_get_400_404_and_405() {
    let (server, admin) = start_keys_server(0).await;
    let (id, secret) = split_key(&admin);
    let valid = app_credential_auth(&id, &secret).to_string();

    let malformed = send(
        server
            .request(Method::POST, TOKENS)
            .header("Content-Type", "application/json")
            .body("{\"auth\": "),
    )
    .await;
    assert_keystone_error(&malformed, StatusCode::BAD_REQUEST, "malformed JSON");
    for (case, request) in [
        ("no auth", json!({})),
        ("no identity", json!({"auth": {}})),
        ("no methods", json!({"auth": {"identity": {}}})),
    ] {
        let reply = post_token(&server, &request).await;
        assert_keystone_error(&reply, StatusCode::BAD_REQUEST, case);
    }
    let plain = send(
        server
            .request(Method::POST, TOKENS)
            .header("Content-Type", "text/plain")
            .body(valid.clone()),
    )
    .await;
    assert_keystone_error(&plain, StatusCode::BAD_REQUEST, "text/plain body");
    let untyped = send(server.request(Method::POST, TOKENS).body(valid)).await;
    assert_keystone_error(&untyped, StatusCode::BAD_REQUEST, "no Content-Type");

    let bogus = post_token(&server, &token_auth("not-a-token")).await;
    assert_keystone_error(
        &bogus,
        StatusCode::NOT_FOUND,
        "token method with a bogus token",
    );

    let put = send(server.request(Method::PUT, TOKENS).json(&json!({}))).await;
    assert_eq!(put.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        put.body,
        json!({"message": "The method is not allowed for the requested URL."})
    );
    let allow = header_text(&put.headers, "allow");
    assert!(
        allow.contains("POST") && allow.contains("GET"),
        "Allow: {allow}"
    );
    assert_eq!(header_text(&put.headers, "vary"), "X-Auth-Token");

    // None of that spoiled the key.
    issue(&server, &app_credential_auth(&id, &secret)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_validate_by_get_and_head() {
    let (server, admin) = start_keys_server(0).await;
    let alpha = create_key(&server, &admin, "alpha", "member", "alpha-user", None).await;
    let beta = create_key(&server, &admin, "beta", "member", "beta-user", None).await;
    let alpha_key = text(&alpha, "/key");
    let beta_key = text(&beta, "/key");
    let request = app_credential_auth(&text(&alpha, "/id"), &text(&alpha, "/secret"));
    let (token, issued) = issue(&server, &request).await;

    for (case, caller) in [
        ("the owning key", alpha_key.as_str()),
        ("the token itself", token.as_str()),
        ("an admin", admin.as_str()),
    ] {
        let reply = validate(&server, caller, &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{case}: {}", reply.body);
        assert_eq!(
            header_text(&reply.headers, "x-subject-token"),
            token,
            "{case}"
        );
        assert_eq!(
            header_text(&reply.headers, "vary"),
            "X-Auth-Token",
            "{case}"
        );
        assert_eq!(
            reply.body, issued,
            "{case}: validation repeats the body given at issue"
        );
    }
    let bearer = send(
        server
            .request(Method::GET, TOKENS)
            .header("Authorization", format!("Bearer {alpha_key}"))
            .header("X-Subject-Token", token.as_str()),
    )
    .await;
    assert_eq!(
        bearer.status,
        StatusCode::OK,
        "a bearer caller: {}",
        bearer.body
    );

    let reply = send(
        server
            .request(Method::GET, &format!("{TOKENS}?nocatalog"))
            .header("X-Auth-Token", alpha_key.as_str())
            .header("X-Subject-Token", token.as_str()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(
        reply.body["token"].get("catalog").is_none(),
        "{}",
        reply.body
    );
    assert_eq!(reply.body["token"]["project"], issued["token"]["project"]);

    let head = server
        .request(Method::HEAD, TOKENS)
        .header("X-Auth-Token", alpha_key.as_str())
        .header("X-Subject-Token", token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK);
    assert_eq!(header_text(head.headers(), "x-subject-token"), token);
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");

    // Unknown subjects are 404; an API key is not a token.
    for (case, subject) in [
        ("bogus subject", "oct-0123"),
        ("a key as subject", alpha_key.as_str()),
    ] {
        let reply = validate(&server, &admin, subject).await;
        assert_keystone_error(&reply, StatusCode::NOT_FOUND, case);
    }
    let no_subject = send(
        server
            .request(Method::GET, TOKENS)
            .header("X-Auth-Token", admin.as_str()),
    )
    .await;
    assert_keystone_error(&no_subject, StatusCode::NOT_FOUND, "no X-Subject-Token");
    let head = server
        .request(Method::HEAD, TOKENS)
        .header("X-Auth-Token", admin.as_str())
        .header("X-Subject-Token", "oct-0123")
        .send()
        .await
        .unwrap();
    assert_eq!(
        head.status(),
        StatusCode::NOT_FOUND,
        "HEAD of a bogus subject"
    );
    assert!(head.bytes().await.unwrap().is_empty(), "HEAD has no body");

    // The caller must authenticate.
    let anonymous = send(
        server
            .request(Method::GET, TOKENS)
            .header("X-Subject-Token", token.as_str()),
    )
    .await;
    assert_unauthorized(&anonymous, &server.base, "no X-Auth-Token");
    let reply = validate(&server, "not-a-token", &token).await;
    assert_unauthorized(&reply, &server.base, "bogus X-Auth-Token");

    // Another project's member may not look at the token (golden case 34).
    let reply = validate(&server, &beta_key, &token).await;
    assert_keystone_error(&reply, StatusCode::FORBIDDEN, "another user's token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_method_reissues_with_the_parents_expiry_and_audit_chain() {
    let (server, admin) = start_keys_server(0).await;
    let key = create_key(&server, &admin, "alpha", "member", "alpha-user", None).await;
    create_key(&server, &admin, "beta", "member", "beta-user", None).await;
    let (id, secret) = (text(&key, "/id"), text(&key, "/secret"));

    let (parent, parent_body) = issue(&server, &password_auth("alpha-user", &secret)).await;
    let (child, child_body) = issue(&server, &token_auth(&parent)).await;
    assert_ne!(child, parent, "re-issue mints a new token");
    let (before, after) = (&parent_body["token"], &child_body["token"]);
    assert_eq!(after["methods"], json!(["token", "password"]));
    assert_eq!(
        after["expires_at"], before["expires_at"],
        "the parent's expiry is kept"
    );
    assert_eq!(after["user"], before["user"]);
    assert_eq!(after["project"], before["project"]);
    assert_eq!(after["roles"], before["roles"]);
    let parent_audit = before["audit_ids"].as_array().expect("audit_ids");
    let child_audit = after["audit_ids"].as_array().expect("audit_ids");
    assert_eq!(parent_audit.len(), 1, "{before}");
    assert_eq!(child_audit.len(), 2, "{after}");
    assert_eq!(
        child_audit[1], parent_audit[0],
        "the chain names the parent"
    );
    assert_ne!(
        child_audit[0], parent_audit[0],
        "the child has its own audit id"
    );
    assert_eq!(images_with(&server, &child).await, StatusCode::OK);

    // Scoping on re-issue: the same project is fine, another is not.
    issue(
        &server,
        &scoped(token_auth(&parent), project_named("alpha")),
    )
    .await;
    let reply = post_token(&server, &scoped(token_auth(&parent), project_named("beta"))).await;
    assert_unauthorized(&reply, &server.base, "re-issue into another project");

    // An application-credential token keeps its method and credential through re-issue.
    let (app_token, _) = issue(&server, &app_credential_auth(&id, &secret)).await;
    let (_, body) = issue(&server, &token_auth(&app_token)).await;
    assert_eq!(
        body["token"]["methods"],
        json!(["token", "application_credential"])
    );
    assert_eq!(body["token"]["application_credential"]["id"], id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_and_tokens_work_on_the_image_api_in_either_header() {
    let (server, admin) = start_keys_server(0).await;
    let key = create_key(&server, &admin, "alpha", "member", "alpha-user", None).await;
    let key_string = text(&key, "/key");
    let (token, _) = issue(
        &server,
        &app_credential_auth(&text(&key, "/id"), &text(&key, "/secret")),
    )
    .await;

    for (case, credential) in [("key", key_string.as_str()), ("token", token.as_str())] {
        assert_eq!(
            images_with(&server, credential).await,
            StatusCode::OK,
            "{case} in X-Auth-Token"
        );
        for scheme in ["Bearer", "bearer"] {
            let status = server
                .request(Method::GET, "/v2/images")
                .header("Authorization", format!("{scheme} {credential}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::OK, "{case} as '{scheme}' authorization");
        }
    }

    // An image created with a token belongs to the key's project.
    let (status, image) = server
        .json(
            server
                .request(Method::POST, "/v2/images")
                .header("X-Auth-Token", token.as_str())
                .json(
                    &json!({"name": "by-token", "disk_format": "raw", "container_format": "bare"}),
                ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{image}");
    assert_eq!(image["owner"], key["project_id"]);

    // The bearer form of the admin key reaches the admin endpoint too.
    let reply = send(
        server
            .request(Method::GET, KEYS)
            .header("Authorization", format!("Bearer {admin}")),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);

    for (case, value) in [
        ("another scheme", format!("Basic {key_string}")),
        ("a bogus bearer token", "Bearer not-a-token".to_owned()),
    ] {
        let response = server
            .request(Method::GET, "/v2/images")
            .header("Authorization", value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{case}");
        assert_eq!(
            header_text(response.headers(), "www-authenticate"),
            format!("Keystone uri=\"{}/v3\"", server.base),
            "{case}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_the_key_and_its_tokens_at_once() {
    let (server, admin) = start_keys_server(0).await;
    let key = create_key(&server, &admin, "alpha", "member", "alpha-user", None).await;
    let (id, secret) = (text(&key, "/id"), text(&key, "/secret"));
    let key_string = text(&key, "/key");
    let (token, _) = issue(&server, &app_credential_auth(&id, &secret)).await;
    let (reissued, _) = issue(&server, &token_auth(&token)).await;
    let credentials = [
        ("key", key_string.as_str()),
        ("token", token.as_str()),
        ("re-issued token", reissued.as_str()),
    ];
    for (case, credential) in credentials {
        assert_eq!(
            images_with(&server, credential).await,
            StatusCode::OK,
            "{case}"
        );
    }

    assert_eq!(revoke(&server, &admin, &id).await, StatusCode::NO_CONTENT);

    for (case, credential) in credentials {
        assert_eq!(
            images_with(&server, credential).await,
            StatusCode::UNAUTHORIZED,
            "{case} after revocation"
        );
    }
    let reply = post_token(&server, &app_credential_auth(&id, &secret)).await;
    assert_unauthorized(
        &reply,
        &server.base,
        "application credential of a revoked key",
    );
    let reply = post_token(&server, &password_auth("alpha-user", &secret)).await;
    assert_unauthorized(&reply, &server.base, "password of a revoked key");
    let reply = post_token(&server, &token_auth(&token)).await;
    assert_keystone_error(
        &reply,
        StatusCode::NOT_FOUND,
        "re-issuing a revoked key's token",
    );
    let reply = validate(&server, &admin, &token).await;
    assert_keystone_error(
        &reply,
        StatusCode::NOT_FOUND,
        "validating a revoked key's token",
    );
    assert_eq!(
        images_with(&server, &admin).await,
        StatusCode::OK,
        "other keys live on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_and_their_tokens_stop_working() {
    let (server, admin) = start_keys_server(0).await;
    // Three seconds leave time to use the key on a busy machine before it expires.
    let key = create_key(
        &server,
        &admin,
        "alpha",
        "member",
        "short-lived",
        Some("3s"),
    )
    .await;
    let (id, secret) = (text(&key, "/id"), text(&key, "/secret"));
    let key_string = text(&key, "/key");
    let expires_at = key["expires_at"].as_i64().expect("an expiry");
    assert_eq!(Some(expires_at - 3), key["created_at"].as_i64(), "{key}");

    let (token, body) = issue(&server, &app_credential_auth(&id, &secret)).await;
    assert_eq!(
        unix_time(&body["token"]["expires_at"]),
        expires_at,
        "a token does not outlive its key"
    );
    assert_eq!(images_with(&server, &key_string).await, StatusCode::OK);
    assert_eq!(images_with(&server, &token).await, StatusCode::OK);

    let deadline = Duration::from_secs(u64::try_from(expires_at).unwrap() + 1);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let wait = deadline.saturating_sub(now);
    assert!(
        wait <= Duration::from_secs(5),
        "waiting {wait:?} for expiry"
    );
    tokio::time::sleep(wait).await;

    assert_eq!(
        images_with(&server, &key_string).await,
        StatusCode::UNAUTHORIZED,
        "an expired key"
    );
    assert_eq!(
        images_with(&server, &token).await,
        StatusCode::UNAUTHORIZED,
        "the token of an expired key"
    );
    let reply = post_token(&server, &app_credential_auth(&id, &secret)).await;
    assert_unauthorized(
        &reply,
        &server.base,
        "application credential of an expired key",
    );
    let reply = validate(&server, &admin, &token).await;
    assert_keystone_error(&reply, StatusCode::NOT_FOUND, "validating an expired token");

    let listing = list_keys(&server, &admin).await;
    let listed = listing.body["keys"]
        .as_array()
        .expect("a keys array")
        .iter()
        .find(|listed| listed["id"] == id.as_str())
        .unwrap_or_else(|| panic!("the expired key is not listed: {}", listing.body));
    assert_eq!(listed["expired"], Value::Bool(true), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_discovery_documents_need_no_credentials() {
    let (server, _admin) = start_keys_server(0).await;
    let entry = |root: &str| {
        json!({
            "id": "v3.14",
            "status": "stable",
            "updated": "2020-04-07T00:00:00Z",
            "links": [{"rel": "self", "href": format!("{root}/")}],
            "media-types": [{
                "base": "application/json",
                "type": "application/vnd.openstack.identity-v3+json",
            }],
        })
    };
    let v3 = format!("{}/v3", server.base);
    let identity_v3 = format!("{}/identity/v3", server.base);

    for (path, root) in [
        ("/v3", &v3),
        ("/v3/", &v3),
        ("/identity/v3", &identity_v3),
        ("/identity/v3/", &identity_v3),
    ] {
        let reply = send(server.request(Method::GET, path)).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.body);
        assert_eq!(
            reply.body,
            json!({"version": entry(root.as_str())}),
            "{path}"
        );
        assert_eq!(
            header_text(&reply.headers, "vary"),
            "X-Auth-Token",
            "{path}"
        );
    }

    for path in ["/identity", "/identity/"] {
        let reply = send(server.request(Method::GET, path)).await;
        assert_eq!(
            reply.status,
            StatusCode::MULTIPLE_CHOICES,
            "{path}: {}",
            reply.body
        );
        assert_eq!(
            reply.body,
            json!({"versions": {"values": [entry(identity_v3.as_str())]}}),
            "{path}"
        );
        assert_eq!(
            header_text(&reply.headers, "location"),
            format!("{identity_v3}/"),
            "{path}"
        );
        assert_eq!(
            header_text(&reply.headers, "vary"),
            "X-Auth-Token",
            "{path}"
        );
    }

    // The root stays Glance's versions document.
    let (status, root) = server.json(server.request(Method::GET, "/")).await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
    let versions: Vec<&str> = root["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("not Glance's versions list: {root}"))
        .iter()
        .filter_map(|version| version["id"].as_str())
        .collect();
    assert!(versions.contains(&"v2.1"), "{root}");

    let reply = send(server.request(Method::POST, "/v3")).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(header_text(&reply.headers, "allow").contains("GET"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_answered_with_429_and_retry_after() {
    let (server, admin) = start_keys_server(3).await;
    let (id, secret) = split_key(&admin);
    let wrong = "0".repeat(64);
    // A key used before the failures is verified from the cache afterwards; a key never used
    // would need an argon2 verification, which an address over the limit no longer gets.
    let fresh = create_key(&server, &admin, "alpha", "member", "fresh", None).await;
    let fresh_key = fresh["key"].as_str().unwrap().to_owned();

    // Three failures, in three places, are plain 401s.
    assert_eq!(
        images_with(&server, "not-a-key").await,
        StatusCode::UNAUTHORIZED,
        "failure 1"
    );
    let reply = post_token(&server, &password_auth("bootstrap-admin", &wrong)).await;
    assert_unauthorized(&reply, &server.base, "failure 2");
    let reply = post_token(&server, &app_credential_auth(&id, &wrong)).await;
    assert_unauthorized(&reply, &server.base, "failure 3");

    // Then every further failure, and every credential that would need argon2, gets 429.
    assert_eq!(
        images_with(&server, "not-a-key").await,
        StatusCode::TOO_MANY_REQUESTS,
        "a fourth bad key"
    );
    let response = server
        .request(Method::GET, "/v2/images")
        .header("X-Auth-Token", fresh_key.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "image API, key not verified before"
    );
    assert_retry_after(response.headers(), "image API");

    let reply = post_token(&server, &app_credential_auth(&id, &wrong)).await;
    assert_keystone_error(&reply, StatusCode::TOO_MANY_REQUESTS, "token request");
    assert_retry_after(&reply.headers, "token request");

    let reply = validate(&server, &admin, "oct-0123").await;
    assert_eq!(
        reply.status,
        StatusCode::NOT_FOUND,
        "a cached key may still validate"
    );
    let reply = validate(&server, "not-a-key", "oct-0123").await;
    assert_keystone_error(&reply, StatusCode::TOO_MANY_REQUESTS, "token validation");
    assert_retry_after(&reply.headers, "token validation");

    // The admin key, verified before, still works: one noisy client does not lock out others
    // behind the same address.
    assert_eq!(
        images_with(&server, &admin).await,
        StatusCode::OK,
        "cached key"
    );
    let reply = post_token(&server, &app_credential_auth(&id, &secret)).await;
    assert_eq!(reply.status, StatusCode::CREATED, "cached app credential");

    // Discovery needs no authentication and stays available.
    assert_eq!(server.status(Method::GET, "/v3").await, StatusCode::OK);
    assert_eq!(
        server.status(Method::GET, "/versions").await,
        StatusCode::OK
    );
}
