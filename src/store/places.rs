//! Glance's multiple stores: the places a copy of an image's bytes can live.
//!
//! Each configured store is a `Place`: an id (Glance's store identifier), a blob backend (the
//! data directory, or an S3 bucket) and how it is shown in `/v2/info/stores`. The catalog counts
//! references per copy (`kv::BlobCopy`: a digest in a store), so a blob may be in several
//! places and each copy goes when the last image naming that store lets it go:
//! - in the data directory, at once (as with one store);
//! - in a bucket, after the store's grace period: the copy's removal intent stays in the
//!   catalog, and `sweep` removes the object once the intent is old enough and nothing
//!   references it again. An upload of the same bytes within the grace finds the object in
//!   place (`HEAD`) and cancels the intent when it commits: no bytes move.
//!
//! Uploads write the intent before they place bytes under a content address, and commit the
//! reference under the same per-digest lock the sweep takes, so the sweep never removes an
//! object an upload is about to reference.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::{Store, StoreError, blocking};
use crate::blob::s3::S3Settings;
use crate::blob::{BlobError, BlobStore, ReceiveLimits};
use crate::kv::{BlobCopy, Digest, ImageData, ImageId, ImageRecord, ImageStatus, KvError};

/// What backs a configured store.
#[derive(Clone, Debug)]
pub enum BackendSpec {
    /// The data directory's `blobs/` (at most one store).
    File,
    /// A bucket on an S3 engine.
    S3(S3Settings),
}

/// One store as configured.
#[derive(Clone, Debug)]
pub struct StoreSpec {
    pub id: String,
    pub description: Option<String>,
    /// Glance's store weight: downloads read from the heaviest store holding the bytes first.
    pub weight: i64,
    /// How long an unreferenced object stays before the sweep removes it (buckets only; the
    /// data directory removes at once and keeps crash leftovers in quarantine).
    pub grace: Duration,
    pub backend: BackendSpec,
}

/// Every configured store and the default one.
#[derive(Clone, Debug)]
pub struct StoreSet {
    pub stores: Vec<StoreSpec>,
    /// The id of the store uploads go to when the request names none.
    pub default: String,
}

/// The store id of the data directory when nothing else is configured, as Glance's file store
/// is commonly called; records written before stores existed name it.
pub const DEFAULT_STORE: &str = crate::kv::LEGACY_STORE;

impl Default for StoreSet {
    fn default() -> StoreSet {
        StoreSet {
            stores: vec![StoreSpec {
                id: DEFAULT_STORE.into(),
                description: None,
                weight: 0,
                grace: Duration::from_secs(3600),
                backend: BackendSpec::File,
            }],
            default: DEFAULT_STORE.into(),
        }
    }
}

/// A configured store, open.
pub struct Place {
    pub spec: StoreSpec,
    pub(super) blobs: BlobStore,
}

impl Place {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Whether an unreferenced copy goes at once (the data directory) or after the grace.
    pub fn removes_at_once(&self) -> bool {
        matches!(self.spec.backend, BackendSpec::File)
    }

    pub fn kind(&self) -> &'static str {
        match self.spec.backend {
            BackendSpec::File => "file",
            BackendSpec::S3(_) => "s3",
        }
    }
}

/// A store as `/v2/info/stores` shows it.
#[derive(Clone, Debug)]
pub struct StoreInfo {
    pub id: String,
    pub description: Option<String>,
    pub default: bool,
    pub kind: &'static str,
    pub weight: i64,
    /// `(name, value)` pairs for the detailed view (never credentials).
    pub properties: Vec<(&'static str, serde_json::Value)>,
}

/// Why a store operation on one image was refused.
#[derive(Debug)]
pub enum CopyRefusal {
    UnknownStore(String),
    NotActive,
    NotInStore(String),
    OnlyCopy,
}

impl std::fmt::Display for CopyRefusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CopyRefusal::UnknownStore(store) => write!(formatter, "Unknown store '{store}'"),
            CopyRefusal::NotActive => formatter.write_str(
                "It's not allowed to remove image data from store if image status is not 'active'",
            ),
            CopyRefusal::NotInStore(store) => {
                write!(formatter, "The image does not exist in store '{store}'")
            }
            CopyRefusal::OnlyCopy => formatter.write_str(
                "Cannot delete image data from the only store containing it; delete the image instead",
            ),
        }
    }
}

