//! The command audit trail's writes. Every command writes its row up to three times (requested, sent,
//! finished); one transaction each made the database, not the devices, the limit on commands per second (and on
//! SQLite every commit is an fsync). They go through a group-commit writer ([`super::group`]): a caller still
//! waits for its own write to be committed (so reads after a command's answer see its row), but concurrent
//! commands share the commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use entity::command;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;

use super::group::{GroupOp, GroupWriter};
use super::{CommandState, NewCommand};

/// Writes applied in one transaction at most; more wait for the next one.
pub(crate) const MAX_BATCH: usize = 256;
/// How long a transaction of finished live commands waits to fill up (their readers find them in memory
/// meanwhile): every commit rewrites the index pages it touches, one per device in it.
pub(crate) const RECORD_LINGER: std::time::Duration = std::time::Duration::from_millis(20);
/// Writes that may wait for the writer; callers beyond it wait for room (back-pressure, not growth).
pub(crate) const QUEUE: usize = 4096;

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
    /// The whole row of a finished live command (see [`crate::devices::Origin::Live`]), written once, behind
    /// the answer; it leaves the table of live commands once settled.
    Record(Box<command::Model>, LiveCommands),
}

/// Rows of live commands not written yet, by id (see [`crate::devices::Origin::Live`]).
pub(crate) type LiveCommands = Arc<Mutex<HashMap<Uuid, LiveRow>>>;

#[derive(Debug)]
pub(crate) struct LiveRow {
    pub(crate) row: command::Model,
    /// Committed before the answer (the caller is on another node and reads the database).
    pub(crate) shared: bool,
}

/// Locks the table of live commands. Each use is one insert, update or remove, so a panic while holding the
/// lock cannot leave it half-changed: a poisoned lock is still usable.
pub(crate) fn lock(live: &LiveCommands) -> MutexGuard<'_, HashMap<Uuid, LiveRow>> {
    live.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Handle to the node's audit writer (group commit, see [`super::group`]).
pub(crate) type AuditWriter = GroupWriter<AuditOp>;

impl GroupOp for AuditOp {
    type Out = ();

    fn apply<'a>(
        &'a self,
        txn: &'a DatabaseTransaction,
    ) -> impl std::future::Future<Output = Result<(), DbErr>> + Send + 'a {
        apply_one(txn, self)
    }

    fn settled(&self) {
        if let AuditOp::Record(row, live) = self {
            lock(live).remove(&row.id);
        }
    }

    /// Finished live commands, the common case under load, go in as multi-row INSERTs.
    async fn apply_all<'a>(
        ops: &'a [&'a Self],
        txn: &'a DatabaseTransaction,
    ) -> Result<Vec<()>, DbErr> {
        let only_records = ops.iter().all(|op| matches!(op, AuditOp::Record(..)));
        if only_records && txn.get_database_backend() == DbBackend::Postgres {
            // Rows of finished live commands: their callers have their answers, or (forwarded) need the
            // row visible, not flushed; the WAL flush need not hold anyone up.
            txn.execute_unprepared("SET LOCAL synchronous_commit TO OFF")
                .await?;
        }
        let mut records: Vec<command::ActiveModel> = Vec::new();
        for op in ops {
            match op {
                AuditOp::Record(row, _) => {
                    records.push(record_model(row));
                    if records.len() == RECORD_CHUNK {
                        insert_records(txn, std::mem::take(&mut records)).await?;
                    }
                }
                other => {
                    insert_records(txn, std::mem::take(&mut records)).await?;
                    apply_one(txn, other).await?;
                }
            }
        }
        insert_records(txn, records).await?;
        Ok(vec![(); ops.len()])
    }
}

/// Rows per INSERT of finished live commands: 15 columns each, far below SQLite's bound-parameter limit.
const RECORD_CHUNK: usize = 128;

fn record_model(row: &command::Model) -> command::ActiveModel {
    // Every column Set (from a Model they would be Unchanged), so the INSERT names them all.
    sea_orm::ActiveModelTrait::reset_all(command::ActiveModel::from(row.clone()))
}

async fn insert_records(
    txn: &DatabaseTransaction,
    records: Vec<command::ActiveModel>,
) -> Result<(), DbErr> {
    if records.is_empty() {
        return Ok(());
    }
    command::Entity::insert_many(records)
        .exec_without_returning(txn)
        .await?;
    Ok(())
}

async fn apply_one<C: ConnectionTrait>(db: &C, op: &AuditOp) -> Result<(), DbErr> {
    match op {
        AuditOp::Record(row, _) => {
            command::Entity::insert(record_model(row))
                .exec_without_returning(db)
                .await?;
        }
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
