use sea_orm::entity::prelude::*;

/// The TOTP secret of a room (base32). Never returned by the API except once, when rotated.
#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "room_totp")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub room_key: i64,
    pub secret: String,
    /// The last accepted 30 s time step; only later steps are accepted, so a code cannot be replayed.
    pub last_step: i64,
    /// Wrong codes entered in `failure_window` (a window of several time steps); too many lock the room's
    /// login until the window ends, so six digits cannot be guessed by brute force.
    pub failures: i32,
    pub failure_window: i64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
