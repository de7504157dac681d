//! v1 image members: `can_share` flags instead of v2's member statuses.
//!
//! Members are the same records as v2's, so a project added here sees the share in v2 as
//! `pending` and may accept it there. Sharing through v1 makes a private image `shared` (v2
//! gives members only to shared images); a public or community image has no members to set.
//! Reading members follows v2's `get_members` rule, changing them `add_member` and
//! `delete_member`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::super::images::load_visible;
use super::super::wire::now_micros;
use super::super::{AppState, Error, JsonBody, blocking, read_small_body};
use crate::kv::{EditMembers, ImageId, ImageRecord, MembersEdit, Visibility};
use crate::policy::Caller;

/// `GET /v1/images/{id}/members`.
pub async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Json<Value>, Error> {
    let image = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_read_members(&image) {
        return Err(Error::not_authorized("get_members"));
    }
    let store = state.store.clone();
    let id = image.id;
    let members = blocking(move || Ok(store.members(id)?)).await?;
    let every = caller.sees_every_member(&image);
    let views: Vec<Value> = members
        .iter()
        .filter(|member| every || member.member == caller.project_id)
        .map(|member| json!({"member_id": member.member, "can_share": member.can_share}))
        .collect();
    Ok(Json(json!({ "members": views })))
}

/// A member id as v2 takes them.
fn check_member_id(member: &str) -> Result<(), Error> {
    if member.is_empty() || member.chars().count() > 255 || member.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "Invalid membership association: a member id is 1 to 255 printable characters",
        ));
    }
    Ok(())
}

/// Checks (in the members' transaction) that the caller may change this image's members, and
/// makes a private image shared.
fn prepare(caller: &Caller, raw_id: &str, record: &mut ImageRecord) -> Result<(), Error> {
    if !caller.can_see(record) {
        return Err(Error::no_image(raw_id));
    }
    if !caller.can_modify(record) {
        return Err(Error::not_authorized("add_member"));
    }
    match record.visibility {
        Visibility::Shared => Ok(()),
        Visibility::Private => {
            record.visibility = Visibility::Shared;
            record.updated_at = now_micros().max(record.updated_at);
            Ok(())
        }
        other => Err(Error::forbidden(format!(
            "Image {raw_id} is {}: only private and shared images have members",
            other.as_str()
        ))),
    }
}

async fn edit(
    state: &AppState,
    caller: Caller,
    image_id: &str,
    edit: MembersEdit,
) -> Result<Response, Error> {
    let Some(id) = ImageId::parse(image_id) else {
        return Err(Error::no_image(image_id));
    };
    let store = state.store.clone();
    let raw = image_id.to_owned();
    let quota = state.config.per_image.members.unwrap_or(usize::MAX);
    let outcome = blocking(move || {
        store.edit_members(id, &edit, now_micros(), quota, |record| {
            prepare(&caller, &raw, record)
        })
    })
    .await?;
    match outcome {
        EditMembers::Done => {
            tracing::info!(image = %id, "image members changed (v1)");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        EditMembers::NoImage => Err(Error::no_image(image_id)),
        EditMembers::OverQuota(quota) => Err(Error::too_large(format!(
            "Image {image_id} may have at most {quota} members"
        ))),
    }
}

fn can_share(value: Option<&Value>) -> Result<Option<bool>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(flag)) => Ok(Some(*flag)),
        Some(_) => Err(Error::bad_request(
            "Invalid membership association: can_share must be true or false",
        )),
    }
}

/// `PUT /v1/images/{id}/members/{member}`: adds the member, or sets its `can_share` from an
/// optional `{"member": {"can_share": true}}` body. 204.
pub async fn set_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((image_id, member)): Path<(String, String)>,
    request: axum::extract::Request,
) -> Result<Response, Error> {
    check_member_id(&member)?;
    let body = read_small_body(request, &state).await?;
    let flag = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let value: Value = serde_json::from_slice(&body)
            .map_err(|_| Error::bad_request("Malformed JSON in request body."))?;
        let Some(object) = value.get("member").and_then(Value::as_object) else {
            return Err(Error::bad_request(
                "Invalid membership association: the body must be {\"member\": {\"can_share\": ...}}",
            ));
        };
        can_share(object.get("can_share"))?
    };
    edit(
        &state,
        caller,
        &image_id,
        MembersEdit::Upsert {
            member,
            can_share: flag,
        },
    )
    .await
}

/// `PUT /v1/images/{id}/members` with `{"memberships": [{"member_id": ..., "can_share": ...}]}`:
/// the image's members become exactly those. 204.
pub async fn replace_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Response, Error> {
    let Some(entries) = body.get("memberships").and_then(Value::as_array) else {
        return Err(Error::bad_request(
            "Invalid membership association: the body must be {\"memberships\": [...]}",
        ));
    };
    let mut wanted: Vec<(String, Option<bool>)> = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(member) = entry.get("member_id").and_then(Value::as_str) else {
            return Err(Error::bad_request(
                "Invalid membership association: each membership needs a string 'member_id'",
            ));
        };
        check_member_id(member)?;
        let flag = can_share(entry.get("can_share"))?;
        match wanted.iter_mut().find(|(name, _)| name == member) {
            Some(existing) => existing.1 = flag.or(existing.1),
            None => wanted.push((member.to_owned(), flag)),
        }
    }
    edit(&state, caller, &image_id, MembersEdit::Replace(wanted)).await
}

/// `DELETE /v1/images/{id}/members/{member}`. 204.
pub async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((image_id, member)): Path<(String, String)>,
) -> Result<Response, Error> {
    let image = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_modify(&image) {
        return Err(Error::not_authorized("delete_member"));
    }
    let store = state.store.clone();
    let id = image.id;
    let removed_member = member.clone();
    let removed = blocking(move || Ok(store.remove_member(id, &removed_member)?)).await?;
    if !removed {
        return Err(Error::not_found(format!(
            "Membership could not be found: {member} is not a member of image {image_id}"
        )));
    }
    tracing::info!(image = %id, %member, "image member removed (v1)");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/images/{id}/members/{member}`: v1 never served it.
pub async fn forbid_member_show() -> Error {
    Error::method_not_allowed("GET", "PUT, DELETE")
}

/// `GET /v1/shared-images/{member}`: the images shared with a project, for that project or an
/// admin.
pub async fn list_shared_images(
    State(state): State<AppState>,
    caller: Caller,
    Path(member): Path<String>,
) -> Result<Json<Value>, Error> {
    if !caller.is_admin() && caller.project_id != member {
        return Err(Error::forbidden(
            "Only the member project itself or an admin may list its shared images",
        ));
    }
    let store = state.store.clone();
    let shared = blocking(move || {
        let mut images: Vec<ImageId> = store.memberships(&member)?.into_keys().collect();
        images.sort_by_key(|id| id.0);
        let mut found = Vec::with_capacity(images.len());
        for image in images {
            if let Some(record) = store.member(image, &member)? {
                found.push(json!({"image_id": image.to_string(), "can_share": record.can_share}));
            }
        }
        Ok(found)
    })
    .await?;
    Ok(Json(json!({ "shared_images": shared })))
}
