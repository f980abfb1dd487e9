//! Durable state: trust policies, replay records, id pins, the audit log,
//! issued tokens and signing keys, behind one [`Storage`] trait.
//!
//! The server holds an `Arc<dyn Storage>`; SQLite ([`sqlite::SqliteStore`])
//! is the embedded default, PostgreSQL ([`postgres::PgStore`]) serves
//! clusters of replicas sharing one database. Every backend must pass the
//! shared suite in `suite.rs`.
//!
//! Times are seconds since the Unix epoch (`i64`), passed in by the caller
//! like everywhere else in writ, so tests control the clock.

pub(crate) mod batch;
pub mod kek;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretSlice;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Opens the backend a storage URL names: `sqlite://FILE`,
/// `sqlite::memory:` or `postgres://…` (also `postgresql://`).
pub async fn open(url: &str, options: &StorageOptions) -> Result<Arc<dyn Storage>, StorageError> {
    if url.starts_with("sqlite:") {
        let store = sqlite::SqliteStore::open(url, &sqlite::SqliteConfig::default()).await?;
        return Ok(Arc::new(store));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let key_encryption_key = options.key_encryption_key.clone().ok_or_else(|| {
            StorageError::other("a postgres storage URL needs [storage] key_encryption_key_file: signing keys are stored encrypted under it")
        })?;
        let config = postgres::PgConfig {
            max_connections: options.max_connections,
            acquire_timeout: options.acquire_timeout,
            key_encryption_key,
        };
        return Ok(Arc::new(postgres::PgStore::open(url, &config).await?));
    }
    Err(StorageError::other(format!(
        "storage URL scheme not supported: {}; use sqlite://FILE or postgres://USER@HOST/DB",
        url.split(':').next().unwrap_or_default()
    )))
}

/// How to open storage, beside its URL: the rest of `[storage]` in the
/// config. The pool settings and the key-encryption key apply to
/// PostgreSQL; SQLite has one file and one writer.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// Most database connections per replica.
    pub max_connections: u32,
    /// How long a request waits for a connection before failing as
    /// unavailable (503 with `Retry-After`).
    pub acquire_timeout: Duration,
    /// Seals signing keys at rest in a shared database; required with
    /// PostgreSQL.
    pub key_encryption_key: Option<kek::KeyEncryptionKey>,
}

/// Default [`StorageOptions::max_connections`]: enough for a replica on a
/// few cores (an exchange holds a connection for about one round trip).
pub const DEFAULT_MAX_CONNECTIONS: u32 = 16;

/// Default [`StorageOptions::acquire_timeout`]: short, because while the
/// database is down every request that needs it waits this long before its
/// 503.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            key_encryption_key: None,
        }
    }
}

/// A change to shared state that another process (replica) made, which
/// this process must pick up in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new version of this org's policy was stored.
    Policy(String),
    /// A signing key was added (a rotation started).
    SigningKeys,
    /// Changes may have been missed (the notification connection was lost
    /// and re-established, or a receiver fell behind): reload everything.
    Resync,
}

/// How long a consumed subject-token `jti` is remembered past the token's
/// `exp`, in seconds.
///
/// Security invariant: a replay record must outlive every moment at which the
/// token could still pass verification, i.e. `exp + leeway`, where leeway is
/// the clock-skew allowance of OIDC verification (at most 60 s, DESIGN.md
/// "The exchange" step 3). Forgetting a `jti` earlier re-opens a window in
/// which a stolen, already-exchanged token (a leaked CI log, a malicious
/// later step in the same job) can be exchanged a second time. This must be
/// at least the verifier's leeway; keep the two in step.
pub const JTI_RETENTION_LEEWAY_SECS: i64 = 60;

