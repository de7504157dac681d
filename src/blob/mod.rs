//! Image bytes: the byte paths (receive, read) over a `Backend` that keeps the bytes.
//!
//! A backend stores whole blobs named by their BLAKE3 digest, and temp objects for uploads in
//! progress; it is small and synchronous (`Backend`, with the local directory in `local` as its
//! first implementation), and everything above it is shared: the upload pipeline, hashing,
//! verification, buffers, the per-digest locks and the transfer pool.
//!
//! Receiving copies the body into 1 MiB pooled buffers (`buffers`) and hands each one, shared,
//! to three stages through bounded channels: the temp-object writer, which also builds the
//! blob's BLAKE3 outboard tree (`outboard`; its root is the digest), and the MD5 and SHA-512
//! hashers. A stage is an async task that runs each step as a job on the transfer pool
//! (`pool`), so the stages proceed in parallel while no thread waits for a slow client. The
//! temp object, outboard included, is made durable before `receive` returns. `place` publishes
//! it under its digest (or drops it when that content exists already).
//!
//! Reading runs a small async producer per download that keeps a few reads in flight on the
//! pool. Every read, whole or ranged, is widened to whole 16 KiB groups and checked against the
//! outboard (and through it the digest) inside its job, before any of its bytes are handed on;
//! on a mismatch the stream fails, which makes the HTTP layer cut the connection instead of
//! ending it cleanly. A blob stored before outboards existed gets one the first time it is
//! opened, from a full read that is itself checked against the digest.
//!
//! Deciding which blobs are still needed is not done here: `store` holds the reference counts
//! (in redb) and calls `place` and `remove` under `lock`, which serializes the two for a digest.

mod buffers;
pub mod inspect;
pub mod local;
pub mod outboard;
pub mod pool;
pub mod qcow2;
pub mod s3;
mod shared;
mod writer;
pub mod zeros;

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use md5::Digest as _;
use tokio::sync::mpsc;

use crate::kv::Digest;
use buffers::BufferPool;
use outboard::{OutboardBuilder, OutboardError, OutboardSource, Verifier};
use pool::TransferPool;

/// Buffers handed to the writer and hashers are coalesced to about this size.
const BUFFER_SIZE: usize = 1 << 20;
/// Buffers in flight per stage; bounds memory per upload to about 4 x this x `BUFFER_SIZE`.
const CHANNEL_DEPTH: usize = 4;
/// Read size for downloads.
const READ_SIZE: usize = 256 * 1024;
/// Reads a download keeps queued on the pool ahead of the one being sent.
const READ_AHEAD: usize = 4;
/// How far ahead of its reads a download asks the backend to prefetch. Buffered reads alone
/// keep only the kernel's readahead window (a few hundred KiB) in flight, which left a cold
/// download at half the disk's rate; this keeps the device queue full.
const PREFETCH_AHEAD: u64 = 32 << 20;
/// The window moves in steps of this size: one hint per 4 MiB read, so the kernel submits
/// requests as large as the device takes (`max_sectors_kb`) rather than one per 256 KiB read.
const PREFETCH_STEP: u64 = 4 << 20;
/// The most recently read bytes kept for concurrent downloads of the same blob to share.
const SHARED_READS: usize = 256 << 20;
/// Read buffers kept for reuse per download: those in flight, the channel's, and a few held by
/// the HTTP layer while it writes them.
const READ_POOL: usize = READ_AHEAD + CHANNEL_DEPTH + 4;
/// A download whose client takes nothing for this long is abandoned, like an idle upload.
const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// An upload checks the free space after every this many bytes written.
const SPACE_CHECK_EVERY: u64 = 32 << 20;
/// Number of digest-striped locks.
const LOCK_STRIPES: usize = 64;
/// Buffers a stage may take in one pool job before it gives the thread back to other transfers.
const STAGE_BURST: usize = 16;
/// An upload writes its outboard out whenever this much of it is ready, so that the outboard
/// of a large upload is never held in memory.
const OUTBOARD_FLUSH: usize = 64 * 1024;

/// Free and total bytes where a backend keeps its blobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Space {
    pub free: u64,
    pub total: u64,
}

/// Where blob bytes live. Methods block; the byte paths call them on the transfer pool and the
/// store on the blocking pool.
pub trait Backend: Send + Sync + 'static {
    /// A new temp object for an upload; it vanishes when dropped unless placed.
    fn create_temp(&self) -> io::Result<Box<dyn TempObject>>;
    /// Publishes a finished temp object as the blob `digest`, or drops it when that content is
    /// stored already. Durable when it returns.
    fn place(&self, temp: Box<dyn TempObject>, digest: Digest) -> io::Result<()>;
    /// Removes a blob and its outboard; removing a missing one is not an error.
    fn remove(&self, digest: Digest) -> io::Result<()>;
    /// Opens a blob (and its outboard, if it has one) for reading.
    fn open(&self, digest: Digest) -> io::Result<Arc<dyn BlobReader>>;
    /// Stores a blob's outboard, rebuilt for a blob that lacked one. Durable when it returns.
    fn put_outboard(&self, digest: Digest, outboard: &[u8]) -> io::Result<()>;
    /// The stored size of a blob, `None` if it is missing.
    fn size(&self, digest: Digest) -> io::Result<Option<u64>>;
    /// Every stored blob.
    fn list(&self) -> io::Result<Vec<Digest>>;
    /// Moves a blob out of the way, to be removed once the grace period is over.
    fn quarantine(&self, digest: Digest) -> io::Result<()>;
    /// Moves a quarantined blob back into place; false if it is not in quarantine.
    fn restore(&self, digest: Digest) -> io::Result<bool>;
    /// Removes quarantined blobs set aside before `older_than` (with `dry_run`, only counts
    /// them); returns how many and their bytes.
    fn sweep_quarantine(&self, older_than: SystemTime, dry_run: bool) -> io::Result<Swept>;
    /// How many blobs are in quarantine.
    fn quarantined(&self) -> io::Result<usize>;
    /// Removes temp objects (uploads, counted with their outboards), all of them or those
    /// untouched since `older_than` (with `dry_run`, only counts them).
    fn sweep_temps(&self, older_than: Option<SystemTime>, dry_run: bool) -> io::Result<Swept>;
    /// Puts a stored blob and its outboard under `dir`, in the blob directory's own layout,
    /// hard-linked where the filesystem allows, copied otherwise; true if linked.
    fn export(&self, digest: Digest, dir: &std::path::Path) -> io::Result<bool>;
    /// How many temp objects exist.
    fn temps(&self) -> io::Result<usize>;
    /// Free and total space, when the backend has such a notion.
    fn space(&self) -> io::Result<Option<Space>>;
    /// A URL a client may fetch the blob's bytes from directly for `valid` (a presigned GET),
    /// when the backend offers one; `None` otherwise.
    fn presigned_url(
        &self,
        _digest: Digest,
        _valid: std::time::Duration,
    ) -> io::Result<Option<String>> {
        Ok(None)
    }
}

