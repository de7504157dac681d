//! Recognizes disk image formats in an upload as it streams by, and decides whether to keep it.
//!
//! This is ocellus's version of Glance's format inspector (oslo.utils
//! `imageutils/format_inspector.py`, run by Glance's `ImageProxy.set_data`): every format
//! asks for byte regions (`capture`), some only once earlier ones are parsed (a VHDX region
//! table points at its metadata table, which points at the virtual size; a VMDK header points
//! at its descriptor; a protective MBR at a GPT header, which points at its partition
//! entries), and they are copied out of the stream as it passes, within `CAPTURE_CAP` bytes.
//! The last bytes are kept too, for footers (fixed VHD, streamOptimized VMDK). `finish` says
//! what the data is, its virtual size, and whether a hypervisor could be tricked by it;
//! `check_upload` applies Glance's upload rules to that.

mod capture;
mod formats;
#[cfg(test)]
mod fuzz;
#[cfg(test)]
mod tests;

use capture::{Captures, Tail};
use formats::{Detectors, Verdict};

/// What an upload turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Glance's name for the detected format: raw, qcow2, qed, vmdk, vhd, vhdx, vdi, iso, gpt
    /// (any MBR-partitioned disk) or luks.
    pub format: &'static str,
    /// The size of the virtual disk, when the format gives it (raw: the data size).
    pub virtual_size: Option<u64>,
    /// Why the data is unsafe to hand to a hypervisor, if it is.
    pub unsafe_reason: Option<String>,
    /// Bytes inspected: the whole upload.
    pub size: u64,
}

/// Streaming inspection: sees every byte of the upload once, in order, in chunks of any size.
#[derive(Debug)]
pub struct Inspector {
    captures: Captures,
    tail: Tail,
    detectors: Detectors,
}

/// Rounds of "new regions asked for, replay the chunk to them" per chunk; each format's chain
/// is at most four regions long, so this is never reached by a real chain.
const MAX_ROUNDS: usize = 16;

impl Default for Inspector {
    fn default() -> Inspector {
        Inspector::new()
    }
}

impl Inspector {
    pub fn new() -> Inspector {
        let mut captures = Captures::default();
        let detectors = Detectors::new(&mut captures);
        Inspector {
            captures,
            tail: Tail::default(),
            detectors,
        }
    }

    /// Takes the next bytes of the upload. Past the regions of interest this only counts them
    /// and keeps the last `TAIL_SIZE`.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.tail.push(bytes);
        if !self.captures.any_pending() {
            self.captures.capture(bytes, 0, false);
            return;
        }
        self.captures.capture(bytes, 0, false);
        for _ in 0..MAX_ROUNDS {
            let before = self.captures.count();
            self.detectors.advance(&mut self.captures);
            if self.captures.count() == before {
                break;
            }
            // Regions asked for just now may start within this very chunk.
            self.captures.capture(bytes, before, true);
        }
    }

    #[cfg(test)]
    /// Bytes held for inspection (regions and tail), for tests of the memory bound.
    pub fn held(&self) -> usize {
        self.captures.held() + capture::TAIL_SIZE
    }

    /// What the upload is, now that it has ended.
    pub fn finish(self) -> Inspection {
        let size = self.captures.position();
        let mut matches = self.detectors.verdicts(&self.captures, &self.tail, size);
        let names: Vec<&'static str> = matches.iter().map(|(name, _)| *name).collect();
        // A bootable ISO legitimately carries an MBR/GPT in its system area (Glance allows
        // exactly iso+gpt, as iso); a fixed VHD's payload is a whole disk, which may be
        // partitioned or an ISO.
        if names.contains(&"iso") && names.contains(&"gpt") && names.len() == 2 {
            matches.retain(|(name, _)| *name == "iso");
        } else if names.contains(&"vhd")
            && names
                .iter()
                .all(|name| matches!(*name, "vhd" | "gpt" | "iso"))
            && names.len() > 1
        {
            let inner_reason = matches.iter().find_map(|(_, verdict)| match verdict {
                Verdict::Yes {
                    unsafe_reason: Some(reason),
                    ..
                } => Some(reason.clone()),
                _ => None,
            });
            matches.retain(|(name, _)| *name == "vhd");
            if let (Some(reason), Some((_, Verdict::Yes { unsafe_reason, .. }))) =
                (inner_reason, matches.first_mut())
                && unsafe_reason.is_none()
            {
                *unsafe_reason = Some(reason);
            }
        }
        match matches.len() {
            0 => Inspection {
                format: "raw",
                virtual_size: Some(size).filter(|size| *size > 0),
                unsafe_reason: None,
                size,
            },
            1 => {
                let (format, verdict) = matches.remove(0);
                let (virtual_size, unsafe_reason) = match verdict {
                    Verdict::Yes {
                        virtual_size,
                        unsafe_reason,
                    } => (virtual_size, unsafe_reason),
                    Verdict::No => (None, None),
                };
                Inspection {
                    format,
                    virtual_size: virtual_size.filter(|size| *size > 0),
                    unsafe_reason,
                    size,
                }
            }
            _ => Inspection {
                format: names.first().copied().unwrap_or("raw"),
                virtual_size: None,
                unsafe_reason: Some(format!("multiple formats detected: {}", names.join(","))),
                size,
            },
        }
    }
}

#[cfg(test)]
/// Inspects a whole upload held in memory.
pub fn inspect_bytes(bytes: &[u8]) -> Inspection {
    let mut inspector = Inspector::new();
    inspector.feed(bytes);
    inspector.finish()
}

/// Formats Glance's inspector knows (oslo.utils `ALL_FORMATS`). A `disk_format` outside this
/// list (ami, ari, aki, ploop) cannot be checked, so only unrecognized (raw) data passes for it.
const INSPECTABLE: &[&str] = &[
    "raw", "qcow2", "vhd", "vhdx", "vmdk", "vdi", "qed", "iso", "gpt", "luks",
];

/// The upload policy: `Ok(virtual size to record)` or `Err(message for a 415)`.
///
/// Follows Glance's `ImageProxy.set_data`, with one difference: Glance inspects only
/// `container_format=bare` uploads, ocellus refuses unsafe data whatever the container (the
/// format match is still only required of bare ones: other containers wrap the disk).
pub fn check_upload(
    disk_format: &str,
    container_format: &str,
    inspection: &Inspection,
) -> Result<Option<u64>, String> {
    let detected = inspection.format;
    let unsafe_error = |reason: &str| format!("Image failed safety checks: {reason}");
    if container_format != "bare" {
        return match &inspection.unsafe_reason {
            Some(reason) => Err(unsafe_error(reason)),
            None => Ok(None),
        };
    }
    let virtual_size = if detected == disk_format {
        inspection.virtual_size
    } else if detected == "raw" && !INSPECTABLE.contains(&disk_format) {
        None
    } else if disk_format == "raw" {
        // Glance takes a recognized format declared raw for raw: the data size, not the
        // format's virtual size.
        Some(inspection.size).filter(|size| *size > 0)
    } else {
        return Err(format!(
            "Image disk_format {disk_format} does not match stream data {detected}"
        ));
    };
    match &inspection.unsafe_reason {
        Some(reason) => Err(unsafe_error(reason)),
        None => Ok(virtual_size),
    }
}
