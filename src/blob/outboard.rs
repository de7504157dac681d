//! BLAKE3 outboard trees: verified reads of any byte range of a blob.
//!
//! A blob is named by its BLAKE3 digest, which is the root of a binary hash tree over the
//! blob's 1 KiB chunks. The *outboard* keeps the inner nodes of that tree down to groups of 16
//! chunks (16 KiB, "chunk log 4"), so that any group-aligned read can be checked against the
//! digest by hashing only the bytes read plus one 64-byte node per tree level.
//!
//! # Format
//!
//! The outboard is the tree's parent nodes in post-order, each stored as the two child chaining
//! values (left, then right), 64 bytes per node, with nothing else: no header and no size (the
//! size is in the metadata; bao-tree's post-order outboard "with suffix" appends it as a u64
//! little-endian). A blob of `n = ceil(size / 16 KiB)` groups has `n - 1` parents, so the
//! outboard is `64 * (n - 1)` bytes ([`outboard_len`]): 4 MiB - 64 bytes per GiB, 0.39 %. This
//! is byte for byte the post-order outboard of the `bao-tree` crate with `BlockSize(4)`, so it
//! can later serve bao-tree clients. Post-order is what lets the builder append while the upload
//! streams, without knowing the size in advance: a parent is written once both its subtrees are
//! complete, and the right edge of the tree last, at [`OutboardBuilder::finish`].
//!
//! # How the root binds the outboard
//!
//! Nothing in the outboard is trusted until it is hashed up to the root: the last 64 bytes are
//! the root node, and [`Verifier::new`] checks that merging them as a BLAKE3 root gives the
//! digest (one compression, one 64-byte read). Every read then descends from the root to the
//! groups it covers, checking at each level that the node's two halves merge to the chaining
//! value its (already verified) parent holds for it, and finally that the bytes read hash to the
//! chaining value of the subtree they form. A read therefore costs the hashing of its own bytes
//! plus one node per level (`log2(n)`), never the whole outboard; nodes verified once are kept
//! per tree level, so a sequential read re-checks only the few levels that change per buffer,
//! and a buffer that continues the previous one reads 16 KiB of outboard ahead (untrusted until
//! each node in it is checked like any other), so that a whole download reads the outboard in
//! a few large reads rather than one 64-byte read per buffer.
//!
//! Node positions need no index: the node over groups `[start, end)` that is reached from the
//! root by `k` steps to a right child is the parent number `end - 2 - k` in post-order (the
//! left siblings on its path partition `[0, start)` and a subtree of `c` groups has `c - 1`
//! parents).

use std::fmt;
use std::io;
use std::ops::Range;

use blake3::hazmat::{HasherExt, Mode, merge_subtrees_non_root, merge_subtrees_root};

/// Bytes per chunk group, the unit of verification: 16 BLAKE3 chunks.
pub const GROUP_SIZE: u64 = 16 * 1024;
/// Bytes per outboard node: the left and right child chaining values.
pub const NODE_SIZE: u64 = 64;
/// Tree levels cached by a [`Verifier`]; a u64 size has at most 50 group levels.
const MAX_DEPTH: usize = 64;

type ChainingValue = [u8; 32];
type Node = [u8; 64];

/// Number of 16 KiB groups in a blob of `size` bytes (an empty blob counts as one empty group).
fn group_count(size: u64) -> u64 {
    size.div_ceil(GROUP_SIZE).max(1)
}

/// Size in bytes of the outboard of a blob of `size` bytes.
pub fn outboard_len(size: u64) -> u64 {
    (group_count(size) - 1) * NODE_SIZE
}

/// The group-aligned byte range that covers `[offset, offset + length)` of a blob of `size`
/// bytes: its start rounded down to a group, its end rounded up to a group or to the end of the
/// blob. `None` when the range does not lie within the blob. An empty range maps to an empty
/// range at its (rounded) start.
pub fn covering_range(offset: u64, length: u64, size: u64) -> Option<Range<u64>> {
    let end = offset.checked_add(length)?;
    if end > size {
        return None;
    }
    let start = offset - offset % GROUP_SIZE;
    if length == 0 {
        return Some(start..start);
    }
    let rounded = end.div_ceil(GROUP_SIZE).saturating_mul(GROUP_SIZE);
    Some(start..rounded.min(size))
}

