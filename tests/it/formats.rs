//! Format inspection on upload, over a corpus made by the real qemu-img: each image uploaded
//! declared `raw` and declared as itself. Accepted ones become active with Glance's
//! virtual_size; refused ones answer 415 (Glance's code), go back to `queued` and leave no
//! file behind.

use std::path::Path;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::{Server, random_bytes};

fn qemu_img(args: &[&str]) -> bool {
    Command::new("qemu-img")
        .args(args)
        .status()
        .is_ok_and(|status| status.success())
}

/// qemu-img's own idea of the virtual size.
fn qemu_virtual_size(path: &Path) -> u64 {
    let output = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(path)
        .output()
        .unwrap();
    let info: Value = serde_json::from_slice(&output.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

struct Case {
    name: &'static str,
    /// The disk_format it is declared as besides raw (None: raw only).
    format: Option<&'static str>,
    bytes: Vec<u8>,
    /// Virtual size recorded when declared as itself; None: refused.
    virtual_size: Option<u64>,
}

fn corpus(dir: &Path) -> Vec<Case> {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let source = path("source.raw");
    std::fs::write(&source, random_bytes(1 << 20, 11)).unwrap();
    let convert = |name: &str, args: &[&str]| {
        let out = path(name);
        let mut all = vec!["convert", "-q", "-f", "raw"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[source.as_str(), out.as_str()]);
        assert!(qemu_img(&all), "qemu-img convert {name}");
        out
    };
    let sized = |file: &str, format: &'static str, name: &'static str| Case {
        name,
        format: Some(format),
        bytes: std::fs::read(file).unwrap(),
        virtual_size: Some(qemu_virtual_size(Path::new(file))),
    };
    let mut cases = vec![
        sized(&convert("clean.qcow2", &["-O", "qcow2"]), "qcow2", "qcow2"),
        sized(
            &convert("sparse.vmdk", &["-O", "vmdk"]),
            "vmdk",
            "vmdk monolithicSparse",
        ),
        sized(
            &convert(
                "stream.vmdk",
                &["-O", "vmdk", "-o", "subformat=streamOptimized"],
            ),
            "vmdk",
            "vmdk streamOptimized",
        ),
        sized(&convert("image.vhdx", &["-O", "vhdx"]), "vhdx", "vhdx"),
        sized(&convert("image.vdi", &["-O", "vdi"]), "vdi", "vdi"),
    ];
    // VHD: Glance records the footer's original size (qemu-img rounds to a CHS geometry).
    for (name, file, args) in [
        ("vhd dynamic", "dynamic.vhd", &["-O", "vpc"][..]),
        (
            "vhd fixed",
            "fixed.vhd",
            &["-O", "vpc", "-o", "subformat=fixed"][..],
        ),
    ] {
        let bytes = std::fs::read(convert(file, args)).unwrap();
        let footer = if bytes.starts_with(b"conectix") {
            &bytes[..512]
        } else {
            &bytes[bytes.len() - 512..]
        };
        let size = u64::from_be_bytes(footer[40..48].try_into().unwrap());
        cases.push(Case {
            name,
            format: Some("vhd"),
            bytes,
            virtual_size: Some(size),
        });
    }
    cases.push(Case {
        name: "raw",
        format: None,
        bytes: std::fs::read(&source).unwrap(),
        virtual_size: Some(1 << 20),
    });
    cases.push(Case {
        name: "iso",
        format: Some("iso"),
        bytes: iso(),
        virtual_size: Some(64 * 2048),
    });
    cases.push(Case {
        name: "gpt disk",
        format: None,
        bytes: gpt_disk(),
        virtual_size: Some(2048 * 512),
    });

    // The unsafe ones.
    assert!(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "/etc/passwd",
        "-F",
        "raw",
        &path("backed.qcow2"),
        "1M",
    ]));
    let data_file = format!("data_file={}", path("external.raw"));
    assert!(qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &data_file,
        &path("external.qcow2"),
        "1M",
    ]));
    assert!(qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=monolithicFlat",
        &path("flat.vmdk"),
        "1M",
    ]));
    for (name, file, format) in [
        ("qcow2 with a backing file", "backed.qcow2", "qcow2"),
        (
            "qcow2 with an external data file",
            "external.qcow2",
            "qcow2",
        ),
        ("vmdk monolithicFlat descriptor", "flat.vmdk", "vmdk"),
    ] {
        cases.push(Case {
            name,
            format: Some(format),
            bytes: std::fs::read(path(file)).unwrap(),
            virtual_size: None,
        });
    }
    let mut truncated = std::fs::read(path("clean.qcow2")).unwrap();
    truncated.truncate(100);
    cases.push(Case {
        name: "qcow2 header fragment",
        format: Some("qcow2"),
        bytes: truncated,
        virtual_size: None,
    });
    cases
}

