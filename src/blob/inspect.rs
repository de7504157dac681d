//! Recognizes disk image formats from the first bytes of an upload.
//!
//! This is what lets ocellus report `virtual_size` and refuse data that does not match its
//! `disk_format`, as Glance's format inspector does. It reads headers only; it does not
//! understand any format beyond what those two jobs need. Formats whose marker is not in the
//! head (a fixed VHD keeps its footer at the end) are reported as raw.

/// What the head of an upload looks like.
#[derive(Debug, PartialEq, Eq)]
pub struct Inspection {
    /// Glance's name for the detected format: qcow2, vmdk, vhdx, vhd, vdi, iso or raw.
    pub format: &'static str,
    /// The size of the virtual disk, when the header gives it.
    pub virtual_size: Option<u64>,
    /// Why the image is unsafe to hand to a hypervisor, if it is.
    pub unsafe_reason: Option<String>,
}

/// Incompatible qcow2 feature bits we know: dirty, corrupt, external data file, compression
/// type, extended L2 entries.
const QCOW2_KNOWN_INCOMPATIBLE: u64 = 0b1_1111;
const QCOW2_EXTERNAL_DATA_FILE: u64 = 1 << 2;

/// Inspects `head`, the first bytes of an upload of `size` bytes in all.
pub fn inspect(head: &[u8], size: u64) -> Inspection {
    if head.starts_with(b"QFI\xfb") {
        return inspect_qcow2(head);
    }
    if head.starts_with(b"KDMV") {
        return inspect_vmdk_sparse(head);
    }
    if head.starts_with(b"# Disk DescriptorFile") {
        return Inspection {
            format: "vmdk",
            virtual_size: None,
            unsafe_reason: Some("vmdk descriptor files refer to other files".into()),
        };
    }
    if head.starts_with(b"vhdxfile") {
        return Inspection {
            format: "vhdx",
            virtual_size: None,
            unsafe_reason: None,
        };
    }
    if head.starts_with(b"conectix") {
        return Inspection {
            format: "vhd",
            virtual_size: be_u64(head, 0x30),
            unsafe_reason: None,
        };
    }
    if le_u32(head, 0x40) == Some(0xbeda_107f) {
        return Inspection {
            format: "vdi",
            virtual_size: le_u64(head, 0x170),
            unsafe_reason: None,
        };
    }
    if head.get(0x8001..0x8006) == Some(b"CD001") {
        let blocks = le_u32(head, 0x8050).map(u64::from);
        let block_size = head
            .get(0x8080..0x8082)
            .map(|b| u64::from(u16::from_le_bytes([b[0], b[1]])));
        let virtual_size = blocks
            .zip(block_size)
            .map(|(blocks, block_size)| blocks * block_size);
        return Inspection {
            format: "iso",
            virtual_size,
            unsafe_reason: None,
        };
    }
    Inspection {
        format: "raw",
        virtual_size: Some(size),
        unsafe_reason: None,
    }
}

fn inspect_qcow2(head: &[u8]) -> Inspection {
    let version = be_u32(head, 4).unwrap_or(0);
    let backing_file_offset = be_u64(head, 8).unwrap_or(0);
    let virtual_size = be_u64(head, 24);
    let incompatible = if version >= 3 {
        be_u64(head, 72).unwrap_or(0)
    } else {
        0
    };
    let unsafe_reason = if backing_file_offset != 0 {
        Some("qcow2 image names a backing file".to_string())
    } else if incompatible & QCOW2_EXTERNAL_DATA_FILE != 0 {
        Some("qcow2 image uses an external data file".to_string())
    } else if incompatible & !QCOW2_KNOWN_INCOMPATIBLE != 0 {
        Some("qcow2 image has unknown incompatible features".to_string())
    } else if !(2..=3).contains(&version) {
        Some(format!("qcow2 version {version} is not supported"))
    } else {
        None
    };
    Inspection {
        format: "qcow2",
        virtual_size,
        unsafe_reason,
    }
}

fn inspect_vmdk_sparse(head: &[u8]) -> Inspection {
    let virtual_size = le_u64(head, 12).map(|sectors| sectors.saturating_mul(512));
    let descriptor_offset = le_u64(head, 28).unwrap_or(0).saturating_mul(512) as usize;
    let descriptor_size = le_u64(head, 36).unwrap_or(0).saturating_mul(512) as usize;
    let descriptor = head
        .get(
            descriptor_offset
                ..descriptor_offset
                    .saturating_add(descriptor_size)
                    .min(head.len()),
        )
        .unwrap_or(&[]);
    let text = String::from_utf8_lossy(descriptor);
    let mut create_type = None;
    let mut unsafe_reason = None;
    for line in text.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("createType=") {
            create_type = Some(value.trim_matches('"').to_string());
        }
        let is_extent = ["RW ", "RDONLY ", "NOACCESS "]
            .iter()
            .any(|prefix| line.starts_with(prefix));
        if is_extent && line.contains('/') {
            unsafe_reason = Some("vmdk extent refers to a path".to_string());
        }
    }
    match create_type.as_deref() {
        Some("monolithicSparse") | Some("streamOptimized") => {}
        Some(other) => unsafe_reason = Some(format!("vmdk create type {other} is not allowed")),
        None if descriptor_size > 0 => {
            unsafe_reason = Some("vmdk descriptor has no create type".into())
        }
        None => {}
    }
    Inspection {
        format: "vmdk",
        virtual_size,
        unsafe_reason,
    }
}

fn be_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_be_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn be_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_be_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

fn le_u32(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn le_u64(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        bytes.get(offset..offset + 8)?.try_into().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qcow2_header(version: u32, backing: u64, features: u64) -> Vec<u8> {
        let mut head = vec![0u8; 512];
        head[..4].copy_from_slice(b"QFI\xfb");
        head[4..8].copy_from_slice(&version.to_be_bytes());
        head[8..16].copy_from_slice(&backing.to_be_bytes());
        head[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        head[72..80].copy_from_slice(&features.to_be_bytes());
        head
    }

    #[test]
    fn qcow2_virtual_size_and_safety() {
        let plain = inspect(&qcow2_header(3, 0, 0), 512);
        assert_eq!(
            plain,
            Inspection {
                format: "qcow2",
                virtual_size: Some(1 << 30),
                unsafe_reason: None
            }
        );
        assert!(
            inspect(&qcow2_header(3, 0x200, 0), 512)
                .unsafe_reason
                .is_some()
        );
        assert!(
            inspect(&qcow2_header(3, 0, QCOW2_EXTERNAL_DATA_FILE), 512)
                .unsafe_reason
                .is_some()
        );
        assert!(
            inspect(&qcow2_header(3, 0, 1 << 20), 512)
                .unsafe_reason
                .is_some()
        );
    }

    #[test]
    fn anything_else_is_raw_with_its_size() {
        let inspection = inspect(&[0x42; 100], 4096);
        assert_eq!(
            inspection,
            Inspection {
                format: "raw",
                virtual_size: Some(4096),
                unsafe_reason: None
            }
        );
    }
}
