//! Byte regions captured from a stream as it passes, and the stream's last bytes.
//!
//! A format asks for `(offset, length)` regions; each chunk fed is copied into the regions it
//! overlaps. A region asked for after its start has gone by is `Missed` (the stream is never
//! re-read), and one that would take the total past `CAPTURE_CAP` is `OverCap`. Both mean
//! "unknown" to the format that asked.

/// Most bytes all regions of one inspection may hold together.
pub const CAPTURE_CAP: usize = 2 << 20;
/// Bytes kept from the end of the stream: a VHD footer (512) or a streamOptimized VMDK's
/// footer marker, footer and end-of-stream marker (3 x 512).
pub const TAIL_SIZE: usize = 1536;

/// A handle on a requested region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionId(usize);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Still waiting for bytes.
    Pending,
    /// Every byte asked for has been captured.
    Complete,
    /// Its start had gone by when it was asked for.
    Missed,
    /// Capturing it would exceed `CAPTURE_CAP`.
    OverCap,
    /// Given up by the format that asked for it.
    Released,
}

#[derive(Debug)]
struct Region {
    offset: u64,
    length: usize,
    data: Vec<u8>,
    state: State,
}

/// All regions of one inspection, and the stream position.
#[derive(Debug, Default)]
pub struct Captures {
    regions: Vec<Region>,
    /// Bytes fed so far.
    position: u64,
    /// Bytes promised to regions (their full lengths).
    reserved: usize,
    /// Regions still `Pending`.
    pending: usize,
}

impl Captures {
    /// Bytes fed so far.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// True while some region still waits for bytes.
    pub fn any_pending(&self) -> bool {
        self.pending > 0
    }

    /// Number of regions asked for so far; regions asked for later have larger ids.
    pub fn count(&self) -> usize {
        self.regions.len()
    }

    /// Asks for `length` bytes from `offset`. The region is filled from the chunks fed after
    /// this call, and from the current chunk if `replay` hands it over (see `Inspector::feed`).
    pub fn request(&mut self, offset: u64, length: usize) -> RegionId {
        let state = if length == 0 {
            State::Complete
        } else if self.reserved.saturating_add(length) > CAPTURE_CAP {
            State::OverCap
        } else {
            self.reserved += length;
            self.pending += 1;
            State::Pending
        };
        self.regions.push(Region {
            offset,
            length,
            data: Vec::new(),
            state,
        });
        RegionId(self.regions.len() - 1)
    }

    /// Records that `chunk` was the next part of the stream and copies it into every pending
    /// region, or only into regions with an id of at least `first` when `replay` is set (the
    /// chunk was already counted; those regions were asked for since).
    pub fn capture(&mut self, chunk: &[u8], first: usize, replay: bool) {
        let end = if replay {
            self.position
        } else {
            self.position = self.position.saturating_add(chunk.len() as u64);
            self.position
        };
        if self.pending == 0 {
            return;
        }
        let start = end.saturating_sub(chunk.len() as u64);
        for region in self.regions.iter_mut().skip(first) {
            if region.state != State::Pending {
                continue;
            }
            let want = region.offset.saturating_add(region.data.len() as u64);
            if want < start {
                // The next byte it needs went by before it was asked for.
                region.state = State::Missed;
                region.data = Vec::new();
                self.pending -= 1;
                self.reserved = self.reserved.saturating_sub(region.length);
                continue;
            }
            if want >= end {
                continue;
            }
            let from = usize::try_from(want - start).unwrap_or(usize::MAX);
            let needed = region.length - region.data.len();
            let to = from.saturating_add(needed).min(chunk.len());
            if let Some(bytes) = chunk.get(from..to) {
                region.data.extend_from_slice(bytes);
            }
            if region.data.len() == region.length {
                region.state = State::Complete;
                self.pending -= 1;
            }
        }
    }

    /// Gives up a region: its bytes and its share of the cap are freed.
    pub fn release(&mut self, id: RegionId) {
        if let Some(region) = self.regions.get_mut(id.0) {
            if region.state == State::Pending {
                self.pending -= 1;
            }
            if matches!(region.state, State::Pending | State::Complete) {
                self.reserved = self.reserved.saturating_sub(region.length);
            }
            region.state = State::Released;
            region.data = Vec::new();
        }
    }

    pub fn state(&self, id: RegionId) -> State {
        self.regions
            .get(id.0)
            .map_or(State::Missed, |region| region.state)
    }

    /// The region's bytes once complete.
    pub fn get(&self, id: RegionId) -> Option<&[u8]> {
        let region = self.regions.get(id.0)?;
        (region.state == State::Complete).then_some(region.data.as_slice())
    }

    /// Whatever the region holds so far (all of it once complete).
    pub fn partial(&self, id: RegionId) -> &[u8] {
        self.regions
            .get(id.0)
            .map_or(&[][..], |region| region.data.as_slice())
    }

    #[cfg(test)]
    /// Total bytes held by all regions.
    pub fn held(&self) -> usize {
        self.regions.iter().map(|region| region.data.len()).sum()
    }
}

/// The last `TAIL_SIZE` bytes of the stream, in a ring.
#[derive(Debug)]
pub struct Tail {
    ring: Box<[u8; TAIL_SIZE]>,
    /// Where the next byte goes.
    next: usize,
    /// Bytes held, up to `TAIL_SIZE`.
    held: usize,
}

impl Default for Tail {
    fn default() -> Tail {
        Tail {
            ring: Box::new([0; TAIL_SIZE]),
            next: 0,
            held: 0,
        }
    }
}

impl Tail {
    /// Keeps the last bytes of `chunk`: at most `TAIL_SIZE` are copied whatever its length.
    pub fn push(&mut self, chunk: &[u8]) {
        let mut rest = chunk
            .get(chunk.len().saturating_sub(TAIL_SIZE)..)
            .unwrap_or(&[]);
        while !rest.is_empty() {
            let take = (TAIL_SIZE - self.next).min(rest.len());
            let (now, later) = rest.split_at(take);
            if let Some(slot) = self.ring.get_mut(self.next..self.next + take) {
                slot.copy_from_slice(now);
            }
            self.next = (self.next + take) % TAIL_SIZE;
            self.held = (self.held + take).min(TAIL_SIZE);
            rest = later;
        }
    }

    /// The last `length` bytes of the stream, if it was that long.
    pub fn last(&self, length: usize) -> Option<Vec<u8>> {
        if length > self.held {
            return None;
        }
        let start = (self.next + TAIL_SIZE - length) % TAIL_SIZE;
        let mut out = Vec::with_capacity(length);
        if start + length <= TAIL_SIZE {
            out.extend_from_slice(self.ring.get(start..start + length)?);
        } else {
            out.extend_from_slice(self.ring.get(start..)?);
            out.extend_from_slice(self.ring.get(..length - (TAIL_SIZE - start))?);
        }
        Some(out)
    }
}

pub fn be_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub fn be_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub fn be_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

pub fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        bytes.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

pub fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

pub fn le_u64(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}
