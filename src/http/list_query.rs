//! Parsing and applying the query parameters of `GET /v2/images`.
//!
//! Glance's list takes paging (`limit`, `marker`), two sorting syntaxes (`sort_key`/`sort_dir`
//! and `sort=key:dir,...`), typed filters with operators (`in:`, `gt:` ...), and treats any
//! other parameter as a custom property that must equal the given value. Parsing refuses bad
//! input with 400 before any storage is touched; `Filters::matches` is evaluated per record
//! while the index is scanned.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;

use super::Error;
use crate::kv::MemberStatus;
use crate::kv::{
    Candidates, Direction, ImageId, ImageRecord, ImageStatus, Lookup, SortKey, Span, Visibility,
};
use crate::policy::{Caller, MemberStatusFilter, VisibilityFilter};

/// Glance's `limit_param_default` and `api_limit_max`.
pub const DEFAULT_LIMIT: usize = 25;
pub const MAX_LIMIT: usize = 1000;

/// Everything a list request asks for.
pub struct ListParams {
    pub sort: Vec<(SortKey, Direction)>,
    pub tiebreak: Direction,
    pub marker: Option<ImageId>,
    pub limit: usize,
    pub filters: Filters,
    /// The query as given, minus `marker`, for the `first` and `next` links.
    pub link_pairs: Vec<(String, String)>,
}

/// A comparison on a timestamp, at Glance's one-second resolution.
#[derive(Clone, Copy, Debug)]
enum TimeOp {
    Gt,
    Gte,
    Eq,
    Neq,
    Lt,
    Lte,
}

#[derive(Default)]
pub struct Filters {
    names: Option<Vec<String>>,
    ids: Option<Vec<String>>,
    statuses: Option<Vec<ImageStatus>>,
    disk_formats: Option<Vec<String>>,
    container_formats: Option<Vec<String>>,
    visibility: Option<VisibilityFilter>,
    member_status: Option<MemberStatusFilter>,
    owner: Option<String>,
    tags: Vec<String>,
    size_min: Option<u64>,
    size_max: Option<u64>,
    /// `size=N` and `virtual_size=N`: equality on the base columns, as in Glance.
    size: Option<u64>,
    virtual_size: Option<u64>,
    protected: Option<bool>,
    os_hidden: bool,
    checksum: Option<String>,
    os_hash_value: Option<String>,
    min_ram: Option<i64>,
    min_disk: Option<i64>,
    created_at: Vec<(TimeOp, i64)>,
    updated_at: Vec<(TimeOp, i64)>,
    properties: Vec<(String, String)>,
}

impl Filters {
    /// Whether `record` belongs in the caller's listing.
    pub fn matches(&self, record: &ImageRecord, caller: &Caller) -> bool {
        let visible = caller.lists(
            record,
            self.visibility.unwrap_or(VisibilityFilter::Default),
            self.member_status
                .unwrap_or(MemberStatusFilter::Only(MemberStatus::Accepted)),
        );
        if !visible || record.os_hidden != self.os_hidden {
            return false;
        }
        let contains = |list: &Option<Vec<String>>, value: Option<&str>| match list {
            None => true,
            Some(list) => value.is_some_and(|value| list.iter().any(|item| item == value)),
        };
        let size = record.data.as_ref().map(|data| data.size);
        contains(&self.names, record.name.as_deref())
            && contains(&self.ids, Some(&record.id.to_string()))
            && self
                .statuses
                .as_ref()
                .is_none_or(|statuses| statuses.contains(&record.status))
            && contains(&self.disk_formats, record.disk_format.as_deref())
            && contains(&self.container_formats, record.container_format.as_deref())
            && self
                .owner
                .as_ref()
                .is_none_or(|owner| record.owner.as_ref() == Some(owner))
            && self.tags.iter().all(|tag| record.tags.contains(tag))
            && self
                .size_min
                .is_none_or(|min| size.is_some_and(|size| size >= min))
            && self
                .size_max
                .is_none_or(|max| size.is_some_and(|size| size <= max))
            && self.size.is_none_or(|wanted| size == Some(wanted))
            && self.virtual_size.is_none_or(|wanted| {
                record.data.as_ref().and_then(|data| data.virtual_size) == Some(wanted)
            })
            && self
                .protected
                .is_none_or(|protected| record.protected == protected)
            && self
                .checksum
                .as_ref()
                .is_none_or(|sum| super::wire::checksum(record).as_ref() == Some(sum))
            && self.os_hash_value.as_ref().is_none_or(|hash| {
                record
                    .data
                    .as_ref()
                    .is_some_and(|data| &super::wire::hex(&data.sha512) == hash)
            })
            && self.min_ram.is_none_or(|min_ram| record.min_ram == min_ram)
            && self
                .min_disk
                .is_none_or(|min_disk| record.min_disk == min_disk)
            && time_matches(&self.created_at, record.created_at)
            && time_matches(&self.updated_at, record.updated_at)
            && self
                .properties
                .iter()
                .all(|(key, value)| record.properties.get(key) == Some(value))
    }
}

