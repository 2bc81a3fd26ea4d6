//! Group commit for the command audit trail. Every command writes its row up to three times (requested, sent,
//! finished); one transaction each made the database, not the devices, the limit on commands per second (and on
//! SQLite every commit is an fsync). One writer task takes whatever audit writes are waiting, applies them in
//! one transaction, and only then answers each caller: a caller still waits for its own write to be committed
//! (so reads after a command's answer see its row), but concurrent commands share the commit.

use chrono::{DateTime, Utc};
use entity::command;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, TransactionTrait,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::{CommandState, NewCommand, StoreError};

/// Writes applied in one transaction at most; more wait for the next one.
const MAX_BATCH: usize = 256;
/// Writes that may wait for the writer; callers beyond it wait for room (back-pressure, not growth).
const QUEUE: usize = 4096;

#[derive(Debug)]
pub(crate) enum AuditOp {
    Insert(NewCommand, DateTime<Utc>),
    Sent {
        id: Uuid,
        at: DateTime<Utc>,
    },
    Finish {
        id: Uuid,
        state: CommandState,
        reply: Option<Value>,
        error: Option<String>,
        at: DateTime<Utc>,
    },
}

struct Job {
    op: AuditOp,
    done: oneshot::Sender<Result<(), DbErr>>,
}

/// Handle to the node's audit writer; cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct AuditWriter {
    tx: mpsc::Sender<Job>,
}

impl AuditWriter {
    /// Starts the writer task on the current runtime.
    pub(crate) fn start(db: DatabaseConnection) -> AuditWriter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(db, rx));
        AuditWriter { tx }
    }

    /// Applies `op`, returning once it is committed.
    pub(crate) async fn write(&self, op: AuditOp) -> Result<(), StoreError> {
        let (done, answer) = oneshot::channel();
        let gone = || StoreError::Db(DbErr::Custom("the audit writer stopped".into()));
        self.tx.send(Job { op, done }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?.map_err(StoreError::Db)
    }
}

async fn run(db: DatabaseConnection, mut rx: mpsc::Receiver<Job>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        metrics::histogram!("gatehouse_audit_batch_size").record(batch.len() as f64);
        let started = std::time::Instant::now();
        match apply(&db, batch.iter().map(|j| &j.op)).await {
            Ok(()) => {
                for job in batch.drain(..) {
                    let _ = job.done.send(Ok(()));
                }
            }
            // One bad write must not fail its neighbours: retry each alone, so only it gets the error.
            Err(_) if batch.len() > 1 => {
                for job in batch.drain(..) {
                    let result = apply(&db, std::iter::once(&job.op)).await;
                    let _ = job.done.send(result);
                }
            }
            Err(err) => {
                for job in batch.drain(..) {
                    let _ = job.done.send(Err(DbErr::Custom(err.to_string())));
                }
            }
        }
        metrics::histogram!("gatehouse_db_write_duration_seconds", "op" => "command_audit")
            .record(started.elapsed().as_secs_f64());
    }
}

async fn apply<'a>(
    db: &DatabaseConnection,
    ops: impl Iterator<Item = &'a AuditOp>,
) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    for op in ops {
        apply_one(&txn, op).await?;
    }
    txn.commit().await
}

async fn apply_one<C: ConnectionTrait>(db: &C, op: &AuditOp) -> Result<(), DbErr> {
    match op {
        AuditOp::Insert(row, at) => {
            let model = command::ActiveModel {
                id: Set(row.id),
                device_kind: Set(row.device_kind.to_owned()),
                device: Set(row.device.clone()),
                command: Set(row.command.clone()),
                params: Set(row.params.clone()),
                state: Set(CommandState::Queued.as_str().to_owned()),
                reply: Set(None),
                error: Set(None),
                requested_at: Set(*at),
                sent_at: Set(None),
                finished_at: Set(None),
                deliver_queued: Set(row.deliver_queued),
                expires_at: Set(row.expires_at),
                claim_token: Set(None),
                claimed_at: Set(None),
            };
            command::Entity::insert(model)
                .exec_without_returning(db)
                .await?;
        }
        AuditOp::Sent { id, at } => {
            command::Entity::update_many()
                .col_expr(
                    command::Column::State,
                    Expr::value(CommandState::Sent.as_str()),
                )
                .col_expr(command::Column::SentAt, Expr::value(*at))
                .filter(command::Column::Id.eq(*id))
                .filter(command::Column::State.eq(CommandState::Queued.as_str()))
                .exec(db)
                .await?;
        }
        AuditOp::Finish {
            id,
            state,
            reply,
            error,
            at,
        } => {
            command::Entity::update_many()
                .col_expr(command::Column::State, Expr::value(state.as_str()))
                .col_expr(command::Column::Reply, Expr::value(reply.clone()))
                .col_expr(command::Column::Error, Expr::value(error.clone()))
                .col_expr(command::Column::FinishedAt, Expr::value(*at))
                .filter(command::Column::Id.eq(*id))
                .exec(db)
                .await?;
        }
    }
    Ok(())
}
