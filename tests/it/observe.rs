//! Issue 10: what an operator sees: /metrics after known traffic, who may read it, the health
//! check under its reserve, JSON log lines carrying the request id, and the scrub.

use std::io::BufRead;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::common::{Server, eventually, random_bytes};
use crate::keys_support::{create_key, read_bootstrap_key};

/// The samples of a Prometheus text page, by their full name with labels.
#[tokio::test]
async fn metrics_count_known_traffic() {
    let server = Server::start().await;
    let bytes = random_bytes(300_000, 11);
    let first = server.create_raw().await;
    let second = server.create_raw().await;
    assert_eq!(
        server.upload(&first, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    for _ in 0..2 {
        assert_eq!(server.download(&first).await.1.len(), bytes.len());
    }
    assert_eq!(
        server.status(Method::GET, "/v2/images/nonsense").await,
        StatusCode::NOT_FOUND
    );
    // The same bytes again: deduplicated.
    assert_eq!(
        server.upload(&second, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let file = "route=\"/v2/images/{image_id}/file\"";
    let mut seen = server.metrics().await;
    // A request is counted when its response body ends, which may be just after the client
    // has read it.
    eventually(async || {
        seen = server.metrics().await;
        seen.find(&format!(
            "ocellus_http_requests_total{{method=\"GET\",{file},status=\"200\"}}"
        )) == Some(2.0)
            && seen.find(&format!(
                "ocellus_http_requests_total{{method=\"PUT\",{file},status=\"204\"}}"
            )) == Some(2.0)
    })
    .await;
    assert_eq!(
        seen.get(
            "ocellus_http_requests_total{method=\"POST\",route=\"/v2/images\",status=\"201\"}"
        ),
        2.0
    );
    assert_eq!(
        seen.get("ocellus_http_requests_total{method=\"GET\",route=\"/v2/images/{image_id}\",status=\"404\"}"
        ),
        1.0
    );
    assert_eq!(
        seen.get(&format!(
            "ocellus_http_sent_bytes_total{{method=\"GET\",{file}}}"
        )),
        2.0 * bytes.len() as f64
    );
    assert_eq!(
        seen.get(&format!(
            "ocellus_http_received_bytes_total{{method=\"PUT\",{file}}}"
        )),
        2.0 * bytes.len() as f64
    );
    assert_eq!(
        seen.get(&format!(
            "ocellus_http_request_duration_seconds_count{{method=\"GET\",{file}}}"
        )),
        2.0
    );
    assert_eq!(seen.get("ocellus_images{status=\"active\"}"), 2.0);
    assert_eq!(seen.get("ocellus_images{status=\"queued\"}"), 0.0);
    assert_eq!(seen.get("ocellus_blobs"), 1.0);
    assert_eq!(seen.get("ocellus_blob_data_bytes"), bytes.len() as f64);
    assert_eq!(
        seen.get("ocellus_image_data_bytes"),
        2.0 * bytes.len() as f64
    );
    assert_eq!(seen.get("ocellus_dedupe_saved_bytes"), bytes.len() as f64);
    assert_eq!(
        seen.get("ocellus_transfers_in_flight{kind=\"upload\"}"),
        0.0
    );
    assert_eq!(seen.get("ocellus_quarantined_blobs"), 0.0);
}

/// A request as if from another host, straight into the router.
async fn from_afar(server: &Server, request: axum::http::Request<axum::body::Body>) -> StatusCode {
    let mut request = request;
    request
        .extensions_mut()
        .insert(ocellus::http::listener::Connection {
            peer: "192.0.2.7:40000".parse().unwrap(),
            tls: false,
        });
    server.router().oneshot(request).await.unwrap().status()
}

fn get(path: &str, credential: Option<&str>) -> axum::http::Request<axum::body::Body> {
    let mut builder = axum::http::Request::get(path);
    if let Some(credential) = credential {
        builder = builder.header("authorization", format!("Bearer {credential}"));
    }
    builder.body(axum::body::Body::empty()).unwrap()
}

#[tokio::test]
async fn metrics_from_other_hosts_need_the_token_or_an_admin_key() {
    let server = Server::start_with(|config| {
        config.auth = ocellus::config::AuthMode::Keys;
        config.auth_failure_limit = 0;
        config.metrics_token = Some("scrape-me".into());
    })
    .await;
    let admin = read_bootstrap_key(&server.data_dir());
    assert_eq!(
        from_afar(&server, get("/metrics", None)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        from_afar(&server, get("/metrics", Some("wrong"))).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        from_afar(&server, get("/metrics", Some("scrape-me"))).await,
        StatusCode::OK
    );
    assert_eq!(
        from_afar(&server, get("/metrics", Some(&admin))).await,
        StatusCode::OK
    );
    let member = create_key(&server, &admin, "demo", "member", "member", None).await;
    let member = member["key"].as_str().unwrap();
    assert_eq!(
        from_afar(&server, get("/metrics", Some(member))).await,
        StatusCode::FORBIDDEN
    );

    // Lab mode: anyone may claim admin, so only the token lets another host in.
    let lab = Server::start_with(|config| config.metrics_token = Some("scrape-me".into())).await;
    assert_eq!(
        from_afar(&lab, get("/metrics", None)).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        from_afar(&lab, get("/metrics", Some("scrape-me"))).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn healthcheck_is_503_under_the_reserve_and_details_for_observers() {
    let server = Server::start().await;
    let response = server
        .request(Method::GET, "/healthcheck")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "OK");
    let (status, detail) = server
        .json(
            server
                .request(Method::GET, "/healthcheck")
                .header("accept", "application/json"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(detail["detailed"], true);
    assert_eq!(detail["reasons"], json!(["OK"]));
    assert_eq!(detail["database"]["writable"], true);
    assert!(detail["disk"]["free_bytes"].as_u64().unwrap() > 0);

    // A reserve larger than the disk: writes would be refused, so the check says so.
    let starved =
        Server::start_with(|config| config.store.min_free_space = Some(u64::MAX / 2)).await;
    let response = starved
        .request(Method::GET, "/healthcheck")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    assert!(response.text().await.unwrap().contains("reserve"));
    // Another host without the token gets the short form.
    let request = axum::http::Request::get("/healthcheck")
        .header("accept", "application/json")
        .body(axum::body::Body::empty())
        .unwrap();
    let mut request = request;
    request
        .extensions_mut()
        .insert(ocellus::http::listener::Connection {
            peer: "192.0.2.7:40000".parse().unwrap(),
            tls: false,
        });
    let response = starved.router().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = serde_json::from_slice(
        &axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(body["detailed"], false);
    assert!(body.get("disk").is_none());
}

/// JSON log lines parse, and each line logged while serving a request (the request line, and
/// an error deep in the store) carries the id the client got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ocellus"))
        .args([
            "serve",
            "--auth",
            "keys",
            "--log-format",
            "json",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .arg("--data-dir")
        .arg(&data)
        .env_remove("OCELLUS_LOG")
        .env_remove("OCELLUS_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let lines = std::thread::spawn(move || {
        std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<String>>()
    });
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    eventually(async || {
        client
            .get(format!("{base}/healthcheck"))
            .send()
            .await
            .is_ok()
    })
    .await;
    let key = read_bootstrap_key(&data);
    let (key_id, secret) = crate::keys_support::split_key(&key);
    let client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::HeaderName::from_static("x-auth-token"),
                reqwest::header::HeaderValue::from_str(&key).unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    let created: Value = client
        .post(format!("{base}/v2/images"))
        .json(&json!({"name": "logged", "disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let bytes = random_bytes(200_000, 5);
    let uploaded = client
        .put(format!("{base}/v2/images/{id}/file"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), StatusCode::NO_CONTENT);
    let upload_id = uploaded.headers()["x-openstack-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // Rot one byte, so that the download's read fails verification deep in the store.
    let blob = crate::common::files_under(&data.join("blobs"))
        .into_iter()
        .find(|path| path.extension().is_none())
        .unwrap();
    let mut rotten = std::fs::read(&blob).unwrap();
    rotten[70_000] ^= 1;
    std::fs::write(&blob, rotten).unwrap();
    let download = client
        .get(format!("{base}/v2/images/{id}/file"))
        .send()
        .await
        .unwrap();
    let download_id = download.headers()["x-openstack-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        download.bytes().await.is_err(),
        "a rotten download must not end cleanly"
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    let lines = lines.join().unwrap();

    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let in_request = |request_id: &str| -> Vec<&Value> {
        parsed
            .iter()
            .filter(|line| line["span"]["id"] == request_id)
            .collect()
    };
    let upload_lines = in_request(&upload_id);
    let request_line = upload_lines
        .iter()
        .find(|line| line["fields"]["message"] == "request")
        .unwrap_or_else(|| panic!("no request line for {upload_id}: {lines:#?}"));
    assert_eq!(request_line["fields"]["method"], "PUT");
    assert_eq!(
        request_line["fields"]["route"],
        "/v2/images/{image_id}/file"
    );
    assert_eq!(request_line["fields"]["status"], 204);
    assert_eq!(request_line["fields"]["bytes_in"], 200_000);
    // The key is named by its id; its secret appears nowhere.
    assert_eq!(request_line["span"]["key"], key_id.as_str());
    assert!(lines.iter().all(|line| !line.contains(&secret)));
    let download_lines = in_request(&download_id);
    assert!(
        download_lines
            .iter()
            .any(|line| line["level"] == "ERROR"
                && line["fields"]["message"] == "blob read failed"),
        "the store's error does not name the request: {lines:#?}"
    );
}

/// The scrub finds a rotten blob nobody downloads, marks it, its image refuses downloads with
/// a clear error, and an upload of the same bytes heals it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrub_marks_a_rotten_blob_and_an_upload_heals_it() {
    let server = Server::start_with(|config| {
        config.scrub.interval = Some(std::time::Duration::from_secs(1));
        config.scrub.rate = 1 << 30;
    })
    .await;
    let bytes = random_bytes(500_000, 21);
    let id = server.create_raw().await;
    assert_eq!(
        server.upload(&id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let blob = server.blob_files().pop().unwrap();
    let mut rotten = std::fs::read(&blob).unwrap();
    rotten[123_456] ^= 0x40;
    std::fs::write(&blob, rotten).unwrap();

    eventually(async || {
        let seen = server.metrics().await;
        seen.find("ocellus_scrub_failed_blobs") == Some(1.0)
    })
    .await;
    let seen = server.metrics().await;
    assert!(seen.get("ocellus_scrub_checked_blobs") >= 1.0);
    let (status, body) = server
        .json(
            server
                .request(Method::GET, &format!("/v2/images/{id}/file"))
                .header("accept", "application/json"),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(body.to_string().contains("failed verification"), "{body}");

    // The same bytes, uploaded to another image, replace the rotten copy.
    let other = server.create_raw().await;
    assert_eq!(
        server.upload(&other, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.download(&id).await, (StatusCode::OK, bytes.clone()));
    eventually(async || server.metrics().await.find("ocellus_scrub_failed_blobs") == Some(0.0))
        .await;
}
