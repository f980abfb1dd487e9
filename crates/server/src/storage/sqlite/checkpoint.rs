//! WAL checkpoints off the write path.
//!
//! By default SQLite checkpoints (copies the WAL's pages into the database
//! file and syncs it) inside the commit that pushes the WAL past 1000
//! pages, so every few hundred exchanges one commit, and every exchange
//! queued behind it, waits for several megabytes of writes and an extra
//! fsync. The writer connection therefore has automatic checkpoints off,
//! and this task checkpoints from a reader connection instead:
//!
//! - every [`CHECKPOINT_INTERVAL`] a `PASSIVE` checkpoint, which runs
//!   alongside the writer and never blocks it, followed by an `fdatasync`
//!   of the database file (see [`sync_database`]);
//! - when the WAL has grown past [`WAL_RESTART_FRAMES`] (under sustained
//!   load a passive checkpoint never quite catches up, and the WAL only
//!   starts over from its beginning once it has), a `RESTART` checkpoint
//!   by the exchange writer itself, between two of its batches (see
//!   [`RestartWanted`]). It copies only what the passive checkpoints left,
//!   briefly holds up writes, and bounds the WAL file. It has to be the
//!   writer: another connection asking for the write lock would wait
//!   behind a writer that takes it again right after every commit.
//!   Before asking for it, this task copies and syncs what was committed
//!   since its last checkpoint (see [`prepare_restart`]), so that the
//!   writes it holds up wait for about one millisecond, not ten.
//!
//! Why this task syncs the database file itself: a passive checkpoint
//! syncs the file only when it has copied the WAL to its very end, which
//! under load it never does (the writer commits while it copies). Left
//! alone, the pages it copies pile up unsynced until the `RESTART`, the
//! first checkpoint to reach the end, which then writes out seconds of
//! them while every exchange waits (session 6 measured 9–14 ms every two
//! seconds at 9,000 exchanges/s, the main cause of p99 above 10 ms). A
//! sync every [`CHECKPOINT_INTERVAL`] writes a quarter of a second of
//! pages at a time; a commit whose WAL sync meets one on the disk waits a
//! millisecond or two, not ten. These syncs come on top of SQLite's own
//! and replace none of them.
//!
//! Durability does not depend on checkpoints: a commit is durable once its
//! WAL frames are synced (`synchronous = FULL`), and a crash before a
//! checkpoint is recovered from the WAL at the next open.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use sqlx::sqlite::SqlitePool;
use tokio::sync::watch;

/// How often the WAL is checkpointed (and the database file synced) in the
/// background.
///
/// Shorter means less to write out per sync, so a commit whose WAL sync
/// meets one on the disk waits less; longer copies fewer pages (a page
/// changed many times between two checkpoints is copied once), but the
/// pages that change that often are the few last pages of each table, so
/// the difference is small. Measured with the benchmark at 9,000
/// exchanges/s (docs/PERFORMANCE.md, session 6): p99 6.8–7.1 ms at 250 ms
/// with a sync after each checkpoint, against 10.7–12.7 ms at 1 s without
/// those syncs. (Before this task synced the file, when only the
/// `RESTART` did, session 2 measured p99 15 ms at 100 ms and 13.5 ms at
/// 1 s.)
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(250);

/// WAL size, in pages, past which the WAL is restarted (64 MiB with 4 KiB
/// pages). The WAL file stays below about this plus what one
/// [`CHECKPOINT_INTERVAL`] of writes adds.
pub const WAL_RESTART_FRAMES: i64 = 16_384;

/// Set by the background task when the WAL should start over; the exchange
/// writer runs the `RESTART` checkpoint after its current batch and clears
/// it.
#[derive(Debug, Clone, Default)]
pub(super) struct RestartWanted(Arc<AtomicBool>);

impl RestartWanted {
    pub(super) fn ask(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// True once per request.
    pub(super) fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// Runs until `stop`'s sender is dropped (the store is gone) or the pools
/// are closed. `path` is the database file.
pub(super) async fn run(
    writer: SqlitePool,
    reader: SqlitePool,
    path: PathBuf,
    restart: RestartWanted,
    mut stop: watch::Receiver<()>,
) {
    // The WAL as the previous checkpoint left it: when nothing has changed
    // since, there is nothing to sync (an idle server does not flush the
    // disk four times a second).
    let mut last = None;
    // Whether the last sync failed: a failure is logged once at `warn` and
    // its repeats at `debug`, not four times a second.
    let mut failing = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
        if reader.is_closed() || writer.is_closed() {
            return;
        }
        match passive(&reader).await {
            Ok(wal) if wal.frames >= WAL_RESTART_FRAMES => {
                prepare_restart(&reader, &path).await;
                restart.ask();
                last = None;
            }
            Ok(wal) if Some(wal) == last => {}
            Ok(wal) => {
                match sync_database(&path).await {
                    Ok(()) if failing => {
                        tracing::info!("syncing {} after a checkpoint works again", path.display());
                        failing = false;
                    }
                    Ok(()) => {}
                    Err(e) if failing => tracing::debug!("syncing {} after a checkpoint failed: {e}", path.display()),
                    Err(e) => {
                        tracing::warn!(
                            "syncing {} after a checkpoint failed: {e} (SQLite's own syncs still guard every \
                             commit; this costs latency at the next WAL restart, not data)",
                            path.display()
                        );
                        failing = true;
                    }
                }
                last = Some(wal);
            }
            Err(e) => tracing::warn!("SQLite WAL checkpoint failed: {e}"),
        }
    }
}

/// What a checkpoint reports of the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Wal {
    /// Frames in the WAL.
    frames: i64,
    /// Of those, frames copied into the database file.
    copied: i64,
}

