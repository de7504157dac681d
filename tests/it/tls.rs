//! HTTPS and the accept loop's limits: TLS with a throwaway CA, links and catalog URLs that say
//! https, plain HTTP refused on the TLS port, the handshake and header-read timeouts, the
//! connection cap, and TLS settings that keep the server from starting.

use std::time::{Duration, Instant};

use ocellus::config::{AuthMode, Config, TlsFiles};
use ocellus::http::listener::{HANDSHAKE_TIMEOUT, HEADER_READ_TIMEOUT, MAX_HEAD_BYTES};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::Server;
use crate::keys_support::{
    app_credential_auth, assert_catalog, header_text, read_bootstrap_key, send, split_key,
    start_tls_server, write_test_certificates,
};

/// A request whose headers never end.
const INCOMPLETE_REQUEST: &[u8] = b"GET /versions HTTP/1.1\r\nHost: x\r\n";

/// `host:port` of a plain-HTTP test server.
fn plain_address(server: &Server) -> String {
    server
        .base
        .strip_prefix("http://")
        .expect("the harness serves plain HTTP")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_the_api_with_https_links() {
    let server = start_tls_server(|_| {}).await;
    assert!(server.base.starts_with("https://"), "{}", server.base);

    let response = server
        .client
        .get(server.url("/versions"))
        .send()
        .await
        .expect("an HTTPS request verified against the test CA");
    assert_eq!(response.status(), StatusCode::OK);
    let versions: Value = response.json().await.unwrap();
    let listed = versions["versions"]
        .as_array()
        .unwrap_or_else(|| panic!("no versions: {versions}"));
    assert!(!listed.is_empty(), "{versions}");
    for version in listed {
        let major = if version["id"].as_str().unwrap().starts_with("v1") {
            "v1"
        } else {
            "v2"
        };
        assert_eq!(
            version["links"][0]["href"],
            format!("{}/{major}/", server.base),
            "{version}"
        );
    }

    let response = server
        .client
        .post(server.url("/v2/images"))
        .json(&json!({"disk_format": "raw", "container_format": "bare"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = header_text(response.headers(), "location");
    assert!(
        location.starts_with(&format!("{}/v2/images/", server.base)),
        "Location: {location}"
    );

    // A client that does not trust the test CA gets no answer at all.
    let untrusting = reqwest::Client::builder()
        .use_rustls_tls()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(server.url("/versions"))
            .send()
            .await
            .is_err(),
        "the certificate was accepted without its CA"
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_links_and_catalog_use_https() {
    let server = start_tls_server(|config| config.auth = AuthMode::Keys).await;
    let admin = read_bootstrap_key(&server.data_dir());
    let (id, secret) = split_key(&admin);

    let reply = send(
        server
            .client
            .post(server.url("/v3/auth/tokens"))
            .json(&app_credential_auth(&id, &secret)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    assert_catalog(&reply.body, &format!("{}/v3/", server.base), &server.base);
    let token = header_text(&reply.headers, "x-subject-token");
    let status = server
        .client
        .get(server.url("/v2/images"))
        .header("X-Auth-Token", token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK, "a token over HTTPS");

    let reply = send(server.client.get(server.url("/v3"))).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.body["version"]["links"][0]["href"],
        format!("{}/v3/", server.base)
    );

    let reply = send(server.client.get(server.url("/v2/images"))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        header_text(&reply.headers, "www-authenticate"),
        format!("Keystone uri=\"{}/v3\"", server.base)
    );

    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_on_the_tls_port_gets_no_answer() {
    let server = start_tls_server(|_| {}).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /versions HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::new();
    // The server may close the connection, reset it or say nothing; any of that will do.
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received)).await;
    assert!(
        !received.starts_with(b"HTTP/1.1 200"),
        "plain HTTP was answered: {}",
        String::from_utf8_lossy(&received)
    );

    // The port still serves HTTPS.
    let response = server
        .client
        .get(server.url("/versions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_are_dropped_after_the_handshake_timeout() {
    let server = start_tls_server(|_| {}).await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut buffer = [0u8; 64];
    let limit = HANDSHAKE_TIMEOUT + Duration::from_secs(10);
    let outcome = tokio::time::timeout(limit, stream.read(&mut buffer)).await;
    let elapsed = started.elapsed();
    match outcome {
        Ok(Ok(0) | Err(_)) => {}
        Ok(Ok(count)) => panic!("the server sent {count} bytes to a client that never said hello"),
        Err(_) => panic!("a silent connection was still open after {elapsed:?}"),
    }
    assert!(
        elapsed >= HANDSHAKE_TIMEOUT / 2,
        "closed after only {elapsed:?}, sooner than the handshake timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incomplete_request_headers_time_out() {
    let server = Server::start().await;
    let started = Instant::now();
    let mut stream = TcpStream::connect(plain_address(&server)).await.unwrap();
    stream.write_all(INCOMPLETE_REQUEST).await.unwrap();
    let mut received = Vec::new();
    let limit = HEADER_READ_TIMEOUT + Duration::from_secs(10);
    let outcome = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
    let elapsed = started.elapsed();
    assert!(
        outcome.is_ok(),
        "a connection with unfinished headers was still open after {elapsed:?}"
    );
    assert!(
        elapsed >= HEADER_READ_TIMEOUT / 2,
        "closed after only {elapsed:?}, sooner than the header-read timeout"
    );
    assert!(
        !received.starts_with(b"HTTP/1.1 200"),
        "an incomplete request was answered: {}",
        String::from_utf8_lossy(&received)
    );
}

/// A JSON body that stops arriving is answered 408 instead of holding the connection: the
/// token endpoint needs no credential, so this is what an anonymous slow client would try.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_small_bodies_get_408() {
    let server = Server::start().await;
    let mut stream = TcpStream::connect(plain_address(&server)).await.unwrap();
    stream
        .write_all(
            b"POST /v3/auth/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"auth\":",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let mut received = Vec::new();
    let limit = ocellus::http::SMALL_BODY_TIMEOUT + Duration::from_secs(10);
    let outcome = tokio::time::timeout(limit, stream.read_to_end(&mut received)).await;
    assert!(
        outcome.is_ok(),
        "still waiting after {:?}",
        started.elapsed()
    );
    assert!(
        received.starts_with(b"HTTP/1.1 408"),
        "a stalled body got: {}",
        String::from_utf8_lossy(&received[..received.len().min(200)])
    );
}

/// A request head over the 64 KiB limit is refused with 431, even when it arrives in small
/// pieces (hyper once let one extra read past its buffer limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431() {
    let server = Server::start().await;
    let mut stream = TcpStream::connect(plain_address(&server)).await.unwrap();
    let mut head = b"GET /versions HTTP/1.1\r\nHost: x\r\n".to_vec();
    for index in 0..100 {
        head.extend_from_slice(format!("X-Filler-{index}: {}\r\n", "a".repeat(1000)).as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    for piece in head.chunks(12 * 1024) {
        if stream.write_all(piece).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    assert!(
        received.starts_with(b"HTTP/1.1 431"),
        "a 100 KiB request head got: {}",
        String::from_utf8_lossy(&received[..received.len().min(200)])
    );
}

/// Sends `headers` after a request line in one write and returns what the server answered.
async fn answer_to_head(server: &Server, headers: &str) -> Vec<u8> {
    let mut stream = TcpStream::connect(plain_address(server)).await.unwrap();
    let head = format!("GET /versions HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n");
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut received)).await;
    received
}

/// Issue 9: a head over the limit that arrives at once (one huge header line, or many ordinary
/// ones, fewer than hyper's 100-header cap) was answered 200, because hyper's buffer limit only
/// stops further reads. Both get 431; a head just under the limit is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue9_request_heads_over_the_limit_get_431_however_they_arrive() {
    let server = Server::start().await;
    let one_huge_line = format!("X-Big: {}\r\n", "a".repeat(100_000));
    let many_lines: String = (0..70)
        .map(|index| format!("X-Filler-{index:02}: {}\r\n", "a".repeat(1000)))
        .collect();
    assert!(many_lines.len() > MAX_HEAD_BYTES);
    for (case, headers) in [("one huge line", one_huge_line), ("70 lines", many_lines)] {
        let received = answer_to_head(&server, &headers).await;
        assert!(
            received.starts_with(b"HTTP/1.1 431"),
            "{case}: {}",
            String::from_utf8_lossy(&received[..received.len().min(200)])
        );
    }
    let under = format!("X-Big: {}\r\n", "a".repeat(MAX_HEAD_BYTES - 200));
    let received = answer_to_head(&server, &under).await;
    assert!(
        received.starts_with(b"HTTP/1.1 200"),
        "a head under the limit: {}",
        String::from_utf8_lossy(&received[..received.len().min(200)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let server = Server::start_with(|config| config.max_connections = 1).await;
    let mut hog = TcpStream::connect(plain_address(&server)).await.unwrap();
    hog.write_all(INCOMPLETE_REQUEST).await.unwrap();
    // Let the accept loop take the first connection (and with it the only slot).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut waiting = tokio::spawn(server.request(Method::GET, "/versions").send());
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut waiting)
            .await
            .is_err(),
        "a second connection was served while the only slot was taken"
    );

    drop(hog);
    let response = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting request is served once the slot frees")
        .expect("the request task completes")
        .expect("the request succeeds");
    assert_eq!(response.status(), StatusCode::OK);
}

#[test]
fn bad_tls_files_keep_the_server_from_opening() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_test_certificates(dir.path());
    let not_pem = dir.path().join("not-a-certificate.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let data_dir = dir.path().join("data");

    let cases = [
        (
            "missing certificate file",
            TlsFiles {
                cert: dir.path().join("missing-cert.pem"),
                key: good.files.key.clone(),
            },
            "missing-cert.pem",
        ),
        (
            "file without a certificate",
            TlsFiles {
                cert: not_pem,
                key: good.files.key.clone(),
            },
            "no certificate",
        ),
        (
            "missing key file",
            TlsFiles {
                cert: good.files.cert.clone(),
                key: dir.path().join("missing-key.pem"),
            },
            "missing-key.pem",
        ),
    ];
    for (case, files, expected) in cases {
        let config = Config {
            data_dir: data_dir.clone(),
            tls: Some(files),
            ..Config::default()
        };
        match ocellus::open(config) {
            Err(ocellus::OpenError::Tls(message)) => {
                assert!(message.contains(expected), "{case}: {message}");
            }
            Err(other) => panic!("{case}: expected a TLS error, got {other}"),
            Ok(_) => panic!("{case}: the server opened"),
        }
        assert!(
            !data_dir.exists(),
            "{case}: the data directory was created before the TLS files were checked"
        );
    }
}
