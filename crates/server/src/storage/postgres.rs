//! The PostgreSQL backend of [`Storage`], for clusters: several `writ
//! serve` replicas behind a load balancer sharing one database.
//!
//! What keeps the replicas honest, and where:
//!
//! - **A `jti` is accepted once, cluster-wide.** `used_jtis` has a primary
//!   key; a granted exchange inserts the `jti`, the audit record and the
//!   issued token in ONE statement (data-modifying CTEs), or one
//!   transaction when it pins ids too. Two replicas racing on one token
//!   serialize on the key; the loser gets a unique violation on
//!   `used_jtis_pkey`, which is [`StorageError::Replay`], and nothing of
//!   its exchange is written.
//! - **The revocation feed never skips.** Identity values are handed out
//!   at insert, not at commit, so two concurrent revocations could become
//!   visible out of order. Every revocation takes the exclusive
//!   transaction advisory lock [`REVOCATION_LOCK`] before it assigns any
//!   `seq` and holds it through commit, so `seq`s become visible in order.
//!   Revocations are rare admin actions; serializing them costs nothing
//!   that matters.
//! - **A narrowing never outlives its parent's revocation.** A narrowing
//!   holds the same lock in shared mode while it checks the parent and
//!   inserts the child: a revocation waits for in-flight narrowings (and
//!   then its walk sees their children), and a narrowing that starts
//!   during a revocation waits for it (and then sees the parent revoked).
//! - **Policy versions are conditional per org.** A policy write takes a
//!   per-org advisory lock for its read-check-insert.
//! - **Other replicas learn of changes at once.** Writes of policies and
//!   signing keys `NOTIFY` [`CHANNEL`] in their own transaction (delivered
//!   only on commit); [`PgStore::subscribe`] turns those into
//!   [`Change`]s, and [`Change::Resync`] whenever notifications may have
//!   been missed. `crate::replicas` acts on them.
//! - **Signing keys are encrypted at rest** under the operator's
//!   [`KeyEncryptionKey`] (see `kek.rs` for why).
//! - **Fail closed.** Connection loss, shutdown, resource exhaustion and
//!   serialization conflicts are [`StorageError::Unavailable`]: the server
//!   answers 503 with `Retry-After` and issues nothing. The pool reconnects
//!   by itself when PostgreSQL returns.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions, PgRow};
use sqlx::types::Json;
use tokio::sync::broadcast;

use super::kek::KeyEncryptionKey;
use super::{
    AuditQuery, AuditRecord, Change, ExchangeRecord, IssuedToken, ManagedBy, NarrowRecord, NewOrg, NewPolicy,
    OrgRecord, Outcome, Pin, PinKind, PolicyFormat, Revocation, RevocationEntry, RevocationTarget, Storage,
    StorageError, StoredPolicy, StoredSigningKey,
};

/// The `LISTEN`/`NOTIFY` channel of writ's change notifications. Payloads:
/// `policy:<org>` and `keys`.
pub const CHANNEL: &str = "writ_changes";

/// The advisory lock (two-key form: class, object) that orders
/// revocations (exclusive) against each other and against narrowings
/// (shared). See the module docs.
pub const REVOCATION_LOCK: (i32, i32) = (0x7772_6974, 1);

/// The class of per-org policy locks (object: `hashtext(org)`); a hash
/// collision only makes two orgs' writes wait for each other.
pub const POLICY_LOCK_CLASS: i32 = 0x7772_6974 + 1;

/// How long the change listener waits before reconnecting after it lost
/// PostgreSQL.
pub const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// Settings of the PostgreSQL backend; `[storage]` in the config.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// Most connections this replica opens (the change listener uses one
    /// more). The database must allow replicas × (this + 1), plus room for
    /// maintenance.
    pub max_connections: u32,
    /// How long a request waits for a connection before failing as
    /// unavailable (503). While PostgreSQL is down, every request that
    /// needs it takes this long to fail, so keep it short.
    pub acquire_timeout: Duration,
    /// Seals signing keys at rest.
    pub key_encryption_key: KeyEncryptionKey,
}

/// PostgreSQL-backed [`Storage`]. Cloning shares the pool.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
    kek: KeyEncryptionKey,
    changes: broadcast::Sender<Change>,
    listening: Arc<AtomicBool>,
}

/// The schema migrations, embedded at build time.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

