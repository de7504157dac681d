//! The reader against QEMU's own images, and property tests standing in for a fuzzer (as the
//! inspector's do): mutated headers and tables, truncations, random bytes. Nothing may panic,
//! and an intact image must read exactly as `qemu-img convert -O raw` writes it.

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;

/// A 3 MiB guest disk with data, zeros, a pattern and an unaligned tail.
fn guest() -> Vec<u8> {
    let mut disk = vec![0u8; 3 * 1024 * 1024 + 4096 + 512];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for (index, byte) in disk.iter_mut().enumerate() {
        // Data in the first 700 KiB (text-like, so it compresses), zeros, then noise.
        if index < 700 * 1024 {
            *byte = b"ocellus qcow2 raw view "[index % 23];
        } else if index >= 2 * 1024 * 1024 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state as u8;
        }
    }
    disk
}

/// Images made by qemu-img from `guest()`: (label, image bytes); `None` without qemu-img.
type Images = Vec<(String, Vec<u8>)>;

fn images() -> Option<&'static [(String, Vec<u8>)]> {
    static IMAGES: OnceLock<Option<Images>> = OnceLock::new();
    IMAGES
        .get_or_init(|| {
            if Command::new("qemu-img").arg("--version").output().is_err() {
                eprintln!("skipping qemu-img images: qemu-img is not installed");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let raw = dir.path().join("guest.raw");
            std::fs::write(&raw, guest()).unwrap();
            let mut made = Vec::new();
            for (label, options) in [
                ("plain", vec!["-o", "cluster_size=65536"]),
                ("small-clusters", vec!["-o", "cluster_size=4096"]),
                ("deflate", vec!["-c", "-o", "cluster_size=65536"]),
                ("zstd", vec!["-c", "-o", "compression_type=zstd"]),
                ("v2", vec!["-o", "compat=0.10"]),
            ] {
                let out = dir.path().join(format!("{label}.qcow2"));
                let status = Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .args(&options)
                    .arg(&raw)
                    .arg(&out)
                    .status()
                    .unwrap();
                assert!(status.success(), "qemu-img convert {label}");
                made.push((label.to_owned(), std::fs::read(&out).unwrap()));
            }
            Some(made)
        })
        .as_deref()
}

fn qemu_raw(image: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::write(&input, image).unwrap();
    convert(&input, &output);
    std::fs::read(&output).unwrap()
}

fn convert(input: &Path, output: &Path) {
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(input)
        .arg(output)
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn qemu_images_read_as_qemu_reads_them() {
    let Some(images) = images() else { return };
    let expected = guest();
    for (label, image) in images {
        let read = read_all(image).unwrap_or_else(|error| panic!("{label}: {error}"));
        assert_eq!(read.len(), expected.len(), "{label}");
        assert!(
            read == expected,
            "{label}: bytes differ from the guest disk"
        );
        assert!(
            read == qemu_raw(image),
            "{label}: bytes differ from qemu-img's"
        );
    }
    // The compressed images really hold compressed clusters.
    let compressed = |label: &str| {
        let image = &images.iter().find(|(name, _)| name == label).unwrap().1;
        image.len() < images[0].1.len()
    };
    assert!(compressed("deflate") && compressed("zstd"));
}

#[test]
fn unsupported_images_are_refused_with_a_reason() {
    let Some(images) = images() else { return };
    let plain = &images[0].1;
    let with = |at: usize, bytes: &[u8]| {
        let mut image = plain.clone();
        image[at..at + bytes.len()].copy_from_slice(bytes);
        Header::parse(&image).unwrap_err().0
    };
    assert!(with(8, &1u64.to_be_bytes()).contains("backing file"));
    assert!(with(32, &1u32.to_be_bytes()).contains("encrypted"));
    assert!(with(72, &INCOMPAT_CORRUPT.to_be_bytes()).contains("corrupt"));
    assert!(with(72, &INCOMPAT_DATA_FILE.to_be_bytes()).contains("external data file"));
    assert!(with(72, &INCOMPAT_EXTENDED_L2.to_be_bytes()).contains("extended L2"));
    assert!(with(72, &(1u64 << 40).to_be_bytes()).contains("unknown incompatible"));
    assert!(with(20, &30u32.to_be_bytes()).contains("cluster_bits"));
    assert!(with(4, &4u32.to_be_bytes()).contains("version"));
    assert!(Header::parse(b"QFI").is_err());
}

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(64)
}

/// Reads that must not panic; a mutated size is capped so a test stays short.
fn survive(image: &[u8]) {
    if let Ok(header) = Header::parse(image)
        && header.size > 64 << 20
    {
        return;
    }
    let _ = read_all(image);
}

#[test]
fn mutated_images_never_panic() {
    let Some(images) = images() else { return };
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    // Mutations where the metadata is: the header, the L1 table, the first L2 table.
    let strategy = (
        0..images.len(),
        prop::collection::vec((0usize..512 * 1024, any::<u8>()), 1..8),
        prop::option::of(0usize..1 << 20),
    );
    runner
        .run(&strategy, |(which, edits, cut)| {
            let mut image = images[which].1.clone();
            for (at, value) in edits {
                // Half the edits hit the first 1 KiB (the header), the rest spread over the
                // tables and clusters that follow.
                let at = if at % 2 == 0 { at % 1024 } else { at };
                if at < image.len() {
                    image[at] = value;
                }
            }
            if let Some(cut) = cut {
                image.truncate(cut.min(image.len()));
            }
            survive(&image);
            Ok(())
        })
        .unwrap();
}

#[test]
fn random_bytes_behind_the_magic_never_panic() {
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(any::<u8>(), 0..4096), |mut bytes| {
            let mut image = b"QFI\xfb\0\0\0\x03".to_vec();
            image.append(&mut bytes);
            survive(&image);
            Ok(())
        })
        .unwrap();
}

#[test]
fn compressed_cluster_bit_layout_follows_the_spec() {
    // cluster_bits 16: offset in bits 0..53, extra sectors in 54..61.
    let header = Header {
        cluster_bits: 16,
        size: 1 << 16,
        l1_entries: 1,
        l1_offset: 1 << 16,
        compression: Compression::Deflate,
    };
    let map = Map::new(header, &[0; 8]).unwrap();
    let entry = L2_COMPRESSED | (3u64 << 54) | 0x1_0100;
    assert_eq!(
        map.cluster(Some(&[entry]), 0).unwrap(),
        Cluster::Compressed {
            offset: 0x1_0100,
            length: 4 * 512 - 0x100
        }
    );
    assert_eq!(
        map.cluster(Some(&[L2_ZERO | 0x2_0000]), 0).unwrap(),
        Cluster::Zero
    );
    assert_eq!(
        map.cluster(Some(&[0x2_0000]), 0).unwrap(),
        Cluster::Data(0x2_0000)
    );
    assert!(map.cluster(Some(&[0x2_0200]), 0).is_err());
    assert_eq!(map.cluster(None, 0).unwrap(), Cluster::Zero);
}
