//! `kind = "glance"`: the images of an upstream Glance (or another ocellus), copied.
//!
//! Each sync signs in (an API key or token from a file, or Keystone v3 by application
//! credential or password; a 401 signs in again once), lists the upstream's active images page
//! by page (`limit`, `marker` through the `next` links, with the catalog's filters), and
//! copies each one it lacks: the bytes through the web-download fetcher, checked against the
//! upstream's size, `checksum` (MD5) and `os_hash_value` (in `os_hash_algo`), and by the format
//! inspector; the metadata with the configured property names and prefixes (never
//! `os_glance*`). Each image is published on its own transaction, under the upstream's id
//! unless `preserve_ids = false`. Copies already here get the upstream's current metadata.
//! An image gone from the upstream's listing is hidden (`os_hidden`) once it has been gone for
//! `delete_grace`, or deleted with `follow_deletes`; if it comes back, it is shown again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::{Value, json};

use super::catalog::{GlanceSource, Source, UpstreamAuth};
use super::sums;
use super::sync::{
    Evidence, Mirror, Outcome, PROP_DIGEST, PROP_LATEST, PROP_SOURCE, PROP_TRUST, PROP_URL,
    PROP_VERSION, SourceState, of_source,
};
use crate::fetch::Fetcher;
use crate::kv::{Batch, ImageId, ImageRecord, ImageStatus, Visibility};
use crate::store::StoreError;

/// The upstream id of a copy.
pub const PROP_UPSTREAM_ID: &str = "ocellus_mirror_upstream_id";
/// What the upstream states of the bytes: size, MD5 (`checksum`) and `algo:hex` of its
/// `os_hash_value`. An image whose bytes are not here yet (an edge's) is shown with these.
pub const PROP_UPSTREAM_SIZE: &str = "ocellus_mirror_upstream_size";
pub const PROP_UPSTREAM_CHECKSUM: &str = "ocellus_mirror_upstream_checksum";
pub const PROP_UPSTREAM_HASH: &str = "ocellus_mirror_upstream_hash";
/// Images listed per page.
const PAGE: usize = 100;
/// Pages read at most (a million images).
const MAX_PAGES: usize = 10_000;
/// The largest JSON answer read.
const MAX_JSON: usize = 16 << 20;

/// A signed-in upstream.
pub(super) struct Upstream<'a> {
    pub(super) fetcher: &'a Fetcher,
    pub(super) base: &'a reqwest::Url,
    pub(super) auth: &'a UpstreamAuth,
    pub(super) token: Option<String>,
}

fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let secret = text.lines().next().unwrap_or("").trim().to_owned();
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(secret)
}

