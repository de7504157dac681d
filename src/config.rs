//! Server settings: defaults, an optional TOML file, `OCELLUS_*` environment variables and
//! command-line flags, in rising order of precedence.
//!
//! Flags and environment variables are declared once, in `ServeArgs`, through clap; the file is
//! read into `FileConfig`; `Config::resolve` merges them. Nothing here opens stores or sockets.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::store::StoreLimits;

/// Glance's default `image_size_cap`: 1 TiB.
pub const DEFAULT_IMAGE_SIZE_CAP: u64 = 1 << 40;

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Lab mode: no credentials; every request acts as an admin of the default project unless
    /// the X-Project-Id, X-User-Id and X-Roles headers say otherwise.
    None,
    /// Every request needs an API key, or a token minted from one, in X-Auth-Token or
    /// `Authorization: Bearer`.
    Keys,
}

/// Flags of `ocellus serve`; each can also come from the environment variable named.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on [default: 127.0.0.1:9292]
    #[arg(long, env = "OCELLUS_LISTEN", value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Directory for the metadata database and the blob store, created if missing
    /// [default: ./ocellus-data]
    #[arg(long, env = "OCELLUS_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML file with any of: listen, data_dir, auth, default_project, image_size_cap, log,
    /// tls_cert, tls_key, public_url, auth_failure_limit, max_connections, max_uploads,
    /// max_downloads, min_free_space, quarantine_days, shutdown_timeout, log_format,
    /// metrics_token, scrub_interval, scrub_rate, import_methods, web_download_allow,
    /// web_download_ports, max_imports, task_time_to_live, image_size_total,
    /// image_stage_total, image_count_total, image_count_uploading, image_tag_quota,
    /// image_property_quota, image_member_quota, enable_v1_api, mirror_catalog,
    /// mirror_refresher, nbd_listen, nbd_max_connections, nbd_idle_timeout, db_cache_size,
    /// indexed_properties, default_store, one [stores.ID] table per store (type = "file" |
    /// "s3"; see the README, "Storing images in S3"), and a `[ui]` table (enabled,
    /// allowed_hosts; see the README, "Web UI")
    #[arg(long, env = "OCELLUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Authentication mode [default: none]
    #[arg(long, env = "OCELLUS_AUTH", value_enum)]
    pub auth: Option<AuthMode>,
    /// Project that owns what unauthenticated (lab mode) callers create [default: lab]
    #[arg(long, env = "OCELLUS_DEFAULT_PROJECT", value_name = "PROJECT_ID")]
    pub default_project: Option<String>,
    /// Largest accepted image upload in bytes [default: 1099511627776 (1 TiB)]
    #[arg(long, env = "OCELLUS_IMAGE_SIZE_CAP", value_name = "BYTES")]
    pub image_size_cap: Option<u64>,
    /// Log filter in tracing's EnvFilter syntax [default: info]
    #[arg(long, env = "OCELLUS_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// PEM certificate chain; with --tls-key, serve HTTPS (TLS 1.2 and 1.3)
    #[arg(
        long,
        env = "OCELLUS_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(
        long,
        env = "OCELLUS_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Base URL clients should use (in the identity catalog and version links)
    /// [default: the scheme and Host header of each request]
    #[arg(long, env = "OCELLUS_PUBLIC_URL", value_name = "URL")]
    pub public_url: Option<String>,
    /// Failed authentications per client address per minute before it gets 429; 0 disables
    /// [default: 10]
    #[arg(long, env = "OCELLUS_AUTH_FAILURE_LIMIT", value_name = "COUNT")]
    pub auth_failure_limit: Option<u32>,
    /// Most connections served at once; more wait in the kernel's backlog [default: 1024]
    #[arg(long, env = "OCELLUS_MAX_CONNECTIONS", value_name = "COUNT")]
    pub max_connections: Option<usize>,
    /// Most image uploads at once; one more waits 2 s for a slot, then gets 503 with
    /// Retry-After [default: 64]
    #[arg(long, env = "OCELLUS_MAX_UPLOADS", value_name = "COUNT")]
    pub max_uploads: Option<usize>,
    /// Most image downloads at once; one more waits 2 s for a slot, then gets 503 with
    /// Retry-After [default: 512]
    #[arg(long, env = "OCELLUS_MAX_DOWNLOADS", value_name = "COUNT")]
    pub max_downloads: Option<usize>,
    /// Free space in bytes that uploads leave on the data directory's filesystem, for metadata;
    /// an upload that would cut into it gets 413 [default: the smaller of 1 GiB and 5 % of
    /// the filesystem]
    #[arg(long, env = "OCELLUS_MIN_FREE_SPACE", value_name = "BYTES")]
    pub min_free_space: Option<u64>,
    /// Days that blobs no image references (found at start) stay in <data_dir>/quarantine
    /// before the server removes them [default: 7]
    #[arg(long, env = "OCELLUS_QUARANTINE_DAYS", value_name = "DAYS")]
    pub quarantine_days: Option<u64>,
    /// Seconds that requests in flight get to finish after SIGTERM or SIGINT; then they are
    /// cut (a cut upload leaves its image queued) [default: 30]
    #[arg(long, env = "OCELLUS_SHUTDOWN_TIMEOUT", value_name = "SECONDS")]
    pub shutdown_timeout: Option<u64>,
    /// Log lines as text for people or as one JSON object per line [default: human]
    #[arg(long, env = "OCELLUS_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Bearer token that lets a scraper read /metrics (and the detailed /healthcheck) from
    /// other hosts; loopback clients and admin keys need none [default: none]
    #[arg(
        long,
        env = "OCELLUS_METRICS_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
    /// Time between background scrub passes, which re-verify every blob: 90s, 15m, 12h, 7d,
    /// 2w, or off [default: 7d]
    #[arg(long, env = "OCELLUS_SCRUB_INTERVAL", value_name = "DURATION")]
    pub scrub_interval: Option<String>,
    /// Highest scrub read rate, in MB/s (10^6 bytes); the scrub also pauses while transfers
    /// run [default: 50]
    #[arg(long, env = "OCELLUS_SCRUB_RATE", value_name = "MB_PER_S")]
    pub scrub_rate: Option<u64>,
    /// Interoperable import methods offered, comma-separated: glance-direct, web-download,
    /// copy-image
    /// [default: all three]
    #[arg(
        long,
        env = "OCELLUS_IMPORT_METHODS",
        value_name = "METHODS",
        value_delimiter = ','
    )]
    pub import_methods: Option<Vec<String>>,
    /// CIDRs or host names web-download may reach on any port, although the default rules
    /// deny them (loopback, private, link-local, ...), comma-separated [default: none]
    #[arg(
        long,
        env = "OCELLUS_WEB_DOWNLOAD_ALLOW",
        value_name = "CIDR_OR_HOST",
        value_delimiter = ','
    )]
    pub web_download_allow: Option<Vec<String>>,
    /// Ports web-download may use for other hosts, comma-separated [default: 80,443]
    #[arg(
        long,
        env = "OCELLUS_WEB_DOWNLOAD_PORTS",
        value_name = "PORTS",
        value_delimiter = ','
    )]
    pub web_download_ports: Option<Vec<u16>>,
    /// Imports running at once; more wait as pending tasks [default: 4]
    #[arg(long, env = "OCELLUS_MAX_IMPORTS", value_name = "COUNT")]
    pub max_imports: Option<usize>,
    /// Mirror catalog (TOML) the server keeps in step, refreshing each source on its own
    /// timer; see the README, "Mirror" [default: none, no mirror]
    #[arg(long, env = "OCELLUS_MIRROR_CATALOG", value_name = "FILE")]
    pub mirror_catalog: Option<PathBuf>,
    /// Whether the server syncs the mirror's sources on their own timers; off, only
    /// `ocellus mirror sync` does [default: true]
    #[arg(long, env = "OCELLUS_MIRROR_REFRESHER", value_name = "BOOL")]
    pub mirror_refresher: Option<bool>,
    /// Hours a finished task is kept before it expires [default: 48]
    #[arg(long, env = "OCELLUS_TASK_TIME_TO_LIVE", value_name = "HOURS")]
    pub task_time_to_live: Option<u64>,
    /// Default per-project limit on the bytes of all its images, staged data included
    /// (e.g. 50GiB; -1: unlimited) [default: unlimited]
    #[arg(long, env = "OCELLUS_IMAGE_SIZE_TOTAL", value_name = "SIZE")]
    pub image_size_total: Option<String>,
    /// Default per-project limit on staged bytes [default: unlimited]
    #[arg(long, env = "OCELLUS_IMAGE_STAGE_TOTAL", value_name = "SIZE")]
    pub image_stage_total: Option<String>,
    /// Default per-project limit on the number of images [default: unlimited]
    #[arg(
        long,
        env = "OCELLUS_IMAGE_COUNT_TOTAL",
        value_name = "COUNT",
        allow_hyphen_values = true
    )]
    pub image_count_total: Option<i64>,
    /// Default per-project limit on images receiving data at once [default: unlimited]
    #[arg(
        long,
        env = "OCELLUS_IMAGE_COUNT_UPLOADING",
        value_name = "COUNT",
        allow_hyphen_values = true
    )]
    pub image_count_uploading: Option<i64>,
    /// Most tags per image; negative: unlimited [default: 128]
    #[arg(
        long,
        env = "OCELLUS_IMAGE_TAG_QUOTA",
        value_name = "COUNT",
        allow_hyphen_values = true
    )]
    pub image_tag_quota: Option<i64>,
    /// Most custom properties per image; negative: unlimited [default: 128]
    #[arg(
        long,
        env = "OCELLUS_IMAGE_PROPERTY_QUOTA",
        value_name = "COUNT",
        allow_hyphen_values = true
    )]
    pub image_property_quota: Option<i64>,
    /// Most members per image; negative: unlimited [default: 128]
    #[arg(
        long,
        env = "OCELLUS_IMAGE_MEMBER_QUOTA",
        value_name = "COUNT",
        allow_hyphen_values = true
    )]
    pub image_member_quota: Option<i64>,
    /// Serve the legacy Images API v1 under /v1 (true or false) [default: true in lab mode,
    /// false with keys]
    #[arg(long, env = "OCELLUS_ENABLE_V1_API", value_name = "BOOL")]
    pub enable_v1_api: Option<bool>,
    /// Memory the metadata database may keep of its file, e.g. 64MiB; more makes huge catalogs
    /// faster to list, less bounds the server's memory [default: 64MiB]
    #[arg(long, env = "OCELLUS_DB_CACHE_SIZE", value_name = "SIZE")]
    pub db_cache_size: Option<String>,
    /// Custom properties the list filter index covers, comma-separated; `prefix*` covers every
    /// property starting with prefix; changing the list rebuilds the index at start
    /// [default: os_distro,os_version,architecture,hw_*]
    #[arg(
        long,
        env = "OCELLUS_INDEXED_PROPERTIES",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub indexed_properties: Option<Vec<String>>,
    /// Address and port of the read-only NBD export of every image, e.g. 127.0.0.1:10809
    /// [default: off]
    #[arg(long, env = "OCELLUS_NBD_LISTEN", value_name = "ADDRESS:PORT")]
    pub nbd_listen: Option<SocketAddr>,
    /// Most NBD connections at once; more are closed as they arrive [default: 64]
    #[arg(long, env = "OCELLUS_NBD_MAX_CONNECTIONS", value_name = "COUNT")]
    pub nbd_max_connections: Option<usize>,
    /// Seconds an NBD connection may stay without a request before it is closed
    /// [default: 3600]
    #[arg(long, env = "OCELLUS_NBD_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub nbd_idle_timeout: Option<u64>,
    /// Serve the web UI under /ui/ (true or false) [default: true]
    #[arg(long, env = "OCELLUS_UI_ENABLED", value_name = "BOOL")]
    pub ui_enabled: Option<bool>,
    /// Host names (besides IP literals and localhost) the web UI answers to, comma-separated;
    /// any other Host header gets 403, against DNS rebinding [default: none]
    #[arg(
        long,
        env = "OCELLUS_UI_ALLOWED_HOSTS",
        value_name = "HOST,...",
        value_delimiter = ','
    )]
    pub ui_allowed_hosts: Option<Vec<String>>,
}

