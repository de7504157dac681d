//! The access matrix: every image endpoint × every kind of credential × every image visibility,
//! each cell with the exact status it must answer.
//!
//! The server runs with `auth = "keys"`. Five credentials must fail authentication everywhere
//! (no header, a malformed token, a real key id with a wrong secret, a revoked key, an expired
//! key); four authenticate as different callers (a member of another project, a reader and a
//! member of the owning project, and an admin of an unrelated project). The images, all owned
//! by project `alpha`, cover every visibility, and shared images every member status of project
//! `beta`. The expected statuses come from one function, `expected`, which restates the rules of
//! `src/policy.rs` and the handlers' order of checks (visibility first: an image the caller
//! cannot see is 404, never 403). The test runs every cell, then reports every wrong one at once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

use crate::common::Server;

/// What a listing cell records when the listing answered 200 but left the image out (a listing
/// that contains the image records 200).
const NOT_LISTED: u16 = 0;

/// The page size asked of listings: far more than the images this test creates, so that no
/// image can hide on a later page (checked: a listing with a `next` link fails the test).
const LIST_LIMIT: &str = "limit=1000";

/// How long the expired key lives, as the admin endpoint takes it.
const EXPIRED_KEY_LIFETIME: &str = "2s";

/// How long to wait after creating the expired key before using it: past its lifetime, with a
/// second to spare for the server's whole-second clock.
const EXPIRED_KEY_WAIT: Duration = Duration::from_secs(3);

/// Who is calling: the columns of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Cred {
    /// No credential at all.
    NoAuth,
    /// `X-Auth-Token: not-a-key`.
    Malformed,
    /// The alpha member key's id with another secret.
    WrongSecret,
    /// A key that worked once and was then revoked.
    Revoked,
    /// A key past its expiry.
    Expired,
    /// A member of project beta, which is not the images' owner.
    OtherMember,
    /// A reader of project alpha, the owner.
    Reader,
    /// A member of project alpha, the owner.
    Member,
    /// An admin of project ops; admin is global, as in Glance.
    Admin,
}

impl Cred {
    const ALL: [Cred; 9] = [
        Cred::NoAuth,
        Cred::Malformed,
        Cred::WrongSecret,
        Cred::Revoked,
        Cred::Expired,
        Cred::OtherMember,
        Cred::Reader,
        Cred::Member,
        Cred::Admin,
    ];

    fn name(self) -> &'static str {
        match self {
            Cred::NoAuth => "none",
            Cred::Malformed => "malformed",
            Cred::WrongSecret => "wrong secret",
            Cred::Revoked => "revoked",
            Cred::Expired => "expired",
            Cred::OtherMember => "beta member",
            Cred::Reader => "alpha reader",
            Cred::Member => "alpha member",
            Cred::Admin => "ops admin",
        }
    }

    /// Whether the credential authenticates at all.
    fn authenticated(self) -> bool {
        matches!(
            self,
            Cred::OtherMember | Cred::Reader | Cred::Member | Cred::Admin
        )
    }
}

/// The image under test: its visibility and, for shared images, project beta's member status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Vis {
    Private,
    SharedPending,
    SharedAccepted,
    SharedRejected,
    Community,
    Public,
}

impl Vis {
    const ALL: [Vis; 6] = [
        Vis::Private,
        Vis::SharedPending,
        Vis::SharedAccepted,
        Vis::SharedRejected,
        Vis::Community,
        Vis::Public,
    ];

    fn name(self) -> &'static str {
        match self {
            Vis::Private => "private",
            Vis::SharedPending => "shared-pending",
            Vis::SharedAccepted => "shared-accepted",
            Vis::SharedRejected => "shared-rejected",
            Vis::Community => "community",
            Vis::Public => "public",
        }
    }

    /// The `visibility` the API takes.
    fn api_name(self) -> &'static str {
        match self {
            Vis::Private => "private",
            Vis::SharedPending | Vis::SharedAccepted | Vis::SharedRejected => "shared",
            Vis::Community => "community",
            Vis::Public => "public",
        }
    }

    /// Project beta's member status on the image; `None` when beta is no member.
    fn membership(self) -> Option<&'static str> {
        match self {
            Vis::SharedPending => Some("pending"),
            Vis::SharedAccepted => Some("accepted"),
            Vis::SharedRejected => Some("rejected"),
            Vis::Private | Vis::Community | Vis::Public => None,
        }
    }

    fn is_shared(self) -> bool {
        self.membership().is_some()
    }
}

