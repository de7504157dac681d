//! The operator's work on a store: the full check (and its repairs), garbage collection and
//! backups. Each runs the same way in the server (through the admin endpoint) and on a
//! stopped server's data directory (`ocellus check|gc|backup`); `Mode` says which, because
//! what is safe to touch differs: while the server runs, an image in `saving` and a fresh temp
//! file belong to an upload in progress.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::{Store, StoreError, Verdict};
use crate::blob::Swept;
use crate::kv::Digest;

/// Where the operation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// In the running server: uploads may be in flight.
    Online,
    /// On a stopped server's data directory: nothing else touches it.
    Offline,
}

/// A temp file untouched this long belongs to no live upload (an idle upload is abandoned
/// after 60 s), so `gc` may remove it while the server runs.
pub const STALE_TEMP: Duration = Duration::from_secs(600);

/// What `check` found, and with `--repair` what it fixed.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct CheckReport {
    pub images: u64,
    pub blobs: u64,
    pub verified_blobs: u64,
    pub verified_bytes: u64,
    pub quarantined: u64,
    /// Inconsistencies and damage still present; empty when the store is sound.
    pub problems: Vec<String>,
    /// What an interrupted run left (repaired by `--repair` or the next start).
    pub leftovers: Vec<String>,
    /// What `--repair` fixed.
    pub repaired: Vec<String>,
}

impl CheckReport {
    pub fn sound(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What `gc` removed (or, in a dry run, would remove).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct GcReport {
    pub dry_run: bool,
    /// Quarantined blobs past their grace period.
    pub quarantine: Swept,
    /// Temp files of uploads that ended without cleaning up.
    pub temps: Swept,
}

/// The description written as `BACKUP.json` beside a backup's database and blobs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BackupManifest {
    pub format: u32,
    pub created_at: i64,
    pub ocellus_version: String,
    /// Every blob the database copy references, as hex digest and size.
    pub blobs: BTreeMap<String, u64>,
    /// How many blobs went in as hard links (the rest were copied).
    pub linked: u64,
}

/// The manifest's file name, and the database copy's.
pub const MANIFEST_FILE: &str = "BACKUP.json";
pub const BACKUP_FORMAT: u32 = 1;

/// Holds blob removals back while a backup copies the database and links the blobs it names,
/// so that no blob the copy references can vanish in between; removals asked for meanwhile run
/// when the hold ends.
pub struct RemovalHold<'a> {
    store: &'a Store,
}

impl Drop for RemovalHold<'_> {
    fn drop(&mut self) {
        if self.store.holds.fetch_sub(1, Ordering::AcqRel) != 1 {
            return;
        }
        let deferred = std::mem::take(
            &mut *self
                .store
                .deferred
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        let home = self.store.places[self.store.home].spec.id.clone();
        let copies: Vec<crate::kv::BlobCopy> = deferred
            .into_iter()
            .map(|digest| crate::kv::BlobCopy {
                digest,
                store: home.clone(),
            })
            .collect();
        self.store.release(&copies);
    }
}

