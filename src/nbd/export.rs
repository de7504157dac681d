//! What an NBD export name stands for, who may open it, and how its bytes are read.
//!
//! A name is `<image id>`, or `<image id>:raw` for the guest-visible disk of a qcow2 image,
//! optionally followed by `@<capability>`. In lab mode the capability is ignored and the
//! image must be one the lab's default caller could download over HTTP; with keys, the
//! capability (minted by `POST /ocellus/v1/images/{id}/nbd`) names the key, and the same
//! visibility and download rules as `GET /v2/images/{id}/file` are applied to that key now.
//! Every refusal looks the same to the client, so a name reveals nothing about which images
//! exist.

use std::sync::Arc;

use bytes::Bytes;

use crate::config::AuthMode;
use crate::http::AppState;
use crate::kv::{Extents, ImageId, ImageRecord, ImageStatus, Stretch};
use crate::policy::Caller;
use crate::store::{OpenData, Store};

pub use super::names::{Name, export_name, parse_name};

/// How the image's bytes are presented.
#[derive(Clone)]
pub enum View {
    /// The stored bytes, as `GET /file` returns them.
    Stored { extents: Option<Arc<Extents>> },
    /// The virtual disk inside a qcow2 image.
    Raw(Arc<crate::store::RawDisk>),
}

/// An opened export.
#[derive(Clone)]
pub struct Export {
    pub image: ImageId,
    /// The bytes, opened once for all of the connection's reads.
    pub open: Arc<OpenData>,
    pub view: View,
    /// The key behind the capability it was opened with (keys mode), checked again while
    /// the connection lasts.
    pub key_id: Option<String>,
    /// Who reads: the lab's default caller, or the key's.
    caller: Caller,
}

/// The caller a lab-mode NBD client stands for: the same as an HTTP request without headers.
fn lab_caller(state: &AppState) -> Caller {
    crate::http::auth::lab_default_caller(&state.config.default_project)
}

/// Whether `caller` may read `record`'s data: visible, downloadable, with data that is not
/// held by an unfinished import (the rules of `GET /v2/images/{id}/file`).
pub fn readable(caller: &Caller, record: &ImageRecord) -> bool {
    caller.can_see(record)
        && caller.can_download()
        && (record.status != ImageStatus::Deactivated || caller.can_download_deactivated())
        && matches!(
            record.status,
            ImageStatus::Active | ImageStatus::Deactivated
        )
        && record.data.is_some()
}

/// Opens the export `name` names, or `None` (for every reason alike).
pub async fn open(state: &AppState, name: &str) -> Option<Export> {
    let parsed = parse_name(name);
    let id = ImageId::parse(parsed.image)?;
    let (mut caller, key_id) = match state.config.auth {
        AuthMode::None => (lab_caller(state), None),
        AuthMode::Keys => {
            let key = state
                .identity
                .check_capability(parsed.capability?, id.0)
                .await
                .ok()??;
            (crate::http::auth::caller_for(&key), Some(key.id))
        }
    };
    let store = state.store.clone();
    let project = caller.project_id.clone();
    let (record, memberships) = tokio::task::spawn_blocking(move || {
        Some((store.image(id).ok()??, store.memberships(&project).ok()?))
    })
    .await
    .ok()??;
    caller.memberships = memberships;
    if !readable(&caller, &record) {
        return None;
    }
    caller.memberships.clear();
    let data = record.data.clone()?;
    let store = state.store.clone();
    let open = match store.open_data(&data).await {
        Ok(open) => open,
        Err(error) => {
            tracing::error!(image = %id, %error, "could not open the image's bytes for NBD");
            return None;
        }
    };
    let view = if parsed.raw {
        if record.disk_format.as_deref() != Some("qcow2") {
            return None;
        }
        match store.raw_disk(&open).await {
            Ok(disk) => View::Raw(disk),
            Err(error) => {
                tracing::info!(image = %id, %error, "no raw view of this image");
                return None;
            }
        }
    } else {
        let digest = data.digest;
        let extents = store.extents(digest).await.ok()?;
        View::Stored {
            extents: extents.map(Arc::new),
        }
    };
    Some(Export {
        image: id,
        open,
        view,
        key_id,
        caller,
    })
}

impl Export {
    /// Whether the connection may go on reading: its key (if any) still live, the image
    /// still there, with the same bytes, and readable by the caller as the rules stand now.
    pub async fn still_readable(&self, state: &AppState) -> bool {
        if let Some(key_id) = &self.key_id
            && !state.identity.key_is_live(key_id).await.unwrap_or(false)
        {
            return false;
        }
        let store = state.store.clone();
        let (id, project) = (self.image, self.caller.project_id.clone());
        let found = tokio::task::spawn_blocking(move || {
            Some((store.image(id).ok()??, store.memberships(&project).ok()?))
        })
        .await
        .ok()
        .flatten();
        let Some((record, memberships)) = found else {
            return false;
        };
        let mut caller = self.caller.clone();
        caller.memberships = memberships;
        readable(&caller, &record)
            && record.data.as_ref().map(|data| data.digest) == Some(self.open.data.digest)
    }

    /// The buffer memory a read of `length` bytes may hold: its length, or for a raw view at
    /// least two clusters (a compressed cluster read and inflated for a few bytes of it).
    pub fn read_cost(&self, length: u64) -> u64 {
        match &self.view {
            View::Stored { .. } => length,
            View::Raw(disk) => length.max(2 * disk.cluster_size()),
        }
    }

    /// The size clients see.
    pub fn size(&self) -> u64 {
        match &self.view {
            View::Stored { .. } => self.open.data.size,
            View::Raw(disk) => disk.size(),
        }
    }

    /// Reads `length` bytes from `offset` (inside the export) as pieces in order, every
    /// stored byte verified.
    pub async fn read(
        &self,
        store: &Arc<Store>,
        offset: u64,
        length: u64,
    ) -> std::io::Result<Vec<Bytes>> {
        match &self.view {
            View::Stored { .. } => store.read_open(&self.open, offset, length).await,
            View::Raw(disk) => disk.read(store, &self.open, offset, length).await,
        }
    }

    /// Describes `[offset, offset + length)` as data and zero stretches (at most `limit`).
    pub async fn describe(
        &self,
        store: &Arc<Store>,
        offset: u64,
        length: u64,
        limit: usize,
    ) -> std::io::Result<Vec<Stretch>> {
        match &self.view {
            View::Stored {
                extents: Some(extents),
            } => Ok(extents.describe(offset, length, limit)),
            View::Stored { extents: None } => Ok(vec![Stretch {
                length: length.min(self.open.data.size.saturating_sub(offset)),
                zero: false,
            }]),
            View::Raw(disk) => {
                disk.describe(store, &self.open, offset, length, limit)
                    .await
            }
        }
    }
}