/// What can go wrong when checking data against an outboard.
#[derive(Debug)]
pub enum OutboardError {
    /// The outboard's length does not fit the blob size.
    Length { expected: u64, actual: u64 },
    /// Bytes of the blob in `start..end`, or the outboard nodes above them, do not hash to the
    /// blob's digest.
    Mismatch { start: u64, end: u64 },
    /// The buffer does not start on a group boundary, does not end on one before the end of the
    /// blob, or extends past it.
    Misaligned { offset: u64, length: u64 },
    /// Reading the outboard failed.
    Io(io::Error),
}

impl fmt::Display for OutboardError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OutboardError::Length { expected, actual } => write!(
                formatter,
                "outboard has {actual} bytes where the blob needs {expected}"
            ),
            OutboardError::Mismatch { start, end } => write!(
                formatter,
                "bytes {start}..{end} of the blob or their outboard nodes do not match its digest"
            ),
            OutboardError::Misaligned { offset, length } => write!(
                formatter,
                "read of {length} bytes at {offset} is not a group-aligned part of the blob"
            ),
            OutboardError::Io(error) => write!(formatter, "outboard: {error}"),
        }
    }
}

impl std::error::Error for OutboardError {}

impl From<io::Error> for OutboardError {
    fn from(error: io::Error) -> Self {
        OutboardError::Io(error)
    }
}

/// Builds the outboard of a blob from its bytes in order, in pieces of any size, along with its
/// BLAKE3 digest (equal to `blake3::hash` of the whole).
pub struct OutboardBuilder {
    /// Hasher of the current group, set to its offset.
    group: blake3::Hasher,
    /// Bytes in the current group.
    filled: u64,
    /// Index of the current group.
    index: u64,
    /// Chaining values of complete subtrees not yet merged, as in BLAKE3's own hasher.
    stack: Vec<ChainingValue>,
    outboard: Vec<u8>,
}

impl Default for OutboardBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl OutboardBuilder {
    /// A builder for a blob whose size need not be known.
    pub fn new() -> Self {
        OutboardBuilder {
            group: blake3::Hasher::new(),
            filled: 0,
            index: 0,
            stack: Vec::with_capacity(MAX_DEPTH),
            outboard: Vec::new(),
        }
    }

    /// Feeds the next bytes of the blob.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.filled == GROUP_SIZE {
                // More bytes follow a full group: it is not the last, so not the root.
                let chaining_value = self.group.finalize_non_root();
                self.push_group(chaining_value);
            }
            if self.filled == 0 && bytes.len() as u64 > GROUP_SIZE {
                // A whole group with more bytes after it, hashed in place.
                let (whole, rest) = bytes.split_at(GROUP_SIZE as usize);
                let chaining_value = self.group.update(whole).finalize_non_root();
                self.push_group(chaining_value);
                bytes = rest;
                continue;
            }
            let room = (GROUP_SIZE - self.filled).min(bytes.len() as u64) as usize;
            let (taken, rest) = bytes.split_at(room);
            self.group.update(taken);
            self.filled += room as u64;
            bytes = rest;
        }
    }

    /// Ends the current group and adds its chaining value to the tree, merging (and writing)
    /// the parents it completes. Only called when more bytes follow, so that no parent merged
    /// here can be the root.
    fn push_group(&mut self, chaining_value: ChainingValue) {
        // BLAKE3's lazy merge: before group `index` joins, the stack holds one subtree per set
        // bit of `index`.
        self.merge_stack(self.index.count_ones() as usize);
        self.stack.push(chaining_value);
        self.index += 1;
        self.group = blake3::Hasher::new();
        self.group.set_input_offset(self.index * GROUP_SIZE);
        self.filled = 0;
    }

    /// Merges the top subtrees of the stack, writing their parents, until `keep` are left.
    fn merge_stack(&mut self, keep: usize) {
        while self.stack.len() > keep {
            let (Some(right), Some(left)) = (self.stack.pop(), self.stack.pop()) else {
                break;
            };
            self.outboard.extend_from_slice(&left);
            self.outboard.extend_from_slice(&right);
            self.stack
                .push(merge_subtrees_non_root(&left, &right, Mode::Hash));
        }
    }

    /// Takes the outboard bytes written so far. Post-order makes them final: later bytes only
    /// append, so a builder can be drained as the upload streams and `finish` returns the rest.
    pub fn drain(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.outboard)
    }

    /// Outboard bytes waiting to be drained.
    pub fn pending(&self) -> usize {
        self.outboard.len()
    }

    /// The blob's BLAKE3 digest and its outboard (what `drain` has not taken).
    pub fn finish(mut self) -> ([u8; 32], Vec<u8>) {
        if self.index == 0 {
            // One group at most: no parents, and the group is the root.
            return (*self.group.finalize().as_bytes(), self.outboard);
        }
        // After the first group, a group is only started when a byte follows, so the last one
        // is never empty here. The complete subtrees before it merge first, then the right edge
        // of the tree from the bottom up.
        self.merge_stack(self.index.count_ones() as usize);
        let mut right = self.group.finalize_non_root();
        let mut root = [0; 32];
        while let Some(left) = self.stack.pop() {
            self.outboard.extend_from_slice(&left);
            self.outboard.extend_from_slice(&right);
            if self.stack.is_empty() {
                root = *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes();
            } else {
                right = merge_subtrees_non_root(&left, &right, Mode::Hash);
            }
        }
        (root, self.outboard)
    }
}

