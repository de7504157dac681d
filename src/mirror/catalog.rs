//! The mirror catalog, `/etc/ocellus/mirror.toml`: which vendor images to keep, where they
//! are published, and who must have signed their digests.
//!
//! Every mistake is refused with its file and line before anything is fetched: an unknown key,
//! a pattern that does not compile, a source without a signature decision, a signer missing
//! from its keyring, a plain `http://` address without `allow_insecure_http`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;
use toml::Spanned;

use super::openpgp::{Keyring, normalize_fingerprint};

/// Properties the mirror sets itself; a catalog may not set them and clients may not change
/// them.
pub const MIRROR_PREFIX: &str = "ocellus_mirror_";

/// The whole catalog file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    /// Where `keyring` paths are looked up [default: `keys/` beside the catalog].
    keys_dir: Option<Spanned<String>>,
    /// "mirror" (copy what the sources offer) or "edge" (a pull-through cache of one
    /// upstream Glance) [default: mirror].
    mode: Option<Spanned<String>>,
    edge: Option<Spanned<RawEdge>>,
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    source: Spanned<String>,
    cache_max_bytes: Option<u64>,
    #[serde(default)]
    pin_tags: Vec<String>,
    #[serde(default)]
    pin_names: Vec<String>,
    writes: Option<Spanned<String>>,
    reconcile: Option<Spanned<String>>,
}

/// `mode = "edge"`: this server is a pull-through cache of one upstream Glance.
#[derive(Clone, Debug)]
pub struct EdgeSettings {
    /// The `kind = "glance"` source that is the upstream.
    pub source: String,
    /// Bytes of cached images kept at most; least recently used unpinned images are evicted
    /// beyond it [default: no limit].
    pub cache_max_bytes: Option<u64>,
    /// Images with one of these tags are never evicted.
    pub pin_tags: Vec<String>,
    /// Images whose name matches one of these patterns (`*` for any text) are never evicted.
    pub pin_names: Vec<String>,
    /// How often the whole upstream catalog is listed (deletions); between, only what changed
    /// (`updated_at=gte:`) [default: 1h].
    pub reconcile: Duration,
    /// `writes = "forward"`: writes to images go to the upstream with the client's own
    /// credentials; otherwise (`refuse`) they get 403.
    pub forward_writes: bool,
}

impl EdgeSettings {
    /// Whether an image is pinned in the cache.
    pub fn pinned(&self, name: Option<&str>, tags: &[String]) -> bool {
        tags.iter().any(|tag| self.pin_tags.contains(tag))
            || name.is_some_and(|name| self.pin_names.iter().any(|pattern| glob(pattern, name)))
    }
}

/// `*` matches any text; everything else itself.
fn glob(pattern: &str, text: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == text,
        Some((head, rest)) => {
            let Some(tail) = text.strip_prefix(head) else {
                return false;
            };
            (0..=tail.len())
                .filter(|&at| tail.is_char_boundary(at))
                .any(|at| glob(rest, &tail[at..]))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    kind: Spanned<String>,
    base_url: Spanned<String>,
    dirs: Option<Spanned<String>>,
    version_file: Option<Spanned<String>>,
    version_dir: Option<Spanned<String>>,
    file: Option<Spanned<String>>,
    sums: Option<Spanned<String>>,
    signature: Option<Spanned<RawSignature>>,
    keyring: Option<Spanned<String>>,
    #[serde(default)]
    signers: Vec<Spanned<String>>,
    disk_format: Option<Spanned<String>>,
    container_format: Option<Spanned<String>>,
    #[serde(default)]
    properties: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    tags: Vec<String>,
    keep: Option<Spanned<u32>>,
    refresh: Option<Spanned<String>>,
    visibility: Option<Spanned<String>>,
    #[serde(default)]
    hide_old: bool,
    #[serde(default)]
    allow_hosts: Vec<Spanned<String>>,
    #[serde(default)]
    allow_insecure_http: bool,
    max_size: Option<u64>,
    pin: Option<Spanned<String>>,
    // kind = "glance"
    auth: Option<Spanned<RawAuth>>,
    #[serde(default)]
    filters: BTreeMap<String, String>,
    preserve_ids: Option<bool>,
    copy_properties: Option<Vec<String>>,
    #[serde(default)]
    follow_deletes: bool,
    delete_grace: Option<Spanned<String>>,
    // kind = "simplestreams"
    index: Option<String>,
    content_id: Option<String>,
    product: Option<Spanned<String>>,
    ftype: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    /// An ocellus API key, or any token Glance accepts, in a file.
    key_file: Option<String>,
    /// Keystone v3's URL (ending in /v3).
    keystone: Option<String>,
    application_credential_id: Option<String>,
    application_credential_secret_file: Option<String>,
    username: Option<String>,
    password_file: Option<String>,
    project: Option<String>,
    user_domain: Option<String>,
    project_domain: Option<String>,
}

/// How ocellus signs in to an upstream Glance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamAuth {
    /// No credentials (an upstream in lab mode).
    None,
    /// A key or token sent as `X-Auth-Token`, read from a file at each sync.
    Key(PathBuf),
    /// Keystone v3, application credential; the secret read from a file at each sync.
    AppCredential {
        keystone: reqwest::Url,
        id: String,
        secret_file: PathBuf,
    },
    /// Keystone v3, password, scoped to a project.
    Password {
        keystone: reqwest::Url,
        username: String,
        password_file: PathBuf,
        project: String,
        user_domain: String,
        project_domain: String,
    },
}