/// A size in a settings file: bytes, or text with a unit (`50GiB`).
#[derive(Clone, Debug, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(untagged)]
pub enum SizeSetting {
    Bytes(i64),
    Text(String),
}

impl SizeSetting {
    fn text(&self) -> String {
        match self {
            SizeSetting::Bytes(bytes) => bytes.to_string(),
            SizeSetting::Text(text) => text.clone(),
        }
    }
}

/// Parses `50GiB`, `10 GB`, `1048576`, `-1` (unlimited: `None`). Units: B, KB, MB, GB, TB
/// (powers of 1000) and KiB, MiB, GiB, TiB (powers of 1024).
pub fn parse_size(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text.starts_with('-') {
        return match text.parse::<i64>() {
            Ok(value) if value < 0 => Ok(None),
            _ => Err(format!("{text:?} is not a size")),
        };
    }
    let split = text
        .find(|character: char| !character.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .map(Some)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// The `[ui]` table under the flags.
fn ui_settings(args: &ServeArgs, file: Option<UiSection>) -> Result<UiSettings, String> {
    let file = file.unwrap_or_default();
    let hosts = args
        .ui_allowed_hosts
        .clone()
        .or(file.allowed_hosts)
        .unwrap_or_default();
    let mut allowed_hosts = Vec::with_capacity(hosts.len());
    for host in hosts {
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        if host.is_empty() {
            continue;
        }
        if !host
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'.')
        {
            return Err(format!(
                "ui.allowed_hosts: {host:?} is not a host name (no ports, schemes or paths)"
            ));
        }
        allowed_hosts.push(host);
    }
    Ok(UiSettings {
        enabled: args.ui_enabled.or(file.enabled).unwrap_or(true),
        allowed_hosts,
    })
}

/// How many of a thing an image may have; `None`: unlimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PerImageQuotas {
    pub tags: Option<usize>,
    pub properties: Option<usize>,
    pub members: Option<usize>,
}

