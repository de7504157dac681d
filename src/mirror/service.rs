//! The mirror inside `ocellus serve`: a refresher that syncs each source when its time comes
//! (its `refresh` after a success, its backoff after a failure, with jitter so appliances
//! sharing a catalog do not arrive together), one source at a time, and the views behind
//! `ocellus mirror status`. The catalog is read again on every round, so edits apply without a
//! restart; a catalog that does not check stops nothing but the refresher, and says why.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::catalog::{self, Catalog};
use super::sync::{Mirror, PROP_LATEST, PROP_SOURCE, PROP_VERSION, Report, SourceState};

/// How often the refresher looks for sources that are due.
const TICK: Duration = Duration::from_secs(20);

pub struct MirrorService {
    pub mirror: Mirror,
    pub catalog_path: PathBuf,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs() as i64)
}

/// Up to a tenth of `seconds`, different per source and round.
fn jitter(name: &str, seconds: i64) -> i64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    let spread = (seconds / 10).max(1);
    let salt = name.len() as u64;
    ((u64::from_le_bytes(bytes) ^ salt) % spread as u64) as i64
}

impl MirrorService {
    pub fn new(mirror: Mirror, catalog_path: PathBuf) -> MirrorService {
        MirrorService {
            mirror,
            catalog_path,
        }
    }

    pub fn catalog(&self) -> Result<Catalog, String> {
        catalog::load(&self.catalog_path)
    }

    /// Syncs the named sources (all when `names` is empty) now.
    pub async fn sync(&self, names: &[String]) -> Result<Vec<Report>, String> {
        let catalog = self.catalog()?;
        let sources = select(&catalog, names)?;
        let mut reports = Vec::new();
        for source in sources {
            reports.push(self.mirror.sync(&catalog, source).await);
        }
        Ok(reports)
    }

    /// Runs until aborted: every tick, syncs the sources that are due.
    pub async fn refresh_forever(self: Arc<Self>, metrics: Arc<crate::metrics::Metrics>) {
        let mut complained = None::<String>;
        loop {
            match self.catalog() {
                Ok(catalog) => {
                    complained = None;
                    for source in &catalog.sources {
                        let state = self.mirror.state(&source.name);
                        let due = state.next_run.is_none_or(|at| at <= now_secs());
                        if !due {
                            continue;
                        }
                        let report = self.mirror.sync(&catalog, source).await;
                        metrics.mirror_synced(&source.name, report.outcome.label(), report.bytes);
                        // Spread the next run a little, so that appliances sharing a catalog
                        // do not all arrive at the vendor at once.
                        let mut state = self.mirror.state(&source.name);
                        if let Some(next) = state.next_run {
                            let wait = next - now_secs();
                            state.next_run = Some(next + jitter(&source.name, wait));
                            if let Ok(bytes) = serde_json::to_vec(&state) {
                                let _ = self.mirror.store().set_mirror_state(&source.name, &bytes);
                            }
                        }
                    }
                }
                Err(error) => {
                    if complained.as_ref() != Some(&error) {
                        tracing::error!(%error, "the mirror catalog does not check; no source is refreshed until it does");
                        complained = Some(error);
                    }
                }
            }
            tokio::time::sleep(TICK).await;
        }
    }

    /// Every source's state and images, for `ocellus mirror status`.
    pub fn status(&self) -> Value {
        let catalog = self.catalog();
        let names: Vec<String> = match &catalog {
            Ok(catalog) => catalog.sources.iter().map(|s| s.name.clone()).collect(),
            Err(_) => Vec::new(),
        };
        status_view(&self.mirror, &names, catalog.err())
    }
}

/// The sources named, or all.
pub fn select<'a>(
    catalog: &'a Catalog,
    names: &[String],
) -> Result<Vec<&'a catalog::Source>, String> {
    if names.is_empty() {
        return Ok(catalog.sources.iter().collect());
    }
    names
        .iter()
        .map(|name| {
            catalog
                .source(name)
                .ok_or_else(|| format!("the catalog has no source {name:?}"))
        })
        .collect()
}

/// The state and images of `names` (and of any source with stored state).
pub fn status_view(mirror: &Mirror, names: &[String], catalog_error: Option<String>) -> Value {
    let mut all: Vec<String> = names.to_vec();
    if let Ok(states) = mirror.store().mirror_states() {
        for (name, _) in states {
            if !all.contains(&name) {
                all.push(name);
            }
        }
    }
    let images = mirror.store().all_images().unwrap_or_default();
    let sources: Vec<Value> = all
        .iter()
        .map(|name| {
            let state: SourceState = mirror.state(name);
            let mut mine: Vec<&crate::kv::ImageRecord> = images
                .iter()
                .filter(|record| record.properties.get(PROP_SOURCE) == Some(name))
                .collect();
            mine.sort_by_key(|record| std::cmp::Reverse(record.created_at));
            let views: Vec<Value> = mine
                .iter()
                .map(|record| {
                    json!({
                        "id": record.id.to_string(),
                        "name": record.name,
                        "version": record.properties.get(PROP_VERSION),
                        "latest": record.properties.get(PROP_LATEST).map(String::as_str) == Some("true"),
                        "os_hidden": record.os_hidden,
                        "protected": record.protected,
                        "size": record.data.as_ref().map(|data| data.size),
                    })
                })
                .collect();
            json!({
                "name": name,
                "in_catalog": names.contains(name),
                "state": state,
                "images": views,
            })
        })
        .collect();
    json!({ "catalog_error": catalog_error, "sources": sources })
}
