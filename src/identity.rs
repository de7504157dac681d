//! API keys and the short-lived tokens minted from them: formats, hashing, verification.
//!
//! A key is `ock-<id>-<secret>`: a 32-hex-digit id (also the Keystone user and
//! application-credential id) and a 64-hex-digit secret from the OS random source. Only an
//! argon2id hash of the secret is stored. A token is `oct-<hex>`: a fixed layout naming the key,
//! issue and expiry times, audit ids and methods, followed by its BLAKE3 keyed MAC under a
//! server secret kept in redb. Tokens are stateless, yet bound to their key: each use looks the
//! key up, so revoking or expiring the key ends its tokens at once.
//!
//! Argon2 is deliberately slow, so `Identity` verifies a secret once and then remembers a keyed
//! BLAKE3 digest of it (compared in constant time). At most `ARGON2_SLOTS` verifications run at
//! once, and a client with too many recent failures gets 429 instead of any further hashing or
//! 401; credentials that verify cheaply (valid tokens, keys verified before) still pass. Secrets are
//! never logged: nothing here implements `Debug` for them or passes them to `tracing`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::kv::{CreateKey, KeyRecord, KvError, NewKey, Role};
use crate::store::Store;

/// Prefix of every API key.
pub const KEY_PREFIX: &str = "ock-";
/// Prefix of every token minted by the identity endpoint.
pub const TOKEN_PREFIX: &str = "oct-";
/// How long a token lives, as Keystone's default.
pub const TOKEN_LIFETIME_SECS: i64 = 3600;
/// Argon2 verifications allowed to run at once.
pub const ARGON2_SLOTS: usize = 2;
/// The window over which authentication failures are counted per client.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// The unit failures are counted per: an IPv4 address (IPv4-mapped IPv6 included), or an IPv6
/// /64, since one host commonly owns a whole /64.
fn failure_bucket(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                ))
            }
        },
    }
}

/// Argon2id with OWASP's parameters: 19 MiB of memory, 2 passes, 1 lane.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).expect("constant argon2 parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the OS random source is available");
    bytes
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(&text[at..at + 2], 16).ok())
        .collect()
}

/// Splits `ock-<id>-<secret>` into id and secret, checking their shapes.
pub fn parse_key(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('-')?;
    (is_key_id(id) && secret.len() == 64 && unhex(secret).is_some()).then_some((id, secret))
}

/// Whether `text` has the shape of a key id.
pub fn is_key_id(text: &str) -> bool {
    text.len() == 32 && unhex(text).is_some()
}

/// The whole key string.
pub fn format_key(id: &str, secret: &str) -> String {
    format!("{KEY_PREFIX}{id}-{secret}")
}

/// Hashes a secret for storage (argon2id, random salt, PHC string).
pub fn hash_secret(secret: &str) -> String {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes make a valid salt");
    argon2()
        .hash_password(secret.as_bytes(), &salt)
        .expect("argon2 hashing with valid parameters cannot fail")
        .to_string()
}

fn verify_secret(secret_hash: &str, secret: &str) -> bool {
    match PasswordHash::new(secret_hash) {
        Ok(parsed) => argon2().verify_password(secret.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// The current time in unix seconds, the unit of key and token times.
pub fn now_secs() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// What `ocellus key create` (offline, or through the admin endpoint) asks for.
#[derive(Clone, Debug)]
pub struct KeyRequest {
    pub project: String,
    pub role: Role,
    pub name: Option<String>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
}

/// A freshly created key: the only moment its secret exists outside the client.
pub struct CreatedKey {
    pub record: KeyRecord,
    pub secret: String,
}

impl CreatedKey {
    /// The whole key string.
    pub fn key(&self) -> String {
        format_key(&self.record.id, &self.secret)
    }

    /// `key_view` plus the secret and the whole key: what creating a key answers, once.
    pub fn view(&self, now: i64) -> serde_json::Value {
        let mut view = key_view(&self.record, now);
        view["secret"] = serde_json::Value::String(self.secret.clone());
        view["key"] = serde_json::Value::String(self.key());
        view
    }
}

/// Why a key could not be created.
#[derive(Debug)]
pub enum CreateKeyError {
    Invalid(String),
    NameTaken(String),
    Kv(KvError),
}

impl std::fmt::Display for CreateKeyError {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CreateKeyError::Invalid(message) => formatter.write_str(message),
            CreateKeyError::NameTaken(name) => write!(formatter, "a key named {name} exists"),
            CreateKeyError::Kv(error) => error.fmt(formatter),
        }
    }
}

impl std::error::Error for CreateKeyError {}

/// Names of projects and keys: what Keystone clients can carry in JSON and shells can quote.
fn valid_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'))
}

