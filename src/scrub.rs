//! The background scrub: every `scrub_interval`, re-read every blob and check it against its
//! digest and outboard, at most `scrub_rate` bytes per second, pausing while transfers run.
//!
//! Downloads already verify what they send; the scrub finds rot in images nobody downloads, so
//! that an operator hears of it while a good copy may still exist. A blob that fails is marked
//! damaged in the database (`Store::verify_blob`): its images refuse downloads with a clear
//! error, `ocellus check` and `/metrics` report it, and an upload of the same bytes heals it.
//!
//! The scrub runs on its own thread (it blocks on reads and sleeps to keep its rate) and keeps
//! the end of its last complete pass in the database, so a restart does not start a pass over.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::store::{Store, Verdict};

/// The `meta` row holding the Unix time the last complete pass ended.
const LAST_PASS: &str = "scrub_completed_at";
/// How often a waiting or paused scrub looks at the clock, the transfers and the stop flag.
const TICK: Duration = Duration::from_millis(200);

/// When and how fast to scrub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrubSettings {
    /// Time between the ends of passes; `None` turns the scrub off.
    pub interval: Option<Duration>,
    /// Bytes per second at most.
    pub rate: u64,
}

impl Default for ScrubSettings {
    fn default() -> ScrubSettings {
        ScrubSettings {
            interval: Some(Duration::from_secs(7 * 86_400)),
            rate: 50_000_000,
        }
    }
}

/// The running scrub; stopping it (or dropping this) ends the thread within a buffer's read.
pub struct Scrub {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scrub {
    /// Starts the scrub thread, unless the settings turn it off.
    pub fn start(store: Arc<Store>, settings: ScrubSettings) -> std::io::Result<Scrub> {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = match settings.interval {
            None => None,
            Some(interval) => {
                let stop = stop.clone();
                Some(
                    std::thread::Builder::new()
                        .name("ocellus-scrub".into())
                        .spawn(move || run(&store, interval, settings.rate, &stop))?,
                )
            }
        };
        Ok(Scrub { stop, thread })
    }

    /// Stops the scrub and waits for its thread.
    pub fn stop(mut self) {
        self.halt();
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Scrub {
    fn drop(&mut self) {
        self.halt();
    }
}

fn run(store: &Store, interval: Duration, rate: u64, stop: &AtomicBool) {
    loop {
        let due = match store.meta(LAST_PASS) {
            Ok(Some(last)) => last.saturating_add(interval.as_secs()),
            // A store never scrubbed counts from now: its first pass comes one interval after
            // the scrub first ran, not at every start of a new server.
            Ok(None) => {
                let now = crate::identity::now_secs().max(0) as u64;
                if let Err(error) = store.set_meta(LAST_PASS, now) {
                    tracing::warn!(%error, "scrub: cannot record its start");
                }
                now.saturating_add(interval.as_secs())
            }
            Err(error) => {
                tracing::warn!(%error, "scrub: cannot read when the last pass ended");
                crate::identity::now_secs().max(0) as u64 + 60
            }
        };
        while (crate::identity::now_secs().max(0) as u64) < due {
            if stop.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(TICK);
        }
        match pass(store, rate, stop) {
            Some(outcome) => {
                tracing::info!(
                    blobs = outcome.blobs,
                    bytes = outcome.bytes,
                    damaged = outcome.damaged,
                    seconds = outcome.started.elapsed().as_secs(),
                    "scrub pass complete"
                );
                let now = crate::identity::now_secs().max(0) as u64;
                if let Err(error) = store.set_meta(LAST_PASS, now) {
                    tracing::warn!(%error, "scrub: cannot record the end of the pass");
                }
            }
            None => return,
        }
    }
}

struct PassOutcome {
    blobs: u64,
    bytes: u64,
    damaged: u64,
    started: Instant,
}

/// One pass over every referenced blob; `None` if stopped.
fn pass(store: &Store, rate: u64, stop: &AtomicBool) -> Option<PassOutcome> {
    let blobs = match store.blob_sizes() {
        Ok(blobs) => blobs,
        Err(error) => {
            tracing::warn!(%error, "scrub: cannot list the blobs");
            return Some(PassOutcome {
                blobs: 0,
                bytes: 0,
                damaged: 0,
                started: Instant::now(),
            });
        }
    };
    let total: u64 = blobs.iter().map(|(_, size)| size).sum::<u64>().max(1);
    let started = Instant::now();
    let mut outcome = PassOutcome {
        blobs: 0,
        bytes: 0,
        damaged: 0,
        started,
    };
    // Pacing: `budget_from` is when the current budget started and `spent` what it has read.
    let mut budget_from = Instant::now();
    let mut spent = 0u64;
    let state = store.scrub_state();
    state.progress.store(0f64.to_bits(), Ordering::Relaxed);
    for (digest, size) in blobs {
        let mut pace = |bytes: u64| {
            outcome.bytes += bytes;
            spent += bytes;
            state.checked_bytes.fetch_add(bytes, Ordering::Relaxed);
            state.progress.store(
                (outcome.bytes as f64 / total as f64).min(1.0).to_bits(),
                Ordering::Relaxed,
            );
            // Keep under the rate.
            let allowed = Duration::from_secs_f64(spent as f64 / rate.max(1) as f64);
            let elapsed = budget_from.elapsed();
            if allowed > elapsed {
                std::thread::sleep(allowed - elapsed);
            }
            // Step aside while transfers run; the pause does not count towards the rate.
            let mut paused = false;
            while store.transfers_in_flight() > 0 {
                if stop.load(Ordering::Acquire) {
                    return false;
                }
                paused = true;
                std::thread::sleep(TICK);
            }
            if paused {
                budget_from = Instant::now();
                spent = 0;
            }
            !stop.load(Ordering::Acquire)
        };
        match store.verify_blob(digest, size, &mut pace) {
            Ok(Verdict::Good) => {}
            Ok(Verdict::Bad(_)) => outcome.damaged += 1,
            Ok(Verdict::Stopped) => return None,
            Err(error) => {
                tracing::warn!(blob = %digest.to_hex(), %error, "scrub: could not read the blob; will try again next pass");
            }
        }
        outcome.blobs += 1;
        state.checked_blobs.fetch_add(1, Ordering::Relaxed);
        if stop.load(Ordering::Acquire) {
            return None;
        }
    }
    state.progress.store(1f64.to_bits(), Ordering::Relaxed);
    state.passes.fetch_add(1, Ordering::Relaxed);
    Some(outcome)
}
