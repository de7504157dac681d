//! Per-project quotas, enforced as the bytes arrive.
//!
//! Glance checks its quotas before an upload starts, so one upload (or several at once) can
//! go past them. Here every upload of a project takes its bytes from the project's ledger as
//! they arrive: the ledger starts from the project's usage in the catalog and adds the bytes
//! of every upload still running, so uploads together cannot cross the limit. A ledger lives
//! while uploads of its project run; the next upload after them reads the catalog afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Store, StoreError};
use crate::kv::{QuotaRecord, Usage};

/// The limits that apply to a project; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Quotas {
    pub image_size_total: Option<u64>,
    pub image_stage_total: Option<u64>,
    pub image_count_total: Option<u64>,
    pub image_count_uploading: Option<u64>,
}

impl Quotas {
    /// `overrides` over these defaults; a negative override means unlimited.
    pub fn with(self, overrides: &QuotaRecord) -> Quotas {
        let pick = |value: Option<i64>, default: Option<u64>| match value {
            Some(limit) if limit < 0 => None,
            Some(limit) => Some(limit as u64),
            None => default,
        };
        Quotas {
            image_size_total: pick(overrides.image_size_total, self.image_size_total),
            image_stage_total: pick(overrides.image_stage_total, self.image_stage_total),
            image_count_total: pick(overrides.image_count_total, self.image_count_total),
            image_count_uploading: pick(
                overrides.image_count_uploading,
                self.image_count_uploading,
            ),
        }
    }
}

/// Which quota a request would cross.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub quota: &'static str,
    pub limit: u64,
    pub usage: u64,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            formatter,
            "Quota exceeded for {}: the limit is {}, the project uses {}",
            self.quota, self.limit, self.usage
        )
    }
}

/// One project's usage while uploads of it run.
#[derive(Debug, Default)]
pub(super) struct Ledger {
    /// Usage in the catalog when the ledger was made, plus uploads committed since.
    size: u64,
    stage: u64,
    /// Bytes taken by uploads still running.
    in_flight: u64,
    stage_in_flight: u64,
    /// Uploads holding this ledger.
    holders: usize,
}

pub(super) type Ledgers = Mutex<HashMap<String, Ledger>>;

/// An upload's claim on its project's quota; gives back what it took when dropped, unless
/// `commit` moved it into the project's usage.
pub struct QuotaClaim {
    store: Arc<Store>,
    project: String,
    quotas: Quotas,
    staging: bool,
    taken: u64,
    /// Bytes taken ahead for a declared size, not yet used by arriving chunks.
    prepaid: u64,
    /// Set when a `take` was refused: the upload ends with 413.
    pub refused: Option<QuotaExceeded>,
}

impl QuotaClaim {
    /// Takes `bytes` more for this upload (from what a declared size took ahead, first), or
    /// refuses if the project would cross a limit.
    pub fn take(&mut self, bytes: u64) -> Result<(), QuotaExceeded> {
        let ahead = self.prepaid.min(bytes);
        self.prepaid -= ahead;
        self.reserve(bytes - ahead)
    }

    fn reserve(&mut self, bytes: u64) -> Result<(), QuotaExceeded> {
        if bytes == 0 {
            return Ok(());
        }
        let mut ledgers = self.store.lock_ledgers();
        let ledger = ledgers.entry(self.project.clone()).or_default();
        if let Some(limit) = self.quotas.image_size_total {
            let usage = ledger.size + ledger.in_flight;
            if usage + bytes > limit {
                let refusal = QuotaExceeded {
                    quota: "image_size_total",
                    limit,
                    usage,
                };
                self.refused = Some(refusal.clone());
                return Err(refusal);
            }
        }
        if self.staging
            && let Some(limit) = self.quotas.image_stage_total
        {
            let usage = ledger.stage + ledger.stage_in_flight;
            if usage + bytes > limit {
                let refusal = QuotaExceeded {
                    quota: "image_stage_total",
                    limit,
                    usage,
                };
                self.refused = Some(refusal.clone());
                return Err(refusal);
            }
        }
        ledger.in_flight += bytes;
        if self.staging {
            ledger.stage_in_flight += bytes;
        }
        self.taken += bytes;
        Ok(())
    }

