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
//! - an exchange first checks its subject token's `(issuer, jti)` against
//!   the replay index ([`ReplayIndex`]): if it was used (by an earlier
//!   batch, or earlier in this one), the exchange is a replay and writes
//!   nothing. Otherwise it inserts the replay record, its audit record and
//!   its issued token, and a failure of those fails the whole batch;
//! - an exchange that records pins on first use (rare) runs under its own
//!   savepoint, so a pin conflict undoes only that exchange;
//! - a denial is one audit insert.
//!
//! No savepoint or multi-row statement in the common case means SQLite
//! keeps no statement journal: each page is written once, to the WAL.
//! Each exchange is all or nothing, the batch commits once, and every
//! caller is answered after that commit (see `batch`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use rusqlite::{
    CachedStatement, Connection, ErrorCode, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params,
};

use super::PURGE_CHUNK;
use super::checkpoint::RestartWanted;
use crate::storage::batch::{BatchWriter, Write};
use crate::storage::{AuditRecord, ExchangeRecord, Pin, StorageError};

/// Writes batches on its own connection to the database file.
pub(super) struct SqliteBatchWriter {
    conn: Connection,
    restart: RestartWanted,
    /// The database file, for the exchange lock's name.
    path: PathBuf,
    /// Loaded with the first exchange (commands such as `writ keys rotate`
    /// open the store too, record no exchange, and must not need it).
    replay: Option<ReplayIndex>,
}

/// Which `(issuer, jti)` pairs have been exchanged and are not yet purged.
///
/// The `used_jtis` table is ordered by expiry and then arrival (schema v4
/// to v7), so that its inserts append instead of dirtying a random page
/// per exchange; it cannot refuse a second `(issuer, jti)` by itself. This
/// writer is the one writer of that table, so it checks each exchange
/// against this index,
/// which it loads from the table before its first exchange and keeps in
/// step with every commit and purge. The table is what survives a restart.
///
/// Only one process may hold such an index for a file: a lock file next to
/// the database (`<db>-exchanges.lock`) is held for as long as the index
/// lives, and a second `writ serve` on the same file refuses exchanges
/// (503) instead of checking replays against an index that misses the
/// other's. Several replicas need PostgreSQL.
struct ReplayIndex {
    /// Fingerprints of the `(issuer, jti)` pairs in `used_jtis`.
    seen: Fingerprints,
    /// The number of the next replay record of each expiry second that has
    /// records: above every number of that second in the table when the
    /// index was loaded, then counted up by this writer (see [`ReplayKey`]).
    next_in_second: HashMap<i64, i64>,
    /// `token_span.max_secs` (schema v7): no token held as a grant's audit
    /// row expires more than this many seconds after the time in its id.
    token_span: i64,
    /// Held while the index lives.
    _lock: std::fs::File,
}

/// How long [`ReplayIndex::load`] waits for another holder of the
/// exchange lock to let go.
const LOCK_HANDOVER: Duration = Duration::from_secs(2);

/// The key of a replay record (schema v7): its expiry second times 2^24
/// plus its number within that second, so that records sort by expiry and
/// each commit's inserts land at the end of a rowid table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ReplayKey(i64);

impl ReplayKey {
    /// Records one expiry second can hold.
    const PER_SECOND: i64 = 1 << 24;
    /// The last second a key can name (in the year 19,391); later expiries
    /// are kept as that second, which is as good as forever.
    const LAST_SECOND: i64 = i64::MAX / Self::PER_SECOND;

    /// The expiry second a record expiring at `expires_at` is kept under.
    fn second(expires_at: i64) -> i64 {
        expires_at.clamp(0, Self::LAST_SECOND)
    }

    /// The `n`-th record of `second` (a value of [`Self::second`]), if the
    /// second has room for it.
    fn new(second: i64, n: i64) -> Option<ReplayKey> {
        (0..Self::PER_SECOND).contains(&n).then_some(ReplayKey(second * Self::PER_SECOND + n))
    }

    /// The first key of `second`: every record of an earlier second sorts
    /// below it.
    fn first_of(second: i64) -> ReplayKey {
        ReplayKey(Self::second(second) * Self::PER_SECOND)
    }

    fn second_of(self) -> i64 {
        self.0 / Self::PER_SECOND
    }

    fn number(self) -> i64 {
        self.0 % Self::PER_SECOND
    }
}

/// How many seconds after the time in its id (the first 48 bits of the
/// UUID, milliseconds since the epoch for the UUIDv7 the exchange makes)
/// a token held as its grant's audit row expires; never negative. Any id
/// will do: revocation bounds its search by the same 48 bits, read from
/// the id's text (schema v7, `admin::REVOKE_SQL`).
fn token_span(id: &uuid::Uuid, expires_at: i64) -> i64 {
    let b = id.as_bytes();
    let millis = u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]]);
    let secs = i64::try_from(millis / 1000).unwrap_or(i64::MAX);
    expires_at.saturating_sub(secs).max(0)
}