/// The properties copied from an upstream Glance when the catalog names none.
pub const DEFAULT_COPY_PROPERTIES: &[&str] = &[
    "hw_",
    "trait:",
    "os_distro",
    "os_secure_boot",
    "os_type",
    "os_version",
    "architecture",
];

/// What a `kind = "simplestreams"` source adds: which products of which stream.
#[derive(Clone, Debug)]
pub struct StreamsSource {
    /// The index document, relative to `base_url` [default: streams/v1/index.sjson].
    pub index: String,
    /// The index entry whose products are read (`com.ubuntu.cloud:released:download`).
    pub content_id: String,
    /// Pattern of product names (`com\.ubuntu\.cloud:server:24\.04:amd64`); exactly one
    /// product must match.
    pub product: Regex,
    /// The item type to take from a version [default: disk1.img].
    pub ftype: String,
}

/// What a `kind = "glance"` source adds.
#[derive(Clone, Debug)]
pub struct GlanceSource {
    pub auth: UpstreamAuth,
    /// Extra list filters (`visibility`, `tag`, `os_distro`, …), as query parameters.
    pub filters: Vec<(String, String)>,
    /// Keep the upstream ids [default: true]; otherwise UUIDv5 of source and upstream id.
    pub preserve_ids: bool,
    /// Property names, or prefixes ending in `_` or `:`, copied from upstream images
    /// (`os_glance*` and `ocellus_mirror_*` never are).
    pub copy_properties: Vec<String>,
    /// Delete copies of images gone upstream (after `delete_grace`) instead of hiding them.
    pub follow_deletes: bool,
    pub delete_grace: Duration,
}

impl GlanceSource {
    /// Whether an upstream property is copied.
    pub fn copies(&self, key: &str) -> bool {
        if key.starts_with("os_glance") || key.starts_with(MIRROR_PREFIX) {
            return false;
        }
        self.copy_properties.iter().any(|rule| {
            if rule.ends_with('_') || rule.ends_with(':') {
                key.starts_with(rule.as_str())
            } else {
                key == rule
            }
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignature {
    detached: Option<String>,
    clearsigned: Option<bool>,
    none: Option<String>,
}

/// How a source's digest document is vouched for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureRule {
    /// A detached signature at this path (a template, like `sums`).
    Detached(String),
    /// The digest document is clearsigned.
    Clearsigned,
    /// No signature; the reason the operator gave. The digests are trusted as far as HTTPS
    /// delivered them.
    None(String),
}

/// A source's version discovery.
#[derive(Clone, Debug)]
pub enum Versions {
    /// The newest directory under `base_url` whose name matches (autoindex `href`s).
    Dirs(Regex),
    /// A file under `base_url` holding the version; the directory is `version_dir` with
    /// `{version}` filled in.
    File { path: String, dir: String },
    /// The files are directly under `base_url`; the version is the `version` group of `file`.
    Files,
}

/// One source of the catalog, checked.
#[derive(Clone, Debug)]
pub struct Source {
    pub name: String,
    pub base_url: reqwest::Url,
    pub versions: Versions,
    /// Which file is the image: matched against the digest document's names (or the
    /// directory listing, for a sidecar); a named group `version` orders candidates.
    pub file: Regex,
    /// The digest document's path in the version directory; `{file}` makes it a sidecar.
    pub sums: String,
    pub signature: SignatureRule,
    pub keyring: Option<PathBuf>,
    pub signers: Vec<String>,
    pub disk_format: String,
    pub container_format: String,
    pub properties: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub keep: u32,
    pub refresh: Duration,
    pub visibility: String,
    pub hide_old: bool,
    pub allow_hosts: Vec<crate::fetch::Allowed>,
    /// The largest image this source may bring [default: the server's image_size_cap].
    pub max_size: Option<u64>,
    /// `pin = "sha256:<hex>"`: the only digest the image may have; the operator vouches for
    /// that exact build (trust `pinned` when there is no signature).
    pub pin: Option<(super::sums::Algorithm, String)>,
    /// For `kind = "glance"`: the upstream's settings (then the digest-file fields above are
    /// unused).
    pub glance: Option<GlanceSource>,
    /// For `kind = "simplestreams"`: the stream and product (`signature` applies to the index
    /// and products documents; `versions`, `file` and `sums` are unused).
    pub streams: Option<StreamsSource>,
}

impl Source {
    /// Whether the digest document sits beside the file (one per file).
    pub fn sidecar(&self) -> bool {
        self.sums.contains("{file}")
    }
}

/// A checked catalog and the keyrings its sources name.
#[derive(Debug)]
pub struct Catalog {
    pub path: PathBuf,
    pub sources: Vec<Source>,
    pub keyrings: BTreeMap<PathBuf, Keyring>,
    /// Set in `mode = "edge"`.
    pub edge: Option<EdgeSettings>,
}

impl Catalog {
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|source| source.name == name)
    }

    pub fn keyring(&self, source: &Source) -> Option<&Keyring> {
        source
            .keyring
            .as_ref()
            .and_then(|path| self.keyrings.get(path))
    }
}

/// `1d`, `6h`, `30m`, `90s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 6h"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} is not a duration like 6h (s, m, h, d)")),
    };
    number
        .checked_mul(seconds)
        .filter(|&total| total > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is not a usable duration"))
}

