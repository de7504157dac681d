//! `ocellus key create|list|revoke`: API key management from the command line.
//!
//! redb lets one process at a time open a database file. So the commands first try to open the
//! data directory's database themselves (the server is stopped, or has never run: keys can be
//! provisioned before the first start). If the server holds it, they become a client of the
//! server's admin endpoint (`/ocellus/v1/keys`), authenticated by an admin key: `--admin-key`,
//! `OCELLUS_ADMIN_KEY`, or the bootstrap key file in the data directory. `--url` skips the
//! local attempt and always talks to that server; the bootstrap key then goes with it only
//! when the data directory was named (`--data-dir` or `OCELLUS_DATA_DIR`), since a URL alone
//! says nothing about which server owns the default one.

use std::path::PathBuf;
use std::sync::Arc;

use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::{Config, ServeArgs};
use crate::identity::{self, CreateKeyError, KeyRequest, key_view};
use crate::kv::{KvError, Role};
use crate::store::{Store, StoreError};

/// Where the keys are: a data directory, or a running server.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct KeyTarget {
    /// Server settings file, read for data_dir, listen and tls_cert
    #[arg(long, env = "OCELLUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Data directory of the server [default: ./ocellus-data]
    #[arg(long, env = "OCELLUS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address of the running server, if it holds the database [default: 127.0.0.1:9292]
    #[arg(long, env = "OCELLUS_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// The server's certificate: the running server is reached over https, trusting this
    /// file unless --cacert says otherwise
    #[arg(
        long,
        env = "OCELLUS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The server's private key (only checked for presence, as by `serve`)
    #[arg(
        long,
        env = "OCELLUS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// The server's public URL, used to reach it if it runs [default: from --listen]
    #[arg(long, env = "OCELLUS_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Always use the admin endpoint of the server at this URL (http:// or https://)
    #[arg(long, env = "OCELLUS_URL", value_name = "URL")]
    pub url: Option<String>,
    /// Admin key for the server's admin endpoint [default: the data directory's
    /// bootstrap-admin.key; with --url, only if --data-dir is given]
    #[arg(
        long,
        env = "OCELLUS_ADMIN_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub admin_key: Option<String>,
    /// CA certificate (PEM) to trust for an https server [default: the server's tls_cert]
    #[arg(long, env = "OCELLUS_CACERT", value_name = "FILE")]
    pub cacert: Option<PathBuf>,
}

/// The key subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KeyCommand {
    /// Create a key and print it (id and secret) once
    Create {
        /// Project the key acts in, by name (created on first use)
        #[arg(long)]
        project: String,
        /// Role within the project
        #[arg(long, value_parser = ["admin", "member", "reader"])]
        role: String,
        /// Unique name, also the user name for the Keystone password method
        /// [default: key-<first 8 digits of the id>]
        #[arg(long)]
        name: Option<String>,
        /// Lifetime (90s, 15m, 12h, 30d, 8w) or an RFC 3339 time [default: never expires]
        #[arg(long)]
        expires: Option<String>,
        /// Print JSON instead of text
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// List keys (never their secrets)
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: KeyTarget,
    },
    /// Create the bootstrap admin key if the data directory has no keys yet, as `serve` does
    /// at its first start with auth = "keys", and print the path of the file holding it
    /// (readable by its owner only). Needs the server stopped; the package runs it at install.
    Bootstrap {
        /// Server settings file, read for data_dir
        #[arg(long, env = "OCELLUS_CONFIG", value_name = "FILE")]
        config: Option<PathBuf>,
        /// Data directory [default: ./ocellus-data]
        #[arg(long, env = "OCELLUS_DATA_DIR", value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Revoke a key: it and every token minted from it stop working at once
    Revoke {
        /// Key id (32 hex digits)
        id: String,
        #[command(flatten)]
        target: KeyTarget,
    },
}

pub(crate) enum Backend {
    Local(Box<Store>),
    Remote { url: String, target: Box<KeyTarget> },
}

/// Runs a key subcommand; the error is the message to print.
pub fn run(command: KeyCommand) -> Result<(), String> {
    let target = match &command {
        KeyCommand::Create { target, .. }
        | KeyCommand::List { target, .. }
        | KeyCommand::Revoke { target, .. } => target.clone(),
        KeyCommand::Bootstrap { config, data_dir } => return bootstrap(config, data_dir),
    };
    match backend(target)? {
        Backend::Local(store) => run_local(&store, command),
        Backend::Remote { url, target } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| error.to_string())?;
            runtime.block_on(run_remote(&url, &target, command))
        }
    }
}

