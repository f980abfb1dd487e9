//! SQLite's half of group commit ([`crate::storage::batch`]): one
//! `BEGIN IMMEDIATE … COMMIT` per batch, written in few round trips.
//!
//! sqlx runs each SQLite connection on its own thread, so every statement
//! the writer sends is a round trip between threads, and under load each
//! costs more than the SQL itself. The batch is therefore written in
//! *units*: one multi-statement query per group of exchanges (64, 32, …, 1
//! of them) that inserts their replay records, audit records and issued
//! tokens with one multi-row `INSERT` each, inside a savepoint:
//!
//! - the common case costs one round trip per unit, plus `BEGIN` and
//!   `COMMIT` for the whole batch;
//! - if a unit hits a uniqueness violation (a replayed `jti`; a second
//!   exchange of one token in the same batch), the unit is rolled back to
//!   its savepoint and its exchanges are written one by one, each under its
//!   own savepoint, so that only the replay fails;
//! - exchanges that record pins on first use (rare) are always written one
//!   by one, so a pin conflict fails only its own exchange.
//!
//! Each exchange is all or nothing, the batch commits once, and the
//! statement texts come from a small fixed set that the connection's
//! prepared-statement cache keeps.

use std::sync::{Arc, OnceLock};

use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool};
use sqlx::{AssertSqlSafe, Sqlite};

use super::{AUDIT_COLUMNS, bind_audit, is_unique_violation, map_err, write_exchange};
use crate::storage::batch::{BatchWriter, Write};
use crate::storage::{AuditRecord, ExchangeRecord, StorageError};

/// Exchanges per unit, largest first: any batch is a sum of at most
/// `UNITS.len()` units below 64 and one unit per 64 above.
const UNITS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Writes batches through the writer pool.
#[derive(Debug)]
pub(super) struct SqliteBatchWriter {
    pub(super) writer: SqlitePool,
}

#[async_trait::async_trait]
impl BatchWriter for SqliteBatchWriter {
    async fn write_batch(&self, writes: &[Write]) -> Result<Vec<Result<(), StorageError>>, StorageError> {
        // Any early return drops `tx`, which rolls the whole batch back;
        // the callers all get that error and none of them a token.
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(map_err)?;
        let mut results: Vec<Option<Result<(), StorageError>>> = writes.iter().map(|_| None).collect();

        let mut bulk: Vec<(usize, &ExchangeRecord)> = Vec::with_capacity(writes.len());
        let mut denials: Vec<&AuditRecord> = Vec::new();
        for (i, write) in writes.iter().enumerate() {
            match write {
                Write::Exchange(rec) if rec.new_pins.is_empty() => bulk.push((i, rec)),
                Write::Exchange(rec) => results[i] = Some(write_one(&mut tx, rec).await?),
                Write::Denial(audit) => {
                    denials.push(audit);
                    results[i] = Some(Ok(()));
                }
            }
        }
        let mut start = 0;
        for (unit, size) in units(bulk.len()) {
            let group = &bulk[start..start + size];
            start += size;
            let mut q = query(&statements().exchanges[unit]);
            for (_, rec) in group {
                let j = &rec.used_jti;
                q = q.bind(j.issuer.clone()).bind(j.jti.clone()).bind(j.expires_at);
            }
            for (_, rec) in group {
                q = bind_audit(q, &rec.audit)?;
            }
            for (_, rec) in group {
                let t = &rec.issued;
                q = q
                    .bind(t.jti.clone())
                    .bind(t.org.clone())
                    .bind(t.subject.clone())
                    .bind(t.repository.clone())
                    .bind(t.run_id.clone())
                    .bind(t.rule.clone())
                    .bind(t.issued_at)
                    .bind(t.expires_at);
            }
            match q.execute(&mut *tx).await {
                Ok(_) => group.iter().for_each(|(i, _)| results[*i] = Some(Ok(()))),
                Err(e) if is_unique_violation(&e) => {
                    // Someone in this unit is a replay: undo the unit, then
                    // find out who, one exchange at a time.
                    sqlx::query("ROLLBACK TO unit; RELEASE unit").execute(&mut *tx).await.map_err(map_err)?;
                    for (i, rec) in group {
                        results[*i] = Some(write_one(&mut tx, rec).await?);
                    }
                }
                Err(e) => return Err(map_err(e)),
            }
        }
        insert_audits(&mut tx, &denials).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StorageError::other("write was not handled by the batch"))))
            .collect())
    }
}

