//! Image member handlers: sharing an image with other projects.
//!
//! Only `shared` images have members. The owning project adds and removes members; a member
//! project accepts or rejects (or, again, leaves pending) the share. Owners and admins see every
//! member of an image, a member project only its own membership. Showing one member answers
//! every refusal with 404, as Glance does; the other calls refuse with 403.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Value, json};

use super::images::load_visible;
use super::wire::{format_time, now_micros};
use super::{AppState, Error, JsonBody, blocking, no_content};
use crate::kv::{AddMember, ImageRecord, MemberRecord, MemberStatus, Visibility};
use crate::policy::Caller;

fn member_view(member: &MemberRecord) -> Value {
    json!({
        "member_id": member.member,
        "image_id": member.image_id.to_string(),
        "status": member.status.as_str(),
        "created_at": format_time(member.created_at),
        "updated_at": format_time(member.updated_at),
        "schema": "/v2/schemas/member",
    })
}

fn only_shared(image: &ImageRecord, verb: &str) -> Result<(), Error> {
    if image.visibility == Visibility::Shared {
        Ok(())
    } else {
        Err(Error::forbidden(format!(
            "Cannot {verb} members of image {}: only images with visibility 'shared' have members.",
            image.id
        )))
    }
}

fn no_member(image_id: &str, member: &str) -> Error {
    Error::not_found(format!("Image {image_id} has no member {member}"))
}

/// A member id as Glance's schema allows: a non-empty string of at most 255 characters.
fn check_member_id(member: &str) -> Result<(), Error> {
    if member.is_empty() || member.chars().count() > 255 || member.chars().any(char::is_control) {
        return Err(Error::bad_request(
            "member must be 1 to 255 printable characters",
        ));
    }
    Ok(())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#create-image-member
pub async fn create_member(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    let image = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_modify(&image) {
        return Err(Error::not_authorized("add_member"));
    }
    only_shared(&image, "add")?;
    let member = body
        .get("member")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_request("The body must be a JSON object with a string 'member'"))?
        .to_owned();
    check_member_id(&member)?;
    let store = state.store.clone();
    let id = image.id;
    let added_member = member.clone();
    let quota = state.config.per_image.members.unwrap_or(usize::MAX);
    let outcome = blocking(move || {
        store.add_member(id, &added_member, now_micros(), quota, |image| {
            only_shared(image, "add")
        })
    })
    .await?;
    match outcome {
        AddMember::Added(record) => {
            tracing::info!(image = %id, member = %record.member, "image member added");
            Ok(Json(member_view(&record)))
        }
        AddMember::NoImage => Err(Error::no_image(&image_id)),
        AddMember::Duplicate => Err(Error::conflict(format!(
            "Project {member} is already a member of image {image_id}"
        ))),
        AddMember::OverQuota(quota) => Err(Error::too_large(format!(
            "Image {image_id} already has the maximum of {quota} members"
        ))),
    }
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#list-image-members
pub async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    Path(image_id): Path<String>,
) -> Result<Json<Value>, Error> {
    let image = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_read_members(&image) {
        return Err(Error::not_authorized("get_members"));
    }
    only_shared(&image, "list")?;
    let store = state.store.clone();
    let id = image.id;
    let members = blocking(move || Ok(store.members(id)?)).await?;
    let every = caller.sees_every_member(&image);
    let views: Vec<Value> = members
        .iter()
        .filter(|member| every || member.member == caller.project_id)
        .map(member_view)
        .collect();
    Ok(Json(
        json!({"members": views, "schema": "/v2/schemas/members"}),
    ))
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#show-image-member-details
pub async fn show_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((image_id, member)): Path<(String, String)>,
) -> Result<Json<Value>, Error> {
    let image = load_visible(&state, &caller, &image_id).await?;
    // Unlike the other member calls, Glance answers every refusal here with 404, so that
    // asking for one membership reveals nothing about the image or its members.
    let refused = if !caller.can_read_members(&image) {
        Err(Error::not_authorized("get_member"))
    } else {
        only_shared(&image, "show")
    };
    if let Err(error) = refused {
        return Err(Error::not_found(error.message));
    }
    if !caller.sees_every_member(&image) && member != caller.project_id {
        return Err(no_member(&image_id, &member));
    }
    let store = state.store.clone();
    let id = image.id;
    let wanted = member.clone();
    match blocking(move || Ok(store.member(id, &wanted)?)).await? {
        Some(record) => Ok(Json(member_view(&record))),
        None => Err(no_member(&image_id, &member)),
    }
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#update-image-member
pub async fn update_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((image_id, member)): Path<(String, String)>,
    JsonBody(body): JsonBody,
) -> Result<Json<Value>, Error> {
    let image = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_set_member_status(&member) {
        return Err(Error::not_authorized("modify_member"));
    }
    only_shared(&image, "update")?;
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .and_then(MemberStatus::parse)
        .ok_or_else(|| Error::bad_request("status must be one of: pending, accepted, rejected"))?;
    let store = state.store.clone();
    let id = image.id;
    let wanted = member.clone();
    let updated =
        blocking(move || Ok(store.set_member_status(id, &wanted, status, now_micros())?)).await?;
    match updated {
        Some(record) => {
            tracing::info!(image = %id, member = %record.member, status = status.as_str(), "image member updated");
            Ok(Json(member_view(&record)))
        }
        None => Err(no_member(&image_id, &member)),
    }
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#delete-image-member
pub async fn delete_member(
    State(state): State<AppState>,
    caller: Caller,
    Path((image_id, member)): Path<(String, String)>,
) -> Result<Response, Error> {
    let image = load_visible(&state, &caller, &image_id).await?;
    if !caller.can_modify(&image) {
        return Err(Error::not_authorized("delete_member"));
    }
    only_shared(&image, "delete")?;
    let store = state.store.clone();
    let id = image.id;
    let wanted = member.clone();
    if blocking(move || Ok(store.remove_member(id, &wanted)?)).await? {
        tracing::info!(image = %id, %member, "image member removed");
        Ok(no_content())
    } else {
        Err(no_member(&image_id, &member))
    }
}
