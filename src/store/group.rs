//! Group commit: one writer task per kind of write takes whatever writes are waiting, applies them in one
//! transaction, and only then answers each caller. A caller still waits for its own write to be committed
//! (so nothing is acknowledged before it is on disk), but concurrent callers share the commit, and so its
//! fsync on SQLite (`synchronous=FULL`) or its round trip and WAL flush on PostgreSQL.
//!
//! Used for the command audit trail ([`super::audit`]), attendance batches ([`super::LogBatch`]) and terminal
//! registrations ([`super::Registration`]), on SQLite. On PostgreSQL each waited-for write is its own
//! transaction (see [`GroupWriter`]); writes behind share them on both.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement,
    TransactionTrait,
};
use tokio::sync::{mpsc, oneshot, Notify};

use super::StoreError;

/// One write that can share a transaction with others.
pub(crate) trait GroupOp: Send + Sync + 'static {
    type Out: Send + 'static;

    /// How much of a transaction's budget this write uses (rows, say).
    fn weight(&self) -> usize {
        1
    }

    fn apply<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
    ) -> impl Future<Output = Result<Self::Out, DbErr>> + Send + 'a;

    /// Called once the write is committed, or has failed for good (a write behind has no caller to tell).
    fn settled(&self) {}

    /// The whole batch as one statement, with its outcomes, when it is one. On SQLite that statement runs on
    /// its own, without BEGIN and COMMIT (one statement is atomic by itself): two round trips to the
    /// database's thread fewer per commit, each a sleep and a wake-up of that thread. With small commits
    /// (forwarded commands' rows, committed before their answers) those wake-ups were most of its work.
    fn one_statement(_ops: &[&Self], _backend: DbBackend) -> Option<(Statement, Vec<Self::Out>)>
    where
        Self: Sized,
    {
        None
    }

    /// Applies a batch, in order, one outcome per write. The default applies each on its own; a kind of write
    /// can fold several into one statement (every statement is a round trip to the database's thread).
    fn apply_all<'a>(
        ops: &'a [&'a Self],
        txn: &'a DatabaseTransaction,
    ) -> impl Future<Output = Result<Vec<Self::Out>, DbErr>> + Send + 'a
    where
        Self: Sized,
    {
        async move {
            let mut outs = Vec::with_capacity(ops.len());
            for op in ops {
                outs.push(op.apply(txn).await?);
            }
            Ok(outs)
        }
    }
}

struct Write<Op: GroupOp> {
    op: Op,
    /// The waiting caller; `None` for a write behind.
    done: Option<oneshot::Sender<Result<Op::Out, DbErr>>>,
}

impl<Op: GroupOp> Write<Op> {
    fn someone_waits(&self) -> bool {
        self.done.as_ref().is_some_and(|done| !done.is_closed())
    }

    fn answer(self, result: Result<Op::Out, DbErr>) {
        if let Some(done) = self.done {
            let _ = done.send(result);
        }
    }
}

enum Job<Op: GroupOp> {
    Write(Write<Op>),
    /// Answered once every write queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Handle to one writer task; cheap to clone.
pub(crate) struct GroupWriter<Op: GroupOp> {
    tx: mpsc::Sender<Job<Op>>,
    /// Cuts a lingering transaction's wait short when a caller waits for its write (see [`run`]).
    urgent: Arc<Notify>,
    name: &'static str,
    /// The writer's connection (on PostgreSQL, the shared pool).
    db: DatabaseConnection,
    /// Set on PostgreSQL: each write runs in its own transaction on its own pooled connection. PostgreSQL
    /// takes concurrent writers and already shares WAL flushes between concurrent commits; funnelling them
    /// through one connection would serialize their round trips instead (measured: 29.6k → 16.5k records/s).
    direct: Option<DatabaseConnection>,
}

impl<Op: GroupOp> Clone for GroupWriter<Op> {
    fn clone(&self) -> Self {
        GroupWriter {
            tx: self.tx.clone(),
            urgent: self.urgent.clone(),
            name: self.name,
            db: self.db.clone(),
            direct: self.direct.clone(),
        }
    }
}

impl<Op: GroupOp> std::fmt::Debug for GroupWriter<Op> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupWriter")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<Op: GroupOp> GroupWriter<Op> {
    /// Starts the writer task on the current runtime. `name` labels its metrics; a transaction carries writes
    /// of at most `max_weight` in all (one heavier write goes alone); at most `queue` writes wait, callers
    /// beyond that wait for room (back-pressure, not growth).
    pub(crate) fn start(
        db: DatabaseConnection,
        name: &'static str,
        max_weight: usize,
        queue: usize,
    ) -> GroupWriter<Op> {
        Self::start_lingering(db, name, max_weight, queue, Duration::ZERO)
    }