/// Recomputes `token_span` from the tokens the audit log holds and
/// records it, for a database whose row has gone (nothing in writ deletes
/// it; a hand-edited file might). Without the row revocation reads an
/// org's whole audit log, which is correct but slow, and the writer would
/// start again from 0: a shorter span recorded then would bound
/// revocation's search and miss the longer-lived tokens issued before.
/// Reads the audit log once.
fn restore_token_span(conn: &Connection) -> Result<i64, StorageError> {
    let mut select = conn
        .prepare("SELECT id, token_expires_at FROM audit WHERE token_jti = id AND token_expires_at IS NOT NULL")
        .map_err(map_err)?;
    let mut rows = select.query([]).map_err(map_err)?;
    let (mut span, mut held, mut unreadable) = (0, 0u64, 0u64);
    while let Some(row) = rows.next().map_err(map_err)? {
        let id: String = row.get(0).map_err(map_err)?;
        let expires_at: i64 = row.get(1).map_err(map_err)?;
        match uuid::Uuid::try_parse(&id) {
            Ok(id) => {
                span = span.max(token_span(&id, expires_at));
                held += 1;
            }
            // Not an id writ made: no span describes it, and revocation,
            // which compares ids as text, finds it only if it sorts after
            // the bound.
            Err(_) => unreadable += 1,
        }
    }
    conn.execute(
        "INSERT INTO token_span (one, max_secs) VALUES (1, ?1) \
         ON CONFLICT (one) DO UPDATE SET max_secs = max(max_secs, excluded.max_secs)",
        [span],
    )
    .map_err(map_err)?;
    tracing::warn!(
        token_span = span,
        held,
        unreadable,
        "the token_span table was empty; recomputed it from the tokens in the audit log"
    );
    Ok(span)
}

