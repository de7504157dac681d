//! One detector per disk format: which regions it asks for, and what it makes of them.
//!
//! The layouts and safety rules follow Glance's format inspector (oslo.utils
//! `imageutils/format_inspector.py`, which Glance's upload path runs); where ocellus is stricter
//! the comment says so.

use super::capture::{
    Captures, RegionId, State, Tail, be_u16, be_u32, be_u64, le_u16, le_u32, le_u64,
};

/// What a detector concluded once the stream ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The data is not in this format.
    No,
    /// The data is in this format.
    Yes {
        virtual_size: Option<u64>,
        unsafe_reason: Option<String>,
    },
}

fn safe(virtual_size: Option<u64>) -> Verdict {
    Verdict::Yes {
        virtual_size,
        unsafe_reason: None,
    }
}

fn refused(virtual_size: Option<u64>, reason: impl Into<String>) -> Verdict {
    Verdict::Yes {
        virtual_size,
        unsafe_reason: Some(reason.into()),
    }
}

/// Bytes captured from the start of every upload; every header-at-offset-0 format reads them.
pub const HEAD_LENGTH: usize = 1024;
/// Where an ISO 9660 / UDF volume descriptor sits: after a 32 KiB system area.
const ISO_DESCRIPTOR: u64 = 32 * 1024;
/// VMDK descriptors are at most this long (qemu's limit, and Glance's).
const VMDK_DESCRIPTOR_MAX: usize = (1 << 20) - 1;
/// A VHDX region table (the first copy, at 192 KiB) is 64 KiB.
const VHDX_REGION_TABLE: u64 = 192 * 1024;
const VHDX_REGION_TABLE_LENGTH: usize = 64 * 1024;
/// GPT partition entry arrays larger than this are not captured (the usual one is 16 KiB).
const GPT_ENTRIES_MAX: usize = 64 * 1024;

/// The detectors, and the regions they share.
#[derive(Debug)]
pub struct Detectors {
    head: RegionId,
    /// The head once complete (it no longer changes), so advancing does not copy it again.
    head_done: Option<Vec<u8>>,
    iso: RegionId,
    vmdk: Vmdk,
    vhdx: Vhdx,
    gpt: Gpt,
}

impl Detectors {
    pub fn new(captures: &mut Captures) -> Detectors {
        Detectors {
            head: captures.request(0, HEAD_LENGTH),
            head_done: None,
            iso: captures.request(ISO_DESCRIPTOR, 2048),
            vmdk: Vmdk::new(captures),
            vhdx: Vhdx::default(),
            gpt: Gpt::default(),
        }
    }

    /// Asks for the regions that what was captured so far points at.
    pub fn advance(&mut self, captures: &mut Captures) {
        if self.head_done.is_none() && captures.state(self.head) == State::Complete {
            self.head_done = Some(captures.partial(self.head).to_vec());
        }
        let head = match self.head_done.take() {
            Some(head) => head,
            // At most `HEAD_LENGTH` bytes, and only until the head is complete.
            None => captures.partial(self.head).to_vec(),
        };
        self.vmdk.advance(captures, &head);
        self.vhdx.advance(captures, &head);
        self.gpt.advance(captures, &head);
        if captures.state(self.head) == State::Complete {
            self.head_done = Some(head);
        }
    }

    /// Every format the data matches, with Glance's name, once the stream has ended.
    pub fn verdicts(
        &self,
        captures: &Captures,
        tail: &Tail,
        size: u64,
    ) -> Vec<(&'static str, Verdict)> {
        let head = captures.partial(self.head);
        let mut found = vec![
            ("qcow2", qcow2(head)),
            ("qed", qed(head)),
            ("vhd", vhd(head, tail, size)),
            ("vhdx", self.vhdx.verdict(captures, head)),
            ("vmdk", self.vmdk.verdict(captures, tail, head)),
            ("vdi", vdi(head)),
            ("iso", iso(captures.partial(self.iso))),
            ("gpt", self.gpt.verdict(captures, head, size)),
            ("luks", luks(head, size)),
        ];
        found.retain(|(_, verdict)| *verdict != Verdict::No);
        found
    }
}

