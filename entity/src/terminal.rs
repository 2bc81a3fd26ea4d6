use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "terminals")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[sea_orm(unique)]
    pub sn: String,
    pub name: Option<String>,
    pub model: Option<String>,
    pub firmware: Option<String>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub devinfo: Option<Json>,
    pub is_active: bool,
    pub is_whitelisted: bool,
    pub last_seen: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
