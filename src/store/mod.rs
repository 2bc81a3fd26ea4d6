//! Persistence: every sea-orm query and write of the server. The only module that imports `entity`.
//!
//! Device data is committed here *before* the device is acknowledged; write paths are idempotent so that a
//! batch the device re-sends (because an ack was lost) does not create duplicates.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use entity::{attendance_log, biometric_credential, biometric_user, command, terminal};
use migration::{Migrator, MigratorTrait};
use sea_orm::sea_query::{Expr, OnConflict, Value as SqlValue};
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, ConnectOptions, ConnectionTrait, Database,
    DatabaseConnection, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, TransactionTrait,
};
use serde_json::Value;
use uuid::Uuid;

use crate::devices::tm20::protocol::LogRecord;

pub mod accounts;
mod audit;
mod batch_read;
pub mod billing;
mod checkpoint;
mod group;
pub mod ocpp;
pub mod panels;
pub mod queue;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] DbErr),
}

/// Handle to the database; cheap to clone (the pool is shared).
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    /// Group commit of the command audit trail (see [`audit`]).
    audit: audit::AuditWriter,
    /// Rows of finished live commands, written behind their answers (see [`crate::devices::Origin::Live`]).
    records: audit::AuditWriter,
    /// Group commit of attendance batches (see [`LogBatch`]).
    logs: group::GroupWriter<LogBatch>,
    /// Group commit of terminal registrations (see [`Registration`]).
    registrations: group::GroupWriter<Registration>,
    /// Group commit of `last_seen` updates at disconnect (see [`Touch`]).
    touches: group::GroupWriter<Touch>,
    /// Group commit of the OCPP message log and of meter values.
    ocpp_log: group::GroupWriter<ocpp::MessageLogEntry>,
    meters: group::GroupWriter<ocpp::MeterBatch>,
    /// Live commands in flight (see [`crate::devices::Origin::Live`]): their rows until they finish and are
    /// written. Short critical sections only; never held across an await.
    live_commands: audit::LiveCommands,
    /// WAL checkpoints off the writers' path; SQLite files only.
    checkpointer: Option<checkpoint::Checkpointer>,
    /// Concurrent look-ups of terminals by serial number, one query per batch (registrations).
    terminals_by_sn: batch_read::BatchRead<String, terminal::Model>,
    /// Concurrent "has this device commands to deliver?" checks, one query per batch (registrations).
    devices_with_deliveries: batch_read::BatchRead<String, ()>,
}

/// Rows per INSERT statement: keeps far below SQLite's bound-parameter limit (11 columns per log row).
const INSERT_CHUNK: usize = 500;
/// Attendance rows one group-commit transaction carries at most (a bigger batch goes alone).
const LOG_GROUP_ROWS: usize = 5_000;
/// Attendance batches that may wait for the writer (each is one terminal waiting for its ack).
const LOG_GROUP_QUEUE: usize = 1_024;

/// Pool settings; `max` connections. `writer`: a group writer's own connection (see [`writer_connection`]).
fn connect_options(url: &str, max: u32, durable: bool, writer: bool) -> ConnectOptions {
    let synchronous = if durable {
        sea_orm::sqlx::sqlite::SqliteSynchronous::Full
    } else {
        sea_orm::sqlx::sqlite::SqliteSynchronous::Normal
    };
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false)
        // Durability, set on every connection (`synchronous` is per connection): with WAL and
        // synchronous=FULL a commit is on disk before we acknowledge the device, so neither a killed process
        // nor a power cut loses an acknowledged record. NORMAL would survive a killed process but could
        // lose the last commits on power loss. The price is one fsync per committed batch, not per record.
        // Only writes that nobody is told are stored (see `records`) use NORMAL.
        .map_sqlx_sqlite_opts(move |opts| {
            opts.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                .synchronous(synchronous)
                // Checkpoints are the checkpoint task's job, not a committing writer's (see `checkpoint`).
                .pragma("wal_autocheckpoint", "0")
                .pragma("journal_size_limit", checkpoint::WAL_SIZE_LIMIT.to_string())
                // A writer's multi-row statements keep the old image of each page they change in a statement
                // journal, which SQLite spills to a temporary file past 64 KiB: the attendance writer made as
                // many pwrite calls to that file as to the WAL (strace, batches of 50 records). In memory it is
                // a copy, dropped when the statement ends (ingestion rate unchanged within the noise:
                // BENCHMARKS.md, session 8). The pool's readers keep the default (large sorts may spill).
                .pragma("temp_store", if writer { "memory" } else { "default" })
        });
    options
}

/// The connection a group writer commits on. On SQLite, one of its own for the life of the process: SQLite
/// drops a connection's page cache whenever another connection has written since its last transaction, so
/// a writer taking whichever pooled connection is free (the pool hands them out in turn) started every batch
/// with a cold cache and re-read its B-tree pages from the WAL. On PostgreSQL, the shared pool.
async fn writer_connection(
    url: &str,
    pool: &DatabaseConnection,
    durable: bool,
) -> Result<DatabaseConnection, StoreError> {
    if pool.get_database_backend() != DbBackend::Sqlite {
        return Ok(pool.clone());
    }
    Ok(Database::connect(connect_options(url, 1, durable, true)).await?)
}

/// A terminal's `reg`: its row is created, or its model, firmware and devinfo refreshed (what is absent is
/// kept), and `last_seen` set.
#[derive(Debug)]
pub(crate) struct Registration {
    sn: String,
    model: Option<String>,
    firmware: Option<String>,
    devinfo: Option<Value>,
    at: DateTime<Utc>,
}

/// The columns a registration inserts, in the entity's order (the order sea-orm's insert names them).
const REGISTRATION_COLUMNS: [&str; 9] = [
    "sn",
    "model",
    "firmware",
    "devinfo",
    "is_active",
    "is_whitelisted",
    "last_seen",
    "created_at",
    "updated_at",
];

impl Registration {
    /// The row's values, in [`REGISTRATION_COLUMNS`] order, converted as sea-orm's own insert converts
    /// them (same `Value` variants, so the same bytes are bound).
    fn values(&self) -> [SqlValue; 9] {
        [
            self.sn.clone().into(),
            self.model.clone().into(),
            self.firmware.clone().into(),
            self.devinfo.clone().into(),
            true.into(),
            false.into(),
            Some(self.at).into(),
            self.at.into(),
            self.at.into(),
        ]
    }

    /// One upsert for all of `regs` (serial numbers distinct), answering each terminal's id.
    ///
    /// A single statement, not an UPDATE, an INSERT when nothing was updated and a SELECT per terminal: each
    /// statement is a hand-off to the connection's thread, and in a reconnect storm those hand-offs (futex
    /// wake-ups and context switches), not SQLite's work, were the registrations' cost. Only the id and the
    /// serial number come back: decoding whole rows (their devinfo JSON) was most of the writer's time.
    ///
    /// The text is written by [`registration_upsert_sql`], not built through an `ActiveModel` and
    /// sea-query: that cloned every row twice more and walked every value, about 20k instructions per
    /// registration (callgrind, BENCHMARKS.md session 13).
    async fn upsert(
        regs: &[&Registration],
        txn: &sea_orm::DatabaseTransaction,
    ) -> Result<Vec<i32>, DbErr> {
        let backend = txn.get_database_backend();
        let mut values: Vec<SqlValue> = Vec::with_capacity(regs.len() * REGISTRATION_COLUMNS.len());
        for reg in regs {
            values.extend(reg.values());
        }
        let rows = txn
            .query_all_raw(Statement::from_sql_and_values(
                backend,
                registration_upsert_sql(backend, regs.len()),
                values,
            ))
            .await?;
        // RETURNING promises no order: match the rows to the registrations by serial number.
        let mut ids = std::collections::HashMap::with_capacity(regs.len());
        for row in rows {
            ids.insert(
                row.try_get::<String>("", "sn")?,
                row.try_get::<i32>("", "id")?,
            );
        }
        regs.iter()
            .map(|reg| {
                ids.get(&reg.sn)
                    .copied()
                    .ok_or_else(|| DbErr::RecordNotFound(format!("terminal {}", reg.sn)))
            })
            .collect()
    }
}