impl Filters {
    /// Sets of images that hold every image these filters admit for `caller`, most selective
    /// first, for the store's query planner (`kv::list`). `matches` still judges each image.
    pub fn candidates(&self, caller: &Caller) -> Vec<Candidates> {
        let one = |lookup: Lookup| Candidates(vec![Span::Lookup(lookup)]);
        let any_of =
            |lookups: Vec<Lookup>| Candidates(lookups.into_iter().map(Span::Lookup).collect());
        // One span per distinct value: `in:a,a,…` must not multiply the work.
        let distinct = |values: &[String]| -> Vec<String> {
            let set: std::collections::BTreeSet<&String> = values.iter().collect();
            set.into_iter().cloned().collect()
        };
        let mut sets = Vec::new();
        if let Some(ids) = &self.ids {
            // Only the canonical spelling of an id can equal one.
            let ids = ids
                .iter()
                .filter_map(|text| ImageId::parse(text).filter(|id| &id.to_string() == text))
                .collect();
            sets.push(Candidates(vec![Span::Ids(ids)]));
        }
        if let Some(sum) = &self.checksum {
            sets.push(match lowercase_hex::<16>(sum) {
                Some(md5) => one(Lookup::Checksum(md5)),
                None => Candidates::default(),
            });
        }
        if let Some(hash) = &self.os_hash_value {
            sets.push(match lowercase_hex::<64>(hash) {
                Some(sha512) => one(Lookup::OsHashValue(sha512)),
                None => Candidates::default(),
            });
        }
        if let Some(names) = &self.names {
            sets.push(any_of(
                distinct(names).into_iter().map(Lookup::Name).collect(),
            ));
        }
        for tag in &self.tags {
            sets.push(one(Lookup::Tag(tag.clone())));
        }
        for (name, value) in &self.properties {
            sets.push(one(Lookup::Property(name.clone(), value.clone())));
        }
        if let Some(owner) = &self.owner {
            sets.push(one(Lookup::Owner(owner.clone())));
        }
        let visibility = self.visibility.unwrap_or(VisibilityFilter::Default);
        if !caller.is_admin() {
            // What a project may list: its own images, public ones, community ones when asked
            // for, and those shared with it in an admitted member status.
            let member_status = self
                .member_status
                .unwrap_or(MemberStatusFilter::Only(MemberStatus::Accepted));
            let mut spans = vec![Span::Lookup(Lookup::Owner(caller.project_id.clone()))];
            if matches!(
                visibility,
                VisibilityFilter::Default
                    | VisibilityFilter::All
                    | VisibilityFilter::Only(Visibility::Public)
            ) {
                spans.push(Span::Lookup(Lookup::Visibility(Visibility::Public)));
            }
            if matches!(
                visibility,
                VisibilityFilter::All | VisibilityFilter::Only(Visibility::Community)
            ) {
                spans.push(Span::Lookup(Lookup::Visibility(Visibility::Community)));
            }
            if matches!(
                visibility,
                VisibilityFilter::Default
                    | VisibilityFilter::All
                    | VisibilityFilter::Only(Visibility::Shared)
            ) {
                let mut shared: Vec<ImageId> = caller
                    .memberships
                    .iter()
                    .filter(|(_, status)| member_status.admits(**status))
                    .map(|(id, _)| *id)
                    .collect();
                shared.sort();
                spans.push(Span::Ids(shared));
            }
            sets.push(Candidates(spans));
        }
        if let Some(span) = time_span(&self.created_at, |from, to| Span::CreatedAt { from, to }) {
            sets.push(span);
        }
        if let Some(span) = time_span(&self.updated_at, |from, to| Span::UpdatedAt { from, to }) {
            sets.push(span);
        }
        if let VisibilityFilter::Only(wanted) = visibility {
            sets.push(one(Lookup::Visibility(wanted)));
        }
        if self.os_hidden {
            sets.push(one(Lookup::Hidden));
        }
        if let Some(formats) = &self.disk_formats {
            sets.push(any_of(
                distinct(formats)
                    .into_iter()
                    .map(Lookup::DiskFormat)
                    .collect(),
            ));
        }
        if let Some(formats) = &self.container_formats {
            sets.push(any_of(
                distinct(formats)
                    .into_iter()
                    .map(Lookup::ContainerFormat)
                    .collect(),
            ));
        }
        if let Some(statuses) = &self.statuses {
            let mut distinct_statuses: Vec<ImageStatus> = Vec::new();
            for status in statuses {
                if !distinct_statuses.contains(status) {
                    distinct_statuses.push(*status);
                }
            }
            sets.push(any_of(
                distinct_statuses.into_iter().map(Lookup::Status).collect(),
            ));
        }
        sets
    }
}

