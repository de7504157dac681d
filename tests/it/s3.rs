//! Image bytes on a real S3 engine, beside the data directory: Glance's multiple stores.
//!
//! Needs an engine: `OCELLUS_S3_ENV` names the `s3.env` file that `tests/s3/ceph-rgw.sh up`
//! (or `tests/s3/garage.sh up`) writes: S3_ENDPOINT, S3_ACCESS_KEY, S3_SECRET_KEY, S3_BUCKET,
//! S3_REGION. The test command brings Ceph up and sets it; run alone without it, these tests
//! say so and pass without doing anything. Every server gets a fresh key prefix, so runs never
//! see each other's objects; the engine's own listing of that prefix is what the tests count.

use std::time::Duration;

use futures_util::StreamExt;
use object_store::ObjectStore;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{Server, eventually, md5_hex, random_bytes, sha512_hex};
use ocellus::store::{BackendSpec, StoreSet, StoreSpec};

/// The tests share one cluster, and some stop parts of it: they take turns.
static CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn env_file() -> Option<String> {
    std::env::var("OCELLUS_S3_ENV").ok()
}

/// The script that brought the engine up (it wrote the env file beside its data).
fn script() -> &'static str {
    match env_value("GARAGE_CONFIG") {
        Some(_) => concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3/garage.sh"),
        None => concat!(env!("CARGO_MANIFEST_DIR"), "/tests/s3/ceph-rgw.sh"),
    }
}

/// Runs a command of the cluster script on the cluster that wrote the env file.
fn cluster(command: &[&str]) {
    let env = env_file().unwrap();
    let dir = std::path::Path::new(&env).parent().unwrap();
    let status = std::process::Command::new("bash")
        .arg(script())
        .arg(command[0])
        .arg(dir)
        .args(&command[1..])
        .status()
        .unwrap();
    assert!(status.success(), "{} {command:?} failed", script());
}

fn env_value(name: &str) -> Option<String> {
    let path = env_file()?;
    let text = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{path}: {error}"));
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name}=")))
        .map(|value| value.trim().trim_matches('"').to_owned())
}

fn settings() -> Option<ocellus::S3Settings> {
    env_file()?;
    let value = |name: &str| env_value(name).unwrap_or_else(|| panic!("{name} missing"));
    Some(ocellus::S3Settings {
        endpoint: Some(value("S3_ENDPOINT")),
        bucket: value("S3_BUCKET"),
        region: value("S3_REGION"),
        access_key: value("S3_ACCESS_KEY"),
        secret_key: value("S3_SECRET_KEY"),
        prefix: format!("test-{}/", uuid::Uuid::new_v4()),
        presigned_downloads: false,
    })
}

/// The data directory as `fs` and the bucket as `ceph`; `default` takes uploads.
fn two_stores(settings: &ocellus::S3Settings, default: &str, grace: Duration) -> StoreSet {
    StoreSet {
        stores: vec![
            StoreSpec {
                id: "fs".into(),
                description: Some("local disk".into()),
                // Read from the local disk first when both have the bytes.
                weight: 100,
                grace,
                backend: BackendSpec::File,
            },
            StoreSpec {
                id: "ceph".into(),
                description: Some("the cluster".into()),
                weight: 0,
                grace,
                backend: BackendSpec::S3(settings.clone()),
            },
        ],
        default: default.into(),
    }
}

/// The engine's own view of a key prefix: objects and bytes, listed through S3.
struct Bucket {
    client: object_store::aws::AmazonS3,
    prefix: String,
}

