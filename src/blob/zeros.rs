//! Finding the all-zero blocks of an upload as it streams, for its extent map.
//!
//! Each 64 KiB block (the last one may be shorter) is either all zero bytes or data; runs of
//! zero blocks become `(offset, length)` ranges. The scan runs in the same pass as the hashing
//! (no second read), and costs far less than any hash: it stops looking at a block at its
//! first non-zero word.

/// The unit of the map: a block is zero only if all of it is.
pub const BLOCK: u64 = 64 * 1024;

/// The most zero ranges one map keeps (1 MiB encoded at most). An image that alternates
/// between data and zeros more often than this has its later zero blocks described as data,
/// which is always true of them, only less useful.
pub const MAX_RANGES: usize = 65_536;

/// A running scan.
#[derive(Debug, Default)]
pub struct ZeroScanner {
    /// Bytes seen.
    position: u64,
    /// Whether the block being filled has been all zero so far.
    block_zero: bool,
    ranges: Vec<(u64, u64)>,
}

impl ZeroScanner {
    pub fn new() -> ZeroScanner {
        ZeroScanner {
            position: 0,
            block_zero: true,
            ranges: Vec::new(),
        }
    }

    /// Takes the next bytes of the upload.
    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let into_block = self.position % BLOCK;
            let take = ((BLOCK - into_block) as usize).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            self.block_zero = self.block_zero && is_zero(head);
            self.position += take as u64;
            bytes = rest;
            if self.position.is_multiple_of(BLOCK) {
                self.close_block(BLOCK);
            }
        }
    }

    /// The zero ranges of everything seen.
    pub fn finish(mut self) -> Vec<(u64, u64)> {
        let partial = self.position % BLOCK;
        if partial != 0 {
            self.close_block(partial);
        }
        self.ranges
    }

    fn close_block(&mut self, length: u64) {
        let start = self.position - length;
        if self.block_zero {
            let full = self.ranges.len() >= MAX_RANGES;
            match self.ranges.last_mut() {
                Some((offset, run)) if *offset + *run == start => *run += length,
                _ if !full => self.ranges.push((start, length)),
                _ => {}
            }
        }
        self.block_zero = true;
    }
}

/// Whether every byte is zero: 16 bytes at a time, stopping at the first word with a set bit
/// (few steps even in a debug build, where a byte loop would bound a test's upload).
fn is_zero(bytes: &[u8]) -> bool {
    let mut words = bytes.chunks_exact(16);
    words
        .by_ref()
        .all(|word| u128::from_ne_bytes(word.try_into().expect("16 bytes")) == 0)
        && words.remainder().iter().all(|byte| *byte == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(data: &[u8], piece: usize) -> Vec<(u64, u64)> {
        let mut scanner = ZeroScanner::new();
        for chunk in data.chunks(piece.max(1)) {
            scanner.update(chunk);
        }
        scanner.finish()
    }

    #[test]
    fn zero_blocks_merge_into_ranges_whatever_the_chunking() {
        let block = BLOCK as usize;
        // zero, zero, data, zero, then a short zero tail.
        let mut data = vec![0u8; 4 * block + 100];
        data[2 * block + 7] = 1;
        let expected = vec![(0, 2 * BLOCK), (3 * BLOCK, BLOCK + 100)];
        for piece in [1, 7, 4096, block - 1, block, block + 1, data.len()] {
            if piece == 1 {
                // A byte at a time over 256 KiB is slow in debug builds; one pass is enough.
                assert_eq!(scan(&data, 1 << 12), expected);
                continue;
            }
            assert_eq!(scan(&data, piece), expected, "piece {piece}");
        }
        // A set byte in the tail makes the tail data.
        let last = data.len() - 1;
        data[last] = 9;
        assert_eq!(
            scan(&data, 1 << 20),
            vec![(0, 2 * BLOCK), (3 * BLOCK, BLOCK)]
        );
        assert_eq!(scan(&[], 1), vec![]);
    }

    #[test]
    fn the_number_of_ranges_is_bounded() {
        let mut scanner = ZeroScanner::new();
        let zero = vec![0u8; BLOCK as usize];
        let mut data = zero.clone();
        data[0] = 1;
        for _ in 0..MAX_RANGES + 10 {
            scanner.update(&zero);
            scanner.update(&data);
        }
        let ranges = scanner.finish();
        assert_eq!(ranges.len(), MAX_RANGES);
        assert!(
            ranges
                .windows(2)
                .all(|pair| pair[0].0 + pair[0].1 < pair[1].0)
        );
    }

    #[test]
    fn is_zero_sees_every_byte() {
        for length in [0, 1, 63, 64, 65, 200] {
            let mut bytes = vec![0u8; length];
            assert!(is_zero(&bytes));
            for at in 0..length {
                bytes[at] = 0x80;
                assert!(!is_zero(&bytes), "{length} {at}");
                bytes[at] = 0;
            }
        }
    }
}
