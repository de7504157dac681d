//! Hand-built headers for each rule.

use super::*;

fn put(buffer: &mut Vec<u8>, at: usize, bytes: &[u8]) {
    if buffer.len() < at + bytes.len() {
        buffer.resize(at + bytes.len(), 0);
    }
    buffer[at..at + bytes.len()].copy_from_slice(bytes);
}

/// Inspects `bytes` whole, then in 1-byte and odd-sized chunks, and checks all agree.
fn inspect(bytes: &[u8]) -> Inspection {
    let whole = inspect_bytes(bytes);
    for size in [1usize, 7, 511, 4096, 65_537] {
        if size == 1 && bytes.len() > 600_000 {
            continue;
        }
        let mut inspector = Inspector::new();
        for chunk in bytes.chunks(size) {
            inspector.feed(chunk);
        }
        assert_eq!(inspector.finish(), whole, "chunks of {size}");
    }
    whole
}

fn reason(inspection: &Inspection) -> &str {
    inspection.unsafe_reason.as_deref().unwrap_or("")
}

fn qcow2(version: u32, backing: u64, features: u64, length: usize) -> Vec<u8> {
    let mut image = vec![0u8; length];
    put(&mut image, 0, b"QFI\xfb");
    put(&mut image, 4, &version.to_be_bytes());
    put(&mut image, 8, &backing.to_be_bytes());
    put(&mut image, 24, &(1u64 << 30).to_be_bytes());
    put(&mut image, 72, &features.to_be_bytes());
    image.truncate(length);
    image
}

#[test]
fn qcow2_clean_is_sized() {
    for version in [2, 3] {
        let inspection = inspect(&qcow2(version, 0, 0, 4096));
        assert_eq!(inspection.format, "qcow2");
        assert_eq!(inspection.virtual_size, Some(1 << 30));
        assert_eq!(inspection.unsafe_reason, None);
        assert_eq!(inspection.size, 4096);
    }
    // Dirty, corrupt and compression-type bits are known to Glance.
    assert_eq!(inspect(&qcow2(3, 0, 0b1011, 4096)).unsafe_reason, None);
}

#[test]
fn qcow2_truncated_header_is_refused() {
    let inspection = inspect(&qcow2(3, 0, 0, 100));
    assert_eq!(inspection.format, "qcow2");
    assert!(reason(&inspection).contains("incomplete"));
    assert!(check_upload("raw", "bare", &inspection).is_err());
}

#[test]
fn qcow2_unsafe_headers_are_refused() {
    let backing = inspect(&qcow2(3, 0x200, 0, 4096));
    assert!(reason(&backing).contains("backing file"));
    let data_file = inspect(&qcow2(3, 0, 1 << 2, 4096));
    assert!(reason(&data_file).contains("data file"));
    // Extended L2 (bit 4) is past Glance's known bits, as is anything higher.
    for bit in [4, 5, 20, 63] {
        let unknown = inspect(&qcow2(3, 0, 1 << bit, 4096));
        assert!(reason(&unknown).contains("unknown"), "bit {bit}");
    }
    assert!(reason(&inspect(&qcow2(1, 0, 0, 4096))).contains("version"));
    // Version 2 has no feature field: whatever is there is not read.
    assert_eq!(inspect(&qcow2(2, 0, 1 << 40, 4096)).unsafe_reason, None);
}

#[test]
fn qed_is_always_refused() {
    let mut image = vec![0u8; 4096];
    put(&mut image, 0, b"QED\0");
    let inspection = inspect(&image);
    assert_eq!(inspection.format, "qed");
    assert!(inspection.unsafe_reason.is_some());
}

fn vmdk_sparse(descriptor: &str, footer: bool) -> Vec<u8> {
    let mut image = vec![0u8; 64 * 1024];
    put(&mut image, 0, b"KDMV");
    put(&mut image, 4, &3u32.to_le_bytes());
    put(&mut image, 12, &(2048u64).to_le_bytes());
    put(&mut image, 28, &1u64.to_le_bytes());
    put(&mut image, 36, &20u64.to_le_bytes());
    if footer {
        put(&mut image, 56, &u64::MAX.to_le_bytes());
    }
    put(&mut image, 512, descriptor.as_bytes());
    if footer {
        let header = image[..512].to_vec();
        let mut end = vec![0u8; 1536];
        put(&mut end, 12, &3u32.to_le_bytes());
        put(&mut end, 512, &header);
        put(&mut end, 512 + 56, &0x80u64.to_le_bytes());
        image.extend_from_slice(&end);
    }
    image
}

