//! An S3 bucket as a `Backend` (issue 13, in progress): content-addressed blobs on an existing
//! object store (Ceph RGW, Garage, AWS S3), through `object_store`'s S3 client.
//!
//! Layout under the configured prefix:
//! - `blobs/b3/<2 hex>/<64 hex>` and beside it `<64 hex>.obao`, the outboard;
//! - `staging/<uuid>` and `staging/<uuid>.obao`: uploads in flight;
//! - `quarantine/<64 hex>` (and `.obao`): blobs set aside, removed after the grace period.
//!
//! An upload streams to its staging keys: bytes are buffered up to `PART_SIZE`, and beyond
//! that sent as a multipart upload with at most `PARTS_IN_FLIGHT` parts in flight, so an
//! upload holds at most about `(PARTS_IN_FLIGHT + 1) * PART_SIZE` (40 MiB) of data and as much
//! again for a very large outboard. `place` asks for the content address: present, the staging
//! objects are deleted (dedupe, no bytes copied); absent, the outboard then the blob are
//! copied server-side to their final keys and the staging objects deleted. Conditional PUT is
//! never relied on: content addressing makes a second copy of the same bytes harmless. A temp
//! object dropped unfinished aborts its multipart uploads.
//!
//! `Backend` is synchronous; this backend owns a small tokio runtime and blocks on it from the
//! transfer and blocking pools (never from an async worker). Every call has a timeout.
//!
//! Not here yet: listing and aborting multipart uploads left by a crash (a bucket lifecycle
//! rule `AbortIncompleteMultipartUpload` covers them meanwhile), CopyObject of objects over
//! 5 GiB (UploadPartCopy), ranged-read prefetching, and a streaming `export` (it reads the
//! blob whole today).

use std::any::Any;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, PutPayload, WriteMultipart};

use super::{Backend, BlobReader, Space, Swept, TempObject, is_unavailable};
use crate::kv::Digest;

/// Size of each multipart part (S3's minimum is 5 MiB).
const PART_SIZE: usize = 8 << 20;
/// Parts an upload keeps in flight.
const PARTS_IN_FLIGHT: usize = 4;
/// Longest any one call may take, its retries included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one attempt may take, and its connection.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Retries of a failed request (object_store backs off between them), and their time limit.
const RETRIES: usize = 3;
const RETRY_TIME: Duration = Duration::from_secs(20);

/// Where the bucket is and how to reach it. Its `Debug` leaves the secret key out.
#[derive(Clone)]
pub struct S3Settings {
    /// `http://host:port` of the engine; `None` for AWS itself.
    pub endpoint: Option<String>,
    pub bucket: String,
    pub region: String,
    pub access_key: String,
    pub secret_key: String,
    /// Put before every key, e.g. `ocellus/`; may be empty.
    pub prefix: String,
    /// Downloads are redirected to presigned GET URLs of the engine (opt-in).
    pub presigned_downloads: bool,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("S3Settings")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("region", &self.region)
            .field("access_key", &self.access_key)
            .field("secret_key", &"(not shown)")
            .field("prefix", &self.prefix)
            .field("presigned_downloads", &self.presigned_downloads)
            .finish()
    }
}

/// A bucket holding blobs.
pub struct S3Bucket {
    store: Arc<AmazonS3>,
    prefix: String,
    presigned: bool,
    runtime: Option<tokio::runtime::Runtime>,
}

/// A missing key is `NotFound`; anything else that went wrong talking to the engine (it is
/// unreachable, or answered 5xx through all retries) is `Unavailable`, which clients see as 503.
fn to_io(error: object_store::Error) -> io::Error {
    match error {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, error),
        object_store::Error::Generic { .. } => {
            io::Error::other(super::Unavailable(error.to_string()))
        }
        other => io::Error::other(other),
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        super::Unavailable("no answer in time".into()),
    )
}

impl S3Bucket {
    pub fn open(settings: &S3Settings) -> io::Result<S3Bucket> {
        let options = object_store::ClientOptions::new()
            .with_timeout(ATTEMPT_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT);
        let retry = object_store::RetryConfig {
            max_retries: RETRIES,
            retry_timeout: RETRY_TIME,
            ..Default::default()
        };
        let mut builder = AmazonS3Builder::new()
            .with_client_options(options)
            .with_retry(retry)
            .with_bucket_name(&settings.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key)
            .with_secret_access_key(&settings.secret_key);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(to_io)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-client")
            .enable_all()
            .build()?;
        Ok(S3Bucket {
            store: Arc::new(store),
            prefix: settings.prefix.clone(),
            presigned: settings.presigned_downloads,
            runtime: Some(runtime),
        })
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime
            .as_ref()
            .expect("the runtime lives as long as the bucket")
    }