    /// The upload was committed: its bytes now count as usage until the ledger goes.
    pub fn commit(&mut self) {
        let mut ledgers = self.store.lock_ledgers();
        if let Some(ledger) = ledgers.get_mut(&self.project) {
            ledger.in_flight -= self.taken;
            ledger.size += self.taken;
            if self.staging {
                ledger.stage_in_flight -= self.taken;
                ledger.stage += self.taken;
            }
        }
        self.taken = 0;
    }
}

impl Drop for QuotaClaim {
    fn drop(&mut self) {
        let mut ledgers = self.store.lock_ledgers();
        if let Some(ledger) = ledgers.get_mut(&self.project) {
            ledger.in_flight -= self.taken;
            if self.staging {
                ledger.stage_in_flight -= self.taken;
            }
            ledger.holders -= 1;
            if ledger.holders == 0 {
                ledgers.remove(&self.project);
            }
        }
    }
}

impl Store {
    fn lock_ledgers(&self) -> std::sync::MutexGuard<'_, HashMap<String, Ledger>> {
        self.ledgers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// The limits of a project: its overrides over the configured defaults. Blocks.
    pub fn quotas(&self, project: &str) -> Result<Quotas, StoreError> {
        Ok(self.limits.quotas.with(&self.kv.quota(project)?))
    }

    /// What a project's images hold (the running totals). Blocks.
    pub fn usage(&self, project: &str) -> Result<Usage, StoreError> {
        Ok(self.kv.usage(project)?)
    }

    /// Projects with quota overrides.
    pub fn quota_overrides(&self) -> Result<Vec<(String, QuotaRecord)>, StoreError> {
        Ok(self.kv.quotas()?)
    }

    /// Sets a project's quota overrides. Blocks.
    pub fn set_quota_overrides(
        &self,
        project: &str,
        overrides: &QuotaRecord,
    ) -> Result<(), StoreError> {
        Ok(self.kv.set_quota(project, overrides)?)
    }

    /// Whether a project may create one more image. Blocks.
    pub fn check_image_count(&self, project: &str) -> Result<(), StoreError> {
        let quotas = self.quotas(project)?;
        if let Some(limit) = quotas.image_count_total {
            let usage = self.kv.usage(project)?.count_total;
            if usage >= limit {
                return Err(StoreError::Quota(QuotaExceeded {
                    quota: "image_count_total",
                    limit,
                    usage,
                }));
            }
        }
        Ok(())
    }

    /// Opens an upload's claim on its project's quota: refused at once if the project has as
    /// many uploads running as it may, or if the declared size would not fit; `None` when no
    /// byte limit applies, so that unlimited projects pay nothing per chunk. Blocks.
    pub(super) fn claim_quota(
        self: &Arc<Self>,
        project: &str,
        staging: bool,
        declared: Option<u64>,
    ) -> Result<Option<QuotaClaim>, StoreError> {
        let quotas = self.quotas(project)?;
        let unlimited = quotas.image_size_total.is_none()
            && quotas.image_stage_total.is_none()
            && quotas.image_count_uploading.is_none();
        let usage = if unlimited {
            Usage::default()
        } else {
            self.kv.usage(project)?
        };
        if let Some(limit) = quotas.image_count_uploading
            && usage.count_uploading >= limit
        {
            return Err(StoreError::Quota(QuotaExceeded {
                quota: "image_count_uploading",
                limit,
                usage: usage.count_uploading,
            }));
        }
        if quotas.image_size_total.is_none() && (quotas.image_stage_total.is_none() || !staging) {
            return Ok(None);
        }
        {
            let mut ledgers = self.lock_ledgers();
            let ledger = ledgers.entry(project.to_owned()).or_insert_with(|| Ledger {
                size: usage.size_total,
                stage: usage.stage_total,
                ..Ledger::default()
            });
            ledger.holders += 1;
        }
        let mut claim = QuotaClaim {
            store: self.clone(),
            project: project.to_owned(),
            quotas,
            staging,
            taken: 0,
            prepaid: 0,
            refused: None,
        };
        // A declared size is taken up front: a body that cannot fit is refused before it is
        // sent, and of several uploads at once the first to declare gets the room.
        if let Some(declared) = declared {
            claim.reserve(declared).map_err(StoreError::Quota)?;
            claim.prepaid = declared;
        }
        Ok(Some(claim))
    }
}
