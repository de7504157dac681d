//! Reading the guest-visible disk of a qcow2 image: its header, its L1 and L2 tables, and
//! its compressed clusters.
//!
//! This is pure code over byte ranges, like the format inspector: the caller reads the bytes
//! (through the store's verified reads) and this module says what they mean. It only ever
//! reads: no refcounts, no snapshots, no writes. Images with a backing file or an external
//! data file are refused at upload and again here; encrypted images, extended L2 entries and
//! images marked corrupt are refused here, so they have no raw view. The layout is QEMU's
//! `docs/interop/qcow2.txt`; all integers are big-endian.

use std::io::Read;

/// The header bytes [`Header::parse`] needs: version 3's fixed part and the compression type.
pub const HEADER_LEN: usize = 112;

/// The largest L1 table read: 512 Ki entries, which map 256 TiB with 64 KiB clusters (16 GiB
/// with the smallest, 512-byte ones). QEMU allows 32 MiB; a table that large would cost every
/// connection to the raw view that much memory, and no real disk needs it.
const MAX_L1_BYTES: u64 = 4 << 20;

const L1_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

/// Incompatible feature bits.
const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;

/// Why an image has no raw view, or a read of it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qcow2Error(pub String);

impl std::fmt::Display for Qcow2Error {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl std::error::Error for Qcow2Error {}

fn refuse<T>(message: impl Into<String>) -> Result<T, Qcow2Error> {
    Err(Qcow2Error(message.into()))
}

/// How compressed clusters are compressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Raw deflate (no zlib header), QEMU's default.
    Deflate,
    Zstd,
}

/// What the header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub cluster_bits: u32,
    /// The virtual disk's size.
    pub size: u64,
    pub l1_entries: u32,
    pub l1_offset: u64,
    pub compression: Compression,
}

impl Header {
    /// Parses and checks the first [`HEADER_LEN`] bytes (fewer is fine for a version 2 image
    /// or a short file: missing bytes read as zero).
    pub fn parse(head: &[u8]) -> Result<Header, Qcow2Error> {
        let mut bytes = [0u8; HEADER_LEN];
        let have = head.len().min(HEADER_LEN);
        bytes[..have].copy_from_slice(&head[..have]);
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4"));
        let u64_at = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8"));
        if have < 72 || &bytes[..4] != b"QFI\xfb" {
            return refuse("not a qcow2 image");
        }
        let version = u32_at(4);
        if version != 2 && version != 3 {
            return refuse(format!("qcow2 version {version} is not supported"));
        }
        if u64_at(8) != 0 {
            return refuse("qcow2 image has a backing file");
        }
        let cluster_bits = u32_at(20);
        if !(9..=21).contains(&cluster_bits) {
            return refuse(format!("qcow2 cluster_bits {cluster_bits} is out of range"));
        }
        if u32_at(32) != 0 {
            return refuse("qcow2 image is encrypted");
        }
        let size = u64_at(24);
        let l1_entries = u32_at(36);
        let l1_offset = u64_at(40);
        let mut compression = Compression::Deflate;
        if version == 3 {
            if have < 104 {
                return refuse("qcow2 version 3 header is incomplete");
            }
            let incompatible = u64_at(72);
            let known = INCOMPAT_DIRTY
                | INCOMPAT_CORRUPT
                | INCOMPAT_DATA_FILE
                | INCOMPAT_COMPRESSION
                | INCOMPAT_EXTENDED_L2;
            if incompatible & !known != 0 {
                return refuse("qcow2 image has unknown incompatible features");
            }
            if incompatible & INCOMPAT_CORRUPT != 0 {
                return refuse("qcow2 image is marked corrupt");
            }
            if incompatible & INCOMPAT_DATA_FILE != 0 {
                return refuse("qcow2 image has an external data file");
            }
            if incompatible & INCOMPAT_EXTENDED_L2 != 0 {
                return refuse("qcow2 images with extended L2 entries have no raw view");
            }
            let header_length = u32_at(100);
            if incompatible & INCOMPAT_COMPRESSION != 0 {
                if header_length <= 104 || have <= 104 {
                    return refuse("qcow2 header names a compression type it does not hold");
                }
                compression = match bytes[104] {
                    0 => Compression::Deflate,
                    1 => Compression::Zstd,
                    other => return refuse(format!("qcow2 compression type {other} is unknown")),
                };
            }
        }
        let header = Header {
            cluster_bits,
            size,
            l1_entries,
            l1_offset,
            compression,
        };
        let needed = header.size.div_ceil(header.l1_span());
        if u64::from(l1_entries) < needed {
            return refuse("qcow2 L1 table is too small for the disk");
        }
        if u64::from(l1_entries) * 8 > MAX_L1_BYTES {
            return refuse("qcow2 L1 table is too large");
        }
        if !l1_offset.is_multiple_of(header.cluster_size()) {
            return refuse("qcow2 L1 table is not cluster-aligned");
        }
        Ok(header)
    }

    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Entries in an L2 table (one cluster of 8-byte entries).
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / 8
    }

    /// Guest bytes one L2 table maps.
    pub fn l1_span(&self) -> u64 {
        self.cluster_size() * self.l2_entries()
    }

    /// Inflates a compressed cluster (its file bytes, possibly followed by unrelated bytes
    /// of the last sector) into exactly one cluster.
    pub fn decompress(&self, compressed: &[u8]) -> Result<Vec<u8>, Qcow2Error> {
        let size = self.cluster_size() as usize;
        let mut out = vec![0u8; size];
        let filled = match self.compression {
            Compression::Deflate => {
                read_full(&mut flate2::read::DeflateDecoder::new(compressed), &mut out)
            }
            Compression::Zstd => {
                let mut decoder = ruzstd::decoding::StreamingDecoder::new_with_max_window_size(
                    compressed,
                    ZSTD_MAX_WINDOW,
                )
                .map_err(|error| Qcow2Error(format!("qcow2 zstd cluster: {error}")))?;
                read_full(&mut decoder, &mut out)
            }
        }
        .map_err(|error| Qcow2Error(format!("qcow2 compressed cluster: {error}")))?;
        if filled < size {
            return refuse("qcow2 compressed cluster inflates to less than a cluster");
        }
        Ok(out)
    }

    /// The byte range of the L1 table in the image file.
    pub fn l1_range(&self) -> (u64, u64) {
        (self.l1_offset, u64::from(self.l1_entries) * 8)
    }
}