/// A storage failure, classified by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The subject token's `jti` was already consumed: a replay. Nothing of
    /// the exchange was written.
    #[error("subject token was already used")]
    Replay,
    /// A name is pinned to a different immutable id than the one presented
    /// (for example a repository deleted and re-created under the same
    /// name). Nothing of the exchange was written.
    #[error("{kind} {name:?} is pinned to id {pinned_id:?}, token presents {presented_id:?}")]
    PinConflict {
        /// What the name denotes.
        kind: PinKind,
        /// The (lowercased) name.
        name: String,
        /// The id recorded on first use.
        pinned_id: String,
        /// The id the current token carries.
        presented_id: String,
    },
    /// Optimistic concurrency: the policy changed since the caller read it.
    #[error("policy version conflict: current version is {current}")]
    VersionConflict {
        /// The latest version now stored (0 when there is none).
        current: i64,
    },
    /// The thing to create exists already (an org).
    #[error("already exists")]
    AlreadyExists,
    /// The token to narrow was revoked (checked inside the transaction
    /// that records the narrowed token, so a revocation and a narrowing
    /// that race can never leave an unrevoked child of a revoked parent).
    #[error("the parent token is revoked")]
    Revoked,
    /// The store cannot be reached or cannot write right now (connection,
    /// I/O, lock timeout, disk full). Transient: the server answers 503 with
    /// `Retry-After`.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// Anything else: a bug or corrupt data.
    #[error("storage error: {0}")]
    Other(#[source] BoxError),
}

/// The boxed source of [`StorageError::Unavailable`] and [`StorageError::Other`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

impl StorageError {
    /// Wraps any error as [`StorageError::Other`].
    pub fn other(e: impl Into<BoxError>) -> Self {
        StorageError::Other(e.into())
    }
}

/// The one storage interface of the server.
#[async_trait::async_trait]
pub trait Storage: Send + Sync + fmt::Debug {
    /// Checks that the store answers, for `/readyz`.
    async fn ping(&self) -> Result<(), StorageError>;

    /// The latest version of one org's policy.
    async fn get_policy(&self, org: &str) -> Result<Option<StoredPolicy>, StorageError>;

    /// The latest version of every org's policy, for loading at start-up.
    async fn list_policies(&self) -> Result<Vec<StoredPolicy>, StorageError>;

    /// Stores a new version (1, 2, 3, … per org); older versions are kept.
    /// With `expected_version = Some(v)`, fails with
    /// [`StorageError::VersionConflict`] unless the latest version is `v`
    /// (`0`: the org has no policy yet).
    async fn put_policy(&self, new: NewPolicy, now: i64) -> Result<StoredPolicy, StorageError>;

    /// Every version of one org's policy, oldest first.
    async fn policy_history(&self, org: &str) -> Result<Vec<StoredPolicy>, StorageError>;

    /// The recorded pins among `keys` for one issuer. Names are compared
    /// lowercased (they are lowercased here too, so callers cannot get it
    /// wrong). Keys without a pin are simply absent from the result.
    async fn get_pins(&self, issuer: &str, keys: &[(PinKind, String)]) -> Result<Vec<Pin>, StorageError>;

    /// Records a granted exchange in ONE transaction: consumes the subject
    /// token's `jti`, adds new pins, writes the audit record and the
    /// issued-token row. Either all of it commits or none of it does:
    /// a consumed `jti` → [`StorageError::Replay`]; a pin that exists with
    /// another id → [`StorageError::PinConflict`]. The server returns the
    /// token only after this returns `Ok`: no audit record, no token.
    async fn record_exchange(&self, rec: ExchangeRecord) -> Result<(), StorageError>;

    /// The record of the writ token `jti` issued for `org`, for narrowing
    /// and revocation; `None` when no such token was issued for that org
    /// (another org's token is as absent as one never issued).
    async fn get_issued_token(&self, org: &str, jti: &str) -> Result<Option<IssuedToken>, StorageError>;

    /// Records a denied decision: the audit record only. The `jti` is not
    /// consumed, so a caller who fixes their request can retry with the same
    /// token.
    async fn record_denial(&self, audit: AuditRecord) -> Result<(), StorageError>;

