//! The embedded SQLite backend of [`Storage`]: one file, WAL journal,
//! `synchronous = FULL`.
//!
//! Three kinds of connection share the file:
//!
//! - the exchange path's writer ([`group`]): one plain `rusqlite`
//!   connection on the group-commit thread, which writes the replay
//!   records, audit records and issued tokens of concurrent exchanges in
//!   one transaction per batch;
//! - one sqlx writer connection for every other write (policies, orgs,
//!   revocations, keys, purges, migrations), queueing in its pool;
//! - a few sqlx reader connections, which WAL lets run alongside writers.
//!
//! Durability: `synchronous = FULL` syncs the WAL on every commit, so a
//! committed audit record survives a power loss, which `NORMAL` in WAL mode
//! does not promise. Each exchange's caller is answered only after the
//! commit that holds its write ([`super::batch`]).

mod checkpoint;
mod group;

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretSlice};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use uuid::Uuid;

use super::batch::{GroupCommit, Write};
use super::{
    AuditQuery, AuditRecord, ExchangeRecord, IssuedToken, ManagedBy, NarrowRecord, NewOrg, NewPolicy, OrgRecord,
    Outcome, Pin, PinKind, PolicyFormat, Revocation, RevocationEntry, Storage, StorageError, StoredPolicy,
    StoredSigningKey,
};

/// Tuning of the SQLite backend; [`Default`] is what `writ serve` uses.
#[derive(Debug, Clone)]
pub struct SqliteConfig {
    /// How long a statement waits for a lock held by another process (for
    /// example `writ` CLI commands on the same file) before failing as
    /// unavailable.
    pub busy_timeout: Duration,
    /// How long a request waits for a pooled connection before failing as
    /// unavailable (503), instead of queueing without bound.
    pub acquire_timeout: Duration,
    /// Reader connections, beside the single writer.
    pub read_connections: u32,
}

/// Default [`SqliteConfig::busy_timeout`].
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Default [`SqliteConfig::acquire_timeout`].
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`SqliteConfig::read_connections`].
pub const DEFAULT_READ_CONNECTIONS: u32 = 4;

impl Default for SqliteConfig {
    fn default() -> Self {
        SqliteConfig {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            read_connections: DEFAULT_READ_CONNECTIONS,
        }
    }
}

/// SQLite-backed [`Storage`]. Cloning shares the pools.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    /// The exchange path's writes, group-committed through `writer`.
    commits: GroupCommit,
    /// Pins already read or written, so most exchanges look none up.
    pins: Arc<PinCache>,
    /// Keeps the background WAL checkpoints running while the store lives.
    _checkpoints: Option<Arc<tokio::sync::watch::Sender<()>>>,
    /// The temporary directory of a scratch store
    /// ([`SqliteStore::open_in_memory`]), removed with the last clone.
    _scratch: Option<Arc<tempfile::TempDir>>,
}

/// Replay records deleted per statement by `purge_expired`.
const PURGE_CHUNK: i64 = 2000;

/// Most pins kept in [`PinCache`]; when full it starts over (a miss only
/// costs a read).
const PIN_CACHE_CAPACITY: usize = 100_000;

/// Recorded pins, by (issuer, kind, lowercased name), exactly as read
/// from the database.
///
/// Only pins that exist are cached, and that is safe because a pin never
/// changes once recorded: `insert_pin` never overwrites one, and nothing
/// deletes one. A code path that ever rewrites or deletes pins must clear
/// this cache. A pin recorded by another process (a CLI command, another
/// replica) is simply not cached yet: the lookup reads it, and the
/// transactional check in `insert_pin` holds regardless.
#[derive(Debug, Default)]
struct PinCache {
    pins: RwLock<PinMap>,
}

/// Issuer, then kind, then name: a lookup borrows its `&str`s instead of
/// building an owned `(issuer, kind, name)` key (two allocations per name
/// and exchange).
#[derive(Debug, Default)]
struct PinMap {
    by_issuer: HashMap<String, HashMap<PinKind, HashMap<String, Pin>>>,
    len: usize,
}

impl PinCache {
    fn get(&self, issuer: &str, kind: PinKind, name: &str) -> Option<Pin> {
        let pins = self.pins.read().unwrap_or_else(PoisonError::into_inner);
        pins.by_issuer.get(issuer)?.get(&kind)?.get(name).cloned()
    }

    fn insert(&self, pin: &Pin) {
        let mut pins = self.pins.write().unwrap_or_else(PoisonError::into_inner);
        if pins.len >= PIN_CACHE_CAPACITY {
            *pins = PinMap::default();
        }
        let names = pins.by_issuer.entry(pin.issuer.clone()).or_default().entry(pin.kind).or_default();
        if names.insert(pin.name.clone(), pin.clone()).is_none() {
            pins.len += 1;
        }
    }
}

/// The schema migrations, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

impl SqliteStore {
    /// Opens (creating if missing) the database at `location` and brings its
    /// schema up to date. `location` is a `sqlite://path` / `sqlite:path` URL
    /// or a plain path; `sqlite::memory:` opens a private in-memory database
    /// (see [`SqliteStore::open_in_memory`]).
    pub async fn open(location: &str, config: &SqliteConfig) -> Result<Self, StorageError> {
        if is_in_memory(location) {
            return Self::open_in_memory().await;
        }
        Self::open_file(location, config).await
    }

    async fn open_file(location: &str, config: &SqliteConfig) -> Result<Self, StorageError> {
        let options = if location.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(location).map_err(StorageError::other)?
        } else {
            SqliteConnectOptions::new().filename(location)
        };
        let path = options.get_filename().to_owned();
        create_private_file(&path)?;
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(config.busy_timeout)
            .foreign_keys(true);

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(config.acquire_timeout)
            // Checkpoints run in the background instead (see `checkpoint`).
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await
            .map_err(map_err)?;
        MIGRATOR.run(&writer).await.map_err(StorageError::other)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(config.read_connections.max(1))
            .acquire_timeout(config.acquire_timeout)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        // The exchange path's writer: its own connection, on its own thread.
        let restart = checkpoint::RestartWanted::default();
        let batch_writer = group::SqliteBatchWriter::open(&path, config.busy_timeout, restart.clone())?;
        let commits = GroupCommit::start("writ-sqlite-writer", batch_writer)?;
        let (stop, stopped) = tokio::sync::watch::channel(());
        tokio::spawn(checkpoint::run(writer.clone(), reader.clone(), path.clone(), restart, stopped));
        Ok(SqliteStore {
            writer,
            reader,
            commits,
            pins: Arc::default(),
            _checkpoints: Some(Arc::new(stop)),
            _scratch: None,
        })
    }

    /// A fresh, private database that lives as long as the store, for unit
    /// tests and `--dev`. Nothing survives a restart.
    ///
    /// It is a file in a new private temporary directory, removed when the
    /// last clone of the store is dropped, rather than SQLite's `:memory:`:
    /// the exchange path writes through a connection of its own (see
    /// `group`), and a `:memory:` database is private to one connection.
    /// So the scratch store runs exactly the code and durability settings
    /// of a real one.
    pub async fn open_in_memory() -> Result<Self, StorageError> {
        let dir = tempfile::Builder::new()
            .prefix("writ-scratch-")
            .tempdir()
            .map_err(|e| StorageError::Unavailable(format!("creating a scratch database directory: {e}").into()))?;
        let path = dir.path().join("writ.db");
        let location = path
            .to_str()
            .ok_or_else(|| StorageError::other(format!("temporary path {} is not UTF-8", path.display())))?
            .to_owned();
        let mut store = Self::open_file(&location, &SqliteConfig::default()).await?;
        store._scratch = Some(Arc::new(dir));
        Ok(store)
    }

    /// Closes both pools and the exchange writer, waiting for in-flight
    /// statements.
    pub async fn close(&self) {
        self.commits.close().await;
        self.reader.close().await;
        self.writer.close().await;
    }
}