/// Creates a key: validates the request, hashes a fresh secret and stores the record. Blocks
/// for the argon2 hash (tens of milliseconds).
pub fn create_key(
    store: &Store,
    request: &KeyRequest,
    now: i64,
) -> Result<CreatedKey, CreateKeyError> {
    if !valid_name(&request.project) {
        return Err(CreateKeyError::Invalid(
            "project names are 1 to 64 letters, digits, '-', '_', '.' or '@'".into(),
        ));
    }
    if let Some(name) = &request.name
        && !valid_name(name)
    {
        return Err(CreateKeyError::Invalid(
            "key names are 1 to 64 letters, digits, '-', '_', '.' or '@'".into(),
        ));
    }
    if request.expires_at.is_some_and(|expires| expires <= now) {
        return Err(CreateKeyError::Invalid(
            "the expiry lies in the past".into(),
        ));
    }
    let id = hex(&random_bytes::<16>());
    let secret = hex(&random_bytes::<32>());
    let name = request
        .name
        .clone()
        .unwrap_or_else(|| format!("key-{}", &id[..8]));
    let new = NewKey {
        id,
        name: name.clone(),
        project_name: request.project.clone(),
        role: request.role,
        created_at: now,
        expires_at: request.expires_at,
        secret_hash: hash_secret(&secret),
    };
    match store.create_key(new).map_err(CreateKeyError::Kv)? {
        CreateKey::Created(record) => Ok(CreatedKey { record, secret }),
        CreateKey::NameTaken => Err(CreateKeyError::NameTaken(name)),
    }
}

/// A key as `ocellus key list` and the admin endpoint show it: everything but the hash.
pub fn key_view(key: &KeyRecord, now: i64) -> serde_json::Value {
    serde_json::json!({
        "id": key.id,
        "name": key.name,
        "project": key.project_name,
        "project_id": key.project_id,
        "role": key.role.as_str(),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "expired": key.expired(now),
    })
}

/// Parses an expiry: a duration from now (`90s`, `15m`, `12h`, `30d`, `8w`) or an RFC 3339
/// time. Returns unix seconds.
pub fn parse_expiry(text: &str, now: i64) -> Result<i64, String> {
    let text = text.trim();
    if let Ok(time) =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
    {
        return Ok(time.unix_timestamp());
    }
    let unit_at = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("expiry {text:?} needs a unit: s, m, h, d or w"))?;
    let (number, unit) = text.split_at(unit_at);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("expiry {text:?} is not a number with a unit"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(format!("expiry {text:?}: unknown unit {unit:?}")),
    };
    number
        .checked_mul(scale)
        .and_then(|seconds| seconds.checked_add(now))
        .filter(|_| number > 0)
        .ok_or_else(|| format!("expiry {text:?} is out of range"))
}

/// How a token was obtained, as Keystone lists it in `methods`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Password,
    ApplicationCredential,
    Token,
}

impl Method {
    const ALL: [Method; 3] = [
        Method::Token,
        Method::Password,
        Method::ApplicationCredential,
    ];

    fn bit(self) -> u8 {
        match self {
            Method::Password => 1,
            Method::ApplicationCredential => 2,
            Method::Token => 4,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Password => "password",
            Method::ApplicationCredential => "application_credential",
            Method::Token => "token",
        }
    }
}

/// What a token says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub key_id: String,
    /// Unix seconds.
    pub issued_at: i64,
    pub expires_at: i64,
    /// This token's audit id, then the one of the token it was re-issued from, if any.
    pub audit_ids: Vec<[u8; 16]>,
    pub methods: Vec<Method>,
}

const TOKEN_VERSION: u8 = 1;
const TOKEN_PAYLOAD_LEN: usize = 1 + 16 + 8 + 8 + 16 + 16 + 1;
const TOKEN_MAC_LEN: usize = 32;

impl TokenClaims {
    fn payload(&self) -> Option<[u8; TOKEN_PAYLOAD_LEN]> {
        let mut payload = [0u8; TOKEN_PAYLOAD_LEN];
        payload[0] = TOKEN_VERSION;
        payload[1..17].copy_from_slice(&unhex(&self.key_id)?);
        payload[17..25].copy_from_slice(&self.issued_at.to_be_bytes());
        payload[25..33].copy_from_slice(&self.expires_at.to_be_bytes());
        payload[33..49].copy_from_slice(self.audit_ids.first()?);
        if let Some(parent) = self.audit_ids.get(1) {
            payload[49..65].copy_from_slice(parent);
        }
        payload[65] = self
            .methods
            .iter()
            .fold(0, |bits, method| bits | method.bit());
        Some(payload)
    }