/// The first 128 bits of SHA-256 over `issuer`, a zero byte and `jti`:
/// 16 bytes an entry instead of the two strings, and two different pairs
/// share a fingerprint with negligible probability (a collision would
/// refuse one genuine token as a replay, never accept a replay).
fn fingerprint(issuer: &str, jti: &str) -> [u8; 16] {
    let digest =
        Sha256::new().chain_update(issuer.as_bytes()).chain_update([0]).chain_update(jti.as_bytes()).finalize();
    let mut out = [0; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// A set of fingerprints in [`SHARDS`] hash tables, chosen by a
/// fingerprint's first byte.
///
/// Why not one table: a hash table grows by moving every entry into one
/// twice its size, all at once, and the replay index lives on the writer
/// thread, so every exchange queued behind that commit waited for the
/// move. With a quarter of a million entries it took 62 ms on session
/// 10's host (each entry lands on a random cache line of a table larger
/// than the CPU's cache), far above the 10 ms p99 target, and under
/// steady load the index crosses such a size every few minutes until it
/// settles. Shards of equal share grow at slightly different moments, so
/// the same growth comes as [`SHARDS`] moves of 1/256 the size, spread
/// over thousands of exchanges, and the memory held twice while one
/// table grows is 1/256 of the index rather than all of it. The first
/// byte of a SHA-256 output spreads fingerprints evenly; an issuer that
/// ground its `jti`s into one shard would only get back the single table.
struct Fingerprints {
    shards: Vec<HashSet<[u8; 16]>>,
}

/// Shards of [`Fingerprints`]: one per value of a byte.
const SHARDS: usize = 256;

impl Fingerprints {
    fn new() -> Fingerprints {
        Fingerprints { shards: (0..SHARDS).map(|_| HashSet::new()).collect() }
    }

    fn shard(&self, key: &[u8; 16]) -> &HashSet<[u8; 16]> {
        &self.shards[usize::from(key[0]) % SHARDS]
    }

    fn shard_mut(&mut self, key: &[u8; 16]) -> &mut HashSet<[u8; 16]> {
        &mut self.shards[usize::from(key[0]) % SHARDS]
    }

    fn contains(&self, key: &[u8; 16]) -> bool {
        self.shard(key).contains(key)
    }

    fn insert(&mut self, key: [u8; 16]) -> bool {
        self.shard_mut(&key).insert(key)
    }

    fn remove(&mut self, key: &[u8; 16]) -> bool {
        self.shard_mut(key).remove(key)
    }

    fn len(&self) -> usize {
        self.shards.iter().map(HashSet::len).sum()
    }
}

impl ReplayIndex {
    /// Takes the exchange lock of the database at `path` and loads every
    /// replay record.
    fn load(conn: &Connection, path: &Path) -> Result<ReplayIndex, StorageError> {
        let mut lock_path = path.as_os_str().to_owned();
        lock_path.push("-exchanges.lock");
        let lock_path = PathBuf::from(lock_path);
        let mut open = super::private_file_options();
        open.create(true).truncate(false);
        let lock = open.open(&lock_path).map_err(|e| {
            StorageError::Unavailable(format!("opening the exchange lock {}: {e}", lock_path.display()).into())
        })?;
        // A store being closed (a restart, a test reopening the file) lets
        // go of the lock as its writer thread ends: wait for that briefly.
        let deadline = std::time::Instant::now() + LOCK_HANDOVER;
        let mut locked = lock.try_lock();
        while matches!(locked, Err(std::fs::TryLockError::WouldBlock)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            locked = lock.try_lock();
        }
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(StorageError::Unavailable(
                    format!(
                        "another writ server records exchanges in {} (it holds {}); run one server per SQLite file, \
                         or use PostgreSQL for several replicas",
                        path.display(),
                        lock_path.display()
                    )
                    .into(),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(StorageError::Unavailable(format!("locking {}: {e}", lock_path.display()).into()));
            }
        }
        let mut seen = Fingerprints::new();
        let mut next_in_second = HashMap::new();
        let mut select = conn.prepare("SELECT key, issuer, jti FROM used_jtis").map_err(map_err)?;
        let mut rows = select.query([]).map_err(map_err)?;
        while let Some(row) = rows.next().map_err(map_err)? {
            let key = ReplayKey(row.get(0).map_err(map_err)?);
            let issuer: String = row.get(1).map_err(map_err)?;
            let jti: String = row.get(2).map_err(map_err)?;
            let next = next_in_second.entry(key.second_of()).or_insert(0);
            *next = (*next).max(key.number() + 1);
            seen.insert(fingerprint(&issuer, &jti));
        }
        let recorded: Option<i64> =
            conn.query_row("SELECT max_secs FROM token_span", [], |row| row.get(0)).optional().map_err(map_err)?;
        let token_span = match recorded {
            Some(span) => span,
            None => restore_token_span(conn)?,
        };
        tracing::debug!(records = seen.len(), token_span, "loaded the replay index");
        Ok(ReplayIndex { seen, next_in_second, token_span, _lock: lock })
    }

    /// The key of the next replay record expiring at `expires_at`; `None`
    /// when its second already holds [`ReplayKey::PER_SECOND`] records.
    /// A number rolled back with its exchange or batch is skipped: gaps are
    /// harmless, reuse is not.
    fn next_key(&mut self, expires_at: i64) -> Option<ReplayKey> {
        let second = ReplayKey::second(expires_at);
        let next = self.next_in_second.entry(second).or_insert(0);
        let key = ReplayKey::new(second, *next)?;
        *next += 1;
        Some(key)
    }
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
        Ok(SqliteBatchWriter { conn, restart, path: path.to_owned(), replay: None })
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
        if self.replay.is_none() && writes.iter().any(|w| matches!(w, Write::Exchange(_))) {
            self.replay = Some(ReplayIndex::load(&self.conn, &self.path)?);
        }
        let mut added = Vec::new();
        let written = write_all(&mut self.conn, self.replay.as_mut(), writes, &mut added);
        if written.is_err()
            && let Some(index) = self.replay.as_mut()
        {
            // Nothing of the batch committed: neither did its records.
            for key in &added {
                index.seen.remove(key);
            }
        }
        let results = written?;
        if self.restart.take() {
            self.restart_wal();
        }
        Ok(results)
    }

    /// The oldest records first (the table is ordered by expiry, so this
    /// reads and deletes from its front), each chunk its own short
    /// transaction, and the same records out of the index. Strictly before
    /// `now`: `expires_at` already is exp + leeway, and a token whose
    /// record is purged no longer verifies.
    fn purge_chunk(&mut self, now: i64) -> Result<u64, StorageError> {
        let mut purged = Vec::new();
        let mut last_second = i64::MIN;
        {
            let mut delete = self
                .conn
                .prepare_cached(
                    "DELETE FROM used_jtis WHERE key IN \
                     (SELECT key FROM used_jtis WHERE key < ?1 ORDER BY key LIMIT ?2) \
                     RETURNING key, issuer, jti",
                )
                .map_err(map_err)?;
            let mut rows = delete.query(params![ReplayKey::first_of(now).0, PURGE_CHUNK]).map_err(map_err)?;
            while let Some(row) = rows.next().map_err(map_err)? {
                let key = ReplayKey(row.get(0).map_err(map_err)?);
                let issuer: String = row.get(1).map_err(map_err)?;
                let jti: String = row.get(2).map_err(map_err)?;
                last_second = last_second.max(key.second_of());
                purged.push(fingerprint(&issuer, &jti));
            }
        }
        if let Some(index) = self.replay.as_mut() {
            for key in &purged {
                index.seen.remove(key);
            }
            // Records are deleted in key order, so no second before the
            // last one this chunk reached has a record left: its count can
            // start over (a late record of such a second is numbered from
            // 0 and purged by the next chunk).
            index.next_in_second.retain(|second, _| *second >= last_second);
        }
        Ok(purged.len() as u64)
    }

    fn purge_chunk_size(&self) -> u64 {
        PURGE_CHUNK as u64
    }
}

/// Writes a batch in one transaction; `added` collects the fingerprints
/// entered into the index, for the caller to take back if the batch fails.
fn write_all(
    conn: &mut Connection,
    mut replay: Option<&mut ReplayIndex>,
    writes: &[Write],
    added: &mut Vec<[u8; 16]>,
) -> Result<Vec<Result<(), StorageError>>, StorageError> {
    // Any early return drops `tx`, which rolls the whole batch back; the
    // callers all get that error and none of them a token.
    let started = Instant::now();
    let tx = Transaction::new(conn, TransactionBehavior::Immediate).map_err(map_err)?;
    let mut results = Vec::with_capacity(writes.len());
    let mut statements = Statements::new(&tx)?;
    // The longest token span of this batch's held tokens, if it exceeds
    // the one recorded: raised in this transaction, and in the index once
    // it commits.
    let mut longer_span = None;
    for write in writes {
        let result = match write {
            Write::Exchange(rec) => {
                let key = fingerprint(&rec.used_jti.issuer, &rec.used_jti.jti);
                let index = replay.as_deref_mut().ok_or_else(|| StorageError::other("replay index not loaded"))?;
                if index.seen.contains(&key) {
                    results.push(Err(StorageError::Replay));
                    continue;
                }
                let Some(replay_key) = index.next_key(rec.used_jti.expires_at) else {
                    results.push(Err(StorageError::Unavailable(
                        format!(
                            "{} replay records already expire in second {}; retry with a token that expires at \
                             another second",
                            ReplayKey::PER_SECOND,
                            ReplayKey::second(rec.used_jti.expires_at)
                        )
                        .into(),
                    )));
                    continue;
                };
                let holds_issued = rec.audit_holds_issued();
                let result = if rec.new_pins.is_empty() {
                    write_exchange(&mut statements, rec, replay_key, holds_issued).map(Ok)?
                } else {
                    write_with_pins(&tx, &mut statements, rec, replay_key, holds_issued)?
                };
                if result.is_ok() {
                    index.seen.insert(key);
                    added.push(key);
                    if let (true, Some(expires_at)) = (holds_issued, rec.audit.token_expires_at) {
                        let span = token_span(&rec.audit.id, expires_at);
                        if span > longer_span.unwrap_or(index.token_span) {
                            longer_span = Some(span);
                        }
                    }
                }
                result
            }
            Write::Denial(audit) => insert_audit(&mut statements, audit).map(Ok)?,
        };
        results.push(result);
    }
    drop(statements);
    if let Some(span) = longer_span {
        tx.execute(
            "INSERT INTO token_span (one, max_secs) VALUES (1, ?1) \
             ON CONFLICT (one) DO UPDATE SET max_secs = max(max_secs, excluded.max_secs)",
            [span],
        )
        .map_err(map_err)?;
    }
    let committing = Instant::now();
    tx.commit().map_err(map_err)?;
    if let (Some(span), Some(index)) = (longer_span, replay) {
        index.token_span = index.token_span.max(span);
    }
    // At debug, the two halves of the "group commit" line's time: the
    // statements (mostly CPU), then the commit (mostly the WAL's writes
    // and its sync), so a slow batch shows which half it was slow in.
    tracing::debug!(
        statements_micros = (committing - started).as_micros() as u64,
        commit_micros = committing.elapsed().as_micros() as u64,
        "SQLite batch"
    );
    Ok(results)
}

impl SqliteBatchWriter {
    /// Between batches, holding no lock: copies what the background
    /// checkpoints left and starts the WAL over (see `checkpoint`).
    ///
    /// It waits for the checkpoint lock and for readers only briefly
    /// ([`RESTART_PATIENCE`]): a background checkpoint that is still
    /// copying and syncing could hold it for a long time, and every
    /// exchange queued behind this writer would wait with it. When it
    /// cannot run now it asks again, and the next batch retries. A failure
    /// leaves the WAL longer, nothing else.
    fn restart_wal(&mut self) {
        let started = std::time::Instant::now();
        let brief = self.conn.busy_handler(Some(wait_briefly));
        let restarted: Result<(i64, i64, i64), _> = brief.and_then(|()| {
            self.conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        });
        if let Err(e) = self.conn.busy_handler(Some(wait_for_lock)) {
            tracing::warn!("restoring the SQLite busy handler failed: {e}");
        }
        match restarted {
            Ok((0, frames, _)) => {
                tracing::debug!(frames, micros = started.elapsed().as_micros() as u64, "WAL restarted")
            }
            Ok((_, frames, copied)) => {
                tracing::debug!(frames, copied, "WAL restart deferred: a checkpoint or reader is busy");
                self.restart.ask();
            }
            Err(e) if is_busy(&e) => {
                tracing::debug!("WAL restart deferred: {e}");
                self.restart.ask();
            }
            Err(e) => tracing::warn!("restarting the SQLite WAL failed: {e}"),
        }
    }
}

/// How long a WAL restart waits for the checkpoint lock and for readers.
const RESTART_PATIENCE: Duration = Duration::from_millis(2);

/// The busy handler during a WAL restart: [`RESTART_PATIENCE`] at most.
fn wait_briefly(tries: i32) -> bool {
    if u128::try_from(tries).unwrap_or(u128::MAX) * BUSY_RETRY.as_micros() >= RESTART_PATIENCE.as_micros() {
        return false;
    }
    std::thread::sleep(BUSY_RETRY);
    true
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _) if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}