fn is_in_memory(location: &str) -> bool {
    matches!(location, ":memory:" | "sqlite::memory:" | "sqlite://:memory:") || location.contains("mode=memory")
}

/// Creates the database file readable and writable by its owner only: it
/// holds writ's private signing keys and the audit log. SQLite gives the
/// `-wal` and `-shm` files the same permissions. An existing file is left
/// as it is (the operator may have chosen otherwise on purpose).
fn create_private_file(path: &Path) -> Result<(), StorageError> {
    let mut open = private_file_options();
    open.create_new(true);
    match open.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StorageError::Unavailable(format!("creating database file {}: {e}", path.display()).into())),
    }
}

/// Options that open a file for writing, created readable and writable by
/// its owner only (the database, the exchange lock).
fn private_file_options() -> std::fs::OpenOptions {
    let mut open = std::fs::OpenOptions::new();
    open.write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        open.mode(0o600);
    }
    open
}

/// SQLite primary result codes that mean "not now" rather than "never".
const SQLITE_BUSY: i64 = 5;
const SQLITE_LOCKED: i64 = 6;
const SQLITE_NOMEM: i64 = 7;
const SQLITE_READONLY: i64 = 8;
const SQLITE_IOERR: i64 = 10;
const SQLITE_FULL: i64 = 13;
const SQLITE_CANTOPEN: i64 = 14;

/// Classifies a driver error: transient conditions become
/// [`StorageError::Unavailable`] (the server answers 503 + `Retry-After`).
fn map_err(e: sqlx::Error) -> StorageError {
    let transient = match &e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<i64>().ok()).is_some_and(|code| {
            matches!(
                code & 0xff,
                SQLITE_BUSY
                    | SQLITE_LOCKED
                    | SQLITE_NOMEM
                    | SQLITE_READONLY
                    | SQLITE_IOERR
                    | SQLITE_FULL
                    | SQLITE_CANTOPEN
            )
        }),
        _ => false,
    };
    if transient { StorageError::Unavailable(Box::new(e)) } else { StorageError::Other(Box::new(e)) }
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StorageError> {
    serde_json::to_string(value).map_err(StorageError::other)
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(StorageError::other)
}

fn format_str(f: PolicyFormat) -> &'static str {
    match f {
        PolicyFormat::Toml => "toml",
        PolicyFormat::Json => "json",
    }
}

fn managed_by_str(m: ManagedBy) -> &'static str {
    match m {
        ManagedBy::File => "file",
        ManagedBy::Api => "api",
    }
}

fn corrupt(what: &str, value: &str) -> StorageError {
    StorageError::other(format!("unexpected {what} {value:?} in database"))
}

/// The columns of `policies`, in [`policy_from_row`] and insert order. A
/// macro so queries stay `&'static str` (sqlx refuses runtime-built SQL
/// unless asserted safe).
macro_rules! policy_columns {
    () => {
        "org, version, source, format, managed_by, author, created_at"
    };
}

fn policy_from_row(row: &SqliteRow) -> Result<StoredPolicy, StorageError> {
    let format: String = row.try_get("format").map_err(map_err)?;
    let managed_by: String = row.try_get("managed_by").map_err(map_err)?;
    Ok(StoredPolicy {
        org: row.try_get("org").map_err(map_err)?,
        version: row.try_get("version").map_err(map_err)?,
        source: row.try_get("source").map_err(map_err)?,
        format: match format.as_str() {
            "toml" => PolicyFormat::Toml,
            "json" => PolicyFormat::Json,
            other => return Err(corrupt("policy format", other)),
        },
        managed_by: match managed_by.as_str() {
            "file" => ManagedBy::File,
            "api" => ManagedBy::Api,
            other => return Err(corrupt("policy owner", other)),
        },
        author: row.try_get("author").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
    })
}

fn pin_from_row(row: &SqliteRow) -> Result<Pin, StorageError> {
    let kind: String = row.try_get("kind").map_err(map_err)?;
    Ok(Pin {
        issuer: row.try_get("issuer").map_err(map_err)?,
        kind: super::parse_pin_kind(&kind).ok_or_else(|| corrupt("pin kind", &kind))?,
        name: row.try_get("name").map_err(map_err)?,
        id: row.try_get("id").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
    })
}

fn audit_from_row(row: &SqliteRow) -> Result<AuditRecord, StorageError> {
    let get_str =
        |col: &str| -> Result<Option<String>, StorageError> { row.try_get::<Option<String>, _>(col).map_err(map_err) };
    let list = |col: &str| -> Result<Vec<String>, StorageError> {
        from_json(&row.try_get::<String, _>(col).map_err(map_err)?)
    };
    let opt_list =
        |col: &str| -> Result<Option<Vec<String>>, StorageError> { get_str(col)?.map(|t| from_json(&t)).transpose() };
    let id: String = row.try_get("id").map_err(map_err)?;
    let outcome: String = row.try_get("outcome").map_err(map_err)?;
    Ok(AuditRecord {
        id: Uuid::parse_str(&id).map_err(StorageError::other)?,
        time: row.try_get("time").map_err(map_err)?,
        request_id: row.try_get("request_id").map_err(map_err)?,
        org: row.try_get("org").map_err(map_err)?,
        outcome: match outcome.as_str() {
            "granted" => Outcome::Granted,
            "denied" => Outcome::Denied,
            other => return Err(corrupt("audit outcome", other)),
        },
        error: get_str("error")?,
        rule: get_str("rule")?,
        issuer: get_str("issuer")?,
        subject: get_str("subject")?,
        subject_jti: get_str("subject_jti")?,
        repository: get_str("repository")?,
        repository_id: get_str("repository_id")?,
        ref_: get_str("ref")?,
        environment: get_str("environment")?,
        workflow_ref: get_str("workflow_ref")?,
        run_id: get_str("run_id")?,
        actor: get_str("actor")?,
        requested_permissions: list("requested_permissions")?,
        requested_apps: list("requested_apps")?,
        requested_machines: list("requested_machines")?,
        granted_permissions: list("granted_permissions")?,
        granted_apps: opt_list("granted_apps")?,
        granted_machines: opt_list("granted_machines")?,
        token_jti: get_str("token_jti")?,
        token_expires_at: row.try_get("token_expires_at").map_err(map_err)?,
        explanation: get_str("explanation")?.map(|t| from_json(&t)).transpose()?,
        client_addr: get_str("client_addr")?,
    })
}