/// An image's mapping, once its L1 table is read.
#[derive(Clone, Debug)]
pub struct Map {
    pub header: Header,
    l1: Vec<u64>,
}

/// Where a guest cluster's bytes come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cluster {
    /// Reads as zeros: unallocated (no backing file, so zeros) or marked zero.
    Zero,
    /// Stored as is, at this offset of the image file.
    Data(u64),
    /// Compressed: these bytes of the image file hold it.
    Compressed { offset: u64, length: u64 },
}

impl Map {
    /// Takes the L1 table's bytes (`Header::l1_range` of the file).
    pub fn new(header: Header, l1_bytes: &[u8]) -> Result<Map, Qcow2Error> {
        if (l1_bytes.len() as u64) < u64::from(header.l1_entries) * 8 {
            return refuse("qcow2 L1 table is truncated");
        }
        let l1 = l1_bytes
            .chunks_exact(8)
            .take(header.l1_entries as usize)
            .map(|entry| u64::from_be_bytes(entry.try_into().expect("8 bytes")))
            .collect();
        Ok(Map { header, l1 })
    }

    pub fn size(&self) -> u64 {
        self.header.size
    }

    /// The L1 index covering a guest offset.
    pub fn l1_index(&self, guest: u64) -> u64 {
        guest / self.header.l1_span()
    }

    /// Where the L2 table for L1 index `index` is in the file; `None`: not allocated.
    pub fn l2_table(&self, index: u64) -> Result<Option<u64>, Qcow2Error> {
        let entry = *self
            .l1
            .get(index as usize)
            .ok_or_else(|| Qcow2Error("offset beyond the L1 table".into()))?;
        let offset = entry & L1_OFFSET_MASK;
        if offset == 0 {
            return Ok(None);
        }
        if !offset.is_multiple_of(self.header.cluster_size()) {
            return refuse("qcow2 L2 table is not cluster-aligned");
        }
        Ok(Some(offset))
    }

