use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "panels")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[sea_orm(unique)]
    pub sn: String,
    pub name: Option<String>,
    pub secret: Option<String>,
    pub is_active: bool,
    pub is_whitelisted: bool,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub status: Option<Json>,
    pub last_login_at: Option<DateTimeUtc>,
    pub last_seen: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