// qcow2: big-endian header; magic "QFI\xfb", version at 4, backing file offset at 8, size at
// 24, incompatible features at 72 (version 3). Glance captures 512 bytes and checks the
// backing file offset, the external data file bit (bit 2) and unknown incompatible bits
// (anything above bit 3). Glance only matches a complete 512-byte header, so a shorter
// fragment passes as raw there; ocellus refuses it.
const QCOW2_MAGIC: &[u8] = b"QFI\xfb";
const QCOW2_HEADER: usize = 512;
const QCOW2_DATA_FILE: u64 = 1 << 2;
const QCOW2_KNOWN_INCOMPATIBLE: u64 = 0b1111;

fn qcow2(head: &[u8]) -> Verdict {
    if !head.starts_with(QCOW2_MAGIC) {
        return Verdict::No;
    }
    if head.len() < QCOW2_HEADER {
        return refused(None, "qcow2 header is incomplete");
    }
    let version = be_u32(head, 4).unwrap_or(0);
    let backing = be_u64(head, 8).unwrap_or(0);
    let virtual_size = be_u64(head, 24);
    let features = be_u64(head, 72).unwrap_or(0);
    let reason = if backing != 0 {
        Some("qcow2 image has a backing file")
    } else if version == 3 && features & QCOW2_DATA_FILE != 0 {
        Some("qcow2 image has an external data file")
    } else if version != 2 && version != 3 {
        Some("qcow2 version is not supported")
    } else if version == 3 && features & !QCOW2_KNOWN_INCOMPATIBLE != 0 {
        Some("qcow2 image has unknown incompatible features")
    } else {
        None
    };
    match reason {
        Some(reason) => refused(virtual_size, reason),
        None => safe(virtual_size),
    }
}

// QED: recognized only to be refused (Glance bans it).
fn qed(head: &[u8]) -> Verdict {
    if head.starts_with(b"QED\0") {
        refused(None, "qed images are not allowed")
    } else {
        Verdict::No
    }
}

// VHD: a 512-byte big-endian footer, "conectix", disk type at 60, original size at 40 (the
// field Glance reads). Dynamic and differencing disks keep a copy of it at the start; a fixed
// disk has it only at the end, which Glance never looks at (it takes a fixed VHD for raw).
// ocellus reads both; a differencing disk names a parent file and is refused.
const VHD_MAGIC: &[u8] = b"conectix";
const VHD_FIXED: u32 = 2;
const VHD_DYNAMIC: u32 = 3;
const VHD_DIFFERENCING: u32 = 4;

fn vhd(head: &[u8], tail: &Tail, size: u64) -> Verdict {
    let footer = if head.starts_with(VHD_MAGIC) {
        match head.get(..512) {
            Some(footer) => footer.to_vec(),
            None => return refused(None, "vhd footer is incomplete"),
        }
    } else {
        match tail.last(512) {
            Some(footer) if footer.starts_with(VHD_MAGIC) && size > 512 => footer,
            _ => return Verdict::No,
        }
    };
    let at_start = head.starts_with(VHD_MAGIC);
    let disk_type = be_u32(&footer, 60).unwrap_or(0);
    let virtual_size = be_u64(&footer, 40);
    match disk_type {
        VHD_FIXED | VHD_DYNAMIC if at_start || disk_type == VHD_FIXED => safe(virtual_size),
        VHD_DYNAMIC => refused(
            virtual_size,
            "vhd footer of a dynamic disk has no copy at the start",
        ),
        VHD_DIFFERENCING => refused(virtual_size, "vhd differencing disks name a parent file"),
        _ => refused(virtual_size, "vhd disk type is not supported"),
    }
}

// VDI: little-endian 512-byte header, magic 0xbeda107f at 0x40, size at 0x170.
fn vdi(head: &[u8]) -> Verdict {
    if le_u32(head, 0x40) != Some(0xbeda_107f) {
        return Verdict::No;
    }
    if head.len() < 512 {
        return refused(None, "vdi header is incomplete");
    }
    safe(le_u64(head, 0x170))
}

// ISO 9660 / UDF: the volume descriptor after the 32 KiB system area, identifier at 1..6.
// Only a primary volume descriptor (type 1) gives a size: blocks (LE u32 at 80) times the
// block size (LE u16 at 128). No safety check, as in Glance.
fn iso(descriptor: &[u8]) -> Verdict {
    let Some(identifier) = descriptor.get(1..6) else {
        return Verdict::No;
    };
    if ![&b"CD001"[..], b"NSR02", b"NSR03"].contains(&identifier) {
        return Verdict::No;
    }
    if descriptor.len() < 2048 {
        return refused(None, "iso volume descriptor is incomplete");
    }
    let virtual_size = if descriptor.first() == Some(&1) {
        let blocks = le_u32(descriptor, 80).map(u64::from);
        let block_size = le_u16(descriptor, 128).map(u64::from);
        blocks
            .zip(block_size)
            .map(|(blocks, size)| blocks.saturating_mul(size))
            .filter(|size| *size > 0)
    } else {
        None
    };
    safe(virtual_size)
}