/// The upsert of `rows` registrations, with `?` or `$n` placeholders. What the terminal did not report
/// keeps its stored value; created_at, name and the admin's flags are never overwritten.
fn registration_upsert_sql(backend: DbBackend, rows: usize) -> String {
    use std::fmt::Write;
    let mut sql = insert_values_sql(backend, "terminals", &REGISTRATION_COLUMNS, rows);
    sql.push_str(
        " ON CONFLICT (\"sn\") DO UPDATE SET \"last_seen\" = \"excluded\".\"last_seen\", \
         \"updated_at\" = \"excluded\".\"updated_at\"",
    );
    for column in ["model", "firmware", "devinfo"] {
        let _ = write!(
            sql,
            ", \"{column}\" = COALESCE(\"excluded\".\"{column}\", \"terminals\".\"{column}\")"
        );
    }
    sql.push_str(" RETURNING \"id\", \"sn\"");
    sql
}

/// Rows per batched statement at most (a power of two; see [`power_of_two_chunks`]).
const STATEMENT_ROWS: usize = 64;

/// `items` cut into chunks of power-of-two sizes up to `max` (a power of two), largest first. Every row
/// count of a batched statement is its own SQL text, and sqlx keeps up to 100 prepared statements per
/// connection: counts 1..=512 would each be kept (a statement of hundreds of rows is hundreds of KiB in
/// SQLite; measured: +0.7 KiB of RSS per idle socket after a registration burst). With `max` = 64 there are
/// seven sizes, and a batch of 512 is eight statements.
fn power_of_two_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let size = rest.len().min(max);
        let size = 1 << (usize::BITS - 1 - size.leading_zeros());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        Some(chunk)
    })
}

impl group::GroupOp for Registration {
    type Out = i32;

    async fn apply<'a>(&'a self, txn: &'a sea_orm::DatabaseTransaction) -> Result<i32, DbErr> {
        let mut rows = Registration::upsert(&[self], txn).await?;
        rows.pop()
            .ok_or_else(|| DbErr::RecordNotFound(format!("terminal {}", self.sn)))
    }

    async fn apply_all<'a>(
        ops: &'a [&'a Self],
        txn: &'a sea_orm::DatabaseTransaction,
    ) -> Result<Vec<i32>, DbErr> {
        let mut seen = std::collections::HashSet::with_capacity(ops.len());
        if ops.iter().all(|reg| seen.insert(reg.sn.as_str())) {
            let mut outs = Vec::with_capacity(ops.len());
            for chunk in power_of_two_chunks(ops, STATEMENT_ROWS) {
                outs.extend(Registration::upsert(chunk, txn).await?);
            }
            return Ok(outs);
        }
        // The same terminal twice in one batch (it re-registered within a commit): one row of an upsert may
        // not update another row of the same statement (PostgreSQL refuses it), so apply them in order.
        let mut outs = Vec::with_capacity(ops.len());
        for reg in ops {
            outs.push(reg.apply(txn).await?);
        }
        Ok(outs)
    }
}

/// The terminals among `sns`, by serial number (see [`batch_read`]).
async fn terminals_by_sn(
    db: DatabaseConnection,
    sns: Vec<String>,
) -> Result<std::collections::HashMap<String, terminal::Model>, DbErr> {
    Ok(terminal::Entity::find()
        .filter(terminal::Column::Sn.is_in(sns))
        .all(&db)
        .await?
        .into_iter()
        .map(|row| (row.sn.clone(), row))
        .collect())
}

/// A terminal's `last_seen`, written when its socket closes.
#[derive(Debug)]
pub(crate) struct Touch {
    terminal_id: i32,
    seen: DateTime<Utc>,
}

impl group::GroupOp for Touch {
    type Out = ();

    async fn apply<'a>(&'a self, txn: &'a sea_orm::DatabaseTransaction) -> Result<(), DbErr> {
        Touch::update(&[(self.terminal_id, self.seen)], txn).await
    }

    /// One UPDATE per chunk of the batch (`last_seen = CASE id WHEN … END`): when thousands of terminals drop
    /// at once, a statement per terminal was a hand-off to the connection's thread per terminal.
    async fn apply_all<'a>(
        ops: &'a [&'a Self],
        txn: &'a sea_orm::DatabaseTransaction,
    ) -> Result<Vec<()>, DbErr> {
        // The latest time wins for a terminal that appears twice (before chunking, so that two chunks never
        // set the same terminal).
        let mut latest: std::collections::BTreeMap<i32, DateTime<Utc>> = Default::default();
        for touch in ops {
            let seen = latest.entry(touch.terminal_id).or_insert(touch.seen);
            *seen = (*seen).max(touch.seen);
        }
        let latest: Vec<(i32, DateTime<Utc>)> = latest.into_iter().collect();
        for chunk in power_of_two_chunks(&latest, STATEMENT_ROWS) {
            Touch::update(chunk, txn).await?;
        }
        Ok(vec![(); ops.len()])
    }
}

impl Touch {
    /// Sets each terminal's `last_seen` (terminal ids distinct).
    async fn update(
        seen: &[(i32, DateTime<Utc>)],
        txn: &sea_orm::DatabaseTransaction,
    ) -> Result<(), DbErr> {
        let mut case = sea_orm::sea_query::CaseStatement::new();
        for (id, at) in seen {
            case = case.case(terminal::Column::Id.eq(*id), Expr::value(Some(*at)));
        }
        terminal::Entity::update_many()
            .col_expr(terminal::Column::LastSeen, case.into())
            .filter(terminal::Column::Id.is_in(seen.iter().map(|(id, _)| *id)))
            .exec(txn)
            .await?;
        Ok(())
    }
}

/// One terminal's `sendlog` batch, as ready-built statements; applied in a shared transaction by the
/// attendance writer.
///
/// The statements are built by the caller (a session's worker thread), not by the writer: the writer is one
/// task on the main runtime, and building the SQL and its values (sea-query, JSON and timestamp formatting)
/// was most of its time, which capped ingestion at one core (BENCHMARKS.md, session 6).
#[derive(Debug)]
pub(crate) struct LogBatch {
    rows: usize,
    statements: Vec<Statement>,
}

impl LogBatch {
    fn new(
        backend: DbBackend,
        terminal_id: i32,
        records: &[LogRecord],
        received_at: DateTime<Utc>,
    ) -> Result<LogBatch, DbErr> {
        // On SQLite every value is bound as the text sqlx itself would have made of it (`NaiveDateTime` as
        // "%F %T%.f", `DateTime<Utc>` as RFC 3339 with automatic fractional digits, JSON compact), so the
        // stored bytes, the natural-key index and reads are unchanged; the formatting just happens here.
        let sqlite = backend == DbBackend::Sqlite;
        let received: SqlValue = if sqlite {
            received_at
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false)
                .into()
        } else {
            received_at.into()
        };
        let mut statements = Vec::with_capacity(records.len().div_ceil(INSERT_CHUNK));
        for chunk in records.chunks(INSERT_CHUNK) {
            let mut values: Vec<SqlValue> = Vec::with_capacity(chunk.len() * LOG_COLUMNS.len());
            for r in chunk {
                let (time, raw): (SqlValue, SqlValue) = if sqlite {
                    // `to_string`, not `Display`: the same compact bytes, written straight into a buffer
                    // instead of through `fmt::Formatter` a token at a time (a tenth of a record's cost).
                    let raw = serde_json::to_string(&r.raw)
                        .map_err(|err| DbErr::Custom(format!("attendance record: {err}")))?;
                    (sqlite_naive_time(&r.time).into(), raw.into())
                } else {
                    (r.time.into(), r.raw.clone().into())
                };
                values.extend([
                    terminal_id.into(),
                    r.enrollid.into(),
                    time,
                    r.mode.into(),
                    r.inout.into(),
                    r.event.into(),
                    r.temp.into(),
                    r.verifymode.into(),
                    raw,
                    received.clone(),
                ]);
            }
            statements.push(Statement::from_sql_and_values(
                backend,
                insert_logs_sql(backend, chunk.len()),
                values,
            ));
        }
        Ok(LogBatch {
            rows: records.len(),
            statements,
        })
    }
}

/// Columns of an attendance row as [`LogBatch`] inserts them.
const LOG_COLUMNS: [&str; 10] = [
    "terminal_id",
    "enrollid",
    "time",
    "mode",
    "inout",
    "event",
    "temp",
    "verifymode",
    "raw",
    "received_at",
];

