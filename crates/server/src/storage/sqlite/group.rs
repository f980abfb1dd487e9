//! SQLite's half of group commit ([`crate::storage::batch`]): one
//! `BEGIN IMMEDIATE … COMMIT` per batch, written with few statements.
//!
//! Every statement is a round trip to sqlx's connection thread, so the
//! common case is written in bulk: the batch's consumed `jti`s go in with
//! one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING` (a `jti` that
//! comes back was consumed by this write; one that does not is a replay, and
//! nothing else of that exchange is written), then the audit records and the
//! issued tokens with one multi-row `INSERT` each. Exchanges that pin names
//! on first use (rare) are written one by one under a savepoint, so a pin
//! conflict rolls back only that exchange. Either way each exchange is all
//! or nothing, and the batch commits once.
//!
//! Rows go in chunks of 64, 16, 4 and 1 so that the statements stay few and
//! their text stays from a small fixed set that the connection's prepared
//! statement cache keeps.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use sqlx::sqlite::{SqliteArguments, SqliteConnection, SqlitePool};
use sqlx::{AssertSqlSafe, Row, Sqlite};

use super::{AUDIT_COLUMNS, bind_audit, map_err, write_exchange};
use crate::storage::batch::{BatchWriter, Write};
use crate::storage::{AuditRecord, ExchangeRecord, IssuedToken, StorageError};

/// Row counts of the multi-row statements, largest first.
const CHUNKS: [usize; 4] = [64, 16, 4, 1];

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

        // First uses of a name: one at a time, each under a savepoint.
        for (i, write) in writes.iter().enumerate() {
            let Write::Exchange(rec) = write else { continue };
            if rec.new_pins.is_empty() {
                continue;
            }
            sqlx::query("SAVEPOINT exchange").execute(&mut *tx).await.map_err(map_err)?;
            let result = write_exchange(&mut tx, rec).await;
            match result {
                Ok(()) => {}
                Err(StorageError::Replay | StorageError::PinConflict { .. }) => {
                    sqlx::query("ROLLBACK TO exchange").execute(&mut *tx).await.map_err(map_err)?;
                }
                Err(e) => return Err(e),
            }
            sqlx::query("RELEASE exchange").execute(&mut *tx).await.map_err(map_err)?;
            results[i] = Some(result);
        }

        // Everything else in bulk.
        let bulk: Vec<(usize, &ExchangeRecord)> = writes
            .iter()
            .enumerate()
            .filter_map(|(i, w)| match w {
                Write::Exchange(rec) if rec.new_pins.is_empty() => Some((i, rec)),
                _ => None,
            })
            .collect();
        let records: Vec<&ExchangeRecord> = bulk.iter().map(|(_, rec)| *rec).collect();
        let consumed = insert_jtis(&mut tx, &records).await?;
        let mut audits: Vec<&AuditRecord> = Vec::with_capacity(writes.len());
        let mut issued: Vec<&IssuedToken> = Vec::with_capacity(bulk.len());
        for (position, (i, rec)) in bulk.iter().enumerate() {
            // The first write of a `jti` takes it; a second one in the same
            // batch, like any later one, is a replay.
            if consumed.contains(&position) {
                audits.push(&rec.audit);
                issued.push(&rec.issued);
                results[*i] = Some(Ok(()));
            } else {
                results[*i] = Some(Err(StorageError::Replay));
            }
        }
        for (i, write) in writes.iter().enumerate() {
            if let Write::Denial(audit) = write {
                audits.push(audit);
                results[i] = Some(Ok(()));
            }
        }
        insert_audits(&mut tx, &audits).await?;
        insert_issued(&mut tx, &issued).await?;
        let commit = std::time::Instant::now();
        tx.commit().await.map_err(map_err)?;
        tracing::trace!(micros = commit.elapsed().as_micros() as u64, "sqlite commit");
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StorageError::other("write was not handled by the batch"))))
            .collect())
    }
}

/// The multi-row statements, built once.
struct Statements {
    jtis: [Arc<str>; CHUNKS.len()],
    audits: [Arc<str>; CHUNKS.len()],
    issued: [Arc<str>; CHUNKS.len()],
}

