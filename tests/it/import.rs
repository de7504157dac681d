//! Issue 11: interoperable import (glance-direct, web-download), tasks, quotas and usage.

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{
    Server, eventually, files_under, md5_hex, qcow2_image, random_bytes, sha512_hex,
};

/// A tiny HTTP server on loopback for web-download: `/image` serves `body`, `/to/<url>`
/// redirects there, `/slow` sends half of `body` and then nothing.
pub struct Origin {
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    pub async fn start(body: Vec<u8>) -> Origin {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = Arc::new(body);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let body = body.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    if let Some(target) = path.strip_prefix("/to/") {
                        let reply = format!(
                            "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                    } else if path == "/slow" {
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let _ = stream.write_all(&body[..body.len() / 2]).await;
                        tokio::time::sleep(Duration::from_secs(120)).await;
                    } else if path == "/image" {
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                            body.len()
                        );
                        let _ = stream.write_all(reply.as_bytes()).await;
                        let _ = stream.write_all(&body).await;
                    } else {
                        let _ = stream
                            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                            .await;
                    }
                });
            }
        });
        Origin { port, task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

async fn import(server: &Server, id: &str, body: Value) -> (StatusCode, String) {
    let response = server
        .request(Method::POST, &format!("/v2/images/{id}/import"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let request_id = response.headers()["x-openstack-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    (status, request_id)
}

async fn stage(server: &Server, id: &str, bytes: Vec<u8>) -> StatusCode {
    server
        .request(Method::PUT, &format!("/v2/images/{id}/stage"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap()
        .status()
}

async fn settled(server: &Server, id: &str) -> Value {
    let mut shown = Value::Null;
    eventually(async || {
        shown = server.show(id).await.1;
        shown["status"] != "importing"
    })
    .await;
    shown
}

/// The image's tasks once none is `pending` or `processing`. A task is marked done just after
/// its image's last change, as Glance's are, so an image that has settled may still show its
/// task running for a moment.
async fn ended_tasks(server: &Server, id: &str) -> Vec<Value> {
    let mut tasks = Vec::new();
    eventually(async || {
        tasks = image_tasks(server, id).await;
        tasks
            .iter()
            .all(|task| task["status"] == "success" || task["status"] == "failure")
    })
    .await;
    tasks
}

async fn image_tasks(server: &Server, id: &str) -> Vec<Value> {
    let (status, body) = server
        .json(server.request(Method::GET, &format!("/v2/images/{id}/tasks")))
        .await;
    assert_eq!(status, StatusCode::OK);
    body["tasks"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn glance_direct_stages_then_imports_with_a_task() {
    let server = Server::start().await;
    let bytes = qcow2_image(server.dir.path(), "staged", "8M");
    let image = server
        .create(json!({"name": "staged", "disk_format": "qcow2", "container_format": "bare"}))
        .await;
    let id = image["id"].as_str().unwrap();
    // Importing before staging is refused, and changes nothing.
    let (status, _) = import(&server, id, json!({"method": {"name": "glance-direct"}})).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(
        stage(&server, id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let (_, shown) = server.show(id).await;
    assert_eq!(shown["status"], "uploading");
    assert_eq!(shown["size"], bytes.len());
    assert_eq!(shown["checksum"], Value::Null);
    // Staged data is not served, and a second stage is refused.
    assert_eq!(server.download(id).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        stage(&server, id, bytes.clone()).await,
        StatusCode::CONFLICT
    );
    let blobs_after_stage = server.blob_files().len();

    let (status, request_id) = import(
        &server,
        id,
        json!({"method": {"name": "glance-direct"}, "stores": ["fs"], "all_stores_must_succeed": true}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let shown = settled(&server, id).await;
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["checksum"], md5_hex(&bytes));
    assert_eq!(shown["os_hash_value"], sha512_hex(&bytes));
    assert_eq!(shown["virtual_size"], 8 * 1024 * 1024);
    assert_eq!(shown["os_glance_failed_import"], "");
    assert_eq!(shown["os_glance_importing_to_stores"], "");
    assert!(shown.get("os_glance_import_task").is_none());
    assert_eq!(server.download(id).await, (StatusCode::OK, bytes.clone()));
    // The staged bytes were the blob: nothing was copied.
    assert_eq!(server.blob_files().len(), blobs_after_stage);

    let tasks = ended_tasks(&server, id).await;
    assert_eq!(tasks.len(), 1);
    let task = &tasks[0];
    assert_eq!(task["type"], "api_image_import");
    assert_eq!(task["status"], "success");
    assert_eq!(task["request_id"], request_id.as_str());
    assert_eq!(
        task["input"]["import_req"]["method"]["name"],
        "glance-direct"
    );
    assert_eq!(task["result"]["image_id"], id);
    assert!(task["expires_at"].is_string());
    // The tasks API (admin) shows it too.
    let task_id = task["id"].as_str().unwrap();
    let (status, shown_task) = server
        .json(server.request(Method::GET, &format!("/v2/tasks/{task_id}")))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown_task["status"], "success");
    assert_eq!(shown_task["self"], format!("/v2/tasks/{task_id}"));
    let (status, listed) = server
        .json(server.request(Method::GET, "/v2/tasks?status=success&limit=10"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["tasks"][0]["id"], task_id);
    assert!(listed["tasks"][0].get("input").is_none());
    let (status, _) = server
        .json(
            server
                .request(Method::GET, "/v2/tasks")
                .header("x-roles", "member,reader"),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        server
            .status(Method::DELETE, &format!("/v2/tasks/{task_id}"))
            .await,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_bodies_are_checked_as_glance_does() {
    let server = Server::start().await;
    let id = server.create_raw().await;
    for (body, want) in [
        (json!({}), StatusCode::BAD_REQUEST),
        (
            json!({"method": {"name": "nonsense"}}),
            StatusCode::BAD_REQUEST,
        ),
        // copy-image needs an active image.
        (
            json!({"method": {"name": "copy-image"}}),
            StatusCode::CONFLICT,
        ),
        (
            json!({"method": {"name": "web-download"}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"method": {"name": "glance-direct"}, "stores": ["s3"]}),
            StatusCode::CONFLICT,
        ),
        (
            json!({"method": {"name": "glance-direct"}, "stores": ["fs"], "all_stores": true}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, _) = import(&server, &id, body.clone()).await;
        assert_eq!(status, want, "{body}");
    }
    let (_, shown) = server.show(&id).await;
    assert_eq!(shown["status"], "queued");
    assert!(image_tasks(&server, &id).await.is_empty());
    let (_, info) = server
        .json(server.request(Method::GET, "/v2/info/import"))
        .await;
    assert_eq!(
        info["import-methods"]["value"],
        json!(["glance-direct", "web-download", "copy-image"])
    );

    // Import turned off: nothing is offered, /stage is 404, create sends no header.
    let off = Server::start_with(|config| config.import_methods.clear()).await;
    let (_, info) = off.json(off.request(Method::GET, "/v2/info/import")).await;
    assert_eq!(info["import-methods"]["value"], json!([]));
    let id = off.create_raw().await;
    assert_eq!(stage(&off, &id, vec![0; 10]).await, StatusCode::NOT_FOUND);
    let (status, _) = import(&off, &id, json!({"method": {"name": "glance-direct"}})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let response = off
        .request(Method::POST, "/v2/images")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert!(
        !response
            .headers()
            .contains_key("openstack-image-import-methods")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_download_from_an_allowed_host_streams_into_the_store() {
    let server = Server::start_with(|config| {
        config.web_download.allow = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let bytes = qcow2_image(server.dir.path(), "fetched", "4M");
    let origin = Origin::start(bytes.clone()).await;
    let image = server
        .create(json!({"name": "web", "disk_format": "qcow2", "container_format": "bare"}))
        .await;
    let id = image["id"].as_str().unwrap();
    let (status, _) = import(
        &server,
        id,
        json!({"method": {"name": "web-download", "uri": origin.url("/image")}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let shown = settled(&server, id).await;
    assert_eq!(shown["status"], "active", "{shown}");
    assert_eq!(shown["checksum"], md5_hex(&bytes));
    assert_eq!(shown["os_hash_value"], sha512_hex(&bytes));
    assert_eq!(shown["virtual_size"], 4 * 1024 * 1024);
    assert_eq!(server.download(id).await, (StatusCode::OK, bytes));
    let tasks = ended_tasks(&server, id).await;
    assert_eq!(tasks[0]["status"], "success");
    assert!(server.temp_files().is_empty());

    // A fetch that fails (404 here) fails the task and leaves the image to try again.
    let again = server
        .create(json!({"name": "missing", "disk_format": "raw", "container_format": "bare"}))
        .await;
    let again = again["id"].as_str().unwrap();
    let (status, _) = import(
        &server,
        again,
        json!({"method": {"name": "web-download", "uri": origin.url("/nothing-here")}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let shown = settled(&server, again).await;
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["os_glance_failed_import"], "fs");
    let tasks = ended_tasks(&server, again).await;
    assert_eq!(tasks[0]["status"], "failure");
    assert!(
        tasks[0]["message"].as_str().unwrap().contains("404"),
        "{}",
        tasks[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_download_refuses_what_it_must_not_reach() {
    // Only 127.0.0.1 is opened; everything else keeps the default rules.
    let server = Server::start_with(|config| {
        config.web_download.allow = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let origin = Origin::start(random_bytes(10_000, 3)).await;
    let id = server.create_raw().await;
    let port = origin.port;
    // Refused up front, with Glance's 400.
    for uri in [
        format!("http://127.0.0.2:{port}/image"),
        format!("http://2130706434:{port}/image"),
        format!("http://0177.0.0.2:{port}/image"),
        format!("http://[::ffff:127.0.0.2]:{port}/image"),
        format!("http://[::1]:{port}/image"),
        "http://10.0.0.1/x".into(),
        "http://192.168.0.1/x".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[fe80::1]/x".into(),
        "http://100.64.1.1/x".into(),
        "ftp://127.0.0.1/x".into(),
        "file:///etc/passwd".into(),
        "http://example.com:8080/x".into(),
    ] {
        let (status, _) = import(
            &server,
            &id,
            json!({"method": {"name": "web-download", "uri": uri}}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
    }
    let (_, shown) = server.show(&id).await;
    assert_eq!(shown["status"], "queued");
    assert!(image_tasks(&server, &id).await.is_empty());

    // A redirect from the allowed host to a denied one, and a name resolving to loopback:
    // accepted, then refused when fetched; the image is queued again with nothing kept.
    for uri in [
        origin.url(&format!("/to/http://127.0.0.2:{port}/image")),
        origin.url("/to/http://169.254.169.254/latest"),
        "http://localhost/x".into(),
    ] {
        let blobs = server.blob_files().len();
        let (status, _) = import(
            &server,
            &id,
            json!({"method": {"name": "web-download", "uri": uri}}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{uri}");
        let shown = settled(&server, &id).await;
        assert_eq!(shown["status"], "queued", "{uri}");
        assert_eq!(shown["os_glance_failed_import"], "fs");
        assert_eq!(server.blob_files().len(), blobs);
        assert!(server.temp_files().is_empty());
    }
    let tasks = ended_tasks(&server, &id).await;
    assert_eq!(tasks.len(), 3);
    assert!(tasks.iter().all(|task| task["status"] == "failure"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_stop_uploads_as_they_cross_and_count_as_glance_does() {
    let server = Server::start_with(|config| {
        config.store.quotas.image_size_total = Some(300_000);
        config.store.quotas.image_count_total = Some(4);
    })
    .await;
    let first = server.create_raw().await;
    assert_eq!(
        server.upload(&first, random_bytes(200_000, 1)).await,
        StatusCode::NO_CONTENT
    );
    // One upload crossing the limit: 413, queued, nothing kept.
    let second = server.create_raw().await;
    assert_eq!(
        server.upload(&second, random_bytes(200_000, 3)).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(server.show(&second).await.1["status"], "queued");
    assert!(server.temp_files().is_empty());
    assert_eq!(server.blob_files().len(), 1);
    let (_, usage) = server
        .json(server.request(Method::GET, "/v2/info/usage"))
        .await;
    assert_eq!(
        usage["usage"]["image_size_total"],
        json!({"limit": 300_000, "usage": 200_000})
    );
    assert_eq!(
        usage["usage"]["image_count_total"],
        json!({"limit": 4, "usage": 2})
    );
    assert_eq!(usage["usage"]["image_count_uploading"]["usage"], 0);

    // Two uploads at once that fit alone but not together: exactly one succeeds. Both bodies
    // arrive slowly, so they are in flight together; both declare their length, so the first
    // to start takes the room (bodies of unknown length take it as they arrive, and then
    // both may be stopped).
    let slow_body = |seed: u64| {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = random_bytes(60_000, seed)
            .chunks(6_000)
            .map(|chunk| Ok(chunk.to_vec()))
            .collect();
        reqwest::Body::wrap_stream(futures_util::StreamExt::then(
            futures_util::stream::iter(chunks),
            |chunk| async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                chunk
            },
        ))
    };
    let third = server.create_raw().await;
    let fourth = server.create_raw().await;
    let upload = |id: String, seed: u64| {
        server
            .request(Method::PUT, &format!("/v2/images/{id}/file"))
            .header("content-type", "application/octet-stream")
            .header("content-length", "60000")
            .body(slow_body(seed))
            .send()
    };
    // 200,000 used of 300,000: 60,000 fits alone, twice does not. The limit is set again
    // through the admin endpoint (`ocellus quota set`), as an override of the default.
    let (status, view) = server
        .json(
            server
                .request(Method::PUT, "/ocellus/v1/quotas/lab")
                .json(&json!({"image_size_total": 300_000})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["limits"]["image_size_total"], 300_000);
    assert_eq!(view["overrides"]["image_size_total"], 300_000);
    let (a, b) = tokio::join!(upload(third.clone(), 11), upload(fourth.clone(), 13));
    let mut statuses = vec![a.unwrap().status(), b.unwrap().status()];
    statuses.sort();
    assert_eq!(
        statuses,
        vec![StatusCode::NO_CONTENT, StatusCode::PAYLOAD_TOO_LARGE]
    );
    let (_, usage) = server
        .json(server.request(Method::GET, "/v2/info/usage"))
        .await;
    assert_eq!(usage["usage"]["image_size_total"]["usage"], 260_000);
    // Creating past image_count_total is 413.
    let (status, _) = server
        .json(
            server
                .request(Method::POST, "/v2/images")
                .json(&json!({"name": "fifth"})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_during_an_import_fails_its_task_and_requeues_the_image() {
    let server = Server::start_with(|config| {
        config.web_download.allow = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let origin = Origin::start(random_bytes(4 << 20, 9)).await;
    let id = server.create_raw().await;
    let (status, _) = import(
        &server,
        &id,
        json!({"method": {"name": "web-download", "uri": origin.url("/slow")}}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually(async || image_tasks(&server, &id).await[0]["status"] == "processing").await;
    let dir = server.stop().await;
    let server = Server::start_in(dir, |config| {
        config.web_download.allow = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let (_, shown) = server.show(&id).await;
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["os_glance_failed_import"], "fs");
    let tasks = image_tasks(&server, &id).await;
    assert_eq!(tasks[0]["status"], "failure");
    assert!(
        tasks[0]["message"].as_str().unwrap().contains("restart"),
        "{}",
        tasks[0]
    );
    assert!(server.blob_files().is_empty());
    assert!(server.temp_files().is_empty());
    assert!(files_under(&server.data_dir().join("tmp")).is_empty());
}

/// `ocellus quota set` and `quota list`, on a stopped data directory and through the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_commands_set_and_list_overrides() {
    use crate::ops::{args, ocellus};
    let server = Server::start().await;
    server.create_raw().await;
    let (code, out, err) = ocellus(args(
        &[
            "quota",
            "set",
            "lab",
            "--image-size-total",
            "1MiB",
            "--image-count-total",
            "7",
            "--url",
            &server.base,
            "--json",
        ],
        &[],
    ))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let views: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(views[0]["limits"]["image_size_total"], 1 << 20);
    assert_eq!(views[0]["limits"]["image_count_total"], 7);
    assert_eq!(views[0]["usage"]["image_count_total"], 1);
    let dir = server.stop().await;
    let data = dir.path().join("data");
    // Back to the default (unlimited) for the size; the count stays.
    let (code, out, err) = ocellus(args(
        &[
            "quota",
            "set",
            "lab",
            "--image-size-total",
            "default",
            "--data-dir",
        ],
        &[&data],
    ))
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = ocellus(args(&["quota", "list", "--json", "--data-dir"], &[&data])).await;
    assert_eq!(code, 0);
    let views: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(views[0]["project"], "lab");
    assert_eq!(views[0]["limits"]["image_size_total"], -1);
    assert_eq!(views[0]["limits"]["image_count_total"], 7);
    let (code, _, err) = ocellus(args(
        &[
            "quota",
            "set",
            "lab",
            "--image-size-total",
            "lots",
            "--data-dir",
        ],
        &[&data],
    ))
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("not a size"), "{err}");
}

/// `POST /v2/tasks` with Glance's old `import` type: a URL that does not pass the
/// web-download rules is 400; an allowed one makes an image and fetches into it. Finished
/// tasks expire after `task_time_to_live` (here 0 hours: at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_import_task_type_fetches_into_a_new_image_and_tasks_expire() {
    let server = Server::start_with(|config| {
        config.web_download.allow = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let bytes = random_bytes(50_000, 77);
    let origin = Origin::start(bytes.clone()).await;
    let task = |from: String| {
        json!({"type": "import", "input": {
            "import_from": from,
            "import_from_format": "raw",
            "image_properties": {"name": "from-task", "disk_format": "raw", "container_format": "bare"},
        }})
    };
    let (status, _) = server
        .json(
            server
                .request(Method::POST, "/v2/tasks")
                .json(&task("http://169.254.169.254/x".into())),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = server
        .json(
            server
                .request(Method::POST, "/v2/tasks")
                .json(&json!({"type": "export", "input": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, created) = server
        .json(
            server
                .request(Method::POST, "/v2/tasks")
                .json(&task(origin.url("/image"))),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["type"], "import");
    let task_id = created["id"].as_str().unwrap().to_owned();
    let mut shown = Value::Null;
    eventually(async || {
        shown = server
            .json(server.request(Method::GET, &format!("/v2/tasks/{task_id}")))
            .await
            .1;
        shown["status"] == "success"
    })
    .await;
    let image = shown["result"]["image_id"].as_str().unwrap();
    let (_, image_shown) = server.show(image).await;
    assert_eq!(image_shown["name"], "from-task");
    assert_eq!(server.download(image).await, (StatusCode::OK, bytes));

    let expiring = Server::start_with(|config| {
        config.store.task_time_to_live = Duration::ZERO;
    })
    .await;
    let id = expiring.create_raw().await;
    assert_eq!(
        stage(&expiring, &id, random_bytes(1000, 5)).await,
        StatusCode::NO_CONTENT
    );
    let (status, _) = import(&expiring, &id, json!({"method": {"name": "glance-direct"}})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    settled(&expiring, &id).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(image_tasks(&expiring, &id).await.is_empty());
}