/// Where a [`Verifier`] reads outboard nodes from: the bytes in memory, or the outboard file.
pub trait OutboardSource {
    /// Length of the outboard in bytes.
    fn outboard_len(&self) -> io::Result<u64>;
    /// Fills `buffer` with the bytes at `offset`, failing if there are not that many.
    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()>;
}

impl OutboardSource for [u8] {
    fn outboard_len(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        let found = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buffer.len())?));
        match found {
            Some(bytes) => {
                buffer.copy_from_slice(bytes);
                Ok(())
            }
            None => Err(io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

impl OutboardSource for Vec<u8> {
    fn outboard_len(&self) -> io::Result<u64> {
        self.as_slice().outboard_len()
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        self.as_slice().read_exact_at(offset, buffer)
    }
}

impl OutboardSource for std::fs::File {
    fn outboard_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buffer, offset)
    }
}

impl<T: OutboardSource + ?Sized> OutboardSource for &T {
    fn outboard_len(&self) -> io::Result<u64> {
        (**self).outboard_len()
    }

    fn read_exact_at(&self, offset: u64, buffer: &mut [u8]) -> io::Result<()> {
        (**self).read_exact_at(offset, buffer)
    }
}

/// Checks group-aligned reads of one blob against its digest and outboard.
///
/// A reader widens the requested range with [`covering_range`], reads it in buffers that start
/// on group boundaries and hold whole groups (or end at the end of the blob), passes each to
/// [`verify`](Verifier::verify), and only then hands out the requested part of it.
pub struct Verifier<O> {
    outboard: O,
    root: [u8; 32],
    size: u64,
    groups: u64,
    /// Per tree level, the last node verified there: (its index in post-order, its bytes).
    verified: [Option<(u64, Node)>; MAX_DEPTH],
    /// Unverified outboard bytes read ahead, from `window_start`: during a sequential read the
    /// nodes needed next follow in post-order, so one read serves many buffers.
    window: Vec<u8>,
    window_start: u64,
    /// Where the last verified buffer ended: a buffer starting there continues a sequential read.
    next_offset: Option<u64>,
}

