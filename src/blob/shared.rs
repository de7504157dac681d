//! Verified reads shared between concurrent downloads of one blob.
//!
//! When several downloads of the same blob run at once (a CI farm's runners pulling the
//! morning's image), each 256 KiB read is done and checked against the outboard once: the
//! first download to need it reads and verifies it into a buffer of its own, the others wait
//! for that read instead of starting theirs, and all of them send the same verified bytes.
//! A read that fails (a mismatch, an I/O error) fails every download waiting for it, and is
//! forgotten, so a later download tries the disk again.
//!
//! Bytes are kept here only while they are in use or among the most recent `capacity` bytes
//! read: they are never re-read from the disk while kept, and since a blob's content is named
//! by its digest, bytes that verified once are the blob's bytes for as long as they are kept,
//! whatever happens to the file afterwards. A download alone on its blob does not come here:
//! it reads into its own reused buffers, as before.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::OnceCell;

use super::buffers::{Buffer, BufferPool};
use crate::kv::Digest;

/// A read: blob, offset, length (two reads at one offset may differ in length: a range's
/// last read stops at its end).
type Key = (Digest, u64, usize);

/// One read's outcome, shared by every download waiting for it.
type Outcome = Result<Bytes, Arc<io::Error>>;

/// Buffers kept for reuse (8 MiB of 256 KiB reads); more are allocated while a fan-out
/// needs them and freed after.
const KEEP_BUFFERS: usize = 32;

/// The shared reads of one store's blobs.
pub struct SharedReads {
    inner: Mutex<Inner>,
    capacity: usize,
    /// Read buffers, reused once every download has sent their bytes.
    buffers: Mutex<BufferPool>,
    /// Reads of the store done for downloads, shared or not, and reads answered with another
    /// download's bytes instead.
    loads: AtomicU64,
    shares: AtomicU64,
}

#[derive(Default)]
struct Inner {
    /// Downloads running per blob, each with the offset it has read up to.
    readers: HashMap<Digest, Vec<Arc<AtomicU64>>>,
    /// Reads by blob, offset and length: done, or being done by one download.
    reads: HashMap<Key, Arc<OnceCell<Outcome>>>,
    /// The same keys in the order they were added, for eviction.
    order: VecDeque<Key>,
    bytes: usize,
}

impl Inner {
    /// Forgets the reads that end before every running download of their blob.
    fn forget_passed(&mut self) {
        let slowest: HashMap<Digest, u64> = self
            .readers
            .iter()
            .map(|(digest, positions)| {
                let least = positions
                    .iter()
                    .map(|position| position.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(u64::MAX);
                (*digest, least)
            })
            .collect();
        let passed = |&(digest, at, size): &Key| {
            at + size as u64 <= slowest.get(&digest).copied().unwrap_or(u64::MAX)
        };
        let mut freed = 0;
        let reads = &mut self.reads;
        self.order.retain(|key| {
            if passed(key) {
                reads.remove(key);
                freed += key.2;
                false
            } else {
                true
            }
        });
        self.bytes -= freed;
    }
}

/// A download's registration as a reader of its blob; dropping it ends the registration.
pub struct Reader {
    reads: Arc<SharedReads>,
    digest: Digest,
    /// Where the download is: it needs no read that ends before this offset.
    position: Arc<AtomicU64>,
}

impl Reader {
    /// The download has what it needs from before `offset`.
    pub fn passed(&self, offset: u64) {
        self.position.store(offset, Ordering::Relaxed);
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut inner = self.reads.lock();
        if let Some(positions) = inner.readers.get_mut(&self.digest) {
            positions.retain(|position| !Arc::ptr_eq(position, &self.position));
            if positions.is_empty() {
                inner.readers.remove(&self.digest);
                // The last reader gone: its blob's kept reads go too.
                let digest = self.digest;
                inner.reads.retain(|(key, _, _), _| *key != digest);
                let mut freed = 0;
                inner.order.retain(|&(key, _, size)| {
                    let keep = key != digest;
                    if !keep {
                        freed += size;
                    }
                    keep
                });
                inner.bytes -= freed;
            }
        }
    }
}

impl SharedReads {
    /// Keeps up to `capacity` bytes of reads, in buffers of `buffer_size`.
    pub fn new(capacity: usize, buffer_size: usize) -> Arc<SharedReads> {
        Arc::new(SharedReads {
            inner: Mutex::new(Inner::default()),
            capacity,
            buffers: Mutex::new(BufferPool::new(buffer_size, KEEP_BUFFERS)),
            loads: AtomicU64::new(0),
            shares: AtomicU64::new(0),
        })
    }

    /// A buffer for a read to share.
    pub fn take(&self) -> Buffer {
        self.buffers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take()
    }

    /// The first `length` bytes of a filled buffer, which goes back for reuse when the last
    /// download holding them lets go.
    pub fn lend(&self, buffer: Buffer, length: usize) -> Bytes {
        self.buffers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .lend(buffer, length)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a read a download did alone, into its own buffer.
    pub fn count_own_read(&self) {
        self.loads.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads done for downloads since start, and reads answered with another's bytes.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.loads.load(Ordering::Relaxed),
            self.shares.load(Ordering::Relaxed),
        )
    }