    fn from_payload(payload: &[u8]) -> Option<TokenClaims> {
        if payload.len() != TOKEN_PAYLOAD_LEN || payload[0] != TOKEN_VERSION {
            return None;
        }
        let int = |range: std::ops::Range<usize>| {
            i64::from_be_bytes(payload[range].try_into().expect("8 bytes"))
        };
        let mut audit_ids = vec![payload[33..49].try_into().expect("16 bytes")];
        let parent: [u8; 16] = payload[49..65].try_into().expect("16 bytes");
        if parent != [0; 16] {
            audit_ids.push(parent);
        }
        Some(TokenClaims {
            key_id: hex(&payload[1..17]),
            issued_at: int(17..25),
            expires_at: int(25..33),
            audit_ids,
            methods: Method::ALL
                .into_iter()
                .filter(|method| payload[65] & method.bit() != 0)
                .collect(),
        })
    }
}

/// Why a credential was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthError {
    /// Unknown, malformed, wrong, revoked or expired: all look the same to the caller.
    Invalid,
    /// Too many recent failures from this client.
    Throttled { retry_after: u64 },
    /// The metadata store failed.
    Internal(String),
}

impl From<KvError> for AuthError {
    fn from(error: KvError) -> AuthError {
        AuthError::Internal(error.to_string())
    }
}

/// An authenticated credential: the key behind it and, for a token, the token's claims.
#[derive(Clone, Debug)]
pub struct Authenticated {
    pub key: KeyRecord,
    pub token: Option<TokenClaims>,
}

struct CachedSecret {
    /// Identifies the stored hash this entry was verified against.
    hash_fingerprint: blake3::Hash,
    /// Keyed digest of the verified secret.
    secret_digest: blake3::Hash,
}

struct FailureCount {
    window_start: Instant,
    failures: u32,
}

/// What separates NBD capability MACs from token MACs under the same secret.
const CAPABILITY_DOMAIN: &[u8] = b"ocellus nbd capability v1\0";
/// Key id (16), image id (16), issued and expiry times (8 each).
const CAPABILITY_PAYLOAD_LEN: usize = 48;
/// 128 bits of MAC.
const CAPABILITY_MAC_LEN: usize = 16;

/// Verifies keys and tokens for the running server.
pub struct Identity {
    store: Arc<crate::store::Store>,
    token_key: [u8; 32],
    cache_key: [u8; 32],
    verified: Mutex<HashMap<String, CachedSecret>>,
    argon2_slots: Semaphore,
    failures: Mutex<HashMap<IpAddr, FailureCount>>,
    failure_limit: u32,
}

impl Identity {
    /// Loads (or creates, on first use) the token signing secret. Blocks on redb.
    pub fn new(store: Arc<crate::store::Store>, failure_limit: u32) -> Result<Identity, KvError> {
        let stored = store.secret("token_mac_key", || random_bytes::<32>().to_vec())?;
        let token_key: [u8; 32] = stored
            .as_slice()
            .try_into()
            .map_err(|_| KvError::Corrupt("token secret is not 32 bytes".into()))?;
        Ok(Identity {
            store,
            token_key,
            cache_key: random_bytes(),
            verified: Mutex::new(HashMap::new()),
            argon2_slots: Semaphore::new(ARGON2_SLOTS),
            failures: Mutex::new(HashMap::new()),
            failure_limit,
        })
    }

    /// How long a client over the failure limit must wait, if it is over.
    fn over_limit(&self, client: IpAddr) -> Option<u64> {
        if self.failure_limit == 0 {
            return None;
        }
        let failures = self.failures.lock().expect("failure map lock");
        let count = failures.get(&failure_bucket(client))?;
        let elapsed = count.window_start.elapsed();
        (elapsed < FAILURE_WINDOW && count.failures >= self.failure_limit)
            .then(|| (FAILURE_WINDOW - elapsed).as_secs().max(1))
    }