    /// [`Self::start`], and a transaction of writes nobody waits for (see [`Self::write_behind`]) waits
    /// `linger` for more to fill it: each commit rewrites every page it touched, so fewer, fuller commits
    /// write less (a waiting caller's write ends the wait at once).
    pub(crate) fn start_lingering(
        db: DatabaseConnection,
        name: &'static str,
        max_weight: usize,
        queue: usize,
        linger: Duration,
    ) -> GroupWriter<Op> {
        let (tx, rx) = mpsc::channel(queue);
        let direct = (db.get_database_backend() != DbBackend::Sqlite).then(|| db.clone());
        // On PostgreSQL the task serves writes behind (nobody waits on them, so sharing a transaction costs
        // no one a round trip).
        let urgent = Arc::new(Notify::new());
        tokio::spawn(run(
            db.clone(),
            rx,
            urgent.clone(),
            name,
            max_weight,
            linger,
        ));
        GroupWriter {
            tx,
            urgent,
            name,
            db,
            direct,
        }
    }

    /// Commits whatever is queued (writes behind included), then closes the writer's connection, waiting at
    /// most `limit` in all: for a graceful stop.
    pub(crate) async fn close(&self, limit: Duration) -> bool {
        let flushed = async {
            let (done, flushed) = oneshot::channel();
            if self.tx.send(Job::Flush(done)).await.is_ok() {
                self.urgent.notify_waiters();
                let _ = flushed.await;
            }
            // On PostgreSQL `db` is the shared pool, which the store closes once every writer is flushed.
            if self.direct.is_none() {
                let _ = self.db.close_by_ref().await;
            }
        };
        tokio::time::timeout(limit, flushed).await.is_ok()
    }

    /// Queues `op` without waiting for its commit: it shares the next transaction with whatever else is
    /// waiting, on either database. Waits only for room in the queue (back-pressure).
    pub(crate) async fn write_behind(&self, op: Op) -> Result<(), StoreError> {
        self.tx
            .send(Job::Write(Write { op, done: None }))
            .await
            .map_err(|_| StoreError::Db(DbErr::Custom(format!("the {} writer stopped", self.name))))
    }

    /// [`Self::write_behind`] for a caller that cannot wait: queued at once, or handed back when the queue is
    /// full, for the caller to wait for room some other way (back-pressure, not growth).
    pub(crate) fn try_write_behind(&self, op: Op) -> Result<(), Op> {
        match self.tx.try_send(Job::Write(Write { op, done: None })) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(Job::Write(write))) => Err(write.op),
            Err(mpsc::error::TrySendError::Full(Job::Flush(_))) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::error!(
                    writer = self.name,
                    "the writer stopped; a write behind is lost"
                );
                Ok(())
            }
        }
    }

    /// Applies `op`, returning its outcome once it is committed.
    pub(crate) async fn write(&self, op: Op) -> Result<Op::Out, StoreError> {
        if let Some(db) = &self.direct {
            let applied = apply(db, std::iter::once(&op)).await;
            op.settled();
            let mut outs = applied?;
            return outs
                .pop()
                .ok_or_else(|| StoreError::Db(DbErr::Custom("no outcome".into())));
        }
        let (done, answer) = oneshot::channel();
        let gone = || StoreError::Db(DbErr::Custom(format!("the {} writer stopped", self.name)));
        self.tx
            .send(Job::Write(Write {
                op,
                done: Some(done),
            }))
            .await
            .map_err(|_| gone())?;
        self.urgent.notify_waiters();
        answer.await.map_err(|_| gone())?.map_err(StoreError::Db)
    }
}