    /// Registers a download of `digest` from `offset` for as long as the `Reader` lives.
    pub fn reader(self: &Arc<Self>, digest: Digest, offset: u64) -> Reader {
        let position = Arc::new(AtomicU64::new(offset));
        self.lock()
            .readers
            .entry(digest)
            .or_default()
            .push(position.clone());
        Reader {
            reads: self.clone(),
            digest,
            position,
        }
    }

    /// Whether other downloads of the reader's blob run (then reads are shared).
    pub fn crowded(&self, reader: &Reader) -> bool {
        self.lock()
            .readers
            .get(&reader.digest)
            .is_some_and(|positions| positions.len() > 1)
    }

    /// The read of `size` bytes at `at` of the reader's blob: the one already done or under
    /// way, or `load`, run by this caller, whose bytes are then shared.
    pub async fn read<F>(&self, digest: Digest, at: u64, size: usize, load: F) -> io::Result<Bytes>
    where
        F: std::future::Future<Output = io::Result<Bytes>>,
    {
        let key = (digest, at, size);
        let cell = {
            let mut inner = self.lock();
            match inner.reads.get(&key) {
                Some(cell) => cell.clone(),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    inner.reads.insert(key, cell.clone());
                    inner.order.push_back(key);
                    inner.bytes += size;
                    // Past the capacity, forget first the reads every download of their blob
                    // has passed, then the oldest; downloads holding bytes keep them until sent.
                    if inner.bytes > self.capacity {
                        inner.forget_passed();
                    }
                    while inner.bytes > self.capacity {
                        let Some(old) = inner.order.pop_front() else {
                            break;
                        };
                        inner.bytes -= old.2;
                        inner.reads.remove(&old);
                    }
                    cell
                }
            }
        };
        let mut loaded = false;
        let outcome = cell
            .get_or_init(|| async {
                loaded = true;
                load.await.map_err(Arc::new)
            })
            .await
            .clone();
        if loaded {
            self.loads.fetch_add(1, Ordering::Relaxed);
        } else {
            self.shares.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            Ok(bytes) => Ok(bytes),
            Err(error) => {
                // Forget the failure, so that a later download reads the disk again.
                let mut inner = self.lock();
                if inner
                    .reads
                    .get(&key)
                    .is_some_and(|kept| Arc::ptr_eq(kept, &cell))
                {
                    inner.reads.remove(&key);
                }
                Err(io::Error::new(error.kind(), error.to_string()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test]
    async fn concurrent_readers_share_one_load_and_failures_are_retried() {
        let reads = SharedReads::new(1 << 20, 8);
        let digest = Digest([3; 32]);
        let first = reads.reader(digest, 0);
        assert!(!reads.crowded(&first));
        let second = reads.reader(digest, 0);
        assert!(reads.crowded(&first));
        let loads = Arc::new(AtomicUsize::new(0));
        let load = |loads: Arc<AtomicUsize>| async move {
            loads.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            Ok(Bytes::from_static(b"verified"))
        };
        let (a, b) = tokio::join!(
            reads.read(digest, 0, 8, load(loads.clone())),
            reads.read(digest, 0, 8, load(loads.clone())),
        );
        assert_eq!(a.unwrap(), b.unwrap());
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(reads.counts(), (1, 1));

        let failing = async { Err(io::Error::new(io::ErrorKind::InvalidData, "mismatch")) };
        let error = reads.read(digest, 262_144, 8, failing).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        // Not remembered: the next read loads again.
        let again = reads
            .read(digest, 262_144, 8, load(loads.clone()))
            .await
            .unwrap();
        assert_eq!(&again[..], b"verified");
        assert_eq!(loads.load(Ordering::SeqCst), 2);

        // The last reader gone, nothing is kept.
        drop(first);
        drop(second);
        let inner = reads.lock();
        assert!(inner.reads.is_empty() && inner.readers.is_empty() && inner.bytes == 0);
    }

    #[tokio::test]
    async fn kept_reads_stay_within_the_capacity() {
        let reads = SharedReads::new(16, 8);
        let digest = Digest([4; 32]);
        let _reader = reads.reader(digest, 0);
        for at in 0..10u64 {
            reads
                .read(digest, at * 8, 8, async { Ok(Bytes::from(vec![0u8; 8])) })
                .await
                .unwrap();
        }
        let inner = reads.lock();
        assert_eq!(inner.bytes, 16);
        assert_eq!(inner.reads.len(), 2);
    }

    #[tokio::test]
    async fn reads_every_download_has_passed_go_first() {
        // Room for three reads of 8 bytes.
        let reads = SharedReads::new(24, 8);
        let digest = Digest([5; 32]);
        let ahead = reads.reader(digest, 0);
        let behind = reads.reader(digest, 0);
        let read = |at: u64| {
            let reads = &reads;
            async move {
                reads
                    .read(digest, at, 8, async { Ok(Bytes::from(vec![0u8; 8])) })
                    .await
                    .unwrap()
            }
        };
        for at in [0, 8, 16] {
            read(at).await;
        }
        // Both have passed the first read; the one behind still needs the second.
        ahead.passed(24);
        behind.passed(8);
        read(24).await;
        let kept = |reads: &SharedReads| {
            let mut offsets: Vec<u64> = reads.lock().reads.keys().map(|key| key.1).collect();
            offsets.sort();
            offsets
        };
        assert_eq!(kept(&reads), vec![8, 16, 24]);
        // Nothing passed by both: the oldest goes.
        read(32).await;
        assert_eq!(kept(&reads), vec![16, 24, 32]);
        drop((ahead, behind));
    }
}
