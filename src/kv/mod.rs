//! Metadata storage: the only code that talks to redb.
//!
//! `Kv` offers whole operations (insert, update, delete, list) that each run in one write or read
//! transaction, so callers never see a half-applied change and indexes never drift from records.
//! Every write transaction commits durably with two-phase commit: the data is ours to keep once
//! a caller gets `Ok`. All methods block; async callers run them in `spawn_blocking`.
//!
//! Invariants kept here, in the same transaction as the change that could break them:
//! - each image has exactly one `IMAGE_SORT_INDEX` entry per sort key, built from its record;
//! - a blob's reference count equals the number of image records whose data names its digest,
//!   and a blob row exists only while that count is positive;
//! - an id in `DELETED_IMAGES` is never in `IMAGES` and is never accepted again.
//!
//! This module knows nothing of HTTP, JSON or files.

mod access;
mod extents;
mod filter;
mod index;
mod list;
mod metadefs;
mod records;
mod sessions;
mod tables;
mod tasks;
mod usage;

use std::collections::HashSet;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, TableDefinition, Value, WriteTransaction,
};

pub use access::{
    AddMember, CreateKey, EditMembers, KeyRecord, MemberRecord, MemberStatus, MembersEdit, NewKey,
    Role,
};
pub use extents::{Extents, Stretch};
pub use filter::{IndexedProperties, Lookup};
pub use index::{Direction, SortKey};
pub use list::{Candidates, Span};
#[cfg(test)]
pub use list::{PROBE, compare_records};
pub use metadefs::{
    AssociationRecord, Catalog, NamespaceRecord, ObjectRecord, PropertyRecord, ReadCatalog,
    ResourceTypeRecord, TagRecord, WriteCatalog,
};
pub use records::{ImageData, ImageRecord, ImageStatus, LEGACY_STORE, Visibility};
pub use sessions::{SESSION_ABSOLUTE_SECS, UiSession};
pub use tables::{Digest, ImageId};
pub use tasks::{QuotaRecord, TaskKind, TaskRecord, TaskStatus, Usage};
pub use usage::CatalogTotals;

use tables::{
    API_KEY_NAMES, API_KEYS, BAD_BLOBS, BLOB_COPIES, BLOB_EXTENTS, BLOB_REMOVALS, BLOBS,
    DELETED_IMAGES, IMAGE_FILTER_INDEX, IMAGE_SORT_INDEX, IMAGE_TASKS, IMAGES, MEMBERS,
    MEMBERSHIPS, META, METADEF_ASSOCIATIONS, METADEF_NAMESPACES, METADEF_OBJECTS,
    METADEF_PROPERTIES, METADEF_RESOURCE_TYPES, METADEF_TAGS, MIRROR_EVIDENCE, MIRROR_SOURCES,
    PROJECTS, QUOTAS, SECRETS, SETTINGS, TASKS, UI_SESSIONS, USAGE,
};

/// The schema version this build writes. Older databases are upgraded at open.
///
/// - 1: images, sort index, tombstones, blobs.
/// - 2: adds image members, API keys, projects and secrets (new, empty tables).
/// - 5: adds the metadata definition tables (new, empty tables).
/// - 6: adds per-store blob copies and removal intents; every referenced blob gets a copy row
///   in the store `fs` (the data directory), where all bytes were until then.
/// - 7: adds the mirror's sources and evidence (new, empty tables).
/// - 8: adds the web UI's sessions (a new, empty table).
/// - 9: adds blob extent maps (blobs stored before have none, and are described as all data).
/// - 10: adds the filter index, built from the records at open (see `build_filter_index`),
///   and the settings it was built with.
/// - 11: adds the catalog's running totals (`kv::usage`), counted from the records at open in
///   the transaction that writes `meta_v1`'s `usage_totals` row.
const SCHEMA_VERSION: u64 = 11;

/// The `meta_v1` row present once the usage totals have been built.
const USAGE_BUILT: &str = "usage_totals";

/// What can go wrong in the metadata store.
#[derive(Debug)]
pub enum KvError {
    /// redb failed: I/O, a full disk, a corrupted file.
    Redb(redb::Error),
    /// A stored record could not be decoded.
    Corrupt(String),
    /// The database was written by a newer ocellus.
    SchemaTooNew { found: u64 },
    /// Another process (a running server) has the database open.
    Locked,
    /// Writes are impossible for now (the disk is full or failed); `Kv::recover` reopens the
    /// database once it can.
    Unavailable,
}

impl KvError {
    /// Whether this is the storage failing (I/O, a full disk), as opposed to bad data.
    pub fn is_io(&self) -> bool {
        matches!(
            self,
            KvError::Unavailable | KvError::Redb(redb::Error::Io(_) | redb::Error::PreviousIo)
        )
    }
}

impl std::fmt::Display for KvError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::Redb(error) => write!(formatter, "metadata store: {error}"),
            KvError::Corrupt(detail) => {
                write!(formatter, "metadata store holds a bad record: {detail}")
            }
            KvError::Unavailable => {
                formatter.write_str("metadata writes are unavailable until the disk recovers")
            }
            KvError::Locked => formatter.write_str(
                "the metadata database is open in another process (is the server running?)",
            ),
            KvError::SchemaTooNew { found } => write!(
                formatter,
                "metadata schema version {found} is newer than this build understands ({SCHEMA_VERSION})"
            ),
        }
    }
}

impl std::error::Error for KvError {}

macro_rules! from_redb_error {
    ($($error:ty),*) => {
        $(impl From<$error> for KvError {
            fn from(error: $error) -> KvError {
                KvError::Redb(error.into())
            }
        })*
    };
}

from_redb_error!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

impl From<records::DecodeError> for KvError {
    fn from(error: records::DecodeError) -> KvError {
        KvError::Corrupt(error.0)
    }
}

/// The result of inserting an image.
#[derive(Debug, PartialEq, Eq)]
pub enum InsertOutcome {
    Inserted,
    /// The id belongs to an existing or a deleted image.
    IdTaken,
}

/// A change applied by `update_image` or `delete_image`.
#[derive(Debug)]
pub struct Change {
    /// The record after the change (for a delete, the record that was removed).
    pub record: ImageRecord,
    /// Copies of blobs that lost their last reference in this change: they may be removed.
    pub unreferenced: Vec<BlobCopy>,
}

/// What `Kv::change_images` writes.
#[derive(Debug, Default)]
pub struct Batch {
    pub insert: Vec<ImageRecord>,
    pub update: Vec<ImageRecord>,
    pub delete: Vec<ImageId>,
    /// When the deleted images were deleted.
    pub deleted_at: i64,
    /// The mirror's evidence for inserted images.
    pub evidence: Vec<(ImageId, Vec<u8>)>,
}

/// A blob's copy in one store.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlobCopy {
    pub digest: Digest,
    pub store: String,
}

/// The tables that count references to blobs, written together with image records.
pub(super) struct DataTables<'t> {
    blobs: redb::Table<'t, Digest, (u64, u64)>,
    copies: redb::Table<'t, (Digest, &'static str), u64>,
    removals: redb::Table<'t, (Digest, &'static str), i64>,
    extents: redb::Table<'t, Digest, &'static [u8]>,
}

impl<'t> DataTables<'t> {
    pub(super) fn open(transaction: &'t WriteTransaction) -> Result<DataTables<'t>, KvError> {
        Ok(DataTables {
            blobs: transaction.open_table(BLOBS)?,
            copies: transaction.open_table(BLOB_COPIES)?,
            removals: transaction.open_table(BLOB_REMOVALS)?,
            extents: transaction.open_table(BLOB_EXTENTS)?,
        })
    }
}

/// What `audit` found.
#[derive(Debug, Default)]
pub struct Audit {
    pub images: u64,
    pub saving: Vec<ImageId>,
    pub blobs: Vec<BlobAudit>,
    /// The running totals as kept, and as counted from the same snapshot's records.
    pub totals: CatalogTotals,
    pub counted: CatalogTotals,
}

/// One blob as the metadata sees it.
#[derive(Debug)]
pub struct BlobAudit {
    pub digest: Digest,
    pub size: u64,
    /// The count in the blobs table (0: no row).
    pub references: u64,
    /// The image records naming it.
    pub counted: u64,
}

/// One page of a listing.
#[derive(Debug)]
pub enum ListOutcome {
    Page {
        images: Vec<ImageRecord>,
        /// Whether more matching images follow this page.
        more: bool,
    },
    /// The marker names no image the caller can see.
    MarkerNotFound,
}

/// What to list and in which order.
pub struct ListRequest<'a> {
    /// Sort keys with their directions, as the client gave them (at least one).
    pub sort: &'a [(SortKey, Direction)],
    /// Direction of the implicit `created_at`, `id` tie-breakers.
    pub tiebreak: Direction,
    /// Start after this image.
    pub marker: Option<ImageId>,
    /// Page size.
    pub limit: usize,
    /// Sets of images that hold every image the filters admit, most selective first (see
    /// `kv::list`); none: only the sort index helps.
    pub candidates: Vec<Candidates>,
}