impl Upstream<'_> {
    pub(super) async fn sign_in(&mut self) -> Result<(), String> {
        let (keystone, identity, scope) = match self.auth {
            UpstreamAuth::None => {
                self.token = None;
                return Ok(());
            }
            UpstreamAuth::Key(path) => {
                self.token = Some(read_secret(path)?);
                return Ok(());
            }
            UpstreamAuth::AppCredential {
                keystone,
                id,
                secret_file,
            } => (
                keystone,
                json!({"methods": ["application_credential"],
                       "application_credential": {"id": id, "secret": read_secret(secret_file)?}}),
                None,
            ),
            UpstreamAuth::Password {
                keystone,
                username,
                password_file,
                project,
                user_domain,
                project_domain,
            } => (
                keystone,
                json!({"methods": ["password"],
                       "password": {"user": {"name": username, "domain": {"name": user_domain},
                                             "password": read_secret(password_file)?}}}),
                Some(json!({"project": {"name": project, "domain": {"name": project_domain}}})),
            ),
        };
        let mut auth = json!({"identity": identity});
        if let Some(scope) = scope {
            auth["scope"] = scope;
        }
        let url = keystone
            .join("auth/tokens")
            .map_err(|error| error.to_string())?;
        let body = serde_json::to_vec(&json!({ "auth": auth })).map_err(|e| e.to_string())?;
        let mut answer = self
            .fetcher
            .send(reqwest::Method::POST, url.clone(), &[], Some(body))
            .await?;
        if !answer.status.is_success() {
            return Err(format!("{url} answered {} to the sign-in", answer.status));
        }
        let _ = Fetcher::read_small(&mut answer.fetched, MAX_JSON).await;
        let token = answer
            .headers
            .get("x-subject-token")
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| format!("{url} gave no X-Subject-Token"))?;
        self.token = Some(token.to_owned());
        Ok(())
    }

    fn headers(&self) -> Vec<(&'static str, String)> {
        self.token
            .iter()
            .map(|token| ("x-auth-token", token.clone()))
            .collect()
    }

    /// GET with the token; a 401 signs in again once (the token expired).
    pub(super) async fn get(&mut self, url: reqwest::Url) -> Result<crate::fetch::Answer, String> {
        let answer = self
            .fetcher
            .send(reqwest::Method::GET, url.clone(), &self.headers(), None)
            .await?;
        if answer.status != reqwest::StatusCode::UNAUTHORIZED || self.token.is_none() {
            return Ok(answer);
        }
        self.sign_in().await?;
        self.fetcher
            .send(reqwest::Method::GET, url, &self.headers(), None)
            .await
    }

    async fn get_json(&mut self, url: reqwest::Url) -> Result<Value, String> {
        let mut answer = self.get(url.clone()).await?;
        if !answer.status.is_success() {
            return Err(format!("{url} answered {}", answer.status));
        }
        let bytes = Fetcher::read_small(&mut answer.fetched, MAX_JSON).await?;
        serde_json::from_slice(&bytes).map_err(|error| format!("{url}: {error}"))
    }

    /// Every active image the filters select.
    async fn list(&mut self, filters: &[(String, String)]) -> Result<Vec<Value>, String> {
        let mut url = self
            .base
            .join("v2/images")
            .map_err(|error| error.to_string())?;
        {
            // A `limit` among the filters sets the page size.
            let mut query = url.query_pairs_mut();
            if !filters.iter().any(|(key, _)| key == "limit") {
                query.append_pair("limit", &PAGE.to_string());
            }
            query.append_pair("status", "active");
            for (key, value) in filters {
                query.append_pair(key, value);
            }
        }
        let mut images = Vec::new();
        for _ in 0..MAX_PAGES {
            let page = self.get_json(url.clone()).await?;
            let listed = page["images"]
                .as_array()
                .ok_or_else(|| format!("{url} gave no image list"))?;
            images.extend(listed.iter().cloned());
            let Some(next) = page["next"].as_str() else {
                return Ok(images);
            };
            if listed.is_empty() {
                return Ok(images);
            }
            url = self
                .base
                .join(next.trim_start_matches('/'))
                .map_err(|error| error.to_string())?;
        }
        Err(format!("more than {MAX_PAGES} pages of images"))
    }
}

fn text(image: &Value, key: &str) -> Option<String> {
    image[key].as_str().map(str::to_owned)
}

/// The local id of an upstream image.
fn local_id(source: &Source, glance: &GlanceSource, upstream: &str) -> Option<ImageId> {
    let parsed = ImageId::parse(upstream)?;
    if glance.preserve_ids {
        return Some(parsed);
    }
    let name = format!("{}\n{upstream}", source.name);
    Some(ImageId(
        *uuid::Uuid::new_v5(&super::sync::ID_NAMESPACE, name.as_bytes()).as_bytes(),
    ))
}

