//! Reusable transfer buffers.
//!
//! A transfer (one upload or one download) takes buffers from its own `BufferPool`, fills
//! them, and lends them out as `Bytes` to the threads that consume them (the file writer and
//! the hashers, or the HTTP layer). When the last view of a buffer is dropped it goes back to
//! the pool, so a transfer keeps reusing a few warm buffers instead of zeroing and faulting in
//! fresh memory for every megabyte.
//!
//! Every buffer starts on a `DIRECT_ALIGN` boundary, which is what O_DIRECT writes need (see
//! `writer`).

use std::sync::mpsc;

use bytes::Bytes;

/// Alignment of buffer starts: the largest logical block size in common use, which is what
/// O_DIRECT requires of memory addresses, file offsets and lengths.
pub const DIRECT_ALIGN: usize = 4096;

/// A buffer of the pool's size; its usable window starts at an aligned address.
pub struct Buffer {
    data: Vec<u8>,
    start: usize,
    size: usize,
}

impl Buffer {
    fn new(size: usize) -> Buffer {
        let data = vec![0; size + DIRECT_ALIGN];
        let start = (DIRECT_ALIGN - data.as_ptr() as usize % DIRECT_ALIGN) % DIRECT_ALIGN;
        Buffer { data, start, size }
    }

    /// The whole usable window, `size` bytes.
    pub fn window(&mut self) -> &mut [u8] {
        &mut self.data[self.start..self.start + self.size]
    }
}

/// A lent buffer: `len` bytes of its window are visible through `Bytes`.
struct Lent {
    buffer: Option<Buffer>,
    len: usize,
    home: mpsc::SyncSender<Buffer>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        let buffer = self
            .buffer
            .as_ref()
            .expect("a lent buffer is present until dropped");
        &buffer.data[buffer.start..buffer.start + self.len]
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(buffer) = self.buffer.take() {
            // When the pool is full or its owner has finished, the buffer is simply freed.
            let _ = self.home.try_send(buffer);
        }
    }
}

/// The buffers of one transfer, all `size` bytes long; up to `keep` are kept for reuse once
/// they come back. A consumer that holds on to buffers just makes the owner allocate new ones:
/// the channels between the threads are what bound memory, never this pool.
pub struct BufferPool {
    size: usize,
    home: mpsc::SyncSender<Buffer>,
    returned: mpsc::Receiver<Buffer>,
}

impl BufferPool {
    pub fn new(size: usize, keep: usize) -> BufferPool {
        let (home, returned) = mpsc::sync_channel(keep);
        BufferPool {
            size,
            home,
            returned,
        }
    }

    pub fn take(&self) -> Buffer {
        self.returned
            .try_recv()
            .unwrap_or_else(|_| Buffer::new(self.size))
    }

    /// The first `len` bytes of `buffer`'s window as `Bytes`; the buffer comes back to this
    /// pool when they are dropped.
    pub fn lend(&self, buffer: Buffer, len: usize) -> Bytes {
        assert!(len <= buffer.size, "a buffer lends at most its own size");
        Bytes::from_owner(Lent {
            buffer: Some(buffer),
            len,
            home: self.home.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_come_back() {
        let pool = BufferPool::new(3 * DIRECT_ALIGN, 2);
        let mut buffer = pool.take();
        buffer.window()[..5].copy_from_slice(b"hello");
        let address = buffer.window().as_ptr() as usize;
        assert_eq!(address % DIRECT_ALIGN, 0);
        let lent = pool.lend(buffer, 5);
        let view = lent.clone();
        assert_eq!(&view[..], b"hello");
        drop(lent);
        // One view is still alive, so the buffer is still out.
        assert_ne!(pool.take().window().as_ptr() as usize, address);
        drop(view);
        assert_eq!(pool.take().window().as_ptr() as usize, address);
    }
}
