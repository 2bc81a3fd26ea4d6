use sea_orm::entity::prelude::*;

/// Occupancy of one appliance on one endpoint.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "appliance_states")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub endpoint_id: i32,
    #[sea_orm(primary_key, auto_increment = false)]
    pub appliance_name: String,
    pub occupied: bool,
    /// The running run that occupies it.
    pub run_id: Option<i32>,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
