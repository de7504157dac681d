//! The content-addressed blob directory: the only code that touches image files.
//!
//! Layout under the data directory:
//! - `blobs/<2 hex>/<2 hex>/<64 hex>`: one file per distinct content, named by its BLAKE3 digest;
//! - `tmp/<uuid>.part`: uploads in progress, on the same filesystem so that a rename publishes
//!   them atomically.
//!
//! Receiving copies the body into 1 MiB pooled buffers (`buffers`) and hands each one, shared,
//! to four blocking threads through bounded channels: the temp-file writer (`writer`, which
//! sends whole buffers to the disk with O_DIRECT) and the MD5, SHA-512 and BLAKE3 hashers. The
//! four run in parallel and no body is ever held whole in memory. The temp file is fsync'd
//! before `receive` returns. `place` renames it into place (or drops it when that content
//! exists already) and fsyncs the directories. A `TempBlob` removes its file when dropped, so
//! every failure path cleans up.
//!
//! Reading uses one blocking thread to read 256 KiB pooled buffers and, for a whole blob,
//! another to re-hash them while the HTTP layer writes them out. Only the last buffer waits for
//! the digest: on a mismatch the stream fails, which makes the HTTP layer cut the connection
//! instead of ending it cleanly.
//!
//! Deciding which blobs are still needed is not done here: `store` holds the reference counts
//! (in redb) and calls `place` and `remove` under `lock`, which serializes the two for a digest.

mod buffers;
pub mod inspect;
mod writer;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use md5::Digest as _;
use tokio::sync::mpsc;

use crate::kv::Digest;
use buffers::BufferPool;
use writer::TempWriter;

/// Buffers handed to the writer and hashers are coalesced to about this size.
const BUFFER_SIZE: usize = 1 << 20;
/// Buffers in flight per worker; bounds memory per upload to about 4 x this x `BUFFER_SIZE`.
const CHANNEL_DEPTH: usize = 4;
/// Read size for downloads.
const READ_SIZE: usize = 256 * 1024;
/// Read buffers kept for reuse per download: the channel's `CHANNEL_DEPTH`, the one being read
/// into, and a few held by the HTTP layer while it writes them.
const READ_POOL: usize = CHANNEL_DEPTH + 4;
/// A download whose client takes nothing for this long is abandoned, like an idle upload.
const SEND_STALL: std::time::Duration = std::time::Duration::from_secs(60);
/// Number of digest-striped locks.
const LOCK_STRIPES: usize = 64;

/// What can go wrong in the blob store.
#[derive(Debug)]
pub enum BlobError {
    /// The filesystem failed.
    Io(io::Error),
    /// The body grew past the size limit.
    TooLarge { limit: u64 },
    /// The body ended with an error (the client went away or sent a broken chunk).
    BodyFailed(String),
}

impl std::fmt::Display for BlobError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobError::Io(error) => write!(formatter, "blob store: {error}"),
            BlobError::TooLarge { limit } => write!(formatter, "body exceeds {limit} bytes"),
            BlobError::BodyFailed(detail) => write!(formatter, "request body failed: {detail}"),
        }
    }
}

impl std::error::Error for BlobError {}

impl From<io::Error> for BlobError {
    fn from(error: io::Error) -> BlobError {
        BlobError::Io(error)
    }
}

/// A received upload waiting in `tmp/`; the file is removed when this is dropped.
#[derive(Debug)]
pub struct TempBlob {
    path: Option<PathBuf>,
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if let Some(path) = self.path.take()
            && let Err(error) = fs::remove_file(&path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), %error, "could not remove temp blob");
        }
    }
}

/// A fully received and fsync'd upload with its digests.
#[derive(Debug)]
pub struct Received {
    pub temp: TempBlob,
    pub digest: Digest,
    pub size: u64,
    pub md5: [u8; 16],
    pub sha512: [u8; 64],
    /// What the format inspector made of the whole upload.
    pub inspection: inspect::Inspection,
}

/// Counts from the startup sweep.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub temp_files_removed: usize,
    pub unreferenced_blobs_removed: usize,
}

/// The blob directory.
pub struct BlobStore {
    blobs_dir: PathBuf,
    tmp_dir: PathBuf,
    locks: Vec<Mutex<()>>,
    /// `SEND_STALL`, shortened by tests.
    send_stall: std::time::Duration,
}