/// The INSERT of `rows` attendance rows, text only (the values are bound): what sea-query built from the same
/// columns, written directly, because building it (and cloning every value into it) was a tenth of a batch's
/// cost. The natural key `(terminal_id, enrollid, time, mode, inout, event)` is the conflict target: a record
/// already stored under it is skipped, so a re-sent batch adds nothing. (The unique index on it,
/// `ux_attendance_logs_terminal_time_key`, holds the same columns led by the time; both databases match a
/// conflict target to an index by its set of columns.)
fn insert_logs_sql(backend: DbBackend, rows: usize) -> String {
    let mut sql = insert_values_sql(backend, "attendance_logs", &LOG_COLUMNS, rows);
    sql.push_str(
        " ON CONFLICT (\"terminal_id\", \"enrollid\", \"time\", \"mode\", \"inout\", \"event\") DO NOTHING",
    );
    sql
}

/// `INSERT INTO "table" ("column", …) VALUES (…), …` for `rows` rows, with `?` or `$n` placeholders, as
/// sea-query writes it; callers append what follows (a conflict clause, RETURNING).
pub(crate) fn insert_values_sql(
    backend: DbBackend,
    table: &str,
    columns: &[&str],
    rows: usize,
) -> String {
    use std::fmt::Write;
    let mut sql = String::with_capacity(256 + rows * 8 * columns.len());
    let _ = write!(sql, "INSERT INTO \"{table}\" (");
    for (i, column) in columns.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        let _ = write!(sql, "\"{column}\"");
    }
    sql.push_str(") VALUES ");
    push_placeholder_rows(&mut sql, backend, rows, columns.len());
    sql
}

/// Appends `(?, ?, …), (…)`: `rows` rows of `columns` placeholders, numbered `$1, $2, …` on PostgreSQL, as
/// sea-query writes them.
pub(crate) fn push_placeholder_rows(
    sql: &mut String,
    backend: DbBackend,
    rows: usize,
    columns: usize,
) {
    use std::fmt::Write;
    let mut param = 0;
    for row in 0..rows {
        sql.push_str(if row == 0 { "(" } else { ", (" });
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            param += 1;
            match backend {
                DbBackend::Postgres => {
                    let _ = write!(sql, "${param}");
                }
                _ => sql.push('?'),
            }
        }
        sql.push(')');
    }
}

/// Spawns a write that nobody waits for, from code that may run outside a runtime (a device session's
/// commands are settled when it is dropped, which at shutdown may be after its runtime is gone): there the
/// write is lost and logged instead of panicking.
pub(crate) fn spawn_detached(
    writer: &'static str,
    write: impl std::future::Future<Output = ()> + Send + 'static,
) {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(write);
        }
        Err(_) => tracing::error!(writer, "no runtime to write on; a write behind is lost"),
    }
}

/// "%F %T%.f" (how sqlx binds a `NaiveDateTime` on SQLite), parsed once: parsing it per record was a tenth of
/// building a batch.
static SQLITE_NAIVE_TIME: std::sync::LazyLock<Vec<chrono::format::Item<'static>>> =
    std::sync::LazyLock::new(|| {
        chrono::format::StrftimeItems::new("%F %T%.f")
            .parse_to_owned()
            .expect("valid time format")
    });

/// One page of a terminal's punches, newest first, and one more to tell whether another page follows. Served
/// by the natural key `(terminal_id, time, …)`: punches of equal time are sorted by id (migration
/// `m20261207_000002`).
fn logs_page_query(
    terminal_id: i32,
    limit: u64,
    before: Option<LogCursor>,
    since: Option<NaiveDateTime>,
) -> sea_orm::Select<attendance_log::Entity> {
    use attendance_log::Column as C;
    let mut query = attendance_log::Entity::find().filter(C::TerminalId.eq(terminal_id));
    if let Some(cursor) = before {
        // `time <= cursor` adds nothing to the OR below but a range PostgreSQL can seek to (it reads an OR
        // as a filter): a deep page starts at its cursor instead of walking every newer punch.
        query = query.filter(C::Time.lte(cursor.time)).filter(
            sea_orm::Condition::any().add(C::Time.lt(cursor.time)).add(
                sea_orm::Condition::all()
                    .add(C::Time.eq(cursor.time))
                    .add(C::Id.lt(cursor.id)),
            ),
        );
    }
    if let Some(since) = since {
        query = query.filter(C::Time.gte(since));
    }
    query
        .order_by_desc(C::Time)
        .order_by_desc(C::Id)
        .limit(limit + 1)
}

/// `time` as sqlx binds a `NaiveDateTime` on SQLite ("%F %T%.f"). A device's time has whole seconds and a
/// four-digit year: those are written digit by digit, the rest by chrono (its formatting machinery was a
/// twentieth of a record's cost).
fn sqlite_naive_time(time: &NaiveDateTime) -> String {
    use chrono::{Datelike, Timelike};
    let year = time.year();
    if time.nanosecond() != 0 || !(0..=9999).contains(&year) {
        return time.format_with_items(SQLITE_NAIVE_TIME.iter()).to_string();
    }
    let mut text = String::with_capacity(19);
    let mut push = |value: u32, digits: u32, after: Option<char>| {
        for place in (0..digits).rev() {
            let digit = (value / 10u32.pow(place)) % 10;
            text.push(char::from(b'0' + digit as u8));
        }
        if let Some(separator) = after {
            text.push(separator);
        }
    };
    push(year.unsigned_abs(), 4, Some('-'));
    push(time.month(), 2, Some('-'));
    push(time.day(), 2, Some(' '));
    push(time.hour(), 2, Some(':'));
    push(time.minute(), 2, Some(':'));
    push(time.second(), 2, None);
    text
}

impl group::GroupOp for LogBatch {
    type Out = u64;

    fn weight(&self) -> usize {
        self.rows
    }

    async fn apply<'a>(&'a self, txn: &'a sea_orm::DatabaseTransaction) -> Result<u64, DbErr> {
        let mut inserted = 0;
        for statement in &self.statements {
            // ON CONFLICT DO NOTHING: rows affected are the rows that were new.
            inserted += txn.execute_raw(statement.clone()).await?.rows_affected();
        }
        Ok(inserted)
    }
}