    /// Adds one failure to the client's count (or takes one back, for a provisional failure
    /// that turned out to be a success).
    fn count_failure(&self, client: IpAddr, failed: bool) {
        let mut failures = self.failures.lock().expect("failure map lock");
        if failures.len() > 10_000 {
            failures.retain(|_, count| count.window_start.elapsed() < FAILURE_WINDOW);
        }
        let count = failures
            .entry(failure_bucket(client))
            .or_insert(FailureCount {
                window_start: Instant::now(),
                failures: 0,
            });
        if count.window_start.elapsed() >= FAILURE_WINDOW {
            count.window_start = Instant::now();
            count.failures = 0;
        }
        count.failures = if failed {
            count.failures.saturating_add(1)
        } else {
            count.failures.saturating_sub(1)
        };
    }

    /// The answer to a failed credential: 429 for a client already over the limit, else a
    /// counted 401.
    fn refuse(&self, client: IpAddr) -> AuthError {
        if let Some(retry_after) = self.over_limit(client) {
            return AuthError::Throttled { retry_after };
        }
        self.count_failure(client, true);
        AuthError::Invalid
    }

    /// Checks a key's secret: from the cache when this key was verified before (cheap, never
    /// throttled when right), else with argon2 in the bounded pool. A client over the failure
    /// limit gets no argon2 at all; an attempt counts as a failure before it waits for a slot,
    /// so concurrent guesses cannot slip past the limit, and is taken back if it succeeds.
    async fn check_secret(
        &self,
        key: &KeyRecord,
        secret: &str,
        client: IpAddr,
    ) -> Result<(), AuthError> {
        let fingerprint = blake3::hash(key.secret_hash.as_bytes());
        let digest = blake3::keyed_hash(&self.cache_key, secret.as_bytes());
        let cached = {
            let verified = self.verified.lock().expect("verified-key cache lock");
            verified
                .get(&key.id)
                .filter(|cached| cached.hash_fingerprint == fingerprint)
                // blake3::Hash compares in constant time.
                .map(|cached| cached.secret_digest == digest)
        };
        match cached {
            Some(true) => return Ok(()),
            Some(false) => return Err(self.refuse(client)),
            None => {}
        }
        if let Some(retry_after) = self.over_limit(client) {
            return Err(AuthError::Throttled { retry_after });
        }
        self.count_failure(client, true);
        let _slot = self
            .argon2_slots
            .acquire()
            .await
            .map_err(|_| AuthError::Internal("argon2 pool closed".into()))?;
        let secret_hash = key.secret_hash.clone();
        let secret = secret.to_owned();
        let matches = tokio::task::spawn_blocking(move || verify_secret(&secret_hash, &secret))
            .await
            .map_err(|error| AuthError::Internal(error.to_string()))?;
        if !matches {
            return Err(AuthError::Invalid);
        }
        self.count_failure(client, false);
        self.verified
            .lock()
            .expect("verified-key cache lock")
            .insert(
                key.id.clone(),
                CachedSecret {
                    hash_fingerprint: fingerprint,
                    secret_digest: digest,
                },
            );
        Ok(())
    }

    /// Looks a key up by id and checks that it is live (present and not expired).
    async fn live_key(&self, id: &str) -> Result<Option<KeyRecord>, AuthError> {
        if !is_key_id(id) {
            return Ok(None);
        }
        let store = self.store.clone();
        let id = id.to_owned();
        let key = tokio::task::spawn_blocking(move || store.key(&id))
            .await
            .map_err(|error| AuthError::Internal(error.to_string()))??;
        Ok(key.filter(|key| !key.expired(now_secs())))
    }

    /// Authenticates a key by id and secret (the application-credential method, and
    /// `X-Auth-Token: ock-…`).
    pub async fn authenticate_secret(
        &self,
        key: Option<KeyRecord>,
        secret: &str,
        client: IpAddr,
    ) -> Result<KeyRecord, AuthError> {
        match key.filter(|key| !key.expired(now_secs())) {
            Some(key) => {
                self.check_secret(&key, secret, client).await?;
                Ok(key)
            }
            None => Err(self.refuse(client)),
        }
    }

    /// Authenticates the application-credential method: a key id and its secret. A full key
    /// string is accepted as the secret too.
    pub async fn authenticate_id(
        &self,
        id: &str,
        secret: &str,
        client: IpAddr,
    ) -> Result<KeyRecord, AuthError> {
        let secret = match parse_key(secret) {
            Some((key_id, inner)) if key_id == id => inner,
            _ => secret,
        };
        let key = self.live_key(id).await?;
        self.authenticate_secret(key, secret, client).await
    }