/// The metadata a copy takes from its upstream image.
fn shaped(
    source: &Source,
    glance: &GlanceSource,
    image: &Value,
    mut record: ImageRecord,
) -> ImageRecord {
    let upstream = text(image, "id").unwrap_or_default();
    record.name = text(image, "name");
    record.visibility = Visibility::parse(&source.visibility).unwrap_or(Visibility::Public);
    record.disk_format = text(image, "disk_format");
    record.container_format = text(image, "container_format");
    record.min_ram = image["min_ram"].as_i64().unwrap_or(0);
    record.min_disk = image["min_disk"].as_i64().unwrap_or(0);
    record.os_hidden = false;
    let mut tags: Vec<String> = image["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tag| tag.as_str().map(str::to_owned))
        .collect();
    tags.extend(source.tags.iter().cloned());
    tags.sort();
    tags.dedup();
    record.tags = tags;
    let mut properties: BTreeMap<String, String> = record
        .properties
        .into_iter()
        .filter(|(key, _)| key.starts_with(super::catalog::MIRROR_PREFIX))
        .collect();
    if let Some(fields) = image.as_object() {
        for (key, value) in fields {
            if glance.copies(key)
                && let Some(value) = value.as_str()
            {
                properties.insert(key.clone(), value.to_owned());
            }
        }
    }
    properties.extend(source.properties.clone());
    let url = source
        .base_url
        .join(&format!("v2/images/{upstream}"))
        .map_or_else(|_| String::new(), |url| url.to_string());
    for (key, value) in [
        (PROP_SOURCE, source.name.clone()),
        (PROP_UPSTREAM_ID, upstream),
        (PROP_URL, url),
        (PROP_VERSION, text(image, "updated_at").unwrap_or_default()),
        (PROP_TRUST, format!("glance:{}", source.base_url)),
        (PROP_LATEST, "true".to_owned()),
    ] {
        properties.insert(key.to_owned(), value);
    }
    if let Some(size) = image["size"].as_u64() {
        properties.insert(PROP_UPSTREAM_SIZE.to_owned(), size.to_string());
    }
    if let Some(checksum) = text(image, "checksum") {
        properties.insert(PROP_UPSTREAM_CHECKSUM.to_owned(), checksum);
    }
    if let Some((algorithm, hex)) = upstream_hash(image) {
        properties.insert(PROP_UPSTREAM_HASH.to_owned(), format!("{algorithm}:{hex}"));
    }
    record.properties = properties;
    record
}

/// The hash an upstream states for its bytes, if we can check it.
fn upstream_hash(image: &Value) -> Option<(sums::Algorithm, String)> {
    let algorithm = match image["os_hash_algo"].as_str()? {
        "sha224" => sums::Algorithm::Sha224,
        "sha256" => sums::Algorithm::Sha256,
        "sha384" => sums::Algorithm::Sha384,
        "sha512" => sums::Algorithm::Sha512,
        _ => return None,
    };
    Some((
        algorithm,
        image["os_hash_value"].as_str()?.to_ascii_lowercase(),
    ))
}

/// What arrived from an upstream against the size and MD5 (`checksum`) it stated.
pub(super) fn check_size_and_md5(
    detached: &crate::store::Detached,
    url: &reqwest::Url,
    size: u64,
    checksum: Option<&str>,
) -> Result<(), String> {
    if detached.size() != size {
        return Err(format!(
            "{url} ended after {} of {size} bytes",
            detached.size()
        ));
    }
    if let Some(checksum) = checksum
        && detached.md5_hex() != checksum.to_ascii_lowercase()
    {
        return Err(format!(
            "MD5 {} is not the upstream's checksum {checksum}",
            detached.md5_hex()
        ));
    }
    Ok(())
}

fn now_micros() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000
}

fn now_secs() -> i64 {
    now_micros() / 1_000_000
}

