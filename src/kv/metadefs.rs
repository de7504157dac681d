//! The metadata definitions catalog (Glance's "metadefs"): namespaces and what they hold
//! (objects, properties, tags, resource-type associations), and the resource types.
//!
//! A namespace is stored under its name and carries a random 16-byte id; everything it holds
//! is keyed by that id followed by the item's name, so renaming a namespace rewrites one row
//! and a namespace's contents are one key range. Tags are keyed by their lower-cased name, as
//! Glance treats tag names case-insensitively. Every record carries `seq`, a counter kept in
//! `meta_v1` (`metadef_sequence`), which orders items by creation as Glance's row ids do.
//!
//! Property definitions (a property's JSON Schema fragment, an object's property map) are kept
//! as the JSON text the HTTP layer validated and normalized: like Glance's `json_schema`
//! column, they are documents, not fields this layer interprets.
//!
//! `Kv::read_metadefs` and `Kv::write_metadefs` hand a `Catalog` over one read or write
//! transaction to a closure; a closure that fails leaves nothing written. This module knows
//! nothing of HTTP, JSON Schema or policy.

use redb::{ReadOnlyTable, ReadableTable, Table};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::tables::{
    META, METADEF_ASSOCIATIONS, METADEF_NAMESPACES, METADEF_OBJECTS, METADEF_PROPERTIES,
    METADEF_RESOURCE_TYPES, METADEF_TAGS,
};
use super::{Kv, KvError};

/// The meta key of the sequence counter.
const SEQUENCE: &str = "metadef_sequence";

/// One namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceRecord {
    /// Random; keys the namespace's contents, and breaks ties in listings.
    pub id: [u8; 16],
    pub namespace: String,
    pub display_name: Option<String>,
    pub description: Option<String>,
    /// `public` (true) or `private`.
    pub public: bool,
    pub protected: bool,
    pub owner: Option<String>,
    /// Unix microseconds.
    pub created_at: i64,
    /// `None` until changed through the API (namespaces loaded from files have none, as in
    /// Glance).
    pub updated_at: Option<i64>,
    pub seq: u64,
}

/// An object: a named group of property definitions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRecord {
    pub name: String,
    pub description: Option<String>,
    pub required: Vec<String>,
    /// JSON text: an object mapping property names to their definitions.
    pub properties: String,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub seq: u64,
}

/// A property definition of a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropertyRecord {
    pub name: String,
    /// JSON text: the definition (type, title, limits...) without its name.
    pub definition: String,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub seq: u64,
}

/// A tag of a namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    pub name: String,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub seq: u64,
}

/// A namespace's association with a resource type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssociationRecord {
    pub resource_type: String,
    pub prefix: Option<String>,
    pub properties_target: Option<String>,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub seq: u64,
}

/// A resource type; created with its first association, or seeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceTypeRecord {
    pub name: String,
    /// Seeded and loaded types are protected (Glance's flag; no API deletes resource types).
    pub protected: bool,
    pub created_at: i64,
    pub updated_at: Option<i64>,
    pub seq: u64,
}

/// A record kept in one of the metadef tables: its version byte and sort order.
trait Stored: Serialize + DeserializeOwned {
    const VERSION: u8;
    const WHAT: &'static str;
    fn seq(&self) -> u64;

    fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![Self::VERSION];
        bytes.extend(postcard::to_allocvec(self).expect("metadef records always serialize"));
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<Self, KvError> {
        match bytes.split_first() {
            Some((version, rest)) if *version == Self::VERSION => postcard::from_bytes(rest)
                .map_err(|error| KvError::Corrupt(format!("{} record: {error}", Self::WHAT))),
            _ => Err(KvError::Corrupt(format!(
                "unknown {} record version",
                Self::WHAT
            ))),
        }
    }
}

macro_rules! stored {
    ($type:ty, $what:literal) => {
        impl Stored for $type {
            const VERSION: u8 = 1;
            const WHAT: &'static str = $what;
            fn seq(&self) -> u64 {
                self.seq
            }
        }
    };
}

