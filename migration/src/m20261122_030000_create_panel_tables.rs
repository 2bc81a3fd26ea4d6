//! Shenxing (sxdm) panels: one row per panel that ever logged in or that an admin registered (whitelist and
//! per-panel secret).

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Panels::Table)
                    .if_not_exists()
                    .col(pk_auto(Panels::Id))
                    .col(string_len_uniq(Panels::Sn, 64))
                    .col(string_null(Panels::Name))
                    // The login credential an operator set for this panel; NULL = any password (vendor default).
                    .col(string_null(Panels::Secret))
                    .col(boolean(Panels::IsActive).default(true))
                    // Created by an admin (PUT /api/panels/{sn}) rather than by a first login.
                    .col(boolean(Panels::IsWhitelisted).default(false))
                    .col(json_binary_null(Panels::Status))
                    .col(timestamp_with_time_zone_null(Panels::LastLoginAt))
                    .col(timestamp_with_time_zone_null(Panels::LastSeen))
                    .col(timestamp_with_time_zone(Panels::CreatedAt))
                    .col(timestamp_with_time_zone(Panels::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Panels::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum Panels {
    Table,
    Id,
    Sn,
    Name,
    Secret,
    IsActive,
    IsWhitelisted,
    Status,
    LastLoginAt,
    LastSeen,
    CreatedAt,
    UpdatedAt,
}
