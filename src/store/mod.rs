//! The store: image metadata (`kv`, redb) and image bytes (`blob`, a `Backend`) kept consistent.
//!
//! Nothing above this module touches either half. The protocols that span both live here:
//! - **upload**: admit (a transfer slot, room on the backend), `queued` → `saving` (one
//!   transaction), receive and hash the bytes, let the caller inspect them, then, under the
//!   blob's lock, place the blob and commit the record that makes the image `active`. Any
//!   failure, including the client vanishing, puts the image back to `queued` and leaves no
//!   temp object and no unreferenced blob;
//! - **delete** (and any change that drops a reference): commit the record change first;
//!   afterwards, under the blob's lock, remove the blob only if the metadata still says nothing
//!   references it and no download has it pinned;
//! - **download**: take a transfer slot, pin the blob and open it, then stream; the pin is
//!   released when the stream ends.
//!
//! With the lock held across "blob present" and "reference committed", a concurrent upload of
//! the same bytes can never find the blob, skip writing it, and then lose it to a delete.
//! A crash between the steps leaves at worst temp objects, images in `saving` or unreferenced
//! blobs: `open` removes the first, requeues the second and quarantines the third (they are
//! removed only after `quarantine_grace`, since a restored older database also leaves blobs
//! it does not know).

use std::collections::HashMap;

mod import;
mod metadefs;
mod mirror;
mod ops;
mod places;
mod quota;
mod raw;
pub use import::{FAILED_IMPORT, IMPORT_TASK, IMPORTING_TO, INTERRUPTED, end_import};
pub use mirror::Detached;
pub use ops::{
    BACKUP_FORMAT, BackupManifest, CheckReport, GcReport, MANIFEST_FILE, Mode, RemovalHold,
};
pub use places::{BackendSpec, CopyRefusal, DEFAULT_STORE, Place, StoreInfo, StoreSet, StoreSpec};
pub use quota::{QuotaClaim, QuotaExceeded, Quotas};
pub use raw::{OpenData, RawDisk};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::blob::inspect::Inspection;
use crate::blob::local::LocalDir;
use crate::blob::pool::TransferPool;
use crate::blob::{Backend, BlobError, BlobStore, ReceiveLimits, Received, Space};
use crate::kv::{
    AddMember, CreateKey, Digest, InsertOutcome, KeyRecord, Kv, KvError, ListOutcome, ListRequest,
    MemberRecord, MemberStatus, NewKey, UiSession,
};

pub use crate::kv::{
    ImageData, ImageId, ImageRecord, ImageStatus, KvError as MetadataError, Visibility,
};

/// How long a transfer waits for a free slot before it is refused with 503.
pub const TRANSFER_WAIT: Duration = Duration::from_secs(2);

/// A failure of either half, or a refusal of the upload protocol.
#[derive(Debug)]
pub enum StoreError {
    Kv(KvError),
    Blob(BlobError),
    /// Every transfer slot of this kind is taken.
    Busy,
    /// The declared size does not fit in the free space above the reserve.
    NoRoom {
        needed: u64,
        available: u64,
    },
    /// The body does not match its declared `x-openstack-image-size`.
    SizeMismatch {
        declared: u64,
        actual: Option<u64>,
    },
    /// There is no such image.
    NoImage(ImageId),
    /// The image was deleted while its data was uploading.
    Gone,
    /// The image left `saving` while its data was uploading.
    Changed,
    /// The blob failed verification (scrub or check) and has not been healed.
    Damaged(Digest),
    /// The project would cross a quota.
    Quota(QuotaExceeded),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Kv(error) => error.fmt(formatter),
            StoreError::Blob(error) => error.fmt(formatter),
            StoreError::Busy => formatter.write_str("every transfer slot is taken"),
            StoreError::NoRoom { needed, available } => write!(
                formatter,
                "{needed} bytes do not fit in the {available} bytes free above the reserve"
            ),
            StoreError::SizeMismatch { declared, actual } => match actual {
                Some(actual) => write!(
                    formatter,
                    "the declared size ({declared} bytes) does not match the data ({actual} bytes)"
                ),
                None => write!(
                    formatter,
                    "more data arrived than the declared size ({declared} bytes)"
                ),
            },
            StoreError::NoImage(id) => write!(formatter, "no image {id}"),
            StoreError::Gone => formatter.write_str("the image was deleted during the upload"),
            StoreError::Changed => formatter.write_str("the image changed during the upload"),
            StoreError::Quota(exceeded) => exceeded.fmt(formatter),
            StoreError::Damaged(digest) => write!(
                formatter,
                "blob {} failed verification; its bytes are not served",
                digest.to_hex()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

impl From<KvError> for StoreError {
    fn from(error: KvError) -> StoreError {
        StoreError::Kv(error)
    }
}

impl From<BlobError> for StoreError {
    fn from(error: BlobError) -> StoreError {
        StoreError::Blob(error)
    }
}

impl From<std::io::Error> for StoreError {
    fn from(error: std::io::Error) -> StoreError {
        StoreError::Blob(error.into())
    }
}

/// Limits of the store, from the server's settings.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Concurrent uploads.
    pub max_uploads: usize,
    /// Concurrent downloads.
    pub max_downloads: usize,
    /// Free space kept back on the backend for metadata; `None`: the smaller of 1 GiB and 5 %.
    pub min_free_space: Option<u64>,
    /// How long unreferenced blobs stay in quarantine.
    pub quarantine_grace: Duration,
    /// Transfer pool threads.
    pub transfer_threads: usize,
    /// Default per-project quotas (overridden per project in the catalog).
    pub quotas: Quotas,
    /// How long finished tasks are kept (Glance's `task_time_to_live`).
    pub task_time_to_live: Duration,
    /// The metadata database's cache, in bytes (`db_cache_size`).
    pub db_cache_size: usize,
    /// The custom properties the filter index covers (`indexed_properties`); `None` keeps
    /// what the database was built with (offline commands).
    pub indexed_properties: Option<crate::kv::IndexedProperties>,
}

impl StoreLimits {
    pub fn task_time_to_live_micros(&self) -> i64 {
        i64::try_from(self.task_time_to_live.as_micros()).unwrap_or(i64::MAX)
    }
}

impl Default for StoreLimits {
    fn default() -> StoreLimits {
        StoreLimits {
            max_uploads: 64,
            max_downloads: 512,
            min_free_space: None,
            quarantine_grace: Duration::from_secs(7 * 24 * 3600),
            transfer_threads: TransferPool::default_threads(),
            quotas: Quotas::default(),
            task_time_to_live: Duration::from_secs(48 * 3600),
            db_cache_size: crate::kv::DEFAULT_CACHE_SIZE,
            indexed_properties: None,
        }
    }
}

/// Opens a store's backend: the data directory, or an S3 bucket.
fn open_backend(data_dir: &Path, spec: &StoreSpec) -> std::io::Result<Arc<dyn Backend>> {
    Ok(match &spec.backend {
        BackendSpec::S3(settings) => Arc::new(crate::blob::s3::S3Bucket::open(settings)?),
        BackendSpec::File => Arc::new(LocalDir::open(data_dir)?),
    })
}

/// What an upload brought, for the caller to check before it is kept.
pub struct Uploaded<'a> {
    pub size: u64,
    /// What the format inspector made of the bytes.
    pub inspection: &'a Inspection,
}

