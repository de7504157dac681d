//! The planned listing (filter and sort indexes, candidate sets) against brute force.
//!
//! Random catalogs in a real redb file, random queries parsed as `GET /v2/images` parses
//! them, random callers; every page of the planned answer, followed by marker, must equal the
//! brute-force answer: every image read by id, checked with `Filters::matches`, sorted with
//! the listing's comparator. Between rounds of queries the catalog changes through the store's
//! own operations: updates of indexed fields, deletes and member status changes.

use std::collections::HashMap;

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::list_query;
use crate::kv::{
    Digest, ImageData, ImageId, ImageRecord, ImageStatus, Kv, ListOutcome, ListRequest,
    MemberStatus, Visibility,
};
use crate::policy::Caller;

const NAMES: [Option<&str>; 4] = [Some("a"), Some("b"), Some("ab"), None];
const OWNERS: [Option<&str>; 4] = [Some("p1"), Some("p2"), Some("p3"), None];
const TAGS: [&str; 3] = ["x", "y", "xy"];
const STATUSES: [ImageStatus; 4] = [
    ImageStatus::Queued,
    ImageStatus::Active,
    ImageStatus::Saving,
    ImageStatus::Deactivated,
];
const VISIBILITIES: [Visibility; 4] = [
    Visibility::Public,
    Visibility::Private,
    Visibility::Shared,
    Visibility::Community,
];

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    items[rng.gen_range(0..items.len())]
}

fn md5_of(choice: u8) -> [u8; 16] {
    [choice + 1; 16]
}

fn sha512_of(choice: u8) -> [u8; 64] {
    [choice + 7; 64]
}

/// Gives `record` random values of every field a list can filter on.
fn randomize(rng: &mut StdRng, record: &mut ImageRecord) {
    record.name = pick(rng, &NAMES).map(str::to_owned);
    record.status = pick(rng, &STATUSES);
    record.visibility = pick(rng, &VISIBILITIES);
    record.owner = pick(rng, &OWNERS).map(str::to_owned);
    record.os_hidden = rng.gen_ratio(1, 5);
    record.protected = rng.gen_ratio(1, 4);
    record.disk_format = pick(rng, &[Some("raw"), Some("qcow2"), None]).map(str::to_owned);
    record.container_format = pick(rng, &[Some("bare"), None]).map(str::to_owned);
    record.tags = TAGS
        .iter()
        .filter(|_| rng.gen_ratio(1, 3))
        .map(|tag| tag.to_string())
        .collect();
    record.data = if rng.gen_ratio(2, 3) {
        let choice = rng.gen_range(0..3u8);
        Some(ImageData {
            digest: Digest([choice; 32]),
            size: u64::from(choice) * 10,
            virtual_size: None,
            md5: md5_of(choice),
            sha512: sha512_of(choice),
            stores: vec!["fs".into()],
            zeros: None,
        })
    } else {
        None
    };
    record.properties.clear();
    for (name, values) in [
        ("os_distro", &["debian", "ubuntu"][..]),
        ("hw_disk_bus", &["virtio", "scsi"][..]),
        ("note", &["x", "y"][..]),
    ] {
        if rng.gen_ratio(1, 2) {
            record
                .properties
                .insert(name.to_owned(), pick(rng, values).to_owned());
        }
    }
    // Whole seconds, few of them: ties in time are common, as Glance's filters see time.
    record.updated_at = rng.gen_range(0..8i64) * 1_000_000 + rng.gen_range(0..3) * 250_000;
}

