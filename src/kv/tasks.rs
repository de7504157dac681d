//! Tasks (Glance's asynchronous operations: image imports) and per-project quotas.
//!
//! Task records are stored like image records: a version byte, then the postcard encoding of
//! that version's struct; `input` and `result` are the JSON documents Glance shows, kept as
//! text. `image_tasks_v1` indexes tasks by image in the same transaction as the record.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::{IMAGE_TASKS, ImageId, QUOTAS, TASKS, USAGE};
use super::{Kv, KvError};

const TASK_RECORD_V1: u8 = 1;
const QUOTA_RECORD_V1: u8 = 1;

/// What a task does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskKind {
    /// `POST /v2/tasks` with `type: import` (fetch `import_from` into a new image).
    Import,
    /// `POST /v2/images/{id}/import`.
    ApiImageImport,
}

impl TaskKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Import => "import",
            TaskKind::ApiImageImport => "api_image_import",
        }
    }
}

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    Pending,
    Processing,
    Success,
    Failure,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Processing => "processing",
            TaskStatus::Success => "success",
            TaskStatus::Failure => "failure",
        }
    }

    pub fn parse(text: &str) -> Option<TaskStatus> {
        [
            TaskStatus::Pending,
            TaskStatus::Processing,
            TaskStatus::Success,
            TaskStatus::Failure,
        ]
        .into_iter()
        .find(|status| status.as_str() == text)
    }

    pub fn finished(self) -> bool {
        matches!(self, TaskStatus::Success | TaskStatus::Failure)
    }
}

/// One task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRecord {
    /// A UUID, like image ids.
    pub id: ImageId,
    pub kind: TaskKind,
    pub status: TaskStatus,
    /// The project that asked.
    pub owner: String,
    pub user_id: Option<String>,
    pub image_id: Option<ImageId>,
    pub request_id: Option<String>,
    /// The task's input as JSON text.
    pub input: String,
    /// Its result as JSON text, once there is one.
    pub result: Option<String>,
    pub message: String,
    /// Unix microseconds.
    pub created_at: i64,
    pub updated_at: i64,
    /// Set when the task finishes: when it may be removed.
    pub expires_at: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct TaskRecordV1 {
    id: [u8; 16],
    kind: TaskKind,
    status: TaskStatus,
    owner: String,
    user_id: Option<String>,
    image_id: Option<[u8; 16]>,
    request_id: Option<String>,
    input: String,
    result: Option<String>,
    message: String,
    created_at: i64,
    updated_at: i64,
    expires_at: Option<i64>,
}

impl TaskRecord {
    fn encode(&self) -> Vec<u8> {
        let stored = TaskRecordV1 {
            id: self.id.0,
            kind: self.kind,
            status: self.status,
            owner: self.owner.clone(),
            user_id: self.user_id.clone(),
            image_id: self.image_id.map(|id| id.0),
            request_id: self.request_id.clone(),
            input: self.input.clone(),
            result: self.result.clone(),
            message: self.message.clone(),
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
        };
        let mut bytes = vec![TASK_RECORD_V1];
        bytes.extend(postcard::to_stdvec(&stored).expect("task records always encode"));
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<TaskRecord, KvError> {
        match bytes.split_first() {
            Some((&TASK_RECORD_V1, rest)) => {
                let stored: TaskRecordV1 = postcard::from_bytes(rest)
                    .map_err(|error| KvError::Corrupt(format!("task record: {error}")))?;
                Ok(TaskRecord {
                    id: ImageId(stored.id),
                    kind: stored.kind,
                    status: stored.status,
                    owner: stored.owner,
                    user_id: stored.user_id,
                    image_id: stored.image_id.map(ImageId),
                    request_id: stored.request_id,
                    input: stored.input,
                    result: stored.result,
                    message: stored.message,
                    created_at: stored.created_at,
                    updated_at: stored.updated_at,
                    expires_at: stored.expires_at,
                })
            }
            Some((version, _)) => Err(KvError::Corrupt(format!(
                "task record version {version} is unknown"
            ))),
            None => Err(KvError::Corrupt("empty task record".into())),
        }
    }
}

/// A project's quota overrides; `None` takes the configured default, a negative value means
/// unlimited (as in Glance).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    pub image_size_total: Option<i64>,
    pub image_stage_total: Option<i64>,
    pub image_count_total: Option<i64>,
    pub image_count_uploading: Option<i64>,
}