impl<O: OutboardSource> Verifier<O> {
    /// Checks that `outboard` has the length a blob of `size` bytes needs and that its root node
    /// hashes to `root`. Deeper nodes are checked when a read reaches them.
    pub fn new(outboard: O, root: [u8; 32], size: u64) -> Result<Self, OutboardError> {
        let expected = outboard_len(size);
        let actual = outboard.outboard_len()?;
        if actual != expected {
            return Err(OutboardError::Length { expected, actual });
        }
        let mut verifier = Verifier {
            outboard,
            root,
            size,
            groups: group_count(size),
            verified: [None; MAX_DEPTH],
            window: Vec::new(),
            window_start: 0,
            next_offset: None,
        };
        if size == 0 {
            if *blake3::hash(&[]).as_bytes() != root {
                return Err(OutboardError::Mismatch { start: 0, end: 0 });
            }
        } else if verifier.groups > 1 {
            verifier.node(0, verifier.groups, 0, &root, 0, false)?;
        }
        Ok(verifier)
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Checks `bytes`, which the blob holds at `offset`. `offset` must be a multiple of
    /// [`GROUP_SIZE`] and `bytes` must hold whole groups or end where the blob ends. Costs the
    /// hashing of `bytes` plus at most one outboard node per tree level.
    pub fn verify(&mut self, offset: u64, bytes: &[u8]) -> Result<(), OutboardError> {
        let length = bytes.len() as u64;
        let misaligned = OutboardError::Misaligned { offset, length };
        let Some(end) = offset.checked_add(length).filter(|end| *end <= self.size) else {
            return Err(misaligned);
        };
        if length == 0 {
            return Ok(());
        }
        if !offset.is_multiple_of(GROUP_SIZE)
            || (!length.is_multiple_of(GROUP_SIZE) && end != self.size)
        {
            return Err(misaligned);
        }
        let read = Read {
            first: offset / GROUP_SIZE,
            last: end.div_ceil(GROUP_SIZE),
            offset,
            bytes,
        };
        let sequential = self.next_offset == Some(offset);
        self.next_offset = None;
        let root = self.root;
        self.check(&read, 0, self.groups, &root, 0, 0, sequential)?;
        self.next_offset = Some(end);
        Ok(())
    }

    /// Checks the part of `read` under the subtree over groups `[start, end)`, whose chaining
    /// value (or root digest, at depth 0) is `expected` and which is reached from the root by
    /// `right_turns` steps to a right child.
    fn check(
        &mut self,
        read: &Read<'_>,
        start: u64,
        end: u64,
        expected: &ChainingValue,
        depth: usize,
        right_turns: u64,
        sequential: bool,
    ) -> Result<(), OutboardError> {
        let is_root = depth == 0;
        let byte_start = start * GROUP_SIZE;
        let byte_end = end.saturating_mul(GROUP_SIZE).min(self.size);
        if (read.first <= start && end <= read.last) || end - start < 2 {
            // The read holds the whole subtree: hash it.
            let mismatch = OutboardError::Mismatch {
                start: byte_start,
                end: byte_end,
            };
            let slice = usize::try_from(byte_start - read.offset)
                .ok()
                .zip(usize::try_from(byte_end - read.offset).ok())
                .and_then(|(low, high)| read.bytes.get(low..high))
                .ok_or(OutboardError::Misaligned {
                    offset: read.offset,
                    length: read.bytes.len() as u64,
                })?;
            let actual = if is_root {
                *blake3::hash(slice).as_bytes()
            } else {
                blake3::Hasher::new()
                    .set_input_offset(byte_start)
                    .update(slice)
                    .finalize_non_root()
            };
            return if actual == *expected {
                Ok(())
            } else {
                Err(mismatch)
            };
        }
        // Partly read, so at least two groups: descend through the node's halves.
        let node = self.node(start, end, depth, expected, right_turns, sequential)?;
        let middle = start + left_groups(end - start);
        let (left, right) = split_node(&node);
        if read.first < middle {
            let turns = right_turns;
            self.check(read, start, middle, &left, depth + 1, turns, sequential)?;
        }
        if middle < read.last {
            let turns = right_turns + 1;
            self.check(read, middle, end, &right, depth + 1, turns, sequential)?;
        }
        Ok(())
    }

    /// The outboard node of the subtree over groups `[start, end)` (at least two), checked
    /// against the subtree's chaining value `expected` (its digest at depth 0). A `sequential`
    /// read reads ahead.
    fn node(
        &mut self,
        start: u64,
        end: u64,
        depth: usize,
        expected: &ChainingValue,
        right_turns: u64,
        sequential: bool,
    ) -> Result<Node, OutboardError> {
        let mismatch = OutboardError::Mismatch {
            start: start * GROUP_SIZE,
            end: end.saturating_mul(GROUP_SIZE).min(self.size),
        };
        // Both always exist for a subtree of two groups or more; checked all the same.
        let (Some(index), Some(slot)) = (
            end.checked_sub(2 + right_turns),
            self.verified.get_mut(depth),
        ) else {
            return Err(mismatch);
        };
        if let Some((cached, node)) = slot
            && *cached == index
        {
            return Ok(*node);
        }
        let node = read_node(
            &self.outboard,
            &mut self.window,
            &mut self.window_start,
            outboard_len(self.size),
            index * NODE_SIZE,
            sequential,
        )?;
        let (left, right) = split_node(&node);
        let merged = if depth == 0 {
            *merge_subtrees_root(&left, &right, Mode::Hash).as_bytes()
        } else {
            merge_subtrees_non_root(&left, &right, Mode::Hash)
        };
        if merged != *expected {
            return Err(mismatch);
        }
        *slot = Some((index, node));
        Ok(node)
    }
}

/// Outboard bytes read ahead by a sequential read: 256 nodes, the nodes of about 4 MiB of data.
const READ_AHEAD: u64 = 256 * NODE_SIZE;

/// The 64 bytes at `offset` of `outboard`, from `window` (which holds the bytes from
/// `window_start`) when it has them. Otherwise reads them, and when `sequential` also the
/// bytes after them, up to `READ_AHEAD` or the outboard's length `limit`, into `window`.
fn read_node(
    outboard: &impl OutboardSource,
    window: &mut Vec<u8>,
    window_start: &mut u64,
    limit: u64,
    offset: u64,
    sequential: bool,
) -> io::Result<Node> {
    let mut node = [0; 64];
    let cached = offset
        .checked_sub(*window_start)
        .and_then(|skip| usize::try_from(skip).ok())
        .and_then(|skip| window.get(skip..skip.checked_add(node.len())?));
    if let Some(bytes) = cached {
        node.copy_from_slice(bytes);
        return Ok(node);
    }
    if !sequential {
        outboard.read_exact_at(offset, &mut node)?;
        return Ok(node);
    }
    let available = limit.saturating_sub(offset);
    let length = READ_AHEAD.min(available).max(NODE_SIZE) as usize;
    window.resize(length, 0);
    *window_start = offset;
    if let Err(error) = outboard.read_exact_at(offset, window) {
        window.clear();
        return Err(error);
    }
    match window.get(..node.len()) {
        Some(bytes) => {
            node.copy_from_slice(bytes);
            Ok(node)
        }
        None => Err(io::ErrorKind::UnexpectedEof.into()),
    }
}

/// One buffer under verification: groups `[first, last)`, the bytes from `offset`.
struct Read<'a> {
    first: u64,
    last: u64,
    offset: u64,
    bytes: &'a [u8],
}

