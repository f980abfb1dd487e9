//! SQLite's half of group commit ([`crate::storage::batch`]): the exchange
//! path's writes, on a connection of their own.
//!
//! The batch writer owns one plain `rusqlite` connection and runs on the
//! group-commit thread, so a batch costs no thread hand-off per statement
//! (sqlx runs each connection on a worker thread and every statement is a
//! round trip to it; under load those round trips cost more than the SQL).
//! Each batch is one `BEGIN IMMEDIATE … COMMIT`, written with single-row
//! prepared statements from the connection's statement cache:
//!
//! - an exchange first inserts its subject token's replay record. If that
//!   `jti` was used (by an earlier batch, or earlier in this one), the
//!   single-row statement fails on its primary key and SQLite backs out
//!   exactly that statement: the exchange is a replay and has written
//!   nothing. Otherwise its audit record and issued token follow, and a
//!   failure of those fails the whole batch;
//! - an exchange that records pins on first use (rare) runs under its own
//!   savepoint, so a pin conflict undoes only that exchange;
//! - a denial is one audit insert.
//!
//! No savepoint or multi-row statement in the common case means SQLite
//! keeps no statement journal: each page is written once, to the WAL.
//! Each exchange is all or nothing, the batch commits once, and every
//! caller is answered after that commit (see `batch`).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior, params};

use super::checkpoint::RestartWanted;
use super::{AUDIT_COLUMNS, to_json};
use crate::storage::batch::{BatchWriter, Write};
use crate::storage::{AuditRecord, ExchangeRecord, Pin, StorageError};

/// Writes batches on its own connection to the database file.
pub(super) struct SqliteBatchWriter {
    conn: Connection,
    restart: RestartWanted,
}

impl std::fmt::Debug for SqliteBatchWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBatchWriter").finish_non_exhaustive()
    }
}

/// How long the writer waits between tries when another connection (the
/// admin pool, a `writ` CLI command on the same file) holds the write lock.
/// Short, so the exchange path resumes right after a brief admin write.
const BUSY_RETRY: Duration = Duration::from_micros(200);

/// The busy timeout of [`SqliteBatchWriter::open`], in [`BUSY_RETRY`]s;
/// set once at open (a plain `fn` busy handler cannot capture it).
static BUSY_TRIES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(25_000);

impl SqliteBatchWriter {
    /// Opens the writer connection to an existing, migrated database in WAL
    /// mode, with the durability settings of every writ connection:
    /// `synchronous = FULL` (each commit syncs the WAL), foreign keys on,
    /// and automatic checkpoints off (they run in the background instead,
    /// see `checkpoint`).
    pub(super) fn open(path: &Path, busy_timeout: Duration, restart: RestartWanted) -> Result<Self, StorageError> {
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let conn = Connection::open_with_flags(path, flags).map_err(map_err)?;
        let tries = (busy_timeout.as_micros() / BUSY_RETRY.as_micros()).max(1);
        BUSY_TRIES.store(u32::try_from(tries).unwrap_or(u32::MAX), std::sync::atomic::Ordering::Relaxed);
        conn.busy_handler(Some(wait_for_lock)).map_err(map_err)?;
        let journal: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)).map_err(map_err)?;
        if !journal.eq_ignore_ascii_case("wal") {
            return Err(StorageError::other(format!("the database refused WAL mode (journal mode {journal})")));
        }
        conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA wal_autocheckpoint = 0;")
            .map_err(map_err)?;
        conn.set_prepared_statement_cache_capacity(16);
        Ok(SqliteBatchWriter { conn, restart })
    }

    /// This connection's `PRAGMA synchronous` (2 is FULL), for tests.
    #[cfg(test)]
    pub(super) fn synchronous(&self) -> i64 {
        self.conn.query_row("PRAGMA synchronous", [], |row| row.get(0)).unwrap_or(-1)
    }
}

/// The busy handler: sleep [`BUSY_RETRY`] and try again, until the busy
/// timeout has passed (then the batch fails as unavailable: 503).
fn wait_for_lock(tries: i32) -> bool {
    let limit = BUSY_TRIES.load(std::sync::atomic::Ordering::Relaxed);
    if u32::try_from(tries).unwrap_or(u32::MAX) >= limit {
        return false;
    }
    std::thread::sleep(BUSY_RETRY);
    true
}

