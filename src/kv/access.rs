//! Who may reach what: image members, API keys, projects and server secrets.
//!
//! Like image records, member and key records are stored as a version byte followed by the
//! postcard encoding of that version's struct. Every operation is one transaction, so the
//! `MEMBERS`/`MEMBERSHIPS` pair and the `API_KEYS`/`API_KEY_NAMES` pair never disagree.

use std::collections::HashMap;

use redb::{ReadableTable, ReadableTableMetadata};
use serde::{Deserialize, Serialize};

use super::records::ImageRecord;
use super::tables::{
    API_KEY_NAMES, API_KEYS, IMAGES, ImageId, MEMBERS, MEMBERSHIPS, PROJECTS, SECRETS,
};
use super::{Kv, KvError};

const MEMBER_RECORD_V1: u8 = 1;
/// Adds `can_share`, which the v1 API sets and reports.
const MEMBER_RECORD_V2: u8 = 2;
const KEY_RECORD_V1: u8 = 1;

/// Where a member stands on an image shared with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MemberStatus {
    Pending,
    Accepted,
    Rejected,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            MemberStatus::Pending => "pending",
            MemberStatus::Accepted => "accepted",
            MemberStatus::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<MemberStatus> {
        [
            MemberStatus::Pending,
            MemberStatus::Accepted,
            MemberStatus::Rejected,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }
}

/// A project an image is shared with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRecord {
    pub image_id: ImageId,
    /// The member's project id.
    pub member: String,
    pub status: MemberStatus,
    /// Unix microseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// The v1 API's flag: whether the member may share the image onward. Kept and reported;
    /// only the owner and admins manage members, whatever it says.
    pub can_share: bool,
}

#[derive(Serialize, Deserialize)]
struct MemberValueV1 {
    status: MemberStatus,
    created_at: i64,
    updated_at: i64,
}

#[derive(Serialize, Deserialize)]
struct MemberValueV2 {
    status: MemberStatus,
    created_at: i64,
    updated_at: i64,
    can_share: bool,
}

impl MemberRecord {
    fn key(image_id: ImageId, member: &str) -> Vec<u8> {
        let mut key = image_id.0.to_vec();
        key.extend_from_slice(member.as_bytes());
        key
    }

    /// The key range holding every member of an image: its id followed by any member name,
    /// and a member name, being UTF-8, never contains the byte 0xff.
    fn image_range(image_id: ImageId) -> (Vec<u8>, Vec<u8>) {
        let start = image_id.0.to_vec();
        let mut end = start.clone();
        end.push(0xff);
        (start, end)
    }

    fn reverse_key(image_id: ImageId, member: &str) -> Vec<u8> {
        let mut key = member.as_bytes().to_vec();
        key.push(0);
        key.extend_from_slice(&image_id.0);
        key
    }

    fn encode(&self) -> Vec<u8> {
        let value = MemberValueV2 {
            status: self.status,
            created_at: self.created_at,
            updated_at: self.updated_at,
            can_share: self.can_share,
        };
        let mut bytes = vec![MEMBER_RECORD_V2];
        bytes.extend(postcard::to_allocvec(&value).expect("member records always serialize"));
        bytes
    }

    /// Reads either version; a version 1 record (written before the v1 API) cannot share.
    fn decode(key: &[u8], bytes: &[u8]) -> Result<MemberRecord, KvError> {
        let corrupt = || KvError::Corrupt("bad member record".into());
        if key.len() < 16 {
            return Err(corrupt());
        }
        let value = match bytes.split_first() {
            Some((&MEMBER_RECORD_V1, body)) => {
                let old: MemberValueV1 = postcard::from_bytes(body).map_err(|_| corrupt())?;
                MemberValueV2 {
                    status: old.status,
                    created_at: old.created_at,
                    updated_at: old.updated_at,
                    can_share: false,
                }
            }
            Some((&MEMBER_RECORD_V2, body)) => postcard::from_bytes(body).map_err(|_| corrupt())?,
            _ => return Err(corrupt()),
        };
        let mut id = [0u8; 16];
        id.copy_from_slice(&key[..16]);
        Ok(MemberRecord {
            image_id: ImageId(id),
            member: String::from_utf8(key[16..].to_vec()).map_err(|_| corrupt())?,
            status: value.status,
            created_at: value.created_at,
            updated_at: value.updated_at,
            can_share: value.can_share,
        })
    }
}

