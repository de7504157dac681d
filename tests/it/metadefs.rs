//! Metadata definitions (`/v2/metadefs`): every route and its errors, the starter set and
//! its one-time load, `ocellus metadefs load` offline and through the admin endpoint, and
//! who sees and changes what with reader, member and admin keys. Expected bodies follow
//! Glance 33's answers (../shared/reference/glance-33/metadefs-trusted).

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::Server;
use crate::keys_support::{create_key, start_keys_server};

const NS: &str = "/v2/metadefs/namespaces";

/// Lab-mode identity headers: project A's admin unless told otherwise.
fn as_project(
    request: reqwest::RequestBuilder,
    project: &str,
    roles: &str,
) -> reqwest::RequestBuilder {
    request
        .header("X-Project-Id", project)
        .header("X-Roles", roles)
        .header("Accept", "application/json")
}

const A: &str = "11111111111111111111111111111111";
const B: &str = "22222222222222222222222222222222";
const ADMIN: &str = "admin,member,reader";
const MEMBER: &str = "member,reader";

async fn call(
    server: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    call_as(server, method, path, body, A, ADMIN).await
}

async fn call_as(
    server: &Server,
    method: Method,
    path: &str,
    body: Option<Value>,
    project: &str,
    roles: &str,
) -> (StatusCode, Value) {
    let mut request = as_project(server.request(method, path), project, roles);
    if let Some(body) = body {
        request = request.json(&body);
    }
    server.json(request).await
}

/// Replaces every `created_at`/`updated_at` (which must be Glance's format) with "T".
fn timeless(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(key, value)| {
                    if key == "created_at" || key == "updated_at" {
                        let text = value.as_str().unwrap_or_default();
                        assert!(
                            text.len() == 20 && text.ends_with('Z') && text.as_bytes()[10] == b'T',
                            "{key} is not Glance's time format: {value}"
                        );
                        (key.clone(), json!("T"))
                    } else {
                        (key.clone(), timeless(value))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(timeless).collect()),
        other => other.clone(),
    }
}