    /// Runs one request to completion, bounded by `REQUEST_TIMEOUT`.
    fn call<T>(
        &self,
        request: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> io::Result<T> {
        self.runtime().block_on(async {
            match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
                Ok(result) => result.map_err(to_io),
                Err(_) => Err(timed_out()),
            }
        })
    }

    fn key(&self, rest: &str) -> ObjectPath {
        ObjectPath::from(format!("{}{rest}", self.prefix))
    }

    fn blob_key(&self, digest: Digest) -> ObjectPath {
        let hex = digest.to_hex();
        self.key(&format!("blobs/b3/{}/{hex}", &hex[..2]))
    }

    fn outboard_key(&self, digest: Digest) -> ObjectPath {
        let hex = digest.to_hex();
        self.key(&format!("blobs/b3/{}/{hex}.obao", &hex[..2]))
    }

    fn quarantine_key(&self, digest: Digest, outboard: bool) -> ObjectPath {
        let suffix = if outboard { ".obao" } else { "" };
        self.key(&format!("quarantine/{}{suffix}", digest.to_hex()))
    }

    /// Deletes a key; a missing one is not an error.
    fn delete(&self, key: &ObjectPath) -> io::Result<()> {
        match self.call(self.store.delete(key)) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Copies a key; false if the source does not exist.
    fn copy(&self, from: &ObjectPath, to: &ObjectPath) -> io::Result<bool> {
        match self.call(self.store.copy(from, to)) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn head_size(&self, key: &ObjectPath) -> io::Result<Option<u64>> {
        match self.call(self.store.head(key)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Every object under `rest`, with its size and last change.
    fn list_under(&self, rest: &str) -> io::Result<Vec<(ObjectPath, u64, SystemTime)>> {
        let prefix = self.key(rest);
        self.runtime().block_on(async {
            let listing = self.store.list(Some(&prefix));
            let collect = listing
                .map(|entry| {
                    entry.map(|meta| {
                        (
                            meta.location,
                            meta.size,
                            SystemTime::from(meta.last_modified),
                        )
                    })
                })
                .collect::<Vec<_>>();
            let entries = tokio::time::timeout(REQUEST_TIMEOUT, collect)
                .await
                .map_err(|_| timed_out())?;
            entries
                .into_iter()
                .collect::<object_store::Result<Vec<_>>>()
                .map_err(to_io)
        })
    }

    /// Removes the objects under `rest` last changed before `older_than` (all with `None`).
    fn sweep(
        &self,
        rest: &str,
        older_than: Option<SystemTime>,
        dry_run: bool,
    ) -> io::Result<Swept> {
        let mut swept = Swept::default();
        for (key, size, changed) in self.list_under(rest)? {
            if older_than.is_some_and(|limit| changed >= limit) {
                continue;
            }
            if !dry_run {
                self.delete(&key)?;
            }
            if !key.as_ref().ends_with(".obao") {
                swept.count += 1;
            }
            swept.bytes += size;
        }
        Ok(swept)
    }
}

impl Drop for S3Bucket {
    fn drop(&mut self) {
        // Dropping a runtime from async code panics; let it wind down on its own threads.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// One staging object being written: buffered while small, a multipart upload once not.
enum Staged {
    Buffer(Vec<u8>),
    Multipart(WriteMultipart),
    Done,
}

struct StagedObject {
    key: ObjectPath,
    state: Staged,
}

/// An upload in progress: the blob's bytes and its outboard, each to a staging key.
pub struct S3Temp {
    store: Arc<AmazonS3>,
    handle: tokio::runtime::Handle,
    data: StagedObject,
    outboard: StagedObject,
}

impl S3Temp {
    fn append(&mut self, outboard: bool, bytes: &[u8]) -> io::Result<()> {
        let store = self.store.clone();
        let handle = self.handle.clone();
        let object = if outboard {
            &mut self.outboard
        } else {
            &mut self.data
        };
        if let Staged::Buffer(buffer) = &mut object.state {
            buffer.extend_from_slice(bytes);
            if buffer.len() < PART_SIZE {
                return Ok(());
            }
            // Large enough for a multipart upload: start it with what is buffered.
            let buffered = std::mem::take(buffer);
            let key = object.key.clone();
            let upload = handle
                .block_on(async {
                    tokio::time::timeout(REQUEST_TIMEOUT, store.put_multipart(&key)).await
                })
                .map_err(|_| timed_out())?
                .map_err(to_io)?;
            let _entered = handle.enter();
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            writer.write(&buffered);
            object.state = Staged::Multipart(writer);
            return Ok(());
        }
        let Staged::Multipart(writer) = &mut object.state else {
            return Err(io::Error::other("write after the upload finished"));
        };
        handle
            .block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, writer.wait_for_capacity(PARTS_IN_FLIGHT))
                    .await
            })
            .map_err(|_| timed_out())?
            .map_err(to_io)?;
        let _entered = handle.enter();
        writer.write(bytes);
        Ok(())
    }

    fn complete(&mut self, outboard: bool) -> io::Result<()> {
        let store = self.store.clone();
        let object = if outboard {
            &mut self.outboard
        } else {
            &mut self.data
        };
        let key = object.key.clone();
        let finish = match std::mem::replace(&mut object.state, Staged::Done) {
            Staged::Buffer(buffer) => {
                let put = async move {
                    store
                        .put(&key, PutPayload::from(Bytes::from(buffer)))
                        .await
                        .map(|_| ())
                };
                self.handle
                    .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, put).await })
            }
            Staged::Multipart(writer) => self.handle.block_on(async {
                tokio::time::timeout(REQUEST_TIMEOUT, async { writer.finish().await.map(|_| ()) })
                    .await
            }),
            Staged::Done => return Ok(()),
        };
        finish.map_err(|_| timed_out())?.map_err(to_io)
    }
}