/// An upload's request, as far as the store cares.
#[derive(Clone, Debug)]
pub struct UploadRequest {
    /// Whether the bytes count against the image owner's quotas.
    pub quota: bool,
    /// Staged data (`PUT /stage`) also counts against `image_stage_total`.
    pub staging: bool,
    /// `x-openstack-image-size`, or the `Content-Length`, when the client gave one.
    pub declared: Option<u64>,
    /// Whether `declared` came from `x-openstack-image-size` (then it must match exactly).
    pub declared_exact: bool,
    /// The largest image accepted.
    pub cap: u64,
    /// The store the bytes go to (a configured id); `None`: the default store.
    pub target: Option<String>,
}

/// The store's figures, for `/metrics`, the detailed health check and `ocellus stats`.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StoreStats {
    pub images: u64,
    /// Images per status, every status included.
    pub images_by_status: std::collections::BTreeMap<&'static str, u64>,
    /// Per owning project: images and bytes of their data (before deduplication).
    pub projects: Vec<ProjectUsage>,
    /// Bytes of image data as the images count them.
    pub image_bytes: u64,
    /// Distinct blobs and their bytes: what the data takes on the backend.
    pub blobs: u64,
    pub blob_bytes: u64,
    /// What deduplication saves: `image_bytes - blob_bytes`.
    pub dedupe_saved_bytes: u64,
    pub quarantined_blobs: u64,
    pub uploads_in_flight: u64,
    pub downloads_in_flight: u64,
    /// Reads of stored bytes done for downloads since start (each verified), and reads that
    /// concurrent downloads of one image took from another's verified read instead.
    pub download_reads: u64,
    pub shared_download_reads: u64,
}

/// One project's use of the store.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ProjectUsage {
    pub project: String,
    pub images: u64,
    pub bytes: u64,
}

/// What re-verifying a blob found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Good,
    /// Damaged, missing or the wrong length: now marked.
    Bad(String),
    /// `pace` asked to stop before the end.
    Stopped,
}

/// The scrub's running figures (since the server started).
#[derive(Debug, Default)]
pub struct ScrubState {
    pub passes: AtomicU64,
    pub checked_blobs: AtomicU64,
    pub checked_bytes: AtomicU64,
    /// The fraction of the current pass done, as `f64` bits.
    pub progress: AtomicU64,
}

/// A snapshot of the scrub's figures.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ScrubStats {
    pub passes: u64,
    pub checked_blobs: u64,
    pub checked_bytes: u64,
    /// Blobs marked bad (by the scrub or a check) and not yet healed.
    pub failed_blobs: u64,
    pub progress: f64,
}

/// Whether the store can take writes, for `/healthcheck`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Health {
    /// Metadata writes work (false after a failed write until the database is reopened).
    pub database_writable: bool,
    /// Free bytes on the backend, where it can tell.
    pub free_bytes: Option<u64>,
    /// The reserve uploads leave free for metadata.
    pub reserve_bytes: u64,
}

impl Health {
    /// Healthy: writes work and the free space is above the reserve.
    pub fn ok(&self) -> bool {
        self.database_writable
            && self
                .free_bytes
                .is_none_or(|free| free >= self.reserve_bytes)
    }
}

/// What a crash left behind, as `open` found and repaired it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Repairs {
    pub requeued: usize,
    pub temp_removed: usize,
    pub quarantined: usize,
    pub restored: usize,
    pub expired: usize,
}

