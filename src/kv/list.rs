//! Paged listing: planning a query over the sort and filter indexes, and running it.
//!
//! A request names, besides its order and page, candidate sets: each a union of spans (an
//! indexed `field = value`, a time range, a list of ids) that holds every image the query may
//! return. The caller derives them from its filters; `matches` stays the judge of each image,
//! so a candidate set only has to be a superset. The plan:
//!
//! 1. Probe: count each set's index entries, stopping at `PROBE` or at the smallest count seen
//!    so far, so probing costs at most `PROBE` entries per set (and much less once one set has
//!    turned out small).
//! 2. Sorted by `created_at` alone (the default): walk the chosen set's spans from the marker
//!    in creation order, merged, loading and checking each candidate until the page is full.
//!    The chosen set is the smallest if one fits under `PROBE`, else the first (the caller lists
//!    sets most selective first).
//! 3. Any other order, with a set of at most `PROBE` entries: load those candidates, check
//!    them, sort them in memory and cut the page after the marker.
//! 4. Otherwise walk the sort index of the first sort key from the marker (narrowed to a time
//!    range when the key is `created_at` or `updated_at` and the filters give one), checking
//!    each image, as before the filter index existed.

use std::collections::HashSet;
use std::ops::Bound;

use redb::{ReadOnlyTable, ReadableTableMetadata};

use super::filter::{IndexTable, IndexedProperties, Lookup};
use super::index::{self, Direction, SortKey};
use super::records::ImageRecord;
use super::tables::{IMAGE_FILTER_INDEX, IMAGE_SORT_INDEX, IMAGES, ImageId};
use super::{Kv, KvError, ListOutcome, ListRequest};

/// The most index entries a probe counts per candidate set, and so the most candidates a
/// query in another order than `created_at` sorts in memory.
pub const PROBE: usize = 2048;

/// One part of a candidate set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Span {
    /// The images with this indexed value.
    Lookup(Lookup),
    /// The images created in `[from, to)`, microseconds.
    CreatedAt { from: i64, to: i64 },
    /// The images last updated in `[from, to)`, microseconds.
    UpdatedAt { from: i64, to: i64 },
    /// These images (those that exist).
    Ids(Vec<ImageId>),
}

/// A union of spans holding every image a query may return. No spans: no image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidates(pub Vec<Span>);

type IndexTableRef = ReadOnlyTable<&'static [u8], ()>;

/// A span located in the database.
enum Source {
    /// Keys in `[start, end)` of one index.
    Range {
        table: IndexTable,
        start: Vec<u8>,
        end: Vec<u8>,
        order: RangeOrder,
    },
    /// Ids, with their `[created_at][id]` suffixes in ascending order once loaded.
    Ids(Vec<ImageId>),
}

/// How the keys of a range relate to the `[created_at][id]` suffix.
#[derive(Clone, Copy)]
enum RangeOrder {
    /// Every key is this many bytes of fixed prefix, then the suffix: key order is suffix order.
    Group(usize),
    /// `created_at` sort-index keys (`[tag][created_at][created_at][id]`): also suffix order.
    CreatedAt,
    /// Not in suffix order (the `updated_at` index).
    Unordered,
}

impl Source {
    fn locate(span: &Span, indexed: &IndexedProperties) -> Option<Source> {
        let time_range = |key: SortKey, from: i64, to: i64, order| {
            let mut start = key.range_start();
            start.extend_from_slice(&index::encode_time(from));
            // No upper bound: to the end of the key's entries (`to` is exclusive).
            let end = if to == i64::MAX {
                key.range_end()
            } else {
                let mut end = key.range_start();
                end.extend_from_slice(&index::encode_time(to));
                end
            };
            Source::Range {
                table: IndexTable::Sort,
                start,
                end,
                order,
            }
        };
        Some(match span {
            Span::Lookup(lookup) => {
                let (table, prefix) = lookup.prefix(indexed)?;
                let mut end = prefix.clone();
                end.extend_from_slice(&[0xff; index::SUFFIX_LEN + 1]);
                Source::Range {
                    table,
                    order: RangeOrder::Group(prefix.len()),
                    start: prefix,
                    end,
                }
            }
            Span::CreatedAt { from, to } => {
                time_range(SortKey::CreatedAt, *from, *to, RangeOrder::CreatedAt)
            }
            Span::UpdatedAt { from, to } => {
                time_range(SortKey::UpdatedAt, *from, *to, RangeOrder::Unordered)
            }
            Span::Ids(ids) => Source::Ids(ids.clone()),
        })
    }