fn statements() -> &'static Statements {
    static STATEMENTS: OnceLock<Statements> = OnceLock::new();
    STATEMENTS.get_or_init(|| {
        let build = |head: &str, columns: usize, tail: &str| {
            CHUNKS.map(|rows| {
                let row = format!("({})", vec!["?"; columns].join(", "));
                Arc::from(format!("{head} VALUES {}{tail}", vec![row; rows].join(", ")))
            })
        };
        Statements {
            jtis: build(
                "INSERT INTO used_jtis (issuer, jti, expires_at)",
                3,
                " ON CONFLICT (issuer, jti) DO NOTHING RETURNING issuer, jti",
            ),
            audits: build(&format!("INSERT INTO audit ({AUDIT_COLUMNS})"), AUDIT_COLUMNS.split(',').count(), ""),
            issued: build(
                "INSERT INTO issued_tokens (jti, org, subject, repository, run_id, rule, issued_at, expires_at)",
                8,
                "",
            ),
        }
    })
}

/// Splits `n` rows into chunks of the sizes in [`CHUNKS`]:
/// `(index into CHUNKS, first row, rows)`.
fn chunks(n: usize) -> impl Iterator<Item = (usize, usize, usize)> {
    let mut start = 0;
    std::iter::from_fn(move || {
        let left = n - start;
        let (which, &rows) = CHUNKS.iter().enumerate().find(|(_, rows)| **rows <= left)?;
        let chunk = (which, start, rows);
        start += rows;
        Some(chunk)
    })
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments>;

fn query(sql: &Arc<str>) -> Query<'static> {
    // The text is built above from constant column lists and placeholder
    // counts only: no data ever reaches the SQL, it is all bound.
    sqlx::query(AssertSqlSafe(sql.clone()))
}

/// Inserts the replay records; returns the positions in `records` whose
/// `jti` this statement consumed. When the batch holds one `(issuer, jti)`
/// twice, only the first position can come back.
async fn insert_jtis(conn: &mut SqliteConnection, records: &[&ExchangeRecord]) -> Result<HashSet<usize>, StorageError> {
    let mut first_of: HashMap<(&str, &str), usize> = HashMap::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        first_of.entry((rec.used_jti.issuer.as_str(), rec.used_jti.jti.as_str())).or_insert(i);
    }
    let mut consumed = HashSet::with_capacity(records.len());
    for (which, start, rows) in chunks(records.len()) {
        let mut q = query(&statements().jtis[which]);
        for rec in &records[start..start + rows] {
            q = q.bind(rec.used_jti.issuer.clone()).bind(rec.used_jti.jti.clone()).bind(rec.used_jti.expires_at);
        }
        for row in q.fetch_all(&mut *conn).await.map_err(map_err)? {
            let issuer: String = row.try_get(0).map_err(map_err)?;
            let jti: String = row.try_get(1).map_err(map_err)?;
            if let Some(&i) = first_of.get(&(issuer.as_str(), jti.as_str())) {
                consumed.insert(i);
            }
        }
    }
    Ok(consumed)
}

pub(super) async fn insert_audits(conn: &mut SqliteConnection, audits: &[&AuditRecord]) -> Result<(), StorageError> {
    for (which, start, rows) in chunks(audits.len()) {
        let mut q = query(&statements().audits[which]);
        for audit in &audits[start..start + rows] {
            q = bind_audit(q, audit)?;
        }
        q.execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

async fn insert_issued(conn: &mut SqliteConnection, tokens: &[&IssuedToken]) -> Result<(), StorageError> {
    for (which, start, rows) in chunks(tokens.len()) {
        let mut q = query(&statements().issued[which]);
        for t in &tokens[start..start + rows] {
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
        q.execute(&mut *conn).await.map_err(map_err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_row_once_with_few_statements() {
        for n in 0..300 {
            let parts: Vec<_> = chunks(n).collect();
            assert_eq!(parts.iter().map(|(_, _, rows)| rows).sum::<usize>(), n);
            let mut next = 0;
            for (which, start, rows) in &parts {
                assert_eq!((*start, CHUNKS[*which]), (next, *rows));
                next += rows;
            }
            assert!(parts.len() <= n / 64 + 3 + 3 + 3, "{n}: {parts:?}");
        }
    }

    #[test]
    fn statements_have_one_placeholder_per_bound_value() {
        let s = statements();
        for (i, rows) in CHUNKS.iter().enumerate() {
            assert_eq!(s.jtis[i].matches('?').count(), 3 * rows);
            assert_eq!(s.audits[i].matches('?').count(), 27 * rows);
            assert_eq!(s.issued[i].matches('?').count(), 8 * rows);
        }
    }
}
