//! Issue 13 (in progress): the v2 image flow with blobs in a real S3 bucket.
//!
//! Needs an engine: `OCELLUS_S3_ENV` names the `s3.env` file that `tests/s3/ceph-rgw.sh up`
//! writes (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, S3_REGION). Without it the
//! test says so and does nothing; the test command will start the engine once this issue is
//! done.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Server, md5_hex, random_bytes};

fn settings() -> Option<ocellus::S3Settings> {
    let path = std::env::var("OCELLUS_S3_ENV").ok()?;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    let value = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=")))
            .map(|value| value.trim().trim_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{name} missing from {path}"))
    };
    Some(ocellus::S3Settings {
        endpoint: Some(value("S3_ENDPOINT")),
        bucket: value("S3_BUCKET"),
        region: value("S3_REGION"),
        access_key: value("S3_ACCESS_KEY"),
        secret_key: value("S3_SECRET_KEY"),
        // A fresh prefix per run: runs never see each other's objects.
        prefix: format!("test-{}/", uuid::Uuid::new_v4()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_round_trip_through_an_s3_bucket() {
    let Some(settings) = settings() else {
        eprintln!("skipped: OCELLUS_S3_ENV is not set (see tests/s3/)");
        return;
    };
    let server = Server::start_with(|config| config.s3 = Some(settings)).await;
    // One blob below the part size (one PUT), one above (a multipart upload).
    for (size, seed) in [(100_000usize, 2u64), (20 << 20, 4)] {
        let bytes = random_bytes(size, seed);
        let id = server.create_raw().await;
        assert_eq!(
            server.upload(&id, bytes.clone()).await,
            StatusCode::NO_CONTENT
        );
        let (_, shown) = server.show(&id).await;
        assert_eq!(shown["status"], "active");
        assert_eq!(shown["checksum"], md5_hex(&bytes));
        assert_eq!(server.download(&id).await, (StatusCode::OK, bytes.clone()));
        let ranged = server
            .request(Method::GET, &format!("/v2/images/{id}/file"))
            .header("range", "bytes=70000-99999")
            .send()
            .await
            .unwrap();
        assert_eq!(ranged.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            ranged.bytes().await.unwrap().to_vec(),
            bytes[70_000..100_000]
        );
        // The same bytes again: a second image, the same blob.
        let again = server.create_raw().await;
        assert_eq!(
            server.upload(&again, bytes.clone()).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            server.download(&again).await,
            (StatusCode::OK, bytes.clone())
        );
        assert_eq!(server.delete(&id).await, StatusCode::NO_CONTENT);
        assert_eq!(server.download(&again).await, (StatusCode::OK, bytes));
        assert_eq!(server.delete(&again).await, StatusCode::NO_CONTENT);
    }
    // No temp file is left on the local disk: uploads went to the bucket.
    assert!(server.temp_files().is_empty());
    let image = server.create(json!({"name": "empty"})).await;
    assert!(image["id"].is_string());
}