// LUKS (v1): "LUKS\xba\xbe", version at 6 (big-endian), payload offset in sectors at 104.
// Glance refuses any version but 1; the virtual size is the data after the header.
fn luks(head: &[u8], size: u64) -> Verdict {
    if !head.starts_with(b"LUKS\xba\xbe") {
        return Verdict::No;
    }
    if head.len() < 592 {
        return refused(None, "luks header is incomplete");
    }
    let payload = u64::from(be_u32(head, 104).unwrap_or(0)).saturating_mul(512);
    let virtual_size = Some(size.saturating_sub(payload));
    if be_u16(head, 6) != Some(1) {
        return refused(virtual_size, "luks version is not supported");
    }
    safe(virtual_size)
}

// VHDX: "vhdxfile" at 0; region table at 192 KiB ("regi", entry count at 8, 32-byte entries
// from 16: GUID, file offset); the metadata region's table ("metadata", entry count at 10,
// 32-byte entries from 32: GUID, offset within the region, length) locates the virtual disk
// size, a little-endian u64. Glance drops the inspector (and so takes the data for raw) when
// this chain is broken; ocellus refuses a vhdx it cannot follow.
const VHDX_METADATA_REGION: [u8; 16] = guid(
    0x8B7C_A206,
    0x4790,
    0x4B9A,
    [0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88, 0x6E],
);
const VHDX_VIRTUAL_DISK_SIZE: [u8; 16] = guid(
    0x2FA5_4224,
    0xCD1B,
    0x4876,
    [0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4, 0xB8],
);
const VHDX_MAX_ENTRIES: u64 = 2047;

/// A Microsoft GUID as stored: the first three fields little-endian.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

#[derive(Debug, Default)]
struct Vhdx {
    regions: Option<RegionId>,
    metadata_offset: u64,
    /// Length of the metadata table (header and entries).
    metadata_table: u64,
    metadata_header: Option<RegionId>,
    metadata_entries: Option<RegionId>,
    size: Option<RegionId>,
    /// Why the chain of regions broke, if it did.
    broken: Option<&'static str>,
}

impl Vhdx {
    fn advance(&mut self, captures: &mut Captures, head: &[u8]) {
        if self.broken.is_some() || !head.starts_with(b"vhdxfile") {
            return;
        }
        let Some(regions) = self.regions else {
            self.regions = Some(captures.request(VHDX_REGION_TABLE, VHDX_REGION_TABLE_LENGTH));
            return;
        };
        if self.metadata_header.is_none() {
            let Some(table) = captures.get(regions) else {
                return;
            };
            if !table.starts_with(b"regi") {
                self.broken = Some("vhdx region table signature is missing");
                return;
            }
            let count = u64::from(le_u32(table, 8).unwrap_or(0));
            if count > VHDX_MAX_ENTRIES {
                self.broken = Some("vhdx region table has too many entries");
                return;
            }
            let found = (0..count as usize).find_map(|index| {
                let entry = table.get(16 + index * 32..16 + index * 32 + 32)?;
                (entry.get(..16)? == VHDX_METADATA_REGION).then(|| le_u64(entry, 16))?
            });
            let Some(offset) = found else {
                self.broken = Some("vhdx has no metadata region");
                return;
            };
            // Regions only point forward (the specification puts them at 1 MiB or more); a
            // region behind the table could be read or not depending on how the upload was
            // chunked, so it is refused.
            if offset < VHDX_REGION_TABLE + VHDX_REGION_TABLE_LENGTH as u64 {
                self.broken = Some("vhdx metadata region overlaps the headers");
                return;
            }
            self.metadata_offset = offset;
            self.metadata_header = Some(captures.request(offset, 32));
            return;
        }
        if let (Some(header), None) = (self.metadata_header, self.metadata_entries) {
            let Some(header) = captures.get(header) else {
                return;
            };
            if !header.starts_with(b"metadata") {
                self.broken = Some("vhdx metadata table signature is missing");
                return;
            }
            let count = u64::from(le_u16(header, 10).unwrap_or(0));
            if count > VHDX_MAX_ENTRIES {
                self.broken = Some("vhdx metadata table has too many entries");
                return;
            }
            self.metadata_table = 32 + count * 32;
            self.metadata_entries = Some(
                captures.request(self.metadata_offset.saturating_add(32), count as usize * 32),
            );
            return;
        }
        if let (Some(entries), None) = (self.metadata_entries, self.size) {
            let Some(entries) = captures.get(entries) else {
                return;
            };
            let found = entries.chunks_exact(32).find_map(|entry| {
                (entry.get(..16)? == VHDX_VIRTUAL_DISK_SIZE)
                    .then(|| Some((le_u32(entry, 16)?, le_u32(entry, 20)?)))?
            });
            match found {
                Some((_, length)) if length < 8 => {
                    self.broken = Some("vhdx virtual disk size item is too short")
                }
                Some((offset, _)) if u64::from(offset) < self.metadata_table => {
                    self.broken = Some("vhdx virtual disk size overlaps the metadata table")
                }
                Some((offset, _)) => {
                    let at = self.metadata_offset.saturating_add(u64::from(offset));
                    self.size = Some(captures.request(at, 8));
                }
                None => self.broken = Some("vhdx has no virtual disk size"),
            }
        }
    }

