use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "chargers")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i32,
    #[sea_orm(unique)]
    pub charge_point_id: String,
    pub vendor: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub firmware: Option<String>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub boot_info: Option<Json>,
    /// What BootNotification answers: Accepted, Pending or Rejected (set by an operator).
    pub registration_status: String,
    /// 0: no auth; 1: HTTP Basic (password_hash); 2: Basic behind a TLS-terminating proxy.
    pub security_profile: i32,
    pub password_hash: Option<String>,
    pub blocked: bool,
    #[sea_orm(column_type = "Text", nullable)]
    pub notes: Option<String>,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub configuration: Option<Json>,
    pub configuration_read_at: Option<DateTimeUtc>,
    pub diagnostics_status: Option<String>,
    pub firmware_status: Option<String>,
    pub last_boot_at: Option<DateTimeUtc>,
    pub last_seen: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
