//! Helpers shared by the identity and TLS tests: servers with API keys or HTTPS, keys made
//! through the admin endpoint, response capture, and a throwaway certificate authority.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ocellus::config::{AuthMode, Config, TlsFiles};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::common::Server;

/// The admin endpoint for API keys.
pub const KEYS: &str = "/ocellus/v1/keys";

/// Starts a server with `auth = "keys"` and the given failure limit (0 turns the limiter off)
/// and returns it with the bootstrap admin key it wrote at startup.
pub async fn start_keys_server(limit: u32) -> (Server, String) {
    let server = Server::start_with(|config| {
        config.auth = AuthMode::Keys;
        config.auth_failure_limit = limit;
    })
    .await;
    let admin = read_bootstrap_key(&server.data_dir());
    (server, admin)
}

/// The key in a data directory's bootstrap key file, without its trailing newline.
pub fn read_bootstrap_key(data_dir: &Path) -> String {
    let path = data_dir.join(ocellus::BOOTSTRAP_KEY_FILE);
    let contents = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    contents.trim_end().to_owned()
}

/// Splits `ock-<id>-<secret>` into id and secret.
pub fn split_key(key: &str) -> (String, String) {
    let (id, secret) = key
        .strip_prefix("ock-")
        .and_then(|rest| rest.split_once('-'))
        .unwrap_or_else(|| panic!("{key:?} is not an ock-<id>-<secret> key"));
    (id.to_owned(), secret.to_owned())
}

/// Creates a key through the admin endpoint and returns the 201 body (with `secret` and `key`).
pub async fn create_key(
    server: &Server,
    admin_key: &str,
    project: &str,
    role: &str,
    name: &str,
    expires: Option<&str>,
) -> Value {
    let mut body = json!({"project": project, "role": role, "name": name});
    if let Some(expires) = expires {
        body["expires"] = Value::from(expires);
    }
    let (status, created) = server
        .json(
            server
                .request(Method::POST, KEYS)
                .header("X-Auth-Token", admin_key)
                .json(&body),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "creating key {name}: {created}"
    );
    created
}

/// What the identity tests look at in a response.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The body as JSON; `Null` when empty or not JSON.
    pub body: Value,
}

/// Sends a request and captures status, headers and JSON body.
pub async fn send(request: reqwest::RequestBuilder) -> Reply {
    let response = request
        .send()
        .await
        .expect("the request reaches the server");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.expect("the response body arrives");
    Reply {
        status,
        headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    }
}

/// A header that must be present, as text.
pub fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header among {headers:?}"))
        .to_str()
        .unwrap_or_else(|_| panic!("the {name} header is not text"))
}

/// The string at a JSON pointer (`/token/user/id`), which must be there.
pub fn text(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {pointer} in {value}"))
        .to_owned()
}

/// A token request by the `application_credential` method (key id and secret).
pub fn app_credential_auth(id: &str, secret: &str) -> Value {
    json!({"auth": {"identity": {
        "methods": ["application_credential"],
        "application_credential": {"id": id, "secret": secret},
    }}})
}

/// Checks a token body's catalog: Keystone at `identity_url` and Glance at `image_url`, each
/// with public, internal and admin endpoints in RegionOne.
pub fn assert_catalog(body: &Value, identity_url: &str, image_url: &str) {
    let catalog = body["token"]["catalog"]
        .as_array()
        .unwrap_or_else(|| panic!("no catalog in {body}"));
    assert_eq!(catalog.len(), 2, "catalog: {catalog:?}");
    for (kind, name, url) in [
        ("identity", "keystone", identity_url),
        ("image", "glance", image_url),
    ] {
        let service = catalog
            .iter()
            .find(|service| service["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} service in the catalog {catalog:?}"));
        assert_eq!(service["name"], name, "name of the {kind} service");
        let endpoints = service["endpoints"]
            .as_array()
            .unwrap_or_else(|| panic!("no endpoints for {kind}: {service}"));
        let interfaces: Vec<&str> = endpoints
            .iter()
            .filter_map(|endpoint| endpoint["interface"].as_str())
            .collect();
        assert_eq!(
            interfaces,
            ["public", "internal", "admin"],
            "{kind} interfaces"
        );
        for endpoint in endpoints {
            assert_eq!(endpoint["url"], url, "{kind} endpoint {endpoint}");
            assert_eq!(
                endpoint["region_id"], "RegionOne",
                "{kind} endpoint {endpoint}"
            );
            assert_eq!(
                endpoint["region"], "RegionOne",
                "{kind} endpoint {endpoint}"
            );
        }
    }
}

/// A test CA's certificate and the server certificate and key files it signed.
pub struct TestPki {
    /// PEM of the CA certificate, for the client's trust store.
    pub ca_pem: String,
    /// The server's certificate (SANs `localhost` and `127.0.0.1`) and key, as PEM files.
    pub files: TlsFiles,
}

/// Makes a throwaway CA and a server certificate signed by it, and writes the server's
/// certificate and key as PEM files into `dir`.
pub fn write_test_certificates(dir: &Path) -> TestPki {
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).expect("CA certificate parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ocellus test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_certificate = ca_params
        .self_signed(&ca_key)
        .expect("self-sign the CA certificate");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("generate the server key");
    let mut server_params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("server certificate parameters");
    server_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_certificate = server_params
        .signed_by(&server_key, &issuer)
        .expect("sign the server certificate");

    let cert = dir.join("server-cert.pem");
    let key = dir.join("server-key.pem");
    std::fs::write(&cert, server_certificate.pem()).expect("write the server certificate");
    std::fs::write(&key, server_key.serialize_pem()).expect("write the server key");
    TestPki {
        ca_pem: ca_certificate.pem(),
        files: TlsFiles { cert, key },
    }
}

/// A server speaking HTTPS with a test certificate, and a client that trusts its CA.
pub struct TlsServer {
    /// `https://127.0.0.1:<port>`.
    pub base: String,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    dir: tempfile::TempDir,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TlsServer {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops the server and waits until it has drained.
    pub async fn stop(self) {
        drop(self.client);
        let _ = self.shutdown.send(());
        self.task
            .await
            .expect("the server task completes")
            .expect("the server stops cleanly");
    }
}

/// Starts a server as `Server::start_in` does, but with TLS on, certificates from
/// `write_test_certificates`, and `adjust` applied to the configuration last.
pub async fn start_tls_server(adjust: impl FnOnce(&mut Config)) -> TlsServer {
    let dir = tempfile::tempdir().expect("a temp dir");
    let pki = write_test_certificates(dir.path());
    let mut config = Config {
        listen: "127.0.0.1:0".parse().expect("a socket address"),
        data_dir: dir.path().join("data"),
        tls: Some(pki.files),
        ..Config::default()
    };
    adjust(&mut config);
    let state = tokio::task::spawn_blocking(move || ocellus::open(config))
        .await
        .expect("the open task completes")
        .expect("a server with TLS opens");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("the bound address");
    let base = format!("https://{addr}");
    let (shutdown, signal) = oneshot::channel::<()>();
    let task = tokio::spawn(ocellus::serve(listener, state, async move {
        let _ = signal.await;
    }));
    let ca = reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).expect("the test CA parses");
    let client = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTPS client");
    TlsServer {
        base,
        addr,
        client,
        dir,
        shutdown,
        task,
    }
}