stored!(NamespaceRecord, "metadef namespace");
stored!(ObjectRecord, "metadef object");
stored!(PropertyRecord, "metadef property");
stored!(TagRecord, "metadef tag");
stored!(AssociationRecord, "metadef resource-type association");
stored!(ResourceTypeRecord, "metadef resource type");

/// The key of an item of a namespace: the namespace's id, then the item's key text.
fn child_key(namespace: &NamespaceRecord, name: &str) -> Vec<u8> {
    let mut key = namespace.id.to_vec();
    key.extend_from_slice(name.as_bytes());
    key
}

/// The key range of a namespace's items: UTF-8 never holds the byte 0xff.
fn child_range(namespace: &NamespaceRecord) -> (Vec<u8>, Vec<u8>) {
    let start = namespace.id.to_vec();
    let mut end = start.clone();
    end.push(0xff);
    (start, end)
}

/// Tags are unique whatever their case.
fn tag_key(name: &str) -> String {
    name.to_lowercase()
}

/// The six metadef tables over one transaction: `N` for the tables keyed by name, `C` for
/// the tables of namespace contents.
pub struct Catalog<N, C> {
    namespaces: N,
    resource_types: N,
    objects: C,
    properties: C,
    tags: C,
    associations: C,
    /// The next sequence number (write transactions only).
    next_seq: u64,
}

type NameTable<'t> = Table<'t, &'static str, &'static [u8]>;
type ContentTable<'t> = Table<'t, &'static [u8], &'static [u8]>;

/// The catalog in a read transaction.
pub type ReadCatalog = Catalog<
    ReadOnlyTable<&'static str, &'static [u8]>,
    ReadOnlyTable<&'static [u8], &'static [u8]>,
>;

/// The catalog in a write transaction.
pub type WriteCatalog<'t> = Catalog<NameTable<'t>, ContentTable<'t>>;