impl Store {
    /// Every configured store, the default first flagged.
    pub fn store_infos(&self) -> Vec<StoreInfo> {
        self.places
            .iter()
            .enumerate()
            .map(|(index, place)| StoreInfo {
                id: place.spec.id.clone(),
                description: place.spec.description.clone(),
                default: index == self.default_place,
                kind: place.kind(),
                weight: place.spec.weight,
                properties: match &place.spec.backend {
                    BackendSpec::File => vec![
                        (
                            "data_dir",
                            self.data_dir.join("blobs").display().to_string().into(),
                        ),
                        ("content_addressed", true.into()),
                        ("thin_provisioning", false.into()),
                    ],
                    BackendSpec::S3(settings) => vec![
                        (
                            "endpoint",
                            settings
                                .endpoint
                                .clone()
                                .unwrap_or_else(|| "aws".into())
                                .into(),
                        ),
                        ("bucket", settings.bucket.clone().into()),
                        ("region", settings.region.clone().into()),
                        ("prefix", settings.prefix.clone().into()),
                        ("content_addressed", true.into()),
                        ("removal_grace_seconds", place.spec.grace.as_secs().into()),
                    ],
                },
            })
            .collect()
    }

    /// The ids of every configured store, the default first.
    pub fn store_ids(&self) -> Vec<String> {
        let default = self.places[self.default_place].spec.id.clone();
        let others = self
            .places
            .iter()
            .map(|place| place.spec.id.clone())
            .filter(|id| *id != default);
        std::iter::once(default.clone()).chain(others).collect()
    }

    /// The id of the store uploads go to by default.
    pub fn default_store(&self) -> &str {
        self.places[self.default_place].id()
    }

    /// Whether `id` names a configured store.
    pub fn has_store(&self, id: &str) -> bool {
        self.place_index(id).is_some()
    }

    /// Puts store ids in the order an image shows them (and Glance sorts its locations): the
    /// heaviest store first, ties by id.
    pub(super) fn sort_stores(&self, stores: &mut [String]) {
        let weight = |id: &str| {
            self.place_index(id)
                .map_or(i64::MIN, |index| self.places[index].spec.weight)
        };
        stores.sort_by(|left, right| {
            weight(right)
                .cmp(&weight(left))
                .then_with(|| left.cmp(right))
        });
    }

    pub(super) fn place_index(&self, id: &str) -> Option<usize> {
        self.places.iter().position(|place| place.spec.id == id)
    }

