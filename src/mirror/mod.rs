//! The mirror: vendor cloud images appear by themselves, and only when the vendor's signed
//! digests vouch for the bytes.
//!
//! - `catalog` reads `/etc/ocellus/mirror.toml`, the sources to follow;
//! - `sums` reads vendor digest files, `openpgp` judges the signatures over them;
//! - `discover` finds a source's newest version (directory listings, version files);
//! - `sync` fetches, verifies and publishes a version in one transaction;
//! - `cmd` is `ocellus mirror …`.

pub mod bundle;
pub mod catalog;
pub mod cmd;
pub mod discover;
pub mod edge;
pub mod glance;
pub mod openpgp;
pub mod service;
pub mod sums;
pub mod sync;