impl TempObject for S3Temp {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.append(false, bytes)
    }

    fn write_outboard(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.append(true, bytes)
    }

    fn finish(&mut self) -> io::Result<()> {
        self.complete(true)?;
        self.complete(false)
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl Drop for S3Temp {
    fn drop(&mut self) {
        // An upload that never finished (a client gone, a refusal) leaves no parts behind.
        for object in [&mut self.data, &mut self.outboard] {
            if let Staged::Multipart(writer) = std::mem::replace(&mut object.state, Staged::Done) {
                self.handle.spawn(async move {
                    let _ = tokio::time::timeout(REQUEST_TIMEOUT, writer.abort()).await;
                });
            }
        }
    }
}

/// A stored blob open for ranged reads; its outboard, small beside it, is read whole at open.
/// Size of the pieces a download reads ahead, each one ranged GET.
const READ_CHUNK: u64 = 4 << 20;
/// Pieces one download keeps fetched or in flight: about 16 MiB of memory per download.
const READ_CHUNKS: usize = 4;

/// A piece being fetched, shared by the reads that need it.
type Chunk = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<Bytes, Arc<io::Error>>>,
>;

struct S3Reader {
    store: Arc<AmazonS3>,
    handle: tokio::runtime::Handle,
    key: ObjectPath,
    size: u64,
    outboard: Option<Bytes>,
    /// Pieces read ahead, by index, within what the download asked for (`prefetch`).
    ahead: std::sync::Mutex<ReadAhead>,
}

/// A download's read-ahead: ranged GETs of up to `READ_CHUNK` bytes running on the client's
/// runtime while earlier bytes are verified and sent. Without it each 256 KiB read was its own
/// GET, one after another, and a download ran at a quarter of the engine's own GET rate.
#[derive(Default)]
struct ReadAhead {
    chunks: std::collections::BTreeMap<u64, (u64, Chunk)>,
    /// The end of the bytes the download said it will read; nothing past it is fetched.
    wanted_end: u64,
}

impl S3Reader {
    /// Keeps pieces `index..index + READ_CHUNKS` fetched or in flight, within `wanted_end`.
    fn top_up(&self, ahead: &mut ReadAhead, index: u64) {
        for index in index..index + READ_CHUNKS as u64 {
            let start = index * READ_CHUNK;
            let end = ((index + 1) * READ_CHUNK)
                .min(self.size)
                .min(ahead.wanted_end);
            if start >= end {
                break;
            }
            if ahead.chunks.contains_key(&index) {
                continue;
            }
            let store = self.store.clone();
            let key = self.key.clone();
            let task = self.handle.spawn(async move {
                match tokio::time::timeout(REQUEST_TIMEOUT, store.get_range(&key, start..end)).await
                {
                    Ok(Ok(bytes)) => Ok(bytes),
                    Ok(Err(error)) => Err(Arc::new(to_io(error))),
                    Err(_) => Err(Arc::new(timed_out())),
                }
            });
            let chunk: futures_util::future::BoxFuture<'static, _> = Box::pin(async move {
                task.await
                    .unwrap_or_else(|error| Err(Arc::new(io::Error::other(error.to_string()))))
            });
            ahead
                .chunks
                .insert(index, (end, futures_util::FutureExt::shared(chunk)));
        }
    }

    /// Reads exactly `offset..end` with one ranged GET.
    fn read_direct(&self, buffer: &mut [u8], offset: u64, end: u64) -> io::Result<usize> {
        let bytes = self
            .handle
            .block_on(async {
                tokio::time::timeout(
                    REQUEST_TIMEOUT,
                    self.store.get_range(&self.key, offset..end),
                )
                .await
            })
            .map_err(|_| timed_out())?
            .map_err(to_io)?;
        let length = bytes.len().min(buffer.len());
        buffer[..length].copy_from_slice(&bytes[..length]);
        Ok(length)
    }
}

