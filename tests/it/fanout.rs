//! Many downloads of one image at once: the reads they share are verified, and a byte that
//! rots on disk while they run is never part of a cleanly ended response.

use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};

use crate::common::{Server, random_bytes};

const SIZE: usize = 16 << 20;
/// The rot test's image: large enough that the damage lies well beyond what the server has
/// read ahead for every client when it happens.
const ROT_SIZE: usize = 48 << 20;

/// Downloads `range` (or the whole image) slowly; `Ok` only for a cleanly ended response.
async fn slow_download(
    server: &Server,
    id: &str,
    range: Option<(usize, usize)>,
    pause: std::time::Duration,
    arrived: &AtomicUsize,
) -> Result<Vec<u8>, String> {
    // Counted once this download has its first 256 KiB, or has ended.
    let mut counted = false;
    let count = |counted: &mut bool| {
        if !*counted {
            *counted = true;
            arrived.fetch_add(1, Ordering::SeqCst);
        }
    };
    let mut request = server.request(Method::GET, &format!("/v2/images/{id}/file"));
    if let Some((start, end)) = range {
        request = request.header("Range", format!("bytes={start}-{}", end - 1));
    }
    let response = request.send().await.map_err(|error| {
        count(&mut counted);
        error.to_string()
    })?;
    let expected = if range.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    assert_eq!(response.status(), expected);
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            count(&mut counted);
            error.to_string()
        })?;
        body.extend_from_slice(&chunk);
        if body.len() >= 256 * 1024 {
            count(&mut counted);
        }
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    count(&mut counted);
    Ok(body)
}

/// A server holding one active image of `size` random bytes (from `seed`): its id and bytes.
async fn server_with_image(size: usize, seed: u64) -> (Server, String, Vec<u8>) {
    let server = Server::start().await;
    let bytes = random_bytes(size, seed);
    let id = server.create_raw().await;
    assert_eq!(
        server.upload(&id, bytes.clone()).await,
        StatusCode::NO_CONTENT
    );
    (server, id, bytes)
}

/// The ranges the 32 downloads ask for: 16 whole, 16 ranges of all sizes and alignments.
fn ranges(size: usize) -> Vec<Option<(usize, usize)>> {
    let mut ranges: Vec<Option<(usize, usize)>> = vec![None; 16];
    for index in 0..16usize {
        let start = (index * 1_048_573 + 7_919 * index * index) % (size - 1);
        let length = 1 + (index * 524_287 + 12_345) % (size / 3);
        ranges.push(Some((start, (start + length).min(size))));
    }
    ranges
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_whole_and_ranged_downloads_get_the_right_bytes() {
    let (server, id, bytes) = server_with_image(SIZE, 18).await;
    let arrived = AtomicUsize::new(0);
    let downloads = ranges(SIZE).into_iter().map(|range| {
        let (server, id, arrived) = (&server, &id, &arrived);
        async move {
            let got = slow_download(server, id, range, std::time::Duration::ZERO, arrived).await;
            (range, got)
        }
    });
    for (range, got) in futures_util::future::join_all(downloads).await {
        let got = got.unwrap_or_else(|error| panic!("{range:?}: {error}"));
        let (start, end) = range.unwrap_or((0, SIZE));
        assert!(got == bytes[start..end], "{range:?}: wrong bytes");
    }
    // The downloads shared their reads: alone, the 16 whole ones would have read the image's
    // 64 reads of 256 KiB each 16 times.
    let metrics = server.metrics().await;
    let (reads, shared) = (
        metrics.get("ocellus_download_reads"),
        metrics.get("ocellus_download_shared_reads"),
    );
    assert!(
        shared > reads && reads < 400.0,
        "{reads} reads, {shared} shared"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_byte_rotting_during_a_fan_out_never_ends_a_response_cleanly() {
    let (server, id, bytes) = server_with_image(ROT_SIZE, 19).await;
    let blob = server.blob_files().pop().unwrap();
    let flipped_at = ROT_SIZE - 8 * 1_048_576 + 4_321;
    let arrived = AtomicUsize::new(0);
    let downloads = ranges(ROT_SIZE).into_iter().map(|range| {
        let (server, id, arrived) = (&server, &id, &arrived);
        async move {
            // Slow clients: the damage comes while every whole download is still reading.
            let pause = std::time::Duration::from_millis(2);
            let got = slow_download(server, id, range, pause, arrived).await;
            (range, got)
        }
    });
    let flip = async {
        // Once every download has begun (or ended), far from the damaged byte.
        while arrived.load(Ordering::SeqCst) < 32 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
        // In place, as rot would be: one byte, the rest of the file untouched.
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().write(true).open(&blob).unwrap();
        file.write_all_at(&[bytes[flipped_at] ^ 0x40], flipped_at as u64)
            .unwrap();
    };
    let (results, ()) = tokio::join!(futures_util::future::join_all(downloads), flip);
    let mut failed = 0;
    for (range, got) in results {
        let (start, end) = range.unwrap_or((0, ROT_SIZE));
        match got {
            // A clean end: exactly the stored bytes, never the rotten one.
            Ok(got) => assert!(got == bytes[start..end], "{range:?}: bytes that differ"),
            Err(_) => {
                // Reads are checked in whole 16 KiB groups.
                let group = 16_384;
                let covered = start / group * group..end.div_ceil(group) * group;
                assert!(
                    covered.contains(&flipped_at),
                    "{range:?} failed without covering the flipped byte's group"
                );
                failed += 1;
            }
        }
    }
    // Every whole download covers the flipped byte and read it after the flip.
    assert!(failed >= 16, "only {failed} downloads failed");
}
