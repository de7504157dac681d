//! Image members in lab mode (identity from X-Project-Id and X-Roles): the member resource's
//! shape, duplicates, the member quota, who sees which memberships, the `member_status` list
//! filter, and members leaving with their image. The access matrix (`matrix.rs`) covers the
//! status of every member endpoint per credential.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::Server;

/// A request made as a member of `project`.
fn as_project(
    server: &Server,
    project: &str,
    method: Method,
    path: &str,
) -> reqwest::RequestBuilder {
    server
        .request(method, path)
        .header("X-Project-Id", project)
        .header("X-Roles", "member,reader")
}

async fn listed(server: &Server, project: &str, query: &str) -> Vec<String> {
    let (status, body) = server
        .json(as_project(
            server,
            project,
            Method::GET,
            &format!("/v2/images{query}"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn members_share_an_image_until_it_goes() {
    let server = Server::start().await;
    let image = server
        .create(json!({"name": "shared", "visibility": "shared"}))
        .await;
    let id = image["id"].as_str().unwrap().to_owned();
    let members = format!("/v2/images/{id}/members");

    let (status, member) = server
        .json(
            server
                .request(Method::POST, &members)
                .json(&json!({"member": "beta"})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "Glance answers 200, not 201: {member}"
    );
    assert_eq!(member["member_id"], "beta");
    assert_eq!(member["image_id"], id.as_str());
    assert_eq!(member["status"], "pending");
    assert_eq!(member["schema"], "/v2/schemas/member");
    assert!(member["created_at"].as_str().unwrap().ends_with('Z'));
    let (status, _) = server
        .json(
            server
                .request(Method::POST, &members)
                .json(&json!({"member": "beta"})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    for bad in [
        json!({}),
        json!({"member": 7}),
        json!(["beta"]),
        json!({"member": ""}),
    ] {
        let (status, _) = server
            .json(server.request(Method::POST, &members).json(&bad))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    server
        .json(
            server
                .request(Method::POST, &members)
                .json(&json!({"member": "gamma"})),
        )
        .await;

    // The owner sees every member; a member project only its own membership.
    let (_, all) = server.json(server.request(Method::GET, &members)).await;
    assert_eq!(all["members"].as_array().unwrap().len(), 2);
    assert_eq!(all["schema"], "/v2/schemas/members");
    let (_, own) = server
        .json(as_project(&server, "beta", Method::GET, &members))
        .await;
    let own: Vec<&Value> = own["members"].as_array().unwrap().iter().collect();
    assert_eq!(own.len(), 1);
    assert_eq!(own[0]["member_id"], "beta");
    let gamma = format!("{members}/gamma");
    assert_eq!(
        as_project(&server, "beta", Method::GET, &gamma)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::NOT_FOUND
    );

    // Pending members see the image by id but not in default listings.
    assert!(listed(&server, "beta", "").await.is_empty());
    assert_eq!(
        listed(&server, "beta", "?member_status=pending").await,
        vec![id.clone()]
    );
    assert!(
        listed(&server, "delta", "?member_status=all")
            .await
            .is_empty()
    );
    let (status, _) = server
        .json(as_project(
            &server,
            "beta",
            Method::GET,
            &format!("/v2/images/{id}"),
        ))
        .await;
    assert_eq!(status, StatusCode::OK);

    let beta = format!("{members}/beta");
    let (status, _) = server
        .json(as_project(&server, "beta", Method::PUT, &beta).json(&json!({"status": "maybe"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, accepted) = server
        .json(as_project(&server, "beta", Method::PUT, &beta).json(&json!({"status": "accepted"})))
        .await;
    assert_eq!(
        (status, accepted["status"].clone()),
        (StatusCode::OK, json!("accepted"))
    );
    assert_eq!(listed(&server, "beta", "").await, vec![id.clone()]);
    assert!(
        listed(&server, "beta", "?member_status=pending")
            .await
            .is_empty()
    );
    assert!(listed(&server, "gamma", "").await.is_empty());

    // Making the image private hides it from its members; shared again, they are back.
    let (status, _) = server
        .patch(
            &id,
            json!([{"op": "replace", "path": "/visibility", "value": "private"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed(&server, "beta", "").await.is_empty());
    let (status, _) = server
        .patch(
            &id,
            json!([{"op": "replace", "path": "/visibility", "value": "shared"}]),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&server, "beta", "").await, vec![id.clone()]);

    // Deleting the image deletes its members with it.
    assert_eq!(server.delete(&id).await, StatusCode::NO_CONTENT);
    let dir = server.stop().await;
    let store = ocellus::store::Store::open_metadata(&dir.path().join("data")).unwrap();
    assert!(store.memberships("beta").unwrap().is_empty());
    assert!(store.memberships("gamma").unwrap().is_empty());
}

#[tokio::test]
async fn an_image_has_at_most_128_members() {
    let server = Server::start().await;
    let image = server.create(json!({"visibility": "shared"})).await;
    let members = format!("/v2/images/{}/members", image["id"].as_str().unwrap());
    for index in 0..128 {
        let (status, body) = server
            .json(
                server
                    .request(Method::POST, &members)
                    .json(&json!({"member": format!("project-{index}")})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "member {index}: {body}");
    }
    let (status, _) = server
        .json(
            server
                .request(Method::POST, &members)
                .json(&json!({"member": "one-too-many"})),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (_, listing) = server.json(server.request(Method::GET, &members)).await;
    assert_eq!(listing["members"].as_array().unwrap().len(), 128);
}

/// Issue 9: showing a member of an image that is not shared is 404, not 403: Glance turns every
/// refusal of that call into 404 so as not to reveal anything. Listing members stays 403.
#[tokio::test]
async fn issue9_member_of_an_unshared_image_is_404() {
    let server = Server::start().await;
    for visibility in ["private", "public", "community"] {
        let image = server.create(json!({"visibility": visibility})).await;
        let members = format!("/v2/images/{}/members", image["id"].as_str().unwrap());
        let (status, body) = server
            .json(
                server
                    .request(Method::GET, &format!("{members}/beta"))
                    .header("Accept", "application/json"),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{visibility}: {body}");
        assert_eq!(body["code"], "404 Not Found", "{visibility}");
        let (status, _) = server.json(server.request(Method::GET, &members)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{visibility}");
    }

    // A project that sees a public image but may not read its members gets 404 as well.
    let image = server.create(json!({"visibility": "public"})).await;
    let member = format!("/v2/images/{}/members/beta", image["id"].as_str().unwrap());
    let (status, _) = server
        .json(
            server
                .request(Method::GET, &member)
                .header("X-Project-Id", "beta")
                .header("X-Roles", "member"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