/// The outcome of adding a member.
#[derive(Debug)]
pub enum AddMember {
    Added(MemberRecord),
    NoImage,
    Duplicate,
    /// The image already has this many members.
    OverQuota(usize),
}

/// A change to an image's members in the v1 API's terms.
#[derive(Clone, Debug)]
pub enum MembersEdit {
    /// Adds the member (pending), or sets `can_share` of an existing one when given.
    Upsert {
        member: String,
        can_share: Option<bool>,
    },
    /// The image's members become exactly these: new ones are added (pending), missing ones
    /// removed, kept ones keep their status and take the given `can_share`.
    Replace(Vec<(String, Option<bool>)>),
}

/// The outcome of a `MembersEdit`.
#[derive(Debug, PartialEq, Eq)]
pub enum EditMembers {
    Done,
    NoImage,
    /// The image would have more members than this.
    OverQuota(usize),
}

/// The role an API key grants within its project. Each role implies the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Reader,
    Member,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        [Role::Reader, Role::Member, Role::Admin]
            .into_iter()
            .find(|role| role.as_str() == text)
    }

    /// This role and every role it implies, strongest first.
    pub fn effective(self) -> Vec<Role> {
        [Role::Admin, Role::Member, Role::Reader]
            .into_iter()
            .filter(|role| *role <= self)
            .collect()
    }
}

/// A stored API key. The secret itself is never stored, only its argon2id hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRecord {
    /// 32 lower-case hex digits; also the Keystone user and application-credential id.
    pub id: String,
    /// Unique; the Keystone user name for the password method.
    pub name: String,
    pub project_id: String,
    pub project_name: String,
    pub role: Role,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `None` for a key that never expires.
    pub expires_at: Option<i64>,
    /// The argon2id hash of the secret, as a PHC string.
    pub secret_hash: String,
}

/// Version 1 of the stored key: what the bytes hold, apart from the in-memory `KeyRecord` so
/// that changing the latter cannot silently change the former.
#[derive(Serialize, Deserialize)]
struct KeyRecordV1 {
    id: String,
    name: String,
    project_id: String,
    project_name: String,
    role: Role,
    created_at: i64,
    expires_at: Option<i64>,
    secret_hash: String,
}

impl KeyRecord {
    fn encode(&self) -> Vec<u8> {
        let stored = KeyRecordV1 {
            id: self.id.clone(),
            name: self.name.clone(),
            project_id: self.project_id.clone(),
            project_name: self.project_name.clone(),
            role: self.role,
            created_at: self.created_at,
            expires_at: self.expires_at,
            secret_hash: self.secret_hash.clone(),
        };
        let mut bytes = vec![KEY_RECORD_V1];
        bytes.extend(postcard::to_allocvec(&stored).expect("key records always serialize"));
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<KeyRecord, KvError> {
        let stored: KeyRecordV1 = match bytes.split_first() {
            Some((&KEY_RECORD_V1, rest)) => postcard::from_bytes(rest)
                .map_err(|error| KvError::Corrupt(format!("bad key record: {error}")))?,
            _ => return Err(KvError::Corrupt("unknown key record version".into())),
        };
        Ok(KeyRecord {
            id: stored.id,
            name: stored.name,
            project_id: stored.project_id,
            project_name: stored.project_name,
            role: stored.role,
            created_at: stored.created_at,
            expires_at: stored.expires_at,
            secret_hash: stored.secret_hash,
        })
    }

    /// Whether the key has expired at `now` (unix seconds).
    pub fn expired(&self, now: i64) -> bool {
        self.expires_at.is_some_and(|expires| expires <= now)
    }
}

/// A key to create; the project id is looked up (or assigned) by name.
pub struct NewKey {
    pub id: String,
    pub name: String,
    pub project_name: String,
    pub role: Role,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub secret_hash: String,
}

/// The outcome of creating a key.
#[derive(Debug)]
pub enum CreateKey {
    Created(KeyRecord),
    NameTaken,
}

impl Kv {
    /// Every member of an image, in member order.
    pub fn members(&self, image_id: ImageId) -> Result<Vec<MemberRecord>, KvError> {
        let transaction = self.begin_read()?;
        let members = transaction.open_table(MEMBERS)?;
        let (start, end) = MemberRecord::image_range(image_id);
        let mut found = Vec::new();
        for entry in members.range::<&[u8]>(start.as_slice()..end.as_slice())? {
            let (key, value) = entry?;
            found.push(MemberRecord::decode(key.value(), value.value())?);
        }
        Ok(found)
    }

