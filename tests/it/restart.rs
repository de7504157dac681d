//! Durability: images and bytes survive a restart; a crash's leftovers are repaired at start.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{Server, random_bytes};
use ocellus::kv::{ImageId, ImageStatus, Kv};

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
        let kv = Kv::open(&data_dir.join("ocellus.redb")).unwrap();
        let changed = kv
            .update_image(ImageId::parse(&id).unwrap(), |record| {
                record.status = ImageStatus::Saving;
                Ok::<(), ocellus::kv::KvError>(())
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
    assert!(!orphan.exists());
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
