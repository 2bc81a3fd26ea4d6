use sea_orm::entity::prelude::*;

/// A manual change of a room's balance by an admin (signed cents), with its reason.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "room_adjustments")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub room_key: i64,
    pub amount: i64,
    pub reason: String,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