    /// One member of an image.
    pub fn member(&self, image_id: ImageId, member: &str) -> Result<Option<MemberRecord>, KvError> {
        let transaction = self.begin_read()?;
        let members = transaction.open_table(MEMBERS)?;
        let key = MemberRecord::key(image_id, member);
        match members.get(key.as_slice())? {
            Some(value) => Ok(Some(MemberRecord::decode(&key, value.value())?)),
            None => Ok(None),
        }
    }

    /// Adds a pending member if the image exists, `check` accepts it, the member is new and the
    /// image has fewer than `quota` members.
    pub fn add_member<E: From<KvError>>(
        &self,
        image_id: ImageId,
        member: &str,
        now: i64,
        quota: usize,
        check: impl FnOnce(&ImageRecord) -> Result<(), E>,
    ) -> Result<AddMember, E> {
        let transaction = self.begin_write()?;
        let record;
        {
            let images = transaction.open_table(IMAGES).map_err(KvError::from)?;
            let Some(bytes) = images.get(image_id).map_err(KvError::from)? else {
                return Ok(AddMember::NoImage);
            };
            check(&ImageRecord::decode(bytes.value()).map_err(KvError::from)?)?;
            let mut members = transaction.open_table(MEMBERS).map_err(KvError::from)?;
            let key = MemberRecord::key(image_id, member);
            if members
                .get(key.as_slice())
                .map_err(KvError::from)?
                .is_some()
            {
                return Ok(AddMember::Duplicate);
            }
            let (start, end) = MemberRecord::image_range(image_id);
            let count = members
                .range::<&[u8]>(start.as_slice()..end.as_slice())
                .map_err(KvError::from)?
                .count();
            if count >= quota {
                return Ok(AddMember::OverQuota(quota));
            }
            record = MemberRecord {
                image_id,
                member: member.to_owned(),
                status: MemberStatus::Pending,
                created_at: now,
                updated_at: now,
                can_share: false,
            };
            members
                .insert(key.as_slice(), record.encode().as_slice())
                .map_err(KvError::from)?;
            let mut memberships = transaction.open_table(MEMBERSHIPS).map_err(KvError::from)?;
            memberships
                .insert(MemberRecord::reverse_key(image_id, member).as_slice(), ())
                .map_err(KvError::from)?;
        }
        self.commit(transaction)?;
        Ok(AddMember::Added(record))
    }

    /// Applies a v1 members change in one transaction, after `prepare` has checked (and
    /// possibly changed: v1 sharing turns a private image into a shared one) the image record.
    pub fn edit_members<E: From<KvError>>(
        &self,
        image_id: ImageId,
        edit: &MembersEdit,
        now: i64,
        quota: usize,
        prepare: impl FnOnce(&mut ImageRecord) -> Result<(), E>,
    ) -> Result<EditMembers, E> {
        let transaction = self.begin_write()?;
        {
            let mut images = transaction.open_table(IMAGES).map_err(KvError::from)?;
            let Some(bytes) = images.get(image_id).map_err(KvError::from)? else {
                return Ok(EditMembers::NoImage);
            };
            let old = ImageRecord::decode(bytes.value()).map_err(KvError::from)?;
            drop(bytes);
            let mut new = old.clone();
            prepare(&mut new)?;
            if new != old {
                let mut indexes = super::Indexes::open(&transaction, &self.indexed)?;
                let mut data = super::DataTables::open(&transaction)?;
                super::write_record(&mut images, &mut indexes, &mut data, Some(&old), &new)?;
            }
            let mut members = transaction.open_table(MEMBERS).map_err(KvError::from)?;
            let mut memberships = transaction.open_table(MEMBERSHIPS).map_err(KvError::from)?;
            let (start, end) = MemberRecord::image_range(image_id);
            let mut current = HashMap::new();
            for entry in members
                .range::<&[u8]>(start.as_slice()..end.as_slice())
                .map_err(KvError::from)?
            {
                let (key, value) = entry.map_err(KvError::from)?;
                let record = MemberRecord::decode(key.value(), value.value())?;
                current.insert(record.member.clone(), record);
            }
            let wanted: Vec<(String, Option<bool>)> = match edit {
                MembersEdit::Upsert { member, can_share } => {
                    vec![(member.clone(), *can_share)]
                }
                MembersEdit::Replace(list) => {
                    for member in current.keys() {
                        if !list.iter().any(|(name, _)| name == member) {
                            members
                                .remove(MemberRecord::key(image_id, member).as_slice())
                                .map_err(KvError::from)?;
                            memberships
                                .remove(MemberRecord::reverse_key(image_id, member).as_slice())
                                .map_err(KvError::from)?;
                        }
                    }
                    current.retain(|member, _| list.iter().any(|(name, _)| name == member));
                    list.clone()
                }
            };
            let added = wanted
                .iter()
                .filter(|(member, _)| !current.contains_key(member))
                .count();
            if added > 0 && current.len() + added > quota {
                return Ok(EditMembers::OverQuota(quota));
            }
            for (member, can_share) in wanted {
                let record = match current.remove(&member) {
                    Some(mut kept) => {
                        let Some(can_share) = can_share.filter(|&flag| flag != kept.can_share)
                        else {
                            continue;
                        };
                        kept.can_share = can_share;
                        kept.updated_at = now;
                        kept
                    }
                    None => {
                        memberships
                            .insert(MemberRecord::reverse_key(image_id, &member).as_slice(), ())
                            .map_err(KvError::from)?;
                        MemberRecord {
                            image_id,
                            member: member.clone(),
                            status: MemberStatus::Pending,
                            created_at: now,
                            updated_at: now,
                            can_share: can_share.unwrap_or(false),
                        }
                    }
                };
                members
                    .insert(
                        MemberRecord::key(image_id, &member).as_slice(),
                        record.encode().as_slice(),
                    )
                    .map_err(KvError::from)?;
            }
        }
        self.commit(transaction)?;
        Ok(EditMembers::Done)
    }