/// The metadata store.
///
/// After a failed write (a full disk, most often) redb refuses every later write until the
/// database is closed and opened again. `Kv` notes the failure, answers writes with
/// `KvError::Unavailable` meanwhile, and `recover` (which the server calls every second while
/// `failed` says so) reopens the file once that can work. Reads go on against the old handle
/// until the reopen, since they still see the last committed state.
pub struct Kv {
    path: PathBuf,
    /// redb's cache, in bytes (kept for reopens).
    cache_size: usize,
    /// `None` only between dropping a failed handle and a reopen that has not yet worked.
    database: RwLock<Option<Arc<Database>>>,
    failed: AtomicBool,
    /// The custom properties the filter index covers (as built; see `build_filter_index`).
    indexed: IndexedProperties,
}

impl Kv {
    /// Opens or creates the database file, creates every table and upgrades old schemas, with
    /// the default cache (`DEFAULT_CACHE_SIZE`).
    #[cfg(test)]
    pub fn open(path: &Path) -> Result<Kv, KvError> {
        Kv::open_with_cache(path, DEFAULT_CACHE_SIZE, None)
    }

    /// `open` with a cache of `cache_size` bytes: the most memory redb keeps of the file's
    /// pages (redb's own default, 1 GiB, is more than a small appliance has to spare).
    /// `indexed` names the custom properties to index; when it differs from what the filter
    /// index was built with, the index is rebuilt here. `None` keeps what the database has
    /// (the default set for a database without a filter index).
    pub fn open_with_cache(
        path: &Path,
        cache_size: usize,
        indexed: Option<&IndexedProperties>,
    ) -> Result<Kv, KvError> {
        let mut kv = Kv {
            path: path.to_owned(),
            cache_size,
            database: RwLock::new(Some(Arc::new(open_database(path, cache_size)?))),
            failed: AtomicBool::new(false),
            indexed: IndexedProperties::default_set(),
        };
        let transaction = kv.begin_write()?;
        {
            let mut meta = transaction.open_table(META)?;
            let found = meta.get("schema_version")?.map(|value| value.value());
            match found {
                Some(version) if version > SCHEMA_VERSION => {
                    return Err(KvError::SchemaTooNew { found: version });
                }
                // Versions 1 to 5 only add tables (2: keys and members; 3: bad blobs; 4: tasks
                // and quotas; 5: metadata definitions), which the `open_table` calls below
                // create. Version 6 counts every referenced blob as a copy in the data
                // directory's store. Version 7 adds the mirror's tables, 8 the UI's sessions, 9 extent maps
                // (blobs stored before have none, and are described as all data).
                Some(version) => {
                    if version < 6 {
                        let blobs = transaction.open_table(BLOBS)?;
                        let mut copies = transaction.open_table(BLOB_COPIES)?;
                        for entry in blobs.iter()? {
                            let (digest, value) = entry?;
                            copies.insert((digest.value(), LEGACY_STORE), value.value().1)?;
                        }
                    }
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
            }
            transaction.open_table(BLOB_COPIES)?;
            transaction.open_table(BLOB_REMOVALS)?;
            transaction.open_table(IMAGES)?;
            transaction.open_table(IMAGE_SORT_INDEX)?;
            transaction.open_table(IMAGE_FILTER_INDEX)?;
            transaction.open_table(SETTINGS)?;
            transaction.open_table(DELETED_IMAGES)?;
            transaction.open_table(BLOBS)?;
            transaction.open_table(BLOB_EXTENTS)?;
            transaction.open_table(MEMBERS)?;
            transaction.open_table(MEMBERSHIPS)?;
            transaction.open_table(API_KEYS)?;
            transaction.open_table(API_KEY_NAMES)?;
            transaction.open_table(PROJECTS)?;
            transaction.open_table(SECRETS)?;
            transaction.open_table(BAD_BLOBS)?;
            transaction.open_table(TASKS)?;
            transaction.open_table(IMAGE_TASKS)?;
            transaction.open_table(QUOTAS)?;
            transaction.open_table(METADEF_NAMESPACES)?;
            transaction.open_table(METADEF_OBJECTS)?;
            transaction.open_table(METADEF_PROPERTIES)?;
            transaction.open_table(METADEF_TAGS)?;
            transaction.open_table(METADEF_ASSOCIATIONS)?;
            transaction.open_table(METADEF_RESOURCE_TYPES)?;
            transaction.open_table(MIRROR_SOURCES)?;
            transaction.open_table(MIRROR_EVIDENCE)?;
            transaction.open_table(UI_SESSIONS)?;
            transaction.open_table(USAGE)?;
        }
        kv.commit(transaction)?;
        let counted = kv
            .begin_read()?
            .open_table(META)?
            .get(USAGE_BUILT)?
            .is_some();
        if !counted {
            kv.rebuild_usage_totals()?;
        }
        let built = {
            let transaction = kv.begin_read()?;
            let settings = transaction.open_table(SETTINGS)?;
            settings
                .get("indexed_properties")?
                .map(|value| IndexedProperties::from_text(value.value()))
        };
        match (built, indexed) {
            (Some(built), Some(wanted)) if &built == wanted => kv.indexed = built,
            (Some(built), None) => kv.indexed = built,
            (_, wanted) => {
                kv.indexed = wanted
                    .cloned()
                    .unwrap_or_else(IndexedProperties::default_set);
                kv.build_filter_index()?;
            }
        }
        Ok(kv)
    }

    /// Images per write transaction while the filter index is built.
    const BUILD_BATCH: usize = 20_000;

    /// Builds the filter index from the image records, for `self.indexed`: at the upgrade to
    /// schema version 10 and when `indexed_properties` changes. The settings row naming what
    /// the index covers is removed first and written last, so an interrupted build (a crash,
    /// a full disk) is started again at the next open; batches of records keep each write
    /// transaction's memory bounded.
    fn build_filter_index(&self) -> Result<(), KvError> {
        let started = std::time::Instant::now();
        let transaction = self.begin_write()?;
        transaction
            .open_table(SETTINGS)?
            .remove("indexed_properties")?;
        transaction.delete_table(IMAGE_FILTER_INDEX)?;
        transaction.open_table(IMAGE_FILTER_INDEX)?;
        self.commit(transaction)?;
        let mut after: Option<ImageId> = None;
        let mut images_indexed = 0u64;
        loop {
            let batch: Vec<ImageRecord> = {
                let transaction = self.begin_read()?;
                let images = transaction.open_table(IMAGES)?;
                let range = match after {
                    None => images.range::<ImageId>(..)?,
                    Some(id) => images.range::<ImageId>((Bound::Excluded(id), Bound::Unbounded))?,
                };
                let mut batch = Vec::new();
                for entry in range.take(Self::BUILD_BATCH) {
                    let (_, bytes) = entry?;
                    batch.push(ImageRecord::decode(bytes.value())?);
                }
                batch
            };
            let Some(last) = batch.last() else {
                break;
            };
            after = Some(last.id);
            let mut transaction = self.begin_write()?;
            // Durable only with the settings row below: a crash before it rebuilds anyway.
            transaction.set_durability(Durability::None)?;
            {
                let mut filter_index = transaction.open_table(IMAGE_FILTER_INDEX)?;
                for record in &batch {
                    for key in filter::filter_keys(record, &self.indexed) {
                        filter_index.insert(key.as_slice(), ())?;
                    }
                }
            }
            self.commit(transaction)?;
            images_indexed += batch.len() as u64;
        }
        let transaction = self.begin_write()?;
        transaction
            .open_table(SETTINGS)?
            .insert("indexed_properties", self.indexed.to_text().as_str())?;
        self.commit(transaction)?;
        tracing::info!(
            images = images_indexed,
            indexed_properties = %self.indexed.patterns().join(","),
            seconds = started.elapsed().as_secs_f64(),
            "built the filter index"
        );
        Ok(())
    }

    /// Whether writes are failing; `recover` is due.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Closes and reopens the database after a failed write, so that writes work again once
    /// the disk does. Returns whether the store is healthy afterwards. Blocks.
    pub fn recover(&self) -> bool {
        if !self.failed() {
            return true;
        }
        let mut slot = self
            .database
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        // The old handle must be gone before the file can be opened again; transactions still
        // holding it make the reopen fail with `Locked`, and the next attempt retries.
        *slot = None;
        match open_database(&self.path, self.cache_size) {
            Ok(database) => {
                *slot = Some(Arc::new(database));
                self.failed.store(false, Ordering::Release);
                tracing::warn!("metadata database reopened: writes work again");
                true
            }
            Err(error) => {
                tracing::debug!(%error, "metadata database cannot be reopened yet");
                false
            }
        }
    }

    /// The current handle, or `Unavailable` while a reopen is pending.
    fn database(&self) -> Result<Arc<Database>, KvError> {
        self.database
            .read()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
            .ok_or(KvError::Unavailable)
    }

    fn begin_read(&self) -> Result<redb::ReadTransaction, KvError> {
        Ok(self.database()?.begin_read()?)
    }

    /// Notes a storage failure: from now on writes answer `Unavailable` until `recover`.
    fn note<T>(&self, result: Result<T, KvError>) -> Result<T, KvError> {
        if let Err(error) = &result
            && error.is_io()
            && !self.failed.swap(true, Ordering::AcqRel)
        {
            tracing::error!(%error, "metadata writes failed; refusing writes until the disk recovers");
        }
        result
    }

    /// Commits durably, noting a storage failure.
    fn commit(&self, transaction: WriteTransaction) -> Result<(), KvError> {
        self.note(transaction.commit().map_err(KvError::from))
    }

    fn begin_write(&self) -> Result<WriteTransaction, KvError> {
        if self.failed() {
            return Err(KvError::Unavailable);
        }
        let database = self.database()?;
        let mut transaction = self.note(database.begin_write().map_err(KvError::from))?;
        // Request bodies are untrusted input; two-phase commit keeps a crafted page from being
        // mistaken for a valid commit after a crash.
        transaction.set_two_phase_commit(true);
        transaction.set_durability(Durability::Immediate)?;
        Ok(transaction)
    }

    /// Puts back to `queued` every image left in `saving` by a crash, and returns their ids.
    /// Run at startup, before serving.
    pub fn requeue_interrupted_uploads(&self) -> Result<Vec<ImageId>, KvError> {
        // Only images in `saving`, `uploading` or `importing` can be receiving: their groups
        // of the status index are read, not the whole catalog (a cold start of a million
        // images otherwise decodes every record).
        let stuck: Vec<ImageRecord> = {
            let transaction = self.begin_read()?;
            let images = transaction.open_table(IMAGES)?;
            let sort_index = transaction.open_table(IMAGE_SORT_INDEX)?;
            let mut stuck = Vec::new();
            for status in [
                ImageStatus::Saving,
                ImageStatus::Uploading,
                ImageStatus::Importing,
            ] {
                let (start, end) = index::status_range(status);
                for entry in sort_index.range::<&[u8]>(start.as_slice()..end.as_slice())? {
                    let (key, _) = entry?;
                    let id = index::id_of(key.value())
                        .ok_or_else(|| KvError::Corrupt("short index key".into()))?;
                    let Some(bytes) = images.get(id)? else {
                        return Err(KvError::Corrupt(format!("index names missing image {id}")));
                    };
                    let record = ImageRecord::decode(bytes.value())?;
                    if crate::store::receiving(&record) {
                        stuck.push(record);
                    }
                }
            }
            stuck
        };
        let mut ids = Vec::new();
        for record in stuck {
            let changed = self.update_image(record.id, |image| {
                if crate::store::receiving(image) {
                    image.status = ImageStatus::Queued;
                }
                Ok::<(), KvError>(())
            })?;
            if changed.is_some() {
                ids.push(record.id);
            }
        }
        Ok(ids)
    }

    /// One image by id.
    pub fn image(&self, id: ImageId) -> Result<Option<ImageRecord>, KvError> {
        let transaction = self.begin_read()?;
        let images = transaction.open_table(IMAGES)?;
        match images.get(id)? {
            Some(bytes) => Ok(Some(ImageRecord::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Stores a new image unless its id is, or was, in use.
    pub fn insert_image(&self, record: &ImageRecord) -> Result<InsertOutcome, KvError> {
        let transaction = self.begin_write()?;
        {
            let deleted = transaction.open_table(DELETED_IMAGES)?;
            let mut images = transaction.open_table(IMAGES)?;
            if deleted.get(record.id)?.is_some() || images.get(record.id)?.is_some() {
                return Ok(InsertOutcome::IdTaken);
            }
            let mut indexes = Indexes::open(&transaction, &self.indexed)?;
            let mut data = DataTables::open(&transaction)?;
            write_record(&mut images, &mut indexes, &mut data, None, record)?;
        }
        self.commit(transaction)?;
        Ok(InsertOutcome::Inserted)
    }

    /// Inserts many new images in one transaction (each with its index entries and blob
    /// references, as `insert_image` does); ids already taken are skipped. Returns how many
    /// were inserted.
    pub fn insert_images(&self, records: &[ImageRecord]) -> Result<usize, KvError> {
        let transaction = self.begin_write()?;
        let mut inserted = 0;
        {
            let deleted = transaction.open_table(DELETED_IMAGES)?;
            let mut images = transaction.open_table(IMAGES)?;
            let mut indexes = Indexes::open(&transaction, &self.indexed)?;
            let mut data = DataTables::open(&transaction)?;
            for record in records {
                if deleted.get(record.id)?.is_some() || images.get(record.id)?.is_some() {
                    continue;
                }
                write_record(&mut images, &mut indexes, &mut data, None, record)?;
                inserted += 1;
            }
        }
        self.commit(transaction)?;
        Ok(inserted)
    }

    /// Applies `change` to an image in one transaction. Returns `None` if there is no such image;
    /// if `change` fails, nothing is written and its error is returned.
    pub fn update_image<E: From<KvError>>(
        &self,
        id: ImageId,
        change: impl FnOnce(&mut ImageRecord) -> Result<(), E>,
    ) -> Result<Option<Change>, E> {
        let transaction = self.begin_write()?;
        let unreferenced;
        let record;
        {
            let mut images = transaction.open_table(IMAGES).map_err(KvError::from)?;
            let old = match images.get(id).map_err(KvError::from)? {
                Some(bytes) => ImageRecord::decode(bytes.value()).map_err(KvError::from)?,
                None => return Ok(None),
            };
            let mut new = old.clone();
            change(&mut new)?;
            let mut indexes = Indexes::open(&transaction, &self.indexed)?;
            let mut data = DataTables::open(&transaction)?;
            unreferenced = write_record(&mut images, &mut indexes, &mut data, Some(&old), &new)?;
            record = new;
        }
        self.commit(transaction)?;
        Ok(Some(Change {
            record,
            unreferenced,
        }))
    }

    /// Deletes an image if `check` allows it, and remembers its id so it is never reused.
    pub fn delete_image<E: From<KvError>>(
        &self,
        id: ImageId,
        deleted_at: i64,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<Option<Change>, E> {
        self.remove_image(id, Some(deleted_at), check)
    }

    /// Takes back an image that the request creating it could not complete (a v1 create whose
    /// data was refused): removed like a deletion, but its id is not remembered, so the client
    /// may try again with the same id.
    pub fn withdraw_image<E: From<KvError>>(
        &self,
        id: ImageId,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<Option<Change>, E> {
        self.remove_image(id, None, check)
    }

    fn remove_image<E: From<KvError>>(
        &self,
        id: ImageId,
        deleted_at: Option<i64>,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<Option<Change>, E> {
        let transaction = self.begin_write()?;
        let unreferenced;
        let record;
        {
            let mut images = transaction.open_table(IMAGES).map_err(KvError::from)?;
            let old = match images.get(id).map_err(KvError::from)? {
                Some(bytes) => ImageRecord::decode(bytes.value()).map_err(KvError::from)?,
                None => return Ok(None),
            };
            check(&old)?;
            images.remove(id).map_err(KvError::from)?;
            let mut indexes = Indexes::open(&transaction, &self.indexed)?;
            indexes.remove(&old)?;
            let mut data = DataTables::open(&transaction)?;
            unreferenced = release_data(&mut data, &mut indexes, old.data.as_ref())?;
            if let Some(deleted_at) = deleted_at {
                let mut deleted = transaction
                    .open_table(DELETED_IMAGES)
                    .map_err(KvError::from)?;
                deleted.insert(id, deleted_at).map_err(KvError::from)?;
            }
            access::remove_all_members(&transaction, id)?;
            transaction
                .open_table(MIRROR_EVIDENCE)
                .map_err(KvError::from)?
                .remove(id)
                .map_err(KvError::from)?;
            record = old;
        }
        self.commit(transaction)?;
        Ok(Some(Change {
            record,
            unreferenced,
        }))
    }

    /// Changes several images in one transaction: `select` picks the images `plan` sees, and
    /// `plan` says what to insert, rewrite and delete. Returns `None`, writing nothing, if an
    /// id to insert is or was in use; otherwise the blob copies left unreferenced.
    pub fn change_images<E: From<KvError>>(
        &self,
        select: impl Fn(&ImageRecord) -> bool,
        plan: impl FnOnce(Vec<ImageRecord>) -> Result<Batch, E>,
    ) -> Result<Option<Vec<BlobCopy>>, E> {
        let transaction = self.begin_write()?;
        let mut unreferenced = Vec::new();
        {
            let mut images = transaction.open_table(IMAGES).map_err(KvError::from)?;
            let mut selected = Vec::new();
            for entry in images.iter().map_err(KvError::from)? {
                let (_, bytes) = entry.map_err(KvError::from)?;
                let record = ImageRecord::decode(bytes.value()).map_err(KvError::from)?;
                if select(&record) {
                    selected.push(record);
                }
            }
            let batch = plan(selected.clone())?;
            let mut deleted = transaction
                .open_table(DELETED_IMAGES)
                .map_err(KvError::from)?;
            let mut indexes = Indexes::open(&transaction, &self.indexed)?;
            let mut data = DataTables::open(&transaction)?;
            for record in &batch.insert {
                let taken = deleted.get(record.id).map_err(KvError::from)?.is_some()
                    || images.get(record.id).map_err(KvError::from)?.is_some();
                if taken {
                    return Ok(None);
                }
                write_record(&mut images, &mut indexes, &mut data, None, record)?;
            }
            for record in &batch.update {
                let Some(old) = selected.iter().find(|old| old.id == record.id) else {
                    return Err(E::from(KvError::Corrupt(format!(
                        "image {} was changed without being selected",
                        record.id
                    ))));
                };
                unreferenced.extend(write_record(
                    &mut images,
                    &mut indexes,
                    &mut data,
                    Some(old),
                    record,
                )?);
            }
            for id in &batch.delete {
                let Some(old) = selected.iter().find(|old| old.id == *id) else {
                    return Err(E::from(KvError::Corrupt(format!(
                        "image {id} was deleted without being selected"
                    ))));
                };
                images.remove(*id).map_err(KvError::from)?;
                indexes.remove(old)?;
                unreferenced.extend(release_data(&mut data, &mut indexes, old.data.as_ref())?);
                deleted
                    .insert(*id, batch.deleted_at)
                    .map_err(KvError::from)?;
            }
            drop(data);
            let mut evidence = transaction
                .open_table(MIRROR_EVIDENCE)
                .map_err(KvError::from)?;
            for (id, bytes) in &batch.evidence {
                evidence
                    .insert(*id, bytes.as_slice())
                    .map_err(KvError::from)?;
            }
            for id in &batch.delete {
                evidence.remove(*id).map_err(KvError::from)?;
                access::remove_all_members(&transaction, *id)?;
            }
        }
        self.commit(transaction)?;
        Ok(Some(unreferenced))
    }

    /// Every image (a scan: for the mirror's few sources, not for listings).
    pub fn all_images(&self) -> Result<Vec<ImageRecord>, KvError> {
        let transaction = self.begin_read()?;
        let images = transaction.open_table(IMAGES)?;
        let mut records = Vec::new();
        for entry in images.iter()? {
            let (_, bytes) = entry?;
            records.push(ImageRecord::decode(bytes.value())?);
        }
        Ok(records)
    }

    /// What vouched for a mirrored image.
    pub fn mirror_evidence(&self, id: ImageId) -> Result<Option<Vec<u8>>, KvError> {
        let transaction = self.begin_read()?;
        let table = transaction.open_table(MIRROR_EVIDENCE)?;
        Ok(table.get(id)?.map(|value| value.value().to_vec()))
    }

    /// The mirror's stored state of a source.
    pub fn mirror_state(&self, source: &str) -> Result<Option<Vec<u8>>, KvError> {
        let transaction = self.begin_read()?;
        let table = transaction.open_table(MIRROR_SOURCES)?;
        Ok(table.get(source)?.map(|value| value.value().to_vec()))
    }

    /// Every source's stored state.
    pub fn mirror_states(&self) -> Result<Vec<(String, Vec<u8>)>, KvError> {
        let transaction = self.begin_read()?;
        let table = transaction.open_table(MIRROR_SOURCES)?;
        let mut states = Vec::new();
        for entry in table.iter()? {
            let (key, value) = entry?;
            states.push((key.value().to_owned(), value.value().to_vec()));
        }
        Ok(states)
    }

    pub fn set_mirror_state(&self, source: &str, state: &[u8]) -> Result<(), KvError> {
        let transaction = self.begin_write()?;
        transaction
            .open_table(MIRROR_SOURCES)?
            .insert(source, state)?;
        self.commit(transaction)
    }

    /// Marks a blob damaged (keeps the first time it was found).
    pub fn mark_bad_blob(&self, digest: Digest, found_at: i64) -> Result<(), KvError> {
        let transaction = self.begin_write()?;
        {
            let mut bad = transaction.open_table(BAD_BLOBS)?;
            if bad.get(digest)?.is_none() {
                bad.insert(digest, found_at)?;
            }
        }
        self.commit(transaction)
    }

    /// Clears a blob's damage mark; true if it had one.
    pub fn clear_bad_blob(&self, digest: Digest) -> Result<bool, KvError> {
        let transaction = self.begin_write()?;
        let had = {
            let mut bad = transaction.open_table(BAD_BLOBS)?;
            bad.remove(digest)?.is_some()
        };
        self.commit(transaction)?;
        Ok(had)
    }

    /// Whether a blob is marked damaged.
    /// The extent map recorded for a blob, if any.
    pub fn extents(&self, digest: Digest) -> Result<Option<Extents>, KvError> {
        let transaction = self.begin_read()?;
        let table = transaction.open_table(BLOB_EXTENTS)?;
        table
            .get(digest)?
            .map(|value| Extents::decode(value.value()))
            .transpose()
    }

    pub fn is_bad_blob(&self, digest: Digest) -> Result<bool, KvError> {
        let transaction = self.begin_read()?;
        let bad = transaction.open_table(BAD_BLOBS)?;
        Ok(bad.get(digest)?.is_some())
    }

    /// Every blob marked damaged, with when it was found.
    pub fn bad_blobs(&self) -> Result<Vec<(Digest, i64)>, KvError> {
        let transaction = self.begin_read()?;
        let bad = transaction.open_table(BAD_BLOBS)?;
        let mut found = Vec::new();
        for entry in bad.iter()? {
            let (digest, at) = entry?;
            found.push((digest.value(), at.value()));
        }
        Ok(found)
    }

    /// Every blob some image references, with its size.
    pub fn blob_sizes(&self) -> Result<Vec<(Digest, u64)>, KvError> {
        let transaction = self.begin_read()?;
        let blobs = transaction.open_table(BLOBS)?;
        let mut found = Vec::new();
        for entry in blobs.iter()? {
            let (digest, value) = entry?;
            found.push((digest.value(), value.value().0));
        }
        Ok(found)
    }

    /// A counter or time kept in the meta table.
    pub fn meta(&self, name: &str) -> Result<Option<u64>, KvError> {
        let transaction = self.begin_read()?;
        let meta = transaction.open_table(META)?;
        Ok(meta.get(name)?.map(|value| value.value()))
    }

    /// Sets a counter or time in the meta table (not `schema_version`).
    pub fn set_meta(&self, name: &str, value: u64) -> Result<(), KvError> {
        debug_assert_ne!(name, "schema_version");
        let transaction = self.begin_write()?;
        transaction.open_table(META)?.insert(name, value)?;
        self.commit(transaction)
    }

    /// Writes a consistent copy of the whole database to a new file at `path` (one read
    /// transaction, every table), and returns the blobs that copy references with their sizes.
    /// The file must not exist.
    pub fn snapshot(&self, path: &Path) -> Result<Vec<(Digest, u64)>, KvError> {
        if path.exists() {
            return Err(KvError::Redb(redb::Error::Io(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} exists", path.display()),
            ))));
        }
        let source = self.begin_read()?;
        let copy = Database::create(path)?;
        let target = copy.begin_write()?;
        copy_table(&source, &target, META)?;
        copy_table(&source, &target, IMAGES)?;
        copy_table(&source, &target, IMAGE_SORT_INDEX)?;
        // With its settings row, so a restore starts without rebuilding the filter index.
        copy_table(&source, &target, IMAGE_FILTER_INDEX)?;
        copy_table(&source, &target, SETTINGS)?;
        copy_table(&source, &target, DELETED_IMAGES)?;
        copy_table(&source, &target, BLOBS)?;
        copy_table(&source, &target, BLOB_COPIES)?;
        copy_table(&source, &target, BLOB_REMOVALS)?;
        copy_table(&source, &target, BLOB_EXTENTS)?;
        copy_table(&source, &target, MEMBERS)?;
        copy_table(&source, &target, MEMBERSHIPS)?;
        copy_table(&source, &target, API_KEYS)?;
        copy_table(&source, &target, API_KEY_NAMES)?;
        copy_table(&source, &target, PROJECTS)?;
        copy_table(&source, &target, SECRETS)?;
        copy_table(&source, &target, BAD_BLOBS)?;
        copy_table(&source, &target, TASKS)?;
        copy_table(&source, &target, IMAGE_TASKS)?;
        copy_table(&source, &target, QUOTAS)?;
        copy_table(&source, &target, METADEF_NAMESPACES)?;
        copy_table(&source, &target, METADEF_OBJECTS)?;
        copy_table(&source, &target, METADEF_PROPERTIES)?;
        copy_table(&source, &target, METADEF_TAGS)?;
        copy_table(&source, &target, METADEF_ASSOCIATIONS)?;
        copy_table(&source, &target, METADEF_RESOURCE_TYPES)?;
        // The mirror's per-source state and its evidence: without them a restored mirror
        // cannot `verify` or bundle its images. Web UI sessions are left out on purpose: a
        // restore signs everybody out rather than reviving old cookies.
        copy_table(&source, &target, MIRROR_SOURCES)?;
        copy_table(&source, &target, MIRROR_EVIDENCE)?;
        copy_table(&source, &target, USAGE)?;
        target.commit()?;
        let blobs = source.open_table(BLOBS)?;
        let mut referenced = Vec::new();
        for entry in blobs.iter()? {
            let (digest, value) = entry?;
            referenced.push((digest.value(), value.value().0));
        }
        Ok(referenced)
    }

    /// Sets a blob's reference count to what the images say (`ocellus check --repair`); a
    /// count of zero removes the row. Returns the count it had.
    pub fn set_reference_count(
        &self,
        digest: Digest,
        size: u64,
        count: u64,
    ) -> Result<u64, KvError> {
        let transaction = self.begin_write()?;
        let had = {
            let mut blobs = transaction.open_table(BLOBS)?;
            let had = blobs.get(digest)?.map(|value| value.value());
            if count == 0 {
                blobs.remove(digest)?;
                transaction.open_table(BLOB_EXTENTS)?.remove(digest)?;
            } else {
                blobs.insert(digest, (size, count))?;
            }
            let mut totals = usage::Totals::open(&transaction)?;
            // The row's old size leaves the totals and the new one enters (they differ only
            // if a caller passes another size).
            if let Some((old_size, references)) = had
                && references > 0
            {
                totals.blob(old_size, false)?;
            }
            if count > 0 {
                totals.blob(size, true)?;
            }
            had.map_or(0, |(_, references)| references)
        };
        self.commit(transaction)?;
        Ok(had)
    }

    /// How many images reference a blob.
    pub fn blob_references(&self, digest: Digest) -> Result<u64, KvError> {
        let transaction = self.begin_read()?;
        let blobs = transaction.open_table(BLOBS)?;
        Ok(blobs.get(digest)?.map(|value| value.value().1).unwrap_or(0))
    }

    /// How many images name `store` as holding a copy of a blob.
    pub fn copy_references(&self, digest: Digest, store: &str) -> Result<u64, KvError> {
        let transaction = self.begin_read()?;
        let copies = transaction.open_table(BLOB_COPIES)?;
        Ok(copies
            .get((digest, store))?
            .map_or(0, |value| value.value()))
    }

    /// Every blob some image holds in `store`, with its size.
    pub fn copies_in(&self, store: &str) -> Result<HashSet<Digest>, KvError> {
        let transaction = self.begin_read()?;
        let copies = transaction.open_table(BLOB_COPIES)?;
        let mut digests = HashSet::new();
        for entry in copies.iter()? {
            let (key, _) = entry?;
            let (digest, name) = key.value();
            if name == store {
                digests.insert(digest);
            }
        }
        Ok(digests)
    }

    /// The ids of every store some image's bytes are in.
    pub fn stores_in_use(&self) -> Result<std::collections::BTreeSet<String>, KvError> {
        let transaction = self.begin_read()?;
        let copies = transaction.open_table(BLOB_COPIES)?;
        let mut stores = std::collections::BTreeSet::new();
        for entry in copies.iter()? {
            stores.insert(entry?.0.value().1.to_owned());
        }
        Ok(stores)
    }

    /// Writes the intent to remove a copy unless an image references it: before bytes are
    /// placed under a content address, so that a crash before the reference is committed leaves
    /// a copy the sweep knows about. Keeps an older intent's time.
    pub fn note_intent(&self, digest: Digest, store: &str) -> Result<(), KvError> {
        let transaction = self.begin_write()?;
        {
            let copies = transaction.open_table(BLOB_COPIES)?;
            let mut removals = transaction.open_table(BLOB_REMOVALS)?;
            if copies.get((digest, store))?.is_none() && removals.get((digest, store))?.is_none() {
                removals.insert((digest, store), unix_seconds())?;
            }
        }
        self.commit(transaction)
    }

    /// Every removal intent: the copy and the Unix time it was written.
    pub fn removal_intents(&self) -> Result<Vec<(BlobCopy, i64)>, KvError> {
        let transaction = self.begin_read()?;
        let removals = transaction.open_table(BLOB_REMOVALS)?;
        let mut intents = Vec::new();
        for entry in removals.iter()? {
            let (key, since) = entry?;
            let (digest, store) = key.value();
            intents.push((
                BlobCopy {
                    digest,
                    store: store.to_owned(),
                },
                since.value(),
            ));
        }
        Ok(intents)
    }

    /// Whether a removal intent exists for a copy.
    pub fn has_intent(&self, digest: Digest, store: &str) -> Result<bool, KvError> {
        let transaction = self.begin_read()?;
        let removals = transaction.open_table(BLOB_REMOVALS)?;
        Ok(removals.get((digest, store))?.is_some())
    }

    /// Forgets a removal intent (the copy is gone, or referenced again).
    pub fn clear_intent(&self, digest: Digest, store: &str) -> Result<(), KvError> {
        let transaction = self.begin_write()?;
        transaction
            .open_table(BLOB_REMOVALS)?
            .remove((digest, store))?;
        self.commit(transaction)
    }

    /// Counts the usage totals afresh from the records and writes them, with `meta_v1`'s
    /// `usage_totals` row, in one transaction: when a database gains them (schema 11) and at
    /// `ocellus check --repair`.
    pub fn rebuild_usage_totals(&self) -> Result<(), KvError> {
        let transaction = self.begin_write()?;
        usage::rebuild(&transaction)?;
        transaction.open_table(META)?.insert(USAGE_BUILT, 1)?;
        self.commit(transaction)
    }

    /// The catalog's running totals: a few rows, whatever the catalog's size.
    pub fn totals(&self) -> Result<CatalogTotals, KvError> {
        let transaction = self.begin_read()?;
        CatalogTotals::read(&transaction.open_table(USAGE)?)
    }

    /// Empties the running totals, and with `forget_built` also the row saying they were
    /// built: what a database from before schema 11, or a damaged one, looks like.
    #[cfg(test)]
    pub(crate) fn forget_usage_totals(&self, forget_built: bool) {
        let transaction = self.begin_write().unwrap();
        transaction.delete_table(USAGE).unwrap();
        transaction.open_table(USAGE).unwrap();
        if forget_built {
            transaction
                .open_table(META)
                .unwrap()
                .remove(USAGE_BUILT)
                .unwrap();
        }
        self.commit(transaction).unwrap();
    }

    /// Reads every image and blob row for a consistency check: how many records name each
    /// digest against the stored reference count, which images are `saving`, and the running
    /// totals against a fresh count, all from one snapshot.
    pub fn audit(&self) -> Result<Audit, KvError> {
        let transaction = self.begin_read()?;
        let images = transaction.open_table(IMAGES)?;
        let blobs = transaction.open_table(BLOBS)?;
        let mut audit = Audit {
            totals: CatalogTotals::read(&transaction.open_table(USAGE)?)?,
            ..Audit::default()
        };
        let mut count = usage::Count::default();
        let mut named: std::collections::BTreeMap<Digest, (u64, u64)> = Default::default();
        for entry in images.iter()? {
            let (_, bytes) = entry?;
            let record = ImageRecord::decode(bytes.value())?;
            audit.images += 1;
            count.add_record(&record);
            if record.status == ImageStatus::Saving {
                audit.saving.push(record.id);
            }
            if let Some(data) = &record.data {
                let entry = named.entry(data.digest).or_insert((data.size, 0));
                entry.1 += 1;
            }
        }
        for entry in blobs.iter()? {
            let (digest, value) = entry?;
            let (size, references) = value.value();
            count.add_blob(size, references);
            let digest = digest.value();
            let counted = named.remove(&digest).map_or(0, |(_, count)| count);
            audit.blobs.push(BlobAudit {
                digest,
                size,
                references,
                counted,
            });
        }
        for (digest, (size, counted)) in named {
            audit.blobs.push(BlobAudit {
                digest,
                size,
                references: 0,
                counted,
            });
        }
        audit.counted = count.totals()?;
        Ok(audit)
    }
}

/// Opens (creating if needed) the database file, telling a lock held by another process apart.
/// The database cache when none is configured: 64 MiB.
pub const DEFAULT_CACHE_SIZE: usize = 64 << 20;

fn open_database(path: &Path, cache_size: usize) -> Result<Database, KvError> {
    match redb::Builder::new().set_cache_size(cache_size).create(path) {
        Ok(database) => Ok(database),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => Err(KvError::Locked),
        Err(error) => Err(error.into()),
    }
}

type ImagesTable<'t> = redb::Table<'t, ImageId, &'static [u8]>;
type IndexTableMut<'t> = redb::Table<'t, &'static [u8], ()>;

/// The index tables a change of image records keeps in step with them.
pub(super) struct Indexes<'t> {
    sort: IndexTableMut<'t>,
    filter: IndexTableMut<'t>,
    properties: IndexedProperties,
    totals: usage::Totals<'t>,
}

impl<'t> Indexes<'t> {
    pub(super) fn open(
        transaction: &'t WriteTransaction,
        properties: &IndexedProperties,
    ) -> Result<Indexes<'t>, KvError> {
        Ok(Indexes {
            sort: transaction.open_table(IMAGE_SORT_INDEX)?,
            filter: transaction.open_table(IMAGE_FILTER_INDEX)?,
            properties: properties.clone(),
            totals: usage::Totals::open(transaction)?,
        })
    }

    /// Moves the entries of `old` (if any) to those of `new`.
    fn replace(&mut self, old: Option<&ImageRecord>, new: &ImageRecord) -> Result<(), KvError> {
        self.totals.replace(old, Some(new))?;
        let new_sort = index::all_index_keys(new);
        let new_filter = filter::filter_keys(new, &self.properties);
        if let Some(old) = old {
            for key in index::all_index_keys(old) {
                if !new_sort.contains(&key) {
                    self.sort.remove(key.as_slice())?;
                }
            }
            for key in filter::filter_keys(old, &self.properties) {
                if !new_filter.contains(&key) {
                    self.filter.remove(key.as_slice())?;
                }
            }
        }
        for key in &new_sort {
            self.sort.insert(key.as_slice(), ())?;
        }
        for key in &new_filter {
            self.filter.insert(key.as_slice(), ())?;
        }
        Ok(())
    }

    /// Removes every entry of a deleted record.
    fn remove(&mut self, old: &ImageRecord) -> Result<(), KvError> {
        self.totals.replace(Some(old), None)?;
        for key in index::all_index_keys(old) {
            self.sort.remove(key.as_slice())?;
        }
        for key in filter::filter_keys(old, &self.properties) {
            self.filter.remove(key.as_slice())?;
        }
        Ok(())
    }
}

/// Copies every row of one table between databases.
fn copy_table<K: redb::Key + 'static, V: Value + 'static>(
    source: &redb::ReadTransaction,
    target: &WriteTransaction,
    definition: TableDefinition<K, V>,
) -> Result<(), KvError> {
    let from = source.open_table(definition)?;
    let mut to = target.open_table(definition)?;
    for entry in from.iter()? {
        let (key, value) = entry?;
        to.insert(key.value(), value.value())?;
    }
    Ok(())
}

/// Writes `new` over `old`, keeping the sort index and blob reference counts in step.
/// Returns the copies that lost their last reference.
pub(super) fn write_record(
    images: &mut ImagesTable<'_>,
    indexes: &mut Indexes<'_>,
    data: &mut DataTables<'_>,
    old: Option<&ImageRecord>,
    new: &ImageRecord,
) -> Result<Vec<BlobCopy>, KvError> {
    images.insert(new.id, new.encode().as_slice())?;
    indexes.replace(old, new)?;
    let old_data = old.and_then(|record| record.data.as_ref());
    let new_data = new.data.as_ref();
    if old_data.map(|data| data.digest) != new_data.map(|data| data.digest) {
        if let Some(added) = new_data {
            let (size, references) = data
                .blobs
                .get(added.digest)?
                .map(|value| value.value())
                .unwrap_or((added.size, 0));
            data.blobs.insert(added.digest, (size, references + 1))?;
            if references == 0 {
                indexes.totals.blob(size, true)?;
            }
            if let Some(zeros) = &added.zeros
                && data.extents.get(added.digest)?.is_none()
            {
                data.extents
                    .insert(added.digest, zeros.encode().as_slice())?;
            }
            for store in &added.stores {
                add_copy(data, added.digest, store)?;
            }
        }
        return release_data(data, indexes, old_data);
    }
    // The same blob: only the stores holding it may have changed.
    let (Some(old_data), Some(new_data)) = (old_data, new_data) else {
        return Ok(Vec::new());
    };
    for store in &new_data.stores {
        if !old_data.stores.contains(store) {
            add_copy(data, new_data.digest, store)?;
        }
    }
    let mut unreferenced = Vec::new();
    for store in &old_data.stores {
        if !new_data.stores.contains(store) {
            unreferenced.extend(drop_copy(data, old_data.digest, store)?);
        }
    }
    Ok(unreferenced)
}

/// Drops an image's references to its blob and the blob's copies.
fn release_data(
    data: &mut DataTables<'_>,
    indexes: &mut Indexes<'_>,
    old: Option<&ImageData>,
) -> Result<Vec<BlobCopy>, KvError> {
    let Some(old) = old else {
        return Ok(Vec::new());
    };
    let Some((size, references)) = data.blobs.get(old.digest)?.map(|value| value.value()) else {
        return Err(KvError::Corrupt(format!(
            "image references unknown blob {:?}",
            old.digest
        )));
    };
    if references <= 1 {
        data.blobs.remove(old.digest)?;
        data.extents.remove(old.digest)?;
        if references == 1 {
            indexes.totals.blob(size, false)?;
        }
    } else {
        data.blobs.insert(old.digest, (size, references - 1))?;
    }
    let mut unreferenced = Vec::new();
    for store in &old.stores {
        unreferenced.extend(drop_copy(data, old.digest, store)?);
    }
    Ok(unreferenced)
}

/// Counts one more reference to a blob's copy in `store`; a pending removal of it is cancelled.
fn add_copy(data: &mut DataTables<'_>, digest: Digest, store: &str) -> Result<(), KvError> {
    let count = data
        .copies
        .get((digest, store))?
        .map_or(0, |value| value.value());
    data.copies.insert((digest, store), count + 1)?;
    data.removals.remove((digest, store))?;
    Ok(())
}

/// Counts one reference less; the last one writes the removal intent and returns the copy.
fn drop_copy(
    data: &mut DataTables<'_>,
    digest: Digest,
    store: &str,
) -> Result<Option<BlobCopy>, KvError> {
    let count = data
        .copies
        .get((digest, store))?
        .map_or(0, |value| value.value());
    if count > 1 {
        data.copies.insert((digest, store), count - 1)?;
        return Ok(None);
    }
    data.copies.remove((digest, store))?;
    data.removals.insert((digest, store), unix_seconds())?;
    Ok(Some(BlobCopy {
        digest,
        store: store.to_owned(),
    }))
}

/// Seconds since the Unix epoch.
fn unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_secs()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(id: u8, digest: Digest, stores: &[&str]) -> ImageRecord {
        ImageRecord {
            status: ImageStatus::Active,
            disk_format: Some("raw".into()),
            container_format: Some("bare".into()),
            data: Some(ImageData {
                digest,
                size: 10,
                virtual_size: None,
                md5: [0; 16],
                sha512: [0; 64],
                stores: stores.iter().map(|store| (*store).to_owned()).collect(),
                zeros: None,
            }),
            ..ImageRecord::new(ImageId([id; 16]), Some("lab".into()), 1)
        }
    }

    /// A version-5 catalog (version-1 records, no copy table) opens with every referenced
    /// blob counted as a copy in `fs`, so deleting its images lets the copies go.
    #[test]
    fn version_5_catalogs_count_their_blobs_as_copies_in_fs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let digest = Digest([9; 32]);
        {
            let database = redb::Database::create(&path).unwrap();
            let transaction = database.begin_write().unwrap();
            {
                let mut meta = transaction.open_table(META).unwrap();
                meta.insert("schema_version", 5).unwrap();
                let mut images = transaction.open_table(IMAGES).unwrap();
                for id in [1, 2] {
                    let record = image(id, digest, &["fs"]);
                    images
                        .insert(record.id, record.encode_v1().as_slice())
                        .unwrap();
                }
                let mut blobs = transaction.open_table(BLOBS).unwrap();
                blobs.insert(digest, (10, 2)).unwrap();
            }
            transaction.commit().unwrap();
        }
        let kv = Kv::open(&path).unwrap();
        assert_eq!(kv.copy_references(digest, LEGACY_STORE).unwrap(), 2);
        assert_eq!(kv.stores_in_use().unwrap().len(), 1);
        let first = kv
            .delete_image(ImageId([1; 16]), 5, |_| Ok::<(), KvError>(()))
            .unwrap()
            .unwrap();
        assert!(first.unreferenced.is_empty());
        let last = kv
            .delete_image(ImageId([2; 16]), 6, |_| Ok::<(), KvError>(()))
            .unwrap()
            .unwrap();
        assert_eq!(
            last.unreferenced,
            vec![BlobCopy {
                digest,
                store: LEGACY_STORE.into()
            }]
        );
        // The copy's removal intent is written in the same transaction.
        assert_eq!(kv.removal_intents().unwrap().len(), 1);
    }

    /// Copies are counted per store: dropping a store from one image releases that copy only
    /// when no other image names the store; adding one back cancels the intent.
    #[test]
    fn copies_are_counted_per_store() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let digest = Digest([4; 32]);
        kv.insert_image(&image(1, digest, &["fs", "ceph"])).unwrap();
        kv.insert_image(&image(2, digest, &["ceph"])).unwrap();
        assert_eq!(kv.copy_references(digest, "ceph").unwrap(), 2);
        let change = kv
            .update_image(ImageId([1; 16]), |record| {
                record.data.as_mut().unwrap().stores = vec!["ceph".into()];
                Ok::<(), KvError>(())
            })
            .unwrap()
            .unwrap();
        assert_eq!(
            change.unreferenced,
            vec![BlobCopy {
                digest,
                store: "fs".into()
            }]
        );
        let change = kv
            .update_image(ImageId([2; 16]), |record| {
                record.data.as_mut().unwrap().stores = vec!["fs".into()];
                Ok::<(), KvError>(())
            })
            .unwrap()
            .unwrap();
        assert!(change.unreferenced.is_empty(), "image 1 still names ceph");
        assert_eq!(kv.copy_references(digest, "fs").unwrap(), 1);
        // `fs` is referenced again: its intent is gone.
        assert!(
            kv.removal_intents()
                .unwrap()
                .iter()
                .all(|(copy, _)| copy.store != "fs")
        );
        assert_eq!(kv.blob_references(digest).unwrap(), 2);
    }

    /// An extent map arrives with a blob's first reference, stays while any image references
    /// the blob (a later upload of the same bytes does not replace it), and leaves with the
    /// last reference: no map outlives its blob.
    #[test]
    fn extent_maps_live_exactly_as_long_as_their_blob() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let digest = Digest([6; 32]);
        let map = |zero: Vec<(u64, u64)>| Extents { size: 10, zero };
        let mut first = image(1, digest, &["fs"]);
        first.data.as_mut().unwrap().zeros = Some(Arc::new(map(vec![(0, 5)])));
        kv.insert_image(&first).unwrap();
        assert_eq!(kv.extents(digest).unwrap(), Some(map(vec![(0, 5)])));
        let mut second = image(2, digest, &["fs"]);
        second.data.as_mut().unwrap().zeros = Some(Arc::new(map(vec![])));
        kv.insert_image(&second).unwrap();
        assert_eq!(kv.extents(digest).unwrap(), Some(map(vec![(0, 5)])));
        // Read back, an image's data carries no map of its own.
        assert_eq!(
            kv.image(ImageId([1; 16]))
                .unwrap()
                .unwrap()
                .data
                .unwrap()
                .zeros,
            None
        );
        kv.delete_image(ImageId([1; 16]), 5, |_| Ok::<(), KvError>(()))
            .unwrap();
        assert!(kv.extents(digest).unwrap().is_some());
        kv.delete_image(ImageId([2; 16]), 6, |_| Ok::<(), KvError>(()))
            .unwrap();
        assert_eq!(kv.extents(digest).unwrap(), None);
    }