    /// Forgets consumed `jti`s whose `expires_at` is before `now`; returns
    /// how many. Safe at any time: `expires_at` already includes
    /// [`JTI_RETENTION_LEEWAY_SECS`].
    async fn purge_expired(&self, now: i64) -> Result<u64, StorageError>;

    /// All stored signing keys, oldest activation first.
    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StorageError>;

    /// Stores a new signing key. Keys are immutable once stored.
    async fn insert_signing_key(&self, key: StoredSigningKey) -> Result<(), StorageError>;

    /// The `limit` most recent audit records of one org, newest first.
    async fn audit_recent(&self, org: &str, limit: u32) -> Result<Vec<AuditRecord>, StorageError>;

    // ---- the admin API (issue 4) ----------------------------------------

    /// Creates an org, optionally with its first policy (version 1), in one
    /// transaction. [`StorageError::AlreadyExists`] when the org exists: it
    /// was created before, or has a policy (file-managed orgs, orgs from
    /// before the registry).
    async fn create_org(
        &self,
        org: NewOrg,
        first_policy: Option<NewPolicy>,
        now: i64,
    ) -> Result<(OrgRecord, Option<StoredPolicy>), StorageError>;

    /// True when the org was created or has a policy.
    async fn org_exists(&self, org: &str) -> Result<bool, StorageError>;

    /// One page of an org's audit log, newest first, filtered by `query`.
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError>;

    /// Records a narrowed token in ONE transaction: its issued-token row
    /// (with the parent link) and the audit record. Fails with
    /// [`StorageError::Revoked`] — writing nothing — when the parent is
    /// revoked at that moment: the check and the insert must not be
    /// separable by a concurrent revocation (a backend with concurrent
    /// writers must lock the parent's row).
    async fn record_narrowing(&self, rec: NarrowRecord) -> Result<(), StorageError>;

    /// Revokes the unexpired tokens of `revocation.org` that its target
    /// selects, and every token narrowed from them, transitively, in one
    /// transaction. Returns how many were newly revoked (tokens already
    /// revoked are not counted twice).
    async fn revoke(&self, revocation: &Revocation) -> Result<u64, StorageError>;

    /// True when the token with this `jti` was revoked.
    async fn is_revoked(&self, jti: &str) -> Result<bool, StorageError>;

    /// Revocations after feed position `after` (0: from the start) whose
    /// token has not expired at `now`, in feed order, at most `limit`.
    ///
    /// Invariant: the feed never skips. An entry's `seq` is assigned when
    /// its transaction commits in order (SQLite has one writer); a backend
    /// whose sequence values can become visible out of order must hold
    /// back entries until every smaller `seq` is visible, or verifiers
    /// polling with a cursor would miss revocations for good.
    async fn revocation_feed(&self, after: i64, now: i64, limit: u32) -> Result<Vec<RevocationEntry>, StorageError>;

    /// Forgets revocations of tokens that expired before `before`: an
    /// expired token is refused anyway. Returns how many.
    async fn purge_revocations(&self, before: i64) -> Result<u64, StorageError>;

    /// Changes that other processes commit, as they commit: `None` when
    /// this process is the store's only writer (SQLite). The first call
    /// starts listening (on the current Tokio runtime).
    fn subscribe(&self) -> Option<tokio::sync::broadcast::Receiver<Change>> {
        None
    }
}

/// The syntax a policy was written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyFormat {
    /// TOML, the native form.
    Toml,
    /// JSON, accepted through the API.
    Json,
}

/// Who owns a policy: a file in the policy directory (the file wins on
/// reload) or the admin API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagedBy {
    /// Loaded from `[policies] dir`.
    File,
    /// Written through the admin API.
    Api,
}

/// A policy version to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPolicy {
    /// The org the policy governs.
    pub org: String,
    /// The policy text, exactly as submitted.
    pub source: String,
    /// Its syntax.
    pub format: PolicyFormat,
    /// Its owner.
    pub managed_by: ManagedBy,
    /// Who submitted it (an admin subject or a file path), for history.
    pub author: Option<String>,
    /// Optimistic concurrency: the version the writer based its change on
    /// (`Some(0)`: "there is none yet"); `None` writes unconditionally.
    pub expected_version: Option<i64>,
}