/// What is asked of the image: the rows of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Endpoint {
    Show,
    List,
    ListSharedAll,
    ListCommunity,
    Update,
    Delete,
    Upload,
    Download,
    AddTag,
    Deactivate,
    ListMembers,
    AddMember,
    SetMemberStatus,
    RemoveMember,
    Create,
}

impl Endpoint {
    const ALL: [Endpoint; 15] = [
        Endpoint::Show,
        Endpoint::List,
        Endpoint::ListSharedAll,
        Endpoint::ListCommunity,
        Endpoint::Update,
        Endpoint::Delete,
        Endpoint::Upload,
        Endpoint::Download,
        Endpoint::AddTag,
        Endpoint::Deactivate,
        Endpoint::ListMembers,
        Endpoint::AddMember,
        Endpoint::SetMemberStatus,
        Endpoint::RemoveMember,
        Endpoint::Create,
    ];

    fn name(self) -> &'static str {
        match self {
            Endpoint::Show => "GET /v2/images/{id}",
            Endpoint::List => "GET /v2/images",
            Endpoint::ListSharedAll => "GET /v2/images?member_status=all&visibility=shared",
            Endpoint::ListCommunity => "GET /v2/images?visibility=community",
            Endpoint::Update => "PATCH /v2/images/{id}",
            Endpoint::Delete => "DELETE /v2/images/{id}",
            Endpoint::Upload => "PUT /v2/images/{id}/file",
            Endpoint::Download => "GET /v2/images/{id}/file",
            Endpoint::AddTag => "PUT /v2/images/{id}/tags/x",
            Endpoint::Deactivate => "POST /v2/images/{id}/actions/deactivate",
            Endpoint::ListMembers => "GET /v2/images/{id}/members",
            Endpoint::AddMember => "POST /v2/images/{id}/members",
            Endpoint::SetMemberStatus => "PUT /v2/images/{id}/members/{beta}",
            Endpoint::RemoveMember => "DELETE /v2/images/{id}/members/{beta}",
            Endpoint::Create => "POST /v2/images",
        }
    }

    /// Whether the cell's status is the image's presence in a listing.
    fn is_listing(self) -> bool {
        matches!(
            self,
            Endpoint::List | Endpoint::ListSharedAll | Endpoint::ListCommunity
        )
    }

    /// For endpoints that change the image: each authenticated cell gets a fresh image, with
    /// data (active) when the value is `true`, queued otherwise. `None`: the shared image set
    /// does.
    fn fresh_image(self) -> Option<bool> {
        match self {
            Endpoint::Deactivate => Some(true),
            Endpoint::Update
            | Endpoint::Delete
            | Endpoint::Upload
            | Endpoint::AddTag
            | Endpoint::AddMember
            | Endpoint::SetMemberStatus
            | Endpoint::RemoveMember => Some(false),
            Endpoint::Show
            | Endpoint::List
            | Endpoint::ListSharedAll
            | Endpoint::ListCommunity
            | Endpoint::Download
            | Endpoint::ListMembers
            | Endpoint::Create => None,
        }
    }

    /// The cell's request, before its credential; `id` is the image of the cell (unused by
    /// `Create` and the listings' URLs).
    fn request(self, ctx: &Ctx, cred: Cred, id: &str, vis: Vis) -> RequestBuilder {
        let image = format!("/v2/images/{id}");
        let beta_member = format!("{image}/members/{}", ctx.beta);
        match self {
            Endpoint::Show => ctx.request(cred, Method::GET, &image),
            Endpoint::List => ctx.request(cred, Method::GET, &format!("/v2/images?{LIST_LIMIT}")),
            Endpoint::ListSharedAll => ctx.request(
                cred,
                Method::GET,
                &format!("/v2/images?member_status=all&visibility=shared&{LIST_LIMIT}"),
            ),
            Endpoint::ListCommunity => ctx.request(
                cred,
                Method::GET,
                &format!("/v2/images?visibility=community&{LIST_LIMIT}"),
            ),
            Endpoint::Update => ctx
                .request(cred, Method::PATCH, &image)
                .header(CONTENT_TYPE, "application/openstack-images-v2.1-json-patch")
                .body(json!([{"op": "replace", "path": "/name", "value": "renamed"}]).to_string()),
            Endpoint::Delete => ctx.request(cred, Method::DELETE, &image),
            Endpoint::Upload => ctx
                .request(cred, Method::PUT, &format!("{image}/file"))
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(b"matrix upload".to_vec()),
            Endpoint::Download => ctx.request(cred, Method::GET, &format!("{image}/file")),
            Endpoint::AddTag => ctx.request(cred, Method::PUT, &format!("{image}/tags/x")),
            Endpoint::Deactivate => {
                ctx.request(cred, Method::POST, &format!("{image}/actions/deactivate"))
            }
            Endpoint::ListMembers => ctx.request(cred, Method::GET, &format!("{image}/members")),
            Endpoint::AddMember => ctx
                .request(cred, Method::POST, &format!("{image}/members"))
                .json(&json!({"member": "gamma"})),
            Endpoint::SetMemberStatus => ctx
                .request(cred, Method::PUT, &beta_member)
                .json(&json!({"status": "accepted"})),
            Endpoint::RemoveMember => ctx.request(cred, Method::DELETE, &beta_member),
            Endpoint::Create => ctx.request(cred, Method::POST, "/v2/images").json(&json!({
                "name": "m",
                "disk_format": "raw",
                "container_format": "bare",
                "visibility": vis.api_name(),
            })),
        }
    }
}