/// Writes one exchange under its own savepoint: a replay or a pin conflict
/// rolls back only this exchange and is its result; any other failure
/// stops the batch.
async fn write_one(
    conn: &mut SqliteConnection,
    rec: &ExchangeRecord,
) -> Result<Result<(), StorageError>, StorageError> {
    sqlx::query("SAVEPOINT exchange").execute(&mut *conn).await.map_err(map_err)?;
    match write_exchange(conn, rec).await {
        Ok(()) => {
            sqlx::query("RELEASE exchange").execute(&mut *conn).await.map_err(map_err)?;
            Ok(Ok(()))
        }
        Err(e @ (StorageError::Replay | StorageError::PinConflict { .. })) => {
            sqlx::query("ROLLBACK TO exchange; RELEASE exchange").execute(&mut *conn).await.map_err(map_err)?;
            Ok(Err(e))
        }
        Err(e) => Err(e),
    }
}

/// Inserts audit records (denials) with multi-row statements.
pub(super) async fn insert_audits(conn: &mut SqliteConnection, audits: &[&AuditRecord]) -> Result<(), StorageError> {
    let mut start = 0;
    for (unit, size) in units(audits.len()) {
        let mut q = query(&statements().audits[unit]);
        for audit in &audits[start..start + size] {
            q = bind_audit(q, audit)?;
        }
        start += size;
        q.execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

/// The statement texts per unit size, built once.
struct Statements {
    /// Replay records, audit records and issued tokens of a unit of
    /// exchanges, inside savepoint `unit`.
    exchanges: [Arc<str>; UNITS.len()],
    /// Audit records only.
    audits: [Arc<str>; UNITS.len()],
}

const JTI_INSERT: &str = "INSERT INTO used_jtis (issuer, jti, expires_at)";
const ISSUED_INSERT: &str =
    "INSERT INTO issued_tokens (jti, org, subject, repository, run_id, rule, issued_at, expires_at)";

fn statements() -> &'static Statements {
    static STATEMENTS: OnceLock<Statements> = OnceLock::new();
    STATEMENTS.get_or_init(|| {
        let audit_insert = format!("INSERT INTO audit ({AUDIT_COLUMNS})");
        let audit_columns = AUDIT_COLUMNS.split(',').count();
        Statements {
            exchanges: UNITS.map(|rows| {
                Arc::from(format!(
                    "SAVEPOINT unit; {}; {}; {}; RELEASE unit",
                    values(JTI_INSERT, 3, rows),
                    values(&audit_insert, audit_columns, rows),
                    values(ISSUED_INSERT, 8, rows)
                ))
            }),
            audits: UNITS.map(|rows| Arc::from(values(&audit_insert, audit_columns, rows))),
        }
    })
}

/// `head VALUES (?, …), (?, …), …` with `rows` rows of `columns` placeholders.
fn values(head: &str, columns: usize, rows: usize) -> String {
    let row = format!("({})", vec!["?"; columns].join(", "));
    format!("{head} VALUES {}", vec![row; rows].join(", "))
}

/// Splits `n` rows into units: `(index into UNITS, size)`, largest first.
fn units(n: usize) -> impl Iterator<Item = (usize, usize)> {
    let mut left = n;
    std::iter::from_fn(move || {
        let (unit, &size) = UNITS.iter().enumerate().find(|(_, size)| **size <= left)?;
        left -= size;
        Some((unit, size))
    })
}

type Query = sqlx::query::Query<'static, Sqlite, SqliteArguments>;

fn query(sql: &Arc<str>) -> Query {
    // The text is built above from constant column lists and placeholder
    // counts only: no data ever reaches the SQL, it is all bound.
    sqlx::query(AssertSqlSafe(sql.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_cover_every_row_once_with_few_statements() {
        for n in 0..300 {
            let parts: Vec<_> = units(n).collect();
            assert_eq!(parts.iter().map(|(_, size)| size).sum::<usize>(), n);
            assert!(parts.iter().all(|(unit, size)| UNITS[*unit] == *size));
            assert!(parts.len() < n / 64 + UNITS.len(), "{n}: {parts:?}");
        }
    }

    #[test]
    fn statements_have_one_placeholder_per_bound_value() {
        let s = statements();
        for (i, rows) in UNITS.iter().enumerate() {
            assert_eq!(s.exchanges[i].matches('?').count(), (3 + 27 + 8) * rows);
            assert_eq!(s.audits[i].matches('?').count(), 27 * rows);
        }
    }
}
