//! Issue 10: the operator's commands as an operator runs them (the real binary), on a stopped
//! server's data directory and through a running one.

use std::path::{Path, PathBuf};

use reqwest::StatusCode;
use serde_json::Value;

use crate::common::{Server, files_under, random_bytes};

/// Runs `ocellus ARGS` with no `OCELLUS_*` variables; returns exit code, stdout and stderr.
pub async fn ocellus(args: Vec<String>) -> (i32, String, String) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ocellus"));
    command.args(args);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OCELLUS_") {
            command.env_remove(name);
        }
    }
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("the ocellus binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn args(words: &[&str], paths: &[&Path]) -> Vec<String> {
    words
        .iter()
        .map(|word| (*word).to_owned())
        .chain(paths.iter().map(|path| path.display().to_string()))
        .collect()
}

fn blob_path(data: &Path, hex: &str) -> PathBuf {
    data.join("blobs")
        .join(&hex[0..2])
        .join(&hex[2..4])
        .join(hex)
}

/// Uploads `count` images of distinct random bytes; returns (id, bytes) pairs.
async fn images(server: &Server, count: usize, size: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut made = Vec::new();
    for index in 0..count {
        let id = server.create_raw().await;
        // random_bytes ignores the seed's lowest bit.
        let bytes = random_bytes(size, seed + 2 * index as u64);
        assert_eq!(
            server.upload(&id, bytes.clone()).await,
            StatusCode::NO_CONTENT
        );
        made.push((id, bytes));
    }
    made
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_damage_missing_and_orphans_and_repair_fixes_what_it_can() {
    let server = Server::start().await;
    let made = images(&server, 3, 100_000, 40).await;
    let dir = server.stop().await;
    let data = dir.path().join("data");
    let (code, out, err) = ocellus(args(&["check", "--data-dir"], &[&data])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("3 blobs (3 verified, 300000 bytes)"), "{out}");
    assert!(out.trim_end().ends_with("consistent"), "{out}");

    let digest = |bytes: &[u8]| blake3::hash(bytes).to_hex().to_string();
    // A flipped byte in the first, the second's blob deleted, and an orphan beside them.
    let damaged = blob_path(&data, &digest(&made[0].1));
    let mut rotten = std::fs::read(&damaged).unwrap();
    rotten[50_000] ^= 2;
    std::fs::write(&damaged, rotten).unwrap();
    let missing = blob_path(&data, &digest(&made[1].1));
    std::fs::remove_file(&missing).unwrap();
    let orphan_bytes = random_bytes(40_000, 99);
    let orphan = blob_path(&data, &digest(&orphan_bytes));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, &orphan_bytes).unwrap();

    let (code, out, _) = ocellus(args(&["check", "--data-dir"], &[&data])).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("problem: blob {} is damaged", digest(&made[0].1))),
        "{out}"
    );
    assert!(
        out.contains(&format!("problem: blob {} is missing", digest(&made[1].1))),
        "{out}"
    );
    assert!(
        out.contains(&format!("blob {} is not referenced", digest(&orphan_bytes))),
        "{out}"
    );

    let (code, out, _) = ocellus(args(
        &["check", "--repair", "--json", "--data-dir"],
        &[&data],
    ))
    .await;
    assert_eq!(
        code, 1,
        "damage and a missing blob cannot be repaired: {out}"
    );
    let report: Value = serde_json::from_str(&out).unwrap();
    let repaired = report["repaired"].to_string();
    assert!(repaired.contains("moved to quarantine"), "{report}");
    assert!(!orphan.exists());
    assert_eq!(report["quarantined"], 1);
    assert_eq!(report["problems"].as_array().unwrap().len(), 2, "{report}");

    // The damaged image refuses downloads; the others serve.
    let server = Server::start_in(dir, |_| {}).await;
    assert_eq!(
        server.download(&made[0].0).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(
        server.download(&made[2].0).await,
        (StatusCode::OK, made[2].1.clone())
    );
    // Good bytes again (an upload of the same data) heal the first.
    let again = server.create_raw().await;
    assert_eq!(
        server.upload(&again, made[0].1.clone()).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server.download(&made[0].0).await,
        (StatusCode::OK, made[0].1.clone())
    );
    // Through the running server, `check` sees the same store (only the missing blob left).
    let (code, out, err) = ocellus(args(&["check", "--url", &server.base], &[])).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        out.contains("is missing") && !out.contains("damaged"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_removes_quarantine_past_its_grace_and_says_so_first() {
    let server = Server::start_with(|config| {
        config.store.quarantine_grace = std::time::Duration::ZERO;
    })
    .await;
    images(&server, 1, 50_000, 7).await;
    let dir = server.stop().await;
    let data = dir.path().join("data");
    for (index, size) in [(0u64, 30_000usize), (1, 20_000)] {
        let bytes = random_bytes(size, 500 + 2 * index);
        let hex = blake3::hash(&bytes).to_hex().to_string();
        std::fs::write(data.join("quarantine").join(hex), bytes).unwrap();
    }
    std::fs::write(data.join("tmp").join("left.part"), vec![0u8; 1234]).unwrap();
    // With the default grace (7 days) nothing in quarantine is old enough.
    let (code, out, _) = ocellus(args(&["gc", "--dry-run", "--data-dir"], &[&data])).await;
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "would remove 0 quarantined blobs past their grace (0 bytes) and 1 stale temp files (1234 bytes)"
    );
    // The grace comes from the config (here a file saying 0 days).
    let config = dir.path().join("ocellus.toml");
    std::fs::write(&config, "quarantine_days = 0\n").unwrap();
    let (code, out, _) = ocellus(args(
        &["gc", "--dry-run", "--config"],
        &[&config, Path::new("--data-dir"), &data],
    ))
    .await;
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        "would remove 2 quarantined blobs past their grace (50000 bytes) and 1 stale temp files (1234 bytes)"
    );
    assert_eq!(files_under(&data.join("quarantine")).len(), 2);
    let (code, out, _) = ocellus(args(
        &["gc", "--json", "--config"],
        &[&config, Path::new("--data-dir"), &data],
    ))
    .await;
    assert_eq!(code, 0);
    let report: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["quarantine"]["count"], 2);
    assert_eq!(report["temps"]["bytes"], 1234);
    assert!(files_under(&data.join("quarantine")).is_empty());
    assert!(files_under(&data.join("tmp")).is_empty());
}