    /// The place of a store a request names; the HTTP layer refuses unknown ones first.
    pub(super) fn place_of(&self, id: &str) -> Result<usize, StoreError> {
        self.place_index(id).ok_or_else(|| {
            StoreError::Blob(BlobError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("unknown store {id}"),
            )))
        })
    }

    /// The places to read `data` from, in order: the heaviest store holding it first (ties in
    /// the image's own order), leaving out stores no longer configured and, when the blob was
    /// found damaged, the data directory whose copy the scrub checks.
    pub(super) fn read_order(&self, data: &ImageData, damaged: bool) -> Vec<usize> {
        let mut order: Vec<usize> = data
            .stores
            .iter()
            .filter_map(|id| self.place_index(id))
            .filter(|&index| !(damaged && index == self.home))
            .collect();
        order.sort_by_key(|&index| std::cmp::Reverse(self.places[index].spec.weight));
        order
    }

    /// How long a presigned download URL is valid.
    const PRESIGNED_VALID: Duration = Duration::from_secs(15 * 60);

    /// A presigned URL for the bytes of `data`, when the store downloads read first is a
    /// bucket with `presigned_downloads` on. Blocks.
    pub fn presigned_download(&self, data: &ImageData) -> Result<Option<String>, StoreError> {
        let damaged = self.kv.is_bad_blob(data.digest)?;
        let Some(&first) = self.read_order(data, damaged).first() else {
            return Ok(None);
        };
        Ok(self.places[first]
            .blobs
            .backend()
            .presigned_url(data.digest, Self::PRESIGNED_VALID)?)
    }

    /// Streams `length` bytes of `data` from `first`, verified, from the first store in
    /// `order` that works; when a store fails mid-way (unreachable, or bytes that fail
    /// verification), the stream goes on from the same offset with the next one. The bytes of
    /// every store are checked against the same digest, so the client cannot tell.
    pub(super) async fn read_places<K: Send + 'static>(
        self: &Arc<Self>,
        data: &ImageData,
        order: Vec<usize>,
        first: u64,
        length: u64,
        keep: K,
    ) -> Result<
        impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static + use<K>,
        StoreError,
    > {
        struct Reading<K> {
            store: Arc<Store>,
            digest: Digest,
            size: u64,
            order: Vec<usize>,
            next: usize,
            offset: u64,
            end: u64,
            current: Option<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>>,
            _keep: K,
        }
        let mut reading = Reading {
            store: self.clone(),
            digest: data.digest,
            size: data.size,
            order,
            next: 0,
            offset: first,
            end: first + length,
            current: None,
            _keep: keep,
        };
        // Open the first store that opens before answering, so that a request whose stores
        // are all unreachable gets a status code rather than a cut body.
        let first_error = reading.open_next().await.err();
        if reading.current.is_none() {
            return Err(first_error.map_or(
                StoreError::Blob(BlobError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no configured store holds the image's bytes",
                ))),
                |error| StoreError::Blob(BlobError::Io(error)),
            ));
        }
        impl<K> Reading<K> {
            /// Opens the next store in order at the current offset; `Err` is the last failure.
            async fn open_next(&mut self) -> Result<(), std::io::Error> {
                let mut last = None;
                while self.next < self.order.len() {
                    let index = self.order[self.next];
                    self.next += 1;
                    let store = self.store.clone();
                    let (digest, size) = (self.digest, self.size);
                    let opened = blocking(move || store.places[index].blobs.open(digest, size))
                        .await
                        .map_err(|error| std::io::Error::other(error.to_string()))
                        .and_then(|opened| opened.map_err(BlobError::into_io));
                    match opened {
                        Ok(blob) => {
                            let place = &self.store.places[index];
                            self.current = Some(
                                place
                                    .blobs
                                    .read(blob, self.offset, self.end - self.offset, ())
                                    .boxed(),
                            );
                            return Ok(());
                        }
                        Err(error) => {
                            tracing::warn!(store = %self.store.places[index].spec.id, blob = %digest.to_hex(), %error, "a store could not open a blob; trying the next");
                            last = Some(error);
                        }
                    }
                }
                Err(last.unwrap_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "no store left to read")
                }))
            }
        }
        Ok(futures_util::stream::unfold(
            reading,
            |mut reading| async move {
                loop {
                    if reading.offset >= reading.end {
                        return None;
                    }
                    let current = reading.current.as_mut()?;
                    match current.next().await {
                        Some(Ok(bytes)) => {
                            reading.offset += bytes.len() as u64;
                            return Some((Ok(bytes), reading));
                        }
                        failed => {
                            let error = match failed {
                                Some(Err(error)) => error,
                                _ => std::io::Error::new(
                                    std::io::ErrorKind::UnexpectedEof,
                                    "the store ended the blob early",
                                ),
                            };
                            let index = reading.order[reading.next - 1];
                            tracing::warn!(store = %reading.store.places[index].spec.id, blob = %reading.digest.to_hex(), offset = reading.offset, %error, "a store failed during a read; going on from the next");
                            reading.current = None;
                            if reading.open_next().await.is_err() {
                                tracing::error!(blob = %reading.digest.to_hex(), "no store could serve the rest of a read");
                                reading.offset = reading.end;
                                return Some((Err(error), reading));
                            }
                        }
                    }
                }
            },
        ))
    }

    /// Copies an active image's bytes into store `target` (the copy-image import): read from
    /// the stores that have them (verified), received and hashed again on the way in, placed
    /// under the same content address and added to the image's stores in one transaction. A
    /// store that has the bytes already is left alone. Returns the record.
    ///
    /// `importing`: the image may also be `importing` with its data (an import filling
    /// several stores), not only `active`.
    pub async fn copy_to(
        self: &Arc<Self>,
        id: ImageId,
        target: &str,
        importing: bool,
    ) -> Result<ImageRecord, StoreError> {
        let place = self.place_of(target)?;
        let store = self.clone();
        let record = blocking(move || store.kv.image(id))
            .await??
            .ok_or(StoreError::NoImage(id))?;
        let Some(data) = record.data.clone() else {
            return Err(StoreError::Changed);
        };
        if data.stores.iter().any(|store| store == target) {
            return Ok(record);
        }
        let _slot = Store::slot(&self.uploads).await?;
        let source = self.download(&data, 0, data.size).await?;
        let space = {
            let store = self.clone();
            blocking(move || store.places[place].blobs.backend().space()).await??
        };
        let limits = ReceiveLimits {
            max_size: data.size,
            keep_free: self.keep_free(space),
        };
        let body = source.map(|item| item.map_err(|error| error.to_string()));
        let received = self.places[place].blobs.receive(body, limits).await?;
        if received.digest != data.digest || received.size != data.size {
            return Err(StoreError::Blob(BlobError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the copy does not hash to the image's blob",
            ))));
        }
        let store = self.clone();
        let target = target.to_owned();
        blocking(move || {
            let digest = received.digest;
            let blobs = &store.places[place].blobs;
            let _guard = blobs.lock(digest);
            if !store.places[place].removes_at_once() {
                store.kv.note_intent(digest, &target)?;
            }
            blobs.place(received.temp, digest)?;
            let outcome = store.kv.update_image(id, |record| match &mut record.data {
                Some(data)
                    if data.digest == digest
                        && (record.status == ImageStatus::Active
                            || (importing && record.status == ImageStatus::Importing)) =>
                {
                    if !data.stores.contains(&target) {
                        data.stores.push(target.clone());
                        store.sort_stores(&mut data.stores);
                    }
                    Ok(())
                }
                _ => Err(StoreError::Changed),
            });
            let committed = matches!(&outcome, Ok(Some(_)));
            if !committed {
                store.remove_copy_if_unreferenced(place, digest)?;
            }
            outcome?.map(|change| change.record).ok_or(StoreError::Gone)
        })
        .await?
    }

    /// Keeps an image's bytes only in the stores of `keep` that have them (none of them has
    /// them: nothing changes); the other copies are let go. Blocks.
    pub fn keep_stores(&self, id: ImageId, keep: &[String]) -> Result<(), StoreError> {
        let changed = self.kv.update_image(id, |record| {
            if let Some(data) = &mut record.data {
                keep_only(&mut data.stores, keep);
            }
            Ok::<(), KvError>(())
        })?;
        if let Some(change) = changed {
            self.release(&change.unreferenced);
        }
        Ok(())
    }

    /// Removes one store's copy of an image's bytes (`DELETE /v2/stores/{store}/{image}`):
    /// only from an active image, and never its last copy. `check` sees the record first.
    pub fn remove_from_store<E: From<KvError> + From<CopyRefusal>>(
        &self,
        id: ImageId,
        target: &str,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<Option<ImageRecord>, E> {
        if !self.has_store(target) {
            return Err(E::from(CopyRefusal::UnknownStore(target.to_owned())));
        }
        let changed = self.kv.update_image(id, |record| {
            check(record)?;
            if record.status != ImageStatus::Active {
                return Err(E::from(CopyRefusal::NotActive));
            }
            let Some(data) = &mut record.data else {
                return Err(E::from(CopyRefusal::NotActive));
            };
            if !data.stores.iter().any(|store| store == target) {
                return Err(E::from(CopyRefusal::NotInStore(target.to_owned())));
            }
            if data.stores.len() == 1 {
                return Err(E::from(CopyRefusal::OnlyCopy));
            }
            data.stores.retain(|store| store != target);
            Ok(())
        })?;
        Ok(changed.map(|change| {
            self.release(&change.unreferenced);
            change.record
        }))
    }

    /// How often the server sweeps (`sweep`): a quarter of the shortest grace of a bucket
    /// store, between 1 second and 1 minute; `None` without bucket stores.
    pub fn sweep_interval(&self) -> Option<Duration> {
        self.places
            .iter()
            .filter(|place| !place.removes_at_once())
            .map(|place| place.spec.grace / 4)
            .min()
            .map(|every| every.clamp(Duration::from_secs(1), Duration::from_secs(60)))
    }

    /// Removes the copies whose removal intent is due: in the data directory at once, in a
    /// bucket once the intent is older than the store's grace; each only if nothing references
    /// it (checked under the blob's lock) and no read has it pinned. Also removes staging
    /// objects older than the grace. Online: one copy at a time. Returns how many went. Blocks.
    pub fn sweep(&self) -> Result<usize, StoreError> {
        let now = super::unix_now();
        let mut removed = 0;
        for (copy, since) in self.kv.removal_intents()? {
            let Some(index) = self.place_index(&copy.store) else {
                continue;
            };
            let place = &self.places[index];
            let grace = i64::try_from(place.spec.grace.as_secs()).unwrap_or(i64::MAX);
            if !place.removes_at_once() && since.saturating_add(grace) > now {
                continue;
            }
            let _guard = place.blobs.lock(copy.digest);
            if self.remove_copy_if_unreferenced(index, copy.digest)? {
                removed += 1;
            }
        }
        for place in self.places.iter().filter(|place| !place.removes_at_once()) {
            let cutoff = SystemTime::now()
                .checked_sub(place.spec.grace)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let swept = place.blobs.backend().sweep_temps(Some(cutoff), false)?;
            if swept.count > 0 {
                tracing::info!(store = %place.spec.id, staging = swept.count, "removed staging objects past the grace");
            }
        }
        if removed > 0 {
            tracing::info!(removed, "removed unreferenced copies past their grace");
        }
        Ok(removed)
    }

    /// Removes a copy that no image references and no read has pinned (deferred while a
    /// backup holds removals), and its removal intent; true if it went. Call with the copy's
    /// lock held.
    pub(super) fn remove_copy_if_unreferenced(
        &self,
        place: usize,
        digest: Digest,
    ) -> Result<bool, StoreError> {
        let id = self.places[place].spec.id.clone();
        if self.kv.copy_references(digest, &id)? > 0 {
            self.kv.clear_intent(digest, &id)?;
            return Ok(false);
        }
        if self.pinned(digest) {
            // The last read to end comes back here (`Pin::drop`).
            return Ok(false);
        }
        if place == self.home && self.holds.load(std::sync::atomic::Ordering::Acquire) > 0 {
            // A backup is linking blobs; the hold's end removes it.
            self.deferred
                .lock()
                .unwrap_or_else(|poison| poison.into_inner())
                .push(digest);
            return Ok(false);
        }
        self.places[place].blobs.remove(digest)?;
        self.kv.clear_intent(digest, &id)?;
        if self.kv.blob_references(digest)? == 0 {
            self.kv.clear_bad_blob(digest)?;
        }
        Ok(true)
    }

    /// Lets go of copies a committed change left without references: the data directory's
    /// at once, a bucket's after its grace (the sweep).
    pub(super) fn release(&self, unreferenced: &[BlobCopy]) {
        for copy in unreferenced {
            let Some(index) = self.place_index(&copy.store) else {
                tracing::warn!(store = %copy.store, blob = %copy.digest.to_hex(), "a copy in a store that is not configured lost its last reference; it stays");
                continue;
            };
            if !self.places[index].removes_at_once() {
                continue;
            }
            let _guard = self.places[index].blobs.lock(copy.digest);
            if let Err(error) = self.remove_copy_if_unreferenced(index, copy.digest) {
                // The image change itself stands; the next start quarantines the blob.
                tracing::error!(blob = %copy.digest.to_hex(), %error, "could not remove unreferenced blob");
            }
        }
    }

    /// After the last read of a blob ends: removes its copies that lost their references
    /// while it was read (they have a removal intent; those in the data directory go now, a
    /// bucket's wait for the sweep).
    pub(super) fn release_unpinned(&self, digest: Digest) {
        let copies: Vec<BlobCopy> = self
            .places
            .iter()
            .filter(|place| place.removes_at_once())
            .filter(|place| {
                self.kv
                    .has_intent(digest, place.id())
                    .unwrap_or_else(|error| {
                        tracing::warn!(%error, "could not read removal intents");
                        false
                    })
            })
            .map(|place| BlobCopy {
                digest,
                store: place.spec.id.clone(),
            })
            .collect();
        self.release(&copies);
    }
}

/// Keeps only the stores of `keep`, unless that would leave none (then nothing changes: an
/// image never loses its last copy this way).
pub(super) fn keep_only(stores: &mut Vec<String>, keep: &[String]) {
    if stores.iter().any(|store| keep.contains(store)) {
        stores.retain(|store| keep.contains(store));
    }
}