    /// Decodes an L2 table's bytes (one cluster) into its entries.
    pub fn decode_l2(&self, bytes: &[u8]) -> Result<Vec<u64>, Qcow2Error> {
        if (bytes.len() as u64) < self.header.cluster_size() {
            return refuse("qcow2 L2 table is truncated");
        }
        Ok(bytes
            .chunks_exact(8)
            .take(self.header.l2_entries() as usize)
            .map(|entry| u64::from_be_bytes(entry.try_into().expect("8 bytes")))
            .collect())
    }

    /// What the L2 entry for the guest cluster at `guest` says (`l2`: that cluster's table,
    /// decoded; `None`: no table, so the cluster reads as zeros).
    pub fn cluster(&self, l2: Option<&[u64]>, guest: u64) -> Result<Cluster, Qcow2Error> {
        let Some(l2) = l2 else {
            return Ok(Cluster::Zero);
        };
        let bits = self.header.cluster_bits;
        let index = ((guest >> bits) % self.header.l2_entries()) as usize;
        let entry = *l2
            .get(index)
            .ok_or_else(|| Qcow2Error("qcow2 L2 table is truncated".into()))?;
        if entry & L2_COMPRESSED != 0 {
            // Bits 0..x-1: the offset; x..61: the 512-byte sectors beyond the first.
            let shift = 62 - (bits - 8);
            let offset = entry & ((1u64 << shift) - 1);
            let sectors = ((entry >> shift) & ((1u64 << (bits - 8)) - 1)) + 1;
            let length = (sectors * 512).saturating_sub(offset & 511);
            return Ok(Cluster::Compressed { offset, length });
        }
        if entry & L2_ZERO != 0 {
            return Ok(Cluster::Zero);
        }
        let offset = entry & L2_OFFSET_MASK;
        if offset == 0 {
            return Ok(Cluster::Zero);
        }
        if !offset.is_multiple_of(self.header.cluster_size()) {
            return refuse("qcow2 data cluster is not cluster-aligned");
        }
        Ok(Cluster::Data(offset))
    }
}

/// The largest zstd window accepted: a cluster is at most 2 MiB, and QEMU compresses each on
/// its own.
const ZSTD_MAX_WINDOW: u64 = 8 << 20;

/// Reads until `out` is full or the source ends; returns how much was read.
fn read_full(source: &mut impl Read, out: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < out.len() {
        match source.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// The whole guest disk of an image held in memory: for tests and the fuzz target, which
/// check it against `qemu-img convert -O raw`. Reads each piece as the store's glue does.
#[cfg(test)]
pub fn read_all(file: &[u8]) -> Result<Vec<u8>, Qcow2Error> {
    let header = Header::parse(file)?;
    let (offset, length) = header.l1_range();
    let l1 = slice(file, offset, length)?;
    let map = Map::new(header, l1)?;
    let mut out = Vec::new();
    let cluster = map.header.cluster_size();
    let mut guest = 0;
    let mut table: Option<(u64, Option<Vec<u64>>)> = None;
    while guest < map.size() {
        let index = map.l1_index(guest);
        if table.as_ref().is_none_or(|(at, _)| *at != index) {
            let l2 = match map.l2_table(index)? {
                Some(at) => Some(map.decode_l2(slice(file, at, cluster)?)?),
                None => None,
            };
            table = Some((index, l2));
        }
        let l2 = table.as_ref().and_then(|(_, l2)| l2.as_deref());
        let take = cluster.min(map.size() - guest) as usize;
        match map.cluster(l2, guest)? {
            Cluster::Zero => out.resize(out.len() + take, 0),
            Cluster::Data(at) => out.extend_from_slice(&slice(file, at, take as u64)?[..take]),
            Cluster::Compressed { offset, length } => {
                let end = (offset + length).min(file.len() as u64);
                let bytes = slice(file, offset, end.saturating_sub(offset))?;
                out.extend_from_slice(&map.header.decompress(bytes)?[..take]);
            }
        }
        guest += take as u64;
        if out.len() > 1 << 30 {
            return refuse("test images stay under 1 GiB");
        }
    }
    Ok(out)
}

#[cfg(test)]
fn slice(file: &[u8], offset: u64, length: u64) -> Result<&[u8], Qcow2Error> {
    let end = offset
        .checked_add(length)
        .ok_or_else(|| Qcow2Error("range overflows".into()))?;
    file.get(offset as usize..end as usize)
        .ok_or_else(|| Qcow2Error("range beyond the file".into()))
}

#[cfg(test)]
mod tests;