/// Whether the caller can see the image at all (`Caller::can_see` in src/policy.rs): admins see
/// everything; the owning project (reader or member) sees its own images; another project sees
/// public and community images, and shared images it is a member of, whatever its member
/// status. Only meaningful for authenticated credentials.
fn can_see(cred: Cred, vis: Vis) -> bool {
    cred != Cred::OtherMember || vis != Vis::Private
}

/// A listing cell's status: 200 if the image is listed, `NOT_LISTED` if not.
fn listed(present: bool) -> u16 {
    if present { 200 } else { NOT_LISTED }
}

/// The status a cell must answer. The rules, from src/policy.rs and the handlers in
/// src/http/{images,image_data,tags,members}.rs:
///
/// - A credential that does not authenticate gets 401 everywhere, before anything else.
/// - An image the caller cannot see (`can_see`) is 404 on every image endpoint, never 403;
///   403 is a refusal about an image the caller can see.
/// - Showing needs the reader role (every key has it).
/// - Listing by default (`Caller::lists`): the owner lists all its images, community ones
///   included; an admin lists everything but other projects' community images; another
///   project lists public images and shared ones it has accepted. With
///   `visibility=shared&member_status=all`, every caller here lists exactly the three shared
///   images; with `visibility=community`, exactly the community one.
/// - Changing an image or its data, tags, status or members (`Caller::can_modify`): admin, or
///   the member role in the owning project. Readers are refused.
/// - Downloading (`Caller::can_download`): the member role, on any visible image.
/// - Members exist only on shared images: any member endpoint on another visibility is 403
///   once the caller passed the visibility and policy checks. Listing members
///   (`Caller::can_read_members`) is for admins, the owner and member projects; another project
///   that is no member (a community or public image) is refused with 403.
/// - Setting a member status (`Caller::can_set_member_status`) is for admins and the member
///   project itself, never for the owner.
/// - Creating (`Caller::can_create`, `Caller::can_publicize`): admins anything; members an
///   image of their own project, but not a public one; readers nothing.
fn expected(endpoint: Endpoint, cred: Cred, vis: Vis) -> u16 {
    if !cred.authenticated() {
        return 401;
    }
    let visible = can_see(cred, vis);
    let writer = matches!(cred, Cred::Member | Cred::Admin);
    // A write refused by policy: 403 if the caller can see the image, else 404.
    let refused = if visible { 403 } else { 404 };
    match endpoint {
        Endpoint::Show => {
            if visible {
                200
            } else {
                404
            }
        }
        Endpoint::List => listed(match cred {
            Cred::Reader | Cred::Member => true,
            Cred::Admin => vis != Vis::Community,
            _ => matches!(vis, Vis::SharedAccepted | Vis::Public),
        }),
        Endpoint::ListSharedAll => listed(vis.is_shared()),
        Endpoint::ListCommunity => listed(vis == Vis::Community),
        Endpoint::Update => {
            if writer {
                200
            } else {
                refused
            }
        }
        Endpoint::Delete | Endpoint::Upload | Endpoint::AddTag | Endpoint::Deactivate => {
            if writer {
                204
            } else {
                refused
            }
        }
        Endpoint::Download => {
            if !visible {
                404
            } else if cred == Cred::Reader {
                403
            } else {
                200
            }
        }
        Endpoint::ListMembers => {
            if !visible {
                404
            } else if vis.is_shared() {
                200
            } else {
                403
            }
        }
        Endpoint::AddMember => {
            if !visible {
                404
            } else if writer && vis.is_shared() {
                200
            } else {
                403
            }
        }
        Endpoint::SetMemberStatus => {
            let may = matches!(cred, Cred::Admin | Cred::OtherMember);
            if !visible {
                404
            } else if may && vis.is_shared() {
                200
            } else {
                403
            }
        }
        Endpoint::RemoveMember => {
            if !visible {
                404
            } else if writer && vis.is_shared() {
                204
            } else {
                403
            }
        }
        Endpoint::Create => match cred {
            Cred::Admin => 201,
            Cred::Reader => 403,
            _ if vis == Vis::Public => 403,
            _ => 201,
        },
    }
}

