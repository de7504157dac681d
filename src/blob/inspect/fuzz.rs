//! Property tests standing in for a fuzzer (cargo-fuzz needs nightly): real qemu-img images,
//! mutated where the headers are, truncated, fed in chunks of every size; and random bytes
//! behind every magic. Nothing may panic, chunking must not change the answer, and the work
//! must stay linear. `PROPTEST_CASES` raises the number of cases (default 64).

use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(64)
}

fn runner() -> TestRunner {
    TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    })
}

/// Named images.
type Corpus = Vec<(String, Vec<u8>)>;

/// Real images made by qemu-img, or None (with the reason printed) when it is missing.
fn corpus() -> Option<&'static [(String, Vec<u8>)]> {
    static CORPUS: OnceLock<Option<Corpus>> = OnceLock::new();
    CORPUS
        .get_or_init(|| {
            if Command::new("qemu-img").arg("--version").output().is_err() {
                eprintln!("skipping qemu-img images: qemu-img is not installed");
                return None;
            }
            let dir = tempfile::tempdir().ok()?;
            Some(make_corpus(dir.path()))
        })
        .as_deref()
}

fn make_corpus(dir: &Path) -> Corpus {
    let raw = dir.join("source.raw");
    let mut data = vec![0u8; 1 << 20];
    for (index, byte) in data.iter_mut().enumerate().step_by(4093) {
        *byte = (index % 251) as u8;
    }
    std::fs::write(&raw, &data).unwrap();
    let base = dir.join("base.qcow2");
    let variants: &[(&str, &[&str])] = &[
        ("qcow2", &["-O", "qcow2"]),
        ("qcow2-v2", &["-O", "qcow2", "-o", "compat=0.10"]),
        ("vmdk", &["-O", "vmdk"]),
        (
            "vmdk-stream",
            &["-O", "vmdk", "-o", "subformat=streamOptimized"],
        ),
        ("vpc", &["-O", "vpc"]),
        ("vpc-fixed", &["-O", "vpc", "-o", "subformat=fixed"]),
        ("vhdx", &["-O", "vhdx"]),
        ("vdi", &["-O", "vdi"]),
        ("qed", &["-O", "qed"]),
    ];
    let mut corpus = vec![("raw".to_string(), data.clone())];
    for (name, args) in variants {
        let out = dir.join(format!("{name}.img"));
        let made = Command::new("qemu-img")
            .args(["convert", "-q", "-f", "raw"])
            .args(*args)
            .arg(&raw)
            .arg(&out)
            .status()
            .is_ok_and(|status| status.success());
        if made && let Ok(bytes) = std::fs::read(&out) {
            corpus.push((name.to_string(), bytes));
        }
    }
    let backed = dir.join("backed.qcow2");
    let made = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("1M")
        .status()
        .is_ok_and(|status| status.success())
        && Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&backed)
            .status()
            .is_ok_and(|status| status.success());
    if made && let Ok(bytes) = std::fs::read(&backed) {
        corpus.push(("qcow2-backed".into(), bytes));
    }
    corpus
}

fn chunked(bytes: &[u8], size: usize) -> Inspection {
    let mut inspector = Inspector::new();
    for chunk in bytes.chunks(size.max(1)) {
        inspector.feed(chunk);
    }
    assert!(inspector.held() <= capture::CAPTURE_CAP + capture::TAIL_SIZE);
    inspector.finish()
}

fn exercise(bytes: &[u8], chunk: usize) -> Result<(), TestCaseError> {
    let whole = inspect_bytes(bytes);
    let pieces = chunked(bytes, chunk);
    prop_assert_eq!(&whole, &pieces);
    for (disk, container) in [
        ("raw", "bare"),
        ("qcow2", "bare"),
        ("ami", "bare"),
        ("vmdk", "ovf"),
    ] {
        let _ = check_upload(disk, container, &whole);
    }
    Ok(())
}

#[test]
fn corpus_images_are_recognized() {
    let Some(corpus) = corpus() else { return };
    for (name, bytes) in corpus {
        let inspection = inspect_bytes(bytes);
        let expected = match name.as_str() {
            "qcow2" | "qcow2-v2" | "qcow2-backed" => "qcow2",
            "vmdk" | "vmdk-stream" => "vmdk",
            "vpc" | "vpc-fixed" => "vhd",
            other => other,
        };
        assert_eq!(inspection.format, expected, "{name}");
        assert_eq!(
            inspection.unsafe_reason.is_some(),
            matches!(name.as_str(), "qcow2-backed" | "qed"),
            "{name}: {inspection:?}"
        );
        if !matches!(name.as_str(), "qed" | "raw") {
            // vpc rounds the size to its CHS geometry.
            let size = inspection.virtual_size.unwrap_or(0);
            assert!(
                (1 << 20..(1 << 20) + (1 << 16)).contains(&size),
                "{name}: {size}"
            );
        }
    }
}