    /// Sets a member's status; `None` if there is no such member.
    pub fn set_member_status(
        &self,
        image_id: ImageId,
        member: &str,
        status: MemberStatus,
        now: i64,
    ) -> Result<Option<MemberRecord>, KvError> {
        let transaction = self.begin_write()?;
        let record;
        {
            let mut members = transaction.open_table(MEMBERS)?;
            let key = MemberRecord::key(image_id, member);
            let mut current = match members.get(key.as_slice())? {
                Some(value) => MemberRecord::decode(&key, value.value())?,
                None => return Ok(None),
            };
            current.status = status;
            current.updated_at = now;
            members.insert(key.as_slice(), current.encode().as_slice())?;
            record = current;
        }
        self.commit(transaction)?;
        Ok(Some(record))
    }

    /// Removes a member; false if there was none.
    pub fn remove_member(&self, image_id: ImageId, member: &str) -> Result<bool, KvError> {
        let transaction = self.begin_write()?;
        {
            let mut members = transaction.open_table(MEMBERS)?;
            if members
                .remove(MemberRecord::key(image_id, member).as_slice())?
                .is_none()
            {
                return Ok(false);
            }
            let mut memberships = transaction.open_table(MEMBERSHIPS)?;
            memberships.remove(MemberRecord::reverse_key(image_id, member).as_slice())?;
        }
        self.commit(transaction)?;
        Ok(true)
    }

    /// The images shared with a project, with the project's status on each.
    pub fn memberships(&self, member: &str) -> Result<HashMap<ImageId, MemberStatus>, KvError> {
        let transaction = self.begin_read()?;
        let memberships = transaction.open_table(MEMBERSHIPS)?;
        let members = transaction.open_table(MEMBERS)?;
        let mut start = member.as_bytes().to_vec();
        start.push(0);
        let mut end = member.as_bytes().to_vec();
        end.push(1);
        let mut found = HashMap::new();
        for entry in memberships.range::<&[u8]>(start.as_slice()..end.as_slice())? {
            let (key, _) = entry?;
            let key = key.value();
            let mut id = [0u8; 16];
            id.copy_from_slice(&key[start.len()..]);
            let image_id = ImageId(id);
            let member_key = MemberRecord::key(image_id, member);
            if let Some(value) = members.get(member_key.as_slice())? {
                let record = MemberRecord::decode(&member_key, value.value())?;
                found.insert(image_id, record.status);
            }
        }
        Ok(found)
    }