/// How a cell's status appears in a mismatch report.
fn describe(endpoint: Endpoint, status: u16) -> String {
    match status {
        NOT_LISTED => "200 without the image (not listed)".to_owned(),
        200 if endpoint.is_listing() => "200 with the image (listed)".to_owned(),
        _ => status.to_string(),
    }
}

/// The server, the projects' ids and a token for every credential but `NoAuth`.
struct Ctx {
    server: Server,
    /// Project alpha's id: the owner of every image under test.
    alpha: String,
    /// Project beta's id: the member project of shared images.
    beta: String,
    tokens: HashMap<Cred, String>,
    /// When the expired key was created.
    expired_key_created: Instant,
}

impl Ctx {
    /// A request carrying `cred`'s token in `X-Auth-Token` (none for `Cred::NoAuth`).
    fn request(&self, cred: Cred, method: Method, path: &str) -> RequestBuilder {
        let request = self.server.request(method, path);
        match self.tokens.get(&cred) {
            Some(token) => request.header("X-Auth-Token", token.as_str()),
            None => request,
        }
    }

    /// Sends a setup request and insists on its status.
    async fn expect(&self, request: RequestBuilder, status: StatusCode, what: &str) -> Value {
        let (got, body) = self.server.json(request).await;
        assert_eq!(got, status, "{what}: {body}");
        body
    }

    /// Waits until the expired key is surely past its expiry.
    async fn wait_for_expiry(&self) {
        if let Some(rest) = EXPIRED_KEY_WAIT.checked_sub(self.expired_key_created.elapsed()) {
            tokio::time::sleep(rest).await;
        }
    }
}

/// A string field of a JSON document.
fn field(document: &Value, name: &str) -> String {
    document[name]
        .as_str()
        .unwrap_or_else(|| panic!("no string {name} in {document}"))
        .to_owned()
}

/// Creates an API key through the admin endpoint; returns the creation response.
async fn create_key(
    server: &Server,
    admin: &str,
    project: &str,
    role: &str,
    name: &str,
    expires: Option<&str>,
) -> Value {
    let mut body = json!({"project": project, "role": role, "name": name});
    if let Some(expires) = expires {
        body["expires"] = json!(expires);
    }
    let (status, key) = server
        .json(
            server
                .request(Method::POST, "/ocellus/v1/keys")
                .header("X-Auth-Token", admin)
                .json(&body),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "creating key {name}: {key}");
    key
}