impl PgStore {
    /// Connects to the database at `url` (`postgres://…`; TLS per its
    /// `sslmode`) and brings its schema up to date. Fails when the database
    /// cannot be reached: a replica that cannot see its database must not
    /// report ready.
    pub async fn open(url: &str, config: &PgConfig) -> Result<Self, StorageError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|e| StorageError::other(format!("invalid postgres URL: {e}")))?
            .application_name("writ");
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections.max(1))
            .min_connections(0)
            .acquire_timeout(config.acquire_timeout)
            // Broken connections are found when used (that request answers
            // 503) and when released (sqlx pings every returned
            // connection); a ping before every use would cost one round
            // trip per query on the exchange path.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(map_err)?;
        // sqlx holds an advisory lock while migrating, so replicas that
        // start together apply each migration once.
        MIGRATOR.run(&pool).await.map_err(|e| match e {
            sqlx::migrate::MigrateError::Execute(e) => map_err(e),
            other => StorageError::other(other),
        })?;
        let (changes, _) = broadcast::channel(256);
        Ok(PgStore {
            pool,
            kek: config.key_encryption_key.clone(),
            changes,
            listening: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Closes the pool, waiting for in-flight statements.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// The connection pool, for tests that inspect the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

// ---- errors ------------------------------------------------------------------

/// Classifies a driver error: conditions that pass when PostgreSQL is back
/// (or the conflict is retried) become [`StorageError::Unavailable`], which
/// the server answers with 503 and `Retry-After`.
fn map_err(e: sqlx::Error) -> StorageError {
    let transient = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_sqlstate(&code)),
        _ => false,
    };
    if transient { StorageError::Unavailable(Box::new(e)) } else { StorageError::Other(Box::new(e)) }
}

/// SQLSTATEs that mean "not now" rather than "never".
fn is_transient_sqlstate(code: &str) -> bool {
    // 08: connection exception; 53: insufficient resources (disk full,
    // out of memory, too many connections); 57P: admin or crash shutdown,
    // cannot connect now; 58: system (I/O) error.
    ["08", "53", "57P", "58"].iter().any(|class| code.starts_with(class))
        // serialization failure, deadlock, lock not available, query
        // cancelled (statement timeout), read-only transaction (connected
        // to a standby during a failover).
        || matches!(code, "40001" | "40P01" | "55P03" | "57014" | "25006")
}

fn constraint_violated(e: &sqlx::Error) -> Option<&str> {
    match e {
        sqlx::Error::Database(db) if db.is_unique_violation() => db.constraint(),
        _ => None,
    }
}

/// A granted exchange's errors: a unique violation of `used_jtis` is a
/// replay; anything else is classified by [`map_err`].
fn exchange_err(e: sqlx::Error) -> StorageError {
    if constraint_violated(&e) == Some("used_jtis_pkey") { StorageError::Replay } else { map_err(e) }
}

fn corrupt(what: &str, value: &str) -> StorageError {
    StorageError::other(format!("unexpected {what} {value:?} in database"))
}

// ---- rows ----------------------------------------------------------------------

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

/// The columns of `policies`, in [`policy_from_row`] order. A macro so
/// queries stay `&'static str`.
macro_rules! policy_columns {
    () => {
        "org, version, source, format, managed_by, author, created_at"
    };
}

