//! The edge cache (`mode = "edge"` in the catalog): a read replica of one upstream Glance for
//! CI farms and homelabs.
//!
//! The refresher keeps the catalog in step (the `kind = "glance"` source named by `[edge]`, in
//! lazy form: metadata only). Bytes come on the first download: one fetch per image however
//! many clients ask at once (single flight). The clients read the fetch as the bytes arrive,
//! each at its own pace (the start is kept for late joiners up to `REPLAY`, the fetch waits
//! for a reader `AHEAD` behind), the last chunk held back until the whole image has been
//! checked against the upstream's size, checksum and `os_hash_value` and published, so that a
//! mismatch or a broken upstream ends every response without a clean end and keeps nothing.
//! Clients that come later, or ask for a range, wait for the fetch and are served from the
//! store. Cached bytes beyond `cache_max_bytes` are
//! evicted, least recently used first, never a pinned image (by tag or name pattern) nor one
//! being fetched; a blob being read stays until its readers finish (the store's pins).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::catalog::EdgeSettings;
use super::glance::check_size_and_md5;
use super::glance::{
    PROP_UPSTREAM_CHECKSUM, PROP_UPSTREAM_HASH, PROP_UPSTREAM_ID, PROP_UPSTREAM_SIZE, Upstream,
};
use super::service::MirrorService;
use super::sums;
use super::sync::of_source;
use crate::kv::{Batch, ImageId, ImageRecord, KvError};
use crate::store::StoreError;

/// How a fetch ended, for the clients waiting on it.
type Done = Option<Result<(), String>>;
/// A fetch running: its readers' side and its end.
type Running = (Arc<Flight>, watch::Receiver<Done>);

/// What a download of an image without bytes gets.
pub enum Begin {
    /// The bytes as they arrive: this request started the fetch, or joined it early enough.
    Stream(futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>),
    /// A fetch is running that can no longer be joined (or this request asked for a range):
    /// wait for it.
    Wait(watch::Receiver<Done>),
    /// The bytes arrived since the caller read the image: serve them.
    Ready,
}

/// Bytes of a fetch kept from its start, so that clients arriving a little late still read it
/// from its first byte; beyond this, late clients wait for the end instead.
const REPLAY: usize = 64 << 20;
/// Bytes a fetch may run ahead of its slowest reader before it waits for it.
const AHEAD: usize = 64 << 20;

/// A fetch in flight, read by the clients that joined it, each at its own pace.
pub struct Flight {
    inner: std::sync::Mutex<FlightInner>,
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct FlightInner {
    /// Released chunks, from the one numbered `first`.
    chunks: std::collections::VecDeque<Bytes>,
    first: usize,
    /// Bytes in `chunks`, and pushed in all.
    bytes: usize,
    pushed: usize,
    /// Each reader's next chunk number.
    readers: HashMap<u64, usize>,
    next_reader: u64,
    done: Done,
}

impl FlightInner {
    /// While the fetch is young, anyone may join and read it from the start.
    fn joinable(&self) -> bool {
        self.first == 0 && self.pushed <= REPLAY && self.done.is_none()
    }

    /// Drops the chunks every reader has had, once no one can join any more.
    fn trim(&mut self) {
        if self.joinable() {
            return;
        }
        let end = self.first + self.chunks.len();
        let keep_from = self.readers.values().copied().min().unwrap_or(end);
        while self.first < keep_from {
            if let Some(chunk) = self.chunks.pop_front() {
                self.bytes -= chunk.len();
            }
            self.first += 1;
        }
    }
}

impl Flight {
    fn new() -> Arc<Flight> {
        Arc::new(Flight {
            inner: std::sync::Mutex::new(FlightInner::default()),
            changed: tokio::sync::Notify::new(),
        })
    }

    /// A reader from the first byte, if the fetch is still young enough.
    fn join(
        self: &Arc<Self>,
    ) -> Option<futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>>> {
        let mut inner = lock(&self.inner);
        if !inner.joinable() {
            return None;
        }
        let id = inner.next_reader;
        inner.next_reader += 1;
        inner.readers.insert(id, 0);
        drop(inner);
        Some(reader_stream(Reader {
            flight: self.clone(),
            id,
        }))
    }