/// One stored policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPolicy {
    /// The org the policy governs.
    pub org: String,
    /// 1, 2, 3, … per org.
    pub version: i64,
    /// The policy text.
    pub source: String,
    /// Its syntax.
    pub format: PolicyFormat,
    /// Its owner.
    pub managed_by: ManagedBy,
    /// Who submitted it.
    pub author: Option<String>,
    /// When this version was stored.
    pub created_at: i64,
}

pub use writ_core::policy::PinKind;

/// Parses the stored spelling of a [`PinKind`].
pub fn parse_pin_kind(s: &str) -> Option<PinKind> {
    [PinKind::Repository, PinKind::Owner, PinKind::Project, PinKind::Namespace].into_iter().find(|k| k.as_str() == s)
}

/// A name bound to the immutable id it had when first used, so a deleted and
/// re-created repository or owner with the same name is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The issuer URL (`iss`): ids are only unique per issuer.
    pub issuer: String,
    /// What the name denotes.
    pub kind: PinKind,
    /// The name, lowercased (GitHub and GitLab names are case-insensitive).
    pub name: String,
    /// The immutable id.
    pub id: String,
    /// When the pin was recorded.
    pub created_at: i64,
}

impl Pin {
    /// The evaluator's view of this pin.
    pub fn into_core(self) -> writ_core::policy::Pin {
        writ_core::policy::Pin { issuer: self.issuer, kind: self.kind, name: self.name, id: self.id }
    }

    /// A pin to record for a name the evaluator saw without one.
    pub fn from_core(pin: &writ_core::policy::Pin, now: i64) -> Pin {
        Pin {
            issuer: pin.issuer.clone(),
            kind: pin.kind,
            name: pin.name.to_lowercase(),
            id: pin.id.clone(),
            created_at: now,
        }
    }
}

/// A consumed subject token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedJti {
    /// The issuer URL (`iss`): `jti`s are only unique per issuer.
    pub issuer: String,
    /// The subject token's `jti`.
    pub jti: String,
    /// When the record may be forgotten: the token's `exp` plus
    /// [`JTI_RETENTION_LEEWAY_SECS`].
    pub expires_at: i64,
}

impl UsedJti {
    /// The replay record for a token expiring at `token_exp`; the retention
    /// leeway is added here so no caller can forget it.
    pub fn new(issuer: impl Into<String>, jti: impl Into<String>, token_exp: i64) -> Self {
        UsedJti {
            issuer: issuer.into(),
            jti: jti.into(),
            expires_at: token_exp.saturating_add(JTI_RETENTION_LEEWAY_SECS),
        }
    }
}

/// A writ token that was issued, kept for revocation by token, repository or
/// run until it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    /// The writ token's `jti`.
    pub jti: String,
    /// The org it is valid for.
    pub org: String,
    /// Its `sub` (`<issuer-name>:<oidc sub>`).
    pub subject: String,
    /// The CI repository that obtained it, when known.
    pub repository: Option<String>,
    /// The CI run that obtained it, when known.
    pub run_id: Option<String>,
    /// The policy rule that granted it.
    pub rule: String,
    /// Issued-at.
    pub issued_at: i64,
    /// Expiry.
    pub expires_at: i64,
}

/// Everything a granted exchange writes, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeRecord {
    /// The consumed subject token.
    pub used_jti: UsedJti,
    /// Pins recorded on first use by this exchange (may be empty).
    pub new_pins: Vec<Pin>,
    /// The audit record (outcome [`Outcome::Granted`]).
    pub audit: AuditRecord,
    /// The token being issued.
    pub issued: IssuedToken,
}