    /// Authenticates the password method: a key name and its secret.
    pub async fn authenticate_name(
        &self,
        name: &str,
        secret: &str,
        client: IpAddr,
    ) -> Result<KeyRecord, AuthError> {
        let store = self.store.clone();
        let owned = name.to_owned();
        let key = tokio::task::spawn_blocking(move || store.key_by_name(&owned))
            .await
            .map_err(|error| AuthError::Internal(error.to_string()))??;
        let secret = match (&key, parse_key(secret)) {
            (Some(key), Some((key_id, inner))) if key_id == key.id => inner,
            _ => secret,
        };
        self.authenticate_secret(key, secret, client).await
    }

    /// Authenticates what a client sent as `X-Auth-Token` or a bearer token: a key or a token.
    pub async fn authenticate(
        &self,
        credential: &str,
        client: IpAddr,
    ) -> Result<Authenticated, AuthError> {
        if let Some((id, secret)) = parse_key(credential) {
            let key = self.live_key(id).await?;
            let key = self.authenticate_secret(key, secret, client).await?;
            return Ok(Authenticated { key, token: None });
        }
        match self.verify_token(credential).await? {
            Some(authenticated) => Ok(authenticated),
            None => Err(self.refuse(client)),
        }
    }

    /// Checks a token's MAC, expiry and key; `None` if any fails.
    pub async fn verify_token(&self, token: &str) -> Result<Option<Authenticated>, AuthError> {
        let Some(bytes) = token.strip_prefix(TOKEN_PREFIX).and_then(unhex) else {
            return Ok(None);
        };
        if bytes.len() != TOKEN_PAYLOAD_LEN + TOKEN_MAC_LEN {
            return Ok(None);
        }
        let (payload, mac) = bytes.split_at(TOKEN_PAYLOAD_LEN);
        let mac: [u8; TOKEN_MAC_LEN] = mac.try_into().expect("split at the payload length");
        // blake3::Hash compares in constant time.
        if blake3::keyed_hash(&self.token_key, payload) != blake3::Hash::from_bytes(mac) {
            return Ok(None);
        }
        let Some(claims) = TokenClaims::from_payload(payload) else {
            return Ok(None);
        };
        if claims.expires_at <= now_secs() {
            return Ok(None);
        }
        let Some(key) = self.live_key(&claims.key_id).await? else {
            return Ok(None);
        };
        // A token minted before its key existed can only come from a reused id: refuse it.
        if claims.issued_at < key.created_at {
            return Ok(None);
        }
        Ok(Some(Authenticated {
            key,
            token: Some(claims),
        }))
    }

    /// Mints a token for a key. A re-issued token (the `token` method) keeps its parent's
    /// expiry and audit id, as Keystone does.
    pub fn issue_token(
        &self,
        key: &KeyRecord,
        method: Method,
        parent: Option<&TokenClaims>,
    ) -> (String, TokenClaims) {
        let now = now_secs();
        let mut audit_ids = vec![random_bytes::<16>()];
        let (methods, expires_at) = match parent {
            Some(parent) => {
                audit_ids.push(parent.audit_ids[0]);
                let mut methods = vec![Method::Token];
                methods.extend(parent.methods.iter().filter(|m| **m != Method::Token));
                (methods, parent.expires_at)
            }
            None => {
                let mut expires_at = now + TOKEN_LIFETIME_SECS;
                if let Some(key_expiry) = key.expires_at {
                    expires_at = expires_at.min(key_expiry);
                }
                (vec![method], expires_at)
            }
        };
        let claims = TokenClaims {
            key_id: key.id.clone(),
            issued_at: now,
            expires_at,
            audit_ids,
            methods,
        };
        let payload = claims
            .payload()
            .expect("key ids are 32 hex digits and a token has an audit id");
        let mac = blake3::keyed_hash(&self.token_key, &payload);
        let mut token = String::with_capacity(TOKEN_PREFIX.len() + 2 * payload.len() + 64);
        token.push_str(TOKEN_PREFIX);
        token.push_str(&hex(&payload));
        token.push_str(&mac.to_hex());
        (token, claims)
    }

