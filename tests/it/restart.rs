//! Durability: images and bytes survive a restart; a crash's leftovers are repaired at start.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{Server, random_bytes};
use ocellus::store::{ImageId, ImageStatus, MetadataError, Store};

#[tokio::test]
async fn restart_keeps_every_image_and_byte() {
    let server = Server::start().await;
    let mut images = Vec::new();
    for index in 0..5u64 {
        let image = server
            .create(
                json!({"name": format!("keep-{index}"), "disk_format": "raw",
                                         "container_format": "bare", "tags": ["t"], "p": "v"}),
            )
            .await;
        let id = image["id"].as_str().unwrap().to_owned();
        let bytes = random_bytes(100_000 + index as usize, index);
        assert_eq!(
            server.upload(&id, bytes.clone()).await,
            StatusCode::NO_CONTENT
        );
        images.push((id.clone(), server.show(&id).await.1, bytes));
    }
    let dir = server.stop().await;
    let server = Server::start_in(dir, |_| {}).await;
    for (id, before, bytes) in &images {
        let (status, after) = server.show(id).await;
        assert_eq!((status, &after), (StatusCode::OK, before));
        assert_eq!(server.download(id).await, (StatusCode::OK, bytes.clone()));
    }
    let (_, ids, _) = server.list_ids("").await;
    assert_eq!(ids.len(), 5);
}

#[tokio::test]
async fn startup_repairs_what_a_crash_leaves() {
    let server = Server::start().await;
    let image = server
        .create(json!({"disk_format": "raw", "container_format": "bare"}))
        .await;
    let id = image["id"].as_str().unwrap().to_owned();
    let kept = server
        .create(json!({"disk_format": "raw", "container_format": "bare"}))
        .await;
    let kept_id = kept["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server.upload(&kept_id, b"kept bytes".to_vec()).await,
        StatusCode::NO_CONTENT
    );
    let data_dir = server.data_dir();
    let dir = server.stop().await;

    // Simulate a crash mid-upload: the image in `saving`, a temp file, and a blob that was
    // renamed into place but never committed.
    {
        let store = Store::open_metadata(&data_dir).unwrap();
        let changed = store
            .update_image(ImageId::parse(&id).unwrap(), |record| {
                record.status = ImageStatus::Saving;
                Ok::<(), MetadataError>(())
            })
            .unwrap();
        assert!(changed.is_some());
    }
    std::fs::write(data_dir.join("tmp/0000.part"), b"half an upload").unwrap();
    let orphan = data_dir.join("blobs/ab/cd").join("abcd".repeat(16));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"never committed").unwrap();

    let server = Server::start_in(dir, |_| {}).await;
    assert_eq!(server.show(&id).await.1["status"], "queued");
    assert!(server.temp_files().is_empty());
    // The unreferenced blob is set aside, not deleted: it may belong to a newer database.
    assert!(!orphan.exists());
    assert!(data_dir.join("quarantine").join("abcd".repeat(16)).exists());
    assert_eq!(server.blob_files().len(), 1);
    assert_eq!(
        server.download(&kept_id).await,
        (StatusCode::OK, b"kept bytes".to_vec())
    );
    assert_eq!(
        server.upload(&id, b"second try".to_vec()).await,
        StatusCode::NO_CONTENT
    );
}

/// An operator restores an older database beside newer blobs: the blobs it does not know are
/// quarantined, not deleted, and come back when the newer database is put back.
#[tokio::test]
async fn a_restored_older_database_costs_no_bytes() {
    let server = Server::start().await;
    let old = server
        .create(json!({"disk_format": "raw", "container_format": "bare"}))
        .await;
    let old_id = old["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server.upload(&old_id, b"old bytes".to_vec()).await,
        StatusCode::NO_CONTENT
    );
    let data_dir = server.data_dir();
    let dir = server.stop().await;
    let database = data_dir.join(ocellus::DATABASE_FILE);
    let backup = dir.path().join("backup.redb");
    std::fs::copy(&database, &backup).unwrap();

    let server = Server::start_in(dir, |_| {}).await;
    let new = server
        .create(json!({"disk_format": "raw", "container_format": "bare"}))
        .await;
    let new_id = new["id"].as_str().unwrap().to_owned();
    let new_bytes = random_bytes(300_000, 7);
    assert_eq!(
        server.upload(&new_id, new_bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    let dir = server.stop().await;
    let newer = dir.path().join("newer.redb");
    std::fs::copy(&database, &newer).unwrap();

    // Restore the older database: the new image's blob is unknown to it.
    std::fs::copy(&backup, &database).unwrap();
    let server = Server::start_in(dir, |_| {}).await;
    assert_eq!(server.show(&new_id).await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.blob_files().len(), 1);
    let mut quarantined: Vec<String> = std::fs::read_dir(data_dir.join("quarantine"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    quarantined.sort();
    assert_eq!(quarantined.len(), 2, "{quarantined:?}");
    assert_eq!(
        format!("{}.obao", quarantined[0]),
        quarantined[1],
        "the newer blob waits in quarantine with its outboard"
    );
    let outboard = std::fs::read(data_dir.join("quarantine").join(&quarantined[1])).unwrap();
    let dir = server.stop().await;

    // Put the newer database back: its blob returns from quarantine, whole.
    std::fs::copy(&newer, &database).unwrap();
    let server = Server::start_in(dir, |_| {}).await;
    let outboards = server.outboard_files();
    assert_eq!(outboards.len(), 1);
    assert_eq!(std::fs::read(&outboards[0]).unwrap(), outboard);
    assert_eq!(server.download(&new_id).await, (StatusCode::OK, new_bytes));
    assert_eq!(
        server.download(&old_id).await,
        (StatusCode::OK, b"old bytes".to_vec())
    );
    assert_eq!(
        std::fs::read_dir(data_dir.join("quarantine"))
            .unwrap()
            .count(),
        0
    );
}

/// Quarantined blobs are removed once their grace period is over, not before.
#[tokio::test]
async fn quarantine_expires_after_its_grace() {
    let server = Server::start().await;
    let data_dir = server.data_dir();
    let dir = server.stop().await;
    let orphan = data_dir.join("blobs/ab/cd").join("abcd".repeat(16));
    std::fs::create_dir_all(orphan.parent().unwrap()).unwrap();
    std::fs::write(&orphan, b"unknown").unwrap();
    std::fs::write(orphan.with_extension("obao"), [0; 64]).unwrap();
    let server = Server::start_in(dir, |_| {}).await;
    let parked = data_dir.join("quarantine").join("abcd".repeat(16));
    assert!(parked.exists());
    assert!(
        parked.with_extension("obao").exists(),
        "the outboard goes along"
    );
    assert!(server.outboard_files().is_empty());
    let dir = server.stop().await;
    // A zero grace: the next start collects it.
    let server = Server::start_in(dir, |config| {
        config.store.quarantine_grace = std::time::Duration::ZERO;
    })
    .await;
    assert!(!parked.exists());
    assert!(!parked.with_extension("obao").exists());
    server.stop().await;
}