/// A `PASSIVE` checkpoint.
async fn passive(reader: &SqlitePool) -> Result<Wal, sqlx::Error> {
    let started = Instant::now();
    let (_, frames, copied): (i64, i64, i64) =
        sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(reader).await?;
    // At debug, beside the writer's "group commit" lines: a commit that
    // waited on the disk can be matched with the checkpoint work of the
    // same moment (docs/PERFORMANCE.md, session 11).
    tracing::debug!(frames, copied, micros = started.elapsed().as_micros() as u64, "WAL checkpoint (passive)");
    Ok(Wal { frames, copied })
}

/// Before the writer's `RESTART`: syncs what the checkpoint just copied,
/// copies what was committed meanwhile and syncs that too, so that the
/// `RESTART`, which holds up writes, has only a few milliseconds of
/// commits left to copy and sync. A failure here costs time, never data
/// (the `RESTART` still syncs the file itself before the WAL can start
/// over): it is logged and the restart goes ahead.
async fn prepare_restart(reader: &SqlitePool, path: &Path) {
    if let Err(e) = sync_database(path).await {
        tracing::warn!("syncing {} before a WAL restart failed: {e}", path.display());
        return;
    }
    if let Err(e) = passive(reader).await {
        tracing::warn!("SQLite WAL checkpoint failed: {e}");
        return;
    }
    if let Err(e) = sync_database(path).await {
        tracing::warn!("syncing {} before a WAL restart failed: {e}", path.display());
    }
}

/// `fdatasync` of the database file, on a blocking thread.
async fn sync_database(path: &Path) -> std::io::Result<()> {
    let path = path.to_owned();
    let started = Instant::now();
    let synced =
        tokio::task::spawn_blocking(move || database_file(&path)?.sync_data()).await.map_err(std::io::Error::other)?;
    tracing::debug!(
        ok = synced.is_ok(),
        micros = started.elapsed().as_micros() as u64,
        "database file synced after a checkpoint"
    );
    synced
}

/// The database file at `path`, opened read-only for syncing alone, once per
/// file for the life of the process, and never closed: closing any
/// descriptor of a file drops every POSIX lock the process holds on it,
/// SQLite's own included, so a handle that came and went would let another
/// process's SQLite believe no one here has the database open. Files are
/// told apart by device and inode, so a file replaced at the same path
/// gets a handle of its own. That is one descriptor per database file the
/// process ever opens: one for a server, one per store in a test binary.
fn database_file(path: &Path) -> std::io::Result<&'static File> {
    static OPEN: Mutex<Vec<((u64, u64), &'static File)>> = Mutex::new(Vec::new());
    let meta = std::fs::metadata(path)?;
    let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, file)) = open.iter().find(|(id, _)| *id == (meta.dev(), meta.ino())) {
        return Ok(file);
    }
    let file = File::open(path)?;
    let meta = file.metadata()?;
    let file: &'static File = Box::leak(Box::new(file));
    open.push(((meta.dev(), meta.ino()), file));
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_handle_per_file_and_a_new_one_for_a_replaced_file() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("writ.db");
        std::fs::write(&path, b"first").expect("write");
        let first = database_file(&path).expect("open");
        assert!(std::ptr::eq(first, database_file(&path).expect("open again")), "the same file, the same handle");
        first.sync_data().expect("a read-only handle can sync");

        // Replace the file: the next sync must reach the new one. (The old
        // file is kept until the end so that its inode cannot be reused.)
        let old = dir.path().join("writ.db.old");
        std::fs::rename(&path, &old).expect("rename");
        std::fs::write(&path, b"second").expect("write");
        let second = database_file(&path).expect("open the new file");
        assert!(!std::ptr::eq(first, second), "a replaced file gets a handle of its own");
        assert_eq!(second.metadata().expect("metadata").len(), 6, "the handle is the new file's");
        assert!(std::ptr::eq(first, database_file(&old).expect("the old file")), "the old file keeps its handle");
    }

    #[test]
    fn a_missing_file_is_an_error_not_a_handle() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let err = database_file(&dir.path().join("absent.db")).expect_err("no such file");
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
