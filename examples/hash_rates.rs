//! Single-core hashing rates of the crates ocellus uses (md-5, sha2, blake3), on a file, for
//! the benchmark's "machine limits". Each rate is the best of three passes, since a limit is
//! what the machine can do when nothing disturbs it. Prints one JSON object of MB/s (10^6 bytes
//! per second).
//!
//! Usage: `cargo run --release --example hash_rates -- FILE`

use std::io::Read;
use std::time::Instant;

fn rate(path: &str, mut update: impl FnMut(&[u8])) -> f64 {
    let mut file = std::fs::File::open(path).expect("the input file opens");
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0usize;
    let started = Instant::now();
    loop {
        let read = file.read(&mut buffer).expect("the input file reads");
        if read == 0 {
            break;
        }
        update(&buffer[..read]);
        total += read;
    }
    total as f64 / started.elapsed().as_secs_f64() / 1e6
}

/// The best of three passes, each with a fresh hasher.
fn best_rate<H>(path: &str, new: impl Fn() -> H, update: impl Fn(&mut H, &[u8])) -> f64 {
    (0..3)
        .map(|_| {
            let mut hasher = new();
            rate(path, |chunk| update(&mut hasher, chunk))
        })
        .fold(0.0, f64::max)
}

fn main() {
    let path = std::env::args().nth(1).expect("usage: hash_rates FILE");
    // Read once so that every hash sees the file from the page cache.
    rate(&path, |_| {});
    let md5_rate = best_rate(&path, <md5::Md5 as md5::Digest>::new, |hasher, chunk| {
        md5::Digest::update(hasher, chunk)
    });
    let sha512_rate = best_rate(
        &path,
        <sha2::Sha512 as sha2::Digest>::new,
        |hasher, chunk| sha2::Digest::update(hasher, chunk),
    );
    let blake3_rate = best_rate(&path, blake3::Hasher::new, |hasher, chunk| {
        hasher.update(chunk);
    });
    println!(
        "{{\"md5\": {md5_rate:.1}, \"sha512\": {sha512_rate:.1}, \"blake3\": {blake3_rate:.1}}}"
    );
}
