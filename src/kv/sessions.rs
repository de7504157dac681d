//! Web UI sessions: who a browser is, and its CSRF token.
//!
//! A session is found by the BLAKE3 digest of its id, so the database never holds what the
//! cookie holds: a copy of the file cannot be turned into a logged-in browser.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use super::tables::UI_SESSIONS;
use super::{Kv, KvError};

/// A session unused this long is over.
pub const SESSION_IDLE_SECS: i64 = 30 * 60;
/// A session this old is over, however busy.
pub const SESSION_ABSOLUTE_SECS: i64 = 12 * 3600;

/// The first (and only) encoding of a stored session.
const UI_SESSION_V1: u8 = 1;

/// One browser's session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UiSession {
    /// The API key it logged in with; `None` for the anonymous session of the lab mode.
    pub key_id: Option<String>,
    /// The token every unsafe request must carry (64 hex digits).
    pub csrf: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds of the last request that used it (updated at most once a minute).
    pub last_seen: i64,
}

impl UiSession {
    /// Whether the session is past its idle or absolute limit at `now` (Unix seconds).
    pub fn expired(&self, now: i64) -> bool {
        now - self.last_seen > SESSION_IDLE_SECS || now - self.created_at > SESSION_ABSOLUTE_SECS
    }

    fn encode(&self) -> Vec<u8> {
        let mut bytes = vec![UI_SESSION_V1];
        bytes.extend(postcard::to_stdvec(self).expect("sessions always encode"));
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<UiSession, KvError> {
        match bytes.split_first() {
            Some((&UI_SESSION_V1, rest)) => postcard::from_bytes(rest)
                .map_err(|error| KvError::Corrupt(format!("ui session: {error}"))),
            _ => Err(KvError::Corrupt("unknown ui session record".into())),
        }
    }
}

impl Kv {
    pub fn insert_session(&self, digest: &[u8; 32], session: &UiSession) -> Result<(), KvError> {
        let transaction = self.begin_write()?;
        transaction
            .open_table(UI_SESSIONS)?
            .insert(digest.as_slice(), session.encode().as_slice())?;
        self.commit(transaction)
    }

    pub fn session(&self, digest: &[u8; 32]) -> Result<Option<UiSession>, KvError> {
        let transaction = self.begin_read()?;
        let table = transaction.open_table(UI_SESSIONS)?;
        table
            .get(digest.as_slice())?
            .map(|bytes| UiSession::decode(bytes.value()))
            .transpose()
    }

    /// Moves a session's `last_seen`; false if it is gone.
    pub fn touch_session(&self, digest: &[u8; 32], now: i64) -> Result<bool, KvError> {
        let transaction = self.begin_write()?;
        let found = {
            let mut table = transaction.open_table(UI_SESSIONS)?;
            let found = table
                .get(digest.as_slice())?
                .map(|bytes| UiSession::decode(bytes.value()))
                .transpose()?;
            if let Some(mut session) = found.clone() {
                session.last_seen = now;
                table.insert(digest.as_slice(), session.encode().as_slice())?;
            }
            found.is_some()
        };
        self.commit(transaction)?;
        Ok(found)
    }

    /// Ends a session; false if there was none.
    pub fn remove_session(&self, digest: &[u8; 32]) -> Result<bool, KvError> {
        let transaction = self.begin_write()?;
        let removed = transaction
            .open_table(UI_SESSIONS)?
            .remove(digest.as_slice())?
            .is_some();
        self.commit(transaction)?;
        Ok(removed)
    }

    /// Removes the sessions `ended` says are over (idle, too old, their key gone); returns how
    /// many went.
    pub fn remove_sessions(
        &self,
        mut ended: impl FnMut(&UiSession) -> bool,
    ) -> Result<usize, KvError> {
        let transaction = self.begin_write()?;
        let removed = {
            let mut table = transaction.open_table(UI_SESSIONS)?;
            let mut doomed = Vec::new();
            for entry in table.iter()? {
                let (digest, bytes) = entry?;
                // An unreadable row is over too: nothing could use it.
                if UiSession::decode(bytes.value()).map_or(true, |session| ended(&session)) {
                    doomed.push(digest.value().to_vec());
                }
            }
            for digest in &doomed {
                table.remove(digest.as_slice())?;
            }
            doomed.len()
        };
        self.commit(transaction)?;
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_stored_by_digest_touched_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let kv = Kv::open(&dir.path().join("kv.redb")).unwrap();
        let session = UiSession {
            key_id: Some("a".repeat(32)),
            csrf: "c".repeat(64),
            created_at: 100,
            last_seen: 100,
        };
        let digest = [7u8; 32];
        kv.insert_session(&digest, &session).unwrap();
        assert_eq!(kv.session(&digest).unwrap(), Some(session.clone()));
        assert!(kv.touch_session(&digest, 160).unwrap());
        assert_eq!(kv.session(&digest).unwrap().unwrap().last_seen, 160);
        assert!(!kv.touch_session(&[8u8; 32], 160).unwrap());
        kv.insert_session(
            &[9u8; 32],
            &UiSession {
                key_id: None,
                ..session
            },
        )
        .unwrap();
        assert_eq!(kv.remove_sessions(|s| s.key_id.is_none()).unwrap(), 1);
        assert!(kv.session(&[9u8; 32]).unwrap().is_none());
        assert!(kv.remove_session(&digest).unwrap());
        assert!(!kv.remove_session(&digest).unwrap());
    }

    #[test]
    fn the_stored_encoding_is_pinned() {
        let session = UiSession {
            key_id: Some("k".into()),
            csrf: "t".into(),
            created_at: 1,
            last_seen: 2,
        };
        assert_eq!(session.encode(), [1, 1, 1, b'k', 1, b't', 2, 4]);
        assert_eq!(UiSession::decode(&session.encode()).unwrap(), session);
        assert!(UiSession::decode(&[2, 0]).is_err());
    }
}