/// A shared fetch's error, for each read that waited on it.
fn shared_error(error: &io::Error) -> io::Error {
    if is_unavailable(error) {
        io::Error::new(error.kind(), super::Unavailable(error.to_string()))
    } else {
        io::Error::new(error.kind(), error.to_string())
    }
}

impl BlobReader for S3Reader {
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
        if offset >= self.size || buffer.is_empty() {
            return Ok(0);
        }
        let end = (offset + buffer.len() as u64).min(self.size);
        let index = offset / READ_CHUNK;
        let chunk = {
            let mut ahead = self
                .ahead
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            if end > ahead.wanted_end {
                None
            } else {
                // Pieces behind this read are done with; the window moves on.
                while let Some((&first, _)) = ahead.chunks.first_key_value() {
                    if first >= index {
                        break;
                    }
                    ahead.chunks.remove(&first);
                }
                self.top_up(&mut ahead, index);
                ahead.chunks.get(&index).cloned()
            }
        };
        let Some((chunk_end, chunk)) = chunk.filter(|(chunk_end, _)| *chunk_end >= end) else {
            // Not read ahead (a read outside what the download announced): just these bytes.
            return self.read_direct(buffer, offset, end);
        };
        let bytes = match self.handle.block_on(chunk) {
            Ok(bytes) => bytes,
            Err(error) => {
                // A later read fetches it again.
                self.ahead
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
                    .chunks
                    .remove(&index);
                return Err(shared_error(&error));
            }
        };
        let from = usize::try_from(offset - index * READ_CHUNK).unwrap_or(usize::MAX);
        let wanted = usize::try_from(end.min(chunk_end) - offset).unwrap_or(usize::MAX);
        let available = bytes.get(from..).unwrap_or_default();
        let length = available.len().min(wanted);
        buffer[..length].copy_from_slice(&available[..length]);
        Ok(length)
    }

    fn prefetch(&self, offset: u64, length: u64) {
        let mut ahead = self
            .ahead
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        ahead.wanted_end = ahead.wanted_end.max((offset + length).min(self.size));
        // The window starts at the oldest piece still held (the reads move it), so a hint far
        // ahead only extends what may be fetched.
        let from = ahead
            .chunks
            .first_key_value()
            .map_or(offset / READ_CHUNK, |(&first, _)| first);
        self.top_up(&mut ahead, from);
    }

    fn outboard_len(&self) -> io::Result<Option<u64>> {
        Ok(self.outboard.as_ref().map(|bytes| bytes.len() as u64))
    }

    fn read_outboard_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()> {
        let outboard = self
            .outboard
            .as_ref()
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no outboard"))?;
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let slice = outboard
            .get(start..start.saturating_add(buffer.len()))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "short outboard"))?;
        buffer.copy_from_slice(slice);
        Ok(())
    }
}

fn digest_of(key: &ObjectPath) -> Option<Digest> {
    let name = key.filename()?;
    if name.ends_with(".obao") {
        return None;
    }
    Digest::from_hex(name)
}

impl Backend for S3Bucket {
    fn create_temp(&self) -> io::Result<Box<dyn TempObject>> {
        let name = uuid::Uuid::new_v4();
        Ok(Box::new(S3Temp {
            store: self.store.clone(),
            handle: self.runtime().handle().clone(),
            data: StagedObject {
                key: self.key(&format!("staging/{name}")),
                state: Staged::Buffer(Vec::new()),
            },
            outboard: StagedObject {
                key: self.key(&format!("staging/{name}.obao")),
                state: Staged::Buffer(Vec::new()),
            },
        }))
    }