/// What a sweep removed (or, in a dry run, would remove).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Swept {
    pub count: usize,
    pub bytes: u64,
}

/// An upload being written. Bytes arrive in order.
pub trait TempObject: Send {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Appends to the upload's outboard, which is placed and removed along with it.
    fn write_outboard(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Makes everything written, outboard included, durable.
    fn finish(&mut self) -> io::Result<()>;
    /// For the backend's `place`, to get its own type back.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any>;
}

/// A stored blob open for reading.
pub trait BlobReader: Send + Sync {
    fn read_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<usize>;
    /// A hint that these bytes will be read soon; a backend may start fetching them.
    fn prefetch(&self, _offset: u64, _length: u64) {}
    /// The length of the blob's stored outboard, `None` if it has none.
    fn outboard_len(&self) -> io::Result<Option<u64>>;
    /// Fills `buffer` from the outboard at `offset`.
    fn read_outboard_at(&self, buffer: &mut [u8], offset: u64) -> io::Result<()>;
}

/// Where a download's verifier finds the outboard.
enum StoredOutboard {
    /// A blob of one group has an empty outboard.
    Empty,
    Stored(Arc<dyn BlobReader>),
    /// Rebuilt, when it could not be stored.
    Memory(Vec<u8>),
}

impl OutboardSource for StoredOutboard {
    fn outboard_len(&self) -> io::Result<u64> {
        match self {
            StoredOutboard::Empty => Ok(0),
            StoredOutboard::Stored(reader) => Ok(reader.outboard_len()?.unwrap_or(0)),
            StoredOutboard::Memory(bytes) => Ok(bytes.len() as u64),
        }
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        match self {
            StoredOutboard::Empty => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the outboard is empty",
            )),
            StoredOutboard::Stored(reader) => reader.read_outboard_at(buffer, offset),
            StoredOutboard::Memory(bytes) => bytes.as_slice().read_exact_at(offset, buffer),
        }
    }
}

/// A blob open for verified reads: its bytes and the verifier that checks them.
pub struct OpenBlob {
    source: Arc<dyn BlobReader>,
    verifier: Verifier<StoredOutboard>,
    digest: Digest,
}

fn mismatch(error: OutboardError) -> io::Error {
    match error {
        OutboardError::Io(error) => error,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// The error inside an `io::Error` when a remote backend cannot be reached or answers that it
/// is unavailable (after its retries): the request may work later, so clients get 503.
#[derive(Debug)]
pub struct Unavailable(pub String);

impl std::fmt::Display for Unavailable {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "the object store is unavailable: {}", self.0)
    }
}

impl std::error::Error for Unavailable {}

/// Whether an I/O error is a backend's `Unavailable`.
pub fn is_unavailable(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<Unavailable>())
}

/// What can go wrong in the blob store.
#[derive(Debug)]
pub enum BlobError {
    /// The storage failed.
    Io(io::Error),
    /// The body grew past the size limit.
    TooLarge { limit: u64 },
    /// The storage ran out of space (or reached the free-space reserve).
    NoSpace,
    /// The body ended with an error (the client went away or sent a broken chunk).
    BodyFailed(String),
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::Io(error) => write!(formatter, "blob store: {error}"),
            BlobError::TooLarge { limit } => write!(formatter, "body exceeds {limit} bytes"),
            BlobError::NoSpace => formatter.write_str("blob store: no space left"),
            BlobError::BodyFailed(detail) => write!(formatter, "request body failed: {detail}"),
        }
    }
}

impl std::error::Error for BlobError {}

impl std::fmt::Debug for Received {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Received")
            .field("digest", &self.digest)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

impl From<pool::JobFailed> for BlobError {
    fn from(error: pool::JobFailed) -> BlobError {
        BlobError::Io(error.into())
    }
}

impl BlobError {
    /// As an `io::Error`: the storage's own error, or one that says what went wrong.
    pub fn into_io(self) -> io::Error {
        match self {
            BlobError::Io(error) => error,
            other => io::Error::other(other.to_string()),
        }
    }
}

impl From<io::Error> for BlobError {
    fn from(error: io::Error) -> BlobError {
        if is_no_space(&error) {
            BlobError::NoSpace
        } else {
            BlobError::Io(error)
        }
    }
}

/// Whether an I/O error means the storage is full.
pub fn is_no_space(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    )
}