impl Default for PerImageQuotas {
    fn default() -> PerImageQuotas {
        PerImageQuotas {
            tags: Some(128),
            properties: Some(128),
            members: Some(128),
        }
    }
}

/// The import methods this build can offer.
pub const IMPORT_METHODS: [&str; 3] = ["glance-direct", "web-download", "copy-image"];

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event, fields as key=value.
    #[default]
    Human,
    /// One JSON object per line, with the request's span (its id) in each.
    Json,
}

/// The TOML file's contents; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub data_dir: Option<PathBuf>,
    pub auth: Option<AuthMode>,
    pub default_project: Option<String>,
    pub image_size_cap: Option<u64>,
    pub log: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub public_url: Option<String>,
    pub auth_failure_limit: Option<u32>,
    pub max_connections: Option<usize>,
    pub max_uploads: Option<usize>,
    pub max_downloads: Option<usize>,
    pub min_free_space: Option<u64>,
    pub quarantine_days: Option<u64>,
    pub shutdown_timeout: Option<u64>,
    pub log_format: Option<LogFormat>,
    pub metrics_token: Option<String>,
    pub scrub_interval: Option<String>,
    pub scrub_rate: Option<u64>,
    pub import_methods: Option<Vec<String>>,
    pub web_download_allow: Option<Vec<String>>,
    pub web_download_ports: Option<Vec<u16>>,
    pub max_imports: Option<usize>,
    pub mirror_catalog: Option<PathBuf>,
    pub mirror_refresher: Option<bool>,
    pub task_time_to_live: Option<u64>,
    pub image_size_total: Option<SizeSetting>,
    pub image_stage_total: Option<SizeSetting>,
    pub image_count_total: Option<i64>,
    pub image_count_uploading: Option<i64>,
    pub image_tag_quota: Option<i64>,
    pub image_property_quota: Option<i64>,
    pub image_member_quota: Option<i64>,
    pub enable_v1_api: Option<bool>,
    /// The store uploads go to when they name none [default: the only store, or `fs`].
    pub default_store: Option<String>,
    /// The stores, by id; none configured: the data directory as store `fs`.
    #[serde(default)]
    pub stores: std::collections::BTreeMap<String, StoreSection>,
    /// The web UI.
    pub ui: Option<UiSection>,
    pub nbd_listen: Option<SocketAddr>,
    pub nbd_max_connections: Option<usize>,
    pub nbd_idle_timeout: Option<u64>,
    pub db_cache_size: Option<SizeSetting>,
    pub indexed_properties: Option<Vec<String>>,
}

/// The `[ui]` table.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct UiSection {
    /// Serve `/ui/` [default: true].
    pub enabled: Option<bool>,
    /// Host names the UI answers to besides IP literals and `localhost`.
    pub allowed_hosts: Option<Vec<String>>,
}

/// The web UI's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UiSettings {
    pub enabled: bool,
    /// Lower-case host names, without ports.
    pub allowed_hosts: Vec<String>,
}