async fn run<Op: GroupOp>(
    db: DatabaseConnection,
    mut rx: mpsc::Receiver<Job<Op>>,
    urgent: Arc<Notify>,
    name: &'static str,
    max_weight: usize,
    linger: Duration,
) {
    let mut batch: Vec<Write<Op>> = Vec::new();
    // A write that did not fit the last transaction opens the next one.
    let mut carried: Option<Write<Op>> = None;
    loop {
        let first = match carried.take() {
            Some(write) => write,
            None => loop {
                match rx.recv().await {
                    Some(Job::Write(write)) => break write,
                    // Nothing is queued: flushed already.
                    Some(Job::Flush(done)) => {
                        let _ = done.send(());
                    }
                    None => return,
                }
            },
        };
        let mut weight = first.op.weight();
        let mut someone_waits = first.someone_waits();
        batch.push(first);
        let mut flushes = Vec::new();
        let mut lingered = linger.is_zero();
        while weight < max_weight {
            let next = match rx.try_recv() {
                Ok(job) => job,
                Err(_) if lingered || someone_waits => break,
                // Only writes behind so far: wait a little for more to share the commit, then take what came.
                // Sleeping out the wait instead of receiving through it: each write would wake this task, and
                // a wake from another thread is a syscall and a context switch per write (BENCHMARKS.md,
                // session 10). A caller waiting for its write (or a flush) ends the wait: it queues its job,
                // then wakes whoever is registered here, so registering before the last look at the queue
                // misses no one, and no stale permit cuts a later wait short.
                Err(_) => {
                    let waiting_caller = urgent.notified();
                    tokio::pin!(waiting_caller);
                    waiting_caller.as_mut().enable();
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => {
                            lingered = true;
                            tokio::select! {
                                () = tokio::time::sleep(linger) => {}
                                () = waiting_caller => {}
                            }
                            continue;
                        }
                    }
                }
            };
            match next {
                Job::Flush(done) => {
                    flushes.push(done);
                    break;
                }
                Job::Write(write) if weight + write.op.weight() > max_weight => {
                    carried = Some(write);
                    break;
                }
                Job::Write(write) => {
                    weight += write.op.weight();
                    someone_waits |= write.someone_waits();
                    batch.push(write);
                }
            }
        }
        metrics::histogram!("gatehouse_group_commit_writes", "writer" => name)
            .record(batch.len() as f64);
        let started = std::time::Instant::now();
        match apply(&db, batch.iter().map(|j| &j.op)).await {
            Ok(outs) => {
                for (job, out) in batch.drain(..).zip(outs) {
                    job.op.settled();
                    job.answer(Ok(out));
                }
            }
            // One bad write must not fail its neighbours: retry each alone, so only it gets the error.
            Err(_) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let result = apply(&db, std::iter::once(&job.op))
                        .await
                        .map(|mut outs| outs.pop());
                    let result = match result {
                        Ok(Some(out)) => Ok(out),
                        Ok(None) => Err(DbErr::Custom("no outcome".into())),
                        Err(err) => Err(err),
                    };
                    if let Err(err) = &result {
                        tracing::error!(writer = name, %err, "a write failed");
                    }
                    job.op.settled();
                    job.answer(result);
                }
            }
            Err(err) => {
                tracing::error!(writer = name, %err, "a write failed");
                for job in batch.drain(..) {
                    job.op.settled();
                    job.answer(Err(DbErr::Custom(err.to_string())));
                }
            }
        }
        metrics::histogram!("gatehouse_db_write_duration_seconds", "op" => name)
            .record(started.elapsed().as_secs_f64());
        for done in flushes {
            let _ = done.send(());
        }
    }
}

async fn apply<'a, Op: GroupOp>(
    db: &DatabaseConnection,
    ops: impl Iterator<Item = &'a Op>,
) -> Result<Vec<Op::Out>, DbErr> {
    let ops: Vec<&Op> = ops.collect();
    let backend = db.get_database_backend();
    if backend == DbBackend::Sqlite {
        if let Some((statement, outs)) = Op::one_statement(&ops, backend) {
            db.execute_raw(statement).await?;
            return Ok(outs);
        }
    }
    let txn = db.begin().await?;
    let outs = Op::apply_all(&ops, &txn).await?;
    txn.commit().await?;
    Ok(outs)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A write that does nothing but count its settling.
    struct Counted(Arc<AtomicUsize>);

    impl GroupOp for Counted {
        type Out = ();

        async fn apply<'a>(&'a self, _txn: &'a DatabaseTransaction) -> Result<(), DbErr> {
            Ok(())
        }

        fn settled(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn lingering_writer(linger: Duration) -> GroupWriter<Counted> {
        let db = sea_orm::Database::connect("sqlite::memory:")
            .await
            .expect("in-memory SQLite");
        GroupWriter::start_lingering(db, "test", 100, 16, linger)
    }

    /// A writer lingering (for ten minutes here) with writes behind must still commit a waiting caller's write
    /// at once: a lost wake-up would hold it for the whole linger.
    #[tokio::test]
    async fn a_waiting_write_ends_the_linger_of_writes_behind() {
        let writer = lingering_writer(Duration::from_secs(600)).await;
        let settled = Arc::new(AtomicUsize::new(0));
        writer
            .write_behind(Counted(settled.clone()))
            .await
            .expect("queued");
        // Let the writer take the write behind and start lingering.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(settled.load(Ordering::SeqCst), 0, "still lingering");
        tokio::time::timeout(
            Duration::from_secs(20),
            writer.write(Counted(settled.clone())),
        )
        .await
        .expect("the waiting write ended the linger")
        .expect("committed");
        assert_eq!(settled.load(Ordering::SeqCst), 2, "both in the commit");
    }

    /// Writes behind alone are committed once the linger is over, without anyone waking the writer.
    #[tokio::test]
    async fn writes_behind_alone_are_committed_after_the_linger() {
        let writer = lingering_writer(Duration::from_millis(50)).await;
        let settled = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            assert!(writer.try_write_behind(Counted(settled.clone())).is_ok());
        }
        tokio::time::timeout(Duration::from_secs(20), async {
            while settled.load(Ordering::SeqCst) < 3 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("all three committed");
    }
}