impl Store {
    /// Connects to `url` (SQLite file or PostgreSQL).
    ///
    /// # Errors
    /// When the database cannot be reached or opened.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let db = Database::connect(connect_options(url, 16, true, false)).await?;
        let audit = audit::AuditWriter::start(
            writer_connection(url, &db, true).await?,
            "command_audit",
            audit::MAX_BATCH,
            audit::QUEUE,
        );
        // Rows of finished live commands, written behind their answers: no fsync per commit (SQLite
        // synchronous=NORMAL, PostgreSQL synchronous_commit=off for these transactions). A killed process
        // loses none that were committed; a power cut may lose the last ones, like the rows still queued.
        let records = audit::AuditWriter::start_lingering(
            writer_connection(url, &db, false).await?,
            "command_records",
            audit::RECORD_BATCH,
            audit::QUEUE,
            audit::RECORD_LINGER,
        );
        let logs = group::GroupWriter::start(
            writer_connection(url, &db, true).await?,
            "attendance_logs",
            LOG_GROUP_ROWS,
            LOG_GROUP_QUEUE,
        );
        let registrations = group::GroupWriter::start(
            writer_connection(url, &db, true).await?,
            "registrations",
            512,
            LOG_GROUP_QUEUE,
        );
        let touches = group::GroupWriter::start(
            writer_connection(url, &db, true).await?,
            "terminal_last_seen",
            512,
            LOG_GROUP_QUEUE,
        );
        let ocpp_log = group::GroupWriter::start(
            writer_connection(url, &db, true).await?,
            "ocpp_messages",
            512,
            LOG_GROUP_QUEUE,
        );
        let meters = group::GroupWriter::start(
            writer_connection(url, &db, true).await?,
            "meter_values",
            LOG_GROUP_ROWS,
            LOG_GROUP_QUEUE,
        );
        let on_file = db.get_database_backend() == DbBackend::Sqlite
            && !(url.contains(":memory:") || url.contains("mode=memory"));
        let checkpointer = if on_file {
            Some(checkpoint::Checkpointer::start(
                writer_connection(url, &db, true).await?,
            ))
        } else {
            None
        };
        Ok(Store {
            audit,
            records,
            logs,
            registrations,
            touches,
            ocpp_log,
            meters,
            live_commands: audit::LiveCommands::default(),
            checkpointer,
            terminals_by_sn: batch_read::BatchRead::start(
                db.clone(),
                "terminals_by_sn",
                terminals_by_sn,
            ),
            devices_with_deliveries: batch_read::BatchRead::start(
                db.clone(),
                "devices_with_deliveries",
                queue::devices_with_deliveries,
            ),
            db,
        })
    }

    /// Applies pending migrations.
    ///
    /// # Errors
    /// When a migration fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        Migrator::up(&self.db, None).await?;
        Ok(())
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// Cheap round trip for `/readyz`.
    ///
    /// # Errors
    /// When the database does not answer.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await?;
        Ok(())
    }

    // ---- terminals -------------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn terminal_by_sn(&self, sn: &str) -> Result<Option<terminal::Model>, StoreError> {
        self.terminals_by_sn.get(sn.to_owned()).await
    }

    /// # Errors
    /// On a database failure.
    pub async fn list_terminals(&self) -> Result<Vec<terminal::Model>, StoreError> {
        Ok(terminal::Entity::find()
            .order_by_asc(terminal::Column::Sn)
            .all(&self.db)
            .await?)
    }

    /// Records a successful `reg`: creates the terminal if unknown, refreshes model, firmware and devinfo.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn record_registration(
        &self,
        sn: &str,
        model: Option<String>,
        firmware: Option<String>,
        devinfo: Option<Value>,
    ) -> Result<i32, StoreError> {
        // Through the registration writer: a reconnect storm of thousands of terminals shares commits.
        self.registrations
            .write(Registration {
                sn: sn.to_owned(),
                model,
                firmware,
                devinfo,
                at: Utc::now(),
            })
            .await
    }

    /// # Errors
    /// On a database failure.
    pub async fn touch_terminal(
        &self,
        terminal_id: i32,
        seen: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // Through a writer of its own: when thousands of terminals drop at once (a storm, a network cut),
        // their updates share commits instead of each queueing for SQLite's write lock on its own.
        self.touches.write(Touch { terminal_id, seen }).await
    }

    /// Merges the answer of a `getdevinfo` into the stored devinfo (which `reg` filled with model, capacity and
    /// firmware fields that `getdevinfo` does not repeat).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn set_devinfo_by_id(
        &self,
        terminal_id: i32,
        reply: Value,
    ) -> Result<(), StoreError> {
        let Some(row) = terminal::Entity::find_by_id(terminal_id)
            .one(&self.db)
            .await?
        else {
            return Ok(());
        };
        let mut devinfo = match row.devinfo.clone() {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        if let Value::Object(fields) = reply {
            for (key, value) in fields {
                if !matches!(key.as_str(), "ret" | "result" | "sn") {
                    devinfo.insert(key, value);
                }
            }
        }
        let mut active: terminal::ActiveModel = row.into();
        active.devinfo = Set(Some(Value::Object(devinfo)));
        active.updated_at = Set(Utc::now());
        active.update(&self.db).await?;
        Ok(())
    }

    /// Applies an admin's change to a known terminal; `None` when the serial number is unknown.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn patch_terminal(
        &self,
        sn: &str,
        patch: TerminalPatch,
    ) -> Result<Option<terminal::Model>, StoreError> {
        let Some(existing) = self.terminal_by_sn(sn).await? else {
            return Ok(None);
        };
        let mut active: terminal::ActiveModel = existing.into();
        if let Some(is_active) = patch.is_active {
            active.is_active = Set(is_active);
        }
        if let Some(is_whitelisted) = patch.is_whitelisted {
            active.is_whitelisted = Set(is_whitelisted);
        }
        if let Some(name) = patch.name {
            active.name = Set(name);
        }
        active.updated_at = Set(Utc::now());
        Ok(Some(active.update(&self.db).await?))
    }

    /// Creates or replaces an admin entry; returns the row and whether it was created.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn put_terminal(
        &self,
        sn: &str,
        entry: TerminalEntry,
    ) -> Result<(terminal::Model, bool), StoreError> {
        let now = Utc::now();
        match self.terminal_by_sn(sn).await? {
            Some(existing) => {
                let mut active: terminal::ActiveModel = existing.into();
                active.name = Set(entry.name);
                active.is_active = Set(entry.is_active);
                active.is_whitelisted = Set(entry.is_whitelisted);
                active.updated_at = Set(now);
                Ok((active.update(&self.db).await?, false))
            }
            None => {
                let row = terminal::ActiveModel {
                    sn: Set(sn.to_owned()),
                    name: Set(entry.name),
                    model: Set(None),
                    firmware: Set(None),
                    devinfo: Set(None),
                    is_active: Set(entry.is_active),
                    is_whitelisted: Set(entry.is_whitelisted),
                    last_seen: Set(None),
                    created_at: Set(now),
                    updated_at: Set(now),
                    ..Default::default()
                };
                Ok((row.insert(&self.db).await?, true))
            }
        }
    }

    /// Waits (at most `limit`) for the writes in flight, then closes the pool, so no connection is left to be
    /// dropped after the runtime is gone (a graceful shutdown's last step).
    pub async fn close(&self, limit: Duration) {
        // The writers first: their queues (writes behind included) are committed before the pools close.
        let closed = tokio::join!(
            self.audit.close(limit),
            self.records.close(limit),
            self.logs.close(limit),
            self.registrations.close(limit),
            self.touches.close(limit),
            self.ocpp_log.close(limit),
            self.meters.close(limit),
        );
        let writers = [
            closed.0, closed.1, closed.2, closed.3, closed.4, closed.5, closed.6,
        ]
        .iter()
        .all(|done| *done);
        if let Some(checkpointer) = &self.checkpointer {
            checkpointer.close(limit).await;
        }
        let pool = tokio::time::timeout(limit, self.db.close_by_ref())
            .await
            .is_ok();
        if !(writers && pool) {
            tracing::warn!("database writes still in flight at shutdown");
        }
    }

    // ---- attendance logs --------------------------------------------------------------------------------

    /// Inserts a batch of punches, skipping the ones already stored (same natural key), and returns once it is
    /// committed. Batches of several terminals arriving together share one transaction (group commit); a
    /// batch is all or nothing. Returns how many rows were new.
    ///
    /// # Errors
    /// On a database failure; then nothing of the batch is committed.
    pub async fn insert_logs(
        &self,
        terminal_id: i32,
        records: &[LogRecord],
    ) -> Result<u64, StoreError> {
        if records.is_empty() {
            return Ok(0);
        }
        let mut batch = LogBatch::new(
            self.db.get_database_backend(),
            terminal_id,
            records,
            Utc::now(),
        )?;
        // On PostgreSQL a batch of one statement (up to INSERT_CHUNK records) runs alone, without BEGIN and
        // COMMIT around it: a single statement is atomic by itself, and it saves two round trips per batch
        // (BENCHMARKS.md, session 8). SQLite batches share the attendance writer's transaction (group commit).
        if self.db.get_database_backend() == DbBackend::Postgres && batch.statements.len() == 1 {
            if let Some(statement) = batch.statements.pop() {
                return Ok(self.db.execute_raw(statement).await?.rows_affected());
            }
        }
        self.logs.write(batch).await
    }

    /// Newest first (by device time, then id), keyset-paginated.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn logs_page(
        &self,
        terminal_id: i32,
        limit: u64,
        before: Option<LogCursor>,
        since: Option<NaiveDateTime>,
    ) -> Result<(Vec<attendance_log::Model>, Option<LogCursor>), StoreError> {
        let mut rows = logs_page_query(terminal_id, limit, before, since)
            .all(&self.db)
            .await?;
        let next = if rows.len() as u64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|last| LogCursor {
                time: last.time,
                id: last.id,
            })
        } else {
            None
        };
        Ok((rows, next))
    }

    /// # Errors
    /// On a database failure.
    pub async fn count_logs(&self, terminal_id: i32) -> Result<u64, StoreError> {
        use sea_orm::PaginatorTrait;
        Ok(attendance_log::Entity::find()
            .filter(attendance_log::Column::TerminalId.eq(terminal_id))
            .count(&self.db)
            .await?)
    }

    // ---- users and credentials --------------------------------------------------------------------------

    /// Upserts a user and one credential slot in one transaction. `record: None` leaves a stored record as it
    /// is (a `getuserlist` page names the slot but not its data).
    ///
    /// # Errors
    /// On a database failure.
    pub async fn upsert_user_credential(
        &self,
        terminal_id: i32,
        user: UserUpsert,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        upsert_user_credential_in(&txn, terminal_id, &user).await?;
        txn.commit().await?;
        Ok(())
    }

    /// Upserts many (for merged `getuserlist` pages) in one transaction.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn upsert_users(
        &self,
        terminal_id: i32,
        users: &[UserUpsert],
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        for user in users {
            upsert_user_credential_in(&txn, terminal_id, user).await?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Users of a terminal with their credential slots, ordered by enrollid.
    ///
    /// # Errors
    /// On a database failure.
    pub async fn users_with_credentials(
        &self,
        terminal_id: i32,
    ) -> Result<Vec<(biometric_user::Model, Vec<biometric_credential::Model>)>, StoreError> {
        let users = biometric_user::Entity::find()
            .filter(biometric_user::Column::TerminalId.eq(terminal_id))
            .order_by_asc(biometric_user::Column::Enrollid)
            .all(&self.db)
            .await?;
        let ids: Vec<i32> = users.iter().map(|u| u.id).collect();
        let mut credentials = Vec::new();
        // Bounded IN lists keep the statement valid on SQLite for terminals with thousands of users.
        for chunk in ids.chunks(INSERT_CHUNK) {
            credentials.extend(
                biometric_credential::Entity::find()
                    .filter(biometric_credential::Column::UserId.is_in(chunk.to_vec()))
                    .order_by_asc(biometric_credential::Column::Backupnum)
                    .all(&self.db)
                    .await?,
            );
        }
        Ok(users
            .into_iter()
            .map(|user| {
                let own = credentials
                    .iter()
                    .filter(|c| c.user_id == user.id)
                    .cloned()
                    .collect();
                (user, own)
            })
            .collect())
    }

    // ---- commands ---------------------------------------------------------------------------------------

    /// # Errors
    /// On a database failure.
    pub async fn insert_command(&self, row: NewCommand) -> Result<(), StoreError> {
        self.audit
            .write(audit::AuditOp::Insert(row, Utc::now()))
            .await
    }

    /// Holds a live command's row in memory until [`Self::finish_command`] or
    /// [`Self::finish_live_command_behind`] writes it (see
    /// [`crate::devices::Origin::Live`]).
    pub(crate) fn begin_live_command(&self, row: NewCommand, shared: bool) {
        let model = command::Model {
            id: row.id,
            device_kind: row.device_kind.to_owned(),
            device: row.device,
            command: row.command,
            params: row.params,
            state: CommandState::Queued.as_str().to_owned(),
            reply: None,
            error: None,
            requested_at: Utc::now(),
            sent_at: None,
            finished_at: None,
            deliver_queued: false,
            expires_at: None,
            claim_token: None,
            claimed_at: None,
        };
        self.live()
            .insert(row.id, audit::LiveRow { row: model, shared });
    }

    /// Live commands in flight for `device` in `state` (either filter optional).
    pub(crate) fn live_commands_matching(
        &self,
        device: Option<&str>,
        state: Option<&str>,
    ) -> Vec<command::Model> {
        self.live()
            .values()
            .map(|live| &live.row)
            .filter(|row| device.is_none_or(|d| row.device == d))
            .filter(|row| state.is_none_or(|s| row.state == s))
            .cloned()
            .collect()
    }

    fn live(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Uuid, audit::LiveRow>> {
        audit::lock(&self.live_commands)
    }

    /// # Errors
    /// On a database failure.
    pub async fn mark_command_sent(&self, id: Uuid, at: DateTime<Utc>) -> Result<(), StoreError> {
        if self.mark_live_command_sent(id, at) {
            return Ok(());
        }
        self.audit.write(audit::AuditOp::Sent { id, at }).await
    }

    /// [`Self::mark_command_sent`] for a live command, whose row is in memory: no wait. `false` when `id` is not
    /// a live command.
    pub(crate) fn mark_live_command_sent(&self, id: Uuid, at: DateTime<Utc>) -> bool {
        let mut live = self.live();
        let Some(row) = live.get_mut(&id).map(|live| &mut live.row) else {
            return false;
        };
        if row.state == CommandState::Queued.as_str() {
            row.state = CommandState::Sent.as_str().to_owned();
            row.sent_at = Some(at);
        }
        true
    }

    /// Sets a live command's final state in memory and returns the row to write, and whether its write must
    /// be waited for (see [`crate::devices::Origin::Live`]). When `id` is not a live command, the reply and
    /// error come back.
    #[allow(clippy::type_complexity)]
    fn settle_live_command(
        &self,
        id: Uuid,
        state: CommandState,
        reply: Option<Value>,
        error: Option<String>,
    ) -> Result<(command::Model, bool), (Option<Value>, Option<String>)> {
        let mut live = self.live();
        let Some(live) = live.get_mut(&id) else {
            return Err((reply, error));
        };
        let row = &mut live.row;
        row.state = state.as_str().to_owned();
        row.reply = reply;
        row.error = error;
        row.finished_at = Some(Utc::now());
        Ok((row.clone(), live.shared))
    }

    /// [`Self::finish_command`] for a live command nobody waits to see committed, from code that cannot wait
    /// (a device session): the row is final in memory at once and queued for writing behind. What is left to
    /// wait for comes back (the queue is full, the row is a shared one, or not a live command at all): the
    /// caller answers only after it, so that a stalled database still holds REST callers back.
    pub(crate) fn finish_live_command_behind(
        &self,
        id: Uuid,
        state: CommandState,
        reply: Option<Value>,
        error: Option<String>,
    ) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
        let pending: std::pin::Pin<Box<dyn std::future::Future<Output = _> + Send>> =
            match self.settle_live_command(id, state, reply, error) {
                Ok((row, shared)) => {
                    let record = audit::AuditOp::Record(Box::new(row), self.live_commands.clone());
                    let record = if shared {
                        record
                    } else {
                        // The hot path: queued at once, nothing cloned for a task.
                        self.records.try_write_behind(record).err()?
                    };
                    let records = self.records.clone();
                    Box::pin(async move {
                        if shared {
                            records.write(record).await
                        } else {
                            records.write_behind(record).await
                        }
                    })
                }
                Err((reply, error)) => {
                    let store = self.clone();
                    Box::pin(async move { store.finish_command(id, state, reply, error).await })
                }
            };
        Some(Box::pin(async move {
            if let Err(err) = pending.await {
                tracing::error!(%id, %err, "could not record a command's outcome");
            }
        }))
    }

    /// # Errors
    /// On a database failure.
    pub async fn finish_command(
        &self,
        id: Uuid,
        state: CommandState,
        reply: Option<Value>,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let (reply, error) = match self.settle_live_command(id, state, reply, error) {
            Ok((row, shared)) => {
                // Readers find the row in memory until it is committed.
                let record = audit::AuditOp::Record(Box::new(row), self.live_commands.clone());
                return if shared {
                    self.records.write(record).await
                } else {
                    self.records.write_behind(record).await
                };
            }
            Err(not_live) => not_live,
        };
        self.audit
            .write(audit::AuditOp::Finish {
                id,
                state,
                reply,
                error,
                at: Utc::now(),
            })
            .await
    }

    /// # Errors
    /// On a database failure.
    pub async fn command(&self, id: Uuid) -> Result<Option<command::Model>, StoreError> {
        if let Some(live) = self.live().get(&id) {
            return Ok(Some(live.row.clone()));
        }
        Ok(command::Entity::find_by_id(id).one(&self.db).await?)
    }
}