/// A fully received, durable upload with its digests.
pub struct Received {
    pub temp: Box<dyn TempObject>,
    pub digest: Digest,
    pub size: u64,
    pub md5: [u8; 16],
    pub sha512: [u8; 64],
    /// What the format inspector made of the whole upload.
    pub inspection: inspect::Inspection,
    /// The all-zero 64 KiB blocks, as `(offset, length)` ranges (`zeros::ZeroScanner`).
    pub zeros: Vec<(u64, u64)>,
}

/// Bounds on one upload.
#[derive(Clone, Copy, Debug)]
pub struct ReceiveLimits {
    /// Fail with `TooLarge` once more bytes than this arrive.
    pub max_size: u64,
    /// Fail with `NoSpace` once the backend's free space falls below this.
    pub keep_free: u64,
}

/// The byte paths over one backend.
pub struct BlobStore {
    backend: Arc<dyn Backend>,
    pool: Arc<TransferPool>,
    locks: Vec<Mutex<()>>,
    /// Reads shared by concurrent downloads of one blob.
    shared: Arc<shared::SharedReads>,
    /// `SEND_STALL`, shortened by tests.
    send_stall: std::time::Duration,
}

impl BlobStore {
    pub fn new(backend: Arc<dyn Backend>, pool: Arc<TransferPool>) -> BlobStore {
        BlobStore {
            backend,
            pool,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            shared: shared::SharedReads::new(SHARED_READS, READ_SIZE),
            send_stall: SEND_STALL,
        }
    }

