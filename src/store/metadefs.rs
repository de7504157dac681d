//! The metadata definitions catalog in the store: each call is one redb transaction over the
//! metadef tables, handed to a closure (see `kv::metadefs`). Metadefs have no bytes, so the
//! store only passes these through; the catalog's rules live with the API (`http::metadefs`).

use super::Store;
use crate::kv::{KvError, ReadCatalog, WriteCatalog};

impl Store {
    /// Runs `read` over the catalog in one read transaction. Blocks.
    pub fn read_metadefs<T, E: From<KvError>>(
        &self,
        read: impl FnOnce(&ReadCatalog) -> Result<T, E>,
    ) -> Result<T, E> {
        self.kv.read_metadefs(read)
    }

    /// Runs `write` over the catalog in one write transaction, committed only if `write`
    /// succeeds. Blocks.
    pub fn write_metadefs<T, E: From<KvError>>(
        &self,
        write: impl FnOnce(&mut WriteCatalog<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        self.kv.write_metadefs(write)
    }
}