    /// The bulk path writes what one-by-one inserts write: records, blob references, and it
    /// skips ids already taken.
    #[test]
    fn bulk_inserts_count_references_and_skip_taken_ids() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let digest = Digest([7; 32]);
        kv.insert_image(&image(1, digest, &["fs"])).unwrap();
        let batch = [
            image(1, digest, &["fs"]),
            image(2, digest, &["fs"]),
            image(3, digest, &["fs"]),
        ];
        assert_eq!(kv.insert_images(&batch).unwrap(), 2);
        assert_eq!(kv.blob_references(digest).unwrap(), 3);
        assert_eq!(kv.copy_references(digest, "fs").unwrap(), 3);
        assert!(kv.image(ImageId([3; 16])).unwrap().is_some());
        assert_eq!(kv.insert_images(&batch).unwrap(), 0);
        assert_eq!(kv.blob_references(digest).unwrap(), 3);
    }

    /// Interrupted uploads are found through the status index: exactly the images still
    /// receiving (`saving`, or `uploading`/`importing` without data) go back to `queued`.
    #[test]
    fn interrupted_uploads_are_found_by_status() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let digest = Digest([8; 32]);
        let with = |id: u8, status: ImageStatus, data: bool| {
            let mut record = image(id, digest, &["fs"]);
            record.status = status;
            if !data {
                record.data = None;
            }
            record
        };
        let records = [
            with(1, ImageStatus::Saving, false),
            with(2, ImageStatus::Uploading, false),
            with(3, ImageStatus::Uploading, true),
            with(4, ImageStatus::Importing, false),
            with(5, ImageStatus::Active, true),
            with(6, ImageStatus::Queued, false),
        ];
        assert_eq!(kv.insert_images(&records).unwrap(), 6);
        let mut requeued = kv.requeue_interrupted_uploads().unwrap();
        requeued.sort();
        assert_eq!(
            requeued,
            vec![ImageId([1; 16]), ImageId([2; 16]), ImageId([4; 16])]
        );
        for (id, status) in [
            (1, ImageStatus::Queued),
            (2, ImageStatus::Queued),
            (3, ImageStatus::Uploading),
            (4, ImageStatus::Queued),
            (5, ImageStatus::Active),
        ] {
            assert_eq!(kv.image(ImageId([id; 16])).unwrap().unwrap().status, status);
        }
        assert!(kv.requeue_interrupted_uploads().unwrap().is_empty());
    }

    /// The images a candidate set names according to the index alone (`matches` admits all):
    /// a set whose lookup is not indexed is skipped, so then every image comes back.
    fn indexed_ids(kv: &Kv, lookup: Lookup) -> Vec<u8> {
        let sort = [(SortKey::CreatedAt, Direction::Asc)];
        let request = ListRequest {
            sort: &sort,
            tiebreak: Direction::Asc,
            marker: None,
            limit: 100,
            candidates: vec![Candidates(vec![Span::Lookup(lookup)])],
        };
        match kv.list_images(&request, &|_| true, &|_| true).unwrap() {
            ListOutcome::Page { images, .. } => images.iter().map(|image| image.id.0[0]).collect(),
            ListOutcome::MarkerNotFound => unreachable!(),
        }
    }

    /// The filter index covers the configured properties, is rebuilt when they change, keeps
    /// what it has when opened without a setting, and a build that did not finish (no settings
    /// row) is done again at the next open.
    #[test]
    fn the_filter_index_follows_indexed_properties_and_finishes_its_build() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let records: Vec<ImageRecord> = (1..=4u8)
            .map(|id| {
                let mut record = image(id, Digest([id; 32]), &["fs"]);
                record.created_at = i64::from(id);
                record.properties.insert(
                    "note".into(),
                    if id % 2 == 0 { "even" } else { "odd" }.into(),
                );
                record.properties.insert(
                    "os_distro".into(),
                    if id < 3 { "debian" } else { "ubuntu" }.into(),
                );
                record
            })
            .collect();
        let note = || Lookup::Property("note".into(), "even".into());
        let distro = || Lookup::Property("os_distro".into(), "debian".into());
        {
            let kv = Kv::open(&path).unwrap();
            kv.insert_images(&records).unwrap();
            assert_eq!(indexed_ids(&kv, distro()), vec![1, 2]);
            assert_eq!(indexed_ids(&kv, note()), vec![1, 2, 3, 4]);
        }
        let notes = IndexedProperties::new(vec!["no*".into()]);
        {
            let kv = Kv::open_with_cache(&path, DEFAULT_CACHE_SIZE, Some(&notes)).unwrap();
            assert_eq!(indexed_ids(&kv, note()), vec![2, 4]);
            assert_eq!(indexed_ids(&kv, distro()), vec![1, 2, 3, 4]);
        }
        {
            // Offline commands keep what the index was built with.
            let kv = Kv::open_with_cache(&path, DEFAULT_CACHE_SIZE, None).unwrap();
            assert_eq!(indexed_ids(&kv, note()), vec![2, 4]);
            // An interrupted build: no settings row, a stray entry left behind.
            let transaction = kv.begin_write().unwrap();
            transaction
                .open_table(SETTINGS)
                .unwrap()
                .remove("indexed_properties")
                .unwrap();
            let mut stray = Lookup::Tag("t".into()).prefix(&notes).unwrap().1;
            stray.extend_from_slice(&filter::suffix_of(&records[0]));
            transaction
                .open_table(IMAGE_FILTER_INDEX)
                .unwrap()
                .insert(stray.as_slice(), ())
                .unwrap();
            kv.commit(transaction).unwrap();
            assert_eq!(indexed_ids(&kv, Lookup::Tag("t".into())), vec![1]);
        }
        let kv = Kv::open_with_cache(&path, DEFAULT_CACHE_SIZE, Some(&notes)).unwrap();
        assert!(indexed_ids(&kv, Lookup::Tag("t".into())).is_empty());
        assert_eq!(indexed_ids(&kv, note()), vec![2, 4]);
    }

    /// A database without running totals (from before schema 11) has them counted at open,
    /// and every later write keeps them: images per status and project, shared blobs.
    #[test]
    fn usage_totals_are_built_at_open_and_kept_by_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let shared = Digest([1; 32]);
        {
            let kv = Kv::open(&path).unwrap();
            let mut queued = image(3, Digest([0; 32]), &[]);
            queued.status = ImageStatus::Queued;
            queued.data = None;
            kv.insert_images(&[image(1, shared, &["fs"]), image(2, shared, &["fs"]), queued])
                .unwrap();
            kv.forget_usage_totals(true);
        }
        let kv = Kv::open(&path).unwrap();
        let totals = kv.totals().unwrap();
        assert_eq!(totals.images(), (3, 20));
        assert_eq!(totals.by_status["active"], (2, 20));
        assert_eq!(totals.by_status["queued"], (1, 0));
        assert_eq!(totals.blobs, (1, 10));
        assert_eq!(totals.projects["lab"].count_total, 3);
        assert_eq!(totals.projects["lab"].size_total, 20);

        // An upload under way counts as staged and receiving for its project.
        kv.update_image(ImageId([3; 16]), |record| {
            record.status = ImageStatus::Uploading;
            record.owner = Some("other".into());
            record.data = image(3, Digest([2; 32]), &["fs"]).data;
            Ok::<(), KvError>(())
        })
        .unwrap();
        let other = kv.usage("other").unwrap();
        assert_eq!(
            (
                other.count_total,
                other.size_total,
                other.stage_total,
                other.count_uploading
            ),
            (1, 10, 10, 1)
        );
        assert_eq!(kv.totals().unwrap().blobs, (2, 20));
        // Deleting one of two images of a blob keeps the blob; the second removes it.
        kv.delete_image(ImageId([1; 16]), 5, |_| Ok::<(), KvError>(()))
            .unwrap();
        assert_eq!(kv.totals().unwrap().blobs, (2, 20));
        kv.delete_image(ImageId([2; 16]), 5, |_| Ok::<(), KvError>(()))
            .unwrap();
        let totals = kv.totals().unwrap();
        assert_eq!(totals.blobs, (1, 10));
        assert!(!totals.projects.contains_key("lab"), "{totals:?}");
        let audit = kv.audit().unwrap();
        assert_eq!(audit.totals, audit.counted);

        // An image without an owner is reported under the empty name, as statistics always
        // were, but is no project's: not even one called "".
        let mut unowned = image(5, Digest([5; 32]), &["fs"]);
        unowned.owner = None;
        let mut named_empty = image(6, Digest([5; 32]), &["fs"]);
        named_empty.owner = Some(String::new());
        kv.insert_images(&[unowned, named_empty]).unwrap();
        assert_eq!(kv.usage("").unwrap().count_total, 1);
        assert_eq!(kv.totals().unwrap().projects[""].count_total, 2);
        let audit = kv.audit().unwrap();
        assert_eq!(audit.totals, audit.counted);
        for id in [5, 6] {
            kv.delete_image(ImageId([id; 16]), 6, |_| Ok::<(), KvError>(()))
                .unwrap();
        }

        // Totals that drifted (emptied here) never fail a write: they stop at zero, and a
        // recount sets them right.
        kv.forget_usage_totals(false);
        kv.delete_image(ImageId([3; 16]), 6, |_| Ok::<(), KvError>(()))
            .unwrap();
        assert_eq!(kv.totals().unwrap().images(), (0, 0));
        kv.insert_images(&[image(4, shared, &["fs"])]).unwrap();
        kv.rebuild_usage_totals().unwrap();
        let audit = kv.audit().unwrap();
        assert_eq!(
            (audit.totals.images(), audit.totals.blobs),
            ((1, 10), (1, 10))
        );
        assert_eq!(audit.totals, audit.counted);
    }

    /// A backup's database copy has every table of the database but the web UI's sessions,
    /// with their rows: a table added later and forgotten in `snapshot` fails this.
    #[test]
    fn snapshots_hold_every_table_but_the_ui_sessions() {
        use redb::{ReadableTableMetadata, TableHandle};
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let id = ImageId([1; 16]);
        kv.insert_images(&[image(1, Digest([1; 32]), &["fs"])])
            .unwrap();
        let transaction = kv.begin_write().unwrap();
        {
            let mut sources = transaction.open_table(MIRROR_SOURCES).unwrap();
            sources.insert("ubuntu", b"{}".as_slice()).unwrap();
            let mut evidence = transaction.open_table(MIRROR_EVIDENCE).unwrap();
            evidence.insert(id, b"{}".as_slice()).unwrap();
            let mut sessions = transaction.open_table(UI_SESSIONS).unwrap();
            sessions
                .insert([9u8; 32].as_slice(), b"s".as_slice())
                .unwrap();
        }
        kv.commit(transaction).unwrap();
        let copy = dir.path().join("copy.redb");
        kv.snapshot(&copy).unwrap();

        let names = |transaction: &redb::ReadTransaction| -> Vec<String> {
            let mut names: Vec<String> = transaction
                .list_tables()
                .unwrap()
                .map(|table| table.name().to_owned())
                .collect();
            names.sort();
            names
        };
        let original = kv.begin_read().unwrap();
        let database = Database::open(&copy).unwrap();
        let copied = database.begin_read().unwrap();
        let mut expected = names(&original);
        expected.retain(|name| name != "ui_sessions_v1");
        assert_eq!(names(&copied), expected);
        assert_eq!(copied.open_table(MIRROR_SOURCES).unwrap().len().unwrap(), 1);
        assert_eq!(
            copied.open_table(MIRROR_EVIDENCE).unwrap().len().unwrap(),
            1
        );
        assert_eq!(original.open_table(UI_SESSIONS).unwrap().len().unwrap(), 1);
    }

    /// A backup's database copy carries the filter index and what it was built with, so the
    /// restored directory starts without rebuilding it.
    #[test]
    fn snapshots_carry_the_filter_index() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let mut record = image(1, Digest([1; 32]), &["fs"]);
        record.tags = vec!["nightly".into()];
        kv.insert_images(&[record]).unwrap();
        let copy = dir.path().join("copy.redb");
        kv.snapshot(&copy).unwrap();
        let database = Database::open(&copy).unwrap();
        let transaction = database.begin_read().unwrap();
        let settings = transaction.open_table(SETTINGS).unwrap();
        assert_eq!(
            settings.get("indexed_properties").unwrap().unwrap().value(),
            IndexedProperties::default_set().to_text()
        );
        let filter_index = transaction.open_table(IMAGE_FILTER_INDEX).unwrap();
        let (_, tag) = Lookup::Tag("nightly".into())
            .prefix(&IndexedProperties::default_set())
            .unwrap();
        let mut key = tag;
        key.extend_from_slice(&filter::suffix_of(
            &kv.image(ImageId([1; 16])).unwrap().unwrap(),
        ));
        assert!(filter_index.get(key.as_slice()).unwrap().is_some());
    }
}
