//! Listing: filters, sorting, paging links, errors and paging stability.

use std::collections::HashSet;

use reqwest::StatusCode;
use serde_json::json;

use crate::common::Server;

#[tokio::test]
async fn paging_links_follow_glance() {
    let server = Server::start().await;
    let mut created = Vec::new();
    for index in 0..3 {
        created.push(
            server
                .create(json!({"name": format!("list-{index}")}))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (status, ids, body) = server.list_ids("?limit=2").await;
    assert_eq!(status, StatusCode::OK);
    // Newest first by default.
    assert_eq!(ids, vec![created[2].clone(), created[1].clone()]);
    assert_eq!(body["first"], "/v2/images?limit=2");
    assert_eq!(body["schema"], "/v2/schemas/images");
    assert_eq!(
        body["next"],
        format!("/v2/images?limit=2&marker={}", created[1])
    );
    let (_, ids, body) = server
        .list_ids(&format!("?limit=2&marker={}", created[1]))
        .await;
    assert_eq!(ids, vec![created[0].clone()]);
    assert_eq!(body["first"], "/v2/images?limit=2");
    assert_eq!(body.get("next"), None);

    let (_, ids, body) = server
        .list_ids("?sort=name:asc,created_at:desc&limit=2")
        .await;
    assert_eq!(ids, vec![created[0].clone(), created[1].clone()]);
    assert_eq!(
        body["first"],
        "/v2/images?sort=name%3Aasc%2Ccreated_at%3Adesc&limit=2"
    );
    let next = body["next"]
        .as_str()
        .unwrap()
        .trim_start_matches("/v2/images")
        .to_owned();
    let (_, ids, _) = server.list_ids(&next).await;
    assert_eq!(ids, vec![created[2].clone()]);
}

#[tokio::test]
async fn bad_list_parameters_are_400() {
    let server = Server::start().await;
    for query in [
        "?sort_key=nonsense",
        "?sort_dir=sideways",
        "?limit=-1",
        "?limit=many",
        "?marker=00000000-0000-0000-0000-000000000000",
        "?marker=garbage",
        "?sort=name:asc&sort_key=name",
        "?protected=maybe",
        "?size_min=big",
        "?size=big",
        "?visibility=secret",
        "?status=sleeping",
        "?member_status=bored",
        "?created_at=gt:yesterday",
        "?name=gt:a",
        "?changes-since=2020-01-01",
    ] {
        let (status, _, _) = server.list_ids(query).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
}

#[tokio::test]
async fn filters_select_images() {
    let server = Server::start().await;
    let a = server.create(json!({"name": "alpha", "tags": ["x", "y"], "disk_format": "raw", "container_format": "bare",
                                 "os_distro": "debian", "visibility": "public"})).await;
    let b = server
        .create(
            json!({"name": "beta", "tags": ["x"], "disk_format": "qcow2", "protected": true,
                                 "visibility": "private"}),
        )
        .await;
    let hidden = server
        .create(json!({"name": "gamma", "os_hidden": true}))
        .await;
    let community = server
        .create(json!({"name": "delta", "visibility": "community"}))
        .await;
    let id = |image: &serde_json::Value| image["id"].as_str().unwrap().to_owned();
    assert_eq!(
        server.upload(&id(&a), vec![7u8; 1000]).await,
        StatusCode::NO_CONTENT
    );

    let expect = async |query: &str, expected: Vec<String>| {
        let (status, ids, body) = server.list_ids(query).await;
        assert_eq!(status, StatusCode::OK, "{query}: {body}");
        let got: HashSet<String> = ids.into_iter().collect();
        assert_eq!(got, expected.into_iter().collect::<HashSet<_>>(), "{query}");
    };
    // Hidden images are left out by default.
    expect("", vec![id(&a), id(&b), id(&community)]).await;
    expect("?os_hidden=true", vec![id(&hidden)]).await;
    expect("?name=alpha", vec![id(&a)]).await;
    expect("?name=in:alpha,beta", vec![id(&a), id(&b)]).await;
    expect("?tag=x", vec![id(&a), id(&b)]).await;
    expect("?tag=x&tag=y", vec![id(&a)]).await;
    expect("?status=active", vec![id(&a)]).await;
    expect("?status=in:queued,saving", vec![id(&b), id(&community)]).await;
    expect("?disk_format=qcow2", vec![id(&b)]).await;
    expect("?protected=true", vec![id(&b)]).await;
    expect("?visibility=public", vec![id(&a)]).await;
    expect("?visibility=community", vec![id(&community)]).await;
    expect("?size_min=1000&size_max=1000", vec![id(&a)]).await;
    expect("?size_min=1001", vec![]).await;
    // Issue 11 (tempest's test_list_images_param_size): `size` is the base column, not a
    // custom property.
    expect("?size=1000", vec![id(&a)]).await;
    expect("?size=999", vec![]).await;
    expect("?os_distro=debian", vec![id(&a)]).await;
    expect("?owner=lab&name=beta", vec![id(&b)]).await;
    expect(
        "?created_at=gte:2000-01-01T00:00:00Z&name=beta",
        vec![id(&b)],
    )
    .await;
    expect("?created_at=lt:2000-01-01T00:00:00Z", vec![]).await;
    expect(&format!("?id=in:{},{}", id(&a), id(&hidden)), vec![id(&a)]).await;

    // Another project sees public images and not our private or (unfiltered) community ones.
    let (_, ids, _) = server
        .json(
            server
                .request(reqwest::Method::GET, "/v2/images")
                .header("X-Project-Id", "p2")
                .header("X-Roles", "member,reader"),
        )
        .await
        .1["images"]
        .as_array()
        .map(|images| {
            (
                (),
                images
                    .iter()
                    .map(|image| image["id"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>(),
                (),
            )
        })
        .unwrap();
    assert_eq!(ids, vec![id(&a)]);
}

#[tokio::test]
async fn sorting_by_each_key() {
    let server = Server::start().await;
    let mut created = Vec::new();
    for (name, size) in [("b", 30usize), ("a", 10), ("c", 20)] {
        let image = server
            .create(json!({"name": name, "disk_format": "raw", "container_format": "bare"}))
            .await;
        let id = image["id"].as_str().unwrap().to_owned();
        assert_eq!(
            server.upload(&id, vec![1u8; size]).await,
            StatusCode::NO_CONTENT
        );
        created.push(id);
    }
    let names = async |query: &str| -> Vec<String> {
        let (status, _, body) = server.list_ids(query).await;
        assert_eq!(status, StatusCode::OK);
        body["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|image| image["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("?sort_key=name&sort_dir=asc").await, ["a", "b", "c"]);
    assert_eq!(names("?sort_key=name").await, ["c", "b", "a"]);
    assert_eq!(names("?sort=size:asc").await, ["a", "c", "b"]);
    assert_eq!(names("?sort=size").await, ["b", "c", "a"]);
    assert_eq!(
        names("?sort_key=created_at&sort_dir=asc").await,
        ["b", "a", "c"]
    );
    assert_eq!(names("?sort=status:asc,name:desc").await, ["c", "b", "a"]);
    assert_eq!(
        names("?sort_key=status&sort_key=size&sort_dir=asc&sort_dir=desc").await,
        ["b", "c", "a"]
    );
}

/// Every image appears exactly once while others are created between pages, for the default
/// order, a single-key sort and a multi-key sort.
#[tokio::test]
async fn paging_is_stable_under_concurrent_creates() {
    let server = Server::start().await;
    let mut original = HashSet::new();
    for index in 0..40 {
        let image = server
            .create(json!({"name": format!("n{}", index % 7)}))
            .await;
        original.insert(image["id"].as_str().unwrap().to_owned());
    }
    for sort in [
        "",
        "&sort=name:asc",
        "&sort=name:asc,created_at:asc",
        "&sort_key=status&sort_key=name",
    ] {
        let mut seen: Vec<String> = Vec::new();
        let mut query = format!("?limit=6{sort}");
        for page in 0..50 {
            let (status, ids, body) = server.list_ids(&query).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            seen.extend(ids);
            // Create more images between pages, some sorting before and some after.
            server
                .create(json!({"name": format!("n{}", page % 7)}))
                .await;
            match body["next"].as_str() {
                Some(next) => query = next.trim_start_matches("/v2/images").to_owned(),
                None => break,
            }
        }
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(unique.len(), seen.len(), "duplicates with {sort}");
        assert!(original.is_subset(&unique), "missing images with {sort}");
    }
}

/// A data directory written at schema version 9 (before the filter index; made by
/// `tests/fixtures/make-v9-catalog.py` with the build of 90d51c7) opens, gains the index, and
/// every filter answers what the images' own fields say, in the order of the full listing.
#[tokio::test]
async fn a_version_9_catalog_gains_the_filter_index() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/v9-catalog.tar.gz"
    );
    let untar = std::process::Command::new("tar")
        .args(["xzf", fixture, "-C"])
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(untar.success());
    let server = Server::start_in(dir, |_| {}).await;

    // The full catalog, in listing order (the sort index alone answers these).
    let mut all: Vec<serde_json::Value> = Vec::new();
    for hidden in ["false", "true"] {
        let (status, body) = server
            .json(server.request(
                reqwest::Method::GET,
                &format!("/v2/images?visibility=all&os_hidden={hidden}&limit=1000"),
            ))
            .await;
        assert_eq!(status, StatusCode::OK);
        all.extend(body["images"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(all.len(), 40);
    // The running totals (schema 11) were counted at the upgrade: what the metrics show.
    let metrics = server.metrics().await;
    assert_eq!(
        metrics.sum(|sample| sample.starts_with("ocellus_images{")),
        40.0
    );
    let bytes: u64 = all.iter().filter_map(|image| image["size"].as_u64()).sum();
    assert_eq!(metrics.get("ocellus_image_data_bytes"), bytes as f64);
    let with_data = all
        .iter()
        .find(|image| image["checksum"].is_string())
        .unwrap()
        .clone();

    let field = |image: &serde_json::Value, name: &str| image[name].as_str().map(str::to_owned);
    type Check = Box<dyn Fn(&serde_json::Value) -> bool>;
    let checksum = field(&with_data, "checksum").unwrap();
    let hash = field(&with_data, "os_hash_value").unwrap();
    let cases: Vec<(String, Check)> = vec![
        (
            "tag=nightly".into(),
            Box::new(|i| i["tags"].as_array().unwrap().contains(&json!("nightly"))),
        ),
        (
            "tag=nightly&tag=release".into(),
            Box::new(|i| {
                let tags = i["tags"].as_array().unwrap();
                tags.contains(&json!("nightly")) && tags.contains(&json!("release"))
            }),
        ),
        (
            "os_distro=debian".into(),
            Box::new(move |i| field(i, "os_distro").as_deref() == Some("debian")),
        ),
        (
            "hw_disk_bus=virtio".into(),
            Box::new(move |i| field(i, "hw_disk_bus").as_deref() == Some("virtio")),
        ),
        (
            "note=free%20text".into(),
            Box::new(move |i| field(i, "note").as_deref() == Some("free text")),
        ),
        (
            "owner=p2".into(),
            Box::new(move |i| field(i, "owner").as_deref() == Some("p2")),
        ),
        (
            "visibility=community".into(),
            Box::new(move |i| field(i, "visibility").as_deref() == Some("community")),
        ),
        (
            "name=ubuntu".into(),
            Box::new(move |i| field(i, "name").as_deref() == Some("ubuntu")),
        ),
        (
            "name=in:ubuntu,debian".into(),
            Box::new(move |i| matches!(field(i, "name").as_deref(), Some("ubuntu" | "debian"))),
        ),
        (
            format!("checksum={checksum}"),
            Box::new(move |i| field(i, "checksum") == Some(checksum.clone())),
        ),
        (
            format!("os_hash_value={hash}"),
            Box::new(move |i| field(i, "os_hash_value") == Some(hash.clone())),
        ),
        (
            "status=queued".into(),
            Box::new(move |i| field(i, "status").as_deref() == Some("queued")),
        ),
        (
            "disk_format=qcow2".into(),
            Box::new(move |i| field(i, "disk_format").as_deref() == Some("qcow2")),
        ),
    ];
    for hidden in [false, true] {
        for (query, check) in &cases {
            let query = format!("?visibility=all&os_hidden={hidden}&limit=1000&{query}");
            let (status, ids, body) = server.list_ids(&query).await;
            assert_eq!(status, StatusCode::OK, "{query}: {body}");
            let expected: Vec<String> = all
                .iter()
                .filter(|image| image["os_hidden"] == json!(hidden) && check(image))
                .map(|image| image["id"].as_str().unwrap().to_owned())
                .collect();
            assert_eq!(ids, expected, "{query}");
        }
    }
    // Some filters must have found images, or the comparison says little.
    let (_, tagged, _) = server.list_ids("?tag=nightly&visibility=all").await;
    let (_, debian, _) = server.list_ids("?os_distro=debian&visibility=all").await;
    assert!(!tagged.is_empty() && !debian.is_empty());

    // The index follows changes made after the upgrade.
    let target = &tagged[0];
    let (status, _) = server
        .json(
            server
                .request(reqwest::Method::PATCH, &format!("/v2/images/{target}"))
                .header(
                    "Content-Type",
                    "application/openstack-images-v2.1-json-patch",
                )
                .body(r#"[{"op": "replace", "path": "/tags", "value": ["moved"]}]"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, now_tagged, _) = server.list_ids("?tag=nightly&visibility=all").await;
    assert!(!now_tagged.contains(target));
    let (_, moved, _) = server.list_ids("?tag=moved&visibility=all").await;
    assert_eq!(moved, std::slice::from_ref(target));
}