impl Default for UiSettings {
    fn default() -> UiSettings {
        UiSettings {
            enabled: true,
            allowed_hosts: Vec::new(),
        }
    }
}

/// One `[stores.ID]` table.
#[derive(Debug, Default, Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `file` (the data directory's blobs; at most one) or `s3`.
    #[serde(rename = "type")]
    pub kind: String,
    pub description: Option<String>,
    /// Downloads read from the heaviest store holding the bytes first [default: 0].
    pub weight: Option<i64>,
    /// S3: `http(s)://host:port` of the engine; leave out for AWS itself.
    pub endpoint: Option<String>,
    pub bucket: Option<String>,
    /// S3 region [default: us-east-1].
    pub region: Option<String>,
    /// Put before every key, e.g. `ocellus/` [default: none].
    pub prefix: Option<String>,
    /// Files holding the access key id and the secret key (first line of each).
    pub access_key_file: Option<PathBuf>,
    pub secret_key_file: Option<PathBuf>,
    /// Or environment variables holding them [default: AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY].
    pub access_key_env: Option<String>,
    pub secret_key_env: Option<String>,
    /// How long an object nothing references stays before the sweep removes it, e.g. `1h`.
    pub removal_grace: Option<String>,
    /// Answer downloads with a redirect (302) to a presigned GET of the engine, which clients
    /// must then reach themselves; the bytes are not verified by ocellus on that path
    /// [default: false].
    pub presigned_downloads: Option<bool>,
}

/// The NBD export's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NbdSettings {
    /// Where to listen; `None`: no NBD export.
    pub listen: Option<SocketAddr>,
    pub max_connections: usize,
    pub idle_timeout: std::time::Duration,
}

impl Default for NbdSettings {
    fn default() -> NbdSettings {
        NbdSettings {
            listen: None,
            max_connections: 64,
            idle_timeout: std::time::Duration::from_secs(3600),
        }
    }
}

/// Certificate and key files for HTTPS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The resolved settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub auth: AuthMode,
    pub default_project: String,
    pub image_size_cap: u64,
    pub log: String,
    pub tls: Option<TlsFiles>,
    /// Without a trailing slash.
    pub public_url: Option<String>,
    pub auth_failure_limit: u32,
    pub max_connections: usize,
    /// Time requests in flight get to finish at shutdown.
    pub shutdown_timeout: std::time::Duration,
    pub log_format: LogFormat,
    /// Lets a scraper on another host read `/metrics`.
    pub metrics_token: Option<String>,
    pub scrub: crate::scrub::ScrubSettings,
    /// Import methods offered, in Glance's order.
    pub import_methods: Vec<String>,
    /// What web-download may reach.
    pub web_download: crate::fetch::Rules,
    /// Imports running at once.
    pub max_imports: usize,
    /// The mirror catalog, if the server keeps one in step.
    pub mirror_catalog: Option<PathBuf>,
    /// Whether the server syncs the mirror's sources on their own timers.
    pub mirror_refresher: bool,
    pub per_image: PerImageQuotas,
    /// Transfer slots, free-space reserve, quarantine grace.
    pub store: StoreLimits,
    /// Whether `/v1` serves the legacy Images API.
    pub enable_v1_api: bool,
    /// The stores of image bytes and the default one.
    pub stores: crate::store::StoreSet,
    /// The web UI.
    pub ui: UiSettings,
    /// The NBD export.
    pub nbd: NbdSettings,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 9292)),
            data_dir: PathBuf::from("ocellus-data"),
            auth: AuthMode::None,
            default_project: "lab".into(),
            image_size_cap: DEFAULT_IMAGE_SIZE_CAP,
            log: "info".into(),
            tls: None,
            public_url: None,
            auth_failure_limit: 10,
            max_connections: 1024,
            shutdown_timeout: std::time::Duration::from_secs(30),
            log_format: LogFormat::Human,
            metrics_token: None,
            scrub: crate::scrub::ScrubSettings::default(),
            import_methods: IMPORT_METHODS
                .iter()
                .map(|method| (*method).to_owned())
                .collect(),
            web_download: crate::fetch::Rules::default(),
            max_imports: 4,
            mirror_catalog: None,
            mirror_refresher: true,
            per_image: PerImageQuotas::default(),
            store: StoreLimits::default(),
            enable_v1_api: true,
            stores: crate::store::StoreSet::default(),
            ui: UiSettings::default(),
            nbd: NbdSettings::default(),
        }
    }
}