    fn verdict(&self, captures: &Captures, head: &[u8]) -> Verdict {
        if !head.starts_with(b"vhdxfile") {
            return Verdict::No;
        }
        if let Some(reason) = self.broken {
            return refused(None, reason);
        }
        match self.size.and_then(|size| captures.get(size)) {
            Some(bytes) => safe(le_u64(bytes, 0)),
            None => refused(None, "vhdx metadata is incomplete"),
        }
    }
}

// VMDK. A hosted sparse extent ("KDMV", little-endian) has a 512-byte header: version at 4
// (1 to 3), capacity in sectors at 12, descriptor sector at 28 and length in sectors at 36,
// grain directory offset at 56 (all ones: the real header is a footer at the end, as in
// streamOptimized). The descriptor must start at sector 1. A descriptor file is plain text
// with the same syntax. Glance's rules: the create type must be monolithicSparse or
// streamOptimized; every descriptor line must be blank, a comment, a ddb entry, a
// `key=value` header or an extent (rw/rdonly/noaccess); extents must not contain '/'; there
// must be one; a footer must agree with the header and be framed by a footer marker and an
// end-of-stream marker. ocellus also refuses: extents that are not SPARSE (flat ones read
// another file), more than one extent (the others are other files), and backslashes in
// extent names. A text descriptor alone always names another file, so with the rules above
// (its create type is never a sparse one) it is refused.
const VMDK_GD_AT_END: u64 = u64::MAX;

#[derive(Debug)]
struct Vmdk {
    /// The start of the upload as text, in case it is a descriptor file.
    text: Option<RegionId>,
    /// Whether the first 512 bytes were looked at.
    text_checked: bool,
    descriptor: Option<RegionId>,
    broken: Option<&'static str>,
}

impl Vmdk {
    fn new(captures: &mut Captures) -> Vmdk {
        Vmdk {
            text: Some(captures.request(0, VMDK_DESCRIPTOR_MAX)),
            text_checked: false,
            descriptor: None,
            broken: None,
        }
    }

    fn advance(&mut self, captures: &mut Captures, head: &[u8]) {
        // Glance's test for a descriptor file: the first 512 bytes are printable ASCII. Made
        // once, when they are all there; a shorter upload is judged by `text_verdict`.
        if !self.text_checked
            && let Some(text) = self.text
            && let Some(sample) = head.get(..512)
        {
            self.text_checked = true;
            if !is_text(sample) {
                captures.release(text);
                self.text = None;
            }
        }
        if self.descriptor.is_some() || self.broken.is_some() || !head.starts_with(b"KDMV") {
            return;
        }
        if head.len() < 512 {
            return;
        }
        let version = le_u32(head, 4).unwrap_or(0);
        let descriptor_sector = le_u64(head, 28).unwrap_or(0);
        let descriptor_sectors = le_u64(head, 36).unwrap_or(0);
        if !(1..=3).contains(&version) {
            self.broken = Some("vmdk version is not supported");
        } else if descriptor_sector != 1 {
            self.broken = Some("vmdk descriptor is not where qemu expects it");
        } else {
            let length = descriptor_sectors
                .saturating_mul(512)
                .min(VMDK_DESCRIPTOR_MAX as u64) as usize;
            self.descriptor = Some(captures.request(512, length));
        }
    }

