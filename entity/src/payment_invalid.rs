use sea_orm::entity::prelude::*;

/// A bank transfer that credited nothing (unknown room, foreign currency, unreadable amount), kept so it is
/// never imported twice and can be resolved by hand.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "payments_invalid")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[sea_orm(unique)]
    pub transaction_id: String,
    /// Cents; `None` when the bank's amount could not be read.
    pub amount: Option<i64>,
    pub currency: String,
    pub reference: String,
    pub reason: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
