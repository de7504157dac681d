//! Image data: upload, download, ranges, format checks, dedupe and cut-off uploads.

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Server, eventually, md5_hex, qcow2_image, random_bytes, sha512_hex};

#[tokio::test]
async fn qcow2_round_trip_reports_glance_fields() {
    let server = Server::start().await;
    let bytes = qcow2_image(server.dir.path(), "cirros", "64M");
    let image = server
        .create(json!({"name": "cirros", "disk_format": "qcow2", "container_format": "bare"}))
        .await;
    let id = image["id"].as_str().unwrap();
    assert_eq!(
        server.download(id).await,
        (StatusCode::NO_CONTENT, Vec::new())
    );

    assert_eq!(
        server.upload(id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let (_, shown) = server.show(id).await;
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["size"], bytes.len());
    assert_eq!(shown["virtual_size"], 64 * 1024 * 1024);
    assert_eq!(shown["checksum"], md5_hex(&bytes));
    assert_eq!(shown["os_hash_algo"], "sha512");
    assert_eq!(shown["os_hash_value"], sha512_hex(&bytes));
    assert_eq!(shown["stores"], "fs");

    let response = server
        .request(Method::GET, &format!("/v2/images/{id}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/octet-stream"
    );
    assert_eq!(response.headers()["content-md5"], md5_hex(&bytes).as_str());
    assert_eq!(
        response.headers()["content-length"],
        bytes.len().to_string().as_str()
    );
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());

    // Uploading again to an active image is a conflict.
    assert_eq!(server.upload(id, bytes.clone()).await, StatusCode::CONFLICT);
}

#[tokio::test]
async fn ranges_are_served_and_checked() {
    let server = Server::start().await;
    let bytes = random_bytes(12_296, 1);
    let id = &server.create_raw().await;
    assert_eq!(
        server.upload(id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let file = format!("/v2/images/{id}/file");
    let cases = [
        ("bytes=0-15", 0..16),
        ("bytes=-100", 12_196..12_296),
        ("bytes=12000-", 12_000..12_296),
    ];
    for (range, expected) in cases {
        let response = server
            .request(Method::GET, &file)
            .header("Range", range)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        let content_range = format!("bytes {}-{}/12296", expected.start, expected.end - 1);
        assert_eq!(response.headers()["content-range"], content_range.as_str());
        assert_eq!(response.bytes().await.unwrap().as_ref(), &bytes[expected]);
    }
    let response = server
        .request(Method::GET, &file)
        .header("Range", "bytes=999999-")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(response.headers()["content-range"], "bytes */12296");
}

/// Issue 9: as in Glance, a byte range that cannot be parsed (or ends before it starts) is
/// 416, and several ranges are 400; a Range in another unit is ignored (RFC 9110 requires it).
#[tokio::test]
async fn issue9_malformed_and_multiple_ranges_are_refused() {
    let server = Server::start().await;
    let bytes = random_bytes(100, 2);
    let id = &server.create_raw().await;
    assert_eq!(
        server.upload(id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let file = format!("/v2/images/{id}/file");
    let cases = [
        ("bytes=abc-def", StatusCode::RANGE_NOT_SATISFIABLE),
        ("bytes=5-2", StatusCode::RANGE_NOT_SATISFIABLE),
        ("bytes=-", StatusCode::RANGE_NOT_SATISFIABLE),
        ("bytes=", StatusCode::RANGE_NOT_SATISFIABLE),
        ("bytes=0-1,5-6", StatusCode::BAD_REQUEST),
        ("bytes=0-1, -5", StatusCode::BAD_REQUEST),
    ];
    for (range, expected) in cases {
        let response = server
            .request(Method::GET, &file)
            .header("Range", range)
            .header("Accept", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{range}");
        if expected == StatusCode::RANGE_NOT_SATISFIABLE {
            assert_eq!(
                response.headers()["content-range"],
                "bytes */100",
                "{range}"
            );
        }
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(
            body["code"],
            format!(
                "{} {}",
                expected.as_u16(),
                if expected == StatusCode::BAD_REQUEST {
                    "Bad Request"
                } else {
                    "Request Range Not Satisfiable"
                }
            ),
            "{range}"
        );
    }
    let response = server
        .request(Method::GET, &file)
        .header("Range", "items=0-1")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.bytes().await.unwrap().as_ref(), bytes.as_slice());
}

#[tokio::test]
async fn chunked_upload_streams() {
    let server = Server::start().await;
    let bytes = random_bytes(3 * 1024 * 1024 + 17, 2);
    let id = &server.create_raw().await;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bytes
        .chunks(100_000)
        .map(|chunk| Ok(chunk.to_vec()))
        .collect();
    let response = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert_eq!(server.show(id).await.1["virtual_size"], bytes.len());
    assert_eq!(server.download(id).await.1, bytes);
}

#[tokio::test]
async fn refused_uploads_leave_the_image_queued_and_no_bytes() {
    let server = Server::start_with(|config| config.image_size_cap = 1024 * 1024).await;
    let queued_after = async |id: &str| server.show(id).await.1["status"] == "queued";

    // Random bytes declared as qcow2: 415, and (unlike Glance) nothing left behind, so a retry
    // with the right data succeeds.
    let image = server
        .create(json!({"disk_format": "qcow2", "container_format": "bare"}))
        .await;
    let id = image["id"].as_str().unwrap();
    assert_eq!(
        server.upload(id, random_bytes(65_536, 3)).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert!(queued_after(id).await);
    assert_eq!(server.show(id).await.1["checksum"], serde_json::Value::Null);
    assert!(server.blob_files().is_empty());
    let qcow2 = qcow2_image(server.dir.path(), "retry", "1M");
    assert_eq!(server.upload(id, qcow2).await, StatusCode::NO_CONTENT);

    // A size header that disagrees with the data.
    let id = &server.create_raw().await;
    let response = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("Content-Type", "application/octet-stream")
        .header("x-openstack-image-size", "10")
        .body(vec![0u8; 20])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(queued_after(id).await);

    // Over the size cap, declared or streamed.
    assert_eq!(
        server.upload(id, vec![1u8; 1024 * 1024 + 1]).await,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..20).map(|_| Ok(vec![2u8; 100_000])).collect();
    let response = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert!(queued_after(id).await);

    // No formats set yet, and a wrong content type.
    let bare = server.create(json!({})).await;
    assert_eq!(
        server
            .upload(bare["id"].as_str().unwrap(), vec![0u8; 10])
            .await,
        StatusCode::BAD_REQUEST
    );
    let response = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("Content-Type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A qcow2 that points at a backing file is refused as unsafe (415, as in Glance).
    let dir = server.dir.path();
    let backing = dir.join("backing.qcow2");
    let overlay = dir.join("overlay.qcow2");
    let make = |args: &[&str]| {
        assert!(
            std::process::Command::new("qemu-img")
                .args(args)
                .status()
                .unwrap()
                .success()
        )
    };
    make(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        backing.to_str().unwrap(),
        "1M",
    ]);
    make(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        backing.to_str().unwrap(),
        overlay.to_str().unwrap(),
    ]);
    let unsafe_image = server
        .create(json!({"disk_format": "qcow2", "container_format": "bare"}))
        .await;
    let unsafe_id = unsafe_image["id"].as_str().unwrap();
    assert_eq!(
        server
            .upload(unsafe_id, std::fs::read(&overlay).unwrap())
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert!(queued_after(unsafe_id).await);

    assert!(server.temp_files().is_empty());
    assert_eq!(
        server.blob_files().len(),
        1,
        "only the good qcow2 is stored"
    );
}

#[tokio::test]
async fn identical_bytes_share_one_blob() {
    let server = Server::start().await;
    let bytes = random_bytes(500_000, 4);
    let mut ids = Vec::new();
    for name in ["first", "second"] {
        let image = server
            .create(json!({"name": name, "disk_format": "raw", "container_format": "bare"}))
            .await;
        let id = image["id"].as_str().unwrap().to_owned();
        assert_eq!(
            server.upload(&id, bytes.clone()).await,
            StatusCode::NO_CONTENT
        );
        ids.push(id);
    }
    let blobs = server.blob_files();
    assert_eq!(blobs.len(), 1);
    assert_eq!(std::fs::metadata(&blobs[0]).unwrap().len(), 500_000);
    assert_eq!(server.delete(&ids[0]).await, StatusCode::NO_CONTENT);
    assert_eq!(server.download(&ids[1]).await, (StatusCode::OK, bytes));
    assert_eq!(server.delete(&ids[1]).await, StatusCode::NO_CONTENT);
    assert!(server.blob_files().is_empty());
}

#[tokio::test]
async fn corrupted_blob_aborts_the_download() {
    let server = Server::start().await;
    let bytes = random_bytes(2_000_000, 5);
    let id = &server.create_raw().await;
    assert_eq!(
        server.upload(id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let blob = server.blob_files().pop().unwrap();
    let mut tampered = bytes.clone();
    tampered[1_500_000] ^= 0xff;
    std::fs::write(&blob, &tampered).unwrap();
    let response = server
        .request(Method::GET, &format!("/v2/images/{id}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.bytes().await.is_err(),
        "a corrupted full download must not end cleanly"
    );
    // Ranges are verified too: one over the flipped byte fails without a clean end, whatever
    // its size, and one that stays clear of the damaged 16 KiB group is served.
    let get_range = async |range: &str| {
        server
            .request(Method::GET, &format!("/v2/images/{id}/file"))
            .header("Range", range)
            .send()
            .await
            .unwrap()
    };
    for range in [
        "bytes=1499990-1500009",
        "bytes=1500000-1500000",
        "bytes=1400000-",
    ] {
        let response = get_range(range).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert!(
            response.bytes().await.is_err(),
            "a range over the flipped byte must not end cleanly: {range}"
        );
    }
    for (range, expected) in [
        ("bytes=0-9", &bytes[..10]),
        ("bytes=1600000-1600099", &bytes[1_600_000..1_600_100]),
        ("bytes=-1000", &bytes[bytes.len() - 1000..]),
    ] {
        let response = get_range(range).await;
        assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(response.bytes().await.unwrap().as_ref(), expected);
    }
    // Without its outboard (a blob from before outboards), the rebuild reads the whole blob,
    // finds it does not match, and nothing is served; no outboard is made from bad bytes.
    for outboard in server.outboard_files() {
        std::fs::remove_file(outboard).unwrap();
    }
    let response = get_range("bytes=0-9").await;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(server.outboard_files().is_empty());
    // The good bytes back: the outboard is rebuilt and the image served again.
    std::fs::write(&blob, &bytes).unwrap();
    assert_eq!(server.download(id).await, (StatusCode::OK, bytes));
    assert_eq!(server.outboard_files().len(), 1);
}

/// An upload whose client disappears mid-body: the image goes back to queued, no bytes stay.
#[tokio::test]
async fn upload_cut_off_mid_stream_is_rolled_back() {
    let server = Server::start().await;
    let id = server.create_raw().await;
    let address = server.base.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let head = format!(
        "PUT /v2/images/{id}/file HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(&random_bytes(3_000_000, 6)).await.unwrap();
    socket.flush().await.unwrap();
    // Wait until the server has seen the upload start, then vanish.
    eventually(async || server.show(&id).await.1["status"] == "saving").await;
    socket.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let _ = socket.read_to_end(&mut rest).await;
    drop(socket);

    eventually(async || server.show(&id).await.1["status"] == "queued").await;
    eventually(async || server.temp_files().is_empty()).await;
    assert!(server.blob_files().is_empty());
    // The image takes a complete upload afterwards.
    assert_eq!(
        server.upload(&id, b"complete".to_vec()).await,
        StatusCode::NO_CONTENT
    );
}

/// An upload refused before its body is read (here: a store that does not exist) says
/// `Connection: close`, so the client does not write its next request into a connection the
/// server is closing; a refusal after the body was read keeps the connection. A client reusing
/// the connection then works on at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_body_is_read_close_the_connection() {
    let server = Server::start().await;
    let id = server.create_raw().await;
    let refused = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("content-type", "application/octet-stream")
        .header("x-image-meta-store", "nowhere")
        .body(random_bytes(4 << 20, 30))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()["connection"], "close");
    assert!(
        refused.text().await.unwrap().contains("nowhere"),
        "the error names the store"
    );
    // The next requests on the same client go through.
    for _ in 0..5 {
        assert_eq!(server.show(&id).await.1["status"], "queued");
    }
    let malformed = server
        .request(Method::POST, "/v2/images")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert!(!malformed.headers().contains_key("connection"));
}
