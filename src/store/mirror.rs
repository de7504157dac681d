//! Bytes that arrive before their image exists: the mirror downloads a vendor image, checks
//! it, and only then publishes the image, renames and retires the older versions, all in one
//! transaction. Until then no image names the bytes, so a crash leaves only an unreferenced
//! blob, which the next start quarantines.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures_util::Stream;

use super::{Reservation, Store, StoreError, blocking};
use crate::blob::inspect::Inspection;
use crate::blob::{BlobError, ReceiveLimits, Received};
use crate::kv::{Batch, ImageData, ImageRecord, KvError};

/// Received bytes no image refers to yet.
pub struct Detached {
    received: Received,
    place: usize,
    /// The owner's quota claim, committed when the bytes are published.
    claim: Option<super::QuotaClaim>,
}

impl Detached {
    /// The BLAKE3 digest of the bytes, hex.
    pub fn digest_hex(&self) -> String {
        self.received.digest.to_hex()
    }

    pub fn size(&self) -> u64 {
        self.received.size
    }

    /// MD5 of the bytes, hex (Glance's `checksum`).
    pub fn md5_hex(&self) -> String {
        self.received
            .md5
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    pub fn inspection(&self) -> &Inspection {
        &self.received.inspection
    }
}

impl Store {
    /// Receives bytes into the default store without an image: the room is checked against
    /// `declared` first, `cap` bounds the size.
    pub async fn receive_detached<S, B>(
        self: &Arc<Self>,
        body: S,
        declared: Option<u64>,
        cap: u64,
        owner: Option<&str>,
    ) -> Result<Detached, StoreError>
    where
        S: Stream<Item = Result<Bytes, B>>,
        B: std::fmt::Display,
    {
        if let Some(declared) = declared
            && declared > cap
        {
            return Err(StoreError::Blob(BlobError::TooLarge { limit: cap }));
        }
        let _slot = Store::slot(&self.uploads).await?;
        let place = self.default_place;
        let store = self.clone();
        let owner = owner.map(str::to_owned);
        let (keep_free, reservation, claim) = blocking(move || {
            let space = store.places[place].blobs.backend().space()?;
            let keep_free = store.keep_free(space);
            if let Some(space) = space {
                let available = space
                    .free
                    .saturating_sub(keep_free)
                    .saturating_sub(store.reserved.load(Ordering::Acquire));
                let needed = declared.unwrap_or(1);
                if needed > available {
                    return Err(StoreError::NoRoom { needed, available });
                }
            }
            // The bytes will belong to an image of `owner`: they count against its quota.
            let claim = match &owner {
                Some(owner) => store.claim_quota(owner, false, declared)?,
                None => None,
            };
            let reservation = Reservation::new(store.clone(), declared.unwrap_or(0));
            Ok((keep_free, reservation, claim))
        })
        .await??;
        let limits = ReceiveLimits {
            max_size: cap,
            keep_free,
        };
        let claim = Arc::new(std::sync::Mutex::new(claim));
        let taker = claim.clone();
        let body = futures_util::StreamExt::map(body, move |item| match item {
            Ok(bytes) => {
                let mut claim = taker.lock().unwrap_or_else(|poison| poison.into_inner());
                match claim.as_mut().map(|claim| claim.take(bytes.len() as u64)) {
                    Some(Err(refusal)) => Err(refusal.to_string()),
                    _ => Ok(bytes),
                }
            }
            Err(error) => Err(error.to_string()),
        });
        let received = self.places[place].blobs.receive(body, limits).await;
        drop(reservation);
        let claim = claim
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .take();
        if let (
            Err(_),
            Some(super::QuotaClaim {
                refused: Some(refusal),
                ..
            }),
        ) = (&received, &claim)
        {
            return Err(StoreError::Quota(refusal.clone()));
        }
        Ok(Detached {
            received: received?,
            place,
            claim,
        })
    }

    /// Publishes received bytes: places them at their content address and runs `plan` over
    /// the images `select` picks, in one transaction; `plan` gets the data to attach to the
    /// image it inserts. Returns `None` if the id to insert was taken (nothing is kept).
    pub fn publish<E>(
        &self,
        detached: Detached,
        virtual_size: Option<u64>,
        select: impl Fn(&ImageRecord) -> bool,
        plan: impl FnOnce(Vec<ImageRecord>, ImageData) -> Result<Batch, E>,
    ) -> Result<Option<()>, E>
    where
        E: From<StoreError> + From<KvError>,
    {
        let Detached {
            received,
            place,
            mut claim,
        } = detached;
        let digest = received.digest;
        let blobs = &self.places[place].blobs;
        let store_id = self.places[place].spec.id.clone();
        let data = ImageData {
            digest,
            size: received.size,
            virtual_size,
            md5: received.md5,
            sha512: received.sha512,
            stores: vec![store_id.clone()],
            zeros: Some(Arc::new(crate::kv::Extents {
                size: received.size,
                zero: received.zeros.clone(),
            })),
        };
        let _guard = blobs.lock(digest);
        if !self.places[place].removes_at_once() {
            self.kv.note_intent(digest, &store_id).map_err(E::from)?;
        }
        blobs
            .place(received.temp, digest)
            .map_err(|error| E::from(StoreError::Blob(error)))?;
        let outcome = self
            .kv
            .change_images(select, |selected| plan(selected, data));
        if !matches!(outcome, Ok(Some(_))) {
            self.remove_copy_if_unreferenced(place, digest)
                .map_err(|error| match error {
                    StoreError::Kv(error) => E::from(error),
                    other => E::from(other),
                })?;
        }
        match outcome? {
            Some(unreferenced) => {
                if let Some(claim) = claim.as_mut() {
                    claim.commit();
                }
                self.release(&unreferenced);
                Ok(Some(()))
            }
            None => Ok(None),
        }
    }

    /// Changes several images in one transaction, without new bytes (the mirror moving its
    /// `latest` tag, or hiding images removed upstream).
    pub fn change_images<E: From<KvError>>(
        &self,
        select: impl Fn(&ImageRecord) -> bool,
        plan: impl FnOnce(Vec<ImageRecord>) -> Result<Batch, E>,
    ) -> Result<bool, E> {
        match self.kv.change_images(select, plan)? {
            Some(unreferenced) => {
                self.release(&unreferenced);
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Store {
    /// Every image (a scan).
    pub fn all_images(&self) -> Result<Vec<ImageRecord>, StoreError> {
        Ok(self.kv.all_images()?)
    }

    /// What vouched for a mirrored image (JSON).
    pub fn mirror_evidence(&self, id: crate::kv::ImageId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.kv.mirror_evidence(id)?)
    }

    /// The mirror's stored state of a source (JSON).
    pub fn mirror_state(&self, source: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.kv.mirror_state(source)?)
    }

    pub fn mirror_states(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        Ok(self.kv.mirror_states()?)
    }

    pub fn set_mirror_state(&self, source: &str, state: &[u8]) -> Result<(), StoreError> {
        Ok(self.kv.set_mirror_state(source, state)?)
    }
}