fn new_image(rng: &mut StdRng) -> ImageRecord {
    let mut record = ImageRecord {
        visibility: Visibility::Private,
        updated_at: 0,
        ..ImageRecord::new(
            ImageId(rng.r#gen()),
            None,
            rng.gen_range(0..8i64) * 1_000_000 + rng.gen_range(0..3) * 250_000,
        )
    };
    randomize(rng, &mut record);
    record
}

/// A random query string of filters, sort and limit.
fn random_query(rng: &mut StdRng, ids: &[ImageId]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let mut parts: Vec<String> = Vec::new();
    let filters = rng.gen_range(0..4);
    for _ in 0..filters {
        let part = match rng.gen_range(0..22) {
            0 => "name=a".to_owned(),
            1 => "name=in:a,ab,zzz,a".to_owned(),
            2 => "status=active".to_owned(),
            3 => "status=in:queued,saving,queued".to_owned(),
            4 => format!("visibility={}", pick(rng, &VISIBILITIES).as_str()),
            5 => "visibility=all".to_owned(),
            6 => format!("owner={}", pick(rng, &["p1", "p2", "nobody"])),
            7 => format!("tag={}", pick(rng, &TAGS)),
            8 => "os_hidden=true".to_owned(),
            9 => "disk_format=raw".to_owned(),
            10 => "container_format=in:bare,ovf".to_owned(),
            11 => format!("checksum={}", hex(&md5_of(rng.gen_range(0..4)))),
            12 => format!("os_hash_value={}", hex(&sha512_of(rng.gen_range(0..4)))),
            13 => "checksum=NOT-HEX".to_owned(),
            14 => format!("os_distro={}", pick(rng, &["debian", "ubuntu"])),
            15 => "hw_disk_bus=virtio".to_owned(),
            16 => "note=x".to_owned(),
            17 => format!(
                "member_status={}",
                pick(rng, &["pending", "rejected", "all"])
            ),
            18 => format!(
                "created_at={}:1970-01-01T00:00:0{}Z",
                pick(rng, &["gte", "gt", "lt", "lte", "eq", "neq"]),
                rng.gen_range(0..9)
            ),
            19 => format!(
                "updated_at={}:1970-01-01T00:00:0{}Z",
                pick(rng, &["gte", "lt", "eq"]),
                rng.gen_range(0..9)
            ),
            20 if !ids.is_empty() => {
                let first = pick(rng, ids);
                let second = pick(rng, ids);
                format!("id=in:{first},{second}")
            }
            _ => "size_min=10".to_owned(),
        };
        parts.push(part);
    }
    parts.push(
        pick(
            rng,
            &[
                "",
                "sort_key=created_at&sort_dir=asc",
                "sort=created_at:desc",
                "sort_key=name&sort_dir=asc",
                "sort=name:desc",
                "sort_key=status",
                "sort=status:desc,name:asc",
                "sort_key=updated_at",
                "sort=size:asc,created_at:asc",
            ],
        )
        .to_owned(),
    );
    parts.push(format!("limit={}", rng.gen_range(1..8)));
    parts.retain(|part| !part.is_empty());
    parts.join("&")
}

fn caller(kv: &Kv, project: &str, admin: bool) -> Caller {
    let roles = if admin {
        vec!["admin", "member", "reader"]
    } else {
        vec!["member", "reader"]
    };
    Caller {
        project_id: project.into(),
        roles: roles.into_iter().map(str::to_owned).collect(),
        memberships: kv.memberships(project).unwrap(),
        ..Caller::default()
    }
}

/// Every page of the planned listing, following markers; panics on a wrong page shape.
fn planned(kv: &Kv, params: &list_query::ListParams, caller: &Caller, plan: bool) -> Vec<ImageId> {
    let mut all = Vec::new();
    let mut marker = None;
    for _ in 0..10_000 {
        let request = ListRequest {
            sort: &params.sort,
            tiebreak: params.tiebreak,
            marker,
            limit: params.limit,
            candidates: if plan {
                params.filters.candidates(caller)
            } else {
                Vec::new()
            },
        };
        let visible = |record: &ImageRecord| caller.can_see(record);
        let matches = |record: &ImageRecord| params.filters.matches(record, caller);
        let ListOutcome::Page { images, more } =
            kv.list_images(&request, &visible, &matches).unwrap()
        else {
            panic!("the marker {marker:?} was not found");
        };
        assert!(images.len() <= params.limit);
        all.extend(images.iter().map(|record| record.id));
        match images.last() {
            Some(last) if more => marker = Some(last.id),
            _ => {
                assert!(!more, "a page said more but was empty");
                return all;
            }
        }
    }
    panic!("paging did not end");
}

/// A request carrying only the order of `params`, for `compare_records`.
fn order_of(params: &list_query::ListParams) -> ListRequest<'_> {
    ListRequest {
        sort: &params.sort,
        tiebreak: params.tiebreak,
        marker: None,
        limit: 0,
        candidates: Vec::new(),
    }
}