#[test]
fn mutated_images_never_panic_and_chunking_does_not_matter() {
    let Some(corpus) = corpus() else { return };
    let mutation = (0u8..3, any::<u32>(), any::<u8>());
    let strategy = (
        0..corpus.len(),
        prop::collection::vec(mutation, 0..24),
        prop::option::of(any::<u32>()),
        prop_oneof![1usize..600, 600usize..70_000, Just(1 << 20)],
    );
    let started = Instant::now();
    runner()
        .run(&strategy, |(index, mutations, truncate, chunk)| {
            let mut bytes = corpus[index].1.clone();
            let length = bytes.len();
            for (place, offset, value) in mutations {
                let offset = offset as usize;
                let at = match place {
                    0 => offset % 4096.min(length),
                    1 => offset % length,
                    _ => length - 1 - offset % 2048.min(length),
                };
                bytes[at] = value;
            }
            if let Some(cut) = truncate {
                bytes.truncate(cut as usize % (length + 1));
            }
            // One-byte chunks over megabytes are slow in a debug build; keep them short.
            let chunk = if chunk < 64 {
                chunk.max(bytes.len() / 65_536)
            } else {
                chunk
            };
            exercise(&bytes, chunk)
        })
        .unwrap();
    eprintln!(
        "mutated images: {} cases in {:?}",
        cases(),
        started.elapsed()
    );
}

const MAGICS: &[&[u8]] = &[
    b"QFI\xfb",
    b"QED\0",
    b"KDMV",
    b"vhdxfile",
    b"conectix",
    b"LUKS\xba\xbe",
    b"# Disk DescriptorFile\ncreateType=\"monolithicSparse\"\n",
    b"",
];

#[test]
fn random_bytes_never_panic() {
    let strategy = (
        0..MAGICS.len(),
        prop::collection::vec(any::<u8>(), 0..6000),
        prop::option::of(0u8..4),
        1usize..3000,
    );
    let started = Instant::now();
    runner()
        .run(&strategy, |(magic, tail, extra, chunk)| {
            let mut bytes = MAGICS[magic].to_vec();
            bytes.extend_from_slice(&tail);
            // Sometimes put the random bytes where later regions live.
            match extra {
                Some(0) => {
                    bytes.resize(32 * 1024 + 1, 0);
                    bytes.extend_from_slice(b"CD001");
                    bytes.extend_from_slice(&tail);
                }
                Some(1) => {
                    bytes.resize(192 * 1024, 0);
                    bytes.extend_from_slice(b"regi");
                    bytes.extend_from_slice(&tail);
                }
                Some(2) => {
                    bytes.resize(512, 0);
                    bytes[446..462]
                        .copy_from_slice(&[0, 0, 2, 0, 0xEE, 0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0]);
                    bytes[510] = 0x55;
                    bytes[511] = 0xAA;
                    bytes.extend_from_slice(b"EFI PART");
                    bytes.extend_from_slice(&tail);
                }
                _ => {}
            }
            exercise(&bytes, chunk)
        })
        .unwrap();
    eprintln!("random bytes: {} cases in {:?}", cases(), started.elapsed());
}

/// Time to inspect `bytes` in chunks of `chunk`.
fn timed(bytes: &[u8], chunk: usize) -> Duration {
    let started = Instant::now();
    let _ = chunked(bytes, chunk);
    started.elapsed()
}

/// The worst inputs for the region machinery (text keeps the descriptor region open for a
/// MiB, a vhdx header keeps the chain open) take time proportional to their size.
#[test]
fn work_is_linear() {
    let mut text = b"# Disk DescriptorFile\n".to_vec();
    text.resize(16 << 20, b' ');
    let mut vhdx = b"vhdxfile".to_vec();
    vhdx.resize(16 << 20, 0);
    for (name, input) in [("text", text), ("vhdx", vhdx)] {
        for chunk in [1usize << 10, 64 << 10] {
            let small = timed(&input[..1 << 20], chunk).max(Duration::from_micros(200));
            let large = timed(&input, chunk);
            eprintln!("{name} in {chunk}-byte chunks: 1 MiB {small:?}, 16 MiB {large:?}");
            assert!(
                large < small * 16 * 4,
                "{name}: 16 MiB took {large:?}, 1 MiB {small:?}"
            );
        }
        // Byte by byte through the captured regions: a bounded cost per byte.
        let started = Instant::now();
        let _ = chunked(&input[..1 << 20], 1);
        let per_byte = started.elapsed() / (1 << 20);
        eprintln!("{name} byte by byte: {per_byte:?} per byte");
        assert!(per_byte < Duration::from_micros(20), "{name}: {per_byte:?}");
    }
}
