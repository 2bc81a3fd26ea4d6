use sea_orm::entity::prelude::*;

/// One paid use of an appliance: funds reserved at the start, the difference refunded at the finish.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "runs")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    pub room_key: i64,
    pub endpoint_id: i32,
    pub appliance_name: String,
    /// `running`, `finished` or `aborted`.
    pub state: String,
    pub initial_units: i64,
    /// Cents reserved at the start.
    pub initial_price: i64,
    pub final_units: Option<i64>,
    /// Cents the endpoint reported at the finish.
    pub final_price: Option<i64>,
    /// Cents given back: reserved minus final, clamped to [0, reserved].
    pub refund: Option<i64>,
    pub started_at: DateTimeUtc,
    pub finished_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