impl Store {
    /// The full check: every referenced blob read and verified against its digest and
    /// outboard (a damaged one is marked, as the scrub does), missing and misplaced blobs,
    /// reference counts against the images, orphans, images stuck in `saving`, temp files,
    /// the running totals against the records.
    /// With `repair`, fixes what is safe: reference counts, the totals, orphans (to quarantine), missing
    /// blobs still in quarantine (back), damage marks on blobs that verify again and, offline,
    /// uploads left `saving` and their temp files. `progress` gets the bytes verified. Blocks.
    pub fn check_full(
        &self,
        mode: Mode,
        repair: bool,
        progress: &mut dyn FnMut(u64),
    ) -> Result<CheckReport, StoreError> {
        let audit = self.kv.audit()?;
        let bad: HashSet<Digest> = self.kv.bad_blobs()?.into_iter().map(|(d, _)| d).collect();
        let mut report = CheckReport {
            images: audit.images,
            ..CheckReport::default()
        };
        for id in &audit.saving {
            match (mode, repair) {
                (Mode::Online, _) => {}
                (Mode::Offline, false) => report.leftovers.push(format!("image {id} is saving")),
                (Mode::Offline, true) => {
                    self.requeue(*id)?;
                    report
                        .repaired
                        .push(format!("image {id}: saving -> queued"));
                }
            }
        }
        // The home store's copies: those are what this check reads and whose files it expects;
        // copies in other stores (buckets) are checked by the engines that keep them.
        let referenced = self.kv.copies_in(self.places[self.home].id())?;
        for blob in &audit.blobs {
            let hex = blob.digest.to_hex();
            if blob.references != blob.counted {
                let drift = format!(
                    "blob {hex}: reference count {} but {} images name it",
                    blob.references, blob.counted
                );
                if repair {
                    let _guard = self.blobs().lock(blob.digest);
                    self.kv
                        .set_reference_count(blob.digest, blob.size, blob.counted)?;
                    report
                        .repaired
                        .push(format!("{drift}: count set to {}", blob.counted));
                } else {
                    report.problems.push(drift);
                }
            }
            if blob.counted == 0 || !referenced.contains(&blob.digest) {
                continue;
            }
            report.blobs += 1;
            let mut present = self.backend().size(blob.digest)?;
            if present.is_none() && repair && self.restore_from_quarantine(blob.digest)? {
                report
                    .repaired
                    .push(format!("blob {hex}: brought back from quarantine"));
                present = self.backend().size(blob.digest)?;
            }
            if present.is_none() {
                report.problems.push(format!(
                    "blob {hex} is missing ({} images name it)",
                    blob.counted
                ));
                continue;
            }
            let verdict = self.verify_blob(blob.digest, blob.size, &mut |bytes| {
                progress(bytes);
                true
            })?;
            report.verified_blobs += 1;
            report.verified_bytes += blob.size;
            match verdict {
                Verdict::Good if bad.contains(&blob.digest) => {
                    if repair {
                        self.kv.clear_bad_blob(blob.digest)?;
                        report
                            .repaired
                            .push(format!("blob {hex}: verifies again; damage mark cleared"));
                    } else {
                        report.problems.push(format!(
                            "blob {hex} is marked damaged but verifies now (--repair clears the mark)"
                        ));
                    }
                }
                Verdict::Good | Verdict::Stopped => {}
                Verdict::Bad(problem) => report.problems.push(format!(
                    "blob {hex} is damaged ({problem}); its {} images refuse downloads until the same data is uploaded again",
                    blob.counted
                )),
            }
        }
        for digest in self.backend().list()? {
            if referenced.contains(&digest) {
                continue;
            }
            let hex = digest.to_hex();
            if !repair {
                report
                    .leftovers
                    .push(format!("blob {hex} is not referenced"));
                continue;
            }
            let _guard = self.blobs().lock(digest);
            let home = self.places[self.home].id();
            if self.kv.copy_references(digest, home)? == 0 && !self.pinned(digest) {
                self.backend().quarantine(digest)?;
                report
                    .repaired
                    .push(format!("blob {hex}: not referenced; moved to quarantine"));
            }
        }
        let temps = self.backend().temps()?;
        if temps > 0 && mode == Mode::Offline {
            if repair {
                let swept = self.backend().sweep_temps(None, false)?;
                report.repaired.push(format!(
                    "{} temp files removed ({} bytes)",
                    swept.count, swept.bytes
                ));
            } else {
                report
                    .leftovers
                    .push(format!("{temps} temp objects are left"));
            }
        }
        // The running totals against the audit's fresh count of the same snapshot (so writes
        // meanwhile do not show as drift); a recount also follows the reference counts set
        // right above.
        if audit.totals != audit.counted {
            let drift = format!(
                "the catalog's running totals differ from its records (kept against counted: {})",
                audit.totals.differences(&audit.counted, 5).join("; ")
            );
            if repair {
                self.recount_totals()?;
                report.repaired.push(format!("{drift}: counted again"));
            } else {
                report.problems.push(drift);
            }
        }
        report.quarantined = self.backend().quarantined()? as u64;
        Ok(report)
    }

    /// Counts the catalog's running totals afresh from every record, as a database gains them
    /// at the upgrade to schema 11 (reads every image record). Blocks.
    pub fn recount_totals(&self) -> Result<(), StoreError> {
        Ok(self.kv.rebuild_usage_totals()?)
    }

    /// Removes quarantined blobs past their grace and temp files no upload owns (offline: all;
    /// online: those untouched for `STALE_TEMP`); with `dry_run`, only counts them. Blocks.
    pub fn gc(&self, mode: Mode, dry_run: bool) -> Result<GcReport, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(self.limits.quarantine_grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let quarantine = self.backend().sweep_quarantine(cutoff, dry_run)?;
        let temps_before = match mode {
            Mode::Offline => None,
            Mode::Online => Some(
                SystemTime::now()
                    .checked_sub(STALE_TEMP)
                    .unwrap_or(SystemTime::UNIX_EPOCH),
            ),
        };
        let temps = self.backend().sweep_temps(temps_before, dry_run)?;
        Ok(GcReport {
            dry_run,
            quarantine,
            temps,
        })
    }