fn brute_force(
    kv: &Kv,
    ids: &[ImageId],
    params: &list_query::ListParams,
    caller: &Caller,
) -> Vec<ImageId> {
    let request = order_of(params);
    let mut records: Vec<ImageRecord> = ids
        .iter()
        .filter_map(|&id| kv.image(id).unwrap())
        .filter(|record| params.filters.matches(record, caller))
        .collect();
    records.sort_by(|left, right| crate::kv::compare_records(&request, left, right));
    records.into_iter().map(|record| record.id).collect()
}

/// The images brute force lists after `marker` (not necessarily one of them).
fn brute_force_after(
    kv: &Kv,
    ids: &[ImageId],
    params: &list_query::ListParams,
    caller: &Caller,
    marker: &ImageRecord,
) -> Vec<ImageId> {
    let request = order_of(params);
    brute_force(kv, ids, params, caller)
        .into_iter()
        .filter(|&id| {
            let record = kv.image(id).unwrap().unwrap();
            crate::kv::compare_records(&request, marker, &record) == std::cmp::Ordering::Less
        })
        .collect()
}

/// One planned page after `marker`, and whether more follow.
fn first_page(
    kv: &Kv,
    params: &list_query::ListParams,
    caller: &Caller,
    marker: ImageId,
) -> (Vec<ImageId>, bool) {
    let request = ListRequest {
        sort: &params.sort,
        tiebreak: params.tiebreak,
        marker: Some(marker),
        limit: params.limit,
        candidates: params.filters.candidates(caller),
    };
    let visible = |record: &ImageRecord| caller.can_see(record);
    let matches = |record: &ImageRecord| params.filters.matches(record, caller);
    match kv.list_images(&request, &visible, &matches).unwrap() {
        ListOutcome::Page { images, more } => (images.iter().map(|image| image.id).collect(), more),
        ListOutcome::MarkerNotFound => panic!("the marker {marker} was not found"),
    }
}

