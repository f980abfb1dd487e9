//! Group commit: the exchange path's writes from many concurrent requests
//! share one transaction, and so one fsync, without giving up any
//! request's atomicity or durability.
//!
//! Callers hand their [`Write`] to one writer thread through a bounded
//! queue and wait. The writer takes everything queued (up to [`MAX_BATCH`]), has
//! the backend ([`BatchWriter`]) write it in one transaction in which a
//! replay or pin conflict fails only its own write, commits once, and only
//! then answers each caller with its own result:
//!
//! - **Durability is unchanged.** A caller hears `Ok` only after the commit
//!   that holds its write returned, and that commit syncs like any other
//!   (SQLite: `synchronous = FULL`). "No audit record, no token" holds per
//!   request.
//! - **Atomicity is per write.** Each write commits whole or not at all; a
//!   failed commit fails every write of the batch, and none is visible.
//! - **Throughput follows concurrency.** While one batch syncs (milliseconds
//!   on real disks) the next one fills, so the rate is no longer bounded by
//!   one fsync per exchange. A write that comes at least
//!   [`MIN_COMMIT_INTERVAL`] after the previous commit began is committed
//!   at once. One that comes sooner waits for the rest of that interval,
//!   and so does the next exchange of a client that sends them one after
//!   another: such a client sees about 2 ms per exchange (docs/PERFORMANCE.md,
//!   session 25).
//!
//! The queue is bounded ([`QUEUE_CAPACITY`]): when storage falls behind,
//! requests wait for a slot instead of piling up in memory.

use tokio::sync::{mpsc, oneshot};

use super::{AuditRecord, ExchangeRecord, StorageError};

/// Most writes committed in one transaction. Bounds the time one commit
/// holds the write lock and the work lost to a failed commit.
pub const MAX_BATCH: usize = 512;

/// Writes that may wait for the writer at once.
pub const QUEUE_CAPACITY: usize = 4096;

/// Least time from the start of one commit to the start of the next.
///
/// Each commit writes every page it touched to the WAL whole, and the
/// last page of each table and index is touched by any write at all, so
/// the bytes written (and the CPU spent writing them) per commit barely
/// depend on how many writes it holds. Where a sync is quick, a writer
/// that commits as soon as anything is queued makes many small commits
/// under load and spends most of its time rewriting the same pages. When
/// the previous commit started less than this long ago, the writer
/// therefore lets the queue fill for the rest of this interval first.
/// A write after a pause at least this long commits at once. Any other
/// write waits at most this much, the lone write of a client that sends
/// one exchange after another too. 2 ms measured best of 0, 1 and 2 ms
/// (docs/PERFORMANCE.md).
pub const MIN_COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);

/// One write of the exchange path.
#[derive(Debug)]
pub enum Write {
    /// A granted exchange ([`super::Storage::record_exchange`]).
    Exchange(Box<ExchangeRecord>),
    /// A denial's audit record ([`super::Storage::record_denial`]).
    Denial(Box<AuditRecord>),
}

/// A backend's way to write a batch in one transaction. It runs on the
/// group-commit thread, so it may block (on SQL, on the fsync of a commit).
pub trait BatchWriter: Send + 'static {
    /// Writes `writes` in one transaction and commits it. Returns one result
    /// per write, in order, when the transaction committed (a write that
    /// failed on its own — replay, pin conflict — left no trace in it), or
    /// the error that stopped the whole batch (nothing of it committed).
    fn write_batch(&mut self, writes: &[Write]) -> Result<Vec<Result<(), StorageError>>, StorageError>;

    /// Deletes at most one chunk of the replay records that expired before
    /// `now` and returns how many it deleted; fewer than
    /// [`purge_chunk_size`](Self::purge_chunk_size) means none are left.
    /// The writer calls it between batches until it is done, so exchanges
    /// wait for one chunk at most.
    fn purge_chunk(&mut self, now: i64) -> Result<u64, StorageError>;

    /// Records per [`purge_chunk`](Self::purge_chunk).
    fn purge_chunk_size(&self) -> u64;
}

/// The handle callers write through. Cloning shares the writer.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    queue: mpsc::Sender<Job>,
}

enum Job {
    Write {
        write: Write,
        reply: oneshot::Sender<(Result<(), StorageError>, Write)>,
    },
    /// Delete the replay records that expired before `now`.
    Purge {
        now: i64,
        reply: oneshot::Sender<Result<u64, StorageError>>,
    },
    /// Stop after the writes queued before it; answered once the writer
    /// (and its connection) is gone.
    Close(std::sync::mpsc::Sender<()>),
}