    fn place(&self, temp: Box<dyn TempObject>, digest: Digest) -> io::Result<()> {
        let temp = temp
            .into_any()
            .downcast::<S3Temp>()
            .map_err(|_| io::Error::other("a temp object of another backend"))?;
        let (data, outboard) = (temp.data.key.clone(), temp.outboard.key.clone());
        drop(temp);
        if self.head_size(&self.blob_key(digest))?.is_none() {
            // The outboard first: a blob is never there without it.
            self.copy(&outboard, &self.outboard_key(digest))?;
            if !self.copy(&data, &self.blob_key(digest))? {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "the staged upload is gone",
                ));
            }
        }
        self.delete(&data)?;
        self.delete(&outboard)
    }

    fn remove(&self, digest: Digest) -> io::Result<()> {
        self.delete(&self.blob_key(digest))?;
        self.delete(&self.outboard_key(digest))
    }

    fn open(&self, digest: Digest) -> io::Result<Arc<dyn BlobReader>> {
        let key = self.blob_key(digest);
        let size = self.head_size(&key)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no blob {}", digest.to_hex()),
            )
        })?;
        let outboard = match self.call(async {
            self.store
                .get(&self.outboard_key(digest))
                .await?
                .bytes()
                .await
        }) {
            Ok(bytes) => Some(bytes),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        Ok(Arc::new(S3Reader {
            store: self.store.clone(),
            handle: self.runtime().handle().clone(),
            key,
            size,
            outboard,
            ahead: std::sync::Mutex::new(ReadAhead::default()),
        }))
    }

    fn put_outboard(&self, digest: Digest, outboard: &[u8]) -> io::Result<()> {
        let payload = PutPayload::from(Bytes::copy_from_slice(outboard));
        self.call(self.store.put(&self.outboard_key(digest), payload))
            .map(|_| ())
    }

    fn size(&self, digest: Digest) -> io::Result<Option<u64>> {
        self.head_size(&self.blob_key(digest))
    }

    fn list(&self) -> io::Result<Vec<Digest>> {
        Ok(self
            .list_under("blobs/b3/")?
            .iter()
            .filter_map(|(key, _, _)| digest_of(key))
            .collect())
    }

    fn quarantine(&self, digest: Digest) -> io::Result<()> {
        self.copy(
            &self.outboard_key(digest),
            &self.quarantine_key(digest, true),
        )?;
        self.copy(&self.blob_key(digest), &self.quarantine_key(digest, false))?;
        self.remove(digest)
    }

    fn restore(&self, digest: Digest) -> io::Result<bool> {
        if !self.copy(&self.quarantine_key(digest, false), &self.blob_key(digest))? {
            return Ok(false);
        }
        self.copy(
            &self.quarantine_key(digest, true),
            &self.outboard_key(digest),
        )?;
        self.delete(&self.quarantine_key(digest, false))?;
        self.delete(&self.quarantine_key(digest, true))?;
        Ok(true)
    }

    fn sweep_quarantine(&self, older_than: SystemTime, dry_run: bool) -> io::Result<Swept> {
        self.sweep("quarantine/", Some(older_than), dry_run)
    }

    fn quarantined(&self) -> io::Result<usize> {
        Ok(self
            .list_under("quarantine/")?
            .iter()
            .filter(|(key, _, _)| digest_of(key).is_some())
            .count())
    }

    fn sweep_temps(&self, older_than: Option<SystemTime>, dry_run: bool) -> io::Result<Swept> {
        self.sweep("staging/", older_than, dry_run)
    }

    fn export(&self, digest: Digest, dir: &std::path::Path) -> io::Result<bool> {
        let hex = digest.to_hex();
        let target = dir.join("blobs").join(&hex[0..2]).join(&hex[2..4]);
        std::fs::create_dir_all(&target)?;
        for (key, name) in [
            (self.blob_key(digest), hex.clone()),
            (self.outboard_key(digest), format!("{hex}.obao")),
        ] {
            match self.call(async { self.store.get(&key).await?.bytes().await }) {
                Ok(bytes) => std::fs::write(target.join(name), &bytes)?,
                Err(error)
                    if error.kind() == io::ErrorKind::NotFound && name.ends_with(".obao") => {}
                Err(error) => return Err(error),
            }
        }
        Ok(false)
    }

    fn temps(&self) -> io::Result<usize> {
        Ok(self
            .list_under("staging/")?
            .iter()
            .filter(|(key, _, _)| !key.as_ref().ends_with(".obao"))
            .count())
    }

    fn presigned_url(&self, digest: Digest, valid: Duration) -> io::Result<Option<String>> {
        if !self.presigned {
            return Ok(None);
        }
        let key = self.blob_key(digest);
        let url = self.call(object_store::signer::Signer::signed_url(
            self.store.as_ref(),
            reqwest::Method::GET,
            &key,
            valid,
        ))?;
        Ok(Some(url.to_string()))
    }

    fn space(&self) -> io::Result<Option<Space>> {
        Ok(None)
    }
}
