//! Running totals of the catalog, kept in step with the records in the records' own write
//! transactions: images and their bytes per status and per project (with what quotas count),
//! and the blobs the images reference. `/metrics`, `ocellus stats` and the quota checks read
//! these few rows instead of decoding every image record, which at a million images took
//! seconds per scrape or per upload.
//!
//! Rows of `usage_v1` (values are four counters):
//! - `project:<owner>`: images, bytes, staged bytes, images receiving data (`Usage`);
//! - `unowned`: the same for images without an owner (reported with the empty name, as the
//!   statistics always have, but never counted against a project called "");
//! - `status:<status>`: images and their bytes;
//! - `blobs`: referenced blobs and their bytes.
//!
//! A row whose counters all reach zero is removed. The totals are built from the records when
//! a database gains them (schema 11) and by `ocellus check --repair`; `check` compares them
//! with a fresh count.

use std::collections::BTreeMap;

use redb::{ReadableTable, WriteTransaction};

use super::tables::{BLOBS, IMAGES, USAGE};
use super::{ImageRecord, ImageStatus, KvError, Usage};

const BLOBS_ROW: &str = "blobs";
const UNOWNED_ROW: &str = "unowned";
const PROJECT: &str = "project:";
const STATUS: &str = "status:";

type Counters = [u64; 4];

fn status_row(status: ImageStatus) -> String {
    format!("{STATUS}{}", status.as_str())
}

fn project_row(owner: Option<&str>) -> String {
    owner.map_or_else(|| UNOWNED_ROW.to_owned(), |name| format!("{PROJECT}{name}"))
}

/// What one record adds to the totals: its project's row and its status's row.
fn contributions(record: &ImageRecord) -> [(String, Counters); 2] {
    let size = record.data.as_ref().map_or(0, |data| data.size);
    let (staged, receiving) = match record.status {
        ImageStatus::Uploading | ImageStatus::Importing => (size, 1),
        ImageStatus::Saving => (0, 1),
        _ => (0, 0),
    };
    [
        (
            project_row(record.owner.as_deref()),
            [1, size, staged, receiving],
        ),
        (status_row(record.status), [1, size, 0, 0]),
    ]
}

/// The totals table, open in a write transaction.
pub(super) struct Totals<'t> {
    table: redb::Table<'t, &'static str, Counters>,
}

impl<'t> Totals<'t> {
    pub(super) fn open(transaction: &'t WriteTransaction) -> Result<Totals<'t>, KvError> {
        Ok(Totals {
            table: transaction.open_table(USAGE)?,
        })
    }

    /// Adds `add` to a row and takes `take` from it; a row left at zero goes. Totals that
    /// drifted (they never should) stop at zero rather than fail the record's write: the
    /// totals only report, and `ocellus check` finds and recounts them.
    fn change(&mut self, row: &str, add: Counters, take: Counters) -> Result<(), KvError> {
        let current = self.table.get(row)?.map_or([0; 4], |value| value.value());
        let mut next = [0; 4];
        for (at, slot) in next.iter_mut().enumerate() {
            let sum = current[at].saturating_add(add[at]);
            if sum < take[at] {
                tracing::warn!(
                    row,
                    "the catalog's running totals drifted; `ocellus check --repair` recounts them"
                );
            }
            *slot = sum.saturating_sub(take[at]);
        }
        if next == [0; 4] {
            self.table.remove(row)?;
        } else if next != current {
            self.table.insert(row, next)?;
        }
        Ok(())
    }

    /// Moves the totals from `old`'s contribution (if any) to `new`'s (if any).
    pub(super) fn replace(
        &mut self,
        old: Option<&ImageRecord>,
        new: Option<&ImageRecord>,
    ) -> Result<(), KvError> {
        let mut rows: BTreeMap<String, (Counters, Counters)> = BTreeMap::new();
        for (row, counters) in new.iter().flat_map(|record| contributions(record)) {
            rows.entry(row).or_default().0 = counters;
        }
        for (row, counters) in old.iter().flat_map(|record| contributions(record)) {
            rows.entry(row).or_default().1 = counters;
        }
        for (row, (add, take)) in rows {
            if add != take {
                self.change(&row, add, take)?;
            }
        }
        Ok(())
    }

    /// A blob gained its first reference (`true`) or lost its last.
    pub(super) fn blob(&mut self, size: u64, referenced: bool) -> Result<(), KvError> {
        if referenced {
            self.change(BLOBS_ROW, [1, size, 0, 0], [0; 4])
        } else {
            self.change(BLOBS_ROW, [0; 4], [1, size, 0, 0])
        }
    }
}

/// The catalog's totals as read back.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CatalogTotals {
    /// Images and their bytes per status, every status present (zero included).
    pub by_status: BTreeMap<&'static str, (u64, u64)>,
    /// What each project's images hold; projects without images are absent.
    pub projects: BTreeMap<String, Usage>,
    /// Referenced blobs and their bytes.
    pub blobs: (u64, u64),
}