    fn ordered(&self) -> bool {
        match self {
            Source::Range { order, .. } => !matches!(order, RangeOrder::Unordered),
            Source::Ids(ids) => ids.len() <= PROBE,
        }
    }
}

/// The open tables a query reads.
struct Tables {
    images: ReadOnlyTable<ImageId, &'static [u8]>,
    sort: IndexTableRef,
    filter: IndexTableRef,
}

impl Tables {
    fn index(&self, table: IndexTable) -> &IndexTableRef {
        match table {
            IndexTable::Sort => &self.sort,
            IndexTable::Filter => &self.filter,
        }
    }

    fn load(&self, id: ImageId) -> Result<Option<ImageRecord>, KvError> {
        match self.images.get(id)? {
            Some(bytes) => Ok(Some(ImageRecord::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    fn load_indexed(&self, key: &[u8]) -> Result<ImageRecord, KvError> {
        let id = index::id_of(key).ok_or_else(|| KvError::Corrupt("short index key".into()))?;
        self.load(id)?
            .ok_or_else(|| KvError::Corrupt(format!("index names missing image {id}")))
    }

    /// How many entries `sources` hold, counting no further than `cap + 1`.
    fn count(&self, sources: &[Source], cap: usize) -> Result<usize, KvError> {
        let mut count = 0;
        for source in sources {
            match source {
                Source::Ids(ids) => count += ids.len(),
                Source::Range {
                    table, start, end, ..
                } => {
                    let range = self
                        .index(*table)
                        .range::<&[u8]>(start.as_slice()..end.as_slice())?;
                    for entry in range.take(cap + 1 - count.min(cap)) {
                        entry?;
                        count += 1;
                    }
                }
            }
            if count > cap {
                break;
            }
        }
        Ok(count)
    }
}

impl Kv {
    /// One page of images in the requested order, starting after the marker, keeping those for
    /// which `matches` holds. The marker must exist and satisfy `visible`. How the images are
    /// found is planned as the module documentation says.
    pub fn list_images(
        &self,
        request: &ListRequest<'_>,
        visible: &dyn Fn(&ImageRecord) -> bool,
        matches: &dyn Fn(&ImageRecord) -> bool,
    ) -> Result<ListOutcome, KvError> {
        let transaction = self.begin_read()?;
        let tables = Tables {
            images: transaction.open_table(IMAGES)?,
            sort: transaction.open_table(IMAGE_SORT_INDEX)?,
            filter: transaction.open_table(IMAGE_FILTER_INDEX)?,
        };
        let marker = match request.marker {
            None => None,
            Some(marker) => match tables.load(marker)? {
                Some(record) if visible(&record) => Some(record),
                _ => return Ok(ListOutcome::MarkerNotFound),
            },
        };
        let wanted = request.limit.saturating_add(1);
        let by_creation = matches!(request.sort, [(SortKey::CreatedAt, direction)] if *direction == request.tiebreak);

        // Locate every usable set; a set with an unindexed span is no help.
        let mut sets: Vec<Vec<Source>> = Vec::new();
        for candidates in &request.candidates {
            let located: Option<Vec<Source>> = candidates
                .0
                .iter()
                .map(|span| Source::locate(span, &self.indexed))
                .collect();
            match located {
                Some(sources) if sources.is_empty() => {
                    return Ok(ListOutcome::Page {
                        images: Vec::new(),
                        more: false,
                    });
                }
                Some(sources) => sets.push(sources),
                None => {}
            }
        }

        let catalog = tables.images.len()?;
        let mut smallest: Option<(usize, usize)> = None;
        for (position, sources) in sets.iter().enumerate() {
            let cap = smallest.map_or(PROBE, |(_, count)| count);
            let count = tables.count(sources, cap)?;
            if count <= cap && smallest.is_none_or(|(_, best)| count < best) {
                smallest = Some((position, count));
            }
        }

        let mut page = if by_creation {
            let chosen = match smallest {
                Some((position, _)) if sets[position].iter().all(Source::ordered) => Some(position),
                _ => sets
                    .iter()
                    .position(|sources| sources.iter().all(Source::ordered)),
            };
            match chosen {
                Some(position) => merged_walk(
                    &tables,
                    &sets[position],
                    &Prefilter::new(&sets, Some(position)),
                    request.tiebreak,
                    marker.as_ref(),
                    wanted,
                    matches,
                )?,
                None => index_walk(&tables, request, &sets, marker.as_ref(), wanted, matches)?,
            }
        } else if single_key_groups(request, &sets) {
            index_walk(&tables, request, &sets, marker.as_ref(), wanted, matches)?
        } else if let Some((position, _)) = smallest.filter(|&(_, count)| {
            // Sorting a set in memory reads and decodes each of its records; the walk instead
            // steps through about wanted * catalog / count index entries (if the matches
            // are spread evenly), each a key and a point lookup, about a quarter of a read.
            (count as u64)
                .saturating_mul(count as u64)
                .saturating_mul(4)
                <= (wanted as u64).saturating_mul(catalog)
        }) {
            in_memory(
                &tables,
                request,
                &sets[position],
                marker.as_ref(),
                wanted,
                matches,
            )?
        } else {
            index_walk(&tables, request, &sets, marker.as_ref(), wanted, matches)?
        };

        let more = page.len() > request.limit;
        page.truncate(request.limit);
        Ok(ListOutcome::Page { images: page, more })
    }
}

/// The `[created_at][id]` suffixes of one span, in walk order.
type SuffixWalk<'a> = Box<dyn Iterator<Item = Result<[u8; 24], KvError>> + 'a>;

/// Whether a set names values of the only sort key (`name=x&sort_key=name`): walking those
/// groups of the sort index yields the candidates already in order.
fn single_key_groups(request: &ListRequest<'_>, sets: &[Vec<Source>]) -> bool {
    match request.sort {
        [(key, direction)] if *direction == request.tiebreak => sets.iter().any(|sources| {
            sources.iter().all(|source| {
                matches!(source, Source::Range { table: IndexTable::Sort, start, order: RangeOrder::Group(_), .. } if start[0] == key.range_start()[0])
            })
        }),
        _ => false,
    }
}

/// Walks the spans of one candidate set in creation order (merged, each image once), from
/// the marker, until `wanted` images match.
fn merged_walk(
    tables: &Tables,
    sources: &[Source],
    prefilter: &Prefilter,
    direction: Direction,
    marker: Option<&ImageRecord>,
    wanted: usize,
    matches: &dyn Fn(&ImageRecord) -> bool,
) -> Result<Vec<ImageRecord>, KvError> {
    let after = marker.map(super::filter::suffix_of);
    let mut walks: Vec<SuffixWalk<'_>> = Vec::new();
    for source in sources {
        let walk: SuffixWalk<'_> = match source {
            Source::Ids(ids) => {
                let mut suffixes = Vec::new();
                for &id in ids {
                    if let Some(record) = tables.load(id)? {
                        suffixes.push(super::filter::suffix_of(&record));
                    }
                }
                suffixes.sort();
                suffixes.dedup();
                suffixes.retain(|suffix| match (after, direction) {
                    (None, _) => true,
                    (Some(after), Direction::Asc) => *suffix > after,
                    (Some(after), Direction::Desc) => *suffix < after,
                });
                if direction == Direction::Desc {
                    suffixes.reverse();
                }
                Box::new(suffixes.into_iter().map(Ok))
            }
            Source::Range {
                table,
                start,
                end,
                order,
            } => {
                let seek = after.map(|suffix| {
                    let mut key = match order {
                        RangeOrder::Group(length) => start[..*length].to_vec(),
                        RangeOrder::CreatedAt => {
                            let mut key = SortKey::CreatedAt.range_start();
                            key.extend_from_slice(&suffix[..8]);
                            key
                        }
                        RangeOrder::Unordered => unreachable!("only ordered spans are walked"),
                    };
                    key.extend_from_slice(&suffix);
                    key
                });
                let (lower, upper) = match (&seek, direction) {
                    (None, _) => (
                        Bound::Included(start.as_slice()),
                        Bound::Excluded(end.as_slice()),
                    ),
                    (Some(seek), Direction::Asc) if seek >= start => (
                        Bound::Excluded(seek.as_slice()),
                        Bound::Excluded(end.as_slice()),
                    ),
                    (Some(_), Direction::Asc) => (
                        Bound::Included(start.as_slice()),
                        Bound::Excluded(end.as_slice()),
                    ),
                    (Some(seek), Direction::Desc) if seek <= end => (
                        Bound::Included(start.as_slice()),
                        Bound::Excluded(seek.as_slice()),
                    ),
                    (Some(_), Direction::Desc) => (
                        Bound::Included(start.as_slice()),
                        Bound::Excluded(end.as_slice()),
                    ),
                };
                if !bounds_ordered(lower, upper) {
                    continue;
                }
                let range = tables.index(*table).range::<&[u8]>((lower, upper))?;
                let suffixes = range.map(|entry| {
                    let (key, _) = entry?;
                    let key = key.value();
                    let start = key
                        .len()
                        .checked_sub(index::SUFFIX_LEN)
                        .ok_or_else(|| KvError::Corrupt("short index key".into()))?;
                    let mut suffix = [0u8; 24];
                    suffix.copy_from_slice(&key[start..]);
                    Ok(suffix)
                });
                match direction {
                    Direction::Asc => Box::new(suffixes),
                    Direction::Desc => Box::new(suffixes.rev()),
                }
            }
        };
        walks.push(walk);
    }

    // The next suffix of every walk in a max-heap, so that a step costs the logarithm of the
    // number of spans; ascending walks push the complemented bytes, which order the other way.
    let ordered = |suffix: [u8; 24]| match direction {
        Direction::Asc => suffix.map(|byte| !byte),
        Direction::Desc => suffix,
    };
    let mut heads = std::collections::BinaryHeap::new();
    for (position, walk) in walks.iter_mut().enumerate() {
        if let Some(suffix) = walk.next().transpose()? {
            heads.push((ordered(suffix), position, suffix));
        }
    }
    let mut page = Vec::new();
    let mut last: Option<[u8; 24]> = None;
    while page.len() < wanted {
        let Some((_, position, suffix)) = heads.pop() else {
            break;
        };
        if let Some(next) = walks[position].next().transpose()? {
            heads.push((ordered(next), position, next));
        }
        if last == Some(suffix) {
            continue;
        }
        last = Some(suffix);
        if !prefilter.admits(tables, suffix)? {
            continue;
        }
        let id = ImageId(suffix[8..].try_into().expect("16 bytes"));
        let Some(record) = tables.load(id)? else {
            return Err(KvError::Corrupt(format!("index names missing image {id}")));
        };
        if matches(&record) {
            page.push(record);
        }
    }
    Ok(page)
}

/// Loads every image of a small candidate set, keeps those that match and sorts them.
fn in_memory(
    tables: &Tables,
    request: &ListRequest<'_>,
    sources: &[Source],
    marker: Option<&ImageRecord>,
    wanted: usize,
    matches: &dyn Fn(&ImageRecord) -> bool,
) -> Result<Vec<ImageRecord>, KvError> {
    let mut ids = HashSet::new();
    for source in sources {
        match source {
            Source::Ids(list) => ids.extend(list.iter().copied()),
            Source::Range {
                table, start, end, ..
            } => {
                for entry in tables
                    .index(*table)
                    .range::<&[u8]>(start.as_slice()..end.as_slice())?
                {
                    let (key, _) = entry?;
                    ids.insert(
                        index::id_of(key.value())
                            .ok_or_else(|| KvError::Corrupt("short index key".into()))?,
                    );
                }
            }
        }
    }
    let mut found = Vec::new();
    for id in ids {
        if let Some(record) = tables.load(id)?
            && matches(&record)
            && marker.is_none_or(|marker| {
                compare_records(request, marker, &record) == std::cmp::Ordering::Less
            })
        {
            found.push(record);
        }
    }
    found.sort_by(|left, right| compare_records(request, left, right));
    found.truncate(wanted);
    Ok(found)
}

/// Walks the sort index of the first sort key from the marker, checking every image.
fn index_walk(
    tables: &Tables,
    request: &ListRequest<'_>,
    sets: &[Vec<Source>],
    marker: Option<&ImageRecord>,
    wanted: usize,
    matches: &dyn Fn(&ImageRecord) -> bool,
) -> Result<Vec<ImageRecord>, KvError> {
    let (first_key, first_direction) = request.sort[0];
    let marker_key = marker.map(|record| index::index_key(first_key, record));
    let single = request.sort.len() == 1 && request.tiebreak == first_direction;
    let range_start = first_key.range_start();
    let range_end = first_key.range_end();
    // For several keys, the scan starts at the beginning of the marker's group (or ends at
    // its end, scanning backwards) and skips up to the marker inside that group.
    let group_bound = marker_key.as_ref().map(|key| {
        let group = index::group_of(key).to_vec();
        let mut group_end = group.clone();
        group_end.extend_from_slice(&[0xff; index::SUFFIX_LEN + 1]);
        (group, group_end)
    });
    let lower: Bound<&[u8]>;
    let upper: Bound<&[u8]>;
    match (first_direction, &marker_key, &group_bound, single) {
        (_, None, _, _) => {
            lower = Bound::Included(&range_start);
            upper = Bound::Excluded(&range_end);
        }
        (Direction::Asc, Some(key), _, true) => {
            lower = Bound::Excluded(key.as_slice());
            upper = Bound::Excluded(&range_end);
        }
        (Direction::Desc, Some(key), _, true) => {
            lower = Bound::Included(&range_start);
            upper = Bound::Excluded(key.as_slice());
        }
        (Direction::Asc, Some(_), Some((group, _)), false) => {
            lower = Bound::Included(group.as_slice());
            upper = Bound::Excluded(&range_end);
        }
        (Direction::Desc, Some(_), Some((_, group_end)), false) => {
            lower = Bound::Included(&range_start);
            upper = Bound::Excluded(group_end.as_slice());
        }
        (_, Some(_), None, _) => unreachable!("a marker key always has a group bound"),
    }
    // The parts of the first key's index to walk, in walk order: the groups of a set that
    // names values of the first key (`status=in:…` sorted by status), or a time range on it,
    // or the whole key.
    let (walked, mut ranges) = match first_key_ranges(sets, first_key) {
        Some((position, ranges)) => (Some(position), ranges),
        None => (None, vec![(range_start.as_slice(), range_end.as_slice())]),
    };
    let prefilter = Prefilter::new(sets, walked);
    if first_direction == Direction::Desc {
        ranges.reverse();
    }
    let mut walks = Vec::new();
    for (start, end) in ranges {
        let low = tighter_lower(lower, Bound::Included(start));
        let high = tighter_upper(upper, Bound::Excluded(end));
        if !bounds_ordered(low, high) {
            continue;
        }
        let range = tables.sort.range::<&[u8]>((low, high))?;
        let walk: Box<dyn Iterator<Item = _>> = match first_direction {
            Direction::Asc => Box::new(range),
            Direction::Desc => Box::new(range.rev()),
        };
        walks.push(walk);
    }
    let entries = walks.into_iter().flatten();

    let mut page: Vec<ImageRecord> = Vec::new();
    if single {
        for entry in entries {
            let (key, _) = entry?;
            if !prefilter.admits(tables, suffix_of_key(key.value())?)? {
                continue;
            }
            let record = tables.load_indexed(key.value())?;
            if matches(&record) {
                page.push(record);
                if page.len() == wanted {
                    break;
                }
            }
        }
        return Ok(page);
    }
    let comparator =
        |left: &ImageRecord, right: &ImageRecord| compare_records(request, left, right);
    let mut group_key: Vec<u8> = Vec::new();
    let mut group: Vec<ImageRecord> = Vec::new();
    let flush = |group: &mut Vec<ImageRecord>, page: &mut Vec<ImageRecord>| {
        group.sort_by(comparator);
        for record in group.drain(..) {
            if page.len() == wanted {
                break;
            }
            // Only what comes after the marker in the listing's order (the marker itself need
            // not be among the walked images: the walk may be narrowed past its group).
            if marker.is_some_and(|marker| {
                compare_records(request, marker, &record) != std::cmp::Ordering::Less
            }) {
                continue;
            }
            if matches(&record) {
                page.push(record);
            }
        }
    };
    for entry in entries {
        let (key, _) = entry?;
        let key = key.value();
        if index::group_of(key) != group_key.as_slice() {
            flush(&mut group, &mut page);
            if page.len() == wanted {
                break;
            }
            group_key = index::group_of(key).to_vec();
        }
        group.push(tables.load_indexed(key)?);
    }
    flush(&mut group, &mut page);
    Ok(page)
}

/// `[start, end)` of index keys.
type KeyRange<'a> = (&'a [u8], &'a [u8]);

/// The ranges of the first sort key's index that hold every candidate, if a set gives them:
/// groups of values of that key (`status=in:…` when sorting by status), or a time range on
/// `created_at` or `updated_at`. In ascending order; with the set's position.
fn first_key_ranges(
    sets: &[Vec<Source>],
    first_key: SortKey,
) -> Option<(usize, Vec<KeyRange<'_>>)> {
    let tag = first_key.range_start()[0];
    sets.iter().enumerate().find_map(|(position, sources)| {
        let mut ranges = Vec::new();
        for source in sources {
            match source {
                Source::Range {
                    table: IndexTable::Sort,
                    start,
                    end,
                    ..
                } if start[0] == tag => ranges.push((start.as_slice(), end.as_slice())),
                _ => return None,
            }
        }
        ranges.sort();
        ranges.dedup();
        Some((position, ranges))
    })
}

/// The `[created_at][id]` suffix of an index key.
fn suffix_of_key(key: &[u8]) -> Result<[u8; 24], KvError> {
    key.len()
        .checked_sub(index::SUFFIX_LEN)
        .and_then(|start| key[start..].try_into().ok())
        .ok_or_else(|| KvError::Corrupt("short index key".into()))
}

/// Checks that rule a candidate out before its record is read: for each other set made of
/// indexed values, ids or a creation-time range, whether the image is in it (a point lookup
/// of `[prefix][created_at][id]`, a hash lookup, a comparison of the suffix). Cheaper than
/// loading and decoding the record when the walked set is broad and another is narrow
/// (`tag=x&sort_key=name`).
struct Prefilter {
    sets: Vec<Vec<Check>>,
}

enum Check {
    Entry(IndexTable, Vec<u8>),
    Ids(HashSet<ImageId>),
    /// Encoded `created_at` bounds, `[from, to)`.
    Created([u8; 8], [u8; 8]),
}

impl Prefilter {
    fn new(sets: &[Vec<Source>], walked: Option<usize>) -> Prefilter {
        let mut checks = Vec::new();
        for (position, sources) in sets.iter().enumerate() {
            if Some(position) == walked {
                continue;
            }
            let set: Option<Vec<Check>> = sources
                .iter()
                .map(|source| match source {
                    Source::Range {
                        table,
                        start,
                        order: RangeOrder::Group(length),
                        ..
                    } => Some(Check::Entry(*table, start[..*length].to_vec())),
                    Source::Range {
                        start,
                        end,
                        order: RangeOrder::CreatedAt,
                        ..
                    } => Some(Check::Created(
                        start.get(1..9)?.try_into().ok()?,
                        end.get(1..9)?.try_into().ok()?,
                    )),
                    Source::Ids(ids) => Some(Check::Ids(ids.iter().copied().collect())),
                    Source::Range { .. } => None,
                })
                .collect();
            if let Some(set) = set {
                checks.push(set);
            }
        }
        Prefilter { sets: checks }
    }

    fn admits(&self, tables: &Tables, suffix: [u8; 24]) -> Result<bool, KvError> {
        let mut key = Vec::new();
        for set in &self.sets {
            let mut found = false;
            for check in set {
                found = match check {
                    Check::Entry(table, prefix) => {
                        key.clear();
                        key.extend_from_slice(prefix);
                        key.extend_from_slice(&suffix);
                        tables.index(*table).get(key.as_slice())?.is_some()
                    }
                    Check::Ids(ids) => {
                        ids.contains(&ImageId(suffix[8..].try_into().expect("16 bytes")))
                    }
                    Check::Created(from, to) => {
                        let created = &suffix[..8];
                        created >= from.as_slice() && created < to.as_slice()
                    }
                };
                if found {
                    break;
                }
            }
            if !found {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether a range with these bounds is non-empty-shaped (redb refuses reversed ranges).
fn bounds_ordered(lower: Bound<&[u8]>, upper: Bound<&[u8]>) -> bool {
    match (lower, upper) {
        (Bound::Included(low), Bound::Included(high)) => low <= high,
        (Bound::Included(low) | Bound::Excluded(low), Bound::Excluded(high))
        | (Bound::Excluded(low), Bound::Included(high)) => low < high,
        _ => true,
    }
}

/// The higher of two lower bounds.
fn tighter_lower<'a>(left: Bound<&'a [u8]>, right: Bound<&'a [u8]>) -> Bound<&'a [u8]> {
    match (left, right) {
        (Bound::Unbounded, other) | (other, Bound::Unbounded) => other,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b))
            if a != b =>
        {
            if a > b {
                left
            } else {
                right
            }
        }
        (Bound::Excluded(a), _) | (_, Bound::Excluded(a)) => Bound::Excluded(a),
        (Bound::Included(a), Bound::Included(_)) => Bound::Included(a),
    }
}

/// The lower of two upper bounds.
fn tighter_upper<'a>(left: Bound<&'a [u8]>, right: Bound<&'a [u8]>) -> Bound<&'a [u8]> {
    match (left, right) {
        (Bound::Unbounded, other) | (other, Bound::Unbounded) => other,
        (Bound::Included(a) | Bound::Excluded(a), Bound::Included(b) | Bound::Excluded(b))
            if a != b =>
        {
            if a < b {
                left
            } else {
                right
            }
        }
        (Bound::Excluded(a), _) | (_, Bound::Excluded(a)) => Bound::Excluded(a),
        (Bound::Included(a), Bound::Included(_)) => Bound::Included(a),
    }
}

/// Orders two records by every requested key, then the tie-breakers.
pub fn compare_records(
    request: &ListRequest<'_>,
    left: &ImageRecord,
    right: &ImageRecord,
) -> std::cmp::Ordering {
    let keys = request.sort.iter().copied().chain([
        (SortKey::CreatedAt, request.tiebreak),
        (SortKey::Id, request.tiebreak),
    ]);
    for (key, direction) in keys {
        let mut left_value = Vec::new();
        let mut right_value = Vec::new();
        key.encode_value(left, &mut left_value);
        key.encode_value(right, &mut right_value);
        let ordering = match direction {
            Direction::Asc => left_value.cmp(&right_value),
            Direction::Desc => right_value.cmp(&left_value),
        };
        if ordering.is_ne() {
            return ordering;
        }
    }
    std::cmp::Ordering::Equal
}
