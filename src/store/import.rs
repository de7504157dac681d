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
    ///
    /// `targets` are the stores it fills; a copy (`copy-image`) leaves the image `active`.
    pub fn begin_import<E: From<StoreError> + From<KvError>>(
        &self,
        id: ImageId,
        task: ImageId,
        now_micros: i64,
        targets: &[String],
        copy: bool,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<ImageRecord, E> {
        let change = self.kv.update_image(id, |record| {
            check(record)?;
            if !copy {
                record.status = ImageStatus::Importing;
            }
            record
                .properties
                .insert(IMPORT_TASK.into(), task.to_string());
            record
                .properties
                .insert(IMPORTING_TO.into(), targets.join(","));
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

    /// Makes an importing image that has its data `active`, keeping its bytes only in the
    /// stores of `keep` that have them (the staging store lets go of its copy unless it was a
    /// target). Blocks.
    pub fn finish_staged_import(
        &self,
        id: ImageId,
        keep: &[String],
        now_micros: i64,
    ) -> Result<ImageRecord, StoreError> {
        let change = self.kv.update_image(id, |record| {
            if record.status != ImageStatus::Importing {
                return Err(StoreError::Changed);
            }
            let Some(data) = &mut record.data else {
                return Err(StoreError::Changed);
            };
            super::places::keep_only(&mut data.stores, keep);
            record.status = ImageStatus::Active;
            let failed = failed_stores(record);
            end_import(record, &failed);
            record.updated_at = now_micros.max(record.updated_at);
            Ok(())
        })?;
        let change = change.ok_or(StoreError::Gone)?;
        self.release(&change.unreferenced);
        Ok(change.record)
    }

    /// Records one target store as done (or failed) in the import properties. Blocks.
    pub fn note_copy(
        &self,
        id: ImageId,
        target: &str,
        done: bool,
        now_micros: i64,
    ) -> Result<(), StoreError> {
        self.kv.update_image(id, |record| {
            let mut pending = split_stores(record.properties.get(IMPORTING_TO));
            pending.retain(|store| store != target);
            record
                .properties
                .insert(IMPORTING_TO.into(), pending.join(","));
            if !done {
                let mut failed = failed_stores(record);
                if !failed.iter().any(|store| store == target) {
                    failed.push(target.to_owned());
                }
                record
                    .properties
                    .insert(FAILED_IMPORT.into(), failed.join(","));
            }
            record.updated_at = now_micros.max(record.updated_at);
            Ok::<(), KvError>(())
        })?;
        Ok(())
    }

    /// Ends a copy-image task: the import properties are cleared, failures kept. Blocks.
    pub fn end_copy(&self, id: ImageId, now_micros: i64) -> Result<(), StoreError> {
        self.kv.update_image(id, |record| {
            let failed = failed_stores(record);
            end_import(record, &failed);
            record.updated_at = now_micros.max(record.updated_at);
            Ok::<(), KvError>(())
        })?;
        Ok(())
    }

    /// Ends a failed import: the image goes back to `queued` (its staged data, if any, is let
    /// go, so the import can start over), marked as failed for the store. Blocks.
    pub fn fail_import(&self, id: ImageId, now_micros: i64) -> Result<(), StoreError> {
        let change = self.kv.update_image(id, |record| {
            // The stores still pending (or, when none is, those that failed) failed.
            let mut failed = failed_stores(record);
            for store in split_stores(record.properties.get(IMPORTING_TO)) {
                if !failed.contains(&store) {
                    failed.push(store);
                }
            }
            if failed.is_empty() {
                failed.push(self.default_store().to_owned());
            }
            if record.status == ImageStatus::Importing {
                record.status = ImageStatus::Queued;
                record.data = None;
            }
            end_import(record, &failed);
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

/// Clears the in-progress import properties and records the stores that failed.
pub fn end_import(record: &mut ImageRecord, failed: &[String]) {
    record.properties.remove(IMPORT_TASK);
    record.properties.insert(IMPORTING_TO.into(), String::new());
    record
        .properties
        .insert(FAILED_IMPORT.into(), failed.join(","));
}

fn split_stores(value: Option<&String>) -> Vec<String> {
    value
        .map(|value| {
            value
                .split(',')
                .map(str::trim)
                .filter(|store| !store.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The stores `os_glance_failed_import` lists.
fn failed_stores(record: &ImageRecord) -> Vec<String> {
    split_stores(record.properties.get(FAILED_IMPORT))
}