impl BlobStore {
    /// Opens (creating if needed) the blob directories under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<BlobStore, BlobError> {
        let blobs_dir = data_dir.join("blobs");
        let tmp_dir = data_dir.join("tmp");
        fs::create_dir_all(&blobs_dir)?;
        fs::create_dir_all(&tmp_dir)?;
        Ok(BlobStore {
            blobs_dir,
            tmp_dir,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            send_stall: SEND_STALL,
        })
    }

    /// Where the blob with this digest lives. Only server-computed digests reach the filesystem.
    pub fn path(&self, digest: Digest) -> PathBuf {
        let hex = digest.to_hex();
        self.blobs_dir.join(&hex[0..2]).join(&hex[2..4]).join(hex)
    }

    /// Serializes placing and removing blobs of one digest. Hold it from `place` until the
    /// metadata naming the blob is committed, and around the reference check before `remove`.
    pub fn lock(&self, digest: Digest) -> MutexGuard<'_, ()> {
        let stripe = digest.0[0] as usize % LOCK_STRIPES;
        // A poisoned lock only means another thread panicked while holding it; the guarded
        // state is the filesystem, which stays consistent, so carry on.
        self.locks[stripe]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Streams `body` into a temp file, hashing it on the way, and fsyncs it. Fails with
    /// `TooLarge` as soon as more than `max_size` bytes arrive.
    pub async fn receive<S, E>(&self, body: S, max_size: u64) -> Result<Received, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let path = self.tmp_dir.join(format!("{}.part", uuid::Uuid::new_v4()));
        // Owned by a `TempBlob` first, so that the file is removed whatever fails after it.
        let temp = TempBlob {
            path: Some(path.clone()),
        };
        let mut file = TempWriter::create(&path)?;

        let (write_sender, mut write_receiver) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
        let writer = tokio::task::spawn_blocking(move || -> io::Result<()> {
            while let Some(buffer) = write_receiver.blocking_recv() {
                file.write(&buffer)?;
            }
            file.finish()
        });
        let (md5_sender, md5_task) = hash_worker(
            md5::Md5::new(),
            |hasher, bytes| hasher.update(bytes),
            |hasher| hasher.finalize().to_vec(),
        );
        let (sha512_sender, sha512_task) = hash_worker(
            sha2::Sha512::new(),
            |hasher, bytes| hasher.update(bytes),
            |hasher| hasher.finalize().to_vec(),
        );
        let (blake3_sender, blake3_task) = hash_worker(
            blake3::Hasher::new(),
            |hasher, bytes| {
                hasher.update(bytes);
            },
            |hasher| hasher.finalize().as_bytes().to_vec(),
        );
        let senders = [write_sender, md5_sender, sha512_sender, blake3_sender];

        let mut inspector = inspect::Inspector::new();
        let mut size: u64 = 0;
        let pool = BufferPool::new(BUFFER_SIZE, CHANNEL_DEPTH + 2);
        let mut pending = pool.take();
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
            if size > max_size {
                outcome = Err(BlobError::TooLarge { limit: max_size });
                break;
            }
            inspector.feed(&chunk);
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = (BUFFER_SIZE - filled).min(rest.len());
                pending.window()[filled..filled + take].copy_from_slice(&rest[..take]);
                filled += take;
                rest = &rest[take..];
                if filled == BUFFER_SIZE {
                    let full = std::mem::replace(&mut pending, pool.take());
                    filled = 0;
                    if !dispatch(&senders, pool.lend(full, BUFFER_SIZE)).await {
                        // A worker that stopped has failed; joining it below reports why.
                        break 'body;
                    }
                }
            }
        }
        if outcome.is_ok() && filled > 0 {
            dispatch(&senders, pool.lend(pending, filled)).await;
        }
        drop(senders);

        let written = join_blocking(writer).await;
        let md5 = join_blocking(md5_task).await;
        let sha512 = join_blocking(sha512_task).await;
        let blake3 = join_blocking(blake3_task).await;
        // A failed disk is the server's fault even when the client also went wrong.
        written?;
        outcome?;
        let digest = Digest(to_array(blake3?)?);
        Ok(Received {
            temp,
            digest,
            size,
            md5: to_array(md5?)?,
            sha512: to_array(sha512?)?,
            inspection: inspector.finish(),
        })
    }

    /// Publishes a received upload under its digest, or drops it when that content is already
    /// stored. Call with `lock(received.digest)` held.
    pub fn place(&self, mut temp: TempBlob, digest: Digest) -> Result<(), BlobError> {
        let target = self.path(digest);
        if target.exists() {
            return Ok(());
        }
        let parent = target.parent().expect("blob paths have parents");
        if !parent.exists() {
            fs::create_dir_all(parent)?;
            // New directories must themselves be durable for the rename below to survive.
            sync_directory(&self.blobs_dir)?;
            sync_directory(parent.parent().expect("blob fan-out has two levels"))?;
        }
        let source = temp.path.take().expect("temp blob has a path until placed");
        if let Err(error) = fs::rename(&source, &target) {
            temp.path = Some(source);
            return Err(error.into());
        }
        sync_directory(parent)?;
        Ok(())
    }

    /// Removes a blob file. Call with `lock(digest)` held, after checking nothing references it.
    pub fn remove(&self, digest: Digest) -> Result<(), BlobError> {
        let path = self.path(digest);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error.into()),
        }
        if let Some(parent) = path.parent() {
            sync_directory(parent)?;
        }
        Ok(())
    }

    /// Streams `length` bytes of a blob from `offset`. With `verify`, the stream must cover the
    /// whole blob; it is re-hashed and ends in an error if the digest does not match.
    pub fn read(
        &self,
        digest: Digest,
        offset: u64,
        length: u64,
        verify: bool,
    ) -> impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let path = self.path(digest);
        let (sender, receiver) = mpsc::channel::<Result<Bytes, io::Error>>(CHANNEL_DEPTH);
        let consumer = Consumer {
            sender,
            runtime: tokio::runtime::Handle::current(),
            stall: self.send_stall,
        };
        tokio::task::spawn_blocking(move || {
            let result = read_into(&path, digest, offset, length, verify, &consumer);
            if let Err(error) = result {
                tracing::error!(blob = %digest.to_hex(), %error, "blob read failed");
                // The consumer may be gone already; then nobody needs the error.
                consumer.give(Err(error));
            }
        });
        futures_util::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|item| (item, receiver))
        })
    }

    /// Startup cleanup: removes every temp file and every blob not in `referenced`.
    /// Must run before the server accepts requests.
    pub fn sweep(&self, referenced: &HashSet<Digest>) -> Result<SweepReport, BlobError> {
        let mut report = SweepReport::default();
        for entry in fs::read_dir(&self.tmp_dir)? {
            fs::remove_file(entry?.path())?;
            report.temp_files_removed += 1;
        }
        for level1 in fs::read_dir(&self.blobs_dir)? {
            let level1 = level1?.path();
            if !level1.is_dir() {
                continue;
            }
            for level2 in fs::read_dir(&level1)? {
                let level2 = level2?.path();
                if !level2.is_dir() {
                    continue;
                }
                for blob in fs::read_dir(&level2)? {
                    let blob = blob?.path();
                    let name = blob
                        .file_name()
                        .and_then(|name| name.to_str())
                        .unwrap_or("");
                    let keep =
                        Digest::from_hex(name).is_some_and(|digest| referenced.contains(&digest));
                    if !keep {
                        fs::remove_file(&blob)?;
                        report.unreferenced_blobs_removed += 1;
                    }
                }
            }
        }
        for digest in referenced {
            if !self.path(*digest).exists() {
                tracing::error!(blob = %digest.to_hex(), "a referenced blob is missing from the blob directory");
            }
        }
        Ok(report)
    }
}