impl Bucket {
    fn new(settings: &ocellus::S3Settings) -> Bucket {
        let client = object_store::aws::AmazonS3Builder::new()
            .with_endpoint(settings.endpoint.clone().unwrap())
            .with_allow_http(true)
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key)
            .with_secret_access_key(&settings.secret_key)
            .build()
            .unwrap();
        Bucket {
            client,
            prefix: settings.prefix.clone(),
        }
    }

    /// `(objects, bytes)` under `prefix` + `under`.
    async fn count(&self, under: &str) -> (usize, u64) {
        let path = object_store::path::Path::from(format!("{}{under}", self.prefix));
        let mut listing = self.client.list(Some(&path));
        let (mut objects, mut bytes) = (0, 0);
        while let Some(meta) = listing.next().await {
            let meta = meta.unwrap();
            objects += 1;
            bytes += meta.size;
        }
        (objects, bytes)
    }
}

async fn task_of(server: &Server, id: &str) -> Value {
    let (_, tasks) = server
        .json(server.request(Method::GET, &format!("/v2/images/{id}/tasks")))
        .await;
    tasks["tasks"][0].clone()
}

/// Imports `id` with `body`; waits until its task has finished and returns the task.
async fn import(server: &Server, id: &str, body: Value) -> Value {
    let status = server
        .request(Method::POST, &format!("/v2/images/{id}/import"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    finished_task(server, id).await
}

/// Waits (at most 2 minutes) until the image's latest task has finished; returns it.
async fn finished_task(server: &Server, id: &str) -> Value {
    let started = std::time::Instant::now();
    loop {
        let task = task_of(server, id).await;
        if task["status"] == "success" || task["status"] == "failure" {
            return task;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{task}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 30 s) until nothing is left under the bucket prefix; returns how long.
async fn until_empty(bucket: &Bucket) -> Duration {
    let started = std::time::Instant::now();
    while bucket.count("").await != (0, 0) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "objects left: {:?}",
            bucket.count("").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    started.elapsed()
}

macro_rules! engine_or_skip {
    () => {
        match settings() {
            Some(settings) => settings,
            None => {
                eprintln!("skipped: OCELLUS_S3_ENV is not set (see tests/s3/README.md)");
                return;
            }
        }
    };
}

/// Bytes, md5, sha512 and ranges through the bucket; the same bytes twice move nothing the
/// second time (the engine's object count and bytes stay); `stores` names the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_round_trip_through_an_s3_store_and_dedupe_moves_nothing() {
    let settings = engine_or_skip!();
    let _turn = CLUSTER.lock().await;
    let bucket = Bucket::new(&settings);
    let stores = two_stores(&settings, "ceph", Duration::from_secs(3600));
    let server = Server::start_with(|config| config.stores = stores).await;
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
        assert_eq!(shown["stores"], "ceph");
        assert_eq!(shown["checksum"], md5_hex(&bytes));
        assert_eq!(shown["os_hash_value"], sha512_hex(&bytes));
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
        let before = bucket.count("blobs/").await;
        assert!(before.1 >= size as u64, "{before:?}");
        // The same bytes again: a second image, the same objects.
        let again = server.create_raw().await;
        assert_eq!(
            server.upload(&again, bytes.clone()).await,
            StatusCode::NO_CONTENT
        );
        assert_eq!(bucket.count("blobs/").await, before);
        assert_eq!(bucket.count("staging/").await, (0, 0));
        assert_eq!(
            server.download(&again).await,
            (StatusCode::OK, bytes.clone())
        );
        assert_eq!(server.delete(&id).await, StatusCode::NO_CONTENT);
        assert_eq!(server.download(&again).await, (StatusCode::OK, bytes));
    }
    // Nothing went to the local disk.
    assert!(server.blob_files().is_empty());
    assert!(server.temp_files().is_empty());
}

/// The last reference gone, the object stays for the grace; the same bytes uploaded within
/// it bring it back without moving data; gone for good, the sweep removes it after the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_blob_goes_after_the_grace_and_an_upload_within_it_revives_it() {
    let settings = engine_or_skip!();
    let _turn = CLUSTER.lock().await;
    let bucket = Bucket::new(&settings);
    let stores = two_stores(&settings, "ceph", Duration::from_secs(3));
    let server = Server::start_with(|config| config.stores = stores).await;
    let bytes = random_bytes(300_000, 8);
    let first = server.create_raw().await;
    assert_eq!(
        server.upload(&first, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let stored = bucket.count("blobs/").await;
    assert_eq!(stored.0, 2, "the blob and its outboard");
    assert_eq!(server.delete(&first).await, StatusCode::NO_CONTENT);
    // Within the grace: still there, and an upload of the same bytes revives it.
    assert_eq!(bucket.count("blobs/").await, stored);
    let second = server.create_raw().await;
    assert_eq!(
        server.upload(&second, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(bucket.count("blobs/").await, stored, "revived, not swept");
    assert_eq!(server.download(&second).await, (StatusCode::OK, bytes));
    // Gone for good: the sweep removes both objects once the grace is over.
    assert_eq!(server.delete(&second).await, StatusCode::NO_CONTENT);
    let waited = until_empty(&bucket).await;
    assert!(waited >= Duration::from_secs(2), "removed before the grace");
}

/// An upload cut mid-way (the client goes away after 20 MiB, two parts sent) leaves the image
/// queued and, once the sweep ran, no object under the prefix at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upload_leaves_no_staging_object() {
    let settings = engine_or_skip!();
    let _turn = CLUSTER.lock().await;
    let bucket = Bucket::new(&settings);
    let stores = two_stores(&settings, "ceph", Duration::from_secs(2));
    let server = Server::start_with(|config| config.stores = stores).await;
    let id = server.create_raw().await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let chunks = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    let body = reqwest::Body::wrap_stream(chunks);
    let request = server
        .request(Method::PUT, &format!("/v2/images/{id}/file"))
        .header("content-type", "application/octet-stream")
        .body(body)
        .send();
    let upload = tokio::spawn(request);
    for seed in 0..20u64 {
        sender.send(Ok(random_bytes(1 << 20, seed))).await.unwrap();
    }
    // Let the parts reach the engine, then fail the body: the client is gone.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sender
        .send(Err(std::io::Error::other("the client went away")))
        .await
        .unwrap();
    drop(sender);
    let _ = upload.await;
    eventually(async || server.show(&id).await.1["status"] == "queued").await;
    until_empty(&bucket).await;
    // And the image takes a full upload afterwards.
    let bytes = random_bytes(1 << 20, 99);
    assert_eq!(
        server.upload(&id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.download(&id).await, (StatusCode::OK, bytes));
}

/// copy-image from the data directory to the bucket and back, with `stores` kept current;
/// `DELETE /v2/stores/{store}/{image}` removes one copy, never the last; a download reads the
/// other store when the first one's bytes are damaged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_image_between_stores_and_delete_from_one() {
    let settings = engine_or_skip!();
    let _turn = CLUSTER.lock().await;
    let bucket = Bucket::new(&settings);
    let stores = two_stores(&settings, "fs", Duration::from_secs(2));
    let server = Server::start_with(|config| config.stores = stores).await;
    let (_, info) = server
        .json(server.request(Method::GET, "/v2/info/stores"))
        .await;
    assert_eq!(
        info,
        json!({"stores": [
            {"id": "fs", "description": "local disk", "default": "true", "weight": 100},
            {"id": "ceph", "description": "the cluster", "weight": 0},
        ]})
    );
    let bytes = random_bytes(12 << 20, 10);
    let id = server.create_raw().await;
    assert_eq!(
        server.upload(&id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.show(&id).await.1["stores"], "fs");

    let task = import(
        &server,
        &id,
        json!({"method": {"name": "copy-image"}, "stores": ["ceph"]}),
    )
    .await;
    assert_eq!(task["status"], "success", "{task}");
    let (_, shown) = server.show(&id).await;
    assert_eq!(shown["stores"], "fs,ceph");
    assert_eq!(shown["status"], "active");
    assert_eq!(shown["os_glance_importing_to_stores"], "");
    assert_eq!(shown["os_glance_failed_import"], "");
    assert_eq!(bucket.count("blobs/").await.0, 2);

    // The local copy damaged: the download still gets the right bytes, from the bucket.
    let blob = server.blob_files().pop().unwrap();
    let mut damaged = std::fs::read(&blob).unwrap();
    damaged[5 << 20] ^= 0x55;
    std::fs::write(&blob, &damaged).unwrap();
    assert_eq!(server.download(&id).await, (StatusCode::OK, bytes.clone()));
    std::fs::write(&blob, &bytes).unwrap();

    // One copy removed; the last one stays.
    let delete = |store: &'static str| {
        let id = id.clone();
        let server = &server;
        async move {
            server
                .status(Method::DELETE, &format!("/v2/stores/{store}/{id}"))
                .await
        }
    };
    assert_eq!(delete("fs").await, StatusCode::NO_CONTENT);
    assert_eq!(server.show(&id).await.1["stores"], "ceph");
    assert!(
        server.blob_files().is_empty(),
        "the local copy is removed at once"
    );
    assert_eq!(server.download(&id).await, (StatusCode::OK, bytes.clone()));
    assert_eq!(delete("fs").await, StatusCode::NOT_FOUND);
    assert_eq!(delete("ceph").await, StatusCode::CONFLICT);
    assert_eq!(delete("nowhere").await, StatusCode::CONFLICT);

    // And back to the data directory.
    let task = import(
        &server,
        &id,
        json!({"method": {"name": "copy-image"}, "all_stores": true}),
    )
    .await;
    assert_eq!(task["status"], "success", "{task}");
    // Shown heaviest store first: fs weighs 100, ceph 0.
    assert_eq!(server.show(&id).await.1["stores"], "fs,ceph");
    assert_eq!(server.blob_files().len(), 1);
    assert_eq!(delete("ceph").await, StatusCode::NO_CONTENT);
    assert_eq!(server.show(&id).await.1["stores"], "fs");
    assert_eq!(server.download(&id).await, (StatusCode::OK, bytes));
    // The bucket's copy goes after its grace.
    until_empty(&bucket).await;
}

/// An upload names its store (`X-Image-Meta-Store`), an import its stores; unknown stores
/// are refused (400 on upload, 409 on import) and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_imports_choose_their_stores() {
    let settings = engine_or_skip!();
    let _turn = CLUSTER.lock().await;
    let stores = two_stores(&settings, "fs", Duration::from_secs(3600));
    let server = Server::start_with(|config| config.stores = stores).await;
    let bytes = random_bytes(200_000, 12);
    let id = server.create_raw().await;
    let put = |store: &'static str| {
        server
            .request(Method::PUT, &format!("/v2/images/{id}/file"))
            .header("content-type", "application/octet-stream")
            .header("x-image-meta-store", store)
            .body(bytes.clone())
            .send()
    };
    assert_eq!(
        put("elsewhere").await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(server.show(&id).await.1["status"], "queued");
    assert_eq!(put("ceph").await.unwrap().status(), StatusCode::NO_CONTENT);
    assert_eq!(server.show(&id).await.1["stores"], "ceph");
    assert!(server.blob_files().is_empty());

    // glance-direct into both stores: staged in the default store, then in both.
    let staged = server
        .create(json!({"disk_format": "raw", "container_format": "bare"}))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stage = server
        .request(Method::PUT, &format!("/v2/images/{staged}/stage"))
        .header("content-type", "application/octet-stream")
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(stage.status(), StatusCode::NO_CONTENT);
    let refused = server
        .request(Method::POST, &format!("/v2/images/{staged}/import"))
        .json(&json!({"method": {"name": "glance-direct"}, "stores": ["ceph", "nowhere"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::CONFLICT);
    assert_eq!(server.show(&staged).await.1["status"], "uploading");
    // The header and `stores` together are refused, as in Glance.
    let both = server
        .request(Method::POST, &format!("/v2/images/{staged}/import"))
        .header("x-image-meta-store", "ceph")
        .json(&json!({"method": {"name": "glance-direct"}, "stores": ["ceph"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), StatusCode::BAD_REQUEST);
    // The header alone names the store.
    let accepted = server
        .request(Method::POST, &format!("/v2/images/{staged}/import"))
        .header("x-image-meta-store", "ceph")
        .json(&json!({"method": {"name": "glance-direct"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), StatusCode::ACCEPTED);
    let task = finished_task(&server, &staged).await;
    assert_eq!(task["status"], "success", "{task}");
    let (_, shown) = server.show(&staged).await;
    assert_eq!(shown["status"], "active");
    // Only where it was asked for: the staging copy in the data directory is let go.
    assert_eq!(shown["stores"], "ceph");
    assert_eq!(server.download(&staged).await, (StatusCode::OK, bytes));
}

/// One OSD killed while images go up and come down: the work goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_go_on_with_one_node_down() {
    let settings = engine_or_skip!();
    let _turn = CLUSTER.lock().await;
    let stores = two_stores(&settings, "ceph", Duration::from_secs(3600));
    let server = Server::start_with(|config| config.stores = stores).await;
    let before = random_bytes(9 << 20, 14);
    let stored = server.create_raw().await;
    assert_eq!(
        server.upload(&stored, before.clone()).await,
        StatusCode::NO_CONTENT
    );
    let (kill, start) = match env_value("GARAGE_CONFIG") {
        Some(_) => (["kill-node", "2"], ["start-node", "2"]),
        None => (["kill-osd", "0"], ["start-osd", "0"]),
    };
    // Started while the transfers run, so the node goes down under them.
    let killer = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(300));
        cluster(&kill);
    });
    let after = random_bytes(24 << 20, 16);
    let new = server.create_raw().await;
    let (uploaded, downloaded) =
        tokio::join!(server.upload(&new, after.clone()), server.download(&stored));
    killer.await.unwrap();
    struct Restart([&'static str; 2]);
    impl Drop for Restart {
        fn drop(&mut self) {
            cluster(&self.0);
        }
    }
    let _restart = Restart(start);
    assert_eq!(uploaded, StatusCode::NO_CONTENT);
    assert_eq!(downloaded, (StatusCode::OK, before.clone()));
    // With the node down: more of both.
    assert_eq!(server.download(&new).await, (StatusCode::OK, after));
    let third = server.create_raw().await;
    assert_eq!(
        server.upload(&third, before.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.download(&third).await, (StatusCode::OK, before));
}

/// The engine down: uploads and downloads answer 503 with Retry-After in bounded time, the
/// image stays queued, nothing half-made is left, and everything works again once the engine
/// is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_engine_is_503_and_recovery_needs_no_restart() {
    let settings = engine_or_skip!();
    let _turn = CLUSTER.lock().await;
    let bucket = Bucket::new(&settings);
    let stores = two_stores(&settings, "ceph", Duration::from_secs(3600));
    let server = Server::start_with(|config| config.stores = stores).await;
    let bytes = random_bytes(300_000, 6);
    let stored = server.create_raw().await;
    assert_eq!(
        server.upload(&stored, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let objects = bucket.count("").await;

    let (stop, start) = match env_value("GARAGE_CONFIG") {
        Some(_) => ("stop-s3", "start-s3"),
        None => ("stop-rgw", "start-rgw"),
    };
    cluster(&[stop]);
    // Whatever happens below, the gateway comes back for the other tests.
    struct Restart(&'static str);
    impl Drop for Restart {
        fn drop(&mut self) {
            cluster(&[self.0]);
        }
    }
    let restart = Restart(start);
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
    assert!(download.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.show(&queued).await.1["status"], "queued");

    drop(restart);
    assert_eq!(bucket.count("").await, objects, "nothing half-made");
    assert_eq!(
        server.upload(&queued, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.download(&stored).await, (StatusCode::OK, bytes));
}

/// Presigned downloads (opt-in): the download answers 302 to the engine, whose URL serves the
/// image's bytes, whole or a range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presigned_downloads_redirect_to_the_engine() {
    let mut settings = engine_or_skip!();
    settings.presigned_downloads = true;
    let _turn = CLUSTER.lock().await;
    let stores = two_stores(&settings, "ceph", Duration::from_secs(3600));
    let server = Server::start_with(|config| config.stores = stores).await;
    let bytes = random_bytes(500_000, 18);
    let id = server.create_raw().await;
    assert_eq!(
        server.upload(&id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = plain
        .get(server.url(&format!("/v2/images/{id}/file")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FOUND);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        location.starts_with(settings.endpoint.as_deref().unwrap()),
        "{location}"
    );
    let fetched = plain.get(&location).send().await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap().to_vec(), bytes);
    let ranged = plain
        .get(&location)
        .header("range", "bytes=1000-1999")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.bytes().await.unwrap().to_vec(), bytes[1000..2000]);
}

/// Bytes changed in the bucket are never served: a download through the read-ahead, and a
/// range, end with an error instead of a clean end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_changed_in_the_bucket_are_never_served() {
    let settings = engine_or_skip!();
    let _turn = CLUSTER.lock().await;
    let bucket = Bucket::new(&settings);
    let stores = two_stores(&settings, "ceph", Duration::from_secs(3600));
    let server = Server::start_with(|config| config.stores = stores).await;
    let bytes = random_bytes(10 << 20, 20);
    let id = server.create_raw().await;
    assert_eq!(
        server.upload(&id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let digest = blake3::hash(&bytes).to_hex().to_string();
    let key = object_store::path::Path::from(format!(
        "{}blobs/b3/{}/{digest}",
        settings.prefix,
        &digest[..2]
    ));
    let mut damaged = bytes.clone();
    damaged[9 << 20] ^= 1;
    bucket
        .client
        .put(&key, object_store::PutPayload::from(damaged))
        .await
        .unwrap();
    let response = server
        .request(Method::GET, &format!("/v2/images/{id}/file"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.bytes().await.is_err(),
        "a damaged download ended cleanly"
    );
    let ranged = server
        .request(Method::GET, &format!("/v2/images/{id}/file"))
        .header(
            "range",
            format!("bytes={}-{}", (9 << 20) - 10, (9 << 20) + 10),
        )
        .send()
        .await
        .unwrap();
    assert!(
        ranged.bytes().await.is_err(),
        "a damaged range ended cleanly"
    );
    // Bytes before the damage are still served, verified.
    let early = server
        .request(Method::GET, &format!("/v2/images/{id}/file"))
        .header("range", "bytes=0-99999")
        .send()
        .await
        .unwrap();
    assert_eq!(early.bytes().await.unwrap().to_vec(), bytes[..100_000]);
}

/// A bucket that does not answer when the server starts does not keep it down: the server
/// serves, the data directory's store works, and uploads to the bucket answer 503 with
/// `Retry-After`, the image still queued. Needs no engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_down_at_start_does_not_keep_the_server_down() {
    // Nothing listens on port 1 of the loopback.
    let settings = ocellus::S3Settings {
        endpoint: Some("http://127.0.0.1:1".into()),
        bucket: "nowhere".into(),
        region: "us-east-1".into(),
        access_key: "AKID".into(),
        secret_key: "secret".into(),
        prefix: String::new(),
        presigned_downloads: false,
    };
    let stores = two_stores(&settings, "fs", Duration::from_secs(3600));
    let server = Server::start_with(|config| config.stores = stores).await;
    let bytes = random_bytes(100_000, 22);
    let local = server.create_raw().await;
    assert_eq!(
        server.upload(&local, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server.download(&local).await,
        (StatusCode::OK, bytes.clone())
    );
    let remote = server.create_raw().await;
    let refused = server
        .request(Method::PUT, &format!("/v2/images/{remote}/file"))
        .header("content-type", "application/octet-stream")
        .header("x-image-meta-store", "ceph")
        .body(bytes)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(server.show(&remote).await.1["status"], "queued");
}
