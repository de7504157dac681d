//! Block-level reads: image bytes held open for many verified range reads (`OpenData`), the
//! extent maps recorded at upload, and the raw view of qcow2 images, the guest-visible disk
//! read through `blob::qcow2`'s mapping with every stored byte (tables and clusters alike)
//! coming from verified reads.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};

use super::{Pin, Store, StoreError, blocking};
use crate::blob::SharedBlob;
use crate::blob::qcow2::{self, Cluster, Map};
use crate::kv::{Digest, Extents, ImageData, Stretch};

/// An image's bytes held open for many verified reads (an NBD connection, one `/raw`
/// request): the blob opened once in the first store that opens it, and pinned, so that a
/// delete of the image does not remove the bytes under the reads.
pub struct OpenData {
    pub data: ImageData,
    place: usize,
    blob: SharedBlob,
    _pin: Pin,
}

/// The bytes of decoded L2 tables one raw view keeps (each table is one cluster): 128 tables
/// with 64 KiB clusters (they map 64 GiB), 4 with 2 MiB ones; at least 2 whatever the size.
const L2_CACHE_BYTES: u64 = 8 << 20;

/// The most clusters (or unallocated tables) one `describe` walks; it then describes less
/// than was asked, which NBD's block status and the paged `/extents` both allow. A hostile
/// image (every L1 entry naming one table of alternating clusters) thus costs a bounded walk.
const DESCRIBE_WALK: usize = 65_536;

impl Store {
    /// Opens an image's bytes for `read_open`: the first store in download order that opens
    /// them (a blob marked damaged is not opened in the data directory).
    pub async fn open_data(
        self: &Arc<Self>,
        data: &ImageData,
    ) -> Result<Arc<OpenData>, StoreError> {
        let store = self.clone();
        let data = data.clone();
        blocking(move || {
            let damaged = store.kv.is_bad_blob(data.digest)?;
            let order = store.read_order(&data, damaged);
            if order.is_empty() && damaged {
                return Err(StoreError::Damaged(data.digest));
            }
            let pin = Pin::new(store.clone(), data.digest);
            let mut last = None;
            for place in order {
                match store.places[place].blobs.open(data.digest, data.size) {
                    Ok(blob) => {
                        return Ok(Arc::new(OpenData {
                            data,
                            place,
                            blob: blob.shared(),
                            _pin: pin,
                        }));
                    }
                    Err(error) => last = Some(error),
                }
            }
            Err(StoreError::Blob(last.unwrap_or_else(|| {
                crate::blob::BlobError::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no configured store holds the image's bytes",
                ))
            })))
        })
        .await?
    }

    /// Reads `length` bytes from `offset` of open data as pieces in order, every byte checked
    /// against the blob's tree first; takes a download slot for the read, as a download does.
    pub async fn read_open(
        self: &Arc<Self>,
        open: &OpenData,
        offset: u64,
        length: u64,
    ) -> std::io::Result<Vec<Bytes>> {
        if offset
            .checked_add(length)
            .is_none_or(|end| end > open.data.size)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "bytes {offset}+{length} are beyond the image's {} bytes",
                    open.data.size
                ),
            ));
        }
        let _slot = Store::slot(&self.downloads)
            .await
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        self.places[open.place]
            .blobs
            .read_shared(&open.blob, offset, length)
            .await
    }

    /// `read_open` into one buffer (copied only when it spans several pieces).
    pub async fn read_open_bytes(
        self: &Arc<Self>,
        open: &OpenData,
        offset: u64,
        length: u64,
    ) -> std::io::Result<Bytes> {
        let mut pieces = self.read_open(open, offset, length).await?;
        if pieces.len() == 1 {
            return Ok(pieces.pop().expect("one piece"));
        }
        let mut out = BytesMut::with_capacity(length as usize);
        for piece in pieces {
            out.extend_from_slice(&piece);
        }
        Ok(out.freeze())
    }

    /// The extent map recorded for a blob when its bytes were received, if any.
    pub async fn extents(self: &Arc<Self>, digest: Digest) -> Result<Option<Extents>, StoreError> {
        let store = self.clone();
        Ok(blocking(move || store.kv.extents(digest)).await??)
    }

    /// Opens the raw view of a qcow2 image: reads and checks its header and L1 table.
    pub async fn raw_disk(self: &Arc<Self>, open: &OpenData) -> std::io::Result<Arc<RawDisk>> {
        let head = self
            .read_open_bytes(open, 0, (qcow2::HEADER_LEN as u64).min(open.data.size))
            .await?;
        let header = qcow2::Header::parse(&head).map_err(invalid)?;
        let (offset, length) = header.l1_range();
        let l1 = self.read_open_bytes(open, offset, length).await?;
        let map = Map::new(header, &l1).map_err(invalid)?;
        Ok(Arc::new(RawDisk {
            map,
            tables: Mutex::new(HashMap::new()),
        }))
    }
}

fn invalid(error: qcow2::Qcow2Error) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, error)
}

/// The guest-visible disk of a qcow2 image.
pub struct RawDisk {
    map: Map,
    /// Decoded L2 tables by L1 index (`None`: not allocated).
    tables: Mutex<HashMap<u64, Option<Arc<Vec<u64>>>>>,
}

impl RawDisk {
    /// The virtual disk's size.
    pub fn size(&self) -> u64 {
        self.map.size()
    }

    pub fn cluster_size(&self) -> u64 {
        self.map.header.cluster_size()
    }

