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
    pub fn start(self: &Arc<Self>, task: ImageId, image: ImageId, source: Source) {
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
                Source::Staged => importer.import_staged(image).await,
                Source::Web(url) => importer.import_web(image, url).await,
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

    async fn import_staged(&self, image: ImageId) -> Result<String, String> {
        let store = self.store.clone();
        let record =
            tokio::task::spawn_blocking(move || store.finish_staged_import(image, now_micros()))
                .await
                .map_err(|error| error.to_string())?
                .map_err(|error| error.to_string())?;
        let size = record.data.map_or(0, |data| data.size);
        Ok(format!("Imported {size} bytes of staged data"))
    }

    async fn import_web(&self, image: ImageId, url: reqwest::Url) -> Result<String, String> {
        let fetched = self.fetcher.get(url.clone()).await?;
        let request = UploadRequest {
            quota: true,
            staging: false,
            declared: fetched.length,
            declared_exact: false,
            cap: self.cap,
        };
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
                |record, data| {
                    record.status = ImageStatus::Active;
                    record.data = Some(data);
                    crate::store::end_import(record, false);
                    record.updated_at = now_micros().max(record.updated_at);
                    Ok(())
                },
            )
            .await
            .map_err(|error| error.to_string())?;
        let size = record.data.map_or(0, |data| data.size);
        Ok(format!("Downloaded {size} bytes from {url}"))
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