impl Mirror {
    /// Syncs a `kind = "glance"` source; returns the outcome, bytes moved and a summary, or
    /// the reason and bytes moved.
    pub(super) async fn sync_glance(
        &self,
        source: &Source,
        glance: &GlanceSource,
        fetcher: &Fetcher,
        state: &mut SourceState,
        edge: Option<&super::catalog::EdgeSettings>,
    ) -> Result<(Outcome, u64, String), (String, u64)> {
        let mut upstream = Upstream {
            fetcher,
            base: &source.base_url,
            auth: &glance.auth,
            token: None,
        };
        upstream.sign_in().await.map_err(|error| (error, 0))?;
        // An edge lists only what changed since the last listing (`updated_at=gte:`), and the
        // whole catalog every `reconcile`, which is when deletions are seen.
        let full = match (edge, state.last_reconcile, &state.high_water) {
            (Some(edge), Some(last), Some(_)) => {
                now_secs() - last >= edge.reconcile.as_secs() as i64
            }
            _ => true,
        };
        let mut filters = glance.filters.clone();
        if !full && let Some(mark) = &state.high_water {
            filters.push(("updated_at".to_owned(), format!("gte:{mark}")));
        }
        let images = upstream.list(&filters).await.map_err(|error| (error, 0))?;
        let high_water = images
            .iter()
            .filter_map(|image| image["updated_at"].as_str())
            .max()
            .map(str::to_owned);
        let store = self.store().clone();
        let name = source.name.clone();
        let mine: Vec<ImageRecord> = tokio::task::spawn_blocking(move || store.all_images())
            .await
            .map_err(|error| (error.to_string(), 0))?
            .map_err(|error| (error.to_string(), 0))?
            .into_iter()
            .filter(|record| of_source(record, &name))
            .collect();
        let mut moved = 0u64;
        let (mut copied, mut updated) = (0usize, 0usize);
        let mut failures = Vec::new();
        let mut listed = std::collections::HashSet::new();
        for image in &images {
            let Some(upstream_id) = text(image, "id") else {
                continue;
            };
            let Some(id) = local_id(source, glance, &upstream_id) else {
                failures.push(format!("{upstream_id}: not an image id"));
                continue;
            };
            listed.insert(id);
            match mine.iter().find(|record| record.id == id) {
                Some(record) => {
                    let fresh = shaped(source, glance, image, record.clone());
                    if fresh != *record {
                        let store = self.store().clone();
                        let source_name = source.name.clone();
                        let fresh_id = fresh.id;
                        let changed = tokio::task::spawn_blocking(move || {
                            store.change_images::<StoreError>(
                                |candidate| {
                                    candidate.id == fresh_id && of_source(candidate, &source_name)
                                },
                                |_| {
                                    let mut fresh = fresh;
                                    fresh.updated_at = now_micros();
                                    Ok(Batch {
                                        update: vec![fresh],
                                        ..Batch::default()
                                    })
                                },
                            )
                        })
                        .await;
                        match changed {
                            Ok(Ok(_)) => updated += 1,
                            Ok(Err(error)) => failures.push(format!("{upstream_id}: {error}")),
                            Err(error) => failures.push(format!("{upstream_id}: {error}")),
                        }
                    }
                }
                None if edge.is_some() => {
                    // An edge takes the metadata now and the bytes on the first download.
                    let store = self.store().clone();
                    let record = shaped(source, glance, image, self.blank(id));
                    let inserted = tokio::task::spawn_blocking(move || {
                        store.change_images::<StoreError>(
                            |_| false,
                            |_| {
                                Ok(Batch {
                                    insert: vec![record],
                                    ..Batch::default()
                                })
                            },
                        )
                    })
                    .await;
                    match inserted {
                        Ok(Ok(true)) => copied += 1,
                        Ok(Ok(false)) => {
                            failures.push(format!("{upstream_id}: the id is or was in use here"))
                        }
                        Ok(Err(error)) => failures.push(format!("{upstream_id}: {error}")),
                        Err(error) => failures.push(format!("{upstream_id}: {error}")),
                    }
                }
                None => {
                    let counter = Arc::new(Mutex::new(0u64));
                    let outcome = self
                        .copy_one(source, glance, &mut upstream, image, id, counter.clone())
                        .await;
                    moved += *counter.lock().unwrap_or_else(|poison| poison.into_inner());
                    match outcome {
                        Ok(()) => copied += 1,
                        Err(error) => failures.push(format!("{upstream_id}: {error}")),
                    }
                }
            }
        }
        let retired = if full {
            self.retire_missing(source, glance, &mine, &listed, state)
                .map_err(|error| (error, moved))?
        } else {
            0
        };
        if failures.is_empty() {
            if full {
                state.last_reconcile = Some(now_secs());
            }
            if high_water.is_some() {
                state.high_water = high_water.max(state.high_water.clone());
            }
        }
        let summary = format!(
            "{} upstream image(s): {copied} copied, {updated} updated, {retired} hidden or deleted",
            images.len()
        );
        if !failures.is_empty() {
            return Err((format!("{summary}; failed: {}", failures.join("; ")), moved));
        }
        let outcome = if copied > 0 {
            Outcome::Published
        } else {
            Outcome::UpToDate
        };
        Ok((outcome, moved, summary))
    }