    /// Releases a chunk to the readers, waiting while the slowest is `AHEAD` behind.
    async fn push(&self, chunk: Bytes) {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = lock(&self.inner);
                if inner.readers.is_empty() && !inner.joinable() {
                    // No one to read it, and no one may join: nothing to keep.
                    inner.first += 1;
                    inner.pushed += chunk.len();
                    return;
                }
                if inner.bytes < AHEAD || inner.joinable() {
                    inner.bytes += chunk.len();
                    inner.pushed += chunk.len();
                    inner.chunks.push_back(chunk);
                    inner.trim();
                    drop(inner);
                    self.changed.notify_waiters();
                    return;
                }
            }
            notified.await;
        }
    }

    fn finish(&self, outcome: Result<(), String>) {
        lock(&self.inner).done = Some(outcome);
        self.changed.notify_waiters();
    }
}

/// One client reading a flight; leaving lets the flight drop what only it still needed.
struct Reader {
    flight: Arc<Flight>,
    id: u64,
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut inner = lock(&self.flight.inner);
        inner.readers.remove(&self.id);
        inner.trim();
        drop(inner);
        self.flight.changed.notify_waiters();
    }
}

/// A reader's bytes: each chunk as it is released; at the end a clean finish if the fetch was
/// checked and published, an error otherwise (so the client never mistakes a failed fetch for
/// a whole image).
fn reader_stream(
    reader: Reader,
) -> futures_util::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
    futures_util::stream::unfold(Some(reader), |reader| async move {
        let reader = reader?;
        let flight = reader.flight.clone();
        loop {
            let notified = flight.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut inner = lock(&reader.flight.inner);
                let position = inner.readers.get(&reader.id).copied().unwrap_or(0);
                let chunk = position
                    .checked_sub(inner.first)
                    .and_then(|index| inner.chunks.get(index).cloned());
                if let Some(chunk) = chunk {
                    inner.readers.insert(reader.id, position + 1);
                    inner.trim();
                    drop(inner);
                    reader.flight.changed.notify_waiters();
                    return Some((Ok(chunk), Some(reader)));
                }
                match &inner.done {
                    Some(Ok(())) => return None,
                    Some(Err(error)) => {
                        let error = std::io::Error::other(error.clone());
                        return Some((Err(error), None));
                    }
                    None => {}
                }
            }
            notified.await;
        }
    })
    .boxed()
}

/// The cache's counters, for `/metrics` and `ocellus mirror status`.
#[derive(Default)]
pub struct EdgeCounters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fetched_bytes: AtomicU64,
    pub served_bytes: AtomicU64,
    pub evictions: AtomicU64,
}

pub struct Edge {
    pub settings: EdgeSettings,
    service: Arc<MirrorService>,
    flights: std::sync::Mutex<HashMap<ImageId, Running>>,
    /// Last download of each cached image (Unix microseconds), for eviction; images not read
    /// since the start count from their last change.
    used: std::sync::Mutex<HashMap<ImageId, i64>>,
    pub counters: EdgeCounters,
}

fn now_micros() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64 / 1000
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

impl Edge {
    pub fn new(settings: EdgeSettings, service: Arc<MirrorService>) -> Edge {
        Edge {
            settings,
            service,
            flights: std::sync::Mutex::new(HashMap::new()),
            used: std::sync::Mutex::new(HashMap::new()),
            counters: EdgeCounters::default(),
        }
    }

    /// Whether a download of `record` is the edge's to fetch: an image of its upstream whose
    /// bytes are not here.
    pub fn fetches(&self, record: &ImageRecord) -> bool {
        record.data.is_none()
            && record.status == crate::kv::ImageStatus::Active
            && of_source(record, &self.settings.source)
            && record.properties.contains_key(PROP_UPSTREAM_ID)
    }

