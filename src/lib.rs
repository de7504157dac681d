//! ocellus: an OpenStack Glance-compatible image service in one binary.
//!
//! The crate is layered: `kv` (metadata in redb) and `blob` (bytes over a backend, the local
//! content-addressed directory for now) know nothing of each other or of HTTP and are private
//! to `store`, which runs every protocol that spans them; `policy` holds the access rules;
//! `http` is the Glance API on top, speaking only to `store`, `policy` and `identity`. `main.rs` only parses flags and
//! calls `open` and `http::serve`. See ARCHITECTURE.md.

mod blob;
/// The S3 backend's settings, for tests and (soon) the multi-store configuration.
pub use blob::s3::S3Settings;
pub mod config;
pub mod fetch;
pub mod http;
pub mod identity;
pub mod importer;
pub mod keycmd;
mod kv;
pub mod metadefcmd;
pub mod metrics;
pub mod mirror;
pub mod mirrorcmd;
pub mod nbd;
pub mod opcmd;
pub mod policy;
pub mod scrub;
pub mod store;

use std::sync::Arc;

pub use http::{AppState, serve};

/// Why the service could not start.
#[derive(Debug)]
pub enum OpenError {
    Store(store::StoreError),
    Tls(String),
    Bootstrap(String),
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpenError::Store(error) => error.fmt(formatter),
            OpenError::Tls(error) => write!(formatter, "TLS: {error}"),
            OpenError::Bootstrap(error) => write!(formatter, "bootstrap key: {error}"),
        }
    }
}

impl std::error::Error for OpenError {}

/// Name of the metadata database file in the data directory.
pub const DATABASE_FILE: &str = "ocellus.redb";

/// Name of the file, in the data directory, that receives the bootstrap admin key.
pub const BOOTSTRAP_KEY_FILE: &str = "bootstrap-admin.key";

/// Opens (and repairs, after a crash) the stores named by `config`, reads the TLS files and,
/// with `auth = "keys"` and no keys yet, writes a bootstrap admin key. Blocks: call it before
/// the runtime serves requests, or from `spawn_blocking`.
pub fn open(config: config::Config) -> Result<AppState, OpenError> {
    let tls = match &config.tls {
        Some(files) => Some(http::listener::tls_config(files).map_err(OpenError::Tls)?),
        None => None,
    };
    let store = Arc::new(
        store::Store::open_on(&config.data_dir, config.store.clone(), &config.stores)
            .map_err(OpenError::Store)?,
    );
    let kv_error = |error: kv::KvError| OpenError::Store(store::StoreError::Kv(error));
    http::metadefs::seed_catalog(&store).map_err(OpenError::Store)?;
    if config.auth == config::AuthMode::Keys {
        ensure_bootstrap_key(&store, &config.data_dir)?;
    }
    let identity =
        identity::Identity::new(store.clone(), config.auth_failure_limit).map_err(kv_error)?;
    let importer = Arc::new(importer::Importer::new(
        store.clone(),
        fetch::Fetcher::new(config.web_download.clone()).map_err(OpenError::Tls)?,
        config.max_imports,
        config.image_size_cap,
    ));
    let mirror = config.mirror_catalog.as_ref().map(|path| {
        if let Err(error) = mirror::catalog::load(path) {
            tracing::error!(%error, "the mirror catalog does not check; the mirror waits until it does");
        }
        Arc::new(mirror::service::MirrorService::new(
            mirror::sync::Mirror::new(
                store.clone(),
                config.web_download.clone(),
                config.image_size_cap,
                config.default_project.clone(),
            ),
            path.clone(),
        ))
    });
    // The catalog's mode is read once, at start: an edge refuses writes from its first request.
    let edge = mirror.as_ref().and_then(|service| {
        let settings = service.catalog().ok()?.edge?;
        tracing::info!(source = %settings.source, "serving as an edge cache");
        Some(Arc::new(mirror::edge::Edge::new(settings, service.clone())))
    });
    Ok(AppState {
        store,
        mirror,
        edge,
        config: Arc::new(config),
        identity: Arc::new(identity),
        tls,
        metrics: Arc::new(metrics::Metrics::new()),
        importer,
        nbd_address: Arc::default(),
    })
}

/// With no keys in `store`, creates the first admin key and writes it to
/// `BOOTSTRAP_KEY_FILE` in `data_dir`, readable by its owner only; true if it did. Blocks.
pub fn ensure_bootstrap_key(
    store: &store::Store,
    data_dir: &std::path::Path,
) -> Result<bool, OpenError> {
    let count = store
        .key_count()
        .map_err(|error| OpenError::Store(store::StoreError::Kv(error)))?;
    if count > 0 {
        return Ok(false);
    }
    bootstrap_key(store, data_dir)?;
    Ok(true)
}

/// Creates the first admin key and writes it to a file only the service user can read.
fn bootstrap_key(store: &store::Store, data_dir: &std::path::Path) -> Result<(), OpenError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    let path = data_dir.join(BOOTSTRAP_KEY_FILE);
    let now = identity::now_secs();
    let request = identity::KeyRequest {
        project: "admin".into(),
        role: kv::Role::Admin,
        name: Some("bootstrap-admin".into()),
        expires_at: None,
    };
    // Write the file before the key exists, so a failure leaves no key nobody knows.
    let _ = std::fs::remove_file(&path);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|error| OpenError::Bootstrap(format!("{}: {error}", path.display())))?;
    let created = identity::create_key(store, &request, now)
        .map_err(|error| OpenError::Bootstrap(error.to_string()))?;
    file.write_all(format!("{}\n", created.key()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|error| OpenError::Bootstrap(format!("{}: {error}", path.display())))?;
    tracing::warn!(
        path = %path.display(),
        key = %created.record.id,
        "no API keys existed: created admin key 'bootstrap-admin' (project 'admin'); \
         its secret is in this file, readable by the service user only"
    );
    Ok(())
}