    fn verdict(&self, captures: &Captures, tail: &Tail, head: &[u8]) -> Verdict {
        if !head.starts_with(b"KDMV") {
            return self.text_verdict(captures);
        }
        if head.len() < 512 {
            return refused(None, "vmdk header is incomplete");
        }
        if let Some(reason) = self.broken {
            return refused(None, reason);
        }
        let Some(descriptor) = self.descriptor.and_then(|id| captures.get(id)) else {
            return refused(None, "vmdk descriptor is incomplete");
        };
        let descriptor = parse_descriptor(descriptor);
        let sparse = descriptor
            .as_ref()
            .is_ok_and(|parsed| is_sparse_type(&parsed.create_type));
        let virtual_size = if sparse {
            le_u64(head, 12).map(|sectors| sectors.saturating_mul(512))
        } else {
            None
        };
        let checked = descriptor.and_then(|parsed| check_descriptor(&parsed));
        if let Err(reason) = checked {
            return refused(virtual_size, reason);
        }
        if le_u64(head, 56) == Some(VMDK_GD_AT_END)
            && let Err(reason) = check_footer(head, tail)
        {
            return refused(virtual_size, reason);
        }
        safe(virtual_size)
    }

    /// A text upload is a vmdk descriptor file when it names a create type, as in Glance.
    fn text_verdict(&self, captures: &Captures) -> Verdict {
        let Some(text) = self.text else {
            return Verdict::No;
        };
        if captures.state(text) == State::Released {
            return Verdict::No;
        }
        // At the end of the stream a shorter text is all there is.
        let bytes = captures.partial(text);
        if bytes.len() < 4 || !is_text(bytes.get(..512).unwrap_or(bytes)) {
            return Verdict::No;
        }
        match parse_descriptor(bytes) {
            Ok(parsed) if !parsed.create_type.is_empty() => {
                let reason = check_descriptor(&parsed)
                    .err()
                    .unwrap_or("vmdk descriptor files refer to other files");
                refused(None, reason)
            }
            _ => Verdict::No,
        }
    }
}

fn is_text(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .all(|&byte| byte.is_ascii_graphic() || byte.is_ascii_whitespace() || byte == b' ')
}

fn is_sparse_type(create_type: &str) -> bool {
    create_type == "monolithicsparse" || create_type == "streamoptimized"
}

struct Descriptor {
    /// Lower-cased; empty when there is none (or it is too long to be one).
    create_type: String,
    text: String,
}

fn parse_descriptor(bytes: &[u8]) -> Result<Descriptor, &'static str> {
    let end = bytes
        .iter()
        .position(|&byte| byte == 0)
        .unwrap_or(bytes.len());
    let bytes = bytes.get(..end).unwrap_or(&[]);
    if !bytes.is_ascii() {
        return Err("vmdk descriptor is not ascii text");
    }
    let text = String::from_utf8_lossy(bytes).to_ascii_lowercase();
    let create_type = text
        .find("createtype=\"")
        .and_then(|at| {
            let rest = text.get(at + "createtype=\"".len()..)?;
            let close = rest.find('"')?;
            (close < 64).then(|| rest.get(..close).map(str::to_string))?
        })
        .unwrap_or_default();
    Ok(Descriptor { create_type, text })
}

fn check_descriptor(descriptor: &Descriptor) -> Result<(), &'static str> {
    if !is_sparse_type(&descriptor.create_type) {
        return Err("vmdk create type is not monolithicSparse or streamOptimized");
    }
    let mut extents = 0usize;
    for line in descriptor.text.split('\n').map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with("ddb") {
            continue;
        }
        if let Some((key, _)) = line.split_once('=')
            && !key.contains(' ')
        {
            continue;
        }
        let mut words = line.split(' ').filter(|word| !word.is_empty());
        if !matches!(line.split(' ').next(), Some("rw" | "rdonly" | "noaccess")) {
            return Err("vmdk descriptor has a line that is not understood");
        }
        if line.contains('/') || line.contains('\\') {
            return Err("vmdk extent names a path");
        }
        let extent_type = words.nth(2).unwrap_or("");
        if extent_type != "sparse" {
            return Err("vmdk extent is not sparse (a flat extent reads another file)");
        }
        extents += 1;
    }
    match extents {
        0 => Err("vmdk descriptor names no extents"),
        1 => Ok(()),
        _ => Err("vmdk descriptor names extents outside the image"),
    }
}