impl Config {
    /// Merges flags (and their environment variables) over the file over the defaults.
    pub fn resolve(args: &ServeArgs) -> Result<Config, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let defaults = Config::default();
        let auth = args.auth.or(file.auth).unwrap_or(defaults.auth);
        let config = Config {
            listen: args.listen.or(file.listen).unwrap_or(defaults.listen),
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or(defaults.data_dir),
            auth,
            default_project: args
                .default_project
                .clone()
                .or(file.default_project)
                .unwrap_or(defaults.default_project),
            image_size_cap: args
                .image_size_cap
                .or(file.image_size_cap)
                .unwrap_or(defaults.image_size_cap),
            log: args.log.clone().or(file.log).unwrap_or(defaults.log),
            tls: match (
                args.tls_cert.clone().or(file.tls_cert),
                args.tls_key.clone().or(file.tls_key),
            ) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
                (None, None) => None,
                _ => return Err("tls_cert and tls_key must be given together".into()),
            },
            public_url: args
                .public_url
                .clone()
                .or(file.public_url)
                .map(|url| url.trim_end_matches('/').to_owned()),
            auth_failure_limit: args
                .auth_failure_limit
                .or(file.auth_failure_limit)
                .unwrap_or(defaults.auth_failure_limit),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or(defaults.max_connections),
            shutdown_timeout: args
                .shutdown_timeout
                .or(file.shutdown_timeout)
                .map_or(defaults.shutdown_timeout, std::time::Duration::from_secs),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(defaults.log_format),
            metrics_token: args
                .metrics_token
                .clone()
                .or(file.metrics_token)
                .filter(|token| !token.is_empty()),
            scrub: crate::scrub::ScrubSettings {
                interval: match args.scrub_interval.clone().or(file.scrub_interval) {
                    Some(text) => parse_interval(&text).ok_or_else(|| {
                        format!("scrub_interval {text:?}: give 90s, 15m, 12h, 7d, 2w or off")
                    })?,
                    None => defaults.scrub.interval,
                },
                rate: match args.scrub_rate.or(file.scrub_rate) {
                    Some(0) => return Err("scrub_rate must be at least 1 (MB/s)".into()),
                    Some(megabytes) => megabytes.saturating_mul(1_000_000),
                    None => defaults.scrub.rate,
                },
            },
            import_methods: match args.import_methods.clone().or(file.import_methods) {
                Some(methods) => {
                    let mut chosen = Vec::new();
                    for method in methods {
                        let method = method.trim().to_owned();
                        if method.is_empty() {
                            continue;
                        }
                        if !IMPORT_METHODS.contains(&method.as_str()) {
                            return Err(format!(
                                "import_methods: {method:?} is not one of {}",
                                IMPORT_METHODS.join(", ")
                            ));
                        }
                        if !chosen.contains(&method) {
                            chosen.push(method);
                        }
                    }
                    chosen
                }
                None => defaults.import_methods,
            },
            web_download: crate::fetch::Rules {
                allow: args
                    .web_download_allow
                    .clone()
                    .or(file.web_download_allow)
                    .unwrap_or_default()
                    .iter()
                    .filter(|entry| !entry.trim().is_empty())
                    .map(|entry| {
                        entry
                            .parse()
                            .map_err(|error| format!("web_download_allow: {error}"))
                    })
                    .collect::<Result<_, _>>()?,
                ports: args
                    .web_download_ports
                    .clone()
                    .or(file.web_download_ports)
                    .unwrap_or(defaults.web_download.ports),
            },
            max_imports: args
                .max_imports
                .or(file.max_imports)
                .unwrap_or(defaults.max_imports),
            mirror_catalog: args.mirror_catalog.clone().or(file.mirror_catalog),
            mirror_refresher: args
                .mirror_refresher
                .or(file.mirror_refresher)
                .unwrap_or(defaults.mirror_refresher),
            per_image: {
                let count = |value: Option<i64>, default: Option<usize>| match value {
                    Some(limit) if limit < 0 => None,
                    Some(limit) => Some(limit as usize),
                    None => default,
                };
                PerImageQuotas {
                    tags: count(
                        args.image_tag_quota.or(file.image_tag_quota),
                        defaults.per_image.tags,
                    ),
                    properties: count(
                        args.image_property_quota.or(file.image_property_quota),
                        defaults.per_image.properties,
                    ),
                    members: count(
                        args.image_member_quota.or(file.image_member_quota),
                        defaults.per_image.members,
                    ),
                }
            },
            store: StoreLimits {
                quotas: crate::store::Quotas {
                    image_size_total: match args
                        .image_size_total
                        .clone()
                        .or(file.image_size_total.as_ref().map(SizeSetting::text))
                    {
                        Some(text) => parse_size(&text)
                            .map_err(|error| format!("image_size_total: {error}"))?,
                        None => None,
                    },
                    image_stage_total: match args
                        .image_stage_total
                        .clone()
                        .or(file.image_stage_total.as_ref().map(SizeSetting::text))
                    {
                        Some(text) => parse_size(&text)
                            .map_err(|error| format!("image_stage_total: {error}"))?,
                        None => None,
                    },
                    image_count_total: args
                        .image_count_total
                        .or(file.image_count_total)
                        .filter(|limit| *limit >= 0)
                        .map(|limit| limit as u64),
                    image_count_uploading: args
                        .image_count_uploading
                        .or(file.image_count_uploading)
                        .filter(|limit| *limit >= 0)
                        .map(|limit| limit as u64),
                },
                task_time_to_live: args
                    .task_time_to_live
                    .or(file.task_time_to_live)
                    .map_or(defaults.store.task_time_to_live, |hours| {
                        std::time::Duration::from_secs(hours.saturating_mul(3600))
                    }),
                max_uploads: args
                    .max_uploads
                    .or(file.max_uploads)
                    .unwrap_or(defaults.store.max_uploads),
                max_downloads: args
                    .max_downloads
                    .or(file.max_downloads)
                    .unwrap_or(defaults.store.max_downloads),
                min_free_space: args.min_free_space.or(file.min_free_space),
                db_cache_size: match args
                    .db_cache_size
                    .clone()
                    .or(file.db_cache_size.as_ref().map(SizeSetting::text))
                {
                    Some(text) => match parse_size(&text)
                        .map_err(|error| format!("db_cache_size: {error}"))?
                    {
                        Some(bytes) if bytes >= 1 << 20 => {
                            usize::try_from(bytes).unwrap_or(usize::MAX)
                        }
                        _ => return Err("db_cache_size must be at least 1MiB".into()),
                    },
                    None => defaults.store.db_cache_size,
                },
                indexed_properties: Some(indexed_properties(
                    args.indexed_properties
                        .clone()
                        .or(file.indexed_properties.clone()),
                )?),
                quarantine_grace: args
                    .quarantine_days
                    .or(file.quarantine_days)
                    .map_or(defaults.store.quarantine_grace, |days| {
                        std::time::Duration::from_secs(days.saturating_mul(86_400))
                    }),
                ..defaults.store
            },
            // The v1 API is the seed lab's; with keys it must be asked for.
            enable_v1_api: args
                .enable_v1_api
                .or(file.enable_v1_api)
                .unwrap_or(auth == AuthMode::None),
            stores: store_set(file.default_store, file.stores)?,
            ui: ui_settings(args, file.ui)?,
            nbd: NbdSettings {
                listen: args.nbd_listen.or(file.nbd_listen),
                max_connections: args
                    .nbd_max_connections
                    .or(file.nbd_max_connections)
                    .unwrap_or(defaults.nbd.max_connections),
                idle_timeout: args
                    .nbd_idle_timeout
                    .or(file.nbd_idle_timeout)
                    .map_or(defaults.nbd.idle_timeout, std::time::Duration::from_secs),
            },
        };
        if config.default_project.is_empty() || config.default_project.len() > 255 {
            return Err("default_project must be 1 to 255 characters".into());
        }
        if let Some(url) = &config.public_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            return Err(format!(
                "public_url {url:?} must start with http:// or https://"
            ));
        }
        if config.max_imports == 0 {
            return Err("max_imports must be at least 1".into());
        }
        if config.nbd.max_connections == 0 || config.nbd.idle_timeout.is_zero() {
            return Err("nbd_max_connections and nbd_idle_timeout must be at least 1".into());
        }
        if config.max_connections == 0 {
            return Err("max_connections must be at least 1".into());
        }
        if config.store.max_uploads == 0 || config.store.max_downloads == 0 {
            return Err("max_uploads and max_downloads must be at least 1".into());
        }
        Ok(config)
    }
}