/// Starts a blocking thread that feeds every buffer it receives to `hasher`.
fn hash_worker<H: Send + 'static>(
    mut hasher: H,
    update: fn(&mut H, &[u8]),
    finish: fn(H) -> Vec<u8>,
) -> (
    mpsc::Sender<Bytes>,
    tokio::task::JoinHandle<io::Result<Vec<u8>>>,
) {
    let (sender, mut receiver) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let task = tokio::task::spawn_blocking(move || {
        while let Some(buffer) = receiver.blocking_recv() {
            update(&mut hasher, &buffer);
        }
        Ok(finish(hasher))
    });
    (sender, task)
}

/// Sends one buffer to every worker; false if a worker has stopped (it failed).
async fn dispatch(senders: &[mpsc::Sender<Bytes>], buffer: Bytes) -> bool {
    for sender in senders {
        if sender.send(buffer.clone()).await.is_err() {
            return false;
        }
    }
    true
}

async fn join_blocking<T>(task: tokio::task::JoinHandle<io::Result<T>>) -> io::Result<T> {
    match task.await {
        Ok(result) => result,
        Err(error) => Err(io::Error::other(format!("blob worker failed: {error}"))),
    }
}

fn to_array<const N: usize>(bytes: Vec<u8>) -> io::Result<[u8; N]> {
    bytes
        .try_into()
        .map_err(|_| io::Error::other("hash has an unexpected length"))
}

