//! The mirror: vendor cloud images appear by themselves, and only when the vendor's signed
//! digests vouch for the bytes.
//!
//! - `catalog` reads `/etc/ocellus/mirror.toml`, the sources to follow;
//! - `sums` reads vendor digest files, `openpgp` judges the signatures over them;
//! - `discover` finds a source's newest version (directory listings, version files);
//! - `sync` fetches, verifies and publishes a version in one transaction;
//! - `service` is the refresher and the status view, `bundle` verify/export/import, `glance`
//!   an upstream Glance, `edge` the pull-through cache; `ocellus mirror …` is `mirrorcmd.rs`.

pub mod bundle;
pub mod catalog;
pub mod discover;
pub mod edge;
pub mod glance;
pub mod openpgp;
pub mod service;
pub mod sums;
pub mod sync;