/// Reads and checks a catalog file, and loads the keyrings it names.
pub fn load(path: &Path) -> Result<Catalog, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let keys_default = path.parent().unwrap_or(Path::new(".")).join("keys");
    parse(&text, path, &keys_default)
}

struct Located<'a> {
    text: &'a str,
    path: &'a Path,
}

impl Located<'_> {
    fn line(&self, offset: usize) -> usize {
        self.text[..offset.min(self.text.len())]
            .bytes()
            .filter(|&byte| byte == b'\n')
            .count()
            + 1
    }

    fn error(&self, span: std::ops::Range<usize>, message: impl std::fmt::Display) -> String {
        format!(
            "{}:{}: {message}",
            self.path.display(),
            self.line(span.start)
        )
    }
}

/// Checks catalog text; `keys_default` is the keys directory when the file names none.
pub fn parse(text: &str, path: &Path, keys_default: &Path) -> Result<Catalog, String> {
    let at = Located { text, path };
    let raw: RawCatalog = toml::from_str(text).map_err(|error| match error.span() {
        Some(span) => at.error(span, error.message()),
        None => format!("{}: {}", path.display(), error.message()),
    })?;
    let keys_dir = match &raw.keys_dir {
        Some(dir) => {
            let dir = PathBuf::from(dir.get_ref());
            if dir.is_absolute() {
                dir
            } else {
                path.parent().unwrap_or(Path::new(".")).join(dir)
            }
        }
        None => keys_default.to_path_buf(),
    };
    let mut sources: Vec<Source> = Vec::new();
    let mut keyrings = BTreeMap::new();
    for spanned in &raw.source {
        let source = check_source(&at, spanned, &keys_dir, &mut keyrings)?;
        if sources.iter().any(|other| other.name == source.name) {
            return Err(at.error(
                spanned.get_ref().name.span(),
                format!("a second source named {:?}", source.name),
            ));
        }
        sources.push(source);
    }
    let edge = match (
        raw.mode.as_ref().map(|mode| mode.get_ref().as_str()),
        &raw.edge,
    ) {
        (None | Some("mirror"), None) => None,
        (Some("edge"), Some(edge)) => Some(check_edge(&at, edge, &sources)?),
        (Some("edge"), None) => {
            let mode = raw.mode.as_ref().map_or(0..0, Spanned::span);
            return Err(at.error(mode, "mode = \"edge\" needs an [edge] table"));
        }
        (None | Some("mirror"), Some(edge)) => {
            return Err(at.error(edge.span(), "an [edge] table needs mode = \"edge\""));
        }
        (Some(other), _) => {
            let mode = raw.mode.as_ref().map_or(0..0, Spanned::span);
            return Err(at.error(mode, format!("mode {other:?} is not mirror or edge")));
        }
    };
    Ok(Catalog {
        path: path.to_path_buf(),
        sources,
        keyrings,
        edge,
    })
}

fn template_ok(template: &str) -> bool {
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            return false;
        };
        if !matches!(&rest[open + 1..open + close], "version" | "file") {
            return false;
        }
        rest = &rest[open + close + 1..];
    }
    !template.contains('}') || template.matches('{').count() == template.matches('}').count()
}

fn relative_path_ok(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains("://")
        && path.split('/').all(|part| part != "..")
}