/// The statements every exchange runs, taken from the connection's cache
/// once per batch: looking each one up by its SQL text for every write
/// (hashing the text, moving it out of the cache and back) cost about as
/// much as binding its parameters.
struct Statements<'c> {
    tx: &'c Transaction<'c>,
    used_jti: CachedStatement<'c>,
    audit: CachedStatement<'c>,
    /// Taken when a batch first needs it: the exchange's own records never
    /// do (see [`insert_issued`]).
    issued: Option<CachedStatement<'c>>,
    /// The JSON columns of the audit row being inserted, one after another
    /// (see [`insert_audit`]); reused by every row of the batch.
    json: Vec<u8>,
}

impl<'c> Statements<'c> {
    fn new(tx: &'c Transaction<'c>) -> Result<Statements<'c>, StorageError> {
        Ok(Statements {
            tx,
            used_jti: tx
                .prepare_cached("INSERT INTO used_jtis (key, issuer, jti) VALUES (?1, ?2, ?3)")
                .map_err(map_err)?,
            audit: tx.prepare_cached(super::audit_insert_sql()).map_err(map_err)?,
            issued: None,
            json: Vec::with_capacity(1024),
        })
    }
}

/// Writes one exchange without pins (the caller has ruled out a replay);
/// a failure fails the batch. `holds_issued`: its audit row holds its
/// token ([`ExchangeRecord::audit_holds_issued`]).
fn write_exchange(
    statements: &mut Statements<'_>,
    rec: &ExchangeRecord,
    key: ReplayKey,
    holds_issued: bool,
) -> Result<(), StorageError> {
    insert_used_jti(&mut statements.used_jti, rec, key)?;
    insert_audit(statements, &rec.audit)?;
    insert_issued(statements, rec, holds_issued)
}