    /// Creates an API key, assigning its project an id if the project is new.
    pub fn create_key(&self, new: NewKey) -> Result<CreateKey, KvError> {
        let transaction = self.begin_write()?;
        let record;
        {
            let mut names = transaction.open_table(API_KEY_NAMES)?;
            if names.get(new.name.as_str())?.is_some() {
                return Ok(CreateKey::NameTaken);
            }
            let mut projects = transaction.open_table(PROJECTS)?;
            let existing = projects
                .get(new.project_name.as_str())?
                .map(|id| id.value().to_owned());
            let project_id = match existing {
                Some(id) => id,
                None => {
                    let id = uuid::Uuid::new_v4().simple().to_string();
                    projects.insert(new.project_name.as_str(), id.as_str())?;
                    id
                }
            };
            record = KeyRecord {
                id: new.id,
                name: new.name,
                project_id,
                project_name: new.project_name,
                role: new.role,
                created_at: new.created_at,
                expires_at: new.expires_at,
                secret_hash: new.secret_hash,
            };
            names.insert(record.name.as_str(), record.id.as_str())?;
            let mut keys = transaction.open_table(API_KEYS)?;
            keys.insert(record.id.as_str(), record.encode().as_slice())?;
        }
        self.commit(transaction)?;
        Ok(CreateKey::Created(record))
    }