impl BatchWriter for SqliteBatchWriter {
    fn write_batch(&mut self, writes: &[Write]) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        // Any early return drops `tx`, which rolls the whole batch back;
        // the callers all get that error and none of them a token.
        let tx = Transaction::new(&mut self.conn, TransactionBehavior::Immediate).map_err(map_err)?;
        let mut results = Vec::with_capacity(writes.len());
        for write in writes {
            let result = match write {
                Write::Exchange(rec) if rec.new_pins.is_empty() => write_exchange(&tx, rec)?,
                Write::Exchange(rec) => write_with_pins(&tx, rec)?,
                Write::Denial(audit) => insert_audit(&tx, audit).map(Ok)?,
            };
            results.push(result);
        }
        tx.commit().map_err(map_err)?;
        if self.restart.take() {
            // Between batches, holding no lock: copies what the background
            // checkpoints left and starts the WAL over (see `checkpoint`).
            // A failure leaves the WAL longer, nothing else; the next
            // request tries again.
            let started = std::time::Instant::now();
            let restarted: Result<(i64, i64, i64), _> =
                self.conn
                    .query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)));
            match restarted {
                Ok((0, frames, _)) => {
                    tracing::debug!(frames, micros = started.elapsed().as_micros() as u64, "WAL restarted")
                }
                Ok((_, frames, copied)) => {
                    tracing::debug!(frames, copied, "WAL restart waited too long for readers; will try again")
                }
                Err(e) => tracing::warn!("restarting the SQLite WAL failed: {e}"),
            }
        }
        Ok(results)
    }
}

/// Writes one exchange without pins. The outer `Result` fails the batch;
/// the inner one is this exchange's own outcome (a replay).
fn write_exchange(tx: &Transaction<'_>, rec: &ExchangeRecord) -> Result<Result<(), StorageError>, StorageError> {
    if let Err(replay) = insert_used_jti(tx, rec)? {
        return Ok(Err(replay));
    }
    insert_audit(tx, &rec.audit)?;
    insert_issued(tx, rec)?;
    Ok(Ok(()))
}

/// Writes one exchange that records pins, under its own savepoint: a replay
/// or pin conflict undoes this exchange only.
fn write_with_pins(tx: &Transaction<'_>, rec: &ExchangeRecord) -> Result<Result<(), StorageError>, StorageError> {
    tx.execute_batch("SAVEPOINT exchange").map_err(map_err)?;
    let outcome = (|| {
        insert_used_jti(tx, rec)??;
        for pin in &rec.new_pins {
            insert_pin(tx, pin)??;
        }
        insert_audit(tx, &rec.audit)?;
        insert_issued(tx, rec)?;
        Ok::<_, StorageError>(Ok(()))
    })();
    match outcome {
        Ok(Ok(())) => {
            tx.execute_batch("RELEASE exchange").map_err(map_err)?;
            Ok(Ok(()))
        }
        Ok(Err(own)) | Err(own @ (StorageError::Replay | StorageError::PinConflict { .. })) => {
            tx.execute_batch("ROLLBACK TO exchange; RELEASE exchange").map_err(map_err)?;
            Ok(Err(own))
        }
        Err(batch) => Err(batch),
    }
}

/// Consumes the subject token's `jti`; `Ok(Err(Replay))` when it was used.
fn insert_used_jti(tx: &Transaction<'_>, rec: &ExchangeRecord) -> Result<Result<(), StorageError>, StorageError> {
    let j = &rec.used_jti;
    let mut insert =
        tx.prepare_cached("INSERT INTO used_jtis (issuer, jti, expires_at) VALUES (?1, ?2, ?3)").map_err(map_err)?;
    match insert.execute(params![j.issuer, j.jti, j.expires_at]) {
        Ok(_) => Ok(Ok(())),
        Err(e) if is_unique_violation(&e) => Ok(Err(StorageError::Replay)),
        Err(e) => Err(map_err(e)),
    }
}

