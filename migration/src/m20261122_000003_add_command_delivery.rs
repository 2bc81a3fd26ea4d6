//! Durable delivery of commands to offline devices: expiry, the queued-delivery flag, and the claim that lets
//! exactly one node deliver a queued command.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite's ALTER TABLE adds one column at a time.
        let columns = [
            boolean(Commands::DeliverQueued).default(false).to_owned(),
            timestamp_with_time_zone_null(Commands::ExpiresAt).to_owned(),
            uuid_null(Commands::ClaimToken).to_owned(),
            timestamp_with_time_zone_null(Commands::ClaimedAt).to_owned(),
        ];
        for column in columns {
            manager
                .alter_table(
                    Table::alter()
                        .table(Commands::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("ix_commands_device_state")
                    .table(Commands::Table)
                    .col(Commands::Device)
                    .col(Commands::State)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_commands_device_state")
                    .table(Commands::Table)
                    .to_owned(),
            )
            .await?;
        for column in [
            Commands::DeliverQueued,
            Commands::ExpiresAt,
            Commands::ClaimToken,
            Commands::ClaimedAt,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Commands::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Commands {
    Table,
    Device,
    State,
    DeliverQueued,
    ExpiresAt,
    ClaimToken,
    ClaimedAt,
}