impl ExchangeRecord {
    /// Whether the audit record already holds everything `issued` says, so
    /// that a backend may keep the token as that row and write nothing
    /// more (SQLite does: schema version 6). It does when the grant's
    /// audit id is the token's `jti` (as the exchange makes them) and the
    /// org, subject (`<issuer>:<sub>`), repository, run, rule, issue time
    /// and expiry agree.
    pub fn audit_holds_issued(&self) -> bool {
        let (a, t) = (&self.audit, &self.issued);
        let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let subject_agrees = match (&a.issuer, &a.subject) {
            (Some(issuer), Some(sub)) => {
                t.subject.strip_prefix(issuer.as_str()).and_then(|rest| rest.strip_prefix(':')) == Some(sub.as_str())
            }
            _ => false,
        };
        a.outcome == Outcome::Granted
            && *a.id.hyphenated().encode_lower(&mut id) == *t.jti
            && a.token_jti.as_deref() == Some(t.jti.as_str())
            && a.org == t.org
            && subject_agrees
            && a.repository == t.repository
            && a.run_id == t.run_id
            && a.rule.as_deref() == Some(t.rule.as_str())
            && a.time == t.issued_at
            && a.token_expires_at == Some(t.expires_at)
    }
}

/// Whether a decision granted a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// A token was issued.
    Granted,
    /// The request was refused.
    Denied,
}

impl Outcome {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Granted => "granted",
            Outcome::Denied => "denied",
        }
    }
}

/// One audited decision. Fields that a denial before verification cannot
/// know (issuer, repository, …) are `None`; no field ever holds a token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// UUIDv7: unique and ordered by time.
    pub id: Uuid,
    /// When the decision was made.
    pub time: i64,
    /// The request id, as in logs and error bodies.
    pub request_id: String,
    /// The org the caller asked for (possibly one that does not exist).
    pub org: String,
    /// Granted or denied.
    pub outcome: Outcome,
    /// The RFC 6749 error code of a denial (`invalid_grant`, …).
    pub error: Option<String>,
    /// The rule that granted the token.
    pub rule: Option<String>,
    /// The subject token's issuer URL, once verified.
    pub issuer: Option<String>,
    /// The subject token's `sub`.
    pub subject: Option<String>,
    /// The subject token's `jti`.
    pub subject_jti: Option<String>,
    /// CI provenance: repository (`owner/name`).
    pub repository: Option<String>,
    /// CI provenance: repository id.
    pub repository_id: Option<String>,
    /// CI provenance: git ref.
    #[serde(rename = "ref")]
    pub ref_: Option<String>,
    /// CI provenance: environment.
    pub environment: Option<String>,
    /// CI provenance: workflow ref.
    pub workflow_ref: Option<String>,
    /// CI provenance: run id.
    pub run_id: Option<String>,
    /// CI provenance: actor.
    pub actor: Option<String>,
    /// Permissions the caller asked for (empty: none named).
    pub requested_permissions: Vec<String>,
    /// Apps the caller asked for.
    pub requested_apps: Vec<String>,
    /// Machines the caller asked for.
    pub requested_machines: Vec<String>,
    /// Permissions granted (empty on denial).
    pub granted_permissions: Vec<String>,
    /// Apps granted; `None`: not limited by app (or denied).
    pub granted_apps: Option<Vec<String>>,
    /// Machines granted; `None`: not limited by machine (or denied).
    pub granted_machines: Option<Vec<String>>,
    /// The issued token's `jti`.
    pub token_jti: Option<String>,
    /// The issued token's expiry.
    pub token_expires_at: Option<i64>,
    /// The decision's explanation (per rule, per failed condition).
    pub explanation: Option<serde_json::Value>,
    /// The client's address as the server saw it.
    pub client_addr: Option<String>,
}

impl AuditRecord {
    /// A record with a fresh UUIDv7 id and every optional field empty; the
    /// caller fills in what it knows.
    pub fn new(time: i64, request_id: impl Into<String>, org: impl Into<String>, outcome: Outcome) -> Self {
        AuditRecord {
            id: Uuid::now_v7(),
            time,
            request_id: request_id.into(),
            org: org.into(),
            outcome,
            error: None,
            rule: None,
            issuer: None,
            subject: None,
            subject_jti: None,
            repository: None,
            repository_id: None,
            ref_: None,
            environment: None,
            workflow_ref: None,
            run_id: None,
            actor: None,
            requested_permissions: Vec::new(),
            requested_apps: Vec::new(),
            requested_machines: Vec::new(),
            granted_permissions: Vec::new(),
            granted_apps: None,
            granted_machines: None,
            token_jti: None,
            token_expires_at: None,
            explanation: None,
            client_addr: None,
        }
    }
}

