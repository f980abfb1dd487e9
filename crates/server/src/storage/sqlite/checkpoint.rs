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
//!   alongside the writer and never blocks it;
//! - when the WAL has grown past [`WAL_RESTART_FRAMES`] (under sustained
//!   load a passive checkpoint never quite catches up, and the WAL only
//!   starts over from its beginning once it has), a `RESTART` checkpoint
//!   by the exchange writer itself, between two of its batches (see
//!   [`RestartWanted`]). It copies only what the passive checkpoints left,
//!   briefly holds up writes, and bounds the WAL file. It has to be the
//!   writer: another connection asking for the write lock would wait
//!   behind a writer that takes it again right after every commit.
//!
//! Durability does not depend on checkpoints: a commit is durable once its
//! WAL frames are synced (`synchronous = FULL`), and a crash before a
//! checkpoint is recovered from the WAL at the next open.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::sqlite::SqlitePool;
use tokio::sync::watch;

/// How often the WAL is checkpointed in the background.
///
/// Each checkpoint ends with an fsync of the database file, and on a disk
/// that serves one flush at a time the WAL fsync of any commit in flight
/// waits behind it. Checkpointing once a second instead of ten times cuts
/// those waits (and the pages copied: a page changed many times in a
/// second is copied once) at the cost of a longer WAL. Measured with the
/// benchmark at 8,000 exchanges/s: p99 15 ms at 100 ms, 13.5 ms at 1 s,
/// 6.5 ms with no checkpoints at all (docs/PERFORMANCE.md). On a slower
/// host (session 3) no checkpoints at all was worse, 28.6 ms against
/// 12–16 ms: a WAL that only grows costs a journal commit per sync.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(1000);

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
/// are closed.
pub(super) async fn run(writer: SqlitePool, reader: SqlitePool, restart: RestartWanted, mut stop: watch::Receiver<()>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECKPOINT_INTERVAL) => {}
            changed = stop.changed() => if changed.is_err() { return },
        }
        if reader.is_closed() || writer.is_closed() {
            return;
        }
        let passive: Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&reader).await;
        match passive {
            Ok((_, wal_frames, _)) if wal_frames >= WAL_RESTART_FRAMES => restart.ask(),
            Ok(_) => {}
            Err(e) => tracing::warn!("SQLite WAL checkpoint failed: {e}"),
        }
    }
}
