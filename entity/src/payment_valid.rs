use sea_orm::entity::prelude::*;

/// A bank transfer credited to a room.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "payments_valid")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    /// The bank's transaction id; unique across both payment tables (enforced by the importer).
    #[sea_orm(unique)]
    pub transaction_id: String,
    pub room_key: i64,
    /// Cents.
    pub amount: i64,
    pub currency: String,
    /// The variable symbol as the bank sent it.
    pub reference: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