const SPARSE_DESCRIPTOR: &str = "# Disk DescriptorFile\nversion=1\nCID=12345678\n\
    parentCID=ffffffff\ncreateType=\"monolithicSparse\"\n\n# Extent description\n\
    RW 2048 SPARSE \"disk.vmdk\"\n\n# The Disk Data Base\n#DDB\n\n\
    ddb.virtualHWVersion = \"4\"\nddb.geometry.cylinders = \"2\"\n";

#[test]
fn vmdk_sparse_is_sized_and_checked() {
    let inspection = inspect(&vmdk_sparse(SPARSE_DESCRIPTOR, false));
    assert_eq!(inspection.format, "vmdk");
    assert_eq!(inspection.virtual_size, Some(2048 * 512));
    assert_eq!(inspection.unsafe_reason, None);

    let stream = SPARSE_DESCRIPTOR.replace("monolithicSparse", "streamOptimized");
    let inspection = inspect(&vmdk_sparse(&stream, true));
    assert_eq!(inspection.unsafe_reason, None);
    let mut broken = vmdk_sparse(&stream, true);
    let eos = broken.len() - 512;
    broken[eos + 12] = 9;
    assert!(reason(&inspect(&broken)).contains("end-of-stream"));
    // A footer that announces yet another footer.
    let mut looping = vmdk_sparse(&stream, true);
    let footer = looping.len() - 1024;
    put(&mut looping, footer + 56, &u64::MAX.to_le_bytes());
    assert!(reason(&inspect(&looping)).contains("another footer"));
}

#[test]
fn vmdk_unsafe_descriptors_are_refused() {
    let cases = [
        (
            SPARSE_DESCRIPTOR.replace("monolithicSparse", "monolithicFlat"),
            "create type",
        ),
        (
            SPARSE_DESCRIPTOR.replace("SPARSE \"disk.vmdk\"", "FLAT \"disk-flat.vmdk\" 0"),
            "not sparse",
        ),
        (
            SPARSE_DESCRIPTOR.replace("\"disk.vmdk\"", "\"/etc/passwd\""),
            "path",
        ),
        (
            SPARSE_DESCRIPTOR.replace(
                "RW 2048 SPARSE \"disk.vmdk\"",
                "RW 2048 SPARSE \"disk.vmdk\"\nRW 2048 SPARSE \"other.vmdk\"",
            ),
            "outside",
        ),
        (
            SPARSE_DESCRIPTOR.replace("RW 2048 SPARSE \"disk.vmdk\"", ""),
            "no extents",
        ),
        (
            SPARSE_DESCRIPTOR.replace("# Extent description", "what is this"),
            "not understood",
        ),
    ];
    for (descriptor, expected) in cases {
        let inspection = inspect(&vmdk_sparse(&descriptor, false));
        assert_eq!(inspection.format, "vmdk");
        assert!(
            reason(&inspection).contains(expected),
            "{expected}: {inspection:?}"
        );
    }
    // A descriptor that is not at sector 1.
    let mut moved = vmdk_sparse(SPARSE_DESCRIPTOR, false);
    put(&mut moved, 28, &2u64.to_le_bytes());
    assert!(inspect(&moved).unsafe_reason.is_some());
    // A header cut short.
    assert!(reason(&inspect(&moved[..300])).contains("incomplete"));
}

#[test]
fn vmdk_descriptor_files_are_refused() {
    let flat = "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\n\
        RW 2048 FLAT \"disk-flat.vmdk\" 0\n";
    let inspection = inspect(flat.as_bytes());
    assert_eq!(inspection.format, "vmdk");
    assert!(inspection.unsafe_reason.is_some());
    assert!(check_upload("raw", "bare", &inspection).is_err());
    // Even one that claims to be sparse names another file.
    let sparse = SPARSE_DESCRIPTOR.replace("disk.vmdk", "../x");
    assert!(inspect(sparse.as_bytes()).unsafe_reason.is_some());
    // Text without a create type is just raw data.
    assert_eq!(inspect(b"hello world\n").format, "raw");
}

fn vhd_footer(disk_type: u32, size: u64) -> Vec<u8> {
    let mut footer = vec![0u8; 512];
    put(&mut footer, 0, b"conectix");
    put(&mut footer, 40, &size.to_be_bytes());
    put(&mut footer, 48, &size.to_be_bytes());
    put(&mut footer, 60, &disk_type.to_be_bytes());
    footer
}

