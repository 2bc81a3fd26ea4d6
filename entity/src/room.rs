use sea_orm::entity::prelude::*;

/// A room with a prepaid balance; its key is the room number residents and bank references (variable symbols)
/// use.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "rooms")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub key: i64,
    /// Cents; never negative (a CHECK constraint backs the conditional updates of the store).
    pub balance: i64,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