/// The columns of `audit`, in [`bind_audit`] order.
const AUDIT_COLUMNS: &str = "id, time, request_id, org, outcome, error, rule, issuer, subject, \
     subject_jti, repository, repository_id, ref, environment, workflow_ref, run_id, actor, \
     requested_permissions, requested_apps, requested_machines, granted_permissions, \
     granted_apps, granted_machines, token_jti, token_expires_at, explanation, client_addr";

/// Binds one audit record's values, in [`AUDIT_COLUMNS`] order.
fn bind_audit<'q>(
    q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    a: &AuditRecord,
) -> Result<sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>, StorageError> {
    Ok(q.bind(a.id.hyphenated().to_string())
        .bind(a.time)
        .bind(a.request_id.clone())
        .bind(a.org.clone())
        .bind(a.outcome.as_str())
        .bind(a.error.clone())
        .bind(a.rule.clone())
        .bind(a.issuer.clone())
        .bind(a.subject.clone())
        .bind(a.subject_jti.clone())
        .bind(a.repository.clone())
        .bind(a.repository_id.clone())
        .bind(a.ref_.clone())
        .bind(a.environment.clone())
        .bind(a.workflow_ref.clone())
        .bind(a.run_id.clone())
        .bind(a.actor.clone())
        .bind(to_json(&a.requested_permissions)?)
        .bind(to_json(&a.requested_apps)?)
        .bind(to_json(&a.requested_machines)?)
        .bind(to_json(&a.granted_permissions)?)
        .bind(a.granted_apps.as_ref().map(to_json).transpose()?)
        .bind(a.granted_machines.as_ref().map(to_json).transpose()?)
        .bind(a.token_jti.clone())
        .bind(a.token_expires_at)
        .bind(a.explanation.as_ref().map(to_json).transpose()?)
        .bind(a.client_addr.clone()))
}

async fn insert_audit(conn: &mut SqliteConnection, a: &AuditRecord) -> Result<(), StorageError> {
    // Constant column list and placeholders only: every value is bound.
    let sql = sqlx::AssertSqlSafe(audit_insert_sql());
    bind_audit(sqlx::query(sql), a)?.execute(&mut *conn).await.map_err(map_err)?;
    Ok(())
}

/// `INSERT INTO audit (…) VALUES (?1, …)`, built once from
/// [`AUDIT_COLUMNS`] (constant text only: every value is bound), for the
/// sqlx and the rusqlite ([`group`]) writers alike.
fn audit_insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let count = AUDIT_COLUMNS.split(',').count();
        let placeholders: Vec<String> = (1..=count).map(|i| format!("?{i}")).collect();
        format!("INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({})", placeholders.join(", "))
    })
}