#[test]
fn vhd_dynamic_and_fixed_are_sized() {
    let mut dynamic = vhd_footer(3, 1 << 30);
    dynamic.resize(8192, 0);
    dynamic.extend_from_slice(&vhd_footer(3, 1 << 30));
    let inspection = inspect(&dynamic);
    assert_eq!(inspection.format, "vhd");
    assert_eq!(inspection.virtual_size, Some(1 << 30));
    assert_eq!(inspection.unsafe_reason, None);

    let mut fixed = vec![0x11u8; 1 << 20];
    fixed.extend_from_slice(&vhd_footer(2, 1 << 20));
    let inspection = inspect(&fixed);
    assert_eq!(inspection.format, "vhd");
    assert_eq!(inspection.virtual_size, Some(1 << 20));
    assert_eq!(check_upload("vhd", "bare", &inspection), Ok(Some(1 << 20)));
    assert_eq!(
        check_upload("raw", "bare", &inspection),
        Ok(Some(fixed.len() as u64))
    );
}

#[test]
fn vhd_unsafe_footers_are_refused() {
    let mut differencing = vhd_footer(4, 1 << 30);
    differencing.resize(4096, 0);
    assert!(reason(&inspect(&differencing)).contains("parent"));
    assert!(reason(&inspect(&vhd_footer(3, 1)[..100])).contains("incomplete"));
    // A dynamic disk's footer at the end without its copy at the start.
    let mut orphan = vec![0u8; 4096];
    orphan.extend_from_slice(&vhd_footer(3, 1 << 30));
    assert!(inspect(&orphan).unsafe_reason.is_some());
}

fn mbr(entries: &[[u8; 16]]) -> Vec<u8> {
    let mut sector = vec![0u8; 512];
    for (index, entry) in entries.iter().enumerate() {
        put(&mut sector, 446 + 16 * index, entry);
    }
    put(&mut sector, 510, &[0x55, 0xAA]);
    sector
}