/// The microsecond range `[from, to)` that time conditions (at one-second resolution) allow,
/// as a candidate set: `None` if they set no bound, an empty set if no time satisfies them.
fn time_span(conditions: &[(TimeOp, i64)], span: impl Fn(i64, i64) -> Span) -> Option<Candidates> {
    let second = |seconds: i64| seconds.saturating_mul(1_000_000);
    let mut from = i64::MIN;
    let mut to = i64::MAX;
    let mut bounded = false;
    for &(op, seconds) in conditions {
        let (low, high) = match op {
            TimeOp::Gt => (Some(second(seconds.saturating_add(1))), None),
            TimeOp::Gte => (Some(second(seconds)), None),
            TimeOp::Lt => (None, Some(second(seconds))),
            TimeOp::Lte => (None, Some(second(seconds.saturating_add(1)))),
            TimeOp::Eq => (
                Some(second(seconds)),
                Some(second(seconds.saturating_add(1))),
            ),
            TimeOp::Neq => (None, None),
        };
        if let Some(low) = low {
            from = from.max(low);
            bounded = true;
        }
        if let Some(high) = high {
            to = to.min(high);
            bounded = true;
        }
    }
    if !bounded {
        return None;
    }
    Some(if from < to {
        Candidates(vec![span(from, to)])
    } else {
        Candidates::default()
    })
}

/// `text` as `N` bytes if it is exactly their lowercase hex (how checksums are shown).
fn lowercase_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let value = |digit: u8| match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    };
    let mut bytes = [0u8; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(bytes)
}

fn time_matches(conditions: &[(TimeOp, i64)], micros: i64) -> bool {
    let seconds = micros.div_euclid(1_000_000);
    conditions.iter().all(|&(op, value)| match op {
        TimeOp::Gt => seconds > value,
        TimeOp::Gte => seconds >= value,
        TimeOp::Eq => seconds == value,
        TimeOp::Neq => seconds != value,
        TimeOp::Lt => seconds < value,
        TimeOp::Lte => seconds <= value,
    })
}

