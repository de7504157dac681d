//! Interoperable import's state in the store: tasks, and the image's way through
//! `uploading` and `importing` to `active` (or back to `queued`).
//!
//! Glance keeps staged data in a separate staging store and copies it at import; here staged
//! data is placed in the blob store at once (content-addressed, so never twice on disk) and
//! the image refers to it while `uploading`; importing it is one transaction. The properties
//! Glance shows during and after an import (`os_glance_import_task`,
//! `os_glance_importing_to_stores`, `os_glance_failed_import`) are kept on the record.

use super::{Store, StoreError};
use crate::kv::{ImageId, ImageRecord, ImageStatus, KvError, TaskRecord, TaskStatus};

pub const IMPORT_TASK: &str = "os_glance_import_task";
pub const IMPORTING_TO: &str = "os_glance_importing_to_stores";
pub const FAILED_IMPORT: &str = "os_glance_failed_import";

/// The reason given to tasks (and images) an import cut by a restart left behind.
pub const INTERRUPTED: &str = "The import was interrupted by a restart of the server";

impl Store {
    /// Stores a new task. Blocks.
    pub fn insert_task(&self, task: &TaskRecord) -> Result<(), StoreError> {
        Ok(self.kv.insert_task(task)?)
    }

    pub fn task(&self, id: ImageId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.kv.task(id)?)
    }

    pub fn tasks(&self) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.kv.tasks()?)
    }

    pub fn image_tasks(&self, image: ImageId) -> Result<Vec<TaskRecord>, StoreError> {
        Ok(self.kv.image_tasks(image)?)
    }

    /// Changes a task; `None` if it is gone. Blocks.
    pub fn update_task(
        &self,
        id: ImageId,
        change: impl FnOnce(&mut TaskRecord),
    ) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.kv.update_task(id, change)?)
    }

    /// Removes finished tasks past their expiry; returns how many. Blocks.
    pub fn expire_tasks(&self, now_micros: i64) -> Result<usize, StoreError> {
        Ok(self.kv.expire_tasks(now_micros)?)
    }

    /// Moves an image into `importing` for task `task` after `check` accepts it, with the
    /// properties Glance shows during an import. Blocks.
    pub fn begin_import<E: From<StoreError> + From<KvError>>(
        &self,
        id: ImageId,
        task: ImageId,
        now_micros: i64,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<ImageRecord, E> {
        let change = self.kv.update_image(id, |record| {
            check(record)?;
            record.status = ImageStatus::Importing;
            record
                .properties
                .insert(IMPORT_TASK.into(), task.to_string());
            record
                .properties
                .insert(IMPORTING_TO.into(), crate::STORE_ID.into());
            record
                .properties
                .insert(FAILED_IMPORT.into(), String::new());
            record.updated_at = now_micros.max(record.updated_at);
            Ok::<(), E>(())
        })?;
        change
            .map(|change| change.record)
            .ok_or_else(|| E::from(StoreError::NoImage(id)))
    }

    /// Makes an image whose staged data was imported `active`. Blocks.
    pub fn finish_staged_import(
        &self,
        id: ImageId,
        now_micros: i64,
    ) -> Result<ImageRecord, StoreError> {
        let change = self.kv.update_image(id, |record| {
            if record.status != ImageStatus::Importing || record.data.is_none() {
                return Err(StoreError::Changed);
            }
            record.status = ImageStatus::Active;
            end_import(record, false);
            record.updated_at = now_micros.max(record.updated_at);
            Ok(())
        })?;
        change.map(|change| change.record).ok_or(StoreError::Gone)
    }

    /// Ends a failed import: the image goes back to `queued` (its staged data, if any, is let
    /// go, so the import can start over), marked as failed for the store. Blocks.
    pub fn fail_import(&self, id: ImageId, now_micros: i64) -> Result<(), StoreError> {
        let change = self.kv.update_image(id, |record| {
            if record.status == ImageStatus::Importing {
                record.status = ImageStatus::Queued;
                record.data = None;
            }
            end_import(record, true);
            record.updated_at = now_micros.max(record.updated_at);
            Ok::<(), KvError>(())
        })?;
        if let Some(change) = change {
            self.release(&change.unreferenced);
        }
        Ok(())
    }

    /// At start: tasks a previous run left `pending` or `processing` end as failures, and
    /// their images go back to `queued`. Blocks.
    pub(super) fn fail_interrupted_imports(&self) -> Result<usize, StoreError> {
        let now = super::unix_now() * 1_000_000;
        let mut failed = 0;
        for task in self.kv.tasks()? {
            if task.status.finished() {
                continue;
            }
            self.kv.update_task(task.id, |task| {
                task.status = TaskStatus::Failure;
                task.message = INTERRUPTED.into();
                task.updated_at = now;
                task.expires_at = Some(now + self.limits.task_time_to_live_micros());
            })?;
            if let Some(image) = task.image_id {
                self.fail_import(image, now)?;
            }
            failed += 1;
        }
        Ok(failed)
    }
}

/// Clears the in-progress import properties; `failed` records the store as failed.
pub fn end_import(record: &mut ImageRecord, failed: bool) {
    record.properties.remove(IMPORT_TASK);
    record.properties.insert(IMPORTING_TO.into(), String::new());
    record.properties.insert(
        FAILED_IMPORT.into(),
        if failed {
            crate::STORE_ID.into()
        } else {
            String::new()
        },
    );
}