    /// Reads done for downloads since start, and those answered with the bytes another
    /// download of the same blob read (see `shared`).
    pub fn download_reads(&self) -> (u64, u64) {
        self.shared.counts()
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Serializes placing and removing blobs of one digest. Hold it from `place` until the
    /// metadata naming the blob is committed, and around the reference check before `remove`.
    pub fn lock(&self, digest: Digest) -> MutexGuard<'_, ()> {
        let stripe = digest.0[0] as usize % LOCK_STRIPES;
        // A poisoned lock only means another thread panicked while holding it; the guarded
        // state is the storage, which stays consistent, so carry on.
        self.locks[stripe]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Streams `body` into a temp object, hashing it on the way, and makes it durable.
    pub async fn receive<S, E>(&self, body: S, limits: ReceiveLimits) -> Result<Received, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let backend = self.backend.clone();
        let temp = self.pool.run(move || backend.create_temp()).await??;
        let writer = WriterStage {
            temp,
            tree: OutboardBuilder::new(),
            backend: self.backend.clone(),
            keep_free: limits.keep_free,
            unchecked: 0,
        };
        let (write_sender, write_task) = stage(&self.pool, writer, WriterStage::write);
        let (md5_sender, md5_task) = stage(&self.pool, md5::Md5::new(), |hasher, bytes| {
            hasher.update(bytes);
            Ok(())
        });
        // The zero scan rides with SHA-512, the cheaper of the two digests beside the writer.
        let (sha512_sender, sha512_task) = stage(
            &self.pool,
            (sha2::Sha512::new(), zeros::ZeroScanner::new()),
            |(hasher, scanner), bytes| {
                hasher.update(bytes);
                scanner.update(bytes);
                Ok(())
            },
        );
        let senders = [write_sender, md5_sender, sha512_sender];

        let mut inspector = inspect::Inspector::new();
        let mut size: u64 = 0;
        let buffers = BufferPool::new(BUFFER_SIZE, CHANNEL_DEPTH + 2);
        let mut pending = None;
        let mut filled = 0;
        let mut body = std::pin::pin!(body);
        let mut outcome: Result<(), BlobError> = Ok(());
        'body: while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(error) => {
                    outcome = Err(BlobError::BodyFailed(error.to_string()));
                    break;
                }
            };
            size += chunk.len() as u64;
            if size > limits.max_size {
                outcome = Err(BlobError::TooLarge {
                    limit: limits.max_size,
                });
                break;
            }
            inspector.feed(&chunk);
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                // A buffer is taken only once bytes arrive, so an idle upload holds none.
                let buffer = pending.get_or_insert_with(|| buffers.take());
                let take = (BUFFER_SIZE - filled).min(rest.len());
                buffer.window()[filled..filled + take].copy_from_slice(&rest[..take]);
                filled += take;
                rest = &rest[take..];
                if filled == BUFFER_SIZE {
                    let full = pending.take().expect("a buffer is being filled");
                    filled = 0;
                    if !dispatch(&senders, buffers.lend(full, BUFFER_SIZE)).await {
                        // A stage that stopped has failed; joining it below reports why.
                        break 'body;
                    }
                }
            }
        }
        if outcome.is_ok()
            && let Some(last) = pending.take()
            && filled > 0
        {
            dispatch(&senders, buffers.lend(last, filled)).await;
        }
        drop(senders);

        let written = join_stage(write_task).await;
        let md5 = join_stage(md5_task).await;
        let sha512_and_zeros = join_stage(sha512_task).await;
        // A failed disk is the server's fault even when the client also went wrong.
        let writer = written?;
        outcome?;
        let (sha512, scanner) = sha512_and_zeros?;
        let (temp, digest) = self
            .pool
            .run(move || {
                let WriterStage { mut temp, tree, .. } = writer;
                let (root, rest) = tree.finish();
                temp.write_outboard(&rest)?;
                temp.finish()?;
                Ok::<_, io::Error>((temp, Digest(root)))
            })
            .await??;
        Ok(Received {
            temp,
            digest,
            size,
            md5: md5?.finalize().into(),
            sha512: sha512.finalize().into(),
            zeros: scanner.finish(),
            inspection: inspector.finish(),
        })
    }

    /// Publishes a received upload under its digest, or drops it when that content is already
    /// stored. Call with `lock(digest)` held.
    pub fn place(&self, temp: Box<dyn TempObject>, digest: Digest) -> Result<(), BlobError> {
        Ok(self.backend.place(temp, digest)?)
    }

    /// Removes a blob. Call with `lock(digest)` held, after checking nothing references it.
    pub fn remove(&self, digest: Digest) -> Result<(), BlobError> {
        Ok(self.backend.remove(digest)?)
    }

    /// Opens the blob `digest` of `size` bytes for `read`, with a verifier over its outboard
    /// whose root has been checked against the digest. A blob without a usable outboard (stored
    /// before outboards existed, or with a damaged one) first gets one rebuilt from a full read,
    /// which fails with `InvalidData` if the bytes do not hash to the digest. Blocks.
    pub fn open(&self, digest: Digest, size: u64) -> Result<OpenBlob, BlobError> {
        let source = self.backend.open(digest)?;
        let outboard = if outboard::outboard_len(size) == 0 {
            StoredOutboard::Empty
        } else if source.outboard_len()?.is_some() {
            StoredOutboard::Stored(source.clone())
        } else {
            return self.rebuild(source, digest, size);
        };
        match Verifier::new(outboard, digest.0, size) {
            Ok(verifier) => Ok(OpenBlob {
                source,
                verifier,
                digest,
            }),
            Err(OutboardError::Io(error)) => Err(error.into()),
            Err(error) => {
                tracing::warn!(blob = %digest.to_hex(), %error, "the blob's outboard does not match its digest; rebuilding it");
                self.rebuild(source, digest, size)
            }
        }
    }

    /// Reads a whole open blob and checks every buffer against the outboard; `pace` gets each
    /// buffer's length and may stop the read by returning false (then `Ok(false)`). A mismatch
    /// is `InvalidData`, a blob shorter or longer than its size `UnexpectedEof` or
    /// `InvalidData`. Blocks.
    pub fn verify_all(
        &self,
        mut blob: OpenBlob,
        pace: &mut dyn FnMut(u64) -> bool,
    ) -> io::Result<bool> {
        let size = blob.verifier.size();
        let mut buffer = vec![0; BUFFER_SIZE];
        let mut offset = 0;
        while offset < size {
            let want =
                usize::try_from(size - offset).map_or(BUFFER_SIZE, |left| left.min(BUFFER_SIZE));
            if read_fully(blob.source.as_ref(), &mut buffer[..want], offset)? < want {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob is shorter than its record",
                ));
            }
            blob.verifier
                .verify(offset, &buffer[..want])
                .map_err(mismatch)?;
            offset += want as u64;
            if !pace(want as u64) {
                return Ok(false);
            }
        }
        if read_fully(blob.source.as_ref(), &mut buffer[..1], size)? > 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "blob is longer than its record",
            ));
        }
        Ok(true)
    }

    /// Builds a blob's outboard from all of its bytes and stores it.
    fn rebuild(
        &self,
        source: Arc<dyn BlobReader>,
        digest: Digest,
        size: u64,
    ) -> Result<OpenBlob, BlobError> {
        let mut tree = OutboardBuilder::new();
        let mut buffer = vec![0; BUFFER_SIZE];
        let mut offset = 0;
        loop {
            let read = read_fully(source.as_ref(), &mut buffer, offset)?;
            tree.update(&buffer[..read]);
            offset += read as u64;
            if read < buffer.len() {
                break;
            }
        }
        let (root, outboard) = tree.finish();
        if offset != size || root != digest.0 {
            tracing::error!(blob = %digest.to_hex(), "blob content does not match its digest");
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "blob content does not match its digest",
            )
            .into());
        }
        let (source, outboard) = match self.backend.put_outboard(digest, &outboard) {
            Ok(()) => {
                tracing::info!(blob = %digest.to_hex(), "rebuilt the blob's outboard");
                let source = self.backend.open(digest)?;
                (source.clone(), StoredOutboard::Stored(source))
            }
            Err(error) => {
                tracing::warn!(blob = %digest.to_hex(), %error, "could not store the blob's rebuilt outboard; using it for this read only");
                (source, StoredOutboard::Memory(outboard))
            }
        };
        let verifier = Verifier::new(outboard, digest.0, size).map_err(mismatch)?;
        Ok(OpenBlob {
            source,
            verifier,
            digest,
        })
    }

    /// Streams `length` bytes of an open blob from `offset`, each read checked against the
    /// outboard before its bytes are handed on; a mismatch ends the stream with an error.
    /// `keep` is held until the stream ends (a transfer permit, a pin on the blob).
    pub fn read<K: Send + 'static>(
        &self,
        blob: OpenBlob,
        offset: u64,
        length: u64,
        keep: K,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static + use<K> {
        let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(CHANNEL_DEPTH);
        let digest = blob.digest;
        let reading = Reading {
            source: blob.source,
            size: blob.verifier.size(),
            verifier: Arc::new(Mutex::new(blob.verifier)),
            pool: self.pool.clone(),
            reader: self.shared.reader(digest, offset),
            shared: self.shared.clone(),
            digest,
            offset,
            length,
            stall: self.send_stall,
        };
        let stall = self.send_stall;
        tokio::spawn(tracing::Instrument::in_current_span(async move {
            let _keep = keep;
            if let Err(error) = reading.run(&sender).await {
                tracing::error!(blob = %digest.to_hex(), %error, "blob read failed");
                // Queued behind the buffers already sent, so that the consumer sees the stream
                // fail rather than end (a dropped error would look like a clean end). If the
                // consumer is gone, nobody needs it.
                give(&sender, Err(error), stall).await;
            }
        }));
        futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        })
    }
}

