//! Syncing one source: find its newest version, check the vendor's signature over the digest
//! file, download the image once, check its bytes against the signed digest and the format
//! inspector against `disk_format`, and publish it in one transaction.
//!
//! Publication, all or nothing: the new image is inserted active under the source's name and
//! tagged `latest`; the image that held the name becomes `<name> (<version>)` (hidden with
//! `hide_old`) and loses the tag; versions beyond `keep` are deleted unless protected. So a
//! listing by name shows exactly one image at every moment. Any failure before that leaves
//! the catalog as it was and the bytes unreferenced (removed at once, or quarantined by the
//! next start after a crash), records why, and backs off.
//!
//! Ids are UUIDv5 of (source, version, file): appliances syncing the same catalog agree.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::catalog::{Catalog, MIRROR_PREFIX, SignatureRule, Source, Versions};
use super::discover::{self, MAX_LISTING};
use super::{openpgp, sums};
use crate::fetch::{Fetcher, Rules, Validators};
use crate::kv::{Batch, ImageId, ImageRecord, ImageStatus, Visibility};
use crate::store::{Store, StoreError};

/// The namespace of mirrored image ids (a fixed random UUID).
pub(super) const ID_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x4f1c_6a2e_93d5_4b7e_a0c8_5e21_7d9b_3f64);
/// The tag that follows the newest version.
pub const LATEST_TAG: &str = "latest";
/// The longest wait after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// The first wait after a failure.
const FIRST_BACKOFF: Duration = Duration::from_secs(60);

pub const PROP_SOURCE: &str = "ocellus_mirror_source";
pub const PROP_VERSION: &str = "ocellus_mirror_version";
pub const PROP_URL: &str = "ocellus_mirror_url";
pub const PROP_DIGEST: &str = "ocellus_mirror_digest";
pub const PROP_TRUST: &str = "ocellus_mirror_trust";
pub const PROP_LATEST: &str = "ocellus_mirror_latest";

/// What the mirror remembers of a source between runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SourceState {
    /// The digest document last read, and what its server said identifies that copy.
    pub sums_url: Option<String>,
    #[serde(default)]
    pub validators: Validators,
    /// Unix seconds.
    pub last_attempt: Option<i64>,
    pub last_success: Option<i64>,
    pub next_run: Option<i64>,
    /// Failures in a row.
    #[serde(default)]
    pub failures: u32,
    pub last_error: Option<String>,
    /// The newest version published, and its image.
    pub version: Option<String>,
    pub image: Option<String>,
    /// Image bytes downloaded by the last run.
    #[serde(default)]
    pub last_bytes: u64,
    /// For a glance source: copies whose upstream image is gone, and since when (Unix
    /// seconds).
    #[serde(default)]
    pub missing: std::collections::BTreeMap<String, i64>,
    /// For an edge: the newest `updated_at` listed, and when the whole catalog was last
    /// listed (Unix seconds).
    #[serde(default)]
    pub high_water: Option<String>,
    #[serde(default)]
    pub last_reconcile: Option<i64>,
}

/// How a sync of one source ended.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A new version was published.
    Published,
    /// The newest version is already here.
    UpToDate,
    Failed,
}

impl Outcome {
    /// The outcome's name in metrics and JSON.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Published => "published",
            Outcome::UpToDate => "up_to_date",
            Outcome::Failed => "failed",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub source: String,
    pub outcome: Outcome,
    pub version: Option<String>,
    pub image: Option<String>,
    /// Image bytes downloaded.
    pub bytes: u64,
    pub message: String,
}

/// What a source's newest version is, with its verified digest: the plan of a sync.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Candidate {
    pub version: String,
    pub file: String,
    pub url: String,
    pub algorithm: sums::Algorithm,
    pub hex: String,
    pub trust: String,
    pub image: String,
    /// Whether that image is here already.
    pub present: bool,
    /// The size the source states, when it states one (simplestreams).
    #[serde(default)]
    pub size: Option<u64>,
    /// The documents that vouch for it.
    #[serde(skip)]
    pub evidence: Evidence,
}

/// What vouched for a mirrored image: the vendor's digest document and signature as fetched,
/// kept with the image so that `verify`, `export` and `import` can check them again.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Evidence {
    pub sums_url: String,
    /// The digest document's path in its directory (its name tells the algorithm).
    pub sums_name: String,
    /// For a sidecar: the file it names.
    pub sidecar_for: Option<String>,
    #[serde(with = "base64_bytes")]
    pub sums: Vec<u8>,
    #[serde(with = "base64_option", default)]
    pub signature: Option<Vec<u8>>,
    pub file: String,
    pub algorithm: Option<sums::Algorithm>,
    pub hex: String,
    pub trust: String,
    /// `simplestreams` when `sums` is a products document; none for a digest file.
    #[serde(default)]
    pub format: Option<String>,
}

mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        let text: String = serde::Deserialize::deserialize(deserializer)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
}

mod base64_option {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(
        bytes: &Option<Vec<u8>>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(bytes) => serializer.serialize_some(&STANDARD.encode(bytes)),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = serde::Deserialize::deserialize(deserializer)?;
        text.map(|text| STANDARD.decode(text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Checks a digest document as `rule` says and returns its text (for a clearsigned one, the
/// signed text) and the trust it earns. Nothing in the document is read before this.
pub fn vouch(
    rule: &SignatureRule,
    keyring: Option<&openpgp::Keyring>,
    signers: &[String],
    document: &[u8],
    signature: Option<&[u8]>,
    https: bool,
) -> Result<(String, String), String> {
    let now = SystemTime::now();
    let utf8 = |bytes: Vec<u8>| String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned());
    match rule {
        SignatureRule::Detached(_) => {
            let keyring = keyring.ok_or("no keyring to check the signature with")?;
            let signature = signature.ok_or("no signature")?;
            let signer = openpgp::verify_detached(keyring, signers, document, signature, now)
                .map_err(|error| format!("the signature: {error}"))?;
            Ok((utf8(document.to_vec())?, format!("openpgp:{signer}")))
        }
        SignatureRule::Clearsigned => {
            let keyring = keyring.ok_or("no keyring to check the signature with")?;
            let (text, signer) = openpgp::verify_clearsigned(keyring, signers, document, now)
                .map_err(|error| format!("the signature: {error}"))?;
            Ok((text, format!("openpgp:{signer}")))
        }
        SignatureRule::None(_) => {
            let trust = if https { "https-sums" } else { "http-sums" };
            Ok((utf8(document.to_vec())?, trust.to_owned()))
        }
    }
}

impl Evidence {
    /// `check` with a source's rule, keys and pin.
    pub fn check_for(&self, catalog: &Catalog, source: &Source) -> Result<String, String> {
        let trust = self.check(&source.signature, catalog.keyring(source), &source.signers)?;
        let algorithm = self.algorithm.ok_or("the evidence names no algorithm")?;
        pinned(source, algorithm, &self.hex, trust)
    }

    /// Checks the evidence again with the local keys and rule: the signature, then that the
    /// digest document gives `self.file` the recorded digest. Returns the trust.
    pub fn check(
        &self,
        rule: &SignatureRule,
        keyring: Option<&openpgp::Keyring>,
        signers: &[String],
    ) -> Result<String, String> {
        let https = self.sums_url.starts_with("https://");
        let (text, trust) = vouch(
            rule,
            keyring,
            signers,
            &self.sums,
            self.signature.as_deref(),
            https,
        )?;
        let (algorithm, hex) = if self.format.as_deref() == Some(STREAMS) {
            let products: serde_json::Value = serde_json::from_str(&text)
                .map_err(|error| format!("the products document: {error}"))?;
            let (algorithm, hex, _) = streams_item(&products, &self.file)
                .ok_or_else(|| format!("the products document has no item {}", self.file))?;
            (algorithm, hex)
        } else {
            let entries = sums::parse(&text, &self.sums_name, self.sidecar_for.as_deref())?;
            let entry = sums::find(&entries, &self.file)?
                .ok_or_else(|| format!("the digest document gives no digest for {}", self.file))?;
            (entry.algorithm, entry.hex.clone())
        };
        if Some(algorithm) != self.algorithm || hex != self.hex {
            return Err(format!(
                "the digest document gives {algorithm} {hex}, not the recorded {}",
                self.hex
            ));
        }
        Ok(trust)
    }
}

/// The mirror's work on a store.
pub struct Mirror {
    store: Arc<Store>,
    /// The server's web-download rules; each source widens them by its `allow_hosts`.
    rules: Rules,
    /// The server's `image_size_cap`.
    cap: u64,
    /// The project that owns mirrored images.
    owner: String,
    /// One sync at a time.
    running: tokio::sync::Mutex<()>,
}

fn now_secs(now: SystemTime) -> i64 {
    now.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

/// The wait before retrying after `failures` failures in a row.
pub fn backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// The id of a version's image.
pub fn image_id(source: &str, version: &str, file: &str) -> ImageId {
    let name = format!("{source}\n{version}\n{file}");
    ImageId(*uuid::Uuid::new_v5(&ID_NAMESPACE, name.as_bytes()).as_bytes())
}

fn fill(template: &str, version: Option<&str>, file: Option<&str>) -> String {
    template
        .replace("{version}", version.unwrap_or(""))
        .replace("{file}", file.unwrap_or(""))
}

fn join(base: &reqwest::Url, path: &str) -> Result<reqwest::Url, String> {
    base.join(path)
        .map_err(|error| format!("{base} + {path}: {error}"))
}

/// Versions and file names become URL paths and image names: keep them plain.
fn plain(text: &str, what: &str) -> Result<(), String> {
    let ok = !text.is_empty()
        && text.len() <= 128
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"._-+~".contains(&byte));
    if ok {
        Ok(())
    } else {
        Err(format!("{what} {text:?} is not a plain name"))
    }
}

/// Whether an image belongs to source `name`.
pub fn of_source(record: &ImageRecord, name: &str) -> bool {
    record.properties.get(PROP_SOURCE).map(String::as_str) == Some(name)
}

/// Reads back a record's mirrored version.
fn version_of(record: &ImageRecord) -> String {
    record
        .properties
        .get(PROP_VERSION)
        .cloned()
        .unwrap_or_else(|| record.id.to_string())
}

impl Mirror {
    pub fn new(store: Arc<Store>, rules: Rules, cap: u64, owner: String) -> Mirror {
        Mirror {
            store,
            rules,
            cap,
            owner,
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// The server's `image_size_cap`.
    pub fn cap(&self) -> u64 {
        self.cap
    }

    /// The project that owns mirrored images.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    pub(super) fn fetcher(&self, source: &Source) -> Result<Fetcher, String> {
        let mut rules = self.rules.clone();
        rules.allow.extend(source.allow_hosts.iter().cloned());
        Fetcher::new(rules)
    }

    pub fn state(&self, source: &str) -> SourceState {
        self.store
            .mirror_state(source)
            .ok()
            .flatten()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    fn save_state(&self, source: &str, state: &SourceState) -> Result<(), String> {
        let bytes = serde_json::to_vec(state).map_err(|error| error.to_string())?;
        self.store
            .set_mirror_state(source, &bytes)
            .map_err(|error| error.to_string())
    }

    /// Finds a source's newest version and verifies its digest, without downloading the
    /// image. `validators` make the digest document's fetch conditional; `None` means it did
    /// not change.
    async fn resolve(
        &self,
        catalog: &Catalog,
        source: &Source,
        fetcher: &Fetcher,
        seen_before: Option<(&str, &Validators)>,
    ) -> Result<Option<(Candidate, String, Validators)>, String> {
        if let Some(streams) = &source.streams {
            return self
                .resolve_streams(catalog, source, streams, fetcher, seen_before)
                .await;
        }
        let base = &source.base_url;
        let listing = |url: reqwest::Url| async move {
            let (bytes, _) = fetcher
                .get_small(url.clone(), &Validators::default(), MAX_LISTING)
                .await?
                .ok_or_else(|| format!("{url} answered 304 unasked"))?;
            Ok::<_, String>(discover::hrefs(&String::from_utf8_lossy(&bytes)))
        };
        let (dir, dir_version) = match &source.versions {
            Versions::Dirs(pattern) => {
                let names = listing(base.clone()).await?;
                let trimmed: Vec<&str> = names
                    .iter()
                    .filter_map(|name| name.strip_suffix('/'))
                    .collect();
                let (name, version) = discover::newest(trimmed, pattern)?
                    .ok_or_else(|| format!("no directory under {base} matches dirs"))?;
                plain(&name, "directory")?;
                (join(base, &format!("{name}/"))?, Some(version))
            }
            Versions::File { path, dir } => {
                let url = join(base, path)?;
                let (bytes, _) = fetcher
                    .get_small(url.clone(), &Validators::default(), 4096)
                    .await?
                    .ok_or_else(|| format!("{url} answered 304 unasked"))?;
                let version = String::from_utf8_lossy(&bytes).trim().to_owned();
                plain(&version, "the version in version_file")?;
                (join(base, &fill(dir, Some(&version), None))?, Some(version))
            }
            Versions::Files => (base.clone(), None),
        };
        let sidecar = if source.sidecar() {
            let names = listing(dir.clone()).await?;
            let found = discover::newest(names.iter().map(String::as_str), &source.file)?
                .ok_or_else(|| format!("no file under {dir} matches file"))?;
            Some(found)
        } else {
            None
        };
        let sidecar_name = sidecar.as_ref().map(|(name, _)| name.clone());
        let sidecar_file = sidecar_name.as_deref();
        let sums_path = fill(&source.sums, dir_version.as_deref(), sidecar_file);
        let sums_url = join(&dir, &sums_path)?;
        // Validators are only ever sent back to the URL that gave them.
        let none = Validators::default();
        let validators = match seen_before {
            Some((url, validators)) if url == sums_url.as_str() => validators,
            _ => &none,
        };
        let Some((document, seen)) = fetcher
            .get_small(sums_url.clone(), validators, sums::MAX_DOCUMENT)
            .await?
        else {
            return Ok(None);
        };
        let signature = match &source.signature {
            SignatureRule::Detached(path) => {
                let url = join(&dir, &fill(path, dir_version.as_deref(), sidecar_file))?;
                let (signature, _) = fetcher
                    .get_small(url.clone(), &Validators::default(), openpgp::MAX_DOCUMENT)
                    .await?
                    .ok_or_else(|| format!("{url} answered 304 unasked"))?;
                Some(signature)
            }
            _ => None,
        };
        let (text, trust) = vouch(
            &source.signature,
            catalog.keyring(source),
            &source.signers,
            &document,
            signature.as_deref(),
            sums_url.scheme() == "https",
        )
        .map_err(|error| format!("{sums_url}: {error}"))?;
        // Only now, with the signature checked, are the digests read.
        let entries = sums::parse(&text, &sums_path, sidecar_file)?;
        let (file, file_version) = match sidecar {
            Some((name, version)) => (name, Some(version)),
            None => {
                let (name, version) = discover::newest(
                    entries.iter().map(|entry| entry.name.as_str()),
                    &source.file,
                )?
                .ok_or_else(|| format!("{sums_url} lists no file that matches file"))?;
                let named = source
                    .file
                    .capture_names()
                    .flatten()
                    .any(|n| n == "version");
                (name, named.then_some(version))
            }
        };
        plain(&file, "file")?;
        let entry = sums::find(&entries, &file)?
            .ok_or_else(|| format!("{sums_url} gives no digest for {file}"))?;
        let trust = pinned(source, entry.algorithm, &entry.hex, trust)?;
        let version = file_version
            .or(dir_version)
            .ok_or("the source has no version (dirs, version_file or a version group)")?;
        plain(&version, "version")?;
        let id = image_id(&source.name, &version, &file);
        let present = self
            .store
            .image(id)
            .map_err(|error| error.to_string())?
            .is_some_and(|record| record.status == ImageStatus::Active);
        let evidence = Evidence {
            sums_url: sums_url.to_string(),
            sums_name: sums_path.clone(),
            sidecar_for: sidecar_file.map(str::to_owned),
            sums: document,
            signature,
            file: file.clone(),
            algorithm: Some(entry.algorithm),
            hex: entry.hex.clone(),
            trust: trust.clone(),
            format: None,
        };
        let candidate = Candidate {
            evidence,
            version,
            url: join(&dir, &file)?.to_string(),
            file,
            algorithm: entry.algorithm,
            hex: entry.hex.clone(),
            trust,
            image: id.to_string(),
            present,
            size: None,
        };
        Ok(Some((candidate, sums_url.to_string(), seen)))
    }

    /// Simplestreams: the index names the products document of `content_id`; the one product
    /// the pattern matches gives its newest version with an item of `ftype`.
    async fn resolve_streams(
        &self,
        catalog: &Catalog,
        source: &Source,
        streams: &super::catalog::StreamsSource,
        fetcher: &Fetcher,
        seen_before: Option<(&str, &Validators)>,
    ) -> Result<Option<(Candidate, String, Validators)>, String> {
        let base = &source.base_url;
        let https = base.scheme() == "https";
        let keyring = catalog.keyring(source);
        let index_url = join(base, &streams.index)?;
        let (document, _) = fetcher
            .get_small(
                index_url.clone(),
                &Validators::default(),
                MAX_STREAMS_DOCUMENT,
            )
            .await?
            .ok_or_else(|| format!("{index_url} answered 304 unasked"))?;
        let (text, _) = vouch(
            &source.signature,
            keyring,
            &source.signers,
            &document,
            None,
            https,
        )
        .map_err(|error| format!("{index_url}: {error}"))?;
        let index: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| format!("{index_url}: {error}"))?;
        let path = index["index"][&streams.content_id]["path"]
            .as_str()
            .ok_or_else(|| format!("{index_url} has no entry {}", streams.content_id))?;
        if !path.split('/').all(|part| !part.is_empty() && part != "..") {
            return Err(format!("{index_url} names the path {path:?}"));
        }
        let products_url = join(base, path)?;
        let none = Validators::default();
        let validators = match seen_before {
            Some((url, validators)) if url == products_url.as_str() => validators,
            _ => &none,
        };
        let Some((document, seen)) = fetcher
            .get_small(products_url.clone(), validators, MAX_STREAMS_DOCUMENT)
            .await?
        else {
            return Ok(None);
        };
        let (text, trust) = vouch(
            &source.signature,
            keyring,
            &source.signers,
            &document,
            None,
            https,
        )
        .map_err(|error| format!("{products_url}: {error}"))?;
        let products: serde_json::Value =
            serde_json::from_str(&text).map_err(|error| format!("{products_url}: {error}"))?;
        let all = products["products"]
            .as_object()
            .ok_or_else(|| format!("{products_url} lists no products"))?;
        let matching: Vec<(&String, &serde_json::Value)> = all
            .iter()
            .filter(|(name, _)| streams.product.is_match(name))
            .collect();
        let [(product_name, product)] = matching.as_slice() else {
            return Err(format!(
                "{} products of {products_url} match product; exactly one must",
                matching.len()
            ));
        };
        let mut best: Option<(String, &serde_json::Value)> = None;
        for (version, entry) in product["versions"].as_object().into_iter().flatten() {
            let item = entry["items"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, item)| item)
                .find(|item| item["ftype"].as_str() == Some(streams.ftype.as_str()));
            let Some(item) = item else { continue };
            let newer = best.as_ref().is_none_or(|(known, _)| {
                discover::compare_versions(version, known) == std::cmp::Ordering::Greater
            });
            if newer {
                best = Some((version.clone(), item));
            }
        }
        let (version, item) = best.ok_or_else(|| {
            format!(
                "{product_name} has no version with an item of type {}",
                streams.ftype
            )
        })?;
        plain(&version, "version")?;
        let path = item["path"]
            .as_str()
            .filter(|path| path.split('/').all(|part| !part.is_empty() && part != ".."))
            .ok_or_else(|| format!("{product_name} {version}: an item without a usable path"))?
            .to_owned();
        let (algorithm, hex, size) = item_digest(item)
            .ok_or_else(|| format!("{product_name} {version}: no SHA-256 or SHA-512 for {path}"))?;
        let trust = pinned(source, algorithm, &hex, trust)?;
        let file = path.rsplit('/').next().unwrap_or(&path).to_owned();
        plain(&file, "file")?;
        let id = image_id(&source.name, &version, &file);
        let present = self
            .store
            .image(id)
            .map_err(|error| error.to_string())?
            .is_some_and(|record| record.status == ImageStatus::Active);
        let evidence = Evidence {
            sums_url: products_url.to_string(),
            sums_name: path.clone(),
            sidecar_for: None,
            sums: document,
            signature: None,
            file: path.clone(),
            algorithm: Some(algorithm),
            hex: hex.clone(),
            trust: trust.clone(),
            format: Some(STREAMS.to_owned()),
        };
        let candidate = Candidate {
            evidence,
            version,
            url: join(base, &path)?.to_string(),
            file,
            algorithm,
            hex,
            trust,
            image: id.to_string(),
            present,
            size,
        };
        Ok(Some((candidate, products_url.to_string(), seen)))
    }

    /// What a sync of `source` would do now: its newest version, verified, and whether it is
    /// here already. Nothing is downloaded but listings, digests and signatures.
    pub async fn plan(&self, catalog: &Catalog, source: &Source) -> Result<Candidate, String> {
        let fetcher = self.fetcher(source)?;
        self.resolve(catalog, source, &fetcher, None)
            .await?
            .map(|(candidate, _, _)| candidate)
            .ok_or_else(|| "the digest document answered 304 unasked".into())
    }

    /// `plan` as JSON, for any kind: a digest-file source's candidate, or a glance source's
    /// counts (its upstream listing against the copies here).
    pub async fn plan_value(
        &self,
        catalog: &Catalog,
        source: &Source,
    ) -> Result<serde_json::Value, String> {
        match &source.glance {
            Some(glance) => self.plan_glance(source, glance).await,
            None => serde_json::to_value(self.plan(catalog, source).await?)
                .map_err(|error| error.to_string()),
        }
    }

    /// Syncs one source now (backoff does not hold back a sync asked for).
    pub async fn sync(&self, catalog: &Catalog, source: &Source) -> Report {
        let _one = self.running.lock().await;
        let mut state = self.state(&source.name);
        let now = SystemTime::now();
        state.last_attempt = Some(now_secs(now));
        let outcome = self.sync_inner(catalog, source, &mut state).await;
        let report = match outcome {
            Ok((outcome, candidate, bytes, summary)) => {
                state.failures = 0;
                state.last_error = None;
                state.last_success = Some(now_secs(SystemTime::now()));
                state.next_run = Some(now_secs(now + source.refresh));
                state.last_bytes = bytes;
                if let Some(candidate) = &candidate {
                    state.version = Some(candidate.version.clone());
                    state.image = Some(candidate.image.clone());
                }
                Report {
                    source: source.name.clone(),
                    message: summary.unwrap_or_else(|| match outcome {
                        Outcome::Published => format!("published, {bytes} bytes downloaded"),
                        _ => "up to date".to_owned(),
                    }),
                    outcome,
                    version: state.version.clone(),
                    image: state.image.clone(),
                    bytes,
                }
            }
            Err((message, bytes)) => {
                state.failures = state.failures.saturating_add(1);
                state.last_error = Some(message.clone());
                state.last_bytes = bytes;
                state.next_run = Some(now_secs(now + backoff(state.failures)));
                tracing::warn!(source = %source.name, %message, "mirror sync failed");
                Report {
                    source: source.name.clone(),
                    outcome: Outcome::Failed,
                    version: None,
                    image: None,
                    bytes,
                    message,
                }
            }
        };
        if let Err(error) = self.save_state(&source.name, &state) {
            tracing::error!(source = %source.name, %error, "could not record the mirror's state");
        }
        report
    }

    async fn sync_inner(
        &self,
        catalog: &Catalog,
        source: &Source,
        state: &mut SourceState,
    ) -> Result<(Outcome, Option<Candidate>, u64, Option<String>), (String, u64)> {
        let fail = |message: String| (message, 0);
        let fetcher = self.fetcher(source).map_err(fail)?;
        if let Some(glance) = &source.glance {
            let edge = catalog
                .edge
                .as_ref()
                .filter(|edge| edge.source == source.name);
            let (outcome, bytes, summary) = self
                .sync_glance(source, glance, &fetcher, state, edge)
                .await?;
            return Ok((outcome, None, bytes, Some(summary)));
        }
        // The digest document is fetched conditionally only while the image it led to is
        // still here: otherwise it is read again.
        let current = state
            .image
            .as_deref()
            .and_then(ImageId::parse)
            .and_then(|id| self.store.image(id).ok().flatten())
            .filter(|record| {
                record.status == ImageStatus::Active && of_source(record, &source.name)
            });
        let seen_before = match (&current, &state.sums_url) {
            (Some(_), Some(url)) => Some((url.as_str(), &state.validators)),
            _ => None,
        };
        let resolved = self
            .resolve(catalog, source, &fetcher, seen_before)
            .await
            .map_err(fail)?;
        let Some((candidate, sums_url, seen)) = resolved else {
            return Ok((Outcome::UpToDate, None, 0, None));
        };
        state.sums_url = Some(sums_url);
        state.validators = seen;
        if candidate.present {
            let id = ImageId::parse(&candidate.image).ok_or_else(|| fail("bad id".into()))?;
            self.promote(source, id).map_err(fail)?;
            return Ok((Outcome::UpToDate, Some(candidate), 0, None));
        }
        let bytes = Arc::new(Mutex::new(0u64));
        let outcome = self
            .download_and_publish(source, &fetcher, &candidate, bytes.clone())
            .await;
        let moved = *bytes.lock().unwrap_or_else(|poison| poison.into_inner());
        outcome.map_err(|message| (message, moved))?;
        Ok((Outcome::Published, Some(candidate), moved, None))
    }

    async fn download_and_publish(
        &self,
        source: &Source,
        fetcher: &Fetcher,
        candidate: &Candidate,
        moved: Arc<Mutex<u64>>,
    ) -> Result<(), String> {
        let id = ImageId::parse(&candidate.image).ok_or("bad id")?;
        let url = reqwest::Url::parse(&candidate.url).map_err(|error| error.to_string())?;
        let cap = source.max_size.unwrap_or(self.cap).min(self.cap);
        let fetched = fetcher.get(url.clone()).await?;
        if let (Some(stated), Some(length)) = (candidate.size, fetched.length)
            && stated != length
        {
            return Err(format!(
                "{url} is {length} bytes; the signed index says {stated}"
            ));
        }
        if let Some(length) = fetched.length.or(candidate.size)
            && length > cap
        {
            return Err(format!(
                "{url} is {length} bytes, more than the {cap} allowed"
            ));
        }
        // The vendor's digest is computed in the same pass as the store's own hashes.
        let hasher = Arc::new(Mutex::new(Some(sums::Hasher::new(candidate.algorithm))));
        let feeding = hasher.clone();
        let counter = moved.clone();
        let body = fetched.body.map(move |item| {
            if let Ok(chunk) = &item {
                if let Some(hasher) = feeding
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .as_mut()
                {
                    hasher.update(chunk);
                }
                *counter.lock().unwrap_or_else(|poison| poison.into_inner()) += chunk.len() as u64;
            }
            item
        });
        let detached = self
            .store
            .receive_detached(
                body,
                fetched.length.or(candidate.size),
                cap,
                Some(&self.owner),
            )
            .await
            .map_err(|error| match error {
                StoreError::NoRoom { needed, available } => {
                    format!("no room for {url}: {needed} bytes needed, {available} available")
                }
                other => format!("downloading {url}: {other}"),
            })?;
        if let Some(length) = fetched.length.or(candidate.size)
            && length != detached.size()
        {
            return Err(format!(
                "{url} ended after {} of {length} bytes",
                detached.size()
            ));
        }
        let hex = hasher
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take()
            .ok_or("the digest was taken twice")?
            .finish_hex();
        if hex != candidate.hex {
            return Err(format!(
                "{} of {url} is {hex}; the signed digest file says {}",
                candidate.algorithm, candidate.hex
            ));
        }
        let virtual_size = crate::blob::inspect::check_upload(
            &source.disk_format,
            &source.container_format,
            detached.inspection(),
        )
        .map_err(|error| format!("{url}: {error}"))?;
        let store = self.store.clone();
        let record = self.new_record(source, candidate, id);
        let source_name = source.name.clone();
        let (keep, hide_old) = (source.keep as usize, source.hide_old);
        let evidence =
            serde_json::to_vec(&candidate.evidence).map_err(|error| error.to_string())?;
        let published = tokio::task::spawn_blocking(move || {
            store.publish::<StoreError>(
                detached,
                virtual_size,
                |record| of_source(record, &source_name),
                move |selected, data| {
                    let mut record = record;
                    record.data = Some(data);
                    let mut batch = succession(selected, Some(record), id, keep, hide_old);
                    batch.evidence.push((id, evidence));
                    Ok(batch)
                },
            )
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        if published.is_none() {
            return Err(format!(
                "image {id} of version {} was deleted here before; ids are never reused",
                candidate.version
            ));
        }
        tracing::info!(source = %source.name, version = %candidate.version, image = %id, "mirror published a new version");
        Ok(())
    }

    fn new_record(&self, source: &Source, candidate: &Candidate, id: ImageId) -> ImageRecord {
        let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000;
        let mut properties = source.properties.clone();
        for (key, value) in [
            (PROP_SOURCE, source.name.as_str()),
            (PROP_VERSION, candidate.version.as_str()),
            (PROP_URL, candidate.url.as_str()),
            (PROP_TRUST, candidate.trust.as_str()),
            (PROP_LATEST, "true"),
        ] {
            properties.insert(key.to_owned(), value.to_owned());
        }
        properties.insert(
            PROP_DIGEST.to_owned(),
            format!("{}:{}", candidate.algorithm, candidate.hex),
        );
        let mut tags = source.tags.clone();
        tags.retain(|tag| tag != LATEST_TAG);
        tags.push(LATEST_TAG.to_owned());
        ImageRecord {
            name: Some(source.name.clone()),
            status: ImageStatus::Active,
            visibility: Visibility::parse(&source.visibility).unwrap_or(Visibility::Public),
            disk_format: Some(source.disk_format.clone()),
            container_format: Some(source.container_format.clone()),
            tags,
            properties,
            ..ImageRecord::new(id, Some(self.owner.clone()), now)
        }
    }

    /// Makes an image that is here already the source's newest (a second sync, or a catalog
    /// whose newest version went back): renames and retags in one transaction.
    fn promote(&self, source: &Source, id: ImageId) -> Result<(), String> {
        let name = source.name.clone();
        let (keep, hide_old) = (source.keep as usize, source.hide_old);
        self.store
            .change_images::<StoreError>(
                |record| of_source(record, &name),
                |selected| Ok(succession(selected, None, id, keep, hide_old)),
            )
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

/// The images of a source after the image `newest` takes the name: it is named after the
/// source, tagged `latest` and not hidden; the others are named `<name> (<version>)`, lose the
/// tag, are hidden with `hide_old`, and beyond `keep` (newest versions first) are deleted
/// unless protected. `new` is inserted (unless it falls beyond `keep`); of the `existing`
/// records, only those that change are written.
pub fn succession(
    existing: Vec<ImageRecord>,
    new: Option<ImageRecord>,
    newest: ImageId,
    keep: usize,
    hide_old: bool,
) -> Batch {
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000;
    let mut batch = Batch {
        deleted_at: now,
        ..Batch::default()
    };
    let new_id = new.as_ref().map(|record| record.id);
    let mut all: Vec<ImageRecord> = existing
        .into_iter()
        .filter(|record| Some(record.id) != new_id)
        .collect();
    all.extend(new);
    let Some(position) = all.iter().position(|record| record.id == newest) else {
        return batch;
    };
    let head = all.remove(position);
    let name = head
        .properties
        .get(PROP_SOURCE)
        .cloned()
        .unwrap_or_default();
    let mut others = all;
    others.sort_by(|a, b| {
        discover::compare_versions(&version_of(b), &version_of(a))
            .then(b.created_at.cmp(&a.created_at))
    });
    let write = |before: ImageRecord, mut after: ImageRecord, batch: &mut Batch| {
        if Some(after.id) == new_id {
            batch.insert.push(after);
        } else if after != before {
            after.updated_at = now.max(before.updated_at);
            batch.update.push(after);
        }
    };
    let mut changed = head.clone();
    changed.name = Some(name.clone());
    changed.os_hidden = false;
    if !changed.tags.iter().any(|tag| tag == LATEST_TAG) {
        changed.tags.push(LATEST_TAG.to_owned());
    }
    changed
        .properties
        .insert(PROP_LATEST.to_owned(), "true".to_owned());
    write(head, changed, &mut batch);
    for (index, record) in others.into_iter().enumerate() {
        // `keep` counts the newest too.
        if index + 1 >= keep && !record.protected {
            if Some(record.id) != new_id {
                batch.delete.push(record.id);
            }
            continue;
        }
        let mut changed = record.clone();
        changed.name = Some(format!("{name} ({})", version_of(&record)));
        changed.tags.retain(|tag| tag != LATEST_TAG);
        changed
            .properties
            .insert(PROP_LATEST.to_owned(), "false".to_owned());
        if hide_old {
            changed.os_hidden = true;
        }
        write(record, changed, &mut batch);
    }
    batch
}

/// A source's `pin`, if it has one, must be the digest found; without a signature, the pin is
/// what vouches (`pinned`).
fn pinned(
    source: &Source,
    algorithm: sums::Algorithm,
    hex: &str,
    trust: String,
) -> Result<String, String> {
    let Some((pinned_algorithm, pinned_hex)) = &source.pin else {
        return Ok(trust);
    };
    if *pinned_algorithm != algorithm || pinned_hex != hex {
        return Err(format!(
            "the source offers {algorithm}:{hex}, not the pinned {pinned_algorithm}:{pinned_hex}"
        ));
    }
    Ok(if matches!(source.signature, SignatureRule::None(_)) {
        "pinned".to_owned()
    } else {
        trust
    })
}

/// `Evidence::format` of a simplestreams products document.
pub const STREAMS: &str = "simplestreams";
/// The largest simplestreams document read.
const MAX_STREAMS_DOCUMENT: usize = openpgp::MAX_SIGNED_DOCUMENT;

/// The digest and size of a simplestreams item, found by its path: SHA-512 when given, else
/// SHA-256 (MD5 alone vouches for nothing).
fn item_digest(item: &serde_json::Value) -> Option<(sums::Algorithm, String, Option<u64>)> {
    let size = item["size"].as_u64();
    for (key, algorithm) in [
        ("sha512", sums::Algorithm::Sha512),
        ("sha256", sums::Algorithm::Sha256),
    ] {
        if let Some(hex) = item[key].as_str()
            && hex.len() == algorithm.hex_len()
            && hex.bytes().all(|byte| byte.is_ascii_hexdigit())
        {
            return Some((algorithm, hex.to_ascii_lowercase(), size));
        }
    }
    None
}

/// The item of a products document with this path, anywhere in it.
pub fn streams_item(
    products: &serde_json::Value,
    path: &str,
) -> Option<(sums::Algorithm, String, Option<u64>)> {
    products["products"]
        .as_object()?
        .values()
        .filter_map(|product| product["versions"].as_object())
        .flat_map(|versions| versions.values())
        .filter_map(|version| version["items"].as_object())
        .flat_map(|items| items.values())
        .find(|item| item["path"].as_str() == Some(path))
        .and_then(item_digest)
}

/// Whether a property is the mirror's own (read-only to clients).
pub fn is_mirror_property(key: &str) -> bool {
    key.starts_with(MIRROR_PREFIX)
}
