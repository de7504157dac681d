//! Limits that keep the service up: transfer slots and the free-space reserve.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};

use crate::common::{Server, random_bytes};

/// A slow upload that has sent its first bytes and then holds its slot.
async fn held_upload(server: &Server, id: &str) -> tokio::sync::oneshot::Sender<()> {
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let first = bytes::Bytes::from(random_bytes(1000, 1));
    let body = futures_util::stream::unfold(Some((first, released)), |state| async move {
        let (chunk, released) = state?;
        if chunk.is_empty() {
            let _ = released.await;
            return None;
        }
        Some((
            Ok::<_, std::io::Error>(chunk),
            Some((bytes::Bytes::new(), released)),
        ))
    });
    let request = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(body));
    tokio::spawn(async move {
        let _ = request.send().await;
    });
    release
}

#[tokio::test]
async fn a_transfer_beyond_the_limit_waits_then_gets_503() {
    let server = Server::start_with(|config| config.store.max_uploads = 1).await;
    let holder = server.create_raw().await;
    let release = held_upload(&server, &holder).await;
    crate::common::eventually(async || server.show(&holder).await.1["status"] == "saving").await;

    let waiting = server.create_raw().await;
    let started = Instant::now();
    let response = server
        .request(Method::PUT, &format!("/v2/images/{waiting}/file"))
        .header("Content-Type", "application/octet-stream")
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "it waited first"
    );
    assert_eq!(server.show(&waiting).await.1["status"], "queued");

    // The slot comes back when the first upload ends.
    drop(release);
    crate::common::eventually(async || server.show(&holder).await.1["status"] != "saving").await;
    assert_eq!(
        server.upload(&waiting, vec![2u8; 100]).await,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn downloads_have_their_own_limit() {
    let server = Server::start_with(|config| config.store.max_downloads = 1).await;
    let id = server.create_raw().await;
    let data = random_bytes(8 << 20, 3);
    assert_eq!(
        server.upload(&id, data.clone()).await,
        StatusCode::NO_CONTENT
    );
    // A download whose client reads nothing holds the only slot.
    let held = server
        .request(Method::GET, &format!("/v2/images/{id}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    let second = server
        .request(Method::GET, &format!("/v2/images/{id}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(second.headers().contains_key("retry-after"));
    // Metadata is not held up by either.
    assert_eq!(server.show(&id).await.0, StatusCode::OK);
    assert_eq!(held.bytes().await.unwrap().len(), data.len());
    assert_eq!(server.download(&id).await, (StatusCode::OK, data));
}

#[tokio::test]
async fn an_upload_that_cannot_fit_is_refused_before_its_body() {
    // A reserve larger than any disk: nothing fits.
    let server =
        Server::start_with(|config| config.store.min_free_space = Some(u64::MAX / 4)).await;
    let id = server.create_raw().await;
    let response = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(server.show(&id).await.1["status"], "queued");
    assert!(server.temp_files().is_empty());
    // Of unknown size (chunked), too.
    let chunks =
        futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(vec![0u8; 4096]))]);
    let response = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(server.show(&id).await.1["status"], "queued");
    // Policy answers still come first: a missing image is 404, not 413.
    let missing = format!("/v2/images/{}/file", uuid::Uuid::new_v4());
    let response = server
        .request(Method::PUT, &missing)
        .header("Content-Type", "application/octet-stream")
        .body(vec![0u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}
