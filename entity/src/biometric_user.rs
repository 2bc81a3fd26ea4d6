use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "biometric_users")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub terminal_id: i32,
    pub enrollid: i64,
    pub name: Option<String>,
    pub admin: i32,
    pub is_enabled: bool,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
