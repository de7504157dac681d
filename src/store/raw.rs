//! Verified range reads into memory, extent maps, and the raw view of qcow2 images: the
//! guest-visible disk, read through `blob::qcow2`'s mapping with every stored byte (tables
//! and clusters alike) coming from the verified download path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::{Store, StoreError, blocking};
use crate::blob::qcow2::{self, Cluster, Map};
use crate::kv::{Digest, Extents, ImageData, Stretch};

/// The most L2 tables one raw view keeps decoded (each is one cluster, 64 KiB by default):
/// 64 tables map 32 GiB of a disk with 64 KiB clusters.
const L2_CACHE: usize = 64;

impl Store {
    /// Reads `length` bytes of an image's data from `offset` through the verified download
    /// path (a transfer slot, the blob pinned, every group checked against the blob's tree)
    /// into one buffer. Nothing is returned unless all of it verified.
    pub async fn read_range(
        self: &Arc<Self>,
        data: &ImageData,
        offset: u64,
        length: u64,
    ) -> std::io::Result<Bytes> {
        if offset.checked_add(length).is_none_or(|end| end > data.size) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "bytes {offset}+{length} are beyond the image's {} bytes",
                    data.size
                ),
            ));
        }
        let stream = self
            .download(data, offset, length)
            .await
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let mut stream = std::pin::pin!(stream);
        let mut out = BytesMut::with_capacity(length as usize);
        while let Some(chunk) = stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        if out.len() as u64 != length {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the stored bytes ended early",
            ));
        }
        Ok(out.freeze())
    }

    /// The extent map recorded for a blob when its bytes were received, if any.
    pub async fn extents(self: &Arc<Self>, digest: Digest) -> Result<Option<Extents>, StoreError> {
        let store = self.clone();
        Ok(blocking(move || store.kv.extents(digest)).await??)
    }

    /// Opens the raw view of a qcow2 image: reads and checks its header and L1 table.
    pub async fn raw_disk(self: &Arc<Self>, data: &ImageData) -> std::io::Result<Arc<RawDisk>> {
        let head = self
            .read_range(data, 0, (qcow2::HEADER_LEN as u64).min(data.size))
            .await?;
        let header = qcow2::Header::parse(&head).map_err(invalid)?;
        let (offset, length) = header.l1_range();
        let l1 = self.read_range(data, offset, length).await?;
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

    /// The L2 table for L1 index `index`, read (verified) on first use.
    async fn table(
        &self,
        store: &Arc<Store>,
        data: &ImageData,
        index: u64,
    ) -> std::io::Result<Option<Arc<Vec<u64>>>> {
        if let Some(table) = self.cached(index) {
            return Ok(table);
        }
        let table = match self.map.l2_table(index).map_err(invalid)? {
            None => None,
            Some(offset) => {
                let bytes = store
                    .read_range(data, offset, self.map.header.cluster_size())
                    .await?;
                Some(Arc::new(self.map.decode_l2(&bytes).map_err(invalid)?))
            }
        };
        let mut tables = self
            .tables
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if tables.len() >= L2_CACHE {
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

    /// Reads `length` guest bytes from `offset`: zeros for unallocated and zero clusters,
    /// stored bytes (runs of adjacent clusters in one read) and inflated compressed clusters.
    pub async fn read(
        &self,
        store: &Arc<Store>,
        data: &ImageData,
        offset: u64,
        length: u64,
    ) -> std::io::Result<Bytes> {
        let end = offset.saturating_add(length).min(self.size());
        let cluster = self.map.header.cluster_size();
        let mut out = BytesMut::with_capacity(end.saturating_sub(offset) as usize);
        let mut guest = offset;
        while guest < end {
            let index = self.map.l1_index(guest);
            let table = self.table(store, data, index).await?;
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
                    out.extend_from_slice(&store.read_range(data, start, run).await?);
                    guest += run;
                    continue;
                }
                Cluster::Compressed {
                    offset: host,
                    length,
                } => {
                    // The last sector may run past the end of the file.
                    let until = host.saturating_add(length).min(data.size);
                    let bytes = store
                        .read_range(data, host, until.saturating_sub(host))
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
        Ok(out.freeze())
    }

    /// Describes `[offset, offset + length)` as data and zero stretches, at most `limit`.
    pub async fn describe(
        &self,
        store: &Arc<Store>,
        data: &ImageData,
        offset: u64,
        length: u64,
        limit: usize,
    ) -> std::io::Result<Vec<Stretch>> {
        let end = offset.saturating_add(length).min(self.size());
        let cluster = self.map.header.cluster_size();
        let span = self.map.header.l1_span();
        let mut stretches: Vec<Stretch> = Vec::new();
        let mut guest = offset;
        while guest < end {
            let index = self.map.l1_index(guest);
            let table = self.table(store, data, index).await?;
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