/// The receiving end of a blob read, seen from the blocking thread that reads.
struct Consumer {
    sender: mpsc::Sender<Result<Bytes, io::Error>>,
    runtime: tokio::runtime::Handle,
    stall: std::time::Duration,
}

impl Consumer {
    /// Hands over one item; false when the consumer has gone away or has taken nothing for
    /// `stall`, so that a client that stops reading does not hold a thread for ever.
    fn give(&self, item: Result<Bytes, io::Error>) -> bool {
        // Usually there is room: hand it over without entering the runtime or arming a timer.
        let item = match self.sender.try_send(item) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(item)) => item,
        };
        self.runtime.block_on(async {
            match tokio::time::timeout(self.stall, self.sender.send(item)).await {
                Ok(sent) => sent.is_ok(),
                Err(_) => {
                    tracing::info!("abandoning a blob read: the client stopped reading");
                    false
                }
            }
        })
    }
}

fn read_into(
    path: &Path,
    digest: Digest,
    offset: u64,
    length: u64,
    verify: bool,
    consumer: &Consumer,
) -> io::Result<()> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let pool = BufferPool::new(READ_SIZE, READ_POOL);
    std::thread::scope(|scope| {
        // With verification, a second thread hashes the buffers while this one reads the
        // next, so reading, hashing and the socket writes overlap. Only the last buffer waits
        // for the digest. It is a scoped OS thread, not a blocking-pool task: with the pool
        // full of readers, a queued hasher would never start and its reader would wait forever.
        let (mut to_hasher, mut hashing) = if verify {
            let (to_hasher, buffers) = std::sync::mpsc::sync_channel::<Bytes>(READ_POOL);
            let hashing = std::thread::Builder::new()
                .name("ocellus-verify".into())
                .spawn_scoped(scope, move || {
                    let mut hasher = blake3::Hasher::new();
                    for buffer in buffers {
                        hasher.update(&buffer);
                    }
                    hasher.finalize()
                })?;
            (Some(to_hasher), Some(hashing))
        } else {
            (None, None)
        };
        let join = |hashing: std::thread::ScopedJoinHandle<'_, blake3::Hash>| {
            hashing
                .join()
                .map_err(|_| io::Error::other("the hashing thread panicked"))
        };
        let mut remaining = length;
        while remaining > 0 {
            let mut buffer = pool.take();
            let want = READ_SIZE.min(usize::try_from(remaining).unwrap_or(READ_SIZE));
            let read = file.read(&mut buffer.window()[..want])?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob is shorter than its record",
                ));
            }
            remaining -= read as u64;
            let bytes = pool.lend(buffer, read);
            if let Some(channel) = to_hasher.as_ref()
                && channel.send(bytes.clone()).is_err()
            {
                // The hasher only stops early by panicking; joining it here (rather than
                // leaving it to the scope, which would panic in turn) reports that.
                if let Some(hashing) = hashing.take() {
                    join(hashing)?;
                }
                return Err(io::Error::other("the hashing thread stopped"));
            }
            if remaining == 0 {
                to_hasher = None;
                if let Some(hashing) = hashing.take() {
                    let computed = join(hashing)?;
                    if computed.as_bytes() != &digest.0 {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "blob content does not match its digest",
                        ));
                    }
                }
            }
            if !consumer.give(Ok(bytes)) {
                return Ok(());
            }
        }
        Ok(())
    })
}