    /// A new active image of this mirror, without data or metadata yet.
    fn blank(&self, id: ImageId) -> ImageRecord {
        let now = now_micros();
        ImageRecord {
            status: ImageStatus::Active,
            visibility: Visibility::Public,
            ..ImageRecord::new(id, Some(self.owner().to_owned()), now)
        }
    }

    /// What a sync would do: the upstream's images and how many are not here yet.
    pub(super) async fn plan_glance(
        &self,
        source: &Source,
        glance: &GlanceSource,
    ) -> Result<Value, String> {
        let fetcher = self.fetcher(source)?;
        let mut upstream = Upstream {
            fetcher: &fetcher,
            base: &source.base_url,
            auth: &glance.auth,
            token: None,
        };
        upstream.sign_in().await?;
        let images = upstream.list(&glance.filters).await?;
        let mut missing = 0;
        for image in &images {
            let id = text(image, "id").and_then(|id| local_id(source, glance, &id));
            let store = self.store().clone();
            let present = match id {
                Some(id) => tokio::task::spawn_blocking(move || store.image(id))
                    .await
                    .map_err(|error| error.to_string())?
                    .map_err(|error| error.to_string())?
                    .is_some(),
                None => false,
            };
            if !present {
                missing += 1;
            }
        }
        Ok(
            json!({"upstream": source.base_url.to_string(), "upstream_images": images.len(), "to_copy": missing}),
        )
    }

