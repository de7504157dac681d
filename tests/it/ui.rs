//! The web UI's guards, checked over HTTP without a browser: sessions and their cookie, CSRF
//! tokens, origin and Host checks, and that `/v2` never honours the UI's cookie. The browser
//! tests (`tests/ui/`) drive the pages themselves.

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};

use crate::common::Server;
use crate::keys_support::{KEYS, create_key, split_key, start_keys_server, start_tls_server};

/// A client that shows redirects instead of following them.
fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The `Set-Cookie` of a response, as text.
fn set_cookie(headers: &HeaderMap) -> String {
    headers
        .get("set-cookie")
        .map(|value| value.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// `name=value` of a `Set-Cookie`, to send back.
fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token of a page's forms.
fn csrf_of(page: &str) -> String {
    let marker = "name=\"csrf\" value=\"";
    let start = page.find(marker).expect("the page has a form with a token") + marker.len();
    page[start..start + 64].to_owned()
}

/// A page as a browser on our origin would ask for it.
async fn get(base: &str, path: &str, cookie: &str) -> (StatusCode, HeaderMap, String) {
    let response = client()
        .get(format!("{base}{path}"))
        .header("cookie", cookie)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// A form post; `site` is the `Sec-Fetch-Site` the browser would send (None: not sent).
async fn post(
    base: &str,
    path: &str,
    cookie: &str,
    site: Option<&str>,
    form: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut request = client()
        .post(format!("{base}{path}"))
        .header("cookie", cookie)
        .form(form);
    if let Some(site) = site {
        request = request.header("sec-fetch-site", site);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

/// Logs in with `key`; returns the session cookie to send back.
async fn login(base: &str, key: &str) -> String {
    let (status, headers, body) = post(
        base,
        "/ui/login",
        "",
        Some("same-origin"),
        &[("key", key), ("next", "/ui/")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers["location"], "/ui/");
    cookie_pair(&set_cookie(&headers))
}

async fn image_count(server: &Server, key: &str) -> usize {
    let (status, body) = server
        .json(
            server
                .request(Method::GET, "/v2/images")
                .header("X-Auth-Token", key),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    body["images"].as_array().unwrap().len()
}

#[tokio::test]
async fn keys_mode_pages_need_a_login_and_the_cookie_is_scoped_and_strict() {
    let (server, admin) = start_keys_server(0).await;
    let (status, headers, _) = get(&server.base, "/ui/images/new", "").await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/login?next=%2Fui%2Fimages%2Fnew");

    let (status, _, page) = get(&server.base, "/ui/login", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("name=\"key\""));

    let (status, headers, _) = post(
        &server.base,
        "/ui/login",
        "",
        Some("same-origin"),
        &[("key", &admin), ("next", "/ui/images/new")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers["location"], "/ui/images/new");
    let cookie = set_cookie(&headers);
    assert!(cookie.starts_with("ocellus_session="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    let cookie = cookie_pair(&cookie);
    let (status, headers, page) = get(&server.base, "/ui/", &cookie).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Images"));
    // The page's headers: a strict CSP, no sniffing, no referrer, not cached, not framed.
    let csp = headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "script-src 'self'",
        "frame-ancestors 'none'",
        "default-src 'none'",
    ] {
        assert!(csp.contains(directive), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"));
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert_eq!(headers["cache-control"], "no-store");
    assert!(headers.get("access-control-allow-origin").is_none());

    // The API never honours the UI's cookie.
    let response = client()
        .get(server.url("/v2/images"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // And there is no CORS anywhere.
    let response = client()
        .request(Method::OPTIONS, server.url("/v2/images"))
        .header("origin", "http://127.0.0.2:8000")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );

    // Logout ends the session: the same cookie is sent to the login page afterwards.
    let (_, _, page) = get(&server.base, "/ui/", &cookie).await;
    let csrf = csrf_of(&page);
    let (status, headers, _) = post(
        &server.base,
        "/ui/logout",
        &cookie,
        Some("same-origin"),
        &[("csrf", &csrf)],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(set_cookie(&headers).contains("Max-Age=0"));
    let (status, headers, _) = get(&server.base, "/ui/", &cookie).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/ui/login")
    );
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_then_throttled_like_the_api() {
    let (server, admin) = start_keys_server(2).await;
    let (id, _) = split_key(&admin);
    let wrong = format!("ock-{id}-{}", "0".repeat(64));
    for _ in 0..2 {
        let (status, _, page) = post(
            &server.base,
            "/ui/login",
            "",
            Some("same-origin"),
            &[("key", &wrong)],
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(page.contains("not valid"), "{page}");
        assert!(!page.contains(&"0".repeat(64)), "the key is never echoed");
    }
    let (status, headers, page) = post(
        &server.base,
        "/ui/login",
        "",
        Some("same-origin"),
        &[("key", &wrong)],
    )
    .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{page}");
    assert!(headers.contains_key("retry-after"));
    // The same limiter as the API's: that address is throttled there too.
    let response = client()
        .get(server.url("/v2/images"))
        .header("X-Auth-Token", &wrong)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    server.stop().await;
}

#[tokio::test]
async fn unsafe_requests_need_our_origin_and_the_session_token() {
    let (server, admin) = start_keys_server(0).await;
    let cookie = login(&server.base, &admin).await;
    let (_, _, page) = get(&server.base, "/ui/images/new", &cookie).await;
    let csrf = csrf_of(&page);
    let before = image_count(&server, &admin).await;
    let form = |token: &str| vec![("csrf", token.to_owned()), ("name", "x".to_owned())];
    let refused = [
        // Another site's page (the SameSite cookie would not even be sent by a browser).
        (Some("cross-site"), csrf.clone()),
        (Some("same-site"), csrf.clone()),
        // Our origin, but without or with a wrong token.
        (Some("same-origin"), String::new()),
        (Some("same-origin"), "f".repeat(64)),
    ];
    for (site, token) in refused {
        let pairs = form(&token);
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, _, page) = post(&server.base, "/ui/images", &cookie, site, &pairs).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{site:?} {token}: {page}");
        assert!(page.contains("Nothing was changed"), "{page}");
    }
    // Without Sec-Fetch-Site, the Origin decides; with neither, refused.
    for origin in [Some("http://127.0.0.2:8000"), Some("null"), None] {
        let mut request = client()
            .post(server.url("/ui/images"))
            .header("cookie", &cookie)
            .form(&[("csrf", csrf.as_str()), ("name", "x")]);
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        assert_eq!(
            request.send().await.unwrap().status(),
            StatusCode::FORBIDDEN,
            "{origin:?}"
        );
    }
    // The upload's token travels in a header.
    let id = {
        let (status, body) = server
            .json(
                server
                    .request(Method::POST, "/v2/images")
                    .header("X-Auth-Token", &admin)
                    .json(&serde_json::json!({"disk_format": "raw", "container_format": "bare"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        body["id"].as_str().unwrap().to_owned()
    };
    let upload = |token: Option<&str>| {
        let mut request = client()
            .put(server.url(&format!("/ui/images/{id}/file")))
            .header("cookie", &cookie)
            .header("sec-fetch-site", "same-origin")
            .header("content-type", "application/octet-stream")
            .body(vec![1u8; 4096]);
        if let Some(token) = token {
            request = request.header("x-csrf-token", token);
        }
        request.send()
    };
    assert_eq!(upload(None).await.unwrap().status(), StatusCode::FORBIDDEN);
    assert_eq!(
        upload(Some(&"0".repeat(64))).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    // Only the image made through the API exists, still queued, without data.
    assert_eq!(image_count(&server, &admin).await, before + 1);
    let (status, body) = server
        .json(
            server
                .request(Method::GET, &format!("/v2/images/{id}"))
                .header("X-Auth-Token", &admin),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "queued");
    assert!(server.blob_files().is_empty());

    // With both, it works: the same form creates the image.
    let (status, headers, page) = post(
        &server.base,
        "/ui/images",
        &cookie,
        Some("same-origin"),
        &[("csrf", &csrf), ("name", "made in the ui")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{page}");
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/ui/images/")
    );
    assert_eq!(image_count(&server, &admin).await, before + 2);
    assert_eq!(
        upload(Some(&csrf)).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    server.stop().await;
}

#[tokio::test]
async fn the_ui_answers_only_to_ip_literals_localhost_and_allowed_names() {
    let server = Server::start_with(|config| {
        config.ui.allowed_hosts = vec!["images.lab.example".into()];
    })
    .await;
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let with_host = |host: String| client().get(server.url("/ui/")).header("host", host).send();
    for good in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        format!("images.lab.example:{port}"),
    ] {
        assert_eq!(
            with_host(good.clone()).await.unwrap().status(),
            StatusCode::OK,
            "{good}"
        );
    }
    for bad in [
        format!("attacker.example:{port}"),
        "localhost.attacker.example".to_owned(),
        format!("127.0.0.1.nip.io:{port}"),
    ] {
        let response = with_host(bad.clone()).await.unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN, "{bad}");
        assert!(response.headers().get("set-cookie").is_none(), "{bad}");
    }
    // The API itself is not limited by the UI's rule.
    let response = client()
        .get(server.url("/v2/images"))
        .header("host", "attacker.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    server.stop().await;
}

#[tokio::test]
async fn lab_mode_gives_an_anonymous_session_with_a_token_and_a_banner() {
    let server = Server::start().await;
    let (status, headers, page) = get(&server.base, "/ui/images/new", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("Lab mode"), "{page}");
    let cookie = cookie_pair(&set_cookie(&headers));
    let csrf = csrf_of(&page);
    // The same browser keeps its session.
    let (_, headers, page) = get(&server.base, "/ui/images/new", &cookie).await;
    assert!(headers.get("set-cookie").is_none());
    assert_eq!(csrf_of(&page), csrf);
    // A form without the token is refused even here.
    let (status, _, _) = post(
        &server.base,
        "/ui/images",
        &cookie,
        Some("same-origin"),
        &[("name", "x")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, _) = post(
        &server.base,
        "/ui/images",
        &cookie,
        Some("same-origin"),
        &[("csrf", &csrf), ("name", "x")],
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let (_, ids, _) = server.list_ids("").await;
    assert_eq!(ids.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn revoking_the_key_ends_its_sessions_at_once() {
    let (server, admin) = start_keys_server(0).await;
    let created = create_key(&server, &admin, "beta", "member", "bob", None).await;
    let key = created["key"].as_str().unwrap().to_owned();
    let key_id = created["id"].as_str().unwrap().to_owned();
    let cookie = login(&server.base, &key).await;
    assert_eq!(get(&server.base, "/ui/", &cookie).await.0, StatusCode::OK);
    let status = server
        .request(Method::DELETE, &format!("{KEYS}/{key_id}"))
        .header("X-Auth-Token", &admin)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, headers, _) = get(&server.base, "/ui/", &cookie).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(
        headers["location"]
            .to_str()
            .unwrap()
            .starts_with("/ui/login")
    );
    server.stop().await;
}

#[tokio::test]
async fn under_tls_the_cookie_is_host_prefixed_and_secure() {
    let server = start_tls_server(|config| {
        config.auth = ocellus::config::AuthMode::None;
    })
    .await;
    let response = server.client.get(server.url("/ui/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let cookie = set_cookie(response.headers());
    assert!(cookie.starts_with("__Host-ocellus_session="), "{cookie}");
    for flag in ["Secure", "HttpOnly", "SameSite=Strict", "Path=/;"] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    server.stop().await;
}

#[tokio::test]
async fn the_ui_can_be_turned_off() {
    let server = Server::start_with(|config| config.ui.enabled = false).await;
    // An unrouted path: Glance's versions document, as for any path it does not serve.
    let response = client().get(server.url("/ui/")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::MULTIPLE_CHOICES);
    assert!(response.headers().get("set-cookie").is_none());
    server.stop().await;
}

#[tokio::test]
async fn static_assets_are_immutable_under_their_hash() {
    let server = Server::start().await;
    let (_, _, page) = get(&server.base, "/ui/", "").await;
    let start = page.find("/ui/static/").unwrap();
    let end = start + page[start..].find('"').unwrap();
    let url = &page[start..end];
    let response = client().get(server.url(url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["cache-control"],
        HeaderValue::from_static("public, max-age=31536000, immutable")
    );
    let stale = url.replace("/ui/static/", "/ui/static/0");
    let response = client().get(server.url(&stale)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    server.stop().await;
}
