//! The Prometheus metrics served at `/metrics`.
//!
//! Two kinds: what the HTTP layer counts as each request ends (requests by route and status,
//! latency, bytes in and out, authentication failures, 429s), kept in prometheus-client
//! families, and the store's figures (images by status, bytes, dedupe, quarantine, transfers
//! in flight, scrub), read when the page is rendered. Route labels are the route templates
//! (`/v2/images/{image_id}`), never raw paths, so the label sets stay few.

use std::sync::Mutex;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::store::{ScrubStats, StoreStats};

/// Latency buckets, seconds: 0.5 ms to about 65 s.
const LATENCY_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048,
    4.096, 8.192, 16.384, 32.768, 65.536,
];

/// A finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub route: String,
    pub status: u16,
}

/// A route and method.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: String,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MirrorLabels {
    source: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

type LatencyFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric, registered once.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: LatencyFamily,
    received: Family<RouteLabels, Counter>,
    sent: Family<RouteLabels, Counter>,
    auth_failures: Counter,
    throttled: Counter,
    images: Family<StatusLabel, Gauge>,
    transfers: Family<KindLabel, Gauge>,
    image_bytes: Gauge,
    blobs: Gauge,
    blob_bytes: Gauge,
    dedupe_saved: Gauge,
    quarantined: Gauge,
    download_reads: Gauge,
    shared_download_reads: Gauge,
    scrub_passes: Gauge,
    scrub_checked: Gauge,
    scrub_checked_bytes: Gauge,
    scrub_failures: Gauge,
    scrub_progress: Gauge<f64, std::sync::atomic::AtomicU64>,
    mirror_syncs: Family<MirrorLabels, Counter>,
    mirror_fetched: Family<SourceLabel, Counter>,
    mirror_last_success: Family<SourceLabel, Gauge>,
    /// The edge cache's counters, and what was last added to them.
    edge: [Counter; 5],
    /// The NBD export's figures.
    pub nbd: NbdMetrics,
    edge_reported: Mutex<[u64; 5]>,
    /// Rendering updates the store gauges and then encodes; one scrape at a time.
    render: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The NBD export's figures, updated by the NBD server as it goes.