    /// The L2 table for L1 index `index`, read (verified) on first use.
    async fn table(
        &self,
        store: &Arc<Store>,
        open: &OpenData,
        index: u64,
    ) -> std::io::Result<Option<Arc<Vec<u64>>>> {
        if let Some(table) = self.cached(index) {
            return Ok(table);
        }
        let table = match self.map.l2_table(index).map_err(invalid)? {
            None => None,
            Some(offset) => {
                let bytes = store
                    .read_open_bytes(open, offset, self.map.header.cluster_size())
                    .await?;
                Some(Arc::new(self.map.decode_l2(&bytes).map_err(invalid)?))
            }
        };
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let keep = (L2_CACHE_BYTES / self.map.header.cluster_size()).max(2) as usize;
        if tables.len() >= keep {
            tables.clear();
        }
        tables.insert(index, table.clone());
        Ok(table)
    }

    fn cached(&self, index: u64) -> Option<Option<Arc<Vec<u64>>>> {
        self.tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&index)
            .cloned()
    }

    /// Reads `length` guest bytes from `offset` into one buffer (so that a fragmented image
    /// holds no more memory than the read's length): zeros for unallocated and zero clusters,
    /// stored bytes (runs of adjacent clusters in one read; past the end of the file, zeros,
    /// as QEMU reads them) and inflated compressed clusters.
    pub async fn read(
        &self,
        store: &Arc<Store>,
        open: &OpenData,
        offset: u64,
        length: u64,
    ) -> std::io::Result<Vec<Bytes>> {
        let end = offset.saturating_add(length).min(self.size());
        let cluster = self.map.header.cluster_size();
        let mut out = BytesMut::with_capacity(end.saturating_sub(offset) as usize);
        let mut guest = offset;
        while guest < end {
            let index = self.map.l1_index(guest);
            let table = self.table(store, open, index).await?;
            let l2 = table.as_deref().map(Vec::as_slice);
            let within = guest % cluster;
            let take = (cluster - within).min(end - guest);
            match self.map.cluster(l2, guest).map_err(invalid)? {
                Cluster::Zero => out.resize(out.len() + take as usize, 0),
                Cluster::Data(host) => {
                    // Extend the read over the following clusters while they are stored
                    // right after this one (and mapped by the same table).
                    let start = host + within;
                    let mut run = take;
                    while guest + run < end && self.map.l1_index(guest + run) == index {
                        match self.map.cluster(l2, guest + run).map_err(invalid)? {
                            Cluster::Data(next) if next == start + run => {
                                run += cluster.min(end - guest - run);
                            }
                            _ => break,
                        }
                    }
                    let stored = open.data.size.saturating_sub(start).min(run);
                    if stored > 0 {
                        for piece in store.read_open(open, start, stored).await? {
                            out.extend_from_slice(&piece);
                        }
                    }
                    out.resize(out.len() + (run - stored) as usize, 0);
                    guest += run;
                    continue;
                }
                Cluster::Compressed {
                    offset: host,
                    length,
                } => {
                    // The last sector may run past the end of the file.
                    let until = host.saturating_add(length).min(open.data.size);
                    let bytes = store
                        .read_open_bytes(open, host, until.saturating_sub(host))
                        .await?;
                    let header = self.map.header.clone();
                    let inflated = blocking(move || header.decompress(&bytes))
                        .await
                        .map_err(|error| std::io::Error::other(error.to_string()))?
                        .map_err(invalid)?;
                    out.extend_from_slice(&inflated[within as usize..(within + take) as usize]);
                }
            }
            guest += take;
        }
        Ok(vec![out.freeze()])
    }

    /// Describes `[offset, offset + length)` as data and zero stretches from `offset`, at most
    /// `limit` of them and at most `DESCRIBE_WALK` clusters' worth: possibly less than asked.
    pub async fn describe(
        &self,
        store: &Arc<Store>,
        open: &OpenData,
        offset: u64,
        length: u64,
        limit: usize,
    ) -> std::io::Result<Vec<Stretch>> {
        let end = offset.saturating_add(length).min(self.size());
        let cluster = self.map.header.cluster_size();
        let span = self.map.header.l1_span();
        let mut stretches: Vec<Stretch> = Vec::new();
        let mut guest = offset;
        let mut walked = 0;
        while guest < end && walked < DESCRIBE_WALK {
            walked += 1;
            let index = self.map.l1_index(guest);
            let table = self.table(store, open, index).await?;
            let Some(l2) = table.as_deref() else {
                // A whole unallocated table's span reads as zeros.
                let until = ((index + 1) * span).min(end);
                if !extend(&mut stretches, until - guest, true, limit) {
                    break;
                }
                guest = until;
                continue;
            };
            let take = (cluster - guest % cluster).min(end - guest);
            let zero = self.map.cluster(Some(l2), guest).map_err(invalid)? == Cluster::Zero;
            if !extend(&mut stretches, take, zero, limit) {
                break;
            }
            guest += take;
        }
        Ok(stretches)
    }
}

/// Adds a stretch, merged into the last one when it is of the same kind; false (and nothing
/// added) when that would make more than `limit`.
fn extend(stretches: &mut Vec<Stretch>, length: u64, zero: bool, limit: usize) -> bool {
    if let Some(last) = stretches.last_mut()
        && last.zero == zero
    {
        last.length += length;
        return true;
    }
    if stretches.len() >= limit {
        return false;
    }
    stretches.push(Stretch { length, zero });
    true
}