    async fn copy_one(
        &self,
        source: &Source,
        glance: &GlanceSource,
        upstream: &mut Upstream<'_>,
        image: &Value,
        id: ImageId,
        moved: Arc<Mutex<u64>>,
    ) -> Result<(), String> {
        let upstream_id = text(image, "id").unwrap_or_default();
        let size = image["size"].as_u64().ok_or("the upstream gives no size")?;
        let checksum = text(image, "checksum");
        let hash = upstream_hash(image);
        if checksum.is_none() && hash.is_none() {
            return Err("the upstream gives neither checksum nor a known os_hash_algo".into());
        }
        let cap = source.max_size.unwrap_or(self.cap()).min(self.cap());
        if size > cap {
            return Err(format!("{size} bytes, more than the {cap} allowed"));
        }
        let url = source
            .base_url
            .join(&format!("v2/images/{upstream_id}/file"))
            .map_err(|error| error.to_string())?;
        let answer = upstream.get(url.clone()).await?;
        if !answer.status.is_success() {
            return Err(format!("{url} answered {}", answer.status));
        }
        let fetched = answer.fetched;
        if fetched.length.is_some_and(|length| length != size) {
            return Err(format!(
                "{url} announces {:?} bytes, the image {size}",
                fetched.length
            ));
        }
        let hasher = Arc::new(Mutex::new(
            hash.as_ref()
                .map(|(algorithm, _)| sums::Hasher::new(*algorithm)),
        ));
        let feeding = hasher.clone();
        let body = fetched.body.map(move |item| {
            if let Ok(chunk) = &item {
                if let Some(hasher) = feeding
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .as_mut()
                {
                    hasher.update(chunk);
                }
                *moved.lock().unwrap_or_else(|poison| poison.into_inner()) += chunk.len() as u64;
            }
            item
        });
        // Exactly `size` bytes: one more is refused as it arrives.
        let detached = self
            .store()
            .receive_detached(body, Some(size), size, Some(self.owner()))
            .await
            .map_err(|error| format!("downloading {url}: {error}"))?;
        check_size_and_md5(&detached, &url, size, checksum.as_deref())?;
        let mut evidence = Evidence {
            sums_url: url.to_string(),
            file: upstream_id.clone(),
            trust: format!("glance:{}", source.base_url),
            ..Evidence::default()
        };
        if let Some((algorithm, expected)) = &hash {
            let hex = hasher
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .take()
                .map(sums::Hasher::finish_hex)
                .unwrap_or_default();
            if hex != *expected {
                return Err(format!(
                    "{algorithm} {hex} is not the upstream's os_hash_value {expected}"
                ));
            }
            evidence.algorithm = Some(*algorithm);
            evidence.hex = hex;
        }
        let disk_format = text(image, "disk_format").unwrap_or_default();
        let container_format = text(image, "container_format").unwrap_or_default();
        let virtual_size = crate::blob::inspect::check_upload(
            &disk_format,
            &container_format,
            detached.inspection(),
        )
        .map_err(|error| format!("{url}: {error}"))?;
        let mut record = shaped(source, glance, image, self.blank(id));
        if let Some(algorithm) = evidence.algorithm {
            record.properties.insert(
                PROP_DIGEST.to_owned(),
                format!("{algorithm}:{}", evidence.hex),
            );
        }
        let evidence = serde_json::to_vec(&evidence).map_err(|error| error.to_string())?;
        let store = self.store().clone();
        let published = tokio::task::spawn_blocking(move || {
            store.publish::<StoreError>(
                detached,
                virtual_size,
                |_| false,
                move |_, data| {
                    let mut record = record;
                    record.data = Some(data);
                    Ok(Batch {
                        insert: vec![record],
                        evidence: vec![(id, evidence)],
                        ..Batch::default()
                    })
                },
            )
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        match published {
            Some(()) => Ok(()),
            None => Err(format!("id {id} is or was in use here")),
        }
    }

    /// Hides (or deletes, with `follow_deletes`) copies whose upstream image has been gone from
    /// the listing for `delete_grace`; shows again those that came back. Returns how many were
    /// hidden or deleted now.
    fn retire_missing(
        &self,
        source: &Source,
        glance: &GlanceSource,
        mine: &[ImageRecord],
        listed: &std::collections::HashSet<ImageId>,
        state: &mut SourceState,
    ) -> Result<usize, String> {
        let now = now_secs();
        let grace = glance.delete_grace.as_secs() as i64;
        let mut batch = Batch {
            deleted_at: now_micros(),
            ..Batch::default()
        };
        let mut retired = 0;
        for record in mine {
            let key = record.id.to_string();
            if listed.contains(&record.id) {
                state.missing.remove(&key);
                continue;
            }
            let since = *state.missing.entry(key.clone()).or_insert(now);
            if now - since < grace {
                continue;
            }
            if glance.follow_deletes {
                if !record.protected {
                    batch.delete.push(record.id);
                    state.missing.remove(&key);
                    retired += 1;
                }
            } else if !record.os_hidden {
                let mut hidden = record.clone();
                hidden.os_hidden = true;
                hidden.updated_at = now_micros();
                batch.update.push(hidden);
                retired += 1;
            }
        }
        state
            .missing
            .retain(|key, _| mine.iter().any(|record| record.id.to_string() == *key));
        if batch.update.is_empty() && batch.delete.is_empty() {
            return Ok(0);
        }
        let name = source.name.clone();
        self.store()
            .change_images::<StoreError>(|record| of_source(record, &name), |_| Ok(batch))
            .map_err(|error| error.to_string())?;
        Ok(retired)
    }
}