async fn upsert_user_credential_in<C: ConnectionTrait>(
    db: &C,
    terminal_id: i32,
    user: &UserUpsert,
) -> Result<(), DbErr> {
    let now = Utc::now();
    // Write first (see `stop_transaction`): make sure the user row exists with an insert that ignores a
    // duplicate, then read it; a read-then-write transaction fails at once on SQLite under concurrent writes.
    let placeholder = biometric_user::ActiveModel {
        terminal_id: Set(terminal_id),
        enrollid: Set(user.enrollid),
        name: Set(user.name.clone()),
        admin: Set(user.admin.unwrap_or(0)),
        is_enabled: Set(true),
        updated_at: Set(now),
        ..Default::default()
    };
    biometric_user::Entity::insert(placeholder)
        .on_conflict_do_nothing_on([
            biometric_user::Column::TerminalId,
            biometric_user::Column::Enrollid,
        ])
        .exec_without_returning(db)
        .await?;
    let existing = biometric_user::Entity::find()
        .filter(biometric_user::Column::TerminalId.eq(terminal_id))
        .filter(biometric_user::Column::Enrollid.eq(user.enrollid))
        .one(db)
        .await?;
    let user_row = match existing {
        Some(row) => {
            let mut active: biometric_user::ActiveModel = row.into();
            if let Some(name) = &user.name {
                active.name = Set(Some(name.clone()));
            }
            if let Some(admin) = user.admin {
                active.admin = Set(admin);
            }
            active.updated_at = Set(now);
            active.update(db).await?
        }
        None => {
            biometric_user::ActiveModel {
                terminal_id: Set(terminal_id),
                enrollid: Set(user.enrollid),
                name: Set(user.name.clone()),
                admin: Set(user.admin.unwrap_or(0)),
                is_enabled: Set(true),
                updated_at: Set(now),
                ..Default::default()
            }
            .insert(db)
            .await?
        }
    };
    let Some(backupnum) = user.backupnum else {
        return Ok(());
    };
    let slot = biometric_credential::ActiveModel {
        user_id: Set(user_row.id),
        backupnum: Set(backupnum),
        record: Set(user.record.clone()),
        updated_at: Set(now),
        ..Default::default()
    };
    let mut on_conflict = OnConflict::columns([
        biometric_credential::Column::UserId,
        biometric_credential::Column::Backupnum,
    ]);
    if user.record.is_some() {
        on_conflict.update_columns([
            biometric_credential::Column::Record,
            biometric_credential::Column::UpdatedAt,
        ]);
    } else {
        on_conflict.update_column(biometric_credential::Column::UpdatedAt);
    }
    biometric_credential::Entity::insert(slot)
        .on_conflict(on_conflict)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Position in the newest-first log listing: the last row of the previous page.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LogCursor {
    pub time: NaiveDateTime,
    pub id: i64,
}

impl LogCursor {
    /// Opaque to clients, but readable in logs: `2023-01-10T16:04:21_42`.
    pub fn encode(&self) -> String {
        format!("{}_{}", self.time.format("%Y-%m-%dT%H:%M:%S"), self.id)
    }

    pub fn decode(text: &str) -> Option<LogCursor> {
        let (time, id) = text.rsplit_once('_')?;
        Some(LogCursor {
            time: NaiveDateTime::parse_from_str(time, "%Y-%m-%dT%H:%M:%S").ok()?,
            id: id.parse().ok()?,
        })
    }
}

#[derive(Clone, Debug, Default)]
pub struct TerminalPatch {
    pub is_active: Option<bool>,
    pub is_whitelisted: Option<bool>,
    pub name: Option<Option<String>>,
}

#[derive(Clone, Debug)]
pub struct TerminalEntry {
    pub name: Option<String>,
    pub is_active: bool,
    pub is_whitelisted: bool,
}

#[derive(Clone, Debug)]
pub struct UserUpsert {
    pub enrollid: i64,
    pub name: Option<String>,
    pub admin: Option<i32>,
    pub backupnum: Option<i32>,
    pub record: Option<String>,
}

#[derive(Debug)]
pub struct NewCommand {
    pub id: Uuid,
    pub device_kind: &'static str,
    pub device: String,
    pub command: String,
    pub params: Value,
    /// `deliver=queued`: kept for an offline device, re-queued if it drops mid-command.
    pub deliver_queued: bool,
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommandState {
    Queued,
    Sent,
    Succeeded,
    Failed,
    TimedOut,
}

impl CommandState {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandState::Queued => "queued",
            CommandState::Sent => "sent",
            CommandState::Succeeded => "succeeded",
            CommandState::Failed => "failed",
            CommandState::TimedOut => "timed_out",
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use sea_orm::sea_query::Query;
    use sea_orm::QueryTrait;

    /// SQLite's plan for a built query, one line per step.
    pub(in crate::store) async fn sqlite_plan(
        db: &impl ConnectionTrait,
        built: Statement,
    ) -> String {
        let explain = Statement::from_sql_and_values(
            DbBackend::Sqlite,
            format!("EXPLAIN QUERY PLAN {}", built.sql),
            built.values.map(|v| v.0).unwrap_or_default(),
        );
        db.query_all_raw(explain)
            .await
            .expect("explain")
            .iter()
            .map(|row| row.try_get::<String>("", "detail").expect("detail"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The digit-by-digit path writes what chrono writes, and hands chrono what it does not cover.
    #[test]
    fn device_times_are_written_as_sqlx_writes_them() {
        let date = |y, m, d| chrono::NaiveDate::from_ymd_opt(y, m, d).expect("date");
        let times = [
            date(2024, 6, 1).and_hms_opt(8, 30, 5),
            date(1999, 12, 31).and_hms_opt(23, 59, 59),
            date(2000, 1, 1).and_hms_opt(0, 0, 0),
            date(0, 1, 1).and_hms_opt(0, 0, 0),
            date(9999, 12, 31).and_hms_opt(23, 59, 59),
            date(999, 2, 3).and_hms_opt(4, 5, 6),
            date(10000, 1, 1).and_hms_opt(0, 0, 0),
            date(-1, 1, 1).and_hms_opt(0, 0, 0),
            date(2024, 6, 1).and_hms_milli_opt(8, 30, 5, 120),
            date(2024, 6, 1).and_hms_nano_opt(8, 30, 5, 7),
            // A leap second.
            date(2016, 12, 31).and_hms_milli_opt(23, 59, 59, 1_000),
        ];
        for time in times.into_iter().map(|t| t.expect("time")) {
            assert_eq!(
                sqlite_naive_time(&time),
                time.format("%F %T%.f").to_string(),
                "{time:?}"
            );
        }
        let mut time = date(2023, 1, 1).and_hms_opt(0, 0, 0).expect("time");
        // Every digit position changes over a year and a half, second by odd second.
        for _ in 0..20_000 {
            time += chrono::Duration::seconds(2_347);
            assert_eq!(
                sqlite_naive_time(&time),
                time.format("%F %T%.f").to_string()
            );
        }
    }

    /// The upsert as sea-orm and sea-query build it (what `Registration::upsert` did before its text was
    /// written by hand): the reference for `registration_upsert_sql` and `Registration::values`.
    fn sea_orm_registration_upsert(regs: &[&Registration], backend: DbBackend) -> Statement {
        let keep_if_absent = |column: &str| {
            Expr::cust(format!(
                "COALESCE(\"excluded\".\"{column}\", \"terminals\".\"{column}\")"
            ))
        };
        let on_conflict = OnConflict::column(terminal::Column::Sn)
            .update_columns([terminal::Column::LastSeen, terminal::Column::UpdatedAt])
            .value(terminal::Column::Model, keep_if_absent("model"))
            .value(terminal::Column::Firmware, keep_if_absent("firmware"))
            .value(terminal::Column::Devinfo, keep_if_absent("devinfo"))
            .to_owned();
        let rows = regs.iter().map(|reg| terminal::ActiveModel {
            sn: Set(reg.sn.clone()),
            model: Set(reg.model.clone()),
            firmware: Set(reg.firmware.clone()),
            devinfo: Set(reg.devinfo.clone()),
            is_active: Set(true),
            is_whitelisted: Set(false),
            last_seen: Set(Some(reg.at)),
            created_at: Set(reg.at),
            updated_at: Set(reg.at),
            ..Default::default()
        });
        let mut upsert = terminal::Entity::insert_many(rows)
            .on_conflict(on_conflict)
            .into_query();
        upsert.returning(Query::returning().columns([terminal::Column::Id, terminal::Column::Sn]));
        backend.build(&upsert)
    }

    #[test]
    fn the_registration_upsert_is_what_sea_orm_builds() {
        let at = DateTime::parse_from_rfc3339("2026-12-07T10:01:02.345678Z")
            .expect("time")
            .with_timezone(&Utc);
        let regs = [
            Registration {
                sn: "SN-A".into(),
                model: Some("TM20".into()),
                firmware: Some("2.4".into()),
                devinfo: Some(serde_json::json!({"usedface": 3, "modelname": "Zoë \"Z\""})),
                at,
            },
            Registration {
                sn: "SN-B".into(),
                model: None,
                firmware: None,
                devinfo: None,
                at: at + chrono::Duration::milliseconds(7),
            },
            Registration {
                sn: "SN-C".into(),
                model: Some("TM20-WIFI".into()),
                firmware: None,
                devinfo: Some(serde_json::json!([])),
                at,
            },
        ];
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            for rows in 1..=regs.len() {
                let batch: Vec<&Registration> = regs[..rows].iter().collect();
                let built = sea_orm_registration_upsert(&batch, backend);
                assert_eq!(
                    registration_upsert_sql(backend, rows),
                    built.sql,
                    "{backend:?}, {rows} rows"
                );
                let ours: Vec<SqlValue> = batch.iter().flat_map(|reg| reg.values()).collect();
                assert_eq!(
                    Some(ours),
                    built.values.map(|v| v.0),
                    "{backend:?}, {rows} rows"
                );
            }
        }
    }

    #[test]
    fn batches_are_cut_into_power_of_two_chunks_in_order() {
        let items: Vec<usize> = (0..300).collect();
        let chunks: Vec<&[usize]> = power_of_two_chunks(&items, 64).collect();
        assert_eq!(
            chunks.iter().map(|c| c.len()).collect::<Vec<_>>(),
            [64, 64, 64, 64, 32, 8, 4]
        );
        assert_eq!(chunks.concat(), items);
        assert_eq!(power_of_two_chunks(&items[..0], 64).count(), 0);
        assert_eq!(power_of_two_chunks(&items[..1], 64).count(), 1);
    }

    #[test]
    fn log_cursor_round_trips_and_rejects_garbage() {
        let cursor = LogCursor {
            time: NaiveDateTime::parse_from_str("2023-01-10 16:04:21", "%Y-%m-%d %H:%M:%S")
                .unwrap_or_default(),
            id: 42,
        };
        assert_eq!(cursor.encode(), "2023-01-10T16:04:21_42");
        assert_eq!(LogCursor::decode(&cursor.encode()), Some(cursor));
        for bad in [
            "",
            "42",
            "2023-01-10T16:04:21",
            "x_1",
            "2023-01-10T16:04:21_x",
        ] {
            assert_eq!(LogCursor::decode(bad), None, "{bad}");
        }
    }

    /// The listing of a terminal's punches reads the natural key in time order, the only index left on
    /// `attendance_logs` (a scan of the table, or of another terminal's punches, would fail this).
    #[tokio::test]
    async fn a_terminals_punches_are_listed_from_the_natural_key() {
        use sea_orm::QueryTrait;
        let dir = tempfile::tempdir().expect("temp dir");
        let (_store, path) = sqlite_store(&dir).await;
        // A connection opened after the migration: `EXPLAIN` on a pooled one opened before it may describe
        // the old schema (it does not check the schema's version as a query does, and re-prepare).
        let db = sea_orm::Database::connect(format!("sqlite://{}", path.display()))
            .await
            .expect("connect");
        let time = NaiveDateTime::parse_from_str("2024-06-01 08:30:05", "%Y-%m-%d %H:%M:%S")
            .expect("time");
        let cursor = LogCursor { time, id: 42 };
        for (query, what) in [
            (logs_page_query(7, 50, None, None), "first page"),
            (logs_page_query(7, 50, Some(cursor), None), "next page"),
            (logs_page_query(7, 50, Some(cursor), Some(time)), "since"),
        ] {
            let plan = sqlite_plan(&db, query.build(DbBackend::Sqlite)).await;
            assert!(
                plan.contains("USING INDEX ux_attendance_logs_terminal_time_key (terminal_id=?"),
                "{what}: {plan}"
            );
        }
        let indexes = db
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'attendance_logs' \
                 AND sql IS NOT NULL",
            ))
            .await
            .expect("indexes");
        assert_eq!(indexes.len(), 1, "one index on attendance_logs");
    }

    /// A migrated store on a fresh SQLite file in `dir`, and the path of that file.
    async fn sqlite_store(dir: &tempfile::TempDir) -> (Store, std::path::PathBuf) {
        let path = dir.path().join("gh.db");
        let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display()))
            .await
            .expect("connect");
        store.migrate().await.expect("migrate");
        (store, path)
    }

    /// A punch of `enrollid` at a fixed device time.
    fn punch(enrollid: i64, temp: Option<f64>, raw: Value) -> LogRecord {
        LogRecord {
            enrollid,
            time: NaiveDateTime::parse_from_str("2024-06-01 08:30:05", "%Y-%m-%d %H:%M:%S")
                .expect("time"),
            mode: 1,
            inout: 0,
            event: 0,
            temp,
            verifymode: None,
            name: None,
            aliasid: None,
            raw,
        }
    }

    /// The integer in the first column of the first row of `sql`.
    async fn scalar(db: &DatabaseConnection, sql: &str) -> i64 {
        db.query_one_raw(Statement::from_string(DbBackend::Sqlite, sql))
            .await
            .expect("query")
            .expect("row")
            .try_get_by_index::<i64>(0)
            .expect("value")
    }

    /// The INSERT text written by hand is the one sea-query builds for the same columns and conflict target.
    #[test]
    fn the_attendance_insert_is_what_sea_query_builds() {
        use attendance_log::Column as C;
        let natural_key = [
            C::TerminalId,
            C::Enrollid,
            C::Time,
            C::Mode,
            C::Inout,
            C::Event,
        ];
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            for rows in [1, 3] {
                let mut insert = Query::insert();
                insert
                    .into_table(attendance_log::Entity)
                    .columns(natural_key.into_iter().chain([
                        C::Temp,
                        C::Verifymode,
                        C::Raw,
                        C::ReceivedAt,
                    ]))
                    .on_conflict(OnConflict::columns(natural_key).do_nothing().to_owned());
                for _ in 0..rows {
                    insert
                        .values((0..LOG_COLUMNS.len() as i32).map(|v| v.into()))
                        .expect("row");
                }
                assert_eq!(
                    insert_logs_sql(backend, rows),
                    backend.build(&insert).sql,
                    "{backend:?}, {rows} rows"
                );
            }
        }
    }

    /// The attendance writer binds pre-formatted text on SQLite; the stored bytes must be what sea-orm's own
    /// insert of the same values stores, or the natural-key index would not see a re-sent record written by
    /// an older build as the same record, and reads could parse it differently.
    #[tokio::test]
    async fn a_log_batch_stores_what_a_sea_orm_insert_stores() {
        use sea_orm::ActiveModelTrait;
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = sqlite_store(&dir).await;
        let terminal_id = store
            .record_registration("SN-FORMAT", None, None, None)
            .await
            .expect("terminal");
        // Sub-second digits, so the fractional formatting is exercised.
        let received_at = DateTime::parse_from_rfc3339("2026-12-06T13:29:19.123456789Z")
            .expect("received_at")
            .with_timezone(&Utc);
        let raw =
            serde_json::json!({"enrollid": 7, "time": "2024-06-01 08:30:05", "name": "Zoë \"Z\""});
        // A device time with sub-second digits too (a read-back log may carry them), for "%.f".
        let time = NaiveDateTime::parse_from_str("2024-06-01 08:30:05.25", "%Y-%m-%d %H:%M:%S%.f")
            .expect("time");
        let record = |enrollid: i64| LogRecord {
            time,
            ..punch(enrollid, Some(36.5), raw.clone())
        };
        let batch = LogBatch::new(DbBackend::Sqlite, terminal_id, &[record(7)], received_at)
            .expect("batch");
        assert_eq!(store.logs.write(batch).await.expect("batch write"), 1);
        attendance_log::ActiveModel {
            terminal_id: Set(terminal_id),
            enrollid: Set(8),
            time: Set(time),
            mode: Set(1),
            inout: Set(0),
            event: Set(0),
            temp: Set(Some(36.5)),
            verifymode: Set(None),
            raw: Set(raw.clone()),
            received_at: Set(received_at),
            ..Default::default()
        }
        .insert(store.connection())
        .await
        .expect("sea-orm insert");
        let rows = store
            .connection()
            .query_all_raw(Statement::from_string(
                DbBackend::Sqlite,
                "SELECT typeof(time) || ':' || time, typeof(received_at) || ':' || received_at, \
                 typeof(raw) || ':' || raw, typeof(temp) || ':' || temp, typeof(verifymode) \
                 FROM attendance_logs ORDER BY enrollid",
            ))
            .await
            .expect("rows");
        let texts: Vec<Vec<String>> = rows
            .iter()
            .map(|row| {
                (0..5)
                    .map(|i| row.try_get_by_index::<String>(i).expect("column"))
                    .collect()
            })
            .collect();
        assert_eq!(texts.len(), 2);
        assert_eq!(texts[0], texts[1], "LogBatch vs sea-orm");
        // And a re-sent record is recognised as the one stored by sea-orm.
        let again =
            LogBatch::new(DbBackend::Sqlite, terminal_id, &[record(8)], Utc::now()).expect("batch");
        assert_eq!(store.logs.write(again).await.expect("re-send"), 0);
    }

    /// A group writer's connection keeps statement journals in memory (`temp_store=2`), the pool's readers
    /// keep SQLite's default (0); both stay durable (`synchronous=FULL`, 2).
    #[tokio::test]
    async fn writer_connections_keep_statement_journals_in_memory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, path) = sqlite_store(&dir).await;
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let writer = writer_connection(&url, store.connection(), true)
            .await
            .expect("writer connection");
        assert_eq!(scalar(&writer, "PRAGMA temp_store").await, 2);
        assert_eq!(scalar(&writer, "PRAGMA synchronous").await, 2);
        assert_eq!(scalar(store.connection(), "PRAGMA temp_store").await, 0);
    }

    /// Writers commit with `wal_autocheckpoint=0`; the checkpoint task must still copy what they commit
    /// into the database file, or the WAL would only grow. The database file alone (no WAL beside it) must
    /// hold the rows a moment after they were written.
    #[tokio::test]
    async fn the_checkpoint_task_copies_committed_rows_into_the_database_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, path) = sqlite_store(&dir).await;
        assert_eq!(
            scalar(store.connection(), "PRAGMA wal_autocheckpoint").await,
            0
        );
        let terminal_id = store
            .record_registration("SN-CHECKPOINT", None, None, None)
            .await
            .expect("terminal");
        let records: Vec<LogRecord> = (1..=3)
            .map(|enrollid| punch(enrollid, None, serde_json::json!({"enrollid": enrollid})))
            .collect();
        assert_eq!(
            store
                .insert_logs(terminal_id, &records)
                .await
                .expect("insert"),
            3
        );
        tokio::time::sleep(checkpoint::INTERVAL * 3).await;
        let copy = dir.path().join("copy.db");
        std::fs::copy(&path, &copy).expect("copy the database file alone");
        let alone = Database::connect(format!("sqlite://{}?mode=ro", copy.display()))
            .await
            .expect("open the copy");
        let count = scalar(&alone, "SELECT count(*) FROM attendance_logs").await;
        assert_eq!(count, 3);
    }

    /// A batch of registrations is one upsert: each caller must get its own terminal's row, a known terminal
    /// keeps what it did not report and what only an admin sets, and the same terminal twice in a batch
    /// still works. A batch of touches is one UPDATE: each terminal gets its own (latest) time.
    #[tokio::test]
    async fn batched_registrations_and_touches_answer_and_keep_each_terminal_apart() {
        use group::GroupOp;
        use sea_orm::ActiveModelTrait;
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = sqlite_store(&dir).await;
        let db = store.connection();
        let known_id = store
            .record_registration(
                "SN-KNOWN",
                Some("M1".into()),
                Some("F1".into()),
                Some(serde_json::json!({"fp": 1})),
            )
            .await
            .expect("known");
        let row = |sn: &'static str| {
            let store = store.clone();
            async move { store.terminal_by_sn(sn).await.expect("read").expect("row") }
        };
        let known = row("SN-KNOWN").await;
        assert_eq!(known.id, known_id);
        let mut admin: terminal::ActiveModel = known.clone().into();
        admin.name = Set(Some("Front door".into()));
        admin.is_whitelisted = Set(true);
        admin.update(db).await.expect("admin edit");

        let at = DateTime::parse_from_rfc3339("2026-12-06T10:00:00Z")
            .expect("at")
            .with_timezone(&Utc);
        let reg = |sn: &str, firmware: Option<&str>| Registration {
            sn: sn.into(),
            model: None,
            firmware: firmware.map(Into::into),
            devinfo: None,
            at,
        };
        // More than one chunk (power_of_two_chunks), the known terminal in the middle of the second.
        let regs: Vec<Registration> = (0..70)
            .map(|i| match i {
                66 => reg("SN-KNOWN", Some("F2")),
                _ => reg(&format!("SN-NEW-{i:02}"), Some("F9")),
            })
            .collect();
        let txn = db.begin().await.expect("begin");
        let ids = Registration::apply_all(&regs.iter().collect::<Vec<_>>(), &txn)
            .await
            .expect("batch");
        txn.commit().await.expect("commit");
        assert_eq!(ids.len(), regs.len());
        for (reg, id) in regs.iter().zip(&ids) {
            let stored = store.terminal_by_sn(&reg.sn).await.expect("read");
            assert_eq!(stored.map(|t| t.id), Some(*id), "{}", reg.sn);
        }
        let known_row = row("SN-KNOWN").await;
        assert_eq!(ids[66], known.id);
        assert_eq!(known_row.model.as_deref(), Some("M1"));
        assert_eq!(known_row.firmware.as_deref(), Some("F2"));
        assert_eq!(known_row.devinfo, Some(serde_json::json!({"fp": 1})));
        assert_eq!(known_row.name.as_deref(), Some("Front door"));
        assert!(known_row.is_whitelisted && known_row.is_active);
        assert_eq!(known_row.created_at, known.created_at);
        assert_eq!(known_row.last_seen, Some(at));
        let new_row = row("SN-NEW-00").await;
        assert_eq!(new_row.firmware.as_deref(), Some("F9"));
        assert!(new_row.is_active && !new_row.is_whitelisted);

        let (twice, thrice) = (reg("SN-NEW-00", Some("F10")), reg("SN-NEW-00", Some("F11")));
        let txn = db.begin().await.expect("begin");
        let ids = Registration::apply_all(&[&twice, &thrice], &txn)
            .await
            .expect("same terminal twice");
        txn.commit().await.expect("commit");
        assert_eq!(ids, [new_row.id, new_row.id]);
        assert_eq!(row("SN-NEW-00").await.firmware.as_deref(), Some("F11"));

        let later = at + chrono::Duration::seconds(5);
        let touches = [
            Touch {
                terminal_id: known_id,
                seen: later,
            },
            Touch {
                terminal_id: new_row.id,
                seen: at + chrono::Duration::seconds(1),
            },
            Touch {
                terminal_id: known_id,
                seen: at + chrono::Duration::seconds(2),
            },
        ];
        let txn = db.begin().await.expect("begin");
        Touch::apply_all(&touches.iter().collect::<Vec<_>>(), &txn)
            .await
            .expect("touches");
        txn.commit().await.expect("commit");
        assert_eq!(row("SN-KNOWN").await.last_seen, Some(later));
        assert_eq!(
            row("SN-NEW-00").await.last_seen,
            Some(at + chrono::Duration::seconds(1))
        );
    }

    /// Concurrent look-ups share queries; each must still get its own answer, unknown keys included.
    #[tokio::test]
    async fn concurrent_lookups_each_get_their_own_terminal() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _) = sqlite_store(&dir).await;
        for i in 0..50 {
            store
                .record_registration(&format!("SN-{i:03}"), Some(format!("M{i}")), None, None)
                .await
                .expect("register");
        }
        let lookups = (0..100).map(|i| {
            let store = store.clone();
            tokio::spawn(async move { (i, store.terminal_by_sn(&format!("SN-{i:03}")).await) })
        });
        for handle in lookups {
            let (i, found) = handle.await.expect("task");
            let found = found.expect("look-up");
            if i < 50 {
                assert_eq!(found.expect("known").model, Some(format!("M{i}")));
            } else {
                assert_eq!(found, None, "SN-{i:03} was never registered");
            }
        }
    }
}