fn insert_issued(tx: &Transaction<'_>, rec: &ExchangeRecord) -> Result<(), StorageError> {
    let t = &rec.issued;
    let mut insert = tx
        .prepare_cached(
            "INSERT INTO issued_tokens (jti, org, subject, repository, run_id, rule, issued_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(map_err)?;
    insert
        .execute(params![t.jti, t.org, t.subject, t.repository, t.run_id, t.rule, t.issued_at, t.expires_at])
        .map_err(map_err)?;
    Ok(())
}

/// Inserts `pin` unless its name is already pinned; `Ok(Err(PinConflict))`
/// when it is pinned to another id.
fn insert_pin(tx: &Transaction<'_>, pin: &Pin) -> Result<Result<(), StorageError>, StorageError> {
    let name = pin.name.to_lowercase();
    let inserted = tx
        .prepare_cached(
            "INSERT INTO pins (issuer, kind, name, id, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (issuer, kind, name) DO NOTHING",
        )
        .and_then(|mut insert| insert.execute(params![pin.issuer, pin.kind.as_str(), name, pin.id, pin.created_at]))
        .map_err(map_err)?;
    if inserted == 1 {
        return Ok(Ok(()));
    }
    let pinned_id: String = tx
        .prepare_cached("SELECT id FROM pins WHERE issuer = ?1 AND kind = ?2 AND name = ?3")
        .and_then(|mut select| select.query_row(params![pin.issuer, pin.kind.as_str(), name], |row| row.get(0)))
        .map_err(map_err)?;
    if pinned_id == pin.id {
        Ok(Ok(()))
    } else {
        Ok(Err(StorageError::PinConflict { kind: pin.kind, name, pinned_id, presented_id: pin.id.clone() }))
    }
}

fn insert_audit(tx: &Transaction<'_>, a: &AuditRecord) -> Result<(), StorageError> {
    let sql = audit_insert_sql();
    let mut insert = tx.prepare_cached(sql).map_err(map_err)?;
    let explanation = a.explanation.as_ref().map(to_json).transpose()?;
    insert
        .execute(params![
            a.id.hyphenated().to_string(),
            a.time,
            a.request_id,
            a.org,
            a.outcome.as_str(),
            a.error,
            a.rule,
            a.issuer,
            a.subject,
            a.subject_jti,
            a.repository,
            a.repository_id,
            a.ref_,
            a.environment,
            a.workflow_ref,
            a.run_id,
            a.actor,
            to_json(&a.requested_permissions)?,
            to_json(&a.requested_apps)?,
            to_json(&a.requested_machines)?,
            to_json(&a.granted_permissions)?,
            a.granted_apps.as_ref().map(to_json).transpose()?,
            a.granted_machines.as_ref().map(to_json).transpose()?,
            a.token_jti,
            a.token_expires_at,
            explanation,
            a.client_addr,
        ])
        .map_err(map_err)?;
    Ok(())
}

/// `INSERT INTO audit (…) VALUES (?1, …)`, built once from
/// [`AUDIT_COLUMNS`] (constant text only: every value is bound).
fn audit_insert_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let count = AUDIT_COLUMNS.split(',').count();
        let placeholders: Vec<String> = (1..=count).map(|i| format!("?{i}")).collect();
        format!("INSERT INTO audit ({AUDIT_COLUMNS}) VALUES ({})", placeholders.join(", "))
    })
}

fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.code == ErrorCode::ConstraintViolation
            && matches!(f.extended_code, rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE))
}

/// Transient conditions (locked, busy, I/O, disk full, out of memory)
/// become [`StorageError::Unavailable`], like the sqlx side's `map_err`.
fn map_err(e: rusqlite::Error) -> StorageError {
    let transient = matches!(&e, rusqlite::Error::SqliteFailure(f, _) if matches!(
        f.code,
        ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::OutOfMemory
            | ErrorCode::ReadOnly
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
    ));
    if transient { StorageError::Unavailable(Box::new(e)) } else { StorageError::Other(Box::new(e)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writer_connection_is_wal_and_fully_synchronous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let store =
            super::super::SqliteStore::open(path.to_str().expect("utf-8"), &Default::default()).await.expect("open");
        let writer = SqliteBatchWriter::open(&path, Duration::from_secs(1), RestartWanted::default()).expect("writer");
        assert_eq!(writer.synchronous(), 2, "synchronous = FULL");
        let journal: String = writer.conn.query_row("PRAGMA journal_mode", [], |row| row.get(0)).expect("pragma");
        assert_eq!(journal, "wal");
        store.close().await;
    }

    #[test]
    fn audit_insert_has_one_placeholder_per_column() {
        let sql = audit_insert_sql();
        assert_eq!(sql.matches('?').count(), AUDIT_COLUMNS.split(',').count());
        assert!(sql.ends_with("?27)"), "{sql}");
    }
}
