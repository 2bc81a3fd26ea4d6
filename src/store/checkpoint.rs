//! SQLite WAL checkpoints on a connection of their own, off the writers' commit path.
//!
//! By default SQLite checkpoints inside a commit: the connection whose commit takes the WAL past 1,000 pages
//! copies the WAL back into the database file and syncs it before its commit returns. With group commit that
//! connection is a writer task that terminals are waiting on, so every few batches one batch's acknowledgement
//! waited for a checkpoint too (measured: sendlog ingestion 95–102k → 121–123k records/s without it,
//! BENCHMARKS.md, session 6). Every connection of the node is opened with `wal_autocheckpoint=0`, and this
//! task runs a PASSIVE checkpoint (which never blocks a writer) on its own connection, hence its own thread,
//! every [`INTERVAL`]. If writers outpace it so the WAL keeps growing, a RESTART checkpoint (which waits for
//! the writer of the moment, then makes the next one start the WAL over) bounds it at [`RESTART_FRAMES`].

use std::time::Duration;

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};
use tokio::sync::{mpsc, oneshot};

/// How often the WAL is checkpointed.
pub(crate) const INTERVAL: Duration = Duration::from_millis(200);
/// WAL frames (pages) past which a checkpoint waits for the writer of the moment to bound the file: 64 MiB of
/// 4 KiB pages.
pub(crate) const RESTART_FRAMES: i64 = 16_384;
/// `journal_size_limit` of every connection: the WAL file is cut back to this size when it starts over.
pub(crate) const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// Handle to the checkpoint task; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Checkpointer {
    stop: mpsc::Sender<oneshot::Sender<()>>,
}

impl Checkpointer {
    /// Starts the task on the current runtime; it owns `db` (a connection of its own).
    pub(crate) fn start(db: DatabaseConnection) -> Checkpointer {
        let (stop, mut stopped) = mpsc::channel::<oneshot::Sender<()>>(1);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = ticks.tick() => run_once(&db).await,
                    done = stopped.recv() => {
                        // Whatever the writers committed last goes into the database file before we stop.
                        run_once(&db).await;
                        let _ = db.close_by_ref().await;
                        if let Some(done) = done {
                            let _ = done.send(());
                        }
                        return;
                    }
                }
            }
        });
        Checkpointer { stop }
    }

    /// A last checkpoint, then the task's connection closes: for a graceful stop, after the writers flushed.
    pub(crate) async fn close(&self, limit: Duration) -> bool {
        let closed = async {
            let (done, closed) = oneshot::channel();
            if self.stop.send(done).await.is_ok() {
                let _ = closed.await;
            }
        };
        tokio::time::timeout(limit, closed).await.is_ok()
    }
}

async fn run_once(db: &DatabaseConnection) {
    let wal_frames = match checkpoint(db, "PASSIVE").await {
        Ok(frames) => frames,
        Err(err) => {
            tracing::warn!(%err, "WAL checkpoint failed");
            return;
        }
    };
    metrics::gauge!("gatehouse_sqlite_wal_frames").set(wal_frames as f64);
    if wal_frames > RESTART_FRAMES {
        tracing::debug!(frames = wal_frames, "WAL past its bound: restarting it");
        match checkpoint(db, "RESTART").await {
            Ok(frames) => metrics::gauge!("gatehouse_sqlite_wal_frames").set(frames as f64),
            Err(err) => tracing::warn!(%err, "WAL restart checkpoint failed"),
        }
    }
}

/// Runs `PRAGMA wal_checkpoint(mode)` on `db`; returns the pages in the WAL (its second column; the first says
/// whether it was blocked, the third how many pages were copied back).
async fn checkpoint(db: &DatabaseConnection, mode: &str) -> Result<i64, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DbBackend::Sqlite,
            format!("PRAGMA wal_checkpoint({mode})"),
        ))
        .await?
        .ok_or_else(|| DbErr::Custom("wal_checkpoint returned no row".into()))?;
    row.try_get_by_index(1)
}