/// The `[stores.ID]` tables as the store wants them; credentials are read here (from files or
/// the environment) and never logged.
fn store_set(
    default: Option<String>,
    sections: std::collections::BTreeMap<String, StoreSection>,
) -> Result<crate::store::StoreSet, String> {
    use crate::store::{BackendSpec, StoreSet, StoreSpec};
    if sections.is_empty() {
        let set = StoreSet::default();
        return match default {
            Some(id) if id != set.default => Err(format!(
                "default_store {id:?} is not a configured store (none is configured: the only one is {:?})",
                set.default
            )),
            _ => Ok(set),
        };
    }
    let mut stores = Vec::new();
    for (id, section) in sections {
        if id.is_empty()
            || id.len() > 255
            || !id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
        {
            return Err(format!(
                "store id {id:?} must be 1 to 255 letters, digits, '-' or '_'"
            ));
        }
        let grace = match section.removal_grace.as_deref() {
            None => std::time::Duration::from_secs(3600),
            Some(text) => match parse_interval(text) {
                Some(Some(grace)) => grace,
                _ => {
                    return Err(format!(
                        "stores.{id}.removal_grace {text:?} must be a duration such as 30s, 10m or 1h"
                    ));
                }
            },
        };
        let s3_only = [
            ("endpoint", section.endpoint.is_some()),
            ("bucket", section.bucket.is_some()),
            ("region", section.region.is_some()),
            ("prefix", section.prefix.is_some()),
            ("access_key_file", section.access_key_file.is_some()),
            ("secret_key_file", section.secret_key_file.is_some()),
            ("access_key_env", section.access_key_env.is_some()),
            ("secret_key_env", section.secret_key_env.is_some()),
            ("removal_grace", section.removal_grace.is_some()),
            ("presigned_downloads", section.presigned_downloads.is_some()),
        ];
        let backend = match section.kind.as_str() {
            "file" => {
                if let Some((key, _)) = s3_only.iter().find(|(_, set)| *set) {
                    return Err(format!("stores.{id}: {key} is for type = \"s3\" stores"));
                }
                BackendSpec::File
            }
            "s3" => {
                let bucket = section
                    .bucket
                    .ok_or_else(|| format!("stores.{id}: an s3 store needs a bucket"))?;
                if let Some(endpoint) = &section.endpoint
                    && !(endpoint.starts_with("http://") || endpoint.starts_with("https://"))
                {
                    return Err(format!(
                        "stores.{id}.endpoint {endpoint:?} must start with http:// or https://"
                    ));
                }
                let access_key = secret(
                    &id,
                    "access key",
                    section.access_key_file.as_deref(),
                    section
                        .access_key_env
                        .as_deref()
                        .unwrap_or("AWS_ACCESS_KEY_ID"),
                )?;
                let secret_key = secret(
                    &id,
                    "secret key",
                    section.secret_key_file.as_deref(),
                    section
                        .secret_key_env
                        .as_deref()
                        .unwrap_or("AWS_SECRET_ACCESS_KEY"),
                )?;
                BackendSpec::S3(crate::S3Settings {
                    endpoint: section.endpoint,
                    bucket,
                    region: section.region.unwrap_or_else(|| "us-east-1".into()),
                    access_key,
                    secret_key,
                    prefix: section.prefix.unwrap_or_default(),
                    presigned_downloads: section.presigned_downloads.unwrap_or(false),
                })
            }
            other => {
                return Err(format!(
                    "stores.{id}.type {other:?} must be \"file\" or \"s3\""
                ));
            }
        };
        stores.push(StoreSpec {
            id,
            description: section.description,
            weight: section.weight.unwrap_or(0),
            grace,
            backend,
        });
    }
    let files = stores
        .iter()
        .filter(|store| matches!(store.backend, BackendSpec::File))
        .count();
    if files > 1 {
        return Err("at most one store may be of type \"file\" (the data directory)".into());
    }
    let default = match default {
        Some(id) => {
            if !stores.iter().any(|store| store.id == id) {
                return Err(format!("default_store {id:?} is not one of the [stores]"));
            }
            id
        }
        None if stores.len() == 1 => stores[0].id.clone(),
        None => return Err("with several [stores], default_store must name one".into()),
    };
    Ok(StoreSet { stores, default })
}