/// A minimal ISO 9660 image: an empty system area, then a primary volume descriptor.
fn iso() -> Vec<u8> {
    let mut image = vec![0u8; 64 * 2048];
    let descriptor = &mut image[32 * 1024..34 * 1024];
    descriptor[0] = 1;
    descriptor[1..6].copy_from_slice(b"CD001");
    descriptor[6] = 1;
    descriptor[80..84].copy_from_slice(&64u32.to_le_bytes());
    descriptor[84..88].copy_from_slice(&64u32.to_be_bytes());
    descriptor[128..130].copy_from_slice(&2048u16.to_le_bytes());
    descriptor[130..132].copy_from_slice(&2048u16.to_be_bytes());
    image[34 * 1024] = 255;
    image[34 * 1024 + 1..34 * 1024 + 6].copy_from_slice(b"CD001");
    image
}

/// A 1 MiB GPT disk: protective MBR, GPT header at LBA 1, one partition.
fn gpt_disk() -> Vec<u8> {
    let sectors: u64 = 2048;
    let mut disk = vec![0u8; sectors as usize * 512];
    let protective = &mut disk[446..462];
    protective[1..4].copy_from_slice(&[0, 2, 0]);
    protective[4] = 0xEE;
    protective[8..12].copy_from_slice(&1u32.to_le_bytes());
    protective[12..16].copy_from_slice(&(sectors as u32 - 1).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xAA;
    let header = &mut disk[512..604];
    header[..8].copy_from_slice(b"EFI PART");
    header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    header[12..16].copy_from_slice(&92u32.to_le_bytes());
    header[24..32].copy_from_slice(&1u64.to_le_bytes());
    header[32..40].copy_from_slice(&(sectors - 1).to_le_bytes());
    header[40..48].copy_from_slice(&34u64.to_le_bytes());
    header[48..56].copy_from_slice(&(sectors - 34).to_le_bytes());
    header[72..80].copy_from_slice(&2u64.to_le_bytes());
    header[80..84].copy_from_slice(&128u32.to_le_bytes());
    header[84..88].copy_from_slice(&128u32.to_le_bytes());
    let entry = &mut disk[1024..1152];
    entry[..16].copy_from_slice(&[0xAF; 16]);
    entry[16..32].copy_from_slice(&[0x42; 16]);
    entry[32..40].copy_from_slice(&34u64.to_le_bytes());
    entry[40..48].copy_from_slice(&(sectors - 40).to_le_bytes());
    disk
}

/// Uploads `bytes` as a new image and checks the outcome.
async fn upload(
    server: &Server,
    case: &str,
    disk_format: &str,
    container_format: &str,
    bytes: &[u8],
    expected: Option<u64>,
) {
    let image = server
        .create(
            json!({"name": case, "disk_format": disk_format, "container_format": container_format}),
        )
        .await;
    let id = image["id"].as_str().unwrap();
    let blobs_before = server.blob_files().len();
    let status = server.upload(id, bytes.to_vec()).await;
    let (_, shown) = server.show(id).await;
    let label = format!("{case} as {disk_format}/{container_format}");
    match expected {
        Some(virtual_size) => {
            assert_eq!(status, StatusCode::NO_CONTENT, "{label}");
            assert_eq!(shown["status"], "active", "{label}");
            assert_eq!(shown["virtual_size"], virtual_size, "{label}");
        }
        None => {
            assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{label}");
            assert_eq!(shown["status"], "queued", "{label}");
            assert_eq!(shown["virtual_size"], Value::Null, "{label}");
            assert_eq!(server.blob_files().len(), blobs_before, "{label}");
        }
    }
    assert!(server.temp_files().is_empty(), "{label}");
}

#[tokio::test]
async fn qemu_img_corpus_declared_raw_and_as_itself() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("skipping: qemu-img is not installed");
        return;
    }
    let server = Server::start().await;
    let cases = corpus(server.dir.path());
    for case in &cases {
        // Declared raw: a safe image of any format is kept, sized as raw data (Glance).
        let as_raw = case.virtual_size.map(|_| case.bytes.len() as u64);
        upload(&server, case.name, "raw", "bare", &case.bytes, as_raw).await;
        if let Some(format) = case.format {
            upload(
                &server,
                case.name,
                format,
                "bare",
                &case.bytes,
                case.virtual_size,
            )
            .await;
        }
    }
    // Glance does not inspect other containers; ocellus still refuses unsafe data in them.
    let backed = cases
        .iter()
        .find(|case| case.name == "qcow2 with a backing file")
        .unwrap();
    upload(&server, backed.name, "qcow2", "ovf", &backed.bytes, None).await;
    let clean = cases.iter().find(|case| case.name == "qcow2").unwrap();
    // A clean image in another container: accepted, and no virtual_size (Glance records none).
    let image = server
        .create(json!({"disk_format": "qcow2", "container_format": "ova"}))
        .await;
    let id = image["id"].as_str().unwrap();
    assert_eq!(
        server.upload(id, clean.bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.show(id).await.1["virtual_size"], Value::Null);
}