impl GroupCommit {
    /// Starts the writer on a thread of its own, named `name`. It ends when
    /// the last handle is dropped or [`close`](Self::close) is called.
    ///
    /// A dedicated thread rather than a Tokio task: the writer blocks on
    /// SQL and on each commit's fsync, and callers hand it their writes
    /// without a hop through the runtime's blocking pool.
    pub fn start<W: BatchWriter>(name: &str, writer: W) -> Result<GroupCommit, StorageError> {
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || run(writer, jobs))
            .map_err(|e| StorageError::Unavailable(format!("starting the storage writer thread: {e}").into()))?;
        Ok(GroupCommit { queue })
    }

    /// Queues `write` and waits until the batch holding it has committed
    /// (or failed).
    ///
    /// If the caller stops waiting (its request was cancelled), the write
    /// still commits with its batch: like a commit that finishes just
    /// before the client hangs up, the token is recorded but never sent.
    pub async fn write(&self, write: Write) -> Result<(), StorageError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job::Write { write, reply }).await.map_err(|_| stopped())?;
        // The write comes back with its result and is freed here, by the
        // thread that most likely allocated it: its few dozen strings freed
        // on the writer thread instead had the allocator hand each back
        // across threads.
        let (result, _write) = answer.await.map_err(|_| stopped())?;
        result
    }

    /// Deletes the replay records that expired before `now`, a chunk at a
    /// time between batches, and returns how many.
    pub async fn purge(&self, now: i64) -> Result<u64, StorageError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Job::Purge { now, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Stops the writer after what is queued and waits until it has
    /// closed its connection. Later writes fail as unavailable.
    pub async fn close(&self) {
        let (done, finished) = std::sync::mpsc::channel();
        if self.queue.send(Job::Close(done)).await.is_ok() {
            // The writer answers by dropping `done` as its thread ends.
            let _ = tokio::task::spawn_blocking(move || finished.recv()).await;
        }
    }
}

fn stopped() -> StorageError {
    StorageError::Unavailable("the storage writer has stopped".into())
}

/// A purge under way: the latest `now` asked for, what it deleted so far,
/// and who waits for it.
struct Purging {
    now: i64,
    deleted: u64,
    replies: Vec<oneshot::Sender<Result<u64, StorageError>>>,
}