/// A store credential: the first line of `file`, or else the environment variable `env`.
fn secret(store: &str, what: &str, file: Option<&Path>, env: &str) -> Result<String, String> {
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|error| {
                format!(
                    "stores.{store}: cannot read the {what} file {}: {error}",
                    path.display()
                )
            })?
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned(),
        None => std::env::var(env).unwrap_or_default(),
    };
    if value.is_empty() {
        return Err(match file {
            Some(path) => format!(
                "stores.{store}: the {what} file {} is empty",
                path.display()
            ),
            None => format!("stores.{store}: no {what}: set {env} or give a file"),
        });
    }
    Ok(value)
}

/// `off` (or `0`) is `Some(None)`; `<number><s|m|h|d|w>` a duration; anything else `None`.
fn parse_interval(text: &str) -> Option<Option<std::time::Duration>> {
    let text = text.trim();
    if text == "off" || text == "0" {
        return Some(None);
    }
    let unit = text.chars().last()?;
    let count: u64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let seconds = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        'w' => 7 * 86_400,
        _ => return None,
    };
    let total = count.checked_mul(seconds).filter(|total| *total > 0)?;
    Some(Some(std::time::Duration::from_secs(total)))
}

fn read_file(path: &Path) -> Result<FileConfig, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    toml::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
}

