//! Starting and stopping a real server for a test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ocellus::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

pub struct Server {
    pub base: String,
    state: ocellus::AppState,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), |_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Server {
        Server::start_in(tempfile::tempdir().unwrap(), adjust).await
    }

    pub async fn start_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> Server {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        adjust(&mut config);
        let state = tokio::task::spawn_blocking(move || ocellus::open(config))
            .await
            .unwrap()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, signal) = oneshot::channel::<()>();
        let kept = state.clone();
        let task = tokio::spawn(ocellus::serve(listener, state, async move {
            let _ = signal.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        Server {
            base,
            state: kept,
            client,
            dir,
            shutdown,
            task,
        }
    }

    /// Stops the server, waits until its stores are closed, and hands back the data dir.
    pub async fn stop(self) -> tempfile::TempDir {
        // Our own handle on the state would keep the database open past the server.
        drop(self.state);
        drop(self.client);
        let _ = self.shutdown.send(());
        self.task.await.unwrap().unwrap();
        self.dir
    }

    /// Starts the NBD export on an ephemeral loopback port; it runs until the test ends.
    pub async fn start_nbd(&self) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(ocellus::nbd::serve(
            listener,
            self.state.clone(),
            std::future::pending(),
        ));
        address
    }

    /// The server's router, for requests that must look as if they came from elsewhere (a
    /// `Connection` extension with another peer address).
    pub fn router(&self) -> axum::Router {
        ocellus::http::router(self.state.clone())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request and returns status and body as JSON (Null when empty or not JSON).
    pub async fn json(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.unwrap();
        let status = response.status();
        let bytes = response.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Sends a bodiless request and returns only its status.
    pub async fn status(&self, method: Method, path: &str) -> StatusCode {
        self.request(method, path).send().await.unwrap().status()
    }

    /// Creates a queued raw/bare image, ready for data, and returns its id.
    /// One scrape of `/metrics`, which must answer 200 in the Prometheus text format.
    pub async fn metrics(&self) -> Metrics {
        let response = self.request(Method::GET, "/metrics").send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain; version=0.0.4")
        );
        Metrics::parse(response.text().await.unwrap())
    }

    pub async fn create_raw(&self) -> String {
        let image = self
            .create(serde_json::json!({"disk_format": "raw", "container_format": "bare"}))
            .await;
        image["id"].as_str().unwrap().to_owned()
    }

    pub async fn create(&self, body: Value) -> Value {
        let (status, image) = self
            .json(self.request(Method::POST, "/v2/images").json(&body))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{image}");
        image
    }

    pub async fn show(&self, id: &str) -> (StatusCode, Value) {
        self.json(self.request(Method::GET, &format!("/v2/images/{id}")))
            .await
    }

    pub async fn upload(&self, id: &str, bytes: Vec<u8>) -> StatusCode {
        self.request(Method::PUT, &format!("/v2/images/{id}/file"))
            .header("Content-Type", "application/octet-stream")
            .body(bytes)
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn download(&self, id: &str) -> (StatusCode, Vec<u8>) {
        let response = self
            .request(Method::GET, &format!("/v2/images/{id}/file"))
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.bytes().await.unwrap().to_vec())
    }

    pub async fn delete(&self, id: &str) -> StatusCode {
        self.request(Method::DELETE, &format!("/v2/images/{id}"))
            .send()
            .await
            .unwrap()
            .status()
    }

    pub async fn patch(&self, id: &str, operations: Value) -> (StatusCode, Value) {
        self.json(
            self.request(Method::PATCH, &format!("/v2/images/{id}"))
                .header(
                    "Content-Type",
                    "application/openstack-images-v2.1-json-patch",
                )
                .body(operations.to_string()),
        )
        .await
    }

    /// Image ids of one list request.
    pub async fn list_ids(&self, query: &str) -> (StatusCode, Vec<String>, Value) {
        let (status, body) = self
            .json(self.request(Method::GET, &format!("/v2/images{query}")))
            .await;
        let ids = body["images"]
            .as_array()
            .map(|images| {
                images
                    .iter()
                    .map(|image| image["id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default();
        (status, ids, body)
    }

    /// Files in the blob directory.
    pub fn blob_files(&self) -> Vec<PathBuf> {
        let mut files = files_under(&self.data_dir().join("blobs"));
        files.retain(|path| path.extension().is_none_or(|extension| extension != "obao"));
        files
    }

    /// The outboards beside the blobs.
    pub fn outboard_files(&self) -> Vec<PathBuf> {
        let mut files = files_under(&self.data_dir().join("blobs"));
        files.retain(|path| {
            path.extension()
                .is_some_and(|extension| extension == "obao")
        });
        files
    }

    /// Files in the temp directory.
    pub fn temp_files(&self) -> Vec<PathBuf> {
        files_under(&self.data_dir().join("tmp"))
    }
}

pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn random_bytes(length: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut bytes = Vec::with_capacity(length + 8);
    while bytes.len() < length {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(length);
    bytes
}

/// A real qcow2 image made by qemu-img, with some data written into it.
pub fn qcow2_image(dir: &Path, name: &str, virtual_size: &str) -> Vec<u8> {
    let raw = dir.join(format!("{name}.raw"));
    std::fs::write(&raw, random_bytes(256 * 1024, 7)).unwrap();
    let path = dir.join(format!("{name}.qcow2"));
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&path)
        .status()
        .expect("qemu-img must be installed (apt-get install qemu-utils)");
    assert!(status.success());
    let resized = std::process::Command::new("qemu-img")
        .args(["resize", "-f", "qcow2", "-q"])
        .arg(&path)
        .arg(virtual_size)
        .status()
        .unwrap();
    assert!(resized.success());
    std::fs::read(&path).unwrap()
}

pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex(&md5::Md5::digest(bytes))
}

pub fn sha512_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha512::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Polls `check` until it holds; for effects that complete after the response (a cancelled
/// upload's cleanup). Bounded: fails after about five seconds.
pub async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not reached in time");
}

/// A scrape of `/metrics`: its text, and each sample's value keyed by its name and labels as the
/// server printed them (`ocellus_images{status="active"}`).
pub struct Metrics {
    pub text: String,
    samples: HashMap<String, f64>,
}

impl Metrics {
    pub fn parse(text: String) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Metrics { text, samples }
    }

    /// The sample's value, if the scrape has it.
    pub fn find(&self, name: &str) -> Option<f64> {
        self.samples.get(name).copied()
    }

    /// The sample's value; a missing sample fails the test with the whole scrape.
    pub fn get(&self, name: &str) -> f64 {
        self.find(name)
            .unwrap_or_else(|| panic!("no sample {name} in:\n{}", self.text))
    }

    /// The sum of the samples whose name and labels satisfy `wanted`.
    pub fn sum(&self, wanted: impl Fn(&str) -> bool) -> f64 {
        let chosen = self.samples.iter().filter(|(name, _)| wanted(name));
        chosen.map(|(_, value)| value).sum()
    }
}