impl CatalogTotals {
    fn empty() -> CatalogTotals {
        CatalogTotals {
            by_status: ImageStatus::ALL
                .iter()
                .map(|status| (status.as_str(), (0, 0)))
                .collect(),
            ..CatalogTotals::default()
        }
    }

    /// Images in the catalog, and the bytes of their data.
    pub fn images(&self) -> (u64, u64) {
        self.by_status
            .values()
            .fold((0, 0), |(images, bytes), (count, size)| {
                (images + count, bytes + size)
            })
    }

    fn add_row(&mut self, row: &str, counters: Counters) -> Result<(), KvError> {
        let project = match row {
            UNOWNED_ROW => Some(""),
            _ => row.strip_prefix(PROJECT),
        };
        if row == BLOBS_ROW {
            self.blobs = (counters[0], counters[1]);
        } else if let Some(project) = project {
            let usage = self.projects.entry(project.to_owned()).or_default();
            usage.count_total += counters[0];
            usage.size_total += counters[1];
            usage.stage_total += counters[2];
            usage.count_uploading += counters[3];
        } else if let Some(status) = row
            .strip_prefix(STATUS)
            .and_then(|name| ImageStatus::ALL.iter().find(|s| s.as_str() == name))
        {
            self.by_status
                .insert(status.as_str(), (counters[0], counters[1]));
        } else {
            return Err(KvError::Corrupt(format!("unknown usage row {row}")));
        }
        Ok(())
    }

    /// The totals stored in `table`.
    pub(super) fn read(
        table: &impl ReadableTable<&'static str, Counters>,
    ) -> Result<CatalogTotals, KvError> {
        let mut totals = CatalogTotals::empty();
        for entry in table.iter()? {
            let (row, counters) = entry?;
            totals.add_row(row.value(), counters.value())?;
        }
        Ok(totals)
    }

    /// What differs from `other`, row by row (at most `limit` rows named).
    pub fn differences(&self, other: &CatalogTotals, limit: usize) -> Vec<String> {
        let mut found = Vec::new();
        if self.blobs != other.blobs {
            found.push(format!("blobs {:?} against {:?}", self.blobs, other.blobs));
        }
        for (status, kept) in &self.by_status {
            let counted = other.by_status.get(status).copied().unwrap_or_default();
            if *kept != counted {
                found.push(format!("{status} images {kept:?} against {counted:?}"));
            }
        }
        let names: std::collections::BTreeSet<&String> =
            self.projects.keys().chain(other.projects.keys()).collect();
        for name in names {
            let (kept, counted) = (self.projects.get(name), other.projects.get(name));
            if kept != counted {
                found.push(format!(
                    "project {name:?}: {:?} against {:?}",
                    kept.copied().unwrap_or_default(),
                    counted.copied().unwrap_or_default()
                ));
            }
        }
        found.truncate(limit);
        found
    }
}

/// The totals counted afresh, record by record and blob row by blob row (by `audit` and the
/// rebuild, each in its own pass over the tables).
#[derive(Default)]
pub(super) struct Count {
    rows: BTreeMap<String, Counters>,
}

impl Count {
    pub(super) fn add_record(&mut self, record: &ImageRecord) {
        for (row, counters) in contributions(record) {
            let total = self.rows.entry(row).or_default();
            for (at, value) in counters.into_iter().enumerate() {
                total[at] += value;
            }
        }
    }

    pub(super) fn add_blob(&mut self, size: u64, references: u64) {
        if references > 0 {
            let total = self.rows.entry(BLOBS_ROW.to_owned()).or_default();
            total[0] += 1;
            total[1] += size;
        }
    }

    pub(super) fn totals(&self) -> Result<CatalogTotals, KvError> {
        let mut totals = CatalogTotals::empty();
        for (row, counters) in &self.rows {
            totals.add_row(row, *counters)?;
        }
        Ok(totals)
    }
}

/// What `project`'s images hold, from its row.
pub(super) fn project(
    table: &impl ReadableTable<&'static str, Counters>,
    project: &str,
) -> Result<Usage, KvError> {
    let counters = table
        .get(project_row(Some(project)).as_str())?
        .map_or([0; 4], |value| value.value());
    Ok(Usage {
        count_total: counters[0],
        size_total: counters[1],
        stage_total: counters[2],
        count_uploading: counters[3],
    })
}

/// Replaces the stored totals with a fresh count, in `transaction`.
pub(super) fn rebuild(transaction: &WriteTransaction) -> Result<(), KvError> {
    let mut count = Count::default();
    {
        let images = transaction.open_table(IMAGES)?;
        for entry in images.iter()? {
            count.add_record(&ImageRecord::decode(entry?.1.value())?);
        }
        let blobs = transaction.open_table(BLOBS)?;
        for entry in blobs.iter()? {
            let (size, references) = entry?.1.value();
            count.add_blob(size, references);
        }
    }
    transaction.delete_table(USAGE)?;
    let mut table = transaction.open_table(USAGE)?;
    for (row, counters) in count.rows {
        table.insert(row.as_str(), counters)?;
    }
    Ok(())
}
