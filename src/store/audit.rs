//! The command audit trail's writes. Every command writes its row up to three times (requested, sent,
//! finished); one transaction each made the database, not the devices, the limit on commands per second (and on
//! SQLite every commit is an fsync). They go through a group-commit writer ([`super::group`]): a caller still
//! waits for its own write to be committed (so reads after a command's answer see its row), but concurrent
//! commands share the commit.

use chrono::{DateTime, Utc};
use entity::command;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbErr, EntityTrait,
    QueryFilter,
};
use serde_json::Value;
use uuid::Uuid;

use super::group::{GroupOp, GroupWriter};
use super::{CommandState, NewCommand};

/// Writes applied in one transaction at most; more wait for the next one.
pub(crate) const MAX_BATCH: usize = 256;
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