impl QuotaRecord {
    fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![QUOTA_RECORD_V1];
        bytes.extend(postcard::to_stdvec(self).expect("quota records always encode"));
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<QuotaRecord, KvError> {
        match bytes.split_first() {
            Some((&QUOTA_RECORD_V1, rest)) => postcard::from_bytes(rest)
                .map_err(|error| KvError::Corrupt(format!("quota record: {error}"))),
            _ => Err(KvError::Corrupt("unknown quota record".into())),
        }
    }
}

/// What a project holds, counted as Glance counts it for its quotas.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes of all the project's image data, staged data included.
    pub size_total: u64,
    /// Bytes of staged data (images `uploading` or `importing` with data).
    pub stage_total: u64,
    /// Images.
    pub count_total: u64,
    /// Images receiving data: `saving`, `uploading` or `importing`.
    pub count_uploading: u64,
}

impl Kv {
    /// Stores a new task and indexes it by its image.
    pub fn insert_task(&self, task: &TaskRecord) -> Result<(), KvError> {
        let transaction = self.begin_write()?;
        {
            let mut tasks = transaction.open_table(TASKS)?;
            tasks.insert(task.id, task.encode().as_slice())?;
            if let Some(image) = task.image_id {
                let mut index = transaction.open_table(IMAGE_TASKS)?;
                index.insert(image_task_key(image, task.id).as_slice(), ())?;
            }
        }
        self.commit(transaction)
    }

    /// Applies `change` to a task; `None` if there is no such task.
    pub fn update_task(
        &self,
        id: ImageId,
        change: impl FnOnce(&mut TaskRecord),
    ) -> Result<Option<TaskRecord>, KvError> {
        let transaction = self.begin_write()?;
        let updated = {
            let mut tasks = transaction.open_table(TASKS)?;
            let current = match tasks.get(id)? {
                Some(bytes) => TaskRecord::decode(bytes.value())?,
                None => return Ok(None),
            };
            let mut task = current;
            change(&mut task);
            tasks.insert(id, task.encode().as_slice())?;
            task
        };
        self.commit(transaction)?;
        Ok(Some(updated))
    }

    pub fn task(&self, id: ImageId) -> Result<Option<TaskRecord>, KvError> {
        let transaction = self.begin_read()?;
        let tasks = transaction.open_table(TASKS)?;
        match tasks.get(id)? {
            Some(bytes) => Ok(Some(TaskRecord::decode(bytes.value())?)),
            None => Ok(None),
        }
    }

    /// Every task (tasks expire, so there are few).
    pub fn tasks(&self) -> Result<Vec<TaskRecord>, KvError> {
        let transaction = self.begin_read()?;
        let tasks = transaction.open_table(TASKS)?;
        let mut found = Vec::new();
        for entry in tasks.iter()? {
            found.push(TaskRecord::decode(entry?.1.value())?);
        }
        Ok(found)
    }

    /// The tasks of one image.
    pub fn image_tasks(&self, image: ImageId) -> Result<Vec<TaskRecord>, KvError> {
        let transaction = self.begin_read()?;
        let index = transaction.open_table(IMAGE_TASKS)?;
        let tasks = transaction.open_table(TASKS)?;
        let start = image.0.to_vec();
        let mut end = start.clone();
        end.extend_from_slice(&[0xff; 17]);
        let mut found = Vec::new();
        for entry in index.range(start.as_slice()..end.as_slice())? {
            let (key, _) = entry?;
            let mut id = [0; 16];
            id.copy_from_slice(&key.value()[16..32]);
            if let Some(bytes) = tasks.get(ImageId(id))? {
                found.push(TaskRecord::decode(bytes.value())?);
            }
        }
        Ok(found)
    }