fn check_source(
    at: &Located<'_>,
    spanned: &Spanned<RawSource>,
    keys_dir: &Path,
    keyrings: &mut BTreeMap<PathBuf, Keyring>,
) -> Result<Source, String> {
    let raw = spanned.get_ref();
    let name = raw.name.get_ref().trim().to_owned();
    if name.is_empty() || name.len() > 200 {
        return Err(at.error(
            raw.name.span(),
            "a source needs a name of 1 to 200 characters",
        ));
    }
    match raw.kind.get_ref().as_str() {
        "sums" | "glance" | "simplestreams" => {}
        other => {
            return Err(at.error(
                raw.kind.span(),
                format!("unknown kind {other:?}: sums, simplestreams or glance"),
            ));
        }
    }
    let mut base = raw.base_url.get_ref().clone();
    if !base.ends_with('/') {
        base.push('/');
    }
    let base_url = reqwest::Url::parse(&base)
        .map_err(|error| at.error(raw.base_url.span(), format!("base_url: {error}")))?;
    match base_url.scheme() {
        "https" => {}
        "http" if raw.allow_insecure_http => {}
        "http" => {
            return Err(at.error(
                raw.base_url.span(),
                "an http:// base_url needs allow_insecure_http = true",
            ));
        }
        other => {
            return Err(at.error(
                raw.base_url.span(),
                format!("the scheme {other} is not https"),
            ));
        }
    }
    let glance = match raw.kind.get_ref().as_str() {
        "glance" => Some(check_glance(at, spanned)?),
        _ => {
            if let Some(auth) = &raw.auth {
                return Err(at.error(auth.span(), "auth is for kind = \"glance\""));
            }
            None
        }
    };
    let SumsPart {
        versions,
        file,
        sums,
        signature,
        keyring,
        signers,
    } = match &glance {
        Some(_) => {
            if raw.file.is_some()
                || raw.sums.is_some()
                || raw.signature.is_some()
                || raw.dirs.is_some()
            {
                return Err(at.error(
                    spanned.span(),
                    "kind = \"glance\" takes no file, sums, dirs or signature: the upstream's own digests are checked",
                ));
            }
            SumsPart {
                versions: Versions::Files,
                file: Regex::new("^$").map_err(|error| error.to_string())?,
                sums: String::new(),
                signature: SignatureRule::None(
                    "an upstream Glance: bytes checked against its size, checksum and os_hash_value"
                        .to_owned(),
                ),
                keyring: None,
                signers: Vec::new(),
            }
        }
        None if raw.kind.get_ref() == "simplestreams" => {
            let (signature, keyring, signers) =
                check_trust(at, spanned, &name, keys_dir, keyrings)?;
            if matches!(signature, SignatureRule::Detached(_)) {
                return Err(at.error(
                    spanned.span(),
                    "simplestreams documents are clearsigned (signature = { clearsigned = true }) or unsigned (none)",
                ));
            }
            SumsPart {
                versions: Versions::Files,
                file: Regex::new("^$").map_err(|error| error.to_string())?,
                sums: String::new(),
                signature,
                keyring,
                signers,
            }
        }
        None => check_sums(at, spanned, &name, keys_dir, keyrings)?,
    };
    let streams = match raw.kind.get_ref().as_str() {
        "simplestreams" => Some(check_streams(at, spanned)?),
        _ => None,
    };
    let mut properties = BTreeMap::new();
    for (key, value) in &raw.properties {
        if key.starts_with(MIRROR_PREFIX) || key.starts_with("os_glance") {
            return Err(at.error(
                value.span(),
                format!("property {key} is set by the service, not the catalog"),
            ));
        }
        properties.insert(key.clone(), value.get_ref().clone());
    }
    let visibility = raw
        .visibility
        .as_ref()
        .map_or("public".to_owned(), |value| value.get_ref().clone());
    if !matches!(
        visibility.as_str(),
        "public" | "private" | "shared" | "community"
    ) {
        let span = raw
            .visibility
            .as_ref()
            .map_or(spanned.span(), Spanned::span);
        return Err(at.error(
            span,
            format!("visibility {visibility:?} is not public, private, shared or community"),
        ));
    }
    let refresh = match &raw.refresh {
        Some(refresh) => {
            parse_duration(refresh.get_ref()).map_err(|error| at.error(refresh.span(), error))?
        }
        None => Duration::from_secs(6 * 3600),
    };
    let keep = match &raw.keep {
        Some(keep) if *keep.get_ref() == 0 => {
            return Err(at.error(keep.span(), "keep must be at least 1"));
        }
        Some(keep) => *keep.get_ref(),
        None => 3,
    };
    let mut allow_hosts = Vec::new();
    for host in &raw.allow_hosts {
        allow_hosts.push(
            host.get_ref()
                .parse()
                .map_err(|error| at.error(host.span(), error))?,
        );
    }
    let format = |value: &Option<Spanned<String>>, default: &str, allowed: &[&str]| {
        let text = value
            .as_ref()
            .map_or(default.to_owned(), |value| value.get_ref().clone());
        if allowed.contains(&text.as_str()) {
            Ok(text)
        } else {
            let span = value.as_ref().map_or(spanned.span(), Spanned::span);
            Err(at.error(
                span,
                format!("{text:?} is not one of {}", allowed.join(", ")),
            ))
        }
    };
    let pin = match &raw.pin {
        None => None,
        Some(pin) => {
            if glance.is_some() {
                return Err(at.error(
                    pin.span(),
                    "pin is for digest-file and simplestreams sources",
                ));
            }
            let parsed = pin.get_ref().split_once(':').and_then(|(algorithm, hex)| {
                let algorithm: super::sums::Algorithm =
                    serde_json::from_value(serde_json::Value::String(algorithm.to_owned())).ok()?;
                let hex = hex.to_ascii_lowercase();
                (hex.len() == algorithm.hex_len()
                    && hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
                .then_some((algorithm, hex))
            });
            Some(parsed.ok_or_else(|| {
                at.error(
                    pin.span(),
                    "pin takes \"sha256:<hex>\" (or sha224, sha384, sha512)",
                )
            })?)
        }
    };
    Ok(Source {
        pin,
        glance,
        streams,
        name,
        base_url,
        versions,
        file,
        sums,
        signature,
        keyring,
        signers,
        disk_format: format(
            &raw.disk_format,
            "qcow2",
            &[
                "ami", "ari", "aki", "vhd", "vhdx", "vmdk", "raw", "qcow2", "vdi", "iso", "ploop",
            ],
        )?,
        container_format: format(
            &raw.container_format,
            "bare",
            &[
                "ami",
                "ari",
                "aki",
                "bare",
                "ovf",
                "ova",
                "docker",
                "compressed",
            ],
        )?,
        properties,
        tags: raw.tags.clone(),
        keep,
        refresh,
        visibility,
        hide_old: raw.hide_old,
        allow_hosts,
        max_size: raw.max_size,
    })
}

/// The digest-file fields of a source, checked.
struct SumsPart {
    versions: Versions,
    file: Regex,
    sums: String,
    signature: SignatureRule,
    keyring: Option<PathBuf>,
    signers: Vec<String>,
}

fn check_sums(
    at: &Located<'_>,
    spanned: &Spanned<RawSource>,
    name: &str,
    keys_dir: &Path,
    keyrings: &mut BTreeMap<PathBuf, Keyring>,
) -> Result<SumsPart, String> {
    let regex = |value: &Spanned<String>, what: &str| {
        Regex::new(&format!("^(?:{})$", value.get_ref())).map_err(|error| {
            at.error(
                value.span(),
                format!("{what} is not a valid pattern: {error}"),
            )
        })
    };
    let raw = spanned.get_ref();
    let file_spec = raw
        .file
        .as_ref()
        .ok_or_else(|| at.error(spanned.span(), "a sums source needs file"))?;
    let sums_spec = raw
        .sums
        .as_ref()
        .ok_or_else(|| at.error(spanned.span(), "a sums source needs sums"))?;
    let file = regex(file_spec, "file")?;
    let versions = match (&raw.dirs, &raw.version_file) {
        (Some(_), Some(file)) => {
            return Err(at.error(file.span(), "dirs and version_file exclude each other"));
        }
        (Some(dirs), None) => Versions::Dirs(regex(dirs, "dirs")?),
        (None, Some(file)) => {
            if !relative_path_ok(file.get_ref()) {
                return Err(at.error(file.span(), "version_file must be a relative path"));
            }
            Versions::File {
                path: file.get_ref().clone(),
                dir: raw
                    .version_dir
                    .as_ref()
                    .map_or_else(|| "{version}/".to_owned(), |dir| dir.get_ref().clone()),
            }
        }
        (None, None) => {
            if !file.capture_names().any(|group| group == Some("version")) {
                return Err(at.error(
                    file_spec.span(),
                    "without dirs or version_file, file needs a (?P<version>...) group",
                ));
            }
            Versions::Files
        }
    };
    if let Some(dir) = &raw.version_dir
        && (!template_ok(dir.get_ref()) || raw.version_file.is_none())
    {
        return Err(at.error(
            dir.span(),
            "version_dir goes with version_file and may use only {version}",
        ));
    }
    if !template_ok(sums_spec.get_ref()) || !relative_path_ok(sums_spec.get_ref()) {
        return Err(at.error(
            sums_spec.span(),
            "sums must be a relative path; it may use {version} and {file}",
        ));
    }
    let (signature, keyring, signers) = check_trust(at, spanned, name, keys_dir, keyrings)?;
    Ok(SumsPart {
        versions,
        file,
        sums: sums_spec.get_ref().clone(),
        signature,
        keyring,
        signers,
    })
}

/// The signature decision, keyring and pinned signers of a source, checked (keyrings loaded).
fn check_trust(
    at: &Located<'_>,
    spanned: &Spanned<RawSource>,
    name: &str,
    keys_dir: &Path,
    keyrings: &mut BTreeMap<PathBuf, Keyring>,
) -> Result<(SignatureRule, Option<PathBuf>, Vec<String>), String> {
    let raw = spanned.get_ref();
    let signature = match &raw.signature {
        None => {
            return Err(at.error(
                spanned.span(),
                format!(
                    "source {name:?} has no signature decision: signature = {{ detached = \"PATH\" }}, {{ clearsigned = true }} or {{ none = \"why\" }}"
                ),
            ));
        }
        Some(signature) => {
            let rule = signature.get_ref();
            match (&rule.detached, rule.clearsigned, &rule.none) {
                (Some(path), None, None) if template_ok(path) && relative_path_ok(path) => {
                    SignatureRule::Detached(path.clone())
                }
                (None, Some(true), None) => SignatureRule::Clearsigned,
                (None, None, Some(reason)) if !reason.trim().is_empty() => {
                    SignatureRule::None(reason.trim().to_owned())
                }
                _ => {
                    return Err(at.error(
                        signature.span(),
                        "signature takes one of detached = \"PATH\", clearsigned = true or none = \"a reason\"",
                    ));
                }
            }
        }
    };
    let mut signers = Vec::new();
    for signer in &raw.signers {
        signers.push(
            normalize_fingerprint(signer.get_ref())
                .map_err(|error| at.error(signer.span(), error))?,
        );
    }
    let keyring = match (&signature, &raw.keyring) {
        (SignatureRule::None(_), Some(keyring)) => {
            return Err(at.error(keyring.span(), "a keyring without a signature to check"));
        }
        (SignatureRule::None(_), None) => {
            if let Some(signer) = raw.signers.first() {
                return Err(at.error(signer.span(), "signers without a signature to check"));
            }
            None
        }
        (_, None) => {
            return Err(at.error(spanned.span(), "a signature needs keyring and signers"));
        }
        (_, Some(keyring)) => {
            let path = PathBuf::from(keyring.get_ref());
            let path = if path.is_absolute() {
                path
            } else {
                keys_dir.join(path)
            };
            if !keyrings.contains_key(&path) {
                let loaded =
                    Keyring::load(&path).map_err(|error| at.error(keyring.span(), error))?;
                keyrings.insert(path.clone(), loaded);
            }
            if signers.is_empty() {
                return Err(at.error(
                    keyring.span(),
                    "a keyring needs signers (the fingerprints to pin)",
                ));
            }
            for (signer, spanned_signer) in signers.iter().zip(&raw.signers) {
                if !keyrings[&path].contains(signer) {
                    return Err(at.error(
                        spanned_signer.span(),
                        format!("signer {signer} is not a primary key of {}", path.display()),
                    ));
                }
            }
            Some(path)
        }
    };
    Ok((signature, keyring, signers))
}

fn check_streams(at: &Located<'_>, spanned: &Spanned<RawSource>) -> Result<StreamsSource, String> {
    let raw = spanned.get_ref();
    if raw.file.is_some() || raw.sums.is_some() || raw.dirs.is_some() || raw.version_file.is_some()
    {
        return Err(at.error(
            spanned.span(),
            "kind = \"simplestreams\" takes index, content_id, product and ftype, not file, sums, dirs or version_file",
        ));
    }
    let product = raw.product.as_ref().ok_or_else(|| {
        at.error(
            spanned.span(),
            "a simplestreams source needs product (a pattern of product names)",
        )
    })?;
    let product_pattern = Regex::new(&format!("^(?:{})$", product.get_ref())).map_err(|error| {
        at.error(
            product.span(),
            format!("product is not a valid pattern: {error}"),
        )
    })?;
    let index = raw
        .index
        .clone()
        .unwrap_or_else(|| "streams/v1/index.sjson".to_owned());
    if !relative_path_ok(&index) {
        return Err(at.error(spanned.span(), "index must be a relative path"));
    }
    let content_id = raw
        .content_id
        .clone()
        .ok_or_else(|| at.error(spanned.span(), "a simplestreams source needs content_id (the index entry, e.g. com.ubuntu.cloud:released:download)"))?;
    Ok(StreamsSource {
        index,
        content_id,
        product: product_pattern,
        ftype: raw.ftype.clone().unwrap_or_else(|| "disk1.img".to_owned()),
    })
}

fn check_edge(
    at: &Located<'_>,
    spanned: &Spanned<RawEdge>,
    sources: &[Source],
) -> Result<EdgeSettings, String> {
    let raw = spanned.get_ref();
    let name = raw.source.get_ref();
    if !sources
        .iter()
        .any(|source| source.name == *name && source.glance.is_some())
    {
        return Err(at.error(
            raw.source.span(),
            format!("source {name:?} is not a kind = \"glance\" source of this catalog"),
        ));
    }
    let forward_writes = match raw.writes.as_ref().map(|writes| writes.get_ref().as_str()) {
        None | Some("refuse") => false,
        Some("forward") => true,
        Some(other) => {
            let span = raw.writes.as_ref().map_or(0..0, Spanned::span);
            return Err(at.error(span, format!("writes {other:?} is not refuse or forward")));
        }
    };
    let reconcile = match &raw.reconcile {
        Some(text) => {
            parse_duration(text.get_ref()).map_err(|error| at.error(text.span(), error))?
        }
        None => Duration::from_secs(3600),
    };
    Ok(EdgeSettings {
        source: name.clone(),
        cache_max_bytes: raw.cache_max_bytes,
        pin_tags: raw.pin_tags.clone(),
        pin_names: raw.pin_names.clone(),
        reconcile,
        forward_writes,
    })
}

fn check_glance(at: &Located<'_>, spanned: &Spanned<RawSource>) -> Result<GlanceSource, String> {
    let raw = spanned.get_ref();
    let path = |text: &str| PathBuf::from(text);
    let auth = match &raw.auth {
        None => UpstreamAuth::None,
        Some(auth) => {
            let spec = auth.get_ref();
            let keystone = |url: &str| {
                let mut url = url.to_owned();
                if !url.ends_with('/') {
                    url.push('/');
                }
                reqwest::Url::parse(&url)
                    .map_err(|error| at.error(auth.span(), format!("keystone: {error}")))
            };
            match spec {
                RawAuth {
                    key_file: Some(file),
                    keystone: None,
                    application_credential_id: None,
                    application_credential_secret_file: None,
                    username: None,
                    password_file: None,
                    project: None,
                    ..
                } => UpstreamAuth::Key(path(file)),
                RawAuth {
                    key_file: None,
                    keystone: Some(url),
                    application_credential_id: Some(id),
                    application_credential_secret_file: Some(secret),
                    username: None,
                    password_file: None,
                    ..
                } => UpstreamAuth::AppCredential {
                    keystone: keystone(url)?,
                    id: id.clone(),
                    secret_file: path(secret),
                },
                RawAuth {
                    key_file: None,
                    keystone: Some(url),
                    application_credential_id: None,
                    application_credential_secret_file: None,
                    username: Some(username),
                    password_file: Some(password),
                    project: Some(project),
                    user_domain,
                    project_domain,
                } => UpstreamAuth::Password {
                    keystone: keystone(url)?,
                    username: username.clone(),
                    password_file: path(password),
                    project: project.clone(),
                    user_domain: user_domain.clone().unwrap_or_else(|| "Default".to_owned()),
                    project_domain: project_domain
                        .clone()
                        .unwrap_or_else(|| "Default".to_owned()),
                },
                _ => {
                    return Err(at.error(
                        auth.span(),
                        "auth takes key_file; or keystone with application_credential_id and application_credential_secret_file; or keystone with username, password_file and project",
                    ));
                }
            }
        }
    };
    let delete_grace = match &raw.delete_grace {
        Some(grace) => {
            parse_duration(grace.get_ref()).map_err(|error| at.error(grace.span(), error))?
        }
        None => Duration::from_secs(24 * 3600),
    };
    Ok(GlanceSource {
        auth,
        filters: raw
            .filters
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        preserve_ids: raw.preserve_ids.unwrap_or(true),
        copy_properties: raw.copy_properties.clone().unwrap_or_else(|| {
            DEFAULT_COPY_PROPERTIES
                .iter()
                .map(|rule| (*rule).to_owned())
                .collect()
        }),
        follow_deletes: raw.follow_deletes,
        delete_grace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Catalog, String> {
        parse(
            text,
            Path::new("mirror.toml"),
            Path::new("/nonexistent-keys"),
        )
    }

    const GOOD: &str = r#"
[[source]]
name = "cirros"
kind = "sums"
base_url = "https://download.cirros-cloud.net/"
version_file = "version/released"
file = 'cirros-(?P<version>[0-9.]+)-x86_64-disk\.img'
sums = "{version}/SHA256SUMS"
signature = { none = "CirrOS publishes no signatures" }
"#;

    #[test]
    fn a_good_source_gets_the_defaults() {
        let catalog = check(GOOD).unwrap();
        let source = &catalog.sources[0];
        assert_eq!(source.keep, 3);
        assert_eq!(source.refresh, Duration::from_secs(6 * 3600));
        assert_eq!(source.visibility, "public");
        assert_eq!(source.disk_format, "qcow2");
        assert!(matches!(source.versions, Versions::File { .. }));
        assert!(!source.sidecar());
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        let cases = [
            (GOOD.replace("kind = \"sums\"", "kind = \"sums\"\ncolour = 1"), "mirror.toml:5: unknown field `colour`"),
            (GOOD.replace("[0-9.]+", "[0-9.+"), "mirror.toml:7: file is not a valid pattern"),
            (GOOD.replace("signature = { none = \"CirrOS publishes no signatures\" }\n", ""), "no signature decision"),
            (GOOD.replace("https://", "http://"), "mirror.toml:5: an http:// base_url needs allow_insecure_http"),
            (GOOD.replace("signature = { none = \"CirrOS publishes no signatures\" }", "signature = { detached = \"x.gpg\" }\nkeyring = \"k.asc\"\nsigners = [\"843938DF228D22F7B3742BC0D94AA3F0EFE21092\"]"), "mirror.toml:10: /nonexistent-keys/k.asc"),
            (GOOD.replace("signature = { none = \"CirrOS publishes no signatures\" }", "signature = { none = \"\" }"), "signature takes one of"),
            (format!("{GOOD}properties = {{ ocellus_mirror_trust = \"x\" }}\n"), "set by the service"),
            (format!("{GOOD}keep = 0\n"), "keep must be at least 1"),
            (format!("{GOOD}refresh = \"soon\"\n"), "not a duration"),
            (GOOD.replace("kind = \"sums\"", "kind = \"simplestreams\""), "takes index, content_id, product and ftype"),
            (GOOD.replace("kind = \"sums\"", "kind = \"glance\""), "takes no file, sums"),
            (GOOD.replace("{version}/SHA256SUMS", "../SHA256SUMS"), "relative path"),
            (format!("{GOOD}{GOOD}"), "a second source named"),
        ];
        for (text, expected) in cases {
            let error = check(&text).unwrap_err();
            assert!(
                error.contains(expected),
                "{error:?} should contain {expected:?}"
            );
        }
        assert!(check(&GOOD.replace("http", "https").replace("httpss", "https")).is_ok());
        assert!(
            check(&format!(
                "{}allow_insecure_http = true\n",
                GOOD.replace("https://", "http://")
            ))
            .is_ok()
        );
    }

    /// The package's example catalog checks as shipped (no source) and, uncommented, each
    /// source is valid but for its keys, which the operator brings.
    #[test]
    fn the_shipped_catalog_is_valid_once_uncommented() {
        let text = include_str!("../../packaging/deb/mirror.toml");
        assert!(check(text).unwrap().sources.is_empty());
        let uncommented: String = text
            .lines()
            .filter_map(|line| {
                let line = line.strip_prefix("# ").unwrap_or(line);
                if line.starts_with("keyring = ") || line.starts_with("signers = ") {
                    return None;
                }
                if line.starts_with("signature = { detached")
                    || line.starts_with("signature = { clearsigned")
                {
                    return Some("signature = { none = \"keys checked elsewhere\" }".to_owned());
                }
                let setting = line.split_once(" = ").is_some_and(|(key, _)| {
                    key.bytes()
                        .all(|byte| byte.is_ascii_lowercase() || byte == b'_')
                });
                (setting && !line.starts_with("keys_dir") || line == "[[source]]")
                    .then(|| line.to_owned())
            })
            .collect::<Vec<_>>()
            .join("\n");
        let catalog = check(&uncommented).unwrap();
        let names: Vec<&str> = catalog.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "ubuntu-24.04",
                "ubuntu-24.04-streams",
                "debian-12",
                "fedora-41",
                "almalinux-9",
                "cirros",
                "alpine-3.20",
                "site-glance"
            ]
        );
    }

    #[test]
    fn pin_patterns_match_like_shell_globs() {
        assert!(glob("ubuntu-*", "ubuntu-24.04"));
        assert!(glob("*-golden", "cirros-golden"));
        assert!(glob("a*b*c", "a-x-b-y-c"));
        assert!(!glob("ubuntu-*", "debian-12"));
        assert!(glob("exact", "exact") && !glob("exact", "exactly"));
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(parse_duration("6h").unwrap(), Duration::from_secs(21_600));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert!(parse_duration("0h").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("5 weeks").is_err());
    }
}