/// A signing key as stored. The private half is a secret: its `Debug`
/// redacts and it is wiped from memory on drop.
#[derive(Debug, Clone)]
pub struct StoredSigningKey {
    /// RFC 7638 JWK thumbprint of the public key.
    pub kid: String,
    /// JOSE algorithm (`EdDSA`).
    pub algorithm: String,
    /// The private key, PKCS#8 DER.
    pub private_pkcs8: SecretSlice<u8>,
    /// The raw public key.
    pub public_key: Vec<u8>,
    /// When the key was created, and from when it is published in the JWKS.
    pub created_at: i64,
    /// From when the key signs tokens (after its pre-publication window).
    pub activates_at: i64,
}

/// An org to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrg {
    /// The org's name.
    pub org: String,
    /// Who created it (`root`), for the record.
    pub created_by: Option<String>,
}

/// An org in the registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrgRecord {
    /// The org's name.
    pub org: String,
    /// When it was created.
    pub created_at: i64,
    /// Who created it.
    pub created_by: Option<String>,
}

/// Filters and position of an audit page. `None` filters match everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// The org whose log is read.
    pub org: String,
    /// Records at or after this time.
    pub from: Option<i64>,
    /// Records before this time.
    pub to: Option<i64>,
    /// Records of this repository (case-insensitive).
    pub repository: Option<String>,
    /// Only grants or only denials.
    pub outcome: Option<Outcome>,
    /// Records decided by (granted under) this rule.
    pub rule: Option<String>,
    /// Records that requested or granted this permission.
    pub permission: Option<String>,
    /// The cursor: only records older than this id (the last id of the
    /// previous page).
    pub before: Option<Uuid>,
    /// Page size.
    pub limit: u32,
}

impl AuditQuery {
    /// The newest `limit` records of `org`, unfiltered.
    pub fn new(org: impl Into<String>, limit: u32) -> Self {
        AuditQuery {
            org: org.into(),
            from: None,
            to: None,
            repository: None,
            outcome: None,
            rule: None,
            permission: None,
            before: None,
            limit,
        }
    }
}

/// Everything a narrowing writes, atomically.
#[derive(Debug, Clone, PartialEq)]
pub struct NarrowRecord {
    /// The `jti` of the token it was narrowed from.
    pub parent_jti: String,
    /// The new token.
    pub issued: IssuedToken,
    /// The audit record (outcome [`Outcome::Granted`]); its `issuer` is
    /// writ itself and its `subject_jti` the parent's `jti`.
    pub audit: AuditRecord,
}

/// Which issued tokens a revocation selects (within one org).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevocationTarget {
    /// One token.
    Jti(String),
    /// Every token issued to a CI repository (case-insensitive).
    Repository(String),
    /// Every token issued to one CI run.
    RunId(String),
    /// Every token granted under one policy rule.
    Rule(String),
}

/// A revocation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The org whose tokens are revoked; tokens of other orgs are never
    /// touched, whatever the target.
    pub org: String,
    /// What to revoke.
    pub target: RevocationTarget,
    /// Why, for the record (`admin`, `holder`, free text).
    pub reason: String,
    /// Who asked.
    pub revoked_by: Option<String>,
    /// When.
    pub now: i64,
}

/// One entry of the revocation feed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEntry {
    /// Feed position; strictly increasing.
    pub seq: i64,
    /// The revoked token's `jti`.
    pub jti: String,
    /// Its org.
    pub org: String,
    /// Its expiry; after it, the entry may leave the feed.
    pub expires_at: i64,
    /// When it was revoked.
    pub revoked_at: i64,
}
