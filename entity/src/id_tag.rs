use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "id_tags")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[sea_orm(unique)]
    pub tag: String,
    /// Accepted, Blocked, Expired or Invalid.
    pub status: String,
    pub expires_at: Option<DateTimeUtc>,
    pub parent: Option<String>,
    pub owner: Option<String>,
    /// The account owning this tag (RFID login, subscriptions); no foreign key so that SQLite could add the
    /// column in place; deleting an account clears it.
    pub account_id: Option<i32>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
