//! Issue 12: the legacy Images API v1 — the seed lab's curl commands as written, every route
//! and refusal, and v1 and v2 as two views of the same records.

use std::process::Command;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Server, eventually, md5_hex, qcow2_image, random_bytes};
use crate::import::Origin;
use crate::keys_support::{Reply, create_key, send, start_keys_server};

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|value| value.to_str().unwrap())
}

/// Runs a shell command line and returns its standard output.
fn shell(command: &str) -> String {
    let output = Command::new("bash")
        .args(["-c", command])
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The JSON body at the end of `curl -i` output.
fn curl_json(output: &str) -> Value {
    let body = &output[output.rfind("\r\n\r\n").expect("curl -i prints headers") + 4..];
    serde_json::from_str(body.trim()).unwrap_or_else(|_| panic!("not JSON: {body}"))
}

/// `POST /v1/images` with `x-image-meta-*` headers and an optional octet-stream body.
fn create_v1(
    server: &Server,
    headers: &[(&str, &str)],
    data: Option<Vec<u8>>,
) -> reqwest::RequestBuilder {
    let mut request = server.request(Method::POST, "/v1/images");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if let Some(data) = data {
        request = request
            .header("content-type", "application/octet-stream")
            .body(data);
    }
    request
}

async fn ids_listed(server: &Server, query: &str) -> Vec<String> {
    let reply = send(server.request(Method::GET, &format!("/v1/images/detail{query}"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{query}: {}", reply.body);
    reply.body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The seed lab (seeds/003), its four commands exactly as the user typed them; only the host
/// (an ephemeral port instead of 9292), the file (made here with qemu-img) and the image id
/// differ. Its complaint, that the base64 text was stored as the image, is what changes: the
/// body is decoded, so the image is the file and its checksum the file's md5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_lab_commands_work_as_written() {
    let server = Server::start().await;
    let file = server.dir.path().join("cirros-0.3.2-x86_64-disk.img");
    let bytes = qcow2_image(server.dir.path(), "cirros", "64M");
    std::fs::write(&file, &bytes).unwrap();
    let seed = |command: &str| {
        shell(
            &command
                .replace("http://127.0.0.1:9292", &server.base)
                .replace("/root/cirros-0.3.2-x86_64-disk.img", file.to_str().unwrap()),
        )
    };

    let listed = seed("curl -i -X GET http://127.0.0.1:9292/v1/images/detail");
    assert!(listed.starts_with("HTTP/1.1 200"), "{listed}");
    assert_eq!(curl_json(&listed), json!({"images": []}));

    let created = seed(
        "base64 /root/cirros-0.3.2-x86_64-disk.img | curl http://127.0.0.1:9292/v1/images --trace - -i -X POST -H 'Content-Transfer-Encoding: base64' -H 'Content-Type: application/octet-stream' -H 'x-image-meta-name: cirros' -H 'x-image-meta-disk_format: qcow2' -H 'x-image-meta-container_format: bare' --data-binary @-",
    );
    // With `--trace -` the trace and the `-i` answer share standard output.
    assert!(
        created.lines().any(|line| line.starts_with("HTTP/1.1 201")),
        "{created}"
    );
    let body = &created[created.find("\n{\"image\"").expect("the JSON answer") + 1..];
    let body: Value = serde_json::Deserializer::from_str(body)
        .into_iter::<Value>()
        .next()
        .unwrap()
        .unwrap();
    let image = body["image"].clone();
    let id = image["id"].as_str().unwrap().to_owned();
    assert_eq!(image["name"], "cirros");
    assert_eq!(image["status"], "active");
    assert_eq!(image["size"], bytes.len());
    assert_eq!(image["checksum"], md5_hex(&bytes));
    assert_eq!(image["virtual_size"], 64 * 1024 * 1024);
    assert!(
        created
            .to_ascii_lowercase()
            .contains(&format!("etag: {}", md5_hex(&bytes))),
        "{created}"
    );

    let listed = seed("curl -i -X GET http://127.0.0.1:9292/v1/images/detail");
    assert_eq!(curl_json(&listed)["images"][0]["id"], id.as_str());

    let head = seed(&format!(
        "curl -i -X HEAD http://127.0.0.1:9292/v1/images/{id}"
    ));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    for expected in [
        format!("x-image-meta-id: {id}"),
        format!("x-image-meta-checksum: {}", md5_hex(&bytes)),
        format!("x-image-meta-size: {}", bytes.len()),
        "x-image-meta-status: active".to_owned(),
        "x-image-meta-is_public: False".to_owned(),
        "x-image-meta-disk_format: qcow2".to_owned(),
        "x-image-meta-name: cirros".to_owned(),
    ] {
        assert!(head.contains(&expected), "{expected} missing from {head}");
    }

    let downloaded = server.dir.path().join("downloaded.img");
    let got = seed(&format!(
        "curl -i -X GET http://127.0.0.1:9292/v1/images/{id} -o {}",
        downloaded.display()
    ));
    assert!(
        got.is_empty(),
        "curl -o writes the whole answer to the file"
    );
    let answer = std::fs::read(&downloaded).unwrap();
    let split = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        &answer[split + 4..],
        &bytes[..],
        "the stored image is the original file"
    );

    // The seed's other complaint: a public image without editing a database.
    let public = seed(
        "curl -s http://127.0.0.1:9292/v1/images -X POST -H 'x-image-meta-name: shared-cirros' -H 'x-image-meta-is_public: true'",
    );
    let public: Value = serde_json::from_str(&public).unwrap();
    assert_eq!(public["image"]["is_public"], true);
    let (status, shown) = server.show(public["image"]["id"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["visibility"], "public");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_creates_change_nothing() {
    let server = Server::start().await;
    // Small enough to sit in the socket buffers of refusals that come before the body is read.
    let data = random_bytes(4096, 2);
    let formats = [
        ("x-image-meta-disk_format", "raw"),
        ("x-image-meta-container_format", "bare"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<(&'static str, &'static str)> {
        formats.iter().chain(extra).copied().collect()
    };
    let fixed_id = "11111111-2222-3333-4444-555555555555";
    // Headers, body, the expected status and words of the message.
    type Case<'a> = (
        Vec<(&'a str, &'a str)>,
        Option<Vec<u8>>,
        StatusCode,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            with(&[
                ("x-image-meta-checksum", "00000000000000000000000000000000"),
                ("x-image-meta-id", fixed_id),
            ]),
            Some(data.clone()),
            StatusCode::BAD_REQUEST,
            "checksum",
        ),
        (
            with(&[("x-image-meta-size", "99999")]),
            Some(data.clone()),
            StatusCode::BAD_REQUEST,
            "Supplied size",
        ),
        (
            with(&[("x-image-meta-size", "4097")]),
            Some(data.clone()),
            StatusCode::BAD_REQUEST,
            "Supplied size",
        ),
        (
            vec![("x-image-meta-size", "abc")],
            None,
            StatusCode::BAD_REQUEST,
            "'size'",
        ),
        (
            vec![("x-image-meta-disk_format", "floppy")],
            None,
            StatusCode::BAD_REQUEST,
            "Invalid disk format 'floppy'",
        ),
        (
            vec![("x-image-meta-container_format", "box")],
            None,
            StatusCode::BAD_REQUEST,
            "Invalid container format 'box'",
        ),
        (
            vec![("x-image-meta-name", "no formats")],
            Some(data.clone()),
            StatusCode::BAD_REQUEST,
            "Disk format is not specified.",
        ),
        (
            vec![("x-image-meta-disk_format", "raw")],
            Some(data.clone()),
            StatusCode::BAD_REQUEST,
            "Container format is not specified.",
        ),
        (
            vec![("x-image-meta-is_public", "maybe")],
            None,
            StatusCode::BAD_REQUEST,
            "is_public",
        ),
        (
            vec![("x-image-meta-status", "active")],
            None,
            StatusCode::FORBIDDEN,
            "status",
        ),
        (
            vec![("x-image-meta-location", "http://example.com/x.img")],
            None,
            StatusCode::BAD_REQUEST,
            "OSSN-0065",
        ),
        (
            vec![("x-image-meta-frobnicate", "1")],
            None,
            StatusCode::BAD_REQUEST,
            "Bad header: x-image-meta-frobnicate",
        ),
        (
            vec![("x-image-meta-property-os_glance_import_task", "x")],
            None,
            StatusCode::FORBIDDEN,
            "reserved",
        ),
        (
            with(&[("content-transfer-encoding", "quoted-printable")]),
            Some(data.clone()),
            StatusCode::BAD_REQUEST,
            "Content-Transfer-Encoding",
        ),
        (
            with(&[("content-transfer-encoding", "base64")]),
            Some(b"QUJD*not base64*".to_vec()),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            with(&[("content-transfer-encoding", "base64")]),
            Some(b"QUJDRA".to_vec()),
            StatusCode::BAD_REQUEST,
            "",
        ),
        (
            with(&[("x-glance-api-copy-from", "http://10.0.0.1/image.raw")]),
            None,
            StatusCode::BAD_REQUEST,
            "web-download rules",
        ),
    ];
    for (headers, body, expected, words) in cases {
        let reply =
            send(create_v1(&server, &headers, body).header("accept", "application/json")).await;
        assert_eq!(reply.status, expected, "{headers:?}: {}", reply.body);
        let message = reply.body["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{headers:?}: {message}");
    }
    // A body that is not octet-stream.
    let reply = send(
        create_v1(&server, &formats, None)
            .header("content-type", "application/json")
            .body(data.clone()),
    )
    .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);

    assert!(ids_listed(&server, "?is_public=none").await.is_empty());
    assert!(server.blob_files().is_empty());
    assert!(server.temp_files().is_empty());
    // A refused create leaves its id free: the same id works once the data is right.
    let sum = md5_hex(&data);
    let headers = [
        formats[0],
        formats[1],
        ("x-image-meta-checksum", sum.as_str()),
        ("x-image-meta-id", fixed_id),
        ("x-image-meta-size", "4096"),
    ];
    let reply = send(create_v1(&server, &headers, Some(data.clone()))).await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_eq!(reply.body["image"]["id"], fixed_id);
    assert_eq!(
        header(&reply.headers, "location"),
        Some(server.url(&format!("/v1/images/{fixed_id}")).as_str())
    );
    let reply = send(create_v1(&server, &[("x-image-meta-id", fixed_id)], None)).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert_eq!(ids_listed(&server, "?is_public=none").await, vec![fixed_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_filter_sort_and_page() {
    let server = Server::start().await;
    let mut made = Vec::new();
    for (index, (name, format, public, size)) in [
        ("alpha", "raw", "true", 10usize),
        ("bravo", "qcow2", "false", 0),
        ("charlie", "raw", "false", 30),
        ("delta", "raw", "true", 20),
    ]
    .into_iter()
    .enumerate()
    {
        let mut headers = vec![
            ("x-image-meta-name", name),
            ("x-image-meta-disk_format", format),
            ("x-image-meta-container_format", "bare"),
            ("x-image-meta-is_public", public),
        ];
        if name == "charlie" {
            headers.push(("x-image-meta-property-foo", "bar"));
            headers.push(("x-image-meta-protected", "true"));
        }
        let data = (size > 0).then(|| random_bytes(size, 2 * index as u64 + 2));
        let reply = send(create_v1(&server, &headers, data)).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        made.push(reply.body["image"]["id"].as_str().unwrap().to_owned());
    }
    let [alpha, bravo, charlie, delta] =
        [&made[0], &made[1], &made[2], &made[3]].map(String::clone);
    // Another project's private image stays out of every lab listing but an admin's `none`.
    let other = send(
        create_v1(&server, &[("x-image-meta-name", "other")], None)
            .header("x-project-id", "elsewhere")
            .header("x-roles", "member,reader"),
    )
    .await;
    let other = other.body["image"]["id"].as_str().unwrap().to_owned();

    // Newest first by default: public and own images.
    assert_eq!(
        ids_listed(&server, "").await,
        vec![delta.clone(), charlie.clone(), bravo.clone(), alpha.clone()]
    );
    let brief = send(server.request(Method::GET, "/v1/images?name=alpha")).await;
    assert_eq!(
        brief.body,
        json!({"images": [{
            "name": "alpha", "container_format": "bare", "disk_format": "raw",
            "checksum": md5_hex(&random_bytes(10, 2)), "id": alpha, "size": 10
        }]})
    );
    for (query, expected) in [
        ("?name=bravo", vec![&bravo]),
        ("?status=queued", vec![&bravo]),
        ("?disk_format=raw", vec![&delta, &charlie, &alpha]),
        ("?container_format=bare&size_min=15", vec![&delta, &charlie]),
        ("?size_max=10", vec![&bravo, &alpha]),
        ("?property-foo=bar", vec![&charlie]),
        ("?protected=true", vec![&charlie]),
        // The lab caller is an admin: every image that is not public.
        ("?is_public=false", vec![&other, &charlie, &bravo]),
        ("?is_public=true", vec![&delta, &charlie, &bravo, &alpha]),
        (
            "?changes-since=2000-01-01T00:00:00",
            vec![&delta, &charlie, &bravo, &alpha],
        ),
        ("?changes-since=2999-01-01T00:00:00", Vec::<&String>::new()),
        (
            "?sort_key=name&sort_dir=asc",
            vec![&alpha, &bravo, &charlie, &delta],
        ),
        (
            "?sort_key=size&sort_dir=desc&limit=2",
            vec![&charlie, &delta],
        ),
        (
            &format!("?sort_key=name&sort_dir=asc&limit=2&marker={bravo}"),
            vec![&charlie, &delta],
        ),
        ("?limit=0", Vec::<&String>::new()),
    ] {
        let expected: Vec<String> = expected.into_iter().cloned().collect();
        assert_eq!(ids_listed(&server, query).await, expected, "{query}");
    }
    let everything = ids_listed(&server, "?is_public=none").await;
    assert_eq!(everything.len(), 5);
    assert!(everything.contains(&other));
    let elsewhere = send(
        server
            .request(Method::GET, "/v1/images/detail")
            .header("x-project-id", "elsewhere")
            .header("x-roles", "reader"),
    )
    .await;
    let seen: Vec<&str> = elsewhere.body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["id"].as_str().unwrap())
        .collect();
    assert_eq!(seen, vec![other.as_str(), delta.as_str(), alpha.as_str()]);

    for bad in [
        "?sort_key=nonsense",
        "?sort_dir=sideways",
        "?limit=-1",
        "?marker=00000000-0000-0000-0000-000000000000",
        "?size_min=abc",
        "?is_public=perhaps",
    ] {
        let reply = send(server.request(Method::GET, &format!("/v1/images{bad}"))).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_show_and_delete() {
    let server = Server::start().await;
    let reply = send(create_v1(
        &server,
        &[
            ("x-image-meta-name", "queued"),
            ("x-image-meta-property-foo", "baz"),
        ],
        None,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(reply.body["image"]["status"], "queued");
    assert_eq!(reply.body["image"]["size"], 0);
    assert!(header(&reply.headers, "etag").is_none());
    let id = reply.body["image"]["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/images/{id}");

    // GET of a queued image: 404, nothing to download.
    assert_eq!(
        send(server.request(Method::GET, &path)).await.status,
        StatusCode::NOT_FOUND
    );
    // Data with a wrong checksum, along with metadata: refused, and neither is kept.
    let data = random_bytes(4096, 4);
    let refused = send(
        server
            .request(Method::PUT, &path)
            .header("x-image-meta-disk_format", "raw")
            .header("x-image-meta-container_format", "bare")
            .header("x-image-meta-name", "renamed")
            .header("x-image-meta-checksum", "0123456789abcdef0123456789abcdef")
            .header("content-type", "application/octet-stream")
            .body(data.clone()),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    let (_, shown) = server.show(&id).await;
    assert_eq!(shown["status"], "queued");
    assert_eq!(shown["name"], "queued");
    assert_eq!(shown["disk_format"], Value::Null);
    assert!(server.blob_files().is_empty());

    // The same with the right checksum: metadata and data in one step.
    let stored = send(
        server
            .request(Method::PUT, &path)
            .header("x-image-meta-disk-format", "raw")
            .header("x-image-meta-container-format", "bare")
            .header("x-image-meta-name", "renamed")
            .header("x-image-meta-checksum", md5_hex(&data))
            .header("content-type", "application/octet-stream")
            .body(data.clone()),
    )
    .await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.body);
    assert_eq!(stored.body["image"]["status"], "active");
    assert_eq!(stored.body["image"]["name"], "renamed");
    assert_eq!(
        header(&stored.headers, "etag"),
        Some(md5_hex(&data).as_str())
    );

    // Data to an active image: 409.
    let again = send(
        server
            .request(Method::PUT, &path)
            .header("content-type", "application/octet-stream")
            .body(data.clone()),
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT);

    // Metadata: properties merge, or replace with purge-props; status is the server's.
    let updated = send(
        server
            .request(Method::PUT, &path)
            .header("x-image-meta-property-hw_disk_bus", "virtio")
            .header("x-image-meta-min_disk", "1"),
    )
    .await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(
        updated.body["image"]["properties"],
        json!({"foo": "baz", "hw_disk_bus": "virtio"})
    );
    assert_eq!(updated.body["image"]["min_disk"], 1);
    let purged = send(
        server
            .request(Method::PUT, &path)
            .header("x-glance-registry-purge-props", "true")
            .header("x-image-meta-property-only", "this"),
    )
    .await;
    assert_eq!(purged.body["image"]["properties"], json!({"only": "this"}));
    let forbidden = send(
        server
            .request(Method::PUT, &path)
            .header("x-image-meta-status", "queued"),
    )
    .await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    // v2's rule: formats are fixed once there is data.
    let formats = send(
        server
            .request(Method::PUT, &path)
            .header("x-image-meta-disk_format", "qcow2"),
    )
    .await;
    assert_eq!(formats.status, StatusCode::FORBIDDEN);

    // HEAD and GET carry the metadata as headers; GET ignores Range, as v1 did.
    let head = send(server.request(Method::HEAD, &path)).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(
        header(&head.headers, "x-image-meta-property-only"),
        Some("this")
    );
    assert_eq!(header(&head.headers, "x-image-meta-name"), Some("renamed"));
    assert_eq!(header(&head.headers, "x-image-meta-min_disk"), Some("1"));
    assert_eq!(header(&head.headers, "content-length"), Some("0"));
    let response = server
        .request(Method::GET, &path)
        .header("range", "bytes=0-15")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["x-image-meta-checksum"]
            .to_str()
            .unwrap(),
        md5_hex(&data)
    );
    assert_eq!(response.bytes().await.unwrap().to_vec(), data);

    // Errors for unknown images and methods.
    let unknown = "/v1/images/00000000-0000-0000-0000-000000000000";
    for method in [Method::GET, Method::HEAD, Method::PUT, Method::DELETE] {
        assert_eq!(
            server.status(method.clone(), unknown).await,
            StatusCode::NOT_FOUND,
            "{method}"
        );
    }
    let post = send(server.request(Method::POST, &path)).await;
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        header(&post.headers, "allow"),
        Some("GET, HEAD, PUT, DELETE")
    );
    assert_eq!(
        server.status(Method::GET, "/v1/nonexistent").await,
        StatusCode::NOT_FOUND
    );

    // Protected images stay; DELETE answers 200, then the image is gone.
    send(
        server
            .request(Method::PUT, &path)
            .header("x-image-meta-protected", "true"),
    )
    .await;
    assert_eq!(
        server.status(Method::DELETE, &path).await,
        StatusCode::FORBIDDEN
    );
    send(
        server
            .request(Method::PUT, &path)
            .header("x-image-meta-protected", "false"),
    )
    .await;
    let deleted = send(server.request(Method::DELETE, &path)).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(
        server.status(Method::HEAD, &path).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        server.status(Method::DELETE, &path).await,
        StatusCode::NOT_FOUND
    );
    eventually(async || server.blob_files().is_empty()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v1_and_v2_are_views_of_the_same_records() {
    let server = Server::start().await;
    // Made in v2, read in v1.
    let made = server
        .create(json!({
            "name": "from-v2", "disk_format": "raw", "container_format": "bare",
            "visibility": "public", "os_distro": "cirros", "tags": ["t"]
        }))
        .await;
    let id = made["id"].as_str().unwrap();
    let data = random_bytes(5000, 6);
    assert_eq!(
        server.upload(id, data.clone()).await,
        StatusCode::NO_CONTENT
    );
    let head = send(server.request(Method::HEAD, &format!("/v1/images/{id}"))).await;
    assert_eq!(
        header(&head.headers, "x-image-meta-is_public"),
        Some("True")
    );
    assert_eq!(
        header(&head.headers, "x-image-meta-property-os_distro"),
        Some("cirros")
    );
    assert_eq!(
        header(&head.headers, "x-image-meta-checksum"),
        Some(md5_hex(&data).as_str())
    );
    assert_eq!(header(&head.headers, "etag"), Some(md5_hex(&data).as_str()));

    // Made in v1, read in v2; then changed in v1 and read again.
    let reply = send(create_v1(
        &server,
        &[
            ("x-image-meta-name", "from-v1"),
            ("x-image-meta-disk_format", "raw"),
            ("x-image-meta-container_format", "bare"),
            ("x-image-meta-is_public", "true"),
            ("x-image-meta-min_ram", "64"),
            ("x-image-meta-property-os_distro", "cirros"),
        ],
        Some(data.clone()),
    ))
    .await;
    let v1_id = reply.body["image"]["id"].as_str().unwrap().to_owned();
    let (_, shown) = server.show(&v1_id).await;
    assert_eq!(shown["visibility"], "public");
    assert_eq!(shown["checksum"], md5_hex(&data));
    assert_eq!(shown["min_ram"], 64);
    assert_eq!(shown["os_distro"], "cirros");
    assert_eq!(
        server.download(&v1_id).await,
        (StatusCode::OK, data.clone())
    );
    // The same bytes are one blob.
    assert_eq!(server.blob_files().len(), 1);
    send(
        server
            .request(Method::PUT, &format!("/v1/images/{v1_id}"))
            .header("x-image-meta-is_public", "false"),
    )
    .await;
    assert_eq!(server.show(&v1_id).await.1["visibility"], "private");
    // Deleted in v2, gone in v1.
    assert_eq!(server.delete(&v1_id).await, StatusCode::NO_CONTENT);
    assert_eq!(
        server
            .status(Method::HEAD, &format!("/v1/images/{v1_id}"))
            .await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_and_shared_images() {
    let server = Server::start().await;
    let reply = send(create_v1(
        &server,
        &[("x-image-meta-name", "to-share")],
        None,
    ))
    .await;
    let id = reply.body["image"]["id"].as_str().unwrap().to_owned();
    let members = format!("/v1/images/{id}/members");
    let list = send(server.request(Method::GET, &members)).await;
    assert_eq!(list.body, json!({"members": []}));

    // Sharing through v1 makes the private image shared; the member sees it pending in v2.
    let beta = format!("{members}/beta");
    assert_eq!(
        server.status(Method::PUT, &beta).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.show(&id).await.1["visibility"], "shared");
    let (_, v2_members) = server
        .json(server.request(Method::GET, &format!("/v2/images/{id}/members")))
        .await;
    assert_eq!(v2_members["members"][0]["status"], "pending");
    let flagged = send(
        server
            .request(Method::PUT, &beta)
            .json(&json!({"member": {"can_share": true}})),
    )
    .await;
    assert_eq!(flagged.status, StatusCode::NO_CONTENT);
    let list = send(server.request(Method::GET, &members)).await;
    assert_eq!(
        list.body,
        json!({"members": [{"member_id": "beta", "can_share": true}]})
    );
    let shared = send(
        server
            .request(Method::GET, "/v1/shared-images/beta")
            .header("x-project-id", "beta")
            .header("x-roles", "member,reader"),
    )
    .await;
    assert_eq!(
        shared.body,
        json!({"shared_images": [{"image_id": id, "can_share": true}]})
    );
    // The member's v1 default listing shows the share.
    let listed = send(
        server
            .request(Method::GET, "/v1/images")
            .header("x-project-id", "beta")
            .header("x-roles", "reader"),
    )
    .await;
    assert_eq!(listed.body["images"][0]["id"], id.as_str());
    let elsewhere = send(
        server
            .request(Method::GET, "/v1/shared-images/beta")
            .header("x-project-id", "gamma")
            .header("x-roles", "member,reader"),
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::FORBIDDEN);

    // Replace all members at once.
    let replaced = send(server.request(Method::PUT, &members).json(&json!({
        "memberships": [{"member_id": "gamma", "can_share": false}, {"member_id": "delta"}]
    })))
    .await;
    assert_eq!(replaced.status, StatusCode::NO_CONTENT);
    let list = send(server.request(Method::GET, &members)).await;
    let mut names: Vec<&str> = list.body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["member_id"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, vec!["delta", "gamma"]);
    for bad in [
        json!({"nope": []}),
        json!({"memberships": [{"can_share": true}]}),
    ] {
        let reply = send(server.request(Method::PUT, &members).json(&bad)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    assert_eq!(
        server
            .status(Method::DELETE, &format!("{members}/gamma"))
            .await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server
            .status(Method::DELETE, &format!("{members}/gamma"))
            .await,
        StatusCode::NOT_FOUND
    );
    let show = send(server.request(Method::GET, &format!("{members}/delta"))).await;
    assert_eq!(show.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        server
            .status(
                Method::GET,
                "/v1/images/00000000-0000-0000-0000-000000000000/members"
            )
            .await,
        StatusCode::NOT_FOUND
    );
    // A public image has no members to set.
    let public = send(create_v1(
        &server,
        &[("x-image-meta-is_public", "true")],
        None,
    ))
    .await;
    let public = public.body["image"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server
            .status(Method::PUT, &format!("/v1/images/{public}/members/beta"))
            .await,
        StatusCode::FORBIDDEN
    );
}

/// With API keys, v1 follows v2's rules: only admins publicize, readers do not create, and
/// other projects' private images do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_mode_applies_the_v2_rules() {
    let (server, admin) = start_keys_server(0).await;
    let member = create_key(&server, &admin, "alpha", "member", "m", None).await;
    let member = member["key"].as_str().unwrap().to_owned();
    let reader = create_key(&server, &admin, "alpha", "reader", "r", None).await;
    let reader = reader["key"].as_str().unwrap().to_owned();
    let outsider = create_key(&server, &admin, "beta", "member", "o", None).await;
    let outsider = outsider["key"].as_str().unwrap().to_owned();
    let as_key = |key: &str, request: reqwest::RequestBuilder| request.header("x-auth-token", key);

    let anonymous = send(server.request(Method::GET, "/v1/images")).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    let publicize = send(as_key(
        &member,
        create_v1(&server, &[("x-image-meta-is_public", "true")], None),
    ))
    .await;
    assert_eq!(publicize.status, StatusCode::FORBIDDEN);
    let by_reader = send(as_key(&reader, create_v1(&server, &[], None))).await;
    assert_eq!(by_reader.status, StatusCode::FORBIDDEN);
    let private = send(as_key(
        &member,
        create_v1(&server, &[("x-image-meta-name", "mine")], None),
    ))
    .await;
    assert_eq!(private.status, StatusCode::CREATED);
    let id = private.body["image"]["id"].as_str().unwrap().to_owned();
    assert_eq!(private.body["image"]["is_public"], false);
    let seen: Reply = send(as_key(
        &outsider,
        server.request(Method::HEAD, &format!("/v1/images/{id}")),
    ))
    .await;
    assert_eq!(seen.status, StatusCode::NOT_FOUND);
    let listed = send(as_key(
        &outsider,
        server.request(Method::GET, "/v1/images?is_public=none"),
    ))
    .await;
    assert_eq!(listed.body, json!({"images": []}));
    let by_reader = send(as_key(&reader, server.request(Method::GET, "/v1/images"))).await;
    assert_eq!(by_reader.body["images"][0]["id"], id.as_str());
    let made_public = send(as_key(
        &admin,
        server
            .request(Method::PUT, &format!("/v1/images/{id}"))
            .header("x-image-meta-is_public", "true"),
    ))
    .await;
    assert_eq!(made_public.status, StatusCode::OK);
    let listed = send(as_key(&outsider, server.request(Method::GET, "/v1/images"))).await;
    assert_eq!(listed.body["images"][0]["id"], id.as_str());
    let change = send(as_key(
        &outsider,
        server
            .request(Method::PUT, &format!("/v1/images/{id}"))
            .header("x-image-meta-name", "theirs"),
    ))
    .await;
    assert_eq!(change.status, StatusCode::FORBIDDEN);
    let path = format!("/v1/images/{id}");
    for (key, method, expected) in [
        // v2's download rule: readers see the metadata but may not download.
        (&reader, Method::HEAD, StatusCode::OK),
        (&outsider, Method::HEAD, StatusCode::OK),
        (&outsider, Method::DELETE, StatusCode::FORBIDDEN),
        (&reader, Method::DELETE, StatusCode::FORBIDDEN),
    ] {
        let reply = send(as_key(key, server.request(method.clone(), &path))).await;
        assert_eq!(reply.status, expected, "{method} as {key}");
    }
    // Data for the queued image, then readers may not download it; members may.
    let data = random_bytes(1000, 10);
    let stored = send(as_key(
        &member,
        server
            .request(Method::PUT, &path)
            .header("x-image-meta-disk_format", "raw")
            .header("x-image-meta-container_format", "bare")
            .header("content-type", "application/octet-stream")
            .body(data.clone()),
    ))
    .await;
    assert_eq!(stored.status, StatusCode::OK, "{}", stored.body);
    let by_reader = send(as_key(&reader, server.request(Method::GET, &path))).await;
    assert_eq!(by_reader.status, StatusCode::FORBIDDEN);
    let response = as_key(&outsider, server.request(Method::GET, &path))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().to_vec(), data);
    // Members of the image are for its owner (and admins) to change.
    let members = format!("/v1/images/{id}/members/gamma");
    let reply = send(as_key(&outsider, server.request(Method::PUT, &members))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let shared = send(as_key(
        &reader,
        server.request(Method::GET, "/v1/shared-images/beta"),
    ))
    .await;
    assert_eq!(shared.status, StatusCode::FORBIDDEN);
    let removed = send(as_key(&member, server.request(Method::DELETE, &path))).await;
    assert_eq!(removed.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_from_fetches_under_the_web_download_rules() {
    let server = Server::start_with(|config| {
        config.web_download.allow = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let bytes = random_bytes(300_000, 8);
    let origin = Origin::start(bytes.clone()).await;
    let source = origin.url("/image");
    let reply = send(create_v1(
        &server,
        &[
            ("x-image-meta-name", "copied"),
            ("x-image-meta-disk_format", "raw"),
            ("x-image-meta-container_format", "bare"),
            ("x-glance-api-copy-from", source.as_str()),
        ],
        None,
    ))
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["image"]["id"].as_str().unwrap().to_owned();
    let mut shown = Value::Null;
    eventually(async || {
        shown = server.show(&id).await.1;
        shown["status"] == "active"
    })
    .await;
    assert_eq!(shown["checksum"], md5_hex(&bytes));
    // The task is marked done just after the image's last change.
    eventually(async || {
        let (_, tasks) = server
            .json(server.request(Method::GET, &format!("/v2/images/{id}/tasks")))
            .await;
        tasks["tasks"][0]["status"] == "success"
    })
    .await;
    // Copy-from into an existing queued image through PUT.
    let queued = send(create_v1(&server, &[("x-image-meta-name", "later")], None)).await;
    let queued = queued.body["image"]["id"].as_str().unwrap().to_owned();
    let put = send(
        server
            .request(Method::PUT, &format!("/v1/images/{queued}"))
            .header("x-image-meta-disk_format", "raw")
            .header("x-image-meta-container_format", "bare")
            .header("x-glance-api-copy-from", origin.url("/image")),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK, "{}", put.body);
    eventually(async || server.show(&queued).await.1["status"] == "active").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_with_and_without_v1() {
    let server = Server::start().await;
    let (_, versions) = server.json(server.request(Method::GET, "/versions")).await;
    let ids: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|version| version["id"].as_str().unwrap())
        .collect();
    assert_eq!(&ids[ids.len() - 2..], ["v1.1", "v1.0"]);
    let redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(server.url("/v1"))
        .send()
        .await
        .unwrap();
    assert_eq!(redirect.status(), StatusCode::FOUND);
    assert_eq!(
        redirect.headers()["location"].to_str().unwrap(),
        server.url("/v1/")
    );
    for path in ["/v1/", "/v1.1/images", "/v1.0/images/detail"] {
        let reply = send(server.request(Method::GET, path)).await;
        assert_eq!(reply.body, json!({"images": []}), "{path}");
    }
    server.stop().await;

    let server = Server::start_with(|config| config.enable_v1_api = false).await;
    let (_, versions) = server.json(server.request(Method::GET, "/versions")).await;
    assert!(!versions.to_string().contains("v1.0"));
    assert_eq!(
        server.status(Method::GET, "/v1/images").await,
        StatusCode::MULTIPLE_CHOICES
    );
}
