//! One index on `attendance_logs` instead of two: the punch's natural key, unique, reordered to lead with the
//! terminal and the time, `(terminal_id, time, enrollid, mode, inout, event)`, also serves the newest-first
//! listing of a terminal's punches, so the `(terminal_id, time, id)` index goes.
//!
//! Every stored punch was a B-tree insert into the table and into both indexes; on SQLite the attendance
//! writer (one connection, a commit per group) spent its time on them, and ingestion was bound by it
//! (BENCHMARKS.md, session 11: 121–138k → 173–181k records/s). The key is the same set of columns, so a re-sent
//! record still hits it (`ON CONFLICT` names the columns, in any order). A listing now reads a terminal's
//! punches in time order from the key and sorts only the punches of equal time by id: a page that starts
//! inside a run of punches of one second reads that whole run (it could seek to its id before), the price of
//! a B-tree fewer per punch; such runs are short unless a terminal's clock is stuck.
//!
//! On PostgreSQL the index is built inside the migration's transaction, which blocks writes to
//! `attendance_logs` while it runs, and dropping the old indexes locks the table against reads too until it
//! commits: on a large table, expect the upgrade to hold back acknowledgements of `sendlog` and listings for
//! that long (terminals re-send; nothing is lost).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const NATURAL_KEY: &str = "ux_attendance_logs_natural_key";
const LISTING: &str = "ix_attendance_logs_terminal_time_id";
const KEY_BY_TIME: &str = "ux_attendance_logs_terminal_time_key";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // The new key first: a punch is never without a unique key.
        db.execute_unprepared(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{KEY_BY_TIME}\" ON \"attendance_logs\" \
             (\"terminal_id\", \"time\", \"enrollid\", \"mode\", \"inout\", \"event\")"
        ))
        .await?;
        for old in [NATURAL_KEY, LISTING] {
            db.execute_unprepared(&format!("DROP INDEX IF EXISTS \"{old}\""))
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{NATURAL_KEY}\" ON \"attendance_logs\" \
             (\"terminal_id\", \"enrollid\", \"time\", \"mode\", \"inout\", \"event\")"
        ))
        .await?;
        db.execute_unprepared(&format!(
            "CREATE INDEX IF NOT EXISTS \"{LISTING}\" ON \"attendance_logs\" \
             (\"terminal_id\", \"time\", \"id\")"
        ))
        .await?;
        db.execute_unprepared(&format!("DROP INDEX IF EXISTS \"{KEY_BY_TIME}\""))
            .await?;
        Ok(())
    }
}