/// `key bootstrap`: the first admin key of a data directory that has none.
fn bootstrap(config: &Option<PathBuf>, data_dir: &Option<PathBuf>) -> Result<(), String> {
    let config = Config::resolve(&ServeArgs {
        config: config.clone(),
        data_dir: data_dir.clone(),
        ..ServeArgs::default()
    })?;
    let store = Store::open_metadata(&config.data_dir).map_err(|error| {
        format!(
            "cannot open {} (a running server makes its own bootstrap key at start): {error}",
            config.data_dir.display()
        )
    })?;
    let path = config.data_dir.join(crate::BOOTSTRAP_KEY_FILE);
    if crate::ensure_bootstrap_key(&store, &config.data_dir).map_err(|error| error.to_string())? {
        println!(
            "created admin key 'bootstrap-admin' (project 'admin'); its secret is in {}",
            path.display()
        );
    } else if path.exists() {
        println!(
            "keys exist already; the bootstrap admin key is in {}",
            path.display()
        );
    } else {
        println!("keys exist already and no bootstrap key file is kept; none was made");
    }
    Ok(())
}

pub(crate) fn backend(mut target: KeyTarget) -> Result<Backend, String> {
    let args = ServeArgs {
        config: target.config.clone(),
        data_dir: target.data_dir.clone(),
        listen: target.listen,
        tls_cert: target.tls_cert.clone(),
        tls_key: target.tls_key.clone(),
        public_url: target.public_url.clone(),
        ..ServeArgs::default()
    };
    let config = Config::resolve(&args)?;
    if target.cacert.is_none() {
        target.cacert = config.tls.as_ref().map(|tls| tls.cert.clone());
    }
    // The bootstrap key is only ever sent to the server that owns this data directory: the one
    // found through it, or the one at --url when the user named the directory along with it.
    if target.admin_key.is_none() && (target.url.is_none() || target.data_dir.is_some()) {
        let path = config.data_dir.join(crate::BOOTSTRAP_KEY_FILE);
        if let Ok(text) = std::fs::read_to_string(&path) {
            target.admin_key = Some(text.trim().to_owned());
        }
    }
    if let Some(url) = target.url.clone() {
        return Ok(Backend::Remote {
            url,
            target: Box::new(target),
        });
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|error| format!("cannot create {}: {error}", config.data_dir.display()))?;
    let database = config.data_dir.join(crate::DATABASE_FILE);
    match Store::open_offline(&config.data_dir, config.store) {
        Ok(store) => Ok(Backend::Local(Box::new(store))),
        Err(StoreError::Kv(KvError::Locked)) => {
            let scheme = if config.tls.is_some() {
                "https"
            } else {
                "http"
            };
            // A server listening on all addresses is reached on loopback.
            let mut address = config.listen;
            if address.ip().is_unspecified() {
                address.set_ip(match address {
                    std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let url = config
                .public_url
                .clone()
                .unwrap_or_else(|| format!("{scheme}://{address}"));
            eprintln!(
                "ocellus: the server holds {}; using its admin endpoint at {url}",
                database.display()
            );
            Ok(Backend::Remote {
                url,
                target: Box::new(target),
            })
        }
        Err(error) => Err(format!("cannot open {}: {error}", database.display())),
    }
}

fn run_local(store: &Store, command: KeyCommand) -> Result<(), String> {
    let now = identity::now_secs();
    match command {
        KeyCommand::Create {
            project,
            role,
            name,
            expires,
            json,
            ..
        } => {
            let expires_at = expires
                .map(|text| identity::parse_expiry(&text, now))
                .transpose()?;
            let request = KeyRequest {
                project,
                role: Role::parse(&role).ok_or("role must be admin, member or reader")?,
                name,
                expires_at,
            };
            let created =
                identity::create_key(store, &request, now).map_err(|error| match error {
                    CreateKeyError::NameTaken(name) => format!("a key named {name} already exists"),
                    other => other.to_string(),
                })?;
            print_created(&created.view(now), json);
        }
        KeyCommand::List { json, .. } => {
            let keys = store.keys().map_err(|error| error.to_string())?;
            let views: Vec<Value> = keys.iter().map(|key| key_view(key, now)).collect();
            print_list(&views, json);
        }
        KeyCommand::Revoke { id, .. } => match store.revoke_key(&id) {
            Ok(Some(_)) => println!("Revoked key {id}."),
            Ok(None) => return Err(format!("no key with id {id}")),
            Err(error) => return Err(error.to_string()),
        },
        KeyCommand::Bootstrap { config, data_dir } => return bootstrap(&config, &data_dir),
    }
    Ok(())
}

async fn run_remote(url: &str, target: &KeyTarget, command: KeyCommand) -> Result<(), String> {
    match command {
        KeyCommand::Create {
            project,
            role,
            name,
            expires,
            json,
            ..
        } => {
            let mut body = json!({"project": project, "role": role});
            if let Some(name) = name {
                body["name"] = Value::String(name);
            }
            if let Some(expires) = expires {
                body["expires"] = Value::String(expires);
            }
            let view = call(url, target, "POST", "/ocellus/v1/keys", Some(body)).await?;
            print_created(&view, json);
        }
        KeyCommand::List { json, .. } => {
            let listing = call(url, target, "GET", "/ocellus/v1/keys", None).await?;
            let views = listing["keys"].as_array().cloned().unwrap_or_default();
            print_list(&views, json);
        }
        KeyCommand::Revoke { id, .. } => {
            call(
                url,
                target,
                "DELETE",
                &format!("/ocellus/v1/keys/{id}"),
                None,
            )
            .await?;
            println!("Revoked key {id}.");
        }
        KeyCommand::Bootstrap { .. } => {
            return Err("key bootstrap works on a stopped server's data directory only".into());
        }
    }
    Ok(())
}

fn expiry_text(view: &Value) -> String {
    match view["expires_at"].as_i64() {
        None => "never".into(),
        Some(seconds) => time::OffsetDateTime::from_unix_timestamp(seconds)
            .ok()
            .and_then(|time| {
                time.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_else(|| seconds.to_string()),
    }
}

fn print_created(view: &Value, json: bool) {
    if json {
        println!("{view}");
        return;
    }
    let text = |field: &str| view[field].as_str().unwrap_or_default().to_owned();
    println!(
        "Created key '{}' (role {} in project {}).",
        text("name"),
        text("role"),
        text("project")
    );
    println!("id:         {}", text("id"));
    println!("secret:     {}", text("secret"));
    println!("key:        {}", text("key"));
    println!("project_id: {}", text("project_id"));
    println!("expires:    {}", expiry_text(view));
    println!("The secret is shown only now; ocellus keeps only its hash.");
}

fn print_list(views: &[Value], json: bool) {
    if json {
        println!("{}", json!({ "keys": views }));
        return;
    }
    println!(
        "{:<32}  {:<20}  {:<16}  {:<6}  EXPIRES",
        "ID", "NAME", "PROJECT", "ROLE"
    );
    for view in views {
        let text = |field: &str| view[field].as_str().unwrap_or_default().to_owned();
        let mut expires = expiry_text(view);
        if view["expired"].as_bool() == Some(true) {
            expires.push_str(" (expired)");
        }
        println!(
            "{:<32}  {:<20}  {:<16}  {:<6}  {expires}",
            text("id"),
            text("name"),
            text("project"),
            text("role")
        );
    }
}

/// One request to the admin endpoint; the JSON answer, or the server's error message.
pub(crate) async fn call(
    url: &str,
    target: &KeyTarget,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value, String> {
    let (tls, authority) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        return Err(format!(
            "{url}: the URL must start with http:// or https://"
        ));
    };
    let authority = authority.trim_end_matches('/');
    if authority.is_empty() || authority.contains('/') {
        return Err(format!("{url}: give only scheme, host and port"));
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let address = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if tls { 443 } else { 80 })
    };
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority)
        .header("accept", "application/json");
    if let Some(key) = &target.admin_key {
        request = request.header("x-auth-token", key);
    }
    let payload = match body {
        Some(body) => {
            request = request.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    let request = request
        .body(Full::new(payload))
        .map_err(|error| error.to_string())?;
    let stream = tokio::net::TcpStream::connect(&address)
        .await
        .map_err(|error| format!("cannot connect to {address}: {error}"))?;
    let (status, bytes) = if tls {
        let cacert = target
            .cacert
            .as_ref()
            .ok_or("an https server needs --cacert (or tls_cert in the config) to be trusted")?;
        let mut roots = rustls::RootCertStore::empty();
        for certificate in CertificateDer::pem_file_iter(cacert)
            .map_err(|error| format!("{}: {error}", cacert.display()))?
        {
            let certificate =
                certificate.map_err(|error| format!("{}: {error}", cacert.display()))?;
            roots
                .add(certificate)
                .map_err(|error| format!("{}: {error}", cacert.display()))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
            .map_err(|error| format!("{host}: {error}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await
            .map_err(|error| format!("TLS with {address}: {error}"))?;
        exchange(stream, request).await?
    } else {
        exchange(stream, request).await?
    };
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    if status.is_success() {
        Ok(value)
    } else {
        let message = value["message"]
            .as_str()
            .map(|message| {
                message
                    .split("<br")
                    .next()
                    .unwrap_or(message)
                    .trim()
                    .to_owned()
            })
            .unwrap_or_default();
        Err(format!("{url} answered {status}: {message}"))
    }
}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    stream: S,
    request: Request<Full<Bytes>>,
) -> Result<(hyper::StatusCode, Bytes), String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error.to_string())?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| error.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|error| error.to_string())?
        .to_bytes();
    Ok((status, bytes))
}
