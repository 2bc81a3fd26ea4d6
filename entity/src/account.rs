use sea_orm::entity::prelude::*;

/// A person (or company) who logs in with an RFID card and holds subscriptions. Owns id tags through
/// `id_tags.account_id`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "accounts")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub name: String,
    /// Stored trimmed and lower-case, so the unique index compares case-insensitively.
    #[sea_orm(unique)]
    pub email: String,
    pub is_active: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
