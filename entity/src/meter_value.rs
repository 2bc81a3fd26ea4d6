use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "meter_values")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub charger_id: i32,
    pub connector_id: i32,
    pub transaction_id: Option<i32>,
    pub timestamp: DateTimeUtc,
    /// As sent (OCPP carries values as strings; signed data is not numeric).
    pub value: String,
    #[sea_orm(column_type = "Double", nullable)]
    pub numeric: Option<f64>,
    pub measurand: String,
    pub phase: String,
    pub unit: String,
    pub context: String,
    pub location: String,
    pub format: String,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