/// Parses the raw query string.
pub fn parse(query: Option<&str>) -> Result<ListParams, Error> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    let mut filters = Filters::default();
    let mut limit = DEFAULT_LIMIT;
    let mut marker = None;
    let mut sort_keys: Vec<SortKey> = Vec::new();
    let mut sort_dirs: Vec<Direction> = Vec::new();
    let mut sort: Option<Vec<(SortKey, Direction)>> = None;

    for (key, value) in &pairs {
        match key.as_str() {
            "limit" => {
                let number: i64 = value
                    .parse()
                    .map_err(|_| Error::bad_request("limit must be an integer"))?;
                if number < 0 {
                    return Err(Error::bad_request("limit must be zero or more"));
                }
                limit = (number as u64).min(MAX_LIMIT as u64) as usize;
            }
            "marker" => {
                marker = Some(ImageId::parse(value).ok_or_else(|| marker_not_found(value))?);
            }
            "sort_key" => sort_keys.push(parse_sort_key(value)?),
            "sort_dir" => sort_dirs.push(parse_direction(value)?),
            "sort" => {
                let mut parsed = Vec::new();
                for part in value.split(',') {
                    let (key, direction) = match part.split_once(':') {
                        Some((key, direction)) => (key.trim(), parse_direction(direction.trim())?),
                        None => (part.trim(), Direction::Desc),
                    };
                    parsed.push((parse_sort_key(key)?, direction));
                }
                sort = Some(parsed);
            }
            "name" => filters.names = Some(parse_in(key, value)?),
            "id" => filters.ids = Some(parse_in(key, value)?),
            "status" => {
                let mut statuses = Vec::new();
                for status in parse_in(key, value)? {
                    statuses.push(ImageStatus::parse(&status).ok_or_else(|| {
                        Error::bad_request(format!("Invalid status value: {status}"))
                    })?);
                }
                filters.statuses = Some(statuses);
            }
            "disk_format" => filters.disk_formats = Some(parse_in(key, value)?),
            "container_format" => filters.container_formats = Some(parse_in(key, value)?),
            "visibility" => {
                filters.visibility = Some(match value.as_str() {
                    "all" => VisibilityFilter::All,
                    other => VisibilityFilter::Only(Visibility::parse(other).ok_or_else(|| {
                        Error::bad_request(format!("Invalid visibility value: {other}"))
                    })?),
                });
            }
            "member_status" => {
                filters.member_status =
                    Some(match value.as_str() {
                        "all" => MemberStatusFilter::All,
                        other => MemberStatusFilter::Only(MemberStatus::parse(other).ok_or_else(
                            || Error::bad_request(format!("Invalid member_status value: {other}")),
                        )?),
                    });
            }
            "owner" => filters.owner = Some(value.clone()),
            "tag" => filters.tags.push(value.clone()),
            "size_min" => filters.size_min = Some(parse_number(key, value)?),
            "size_max" => filters.size_max = Some(parse_number(key, value)?),
            "size" => filters.size = Some(parse_number(key, value)?),
            "virtual_size" => filters.virtual_size = Some(parse_number(key, value)?),
            "min_ram" => filters.min_ram = Some(parse_number(key, value)? as i64),
            "min_disk" => filters.min_disk = Some(parse_number(key, value)? as i64),
            "protected" => filters.protected = Some(parse_bool(key, value)?),
            "os_hidden" => filters.os_hidden = parse_bool(key, value)?,
            "checksum" => filters.checksum = Some(value.clone()),
            "os_hash_value" => filters.os_hash_value = Some(value.clone()),
            "created_at" => filters.created_at.push(parse_time_filter(key, value)?),
            "updated_at" => filters.updated_at.push(parse_time_filter(key, value)?),
            "changes-since" => {
                return Err(Error::bad_request(
                    "changes-since is not available in the v2 API; use updated_at=gte:TIME",
                ));
            }
            _ => filters.properties.push((key.clone(), value.clone())),
        }
    }

    let (sort, tiebreak) = match sort {
        Some(parsed) => {
            if !sort_keys.is_empty() || !sort_dirs.is_empty() {
                return Err(Error::bad_request(
                    "Use either sort or sort_key/sort_dir, not both",
                ));
            }
            // Glance's tie-breakers follow the single direction given, else descending.
            let tiebreak = if parsed.len() == 1 {
                parsed[0].1
            } else {
                Direction::Desc
            };
            (parsed, tiebreak)
        }
        None => {
            if sort_keys.is_empty() {
                sort_keys.push(SortKey::CreatedAt);
            }
            let directions = match sort_dirs.len() {
                0 => vec![Direction::Desc; sort_keys.len()],
                1 => vec![sort_dirs[0]; sort_keys.len()],
                n if n == sort_keys.len() => sort_dirs.clone(),
                _ => {
                    return Err(Error::bad_request(
                        "Give one sort_dir, or one for every sort_key",
                    ));
                }
            };
            let tiebreak = if sort_dirs.len() == 1 {
                sort_dirs[0]
            } else {
                Direction::Desc
            };
            (sort_keys.into_iter().zip(directions).collect(), tiebreak)
        }
    };
    let link_pairs = pairs
        .into_iter()
        .filter(|(key, _)| key != "marker")
        .collect();
    Ok(ListParams {
        sort,
        tiebreak,
        marker,
        limit,
        filters,
        link_pairs,
    })
}

pub fn marker_not_found(marker: &str) -> Error {
    Error::bad_request(format!("No image found with ID {marker}"))
}

fn parse_sort_key(text: &str) -> Result<SortKey, Error> {
    SortKey::parse(text).ok_or_else(|| {
        let allowed: Vec<&str> = SortKey::ALL.iter().map(|key| key.as_str()).collect();
        Error::bad_request(format!(
            "Invalid sort key: {text}. Sort by one of: {}.",
            allowed.join(", ")
        ))
    })
}

fn parse_direction(text: &str) -> Result<Direction, Error> {
    Direction::parse(text).ok_or_else(|| {
        Error::bad_request(format!("Invalid sort direction: {text}. Use asc or desc."))
    })
}

fn parse_number(key: &str, value: &str) -> Result<u64, Error> {
    value
        .parse()
        .map_err(|_| Error::bad_request(format!("{key} must be a non-negative integer")))
}

fn parse_bool(key: &str, value: &str) -> Result<bool, Error> {
    match value {
        "true" | "True" => Ok(true),
        "false" | "False" => Ok(false),
        _ => Err(Error::bad_request(format!("{key} must be true or false"))),
    }
}

