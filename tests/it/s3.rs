//! Issue 13 (in progress): the v2 image flow with blobs in a real S3 bucket.
//!
//! Needs an engine: `OCELLUS_S3_ENV` names the `s3.env` file that `tests/s3/ceph-rgw.sh up`
//! writes (S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET, S3_REGION). Without it the
//! test says so and does nothing; the test command will start the engine once this issue is
//! done.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::{Server, md5_hex, random_bytes};

/// The tests share one cluster, and one of them stops its gateway: they take turns.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_file() -> Option<String> {
    std::env::var("OCELLUS_S3_ENV").ok()
}

/// Runs a command of the cluster script on the cluster that wrote the env file.
fn cluster(command: &str) {
    let env = env_file().unwrap();
    let dir = std::path::Path::new(&env).parent().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3/ceph-rgw.sh");
    let status = std::process::Command::new("bash")
        .arg(script)
        .arg(command)
        .arg(dir)
        .status()
        .unwrap();
    assert!(status.success(), "ceph-rgw.sh {command} failed");
}

fn settings() -> Option<ocellus::S3Settings> {
    let path = env_file()?;
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
    let _turn = CLUSTER.lock().await;
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

/// The engine down: uploads and downloads answer 503 with Retry-After in bounded time, the
/// image stays queued, and everything works again once the engine is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_503_and_recovery_needs_no_restart() {
    let Some(settings) = settings() else {
        eprintln!("skipped: OCELLUS_S3_ENV is not set (see tests/s3/)");
        return;
    };
    let _turn = CLUSTER.lock().await;
    let server = Server::start_with(|config| config.s3 = Some(settings)).await;
    let bytes = random_bytes(300_000, 6);
    let stored = server.create_raw().await;
    assert_eq!(
        server.upload(&stored, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );

    cluster("stop-rgw");
    // Whatever happens below, the gateway comes back for the other tests.
    struct Restart(bool);
    impl Drop for Restart {
        fn drop(&mut self) {
            if !self.0 {
                cluster("start-rgw");
            }
        }
    }
    let mut restart = Restart(false);
    let started = std::time::Instant::now();
    let queued = server.create_raw().await;
    let response = server
        .request(Method::PUT, &format!("/v2/images/{queued}/file"))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response.headers().contains_key("retry-after");
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(retry_after);
    let download = server
        .request(Method::GET, &format!("/v2/images/{stored}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.show(&queued).await.1["status"], "queued");

    cluster("start-rgw");
    assert_eq!(
        server.upload(&queued, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.download(&stored).await, (StatusCode::OK, bytes));
}