fn policy_from_row(row: &PgRow) -> Result<StoredPolicy, StorageError> {
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

fn pin_from_row(row: &PgRow) -> Result<Pin, StorageError> {
    let kind: String = row.try_get("kind").map_err(map_err)?;
    Ok(Pin {
        issuer: row.try_get("issuer").map_err(map_err)?,
        kind: super::parse_pin_kind(&kind).ok_or_else(|| corrupt("pin kind", &kind))?,
        name: row.try_get("name").map_err(map_err)?,
        id: row.try_get("id").map_err(map_err)?,
        created_at: row.try_get("created_at").map_err(map_err)?,
    })
}

fn audit_from_row(row: &PgRow) -> Result<AuditRecord, StorageError> {
    let get_str = |col: &str| row.try_get::<Option<String>, _>(col).map_err(map_err);
    let list = |col: &str| row.try_get::<Json<Vec<String>>, _>(col).map(|j| j.0).map_err(map_err);
    let opt_list =
        |col: &str| row.try_get::<Option<Json<Vec<String>>>, _>(col).map(|j| j.map(|j| j.0)).map_err(map_err);
    let outcome: String = row.try_get("outcome").map_err(map_err)?;
    Ok(AuditRecord {
        id: row.try_get("id").map_err(map_err)?,
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
        explanation: row
            .try_get::<Option<Json<serde_json::Value>>, _>("explanation")
            .map(|j| j.map(|j| j.0))
            .map_err(map_err)?,
        client_addr: get_str("client_addr")?,
    })
}

/// Inserts one audit record from parameters `$1`…`$27`, in
/// [`bind_audit`] order. A macro so statements that write more than the
/// audit record can be built around it at compile time.
macro_rules! insert_audit_sql {
    () => {
        "INSERT INTO audit (id, time, request_id, org, outcome, error, rule, issuer, subject, \
         subject_jti, repository, repository_id, ref, environment, workflow_ref, run_id, actor, \
         requested_permissions, requested_apps, requested_machines, granted_permissions, \
         granted_apps, granted_machines, token_jti, token_expires_at, explanation, client_addr) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, $19, $20, $21, $22, $23, $24, $25, $26, $27)"
    };
}

/// Inserts one issued token from `$28`…`$36` (the last one the parent).
macro_rules! insert_issued_sql {
    () => {
        "INSERT INTO issued_tokens (jti, org, subject, repository, run_id, rule, issued_at, \
         expires_at, parent_jti) VALUES ($28, $29, $30, $31, $32, $33, $34, $35, $36)"
    };
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// Binds `$1`…`$27`: one audit record.
fn bind_audit<'q>(q: PgQuery<'q>, a: &'q AuditRecord) -> PgQuery<'q> {
    q.bind(a.id)
        .bind(a.time)
        .bind(&a.request_id)
        .bind(&a.org)
        .bind(a.outcome.as_str())
        .bind(&a.error)
        .bind(&a.rule)
        .bind(&a.issuer)
        .bind(&a.subject)
        .bind(&a.subject_jti)
        .bind(&a.repository)
        .bind(&a.repository_id)
        .bind(&a.ref_)
        .bind(&a.environment)
        .bind(&a.workflow_ref)
        .bind(&a.run_id)
        .bind(&a.actor)
        .bind(Json(&a.requested_permissions))
        .bind(Json(&a.requested_apps))
        .bind(Json(&a.requested_machines))
        .bind(Json(&a.granted_permissions))
        .bind(a.granted_apps.as_ref().map(Json))
        .bind(a.granted_machines.as_ref().map(Json))
        .bind(&a.token_jti)
        .bind(a.token_expires_at)
        .bind(a.explanation.as_ref().map(Json))
        .bind(&a.client_addr)
}

/// Binds `$28`…`$36`: one issued token and its parent.
fn bind_issued<'q>(q: PgQuery<'q>, t: &'q IssuedToken, parent: Option<&'q str>) -> PgQuery<'q> {
    q.bind(&t.jti)
        .bind(&t.org)
        .bind(&t.subject)
        .bind(&t.repository)
        .bind(&t.run_id)
        .bind(&t.rule)
        .bind(t.issued_at)
        .bind(t.expires_at)
        .bind(parent)
}

/// The issued token and its audit record, and with `used_jtis` (`$37`…`$39`)
/// the consumed subject token: one statement, so one round trip and
/// atomic without an explicit transaction.
const INSERT_GRANT: &str = concat!(
    "WITH jti AS (INSERT INTO used_jtis (issuer, jti, expires_at) VALUES ($37, $38, $39)), ",
    "issued AS (",
    insert_issued_sql!(),
    ") ",
    insert_audit_sql!()
);

/// The issued token and its audit record, without a `jti` (narrowings, and
/// exchanges whose `jti` was inserted first).
const INSERT_ISSUED_AND_AUDIT: &str = concat!("WITH issued AS (", insert_issued_sql!(), ") ", insert_audit_sql!());

async fn insert_pin(conn: &mut sqlx::PgConnection, pin: &Pin) -> Result<(), StorageError> {
    let name = pin.name.to_lowercase();
    // ON CONFLICT waits for a concurrent insert of the same name to commit
    // or roll back; the SELECT after it (a new snapshot) then sees the
    // winner's id.
    let inserted = sqlx::query(
        "INSERT INTO pins (issuer, kind, name, id, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (issuer, kind, name) DO NOTHING",
    )
    .bind(&pin.issuer)
    .bind(pin.kind.as_str())
    .bind(&name)
    .bind(&pin.id)
    .bind(pin.created_at)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?
    .rows_affected();
    if inserted == 1 {
        return Ok(());
    }
    let pinned_id: String = sqlx::query_scalar("SELECT id FROM pins WHERE issuer = $1 AND kind = $2 AND name = $3")
        .bind(&pin.issuer)
        .bind(pin.kind.as_str())
        .bind(&name)
        .fetch_one(&mut *conn)
        .await
        .map_err(map_err)?;
    if pinned_id == pin.id {
        Ok(())
    } else {
        Err(StorageError::PinConflict { kind: pin.kind, name, pinned_id, presented_id: pin.id.clone() })
    }
}

