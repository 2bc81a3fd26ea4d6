use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "transactions")]
pub struct Model {
    /// The OCPP transactionId: assigned by the database, never from memory.
    #[sea_orm(primary_key)]
    pub id: i32,
    pub charger_id: i32,
    pub connector_id: i32,
    pub id_tag: String,
    /// idTagInfo status answered at the start.
    pub start_status: String,
    pub meter_start: i64,
    pub started_at: DateTimeUtc,
    pub reservation_id: Option<i32>,
    pub meter_stop: Option<i64>,
    pub stopped_at: Option<DateTimeUtc>,
    pub stop_id_tag: Option<String>,
    pub stop_reason: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
