use sea_orm::entity::prelude::*;

/// A subscription plan on sale: a price for a period.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "products")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub name: String,
    pub description: Option<String>,
    /// Price in cents (no currency: one per deployment).
    pub price_cents: i64,
    /// Length of one subscription, in days.
    pub period_days: i32,
    /// Only active products are listed for sale and can be subscribed to.
    pub is_active: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
