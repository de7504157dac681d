//! Test fixtures for the mirror: a vendor's web server on 127.0.0.1:0 (files, autoindex
//! listings, ETag/304, redirects, 500s, truncated and stalled bodies, request counts), a
//! throwaway GnuPG home that signs the way vendors do, and qcow2 images per version.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(Default)]
struct Site {
    files: BTreeMap<String, Vec<u8>>,
    redirects: HashMap<String, String>,
    failing: HashMap<String, u16>,
    /// Send this many bytes, then break the connection.
    truncated: HashMap<String, usize>,
    /// Send this many bytes, then wait forever.
    stalled: HashMap<String, usize>,
    hits: HashMap<String, usize>,
    not_modified: usize,
}

/// A vendor's download server.
#[derive(Clone)]
pub struct Vendor {
    pub base: String,
    pub port: u16,
    site: Arc<Mutex<Site>>,
}

fn etag(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    format!(
        "\"{}\"",
        digest[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>()
    )
}

async fn serve(State(site): State<Arc<Mutex<Site>>>, request: Request) -> Response {
    let path = request.uri().path().trim_start_matches('/').to_owned();
    let asked = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let mut site = site.lock().unwrap();
    *site.hits.entry(path.clone()).or_insert(0) += 1;
    if let Some(location) = site.redirects.get(&path) {
        return (StatusCode::FOUND, [(header::LOCATION, location.clone())]).into_response();
    }
    if let Some(&status) = site.failing.get(&path) {
        return StatusCode::from_u16(status).unwrap().into_response();
    }
    if path.is_empty() || path.ends_with('/') {
        let mut entries: Vec<String> = Vec::new();
        for name in site.files.keys() {
            if let Some(rest) = name.strip_prefix(&path) {
                let entry = match rest.split_once('/') {
                    Some((dir, _)) => format!("{dir}/"),
                    None => rest.to_owned(),
                };
                if !entry.is_empty() && !entries.contains(&entry) {
                    entries.push(entry);
                }
            }
        }
        if entries.is_empty() {
            return StatusCode::NOT_FOUND.into_response();
        }
        let mut html = String::from("<html><body><a href=\"../\">../</a>\n");
        for entry in entries {
            html.push_str(&format!(
                "<a href=\"{entry}\">{entry}</a> 2024-01-01 00:00 -\n"
            ));
        }
        html.push_str("</body></html>\n");
        return ([(header::CONTENT_TYPE, "text/html")], html).into_response();
    }
    let Some(bytes) = site.files.get(&path).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let tag = etag(&bytes);
    if asked.as_deref() == Some(tag.as_str()) {
        site.not_modified += 1;
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response();
    }
    let length = bytes.len();
    let cut = site.truncated.get(&path).copied();
    let stall = site.stalled.get(&path).copied();
    drop(site);
    let body = match (cut, stall) {
        (Some(cut), _) => {
            let head = bytes::Bytes::copy_from_slice(&bytes[..cut.min(length)]);
            Body::from_stream(futures_util::stream::iter(vec![
                Ok::<_, std::io::Error>(head),
                Err(std::io::Error::other("cut")),
            ]))
        }
        (None, Some(stall)) => {
            let head = bytes::Bytes::copy_from_slice(&bytes[..stall.min(length)]);
            let stream = futures_util::stream::unfold(Some(head), |head| async move {
                match head {
                    Some(head) => Some((Ok::<_, std::io::Error>(head), None)),
                    None => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        None
                    }
                }
            });
            Body::from_stream(stream)
        }
        (None, None) => Body::from(bytes),
    };
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(&tag).unwrap());
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    response
}