/// Glance's checks of a streamOptimized footer: the last 1536 bytes are a footer marker, a
/// copy of the header and an end-of-stream marker.
fn check_footer(head: &[u8], tail: &Tail) -> Result<(), &'static str> {
    let Some(end) = tail.last(1536) else {
        return Err("vmdk footer is missing");
    };
    let footer = end.get(512..1024).unwrap_or(&[]);
    let field = |bytes: &[u8], at: usize| le_u64(bytes, at);
    if footer.get(..4) != head.get(..4) {
        return Err("vmdk header and footer signatures do not match");
    }
    if le_u32(footer, 4) != le_u32(head, 4) {
        return Err("vmdk header and footer versions do not match");
    }
    if field(footer, 28) != field(head, 28) || field(footer, 36) != field(head, 36) {
        return Err("vmdk footer names a different descriptor than the header");
    }
    if field(footer, 56) == Some(VMDK_GD_AT_END) {
        return Err("vmdk footer points at another footer");
    }
    let zeros = |bytes: &[u8]| {
        bytes
            .get(16..512)
            .is_some_and(|rest| rest.iter().all(|b| *b == 0))
    };
    let marker = end.get(..512).unwrap_or(&[]);
    if le_u32(marker, 8) != Some(0) || le_u32(marker, 12) != Some(3) || !zeros(marker) {
        return Err("vmdk footer marker is invalid");
    }
    let eos = end.get(1024..).unwrap_or(&[]);
    if le_u64(eos, 0) != Some(0)
        || le_u32(eos, 8) != Some(0)
        || le_u32(eos, 12) != Some(0)
        || !zeros(eos)
    {
        return Err("vmdk end-of-stream marker is invalid");
    }
    Ok(())
}

// MBR / GPT (Glance names both "gpt"): the 0x55AA signature at 510 of the first sector, unless
// the sector looks like a FAT boot record (2 FATs at 0x10, fixed-disk media 0xF8 at 0x15).
// Glance's check of the four partition entries at 446: boot flag 0x00 or 0x80; at least one
// partition; a protective (0xEE) one must start at CHS 0/2/0 and LBA 1 and be alone. The
// virtual size is the data size. ocellus also reads what a protective MBR points at: a GPT
// header ("EFI PART") at LBA 1 (512- or 4096-byte sectors) whose own LBA is 1, whose
// partition entries lie after it, and whose partitions lie within its usable LBAs.
#[derive(Debug, Default)]
struct Gpt {
    headers: Option<[(u64, RegionId); 2]>,
    /// Sector size and header of the GPT found.
    header: Option<(u64, Vec<u8>)>,
    entries: Option<RegionId>,
    broken: Option<&'static str>,
}

const GPT_SIGNATURE: &[u8] = b"EFI PART";

fn is_mbr(head: &[u8]) -> bool {
    let Some(sector) = head.get(..512) else {
        return false;
    };
    let fat = sector.get(0x10) == Some(&2) && sector.get(0x15) == Some(&0xF8);
    le_u16(sector, 510) == Some(0xAA55) && !fat
}

fn partition(sector: &[u8], index: usize) -> &[u8] {
    sector
        .get(446 + 16 * index..446 + 16 * index + 16)
        .unwrap_or(&[0; 16])
}

/// Glance's `check_mbr_partitions`; Ok(true) when the MBR is a protective one.
fn check_mbr(sector: &[u8]) -> Result<bool, String> {
    let mut used = Vec::new();
    let mut protective = false;
    for index in 0..4 {
        let entry = partition(sector, index);
        let boot = entry.first().copied().unwrap_or(0);
        let os_type = entry.get(4).copied().unwrap_or(0);
        if boot != 0x00 && boot != 0x80 {
            return Err(format!("MBR partition {index} has an invalid boot flag"));
        }
        if os_type != 0 {
            used.push(index);
        }
        if os_type == 0xEE {
            protective = true;
            if entry.get(1..4) != Some(&[0x00, 0x02, 0x00][..]) {
                return Err("protective MBR has an invalid start CHS".into());
            }
            if le_u32(entry, 8) != Some(1) {
                return Err("protective MBR has an invalid start LBA".into());
            }
        }
    }
    if protective && used != [0] {
        return Err("protective MBR defines other partitions".into());
    }
    if used.is_empty() {
        return Err("MBR has no partitions".into());
    }
    Ok(protective)
}