impl<N, C> Catalog<N, C>
where
    N: ReadableTable<&'static str, &'static [u8]>,
    C: ReadableTable<&'static [u8], &'static [u8]>,
{
    pub fn namespace(&self, name: &str) -> Result<Option<NamespaceRecord>, KvError> {
        match self.namespaces.get(name)? {
            Some(bytes) => Ok(Some(NamespaceRecord::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every namespace, in creation order.
    pub fn namespaces(&self) -> Result<Vec<NamespaceRecord>, KvError> {
        let mut found = Vec::new();
        for entry in self.namespaces.iter()? {
            found.push(NamespaceRecord::decode(entry?.1.value())?);
        }
        found.sort_by_key(|record| record.seq);
        Ok(found)
    }

    /// Every resource type, in creation order.
    pub fn resource_types(&self) -> Result<Vec<ResourceTypeRecord>, KvError> {
        let mut found = Vec::new();
        for entry in self.resource_types.iter()? {
            found.push(ResourceTypeRecord::decode(entry?.1.value())?);
        }
        found.sort_by_key(|record| record.seq);
        Ok(found)
    }

    pub fn resource_type(&self, name: &str) -> Result<Option<ResourceTypeRecord>, KvError> {
        match self.resource_types.get(name)? {
            Some(bytes) => Ok(Some(ResourceTypeRecord::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    pub fn objects(&self, namespace: &NamespaceRecord) -> Result<Vec<ObjectRecord>, KvError> {
        contents(&self.objects, namespace)
    }

    pub fn object(
        &self,
        namespace: &NamespaceRecord,
        name: &str,
    ) -> Result<Option<ObjectRecord>, KvError> {
        content(&self.objects, namespace, name)
    }

    pub fn properties(&self, namespace: &NamespaceRecord) -> Result<Vec<PropertyRecord>, KvError> {
        contents(&self.properties, namespace)
    }

    pub fn property(
        &self,
        namespace: &NamespaceRecord,
        name: &str,
    ) -> Result<Option<PropertyRecord>, KvError> {
        content(&self.properties, namespace, name)
    }

    pub fn tags(&self, namespace: &NamespaceRecord) -> Result<Vec<TagRecord>, KvError> {
        contents(&self.tags, namespace)
    }

    /// A tag by name, whatever its case.
    pub fn tag(
        &self,
        namespace: &NamespaceRecord,
        name: &str,
    ) -> Result<Option<TagRecord>, KvError> {
        content(&self.tags, namespace, &tag_key(name))
    }

    pub fn associations(
        &self,
        namespace: &NamespaceRecord,
    ) -> Result<Vec<AssociationRecord>, KvError> {
        contents(&self.associations, namespace)
    }

    pub fn association(
        &self,
        namespace: &NamespaceRecord,
        resource_type: &str,
    ) -> Result<Option<AssociationRecord>, KvError> {
        content(&self.associations, namespace, resource_type)
    }
}

fn contents<T: Stored, C: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &C,
    namespace: &NamespaceRecord,
) -> Result<Vec<T>, KvError> {
    let (start, end) = child_range(namespace);
    let mut found = Vec::new();
    for entry in table.range(start.as_slice()..end.as_slice())? {
        found.push(T::decode(entry?.1.value())?);
    }
    found.sort_by_key(Stored::seq);
    Ok(found)
}

fn content<T: Stored, C: ReadableTable<&'static [u8], &'static [u8]>>(
    table: &C,
    namespace: &NamespaceRecord,
    name: &str,
) -> Result<Option<T>, KvError> {
    match table.get(child_key(namespace, name).as_slice())? {
        Some(bytes) => Ok(Some(T::decode(bytes.value())?)),
        None => Ok(None),
    }
}

/// Removes every item of a namespace from one table.
fn clear(table: &mut ContentTable<'_>, namespace: &NamespaceRecord) -> Result<(), KvError> {
    let (start, end) = child_range(namespace);
    table.retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
    Ok(())
}

impl WriteCatalog<'_> {
    /// A fresh sequence number, for a new record.
    pub fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Writes a namespace; `previous_name` is its name before a rename.
    pub fn put_namespace(
        &mut self,
        record: &NamespaceRecord,
        previous_name: Option<&str>,
    ) -> Result<(), KvError> {
        if let Some(previous) = previous_name
            && previous != record.namespace
        {
            self.namespaces.remove(previous)?;
        }
        self.namespaces
            .insert(record.namespace.as_str(), record.encode().as_slice())?;
        Ok(())
    }

    /// Removes a namespace and everything it holds.
    pub fn remove_namespace(&mut self, record: &NamespaceRecord) -> Result<(), KvError> {
        clear(&mut self.objects, record)?;
        clear(&mut self.properties, record)?;
        clear(&mut self.tags, record)?;
        clear(&mut self.associations, record)?;
        self.namespaces.remove(record.namespace.as_str())?;
        Ok(())
    }

    pub fn put_resource_type(&mut self, record: &ResourceTypeRecord) -> Result<(), KvError> {
        self.resource_types
            .insert(record.name.as_str(), record.encode().as_slice())?;
        Ok(())
    }

    /// Writes an object; `previous_name` is its name before a rename.
    pub fn put_object(
        &mut self,
        namespace: &NamespaceRecord,
        record: &ObjectRecord,
        previous_name: Option<&str>,
    ) -> Result<(), KvError> {
        put(
            &mut self.objects,
            namespace,
            &record.name,
            previous_name,
            record,
        )
    }

    pub fn remove_object(
        &mut self,
        namespace: &NamespaceRecord,
        name: &str,
    ) -> Result<bool, KvError> {
        remove(&mut self.objects, namespace, name)
    }

    pub fn clear_objects(&mut self, namespace: &NamespaceRecord) -> Result<(), KvError> {
        clear(&mut self.objects, namespace)
    }

    pub fn put_property(
        &mut self,
        namespace: &NamespaceRecord,
        record: &PropertyRecord,
        previous_name: Option<&str>,
    ) -> Result<(), KvError> {
        put(
            &mut self.properties,
            namespace,
            &record.name,
            previous_name,
            record,
        )
    }

    pub fn remove_property(
        &mut self,
        namespace: &NamespaceRecord,
        name: &str,
    ) -> Result<bool, KvError> {
        remove(&mut self.properties, namespace, name)
    }

    pub fn clear_properties(&mut self, namespace: &NamespaceRecord) -> Result<(), KvError> {
        clear(&mut self.properties, namespace)
    }

    pub fn put_tag(
        &mut self,
        namespace: &NamespaceRecord,
        record: &TagRecord,
        previous_name: Option<&str>,
    ) -> Result<(), KvError> {
        let previous = previous_name.map(tag_key);
        put(
            &mut self.tags,
            namespace,
            &tag_key(&record.name),
            previous.as_deref(),
            record,
        )
    }

    pub fn remove_tag(&mut self, namespace: &NamespaceRecord, name: &str) -> Result<bool, KvError> {
        remove(&mut self.tags, namespace, &tag_key(name))
    }

    pub fn clear_tags(&mut self, namespace: &NamespaceRecord) -> Result<(), KvError> {
        clear(&mut self.tags, namespace)
    }

    pub fn put_association(
        &mut self,
        namespace: &NamespaceRecord,
        record: &AssociationRecord,
    ) -> Result<(), KvError> {
        put(
            &mut self.associations,
            namespace,
            &record.resource_type,
            None,
            record,
        )
    }

    pub fn remove_association(
        &mut self,
        namespace: &NamespaceRecord,
        resource_type: &str,
    ) -> Result<bool, KvError> {
        remove(&mut self.associations, namespace, resource_type)
    }

    pub fn clear_associations(&mut self, namespace: &NamespaceRecord) -> Result<(), KvError> {
        clear(&mut self.associations, namespace)
    }
}

fn put<T: Stored>(
    table: &mut ContentTable<'_>,
    namespace: &NamespaceRecord,
    key_name: &str,
    previous_key_name: Option<&str>,
    record: &T,
) -> Result<(), KvError> {
    if let Some(previous) = previous_key_name
        && previous != key_name
    {
        table.remove(child_key(namespace, previous).as_slice())?;
    }
    table.insert(
        child_key(namespace, key_name).as_slice(),
        record.encode().as_slice(),
    )?;
    Ok(())
}

fn remove(
    table: &mut ContentTable<'_>,
    namespace: &NamespaceRecord,
    key_name: &str,
) -> Result<bool, KvError> {
    Ok(table
        .remove(child_key(namespace, key_name).as_slice())?
        .is_some())
}

fn open<K: redb::Key + 'static>(
    transaction: &redb::ReadTransaction,
    definition: redb::TableDefinition<K, &'static [u8]>,
) -> Result<ReadOnlyTable<K, &'static [u8]>, KvError> {
    Ok(transaction.open_table(definition)?)
}

impl Kv {
    /// Runs `read` over the catalog in one read transaction.
    pub fn read_metadefs<T, E: From<KvError>>(
        &self,
        read: impl FnOnce(&ReadCatalog) -> Result<T, E>,
    ) -> Result<T, E> {
        let transaction = self.begin_read()?;
        let catalog = Catalog {
            namespaces: open(&transaction, METADEF_NAMESPACES)?,
            resource_types: open(&transaction, METADEF_RESOURCE_TYPES)?,
            objects: open(&transaction, METADEF_OBJECTS)?,
            properties: open(&transaction, METADEF_PROPERTIES)?,
            tags: open(&transaction, METADEF_TAGS)?,
            associations: open(&transaction, METADEF_ASSOCIATIONS)?,
            next_seq: 0,
        };
        read(&catalog)
    }

    /// Runs `write` over the catalog in one write transaction, committed only if it succeeds.
    pub fn write_metadefs<T, E: From<KvError>>(
        &self,
        write: impl FnOnce(&mut WriteCatalog<'_>) -> Result<T, E>,
    ) -> Result<T, E> {
        let transaction = self.begin_write()?;
        let result = {
            let mut meta = transaction.open_table(META).map_err(KvError::from)?;
            let next_seq = meta
                .get(SEQUENCE)
                .map_err(KvError::from)?
                .map_or(0, |value| value.value());
            let mut catalog = Catalog {
                namespaces: transaction
                    .open_table(METADEF_NAMESPACES)
                    .map_err(KvError::from)?,
                resource_types: transaction
                    .open_table(METADEF_RESOURCE_TYPES)
                    .map_err(KvError::from)?,
                objects: transaction
                    .open_table(METADEF_OBJECTS)
                    .map_err(KvError::from)?,
                properties: transaction
                    .open_table(METADEF_PROPERTIES)
                    .map_err(KvError::from)?,
                tags: transaction
                    .open_table(METADEF_TAGS)
                    .map_err(KvError::from)?,
                associations: transaction
                    .open_table(METADEF_ASSOCIATIONS)
                    .map_err(KvError::from)?,
                next_seq,
            };
            let result = write(&mut catalog)?;
            if catalog.next_seq != next_seq {
                meta.insert(SEQUENCE, catalog.next_seq)
                    .map_err(KvError::from)?;
            }
            result
        };
        self.commit(transaction)?;
        Ok(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn namespace() -> NamespaceRecord {
        NamespaceRecord {
            id: [7; 16],
            namespace: "OS::Test".into(),
            display_name: Some("Test".into()),
            description: None,
            public: true,
            protected: false,
            owner: Some("admin".into()),
            created_at: 1,
            updated_at: None,
            seq: 2,
        }
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    #[test]
    fn metadef_records_v1_golden_bytes() {
        // Pinned: a change to a stored shape must come with a new version byte.
        let record = namespace();
        assert_eq!(NamespaceRecord::decode(&record.encode()).unwrap(), record);
        assert_eq!(
            hex(&record.encode()),
            "0107070707070707070707070707070707084f533a3a54657374010454657374000100010561646d696e020002"
        );
        let tag = TagRecord {
            name: "Beta".into(),
            created_at: 3,
            updated_at: Some(4),
            seq: 5,
        };
        assert_eq!(TagRecord::decode(&tag.encode()).unwrap(), tag);
        assert_eq!(hex(&tag.encode()), "01044265746106010805");
        assert!(ObjectRecord::decode(&tag.encode()).is_err());
    }

    #[test]
    fn deleting_a_namespace_takes_its_contents_and_renames_keep_them() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let mut record = namespace();
        let other = NamespaceRecord {
            id: [8; 16],
            namespace: "OS::Other".into(),
            ..namespace()
        };
        kv.write_metadefs(|catalog| {
            record.seq = catalog.next_seq();
            catalog.put_namespace(&record, None)?;
            catalog.put_namespace(&other, None)?;
            for (target, name) in [(&record, "Alpha"), (&other, "Alpha")] {
                let seq = catalog.next_seq();
                catalog.put_tag(
                    target,
                    &TagRecord {
                        name: name.into(),
                        created_at: 0,
                        updated_at: None,
                        seq,
                    },
                    None,
                )?;
            }
            Ok::<(), KvError>(())
        })
        .unwrap();
        // A rename moves the namespace's row only; its tags follow its id.
        let renamed = kv
            .write_metadefs(|catalog| {
                let mut renamed = catalog.namespace("OS::Test")?.unwrap();
                renamed.namespace = "OS::Renamed".into();
                catalog.put_namespace(&renamed, Some("OS::Test"))?;
                Ok::<_, KvError>(renamed)
            })
            .unwrap();
        kv.read_metadefs(|catalog| {
            assert!(catalog.namespace("OS::Test")?.is_none());
            assert_eq!(catalog.tag(&renamed, "ALPHA")?.unwrap().name, "Alpha");
            Ok::<(), KvError>(())
        })
        .unwrap();
        kv.write_metadefs(|catalog| catalog.remove_namespace(&renamed))
            .unwrap();
        kv.read_metadefs(|catalog| {
            assert!(catalog.tags(&renamed)?.is_empty());
            assert_eq!(catalog.tags(&other)?.len(), 1);
            assert_eq!(catalog.namespaces()?.len(), 1);
            Ok::<(), KvError>(())
        })
        .unwrap();
        // A failing closure writes nothing.
        let failed: Result<(), KvError> = kv.write_metadefs(|catalog| {
            catalog.remove_namespace(&other)?;
            Err(KvError::Corrupt("stop".into()))
        });
        assert!(failed.is_err());
        kv.read_metadefs(|catalog| {
            assert_eq!(catalog.namespaces()?.len(), 1);
            Ok::<(), KvError>(())
        })
        .unwrap();
    }
}
