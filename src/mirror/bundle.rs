//! Air-gapped bundles and re-verification.
//!
//! `export` writes `manifest.json` (each mirrored image's metadata, digests, trust and the
//! vendor's digest document and signature as they were fetched), `blobs/<blake3>` (the
//! bytes, read back verified) and, given a secret key, `manifest.json.asc`, a detached
//! signature that `import --manifest-signer` requires. `import` trusts nothing in the bundle: it re-hashes every blob,
//! checks the vendor signature again with the local catalog's keyrings and rules (and
//! `--require-signer`), and publishes each image in one transaction, with the same id, so an
//! import is idempotent and a bad blob fails only its image. `verify` re-checks images in
//! place: the evidence against the local keys, the bytes against the evidence.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::catalog::Catalog;
use super::discover;
use super::openpgp;
use super::sums;
use super::sync::{
    Evidence, Mirror, PROP_DIGEST, PROP_SOURCE, PROP_VERSION, of_source, succession,
};
use crate::kv::{ImageId, ImageRecord, ImageStatus, Visibility};
use crate::store::StoreError;

pub const MANIFEST: &str = "manifest.json";
/// The manifest's detached OpenPGP signature, when the export was signed.
pub const MANIFEST_SIGNATURE: &str = "manifest.json.asc";
pub const FORMAT: &str = "ocellus-mirror-bundle/1";
/// The largest manifest read.
const MAX_MANIFEST: u64 = 64 << 20;
/// Bytes read from a bundle blob at a time.
const CHUNK: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub images: Vec<BundleImage>,
}

/// One image of a bundle.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BundleImage {
    pub id: String,
    pub name: String,
    pub source: String,
    pub version: String,
    pub disk_format: String,
    pub container_format: String,
    pub visibility: String,
    pub min_ram: i64,
    pub min_disk: i64,
    pub tags: Vec<String>,
    pub properties: BTreeMap<String, String>,
    pub created_at: i64,
    pub size: u64,
    /// BLAKE3 of the bytes: the blob's file name in `blobs/`.
    pub blake3: String,
    pub trust: String,
    pub evidence: Evidence,
}

/// What happened to one image.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ItemReport {
    pub id: String,
    pub name: String,
    pub ok: bool,
    pub message: String,
}

fn item(id: &str, name: &str, outcome: Result<String, String>) -> ItemReport {
    let ok = outcome.is_ok();
    let message = outcome.unwrap_or_else(|error| error);
    ItemReport {
        id: id.to_owned(),
        name: name.to_owned(),
        ok,
        message,
    }
}

fn blocking_error(error: tokio::task::JoinError) -> String {
    error.to_string()
}

/// The active mirrored images of `names` (all sources when empty), oldest version first.
async fn mirrored(mirror: &Mirror, names: &[String]) -> Result<Vec<ImageRecord>, String> {
    let store = mirror.store().clone();
    let mut records = tokio::task::spawn_blocking(move || store.all_images())
        .await
        .map_err(blocking_error)?
        .map_err(|error| error.to_string())?;
    records.retain(|record| {
        record.status == ImageStatus::Active
            && record
                .properties
                .get(PROP_SOURCE)
                .is_some_and(|source| names.is_empty() || names.iter().any(|name| name == source))
    });
    records.sort_by(|a, b| {
        a.properties[PROP_SOURCE]
            .cmp(&b.properties[PROP_SOURCE])
            .then_with(|| {
                discover::compare_versions(
                    a.properties.get(PROP_VERSION).map_or("", String::as_str),
                    b.properties.get(PROP_VERSION).map_or("", String::as_str),
                )
            })
    });
    Ok(records)
}

async fn evidence_of(mirror: &Mirror, id: ImageId) -> Result<Evidence, String> {
    let store = mirror.store().clone();
    let bytes = tokio::task::spawn_blocking(move || store.mirror_evidence(id))
        .await
        .map_err(blocking_error)?
        .map_err(|error| error.to_string())?
        .ok_or("no evidence is kept for this image")?;
    serde_json::from_slice(&bytes).map_err(|error| format!("unreadable evidence: {error}"))
}

/// Streams an image's bytes, verified by the store, through `each`.
async fn read_verified(
    mirror: &Mirror,
    record: &ImageRecord,
    mut each: impl FnMut(&[u8]) -> Result<(), String>,
) -> Result<(), String> {
    let data = record.data.as_ref().ok_or("the image has no data")?;
    let stream = mirror
        .store()
        .download(data, 0, data.size)
        .await
        .map_err(|error| error.to_string())?;
    futures_util::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        each(&chunk.map_err(|error| format!("reading the image: {error}"))?)?;
    }
    Ok(())
}