/// The `indexed_properties` setting: property names, or prefixes ending in `*`.
fn indexed_properties(
    setting: Option<Vec<String>>,
) -> Result<crate::kv::IndexedProperties, String> {
    let Some(patterns) = setting else {
        return Ok(crate::kv::IndexedProperties::default_set());
    };
    let mut checked = Vec::new();
    for pattern in patterns {
        let pattern = pattern.trim().to_owned();
        if pattern.is_empty() {
            continue;
        }
        let name = pattern.strip_suffix('*').unwrap_or(&pattern);
        if name.contains('*') || pattern.chars().any(char::is_control) || pattern.len() > 255 {
            return Err(format!(
                "indexed_properties: {pattern:?} is not a property name or a prefix ending in *"
            ));
        }
        checked.push(pattern);
    }
    Ok(crate::kv::IndexedProperties::new(checked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_file_and_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ocellus.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9999\"\ndata_dir = \"/srv/images\"\nimage_size_cap = 10\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            data_dir: Some("/tmp/flag".into()),
            ..ServeArgs::default()
        };
        let config = Config::resolve(&args).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9999".parse().unwrap());
        assert_eq!(config.data_dir, PathBuf::from("/tmp/flag"));
        assert_eq!(config.image_size_cap, 10);
        assert_eq!(config.default_project, "lab");
    }

    /// The v1 API is on by default for the lab, off by default with keys, and either way
    /// what the settings say.
    #[test]
    fn the_v1_api_defaults_follow_the_mode() {
        let resolve = |auth, enable_v1_api| {
            Config::resolve(&ServeArgs {
                auth,
                enable_v1_api,
                ..ServeArgs::default()
            })
            .unwrap()
            .enable_v1_api
        };
        assert!(resolve(None, None));
        assert!(!resolve(Some(AuthMode::Keys), None));
        assert!(resolve(Some(AuthMode::Keys), Some(true)));
        assert!(!resolve(Some(AuthMode::None), Some(false)));
    }

    /// The package's conffile sets what an appliance needs and lists every other setting,
    /// commented out; uncommented, each of those lines must still be a valid setting.
    #[test]
    fn the_shipped_config_file_lists_every_setting() {
        let text = include_str!("../packaging/deb/ocellus.toml");
        let shipped: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(shipped.auth, Some(AuthMode::Keys));
        assert_eq!(shipped.listen, Some("0.0.0.0:9292".parse().unwrap()));
        assert_eq!(shipped.data_dir, Some(PathBuf::from("/var/lib/ocellus")));

        let is_setting = |line: &str| {
            line.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty()
                    && key.bytes().all(|byte| {
                        byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_'
                    })
            })
        };
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(setting) if is_setting(setting) => setting,
                Some(table) if table.starts_with("[stores.") || table == "[ui]" => table,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        toml::from_str::<FileConfig>(&uncommented).expect("every listed setting is valid");
        let listed: std::collections::BTreeSet<String> =
            toml::from_str::<toml::Table>(&uncommented)
                .unwrap()
                .keys()
                .cloned()
                .collect();
        let accepted: std::collections::BTreeSet<String> =
            match serde_json::to_value(FileConfig::default()).unwrap() {
                serde_json::Value::Object(fields) => fields.keys().cloned().collect(),
                other => panic!("{other}"),
            };
        assert_eq!(listed, accepted, "the conffile and FileConfig disagree");

        let command = <ServeArgs as clap::Args>::augment_args(clap::Command::new("serve"));
        let help = command
            .get_arguments()
            .find(|argument| argument.get_id() == "config")
            .and_then(|argument| argument.get_help())
            .unwrap()
            .to_string();
        for key in &accepted {
            assert!(
                help.contains(key.as_str()),
                "--config's help does not name {key}"
            );
        }
    }

    fn resolve_stores(text: &str) -> Result<crate::store::StoreSet, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stores.toml");
        std::fs::write(
            &path,
            text.replace("DIR", &dir.path().display().to_string()),
        )
        .unwrap();
        std::fs::write(dir.path().join("access"), "AKIDEXAMPLE\n").unwrap();
        std::fs::write(dir.path().join("secret"), "s3cr3t\nignored\n").unwrap();
        std::fs::write(dir.path().join("empty"), "").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        Config::resolve(&args).map(|config| config.stores)
    }

    #[test]
    fn stores_are_read_with_their_credentials_and_checked() {
        use crate::store::BackendSpec;
        // None configured: the data directory, `fs`.
        let set = resolve_stores("").unwrap();
        assert_eq!(set.default, "fs");
        assert!(matches!(set.stores[..], [ref only] if matches!(only.backend, BackendSpec::File)));

        let two = r#"
            default_store = "ceph"
            [stores.fs]
            type = "file"
            weight = 100
            [stores.ceph]
            type = "s3"
            endpoint = "http://127.0.0.1:7480"
            bucket = "images"
            access_key_file = "DIR/access"
            secret_key_file = "DIR/secret"
            removal_grace = "10m"
        "#;
        let set = resolve_stores(two).unwrap();
        assert_eq!(set.default, "ceph");
        let ceph = set.stores.iter().find(|store| store.id == "ceph").unwrap();
        assert_eq!(ceph.grace, std::time::Duration::from_secs(600));
        let BackendSpec::S3(settings) = &ceph.backend else {
            panic!("ceph is not s3");
        };
        assert_eq!(
            (settings.access_key.as_str(), settings.secret_key.as_str()),
            ("AKIDEXAMPLE", "s3cr3t")
        );
        assert_eq!(settings.region, "us-east-1");
        // Never in a debug print (logs, panics).
        assert!(!format!("{set:?}").contains("s3cr3t"));

        for (text, complaint) in [
            (
                two.replace("default_store = \"ceph\"", ""),
                "default_store must name one",
            ),
            (
                two.replace("\"ceph\"\n", "\"nowhere\"\n"),
                "not one of the [stores]",
            ),
            (
                two.replace("type = \"s3\"", "type = \"swift\""),
                "must be \"file\" or \"s3\"",
            ),
            (two.replace("bucket = \"images\"", ""), "needs a bucket"),
            (two.replace("DIR/secret", "DIR/empty"), "is empty"),
            (two.replace("DIR/secret", "DIR/missing"), "cannot read"),
            (two.replace("10m", "soon"), "removal_grace"),
            (
                two.replace("http://127", "ftp://127"),
                "must start with http",
            ),
            (
                two.replace("[stores.ceph]", "[stores.\"c e\"]"),
                "letters, digits",
            ),
            (
                two.replace("weight = 100", "weight = 100\nbucket = \"b\""),
                "is for type = \"s3\"",
            ),
            (
                two.replace("weight = 100", "weight = 100\nbukket = 1"),
                "bukket",
            ),
        ] {
            let error = resolve_stores(&text).unwrap_err();
            assert!(error.contains(complaint), "{error} (wanted {complaint})");
        }
        // Credentials from the environment when no file is named.
        let env = two.replace(
            "access_key_file = \"DIR/access\"",
            "access_key_env = \"OCELLUS_TEST_NO_SUCH_VAR\"",
        );
        assert!(
            resolve_stores(&env)
                .unwrap_err()
                .contains("OCELLUS_TEST_NO_SUCH_VAR")
        );
    }

    #[test]
    fn unknown_file_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "lisen = \"127.0.0.1:1\"\n").unwrap();
        let args = ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        };
        assert!(Config::resolve(&args).unwrap_err().contains("lisen"));
    }

    /// The database cache: 64 MiB unless set, sizes with units from flags or the file, and
    /// nothing under 1 MiB.
    #[test]
    fn db_cache_size_has_a_small_default_and_a_floor() {
        let resolve = |flag: Option<&str>, file: Option<&str>| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, file.unwrap_or("")).unwrap();
            Config::resolve(&ServeArgs {
                config: Some(path),
                db_cache_size: flag.map(str::to_owned),
                ..ServeArgs::default()
            })
        };
        assert_eq!(resolve(None, None).unwrap().store.db_cache_size, 64 << 20);
        assert_eq!(
            resolve(Some("32MiB"), None).unwrap().store.db_cache_size,
            32 << 20
        );
        assert_eq!(
            resolve(None, Some("db_cache_size = \"256MiB\"\n"))
                .unwrap()
                .store
                .db_cache_size,
            256 << 20
        );
        assert_eq!(
            resolve(None, Some("db_cache_size = 2097152\n"))
                .unwrap()
                .store
                .db_cache_size,
            2 << 20
        );
        for bad in ["1KiB", "0", "-1", "lots"] {
            assert!(
                resolve(Some(bad), None)
                    .unwrap_err()
                    .contains("db_cache_size"),
                "{bad}"
            );
        }
    }

    #[test]
    fn indexed_properties_default_and_validate() {
        let resolve = |flag: Option<Vec<&str>>, file: &str| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, file).unwrap();
            Config::resolve(&ServeArgs {
                config: Some(path),
                indexed_properties: flag.map(|list| list.into_iter().map(str::to_owned).collect()),
                ..ServeArgs::default()
            })
        };
        let indexed = |config: Config| config.store.indexed_properties.unwrap();
        assert_eq!(
            indexed(resolve(None, "").unwrap()),
            crate::kv::IndexedProperties::default_set()
        );
        let chosen = indexed(resolve(Some(vec!["os_distro", " ci_* "]), "").unwrap());
        assert!(chosen.covers("ci_branch") && chosen.covers("os_distro"));
        assert!(!chosen.covers("hw_disk_bus"));
        let from_file = indexed(resolve(None, "indexed_properties = [\"a\", \"b*\"]\n").unwrap());
        assert_eq!(from_file.patterns(), ["a", "b*"]);
        assert!(
            indexed(resolve(Some(vec![]), "").unwrap())
                .patterns()
                .is_empty()
        );
        for bad in ["a*b", "*x*", "line\nbreak"] {
            let error = resolve(Some(vec![bad]), "").unwrap_err();
            assert!(error.contains("indexed_properties"), "{bad}: {error}");
        }
    }
}
