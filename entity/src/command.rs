use sea_orm::entity::prelude::*;

/// Audit trail of every command sent to a device, and the state `GET /api/commands/{id}` reports.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "commands")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    pub device_kind: String,
    pub device: String,
    pub command: String,
    #[sea_orm(column_type = "JsonBinary")]
    pub params: Json,
    /// queued | sent | succeeded | failed | timed_out | expired | cancelled
    pub state: String,
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub reply: Option<Json>,
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    pub requested_at: DateTimeUtc,
    pub sent_at: Option<DateTimeUtc>,
    pub finished_at: Option<DateTimeUtc>,
    /// Sent with `deliver=queued`: kept until the device is online, re-queued if it drops mid-command.
    pub deliver_queued: bool,
    pub expires_at: Option<DateTimeUtc>,
    /// Set by the node delivering a queued command; a conditional update on it makes the claim exclusive.
    pub claim_token: Option<Uuid>,
    pub claimed_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