fn partition(boot: u8, os_type: u8, chs: [u8; 3], lba: u32, sectors: u32) -> [u8; 16] {
    let mut entry = [0u8; 16];
    entry[0] = boot;
    entry[1..4].copy_from_slice(&chs);
    entry[4] = os_type;
    entry[8..12].copy_from_slice(&lba.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    entry
}

/// A GPT disk of `sectors` 512-byte sectors with one partition from LBA `first` to `last`.
fn gpt_disk(sectors: u64, first: u64, last: u64) -> Vec<u8> {
    let mut disk = mbr(&[partition(0, 0xEE, [0, 2, 0], 1, (sectors - 1) as u32)]);
    let mut header = vec![0u8; 92];
    put(&mut header, 0, b"EFI PART");
    put(&mut header, 8, &0x0001_0000u32.to_le_bytes());
    put(&mut header, 12, &92u32.to_le_bytes());
    put(&mut header, 24, &1u64.to_le_bytes());
    put(&mut header, 32, &(sectors - 1).to_le_bytes());
    put(&mut header, 40, &34u64.to_le_bytes());
    put(&mut header, 48, &(sectors - 34).to_le_bytes());
    put(&mut header, 72, &2u64.to_le_bytes());
    put(&mut header, 80, &128u32.to_le_bytes());
    put(&mut header, 84, &128u32.to_le_bytes());
    put(&mut disk, 512, &header);
    let mut entry = vec![0u8; 128];
    put(&mut entry, 0, &[0xAF; 16]);
    put(&mut entry, 16, &[0x42; 16]);
    put(&mut entry, 32, &first.to_le_bytes());
    put(&mut entry, 40, &last.to_le_bytes());
    put(&mut disk, 1024, &entry);
    disk.resize(sectors as usize * 512, 0);
    disk
}

#[test]
fn mbr_and_gpt_follow_glance() {
    let plain = mbr(&[partition(0x80, 0x83, [0, 1, 1], 2048, 4096)]);
    let inspection = inspect(&plain);
    assert_eq!(inspection.format, "gpt");
    assert_eq!(inspection.virtual_size, Some(512));
    assert_eq!(inspection.unsafe_reason, None);

    let gpt = gpt_disk(2048, 34, 2000);
    let inspection = inspect(&gpt);
    assert_eq!(inspection.format, "gpt");
    assert_eq!(inspection.unsafe_reason, None);
    assert_eq!(
        check_upload("raw", "bare", &inspection),
        Ok(Some(2048 * 512))
    );

    let bad_boot = mbr(&[partition(0x7F, 0x83, [0, 1, 1], 2048, 4096)]);
    assert!(reason(&inspect(&bad_boot)).contains("boot flag"));
    let empty = mbr(&[]);
    assert!(reason(&inspect(&empty)).contains("no partitions"));
    let crowded = mbr(&[
        partition(0, 0xEE, [0, 2, 0], 1, 100),
        partition(0, 0x83, [0, 1, 1], 200, 100),
    ]);
    assert!(reason(&inspect(&crowded)).contains("other partitions"));
    let wrong_chs = mbr(&[partition(0, 0xEE, [0, 1, 0], 1, 100)]);
    assert!(reason(&inspect(&wrong_chs)).contains("CHS"));
    let wrong_lba = mbr(&[partition(0, 0xEE, [0, 2, 0], 2, 100)]);
    assert!(reason(&inspect(&wrong_lba)).contains("LBA"));
    // A protective MBR with nothing behind it, and a partition past the usable space.
    let mut headless = wrong_lba.clone();
    headless[446 + 8] = 1;
    headless.resize(8192, 0);
    assert!(reason(&inspect(&headless)).contains("without a GPT header"));
    assert!(reason(&inspect(&gpt_disk(2048, 34, 4000))).contains("outside"));

    // A FAT boot sector has the same signature but is not a partition table.
    let mut fat = mbr(&[]);
    fat[0x10] = 2;
    fat[0x15] = 0xF8;
    assert_eq!(inspect(&fat).format, "raw");
}

fn iso(with_mbr: bool) -> Vec<u8> {
    let mut image = if with_mbr {
        mbr(&[partition(0x80, 0x17, [0, 1, 1], 0, 100)])
    } else {
        Vec::new()
    };
    image.resize(64 * 1024, 0);
    let at = 32 * 1024;
    put(&mut image, at, &[1]);
    put(&mut image, at + 1, b"CD001");
    put(&mut image, at + 6, &[1]);
    put(&mut image, at + 80, &32u32.to_le_bytes());
    put(&mut image, at + 84, &32u32.to_be_bytes());
    put(&mut image, at + 128, &2048u16.to_le_bytes());
    put(&mut image, at + 130, &2048u16.to_be_bytes());
    image
}

#[test]
fn iso_is_sized_and_iso_with_mbr_is_iso() {
    let inspection = inspect(&iso(false));
    assert_eq!(inspection.format, "iso");
    assert_eq!(inspection.virtual_size, Some(32 * 2048));
    let hybrid = inspect(&iso(true));
    assert_eq!(hybrid.format, "iso");
    assert_eq!(hybrid.unsafe_reason, None);
    assert_eq!(check_upload("iso", "bare", &hybrid), Ok(Some(32 * 2048)));
    // Declared iso but only a partition table: a mismatch, as in Glance.
    let disk = inspect(&gpt_disk(2048, 34, 2000));
    assert!(check_upload("iso", "bare", &disk).is_err());
}

#[test]
fn vdi_is_sized() {
    let mut image = vec![0u8; 4096];
    put(&mut image, 0x40, &0xbeda_107fu32.to_le_bytes());
    put(&mut image, 0x170, &(5u64 << 30).to_le_bytes());
    let inspection = inspect(&image);
    assert_eq!(inspection.format, "vdi");
    assert_eq!(inspection.virtual_size, Some(5 << 30));
    assert!(inspect(&image[..300]).unsafe_reason.is_some());
}

fn vhdx(metadata_at: u64, with_size: bool) -> Vec<u8> {
    let mut image = vec![0u8; 400 * 1024];
    put(&mut image, 0, b"vhdxfile");
    let table = 192 * 1024;
    put(&mut image, table, b"regi");
    put(&mut image, table + 8, &2u32.to_le_bytes());
    // A BAT entry first, then the metadata region.
    put(&mut image, table + 16, &[0x66; 16]);
    put(&mut image, table + 48, &formats_guid_metadata());
    put(&mut image, table + 64, &metadata_at.to_le_bytes());
    put(&mut image, table + 72, &(1u32 << 20).to_le_bytes());
    let meta = metadata_at as usize;
    put(&mut image, meta, b"metadata");
    put(&mut image, meta + 10, &2u16.to_le_bytes());
    put(&mut image, meta + 32, &[0x77; 16]);
    if with_size {
        put(&mut image, meta + 64, &formats_guid_size());
        put(&mut image, meta + 80, &0x1_0000u32.to_le_bytes());
        put(&mut image, meta + 84, &8u32.to_le_bytes());
        put(&mut image, meta + 0x1_0000, &(3u64 << 30).to_le_bytes());
    }
    image
}

fn formats_guid_metadata() -> [u8; 16] {
    [
        0x06, 0xA2, 0x7C, 0x8B, 0x90, 0x47, 0x9A, 0x4B, 0xB8, 0xFE, 0x57, 0x5F, 0x05, 0x0F, 0x88,
        0x6E,
    ]
}

fn formats_guid_size() -> [u8; 16] {
    [
        0x24, 0x42, 0xA5, 0x2F, 0x1B, 0xCD, 0x76, 0x48, 0xB2, 0x11, 0x5D, 0xBE, 0xD8, 0x3B, 0xF4,
        0xB8,
    ]
}

#[test]
fn vhdx_is_sized_through_its_metadata() {
    let inspection = inspect(&vhdx(260 * 1024, true));
    assert_eq!(inspection.format, "vhdx");
    assert_eq!(inspection.virtual_size, Some(3 << 30));
    assert_eq!(inspection.unsafe_reason, None);
    assert!(reason(&inspect(&vhdx(260 * 1024, false))).contains("virtual disk size"));
    // Metadata pointing back into the headers is refused, however the upload is chunked.
    assert!(reason(&inspect(&vhdx(100 * 1024, true))).contains("overlaps"));
    // Cut off before the region table.
    assert!(
        inspect(&vhdx(260 * 1024, true)[..100_000])
            .unsafe_reason
            .is_some()
    );
}

#[test]
fn polyglots_are_refused() {
    // A qcow2 header with an MBR signature at 510.
    let mut image = qcow2(3, 0, 0, 4096);
    put(&mut image, 446, &partition(0x80, 0x83, [0, 1, 1], 1, 10));
    put(&mut image, 510, &[0x55, 0xAA]);
    let inspection = inspect(&image);
    assert!(reason(&inspection).contains("multiple formats"));
    assert!(check_upload("qcow2", "bare", &inspection).is_err());
    // A qcow2 wearing a fixed VHD footer.
    let mut image = qcow2(3, 0, 0, 4096);
    image.extend_from_slice(&vhd_footer(2, 4096));
    assert!(reason(&inspect(&image)).contains("multiple formats"));
    // A fixed VHD of a partitioned disk is a VHD.
    let mut disk = gpt_disk(2048, 34, 2000);
    disk.extend_from_slice(&vhd_footer(2, 2048 * 512));
    let inspection = inspect(&disk);
    assert_eq!(inspection.format, "vhd");
    assert_eq!(inspection.unsafe_reason, None);
}

#[test]
fn upload_policy_follows_glance() {
    let clean = inspect(&qcow2(3, 0, 0, 4096));
    let unsafe_qcow2 = inspect(&qcow2(3, 0x200, 0, 4096));
    let random = inspect(&[0x42; 5000]);
    assert_eq!(check_upload("qcow2", "bare", &clean), Ok(Some(1 << 30)));
    // Declared raw: accepted when safe, with the data size.
    assert_eq!(check_upload("raw", "bare", &clean), Ok(Some(4096)));
    assert_eq!(check_upload("raw", "bare", &random), Ok(Some(5000)));
    assert!(check_upload("raw", "bare", &unsafe_qcow2).is_err());
    // Unsafe data is refused in any container; the format is only matched for bare.
    assert!(check_upload("qcow2", "ovf", &unsafe_qcow2).is_err());
    assert_eq!(check_upload("qcow2", "ovf", &random), Ok(None));
    assert_eq!(check_upload("qcow2", "ova", &clean), Ok(None));
    // A specific format must match the data.
    let mismatch = check_upload("qcow2", "bare", &random).unwrap_err();
    assert_eq!(
        mismatch,
        "Image disk_format qcow2 does not match stream data raw"
    );
    for claimed in ["vmdk", "vhd", "vhdx", "vdi", "iso"] {
        assert!(check_upload(claimed, "bare", &clean).is_err(), "{claimed}");
    }
    // Formats Glance cannot inspect take unrecognized data only.
    for claimed in ["ami", "ari", "aki", "ploop"] {
        assert_eq!(
            check_upload(claimed, "bare", &random),
            Ok(None),
            "{claimed}"
        );
        assert!(check_upload(claimed, "bare", &clean).is_err(), "{claimed}");
    }
}

#[test]
fn memory_stays_bounded_and_empty_is_raw() {
    let mut inspector = Inspector::new();
    let chunk = vec![0x20u8; 1 << 20];
    for _ in 0..8 {
        inspector.feed(&chunk);
    }
    assert!(inspector.held() <= capture::CAPTURE_CAP + capture::TAIL_SIZE);
    let inspection = inspector.finish();
    assert_eq!(inspection.format, "raw");
    assert_eq!(inspection.virtual_size, Some(8 << 20));

    let empty = Inspector::new().finish();
    assert_eq!(empty.format, "raw");
    assert_eq!(empty.virtual_size, None);
    assert_eq!(check_upload("raw", "bare", &empty), Ok(None));
}