#[async_trait::async_trait]
impl Storage for SqliteStore {
    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.reader).await.map_err(map_err)?;
        Ok(())
    }

    async fn get_policy(&self, org: &str) -> Result<Option<StoredPolicy>, StorageError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM policies WHERE org = ? ORDER BY version DESC LIMIT 1"
        ))
        .bind(org)
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.as_ref().map(policy_from_row).transpose()
    }

    async fn list_policies(&self) -> Result<Vec<StoredPolicy>, StorageError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM policies AS p",
            " WHERE version = (SELECT MAX(version) FROM policies WHERE org = p.org)",
            " ORDER BY org"
        ))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn put_policy(&self, new: NewPolicy, now: i64) -> Result<StoredPolicy, StorageError> {
        // IMMEDIATE takes the write lock before reading the current version,
        // so no other writer can slip in between the check and the insert.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM policies WHERE org = ?")
            .bind(&new.org)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if let Some(expected) = new.expected_version
            && expected != current
        {
            return Err(StorageError::VersionConflict { current });
        }
        let stored = StoredPolicy {
            org: new.org,
            version: current + 1,
            source: new.source,
            format: new.format,
            managed_by: new.managed_by,
            author: new.author,
            created_at: now,
        };
        sqlx::query(concat!("INSERT INTO policies (", policy_columns!(), ") VALUES (?, ?, ?, ?, ?, ?, ?)"))
            .bind(&stored.org)
            .bind(stored.version)
            .bind(&stored.source)
            .bind(format_str(stored.format))
            .bind(managed_by_str(stored.managed_by))
            .bind(&stored.author)
            .bind(stored.created_at)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(stored)
    }

    async fn policy_history(&self, org: &str) -> Result<Vec<StoredPolicy>, StorageError> {
        let rows = sqlx::query(concat!("SELECT ", policy_columns!(), " FROM policies WHERE org = ? ORDER BY version"))
            .bind(org)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn get_pins(&self, issuer: &str, keys: &[(PinKind, String)]) -> Result<Vec<Pin>, StorageError> {
        let mut pins = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (kind, name) in keys {
            // Names arrive lowercased already (`exchange::pin_keys`); folding
            // again only when needed saves an allocation per name.
            let folded: std::borrow::Cow<'_, str> = if name.chars().flat_map(char::to_lowercase).eq(name.chars()) {
                name.as_str().into()
            } else {
                name.to_lowercase().into()
            };
            match self.pins.get(issuer, *kind, &folded) {
                Some(pin) => pins.push(pin),
                None => missing.push((kind, name)),
            }
        }
        if missing.is_empty() {
            return Ok(pins);
        }
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
        for (kind, name) in missing {
            let row = sqlx::query(
                "SELECT issuer, kind, name, id, created_at FROM pins \
                 WHERE issuer = ? AND kind = ? AND name = ?",
            )
            .bind(issuer)
            .bind(kind.as_str())
            .bind(name.to_lowercase())
            .fetch_optional(&mut *conn)
            .await
            .map_err(map_err)?;
            if let Some(row) = row {
                let pin = pin_from_row(&row)?;
                self.pins.insert(&pin);
                pins.push(pin);
            }
        }
        Ok(pins)
    }

    async fn record_exchange(&self, rec: ExchangeRecord) -> Result<(), StorageError> {
        self.commits.write(Write::Exchange(Box::new(rec))).await
    }

    async fn record_denial(&self, audit: AuditRecord) -> Result<(), StorageError> {
        self.commits.write(Write::Denial(Box::new(audit))).await
    }

    async fn get_issued_token(&self, org: &str, jti: &str) -> Result<Option<IssuedToken>, StorageError> {
        // An exchange's token is its grant's audit row (schema version 6,
        // `group::insert_issued`); other tokens (narrowed ones, and those
        // issued before version 6) are rows of `issued_tokens`.
        let row = sqlx::query(
            "SELECT jti, org, subject, repository, run_id, rule, issued_at, expires_at \
             FROM issued_tokens WHERE jti = ?2 AND org = ?1 \
             UNION ALL \
             SELECT id, org, issuer || ':' || subject, repository, run_id, rule, time, token_expires_at \
             FROM audit WHERE org = ?1 AND id = ?2 AND token_jti = id \
             AND NOT EXISTS (SELECT 1 FROM issued_tokens WHERE jti = ?2)",
        )
        .bind(org)
        .bind(jti)
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(IssuedToken {
            jti: row.try_get("jti").map_err(map_err)?,
            org: row.try_get("org").map_err(map_err)?,
            subject: row.try_get("subject").map_err(map_err)?,
            repository: row.try_get("repository").map_err(map_err)?,
            run_id: row.try_get("run_id").map_err(map_err)?,
            rule: row.try_get("rule").map_err(map_err)?,
            issued_at: row.try_get("issued_at").map_err(map_err)?,
            expires_at: row.try_get("expires_at").map_err(map_err)?,
        }))
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StorageError> {
        // On the exchange writer, which keeps the replay index in step, a
        // chunk at a time between batches: at thousands of exchanges a
        // second a minute's worth of expired records is over 100,000 rows,
        // and deleting them at once would hold every exchange behind it.
        self.commits.purge(now).await
    }

    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StorageError> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, private_pkcs8, public_key, created_at, activates_at \
             FROM signing_keys ORDER BY activates_at, kid",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let private: Vec<u8> = row.try_get("private_pkcs8").map_err(map_err)?;
                Ok(StoredSigningKey {
                    kid: row.try_get("kid").map_err(map_err)?,
                    algorithm: row.try_get("algorithm").map_err(map_err)?,
                    private_pkcs8: SecretSlice::from(private),
                    public_key: row.try_get("public_key").map_err(map_err)?,
                    created_at: row.try_get("created_at").map_err(map_err)?,
                    activates_at: row.try_get("activates_at").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn insert_signing_key(&self, key: StoredSigningKey) -> Result<(), StorageError> {
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_pkcs8, public_key, created_at, \
             activates_at) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(key.private_pkcs8.expose_secret())
        .bind(&key.public_key)
        .bind(key.created_at)
        .bind(key.activates_at)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn audit_recent(&self, org: &str, limit: u32) -> Result<Vec<AuditRecord>, StorageError> {
        let rows = sqlx::query("SELECT * FROM audit WHERE org = ? ORDER BY id DESC LIMIT ?")
            .bind(org)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn create_org(
        &self,
        org: NewOrg,
        first_policy: Option<NewPolicy>,
        now: i64,
    ) -> Result<(OrgRecord, Option<StoredPolicy>), StorageError> {
        admin::create_org(&self.writer, org, first_policy, now).await
    }

    async fn org_exists(&self, org: &str) -> Result<bool, StorageError> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orgs WHERE org = ?1) OR EXISTS (SELECT 1 FROM policies WHERE org = ?1)",
        )
        .bind(org)
        .fetch_one(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(exists)
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        admin::query_audit(&self.reader, query).await
    }

    async fn record_narrowing(&self, rec: NarrowRecord) -> Result<(), StorageError> {
        admin::record_narrowing(&self.writer, rec).await
    }

    async fn revoke(&self, revocation: &Revocation) -> Result<u64, StorageError> {
        admin::revoke(&self.writer, revocation).await
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StorageError> {
        let revoked: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revocations WHERE jti = ?)")
            .bind(jti)
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(revoked)
    }

    async fn revocation_feed(&self, after: i64, now: i64, limit: u32) -> Result<Vec<RevocationEntry>, StorageError> {
        admin::revocation_feed(&self.reader, after, now, limit).await
    }

    async fn purge_revocations(&self, before: i64) -> Result<u64, StorageError> {
        let done = sqlx::query("DELETE FROM revocations WHERE expires_at < ?")
            .bind(before)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}

/// The admin API's queries (org registry, audit search, narrowing,
/// revocation), apart from the exchange path above.
mod admin {
    use sqlx::Row;
    use sqlx::sqlite::SqlitePool;

    use super::{audit_from_row, format_str, insert_audit, managed_by_str, map_err};
    use crate::storage::{
        AuditQuery, AuditRecord, NarrowRecord, NewOrg, NewPolicy, OrgRecord, Revocation, RevocationEntry,
        RevocationTarget, StorageError, StoredPolicy,
    };

    pub(super) async fn create_org(
        writer: &SqlitePool,
        org: NewOrg,
        first_policy: Option<NewPolicy>,
        now: i64,
    ) -> Result<(OrgRecord, Option<StoredPolicy>), StorageError> {
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orgs WHERE org = ?1) OR EXISTS (SELECT 1 FROM policies WHERE org = ?1)",
        )
        .bind(&org.org)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if exists {
            return Err(StorageError::AlreadyExists);
        }
        sqlx::query("INSERT INTO orgs (org, created_at, created_by) VALUES (?, ?, ?)")
            .bind(&org.org)
            .bind(now)
            .bind(&org.created_by)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let policy = match first_policy {
            None => None,
            Some(new) => {
                if new.org != org.org {
                    return Err(StorageError::other(format!(
                        "first policy is for org {:?}, not {:?}",
                        new.org, org.org
                    )));
                }
                let stored = StoredPolicy {
                    org: new.org,
                    version: 1,
                    source: new.source,
                    format: new.format,
                    managed_by: new.managed_by,
                    author: new.author,
                    created_at: now,
                };
                sqlx::query(concat!("INSERT INTO policies (", policy_columns!(), ") VALUES (?, ?, ?, ?, ?, ?, ?)"))
                    .bind(&stored.org)
                    .bind(stored.version)
                    .bind(&stored.source)
                    .bind(format_str(stored.format))
                    .bind(managed_by_str(stored.managed_by))
                    .bind(&stored.author)
                    .bind(stored.created_at)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                Some(stored)
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok((OrgRecord { org: org.org, created_at: now, created_by: org.created_by }, policy))
    }

    pub(super) async fn query_audit(reader: &SqlitePool, q: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        // One static statement: every filter is "unset or holds", so the
        // SQL never depends on the input. The table's (org, id) key serves
        // the order and the cursor.
        let rows = sqlx::query(
            "SELECT * FROM audit WHERE org = ?1 \
             AND (?2 IS NULL OR time >= ?2) \
             AND (?3 IS NULL OR time < ?3) \
             AND (?4 IS NULL OR repository = ?4 COLLATE NOCASE) \
             AND (?5 IS NULL OR outcome = ?5) \
             AND (?6 IS NULL OR rule = ?6) \
             AND (?7 IS NULL \
                  OR EXISTS (SELECT 1 FROM json_each(audit.granted_permissions) WHERE value = ?7) \
                  OR EXISTS (SELECT 1 FROM json_each(audit.requested_permissions) WHERE value = ?7)) \
             AND (?8 IS NULL OR id < ?8) \
             ORDER BY id DESC LIMIT ?9",
        )
        .bind(&q.org)
        .bind(q.from)
        .bind(q.to)
        .bind(&q.repository)
        .bind(q.outcome.map(|o| o.as_str()))
        .bind(&q.rule)
        .bind(&q.permission)
        .bind(q.before.map(|id| id.hyphenated().to_string()))
        .bind(i64::from(q.limit))
        .fetch_all(reader)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    pub(super) async fn record_narrowing(writer: &SqlitePool, rec: NarrowRecord) -> Result<(), StorageError> {
        // IMMEDIATE: the revocation check and the insert happen under the
        // write lock, so no revocation of the parent can fall between them.
        let mut tx = writer.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let revoked: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revocations WHERE jti = ?)")
            .bind(&rec.parent_jti)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if revoked {
            return Err(StorageError::Revoked);
        }
        insert_audit(&mut tx, &rec.audit).await?;
        let t = &rec.issued;
        sqlx::query(
            "INSERT INTO issued_tokens (jti, org, subject, repository, run_id, rule, issued_at, \
             expires_at, parent_jti) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.jti)
        .bind(&t.org)
        .bind(&t.subject)
        .bind(&t.repository)
        .bind(&t.run_id)
        .bind(&t.rule)
        .bind(t.issued_at)
        .bind(t.expires_at)
        .bind(&rec.parent_jti)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    /// Revokes the selected tokens of an org, then every token narrowed
    /// from them (narrowing keeps the org, so the walk stays inside it).
    /// Expired tokens are left alone: they are refused anyway. Binds: ?1
    /// org, ?2 now, ?3 the target's kind (`jti`, `repository`, `run_id`,
    /// `rule`), ?4 its value, ?5 the reason, ?6 who revoked.
    ///
    /// An org's unexpired tokens (`live`) are its exchanges' grants, whose
    /// audit rows are the tokens (schema version 6), and the rows of
    /// `issued_tokens`: narrowed tokens, tokens issued before version 6,
    /// and any an audit row did not hold (that table's row is the token's
    /// record then). Narrowed tokens are only ever in `issued_tokens`, so
    /// the walk to them reads that.
    ///
    /// The grant rows are read by the audit key `(org, id)` from the first
    /// id a live token can have (schema version 7): a held token expires
    /// at most `token_span.max_secs` seconds after the milliseconds in its
    /// id's first 48 bits (written as the id's first 12 hex digits), so one
    /// alive at `now` has an id at or after the text of
    /// `(now - max_secs) * 1000` in that form. An empty `token_span` reads
    /// the org's whole log: slower, never wrong.
    pub(super) const REVOKE_SQL: &str = "WITH RECURSIVE live(jti, org, expires_at, issued_at, repository, run_id, rule) AS ( \
             SELECT id, org, token_expires_at, time, repository, run_id, rule FROM audit \
             WHERE org = ?1 \
             AND id >= coalesce((SELECT CASE WHEN ?2 - max_secs > 0 \
                 THEN printf('%08x-%04x', ((?2 - max_secs) * 1000) >> 16, ((?2 - max_secs) * 1000) & 65535) \
                 ELSE '' END FROM token_span), '') \
             AND token_jti = id AND token_expires_at > ?2 \
             AND NOT EXISTS (SELECT 1 FROM issued_tokens AS i WHERE i.jti = audit.id) \
             UNION ALL \
             SELECT jti, org, expires_at, issued_at, repository, run_id, rule FROM issued_tokens \
             WHERE org = ?1 AND expires_at > ?2 \
         ), \
         targets(jti) AS ( \
             SELECT jti FROM live WHERE \
                 (?3 = 'jti' AND jti = ?4) \
                 OR (?3 = 'repository' AND repository = ?4 COLLATE NOCASE) \
                 OR (?3 = 'run_id' AND run_id = ?4) \
                 OR (?3 = 'rule' AND rule = ?4) \
             UNION \
             SELECT child.jti FROM issued_tokens AS child JOIN targets ON child.parent_jti = targets.jti \
         ) \
         INSERT INTO revocations (jti, org, expires_at, revoked_at, reason, revoked_by) \
         SELECT t.jti, t.org, t.expires_at, ?2, ?5, ?6 FROM live AS t \
         WHERE t.jti IN (SELECT jti FROM targets) \
         ORDER BY t.issued_at, t.jti \
         ON CONFLICT (jti) DO NOTHING";

    pub(super) async fn revoke(writer: &SqlitePool, r: &Revocation) -> Result<u64, StorageError> {
        let (kind, value) = match &r.target {
            RevocationTarget::Jti(v) => ("jti", v),
            RevocationTarget::Repository(v) => ("repository", v),
            RevocationTarget::RunId(v) => ("run_id", v),
            RevocationTarget::Rule(v) => ("rule", v),
        };
        let done = sqlx::query(REVOKE_SQL)
            .bind(&r.org)
            .bind(r.now)
            .bind(kind)
            .bind(value)
            .bind(&r.reason)
            .bind(&r.revoked_by)
            .execute(writer)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    pub(super) async fn revocation_feed(
        reader: &SqlitePool,
        after: i64,
        now: i64,
        limit: u32,
    ) -> Result<Vec<RevocationEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, jti, org, expires_at, revoked_at FROM revocations \
             WHERE seq > ? AND expires_at > ? ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(reader)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                Ok(RevocationEntry {
                    seq: row.try_get("seq").map_err(map_err)?,
                    jti: row.try_get("jti").map_err(map_err)?,
                    org: row.try_get("org").map_err(map_err)?,
                    expires_at: row.try_get("expires_at").map_err(map_err)?,
                    revoked_at: row.try_get("revoked_at").map_err(map_err)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::storage::{Revocation, RevocationTarget, suite};

    async fn file_store(dir: &tempfile::TempDir) -> SqliteStore {
        let path = dir.path().join("writ.db");
        SqliteStore::open(&format!("sqlite://{}", path.display()), &SqliteConfig::default())
            .await
            .expect("open sqlite file")
    }

    /// Runs one suite case against a fresh SQLite file in a temporary
    /// directory, the way `writ serve` uses it.
    macro_rules! suite_tests {
        ($($case:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let dir = tempfile::tempdir().expect("tempdir");
                let store: Arc<dyn Storage> = Arc::new(file_store(&dir).await);
                suite::$case(store).await;
            }
        )*};
    }

    suite::all_cases!(suite_tests);

    #[tokio::test]
    async fn in_memory_store_passes_a_round_trip() {
        let store: Arc<dyn Storage> =
            Arc::new(SqliteStore::open("sqlite::memory:", &SqliteConfig::default()).await.expect("open"));
        suite::exchange_writes_everything(store.clone()).await;
        suite::replayed_jti_is_refused_and_nothing_else_written(Arc::new(
            SqliteStore::open_in_memory().await.expect("open"),
        ))
        .await;
    }

    #[tokio::test]
    async fn two_in_memory_stores_are_separate() {
        let a = SqliteStore::open_in_memory().await.expect("open");
        let b = SqliteStore::open_in_memory().await.expect("open");
        a.put_policy(suite::new_policy("acme", "v1", None), 1).await.expect("put");
        assert!(b.get_policy("acme").await.expect("get").is_none());
    }

    #[tokio::test]
    async fn data_survives_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        store.put_policy(suite::new_policy("acme", "v1", None), 10).await.expect("put");
        store.record_exchange(suite::exchange("jti-1", "tok-1", 1000)).await.expect("exchange");
        store.close().await;
        drop(store);

        let reopened = file_store(&dir).await;
        let policy = reopened.get_policy("acme").await.expect("get").expect("still there");
        assert_eq!((policy.version, policy.source.as_str()), (1, "v1"));
        assert_eq!(reopened.audit_recent("acme", 10).await.expect("audit").len(), 1);
        assert!(matches!(
            reopened.record_exchange(suite::exchange("jti-1", "tok-2", 1000)).await,
            Err(StorageError::Replay)
        ));
    }

    #[tokio::test]
    async fn file_is_private_wal_and_fully_synchronous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("writ.db")).expect("stat").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&store.writer).await.expect("pragma");
        assert_eq!(journal, "wal");
        // 2 = FULL, on the writer and on readers alike.
        for pool in [&store.writer, &store.reader] {
            let sync: i64 = sqlx::query_scalar("PRAGMA synchronous").fetch_one(pool).await.expect("pragma");
            assert_eq!(sync, 2);
        }
    }

    #[tokio::test]
    async fn plain_path_is_accepted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("plain.db");
        let store =
            SqliteStore::open(path.to_str().expect("utf-8 path"), &SqliteConfig::default()).await.expect("open");
        store.ping().await.expect("ping");
        assert!(path.exists());
    }

    #[tokio::test]
    async fn closed_store_is_unavailable_not_other() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        store.close().await;
        assert!(matches!(store.ping().await, Err(StorageError::Unavailable(_))));
        assert!(matches!(store.record_exchange(suite::exchange("j", "t", 1)).await, Err(StorageError::Unavailable(_))));
    }

    /// The pin cache answers by issuer, kind and name exactly, and starts
    /// over when full.
    #[test]
    fn the_pin_cache_keys_on_issuer_kind_and_name() {
        let cache = PinCache::default();
        let pin = |issuer: &str, kind, name: &str, id: &str| Pin {
            issuer: issuer.to_owned(),
            kind,
            name: name.to_owned(),
            id: id.to_owned(),
            created_at: 1,
        };
        cache.insert(&pin("https://a", PinKind::Repository, "acme/web", "1"));
        cache.insert(&pin("https://a", PinKind::Owner, "acme", "2"));
        cache.insert(&pin("https://b", PinKind::Repository, "acme/web", "3"));
        cache.insert(&pin("https://b", PinKind::Repository, "acme/web", "3"));
        let id = |issuer, kind, name| cache.get(issuer, kind, name).map(|p| p.id);
        assert_eq!(id("https://a", PinKind::Repository, "acme/web").as_deref(), Some("1"));
        assert_eq!(id("https://a", PinKind::Owner, "acme").as_deref(), Some("2"));
        assert_eq!(id("https://b", PinKind::Repository, "acme/web").as_deref(), Some("3"));
        assert_eq!(id("https://a", PinKind::Owner, "acme/web"), None);
        assert_eq!(id("https://a", PinKind::Repository, "acme/api"), None);
        assert_eq!(id("https://c", PinKind::Repository, "acme/web"), None);
        assert_eq!(cache.pins.read().expect("lock").len, 3, "a pin cached twice counts once");
        for i in 0..PIN_CACHE_CAPACITY {
            cache.insert(&pin("https://a", PinKind::Repository, &format!("acme/{i}"), "x"));
        }
        assert!(cache.pins.read().expect("lock").len <= PIN_CACHE_CAPACITY);
        assert_eq!(id("https://b", PinKind::Repository, "acme/web"), None, "a full cache started over");
    }

    /// Concurrent exchanges without new pins take the bulk path of group
    /// commit; each token presented twice is granted exactly once, even
    /// when both presentations land in one batch, and a replay leaves no
    /// audit record or issued token behind.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_grants_each_token_once_and_writes_only_grants() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(file_store(&dir).await);
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let store = store.clone();
                let mut rec = suite::exchange(&format!("jti-{}", i % 100), &format!("tok-{i}"), 1_000);
                rec.new_pins.clear();
                tokio::spawn(async move { store.record_exchange(rec).await })
            })
            .collect();
        let (mut granted, mut replays) = (0, 0);
        for task in tasks {
            match task.await.expect("task") {
                Ok(()) => granted += 1,
                Err(StorageError::Replay) => replays += 1,
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!((granted, replays), (100, 100));
        for sql in
            ["SELECT COUNT(*) FROM used_jtis", "SELECT COUNT(*) FROM audit", "SELECT COUNT(*) FROM issued_tokens"]
        {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(&store.reader).await.expect("count");
            assert_eq!(n, 100, "{sql}");
        }
    }

    /// A database file at `path` migrated up to schema `version`, as an
    /// older writ left it.
    async fn file_at_version(path: &std::path::Path, version: i64) -> SqlitePool {
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .expect("url")
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await.expect("open the file");
        MIGRATOR.run_to(version, &pool).await.expect("the older schema");
        pool
    }

    /// Schema v5 re-keys replay records by arrival (see its migration): the
    /// records of a version 4 file come along, are still refused as
    /// replays, and new ones are numbered after them.
    #[tokio::test]
    async fn replay_records_of_schema_v4_survive_the_move_to_arrival_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        {
            let pool = file_at_version(&path, 4).await;
            for (jti, expires_at) in [("old-2", 5_000), ("old-1", 5_000), ("old-0", 4_000)] {
                sqlx::query("INSERT INTO used_jtis (issuer, jti, expires_at) VALUES (?, ?, ?)")
                    .bind(suite::ISSUER)
                    .bind(jti)
                    .bind(expires_at)
                    .execute(&pool)
                    .await
                    .expect("v4 record");
            }
            pool.close().await;
        }
        let store = file_store(&dir).await;
        // Through versions 5 and 7: numbered in arrival order within their
        // expiry second.
        let rows: Vec<(String, i64, i64)> =
            sqlx::query_as("SELECT jti, key / 16777216, key % 16777216 FROM used_jtis ORDER BY key")
                .fetch_all(&store.reader)
                .await
                .expect("v7 records");
        assert_eq!(
            rows,
            [("old-0".to_owned(), 4_000, 0), ("old-1".to_owned(), 5_000, 0), ("old-2".to_owned(), 5_000, 1)]
        );
        assert!(matches!(
            store.record_exchange(suite::exchange("old-1", "tok-1", 1_000)).await,
            Err(StorageError::Replay)
        ));
        let mut fresh = suite::exchange("new-1", "tok-2", 4_940);
        fresh.new_pins.clear();
        store.record_exchange(fresh).await.expect("a new jti in an old record's second");
        let key: i64 = sqlx::query_scalar("SELECT key FROM used_jtis WHERE jti = 'new-1'")
            .fetch_one(&store.reader)
            .await
            .expect("new record");
        assert_eq!((key / 16_777_216, key % 16_777_216), (5_000, 2), "after the second's records");
    }

    /// Schema v6: a token its grant's audit row holds is written once, as
    /// that row; one the row does not hold still gets its own.
    #[tokio::test]
    async fn a_token_its_audit_row_holds_is_written_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        let held = suite::exchange_as_made("subject-1", "t-1", 2_000);
        store.record_exchange(held.clone()).await.expect("exchange");
        let mut other = suite::exchange_as_made("subject-2", "t-2", 2_000);
        other.issued.run_id = Some("43".into());
        store.record_exchange(other.clone()).await.expect("exchange");
        let rows: Vec<String> =
            sqlx::query_scalar("SELECT jti FROM issued_tokens").fetch_all(&store.reader).await.expect("issued tokens");
        assert_eq!(rows, [other.issued.jti.clone()]);
        for rec in [held, other] {
            assert_eq!(store.get_issued_token("acme", &rec.issued.jti).await.expect("issued"), Some(rec.issued));
        }
        // Revocation finds the org's unexpired tokens by the audit key from
        // the first id a live token can have (schema v7), not by reading
        // the org's whole audit log.
        let plan: Vec<String> = sqlx::query(sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {}", admin::REVOKE_SQL)))
            .bind("acme")
            .bind(1_000)
            .bind("repository")
            .bind("acme/web")
            .bind("test")
            .bind(None::<String>)
            .fetch_all(&store.reader)
            .await
            .expect("plan")
            .iter()
            .map(|row| row.get::<String, _>("detail"))
            .collect();
        assert!(plan.iter().any(|step| step.contains("SEARCH audit USING PRIMARY KEY (org=? AND id>?)")), "{plan:#?}");
        assert!(!plan.iter().any(|step| step.starts_with("SCAN audit")), "{plan:#?}");
        assert_eq!(revoke_repository(&store, "acme/web").await, 2);
    }

    /// Revokes org acme's tokens from `repository` at time 1,000.
    async fn revoke_repository(store: &SqliteStore, repository: &str) -> u64 {
        let target = RevocationTarget::Repository(repository.into());
        let revocation = Revocation { org: "acme".into(), target, reason: "test".into(), revoked_by: None, now: 1_000 };
        store.revoke(&revocation).await.expect("revoke")
    }

    /// Schema v6 keeps an exchange's token as its grant's audit row; the
    /// tokens a version 5 file holds in `issued_tokens` stay there and are
    /// still found and revoked.
    #[tokio::test]
    async fn tokens_issued_under_schema_v5_stay_revocable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        {
            let pool = file_at_version(&path, 5).await;
            // What version 5 wrote for a grant: the audit row under its own
            // id, and the token again in issued_tokens.
            sqlx::query(
                "INSERT INTO audit (id, time, request_id, org, outcome, rule, issuer, subject, repository, run_id, \
                 requested_permissions, requested_apps, requested_machines, granted_permissions, token_jti, \
                 token_expires_at) VALUES ('0190a0b0-0000-7000-8000-000000000001', 100, 'req-1', 'acme', \
                 'granted', 'deploy-web', 'github', 'repo:acme/web', 'acme/web', '1', '[]', '[]', '[]', \
                 '[\"deploy\"]', '0190a0b0-0000-7000-8000-000000000002', 2000)",
            )
            .execute(&pool)
            .await
            .expect("v5 audit");
            sqlx::query(
                "INSERT INTO issued_tokens (jti, org, subject, repository, run_id, rule, issued_at, expires_at) \
                 VALUES ('0190a0b0-0000-7000-8000-000000000002', 'acme', 'github:repo:acme/web', 'acme/web', \
                 '1', 'deploy-web', 100, 2000)",
            )
            .execute(&pool)
            .await
            .expect("v5 token");
            pool.close().await;
        }
        let store = file_store(&dir).await;
        let old = "0190a0b0-0000-7000-8000-000000000002";
        let found = store.get_issued_token("acme", old).await.expect("issued").expect("the v5 token");
        assert_eq!((found.subject.as_str(), found.issued_at, found.expires_at), ("github:repo:acme/web", 100, 2_000));
        assert_eq!(store.get_issued_token("beta", old).await.expect("issued"), None);

        store.record_exchange(suite::exchange_as_made("subject-1", "new", 2_000)).await.expect("exchange");
        assert_eq!(revoke_repository(&store, "ACME/web").await, 2, "the version 5 token and the new one");
        assert!(store.is_revoked(old).await.expect("is_revoked"));
        assert!(store.is_revoked(&suite::held("new")).await.expect("is_revoked"));
    }

    /// Revokes org acme's tokens from repository acme/web at `now`.
    async fn revoke_at(store: &SqliteStore, now: i64) -> u64 {
        let target = RevocationTarget::Repository("acme/web".into());
        let revocation = Revocation { org: "acme".into(), target, reason: "test".into(), revoked_by: None, now };
        store.revoke(&revocation).await.expect("revoke")
    }

    /// An exchange's record whose token (its grant's audit id, as the
    /// exchange makes it) carries the time `secs` and expires at `exp`.
    fn held_at(subject_jti: &str, secs: u64, exp: i64) -> ExchangeRecord {
        use uuid::{NoContext, Timestamp, Uuid};
        let mut rec = suite::exchange_as_made(subject_jti, "unused", exp);
        let id = Uuid::new_v7(Timestamp::from_unix(NoContext, secs, 250_000_000));
        rec.audit.id = id;
        rec.audit.token_jti = Some(id.hyphenated().to_string());
        rec.issued.jti = id.hyphenated().to_string();
        assert!(rec.audit_holds_issued());
        rec
    }

    async fn token_span(store: &SqliteStore) -> i64 {
        sqlx::query_scalar("SELECT max_secs FROM token_span").fetch_one(&store.reader).await.expect("token_span")
    }

    /// Schema v7: the exchange writer records how long after its id's time
    /// a held token can expire, and revocation, which reads the audit log
    /// from the first id a live token can have, finds every live token,
    /// the long-lived ones too.
    #[tokio::test]
    async fn revocation_finds_long_lived_tokens_by_the_recorded_span() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        assert_eq!(token_span(&store).await, 0);
        store.record_exchange(held_at("subject-1", 10_000, 17_200)).await.expect("exchange");
        assert_eq!(token_span(&store).await, 7_200);
        store.record_exchange(held_at("subject-2", 20_000, 20_600)).await.expect("exchange");
        store.record_exchange(held_at("subject-3", 1_000, 1_500)).await.expect("exchange");
        assert_eq!(token_span(&store).await, 7_200, "only a longer span raises it");
        assert_eq!(revoke_at(&store, 15_000).await, 2, "the 7,200 s token from 10,000 and the one from 20,000");
        assert_eq!(revoke_at(&store, 17_300).await, 0, "the rest are revoked or expired");
        // A span lives across restarts: the writer reloads it.
        store.close().await;
        drop(store);
        let store = file_store(&dir).await;
        store.record_exchange(held_at("subject-4", 30_000, 30_060)).await.expect("exchange");
        assert_eq!(token_span(&store).await, 7_200);
        store.record_exchange(held_at("subject-5", 30_000, 40_000)).await.expect("exchange");
        assert_eq!(token_span(&store).await, 10_000);
        assert_eq!(revoke_at(&store, 39_000).await, 1);
    }

    /// A token_span row deleted by hand is recomputed from the audit log
    /// when the writer next loads, so a shorter span recorded after it
    /// cannot hide the longer-lived tokens issued before.
    #[tokio::test]
    async fn a_lost_token_span_is_recomputed_from_the_held_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        store.record_exchange(held_at("subject-1", 10_000, 17_200)).await.expect("exchange");
        store.record_exchange(held_at("subject-2", 11_000, 11_600)).await.expect("exchange");
        sqlx::query("DELETE FROM token_span").execute(&store.reader).await.expect("delete the row");
        store.close().await;
        drop(store);
        let store = file_store(&dir).await;
        store.record_exchange(held_at("subject-3", 20_000, 20_060)).await.expect("exchange");
        assert_eq!(token_span(&store).await, 7_200, "recomputed, not started again from 60");
        assert_eq!(revoke_at(&store, 15_000).await, 2, "the 7,200 s token from 10,000 and the one from 20,000");
    }

    /// Version 7 replaces the index audit_tokens by token_span: its value
    /// starts at the longest span among the tokens a version 6 file holds
    /// (read from the ids' text by the migration), and those tokens stay
    /// revocable.
    #[tokio::test]
    async fn schema_v7_starts_the_token_span_from_the_held_tokens() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let ids: Vec<String> = [(5_000u64, 5_600i64), (9_000, 12_600), (9_500, 9_800)]
            .into_iter()
            .map(|(secs, _)| {
                let t = uuid::Timestamp::from_unix(uuid::NoContext, secs, 999_000_000);
                uuid::Uuid::new_v7(t).hyphenated().to_string()
            })
            .collect();
        {
            let pool = file_at_version(&path, 6).await;
            for (id, exp) in ids.iter().zip([5_600, 12_600, 9_800]) {
                sqlx::query(
                    "INSERT INTO audit (id, time, request_id, org, outcome, rule, issuer, subject, repository, \
                     run_id, requested_permissions, requested_apps, requested_machines, granted_permissions, \
                     token_jti, token_expires_at) VALUES (?1, 1, 'req', 'acme', 'granted', 'deploy-web', 'github', \
                     'repo:acme/web', 'acme/web', '1', '[]', '[]', '[]', '[\"deploy\"]', ?1, ?2)",
                )
                .bind(id)
                .bind(exp)
                .execute(&pool)
                .await
                .expect("v6 held token");
            }
            // A denial, and a grant whose token is elsewhere: no span.
            sqlx::query(
                "INSERT INTO audit (id, time, request_id, org, outcome, requested_permissions, requested_apps, \
                 requested_machines, granted_permissions, token_jti, token_expires_at) VALUES \
                 ('00000000-0001-7000-8000-000000000000', 1, 'req', 'acme', 'denied', '[]', '[]', '[]', '[]', \
                 NULL, NULL), ('00000000-0002-7000-8000-000000000000', 1, 'req', 'acme', 'granted', '[]', '[]', \
                 '[]', '[]', 'elsewhere', 99999)",
            )
            .execute(&pool)
            .await
            .expect("v6 rows without a held token");
            pool.close().await;
        }
        let store = file_store(&dir).await;
        assert_eq!(token_span(&store).await, 3_600, "12,600 - 9,000");
        let index: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_schema WHERE name = 'audit_tokens'")
            .fetch_one(&store.reader)
            .await
            .expect("schema");
        assert_eq!(index, 0);
        assert_eq!(revoke_at(&store, 9_700).await, 2, "the tokens of 9,000 and 9,500");
    }

    #[tokio::test]
    async fn purge_deletes_every_expired_record_across_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = file_store(&dir).await;
        let expired = 2 * PURGE_CHUNK + 7;
        sqlx::query(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) \
             INSERT INTO used_jtis (key, issuer, jti) SELECT 100 * 16777216 + i, 'iss', 'old-' || i FROM n",
        )
        .bind(expired)
        .execute(&store.writer)
        .await
        .expect("insert expired");
        store.record_exchange(suite::exchange("fresh", "tok-1", 1_000)).await.expect("exchange");

        assert_eq!(store.purge_expired(500).await.expect("purge"), expired as u64);
        let left: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM used_jtis").fetch_one(&store.reader).await.expect("count");
        assert_eq!(left, 1, "only the unexpired record stays");
        assert!(matches!(
            store.record_exchange(suite::exchange("fresh", "tok-2", 1_000)).await,
            Err(StorageError::Replay)
        ));
    }

    #[tokio::test]
    async fn missing_directory_is_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("no-such-dir").join("writ.db");
        let err = SqliteStore::open(path.to_str().expect("utf-8"), &SqliteConfig::default())
            .await
            .expect_err("cannot create a file in a missing directory");
        assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    }
}
