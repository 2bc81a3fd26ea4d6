//! Accounts (people who log in with an RFID card), subscription products, subscriptions, and the owner account
//! of an id tag.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Accounts::Table)
                    .if_not_exists()
                    .col(pk_auto(Accounts::Id))
                    .col(string(Accounts::Name))
                    .col(string_len_uniq(Accounts::Email, 254))
                    .col(boolean(Accounts::IsActive).default(true))
                    .col(timestamp_with_time_zone(Accounts::CreatedAt))
                    .col(timestamp_with_time_zone(Accounts::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Products::Table)
                    .if_not_exists()
                    .col(pk_auto(Products::Id))
                    .col(string(Products::Name))
                    .col(text_null(Products::Description))
                    .col(big_integer(Products::PriceCents))
                    .col(integer(Products::PeriodDays))
                    .col(boolean(Products::IsActive).default(true))
                    .col(timestamp_with_time_zone(Products::CreatedAt))
                    .col(timestamp_with_time_zone(Products::UpdatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Subscriptions::Table)
                    .if_not_exists()
                    .col(pk_auto(Subscriptions::Id))
                    .col(integer(Subscriptions::AccountId))
                    .col(integer(Subscriptions::ProductId))
                    .col(big_integer(Subscriptions::PriceCents))
                    .col(timestamp_with_time_zone(Subscriptions::StartsAt))
                    .col(timestamp_with_time_zone(Subscriptions::EndsAt))
                    .col(string_len(Subscriptions::State, 16))
                    .col(timestamp_with_time_zone_null(Subscriptions::CancelledAt))
                    .col(timestamp_with_time_zone(Subscriptions::CreatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .from(Subscriptions::Table, Subscriptions::AccountId)
                            .to(Accounts::Table, Accounts::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    // A product that was sold is kept (deactivate it instead); the API answers 409 first.
                    .foreign_key(
                        ForeignKey::create()
                            .from(Subscriptions::Table, Subscriptions::ProductId)
                            .to(Products::Table, Products::Id)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_subscriptions_account_id")
                    .table(Subscriptions::Table)
                    .col(Subscriptions::AccountId)
                    .col(Subscriptions::Id)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_subscriptions_product_id")
                    .table(Subscriptions::Table)
                    .col(Subscriptions::ProductId)
                    .to_owned(),
            )
            .await?;

        // A plain nullable column: SQLite cannot add a foreign key to an existing table, so the store clears
        // it when an account is deleted.
        manager
            .alter_table(
                Table::alter()
                    .table(IdTags::Table)
                    .add_column(integer_null(IdTags::AccountId))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_id_tags_account_id")
                    .table(IdTags::Table)
                    .col(IdTags::AccountId)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("ix_id_tags_account_id")
                    .table(IdTags::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(IdTags::Table)
                    .drop_column(IdTags::AccountId)
                    .to_owned(),
            )
            .await?;
        for table in [
            Subscriptions::Table.into_iden(),
            Products::Table.into_iden(),
            Accounts::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}

#[derive(DeriveIden)]
enum Accounts {
    Table,
    Id,
    Name,
    Email,
    IsActive,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Products {
    Table,
    Id,
    Name,
    Description,
    PriceCents,
    PeriodDays,
    IsActive,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Subscriptions {
    Table,
    Id,
    AccountId,
    ProductId,
    PriceCents,
    StartsAt,
    EndsAt,
    State,
    CancelledAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IdTags {
    Table,
    AccountId,
}