impl Vendor {
    pub async fn start() -> Vendor {
        let site = Arc::new(Mutex::new(Site::default()));
        let app = axum::Router::new().fallback(serve).with_state(site.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Vendor {
            base: format!("http://127.0.0.1:{port}"),
            port,
            site,
        }
    }

    pub fn put(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.site
            .lock()
            .unwrap()
            .files
            .insert(path.to_owned(), bytes.into());
    }

    pub fn get(&self, path: &str) -> Vec<u8> {
        self.site.lock().unwrap().files[path].clone()
    }

    pub fn redirect(&self, path: &str, location: &str) {
        self.site
            .lock()
            .unwrap()
            .redirects
            .insert(path.to_owned(), location.to_owned());
    }

    pub fn fail(&self, path: &str, status: u16) {
        self.site
            .lock()
            .unwrap()
            .failing
            .insert(path.to_owned(), status);
    }

    pub fn heal(&self, path: &str) {
        let mut site = self.site.lock().unwrap();
        site.failing.remove(path);
        site.truncated.remove(path);
        site.stalled.remove(path);
        site.redirects.remove(path);
    }

    pub fn truncate(&self, path: &str, after: usize) {
        self.site
            .lock()
            .unwrap()
            .truncated
            .insert(path.to_owned(), after);
    }

    pub fn stall(&self, path: &str, after: usize) {
        self.site
            .lock()
            .unwrap()
            .stalled
            .insert(path.to_owned(), after);
    }

    pub fn hits(&self, path: &str) -> usize {
        self.site
            .lock()
            .unwrap()
            .hits
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn not_modified(&self) -> usize {
        self.site.lock().unwrap().not_modified
    }
}

/// A throwaway GnuPG home with the keys the tests sign with, made once per test run.
pub struct Gpg {
    home: tempfile::TempDir,
    /// A pinned Ed25519 key.
    pub ed25519: String,
    /// A pinned RSA 3072 key.
    pub rsa: String,
    /// An Ed25519 key in the keyring but never pinned.
    pub stranger: String,
    /// An Ed25519 key that expired in 2020.
    pub expired: String,
    /// An RSA key of 1024 bits: too weak.
    pub weak: String,
}

const OLD: &str = "--faked-system-time=20200101T000000!";

impl Gpg {
    pub fn shared() -> &'static Gpg {
        static GPG: OnceLock<Gpg> = OnceLock::new();
        GPG.get_or_init(Gpg::make)
    }

    fn make() -> Gpg {
        let home = tempfile::Builder::new()
            .prefix("gpg")
            .tempdir_in("/tmp")
            .unwrap();
        let mut gpg = Gpg {
            home,
            ed25519: String::new(),
            rsa: String::new(),
            stranger: String::new(),
            expired: String::new(),
            weak: String::new(),
        };
        gpg.ed25519 = gpg.generate("Cloud Images <cloud@vendor.test>", "ed25519", "never", None);
        gpg.rsa = gpg.generate(
            "Release Team <release@vendor.test>",
            "rsa3072",
            "never",
            None,
        );
        gpg.stranger = gpg.generate("Someone Else <else@vendor.test>", "ed25519", "never", None);
        gpg.expired = gpg.generate("Old Key <old@vendor.test>", "ed25519", "1d", Some(OLD));
        gpg.weak = gpg.generate("Weak Key <weak@vendor.test>", "rsa1024", "never", None);
        gpg
    }

    fn command(&self) -> Command {
        let mut command = Command::new("gpg");
        command.arg("--homedir").arg(self.home.path()).args([
            "--batch",
            "--quiet",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]);
        command
    }

    fn run(&self, mut command: Command) -> Vec<u8> {
        let output = command
            .output()
            .expect("gpg must be installed (apt-get install gnupg)");
        assert!(
            output.status.success(),
            "gpg failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    fn generate(&self, uid: &str, algorithm: &str, expire: &str, time: Option<&str>) -> String {
        let mut command = self.command();
        command.args(time);
        command.args(["--quick-gen-key", uid, algorithm, "sign", expire]);
        self.run(command);
        let mut list = self.command();
        list.args(time);
        list.args(["--with-colons", "--list-keys", uid]);
        let listing = String::from_utf8(self.run(list)).unwrap();
        listing
            .lines()
            .find(|line| line.starts_with("fpr:"))
            .and_then(|line| line.split(':').nth(9))
            .unwrap()
            .to_owned()
    }

    /// The armored public keys.
    pub fn export(&self, fingerprints: &[&str]) -> Vec<u8> {
        let mut command = self.command();
        command.args(["--armor", "--export"]).args(fingerprints);
        self.run(command)
    }

    /// The armored secret key, unprotected.
    pub fn export_secret(&self, fingerprint: &str) -> Vec<u8> {
        let mut command = self.command();
        command.args(["--armor", "--export-secret-keys", fingerprint]);
        self.run(command)
    }

    fn sign(&self, fingerprint: &str, data: &[u8], mode: &[&str]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("data");
        std::fs::write(&input, data).unwrap();
        let mut command = self.command();
        if fingerprint == self.expired {
            command.arg("--faked-system-time=20200101T120000!");
        }
        command
            .args(["--local-user", fingerprint])
            .args(mode)
            .args(["--output", "-"])
            .arg(&input);
        self.run(command)
    }

    /// A binary detached signature claiming to be made in 2099.
    pub fn detach_from_the_future(&self, fingerprint: &str, data: &[u8]) -> Vec<u8> {
        self.sign(
            fingerprint,
            data,
            &["--faked-system-time=20990101T000000!", "--detach-sign"],
        )
    }

    /// A binary detached signature, as Ubuntu's `SHA256SUMS.gpg`.
    pub fn detach(&self, fingerprint: &str, data: &[u8]) -> Vec<u8> {
        self.sign(fingerprint, data, &["--detach-sign"])
    }

    /// An armored detached signature made with `digest`.
    pub fn detach_armored(&self, fingerprint: &str, data: &[u8], digest: &str) -> Vec<u8> {
        self.sign(
            fingerprint,
            data,
            &["--armor", "--detach-sign", "--digest-algo", digest],
        )
    }

    /// A clearsigned document, as Fedora's `CHECKSUM`.
    pub fn clearsign(&self, fingerprint: &str, data: &[u8]) -> Vec<u8> {
        self.sign(
            fingerprint,
            data,
            &["--clearsign", "--digest-algo", "SHA256"],
        )
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.home.path())
            .args(["--kill", "gpg-agent"])
            .status();
    }
}

/// A qcow2 image whose bytes differ per `seed`.
pub fn qcow2(dir: &Path, seed: u64) -> Vec<u8> {
    let raw = dir.join(format!("v{seed}.raw"));
    // `random_bytes` ignores a seed's lowest bit.
    std::fs::write(&raw, super::common::random_bytes(192 * 1024, seed * 2 + 1)).unwrap();
    let path = dir.join(format!("v{seed}.qcow2"));
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&path)
        .status()
        .expect("qemu-img must be installed (apt-get install qemu-utils)");
    assert!(status.success());
    std::fs::read(&path).unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

pub fn sha512_hex(bytes: &[u8]) -> String {
    super::common::sha512_hex(bytes)
}

/// A forwarding proxy in front of a server, which can break a transfer off after some bytes
/// (the upstream dying mid-fetch, as its client sees it), change a byte, or hold a transfer
/// after some bytes until released.
#[derive(Clone)]
pub struct Proxy {
    pub base: String,
    cuts: Arc<Mutex<HashMap<String, usize>>>,
    gate: Arc<Gate>,
}

/// Holds transfers of one path after some bytes until opened.
#[derive(Default)]
struct Gate {
    held: Mutex<Option<(String, usize)>>,
    open: tokio::sync::Notify,
    opened: std::sync::atomic::AtomicBool,
}

/// The proxy's target, its cuts, its gate and its client.
type ProxyState = (
    String,
    Arc<Mutex<HashMap<String, usize>>>,
    Arc<Gate>,
    reqwest::Client,
);

async fn forward(
    State((target, cuts, gate, client)): State<ProxyState>,
    request: Request,
) -> Response {
    let path = request.uri().path().to_owned();
    let query = request
        .uri()
        .query()
        .map(|query| format!("?{query}"))
        .unwrap_or_default();
    let method = reqwest::Method::from_bytes(request.method().as_str().as_bytes()).unwrap();
    let mut outgoing = client.request(method, format!("{target}{path}{query}"));
    for (name, value) in request.headers() {
        if name != header::HOST {
            outgoing = outgoing.header(name.as_str(), value.as_bytes());
        }
    }
    let body = axum::body::to_bytes(request.into_body(), 1 << 20)
        .await
        .unwrap();
    let answer = outgoing.body(body).send().await.unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    let mut headers = axum::http::HeaderMap::new();
    for (name, value) in answer.headers() {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_str().as_bytes()),
            HeaderValue::from_bytes(value.as_bytes()),
        ) {
            headers.insert(name, value);
        }
    }
    let cut = cuts.lock().unwrap().get(&path).copied();
    let stream = answer.bytes_stream();
    let hold = gate
        .held
        .lock()
        .unwrap()
        .clone()
        .filter(|(held, _)| *held == path)
        .map(|(_, after)| after);
    if let Some(after) = hold {
        // Bytes pass until `after` have; then the rest waits for the gate.
        let mut passed = 0usize;
        let gate = gate.clone();
        let body = Body::from_stream(stream.then(move |item| {
            let gate = gate.clone();
            let before = passed;
            if let Ok(chunk) = &item {
                passed += chunk.len();
            }
            async move {
                while before >= after && !gate.opened.load(std::sync::atomic::Ordering::SeqCst) {
                    let opened = gate.open.notified();
                    tokio::pin!(opened);
                    opened.as_mut().enable();
                    if gate.opened.load(std::sync::atomic::Ordering::SeqCst) {
                        break;
                    }
                    opened.await;
                }
                item.map_err(std::io::Error::other)
            }
        }));
        let mut response = Response::new(body);
        *response.status_mut() = status;
        *response.headers_mut() = headers;
        return response;
    }
    let body = match cut {
        None => Body::from_stream(stream),
        // usize::MAX: every byte arrives, the first one changed.
        Some(usize::MAX) => {
            let mut first = true;
            Body::from_stream(stream.map(move |item| {
                let chunk = item.map_err(std::io::Error::other)?;
                if std::mem::take(&mut first) && !chunk.is_empty() {
                    let mut changed = chunk.to_vec();
                    changed[0] ^= 0x40;
                    return Ok::<_, std::io::Error>(bytes::Bytes::from(changed));
                }
                Ok(chunk)
            }))
        }
        Some(after) => {
            let mut left = after;
            Body::from_stream(
                stream
                    .map(move |item| {
                        let chunk = item.map_err(std::io::Error::other)?;
                        if left == 0 {
                            return Err(std::io::Error::other("cut"));
                        }
                        let take = left.min(chunk.len());
                        left -= take;
                        if take < chunk.len() {
                            // The rest never comes: the connection breaks after these bytes.
                            return Ok(chunk.slice(..take));
                        }
                        Ok(chunk)
                    })
                    .chain(futures_util::stream::once(async {
                        Err(std::io::Error::other("cut"))
                    })),
            )
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

use futures_util::StreamExt as _;

impl Proxy {
    pub async fn start(target: &str) -> Proxy {
        let cuts = Arc::new(Mutex::new(HashMap::new()));
        let gate = Arc::new(Gate::default());
        let client = reqwest::Client::new();
        let app = axum::Router::new().fallback(forward).with_state((
            target.to_owned(),
            cuts.clone(),
            gate.clone(),
            client,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Proxy { base, cuts, gate }
    }

    /// Holds transfers of `path` after `after` bytes until `open`.
    pub fn hold(&self, path: &str, after: usize) {
        *self.gate.held.lock().unwrap() = Some((path.to_owned(), after));
    }

    pub fn open(&self) {
        self.gate
            .opened
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.gate.open.notify_waiters();
    }

    pub fn cut(&self, path: &str, after: usize) {
        self.cuts.lock().unwrap().insert(path.to_owned(), after);
    }

    pub fn heal(&self, path: &str) {
        self.cuts.lock().unwrap().remove(path);
    }

    /// Changes the first byte of every answer at `path`, length kept.
    pub fn flip(&self, path: &str) {
        self.cuts
            .lock()
            .unwrap()
            .insert(path.to_owned(), usize::MAX);
    }
}