/// `value`, `eq:value` or `in:a,b,"c,d"` for the attributes that allow `in`.
fn parse_in(key: &str, value: &str) -> Result<Vec<String>, Error> {
    if let Some(list) = value.strip_prefix("in:") {
        return split_quoted(list);
    }
    if let Some(single) = value.strip_prefix("eq:") {
        return Ok(vec![single.to_owned()]);
    }
    if let Some((operator, _)) = value.split_once(':')
        && ["gt", "gte", "lt", "lte", "neq"].contains(&operator)
    {
        return Err(Error::bad_request(format!(
            "The operator '{operator}' cannot filter {key}"
        )));
    }
    Ok(vec![value.to_owned()])
}

/// Splits a comma-separated list in which double quotes protect commas.
fn split_quoted(text: &str) -> Result<Vec<String>, Error> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for character in text.chars() {
        match character {
            '"' => quoted = !quoted,
            ',' if !quoted => items.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    if quoted {
        return Err(Error::bad_request("Unbalanced quotes in an in: list"));
    }
    items.push(current);
    Ok(items)
}

fn parse_time_filter(key: &str, value: &str) -> Result<(TimeOp, i64), Error> {
    let (operator, text) = match value.split_once(':') {
        Some((operator, rest)) if ["gt", "gte", "eq", "neq", "lt", "lte"].contains(&operator) => {
            (operator, rest)
        }
        _ => ("eq", value),
    };
    let op = match operator {
        "gt" => TimeOp::Gt,
        "gte" => TimeOp::Gte,
        "neq" => TimeOp::Neq,
        "lt" => TimeOp::Lt,
        "lte" => TimeOp::Lte,
        _ => TimeOp::Eq,
    };
    let seconds = parse_time(text).ok_or_else(|| {
        Error::bad_request(format!("{key}: cannot read {text} as an ISO 8601 time"))
    })?;
    Ok((op, seconds))
}

/// ISO 8601 with an offset, or without one (taken as UTC), or a bare date.
fn parse_time(text: &str) -> Option<i64> {
    if let Ok(time) = OffsetDateTime::parse(text, &Rfc3339) {
        return Some(time.unix_timestamp());
    }
    let without_offset = format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    if let Ok(time) = time::PrimitiveDateTime::parse(text, &without_offset) {
        return Some(time.assume_utc().unix_timestamp());
    }
    let date_only = format_description!("[year]-[month]-[day]");
    time::Date::parse(text, &date_only)
        .ok()
        .map(|date| date.midnight().assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sort_syntaxes_and_tiebreakers() {
        let params = parse(Some("sort=name:asc,created_at:desc&limit=3")).unwrap();
        assert_eq!(
            params.sort,
            vec![
                (SortKey::Name, Direction::Asc),
                (SortKey::CreatedAt, Direction::Desc)
            ]
        );
        assert_eq!(params.tiebreak, Direction::Desc);
        assert_eq!(params.limit, 3);
        let params = parse(Some("sort_key=name&sort_dir=asc")).unwrap();
        assert_eq!(params.sort, vec![(SortKey::Name, Direction::Asc)]);
        assert_eq!(params.tiebreak, Direction::Asc);
        assert!(parse(Some("sort=name&sort_key=name")).is_err());
        assert!(parse(Some("sort_key=nonsense")).is_err());
        assert!(
            parse(Some(
                "sort_key=name&sort_key=size&sort_dir=asc&sort_dir=desc&sort_dir=asc"
            ))
            .is_err()
        );
    }

    #[test]
    fn limits_are_checked_and_capped() {
        assert!(parse(Some("limit=-1")).is_err());
        assert!(parse(Some("limit=ten")).is_err());
        assert_eq!(parse(Some("limit=5000")).unwrap().limit, MAX_LIMIT);
        assert_eq!(parse(None).unwrap().limit, DEFAULT_LIMIT);
    }

    #[test]
    fn in_lists_respect_quotes() {
        assert_eq!(split_quoted("a,\"b,c\",d").unwrap(), vec!["a", "b,c", "d"]);
        assert!(parse_in("name", "gt:x").is_err());
    }

    #[test]
    fn times_parse_in_three_shapes() {
        assert_eq!(parse_time("1970-01-02T00:00:00Z"), Some(86_400));
        assert_eq!(parse_time("1970-01-02T00:00:00"), Some(86_400));
        assert_eq!(parse_time("1970-01-02"), Some(86_400));
        assert_eq!(parse_time("1970-01-02T01:00:00+01:00"), Some(86_400));
        assert_eq!(parse_time("yesterday"), None);
    }
}
