use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "attendance_logs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub terminal_id: i32,
    pub enrollid: i64,
    /// Device-local wall-clock time as the terminal reported it (the protocol carries no zone).
    pub time: DateTime,
    pub mode: i64,
    pub inout: i64,
    pub event: i64,
    /// As sent: most firmware sends tenths of a degree (365), some sends degrees (36.5).
    #[sea_orm(column_type = "Double", nullable)]
    pub temp: Option<f64>,
    pub verifymode: Option<i64>,
    #[sea_orm(column_type = "JsonBinary")]
    pub raw: Json,
    pub received_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
