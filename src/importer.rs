//! The task runner: imports run in the background of the server, at most `max_imports` at
//! once (the others wait as `pending` tasks). An import's task goes `pending` → `processing`
//! → `success` or `failure`; its image goes `importing` → `active`, or back to `queued` with
//! `os_glance_failed_import` set, so that the import can be tried again. Nothing survives a
//! restart: the store fails unfinished tasks when it opens.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::Semaphore;

use crate::fetch::Fetcher;
use crate::kv::{ImageId, ImageRecord, ImageStatus, TaskRecord, TaskStatus};
use crate::store::{Store, StoreError, UploadRequest, Uploaded};

/// What an import brings in.
#[derive(Clone, Debug)]
pub enum Source {
    /// The data staged with `PUT /v2/images/{id}/stage`.
    Staged,
    /// A URL, fetched under the web-download rules.
    Web(reqwest::Url),
    /// The bytes of the active image itself, copied to further stores (`copy-image`).
    Copy,
}

/// The stores an import puts the bytes in (`stores` or `all_stores` of the request, or the
/// default store), and whether all of them must work (`all_stores_must_succeed`).
#[derive(Clone, Debug)]
pub struct Targets {
    pub stores: Vec<String>,
    pub must_succeed: bool,
}

/// Runs imports.
pub struct Importer {
    store: Arc<Store>,
    fetcher: Fetcher,
    slots: Arc<Semaphore>,
    /// The largest image accepted (`image_size_cap`).
    cap: u64,
    /// The imports running or waiting, so that shutdown can end them.
    running: std::sync::Mutex<tokio::task::JoinSet<()>>,
}

/// The upload format checks (safety, and a bare image's `disk_format`), as for `PUT /file`;
/// returns the virtual size.
fn check_format(record: &ImageRecord, uploaded: Uploaded<'_>) -> Result<Option<u64>, String> {
    crate::blob::inspect::check_upload(
        record.disk_format.as_deref().unwrap_or(""),
        record.container_format.as_deref().unwrap_or(""),
        uploaded.inspection,
    )
}

fn now_micros() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000
}

impl Importer {
    pub fn new(store: Arc<Store>, fetcher: Fetcher, max_imports: usize, cap: u64) -> Importer {
        Importer {
            store,
            fetcher,
            slots: Arc::new(Semaphore::new(max_imports.max(1))),
            cap,
            running: std::sync::Mutex::new(tokio::task::JoinSet::new()),
        }
    }

    /// The fetcher's checks of a URL, for a 400 before the task is made.
    pub fn check_url(&self, uri: &str) -> Result<reqwest::Url, String> {
        self.fetcher.check(uri)
    }

    /// Runs task `task` in the background: the import of `source` into image `image`, which
    /// the caller has already moved to `importing`.
    pub fn start(
        self: &Arc<Self>,
        task: ImageId,
        image: ImageId,
        source: Source,
        targets: Targets,
    ) {
        let importer = self.clone();
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        while running.try_join_next().is_some() {}
        running.spawn(tracing::Instrument::in_current_span(async move {
            let Ok(_slot) = importer.slots.clone().acquire_owned().await else {
                return;
            };
            let store = importer.store.clone();
            let marked = tokio::task::spawn_blocking(move || {
                store.update_task(task, |record| {
                    record.status = TaskStatus::Processing;
                    record.updated_at = now_micros();
                })
            })
            .await;
            if !matches!(marked, Ok(Ok(Some(_)))) {
                return;
            }
            let outcome = match source {
                Source::Staged => importer.import_staged(image, &targets).await,
                Source::Web(url) => importer.import_web(image, url, &targets).await,
                Source::Copy => importer.copy_image(image, &targets).await,
            };
            importer.finish(task, image, outcome).await;
        }));
    }