/// An open blob that many reads share: the NBD export keeps one per connection, so that a
/// request costs its own bytes, not an open and an outboard root check.
pub struct SharedBlob {
    source: Arc<dyn BlobReader>,
    verifier: Arc<Mutex<Verifier<StoredOutboard>>>,
    buffers: Arc<Mutex<BufferPool>>,
    size: u64,
}

impl OpenBlob {
    pub fn shared(self) -> SharedBlob {
        SharedBlob {
            source: self.source,
            size: self.verifier.size(),
            verifier: Arc::new(Mutex::new(self.verifier)),
            buffers: Arc::new(Mutex::new(BufferPool::new(READ_SIZE, SHARED_KEEP))),
        }
    }
}

/// Buffers a shared blob keeps for reuse (8 MiB).
const SHARED_KEEP: usize = 32;

impl BlobStore {
    /// Reads `[offset, offset + length)` of a shared blob (clamped to its size) as pieces in
    /// order, each group-aligned read checked against the outboard before any of it is
    /// returned. The pieces are read by concurrent jobs on the transfer pool; an error (a
    /// mismatch is `InvalidData`) fails the whole read.
    pub async fn read_shared(
        &self,
        blob: &SharedBlob,
        offset: u64,
        length: u64,
    ) -> io::Result<Vec<Bytes>> {
        let wanted = offset..offset.saturating_add(length).min(blob.size);
        let Some(span) = outboard::covering_range(offset, length, blob.size) else {
            return Ok(Vec::new());
        };
        let mut jobs = Vec::new();
        let mut at = span.start;
        while at < span.end {
            let want = READ_SIZE.min(usize::try_from(span.end - at).unwrap_or(READ_SIZE));
            let (source, verifier, buffers) = (
                blob.source.clone(),
                blob.verifier.clone(),
                blob.buffers.clone(),
            );
            let (from, to) = (
                wanted.start.max(at) - at,
                wanted.end.min(at + want as u64) - at,
            );
            jobs.push(self.pool.spawn(move || {
                let mut buffer = buffers
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .take();
                read_verified(source.as_ref(), &verifier, &mut buffer.window()[..want], at)?;
                let lent = buffers
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .lend(buffer, want);
                Ok::<_, io::Error>(lent.slice(from as usize..to as usize))
            }));
            at += want as u64;
        }
        let mut pieces = Vec::with_capacity(jobs.len());
        for job in jobs {
            pieces.push(job.wait().await??);
        }
        Ok(pieces)
    }
}

/// One download's reads.
struct Reading {
    source: Arc<dyn BlobReader>,
    size: u64,
    verifier: Arc<Mutex<Verifier<StoredOutboard>>>,
    pool: Arc<TransferPool>,
    /// This download's registration with `shared`, and the blob's digest.
    reader: shared::Reader,
    shared: Arc<shared::SharedReads>,
    digest: Digest,
    offset: u64,
    length: u64,
    stall: std::time::Duration,
}

impl Reading {
    async fn run(self, sender: &mpsc::Sender<Result<Bytes, io::Error>>) -> io::Result<()> {
        let size = self.size;
        let wanted = self.offset..self.offset.saturating_add(self.length).min(size);
        // Reads cover whole groups, so that each can be checked; only the part asked for leaves.
        let Some(span) = outboard::covering_range(self.offset, self.length, size) else {
            return Ok(());
        };
        let buffers = BufferPool::new(READ_SIZE, READ_POOL);
        let end = span.end;
        let mut next = span.start;
        let mut in_flight = VecDeque::new();
        loop {
            while in_flight.len() < READ_AHEAD && next < end {
                // Reads end on multiples of READ_SIZE, so that downloads of different ranges
                // meet on the same reads (a range's first read may be shorter).
                let to_boundary = READ_SIZE as u64 - next % READ_SIZE as u64;
                let want = usize::try_from(to_boundary.min(end - next)).unwrap_or(READ_SIZE);
                let source = self.source.clone();
                let verifier = self.verifier.clone();
                let at = next;
                // The first read asks for the whole prefetch window; each read that starts a
                // new step asks for the step that enters it, so the window slides along.
                let prefetch = if at == span.start {
                    Some((at, PREFETCH_AHEAD.min(end - at)))
                } else if at.is_multiple_of(PREFETCH_STEP)
                    && at + PREFETCH_AHEAD - PREFETCH_STEP < end
                {
                    let from = at + PREFETCH_AHEAD - PREFETCH_STEP;
                    Some((from, PREFETCH_STEP.min(end - from)))
                } else {
                    None
                };
                let read = move |bytes: &mut [u8]| {
                    if let Some((from, length)) = prefetch {
                        source.prefetch(from, length);
                    }
                    read_verified(source.as_ref(), &verifier, bytes, at)
                };
                if self.shared.crowded(&self.reader) {
                    // Other downloads of this blob run: read and verify once for all of them,
                    // into a buffer of its own that they share.
                    let (shared, pool, digest) =
                        (self.shared.clone(), self.pool.clone(), self.digest);
                    in_flight.push_back((
                        at,
                        InFlight::Shared(tokio::spawn(async move {
                            let buffers = shared.clone();
                            let load = async move {
                                pool.spawn(move || {
                                    let mut buffer = buffers.take();
                                    read(&mut buffer.window()[..want])?;
                                    Ok::<_, io::Error>(buffers.lend(buffer, want))
                                })
                                .wait()
                                .await?
                            };
                            shared.read(digest, at, want, load).await
                        })),
                    ));
                } else {
                    self.shared.count_own_read();
                    let mut buffer = buffers.take();
                    in_flight.push_back((
                        at,
                        InFlight::Own(self.pool.spawn(move || {
                            read(&mut buffer.window()[..want])?;
                            Ok::<_, io::Error>((buffer, want))
                        })),
                    ));
                }
                next += want as u64;
            }
            let Some((at, job)) = in_flight.pop_front() else {
                return Ok(());
            };
            self.reader.passed(at);
            let bytes = match job {
                InFlight::Own(job) => {
                    let (buffer, read) = job.wait().await??;
                    buffers.lend(buffer, read)
                }
                InFlight::Shared(task) => task.await.map_err(io::Error::other)??,
            };
            let read = bytes.len();
            let from = wanted.start.max(at) - at;
            let to = wanted.end.min(at + read as u64) - at;
            if !give(
                sender,
                Ok(bytes.slice(from as usize..to as usize)),
                self.stall,
            )
            .await
            {
                return Ok(());
            }
        }
    }
}