#[tokio::test]
async fn mismatches_answer_415_with_glances_message() {
    if Command::new("qemu-img").arg("--version").output().is_err() {
        eprintln!("skipping: qemu-img is not installed");
        return;
    }
    let server = Server::start().await;
    let cases = corpus(server.dir.path());
    let clean = cases.iter().find(|case| case.name == "qcow2").unwrap();
    // Random bytes declared qcow2: Glance's exact words (reference capture 63/66).
    let image = server
        .create(json!({"disk_format": "qcow2", "container_format": "bare"}))
        .await;
    let id = image["id"].as_str().unwrap();
    let response = server
        .request(reqwest::Method::PUT, &format!("/v2/images/{id}/file"))
        .header("Content-Type", "application/octet-stream")
        .header("Accept", "application/json")
        .body(random_bytes(65_536, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let body = response.text().await.unwrap();
    assert!(
        body.contains("Image disk_format qcow2 does not match stream data raw"),
        "{body}"
    );
    // A qcow2 declared as another specific format, and as formats Glance cannot inspect.
    for format in ["vmdk", "vhd", "iso", "ami", "ploop"] {
        upload(&server, "qcow2", format, "bare", &clean.bytes, None).await;
    }
    // A partitioned disk declared iso is a mismatch too; random data as ami is accepted.
    upload(&server, "gpt disk", "iso", "bare", &gpt_disk(), None).await;
    let image = server
        .create(json!({"disk_format": "ami", "container_format": "bare"}))
        .await;
    let id = image["id"].as_str().unwrap();
    assert_eq!(
        server.upload(id, random_bytes(4096, 5)).await,
        StatusCode::NO_CONTENT
    );
    assert!(server.temp_files().is_empty());
}