    /// Mints an NBD capability: the key may read image `image` (its 16 bytes) over NBD until
    /// `expires_at` (Unix seconds, no later than the key's own expiry). The token is the key
    /// id, the image, the times and a MAC over them with the token secret and a domain of its
    /// own, so that it is never mistaken for an API token (nor the reverse).
    pub fn issue_capability(
        &self,
        key: &KeyRecord,
        image: [u8; 16],
        lifetime: i64,
    ) -> (String, i64) {
        let now = now_secs();
        let mut expires_at = now + lifetime.max(1);
        if let Some(key_expiry) = key.expires_at {
            expires_at = expires_at.min(key_expiry);
        }
        let mut payload = Vec::with_capacity(CAPABILITY_PAYLOAD_LEN);
        payload.extend(unhex(&key.id).unwrap_or_default());
        payload.extend_from_slice(&image);
        payload.extend_from_slice(&now.to_be_bytes());
        payload.extend_from_slice(&expires_at.to_be_bytes());
        let mac = self.capability_mac(&payload);
        let mut token = hex(&payload);
        token.push_str(&hex(&mac));
        (token, expires_at)
    }

    /// The key behind an NBD capability for `image`, if the token is genuine, unexpired, for
    /// this image, and its key still exists and has not expired (so revoking the key ends
    /// every capability minted from it).
    pub async fn check_capability(
        &self,
        token: &str,
        image: [u8; 16],
    ) -> Result<Option<KeyRecord>, AuthError> {
        let Some(bytes) = unhex(token) else {
            return Ok(None);
        };
        if bytes.len() != CAPABILITY_PAYLOAD_LEN + CAPABILITY_MAC_LEN {
            return Ok(None);
        }
        let (payload, mac) = bytes.split_at(CAPABILITY_PAYLOAD_LEN);
        let expected = self.capability_mac(payload);
        // Compared without branching on the bytes.
        if expected
            .iter()
            .zip(mac)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            != 0
        {
            return Ok(None);
        }
        let time = |at: usize| i64::from_be_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
        let (issued_at, expires_at) = (time(32), time(40));
        if payload[16..32] != image || expires_at <= now_secs() {
            return Ok(None);
        }
        let Some(key) = self.live_key(&hex(&payload[..16])).await? else {
            return Ok(None);
        };
        if issued_at < key.created_at {
            return Ok(None);
        }
        Ok(Some(key))
    }

    /// Whether a key still exists and has not expired.
    pub async fn key_is_live(&self, id: &str) -> Result<bool, AuthError> {
        Ok(self.live_key(id).await?.is_some())
    }

    fn capability_mac(&self, payload: &[u8]) -> [u8; CAPABILITY_MAC_LEN] {
        let mut hasher = blake3::Hasher::new_keyed(&self.token_key);
        hasher.update(CAPABILITY_DOMAIN);
        hasher.update(payload);
        let mut mac = [0; CAPABILITY_MAC_LEN];
        mac.copy_from_slice(&hasher.finalize().as_bytes()[..CAPABILITY_MAC_LEN]);
        mac
    }

    /// Forgets the cached verification of a key (after revocation).
    pub fn forget(&self, key_id: &str) {
        self.verified
            .lock()
            .expect("verified-key cache lock")
            .remove(key_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_only_in_their_own_shape() {
        let id = "0123456789abcdef0123456789abcdef";
        let secret = "ab".repeat(32);
        let key = format_key(id, &secret);
        assert_eq!(parse_key(&key), Some((id, secret.as_str())));
        assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        assert_eq!(parse_key(&key[..key.len() - 1]), None);
        assert_eq!(parse_key(&key.to_uppercase()), None);
        assert_eq!(parse_key(&key.replace("ock-", "oct-")), None);
    }

    #[test]
    fn hashed_secrets_verify_only_themselves() {
        let hash = hash_secret("right");
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(verify_secret(&hash, "right"));
        assert!(!verify_secret(&hash, "wrong"));
        assert!(!verify_secret("not a hash", "right"));
    }

    #[test]
    fn expiries_parse_durations_and_times() {
        assert_eq!(parse_expiry("30d", 1000), Ok(1000 + 30 * 86_400));
        assert_eq!(parse_expiry("90s", 0), Ok(90));
        assert_eq!(parse_expiry("2030-01-01T00:00:00Z", 0), Ok(1_893_456_000));
        assert!(parse_expiry("30", 0).is_err());
        assert!(parse_expiry("0d", 0).is_err());
        assert!(parse_expiry("5y", 0).is_err());
    }

    #[test]
    fn token_payloads_round_trip() {
        let claims = TokenClaims {
            key_id: "0123456789abcdef0123456789abcdef".into(),
            issued_at: 10,
            expires_at: 3610,
            audit_ids: vec![[1; 16], [2; 16]],
            methods: vec![Method::Token, Method::Password],
        };
        let payload = claims.payload().unwrap();
        assert_eq!(TokenClaims::from_payload(&payload), Some(claims));
    }
}
