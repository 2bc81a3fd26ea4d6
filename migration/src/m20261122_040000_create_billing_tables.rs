//! Rooms with prepaid balances, their TOTP secrets, endpoint devices, appliances and their occupancy, appliance
//! runs, manual balance adjustments, and imported bank payments (valid and invalid). Every amount is an
//! integer number of cents.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Rooms::Table)
                    .if_not_exists()
                    // The room number people and bank references (variable symbols) use, not a surrogate.
                    .col(big_integer(Rooms::Key).primary_key())
                    .col(big_integer(Rooms::Balance).default(0))
                    .col(timestamp_with_time_zone(Rooms::CreatedAt))
                    .col(timestamp_with_time_zone(Rooms::UpdatedAt))
                    .check(Expr::col(Rooms::Balance).gte(0))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RoomTotp::Table)
                    .if_not_exists()
                    .col(big_integer(RoomTotp::RoomKey).primary_key())
                    .col(string_len(RoomTotp::Secret, 128))
                    // The last accepted 30 s time step: a code is accepted only for a later step (no replay).
                    .col(big_integer(RoomTotp::LastStep).default(0))
                    // Wrong codes in the current throttling window (brute-force protection).
                    .col(integer(RoomTotp::Failures).default(0))
                    .col(big_integer(RoomTotp::FailureWindow).default(0))
                    .col(timestamp_with_time_zone(RoomTotp::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(RoomTotp::Table, RoomTotp::RoomKey)
                            .to(Rooms::Table, Rooms::Key)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Endpoints::Table)
                    .if_not_exists()
                    .col(integer(Endpoints::Id).primary_key())
                    .col(string(Endpoints::Name))
                    .col(integer(Endpoints::TokenVersion).default(1))
                    .col(timestamp_with_time_zone(Endpoints::CreatedAt))
                    .col(timestamp_with_time_zone(Endpoints::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Appliances::Table)
                    .if_not_exists()
                    .col(string_len(Appliances::Name, 64).primary_key())
                    .col(big_integer(Appliances::PricePerUnit))
                    .col(timestamp_with_time_zone(Appliances::CreatedAt))
                    .col(timestamp_with_time_zone(Appliances::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApplianceStates::Table)
                    .if_not_exists()
                    .col(integer(ApplianceStates::EndpointId))
                    .col(string_len(ApplianceStates::ApplianceName, 64))
                    .col(boolean(ApplianceStates::Occupied).default(false))
                    .col(integer_null(ApplianceStates::RunId))
                    .col(timestamp_with_time_zone(ApplianceStates::UpdatedAt))
                    .primary_key(
                        Index::create()
                            .col(ApplianceStates::EndpointId)
                            .col(ApplianceStates::ApplianceName),
                    )
                    .to_owned(),
            )
            .await?;

        // Runs, adjustments and payments keep plain room keys (no foreign keys): they are the money history
        // and outlive a deleted room.
        manager
            .create_table(
                Table::create()
                    .table(Runs::Table)
                    .if_not_exists()
                    .col(pk_auto(Runs::Id))
                    .col(big_integer(Runs::RoomKey))
                    .col(integer(Runs::EndpointId))
                    .col(string_len(Runs::ApplianceName, 64))
                    .col(string_len(Runs::State, 16))
                    .col(big_integer(Runs::InitialUnits))
                    .col(big_integer(Runs::InitialPrice))
                    .col(big_integer_null(Runs::FinalUnits))
                    .col(big_integer_null(Runs::FinalPrice))
                    .col(big_integer_null(Runs::Refund))
                    .col(timestamp_with_time_zone(Runs::StartedAt))
                    .col(timestamp_with_time_zone_null(Runs::FinishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_runs_room_key")
                    .table(Runs::Table)
                    .col(Runs::RoomKey)
                    .col(Runs::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(RoomAdjustments::Table)
                    .if_not_exists()
                    .col(pk_auto(RoomAdjustments::Id))
                    .col(big_integer(RoomAdjustments::RoomKey))
                    .col(big_integer(RoomAdjustments::Amount))
                    .col(string(RoomAdjustments::Reason))
                    .col(timestamp_with_time_zone(RoomAdjustments::CreatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_room_adjustments_room_key")
                    .table(RoomAdjustments::Table)
                    .col(RoomAdjustments::RoomKey)
                    .col(RoomAdjustments::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PaymentsValid::Table)
                    .if_not_exists()
                    .col(pk_auto(PaymentsValid::Id))
                    .col(string_len_uniq(PaymentsValid::TransactionId, 128))
                    .col(big_integer(PaymentsValid::RoomKey))
                    .col(big_integer(PaymentsValid::Amount))
                    .col(string_len(PaymentsValid::Currency, 8))
                    .col(string(PaymentsValid::Reference))
                    .col(timestamp_with_time_zone(PaymentsValid::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(PaymentsInvalid::Table)
                    .if_not_exists()
                    .col(pk_auto(PaymentsInvalid::Id))
                    .col(string_len_uniq(PaymentsInvalid::TransactionId, 128))
                    // NULL when the bank's amount could not be read.
                    .col(big_integer_null(PaymentsInvalid::Amount))
                    .col(string_len(PaymentsInvalid::Currency, 8))
                    .col(string(PaymentsInvalid::Reference))
                    .col(string(PaymentsInvalid::Reason))
                    .col(timestamp_with_time_zone(PaymentsInvalid::CreatedAt))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            PaymentsInvalid::Table.into_iden(),
            PaymentsValid::Table.into_iden(),
            RoomAdjustments::Table.into_iden(),
            Runs::Table.into_iden(),
            ApplianceStates::Table.into_iden(),
            Appliances::Table.into_iden(),
            Endpoints::Table.into_iden(),
            RoomTotp::Table.into_iden(),
            Rooms::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Rooms {
    Table,
    Key,
    Balance,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RoomTotp {
    Table,
    RoomKey,
    Secret,
    LastStep,
    Failures,
    FailureWindow,
    CreatedAt,
}

#[derive(DeriveIden)]
enum Endpoints {
    Table,
    Id,
    Name,
    TokenVersion,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Appliances {
    Table,
    Name,
    PricePerUnit,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ApplianceStates {
    Table,
    EndpointId,
    ApplianceName,
    Occupied,
    RunId,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Runs {
    Table,
    Id,
    RoomKey,
    EndpointId,
    ApplianceName,
    State,
    InitialUnits,
    InitialPrice,
    FinalUnits,
    FinalPrice,
    Refund,
    StartedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum RoomAdjustments {
    Table,
    Id,
    RoomKey,
    Amount,
    Reason,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PaymentsValid {
    Table,
    Id,
    TransactionId,
    RoomKey,
    Amount,
    Currency,
    Reference,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PaymentsInvalid {
    Table,
    Id,
    TransactionId,
    Amount,
    Currency,
    Reference,
    Reason,
    CreatedAt,
}