/// A backup taken while uploads run restores into a fresh directory with every image it
/// names, byte for byte; `stats` agrees before and after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_while_uploading_then_restore_keeps_every_image_and_byte() {
    let server = Server::start().await;
    let before = images(&server, 4, 256 * 1024, 60).await;
    // Uploads keep running while the backup is taken.
    let base = server.base.clone();
    let uploading = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut made = Vec::new();
        for index in 0..6u64 {
            let created: Value = client
                .post(format!("{base}/v2/images"))
                .json(&serde_json::json!({"name": "during", "disk_format": "raw", "container_format": "bare"}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let id = created["id"].as_str().unwrap().to_owned();
            let bytes = random_bytes(1 << 20, 900 + 2 * index);
            let status = client
                .put(format!("{base}/v2/images/{id}/file"))
                .header("content-type", "application/octet-stream")
                .body(bytes.clone())
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::NO_CONTENT);
            made.push((id, bytes));
        }
        made
    });
    // And one image is deleted meanwhile: its blob must survive in the backup if named.
    assert_eq!(server.delete(&before[3].0).await, StatusCode::NO_CONTENT);
    let target = tempfile::tempdir().unwrap();
    let backup = target.path().join("backup");
    let (code, out, err) = ocellus(args(&["backup", "--url", &server.base], &[&backup])).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("backed up"), "{out}");
    let during = uploading.await.unwrap();
    let (code, stats_out, _) = ocellus(args(&["stats", "--url", &server.base], &[])).await;
    assert_eq!(code, 0);
    assert!(stats_out.contains("images: 9"), "{stats_out}");
    // The staging copy in the data directory is gone.
    assert!(files_under(&server.data_dir().join("backups")).is_empty());
    server.stop().await;

    let restored = target.path().join("restored");
    let (code, out, err) = ocellus(args(&["restore", "--data-dir"], &[&restored, &backup])).await;
    assert_eq!(code, 0, "{out}{err}");
    // Restoring twice into the same directory is refused.
    let (code, _, err) = ocellus(args(&["restore", "--data-dir"], &[&restored, &backup])).await;
    assert_eq!(code, 2);
    assert!(err.contains("not empty"), "{err}");

    let (code, out, _) = ocellus(args(&["check", "--data-dir"], &[&restored])).await;
    assert_eq!(code, 0, "{out}");
    let server = Server::start_in(tempfile::tempdir().unwrap(), |config| {
        config.data_dir = restored.clone()
    })
    .await;
    for (id, bytes) in &before[..3] {
        assert_eq!(&server.download(id).await, &(StatusCode::OK, bytes.clone()));
    }
    assert_eq!(server.show(&before[3].0).await.0, StatusCode::NOT_FOUND);
    // Uploads that finished before the snapshot are there whole; the others are not, or are
    // queued again (cut mid-way): never active with other bytes.
    for (id, bytes) in &during {
        let (status, shown) = server.show(id).await;
        if status == StatusCode::OK && shown["status"] == "active" {
            assert_eq!(&server.download(id).await, &(StatusCode::OK, bytes.clone()));
        } else {
            assert!(
                status == StatusCode::NOT_FOUND || shown["status"] == "queued",
                "{shown}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_backup_is_refused_on_restore() {
    let server = Server::start().await;
    let made = images(&server, 2, 64 * 1024, 3).await;
    let dir = server.stop().await;
    let data = dir.path().join("data");
    let backup = dir.path().join("backup");
    let (code, out, err) = ocellus(args(&["backup", "--data-dir"], &[&data, &backup])).await;
    assert_eq!(code, 0, "{out}{err}");
    // Hard links share the inode: damage the backup's copy through a fresh file instead.
    let hex = blake3::hash(&made[1].1).to_hex().to_string();
    let path = blob_path(&backup, &hex);
    let mut bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let restored = dir.path().join("restored");
    let (code, _, err) = ocellus(args(&["restore", "--data-dir"], &[&restored, &backup])).await;
    assert_eq!(code, 2);
    assert!(err.contains("do not match its digest"), "{err}");
}
