//! Terminals, their users and credentials, attendance logs, and the command audit trail.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Terminals::Table)
                    .if_not_exists()
                    .col(pk_auto(Terminals::Id))
                    .col(string_len_uniq(Terminals::Sn, 64))
                    .col(string_null(Terminals::Name))
                    .col(string_null(Terminals::Model))
                    .col(string_null(Terminals::Firmware))
                    .col(json_binary_null(Terminals::Devinfo))
                    .col(boolean(Terminals::IsActive).default(true))
                    .col(boolean(Terminals::IsWhitelisted).default(false))
                    .col(timestamp_with_time_zone_null(Terminals::LastSeen))
                    .col(timestamp_with_time_zone(Terminals::CreatedAt))
                    .col(timestamp_with_time_zone(Terminals::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(BiometricUsers::Table)
                    .if_not_exists()
                    .col(pk_auto(BiometricUsers::Id))
                    .col(integer(BiometricUsers::TerminalId))
                    .col(big_integer(BiometricUsers::Enrollid))
                    .col(string_null(BiometricUsers::Name))
                    .col(integer(BiometricUsers::Admin).default(0))
                    .col(boolean(BiometricUsers::IsEnabled).default(true))
                    .col(timestamp_with_time_zone(BiometricUsers::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(BiometricUsers::Table, BiometricUsers::TerminalId)
                            .to(Terminals::Table, Terminals::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_biometric_users_terminal_enrollid")
                    .table(BiometricUsers::Table)
                    .col(BiometricUsers::TerminalId)
                    .col(BiometricUsers::Enrollid)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(BiometricCredentials::Table)
                    .if_not_exists()
                    .col(pk_auto(BiometricCredentials::Id))
                    .col(integer(BiometricCredentials::UserId))
                    .col(integer(BiometricCredentials::Backupnum))
                    .col(text_null(BiometricCredentials::Record))
                    .col(timestamp_with_time_zone(BiometricCredentials::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(BiometricCredentials::Table, BiometricCredentials::UserId)
                            .to(BiometricUsers::Table, BiometricUsers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_biometric_credentials_user_backupnum")
                    .table(BiometricCredentials::Table)
                    .col(BiometricCredentials::UserId)
                    .col(BiometricCredentials::Backupnum)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AttendanceLogs::Table)
                    .if_not_exists()
                    .col(big_pk_auto(AttendanceLogs::Id))
                    .col(integer(AttendanceLogs::TerminalId))
                    .col(big_integer(AttendanceLogs::Enrollid))
                    .col(timestamp(AttendanceLogs::Time))
                    .col(big_integer(AttendanceLogs::Mode))
                    .col(big_integer(AttendanceLogs::Inout))
                    .col(big_integer(AttendanceLogs::Event))
                    .col(double_null(AttendanceLogs::Temp))
                    .col(big_integer_null(AttendanceLogs::Verifymode))
                    .col(json_binary(AttendanceLogs::Raw))
                    .col(timestamp_with_time_zone(AttendanceLogs::ReceivedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(AttendanceLogs::Table, AttendanceLogs::TerminalId)
                            .to(Terminals::Table, Terminals::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // The natural key of a punch: terminals re-send whole batches until acked (tm20.md §1.2), so a
        // re-sent record must hit this index instead of becoming a second row.
        manager
            .create_index(
                Index::create()
                    .name("ux_attendance_logs_natural_key")
                    .table(AttendanceLogs::Table)
                    .col(AttendanceLogs::TerminalId)
                    .col(AttendanceLogs::Enrollid)
                    .col(AttendanceLogs::Time)
                    .col(AttendanceLogs::Mode)
                    .col(AttendanceLogs::Inout)
                    .col(AttendanceLogs::Event)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // Serves the newest-first keyset query of `GET /api/terminals/{sn}/logs`.
        manager
            .create_index(
                Index::create()
                    .name("ix_attendance_logs_terminal_time_id")
                    .table(AttendanceLogs::Table)
                    .col(AttendanceLogs::TerminalId)
                    .col(AttendanceLogs::Time)
                    .col(AttendanceLogs::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Commands::Table)
                    .if_not_exists()
                    .col(uuid(Commands::Id).primary_key())
                    .col(string_len(Commands::DeviceKind, 16))
                    .col(string_len(Commands::Device, 64))
                    .col(string_len(Commands::Command, 64))
                    .col(json_binary(Commands::Params))
                    .col(string_len(Commands::State, 16))
                    .col(json_binary_null(Commands::Reply))
                    .col(text_null(Commands::Error))
                    .col(timestamp_with_time_zone(Commands::RequestedAt))
                    .col(timestamp_with_time_zone_null(Commands::SentAt))
                    .col(timestamp_with_time_zone_null(Commands::FinishedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_commands_device_requested_at")
                    .table(Commands::Table)
                    .col(Commands::Device)
                    .col(Commands::RequestedAt)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            Commands::Table.into_iden(),
            AttendanceLogs::Table.into_iden(),
            BiometricCredentials::Table.into_iden(),
            BiometricUsers::Table.into_iden(),
            Terminals::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Terminals {
    Table,
    Id,
    Sn,
    Name,
    Model,
    Firmware,
    Devinfo,
    IsActive,
    IsWhitelisted,
    LastSeen,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum BiometricUsers {
    Table,
    Id,
    TerminalId,
    Enrollid,
    Name,
    Admin,
    IsEnabled,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum BiometricCredentials {
    Table,
    Id,
    UserId,
    Backupnum,
    Record,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum AttendanceLogs {
    Table,
    Id,
    TerminalId,
    Enrollid,
    Time,
    Mode,
    Inout,
    Event,
    Temp,
    Verifymode,
    Raw,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum Commands {
    Table,
    Id,
    DeviceKind,
    Device,
    Command,
    Params,
    State,
    Reply,
    Error,
    RequestedAt,
    SentAt,
    FinishedAt,
}