    /// Removes finished tasks whose `expires_at` is before `now`; returns how many.
    pub fn expire_tasks(&self, now: i64) -> Result<usize, KvError> {
        let expired: Vec<TaskRecord> = self
            .tasks()?
            .into_iter()
            .filter(|task| task.expires_at.is_some_and(|at| at < now))
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let transaction = self.begin_write()?;
        {
            let mut tasks = transaction.open_table(TASKS)?;
            let mut index = transaction.open_table(IMAGE_TASKS)?;
            for task in &expired {
                tasks.remove(task.id)?;
                if let Some(image) = task.image_id {
                    index.remove(image_task_key(image, task.id).as_slice())?;
                }
            }
        }
        self.commit(transaction)?;
        Ok(expired.len())
    }

    /// A project's quota overrides.
    pub fn quota(&self, project: &str) -> Result<QuotaRecord, KvError> {
        let transaction = self.begin_read()?;
        let quotas = transaction.open_table(QUOTAS)?;
        match quotas.get(project)? {
            Some(bytes) => QuotaRecord::decode(bytes.value()),
            None => Ok(QuotaRecord::default()),
        }
    }

    /// Every project with overrides.
    pub fn quotas(&self) -> Result<Vec<(String, QuotaRecord)>, KvError> {
        let transaction = self.begin_read()?;
        let quotas = transaction.open_table(QUOTAS)?;
        let mut found = Vec::new();
        for entry in quotas.iter()? {
            let (project, bytes) = entry?;
            found.push((
                project.value().to_owned(),
                QuotaRecord::decode(bytes.value())?,
            ));
        }
        Ok(found)
    }

    /// Sets a project's overrides (all `None` removes the row).
    pub fn set_quota(&self, project: &str, quota: &QuotaRecord) -> Result<(), KvError> {
        let transaction = self.begin_write()?;
        {
            let mut quotas = transaction.open_table(QUOTAS)?;
            if *quota == QuotaRecord::default() {
                quotas.remove(project)?;
            } else {
                quotas.insert(project, quota.encode().as_slice())?;
            }
        }
        self.commit(transaction)
    }

    /// What a project's images hold, from the running totals.
    pub fn usage(&self, project: &str) -> Result<Usage, KvError> {
        let transaction = self.begin_read()?;
        let totals = transaction.open_table(USAGE)?;
        super::usage::project(&totals, project)
    }
}

fn image_task_key(image: ImageId, task: ImageId) -> Vec<u8> {
    let mut key = image.0.to_vec();
    key.extend_from_slice(&task.0);
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> TaskRecord {
        TaskRecord {
            id: ImageId([9; 16]),
            kind: TaskKind::ApiImageImport,
            status: TaskStatus::Success,
            owner: "alpha".into(),
            user_id: Some("user".into()),
            image_id: Some(ImageId([8; 16])),
            request_id: Some("req-1".into()),
            input: "{\"a\":1}".into(),
            result: Some("{}".into()),
            message: "done".into(),
            created_at: 1,
            updated_at: 2,
            expires_at: Some(3),
        }
    }

    #[test]
    fn task_record_v1_golden_bytes() {
        let bytes = sample().encode();
        assert_eq!(TaskRecord::decode(&bytes).unwrap(), sample());
        // Pinned: a change to the stored shape must come with a new version byte.
        let hex: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(
            hex,
            "0109090909090909090909090909090909010205616c706861010475736572010808080808080808080808080808080801057265712d31077b2261223a317d01027b7d04646f6e6502040106"
        );
    }

    #[test]
    fn tasks_are_indexed_by_image_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let mut task = sample();
        kv.insert_task(&task).unwrap();
        task.id = ImageId([10; 16]);
        task.expires_at = Some(100);
        kv.insert_task(&task).unwrap();
        assert_eq!(kv.image_tasks(ImageId([8; 16])).unwrap().len(), 2);
        assert_eq!(kv.expire_tasks(50).unwrap(), 1);
        let left = kv.image_tasks(ImageId([8; 16])).unwrap();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].id, ImageId([10; 16]));
    }
}
