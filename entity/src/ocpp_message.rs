use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "ocpp_messages")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub charger_id: i32,
    /// "in" (from the charge point) or "out".
    pub direction: String,
    /// "call", "result" or "error".
    pub message_type: String,
    pub action: Option<String>,
    pub message_id: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub payload: Json,
    /// For a result or error: the row of the call it answers.
    pub request_id: Option<i64>,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
