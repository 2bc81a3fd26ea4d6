//! Charge points: chargers, connectors and their status history, id tags, transactions, meter values, and the
//! OCPP message log.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Chargers::Table)
                    .if_not_exists()
                    .col(pk_auto(Chargers::Id))
                    .col(string_len_uniq(Chargers::ChargePointId, 64))
                    .col(string_null(Chargers::Vendor))
                    .col(string_null(Chargers::Model))
                    .col(string_null(Chargers::SerialNumber))
                    .col(string_null(Chargers::Firmware))
                    .col(json_binary_null(Chargers::BootInfo))
                    .col(string_len(Chargers::RegistrationStatus, 16).default("Accepted"))
                    .col(integer(Chargers::SecurityProfile).default(0))
                    .col(string_null(Chargers::PasswordHash))
                    .col(boolean(Chargers::Blocked).default(false))
                    .col(text_null(Chargers::Notes))
                    .col(json_binary_null(Chargers::Configuration))
                    .col(timestamp_with_time_zone_null(Chargers::ConfigurationReadAt))
                    .col(string_null(Chargers::DiagnosticsStatus))
                    .col(string_null(Chargers::FirmwareStatus))
                    .col(timestamp_with_time_zone_null(Chargers::LastBootAt))
                    .col(timestamp_with_time_zone_null(Chargers::LastSeen))
                    .col(timestamp_with_time_zone(Chargers::CreatedAt))
                    .col(timestamp_with_time_zone(Chargers::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Connectors::Table)
                    .if_not_exists()
                    .col(pk_auto(Connectors::Id))
                    .col(integer(Connectors::ChargerId))
                    .col(integer(Connectors::ConnectorId))
                    .col(string_len(Connectors::Status, 32))
                    .col(string_len(Connectors::ErrorCode, 32))
                    .col(string_null(Connectors::Info))
                    .col(string_null(Connectors::VendorErrorCode))
                    .col(timestamp_with_time_zone_null(Connectors::StatusAt))
                    .col(timestamp_with_time_zone(Connectors::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Connectors::Table, Connectors::ChargerId)
                            .to(Chargers::Table, Chargers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_connectors_charger_connector")
                    .table(Connectors::Table)
                    .col(Connectors::ChargerId)
                    .col(Connectors::ConnectorId)
                    .unique()
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ConnectorStatusHistory::Table)
                    .if_not_exists()
                    .col(big_pk_auto(ConnectorStatusHistory::Id))
                    .col(integer(ConnectorStatusHistory::ChargerId))
                    .col(integer(ConnectorStatusHistory::ConnectorId))
                    .col(string_len(ConnectorStatusHistory::Status, 32))
                    .col(string_len(ConnectorStatusHistory::ErrorCode, 32))
                    .col(string_null(ConnectorStatusHistory::Info))
                    .col(timestamp_with_time_zone_null(
                        ConnectorStatusHistory::StatusAt,
                    ))
                    .col(timestamp_with_time_zone(ConnectorStatusHistory::ReceivedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(
                                ConnectorStatusHistory::Table,
                                ConnectorStatusHistory::ChargerId,
                            )
                            .to(Chargers::Table, Chargers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_connector_status_history_charger")
                    .table(ConnectorStatusHistory::Table)
                    .col(ConnectorStatusHistory::ChargerId)
                    .col(ConnectorStatusHistory::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(IdTags::Table)
                    .if_not_exists()
                    .col(pk_auto(IdTags::Id))
                    .col(string_len_uniq(IdTags::Tag, 20))
                    .col(string_len(IdTags::Status, 16))
                    .col(timestamp_with_time_zone_null(IdTags::ExpiresAt))
                    .col(string_len_null(IdTags::Parent, 20))
                    .col(string_null(IdTags::Owner))
                    .col(timestamp_with_time_zone(IdTags::CreatedAt))
                    .col(timestamp_with_time_zone(IdTags::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Transactions::Table)
                    .if_not_exists()
                    .col(pk_auto(Transactions::Id))
                    .col(integer(Transactions::ChargerId))
                    .col(integer(Transactions::ConnectorId))
                    .col(string_len(Transactions::IdTag, 20))
                    .col(string_len(Transactions::StartStatus, 16))
                    .col(big_integer(Transactions::MeterStart))
                    .col(timestamp_with_time_zone(Transactions::StartedAt))
                    .col(integer_null(Transactions::ReservationId))
                    .col(big_integer_null(Transactions::MeterStop))
                    .col(timestamp_with_time_zone_null(Transactions::StoppedAt))
                    .col(string_len_null(Transactions::StopIdTag, 20))
                    .col(string_len_null(Transactions::StopReason, 32))
                    .col(timestamp_with_time_zone(Transactions::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Transactions::Table, Transactions::ChargerId)
                            .to(Chargers::Table, Chargers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // A charge point re-sends StartTransaction when our answer was lost: the same start is the same
        // transaction, so it gets the same transactionId back.
        manager
            .create_index(
                Index::create()
                    .name("ux_transactions_natural_key")
                    .table(Transactions::Table)
                    .col(Transactions::ChargerId)
                    .col(Transactions::ConnectorId)
                    .col(Transactions::IdTag)
                    .col(Transactions::StartedAt)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_transactions_charger_id")
                    .table(Transactions::Table)
                    .col(Transactions::ChargerId)
                    .col(Transactions::Id)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(MeterValues::Table)
                    .if_not_exists()
                    .col(big_pk_auto(MeterValues::Id))
                    .col(integer(MeterValues::ChargerId))
                    .col(integer(MeterValues::ConnectorId))
                    .col(integer_null(MeterValues::TransactionId))
                    .col(timestamp_with_time_zone(MeterValues::Timestamp))
                    .col(string_len(MeterValues::Value, 64))
                    .col(double_null(MeterValues::Numeric))
                    .col(string_len(MeterValues::Measurand, 64))
                    .col(string_len(MeterValues::Phase, 8))
                    .col(string_len(MeterValues::Unit, 16))
                    .col(string_len(MeterValues::Context, 32))
                    .col(string_len(MeterValues::Location, 16))
                    .col(string_len(MeterValues::Format, 16))
                    .col(timestamp_with_time_zone(MeterValues::ReceivedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(MeterValues::Table, MeterValues::ChargerId)
                            .to(Chargers::Table, Chargers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Absent optional fields are stored as their spec defaults (never NULL), so a re-sent sample hits this
        // index instead of becoming a second row.
        manager
            .create_index(
                Index::create()
                    .name("ux_meter_values_natural_key")
                    .table(MeterValues::Table)
                    .col(MeterValues::ChargerId)
                    .col(MeterValues::ConnectorId)
                    .col(MeterValues::Timestamp)
                    .col(MeterValues::Measurand)
                    .col(MeterValues::Phase)
                    .col(MeterValues::Location)
                    .col(MeterValues::Context)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_meter_values_transaction_time")
                    .table(MeterValues::Table)
                    .col(MeterValues::TransactionId)
                    .col(MeterValues::Timestamp)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OcppMessages::Table)
                    .if_not_exists()
                    .col(big_pk_auto(OcppMessages::Id))
                    .col(integer(OcppMessages::ChargerId))
                    .col(string_len(OcppMessages::Direction, 4))
                    .col(string_len(OcppMessages::MessageType, 8))
                    .col(string_len_null(OcppMessages::Action, 64))
                    .col(string_len(OcppMessages::MessageId, 64))
                    .col(json_binary(OcppMessages::Payload))
                    .col(big_integer_null(OcppMessages::RequestId))
                    .col(timestamp_with_time_zone(OcppMessages::At))
                    .foreign_key(
                        ForeignKey::create()
                            .from(OcppMessages::Table, OcppMessages::ChargerId)
                            .to(Chargers::Table, Chargers::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_ocpp_messages_charger_id")
                    .table(OcppMessages::Table)
                    .col(OcppMessages::ChargerId)
                    .col(OcppMessages::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_ocpp_messages_at")
                    .table(OcppMessages::Table)
                    .col(OcppMessages::At)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            OcppMessages::Table.into_iden(),
            MeterValues::Table.into_iden(),
            Transactions::Table.into_iden(),
            IdTags::Table.into_iden(),
            ConnectorStatusHistory::Table.into_iden(),
            Connectors::Table.into_iden(),
            Chargers::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Chargers {
    Table,
    Id,
    ChargePointId,
    Vendor,
    Model,
    SerialNumber,
    Firmware,
    BootInfo,
    RegistrationStatus,
    SecurityProfile,
    PasswordHash,
    Blocked,
    Notes,
    Configuration,
    ConfigurationReadAt,
    DiagnosticsStatus,
    FirmwareStatus,
    LastBootAt,
    LastSeen,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Connectors {
    Table,
    Id,
    ChargerId,
    ConnectorId,
    Status,
    ErrorCode,
    Info,
    VendorErrorCode,
    StatusAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum ConnectorStatusHistory {
    Table,
    Id,
    ChargerId,
    ConnectorId,
    Status,
    ErrorCode,
    Info,
    StatusAt,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum IdTags {
    Table,
    Id,
    Tag,
    Status,
    ExpiresAt,
    Parent,
    Owner,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Transactions {
    Table,
    Id,
    ChargerId,
    ConnectorId,
    IdTag,
    StartStatus,
    MeterStart,
    StartedAt,
    ReservationId,
    MeterStop,
    StoppedAt,
    StopIdTag,
    StopReason,
    CreatedAt,
}

#[derive(DeriveIden)]
enum MeterValues {
    Table,
    Id,
    ChargerId,
    ConnectorId,
    TransactionId,
    Timestamp,
    Value,
    Numeric,
    Measurand,
    Phase,
    Unit,
    Context,
    Location,
    Format,
    ReceivedAt,
}

#[derive(DeriveIden)]
enum OcppMessages {
    Table,
    Id,
    ChargerId,
    Direction,
    MessageType,
    Action,
    MessageId,
    Payload,
    RequestId,
    At,
}