fn names(list: &Value, key: &str, field: &str) -> Vec<String> {
    list[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list in {list}"))
        .iter()
        .map(|item| item[field].as_str().unwrap().to_owned())
        .collect()
}

fn capture_namespace() -> Value {
    json!({
        "namespace": "OS::Ocellus::Capture", "display_name": "Capture test",
        "description": "Made by capture-metadefs.sh", "visibility": "public", "protected": false,
        "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "cap_"}],
        "properties": {"speed": {"title": "Speed", "type": "integer", "minimum": 1, "maximum": 10}},
        "objects": [{"name": "Widget", "properties": {"color": {"title": "Color", "type": "string", "enum": ["red", "blue"]}}}],
        "tags": [{"name": "alpha"}]
    })
}

#[tokio::test]
async fn a_fresh_data_dir_gets_the_seeded_resource_types_and_starter_set_once() {
    let server = Server::start().await;
    let (status, types) = call(&server, Method::GET, "/v2/metadefs/resource_types", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        names(&types, "resource_types", "name"),
        [
            "OS::Glance::Image",
            "OS::Cinder::Volume",
            "OS::Nova::Server",
            "OS::Nova::Aggregate",
            "OS::Nova::Flavor",
            "OS::Trove::Instance"
        ]
    );
    let (_, list) = call(&server, Method::GET, NS, None).await;
    let mut listed = names(&list, "namespaces", "namespace");
    listed.sort();
    assert_eq!(
        listed,
        [
            "OS::Compute::GuestAgent",
            "OS::Compute::Hardware",
            "OS::Compute::Watchdog",
            "OS::OperatingSystem"
        ]
    );
    // Loaded namespaces look like Glance's stock ones: owner admin, no updated_at.
    let (status, watchdog) = call(
        &server,
        Method::GET,
        &format!("{NS}/OS::Compute::Watchdog?resource_type=OS::Glance::Image"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(watchdog["owner"], "admin");
    assert_eq!(watchdog["protected"], true);
    assert!(watchdog.get("updated_at").is_none(), "{watchdog}");
    assert_eq!(
        watchdog["properties"]["hw_watchdog_action"]["enum"],
        json!(["disabled", "reset", "poweroff", "pause", "none"])
    );
    for (namespace, property) in [
        ("OS::Compute::GuestAgent", "qemu_guest_agent"),
        ("OS::Compute::Hardware", "disk_bus"),
        ("OS::OperatingSystem", "os_distro"),
        ("OS::OperatingSystem", "os_type"),
    ] {
        let (status, body) = call(
            &server,
            Method::GET,
            &format!("{NS}/{namespace}/properties/{property}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{namespace} {property}: {body}");
    }

    // An operator's deletion stays deleted across restarts: the set loads only once.
    let unprotect =
        json!({"namespace": "OS::Compute::Watchdog", "visibility": "public", "protected": false});
    let (status, _) = call(
        &server,
        Method::PUT,
        &format!("{NS}/OS::Compute::Watchdog"),
        Some(unprotect),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(
        &server,
        Method::DELETE,
        &format!("{NS}/OS::Compute::Watchdog"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let dir = server.stop().await;
    let server = Server::start_in(dir, |_| {}).await;
    let (status, _) = call(
        &server,
        Method::GET,
        &format!("{NS}/OS::Compute::Watchdog"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call(&server, Method::GET, NS, None).await;
    assert_eq!(names(&list, "namespaces", "namespace").len(), 3);
}

#[tokio::test]
async fn namespaces_are_created_shown_updated_and_deleted_as_in_glance() {
    let server = Server::start().await;
    let response = as_project(server.request(Method::POST, NS), A, ADMIN)
        .json(&capture_namespace())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    assert_eq!(
        response.headers()["location"],
        format!("{}{NS}/OS::Ocellus::Capture", server.base).as_str()
    );
    let created: Value = response.json().await.unwrap();
    assert_eq!(
        timeless(&created),
        json!({
            "namespace": "OS::Ocellus::Capture", "display_name": "Capture test",
            "description": "Made by capture-metadefs.sh", "visibility": "public",
            "protected": false, "owner": A, "created_at": "T", "updated_at": "T",
            "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "cap_"}],
            "properties": {"speed": {"type": "integer", "title": "Speed", "minimum": 1, "maximum": 10}},
            "objects": [{"name": "Widget", "properties": {"color": {"type": "string", "title": "Color", "enum": ["red", "blue"]}}}],
            "tags": [{"name": "alpha"}],
            "self": "/v2/metadefs/namespaces/OS::Ocellus::Capture",
            "schema": "/v2/schemas/metadefs/namespace"
        })
    );
    let (status, body) = call(&server, Method::POST, NS, Some(capture_namespace())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let path = format!("{NS}/OS::Ocellus::Capture");
    let (status, shown) = call(&server, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK);
    let widget = json!({
        "name": "Widget", "required": [],
        "properties": {"color": {"type": "string", "title": "Color", "enum": ["red", "blue"]}},
        "created_at": "T", "updated_at": "T",
        "self": "/v2/metadefs/namespaces/OS::Ocellus::Capture/objects/Widget",
        "schema": "/v2/schemas/metadefs/object"
    });
    let expected_show = json!({
        "namespace": "OS::Ocellus::Capture", "display_name": "Capture test",
        "description": "Made by capture-metadefs.sh", "visibility": "public",
        "protected": false, "owner": A, "created_at": "T", "updated_at": "T",
        "resource_type_associations": [{"name": "OS::Glance::Image", "prefix": "cap_", "created_at": "T", "updated_at": "T"}],
        "properties": {"speed": {"type": "integer", "title": "Speed", "minimum": 1, "maximum": 10}},
        "objects": [widget],
        "tags": [{"name": "alpha"}],
        "self": "/v2/metadefs/namespaces/OS::Ocellus::Capture",
        "schema": "/v2/schemas/metadefs/namespace"
    });
    assert_eq!(timeless(&shown), expected_show);
    // Shown for a resource type, property names carry its prefix.
    let (_, prefixed) = call(
        &server,
        Method::GET,
        &format!("{path}?resource_type=OS::Glance::Image"),
        None,
    )
    .await;
    assert_eq!(prefixed["properties"]["cap_speed"]["title"], "Speed");
    assert_eq!(
        prefixed["objects"][0]["properties"]["cap_color"]["title"],
        "Color"
    );
    let (status, _) = call(
        &server,
        Method::GET,
        &format!("{path}?visibility=odd"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // PUT replaces the namespace's own fields: left out, description goes away.
    let (status, updated) = call(
        &server,
        Method::PUT,
        &path,
        Some(json!({"namespace": "OS::Ocellus::Capture", "display_name": "Capture test, renamed", "visibility": "public", "protected": false})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        timeless(&updated),
        json!({
            "namespace": "OS::Ocellus::Capture", "display_name": "Capture test, renamed",
            "visibility": "public", "protected": false, "owner": A,
            "created_at": "T", "updated_at": "T",
            "self": "/v2/metadefs/namespaces/OS::Ocellus::Capture",
            "schema": "/v2/schemas/metadefs/namespace"
        })
    );
    // Renaming keeps the contents; renaming onto another namespace is 409.
    let (status, _) = call(
        &server,
        Method::PUT,
        &path,
        Some(json!({"namespace": "OS::Ocellus::Renamed", "visibility": "public"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let renamed = format!("{NS}/OS::Ocellus::Renamed");
    let (_, shown) = call(&server, Method::GET, &renamed, None).await;
    assert_eq!(shown["objects"][0]["name"], "Widget");
    assert_eq!(shown["tags"], json!([{"name": "alpha"}]));
    assert_eq!(
        call(&server, Method::GET, &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = call(
        &server,
        Method::PUT,
        &renamed,
        Some(json!({"namespace": "OS::Compute::Watchdog"})),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);

    // Bad bodies: 400, server-set attributes 403; nothing is created.
    for (body, expected) in [
        (json!({"display_name": "no name"}), StatusCode::BAD_REQUEST),
        (
            json!({"namespace": "x", "visibility": "shared"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"namespace": "x", "protected": "yes"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"namespace": "x", "display_name": null}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"namespace": "x", "unknown": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"namespace": "x".repeat(81)}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"namespace": "a/b"}), StatusCode::BAD_REQUEST),
        (
            json!({"namespace": "x", "properties": {"p": {"type": "string"}}}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"namespace": "x", "objects": [{"name": "o"}, {"name": "o"}]}),
            StatusCode::CONFLICT,
        ),
        (
            json!({"namespace": "x", "tags": [{"name": "t"}, {"name": "T"}]}),
            StatusCode::CONFLICT,
        ),
        (
            json!({"namespace": "x", "created_at": "now"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"namespace": "x", "self": "/x"}),
            StatusCode::FORBIDDEN,
        ),
        (json!(["namespace"]), StatusCode::BAD_REQUEST),
    ] {
        let (status, error) = call(&server, Method::POST, NS, Some(body.clone())).await;
        assert_eq!(status, expected, "{body}: {error}");
        assert!(error["message"].is_string(), "{error}");
    }
    let (status, _) = call(&server, Method::GET, &format!("{NS}/x"), None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "a refused create leaves nothing"
    );
    let response = as_project(server.request(Method::POST, NS), A, ADMIN)
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);

    // A protected namespace cannot be deleted until unprotected; then it goes with its contents.
    let (status, _) = call(
        &server,
        Method::PUT,
        &renamed,
        Some(
            json!({"namespace": "OS::Ocellus::Renamed", "visibility": "public", "protected": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, error) = call(&server, Method::DELETE, &renamed, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{error}");
    let (status, _) = call(
        &server,
        Method::PUT,
        &renamed,
        Some(json!({"namespace": "OS::Ocellus::Renamed"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = call(&server, Method::DELETE, &renamed, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    for path in [
        renamed.clone(),
        format!("{renamed}/objects"),
        format!("{renamed}/properties"),
        format!("{renamed}/tags"),
        format!("{renamed}/resource_types"),
        format!("{NS}/OS::No::Such"),
    ] {
        let (status, error) = call(&server, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(error["code"], "404 Not Found");
    }
    // A new namespace of the same name starts empty: the old contents went with the old one.
    let (status, _) = call(
        &server,
        Method::POST,
        NS,
        Some(json!({"namespace": "OS::Ocellus::Renamed"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, tags) = call(&server, Method::GET, &format!("{renamed}/tags"), None).await;
    assert_eq!(tags, json!({"tags": []}));

    // Methods a route lacks: 405 with Allow.
    for (method, path, allow) in [
        (Method::PATCH, NS.to_owned(), "GET, POST"),
        (Method::HEAD, renamed.clone(), "GET, PUT, DELETE"),
        (Method::PUT, format!("{renamed}/tags"), "GET, POST, DELETE"),
        (
            Method::PATCH,
            format!("{renamed}/tags/x"),
            "GET, POST, PUT, DELETE",
        ),
        (Method::GET, format!("{renamed}/resource_types/x"), "DELETE"),
        (
            Method::POST,
            "/v2/metadefs/resource_types".to_owned(),
            "GET",
        ),
    ] {
        let response = as_project(server.request(method.clone(), &path), A, ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["allow"], allow);
    }
}

#[tokio::test]
async fn namespace_lists_page_sort_and_filter() {
    let server = Server::start().await;
    for (name, visibility, resource_type) in [
        ("Z::One", "public", "Test::Flavor"),
        ("Z::Two", "private", "Test::Flavor"),
        ("Z::Three", "public", "Test::Instance"),
    ] {
        let (status, body) = call(
            &server,
            Method::POST,
            NS,
            Some(json!({"namespace": name, "visibility": visibility,
                        "resource_type_associations": [{"name": resource_type}]})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    // Newest first by default.
    let (_, page) = call(&server, Method::GET, &format!("{NS}?limit=2"), None).await;
    assert_eq!(
        names(&page, "namespaces", "namespace"),
        ["Z::Three", "Z::Two"]
    );
    assert_eq!(page["first"], "/v2/metadefs/namespaces?limit=2");
    assert_eq!(page["schema"], "/v2/schemas/metadefs/namespaces");
    assert_eq!(
        page["next"],
        "/v2/metadefs/namespaces?limit=2&marker=Z%3A%3ATwo"
    );
    let (_, page) = call(
        &server,
        Method::GET,
        &format!("{NS}?limit=2&marker=Z::Two"),
        None,
    )
    .await;
    assert_eq!(page["namespaces"][0]["namespace"], "Z::One");
    // Sorted by name, filtered by resource type; the links keep the query.
    let query =
        "resource_types=Test::Flavor,Test::Instance&sort_key=namespace&sort_dir=asc&limit=2";
    let (_, page) = call(&server, Method::GET, &format!("{NS}?{query}"), None).await;
    assert_eq!(
        names(&page, "namespaces", "namespace"),
        ["Z::One", "Z::Three"]
    );
    assert_eq!(
        page["next"],
        "/v2/metadefs/namespaces?resource_types=Test%3A%3AFlavor%2CTest%3A%3AInstance&sort_key=namespace&sort_dir=asc&limit=2&marker=Z%3A%3AThree"
    );
    let (_, page) = call(
        &server,
        Method::GET,
        &format!("{NS}?{query}&marker=Z::Three"),
        None,
    )
    .await;
    assert_eq!(names(&page, "namespaces", "namespace"), ["Z::Two"]);
    assert!(page.get("next").is_none(), "{page}");
    assert_eq!(
        page["namespaces"][0]["resource_type_associations"][0]["name"],
        "Test::Flavor"
    );
    let (_, page) = call(
        &server,
        Method::GET,
        &format!("{NS}?visibility=private"),
        None,
    )
    .await;
    assert_eq!(names(&page, "namespaces", "namespace"), ["Z::Two"]);
    let (_, page) = call(&server, Method::GET, &format!("{NS}?limit=0"), None).await;
    assert_eq!(page["namespaces"], json!([]));
    for query in [
        "limit=-1",
        "limit=x",
        "sort_dir=up",
        "sort_key=size",
        "visibility=shared",
    ] {
        let (status, _) = call(&server, Method::GET, &format!("{NS}?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
    let (status, _) = call(&server, Method::GET, &format!("{NS}?marker=No::Such"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn properties_objects_tags_and_associations_follow_glance() {
    let server = Server::start().await;
    let (status, _) = call(&server, Method::POST, NS, Some(capture_namespace())).await;
    assert_eq!(status, StatusCode::CREATED);
    let base = format!("{NS}/OS::Ocellus::Capture");

    // Properties.
    let properties = format!("{base}/properties");
    let (_, list) = call(&server, Method::GET, &properties, None).await;
    assert_eq!(
        list,
        json!({"properties": {"speed": {"type": "integer", "title": "Speed", "minimum": 1, "maximum": 10}}})
    );
    let weight = json!({"name": "weight", "title": "Weight", "type": "number"});
    let (status, created) = call(&server, Method::POST, &properties, Some(weight.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created,
        json!({"name": "weight", "type": "number", "title": "Weight"})
    );
    let (status, _) = call(&server, Method::POST, &properties, Some(weight)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    for (body, expected) in [
        (
            json!({"name": "bad name", "type": "nosuchtype"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"title": "No name", "type": "string"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "n", "title": "N", "type": "string", "minLength": -1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "n", "title": "N", "type": "string", "surprise": 1}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "n", "title": "N", "type": "string", "updated_at": "x"}),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (status, _) = call(&server, Method::POST, &properties, Some(body.clone())).await;
        assert_eq!(status, expected, "{body}");
    }
    let (status, shown) = call(&server, Method::GET, &format!("{properties}/weight"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["title"], "Weight");
    let (status, shown) = call(
        &server,
        Method::GET,
        &format!("{properties}/cap_speed?resource_type=OS::Glance::Image"),
        None,
    )
    .await;
    assert_eq!(
        (status, shown["name"].clone()),
        (StatusCode::OK, json!("speed"))
    );
    for path in [
        format!("{properties}/speed?resource_type=OS::Glance::Image"),
        format!("{properties}/cap_speed?resource_type=OS::Nova::Flavor"),
        format!("{properties}/nothing"),
    ] {
        let (status, _) = call(&server, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    let (status, updated) = call(
        &server,
        Method::PUT,
        &format!("{properties}/weight"),
        Some(json!({"name": "weight", "title": "Weight (kg)", "type": "number", "minimum": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        updated,
        json!({"name": "weight", "type": "number", "title": "Weight (kg)", "minimum": 0})
    );
    let (status, _) = call(
        &server,
        Method::PUT,
        &format!("{properties}/weight"),
        Some(json!({"name": "speed", "title": "Speed", "type": "integer"})),
    )
    .await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "renaming onto another property"
    );
    let (status, _) = call(
        &server,
        Method::PUT,
        &format!("{properties}/nothing"),
        Some(json!({"name": "nothing", "title": "N", "type": "string"})),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        call(
            &server,
            Method::DELETE,
            &format!("{properties}/weight"),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(
            &server,
            Method::DELETE,
            &format!("{properties}/weight"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // Objects.
    let objects = format!("{base}/objects");
    let gadget = json!({"name": "Gadget", "description": "an object", "required": ["size"],
                        "properties": {"size": {"title": "Size", "type": "integer"}}});
    let (status, created) = call(&server, Method::POST, &objects, Some(gadget.clone())).await;
    assert_eq!(status, StatusCode::CREATED);
    let expected = json!({
        "name": "Gadget", "required": ["size"], "description": "an object",
        "properties": {"size": {"type": "integer", "title": "Size"}},
        "created_at": "T", "updated_at": "T",
        "self": "/v2/metadefs/namespaces/OS::Ocellus::Capture/objects/Gadget",
        "schema": "/v2/schemas/metadefs/object"
    });
    assert_eq!(timeless(&created), expected);
    assert_eq!(
        call(&server, Method::POST, &objects, Some(gadget)).await.0,
        StatusCode::CONFLICT
    );
    for body in [
        json!({"description": "no name"}),
        json!({"name": "o", "properties": {"p": {"title": "P", "type": "string", "extra": 1}}}),
        json!({"name": "o", "required": "size"}),
    ] {
        let (status, _) = call(&server, Method::POST, &objects, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (_, shown) = call(&server, Method::GET, &format!("{objects}/Gadget"), None).await;
    assert_eq!(timeless(&shown), expected);
    let (_, list) = call(&server, Method::GET, &objects, None).await;
    assert_eq!(names(&list, "objects", "name"), ["Widget", "Gadget"]);
    assert_eq!(list["schema"], "v2/schemas/metadefs/objects");
    for query in ["limit=0", "limit=x", "sort_dir=up"] {
        let (status, _) = call(&server, Method::GET, &format!("{objects}?{query}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
    }
    let (status, updated) = call(
        &server,
        Method::PUT,
        &format!("{objects}/Gadget"),
        Some(json!({"name": "Gizmo", "description": "an object, renamed", "properties": {}})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        timeless(&updated),
        json!({
            "name": "Gizmo", "description": "an object, renamed", "properties": {},
            "created_at": "T", "updated_at": "T",
            "self": "/v2/metadefs/namespaces/OS::Ocellus::Capture/objects/Gizmo",
            "schema": "/v2/schemas/metadefs/object"
        })
    );
    assert_eq!(
        call(&server, Method::GET, &format!("{objects}/Gadget"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            &server,
            Method::PUT,
            &format!("{objects}/Gizmo"),
            Some(json!({"name": "Widget"}))
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        call(&server, Method::DELETE, &format!("{objects}/Gizmo"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&server, Method::DELETE, &format!("{objects}/Gizmo"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    // Tags: a list replaces, X-Openstack-Append adds; names ignore case.
    let tags = format!("{base}/tags");
    let (status, created) = call(
        &server,
        Method::POST,
        &tags,
        Some(json!({"tags": [{"name": "beta"}, {"name": "gamma"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        created,
        json!({"tags": [{"name": "beta"}, {"name": "gamma"}]})
    );
    let append = |body: Value| {
        as_project(server.request(Method::POST, &tags), A, ADMIN)
            .header("X-Openstack-Append", "True")
            .json(&body)
    };
    let (status, _) = server
        .json(append(json!({"tags": [{"name": "BETA"}]})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _) = server
        .json(append(json!({"tags": [{"name": "zeta"}, {"name": "eta"}]})))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, list) = call(&server, Method::GET, &tags, None).await;
    assert_eq!(
        list,
        json!({"tags": [{"name": "eta"}, {"name": "zeta"}, {"name": "gamma"}, {"name": "beta"}]})
    );
    let (_, list) = call(
        &server,
        Method::GET,
        &format!("{tags}?sort_key=name&sort_dir=asc&marker=eta&limit=2"),
        None,
    )
    .await;
    assert_eq!(list, json!({"tags": [{"name": "gamma"}, {"name": "zeta"}]}));
    for (query, expected) in [
        ("sort_key=color", StatusCode::BAD_REQUEST),
        ("limit=-1", StatusCode::BAD_REQUEST),
        ("marker=nothing", StatusCode::NOT_FOUND),
    ] {
        let (status, _) = call(&server, Method::GET, &format!("{tags}?{query}"), None).await;
        assert_eq!(status, expected, "{query}");
    }
    let (status, created) = call(&server, Method::POST, &format!("{tags}/epsilon"), None).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        timeless(&created),
        json!({"name": "epsilon", "created_at": "T", "updated_at": "T"})
    );
    assert_eq!(
        call(&server, Method::POST, &format!("{tags}/Epsilon"), None)
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        call(
            &server,
            Method::POST,
            &format!("{tags}/{}", "t".repeat(81)),
            None
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    let (status, shown) = call(&server, Method::GET, &format!("{tags}/EPSILON"), None).await;
    assert_eq!(
        (status, shown["name"].clone()),
        (StatusCode::OK, json!("epsilon"))
    );
    let (status, updated) = call(
        &server,
        Method::PUT,
        &format!("{tags}/epsilon"),
        Some(json!({"name": "delta"})),
    )
    .await;
    assert_eq!(
        (status, updated["name"].clone()),
        (StatusCode::OK, json!("delta"))
    );
    for (body, expected) in [
        (json!({"name": "beta"}), StatusCode::CONFLICT),
        (json!({"title": "x"}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "x", "created_at": "x"}),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (status, _) = call(
            &server,
            Method::PUT,
            &format!("{tags}/delta"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, expected, "{body}");
    }
    assert_eq!(
        call(&server, Method::GET, &format!("{tags}/epsilon"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&server, Method::DELETE, &format!("{tags}/delta"), None)
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(&server, Method::DELETE, &format!("{tags}/delta"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    // An empty list changes nothing; a bad one is 400.
    let (status, _) = call(&server, Method::POST, &tags, Some(json!({"tags": []}))).await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, list) = call(&server, Method::GET, &tags, None).await;
    assert_eq!(list["tags"].as_array().unwrap().len(), 4);
    for body in [
        json!({}),
        json!({"tags": [{"label": "x"}]}),
        json!({"tags": "x"}),
    ] {
        let (status, _) = call(&server, Method::POST, &tags, Some(body.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }

    // Resource-type associations; an unknown type is created by its first association.
    let associations = format!("{base}/resource_types");
    let (status, created) = call(
        &server,
        Method::POST,
        &associations,
        Some(json!({"name": "OS::Ocellus::Thing", "prefix": "cap_"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        timeless(&created),
        json!({"name": "OS::Ocellus::Thing", "prefix": "cap_", "created_at": "T", "updated_at": "T"})
    );
    let (_, types) = call(&server, Method::GET, "/v2/metadefs/resource_types", None).await;
    assert!(names(&types, "resource_types", "name").contains(&"OS::Ocellus::Thing".to_owned()));
    assert_eq!(
        call(
            &server,
            Method::POST,
            &associations,
            Some(json!({"name": "OS::Ocellus::Thing"}))
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
    for (body, expected) in [
        (
            json!({"name": "OS::Cinder::Volume", "properties_target": null}),
            StatusCode::BAD_REQUEST,
        ),
        (json!({"prefix": "x_"}), StatusCode::BAD_REQUEST),
        (
            json!({"name": "OS::Cinder::Volume", "created_at": "x"}),
            StatusCode::FORBIDDEN,
        ),
    ] {
        let (status, _) = call(&server, Method::POST, &associations, Some(body.clone())).await;
        assert_eq!(status, expected, "{body}");
    }
    let (_, list) = call(&server, Method::GET, &associations, None).await;
    assert_eq!(
        names(&list, "resource_type_associations", "name"),
        ["OS::Glance::Image", "OS::Ocellus::Thing"]
    );
    assert_eq!(
        call(
            &server,
            Method::DELETE,
            &format!("{associations}/OS::Ocellus::Thing"),
            None
        )
        .await
        .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(
            &server,
            Method::DELETE,
            &format!("{associations}/OS::Ocellus::Thing"),
            None
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );

    // In a protected namespace nothing can be deleted, one by one or all at once.
    let (status, _) = call(
        &server,
        Method::PUT,
        &base,
        Some(
            json!({"namespace": "OS::Ocellus::Capture", "visibility": "public", "protected": true}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for path in [
        format!("{properties}/speed"),
        format!("{objects}/Widget"),
        format!("{tags}/beta"),
        format!("{associations}/OS::Glance::Image"),
        properties.clone(),
        objects.clone(),
        tags.clone(),
        base.clone(),
    ] {
        let (status, error) = call(&server, Method::DELETE, &path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {error}");
    }
    let (_, shown) = call(&server, Method::GET, &base, None).await;
    assert_eq!(shown["tags"].as_array().unwrap().len(), 4, "{shown}");
    assert_eq!(shown["objects"].as_array().unwrap().len(), 1);

    // Unprotected, each kind can be emptied.
    let (status, _) = call(
        &server,
        Method::PUT,
        &base,
        Some(json!({"namespace": "OS::Ocellus::Capture", "visibility": "public"})),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    for path in [&properties, &objects, &tags] {
        assert_eq!(
            call(&server, Method::DELETE, path, None).await.0,
            StatusCode::NO_CONTENT,
            "{path}"
        );
    }
    let (_, shown) = call(&server, Method::GET, &base, None).await;
    for key in ["properties", "objects", "tags"] {
        assert!(shown.get(key).is_none(), "{key} left in {shown}");
    }
    assert_eq!(
        shown["resource_type_associations"][0]["name"],
        "OS::Glance::Image"
    );
}

#[tokio::test]
async fn schemas_have_glance_structure() {
    let server = Server::start().await;
    for (path, name) in [
        ("namespace", "namespace"),
        ("namespaces", "namespaces"),
        ("resource_type", "resource_type_association"),
        ("resource_types", "resource_type_associations"),
        ("property", "property"),
        ("properties", "properties"),
        ("object", "object"),
        ("objects", "objects"),
        ("tag", "tag"),
        ("tags", "tags"),
    ] {
        let (status, schema) = call(
            &server,
            Method::GET,
            &format!("/v2/schemas/metadefs/{path}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(schema["name"], name, "{path}");
    }
    let (_, property) = call(&server, Method::GET, "/v2/schemas/metadefs/property", None).await;
    assert_eq!(property["required"], json!(["type", "title", "name"]));
    assert_eq!(property["additionalProperties"], false);
    assert_eq!(property["definitions"]["stringArray"]["minItems"], 1);
    assert_eq!(
        property["properties"]["type"]["enum"],
        json!([
            "array", "boolean", "integer", "number", "object", "string", null
        ])
    );
    let (_, namespaces) = call(
        &server,
        Method::GET,
        "/v2/schemas/metadefs/namespaces",
        None,
    )
    .await;
    assert_eq!(
        namespaces["links"],
        json!([{"rel": "first", "href": "{first}"}, {"rel": "next", "href": "{next}"}, {"rel": "describedby", "href": "{schema}"}])
    );
    assert_eq!(
        namespaces["properties"]["namespaces"]["items"]["required"],
        json!(["namespace"])
    );
    let (status, _) = call(&server, Method::GET, "/v2/schemas/metadefs/widget", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn lab_headers_decide_who_sees_and_changes_what() {
    let server = Server::start().await;
    for (name, visibility) in [("P::Public", "public"), ("P::Private", "private")] {
        let (status, _) = call(
            &server,
            Method::POST,
            NS,
            Some(json!({"namespace": name, "visibility": visibility})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    // Project A's member may not create (Glance 33: 403 add_metadef_namespace).
    let (status, error) = call_as(
        &server,
        Method::POST,
        NS,
        Some(json!({"namespace": "P::Member"})),
        A,
        MEMBER,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("add_metadef_namespace")
    );
    // Project B sees the public namespace, not A's private one.
    let private = format!("{NS}/P::Private");
    assert_eq!(
        call_as(&server, Method::GET, &private, None, B, MEMBER)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call_as(&server, Method::GET, &private, None, A, MEMBER)
            .await
            .0,
        StatusCode::OK
    );
    let (status, _) = call_as(
        &server,
        Method::GET,
        &format!("{NS}/P::Public"),
        None,
        B,
        MEMBER,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Without the reader role nothing is visible, and lists are refused.
    assert_eq!(
        call_as(
            &server,
            Method::GET,
            &format!("{NS}/P::Public"),
            None,
            A,
            "member"
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call_as(&server, Method::GET, NS, None, A, "member").await.0,
        StatusCode::FORBIDDEN
    );
}

/// Keys mode: an admin, alpha's member and reader, and beta's reader.
#[tokio::test]
async fn keys_decide_visibility_and_protection() {
    let (server, bootstrap) = start_keys_server(0).await;
    let member = create_key(&server, &bootstrap, "alpha", "member", "alpha-member", None).await;
    let reader = create_key(&server, &bootstrap, "alpha", "reader", "alpha-reader", None).await;
    let other = create_key(&server, &bootstrap, "beta", "reader", "beta-reader", None).await;
    let alpha = member["project_id"].as_str().unwrap().to_owned();
    let key = |created: &Value| created["key"].as_str().unwrap().to_owned();
    let (member, reader, other) = (key(&member), key(&reader), key(&other));
    let send = |token: String, method: Method, path: String, body: Option<Value>| {
        let mut request = server
            .request(method, &path)
            .header("X-Auth-Token", token)
            .header("Accept", "application/json");
        if let Some(body) = body {
            request = request.json(&body);
        }
        server.json(request)
    };

    // The admin makes a private namespace for alpha, a public one, and a private one of its own.
    for body in [
        json!({"namespace": "K::Alpha", "visibility": "private", "owner": alpha}),
        json!({"namespace": "K::Public", "visibility": "public", "protected": true,
               "tags": [{"name": "kept"}]}),
        json!({"namespace": "K::Admin", "visibility": "private"}),
    ] {
        let (status, created) = send(bootstrap.clone(), Method::POST, NS.into(), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
    }
    let (_, admin_view) = send(
        bootstrap.clone(),
        Method::GET,
        format!("{NS}/K::Admin"),
        None,
    )
    .await;
    // Glance's owner is the creator's project id: here that of the bootstrap key's project.
    let (_, keys) = send(
        bootstrap.clone(),
        Method::GET,
        "/ocellus/v1/keys".into(),
        None,
    )
    .await;
    let admin_project = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|key| key["name"] == "bootstrap-admin")
        .map(|key| key["project_id"].clone())
        .unwrap();
    assert_eq!(admin_view["owner"], admin_project);

    let listed = |token: String| {
        let send = &send;
        async move {
            let (status, list) = send(token, Method::GET, format!("{NS}?limit=100"), None).await;
            assert_eq!(status, StatusCode::OK, "{list}");
            let mut found: Vec<String> = names(&list, "namespaces", "namespace")
                .into_iter()
                .filter(|name| name.starts_with("K::"))
                .collect();
            found.sort();
            found
        }
    };
    assert_eq!(
        listed(bootstrap.clone()).await,
        ["K::Admin", "K::Alpha", "K::Public"]
    );
    assert_eq!(listed(reader.clone()).await, ["K::Alpha", "K::Public"]);
    assert_eq!(listed(member.clone()).await, ["K::Alpha", "K::Public"]);
    assert_eq!(listed(other.clone()).await, ["K::Public"]);
    let (status, _) = send(
        other.clone(),
        Method::GET,
        format!("{NS}/K::Alpha/tags"),
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "beta cannot see alpha's namespace"
    );
    let (status, _) = send(reader.clone(), Method::GET, format!("{NS}/K::Admin"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, types) = send(
        other.clone(),
        Method::GET,
        "/v2/metadefs/resource_types".into(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{types}");

    // Non-admins change nothing: 403 where they see the namespace, 404 where they do not.
    let changes = [
        (Method::PUT, "", Some(json!({"namespace": "K::Alpha"}))),
        (Method::DELETE, "", None),
        (Method::POST, "/tags/new", None),
        (
            Method::POST,
            "/tags",
            Some(json!({"tags": [{"name": "x"}]})),
        ),
        (Method::DELETE, "/tags", None),
        (Method::POST, "/objects", Some(json!({"name": "o"}))),
        (Method::DELETE, "/objects", None),
        (
            Method::POST,
            "/properties",
            Some(json!({"name": "p", "title": "P", "type": "string"})),
        ),
        (Method::DELETE, "/properties", None),
        (
            Method::POST,
            "/resource_types",
            Some(json!({"name": "OS::Nova::Flavor"})),
        ),
    ];
    for (token, namespace, expected) in [
        (member.clone(), "K::Alpha", StatusCode::FORBIDDEN),
        (reader.clone(), "K::Public", StatusCode::FORBIDDEN),
        (other.clone(), "K::Public", StatusCode::FORBIDDEN),
        (other.clone(), "K::Alpha", StatusCode::NOT_FOUND),
        (member.clone(), "K::Admin", StatusCode::NOT_FOUND),
    ] {
        for (method, suffix, body) in &changes {
            let path = format!("{NS}/{namespace}{suffix}");
            let (status, error) =
                send(token.clone(), method.clone(), path.clone(), body.clone()).await;
            assert_eq!(status, expected, "{method} {path}: {error}");
        }
    }
    let (status, _) = send(
        member.clone(),
        Method::POST,
        NS.into(),
        Some(json!({"namespace": "K::Mine"})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Protection holds against the admin too, until lifted.
    let (status, _) = send(
        bootstrap.clone(),
        Method::DELETE,
        format!("{NS}/K::Public/tags/kept"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = send(
        bootstrap.clone(),
        Method::DELETE,
        format!("{NS}/K::Public"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, tags) = send(
        reader.clone(),
        Method::GET,
        format!("{NS}/K::Public/tags"),
        None,
    )
    .await;
    assert_eq!(tags, json!({"tags": [{"name": "kept"}]}));
    // Without credentials: 401.
    let response = server.request(Method::GET, NS).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

// Two workers: the load command blocks one while the server answers it on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_command_imports_glance_files_offline_and_through_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let files = dir.path().join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(
        files.join("one.json"),
        json!({
            "namespace": "Load::One", "display_name": "One", "visibility": "public",
            "protected": true,
            "resource_type_associations": [{"name": "OS::Load::Thing", "prefix": "one_"}],
            "properties": {"size": {"title": "Size", "type": "integer", "default": 4}},
            "objects": [{"name": "Obj", "description": "d", "properties": {"p": {"title": "P", "type": "string"}}}],
            "tags": [{"name": "t1"}]
        })
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        files.join("two.json"),
        json!({"namespace": "Load::Two"}).to_string(),
    )
    .unwrap();
    std::fs::write(files.join("notes.txt"), "not a namespace").unwrap();
    let data = dir.path().join("data");
    let load = |extra: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ocellus"));
        command
            .args(["metadefs", "load"])
            .arg(&files)
            .arg("--data-dir")
            .arg(&data)
            .args(extra)
            .env_remove("OCELLUS_CONFIG");
        command.output().unwrap()
    };
    // Offline, on a data directory the server has never opened.
    std::fs::create_dir_all(&data).unwrap();
    ocellus::store::Store::open(&data).unwrap();
    let output = load(&["--json"]);
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        report,
        json!({"loaded": ["Load::One", "Load::Two"], "replaced": [], "skipped": []})
    );

    // The server starts with the files' namespaces and the starter set.
    let server = Server::start_in(dir, |_| {}).await;
    let (status, one) = call(&server, Method::GET, &format!("{NS}/Load::One"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["owner"], "admin");
    assert_eq!(one["properties"]["size"]["default"], 4);
    assert_eq!(one["objects"][0]["name"], "Obj");
    assert_eq!(one["tags"], json!([{"name": "t1"}]));
    let (_, two) = call(&server, Method::GET, &format!("{NS}/Load::Two"), None).await;
    assert_eq!(two["visibility"], "private");
    let (status, _) = call(
        &server,
        Method::GET,
        &format!("{NS}/OS::OperatingSystem"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // While the server runs, through its admin endpoint: existing namespaces are skipped,
    // or replaced with --overwrite (the lab server takes admin calls from loopback).
    let url = ["--url", server.base.as_str()];
    let output = load(&url);
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("0 loaded, 0 replaced, 2 skipped"), "{text}");
    let (status, _) = call(
        &server,
        Method::POST,
        &format!("{NS}/Load::One/tags/t2"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let output = load(&[url[0], url[1], "--overwrite"]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("0 loaded, 2 replaced, 0 skipped"));
    let (_, tags) = call(&server, Method::GET, &format!("{NS}/Load::One/tags"), None).await;
    assert_eq!(
        tags,
        json!({"tags": [{"name": "t1"}]}),
        "replaced from the file"
    );

    // A bad file refuses the whole load, before anything is written.
    std::fs::write(
        files.join("three.json"),
        r#"{"namespace": "Load::Three", "visibility": "shared"}"#,
    )
    .unwrap();
    let output = load(&url);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("three.json"));
    let (status, _) = call(&server, Method::GET, &format!("{NS}/Load::Three"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The endpoint checks documents too.
    let (status, _) = call(
        &server,
        Method::POST,
        "/ocellus/v1/metadefs",
        Some(json!({"namespaces": [{"namespace": "x", "visibility": "shared"}]})),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = call_as(
        &server,
        Method::POST,
        "/ocellus/v1/metadefs",
        Some(json!({"namespaces": []})),
        A,
        MEMBER,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
}