    /// At shutdown: ends the imports still running or waiting. Their tasks stay `pending` or
    /// `processing` in the catalog, and the next start fails them with `INTERRUPTED` and puts
    /// their images back to `queued`.
    pub async fn shutdown(&self) {
        let mut running = std::mem::take(
            &mut *self
                .running
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        running.abort_all();
        while running.join_next().await.is_some() {}
    }

    async fn import_staged(&self, image: ImageId, targets: &Targets) -> Result<String, String> {
        let copied = self.copy_to_targets(image, targets, true).await?;
        let store = self.store.clone();
        let keep = targets.stores.clone();
        let record = tokio::task::spawn_blocking(move || {
            store.finish_staged_import(image, &keep, now_micros())
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        let size = record.data.map_or(0, |data| data.size);
        Ok(format!("Imported {size} bytes of staged data{copied}"))
    }

    async fn import_web(
        &self,
        image: ImageId,
        url: reqwest::Url,
        targets: &Targets,
    ) -> Result<String, String> {
        let fetched = self.fetcher.get(url.clone()).await?;
        let request = UploadRequest {
            quota: true,
            staging: false,
            declared: fetched.length,
            declared_exact: false,
            cap: self.cap,
            target: targets.stores.first().cloned(),
        };
        let more = targets.stores.len() > 1;
        let record = self
            .store
            .upload::<_, String, ImportError>(
                image,
                fetched.body,
                request,
                |record| {
                    if record.status != ImageStatus::Importing || record.data.is_some() {
                        return Err(ImportError::Store(StoreError::Changed));
                    }
                    Ok(())
                },
                |record, uploaded| check_format(record, uploaded).map_err(ImportError::Refused),
                move |record, data| {
                    record.data = Some(data);
                    // With more stores to fill, the image stays `importing` until they are.
                    if !more {
                        record.status = ImageStatus::Active;
                        crate::store::end_import(record, &[]);
                    }
                    record.updated_at = now_micros().max(record.updated_at);
                    Ok(())
                },
            )
            .await
            .map_err(|error| error.to_string())?;
        let size = record.data.map_or(0, |data| data.size);
        let mut copied = String::new();
        if more {
            copied = self.copy_to_targets(image, targets, true).await?;
            let store = self.store.clone();
            let keep = targets.stores.clone();
            tokio::task::spawn_blocking(move || {
                store.finish_staged_import(image, &keep, now_micros())
            })
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
        }
        Ok(format!("Downloaded {size} bytes from {url}{copied}"))
    }

    async fn copy_image(&self, image: ImageId, targets: &Targets) -> Result<String, String> {
        let store = self.store.clone();
        let before = tokio::task::spawn_blocking(move || store.image(image))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?
            .and_then(|record| record.data)
            .map(|data| data.stores)
            .unwrap_or_default();
        let copied = match self.copy_to_targets(image, targets, false).await {
            Ok(copied) => copied,
            Err(error) => {
                // Every store had to succeed: the copies this task made are taken back.
                let store = self.store.clone();
                let reverted =
                    tokio::task::spawn_blocking(move || store.keep_stores(image, &before)).await;
                if !matches!(reverted, Ok(Ok(_))) {
                    tracing::warn!(image = %image, "could not take back the copies of a failed copy-image");
                }
                return Err(error);
            }
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.end_copy(image, now_micros()))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
        Ok(format!("Copied the image's bytes{copied}"))
    }

    /// Copies the image's bytes to each target store that lacks them, one at a time, keeping
    /// `os_glance_importing_to_stores` and `os_glance_failed_import` current. A failure ends
    /// the import when every store must succeed (or, for an import, when no target got the
    /// bytes); otherwise it is recorded and the others go on. Returns a note for the task.
    async fn copy_to_targets(
        &self,
        image: ImageId,
        targets: &Targets,
        importing: bool,
    ) -> Result<String, String> {
        let mut copied = Vec::new();
        let mut failed = Vec::new();
        for target in &targets.stores {
            let outcome = self.store.copy_to(image, target, importing).await;
            let store = self.store.clone();
            let (done, target_id) = (outcome.is_ok(), target.clone());
            tokio::task::spawn_blocking(move || {
                store.note_copy(image, &target_id, done, now_micros())
            })
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
            match outcome {
                Ok(_) => copied.push(target.clone()),
                Err(error) => {
                    tracing::warn!(image = %image, store = %target, %error, "copying to a store failed");
                    if targets.must_succeed {
                        return Err(format!("Copying to store '{target}' failed: {error}"));
                    }
                    failed.push(target.clone());
                }
            }
        }
        if importing && copied.is_empty() {
            return Err(format!("No store took the data: {}", failed.join(", ")));
        }
        Ok(if failed.is_empty() {
            format!("; in stores {}", copied.join(", "))
        } else {
            format!(
                "; in stores {}; failed: {}",
                copied.join(", "),
                failed.join(", ")
            )
        })
    }

    async fn finish(&self, task: ImageId, image: ImageId, outcome: Result<String, String>) {
        let store = self.store.clone();
        let ttl = store.task_time_to_live_micros();
        let done = tokio::task::spawn_blocking(move || {
            let now = now_micros();
            if outcome.is_err() {
                store.fail_import(image, now)?;
            }
            store.update_task(task, |record| {
                record.updated_at = now;
                record.expires_at = Some(now.saturating_add(ttl));
                match &outcome {
                    Ok(message) => {
                        record.status = TaskStatus::Success;
                        record.message = message.clone();
                        record.result = Some(json!({"image_id": image.to_string()}).to_string());
                    }
                    Err(message) => {
                        record.status = TaskStatus::Failure;
                        record.message = message.clone();
                    }
                }
            })?;
            Ok::<_, StoreError>(outcome)
        })
        .await;
        match done {
            Ok(Ok(Ok(message))) => tracing::info!(%task, %image, %message, "import succeeded"),
            Ok(Ok(Err(message))) => tracing::warn!(%task, %image, %message, "import failed"),
            Ok(Err(error)) => {
                tracing::error!(%task, %image, %error, "could not record the end of an import")
            }
            Err(error) => tracing::error!(%task, %image, %error, "import task panicked"),
        }
    }
}

/// Why a fetched import was refused.
#[derive(Debug)]
enum ImportError {
    Store(StoreError),
    Kv(crate::kv::KvError),
    Refused(String),
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImportError::Store(error) => error.fmt(formatter),
            ImportError::Kv(error) => error.fmt(formatter),
            ImportError::Refused(message) => formatter.write_str(message),
        }
    }
}

impl From<StoreError> for ImportError {
    fn from(error: StoreError) -> ImportError {
        ImportError::Store(error)
    }
}

impl From<crate::kv::KvError> for ImportError {
    fn from(error: crate::kv::KvError) -> ImportError {
        ImportError::Kv(error)
    }
}

/// A new task record for an import.
pub fn new_task(
    kind: crate::kv::TaskKind,
    owner: &str,
    user: Option<&str>,
    image: Option<ImageId>,
    request_id: Option<String>,
    input: serde_json::Value,
) -> TaskRecord {
    let now = now_micros();
    TaskRecord {
        id: ImageId::random(),
        kind,
        status: TaskStatus::Pending,
        owner: owner.to_owned(),
        user_id: user.map(str::to_owned),
        image_id: image,
        request_id,
        input: input.to_string(),
        result: None,
        message: String::new(),
        created_at: now,
        updated_at: now,
        expires_at: None,
    }
}