    /// One key by id.
    pub fn key(&self, id: &str) -> Result<Option<KeyRecord>, KvError> {
        let transaction = self.begin_read()?;
        let keys = transaction.open_table(API_KEYS)?;
        match keys.get(id)? {
            Some(bytes) => Ok(Some(KeyRecord::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// One key by its unique name.
    pub fn key_by_name(&self, name: &str) -> Result<Option<KeyRecord>, KvError> {
        let transaction = self.begin_read()?;
        let names = transaction.open_table(API_KEY_NAMES)?;
        let Some(id) = names.get(name)?.map(|id| id.value().to_owned()) else {
            return Ok(None);
        };
        let keys = transaction.open_table(API_KEYS)?;
        match keys.get(id.as_str())? {
            Some(bytes) => Ok(Some(KeyRecord::decode(bytes.value())?)),
            None => Err(KvError::Corrupt(format!("key name {name} names no key"))),
        }
    }

    /// Every key, ordered by id.
    pub fn keys(&self) -> Result<Vec<KeyRecord>, KvError> {
        let transaction = self.begin_read()?;
        let keys = transaction.open_table(API_KEYS)?;
        let mut found = Vec::new();
        for entry in keys.iter()? {
            found.push(KeyRecord::decode(entry?.1.value())?);
        }
        Ok(found)
    }

    /// Number of keys.
    pub fn key_count(&self) -> Result<u64, KvError> {
        let transaction = self.begin_read()?;
        Ok(transaction.open_table(API_KEYS)?.len()?)
    }

    /// Deletes a key; returns it, or `None` if there was none.
    pub fn revoke_key(&self, id: &str) -> Result<Option<KeyRecord>, KvError> {
        let transaction = self.begin_write()?;
        let record;
        {
            let mut keys = transaction.open_table(API_KEYS)?;
            let Some(bytes) = keys.remove(id)? else {
                return Ok(None);
            };
            record = KeyRecord::decode(bytes.value())?;
            drop(bytes);
            let mut names = transaction.open_table(API_KEY_NAMES)?;
            names.remove(record.name.as_str())?;
        }
        self.commit(transaction)?;
        Ok(Some(record))
    }

    /// A named server secret, generated by `generate` and stored the first time it is asked for.
    pub fn secret(
        &self,
        name: &str,
        generate: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, KvError> {
        {
            let transaction = self.begin_read()?;
            let secrets = transaction.open_table(SECRETS)?;
            if let Some(value) = secrets.get(name)? {
                return Ok(value.value().to_vec());
            }
        }
        let transaction = self.begin_write()?;
        let value;
        {
            let mut secrets = transaction.open_table(SECRETS)?;
            let existing = secrets.get(name)?.map(|value| value.value().to_vec());
            value = match existing {
                Some(existing) => existing,
                None => {
                    let fresh = generate();
                    secrets.insert(name, fresh.as_slice())?;
                    fresh
                }
            };
        }
        self.commit(transaction)?;
        Ok(value)
    }
}

/// Removes every member of a deleted image, inside the deleting transaction.
pub(super) fn remove_all_members(
    transaction: &redb::WriteTransaction,
    image_id: ImageId,
) -> Result<(), KvError> {
    let mut members = transaction.open_table(MEMBERS)?;
    let (start, end) = MemberRecord::image_range(image_id);
    let mut names = Vec::new();
    for entry in members.range::<&[u8]>(start.as_slice()..end.as_slice())? {
        let (key, _) = entry?;
        names.push(key.value().to_vec());
    }
    let mut memberships = transaction.open_table(MEMBERSHIPS)?;
    for key in names {
        members.remove(key.as_slice())?;
        let member = String::from_utf8_lossy(&key[16..]).into_owned();
        memberships.remove(MemberRecord::reverse_key(image_id, &member).as_slice())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_imply_the_weaker_ones() {
        assert_eq!(
            Role::Admin.effective(),
            vec![Role::Admin, Role::Member, Role::Reader]
        );
        assert_eq!(Role::Reader.effective(), vec![Role::Reader]);
    }

    #[test]
    fn a_version_1_database_is_upgraded_at_open() {
        use super::super::tables::META;

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        {
            // What the first release wrote: schema version 1, without the access tables.
            let database = redb::Database::create(&path).unwrap();
            let transaction = database.begin_write().unwrap();
            transaction
                .open_table(META)
                .unwrap()
                .insert("schema_version", 1)
                .unwrap();
            transaction.commit().unwrap();
        }
        let kv = Kv::open(&path).unwrap();
        assert_eq!(kv.key_count().unwrap(), 0);
        assert!(kv.memberships("beta").unwrap().is_empty());
        // Version 3's table too.
        assert!(kv.bad_blobs().unwrap().is_empty());
        let transaction = kv.begin_read().unwrap();
        let meta = transaction.open_table(META).unwrap();
        assert_eq!(meta.get("schema_version").unwrap().unwrap().value(), 11);
    }

    #[test]
    fn keys_and_members_keep_their_pairs_in_step() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let new_key = |name: &str| NewKey {
            id: format!("{name:0>32}"),
            name: name.into(),
            project_name: "alpha".into(),
            role: Role::Member,
            created_at: 0,
            expires_at: None,
            secret_hash: "hash".into(),
        };
        let CreateKey::Created(first) = kv.create_key(new_key("a")).unwrap() else {
            panic!("first key refused");
        };
        let CreateKey::Created(second) = kv.create_key(new_key("b")).unwrap() else {
            panic!("second key refused");
        };
        assert_eq!(first.project_id, second.project_id);
        assert!(matches!(
            kv.create_key(NewKey {
                id: "c".repeat(32),
                ..new_key("a")
            })
            .unwrap(),
            CreateKey::NameTaken
        ));
        assert_eq!(kv.revoke_key(&first.id).unwrap(), Some(first.clone()));
        assert_eq!(kv.key_by_name("a").unwrap(), None);
        assert_eq!(kv.key_count().unwrap(), 1);

        let image = ImageId([3; 16]);
        // No image, no member.
        assert!(matches!(
            kv.add_member::<KvError>(image, "beta", 1, 128, |_| Ok(()))
                .unwrap(),
            AddMember::NoImage
        ));
        assert!(
            kv.set_member_status(image, "beta", MemberStatus::Accepted, 2)
                .unwrap()
                .is_none()
        );
        assert!(!kv.remove_member(image, "beta").unwrap());
        assert!(kv.memberships("beta").unwrap().is_empty());
    }

    #[test]
    fn member_records_round_trip() {
        let record = MemberRecord {
            image_id: ImageId([7; 16]),
            member: "beta".into(),
            status: MemberStatus::Accepted,
            created_at: 1,
            updated_at: 2,
            can_share: true,
        };
        let key = MemberRecord::key(record.image_id, &record.member);
        assert_eq!(
            MemberRecord::decode(&key, &record.encode()).unwrap(),
            record
        );
    }

    /// Version 1 records (before the v1 API's `can_share`) still read, as members that cannot
    /// share; the bytes are what the earlier releases wrote.
    #[test]
    fn member_record_v1_golden_bytes_still_decode() {
        let record = MemberRecord {
            image_id: ImageId([7; 16]),
            member: "beta".into(),
            status: MemberStatus::Accepted,
            created_at: 1_700_000_000,
            updated_at: -1,
            can_share: false,
        };
        let version1: Vec<u8> = [
            &[1u8][..],                // version
            &[1],                      // status: accepted
            &[128, 196, 159, 213, 12], // created_at (zigzag varint)
            &[1],                      // updated_at -1 (zigzag)
        ]
        .concat();
        assert_eq!(
            MemberRecord::decode(&MemberRecord::key(record.image_id, "beta"), &version1).unwrap(),
            record
        );
    }

    /// Pins the current member encoding (the key holds image id and member; the value the
    /// rest).
    #[test]
    fn member_record_v2_golden_bytes() {
        let record = MemberRecord {
            image_id: ImageId([7; 16]),
            member: "beta".into(),
            status: MemberStatus::Pending,
            created_at: 1_700_000_000,
            updated_at: -1,
            can_share: true,
        };
        let expected: Vec<u8> = [
            &[2u8][..],                // version
            &[0],                      // status: pending
            &[128, 196, 159, 213, 12], // created_at (zigzag varint)
            &[1],                      // updated_at -1 (zigzag)
            &[1],                      // can_share
        ]
        .concat();
        assert_eq!(record.encode(), expected);
        assert_eq!(
            MemberRecord::decode(&MemberRecord::key(record.image_id, "beta"), &expected).unwrap(),
            record
        );
    }

    #[test]
    fn v1_member_edits() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("db.redb")).unwrap();
        let image = ImageId([9; 16]);
        let record = ImageRecord {
            visibility: crate::kv::Visibility::Private,
            ..ImageRecord::new(image, Some("alpha".into()), 0)
        };
        kv.insert_image(&record).unwrap();
        let share = |record: &mut ImageRecord| {
            record.visibility = crate::kv::Visibility::Shared;
            Ok::<(), KvError>(())
        };
        let upsert = |member: &str, can_share| MembersEdit::Upsert {
            member: member.into(),
            can_share,
        };
        assert_eq!(
            kv.edit_members(image, &upsert("beta", None), 1, 2, share)
                .unwrap(),
            EditMembers::Done
        );
        assert_eq!(
            kv.image(image).unwrap().unwrap().visibility,
            crate::kv::Visibility::Shared
        );
        kv.set_member_status(image, "beta", MemberStatus::Accepted, 2)
            .unwrap();
        kv.edit_members(image, &upsert("beta", Some(true)), 3, 2, share)
            .unwrap();
        let beta = kv.member(image, "beta").unwrap().unwrap();
        assert!(beta.can_share);
        assert_eq!(beta.status, MemberStatus::Accepted, "kept its status");
        let replace = MembersEdit::Replace(vec![
            ("beta".into(), None),
            ("gamma".into(), Some(false)),
            ("delta".into(), None),
        ]);
        assert_eq!(
            kv.edit_members(image, &replace, 4, 2, share).unwrap(),
            EditMembers::OverQuota(2)
        );
        assert_eq!(
            kv.members(image).unwrap().len(),
            1,
            "a refused edit changes nothing"
        );
        let replace = MembersEdit::Replace(vec![("gamma".into(), Some(true))]);
        kv.edit_members(image, &replace, 5, 2, share).unwrap();
        let members = kv.members(image).unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].member, "gamma");
        assert!(members[0].can_share && members[0].status == MemberStatus::Pending);
        assert!(kv.memberships("beta").unwrap().is_empty());
        assert_eq!(kv.memberships("gamma").unwrap().len(), 1);
        assert_eq!(
            kv.edit_members(ImageId([1; 16]), &replace, 6, 2, share)
                .unwrap(),
            EditMembers::NoImage
        );
    }

    /// Pins the key encoding; a change needs a new version and a migration.
    #[test]
    fn key_record_v1_golden_bytes() {
        let record = KeyRecord {
            id: "ab".into(),
            name: "ci".into(),
            project_id: "p1".into(),
            project_name: "alpha".into(),
            role: Role::Member,
            created_at: 3,
            expires_at: Some(-2),
            secret_hash: "$h".into(),
        };
        let expected: Vec<u8> = [
            &[1u8][..], // version
            &[2],
            b"ab", // id
            &[2],
            b"ci", // name
            &[2],
            b"p1", // project_id
            &[5],
            b"alpha", // project_name
            &[1],     // role: member
            &[6],     // created_at 3 (zigzag)
            &[1, 3],  // expires_at Some(-2) (zigzag)
            &[2],
            b"$h", // secret_hash
        ]
        .concat();
        assert_eq!(record.encode(), expected);
        assert_eq!(KeyRecord::decode(&expected).unwrap(), record);
        assert!(KeyRecord::decode(&[2, 0]).is_err());
    }
}