/// The catalog and every configured store of image bytes.
pub struct Store {
    kv: Kv,
    data_dir: std::path::PathBuf,
    /// The configured stores; `home` is the one the scrub, `check`, `gc` and backups work on
    /// (the data directory's, or the default store when there is none).
    places: Vec<Place>,
    default_place: usize,
    home: usize,
    limits: StoreLimits,
    uploads: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
    /// Bytes declared by uploads in progress, not yet counted in the backend's free space.
    reserved: AtomicU64,
    /// Blobs being read, with how many reads each.
    pins: Mutex<HashMap<Digest, usize>>,
    scrub: ScrubState,
    /// Backups in progress, during which removals from `home` wait in `deferred`.
    holds: std::sync::atomic::AtomicUsize,
    deferred: Mutex<Vec<Digest>>,
    /// Per-project usage while uploads of the project run (`quota.rs`).
    ledgers: quota::Ledgers,
}

impl Store {
    /// Opens the stores in `data_dir` with default limits.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_with(data_dir, StoreLimits::default())
    }

    /// Opens (creating if needed) the stores in `data_dir`, then repairs what a crash can
    /// leave: uploads stuck in `saving` go back to `queued`; temp objects go; unreferenced
    /// blobs go to quarantine (and referenced ones come back from it). Blocks.
    pub fn open_with(data_dir: &Path, limits: StoreLimits) -> Result<Store, StoreError> {
        Store::open_on(data_dir, limits, &StoreSet::default())
    }

    /// `open_with`, with the stores of `stores`. Refuses to open when the catalog has bytes in
    /// a store the configuration no longer lists (nothing is removed on a guess).
    pub fn open_on(
        data_dir: &Path,
        limits: StoreLimits,
        stores: &StoreSet,
    ) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)?;
        let kv = Kv::open_with_cache(
            &data_dir.join(crate::DATABASE_FILE),
            limits.db_cache_size,
            limits.indexed_properties.as_ref(),
        )?;
        let store = Store::assemble(kv, data_dir, stores, limits)?;
        let missing: Vec<String> = store
            .kv
            .stores_in_use()?
            .into_iter()
            .filter(|id| !store.has_store(id))
            .collect();
        if !missing.is_empty() {
            return Err(StoreError::Blob(BlobError::Io(std::io::Error::other(
                format!(
                    "the catalog has image data in store(s) {} that the configuration does not list; add them back under [stores]",
                    missing.join(", ")
                ),
            ))));
        }
        let repairs = store.repair()?;
        if repairs != Repairs::default() {
            tracing::warn!(
                requeued_uploads = repairs.requeued,
                temp_removed = repairs.temp_removed,
                quarantined_blobs = repairs.quarantined,
                restored_blobs = repairs.restored,
                expired_blobs = repairs.expired,
                "repaired what interrupted work left"
            );
        }
        Ok(store)
    }

    /// Opens only what the offline `key` commands need: the metadata, with no repair of the
    /// blobs (that is the server's job at its start). Blocks.
    pub fn open_metadata(data_dir: &Path) -> Result<Store, StoreError> {
        Store::open_offline(data_dir, StoreLimits::default())
    }

    /// Like `open_metadata`, with the configured limits (the quarantine grace, for `gc`).
    pub fn open_offline(data_dir: &Path, limits: StoreLimits) -> Result<Store, StoreError> {
        let limits = StoreLimits {
            transfer_threads: 1,
            ..limits
        };
        std::fs::create_dir_all(data_dir)?;
        let kv = Kv::open_with_cache(
            &data_dir.join(crate::DATABASE_FILE),
            limits.db_cache_size,
            limits.indexed_properties.as_ref(),
        )?;
        Store::assemble(kv, data_dir, &StoreSet::default(), limits)
    }

    fn assemble(
        kv: Kv,
        data_dir: &Path,
        stores: &StoreSet,
        limits: StoreLimits,
    ) -> Result<Store, StoreError> {
        let pool = TransferPool::new(limits.transfer_threads)?;
        let mut places = Vec::new();
        for spec in &stores.stores {
            places.push(Place {
                spec: spec.clone(),
                blobs: BlobStore::new(open_backend(data_dir, spec)?, pool.clone()),
            });
        }
        let default_place = places
            .iter()
            .position(|place| place.spec.id == stores.default)
            .ok_or_else(|| {
                StoreError::Blob(BlobError::Io(std::io::Error::other(format!(
                    "the default store {} is not configured",
                    stores.default
                ))))
            })?;
        let home = places
            .iter()
            .position(|place| place.removes_at_once())
            .unwrap_or(default_place);
        Ok(Store {
            kv,
            data_dir: data_dir.to_owned(),
            places,
            default_place,
            home,
            uploads: Arc::new(Semaphore::new(limits.max_uploads.max(1))),
            downloads: Arc::new(Semaphore::new(limits.max_downloads.max(1))),
            limits,
            reserved: AtomicU64::new(0),
            pins: Mutex::new(HashMap::new()),
            scrub: ScrubState::default(),
            holds: std::sync::atomic::AtomicUsize::new(0),
            deferred: Mutex::new(Vec::new()),
            ledgers: Mutex::new(HashMap::new()),
        })
    }

    /// The home store's backend (see `home`).
    fn backend(&self) -> &dyn Backend {
        self.places[self.home].blobs.backend()
    }

    /// The home store's blobs.
    fn blobs(&self) -> &BlobStore {
        &self.places[self.home].blobs
    }

    fn repair(&self) -> Result<Repairs, StoreError> {
        let mut repairs = Repairs::default();
        let failed = self.fail_interrupted_imports()?;
        if failed > 0 {
            tracing::warn!(
                failed,
                "imports were interrupted; their tasks failed and images are queued again"
            );
        }
        for id in self.kv.requeue_interrupted_uploads()? {
            tracing::warn!(image = %id, "upload was interrupted; image is queued again");
            repairs.requeued += 1;
        }
        for place in &self.places {
            match place.blobs.backend().sweep_temps(None, false) {
                Ok(swept) => repairs.temp_removed += swept.count,
                // A bucket that does not answer must not keep the server down: its staging
                // objects wait for the sweep, and its uploads answer 503 until it is back.
                Err(error) if !place.removes_at_once() => {
                    tracing::warn!(store = %place.id(), %error, "a store does not answer at start; its leftovers wait for the sweep");
                }
                Err(error) => return Err(error.into()),
            }
        }
        let home = &self.places[self.home];
        if home.removes_at_once() {
            let referenced = self.kv.copies_in(home.id())?;
            for digest in self.backend().list()? {
                if !referenced.contains(&digest) {
                    self.backend().quarantine(digest)?;
                    repairs.quarantined += 1;
                }
            }
            for &digest in &referenced {
                if self.backend().size(digest)?.is_none() {
                    if self.restore_from_quarantine(digest)? {
                        repairs.restored += 1;
                    } else {
                        tracing::error!(blob = %digest.to_hex(), "a referenced blob is missing");
                    }
                }
            }
            repairs.expired = self.collect_quarantine()?;
        }
        // A bucket's objects that nothing references (a crash between placing and
        // committing, or a restored older catalog) get a removal intent: the sweep removes
        // them after the grace unless an upload references them first.
        for place in self.places.iter().filter(|place| !place.removes_at_once()) {
            let referenced = self.kv.copies_in(place.id())?;
            let listed = match place.blobs.backend().list() {
                Ok(listed) => listed,
                Err(error) => {
                    tracing::warn!(store = %place.id(), %error, "a store does not answer at start; its unreferenced objects are looked for at the next start");
                    continue;
                }
            };
            for digest in listed {
                if !referenced.contains(&digest) {
                    self.kv.note_intent(digest, place.id())?;
                    repairs.quarantined += 1;
                }
            }
        }
        Ok(repairs)
    }

    /// At shutdown, once no request runs: puts uploads that were cut back to `queued` and
    /// removes their temp objects, as the next start would. Blocks.
    pub fn settle_interrupted(&self) -> Result<(), StoreError> {
        let requeued = self.kv.requeue_interrupted_uploads()?;
        for id in &requeued {
            tracing::info!(image = %id, "upload cut by shutdown; image is queued again");
        }
        for place in &self.places {
            if let Err(error) = place.blobs.backend().sweep_temps(None, false) {
                if place.removes_at_once() {
                    return Err(error.into());
                }
                tracing::warn!(store = %place.id(), %error, "could not remove a store's staging objects at shutdown; the sweep will");
            }
        }
        Ok(())
    }

    /// Removes quarantined blobs older than the grace period; returns how many. Blocks.
    pub fn collect_quarantine(&self) -> Result<usize, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(self.limits.quarantine_grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let removed = self.backend().sweep_quarantine(cutoff, false)?.count;
        if removed > 0 {
            tracing::info!(removed, "removed quarantined blobs past their grace period");
        }
        Ok(removed)
    }

    /// Moves a quarantined blob back if it is there (the database that names it was restored).
    fn restore_from_quarantine(&self, digest: Digest) -> Result<bool, StoreError> {
        let restored = self.backend().restore(digest)?;
        if restored {
            tracing::warn!(blob = %digest.to_hex(), "a referenced blob came back from quarantine");
        }
        Ok(restored)
    }

    /// Whether metadata writes work; false while the disk is full or failed.
    pub fn healthy(&self) -> bool {
        !self.kv.failed()
    }

    /// Retries metadata writes after a failure (reopening the database); true when healthy.
    /// Skips the attempt while the backend is still out of space. Blocks.
    pub fn recover(&self) -> bool {
        if !self.kv.failed() {
            return true;
        }
        if let Ok(Some(space)) = self.backend().space()
            && space.free < RECOVERY_ROOM
        {
            return false;
        }
        self.kv.recover()
    }

    /// Counts images, bytes and transfers, from the catalog's running totals. Blocks.
    pub fn stats(&self) -> Result<StoreStats, StoreError> {
        let totals = self.kv.totals()?;
        let (images, image_bytes) = totals.images();
        let (blobs, blob_bytes) = totals.blobs;
        let in_flight = |semaphore: &Semaphore, limit: usize| {
            limit.saturating_sub(semaphore.available_permits()) as u64
        };
        let (download_reads, shared_download_reads) =
            self.places.iter().fold((0, 0), |(reads, shared), place| {
                let (own, others) = place.blobs.download_reads();
                (reads + own, shared + others)
            });
        Ok(StoreStats {
            images,
            images_by_status: totals
                .by_status
                .iter()
                .map(|(status, (count, _))| (*status, *count))
                .collect(),
            projects: totals
                .projects
                .into_iter()
                .map(|(project, usage)| ProjectUsage {
                    project,
                    images: usage.count_total,
                    bytes: usage.size_total,
                })
                .collect(),
            image_bytes,
            blobs,
            blob_bytes,
            dedupe_saved_bytes: image_bytes.saturating_sub(blob_bytes),
            quarantined_blobs: self.backend().quarantined()? as u64,
            uploads_in_flight: in_flight(&self.uploads, self.limits.max_uploads.max(1)),
            downloads_in_flight: in_flight(&self.downloads, self.limits.max_downloads.max(1)),
            download_reads,
            shared_download_reads,
        })
    }

    /// Re-reads one blob and checks every byte against its digest and outboard; a blob that
    /// fails (or is missing, or has the wrong length) is marked damaged, so its images refuse
    /// downloads. `pace` is called after each buffer with its length and may stop the check
    /// (`Verdict::Stopped`). Blocks.
    pub fn verify_blob(
        &self,
        digest: Digest,
        size: u64,
        pace: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Verdict, StoreError> {
        let checked = self
            .blobs()
            .open(digest, size)
            .map_err(BlobError::into_io)
            .and_then(|blob| self.blobs().verify_all(blob, pace));
        let problem = match checked {
            Ok(true) => return Ok(Verdict::Good),
            Ok(false) => return Ok(Verdict::Stopped),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => "missing".to_owned(),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                error.to_string()
            }
            // Anything else (an I/O error) says nothing about the bytes; report, don't mark.
            Err(error) => return Err(StoreError::from(error)),
        };
        tracing::error!(blob = %digest.to_hex(), %problem, "blob failed verification; its images refuse downloads until good bytes are uploaded again");
        self.kv.mark_bad_blob(digest, unix_now())?;
        Ok(Verdict::Bad(problem))
    }

    /// How long finished tasks are kept, in microseconds.
    pub fn task_time_to_live_micros(&self) -> i64 {
        self.limits.task_time_to_live_micros()
    }

    /// The scrub's running figures, which the scrub updates.
    pub fn scrub_state(&self) -> &ScrubState {
        &self.scrub
    }

    /// A snapshot of the scrub's figures, with the count of blobs marked damaged. Blocks.
    pub fn scrub_stats(&self) -> Result<ScrubStats, StoreError> {
        Ok(ScrubStats {
            passes: self.scrub.passes.load(Ordering::Relaxed),
            checked_blobs: self.scrub.checked_blobs.load(Ordering::Relaxed),
            checked_bytes: self.scrub.checked_bytes.load(Ordering::Relaxed),
            failed_blobs: self.kv.bad_blobs()?.len() as u64,
            progress: f64::from_bits(self.scrub.progress.load(Ordering::Relaxed)),
        })
    }

    /// Blobs marked damaged, with the Unix time each was found. Blocks.
    pub fn bad_blobs(&self) -> Result<Vec<(Digest, i64)>, StoreError> {
        Ok(self.kv.bad_blobs()?)
    }

    /// Every referenced blob and its size. Blocks.
    pub fn blob_sizes(&self) -> Result<Vec<(Digest, u64)>, StoreError> {
        Ok(self.kv.blob_sizes()?)
    }

    /// A number kept in the database's meta table. Blocks.
    pub fn meta(&self, name: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.kv.meta(name)?)
    }

    /// Sets a number in the database's meta table. Blocks.
    pub fn set_meta(&self, name: &str, value: u64) -> Result<(), StoreError> {
        Ok(self.kv.set_meta(name, value)?)
    }

    /// Uploads and downloads running now.
    pub fn transfers_in_flight(&self) -> usize {
        let busy = |semaphore: &Semaphore, limit: usize| {
            limit.saturating_sub(semaphore.available_permits())
        };
        busy(&self.uploads, self.limits.max_uploads.max(1))
            + busy(&self.downloads, self.limits.max_downloads.max(1))
    }

    /// Whether writes can work now: the database state and the free space against the
    /// reserve. Cheap (one statfs). Blocks.
    pub fn health(&self) -> Health {
        let space = self.backend().space().ok().flatten();
        Health {
            database_writable: self.healthy(),
            free_bytes: space.map(|space| space.free),
            reserve_bytes: self.keep_free(space),
        }
    }

    // Metadata. Each call is one transaction; async callers run them on the blocking pool.

    pub fn image(&self, id: ImageId) -> Result<Option<ImageRecord>, KvError> {
        self.kv.image(id)
    }

    pub fn insert_image(&self, record: &ImageRecord) -> Result<InsertOutcome, KvError> {
        self.kv.insert_image(record)
    }

    /// Inserts many new images in one transaction, ids already taken skipped (the benchmark's
    /// bulk path to a large catalog: `examples/catalog.rs`). Blocks.
    pub fn insert_images(&self, records: &[ImageRecord]) -> Result<usize, KvError> {
        self.kv.insert_images(records)
    }

    pub fn list_images(
        &self,
        request: &ListRequest<'_>,
        visible: &dyn Fn(&ImageRecord) -> bool,
        matches: &dyn Fn(&ImageRecord) -> bool,
    ) -> Result<ListOutcome, KvError> {
        self.kv.list_images(request, visible, matches)
    }

    /// Applies `change` to an image in one transaction (`None`: no such image), then releases
    /// any blob the change left without references.
    pub fn update_image<E: From<KvError>>(
        &self,
        id: ImageId,
        change: impl FnOnce(&mut ImageRecord) -> Result<(), E>,
    ) -> Result<Option<ImageRecord>, E> {
        let changed = self.kv.update_image(id, change)?;
        Ok(changed.map(|change| {
            self.release(&change.unreferenced);
            change.record
        }))
    }

    /// Deletes an image if `check` allows it, then releases its blob if that was the last
    /// reference. Returns the deleted record.
    pub fn delete_image<E: From<KvError>>(
        &self,
        id: ImageId,
        deleted_at: i64,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<Option<ImageRecord>, E> {
        let deleted = self.kv.delete_image(id, deleted_at, check)?;
        Ok(deleted.map(|change| {
            self.release(&change.unreferenced);
            change.record
        }))
    }

    /// Takes back an image its creating request could not complete (`Kv::withdraw_image`),
    /// releasing its blob if it had one.
    pub fn withdraw_image<E: From<KvError>>(
        &self,
        id: ImageId,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<Option<ImageRecord>, E> {
        let withdrawn = self.kv.withdraw_image(id, check)?;
        Ok(withdrawn.map(|change| {
            self.release(&change.unreferenced);
            change.record
        }))
    }

    /// A v1 members change (`Kv::edit_members`).
    pub fn edit_members<E: From<KvError>>(
        &self,
        id: ImageId,
        edit: &crate::kv::MembersEdit,
        now: i64,
        quota: usize,
        prepare: impl FnOnce(&mut ImageRecord) -> Result<(), E>,
    ) -> Result<crate::kv::EditMembers, E> {
        self.kv.edit_members(id, edit, now, quota, prepare)
    }

    pub fn members(&self, id: ImageId) -> Result<Vec<MemberRecord>, KvError> {
        self.kv.members(id)
    }

    pub fn member(&self, id: ImageId, member: &str) -> Result<Option<MemberRecord>, KvError> {
        self.kv.member(id, member)
    }

    pub fn add_member<E: From<KvError>>(
        &self,
        id: ImageId,
        member: &str,
        now: i64,
        quota: usize,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<AddMember, E> {
        self.kv.add_member(id, member, now, quota, check)
    }

    pub fn set_member_status(
        &self,
        id: ImageId,
        member: &str,
        status: MemberStatus,
        now: i64,
    ) -> Result<Option<MemberRecord>, KvError> {
        self.kv.set_member_status(id, member, status, now)
    }

    pub fn remove_member(&self, id: ImageId, member: &str) -> Result<bool, KvError> {
        self.kv.remove_member(id, member)
    }

    pub fn memberships(&self, project: &str) -> Result<HashMap<ImageId, MemberStatus>, KvError> {
        self.kv.memberships(project)
    }

    pub fn create_key(&self, new: NewKey) -> Result<CreateKey, KvError> {
        self.kv.create_key(new)
    }

    pub fn key(&self, id: &str) -> Result<Option<KeyRecord>, KvError> {
        self.kv.key(id)
    }

    pub fn insert_session(&self, digest: &[u8; 32], session: &UiSession) -> Result<(), KvError> {
        self.kv.insert_session(digest, session)
    }

    pub fn session(&self, digest: &[u8; 32]) -> Result<Option<UiSession>, KvError> {
        self.kv.session(digest)
    }

    pub fn touch_session(&self, digest: &[u8; 32], now: i64) -> Result<bool, KvError> {
        self.kv.touch_session(digest, now)
    }

    pub fn remove_session(&self, digest: &[u8; 32]) -> Result<bool, KvError> {
        self.kv.remove_session(digest)
    }

    /// Removes the web UI sessions past their idle or absolute limit at `now` (Unix seconds).
    pub fn expire_sessions(&self, now: i64) -> Result<usize, KvError> {
        self.kv.remove_sessions(|session| session.expired(now))
    }

    pub fn key_by_name(&self, name: &str) -> Result<Option<KeyRecord>, KvError> {
        self.kv.key_by_name(name)
    }

    pub fn keys(&self) -> Result<Vec<KeyRecord>, KvError> {
        self.kv.keys()
    }

    pub fn key_count(&self) -> Result<u64, KvError> {
        self.kv.key_count()
    }

    pub fn revoke_key(&self, id: &str) -> Result<Option<KeyRecord>, KvError> {
        self.kv.revoke_key(id)
    }

    pub fn secret(&self, name: &str, make: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>, KvError> {
        self.kv.secret(name, make)
    }

    // The byte protocols.

    /// Waits briefly for a transfer slot.
    async fn slot(semaphore: &Arc<Semaphore>) -> Result<OwnedSemaphorePermit, StoreError> {
        match tokio::time::timeout(TRANSFER_WAIT, semaphore.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(StoreError::Busy),
        }
    }

    /// The free space kept back for metadata on this backend.
    fn keep_free(&self, space: Option<Space>) -> u64 {
        match (self.limits.min_free_space, space) {
            (Some(bytes), _) => bytes,
            (None, Some(space)) => (space.total / 20).min(DEFAULT_RESERVE),
            (None, None) => 0,
        }
    }

    /// Runs the upload protocol for image `id`: `start` checks and moves the image to `saving`
    /// (in the same transaction), the body is received, `accept` inspects what arrived and
    /// returns the virtual size to record, and `finish` makes the image `active` with its data.
    /// Any failure puts the image back to `queued` before this returns.
    pub async fn upload<S, B, E>(
        self: &Arc<Self>,
        id: ImageId,
        body: S,
        request: UploadRequest,
        start: impl FnOnce(&mut ImageRecord) -> Result<(), E> + Send + 'static,
        accept: impl FnOnce(&ImageRecord, Uploaded<'_>) -> Result<Option<u64>, E>,
        finish: impl FnOnce(&mut ImageRecord, ImageData) -> Result<(), E> + Send + 'static,
    ) -> Result<ImageRecord, E>
    where
        S: Stream<Item = Result<Bytes, B>>,
        B: std::fmt::Display,
        E: From<StoreError> + From<KvError> + Send + 'static,
    {
        let _slot = Store::slot(&self.uploads).await.map_err(E::from)?;
        let place = match request.target.as_deref() {
            None => self.default_place,
            Some(target) => self.place_of(target).map_err(E::from)?,
        };
        // Room and quotas are checked against the declared size before the image moves to
        // `saving`, so a refusal leaves it `queued`; other refusals of `start` come first.
        let store = self.clone();
        let quota = request.quota;
        let staging = request.staging;
        let (record, reservation, keep_free, claim) = blocking(move || {
            let space = store.places[place]
                .blobs
                .backend()
                .space()
                .map_err(StoreError::from)?;
            let keep_free = store.keep_free(space);
            // With no declared size, an upload is refused only when nothing at all is left
            // above the reserve; the writer watches the reserve as it goes.
            let room = match space {
                Some(space) => {
                    let available = space
                        .free
                        .saturating_sub(keep_free)
                        .saturating_sub(store.reserved.load(Ordering::Acquire));
                    let needed = request.declared.unwrap_or(1);
                    (needed > available).then_some(StoreError::NoRoom { needed, available })
                }
                None => None,
            };
            let mut claim = None;
            let record = store.kv.update_image(id, |record| {
                start(record)?;
                if let Some(refusal) = room {
                    return Err(E::from(refusal));
                }
                if quota && let Some(owner) = &record.owner {
                    claim = store.claim_quota(owner, staging, request.declared)?;
                }
                Ok(())
            })?;
            let reservation = Reservation::new(store.clone(), request.declared.unwrap_or(0));
            Ok::<_, E>((record, reservation, keep_free, claim))
        })
        .await??;
        // Each chunk takes its bytes from the project's quota as it arrives; a refusal ends
        // the body, and the upload answers 413.
        let claim = Arc::new(Mutex::new(claim));
        let taker = claim.clone();
        let body = futures_util::StreamExt::map(body, move |item| match item {
            Ok(bytes) => {
                let mut claim = taker.lock().unwrap_or_else(|poison| poison.into_inner());
                match claim.as_mut().map(|claim| claim.take(bytes.len() as u64)) {
                    Some(Err(refusal)) => Err(refusal.to_string()),
                    _ => Ok(bytes),
                }
            }
            Err(error) => Err(error.to_string()),
        });
        let Some(change) = record else {
            return Err(E::from(StoreError::NoImage(id)));
        };
        let mut guard = SavingGuard {
            store: self.clone(),
            id,
            armed: true,
        };
        let outcome = self
            .receive_and_attach(
                change.record,
                place,
                body,
                request,
                keep_free,
                accept,
                finish,
            )
            .await;
        drop(reservation);
        let outcome = {
            let mut claim = claim.lock().unwrap_or_else(|poison| poison.into_inner());
            match (outcome, claim.as_mut()) {
                (Ok(record), Some(claim)) => {
                    claim.commit();
                    Ok(record)
                }
                (
                    Err(_),
                    Some(QuotaClaim {
                        refused: Some(refusal),
                        ..
                    }),
                ) => Err(E::from(StoreError::Quota(refusal.clone()))),
                (outcome, _) => outcome,
            }
        };
        // Failures answer only after the image is queued again, so a client may retry at once.
        guard.armed = false;
        if outcome.is_err() {
            let store = self.clone();
            blocking(move || store.requeue(id)).await.ok();
        }
        outcome
    }

    #[allow(clippy::too_many_arguments)]
    async fn receive_and_attach<S, B, E>(
        self: &Arc<Self>,
        record: ImageRecord,
        place: usize,
        body: S,
        request: UploadRequest,
        keep_free: u64,
        accept: impl FnOnce(&ImageRecord, Uploaded<'_>) -> Result<Option<u64>, E>,
        finish: impl FnOnce(&mut ImageRecord, ImageData) -> Result<(), E> + Send + 'static,
    ) -> Result<ImageRecord, E>
    where
        S: Stream<Item = Result<Bytes, B>>,
        B: std::fmt::Display,
        E: From<StoreError> + From<KvError> + Send + 'static,
    {
        let exact = request.declared.filter(|_| request.declared_exact);
        let limits = ReceiveLimits {
            max_size: exact.unwrap_or(request.cap).min(request.cap),
            keep_free,
        };
        let received = match self.places[place].blobs.receive(body, limits).await {
            Ok(received) => received,
            Err(BlobError::TooLarge { .. }) if exact.is_some_and(|size| size <= request.cap) => {
                return Err(E::from(StoreError::SizeMismatch {
                    declared: limits.max_size,
                    actual: None,
                }));
            }
            Err(error) => return Err(E::from(StoreError::Blob(error))),
        };
        if let Some(declared) = exact
            && declared != received.size
        {
            return Err(E::from(StoreError::SizeMismatch {
                declared,
                actual: Some(received.size),
            }));
        }
        let virtual_size = accept(
            &record,
            Uploaded {
                size: received.size,
                inspection: &received.inspection,
            },
        )?;
        let store = self.clone();
        let id = record.id;
        blocking(move || store.attach(id, place, received, virtual_size, finish)).await?
    }

    /// Publishes received bytes and commits `finish`, which attaches `data` to the record.
    fn attach<E>(
        &self,
        id: ImageId,
        place: usize,
        received: Received,
        virtual_size: Option<u64>,
        finish: impl FnOnce(&mut ImageRecord, ImageData) -> Result<(), E>,
    ) -> Result<ImageRecord, E>
    where
        E: From<StoreError> + From<KvError>,
    {
        let digest = received.digest;
        let blobs = &self.places[place].blobs;
        let store_id = self.places[place].spec.id.clone();
        let data = ImageData {
            digest,
            size: received.size,
            virtual_size,
            md5: received.md5,
            sha512: received.sha512,
            stores: vec![store_id.clone()],
            zeros: Some(Arc::new(crate::kv::Extents {
                size: received.size,
                zero: received.zeros.clone(),
            })),
        };
        let _guard = blobs.lock(digest);
        // Bytes that just hashed to a blob marked damaged heal it: the damaged copy goes to
        // quarantine (so that placing does not keep it as a duplicate) and these take its place.
        let heals = place == self.home && self.kv.is_bad_blob(digest).map_err(E::from)?;
        if heals
            && self
                .backend()
                .size(digest)
                .map_err(StoreError::from)?
                .is_some()
        {
            self.backend()
                .quarantine(digest)
                .map_err(|error| E::from(StoreError::from(error)))?;
        }
        // In a bucket, the intent comes before the bytes reach their content address, so that
        // a crash before the commit leaves a copy the sweep knows to remove. (The data
        // directory needs none: a start quarantines what no image references.)
        if !self.places[place].removes_at_once() {
            self.kv.note_intent(digest, &store_id).map_err(E::from)?;
        }
        blobs
            .place(received.temp, digest)
            .map_err(|error| E::from(StoreError::Blob(error)))?;
        if heals {
            self.kv.clear_bad_blob(digest).map_err(E::from)?;
            tracing::warn!(blob = %digest.to_hex(), "a damaged blob was healed by an upload of the same bytes");
        }
        let outcome = self.kv.update_image(id, |record| {
            // Still receiving, as `start` left it (not deleted, deactivated or requeued since).
            if !receiving(record) {
                return Err(E::from(StoreError::Changed));
            }
            finish(record, data)
        });
        let committed = matches!(&outcome, Ok(Some(change)) if change.record.data.as_ref().map(|d| d.digest) == Some(digest));
        if !committed {
            self.remove_copy_if_unreferenced(place, digest)
                .map_err(|error| match error {
                    StoreError::Kv(error) => E::from(error),
                    other => E::from(other),
                })?;
        }
        match outcome? {
            Some(change) => {
                self.release(&change.unreferenced);
                Ok(change.record)
            }
            None => Err(E::from(StoreError::Gone)),
        }
    }

    /// Puts an image that is still `saving` back to `queued`.
    fn requeue(&self, id: ImageId) -> Result<(), StoreError> {
        let result = self.kv.update_image(id, |record| {
            if receiving(record) {
                record.status = ImageStatus::Queued;
            }
            Ok::<(), KvError>(())
        });
        if let Err(error) = &result {
            tracing::error!(image = %id, %error, "could not put a failed upload back to queued");
        }
        result.map(|_| ()).map_err(StoreError::Kv)
    }

    /// Runs the download protocol: a transfer slot, the blob pinned and opened, then a stream
    /// of `length` bytes from `first`. A read of the whole blob is verified against its digest.
    pub async fn download(
        self: &Arc<Self>,
        data: &ImageData,
        first: u64,
        length: u64,
    ) -> Result<
        impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static + use<>,
        StoreError,
    > {
        let slot = Store::slot(&self.downloads).await?;
        let digest = data.digest;
        let pin = Pin::new(self.clone(), digest);
        let store = self.clone();
        let damaged = blocking(move || store.kv.is_bad_blob(digest)).await??;
        let order = self.read_order(data, damaged);
        if order.is_empty() && damaged {
            return Err(StoreError::Damaged(digest));
        }
        self.read_places(data, order, first, length, (slot, pin))
            .await
    }

    fn pinned(&self, digest: Digest) -> bool {
        self.pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains_key(&digest)
    }
}

/// Whether an image is in the middle of receiving data: `saving`, or `uploading` / `importing`
/// before its data arrived. Such an image goes back to `queued` when the transfer fails.
pub fn receiving(record: &ImageRecord) -> bool {
    match record.status {
        ImageStatus::Saving => true,
        ImageStatus::Uploading | ImageStatus::Importing => record.data.is_none(),
        _ => false,
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The free space an upload leaves by default: the smaller of this and 5 % of the filesystem.
const DEFAULT_RESERVE: u64 = 1 << 30;
/// Free space needed before a reopen of the database is worth trying.
const RECOVERY_ROOM: u64 = 4 << 20;

/// Runs store work on the blocking pool (never on the async workers).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| StoreError::Blob(BlobError::Io(std::io::Error::other(error.to_string()))))
}

/// Bytes an upload in progress has declared, subtracted from the room others see.
struct Reservation {
    store: Arc<Store>,
    bytes: u64,
}

impl Reservation {
    fn new(store: Arc<Store>, bytes: u64) -> Reservation {
        store.reserved.fetch_add(bytes, Ordering::AcqRel);
        Reservation { store, bytes }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.store.reserved.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// Keeps a blob in place while a read streams it.
struct Pin {
    store: Arc<Store>,
    digest: Digest,
}

impl Pin {
    fn new(store: Arc<Store>, digest: Digest) -> Pin {
        *store
            .pins
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .entry(digest)
            .or_insert(0) += 1;
        Pin { store, digest }
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let last = {
            let mut pins = self
                .store
                .pins
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let count = pins.get_mut(&self.digest).map(|count| {
                *count -= 1;
                *count
            });
            if count == Some(0) {
                pins.remove(&self.digest);
            }
            count == Some(0)
        };
        if last {
            // A delete during the read left the blob for this moment.
            let store = self.store.clone();
            let digest = self.digest;
            tokio::task::spawn_blocking(move || store.release_unpinned(digest));
        }
    }
}

/// Puts an image left in `saving` back to `queued` when an upload is cancelled (its client
/// went away, so the handler was dropped mid-way).
struct SavingGuard {
    store: Arc<Store>,
    id: ImageId,
    armed: bool,
}

impl Drop for SavingGuard {
    fn drop(&mut self) {
        if self.armed {
            let store = self.store.clone();
            let id = self.id;
            tokio::task::spawn_blocking(move || store.requeue(id));
        }
    }
}