/// Writes one exchange that records pins, under its own savepoint: a pin
/// conflict undoes this exchange only. The outer `Result` fails the batch;
/// the inner one is this exchange's own outcome.
fn write_with_pins(
    tx: &Transaction<'_>,
    statements: &mut Statements<'_>,
    rec: &ExchangeRecord,
    key: ReplayKey,
    holds_issued: bool,
) -> Result<Result<(), StorageError>, StorageError> {
    tx.execute_batch("SAVEPOINT exchange").map_err(map_err)?;
    let outcome = (|| {
        insert_used_jti(&mut statements.used_jti, rec, key)?;
        for pin in &rec.new_pins {
            insert_pin(tx, pin)??;
        }
        insert_audit(statements, &rec.audit)?;
        insert_issued(statements, rec, holds_issued)
    })();
    match outcome {
        Ok(()) => {
            tx.execute_batch("RELEASE exchange").map_err(map_err)?;
            Ok(Ok(()))
        }
        Err(own @ StorageError::PinConflict { .. }) => {
            tx.execute_batch("ROLLBACK TO exchange; RELEASE exchange").map_err(map_err)?;
            Ok(Err(own))
        }
        Err(batch) => Err(batch),
    }
}

/// Records the subject token's `jti` as used, under `key`. Whether it was
/// used before is the replay index's to say (the caller asked it); a clash
/// of keys is a bug, not a replay.
fn insert_used_jti(insert: &mut CachedStatement<'_>, rec: &ExchangeRecord, key: ReplayKey) -> Result<(), StorageError> {
    let j = &rec.used_jti;
    insert.execute(params![key.0, j.issuer, j.jti]).map_err(map_err)?;
    Ok(())
}