/// A read under way for a download: on its own buffer, or shared with other downloads.
enum InFlight {
    Own(pool::Pending<io::Result<(buffers::Buffer, usize)>>),
    Shared(tokio::task::JoinHandle<io::Result<Bytes>>),
}

/// Fills `bytes` from the blob at `at` and checks them against the outboard; a blob that ends
/// early is `UnexpectedEof`, a mismatch `InvalidData`.
fn read_verified(
    source: &dyn BlobReader,
    verifier: &Mutex<Verifier<StoredOutboard>>,
    bytes: &mut [u8],
    at: u64,
) -> io::Result<()> {
    if read_fully(source, bytes, at)? < bytes.len() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob is shorter than its record",
        ));
    }
    verifier
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .verify(at, bytes)
        .map_err(mismatch)
}

/// Reads until `buffer` is full or the blob ends; returns how much was read.
fn read_fully(source: &dyn BlobReader, buffer: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut read = 0;
    while read < buffer.len() {
        match source.read_at(&mut buffer[read..], offset + read as u64) {
            Ok(0) => break,
            Ok(count) => read += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(read)
}

/// Hands one item to the HTTP layer; false when it has gone away or has taken nothing for
/// `stall`, so that a client that stops reading does not hold its buffers for ever.
async fn give(
    sender: &mpsc::Sender<Result<Bytes, io::Error>>,
    item: Result<Bytes, io::Error>,
    stall: std::time::Duration,
) -> bool {
    match tokio::time::timeout(stall, sender.send(item)).await {
        Ok(sent) => sent.is_ok(),
        Err(_) => {
            tracing::info!("abandoning a blob read: the client stopped reading");
            false
        }
    }
}

/// The writer stage's state: the temp object, the outboard being built, and the free-space
/// watch.
struct WriterStage {
    temp: Box<dyn TempObject>,
    tree: OutboardBuilder,
    backend: Arc<dyn Backend>,
    keep_free: u64,
    unchecked: u64,
}

impl WriterStage {
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.temp.write(bytes)?;
        self.tree.update(bytes);
        if self.tree.pending() >= OUTBOARD_FLUSH {
            self.temp.write_outboard(&self.tree.drain())?;
        }
        self.unchecked += bytes.len() as u64;
        if self.keep_free > 0 && self.unchecked >= SPACE_CHECK_EVERY {
            self.unchecked = 0;
            if let Some(space) = self.backend.space()?
                && space.free < self.keep_free
            {
                return Err(io::Error::new(
                    io::ErrorKind::StorageFull,
                    "the upload reached the free-space reserve",
                ));
            }
        }
        Ok(())
    }
}

/// Starts a stage: an async task that applies `step` to every buffer it receives, each step a
/// job on the pool, and returns its state at the end.
fn stage<S: Send + 'static>(
    pool: &Arc<TransferPool>,
    mut state: S,
    step: fn(&mut S, &[u8]) -> io::Result<()>,
) -> (mpsc::Sender<Bytes>, tokio::task::JoinHandle<io::Result<S>>) {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let pool = pool.clone();
    let task = tokio::spawn(async move {
        while let Some(buffer) = receiver.recv().await {
            let (back_state, back_receiver, result) = pool
                .run(move || {
                    let mut result = step(&mut state, &buffer);
                    drop(buffer);
                    // A stage that is behind takes the buffers already waiting in the same job:
                    // a job per buffer would make the busiest stage wait, between buffers, for
                    // the runtime to get a core and hand it the next one.
                    let mut burst = 1;
                    while result.is_ok() && burst < STAGE_BURST {
                        let Ok(buffer) = receiver.try_recv() else {
                            break;
                        };
                        result = step(&mut state, &buffer);
                        burst += 1;
                    }
                    (state, receiver, result)
                })
                .await?;
            state = back_state;
            receiver = back_receiver;
            result?;
        }
        Ok(state)
    });
    (sender, task)
}

/// Sends one buffer to every stage; false if a stage has stopped (it failed).
async fn dispatch(senders: &[mpsc::Sender<Bytes>], buffer: Bytes) -> bool {
    for sender in senders {
        if sender.send(buffer.clone()).await.is_err() {
            return false;
        }
    }
    true
}