/// Groups in the left subtree of a subtree of `groups` (at least two) groups: the largest power
/// of two below `groups`, as BLAKE3 splits its chunks.
fn left_groups(groups: u64) -> u64 {
    1 << (63 - groups.saturating_sub(1).max(1).leading_zeros())
}

fn split_node(node: &Node) -> (ChainingValue, ChainingValue) {
    let mut left = [0; 32];
    let mut right = [0; 32];
    left.copy_from_slice(&node[..32]);
    right.copy_from_slice(&node[32..]);
    (left, right)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small seeded generator (splitmix64), so that failures repeat.
    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next() % bound.max(1)
        }

        fn bytes(&mut self, length: usize) -> Vec<u8> {
            (0..length).map(|_| self.next() as u8).collect()
        }
    }

    fn build(data: &[u8], piece: impl FnMut() -> usize) -> ([u8; 32], Vec<u8>) {
        let mut piece = piece;
        let mut builder = OutboardBuilder::new();
        let mut rest = data;
        let mut outboard = Vec::new();
        while !rest.is_empty() {
            let (head, tail) = rest.split_at(piece().clamp(1, rest.len()));
            builder.update(head);
            // Drained as an upload does: the pieces joined must equal the whole.
            outboard.extend(builder.drain());
            rest = tail;
        }
        let (root, rest) = builder.finish();
        outboard.extend(rest);
        (root, outboard)
    }

    /// What a download does: widen the range, read aligned buffers, verify each, and only then
    /// keep the requested part.
    fn verified_read(
        verifier: &mut Verifier<&[u8]>,
        data: &[u8],
        offset: u64,
        length: u64,
        buffer: u64,
    ) -> Result<Vec<u8>, OutboardError> {
        let cover = covering_range(offset, length, data.len() as u64)
            .ok_or(OutboardError::Misaligned { offset, length })?;
        let mut out = Vec::new();
        let mut at = cover.start;
        while at < cover.end {
            let end = (at + buffer).min(cover.end);
            let bytes = &data[at as usize..end as usize];
            verifier.verify(at, bytes)?;
            let low = offset.max(at) - at;
            let high = (offset + length).min(end) - at;
            out.extend_from_slice(&bytes[low as usize..high as usize]);
            at = end;
        }
        Ok(out)
    }

    const SIZES: [usize; 13] = [
        0,
        1,
        1023,
        1024,
        1025,
        16383,
        16384,
        16385,
        32768,
        32769,
        3 * 16384 + 5,
        7 * 16384,
        5 * 1024 * 1024 + 12345,
    ];

    #[test]
    fn round_trip_whatever_the_pieces() {
        let mut random = Random(1);
        for size in SIZES {
            let data = random.bytes(size);
            let expected = *blake3::hash(&data).as_bytes();
            let (root, outboard) = build(&data, || usize::MAX);
            assert_eq!(root, expected, "size {size}");
            assert_eq!(
                outboard.len() as u64,
                outboard_len(size as u64),
                "size {size}"
            );
            let pieces: [&mut dyn FnMut() -> usize; 4] =
                [&mut || 1 << 20, &mut || 16385, &mut || 16383, &mut || {
                    1 + (random.next() % 40_000) as usize
                }];
            for piece in pieces {
                assert_eq!(build(&data, piece), (root, outboard.clone()), "size {size}");
            }
            if size <= 70_000 {
                assert_eq!(build(&data, || 1), (root, outboard.clone()), "size {size}");
            }
            let mut verifier = Verifier::new(outboard.as_slice(), root, size as u64).unwrap();
            verifier.verify(0, &data).unwrap();
            for buffer in [16384, 256 * 1024, 1 << 20] {
                let read = verified_read(&mut verifier, &data, 0, size as u64, buffer).unwrap();
                assert_eq!(read, data, "size {size}");
            }
        }
    }

    #[test]
    fn every_flip_is_caught_by_the_reads_that_cover_it_only() {
        let mut random = Random(2);
        let size = 6 * 16384 + 1000;
        let mut data = random.bytes(size);
        let (root, outboard) = build(&data, || 1 << 20);
        let mut verifier = Verifier::new(outboard.as_slice(), root, size as u64).unwrap();
        let groups: Vec<u64> = (0..size as u64).step_by(16384).collect();
        let mut positions: Vec<usize> = (0..size).step_by(61).collect();
        for &group in &groups {
            let group = group as usize;
            positions.extend([group, (group + 16383).min(size - 1)]);
        }
        for position in positions {
            data[position] ^= 0x01;
            for &group in &groups {
                let end = (group + 16384).min(size as u64);
                let result = verifier.verify(group, &data[group as usize..end as usize]);
                let covers = (group..end).contains(&(position as u64));
                assert_eq!(result.is_err(), covers, "flip at {position}, group {group}");
            }
            // A read of two groups, and of the whole blob, in any buffer size.
            let pair = position as u64 / 16384 * 16384;
            let pair = pair.saturating_sub(16384);
            let end = (pair + 32768).min(size as u64);
            assert!(
                verifier
                    .verify(pair, &data[pair as usize..end as usize])
                    .is_err()
            );
            assert!(verifier.verify(0, &data).is_err());
            for buffer in [16384, 65536] {
                assert!(verified_read(&mut verifier, &data, 0, size as u64, buffer).is_err());
                let result = verified_read(&mut verifier, &data, position as u64, 1, buffer);
                assert!(matches!(result, Err(OutboardError::Mismatch { .. })));
            }
            // A fresh verifier, without verified nodes kept, agrees.
            let mut fresh = Verifier::new(outboard.as_slice(), root, size as u64).unwrap();
            assert!(verified_read(&mut fresh, &data, position as u64, 1, 16384).is_err());
            data[position] ^= 0x01;
        }
        assert_eq!(
            verified_read(&mut verifier, &data, 0, size as u64, 16384).unwrap(),
            data
        );
    }

    #[test]
    fn every_byte_of_a_three_group_blob_is_covered() {
        let mut random = Random(7);
        let size = 2 * 16384 + 1;
        let mut data = random.bytes(size);
        let (root, outboard) = build(&data, || 1 << 20);
        let mut verifier = Verifier::new(outboard.as_slice(), root, size as u64).unwrap();
        for position in 0..size {
            data[position] ^= 0x40;
            for group in [0, 16384, 32768] {
                let end = (group + 16384).min(size);
                let result = verifier.verify(group as u64, &data[group..end]);
                assert_eq!(result.is_err(), (group..end).contains(&position));
            }
            data[position] ^= 0x40;
        }
    }

    #[test]
    fn a_tampered_outboard_is_refused() {
        let mut random = Random(3);
        for size in [16385, 3 * 16384 + 5, 7 * 16384, 9 * 16384 + 1] {
            let data = random.bytes(size);
            let (root, outboard) = build(&data, || 1 << 20);
            for position in 0..outboard.len() {
                let mut tampered = outboard.clone();
                tampered[position] ^= 0x80;
                let refused = match Verifier::new(tampered.as_slice(), root, size as u64) {
                    Err(OutboardError::Mismatch { .. }) => true,
                    Err(other) => panic!("unexpected {other}"),
                    Ok(mut verifier) => (0..size as u64).step_by(16384).any(|group| {
                        let end = (group + 16384).min(size as u64);
                        verifier
                            .verify(group, &data[group as usize..end as usize])
                            .is_err()
                    }),
                };
                assert!(refused, "size {size}, outboard byte {position}");
                // The root node (the last one) is checked up front.
                if position >= outboard.len() - 64 {
                    assert!(Verifier::new(tampered.as_slice(), root, size as u64).is_err());
                }
            }
            let short = &outboard[..outboard.len() - 1];
            assert!(matches!(
                Verifier::new(short, root, size as u64),
                Err(OutboardError::Length { .. })
            ));
            let mut long = outboard.clone();
            long.extend_from_slice(&[0; 64]);
            assert!(Verifier::new(long.as_slice(), root, size as u64).is_err());
            // The wrong digest, or a size of another number of groups.
            let mut other = root;
            other[0] ^= 1;
            assert!(Verifier::new(outboard.as_slice(), other, size as u64).is_err());
            assert!(Verifier::new(outboard.as_slice(), root, size as u64 + 16384).is_err());
        }
    }

    #[test]
    fn small_blobs_are_checked_against_the_digest_directly() {
        assert!(Verifier::new(Vec::new(), *blake3::hash(b"").as_bytes(), 0).is_ok());
        assert!(Verifier::new(Vec::new(), [0; 32], 0).is_err());
        let data = b"hello world";
        let root = *blake3::hash(data).as_bytes();
        let mut verifier = Verifier::new(Vec::new(), root, data.len() as u64).unwrap();
        verifier.verify(0, data).unwrap();
        verifier.verify(0, b"").unwrap();
        assert!(verifier.verify(0, b"hello World").is_err());
        let mut wrong = Verifier::new(Vec::new(), [7; 32], data.len() as u64).unwrap();
        assert!(wrong.verify(0, data).is_err());
    }

    #[test]
    fn random_ranges_read_what_the_data_holds() {
        let mut random = Random(4);
        let size = 3 * 1024 * 1024 + 777;
        let data = random.bytes(size);
        let (root, outboard) = build(&data, || 1 << 20);
        let mut verifier = Verifier::new(outboard.as_slice(), root, size as u64).unwrap();
        for round in 0..400 {
            let offset = random.below(size as u64 + 1);
            let length = match round % 4 {
                0 => random.below(100),
                1 => random.below(70_000),
                2 => random.below(size as u64 - offset + 1),
                _ => size as u64 - offset,
            }
            .min(size as u64 - offset);
            let buffer = [16384, 65536, 256 * 1024][round % 3];
            let cover = covering_range(offset, length, size as u64).unwrap();
            assert_eq!(cover.start % 16384, 0);
            assert!(cover.end.is_multiple_of(16384) || cover.end == size as u64);
            assert!(cover.start <= offset && (length == 0 || offset + length <= cover.end));
            assert!(cover.end - cover.start < length + 2 * 16384);
            let read = verified_read(&mut verifier, &data, offset, length, buffer).unwrap();
            assert_eq!(read, &data[offset as usize..(offset + length) as usize]);
            if round % 50 == 0 {
                verifier = Verifier::new(outboard.as_slice(), root, size as u64).unwrap();
            }
        }
    }

    #[test]
    fn bad_arguments_are_errors_not_panics() {
        let mut random = Random(5);
        let size = 5 * 16384 + 3;
        let data = random.bytes(size);
        let (root, outboard) = build(&data, || 1 << 20);
        let mut verifier = Verifier::new(outboard.as_slice(), root, size as u64).unwrap();
        let misaligned = |result: Result<(), OutboardError>| {
            matches!(result, Err(OutboardError::Misaligned { .. }))
        };
        assert!(misaligned(verifier.verify(1, &data[1..16385])));
        assert!(misaligned(verifier.verify(0, &data[..16383])));
        assert!(misaligned(verifier.verify(16384, &data)));
        assert!(misaligned(verifier.verify(u64::MAX - 5, &data[..16])));
        assert!(misaligned(verifier.verify(size as u64 + 16384, b"")));
        verifier.verify(size as u64, b"").unwrap();
        verifier.verify(5 * 16384, &data[5 * 16384..]).unwrap();
        assert_eq!(covering_range(u64::MAX, 2, u64::MAX), None);
        assert_eq!(covering_range(10, 10, 15), None);
        assert_eq!(covering_range(16390, 0, 20000), Some(16384..16384));
        assert_eq!(covering_range(16390, 1, 20000), Some(16384..20000));
        assert_eq!(covering_range(1, 16384, 1 << 20), Some(0..32768));
        assert_eq!(
            covering_range(u64::MAX - 1, 1, u64::MAX),
            Some(u64::MAX - 16383..u64::MAX)
        );
        // Huge sizes with a missing or wrong outboard fail cleanly.
        assert!(matches!(
            Verifier::new(Vec::new(), root, u64::MAX),
            Err(OutboardError::Length { .. })
        ));
        assert_eq!(outboard_len(u64::MAX), (u64::MAX.div_ceil(16384) - 1) * 64);
        assert_eq!(outboard_len(0), 0);
        assert_eq!(outboard_len(16384), 0);
        assert_eq!(outboard_len(16385), 64);
        assert_eq!(outboard_len(1 << 30), (1 << 22) - 64);
    }

    #[test]
    fn a_file_outboard_verifies_like_one_in_memory() {
        let mut random = Random(6);
        let size = 40 * 16384 + 99;
        let data = random.bytes(size);
        let (root, outboard) = build(&data, || 1 << 20);
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("blob.obao");
        std::fs::write(&path, &outboard).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut verifier = Verifier::new(file, root, size as u64).unwrap();
        for group in (0..size as u64).step_by(16384) {
            let end = (group + 3 * 16384).min(size as u64);
            verifier
                .verify(group, &data[group as usize..end as usize])
                .unwrap();
        }
        let mut tampered = outboard.clone();
        // Byte 10 is in the node over groups 0 and 1, which a read of group 0 passes through.
        tampered[10] ^= 1;
        std::fs::write(&path, &tampered).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut verifier = Verifier::new(file, root, size as u64).unwrap();
        assert!(verifier.verify(0, &data[..16384]).is_err());
        assert!(verifier.verify(0, &data).is_ok());
    }
}
