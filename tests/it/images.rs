//! Image metadata: versions, create, show, patch, delete, deactivate, tags and error formats.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::Server;

/// Replaces per-run values so whole documents can be compared.
fn normalize(mut image: Value) -> Value {
    for key in ["id", "created_at", "updated_at", "self", "file"] {
        if image.get(key).is_some_and(|value| value.is_string()) {
            image[key] = json!(key.to_uppercase());
        }
    }
    image
}

#[tokio::test]
async fn versions_document_lists_served_versions_with_absolute_links() {
    let server = Server::start().await;
    let (status, root) = server.json(server.request(Method::GET, "/")).await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
    let href = format!("{}/v2/", server.base);
    let mut expected: Vec<Value> = [
        "v2.12", "v2.10", "v2.9", "v2.8", "v2.7", "v2.6", "v2.5", "v2.4", "v2.3", "v2.2", "v2.1",
        "v2.0",
    ]
    .iter()
    .enumerate()
    .map(|(index, id)| {
        json!({"id": id, "status": if index == 0 { "CURRENT" } else { "SUPPORTED" },
                   "links": [{"rel": "self", "href": href}]})
    })
    .collect();
    // The legacy API, on in lab mode (issue 12).
    for id in ["v1.1", "v1.0"] {
        expected.push(json!({"id": id, "status": "SUPPORTED",
            "links": [{"rel": "self", "href": format!("{}/v1/", server.base)}]}));
    }
    assert_eq!(root, json!({ "versions": expected }));
    let (status, versions) = server.json(server.request(Method::GET, "/versions")).await;
    assert_eq!((status, versions), (StatusCode::OK, root));
    let (status, _) = server.json(server.request(Method::GET, "/v2/")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Issue 9: Glance's version negotiation. `/v2` redirects to `/v2/` (Glance's router does so
/// for an empty path); a served minor version in the URL (`/v2.1/images`) stands for `/v2`; any
/// other first path segment, an unknown or unserved version included, gets the versions
/// document with 300.
#[tokio::test]
async fn issue9_version_prefixes_are_negotiated_as_glance_does() {
    // With the v1 API off, `/v1` is just another version this server does not serve.
    let server = Server::start_with(|config| config.enable_v1_api = false).await;
    let (_, versions) = server.json(server.request(Method::GET, "/")).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for path in ["/v2", "/v2.1"] {
        let response = client.get(server.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::FOUND, "{path}");
        assert_eq!(
            response.headers()["location"],
            format!("{}/v2/", server.base).as_str(),
            "{path}"
        );
        assert!(response.headers().contains_key("x-openstack-request-id"));
        assert!(response.bytes().await.unwrap().is_empty(), "{path}");
    }

    let image = server.create(json!({"name": "negotiated"})).await;
    let id = image["id"].as_str().unwrap();
    for prefix in ["/v2.0", "/v2.1", "/v2.7"] {
        let (status, shown) = server
            .json(server.request(Method::GET, &format!("{prefix}/images/{id}?x=1")))
            .await;
        assert_eq!((status, &shown), (StatusCode::OK, &image), "{prefix}");
    }

    for (method, path) in [
        (Method::GET, "/v9/images"),
        (Method::GET, "/v1/images"),
        (Method::GET, "/v1x"),
        (Method::GET, "/v2.11/images"),
        (Method::GET, "/v2.99/images"),
        (Method::GET, "/images"),
        (Method::POST, "/v9/images"),
    ] {
        let (status, body) = server.json(server.request(method.clone(), path)).await;
        assert_eq!(
            (status, &body),
            (StatusCode::MULTIPLE_CHOICES, &versions),
            "{method} {path}"
        );
    }
    for path in [
        "/v2/",
        "/v2/nonexistent",
        "/v2.1/nonexistent",
        "/ocellus/v2",
    ] {
        let (status, _) = server.json(server.request(Method::GET, path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn schemas_are_served() {
    let server = Server::start().await;
    for (path, name) in [
        ("image", "image"),
        ("images", "images"),
        ("member", "member"),
        ("members", "members"),
    ] {
        let (status, schema) = server
            .json(server.request(Method::GET, &format!("/v2/schemas/{path}")))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(schema["name"], name);
    }
    let (_, image) = server
        .json(server.request(Method::GET, "/v2/schemas/image"))
        .await;
    assert_eq!(image["additionalProperties"], json!({"type": "string"}));
    assert_eq!(image["properties"]["os_distro"]["is_base"], json!(false));
}

#[tokio::test]
async fn create_applies_glance_defaults_and_headers() {
    let server = Server::start().await;
    let response = server
        .request(Method::POST, "/v2/images")
        .json(
            &json!({"name": "golden-qcow2", "disk_format": "qcow2", "container_format": "bare",
                      "visibility": "public", "tags": ["golden"], "os_distro": "debian"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let headers = response.headers().clone();
    let image: Value = response.json().await.unwrap();
    let id = image["id"].as_str().unwrap().to_owned();
    assert_eq!(
        headers["location"],
        format!("{}/v2/images/{id}", server.base).as_str()
    );
    // Issue 11: the enabled import methods, in Glance's order.
    assert_eq!(
        headers["openstack-image-import-methods"],
        "glance-direct,web-download,copy-image"
    );
    assert_eq!(headers["openstack-image-store-ids"], "fs");
    assert!(
        headers["x-openstack-request-id"]
            .to_str()
            .unwrap()
            .starts_with("req-")
    );
    assert_eq!(
        normalize(image.clone()),
        json!({"os_distro": "debian", "name": "golden-qcow2", "disk_format": "qcow2",
               "container_format": "bare", "visibility": "public", "size": null,
               "virtual_size": null, "status": "queued", "checksum": null, "protected": false,
               "min_ram": 0, "min_disk": 0, "owner": "lab", "os_hidden": false,
               "os_hash_algo": null, "os_hash_value": null, "id": "ID", "created_at": "CREATED_AT",
               "updated_at": "UPDATED_AT", "tags": ["golden"], "self": "SELF", "file": "FILE",
               "schema": "/v2/schemas/image"})
    );
    assert_eq!(image["self"], format!("/v2/images/{id}"));
    let (status, shown) = server.show(&id).await;
    assert_eq!((status, shown), (StatusCode::OK, image));

    // An empty body gives the bare defaults, and text/plain bodies are read as JSON like Glance.
    let (status, minimal) = server
        .json(
            server
                .request(Method::POST, "/v2/images")
                .header("Content-Type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(minimal["visibility"], "shared");
    assert_eq!(minimal["name"], Value::Null);

    // The lab mode takes the owner from X-Project-Id.
    let (_, owned) = server
        .json(
            server
                .request(Method::POST, "/v2/images")
                .header("X-Project-Id", "p2")
                .json(&json!({})),
        )
        .await;
    assert_eq!(owned["owner"], "p2");
}

#[tokio::test]
async fn bad_creates_are_refused_and_change_nothing() {
    let server = Server::start().await;
    let existing = server.create(json!({"name": "first"})).await;
    let existing_id = existing["id"].as_str().unwrap();
    let mut props = serde_json::Map::new();
    for index in 0..129 {
        props.insert(format!("p{index}"), json!("v"));
    }
    let tags: Vec<String> = (0..129).map(|index| format!("t{index}")).collect();
    let cases: Vec<(Value, StatusCode)> = vec![
        (
            json!({"name": "bad", "disk_format": "floppy"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "bad", "container_format": "crate"}),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!({"name": "bad", "status": "active"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"name": "bad", "checksum": "x"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"name": "bad", "os_glance_import_task": "x"}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"name": "bad", "deleted": true}),
            StatusCode::FORBIDDEN,
        ),
        (
            json!({"id": existing_id, "name": "dup"}),
            StatusCode::CONFLICT,
        ),
        (json!({"id": "not-a-uuid"}), StatusCode::BAD_REQUEST),
        (json!({"min_ram": -1}), StatusCode::BAD_REQUEST),
        (json!({"protected": "yes"}), StatusCode::BAD_REQUEST),
        (json!({"custom": 5}), StatusCode::BAD_REQUEST),
        (json!({"kernel_id": "nope"}), StatusCode::BAD_REQUEST),
        (json!({"name": "x".repeat(256)}), StatusCode::BAD_REQUEST),
        (Value::Object(props), StatusCode::PAYLOAD_TOO_LARGE),
        (json!({"tags": tags}), StatusCode::PAYLOAD_TOO_LARGE),
        (json!(["not", "an", "object"]), StatusCode::BAD_REQUEST),
    ];
    for (body, expected) in cases {
        let (status, _) = server
            .json(server.request(Method::POST, "/v2/images").json(&body))
            .await;
        assert_eq!(status, expected, "{body}");
    }
    let (status, _) = server
        .json(
            server
                .request(Method::POST, "/v2/images")
                .header("Content-Type", "application/json")
                .body("{bad"),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, ids, _) = server.list_ids("").await;
    assert_eq!(ids, vec![existing_id.to_owned()]);
}

#[tokio::test]
async fn errors_are_html_by_default_and_json_on_request() {
    let server = Server::start().await;
    let missing = "/v2/images/00000000-0000-0000-0000-000000000000";
    let response = server.request(Method::GET, missing).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        response.headers()["content-type"],
        "text/html; charset=UTF-8"
    );
    assert!(response.headers().contains_key("x-openstack-request-id"));
    let html = response.text().await.unwrap();
    assert!(
        html.starts_with("<html>\n <head>\n  <title>404 Not Found</title>"),
        "{html}"
    );
    assert!(
        html.contains("No image found with ID 00000000-0000-0000-0000-000000000000<br /><br />")
    );

    let (status, body) = server
        .json(
            server
                .request(Method::GET, missing)
                .header("Accept", "application/json"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({"message": "No image found with ID 00000000-0000-0000-0000-000000000000<br /><br />\n\n\n",
               "code": "404 Not Found", "title": "Not Found"})
    );
    for path in ["/v2/images/not-a-uuid", "/v2/nonexistent", "/v2/"] {
        let (status, _) = server.json(server.request(Method::GET, path)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow() {
    let server = Server::start().await;
    let image = server.create(json!({})).await;
    let id = image["id"].as_str().unwrap();
    let cases = [
        (
            Method::POST,
            format!("/v2/images/{id}"),
            "GET, PATCH, DELETE",
        ),
        (
            Method::HEAD,
            format!("/v2/images/{id}"),
            "GET, PATCH, DELETE",
        ),
        (Method::HEAD, format!("/v2/images/{id}/file"), "GET, PUT"),
        (Method::DELETE, "/v2/images".to_owned(), "GET, POST"),
        (
            Method::GET,
            format!("/v2/images/{id}/actions/deactivate"),
            "POST",
        ),
    ];
    for (method, path, allow) in cases {
        let response = server.request(method.clone(), &path).send().await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}"
        );
        assert_eq!(response.headers()["allow"], allow);
    }
}

#[tokio::test]
async fn patch_follows_glance_rules() {
    let server = Server::start().await;
    let image = server
        .create(
            json!({"name": "golden", "os_distro": "debian", "disk_format": "raw",
                                      "container_format": "bare"}),
        )
        .await;
    let id = image["id"].as_str().unwrap();
    let (status, patched) = server
        .patch(
            id,
            json!([
                {"op": "replace", "path": "/name", "value": "renamed"},
                {"op": "add", "path": "/description", "value": "a golden image"},
                {"op": "add", "path": "/my_prop", "value": "x"},
                {"op": "remove", "path": "/os_distro"},
                {"op": "replace", "path": "/min_ram", "value": 512},
                {"op": "replace", "path": "/tags", "value": ["a", "b", "a"]}
            ]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["name"], "renamed");
    assert_eq!(patched["description"], "a golden image");
    assert_eq!(patched["my_prop"], "x");
    assert_eq!(patched.get("os_distro"), None);
    assert_eq!(patched["min_ram"], 512);
    assert_eq!(patched["tags"], json!(["a", "b"]));

    // The older patch dialect works too.
    let (status, patched) = server
        .json(
            server
                .request(Method::PATCH, &format!("/v2/images/{id}"))
                .header(
                    "Content-Type",
                    "application/openstack-images-v2.0-json-patch",
                )
                .body(json!([{"replace": "/name", "value": "old-dialect"}]).to_string()),
        )
        .await;
    assert_eq!(
        (status, patched["name"].clone()),
        (StatusCode::OK, json!("old-dialect"))
    );

    let response = server
        .request(Method::PATCH, &format!("/v2/images/{id}"))
        .header("Content-Type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(
        response.headers()["accept-patch"]
            .to_str()
            .unwrap()
            .contains("v2.1-json-patch")
    );

    let refused = [
        (
            json!([{"op": "replace", "path": "/status", "value": "queued"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "replace", "path": "/id", "value": "x"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "frobnicate", "path": "/name", "value": "x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "replace", "path": "/nope", "value": "x"}]),
            StatusCode::CONFLICT,
        ),
        (
            json!([{"op": "remove", "path": "/nope"}]),
            StatusCode::CONFLICT,
        ),
        (
            json!([{"op": "remove", "path": "/name"}]),
            StatusCode::FORBIDDEN,
        ),
        (
            json!([{"op": "replace", "path": "/disk_format", "value": "floppy"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "replace", "path": "name", "value": "x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "add", "path": "/a/b", "value": "x"}]),
            StatusCode::BAD_REQUEST,
        ),
        (
            json!([{"op": "add", "path": "/locations/-", "value": {}}]),
            StatusCode::FORBIDDEN,
        ),
        (json!({"op": "add"}), StatusCode::BAD_REQUEST),
        // A failing operation late in the list undoes the earlier ones.
        (
            json!([{"op": "replace", "path": "/name", "value": "lost"},
                {"op": "replace", "path": "/size", "value": 1}]),
            StatusCode::FORBIDDEN,
        ),
    ];
    for (operations, expected) in refused {
        let (status, _) = server.patch(id, operations.clone()).await;
        assert_eq!(status, expected, "{operations}");
    }
    let (_, after) = server.show(id).await;
    assert_eq!(after["name"], "old-dialect");
    let (status, _) = server
        .patch("00000000-0000-0000-0000-000000000000", json!([]))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Issue 9: in the older patch dialect (`application/openstack-images-v2.0-json-patch`), `add`
/// of a property the image already has is a conflict; Glance counts every core attribute as
/// present. The 2.1 dialect's `add` replaces.
#[tokio::test]
async fn issue9_v2_0_patch_add_of_a_present_property_is_409() {
    let server = Server::start().await;
    let image = server
        .create(json!({"name": "golden", "os_distro": "debian"}))
        .await;
    let id = image["id"].as_str().unwrap();
    let patch_v2_0 = |operations: Value| {
        server
            .request(Method::PATCH, &format!("/v2/images/{id}"))
            .header(
                "Content-Type",
                "application/openstack-images-v2.0-json-patch",
            )
            .header("Accept", "application/json")
            .body(operations.to_string())
    };
    for operations in [
        json!([{"add": "/os_distro", "value": "ubuntu"}]),
        json!([{"add": "/name", "value": "renamed"}]),
        json!([{"add": "/min_ram", "value": 512}]),
        json!([{"add": "/fresh", "value": "x"}, {"add": "/fresh", "value": "y"}]),
    ] {
        let (status, body) = server.json(patch_v2_0(operations.clone())).await;
        assert_eq!(status, StatusCode::CONFLICT, "{operations}: {body}");
        assert_eq!(body["code"], "409 Conflict");
    }
    let (_, unchanged) = server.show(id).await;
    assert_eq!(unchanged, image);

    let (status, patched) = server
        .json(patch_v2_0(json!([{"add": "/fresh", "value": "x"}])))
        .await;
    assert_eq!((status, &patched["fresh"]), (StatusCode::OK, &json!("x")));
    let (status, patched) = server
        .patch(
            id,
            json!([{"op": "add", "path": "/os_distro", "value": "ubuntu"},
                   {"op": "add", "path": "/name", "value": "renamed"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["os_distro"], "ubuntu");
    assert_eq!(patched["name"], "renamed");
}

#[tokio::test]
async fn delete_protects_and_never_reuses_ids() {
    let server = Server::start().await;
    let image = server.create(json!({"protected": true})).await;
    let id = image["id"].as_str().unwrap();
    assert_eq!(server.delete(id).await, StatusCode::FORBIDDEN);
    let (status, _) = server
        .patch(
            id,
            json!([{"op": "replace", "path": "/protected", "value": false}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(server.delete(id).await, StatusCode::NO_CONTENT);
    assert_eq!(server.show(id).await.0, StatusCode::NOT_FOUND);
    assert_eq!(server.delete(id).await, StatusCode::NOT_FOUND);
    let (status, _) = server
        .json(
            server
                .request(Method::POST, "/v2/images")
                .json(&json!({"id": id})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn deactivate_blocks_downloads_for_non_admins() {
    // As Glance's defaults: a member of the owning project may deactivate (golden case 76),
    // but only an admin may then download.
    let server = Server::start().await;
    let image = server
        .create(json!({"disk_format": "raw", "container_format": "bare", "visibility": "public"}))
        .await;
    let id = image["id"].as_str().unwrap();
    let deactivate = format!("/v2/images/{id}/actions/deactivate");
    let reactivate = format!("/v2/images/{id}/actions/reactivate");
    // Only active images can be deactivated.
    assert_eq!(
        server.status(Method::POST, &deactivate).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server.upload(id, b"some bytes".to_vec()).await,
        StatusCode::NO_CONTENT
    );
    let member = |request: reqwest::RequestBuilder| request.header("X-Roles", "member,reader");
    let reader = |request: reqwest::RequestBuilder| request.header("X-Roles", "reader");
    assert_eq!(
        reader(server.request(Method::POST, &deactivate))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        member(server.request(Method::POST, &deactivate))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.show(id).await.1["status"], "deactivated");
    let file = format!("/v2/images/{id}/file");
    assert_eq!(
        member(server.request(Method::GET, &file))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        server.download(id).await,
        (StatusCode::OK, b"some bytes".to_vec())
    );
    assert_eq!(
        server.status(Method::POST, &reactivate).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.show(id).await.1["status"], "active");
    assert_eq!(
        member(server.request(Method::GET, &file))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn tags_add_and_delete() {
    let server = Server::start().await;
    let image = server.create(json!({"tags": ["golden"]})).await;
    let id = image["id"].as_str().unwrap();
    let tag = |name: &str| format!("/v2/images/{id}/tags/{name}");
    assert_eq!(
        server.status(Method::PUT, &tag("extra")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server.status(Method::PUT, &tag("extra")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(server.show(id).await.1["tags"], json!(["golden", "extra"]));
    assert_eq!(
        server.status(Method::DELETE, &tag("extra")).await,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        server.status(Method::DELETE, &tag("missing")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(server.show(id).await.1["tags"], json!(["golden"]));
    let long = "x".repeat(256);
    assert_eq!(
        server.status(Method::PUT, &tag(&long)).await,
        StatusCode::BAD_REQUEST
    );
    let other = "/v2/images/00000000-0000-0000-0000-000000000000/tags/x".to_string();
    assert_eq!(
        server.status(Method::PUT, &other).await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn other_projects_see_only_what_visibility_allows() {
    let server = Server::start().await;
    let private = server.create(json!({"visibility": "private"})).await;
    let public = server.create(json!({"visibility": "public"})).await;
    let outsider = |request: reqwest::RequestBuilder| {
        request
            .header("X-Project-Id", "other")
            .header("X-Roles", "member,reader")
    };
    let show = |id: &Value| format!("/v2/images/{}", id.as_str().unwrap());
    let status = outsider(server.request(Method::GET, &show(&private["id"])))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let status = outsider(server.request(Method::GET, &show(&public["id"])))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::OK);
    let status = outsider(server.request(Method::DELETE, &show(&public["id"])))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, StatusCode::FORBIDDEN);
    let response =
        outsider(server.request(Method::POST, "/v2/images")).json(&json!({"visibility": "public"}));
    assert_eq!(
        response.send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
}