async fn join_stage<T>(task: tokio::task::JoinHandle<io::Result<T>>) -> io::Result<T> {
    match task.await {
        Ok(result) => result,
        Err(error) => Err(io::Error::other(format!("blob stage failed: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn body(
        parts: &[&'static [u8]],
    ) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> {
        futures_util::stream::iter(
            parts
                .iter()
                .map(|part| Ok(Bytes::from_static(part)))
                .collect::<Vec<_>>(),
        )
    }

    /// A blob store over a local directory in `dir`.
    fn open(dir: &std::path::Path) -> (BlobStore, Arc<local::LocalDir>) {
        let backend = Arc::new(local::LocalDir::open(dir).unwrap());
        let store = BlobStore::new(backend.clone(), TransferPool::new(4).unwrap());
        (store, backend)
    }

    fn limit(max_size: u64) -> ReceiveLimits {
        ReceiveLimits {
            max_size,
            keep_free: 0,
        }
    }

    /// Reads a blob through the store's byte path; a failed open is the stream's only item.
    fn read(
        store: &BlobStore,
        digest: Digest,
        size: u64,
        offset: u64,
        length: u64,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + use<> {
        match store.open(digest, size) {
            Ok(blob) => store.read(blob, offset, length, ()).left_stream(),
            Err(error) => futures_util::stream::iter([Err(io::Error::other(error.to_string()))])
                .right_stream(),
        }
    }

    /// What a read delivered before it ended, and whether it ended in an error.
    async fn delivered(stream: impl Stream<Item = Result<Bytes, io::Error>>) -> (Vec<u8>, bool) {
        let items: Vec<_> = stream.collect().await;
        let failed = items.iter().any(Result::is_err);
        (items.into_iter().flatten().flatten().collect(), failed)
    }

    #[tokio::test]
    async fn receive_hashes_and_place_dedupes() {
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = open(dir.path());
        let received = store
            .receive(body(&[b"hello ", b"world"]), limit(100))
            .await
            .unwrap();
        assert_eq!(received.size, 11);
        assert_eq!(received.digest.0, *blake3::hash(b"hello world").as_bytes());
        assert_eq!(hex(&received.md5), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(received.inspection.format, "raw");
        assert_eq!(received.inspection.virtual_size, Some(11));
        let digest = received.digest;
        store.place(received.temp, digest).unwrap();
        assert_eq!(fs::read(local.path(digest)).unwrap(), b"hello world");

        let again = store
            .receive(body(&[b"hello world"]), limit(100))
            .await
            .unwrap();
        store.place(again.temp, digest).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn oversized_and_failed_bodies_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _local) = open(dir.path());
        let error = store
            .receive(body(&[b"0123456789", b"x"]), limit(10))
            .await
            .unwrap_err();
        assert!(matches!(error, BlobError::TooLarge { limit: 10 }));
        let failing =
            futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err("cut off")]);
        let error = store.receive(failing, limit(100)).await.unwrap_err();
        assert!(matches!(error, BlobError::BodyFailed(_)));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn full_read_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = open(dir.path());
        let received = store
            .receive(body(&[b"precious bytes"]), limit(100))
            .await
            .unwrap();
        let digest = received.digest;
        store.place(received.temp, digest).unwrap();
        assert_eq!(
            delivered(read(&store, digest, 14, 0, 14)).await,
            (b"precious bytes".to_vec(), false)
        );
        assert_eq!(
            delivered(read(&store, digest, 14, 3, 5)).await,
            (b"cious".to_vec(), false)
        );
        fs::write(local.path(digest), b"tampered bytes").unwrap();
        // The blob is one group: nothing of it arrives, whole or in part, only the error.
        assert_eq!(
            delivered(read(&store, digest, 14, 0, 14)).await,
            (Vec::new(), true)
        );
        assert_eq!(
            delivered(read(&store, digest, 14, 12, 1)).await,
            (Vec::new(), true)
        );
    }

    /// A body larger than all the read buffers together, arriving in chunks that do not line
    /// up with the upload buffers, so that coalescing, buffer reuse, the unaligned tail and the
    /// separate hashing thread all take part.
    #[tokio::test]
    async fn large_blobs_round_trip_and_corruption_anywhere_is_caught() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..34 * BUFFER_SIZE + READ_SIZE * READ_POOL + 12_345)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let data = Bytes::from(data);
        let chunks: Vec<Result<Bytes, std::convert::Infallible>> = (0..data.len())
            .step_by(65_536)
            .map(|start| Ok(data.slice(start..(start + 65_536).min(data.len()))))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = open(dir.path());
        let received = store
            .receive(futures_util::stream::iter(chunks), limit(u64::MAX))
            .await
            .unwrap();
        assert_eq!(received.size, data.len() as u64);
        assert_eq!(received.md5, <[u8; 16]>::from(md5::Md5::digest(&data)));
        assert_eq!(
            received.sha512,
            <[u8; 64]>::from(sha2::Sha512::digest(&data))
        );
        let digest = received.digest;
        assert_eq!(digest.0, *blake3::hash(&data).as_bytes());
        store.place(received.temp, digest).unwrap();

        let size = received.size;
        assert!(local.outboard_path(digest).exists());
        assert_eq!(
            fs::metadata(local.outboard_path(digest)).unwrap().len(),
            outboard::outboard_len(size)
        );

        // Collecting holds every buffer at once; the reader must not wait for them back.
        let (whole, failed) = delivered(read(&store, digest, size, 0, size)).await;
        assert!(!failed && whole == data);
        let ranges = [
            (READ_SIZE as u64 - 7, 3 * READ_SIZE as u64),
            (1, 1),
            (outboard::GROUP_SIZE - 1, 2),
            (size - 1, 1),
            (size - 20_000, 20_000),
            (5 * BUFFER_SIZE as u64 + 3, 0),
        ];
        for (offset, length) in ranges {
            let (range, failed) = delivered(read(&store, digest, size, offset, length)).await;
            assert!(!failed);
            assert!(range[..] == data[offset as usize..(offset + length) as usize]);
        }

        // One flipped bit in the middle: no byte of its group leaves, whole or ranged, and
        // ranges elsewhere are still served.
        let flipped = data.len() / 2 + 1000;
        let mut damaged = data.to_vec();
        damaged[flipped] ^= 1;
        fs::write(local.path(digest), &damaged).unwrap();
        let group_start = flipped as u64 / outboard::GROUP_SIZE * outboard::GROUP_SIZE;
        let (whole, failed) = delivered(read(&store, digest, size, 0, size)).await;
        assert!(failed);
        assert!(whole.len() as u64 <= group_start && whole[..] == data[..whole.len()]);
        for (offset, length) in [
            (flipped as u64, 1),
            (group_start, 10),
            (100, flipped as u64),
        ] {
            let (range, failed) = delivered(read(&store, digest, size, offset, length)).await;
            assert!(
                failed,
                "the range {offset}+{length} covers the flipped byte"
            );
            assert!(range.len() as u64 + offset <= group_start.max(offset));
        }
        let (range, failed) = delivered(read(&store, digest, size, 0, group_start)).await;
        assert!(!failed && range[..] == data[..group_start as usize]);
        let after = group_start + outboard::GROUP_SIZE;
        let (range, failed) = delivered(read(&store, digest, size, after, 50_000)).await;
        assert!(!failed && range[..] == data[after as usize..after as usize + 50_000]);
    }

    /// Receives `data` into `store` and places it; its digest and size.
    async fn store_blob(store: &BlobStore, data: &[u8]) -> (Digest, u64) {
        let body = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
            Bytes::copy_from_slice(data),
        )]);
        let received = store.receive(body, limit(u64::MAX)).await.unwrap();
        let (digest, size) = (received.digest, received.size);
        store.place(received.temp, digest).unwrap();
        (digest, size)
    }

    /// A read that fails while its consumer lags (the channel full of good buffers) must
    /// still end in the error, not look like a clean end once the good buffers are taken.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_behind_queued_buffers_still_arrives() {
        let data = vec![3u8; 16 * READ_SIZE];
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = open(dir.path());
        let (digest, size) = store_blob(&store, &data).await;
        let mut damaged = data.clone();
        damaged[CHANNEL_DEPTH * READ_SIZE] ^= 1;
        fs::write(local.path(digest), &damaged).unwrap();
        let stream = read(&store, digest, size, 0, size);
        // Long enough for the reader to fill the channel and meet the damage.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let (bytes, failed) = delivered(stream).await;
        assert!(
            failed,
            "the stream ended cleanly after {} bytes",
            bytes.len()
        );
        assert_eq!(bytes.len(), CHANNEL_DEPTH * READ_SIZE);
    }

    /// Blobs stored before outboards existed, or whose outboard is damaged, get a new one from
    /// a full read checked against the digest; a blob whose bytes are wrong gets none.
    #[tokio::test]
    async fn missing_or_damaged_outboards_are_rebuilt() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let dir = tempfile::tempdir().unwrap();
        let (store, local) = open(dir.path());
        let (digest, size) = store_blob(&store, &data).await;
        let path = local.outboard_path(digest);
        let good = fs::read(&path).unwrap();

        fs::remove_file(&path).unwrap();
        assert_eq!(
            delivered(read(&store, digest, size, 5, 10)).await,
            (data[5..15].to_vec(), false)
        );
        assert_eq!(fs::read(&path).unwrap(), good, "the outboard was rebuilt");

        let mut damaged = good.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        fs::write(&path, &damaged).unwrap();
        assert_eq!(
            delivered(read(&store, digest, size, 0, size)).await,
            (data.clone(), false)
        );
        assert_eq!(fs::read(&path).unwrap(), good, "the outboard was rebuilt");

        // A blob whose bytes do not match: the open fails, and no outboard is made up.
        fs::remove_file(&path).unwrap();
        let mut rotten = data.clone();
        rotten[123] ^= 1;
        fs::write(local.path(digest), &rotten).unwrap();
        let (bytes, failed) = delivered(read(&store, digest, size, 200_000, 10)).await;
        assert!(failed && bytes.is_empty());
        assert!(!path.exists());

        // The same content uploaded again lends the stored blob its outboard.
        fs::write(local.path(digest), &data).unwrap();
        assert_eq!(store_blob(&store, &data).await, (digest, size));
        assert_eq!(fs::read(&path).unwrap(), good);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    /// A reader whose consumer stops taking buffers gives up after the stall time, so the
    /// stream ends short instead of a thread waiting for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_consumer_is_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _local) = open(dir.path());
        store.send_stall = std::time::Duration::from_millis(200);
        let data = Bytes::from(vec![7u8; 4 * READ_SIZE * READ_POOL]);
        let received = store
            .receive(
                futures_util::stream::iter([Ok::<_, std::convert::Infallible>(data.clone())]),
                limit(u64::MAX),
            )
            .await
            .unwrap();
        let digest = received.digest;
        store.place(received.temp, digest).unwrap();
        let mut stream = std::pin::pin!(read(&store, digest, received.size, 0, received.size));
        let mut delivered = stream.next().await.unwrap().unwrap().len();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        while let Some(item) = stream.next().await {
            delivered += item.unwrap().len();
        }
        assert!(delivered < data.len(), "the reader gave up before the end");
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}
