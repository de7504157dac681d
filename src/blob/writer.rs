//! Writing an upload's temp file.
//!
//! Whole aligned buffers go to the disk with O_DIRECT: the bytes move from the transfer's
//! buffers to the device without being copied into the page cache, which is the single
//! largest cost of an upload after the hashes. An unaligned tail, or any filesystem that
//! refuses O_DIRECT (tmpfs, for one), goes through an ordinary buffered handle instead, whose
//! dirty pages are handed to the kernel's writeback (`POSIX_FADV_DONTNEED` starts it without
//! waiting) as the upload goes, so that the final fsync finds little left to do and no thread
//! waits meanwhile. Either way `finish` fsyncs the file before the upload counts.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::buffers::DIRECT_ALIGN;

/// The buffered path starts writeback after every this many bytes.
pub const FLUSH_EVERY: u64 = 32 << 20;

/// The two handles on one temp file and where the next byte goes.
pub struct TempWriter {
    buffered: File,
    direct: Option<File>,
    offset: u64,
    unflushed: u64,
}

impl TempWriter {
    /// Creates the temp file at `path`, which must not exist yet.
    pub fn create(path: &Path) -> io::Result<TempWriter> {
        let buffered = OpenOptions::new().write(true).create_new(true).open(path)?;
        let direct = open_direct(path);
        Ok(TempWriter {
            buffered,
            direct,
            offset: 0,
            unflushed: 0,
        })
    }

    /// Appends `bytes`.
    pub fn write(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        if let Some(direct) = &self.direct {
            let whole = bytes.len() / DIRECT_ALIGN * DIRECT_ALIGN;
            let aligned = bytes.as_ptr().align_offset(DIRECT_ALIGN) == 0
                && self.offset.is_multiple_of(DIRECT_ALIGN as u64);
            if aligned && whole > 0 {
                match direct.write_all_at(&bytes[..whole], self.offset) {
                    Ok(()) => {
                        self.offset += whole as u64;
                        bytes = &bytes[whole..];
                    }
                    // The filesystem accepted O_DIRECT at open but not for this write: carry
                    // on buffered from here, rewriting this range in full.
                    Err(error) if error.kind() == io::ErrorKind::InvalidInput => {
                        tracing::debug!(%error, "O_DIRECT write refused; writing buffered");
                        self.direct = None;
                    }
                    Err(error) => return Err(error),
                }
            }
        }
        if !bytes.is_empty() {
            self.buffered.write_all_at(bytes, self.offset)?;
            self.offset += bytes.len() as u64;
            self.unflushed += bytes.len() as u64;
            if self.unflushed >= FLUSH_EVERY {
                self.unflushed = 0;
                // Only a hint: a kernel that ignores it leaves more for the final fsync.
                let _ = rustix::fs::fadvise(&self.buffered, 0, None, rustix::fs::Advice::DontNeed);
            }
        }
        Ok(())
    }

    /// Makes the whole file durable.
    pub fn finish(&self) -> io::Result<()> {
        // One inode: syncing either handle covers both the direct and the buffered writes.
        self.buffered.sync_all()
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .inspect_err(|error| tracing::debug!(%error, "O_DIRECT unavailable; writing buffered"))
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::super::buffers::BufferPool;
    use super::*;

    /// Aligned whole buffers, then an unaligned tail, then (after the tail) more bytes: every
    /// byte lands where it belongs whichever path each write took.
    #[test]
    fn direct_and_buffered_writes_compose_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload.part");
        let mut writer = TempWriter::create(&path).unwrap();
        // tmpfs, say, refuses O_DIRECT; then every write is buffered.
        let direct_at_open = writer.direct.is_some();
        let pool = BufferPool::new(2 * DIRECT_ALIGN, 1);
        let mut expected = Vec::new();
        let writes = [
            (1u8, 2 * DIRECT_ALIGN),
            (2, 2 * DIRECT_ALIGN),
            (3, 1000),
            (4, 5000),
        ];
        for (fill, len) in writes {
            let mut buffer = pool.take();
            buffer.window()[..len].fill(fill);
            let bytes = pool.lend(buffer, len);
            writer.write(&bytes).unwrap();
            expected.extend_from_slice(&bytes);
            if fill == 2 {
                assert_eq!(writer.direct.is_some(), direct_at_open);
                let buffered_bytes = if direct_at_open {
                    0
                } else {
                    4 * DIRECT_ALIGN as u64
                };
                assert_eq!(writer.unflushed, buffered_bytes);
            }
        }
        // An unaligned slice of memory takes the buffered path.
        let unaligned = expected[1..4098].to_vec();
        writer.write(&unaligned).unwrap();
        expected.extend_from_slice(&unaligned);
        writer.finish().unwrap();
        assert!(std::fs::read(&path).unwrap() == expected);
    }

    /// Where O_DIRECT is refused, everything is buffered and writeback is started along the
    /// way; the file still ends up whole.
    #[test]
    fn buffered_writes_are_flushed_along_the_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upload.part");
        let mut writer = TempWriter::create(&path).unwrap();
        writer.direct = None;
        let piece: Vec<u8> = (0..1 << 20).map(|index| (index % 251) as u8).collect();
        let pieces = (FLUSH_EVERY * 2 / piece.len() as u64) + 3;
        for _ in 0..pieces {
            writer.write(&piece).unwrap();
        }
        assert_eq!(
            writer.unflushed,
            3 << 20,
            "writeback was started at each interval"
        );
        writer.finish().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len() as u64, pieces * piece.len() as u64);
        assert!(written.chunks(piece.len()).all(|chunk| chunk == piece));
    }
}