#[derive(Default)]
pub struct NbdMetrics {
    pub connections: Gauge,
    pub read_bytes: Counter,
    pub read_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ocellus");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by method, route template and status",
            requests.clone(),
        );
        let latency: LatencyFamily = Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from the request's arrival to the end of its response body",
            Unit::Seconds,
            latency.clone(),
        );
        let received = Family::<RouteLabels, Counter>::default();
        registry.register_with_unit(
            "http_received",
            "Request body bytes received",
            Unit::Bytes,
            received.clone(),
        );
        let sent = Family::<RouteLabels, Counter>::default();
        registry.register_with_unit(
            "http_sent",
            "Response body bytes sent",
            Unit::Bytes,
            sent.clone(),
        );
        let auth_failures = Counter::default();
        registry.register(
            "auth_failures",
            "Requests refused for a missing, wrong, expired or revoked credential (401)",
            auth_failures.clone(),
        );
        let throttled = Counter::default();
        registry.register(
            "throttled",
            "Requests refused with 429 by the authentication failure limiter",
            throttled.clone(),
        );
        let images = Family::<StatusLabel, Gauge>::default();
        registry.register("images", "Images by status", images.clone());
        let transfers = Family::<KindLabel, Gauge>::default();
        registry.register(
            "transfers_in_flight",
            "Uploads and downloads running now",
            transfers.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str, unit: Option<Unit>| {
            let gauge = Gauge::default();
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, gauge.clone()),
                None => registry.register(name, help, gauge.clone()),
            }
            gauge
        };
        let image_bytes = gauge(
            &mut registry,
            "image_data",
            "Image data as the images count it, before deduplication",
            Some(Unit::Bytes),
        );
        let blobs = gauge(&mut registry, "blobs", "Distinct blobs stored", None);
        let blob_bytes = gauge(
            &mut registry,
            "blob_data",
            "Bytes of the stored blobs (what image data takes on disk)",
            Some(Unit::Bytes),
        );
        let dedupe_saved = gauge(
            &mut registry,
            "dedupe_saved",
            "Bytes deduplication saves: image data minus blob data",
            Some(Unit::Bytes),
        );
        let quarantined = gauge(
            &mut registry,
            "quarantined_blobs",
            "Blobs no image references, kept in quarantine until their grace ends",
            None,
        );
        let download_reads = gauge(
            &mut registry,
            "download_reads",
            "Reads of stored bytes done for downloads since the server started, each verified",
            None,
        );
        let shared_download_reads = gauge(
            &mut registry,
            "download_shared_reads",
            "Download reads answered with the verified bytes of another download of the same image, since the server started",
            None,
        );
        let scrub_passes = gauge(
            &mut registry,
            "scrub_passes",
            "Scrub passes completed since the server started",
            None,
        );
        let scrub_checked = gauge(
            &mut registry,
            "scrub_checked_blobs",
            "Blobs the scrub has re-verified since the server started",
            None,
        );
        let scrub_checked_bytes = gauge(
            &mut registry,
            "scrub_checked",
            "Bytes the scrub has re-verified since the server started",
            Some(Unit::Bytes),
        );
        let scrub_failures = gauge(
            &mut registry,
            "scrub_failed_blobs",
            "Blobs that failed verification and are marked bad (their images refuse downloads)",
            None,
        );
        let scrub_progress = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "scrub_progress",
            "Fraction of the current scrub pass done (0 to 1)",
            scrub_progress.clone(),
        );
        let mirror_syncs = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirror_syncs",
            "Mirror syncs run by the refresher, by source and outcome (published, up_to_date, failed)",
            mirror_syncs.clone(),
        );
        let mirror_fetched = Family::<SourceLabel, Counter>::default();
        registry.register_with_unit(
            "mirror_fetched",
            "Image bytes the refresher downloaded from vendors, by source",
            Unit::Bytes,
            mirror_fetched.clone(),
        );
        let mirror_last_success = Family::<SourceLabel, Gauge>::default();
        registry.register(
            "mirror_last_success_timestamp_seconds",
            "Unix time of the last sync of each source that did not fail",
            mirror_last_success.clone(),
        );
        let edge: [Counter; 5] = Default::default();
        for (counter, (name, help, unit)) in edge.iter().zip([
            (
                "edge_hits",
                "Downloads the edge cache served from its own bytes",
                None,
            ),
            (
                "edge_misses",
                "Downloads that made the edge cache fetch from its upstream",
                None,
            ),
            (
                "edge_fetched",
                "Bytes the edge cache fetched from its upstream",
                Some(Unit::Bytes),
            ),
            (
                "edge_served",
                "Bytes of cached images the edge cache served",
                Some(Unit::Bytes),
            ),
            (
                "edge_evictions",
                "Cached images whose bytes the edge cache evicted",
                None,
            ),
        ]) {
            match unit {
                Some(unit) => registry.register_with_unit(name, help, unit, counter.clone()),
                None => registry.register(name, help, counter.clone()),
            }
        }
        let nbd = NbdMetrics::default();
        registry.register(
            "nbd_connections",
            "Open NBD connections",
            nbd.connections.clone(),
        );
        registry.register_with_unit(
            "nbd_read",
            "Bytes NBD clients read, each verified before it was sent",
            Unit::Bytes,
            nbd.read_bytes.clone(),
        );
        registry.register(
            "nbd_read_failures",
            "NBD reads answered EIO because the stored bytes failed verification or could not be read",
            nbd.read_failures.clone(),
        );
        Metrics {
            registry,
            nbd,
            edge,
            edge_reported: Mutex::new([0; 5]),
            requests,
            latency,
            received,
            sent,
            auth_failures,
            throttled,
            images,
            transfers,
            image_bytes,
            blobs,
            blob_bytes,
            dedupe_saved,
            quarantined,
            download_reads,
            shared_download_reads,
            scrub_passes,
            scrub_checked,
            scrub_checked_bytes,
            scrub_failures,
            scrub_progress,
            mirror_syncs,
            mirror_fetched,
            mirror_last_success,
            render: Mutex::new(()),
        }
    }

    /// Brings the edge cache's counters up to `figures` (hits, misses, bytes fetched, bytes
    /// served, evictions).
    pub fn set_edge(&self, figures: [u64; 5]) {
        let mut reported = self
            .edge_reported
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for ((counter, last), now) in self.edge.iter().zip(reported.iter_mut()).zip(figures) {
            counter.inc_by(now.saturating_sub(*last));
            *last = now.max(*last);
        }
    }

    /// Counts one sync of a mirror source: its outcome (`published`, `up_to_date`, `failed`)
    /// and the image bytes it downloaded.
    pub fn mirror_synced(&self, source: &str, outcome: &str, bytes: u64) {
        self.mirror_syncs
            .get_or_create(&MirrorLabels {
                source: source.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        let label = SourceLabel {
            source: source.to_owned(),
        };
        self.mirror_fetched.get_or_create(&label).inc_by(bytes);
        if outcome != "failed" {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_secs() as i64);
            self.mirror_last_success.get_or_create(&label).set(now);
        }
    }

    /// Counts one finished request.
    pub fn request_done(
        &self,
        route: RouteLabels,
        status: u16,
        seconds: f64,
        received: u64,
        sent: u64,
    ) {
        self.requests
            .get_or_create(&RequestLabels {
                method: route.method.clone(),
                route: route.route.clone(),
                status,
            })
            .inc();
        self.latency.get_or_create(&route).observe(seconds);
        if received > 0 {
            self.received.get_or_create(&route).inc_by(received);
        }
        if sent > 0 {
            self.sent.get_or_create(&route).inc_by(sent);
        }
        match status {
            401 => {
                self.auth_failures.inc();
            }
            429 => {
                self.throttled.inc();
            }
            _ => {}
        }
    }

    /// The text exposition (Prometheus / OpenMetrics text format) with the store's figures.
    pub fn render(&self, store: &StoreStats, scrub: &ScrubStats) -> String {
        let _one_at_a_time = self
            .render
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let signed = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        for (status, count) in &store.images_by_status {
            self.images
                .get_or_create(&StatusLabel {
                    status: (*status).to_owned(),
                })
                .set(signed(*count));
        }
        for (kind, count) in [
            ("upload", store.uploads_in_flight),
            ("download", store.downloads_in_flight),
        ] {
            self.transfers
                .get_or_create(&KindLabel {
                    kind: kind.to_owned(),
                })
                .set(signed(count));
        }
        self.image_bytes.set(signed(store.image_bytes));
        self.blobs.set(signed(store.blobs));
        self.blob_bytes.set(signed(store.blob_bytes));
        self.dedupe_saved.set(signed(store.dedupe_saved_bytes));
        self.quarantined.set(signed(store.quarantined_blobs));
        self.download_reads.set(signed(store.download_reads));
        self.shared_download_reads
            .set(signed(store.shared_download_reads));
        self.scrub_passes.set(signed(scrub.passes));
        self.scrub_checked.set(signed(scrub.checked_blobs));
        self.scrub_checked_bytes.set(signed(scrub.checked_bytes));
        self.scrub_failures.set(signed(scrub.failed_blobs));
        self.scrub_progress.set(scrub.progress);
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}