fn run<W: BatchWriter>(mut writer: W, mut jobs: mpsc::Receiver<Job>) {
    let mut writes: Vec<Write> = Vec::with_capacity(MAX_BATCH);
    let mut replies = Vec::with_capacity(MAX_BATCH);
    let mut closing = None;
    let mut purge: Option<Purging> = None;
    let opened = std::time::Instant::now();
    let mut last_commit = opened.checked_sub(MIN_COMMIT_INTERVAL).unwrap_or(opened);
    while closing.is_none() {
        // Block for the first job (unless a purge is under way), let the
        // queue fill for what is left of the commit interval, then take
        // whatever is queued.
        let first = if purge.is_some() {
            jobs.try_recv().ok()
        } else {
            let Some(first) = jobs.blocking_recv() else { return };
            Some(first)
        };
        if first.is_some() {
            let fill = MIN_COMMIT_INTERVAL.saturating_sub(last_commit.elapsed());
            if !fill.is_zero() {
                std::thread::sleep(fill);
            }
        }
        let mut next = first;
        while let Some(job) = next.take() {
            match job {
                Job::Write { write, reply } => {
                    writes.push(write);
                    replies.push(reply);
                }
                Job::Purge { now, reply } => match &mut purge {
                    // One purge at a time; a later `now` covers an earlier.
                    Some(running) => {
                        running.now = running.now.max(now);
                        running.replies.push(reply);
                    }
                    None => purge = Some(Purging { now, deleted: 0, replies: vec![reply] }),
                },
                Job::Close(done) => {
                    closing = Some(done);
                    break;
                }
            }
            if writes.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        if let Some(running) = &mut purge {
            match writer.purge_chunk(running.now) {
                Ok(deleted) => {
                    running.deleted += deleted;
                    if deleted < writer.purge_chunk_size()
                        && let Some(done) = purge.take()
                    {
                        for reply in done.replies {
                            let _ = reply.send(Ok(done.deleted));
                        }
                    }
                }
                Err(e) => {
                    if let Some(failed) = purge.take() {
                        for reply in failed.replies {
                            let _ = reply.send(Err(copy_error(&e)));
                        }
                    }
                }
            }
        }
        if writes.is_empty() {
            continue;
        }
        let started = std::time::Instant::now();
        last_commit = started;
        let written = writer.write_batch(&writes);
        tracing::debug!(writes = writes.len(), micros = started.elapsed().as_micros() as u64, "group commit");
        match written {
            Ok(results) if results.len() == writes.len() => {
                for ((reply, result), write) in replies.drain(..).zip(results).zip(writes.drain(..)) {
                    // A caller that stopped waiting needs no answer.
                    let _ = reply.send((result, write));
                }
            }
            Ok(results) => {
                tracing::error!(
                    writes = writes.len(),
                    results = results.len(),
                    "batch writer answered the wrong count"
                );
                for (reply, write) in replies.drain(..).zip(writes.drain(..)) {
                    let _ =
                        reply.send((Err(StorageError::other("storage batch writer answered the wrong count")), write));
                }
            }
            Err(e) => {
                for (reply, write) in replies.drain(..).zip(writes.drain(..)) {
                    let _ = reply.send((Err(copy_error(&e)), write));
                }
            }
        }
        writes.clear();
    }
    // Writes queued after the close are refused: dropping `jobs` (and
    // their replies) tells their callers the writer has stopped.
    drop(jobs);
    drop(writer);
    drop(closing);
}

/// The batch's error for each of its callers. Only its class matters to
/// them (the server answers `Unavailable` with 503 and `Retry-After`,
/// anything else with 500): per-write outcomes such as a replay never fail
/// a whole batch.
fn copy_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Unavailable(source) => StorageError::Unavailable(source.to_string().into()),
        other => StorageError::Other(other.to_string().into()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::storage::Outcome;

    /// Records batch sizes; fails writes whose audit org is "replay", and
    /// whole batches that contain org "broken".
    #[derive(Default)]
    struct Fake {
        batches: Arc<std::sync::Mutex<Vec<usize>>>,
        in_flight: Arc<AtomicUsize>,
    }

    impl BatchWriter for Fake {
        fn purge_chunk(&mut self, _now: i64) -> Result<u64, StorageError> {
            Ok(0)
        }

        fn purge_chunk_size(&self) -> u64 {
            1
        }

        fn write_batch(&mut self, writes: &[Write]) -> Result<Vec<Result<(), StorageError>>, StorageError> {
            assert_eq!(self.in_flight.fetch_add(1, Ordering::SeqCst), 0, "one batch at a time");
            std::thread::yield_now();
            self.batches.lock().expect("lock").push(writes.len());
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let org = |w: &Write| match w {
                Write::Exchange(r) => r.audit.org.clone(),
                Write::Denial(a) => a.org.clone(),
            };
            if writes.iter().any(|w| org(w) == "broken") {
                return Err(StorageError::Unavailable("disk full".into()));
            }
            Ok(writes.iter().map(|w| if org(w) == "replay" { Err(StorageError::Replay) } else { Ok(()) }).collect())
        }
    }

    fn denial(org: &str) -> Write {
        Write::Denial(Box::new(AuditRecord::new(1, "req", org, Outcome::Denied)))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writes_share_batches_and_get_their_own_results() {
        let fake = Fake::default();
        let batches = fake.batches.clone();
        let commits = GroupCommit::start("test-writer", fake).expect("start");
        let tasks: Vec<_> = (0..200)
            .map(|i| {
                let commits = commits.clone();
                tokio::spawn(async move {
                    let org = if i % 10 == 0 { "replay" } else { "ok" };
                    (org, commits.write(denial(org)).await)
                })
            })
            .collect();
        for t in tasks {
            let (org, result) = t.await.expect("task");
            match org {
                "replay" => assert!(matches!(result, Err(StorageError::Replay)), "{result:?}"),
                _ => assert!(result.is_ok(), "{result:?}"),
            }
        }
        let batches = batches.lock().expect("lock");
        assert_eq!(batches.iter().sum::<usize>(), 200);
        assert!(batches.iter().all(|&n| n <= MAX_BATCH));
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_caller_with_its_class() {
        let commits = GroupCommit::start("test-writer", Fake::default()).expect("start");
        let (a, b) = tokio::join!(commits.write(denial("broken")), commits.write(denial("ok")));
        assert!(matches!(a, Err(StorageError::Unavailable(_))), "{a:?}");
        // "ok" either shared the broken batch (and failed with it) or
        // committed alone; it is never told Ok for a batch that failed.
        assert!(b.is_ok() || matches!(b, Err(StorageError::Unavailable(_))), "{b:?}");
    }
}