/// Checks an image's evidence with the local catalog (when the source is in it) and its bytes
/// against the evidence.
async fn verify_one(
    mirror: &Mirror,
    catalog: Option<&Catalog>,
    record: &ImageRecord,
) -> Result<String, String> {
    let evidence = evidence_of(mirror, record.id).await?;
    let source_name = &record.properties[PROP_SOURCE];
    let mut said = String::new();
    match catalog.and_then(|catalog| catalog.source(source_name).map(|s| (catalog, s))) {
        Some((_, source)) if source.glance.is_some() => {
            said.push_str(&format!("{}; ", evidence.trust));
        }
        Some((catalog, source)) => {
            let trust = evidence.check_for(catalog, source)?;
            said.push_str(&format!("{trust}; "));
        }
        None => said.push_str("not in the catalog, signature not checked; "),
    }
    let Some(algorithm) = evidence.algorithm else {
        // Only an upstream Glance's MD5 was there to check: the store's own BLAKE3 read is
        // what is left to do.
        read_verified(mirror, record, |_| Ok(())).await?;
        said.push_str("read back verified (no upstream hash to compare)");
        return Ok(said);
    };
    let mut hasher = Some(sums::Hasher::new(algorithm));
    read_verified(mirror, record, |chunk| {
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(chunk);
        }
        Ok(())
    })
    .await?;
    let hex = hasher
        .take()
        .map(sums::Hasher::finish_hex)
        .unwrap_or_default();
    if hex != evidence.hex {
        return Err(format!(
            "the bytes hash to {algorithm} {hex}, the vendor said {}",
            evidence.hex
        ));
    }
    said.push_str(&format!("{algorithm} matches"));
    Ok(said)
}

/// `ocellus mirror verify`.
pub async fn verify(
    mirror: &Mirror,
    catalog: Option<&Catalog>,
    names: &[String],
) -> Result<Vec<ItemReport>, String> {
    let mut reports = Vec::new();
    for record in mirrored(mirror, names).await? {
        let name = record.name.clone().unwrap_or_default();
        let outcome = verify_one(mirror, catalog, &record).await;
        reports.push(item(&record.id.to_string(), &name, outcome));
    }
    Ok(reports)
}

/// `ocellus mirror export --out DIR`: into a new or empty directory.
pub async fn export(
    mirror: &Mirror,
    out: &Path,
    names: &[String],
    sign_key: Option<&Path>,
) -> Result<Vec<ItemReport>, String> {
    // A key that cannot sign is found out before anything is written.
    let secret = sign_key
        .map(|path| std::fs::read(path).map_err(|error| format!("{}: {error}", path.display())))
        .transpose()?;
    let describe = |error: std::io::Error| format!("{}: {error}", out.display());
    std::fs::create_dir_all(out.join("blobs")).map_err(describe)?;
    let entries = std::fs::read_dir(out).map_err(describe)?.count();
    let blobs = std::fs::read_dir(out.join("blobs"))
        .map_err(describe)?
        .count();
    if entries != 1 || blobs != 0 {
        return Err(format!("{} must be new or empty", out.display()));
    }
    let mut images = Vec::new();
    let mut reports = Vec::new();
    for record in mirrored(mirror, names).await? {
        let name = record.name.clone().unwrap_or_default();
        let outcome = export_one(mirror, out, &record).await;
        match outcome {
            Ok(image) => {
                reports.push(item(&image.id, &name, Ok(format!("{} bytes", image.size))));
                images.push(image);
            }
            Err(error) => reports.push(item(&record.id.to_string(), &name, Err(error))),
        }
    }
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        images,
    };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|error| error.to_string())?;
    if let Some(secret) = &secret {
        let signature = openpgp::sign_detached(secret, &text)?;
        write_synced(&out.join(MANIFEST_SIGNATURE), &signature).map_err(describe)?;
    }
    write_synced(&out.join(MANIFEST), &text).map_err(describe)?;
    Ok(reports)
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temp = path.with_extension("part");
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

