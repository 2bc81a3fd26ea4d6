use sea_orm::entity::prelude::*;

/// One purchase of a product by an account, valid from `starts_at` to `ends_at`.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "subscriptions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub account_id: i32,
    pub product_id: i32,
    /// The product's price when it was bought (prices change; what was paid does not).
    pub price_cents: i64,
    pub starts_at: DateTimeUtc,
    pub ends_at: DateTimeUtc,
    /// `active` or `cancelled` as written; `expired` is derived when read (`active` and `ends_at` passed), so
    /// no background job has to flip it.
    pub state: String,
    pub cancelled_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
