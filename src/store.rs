//! Keeps image metadata (`kv`) and image bytes (`blob`) consistent with each other.
//!
//! The two protocols that span both stores live here:
//! - attaching data: place the blob file first, then commit the record that references it, both
//!   under the blob's lock; if the commit does not happen, remove the file again unless some
//!   other image references it;
//! - releasing data: commit the record change first; afterwards, under the blob's lock, remove
//!   the file only if the metadata still says nothing references it.
//!
//! With the lock held across "file present" and "reference committed", a concurrent upload of
//! the same bytes can never find the file, skip writing it, and then lose it to a delete.
//! A crash between the steps leaves at worst an unreferenced file, which `open` sweeps away.

use std::path::Path;

use crate::blob::{BlobError, BlobStore, Received};
use crate::kv::{Change, Digest, ImageData, ImageId, ImageRecord, Kv, KvError};

/// A failure of either store.
#[derive(Debug)]
pub enum StoreError {
    Kv(KvError),
    Blob(BlobError),
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::Kv(error) => error.fmt(formatter),
            StoreError::Blob(error) => error.fmt(formatter),
        }
    }
}

impl std::error::Error for StoreError {}

/// Both stores of one data directory.
pub struct Store {
    pub kv: Kv,
    pub blobs: BlobStore,
}

impl Store {
    /// Opens (creating if needed) the stores in `data_dir`, then repairs what a crash can leave:
    /// uploads stuck in `saving` go back to `queued`; temp files and unreferenced blobs go.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|error| StoreError::Blob(BlobError::Io(error)))?;
        let kv = Kv::open(&data_dir.join(crate::DATABASE_FILE)).map_err(StoreError::Kv)?;
        let blobs = BlobStore::open(data_dir).map_err(StoreError::Blob)?;
        let requeued = kv.requeue_interrupted_uploads().map_err(StoreError::Kv)?;
        for id in &requeued {
            tracing::warn!(image = %id, "upload was interrupted; image is queued again");
        }
        let referenced = kv.referenced_blobs().map_err(StoreError::Kv)?;
        let report = blobs.sweep(&referenced).map_err(StoreError::Blob)?;
        if report.temp_files_removed + report.unreferenced_blobs_removed > 0 {
            tracing::info!(
                temp_files = report.temp_files_removed,
                unreferenced_blobs = report.unreferenced_blobs_removed,
                "removed leftovers of interrupted work"
            );
        }
        Ok(Store { kv, blobs })
    }

    /// Publishes received bytes and commits `change`, which must attach `data` (built from the
    /// upload) to the record. Returns `None` if the image is gone.
    pub fn attach_data<E>(
        &self,
        id: ImageId,
        received: Received,
        virtual_size: Option<u64>,
        change: impl FnOnce(&mut ImageRecord, ImageData) -> Result<(), E>,
    ) -> Result<Option<Change>, E>
    where
        E: From<KvError> + From<BlobError>,
    {
        let digest = received.digest;
        let data = ImageData {
            digest,
            size: received.size,
            virtual_size,
            md5: received.md5,
            sha512: received.sha512,
        };
        let _guard = self.blobs.lock(digest);
        self.blobs.place(received.temp, digest)?;
        let outcome = self.kv.update_image(id, |record| change(record, data));
        let committed = matches!(&outcome, Ok(Some(change)) if change.record.data.as_ref().map(|d| d.digest) == Some(digest));
        if !committed {
            match self.remove_if_unreferenced(digest) {
                Ok(()) => {}
                Err(StoreError::Kv(error)) => return Err(error.into()),
                Err(StoreError::Blob(error)) => return Err(error.into()),
            }
        }
        outcome
    }

    /// Removes the files of blobs that a committed change left without references.
    pub fn release(&self, unreferenced: &[Digest]) {
        for &digest in unreferenced {
            let _guard = self.blobs.lock(digest);
            if let Err(error) = self.remove_if_unreferenced(digest) {
                // The startup sweep removes it later; the image change itself stands.
                tracing::error!(blob = %digest.to_hex(), %error, "could not remove unreferenced blob");
            }
        }
    }

    /// Call with the blob's lock held.
    fn remove_if_unreferenced(&self, digest: Digest) -> Result<(), StoreError> {
        if self.kv.blob_references(digest).map_err(StoreError::Kv)? == 0 {
            self.blobs.remove(digest).map_err(StoreError::Blob)?;
        }
        Ok(())
    }
}