async fn export_one(
    mirror: &Mirror,
    out: &Path,
    record: &ImageRecord,
) -> Result<BundleImage, String> {
    let evidence = evidence_of(mirror, record.id).await?;
    let data = record.data.as_ref().ok_or("the image has no data")?;
    let blake3 = data.digest.to_hex();
    let path = out.join("blobs").join(&blake3);
    if !path.exists() {
        let temp = path.with_extension("part");
        let file = std::sync::Mutex::new(
            std::fs::File::create(&temp).map_err(|error| format!("{}: {error}", temp.display()))?,
        );
        read_verified(mirror, record, |chunk| {
            use std::io::Write;
            file.lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .write_all(chunk)
                .map_err(|error| format!("{}: {error}", temp.display()))
        })
        .await?;
        let file = file
            .into_inner()
            .unwrap_or_else(|poison| poison.into_inner());
        file.sync_all()
            .and_then(|()| std::fs::rename(&temp, &path))
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    let property = |key: &str| record.properties.get(key).cloned().unwrap_or_default();
    Ok(BundleImage {
        id: record.id.to_string(),
        name: record.name.clone().unwrap_or_default(),
        source: property(PROP_SOURCE),
        version: property(PROP_VERSION),
        disk_format: record.disk_format.clone().unwrap_or_default(),
        container_format: record.container_format.clone().unwrap_or_default(),
        visibility: record.visibility.as_str().to_owned(),
        min_ram: record.min_ram,
        min_disk: record.min_disk,
        tags: record.tags.clone(),
        properties: record.properties.clone(),
        created_at: record.created_at,
        size: data.size,
        blake3,
        trust: evidence.trust.clone(),
        evidence,
    })
}

/// `ocellus mirror import DIR`.
pub async fn import(
    mirror: &Mirror,
    catalog: &Catalog,
    dir: &Path,
    require_signer: Option<&str>,
    manifest_signer: Option<(&Path, &str)>,
) -> Result<Vec<ItemReport>, String> {
    let path = dir.join(MANIFEST);
    let size = std::fs::metadata(&path)
        .map_err(|error| format!("{}: {error}", path.display()))?
        .len();
    if size > MAX_MANIFEST {
        return Err(format!(
            "{} is larger than {MAX_MANIFEST} bytes",
            path.display()
        ));
    }
    let text = std::fs::read(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    // With a manifest signer named, the whole bundle stands or falls with its signature.
    if let Some((keyring, signer)) = manifest_signer {
        let keyring = openpgp::Keyring::load(keyring)?;
        let signer = openpgp::normalize_fingerprint(signer)?;
        let signature_path = dir.join(MANIFEST_SIGNATURE);
        let signature = std::fs::read(&signature_path)
            .map_err(|error| format!("{}: {error}", signature_path.display()))?;
        openpgp::verify_detached(
            &keyring,
            std::slice::from_ref(&signer),
            &text,
            &signature,
            std::time::SystemTime::now(),
        )
        .map_err(|error| format!("the manifest's signature: {error}"))?;
    }
    let manifest: Manifest =
        serde_json::from_slice(&text).map_err(|error| format!("{}: {error}", path.display()))?;
    if manifest.format != FORMAT {
        return Err(format!(
            "{}: format {:?} is not {FORMAT}",
            path.display(),
            manifest.format
        ));
    }
    let require = require_signer
        .map(openpgp::normalize_fingerprint)
        .transpose()?;
    let mut reports = Vec::new();
    for image in &manifest.images {
        let outcome = import_one(mirror, catalog, dir, image, require.as_deref()).await;
        reports.push(item(&image.id, &image.name, outcome));
    }
    Ok(reports)
}

/// Reads a bundle blob as a stream, refusing more than `limit` bytes.
fn file_stream(
    file: std::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send {
    let file = Arc::new(Mutex::new(file));
    futures_util::stream::unfold(Some(file), |file| async move {
        let file = file?;
        let reading = file.clone();
        let chunk = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buffer = vec![0u8; CHUNK];
            let mut file = reading.lock().unwrap_or_else(|poison| poison.into_inner());
            let count = file.read(&mut buffer)?;
            buffer.truncate(count);
            Ok::<_, std::io::Error>(buffer)
        })
        .await;
        match chunk {
            Ok(Ok(buffer)) if buffer.is_empty() => None,
            Ok(Ok(buffer)) => Some((Ok(bytes::Bytes::from(buffer)), Some(file))),
            Ok(Err(error)) => Some((Err(error.to_string()), None)),
            Err(error) => Some((Err(error.to_string()), None)),
        }
    })
}

async fn import_one(
    mirror: &Mirror,
    catalog: &Catalog,
    dir: &Path,
    image: &BundleImage,
    require: Option<&str>,
) -> Result<String, String> {
    let id = ImageId::parse(&image.id).ok_or("not an image id")?;
    let store = mirror.store().clone();
    let present = tokio::task::spawn_blocking(move || store.image(id))
        .await
        .map_err(blocking_error)?
        .map_err(|error| error.to_string())?;
    if let Some(record) = present {
        return if record.status == ImageStatus::Active
            && record.data.as_ref().map(|data| data.digest.to_hex()) == Some(image.blake3.clone())
        {
            Ok("already here".to_owned())
        } else {
            Err("an image with this id is here with other contents".to_owned())
        };
    }
    let source = catalog
        .source(&image.source)
        .filter(|source| source.glance.is_none())
        .ok_or_else(|| {
        format!(
            "source {:?} is not a digest-file source of this catalog: no keys or rule to check it with",
            image.source
        )
    })?;
    // The vendor's signature, checked with this host's keys and rule.
    let trust = image.evidence.check_for(catalog, source)?;
    if let Some(required) = require
        && trust != format!("openpgp:{required}")
    {
        return Err(format!("signed as {trust}, not by the required {required}"));
    }
    let algorithm = image
        .evidence
        .algorithm
        .ok_or("the evidence names no algorithm")?;
    let digest = format!("{algorithm}:{}", image.evidence.hex);
    if image.properties.get(PROP_DIGEST) != Some(&digest)
        || image.properties.get(PROP_SOURCE) != Some(&image.source)
    {
        return Err("the image's properties disagree with its evidence".to_owned());
    }
    if image.blake3.len() != 64 || !image.blake3.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return Err("not a blob name".to_owned());
    }
    let path = dir.join("blobs").join(&image.blake3);
    let file =
        std::fs::File::open(&path).map_err(|error| format!("{}: {error}", path.display()))?;
    // Re-hashed on the way in: BLAKE3, MD5 and SHA-512 by the store, the vendor's here.
    let hasher = Arc::new(Mutex::new(Some(sums::Hasher::new(algorithm))));
    let feeding = hasher.clone();
    let body = file_stream(file).map(move |item| {
        if let Ok(chunk) = &item
            && let Some(hasher) = feeding
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .as_mut()
        {
            hasher.update(chunk);
        }
        item
    });
    let cap = source.max_size.unwrap_or(mirror.cap()).min(mirror.cap());
    let detached = mirror
        .store()
        .receive_detached(body, Some(image.size), cap, Some(mirror.owner()))
        .await
        .map_err(|error| error.to_string())?;
    let hex = hasher
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .take()
        .map(sums::Hasher::finish_hex)
        .unwrap_or_default();
    if detached.digest_hex() != image.blake3 || detached.size() != image.size {
        return Err("the blob's bytes are not the ones the manifest names".to_owned());
    }
    if hex != image.evidence.hex {
        return Err(format!(
            "the blob hashes to {algorithm} {hex}, the vendor said {}",
            image.evidence.hex
        ));
    }
    let virtual_size = crate::blob::inspect::check_upload(
        &image.disk_format,
        &image.container_format,
        detached.inspection(),
    )?;
    let mut properties = image.properties.clone();
    properties.insert(super::sync::PROP_TRUST.to_owned(), trust.clone());
    let now = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000;
    let record = ImageRecord {
        name: Some(image.name.clone()),
        status: ImageStatus::Active,
        visibility: Visibility::parse(&image.visibility).unwrap_or(Visibility::Public),
        disk_format: Some(image.disk_format.clone()),
        container_format: Some(image.container_format.clone()),
        min_ram: image.min_ram,
        min_disk: image.min_disk,
        updated_at: now,
        tags: image.tags.clone(),
        properties,
        ..ImageRecord::new(id, Some(mirror.owner().to_owned()), image.created_at)
    };
    let evidence = serde_json::to_vec(&image.evidence).map_err(|error| error.to_string())?;
    let (keep, hide_old) = (source.keep as usize, source.hide_old);
    let source_name = image.source.clone();
    let store = mirror.store().clone();
    let published = tokio::task::spawn_blocking(move || {
        store.publish::<StoreError>(
            detached,
            virtual_size,
            |record| of_source(record, &source_name),
            move |selected, data| {
                let mut record = record;
                record.data = Some(data);
                // The newest version holds the name, whichever arrived last.
                let newest = selected
                    .iter()
                    .chain(std::iter::once(&record))
                    .max_by(|a, b| {
                        discover::compare_versions(
                            a.properties.get(PROP_VERSION).map_or("", String::as_str),
                            b.properties.get(PROP_VERSION).map_or("", String::as_str),
                        )
                    })
                    .map_or(id, |newest| newest.id);
                let mut batch = succession(selected, Some(record), newest, keep, hide_old);
                if batch.insert.iter().any(|record| record.id == id) {
                    batch.evidence.push((id, evidence));
                }
                Ok(batch)
            },
        )
    })
    .await
    .map_err(blocking_error)?
    .map_err(|error| error.to_string())?;
    match published {
        Some(()) => Ok(format!("imported ({trust})")),
        None => Err("this id was deleted here before; ids are never reused".to_owned()),
    }
}
