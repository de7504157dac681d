//! Image tag handlers.

use axum::extract::{Path, State};
use axum::response::Response;

use super::images::modify_image;
use super::wire::{check_quotas, check_tag};
use super::{AppState, Error, no_content};
use crate::policy::Caller;

/// https://docs.openstack.org/api-ref/image/v2/index.html#add-image-tag
pub async fn add_image_tag(
    State(state): State<AppState>,
    caller: Caller,
    Path((image_id, tag)): Path<(String, String)>,
) -> Result<Response, Error> {
    let tag = check_tag(&tag)?;
    let limits = state.config.per_image;
    modify_image(
        &state,
        caller,
        &image_id,
        "modify_image",
        move |record, _| {
            if !record.tags.contains(&tag) {
                record.tags.push(tag);
            }
            check_quotas(record, &limits)
        },
    )
    .await?;
    Ok(no_content())
}

/// https://docs.openstack.org/api-ref/image/v2/index.html#delete-image-tag
pub async fn delete_image_tag(
    State(state): State<AppState>,
    caller: Caller,
    Path((image_id, tag)): Path<(String, String)>,
) -> Result<Response, Error> {
    modify_image(
        &state,
        caller,
        &image_id,
        "modify_image",
        move |record, _| {
            let before = record.tags.len();
            record.tags.retain(|existing| *existing != tag);
            if record.tags.len() == before {
                return Err(Error::not_found(format!("Image has no tag {tag}")));
            }
            Ok(())
        },
    )
    .await?;
    Ok(no_content())
}
