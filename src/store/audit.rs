//! The command audit trail's writes. Every command writes its row up to three times (requested, sent,
//! finished); one transaction each made the database, not the devices, the limit on commands per second (and on
//! SQLite every commit is an fsync). They go through a group-commit writer ([`super::group`]): a caller still
//! waits for its own write to be committed (so reads after a command's answer see its row), but concurrent
//! commands share the commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use entity::command;
use sea_orm::sea_query::{Expr, Value as SqlValue};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, Statement,
};
use serde_json::Value;
use uuid::Uuid;

use super::group::{GroupOp, GroupWriter};
use super::{CommandState, NewCommand};

/// Writes applied in one transaction at most; more wait for the next one.
pub(crate) const MAX_BATCH: usize = 256;
/// How long a transaction of finished live commands waits to fill up (their readers find them in memory
/// meanwhile): every commit rewrites the index pages it touches, one per device in it, so the more rows share
/// a commit, the fewer page writes each costs. With 20 ms and [`MAX_BATCH`] rows the SQLite writer thread
/// spent 11.4–13.8 µs per command; with 50 ms and [`RECORD_BATCH`] rows 8.5–11.5 µs (100 terminals, ~20k
/// commands/s: BENCHMARKS.md, session 13). The price: up to 50 ms more of rows that a power cut can lose
/// (they are committed without fsync anyway), up to [`RECORD_BATCH`] rows held in memory, and on SQLite a
/// full transaction holds the database's one write lock for ~10 ms (~3 ms with 256 rows), which another
/// writer (registrations, attendance, a forwarded command's row) may wait out.
pub(crate) const RECORD_LINGER: std::time::Duration = std::time::Duration::from_millis(50);
/// Rows of finished live commands one transaction carries at most: above what the linger collects at ~20k
/// commands/s. While the writer lingers the queue ([`QUEUE`]) fills at the command rate: past ~80k rows/s
/// (4,096 per 50 ms) callers wait for room.
pub(crate) const RECORD_BATCH: usize = 1024;
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

    /// A batch of finished live commands' rows that fits one INSERT (see [`GroupOp::one_statement`]).
    fn one_statement(ops: &[&Self], backend: DbBackend) -> Option<(Statement, Vec<()>)> {
        if ops.is_empty() || ops.len() > RECORD_CHUNK {
            return None;
        }
        let records = ops
            .iter()
            .map(|op| match op {
                AuditOp::Record(row, _) => Some(&**row),
                _ => None,
            })
            .collect::<Option<Vec<&command::Model>>>()?;
        Some((records_statement(backend, &records), vec![(); ops.len()]))
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
        let mut records: Vec<&command::Model> = Vec::new();
        for op in ops {
            match op {
                AuditOp::Record(row, _) => {
                    records.push(row);
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

/// Inserts whole rows of finished live commands as one statement. The text is written here and each value
/// converted from the row as sea-orm's own insert converts it (same `Value` variants, so the same bytes are
/// bound): building it through an `ActiveModel` and sea-query cloned every row twice more, params and reply
/// included, and walked every value (callgrind: most of the command writer's own work).
async fn insert_records(
    txn: &DatabaseTransaction,
    records: Vec<&command::Model>,
) -> Result<(), DbErr> {
    if records.is_empty() {
        return Ok(());
    }
    txn.execute_raw(records_statement(txn.get_database_backend(), &records))
        .await?;
    Ok(())
}

fn records_statement(backend: DbBackend, records: &[&command::Model]) -> Statement {
    let mut values: Vec<SqlValue> = Vec::with_capacity(records.len() * RECORD_COLUMNS.len());
    for row in records {
        values.extend(record_values(row));
    }
    Statement::from_sql_and_values(backend, insert_records_sql(backend, records.len()), values)
}

/// The columns of `commands`, in the entity's order (the order sea-orm's insert names them).
const RECORD_COLUMNS: [&str; 15] = [
    "id",
    "device_kind",
    "device",
    "command",
    "params",
    "state",
    "reply",
    "error",
    "requested_at",
    "sent_at",
    "finished_at",
    "deliver_queued",
    "expires_at",
    "claim_token",
    "claimed_at",
];

/// One row's values, in [`RECORD_COLUMNS`] order.
fn record_values(row: &command::Model) -> [SqlValue; 15] {
    [
        row.id.into(),
        row.device_kind.clone().into(),
        row.device.clone().into(),
        row.command.clone().into(),
        row.params.clone().into(),
        row.state.clone().into(),
        row.reply.clone().into(),
        row.error.clone().into(),
        row.requested_at.into(),
        row.sent_at.into(),
        row.finished_at.into(),
        row.deliver_queued.into(),
        row.expires_at.into(),
        row.claim_token.into(),
        row.claimed_at.into(),
    ]
}

/// `INSERT INTO "commands" (…) VALUES (…), …` for `rows` rows, with `?` or `$n` placeholders.
fn insert_records_sql(backend: DbBackend, rows: usize) -> String {
    super::insert_values_sql(backend, "commands", &RECORD_COLUMNS, rows)
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

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::{QueryTrait, TransactionTrait};

    fn finished_row(id: Uuid) -> command::Model {
        let at = |rfc3339: &str| {
            DateTime::parse_from_rfc3339(rfc3339)
                .expect("time")
                .with_timezone(&Utc)
        };
        command::Model {
            id,
            device_kind: "tm20".into(),
            device: "SN-REC".into(),
            command: "opendoor".into(),
            params: serde_json::json!({"door": 1, "note": "Zoë \"Z\""}),
            state: CommandState::Succeeded.as_str().into(),
            reply: Some(serde_json::json!({"ret": "opendoor", "result": true})),
            error: None,
            // Sub-second digits, so the fractional formatting is exercised.
            requested_at: at("2026-12-06T13:29:19.123456789Z"),
            sent_at: Some(at("2026-12-06T13:29:19.2Z")),
            finished_at: Some(at("2026-12-06T13:29:20Z")),
            deliver_queued: false,
            expires_at: None,
            claim_token: None,
            claimed_at: None,
        }
    }

    #[test]
    fn the_record_insert_is_what_sea_orm_builds() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            for rows in [1, 3] {
                let models: Vec<command::ActiveModel> = (0..rows)
                    .map(|_| record_model(&finished_row(Uuid::now_v7())))
                    .collect();
                let built = command::Entity::insert_many(models).build(backend);
                assert_eq!(
                    insert_records_sql(backend, rows),
                    built.sql,
                    "{backend:?}, {rows} rows"
                );
            }
        }
    }

    /// Only a batch of finished rows that fits one INSERT runs as one statement (without BEGIN and COMMIT
    /// on SQLite); anything else keeps its transaction.
    #[test]
    fn only_batches_of_records_that_fit_one_insert_are_one_statement() {
        let live = LiveCommands::default();
        let record = || AuditOp::Record(Box::new(finished_row(Uuid::now_v7())), live.clone());
        let records: Vec<AuditOp> = (0..RECORD_CHUNK + 1).map(|_| record()).collect();
        let refs: Vec<&AuditOp> = records.iter().collect();
        let (statement, outs) =
            AuditOp::one_statement(&refs[..3], DbBackend::Sqlite).expect("three records");
        assert_eq!(statement.sql, insert_records_sql(DbBackend::Sqlite, 3));
        assert_eq!(
            statement.values.map(|v| v.0.len()),
            Some(3 * RECORD_COLUMNS.len())
        );
        assert_eq!(outs.len(), 3);
        assert!(AuditOp::one_statement(&refs[..RECORD_CHUNK], DbBackend::Sqlite).is_some());
        assert!(
            AuditOp::one_statement(&refs, DbBackend::Sqlite).is_none(),
            "more than one INSERT"
        );
        let sent = AuditOp::Sent {
            id: Uuid::now_v7(),
            at: Utc::now(),
        };
        assert!(AuditOp::one_statement(&[refs[0], &sent], DbBackend::Sqlite).is_none());
        assert!(AuditOp::one_statement(&[], DbBackend::Sqlite).is_none());
    }

    /// Rows written by `insert_records` hold the same bytes as rows written by sea-orm's own insert, so
    /// reads parse both alike.
    #[tokio::test]
    async fn a_record_stores_what_a_sea_orm_insert_stores() {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("audit.db").display()
        );
        let store = crate::store::Store::connect(&url).await.expect("connect");
        store.migrate().await.expect("migrate");
        let db = store.connection();
        let (ours, theirs) = (finished_row(Uuid::now_v7()), finished_row(Uuid::now_v7()));
        let txn = db.begin().await.expect("begin");
        insert_records(&txn, vec![&ours])
            .await
            .expect("insert_records");
        txn.commit().await.expect("commit");
        command::Entity::insert(record_model(&theirs))
            .exec_without_returning(db)
            .await
            .expect("sea-orm insert");
        let columns = RECORD_COLUMNS
            .iter()
            .filter(|c| **c != "id")
            .map(|c| format!("typeof(\"{c}\") || ':' || quote(\"{c}\")"))
            .collect::<Vec<_>>()
            .join(" || '|' || ");
        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!(
                    "SELECT typeof(id) || ':' || length(id), {columns} FROM commands ORDER BY id"
                ),
            ))
            .await
            .expect("rows");
        let texts: Vec<(String, String)> = rows
            .iter()
            .map(|row| {
                (
                    row.try_get_by_index::<String>(0).expect("id"),
                    row.try_get_by_index::<String>(1).expect("columns"),
                )
            })
            .collect();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0], texts[1], "insert_records vs sea-orm");
        let read = store.command(ours.id).await.expect("read").expect("row");
        assert_eq!(read, ours);
    }
}