/// Records the issued token, unless the exchange's audit row, just
/// inserted, already holds it (schema version 6): the exchange makes the
/// token's jti its grant's audit id, and the reads of issued tokens (in
/// `sqlite.rs`) find such a token by that row. Writing it again cost an
/// insert into a table and its index per exchange, and their pages in
/// every commit. A record the audit row does not hold goes into
/// `issued_tokens` as before.
fn insert_issued(
    statements: &mut Statements<'_>,
    rec: &ExchangeRecord,
    holds_issued: bool,
) -> Result<(), StorageError> {
    if holds_issued {
        return Ok(());
    }
    let insert = match &mut statements.issued {
        Some(insert) => insert,
        none => none.insert(
            statements
                .tx
                .prepare_cached(
                    "INSERT INTO issued_tokens (jti, org, subject, repository, run_id, rule, issued_at, expires_at) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(map_err)?,
        ),
    };
    let t = &rec.issued;
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

/// Inserts one audit row. Its id is written out on the stack and its seven
/// JSON columns into the batch's one buffer, where each had been a string
/// of its own (about seven allocations and frees per row on this thread).
fn insert_audit(statements: &mut Statements<'_>, a: &AuditRecord) -> Result<(), StorageError> {
    let Statements { audit: insert, json, .. } = statements;
    json.clear();
    let requested_permissions = append_json(json, &a.requested_permissions)?;
    let requested_apps = append_json(json, &a.requested_apps)?;
    let requested_machines = append_json(json, &a.requested_machines)?;
    let granted_permissions = append_json(json, &a.granted_permissions)?;
    let granted_apps = a.granted_apps.as_ref().map(|apps| append_json(json, apps)).transpose()?;
    let granted_machines = a.granted_machines.as_ref().map(|machines| append_json(json, machines)).transpose()?;
    let explanation = a.explanation.as_ref().map(|explanation| append_json(json, explanation)).transpose()?;
    // serde_json writes UTF-8; checked once rather than trusted.
    let json = std::str::from_utf8(json).map_err(StorageError::other)?;
    let text = |range: std::ops::Range<usize>| json.get(range).ok_or_else(|| StorageError::other("audit JSON range"));
    let mut id = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let id: &str = a.id.hyphenated().encode_lower(&mut id);
    insert
        .execute(params![
            id,
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
            text(requested_permissions)?,
            text(requested_apps)?,
            text(requested_machines)?,
            text(granted_permissions)?,
            granted_apps.map(text).transpose()?,
            granted_machines.map(text).transpose()?,
            a.token_jti,
            a.token_expires_at,
            explanation.map(text).transpose()?,
            a.client_addr,
        ])
        .map_err(map_err)?;
    Ok(())
}

/// Appends `value` as JSON to `json`; returns where it is.
fn append_json<T: serde::Serialize>(json: &mut Vec<u8>, value: &T) -> Result<std::ops::Range<usize>, StorageError> {
    let start = json.len();
    serde_json::to_writer(&mut *json, value).map_err(StorageError::other)?;
    Ok(start..json.len())
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

    use crate::storage::suite;
    use crate::storage::{Storage, StorageError};

    #[test]
    fn replay_keys_sort_by_second_then_number_and_stay_in_range() {
        let key = ReplayKey::new(1_000, 5).expect("room");
        assert_eq!((key.second_of(), key.number()), (1_000, 5));
        assert!(ReplayKey::first_of(1_000).0 < key.0 && key.0 < ReplayKey::first_of(1_001).0);
        assert!(ReplayKey::new(999, ReplayKey::PER_SECOND - 1).expect("room").0 < ReplayKey::first_of(1_000).0);
        assert_eq!(ReplayKey::new(1_000, ReplayKey::PER_SECOND), None);
        assert_eq!(ReplayKey::new(1_000, -1), None);
        // Expiries no key can name are kept as the nearest second it can.
        assert_eq!(ReplayKey::second(-5), 0);
        assert_eq!(ReplayKey::second(i64::MAX), ReplayKey::LAST_SECOND);
        let last = ReplayKey::new(ReplayKey::LAST_SECOND, ReplayKey::PER_SECOND - 1).expect("room");
        assert_eq!(last.second_of(), ReplayKey::LAST_SECOND);
        assert_eq!(ReplayKey::first_of(i64::MAX), ReplayKey::first_of(ReplayKey::LAST_SECOND));
    }

    #[test]
    fn a_token_span_counts_from_the_whole_seconds_in_its_id() {
        use uuid::{NoContext, Timestamp, Uuid};
        let id = Uuid::new_v7(Timestamp::from_unix(NoContext, 10_000, 999_000_000));
        assert_eq!(token_span(&id, 10_600), 600);
        assert_eq!(token_span(&id, 9_000), 0, "never negative");
        // Not a UUIDv7: its first 48 bits count all the same.
        let other = Uuid::from_bytes([0, 0, 0, 0, 0x27, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(token_span(&other, 20), 10, "10,000 ms");
        assert_eq!(token_span(&Uuid::max(), i64::MAX), i64::MAX - 281_474_976_710, "no overflow");
    }

    /// A replay index over an empty file, for the counting tests.
    fn empty_index(dir: &tempfile::TempDir) -> ReplayIndex {
        ReplayIndex {
            seen: Fingerprints::new(),
            next_in_second: HashMap::new(),
            token_span: 0,
            _lock: std::fs::File::create(dir.path().join("lock")).expect("lock file"),
        }
    }

    #[test]
    fn a_full_second_takes_no_more_records() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut index = empty_index(&dir);
        index.next_in_second.insert(7, ReplayKey::PER_SECOND - 1);
        assert_eq!(index.next_key(7).map(ReplayKey::number), Some(ReplayKey::PER_SECOND - 1));
        assert_eq!(index.next_key(7), None);
        assert_eq!(index.next_key(8).map(ReplayKey::number), Some(0), "the next second has room");
    }

    /// Purging forgets the counts of the seconds it emptied, and only those.
    #[tokio::test]
    async fn purging_forgets_the_counts_of_emptied_seconds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = writer_on_a_new_file(&dir).await;
        let writes: Vec<Write> = [("a", 1_000), ("b", 1_000), ("c", 2_000), ("d", 3_000)]
            .into_iter()
            .map(|(jti, exp)| {
                let mut rec = suite::exchange(jti, &format!("token-{jti}"), exp);
                rec.new_pins.clear();
                Write::Exchange(Box::new(rec))
            })
            .collect();
        assert!(writer.write_batch(&writes).expect("batch").iter().all(Result::is_ok));
        let leeway = crate::storage::JTI_RETENTION_LEEWAY_SECS;
        let counted = |writer: &SqliteBatchWriter| {
            let mut seconds: Vec<(i64, i64)> =
                writer.replay.as_ref().expect("loaded").next_in_second.iter().map(|(s, n)| (*s, *n)).collect();
            seconds.sort_unstable();
            seconds
        };
        assert_eq!(counted(&writer), [(1_000 + leeway, 2), (2_000 + leeway, 1), (3_000 + leeway, 1)]);
        assert_eq!(writer.purge_chunk(2_500 + leeway).expect("purge"), 3);
        assert_eq!(counted(&writer), [(2_000 + leeway, 1), (3_000 + leeway, 1)], "the last second reached is kept");
        drop(writer);
    }

    async fn store_at(path: &Path) -> super::super::SqliteStore {
        super::super::SqliteStore::open(path.to_str().expect("utf-8"), &Default::default()).await.expect("open")
    }

    /// A batch writer of its own on a new database file in `dir`, migrated
    /// by a store that is closed again.
    async fn writer_on_a_new_file(dir: &tempfile::TempDir) -> SqliteBatchWriter {
        let path = dir.path().join("writ.db");
        store_at(&path).await.close().await;
        SqliteBatchWriter::open(&path, Duration::from_secs(1), RestartWanted::default()).expect("writer")
    }

    /// Each (issuer, jti) is exchanged once, whatever `exp` it comes with,
    /// although the table's key now starts with the expiry.
    #[tokio::test]
    async fn a_jti_is_accepted_once_even_with_another_exp() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = store_at(&dir.path().join("writ.db")).await;
        store.record_exchange(suite::exchange("subject-1", "token-1", 1_000)).await.expect("first use");
        let mut again = suite::exchange("subject-1", "token-2", 2_000);
        again.new_pins.clear();
        assert!(matches!(store.record_exchange(again).await, Err(StorageError::Replay)));
        store.close().await;
    }

    /// The index is rebuilt from the table: a restart forgets no replay.
    #[tokio::test]
    async fn replays_are_refused_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let store = store_at(&path).await;
        store.record_exchange(suite::exchange("subject-1", "token-1", 1_000)).await.expect("first use");
        store.close().await;
        drop(store);
        let reopened = store_at(&path).await;
        let mut replay = suite::exchange("subject-1", "token-2", 1_500);
        replay.new_pins.clear();
        assert!(matches!(reopened.record_exchange(replay).await, Err(StorageError::Replay)));
        reopened.record_exchange(suite::exchange("subject-2", "token-3", 1_000)).await.expect("a new jti");
        reopened.close().await;
    }

    /// Replay records of one second are kept in arrival order, not in the
    /// order of their random jtis (schema v5), so a commit appends to the
    /// second's last page; after a restart the count goes on above the
    /// table's largest `seq` instead of clashing with it.
    #[tokio::test]
    async fn replay_records_of_one_second_are_in_arrival_order_across_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let store = store_at(&path).await;
        for (i, jti) in ["zz", "aa", "mm"].into_iter().enumerate() {
            let mut rec = suite::exchange(jti, &format!("token-{i}"), 1_000);
            if i > 0 {
                rec.new_pins.clear();
            }
            store.record_exchange(rec).await.expect("exchange");
        }
        store.close().await;
        drop(store);
        let reopened = store_at(&path).await;
        let mut rec = suite::exchange("bb", "token-3", 1_000);
        rec.new_pins.clear();
        reopened.record_exchange(rec).await.expect("the same second after a restart");
        let order: Vec<String> = sqlx::query_scalar("SELECT jti FROM used_jtis ORDER BY key")
            .fetch_all(&reopened.reader)
            .await
            .expect("records");
        assert_eq!(order, ["zz", "aa", "mm", "bb"]);
        reopened.close().await;
    }

    /// A second server on the same file could not see the first one's
    /// replay index: it refuses exchanges (503) but can do everything else
    /// (`writ keys rotate` opens the store while a server runs).
    #[tokio::test]
    async fn only_one_store_records_exchanges_in_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("writ.db");
        let first = store_at(&path).await;
        first.record_exchange(suite::exchange("subject-1", "token-1", 1_000)).await.expect("first server");
        let second = store_at(&path).await;
        let refused = second.record_exchange(suite::exchange("subject-2", "token-2", 1_000)).await;
        match refused {
            Err(StorageError::Unavailable(e)) => {
                assert!(e.to_string().contains("another writ server records exchanges"), "{e}")
            }
            other => panic!("expected 503, got {other:?}"),
        }
        second.ping().await.expect("reads work");
        assert!(second.signing_keys().await.expect("keys").is_empty());
        first.record_exchange(suite::exchange("subject-3", "token-3", 1_000)).await.expect("the first goes on");
        first.close().await;
        second.close().await;
    }

    /// Purging takes records out of the index as well as the table, so the
    /// index stays as small as the live records.
    #[tokio::test]
    async fn purging_empties_the_index_with_the_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut writer = writer_on_a_new_file(&dir).await;
        let writes: Vec<Write> = (0..(PURGE_CHUNK + 10))
            .map(|i| {
                let mut rec = suite::exchange(&format!("s-{i}"), &format!("t-{i}"), 1_000 + i % 3);
                rec.new_pins.clear();
                Write::Exchange(Box::new(rec))
            })
            .collect();
        let results = writer.write_batch(&writes).expect("batch");
        assert!(results.iter().all(Result::is_ok));
        let live = |w: &SqliteBatchWriter| w.replay.as_ref().map_or(0, |r| r.seen.len());
        assert_eq!(live(&writer), writes.len());
        let mut purged = 0;
        loop {
            let n = writer.purge_chunk(1_000_000).expect("purge");
            purged += n;
            if n < writer.purge_chunk_size() {
                break;
            }
        }
        assert_eq!(purged as usize, writes.len());
        assert_eq!(live(&writer), 0, "the index forgot every purged record");
        let again = suite::exchange("s-1", "t-again", 5_000);
        assert!(writer.write_batch(&[Write::Exchange(Box::new(again))]).expect("batch")[0].is_ok());
    }

    #[test]
    fn fingerprints_separate_issuer_and_jti() {
        assert_ne!(fingerprint("https://a", "bc"), fingerprint("https://ab", "c"));
        assert_eq!(fingerprint("https://a", "bc"), fingerprint("https://a", "bc"));
    }

    #[test]
    fn the_fingerprint_set_spreads_over_its_shards_and_forgets_what_is_removed() {
        let mut set = Fingerprints::new();
        let keys: Vec<[u8; 16]> = (0..50_000).map(|i| fingerprint("https://issuer", &format!("jti-{i}"))).collect();
        for key in &keys {
            assert!(set.insert(*key), "a new fingerprint is new");
        }
        assert!(!set.insert(keys[7]), "a fingerprint is kept once");
        assert_eq!(set.len(), keys.len());
        // Every shard takes its share (about 195 each), so each grows in
        // small steps of its own rather than all entries moving at once.
        let sizes: Vec<usize> = set.shards.iter().map(HashSet::len).collect();
        let (least, most) = (sizes.iter().min().copied(), sizes.iter().max().copied());
        assert!(least >= Some(120) && most <= Some(280), "uneven shards: {least:?}..{most:?}");
        for key in keys.iter().step_by(2) {
            assert!(set.remove(key));
        }
        assert_eq!(set.len(), keys.len() / 2);
        assert!(keys.iter().step_by(2).all(|k| !set.contains(k)));
        assert!(keys.iter().skip(1).step_by(2).all(|k| set.contains(k)));
    }

    #[test]
    fn audit_insert_has_one_placeholder_per_column() {
        let sql = super::super::audit_insert_sql();
        assert_eq!(sql.matches('?').count(), super::super::AUDIT_COLUMNS.split(',').count());
        assert!(sql.ends_with("?27)"), "{sql}");
    }
}