fn sync_directory(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[tokio::test]
    async fn receive_hashes_and_place_dedupes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let received = store
            .receive(body(&[b"hello ", b"world"]), 100)
            .await
            .unwrap();
        assert_eq!(received.size, 11);
        assert_eq!(received.digest.0, *blake3::hash(b"hello world").as_bytes());
        assert_eq!(hex(&received.md5), "5eb63bbbe01eeed093cb22bb8f5acdc3");
        assert_eq!(received.inspection.format, "raw");
        assert_eq!(received.inspection.virtual_size, Some(11));
        let digest = received.digest;
        store.place(received.temp, digest).unwrap();
        assert_eq!(fs::read(store.path(digest)).unwrap(), b"hello world");

        let again = store.receive(body(&[b"hello world"]), 100).await.unwrap();
        store.place(again.temp, digest).unwrap();
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn oversized_and_failed_bodies_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let error = store
            .receive(body(&[b"0123456789", b"x"]), 10)
            .await
            .unwrap_err();
        assert!(matches!(error, BlobError::TooLarge { limit: 10 }));
        let failing =
            futures_util::stream::iter(vec![Ok(Bytes::from_static(b"abc")), Err("cut off")]);
        let error = store.receive(failing, 100).await.unwrap_err();
        assert!(matches!(error, BlobError::BodyFailed(_)));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn full_read_detects_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let received = store
            .receive(body(&[b"precious bytes"]), 100)
            .await
            .unwrap();
        let digest = received.digest;
        store.place(received.temp, digest).unwrap();
        let good: Vec<_> = store.read(digest, 0, 14, true).collect().await;
        let good: Vec<u8> = good.into_iter().flat_map(|item| item.unwrap()).collect();
        assert_eq!(good, b"precious bytes");
        fs::write(store.path(digest), b"tampered bytes").unwrap();
        // The only buffer is the last one, so it is withheld: nothing but the error arrives.
        let bad: Vec<_> = store.read(digest, 0, 14, true).collect().await;
        assert_eq!(bad.len(), 1);
        assert!(bad[0].is_err());
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
        let store = BlobStore::open(dir.path()).unwrap();
        let received = store
            .receive(futures_util::stream::iter(chunks), u64::MAX)
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

        // Collecting holds every buffer at once; the reader must not wait for them back.
        let whole: Vec<_> = store.read(digest, 0, received.size, true).collect().await;
        let whole: Vec<u8> = whole.into_iter().flat_map(|item| item.unwrap()).collect();
        assert!(whole == data);
        let (offset, length) = (READ_SIZE as u64 - 7, 3 * READ_SIZE as u64);
        let range: Vec<_> = store.read(digest, offset, length, false).collect().await;
        let range: Vec<u8> = range.into_iter().flat_map(|item| item.unwrap()).collect();
        assert!(range[..] == data[offset as usize..(offset + length) as usize]);

        // One flipped bit in the middle: the stream ends in an error before the last bytes.
        let mut damaged = data.to_vec();
        damaged[data.len() / 2] ^= 1;
        fs::write(store.path(digest), &damaged).unwrap();
        let items: Vec<_> = store.read(digest, 0, received.size, true).collect().await;
        assert!(items.last().unwrap().is_err());
        let delivered: usize = items.iter().flatten().map(Bytes::len).sum();
        assert!(delivered < data.len());
    }

    /// A reader whose consumer stops taking buffers gives up after the stall time, so the
    /// stream ends short instead of a thread waiting for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_consumer_is_abandoned() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = BlobStore::open(dir.path()).unwrap();
        store.send_stall = std::time::Duration::from_millis(200);
        let data = Bytes::from(vec![7u8; 4 * READ_SIZE * READ_POOL]);
        let received = store
            .receive(
                futures_util::stream::iter([Ok::<_, std::convert::Infallible>(data.clone())]),
                u64::MAX,
            )
            .await
            .unwrap();
        let digest = received.digest;
        store.place(received.temp, digest).unwrap();
        let mut stream = std::pin::pin!(store.read(digest, 0, received.size, true));
        let mut delivered = stream.next().await.unwrap().unwrap().len();
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        while let Some(item) = stream.next().await {
            delivered += item.unwrap().len();
        }
        assert!(delivered < data.len(), "the reader gave up before the end");
    }

    #[tokio::test]
    async fn sweep_removes_temp_and_unreferenced() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(dir.path()).unwrap();
        let kept = store.receive(body(&[b"kept"]), 100).await.unwrap();
        let kept_digest = kept.digest;
        store.place(kept.temp, kept_digest).unwrap();
        let orphan = store.receive(body(&[b"orphan"]), 100).await.unwrap();
        let orphan_digest = orphan.digest;
        store.place(orphan.temp, orphan_digest).unwrap();
        fs::write(dir.path().join("tmp/left-behind.part"), b"partial").unwrap();
        let report = store.sweep(&HashSet::from([kept_digest])).unwrap();
        assert_eq!(
            report,
            SweepReport {
                temp_files_removed: 1,
                unreferenced_blobs_removed: 1
            }
        );
        assert!(store.path(kept_digest).exists());
        assert!(!store.path(orphan_digest).exists());
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}