    /// A download served from the cache.
    pub fn hit(&self, id: ImageId, bytes: u64) {
        lock(&self.used).insert(id, now_micros());
        self.counters.hits.fetch_add(1, Ordering::Relaxed);
        self.counters
            .served_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    /// Starts (or joins) the fetch of `record`'s bytes. `stream` asks for the bytes as they
    /// arrive: the request that starts the fetch gets them, and so do those that join while
    /// its start is still held for them; later ones, and ranged requests, wait for the end.
    pub async fn begin(self: &Arc<Self>, record: ImageRecord, stream: bool) -> Begin {
        let id = record.id;
        if let Some(joined) = self.join(id, stream) {
            return joined;
        }
        // A fetch may have ended between the caller's read of the image and now.
        let store = self.service.mirror.store().clone();
        let arrived = tokio::task::spawn_blocking(move || store.image(id))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .is_some_and(|record| record.data.is_some());
        if arrived {
            return Begin::Ready;
        }
        let mut flights = lock(&self.flights);
        if flights.contains_key(&id) {
            drop(flights);
            return self.join(id, stream).unwrap_or(Begin::Ready);
        }
        let (done_sender, done) = watch::channel::<Done>(None);
        let flight = Flight::new();
        flights.insert(id, (flight.clone(), done.clone()));
        drop(flights);
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        let first = if stream { flight.join() } else { None };
        let edge = self.clone();
        // The fetch runs on its own: the clients reading it may come and go.
        tokio::spawn(async move {
            let outcome = edge.fetch_inner(&record, &flight).await;
            if let Err(error) = &outcome {
                tracing::warn!(image = %id, %error, "the edge could not fetch an image");
            }
            flight.finish(outcome.clone());
            lock(&edge.flights).remove(&id);
            let _ = done_sender.send(Some(outcome));
            edge.enforce_cap(None).await;
        });
        match first {
            Some(reader) => Begin::Stream(reader),
            None => Begin::Wait(done),
        }
    }

    /// Joins the fetch of `id` if one runs: as a reader while it is young (and `stream`),
    /// otherwise to wait for it.
    fn join(&self, id: ImageId, stream: bool) -> Option<Begin> {
        let flights = lock(&self.flights);
        let (flight, done) = flights.get(&id)?;
        let reader = if stream { flight.join() } else { None };
        Some(match reader {
            Some(reader) => Begin::Stream(reader),
            None => Begin::Wait(done.clone()),
        })
    }

    /// Waits for a fetch to end.
    pub async fn wait(mut done: watch::Receiver<Done>) -> Result<(), String> {
        loop {
            if let Some(outcome) = done.borrow().clone() {
                return outcome;
            }
            if done.changed().await.is_err() {
                return Err("the fetch ended without saying how".to_owned());
            }
        }
    }

    async fn fetch_inner(&self, record: &ImageRecord, flight: &Arc<Flight>) -> Result<(), String> {
        let catalog = self.service.catalog()?;
        let source = catalog
            .source(&self.settings.source)
            .ok_or("the edge's source left the catalog")?;
        let glance = source
            .glance
            .as_ref()
            .ok_or("the edge's source is not a glance source")?;
        let mirror = &self.service.mirror;
        let fetcher = mirror.fetcher(source)?;
        let mut upstream = Upstream {
            fetcher: &fetcher,
            base: &source.base_url,
            auth: &glance.auth,
            token: None,
        };
        upstream.sign_in().await?;
        let property = |key: &str| record.properties.get(key).cloned();
        let upstream_id = property(PROP_UPSTREAM_ID).ok_or("no upstream id")?;
        let size: u64 = property(PROP_UPSTREAM_SIZE)
            .and_then(|size| size.parse().ok())
            .ok_or("the upstream gave no size")?;
        let checksum = property(PROP_UPSTREAM_CHECKSUM);
        let hash = property(PROP_UPSTREAM_HASH).and_then(|text| {
            let (algorithm, hex) = text.split_once(':')?;
            let algorithm: sums::Algorithm =
                serde_json::from_value(Value::String(algorithm.to_owned())).ok()?;
            Some((algorithm, hex.to_owned()))
        });
        if checksum.is_none() && hash.is_none() {
            return Err("the upstream gives neither checksum nor os_hash_value".into());
        }
        self.enforce_cap(Some((record.id, size))).await;
        let url = source
            .base_url
            .join(&format!("v2/images/{upstream_id}/file"))
            .map_err(|error| error.to_string())?;
        let answer = upstream.get(url.clone()).await?;
        if !answer.status.is_success() {
            return Err(format!("{url} answered {}", answer.status));
        }
        let hasher = Arc::new(std::sync::Mutex::new(
            hash.as_ref()
                .map(|(algorithm, _)| sums::Hasher::new(*algorithm)),
        ));
        let feeding = hasher.clone();
        // Each chunk goes to the readers once the next has arrived: the last one waits for the
        // verdict.
        let held: Arc<std::sync::Mutex<Option<Bytes>>> = Arc::new(std::sync::Mutex::new(None));
        let passing = held.clone();
        let releasing = flight.clone();
        let fetched = Arc::new(AtomicU64::new(0));
        let counting = fetched.clone();
        let body = answer.fetched.body.then(move |item| {
            let passing = passing.clone();
            let releasing = releasing.clone();
            let feeding = feeding.clone();
            let counting = counting.clone();
            async move {
                if let Ok(chunk) = &item {
                    if let Some(hasher) = lock(&feeding).as_mut() {
                        hasher.update(chunk);
                    }
                    counting.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                    let previous = lock(&passing).replace(chunk.clone());
                    if let Some(previous) = previous {
                        releasing.push(previous).await;
                    }
                }
                item
            }
        });
        let received = mirror
            .store()
            .receive_detached(body, Some(size), size, Some(mirror.owner()))
            .await;
        self.counters
            .fetched_bytes
            .fetch_add(fetched.load(Ordering::Relaxed), Ordering::Relaxed);
        let detached = received.map_err(|error| format!("fetching {url}: {error}"))?;
        check_size_and_md5(&detached, &url, size, checksum.as_deref())?;
        if let Some((algorithm, expected)) = &hash {
            let hex = lock(&hasher)
                .take()
                .map(sums::Hasher::finish_hex)
                .unwrap_or_default();
            if hex != *expected {
                return Err(format!(
                    "{algorithm} {hex} is not the upstream's os_hash_value {expected}"
                ));
            }
        }
        let virtual_size = crate::blob::inspect::check_upload(
            record.disk_format.as_deref().unwrap_or(""),
            record.container_format.as_deref().unwrap_or(""),
            detached.inspection(),
        )
        .map_err(|error| format!("{url}: {error}"))?;
        let id = record.id;
        let store = mirror.store().clone();
        tokio::task::spawn_blocking(move || {
            store.publish::<StoreError>(
                detached,
                virtual_size,
                |candidate| candidate.id == id,
                move |selected, data| {
                    // Still here and still without bytes (not deleted by a reconcile meanwhile).
                    let Some(mut record) = selected.into_iter().next().filter(|r| r.data.is_none())
                    else {
                        return Err(StoreError::Kv(KvError::Corrupt(format!(
                            "image {id} changed while its bytes were fetched"
                        ))));
                    };
                    record.data = Some(data);
                    Ok(Batch {
                        update: vec![record],
                        ..Batch::default()
                    })
                },
            )
        })
        .await
        .map_err(|error| error.to_string())?
        .map_err(|error| error.to_string())?;
        lock(&self.used).insert(id, now_micros());
        // Published: the last chunk may go.
        let last = lock(&held).take();
        if let Some(last) = last {
            flight.push(last).await;
        }
        Ok(())
    }

    /// Evicts least recently used, unpinned cached images until the cached bytes (plus
    /// `incoming`, an image about to be fetched) fit `cache_max_bytes`.
    pub async fn enforce_cap(&self, incoming: Option<(ImageId, u64)>) {
        let Some(cap) = self.settings.cache_max_bytes else {
            return;
        };
        let store = self.service.mirror.store().clone();
        let Ok(Ok(images)) = tokio::task::spawn_blocking(move || store.all_images()).await else {
            return;
        };
        let cached: Vec<ImageRecord> = images
            .into_iter()
            .filter(|record| of_source(record, &self.settings.source) && record.data.is_some())
            .collect();
        let mut digests = HashSet::new();
        let mut total: u64 = cached
            .iter()
            .filter_map(|record| record.data.as_ref())
            .filter(|data| digests.insert(data.digest))
            .map(|data| data.size)
            .sum();
        total += incoming.map_or(0, |(_, size)| size);
        if total <= cap {
            return;
        }
        let flying: HashSet<ImageId> = lock(&self.flights).keys().copied().collect();
        let used = lock(&self.used).clone();
        let mut candidates: Vec<&ImageRecord> = cached
            .iter()
            .filter(|record| {
                !flying.contains(&record.id)
                    && Some(record.id) != incoming.map(|(id, _)| id)
                    && !self.settings.pinned(record.name.as_deref(), &record.tags)
            })
            .collect();
        candidates.sort_by_key(|record| used.get(&record.id).copied().unwrap_or(record.updated_at));
        for record in candidates {
            if total <= cap {
                break;
            }
            let id = record.id;
            let size = record.data.as_ref().map_or(0, |data| data.size);
            let store = self.service.mirror.store().clone();
            let evicted = tokio::task::spawn_blocking(move || {
                store.change_images::<StoreError>(
                    |candidate| candidate.id == id,
                    |selected| {
                        let mut batch = Batch::default();
                        for mut record in selected {
                            record.data = None;
                            batch.update.push(record);
                        }
                        Ok(batch)
                    },
                )
            })
            .await;
            if matches!(evicted, Ok(Ok(true))) {
                total = total.saturating_sub(size);
                lock(&self.used).remove(&id);
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                tracing::info!(image = %id, size, "the edge evicted an image's bytes");
            }
        }
    }

    /// Passes a client's write on to the upstream (`writes = "forward"`), with the client's
    /// own headers (its credentials: the upstream decides), and then brings the catalog up to
    /// date so that the change shows here.
    pub async fn forward(
        self: &Arc<Self>,
        method: reqwest::Method,
        path_and_query: &str,
        headers: reqwest::header::HeaderMap,
        body: reqwest::Body,
    ) -> Result<crate::fetch::Answer, String> {
        let catalog = self.service.catalog()?;
        let source = catalog
            .source(&self.settings.source)
            .ok_or("the edge's source left the catalog")?;
        let fetcher = self.service.mirror.fetcher(source)?;
        let url = source
            .base_url
            .join(path_and_query.trim_start_matches('/'))
            .map_err(|error| error.to_string())?;
        let answer = fetcher.relay(method, url, headers, body).await?;
        if answer.status.is_success() {
            let edge = self.clone();
            let name = self.settings.source.clone();
            tokio::spawn(async move {
                if let Err(error) = edge.service.sync(&[name]).await {
                    tracing::warn!(%error, "the edge could not refresh its catalog after a write");
                }
            });
        }
        Ok(answer)
    }

    /// The cache's figures, for `ocellus mirror status`.
    pub fn view(&self) -> Value {
        let store = self.service.mirror.store();
        let images = store.all_images().unwrap_or_default();
        let mine: Vec<&ImageRecord> = images
            .iter()
            .filter(|record| of_source(record, &self.settings.source))
            .collect();
        let cached: Vec<&&ImageRecord> =
            mine.iter().filter(|record| record.data.is_some()).collect();
        let counter = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        json!({
            "source": self.settings.source,
            "images": mine.len(),
            "cached_images": cached.len(),
            "cached_bytes": cached.iter().filter_map(|record| record.data.as_ref()).map(|data| data.size).sum::<u64>(),
            "cache_max_bytes": self.settings.cache_max_bytes,
            "fetching": lock(&self.flights).len(),
            "hits": counter(&self.counters.hits),
            "misses": counter(&self.counters.misses),
            "fetched_bytes": counter(&self.counters.fetched_bytes),
            "served_bytes": counter(&self.counters.served_bytes),
            "evictions": counter(&self.counters.evictions),
        })
    }
}
