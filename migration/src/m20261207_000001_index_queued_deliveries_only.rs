//! The `(device, state)` index of `commands` narrowed to queued-delivery commands, and ordered by request time
//! within a state (the queue is delivered oldest first).
//!
//! The offline queue looks commands up by device and state at every registration and delivery, and every one
//! of those queries also asks for `deliver_queued = TRUE`. Live commands (almost every row: each REST command
//! that found its device online) were still written into that index, one B-tree insert and a leaf page per
//! device per commit (BENCHMARKS.md, session 10). Listing a device's commands in one state
//! (`GET /api/commands?device=…&state=…`) now walks the device's commands newest first instead.
//!
//! On PostgreSQL the index is built inside the migration's transaction, which blocks writes to `commands`
//! while it runs: on a large audit trail, expect the upgrade to pause command traffic for that long. `TRUE` is a literal in the index and in the queries, so PostgreSQL can prove
//! that a query's rows are in the partial index even in a generic plan, where a bound parameter has no value.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const OLD: &str = "ix_commands_device_state";
const NEW: &str = "ix_commands_queued_device_state";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        // The same text on both databases; sea-query has no partial index for SQLite.
        db.execute_unprepared(&format!(
            "CREATE INDEX IF NOT EXISTS \"{NEW}\" ON \"commands\" (\"device\", \"state\", \"requested_at\") \
             WHERE \"deliver_queued\" = TRUE"
        ))
        .await?;
        db.execute_unprepared(&format!("DROP INDEX IF EXISTS \"{OLD}\""))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        db.execute_unprepared(&format!(
            "CREATE INDEX IF NOT EXISTS \"{OLD}\" ON \"commands\" (\"device\", \"state\")"
        ))
        .await?;
        db.execute_unprepared(&format!("DROP INDEX IF EXISTS \"{NEW}\""))
            .await?;
        Ok(())
    }
}