/// Starts the server and makes a key for every credential.
async fn setup() -> Ctx {
    let server = Server::start_with(|config| {
        config.auth = ocellus::config::AuthMode::Keys;
        config.auth_failure_limit = 0;
    })
    .await;
    let bootstrap = server.data_dir().join(ocellus::BOOTSTRAP_KEY_FILE);
    let admin = std::fs::read_to_string(bootstrap)
        .expect("auth=keys without keys writes a bootstrap admin key")
        .trim()
        .to_owned();

    // First, so that its lifetime runs out while the rest is set up.
    let expired = create_key(
        &server,
        &admin,
        "alpha",
        "member",
        "alpha-expired",
        Some(EXPIRED_KEY_LIFETIME),
    )
    .await;
    let expired_key_created = Instant::now();

    let alpha_member = create_key(&server, &admin, "alpha", "member", "alpha-member", None).await;
    let alpha_reader = create_key(&server, &admin, "alpha", "reader", "alpha-reader", None).await;
    let beta_member = create_key(&server, &admin, "beta", "member", "beta-member", None).await;
    let ops_admin = create_key(&server, &admin, "ops", "admin", "ops-admin", None).await;

    let revoked = create_key(&server, &admin, "alpha", "member", "alpha-revoked", None).await;
    let revoked_key = field(&revoked, "key");
    let (status, body) = server
        .json(
            server
                .request(Method::GET, "/v2/images")
                .header("X-Auth-Token", revoked_key.as_str()),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the key works before revocation: {body}"
    );
    let status = server
        .request(
            Method::DELETE,
            &format!("/ocellus/v1/keys/{}", field(&revoked, "id")),
        )
        .header("X-Auth-Token", admin.as_str())
        .send()
        .await
        .expect("revoking a key")
        .status();
    assert_eq!(status, StatusCode::NO_CONTENT, "revoking a key");

    let alpha = field(&alpha_member, "project_id");
    let beta = field(&beta_member, "project_id");
    assert_eq!(
        field(&alpha_reader, "project_id"),
        alpha,
        "one project, one id"
    );
    assert_ne!(alpha, beta, "two projects, two ids");

    let wrong_secret = format!("ock-{}-{}", field(&alpha_member, "id"), "0".repeat(64));
    let tokens = HashMap::from([
        (Cred::Malformed, "not-a-key".to_owned()),
        (Cred::WrongSecret, wrong_secret),
        (Cred::Revoked, revoked_key),
        (Cred::Expired, field(&expired, "key")),
        (Cred::OtherMember, field(&beta_member, "key")),
        (Cred::Reader, field(&alpha_reader, "key")),
        (Cred::Member, field(&alpha_member, "key")),
        (Cred::Admin, field(&ops_admin, "key")),
    ]);
    Ctx {
        server,
        alpha,
        beta,
        tokens,
        expired_key_created,
    }
}

/// Creates a raw/bare image owned by project alpha with API visibility `visibility`. With
/// `membership`, project beta is added as a member and, unless it stays `pending`, sets that
/// status itself. With `with_data`, a few bytes are uploaded, which makes the image active.
///
/// Alpha's member creates the image, except a public one: only admins may publicize, so the
/// ops admin creates it on alpha's behalf (admins may set the owner).
async fn make_image(
    ctx: &Ctx,
    visibility: &str,
    membership: Option<&str>,
    with_data: bool,
) -> String {
    let mut body = json!({
        "name": "matrix",
        "disk_format": "raw",
        "container_format": "bare",
        "visibility": visibility,
    });
    let creator = if visibility == "public" {
        body["owner"] = json!(ctx.alpha);
        Cred::Admin
    } else {
        Cred::Member
    };
    let image = ctx
        .expect(
            ctx.request(creator, Method::POST, "/v2/images").json(&body),
            StatusCode::CREATED,
            "creating a matrix image",
        )
        .await;
    let id = field(&image, "id");
    assert_eq!(
        image["owner"],
        ctx.alpha.as_str(),
        "matrix images belong to alpha"
    );

    if let Some(status) = membership {
        ctx.expect(
            ctx.request(
                Cred::Member,
                Method::POST,
                &format!("/v2/images/{id}/members"),
            )
            .json(&json!({"member": ctx.beta})),
            StatusCode::OK,
            "adding beta as a member",
        )
        .await;
        if status != "pending" {
            ctx.expect(
                ctx.request(
                    Cred::OtherMember,
                    Method::PUT,
                    &format!("/v2/images/{id}/members/{}", ctx.beta),
                )
                .json(&json!({"status": status})),
                StatusCode::OK,
                "beta setting its member status",
            )
            .await;
        }
    }

    if with_data {
        let status = ctx
            .request(Cred::Member, Method::PUT, &format!("/v2/images/{id}/file"))
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(b"matrix image data".to_vec())
            .send()
            .await
            .expect("uploading image data")
            .status();
        assert_eq!(status, StatusCode::NO_CONTENT, "uploading data to {id}");
    }
    id
}