/// The revocation statement for one kind of target (`$3` is the target's
/// value): the selected unexpired tokens of org `$1`, then every token
/// narrowed from them, transitively (narrowing keeps the org). Inserted in
/// issue order so the feed lists them that way.
macro_rules! revoke_sql {
    ($selects:literal) => {
        concat!(
            "WITH RECURSIVE targets(jti) AS ( \
                 SELECT jti FROM issued_tokens WHERE org = $1 AND expires_at > $2 AND ",
            $selects,
            " UNION \
                 SELECT child.jti FROM issued_tokens AS child JOIN targets ON child.parent_jti = targets.jti \
             ) \
             INSERT INTO revocations (jti, org, expires_at, revoked_at, reason, revoked_by) \
             SELECT t.jti, t.org, t.expires_at, $2, $4, $5 FROM issued_tokens AS t \
             WHERE t.jti IN (SELECT jti FROM targets) AND t.org = $1 AND t.expires_at > $2 \
             ORDER BY t.issued_at, t.jti \
             ON CONFLICT (jti) DO NOTHING"
        )
    };
}

#[async_trait::async_trait]
impl Storage for PgStore {
    async fn ping(&self) -> Result<(), StorageError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    async fn get_policy(&self, org: &str) -> Result<Option<StoredPolicy>, StorageError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            policy_columns!(),
            " FROM policies WHERE org = $1 ORDER BY version DESC LIMIT 1"
        ))
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(policy_from_row).transpose()
    }

    async fn list_policies(&self) -> Result<Vec<StoredPolicy>, StorageError> {
        let rows = sqlx::query(concat!(
            "SELECT DISTINCT ON (org) ",
            policy_columns!(),
            " FROM policies ORDER BY org, version DESC"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn put_policy(&self, new: NewPolicy, now: i64) -> Result<StoredPolicy, StorageError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_org(&mut tx, &new.org).await?;
        let current: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM policies WHERE org = $1")
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
        insert_policy(&mut tx, &stored).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(stored)
    }

    async fn policy_history(&self, org: &str) -> Result<Vec<StoredPolicy>, StorageError> {
        let rows = sqlx::query(concat!("SELECT ", policy_columns!(), " FROM policies WHERE org = $1 ORDER BY version"))
            .bind(org)
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter().map(policy_from_row).collect()
    }

    async fn get_pins(&self, issuer: &str, keys: &[(PinKind, String)]) -> Result<Vec<Pin>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let kinds: Vec<&str> = keys.iter().map(|(k, _)| k.as_str()).collect();
        let names: Vec<String> = keys.iter().map(|(_, n)| n.to_lowercase()).collect();
        // One round trip for every key, answered in the order asked.
        let rows = sqlx::query(
            "SELECT p.issuer, p.kind, p.name, p.id, p.created_at \
             FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS k(kind, name, n) \
             JOIN pins AS p ON p.issuer = $1 AND p.kind = k.kind AND p.name = k.name \
             ORDER BY k.n",
        )
        .bind(issuer)
        .bind(&kinds)
        .bind(&names)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(pin_from_row).collect()
    }

    async fn record_exchange(&self, rec: ExchangeRecord) -> Result<(), StorageError> {
        let jti = &rec.used_jti;
        if rec.new_pins.is_empty() {
            // The common case: one statement, committed on its own.
            bind_issued(bind_audit(sqlx::query(INSERT_GRANT), &rec.audit), &rec.issued, None)
                .bind(&jti.issuer)
                .bind(&jti.jti)
                .bind(jti.expires_at)
                .execute(&self.pool)
                .await
                .map_err(exchange_err)?;
            return Ok(());
        }
        // First use of a name: the jti first (a replay is a replay, whatever
        // else it carries), then the pins, then the rest. Any early return
        // drops `tx`, which rolls back.
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("INSERT INTO used_jtis (issuer, jti, expires_at) VALUES ($1, $2, $3)")
            .bind(&jti.issuer)
            .bind(&jti.jti)
            .bind(jti.expires_at)
            .execute(&mut *tx)
            .await
            .map_err(exchange_err)?;
        for pin in &rec.new_pins {
            insert_pin(&mut tx, pin).await?;
        }
        bind_issued(bind_audit(sqlx::query(INSERT_ISSUED_AND_AUDIT), &rec.audit), &rec.issued, None)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn get_issued_token(&self, org: &str, jti: &str) -> Result<Option<IssuedToken>, StorageError> {
        let row = sqlx::query(
            "SELECT jti, org, subject, repository, run_id, rule, issued_at, expires_at \
             FROM issued_tokens WHERE jti = $1 AND org = $2",
        )
        .bind(jti)
        .bind(org)
        .fetch_optional(&self.pool)
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

    async fn record_denial(&self, audit: AuditRecord) -> Result<(), StorageError> {
        bind_audit(sqlx::query(insert_audit_sql!()), &audit).execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StorageError> {
        // Strictly before `now`: `expires_at` already is exp + leeway.
        let done = sqlx::query("DELETE FROM used_jtis WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn signing_keys(&self) -> Result<Vec<StoredSigningKey>, StorageError> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, private_key_sealed, kek_id, public_key, created_at, activates_at \
             FROM signing_keys ORDER BY activates_at, kid",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|row| {
                let kid: String = row.try_get("kid").map_err(map_err)?;
                let kek_id: String = row.try_get("kek_id").map_err(map_err)?;
                if kek_id != self.kek.id() {
                    return Err(StorageError::other(format!(
                        "signing key {kid} is sealed under key-encryption key {kek_id}, but this server has {}: \
                         every replica needs the same [storage] key_encryption_key_file",
                        self.kek.id()
                    )));
                }
                let sealed: Vec<u8> = row.try_get("private_key_sealed").map_err(map_err)?;
                Ok(StoredSigningKey {
                    private_pkcs8: self.kek.open(&kid, &sealed)?,
                    kid,
                    algorithm: row.try_get("algorithm").map_err(map_err)?,
                    public_key: row.try_get("public_key").map_err(map_err)?,
                    created_at: row.try_get("created_at").map_err(map_err)?,
                    activates_at: row.try_get("activates_at").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn insert_signing_key(&self, key: StoredSigningKey) -> Result<(), StorageError> {
        let sealed = self.kek.seal(&key.kid, key.private_pkcs8.expose_secret())?;
        // Insert and notify in one statement: other replicas hear of the
        // key exactly when it is committed.
        sqlx::query(
            "WITH k AS (INSERT INTO signing_keys (kid, algorithm, private_key_sealed, kek_id, public_key, \
             created_at, activates_at) VALUES ($1, $2, $3, $4, $5, $6, $7)) \
             SELECT pg_notify($8, 'keys')",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(&sealed)
        .bind(self.kek.id())
        .bind(&key.public_key)
        .bind(key.created_at)
        .bind(key.activates_at)
        .bind(CHANNEL)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn audit_recent(&self, org: &str, limit: u32) -> Result<Vec<AuditRecord>, StorageError> {
        let rows = sqlx::query("SELECT * FROM audit WHERE org = $1 ORDER BY id DESC LIMIT $2")
            .bind(org)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
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
        if let Some(new) = &first_policy
            && new.org != org.org
        {
            return Err(StorageError::other(format!("first policy is for org {:?}, not {:?}", new.org, org.org)));
        }
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        lock_org(&mut tx, &org.org).await?;
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orgs WHERE org = $1) OR EXISTS (SELECT 1 FROM policies WHERE org = $1)",
        )
        .bind(&org.org)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        if exists {
            return Err(StorageError::AlreadyExists);
        }
        sqlx::query("INSERT INTO orgs (org, created_at, created_by) VALUES ($1, $2, $3)")
            .bind(&org.org)
            .bind(now)
            .bind(&org.created_by)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let policy = match first_policy {
            None => None,
            Some(new) => {
                let stored = StoredPolicy {
                    org: new.org,
                    version: 1,
                    source: new.source,
                    format: new.format,
                    managed_by: new.managed_by,
                    author: new.author,
                    created_at: now,
                };
                insert_policy(&mut tx, &stored).await?;
                Some(stored)
            }
        };
        tx.commit().await.map_err(map_err)?;
        Ok((OrgRecord { org: org.org, created_at: now, created_by: org.created_by }, policy))
    }

    async fn org_exists(&self, org: &str) -> Result<bool, StorageError> {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM orgs WHERE org = $1) OR EXISTS (SELECT 1 FROM policies WHERE org = $1)",
        )
        .bind(org)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(exists)
    }

    async fn query_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StorageError> {
        // One static statement: every filter is "unset or holds". The
        // (org, id) index serves the order and the cursor.
        let rows = sqlx::query(
            "SELECT * FROM audit WHERE org = $1 \
             AND ($2::bigint IS NULL OR time >= $2) \
             AND ($3::bigint IS NULL OR time < $3) \
             AND ($4::text IS NULL OR lower(repository) = lower($4)) \
             AND ($5::text IS NULL OR outcome = $5) \
             AND ($6::text IS NULL OR rule = $6) \
             AND ($7::text IS NULL \
                  OR granted_permissions @> jsonb_build_array($7::text) \
                  OR requested_permissions @> jsonb_build_array($7::text)) \
             AND ($8::uuid IS NULL OR id < $8) \
             ORDER BY id DESC LIMIT $9",
        )
        .bind(&q.org)
        .bind(q.from)
        .bind(q.to)
        .bind(&q.repository)
        .bind(q.outcome.map(|o| o.as_str()))
        .bind(&q.rule)
        .bind(&q.permission)
        .bind(q.before)
        .bind(i64::from(q.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn record_narrowing(&self, rec: NarrowRecord) -> Result<(), StorageError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Shared: narrowings run side by side, but never beside a
        // revocation (see the module docs).
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
            .bind(REVOCATION_LOCK.0)
            .bind(REVOCATION_LOCK.1)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let revoked: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revocations WHERE jti = $1)")
            .bind(&rec.parent_jti)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_err)?;
        if revoked {
            return Err(StorageError::Revoked);
        }
        bind_issued(bind_audit(sqlx::query(INSERT_ISSUED_AND_AUDIT), &rec.audit), &rec.issued, Some(&rec.parent_jti))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn revoke(&self, r: &Revocation) -> Result<u64, StorageError> {
        let (sql, value) = match &r.target {
            RevocationTarget::Jti(v) => (revoke_sql!("jti = $3"), v),
            RevocationTarget::Repository(v) => (revoke_sql!("lower(repository) = lower($3)"), v),
            RevocationTarget::RunId(v) => (revoke_sql!("run_id = $3"), v),
            RevocationTarget::Rule(v) => (revoke_sql!("rule = $3"), v),
        };
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        // Exclusive, until commit: seqs become visible in order, and no
        // narrowing is half done while the walk below reads the tree.
        sqlx::query("SELECT pg_advisory_xact_lock($1, $2)")
            .bind(REVOCATION_LOCK.0)
            .bind(REVOCATION_LOCK.1)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let done = sqlx::query(sql)
            .bind(&r.org)
            .bind(r.now)
            .bind(value)
            .bind(&r.reason)
            .bind(&r.revoked_by)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn is_revoked(&self, jti: &str) -> Result<bool, StorageError> {
        let revoked: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM revocations WHERE jti = $1)")
            .bind(jti)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(revoked)
    }

    async fn revocation_feed(&self, after: i64, now: i64, limit: u32) -> Result<Vec<RevocationEntry>, StorageError> {
        let rows = sqlx::query(
            "SELECT seq, jti, org, expires_at, revoked_at FROM revocations \
             WHERE seq > $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
        )
        .bind(after)
        .bind(now)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
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

    async fn purge_revocations(&self, before: i64) -> Result<u64, StorageError> {
        let done = sqlx::query("DELETE FROM revocations WHERE expires_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    fn subscribe(&self) -> Option<broadcast::Receiver<Change>> {
        let receiver = self.changes.subscribe();
        if !self.listening.swap(true, Ordering::SeqCst) {
            tokio::spawn(listen(self.pool.connect_options().as_ref().clone(), self.changes.clone()));
        }
        Some(receiver)
    }
}

/// Serializes policy writes of one org until the transaction ends.
async fn lock_org(tx: &mut sqlx::PgConnection, org: &str) -> Result<(), StorageError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(POLICY_LOCK_CLASS)
        .bind(org)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
    Ok(())
}

/// Inserts a policy version and notifies the other replicas on commit.
async fn insert_policy(tx: &mut sqlx::PgConnection, p: &StoredPolicy) -> Result<(), StorageError> {
    sqlx::query(concat!(
        "WITH p AS (INSERT INTO policies (",
        policy_columns!(),
        ") VALUES ($1, $2, $3, $4, $5, $6, $7)) SELECT pg_notify($8, 'policy:' || $1)"
    ))
    .bind(&p.org)
    .bind(p.version)
    .bind(&p.source)
    .bind(format_str(p.format))
    .bind(managed_by_str(p.managed_by))
    .bind(&p.author)
    .bind(p.created_at)
    .bind(CHANNEL)
    .execute(&mut *tx)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// What a notification payload means.
fn parse_change(payload: &str) -> Change {
    match payload.split_once(':') {
        Some(("policy", org)) => Change::Policy(org.to_owned()),
        _ if payload == "keys" => Change::SigningKeys,
        // Unknown (a newer replica's): reloading everything is always right.
        _ => Change::Resync,
    }
}

/// Listens on [`CHANNEL`] on a connection of its own and forwards what it
/// hears, for as long as anyone subscribes. After every (re)connection it
/// sends [`Change::Resync`]: whatever was committed while it was not
/// listening was not heard.
async fn listen(options: PgConnectOptions, changes: broadcast::Sender<Change>) {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .acquire_timeout(LISTEN_RETRY * 2)
        .connect_lazy_with(options);
    let mut was_down = false;
    while changes.receiver_count() > 0 {
        match subscribe_listener(&pool).await {
            Ok(mut listener) => {
                if was_down {
                    tracing::info!("listening for changes of other replicas again");
                }
                let _ = changes.send(Change::Resync);
                loop {
                    match listener.try_recv().await {
                        Ok(Some(notification)) => {
                            let _ = changes.send(parse_change(notification.payload()));
                        }
                        // Lost and re-established: changes may have been missed.
                        Ok(None) => {
                            let _ = changes.send(Change::Resync);
                        }
                        Err(e) => {
                            tracing::warn!("lost the change listener's connection to PostgreSQL: {e}");
                            was_down = true;
                            break;
                        }
                    }
                    if changes.receiver_count() == 0 {
                        return;
                    }
                }
            }
            Err(e) => {
                if !was_down {
                    tracing::warn!("cannot listen for changes of other replicas, retrying: {e}");
                }
                was_down = true;
            }
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

async fn subscribe_listener(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.ignore_pool_close_event(true);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Once;

    use uuid::Uuid;

    use super::*;
    use crate::storage::suite;

    const TEST_KEK: [u8; 32] = [0x42; 32];

    fn config() -> PgConfig {
        PgConfig {
            max_connections: 8,
            acquire_timeout: Duration::from_secs(10),
            key_encryption_key: KeyEncryptionKey::from_bytes(&TEST_KEK).expect("test key-encryption key"),
        }
    }

    /// Says once per test binary, past libtest's output capture, that the
    /// PostgreSQL cases did not run.
    fn skipped() {
        static SAID: Once = Once::new();
        SAID.call_once(|| {
            let _ = writeln!(
                std::io::stderr().lock(),
                "SKIPPED: PostgreSQL storage tests did not run because DATABASE_URL is unset \
                 (CI sets it; e.g. DATABASE_URL=postgres://postgres@127.0.0.1:5432/test)"
            );
        });
    }

    /// A database of its own for one test, dropped afterwards: parallel
    /// tests never share state.
    struct TestDb {
        admin_url: String,
        name: String,
        url: String,
    }

    impl TestDb {
        async fn create() -> Option<TestDb> {
            let Ok(admin_url) = std::env::var("DATABASE_URL") else {
                skipped();
                return None;
            };
            let name = format!("writ_test_{}", Uuid::new_v4().simple());
            let mut url = url::Url::parse(&admin_url).expect("DATABASE_URL is a URL");
            url.set_path(&name);
            let admin = PgPool::connect(&admin_url).await.expect("connect to DATABASE_URL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .expect("create test database");
            admin.close().await;
            Some(TestDb { admin_url, name, url: url.to_string() })
        }

        async fn drop_db(self) {
            let admin = PgPool::connect(&self.admin_url).await.expect("connect to DATABASE_URL");
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name)))
                .execute(&admin)
                .await
                .expect("drop test database");
            admin.close().await;
        }
    }

    /// Runs `body` with the URL of a fresh database, drops the database
    /// whatever happened, then reports the body's panic if any. Does
    /// nothing (but say so) without DATABASE_URL.
    async fn in_fresh_db<F, Fut>(body: F)
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Some(db) = TestDb::create().await else { return };
        let outcome = tokio::spawn(body(db.url.clone())).await;
        db.drop_db().await;
        if let Err(e) = outcome {
            std::panic::resume_unwind(e.into_panic());
        }
    }

    /// Runs one suite case against a fresh store in a fresh database.
    async fn with_store<F, Fut>(case: F)
    where
        F: FnOnce(Arc<dyn Storage>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        in_fresh_db(|url| async move {
            let store = PgStore::open(&url, &config()).await.expect("open postgres store");
            case(Arc::new(store.clone())).await;
            store.close().await;
        })
        .await;
    }

    /// Runs every suite case against PostgreSQL, like `sqlite.rs` does
    /// against SQLite.
    macro_rules! postgres_suite {
        ($($case:ident),* $(,)?) => {$(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                with_store(suite::$case).await;
            }
        )*};
    }

    crate::storage::suite::all_cases!(postgres_suite);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_keys_are_sealed_in_the_database() {
        in_fresh_db(|url| async move {
            let store = PgStore::open(&url, &config()).await.expect("open");
            let key = StoredSigningKey {
                kid: "kid-1".into(),
                algorithm: "EdDSA".into(),
                private_pkcs8: secrecy::SecretSlice::from(b"the private key bytes".to_vec()),
                public_key: b"public".to_vec(),
                created_at: 1,
                activates_at: 1,
            };
            store.insert_signing_key(key).await.expect("insert");
            let sealed: Vec<u8> = sqlx::query_scalar("SELECT private_key_sealed FROM signing_keys")
                .fetch_one(store.pool())
                .await
                .expect("row");
            assert!(!sealed.windows(9).any(|w| w == b"the priva"), "stored encrypted");

            // A replica with another key-encryption key refuses to load it,
            // naming the problem.
            let mut other = config();
            other.key_encryption_key = KeyEncryptionKey::from_bytes(&[7; 32]).expect("key");
            let wrong = PgStore::open(&url, &other).await.expect("open");
            let err = wrong.signing_keys().await.expect_err("wrong key-encryption key");
            assert!(err.to_string().contains("key_encryption_key_file"), "{err}");

            // A sealed key copied under another kid does not open.
            sqlx::query("UPDATE signing_keys SET kid = 'kid-2'").execute(store.pool()).await.expect("update");
            assert!(store.signing_keys().await.is_err(), "moved ciphertext must not decrypt");
            wrong.close().await;
            store.close().await;
        })
        .await;
    }

    async fn next(rx: &mut broadcast::Receiver<Change>) -> Change {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("in time").expect("open")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_store_hears_policy_and_key_changes() {
        in_fresh_db(|url| async move {
            let a = PgStore::open(&url, &config()).await.expect("open a");
            let b = PgStore::open(&url, &config()).await.expect("open b");
            let mut changes = b.subscribe().expect("postgres has change notifications");
            assert_eq!(next(&mut changes).await, Change::Resync, "a fresh listener resyncs first");
            a.put_policy(suite::new_policy("acme", "v1", Some(0)), 1).await.expect("put");
            assert_eq!(next(&mut changes).await, Change::Policy("acme".into()));
            // A refused write notifies nobody.
            assert!(a.put_policy(suite::new_policy("acme", "stale", Some(0)), 2).await.is_err());
            a.create_org(
                NewOrg { org: "beta".into(), created_by: None },
                Some(suite::new_policy("beta", "b", None)),
                3,
            )
            .await
            .expect("create");
            assert_eq!(next(&mut changes).await, Change::Policy("beta".into()));
            let key = StoredSigningKey {
                kid: "k".into(),
                algorithm: "EdDSA".into(),
                private_pkcs8: secrecy::SecretSlice::from(vec![1, 2, 3]),
                public_key: vec![4],
                created_at: 1,
                activates_at: 1,
            };
            a.insert_signing_key(key).await.expect("key");
            assert_eq!(next(&mut changes).await, Change::SigningKeys);
            a.close().await;
            b.close().await;
        })
        .await;
    }

    #[tokio::test]
    async fn an_unreachable_database_is_unavailable() {
        // Nothing listens on port 1.
        let mut cfg = config();
        cfg.acquire_timeout = Duration::from_millis(300);
        let err = PgStore::open("postgres://writ@127.0.0.1:1/writ", &cfg).await.expect_err("no server");
        assert!(matches!(err, StorageError::Unavailable(_)), "{err:?}");
    }

    #[test]
    fn transient_sqlstates_are_classified() {
        for code in ["08006", "57P01", "57P03", "53300", "53100", "58030", "40001", "40P01", "25006"] {
            assert!(is_transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42601", "22P02", "42P01"] {
            assert!(!is_transient_sqlstate(code), "{code}");
        }
    }

    #[test]
    fn notification_payloads_parse() {
        assert_eq!(parse_change("policy:acme:prod"), Change::Policy("acme:prod".into()));
        assert_eq!(parse_change("keys"), Change::SigningKeys);
        assert_eq!(parse_change("something-new"), Change::Resync);
    }
}