    /// Holds blob removals back until the returned guard drops.
    pub fn hold_removals(&self) -> RemovalHold<'_> {
        self.holds.fetch_add(1, Ordering::AcqRel);
        RemovalHold { store: self }
    }

    /// Writes a backup into the empty (or missing) directory `dir`: a consistent copy of the
    /// database, every blob it references (hard-linked when `dir` is on the same filesystem,
    /// copied otherwise) with its outboard, and `BACKUP.json`. Blob removals wait meanwhile,
    /// so the copy and the blobs match. Blocks.
    pub fn backup_into(&self, dir: &Path) -> Result<BackupManifest, StoreError> {
        std::fs::create_dir_all(dir)?;
        if std::fs::read_dir(dir)?.next().is_some() {
            return Err(StoreError::from(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!("{} is not empty", dir.display()),
            )));
        }
        let _hold = self.hold_removals();
        let referenced = self.kv.snapshot(&dir.join(crate::DATABASE_FILE))?;
        let mut manifest = BackupManifest {
            format: BACKUP_FORMAT,
            created_at: super::unix_now(),
            ocellus_version: env!("CARGO_PKG_VERSION").to_owned(),
            ..BackupManifest::default()
        };
        for (digest, size) in referenced {
            if self.backend().export(digest, dir)? {
                manifest.linked += 1;
            }
            manifest.blobs.insert(digest.to_hex(), size);
        }
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|error| std::io::Error::other(error.to_string()))?;
        let manifest_path = dir.join(MANIFEST_FILE);
        std::fs::write(&manifest_path, text)?;
        std::fs::File::open(&manifest_path)?.sync_all()?;
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::kv::{ImageData, ImageId, ImageRecord, ImageStatus, Visibility};

    /// An active image whose data is `bytes`, written straight into the catalog, with its blob
    /// file placed by hand.
    fn stored_image(store: &Store, data_dir: &Path, id: u8, bytes: &[u8]) -> Digest {
        let digest = Digest(*blake3::hash(bytes).as_bytes());
        let hex = digest.to_hex();
        let path = data_dir
            .join("blobs")
            .join(&hex[0..2])
            .join(&hex[2..4])
            .join(&hex);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
        let record = ImageRecord {
            status: ImageStatus::Active,
            visibility: Visibility::Private,
            disk_format: Some("raw".into()),
            container_format: Some("bare".into()),
            data: Some(ImageData {
                digest,
                size: bytes.len() as u64,
                virtual_size: None,
                md5: [0; 16],
                sha512: [0; 64],
                stores: vec![crate::store::DEFAULT_STORE.into()],
                zeros: None,
            }),
            ..ImageRecord::new(ImageId([id; 16]), Some("ops".into()), 1)
        };
        store.kv.insert_image(&record).unwrap();
        digest
    }

    #[test]
    fn reference_count_drift_is_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes = vec![5u8; 40_000];
        let digest = stored_image(&store, dir.path(), 1, &bytes);
        stored_image(&store, dir.path(), 2, &bytes);
        assert!(
            store
                .check_full(Mode::Offline, false, &mut |_| {})
                .unwrap()
                .sound()
        );

        // The count says 5 where two images name the blob.
        store.kv.set_reference_count(digest, 40_000, 5).unwrap();
        let found = store.check_full(Mode::Offline, false, &mut |_| {}).unwrap();
        assert_eq!(
            found.problems,
            vec![format!(
                "blob {}: reference count 5 but 2 images name it",
                digest.to_hex()
            )]
        );
        let repaired = store.check_full(Mode::Offline, true, &mut |_| {}).unwrap();
        assert!(repaired.sound(), "{repaired:?}");
        assert_eq!(repaired.repaired.len(), 1, "{repaired:?}");
        assert_eq!(store.kv.blob_references(digest).unwrap(), 2);
        // Verified bytes were counted for the progress bar.
        let mut seen = 0;
        store
            .check_full(Mode::Offline, false, &mut |bytes| seen += bytes)
            .unwrap();
        assert_eq!(seen, 40_000);
    }

    #[test]
    fn usage_totals_drift_is_found_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        stored_image(&store, dir.path(), 1, &[6u8; 30_000]);
        stored_image(&store, dir.path(), 2, &[7u8; 20_000]);
        store.kv.forget_usage_totals(false);
        assert_eq!(store.stats().unwrap().images, 0);
        let found = store.check_full(Mode::Offline, false, &mut |_| {}).unwrap();
        assert_eq!(found.problems.len(), 1, "{found:?}");
        assert!(
            found.problems[0].contains("active images (0, 0) against (2, 50000)")
                && found.problems[0].contains(r#"project "ops""#),
            "{found:?}"
        );
        let repaired = store.check_full(Mode::Offline, true, &mut |_| {}).unwrap();
        assert!(repaired.sound(), "{repaired:?}");
        let stats = store.stats().unwrap();
        assert_eq!(
            (
                stats.images,
                stats.image_bytes,
                stats.blobs,
                stats.blob_bytes
            ),
            (2, 50_000, 2, 50_000)
        );
        assert_eq!(stats.images_by_status["active"], 2);
        assert!(
            store
                .check_full(Mode::Offline, false, &mut |_| {})
                .unwrap()
                .sound()
        );
    }
}