/// What one cell answered.
struct Outcome {
    /// The HTTP status, or for a listing that answered 200, `listed(image is in it)`.
    status: u16,
    /// The `WWW-Authenticate` header, if any.
    challenge: Option<String>,
}

/// Runs one cell: on a fresh image for state-changing endpoints (when the caller
/// authenticates; refused credentials change nothing), else on the shared image of `vis`.
async fn run_cell(
    ctx: &Ctx,
    images: &HashMap<Vis, String>,
    endpoint: Endpoint,
    cred: Cred,
    vis: Vis,
) -> Outcome {
    let id = match endpoint.fresh_image() {
        Some(with_data) if cred.authenticated() => {
            make_image(ctx, vis.api_name(), vis.membership(), with_data).await
        }
        _ => images[&vis].clone(),
    };
    let response = endpoint
        .request(ctx, cred, &id, vis)
        .send()
        .await
        .unwrap_or_else(|error| {
            panic!(
                "{} / {} / {}: request failed: {error}",
                endpoint.name(),
                cred.name(),
                vis.name()
            )
        });
    let status = response.status();
    let challenge = response
        .headers()
        .get(WWW_AUTHENTICATE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let bytes = response.bytes().await.expect("reading a response body");
    if !(endpoint.is_listing() && status == StatusCode::OK) {
        return Outcome {
            status: status.as_u16(),
            challenge,
        };
    }
    let body: Value = serde_json::from_slice(&bytes).expect("a listing is JSON");
    assert!(
        body.get("next").is_none(),
        "{} / {}: the listing has more pages; raise LIST_LIMIT",
        endpoint.name(),
        cred.name()
    );
    let present = body["images"]
        .as_array()
        .expect("a listing has an images array")
        .iter()
        .any(|image| image["id"] == id);
    Outcome {
        status: listed(present),
        challenge,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_credential_and_visibility_answers_exactly() {
    let ctx = setup().await;
    assert_eq!(
        ctx.tokens.len(),
        Cred::ALL.len() - 1,
        "a token for every credential but none"
    );

    // Read-only endpoints, and every refused credential, share one active image per visibility.
    let mut images = HashMap::new();
    for vis in Vis::ALL {
        images.insert(
            vis,
            make_image(&ctx, vis.api_name(), vis.membership(), true).await,
        );
    }
    ctx.wait_for_expiry().await;

    let mut mismatches = Vec::new();
    let mut checked = 0;
    let mut challenged = 0;
    for endpoint in Endpoint::ALL {
        for cred in Cred::ALL {
            for vis in Vis::ALL {
                let want = expected(endpoint, cred, vis);
                let outcome = run_cell(&ctx, &images, endpoint, cred, vis).await;
                checked += 1;
                let cell = format!("{} / {} / {}", endpoint.name(), cred.name(), vis.name());
                if outcome.status != want {
                    mismatches.push(format!(
                        "{cell}: expected {}, got {}",
                        describe(endpoint, want),
                        describe(endpoint, outcome.status)
                    ));
                }
                if outcome.status == 401 {
                    match outcome.challenge {
                        Some(challenge) if challenge.starts_with("Keystone uri=") => {
                            challenged += 1;
                        }
                        other => mismatches.push(format!(
                            "{cell}: 401 without a Keystone WWW-Authenticate header ({other:?})"
                        )),
                    }
                }
            }
        }
    }

    assert_eq!(
        checked,
        Endpoint::ALL.len() * Cred::ALL.len() * Vis::ALL.len()
    );
    assert_eq!(checked, 15 * 9 * 6, "every cell of the matrix ran");
    assert!(
        challenged > 0,
        "no 401 carried a Keystone WWW-Authenticate header"
    );
    assert!(
        mismatches.is_empty(),
        "{} of {checked} cells answered otherwise:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );

    // The same admin key works as a bearer token too.
    let admin = &ctx.tokens[&Cred::Admin];
    let (status, body) = ctx
        .server
        .json(
            ctx.server
                .request(Method::GET, "/v2/images")
                .header(AUTHORIZATION, format!("Bearer {admin}")),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "bearer admin key: {body}");
}
