//! Schema migrations for Gatehouse, run at `gatehouse serve` start and by `gatehouse migrate`.
//!
//! Migrations are append-only: a released migration is never edited, a change is a new file named
//! `mYYYYMMDD_HHMMSS_verb_noun`.

pub use sea_orm_migration::prelude::*;

mod m20261122_000001_create_tm20_tables;
mod m20261122_000002_create_ocpp_tables;
mod m20261122_000003_add_command_delivery;
mod m20261122_015600_create_account_tables;
mod m20261122_030000_create_panel_tables;
mod m20261122_040000_create_billing_tables;
mod m20261207_000001_index_queued_deliveries_only;
mod m20261207_000002_attendance_key_by_time;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_tm20_tables::Migration),
            Box::new(m20261122_000002_create_ocpp_tables::Migration),
            Box::new(m20261122_000003_add_command_delivery::Migration),
            Box::new(m20261122_015600_create_account_tables::Migration),
            Box::new(m20261122_030000_create_panel_tables::Migration),
            Box::new(m20261122_040000_create_billing_tables::Migration),
            Box::new(m20261207_000001_index_queued_deliveries_only::Migration),
            Box::new(m20261207_000002_attendance_key_by_time::Migration),
        ]
    }
}