impl Gpt {
    fn advance(&mut self, captures: &mut Captures, head: &[u8]) {
        if self.broken.is_some() || !is_mbr(head) {
            return;
        }
        let Some(sector) = head.get(..512) else {
            return;
        };
        let Some(headers) = self.headers else {
            if check_mbr(sector) == Ok(true) {
                self.headers = Some([
                    (512, captures.request(512, 92)),
                    (4096, captures.request(4096, 92)),
                ]);
            }
            return;
        };
        if self.header.is_none() {
            // Take the first sector size whose header is there; wait for the others.
            for (sector_size, id) in headers {
                match captures.get(id) {
                    Some(header) if header.starts_with(GPT_SIGNATURE) => {
                        self.header = Some((sector_size, header.to_vec()));
                        break;
                    }
                    Some(_) => continue,
                    None if captures.state(id) == State::Pending => return,
                    None => continue,
                }
            }
            let Some((sector_size, header)) = self.header.as_ref() else {
                // Both captured (or gone by) without a signature.
                if headers
                    .iter()
                    .all(|(_, id)| captures.state(*id) != State::Pending)
                {
                    self.broken = Some("protective MBR without a GPT header");
                }
                return;
            };
            let sector_size = *sector_size;
            let my_lba = le_u64(header, 24).unwrap_or(0);
            let entries_lba = le_u64(header, 72).unwrap_or(0);
            let count = u64::from(le_u32(header, 80).unwrap_or(0));
            let entry_size = u64::from(le_u32(header, 84).unwrap_or(0));
            let header_size = u64::from(le_u32(header, 12).unwrap_or(0));
            if my_lba != 1 {
                self.broken = Some("GPT header is not at LBA 1");
            } else if !(92..=sector_size).contains(&header_size) {
                self.broken = Some("GPT header size is invalid");
            } else if entry_size < 128 || entry_size % 8 != 0 {
                self.broken = Some("GPT partition entry size is invalid");
            } else if entries_lba < 2 {
                self.broken = Some("GPT partition entries overlap the header");
            } else {
                let length = count.saturating_mul(entry_size);
                if length <= GPT_ENTRIES_MAX as u64 {
                    self.entries = Some(
                        captures.request(entries_lba.saturating_mul(sector_size), length as usize),
                    );
                }
            }
        }
    }

    fn verdict(&self, captures: &Captures, head: &[u8], size: u64) -> Verdict {
        if !is_mbr(head) {
            return Verdict::No;
        }
        let sector = head.get(..512).unwrap_or(&[]);
        let virtual_size = Some(size).filter(|size| *size > 0);
        match check_mbr(sector) {
            Err(reason) => return refused(virtual_size, reason),
            Ok(false) => return safe(virtual_size),
            Ok(true) => {}
        }
        if let Some(reason) = self.broken {
            return refused(virtual_size, reason);
        }
        let Some((_, header)) = self.header.as_ref() else {
            return refused(virtual_size, "protective MBR without a GPT header");
        };
        let Some(entries) = self.entries else {
            // Too many entries to capture: not checked.
            return safe(virtual_size);
        };
        let entries = match captures.state(entries) {
            State::Complete => captures.partial(entries),
            State::Pending => {
                return refused(virtual_size, "GPT partition entries are past the end");
            }
            _ => return safe(virtual_size),
        };
        let first_usable = le_u64(header, 40).unwrap_or(0);
        let last_usable = le_u64(header, 48).unwrap_or(0);
        let entry_size = le_u32(header, 84).unwrap_or(128).max(128) as usize;
        for entry in entries.chunks_exact(entry_size) {
            if entry
                .get(..16)
                .is_some_and(|guid| guid.iter().all(|b| *b == 0))
            {
                continue;
            }
            let first = le_u64(entry, 32).unwrap_or(0);
            let last = le_u64(entry, 40).unwrap_or(0);
            if first > last || first < first_usable || last > last_usable {
                return refused(virtual_size, "GPT partition lies outside the usable space");
            }
        }
        safe(virtual_size)
    }
}