fn check_catalog(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::open(&dir.path().join("catalog.redb")).unwrap();
    let mut ids: Vec<ImageId> = Vec::new();
    let count = rng.gen_range(20..90);
    let batch: Vec<ImageRecord> = (0..count).map(|_| new_image(&mut rng)).collect();
    kv.insert_images(&batch).unwrap();
    ids.extend(batch.iter().map(|record| record.id));
    let mut memberships: Vec<(ImageId, String)> = Vec::new();

    for round in 0..4 {
        if round > 0 {
            // Change the catalog through the store's operations.
            for _ in 0..rng.gen_range(5..20) {
                let id = pick(&mut rng, &ids);
                match rng.gen_range(0..5) {
                    0 => {
                        kv.delete_image(id, 1, |_| Ok::<(), crate::kv::KvError>(()))
                            .unwrap();
                    }
                    1 => {
                        let record = new_image(&mut rng);
                        kv.insert_image(&record).unwrap();
                        ids.push(record.id);
                    }
                    _ => {
                        let mut values = new_image(&mut rng);
                        kv.update_image(id, |record| {
                            values.id = record.id;
                            values.created_at = record.created_at;
                            *record = values;
                            Ok::<(), crate::kv::KvError>(())
                        })
                        .unwrap();
                    }
                }
            }
        }
        // The running totals follow every change.
        let audit = kv.audit().unwrap();
        assert_eq!(audit.totals, audit.counted, "seed {seed}, round {round}");
        for _ in 0..rng.gen_range(3..10) {
            let id = pick(&mut rng, &ids);
            let project = pick(&mut rng, &["p1", "p2", "p4"]).to_owned();
            if rng.gen_ratio(1, 2) {
                let added = kv
                    .add_member(id, &project, 1, 100, |_| Ok::<(), crate::kv::KvError>(()))
                    .unwrap();
                if matches!(added, crate::kv::AddMember::Added(_)) {
                    memberships.push((id, project));
                }
            } else if let Some((image, member)) =
                memberships.get(rng.gen_range(0..memberships.len().max(1)))
            {
                let status = pick(
                    &mut rng,
                    &[
                        MemberStatus::Accepted,
                        MemberStatus::Rejected,
                        MemberStatus::Pending,
                    ],
                );
                kv.set_member_status(*image, member, status, 2).unwrap();
            }
        }

        let callers = [
            caller(&kv, "p1", true),
            caller(&kv, "p1", false),
            caller(&kv, "p2", false),
            caller(&kv, "p4", false),
        ];
        for _ in 0..40 {
            let query = random_query(&mut rng, &ids);
            let Ok(params) = list_query::parse(Some(&query)) else {
                continue;
            };
            for caller in &callers {
                let expected = brute_force(&kv, &ids, &params, caller);
                let got = planned(&kv, &params, caller, true);
                assert_eq!(
                    got,
                    expected,
                    "seed {seed}, round {round}, query {query}, caller {} admin {}",
                    caller.project_id,
                    caller.is_admin()
                );
                let scanned = planned(&kv, &params, caller, false);
                assert_eq!(scanned, expected, "unplanned: seed {seed}, query {query}");
                // A marker anywhere (any image the caller can see, matching or not, as when
                // an image changed since the client's last page): the page after it.
                let marker = kv.image(pick(&mut rng, &ids)).unwrap();
                if let Some(marker) = marker.filter(|record| caller.can_see(record)) {
                    let mut after = brute_force_after(&kv, &ids, &params, caller, &marker);
                    let more = after.len() > params.limit;
                    after.truncate(params.limit);
                    assert_eq!(
                        first_page(&kv, &params, caller, marker.id),
                        (after, more),
                        "seed {seed}, query {query}, marker {}",
                        marker.id
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn planned_lists_equal_brute_force(seed in any::<u64>()) {
        check_catalog(seed);
    }
}

/// A catalog large enough that candidate sets exceed the probe, so the merged walk and the
/// sort-index walk (not only the in-memory path) answer, with every filter kind.
#[test]
fn planned_lists_equal_brute_force_past_the_probe() {
    let mut rng = StdRng::seed_from_u64(17);
    let dir = tempfile::tempdir().unwrap();
    let kv = Kv::open(&dir.path().join("catalog.redb")).unwrap();
    let batch: Vec<ImageRecord> = (0..crate::kv::PROBE * 2 + 300)
        .map(|_| new_image(&mut rng))
        .collect();
    kv.insert_images(&batch).unwrap();
    let ids: Vec<ImageId> = batch.iter().map(|record| record.id).collect();
    let callers = [caller(&kv, "p1", true), caller(&kv, "p2", false)];
    let mut checked = HashMap::new();
    for _ in 0..40 {
        let mut query = random_query(&mut rng, &ids);
        // Big pages, so paging through a large answer stays quick.
        query = query.replace("limit=", "limit=40");
        let Ok(params) = list_query::parse(Some(&query)) else {
            continue;
        };
        for caller in &callers {
            let expected = brute_force(&kv, &ids, &params, caller);
            let got = planned(&kv, &params, caller, true);
            assert_eq!(got, expected, "query {query}, caller {}", caller.project_id);
            checked.insert(query.clone(), expected.len());
        }
    }
    assert!(checked.values().any(|&found| found > crate::kv::PROBE / 2));
}
