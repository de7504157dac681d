//! ocellus: an OpenStack Glance-compatible image service in one binary.
//!
//! The crate is layered: `kv` (metadata in redb) and `blob` (bytes in a content-addressed
//! directory) know nothing of each other or of HTTP; `store` keeps the two consistent; `policy`
//! holds the access rules; `http` is the Glance API on top. `main.rs` only parses flags and
//! calls `open` and `http::serve`. See ARCHITECTURE.md.

pub mod blob;
pub mod config;
pub mod http;
pub mod kv;
pub mod policy;
pub mod store;

use std::sync::Arc;

pub use http::{AppState, serve};

/// Opens (and repairs, after a crash) the stores named by `config`. Blocks: call it before the
/// runtime serves requests, or from `spawn_blocking`.
pub fn open(config: config::Config) -> Result<AppState, store::StoreError> {
    let store = store::Store::open(&config.data_dir)?;
    Ok(AppState {
        store: Arc::new(store),
        config: Arc::new(config),
    })
}
